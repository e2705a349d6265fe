//! Load generator for the relay (not a timed test): N calls on a running
//! relay with one worker thread, SDES-SRTP (AES_CM_128_HMAC_SHA1_80) on the
//! web side and plain RTP on the SIP side. A second process sends valid SRTP
//! at a fixed aggregate rate and counts what arrives on the SIP side, with
//! each packet's one-way latency (send time carried in the payload).
//!
//!   cargo bench --bench relay_load -- [--calls 1,50,500] [--rates 50000,100000,...] [--seconds 3]
//!       [--io io-uring|epoll|bare] [--burst 1..8] [--pin 1|0] [--busy-poll-us 0..1000]
//!       [--transcode K|all] [--web-port range|shared] [--both-ways]
//!
//! For each N it reports the highest sustained rate — under 0.1 % loss, and
//! the last packet arriving less than 20 ms after the last send (a slower
//! relay can otherwise hide behind its sockets' buffers for a whole step) —,
//! the relay worker's CPU time per packet, and p50/p99 latency at half that
//! rate next to the same path without the relay. Loopback only; bounded in
//! time.
//!
//! `--pin 1` (the default with two or more CPUs) puts the generator process
//! on CPU 0 and the relay worker on CPU 1, so the worker has a core of its
//! own as in a deployment and the scheduler does not park it behind the
//! generator. `--burst G` sends G consecutive packets of a call as one UDP
//! GSO datagram that the kernel cuts up on the way: the generator then pays
//! its kernel path once per burst and can offer more than it could packet
//! by packet; the relay still receives G separate datagrams per call.
//!
//! `--io bare` measures the reference instead of the relay: a forwarder on
//! the same sockets with the same syscalls as the relay's epoll mode (epoll,
//! `recvmmsg`, `sendmmsg`) that only readdresses packets — no SRTP, checks
//! or counters — i.e. what the kernel's UDP path alone costs here. Its
//! packets stay encrypted, so the sink cannot read their send times: no
//! latency is reported for it.
//!
//! `--transcode K` makes the first K calls (or all) transcoded ones: the
//! generator sends them Opus (20 ms of a voice-like signal as a browser's
//! encoder makes it, padded to the same 160 bytes), which the relay decodes
//! and sends on as PCMU. Their send times cannot ride in a payload the
//! relay replaces, so the generator keeps them by call and sequence number;
//! latency is then reported for transcoded and pass-through calls apart.
//!
//! `--both-ways` has the SIP peer send too: for each browser packet the
//! sink sends the call a 20 ms PCMU packet, which the relay sends on to the
//! browser socket (as Opus on a transcoded call, SRTP on every call) —
//! a call's whole cost, both directions, in the relay's CPU per packet.
//! The rates then count both directions' packets; the browser socket counts
//! what reaches it (no latency is taken that way).
//!
//! `--web-port shared` puts every call's web leg on the relay's one web
//! port (`[media] web-port`) instead of a socket per call (`range`, the
//! default). Each call's browser then sends from an address of its own
//! (127.1.x.y, chosen per datagram with `IP_PKTINFO` on one generator
//! socket, so the generator still sends in batches), which is how the
//! port tells calls apart.

mod support;
use support::arg;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use webrtc_sip_gateway::media::batch::{set_buffer_sizes, Batch, BATCH, BUF_LEN};
use webrtc_sip_gateway::media::relay::{CallMediaSetup, PayloadMap, Relay, RelayIo, RelayOptions};
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};
use webrtc_sip_gateway::media::transcode::{SipCodec, TranscodeSpec};

/// A step whose last packet arrives later than this after the last send
/// was not sustained: the relay fell behind and lived on its socket buffers.
const MAX_BACKLOG_US: u64 = 20_000;

const PAYLOAD: usize = 160; // 20 ms of G.711: a 172-byte RTP packet
/// Send times kept per transcoded call, by sequence number modulo this.
const STAMPS_PER_CALL: usize = 1024;
const RTP_LEN: usize = 12 + PAYLOAD;
/// The same packet with its 10-byte AES_CM_128_HMAC_SHA1_80 tag.
const SRTP_LEN: usize = RTP_LEN + 10;

fn key() -> SrtpKeyMaterial {
    SrtpKeyMaterial::new(SrtpProfile::AesCm128HmacSha1_80, &[0x42; 16], &[0x17; 14]).unwrap()
}

fn list(name: &str, default: &str) -> Vec<u64> {
    arg(name, default)
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn main() {
    if std::env::var("RELAY_LOAD_ROLE").as_deref() == Ok("traffic") {
        traffic();
        return;
    }
    let seconds: u64 = arg("--seconds", "3").parse().unwrap_or(3);
    let calls = list("--calls", "1,50,500");
    let rates = list("--rates", "50000,100000,150000,200000,250000,300000,350000");
    let busy_poll = Duration::from_micros(arg("--busy-poll-us", "0").parse().unwrap_or(0));
    let web_port = shared_web_port().then(|| "127.0.0.1:0".parse().unwrap());
    // None: the bare forwarder instead of the relay.
    let relay_options = match arg("--io", "io-uring").as_str() {
        "bare" => None,
        "epoll" => Some(RelayOptions {
            io: RelayIo::Epoll,
            busy_poll,
            web_port,
        }),
        _ => Some(RelayOptions {
            io: RelayIo::IoUring,
            busy_poll,
            web_port,
        }),
    };
    match relay_options {
        Some(o) => println!("relay load: 1 relay worker thread ({:?}, busy poll {} µs, web leg on {}), SRTP (AES_CM_128_HMAC_SHA1_80) -> RTP, {PAYLOAD}-byte payloads, {seconds} s per step", o.io, o.busy_poll.as_micros(), if o.web_port.is_some() { "one shared port" } else { "a port per call" }),
        None => println!("reference: bare epoll + recvmmsg/sendmmsg forwarder, one thread, {PAYLOAD}-byte payloads, {seconds} s per step"),
    }
    for n in calls {
        run_for_calls(n as usize, &rates, seconds, relay_options);
    }
}

struct Traffic {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Traffic {
    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim().to_string()
    }
    fn say(&mut self, s: &str) {
        writeln!(self.stdin, "{s}").unwrap();
        self.stdin.flush().unwrap();
    }
}

/// What one step measured on the generator's side.
struct Step {
    received: u64,
    sent: u64,
    p50_ns: u64,
    p99_ns: u64,
    /// The same for the transcoded calls' packets (0 without any).
    transcoded_p50_ns: u64,
    transcoded_p99_ns: u64,
    /// From the last send to the last arrival: how far the relay lagged
    /// behind when the step ended (its sockets' buffers can hide a relay
    /// that is slower than the offered rate for a while, without loss).
    backlog_us: u64,
}

impl Step {
    /// The generator's answer line.
    fn line(&self) -> String {
        let Step {
            received,
            sent,
            p50_ns,
            p99_ns,
            transcoded_p50_ns,
            transcoded_p99_ns,
            backlog_us,
        } = self;
        format!("RESULT {received} {sent} {p50_ns} {p99_ns} {transcoded_p50_ns} {transcoded_p99_ns} {backlog_us}")
    }

    fn parse(line: &str) -> Step {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        Step {
            received: v[0],
            sent: v[1],
            p50_ns: v[2],
            p99_ns: v[3],
            transcoded_p50_ns: v[4],
            transcoded_p99_ns: v[5],
            backlog_us: v[6],
        }
    }
}

fn measure(t: &mut Traffic, rate: u64, seconds: u64, direct: bool) -> Step {
    t.say(&format!("RUN {rate} {seconds} {}", u8::from(direct)));
    Step::parse(&t.line())
}

/// Forwards each web socket's datagrams to `sink` by its SIP socket, as
/// plainly as the kernel allows: the reference for `--io bare`.
fn bare_forwarder(
    pairs: Vec<(UdpSocket, UdpSocket)>,
    sink: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use mio::{Events, Interest, Poll, Token};
    std::thread::Builder::new()
        .name("relay-0".into())
        .spawn(move || {
            let mut poll = Poll::new().unwrap();
            let mut sockets = Vec::new();
            for (i, (web, sip)) in pairs.into_iter().enumerate() {
                web.set_nonblocking(true).unwrap();
                sip.set_nonblocking(true).unwrap();
                let _ = set_buffer_sizes(web.as_raw_fd(), 512 * 1024, 512 * 1024);
                let mut web = mio::net::UdpSocket::from_std(web);
                poll.registry()
                    .register(&mut web, Token(i), Interest::READABLE)
                    .unwrap();
                sockets.push((web, sip));
            }
            let mut events = Events::with_capacity(1024);
            let mut batch = Batch::new();
            let order: Vec<usize> = (0..BATCH).collect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if poll
                    .poll(&mut events, Some(Duration::from_millis(50)))
                    .is_err()
                {
                    continue;
                }
                for event in events.iter() {
                    let (web, sip) = &sockets[event.token().0];
                    loop {
                        let n = batch.recv(web.as_raw_fd()).unwrap_or(0);
                        for address in &mut batch.addrs[..n] {
                            *address = Some(sink);
                        }
                        let _ = batch.send(sip.as_raw_fd(), &order[..n]);
                        if n < BATCH {
                            break;
                        }
                    }
                }
            }
        })
        .unwrap()
}

fn run_for_calls(n: usize, rates: &[u64], seconds: u64, relay_options: Option<RelayOptions>) {
    let exe = std::env::current_exe().unwrap();
    // Pinned: the generator process on CPU 0, the relay worker on CPU 1, so
    // the scheduler never parks the relay behind the generator.
    let mut command = if pin() {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let mut child = command
        .env("RELAY_LOAD_ROLE", "traffic")
        .env("RELAY_LOAD_BURST", burst().to_string())
        .env("RELAY_LOAD_TRANSCODED", transcoded_calls(n).to_string())
        .env("RELAY_LOAD_BOTH_WAYS", if both_ways() { "1" } else { "0" })
        .env(
            "RELAY_LOAD_SHARED",
            if relay_options.is_some_and(|o| o.web_port.is_some()) {
                "1"
            } else {
                "0"
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut t = Traffic {
        child,
        stdin,
        stdout,
    };
    let hello = t.line();
    let addrs: Vec<SocketAddr> = hello
        .split_whitespace()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (browser, sink) = (addrs[0], addrs[1]);

    let relay = relay_options.map(|options| Relay::start_with_options(1, options).unwrap());
    let stop_bare = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut bare_pairs = Vec::new();
    let mut calls = Vec::new();
    let mut gateway_ports = Vec::new();
    let mut sip_ports = Vec::new();
    let transcoded = transcoded_calls(n);
    let shared_port = relay.as_ref().and_then(|r| r.web_port());
    for call in 0..n {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        sip_ports.push(sip.local_addr().unwrap());
        let (web, web_remote) = match shared_port {
            Some(port) => {
                gateway_ports.push(port);
                (
                    None,
                    SocketAddr::new(browser_source(call).into(), browser.port()),
                )
            }
            None => {
                let web = UdpSocket::bind("127.0.0.1:0").unwrap();
                gateway_ports.push(web.local_addr().unwrap());
                (Some(web), browser)
            }
        };
        let Some(relay) = &relay else {
            bare_pairs.push((web.unwrap(), sip));
            continue;
        };
        calls.push(
            relay
                .add_call(CallMediaSetup {
                    web_socket: web,
                    web_remote: Some(web_remote),
                    // As in a call: media toward the browser names its
                    // source, and each datagram received reports its local
                    // address.
                    web_local: Some(std::net::Ipv4Addr::LOCALHOST.into()),
                    web_srtp: Some((
                        SrtpContext::new(&key()).unwrap(),
                        SrtpContext::new(&key()).unwrap(),
                    )),
                    ..CallMediaSetup::new(
                        sip,
                        sink,
                        if call < transcoded {
                            PayloadMap::transcoded(TRANSCODE)
                        } else {
                            PayloadMap::new(&[(0, 0, 8_000)])
                        },
                    )
                })
                .unwrap(),
        );
    }
    let bare = match &relay {
        Some(relay) => {
            while relay.call_count() < n {
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        }
        None => Some(bare_forwarder(bare_pairs, sink, stop_bare.clone())),
    };
    if pin() {
        pin_worker_to_cpu(1);
    }
    let ports: Vec<String> = gateway_ports.iter().map(|a| a.to_string()).collect();
    t.say(&format!("CALLS {}", ports.join(" ")));
    let ports: Vec<String> = sip_ports.iter().map(|a| a.to_string()).collect();
    t.say(&format!("SIP {}", ports.join(" ")));

    let mut best: Option<(u64, f64)> = None;
    println!(
        "\nN = {n} calls, {transcoded} of them transcoded (max backlog for a sustained rate: {} ms)",
        MAX_BACKLOG_US / 1000
    );
    println!(
        "  offered pps | received pps | loss %  | backlog ms | relay CPU ns/packet | of it user"
    );
    for &rate in rates {
        let (user_before, _) = worker_cpu_split_ns();
        let cpu_before = worker_cpu_ns();
        let totals = || relay.as_ref().map(|r| r.totals()).unwrap_or_default();
        let (web_before, sip_before) = totals();
        let Step {
            received,
            sent,
            backlog_us,
            ..
        } = measure(&mut t, rate, seconds, false);
        let cpu = worker_cpu_ns().saturating_sub(cpu_before);
        let user = worker_cpu_split_ns().0.saturating_sub(user_before);
        let (web_after, sip_after) = totals();
        let loss = 100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64;
        let ns_per_packet = cpu as f64 / received.max(1) as f64;
        let achieved = sent / seconds;
        println!(
            "  {achieved:>11} | {:>12} | {loss:>7.3} | {:>10.1} | {ns_per_packet:>8.0}            | {:>6.0}",
            received / seconds,
            backlog_us as f64 / 1e3,
            user as f64 / received.max(1) as f64
        );
        let dropped_in = web_after.dropped_overload - web_before.dropped_overload;
        let dropped_out = sip_after.dropped_overload - sip_before.dropped_overload;
        if dropped_in + dropped_out > 0 {
            println!("      dropped by the relay: {dropped_in} arriving (socket buffer full), {dropped_out} leaving (send refused)");
        }
        // Sustained: next to no loss, and the relay kept up (it ended the
        // step less than 20 ms behind the generator).
        if loss < 0.1 && backlog_us < MAX_BACKLOG_US {
            best = Some((achieved, ns_per_packet));
        } else {
            break;
        }
    }
    match best {
        Some((rate, ns)) if relay.is_none() => println!(
            "  max at < 0.1 % loss: {rate} pps ({ns:.0} ns CPU per packet, {:.0} pps per fully used core)",
            1e9 / ns
        ),
        Some((rate, ns)) => {
            let half = rate / 2;
            let relayed = measure(&mut t, half, seconds, false);
            let direct = measure(&mut t, half, seconds, true);
            let (p50, p99) = (relayed.p50_ns, relayed.p99_ns);
            let (b50, b99) = (direct.p50_ns, direct.p99_ns);
            println!(
                "  max at < 0.1 % loss: {rate} pps ({ns:.0} ns relay CPU per packet, {:.0} pps per fully used core)",
                1e9 / ns
            );
            if transcoded < n {
                println!(
                    "  latency at {half} pps{}: relayed p50 {:.1} µs p99 {:.1} µs; direct p50 {:.1} µs p99 {:.1} µs; added p50 {:.1} µs p99 {:.1} µs",
                    if transcoded > 0 { ", pass-through calls" } else { "" },
                    p50 as f64 / 1e3,
                    p99 as f64 / 1e3,
                    b50 as f64 / 1e3,
                    b99 as f64 / 1e3,
                    p50.saturating_sub(b50) as f64 / 1e3,
                    p99.saturating_sub(b99) as f64 / 1e3
                );
            }
            if transcoded > 0 {
                let (t50, t99) = (relayed.transcoded_p50_ns, relayed.transcoded_p99_ns);
                let (d50, d99) = (direct.transcoded_p50_ns, direct.transcoded_p99_ns);
                println!(
                    "  latency at {half} pps, transcoded calls: relayed p50 {:.1} µs p99 {:.1} µs; direct p50 {:.1} µs p99 {:.1} µs; added p50 {:.1} µs p99 {:.1} µs",
                    t50 as f64 / 1e3,
                    t99 as f64 / 1e3,
                    d50 as f64 / 1e3,
                    d99 as f64 / 1e3,
                    t50.saturating_sub(d50) as f64 / 1e3,
                    t99.saturating_sub(d99) as f64 / 1e3
                );
            }
        }
        None => println!("  no rate tried ran below 0.1 % loss"),
    }
    t.say("QUIT");
    let _ = t.child.wait();
    stop_bare.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(bare) = bare {
        let _ = bare.join();
    }
}

/// Opus 111 from the browser, PCMU 0 toward the SIP side.
const TRANSCODE: TranscodeSpec = TranscodeSpec {
    web_pt: 111,
    sip_pt: 0,
    sip_codec: SipCodec::Pcmu,
};

/// How many of `n` calls are transcoded (`--transcode K|all`, default 0).
fn transcoded_calls(n: usize) -> usize {
    let value = std::env::var("RELAY_LOAD_TRANSCODED").unwrap_or_else(|_| arg("--transcode", "0"));
    match value.as_str() {
        "all" => n,
        v => v.parse::<usize>().unwrap_or(0).min(n),
    }
}

/// 20 ms Opus packets of a voice-like signal as a browser's encoder makes
/// them (48 kHz, 32 kbit/s, in-band FEC), each padded to `PAYLOAD` bytes.
fn opus_payloads() -> Vec<[u8; PAYLOAD]> {
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    encoder.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
    encoder.set_inband_fec(true).unwrap();
    encoder.set_packet_loss_perc(10).unwrap();
    let voice: Vec<i16> = (0..48_000 * 2)
        .map(|n| {
            let t = f64::from(n) / 48_000.0;
            let pitch = 140.0 + 60.0 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let envelope = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
            let phase = 2.0 * std::f64::consts::PI * pitch * t;
            ((phase.sin() + 0.5 * (2.0 * phase).sin()) * envelope * 7000.0) as i16
        })
        .collect();
    voice
        .chunks_exact(960)
        .map(|frame| {
            let mut payload = [0u8; PAYLOAD];
            let len = encoder.encode(frame, &mut payload).unwrap();
            opus::packet::pad(&mut payload, len).unwrap();
            payload
        })
        .collect()
}

/// Packets per call sent back to back in one GSO datagram (`--burst`, 1..=8;
/// default 1: every packet its own datagram, calls round-robin).
/// Whether the web legs share the relay's one port (`--web-port shared`).
fn both_ways() -> bool {
    match std::env::var("RELAY_LOAD_BOTH_WAYS") {
        Ok(v) => v == "1",
        Err(_) => std::env::args().any(|a| a == "--both-ways"),
    }
}

fn shared_web_port() -> bool {
    match std::env::var("RELAY_LOAD_SHARED") {
        Ok(v) => v == "1",
        Err(_) => arg("--web-port", "range") == "shared",
    }
}

/// Call `call`'s browser address on the shared port: one of its own on
/// loopback (all of 127/8 is local), so the port can tell calls apart.
fn browser_source(call: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 1, (call / 200) as u8, (call % 200 + 1) as u8)
}

fn burst() -> usize {
    let value = std::env::var("RELAY_LOAD_BURST").unwrap_or_else(|_| arg("--burst", "1"));
    value
        .parse::<usize>()
        .unwrap_or(1)
        .clamp(1, BUF_LEN / SRTP_LEN)
}

/// Whether to pin (`--pin 1`, the default on a machine with two or more CPUs).
fn pin() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    arg("--pin", if cpus >= 2 { "1" } else { "0" }) == "1"
}

/// The relay worker thread's /proc task directory.
fn worker_task() -> Option<std::path::PathBuf> {
    task_named("relay-0")
}

/// This process's thread called `name`, waiting up to a second for it to
/// name itself.
fn task_named(name: &str) -> Option<std::path::PathBuf> {
    for _ in 0..200 {
        let tasks = std::fs::read_dir("/proc/self/task").ok()?;
        let found = tasks.flatten().map(|t| t.path()).find(|path| {
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == name)
        });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The thread id of this process's thread `name`, as tools take it.
fn thread_id(name: &str) -> Option<String> {
    task_named(name).and_then(|p| p.file_name()?.to_str().map(str::to_string))
}

/// Gives this process's thread `name` a real-time priority (SCHED_FIFO 10),
/// when the system lets us.
fn prioritize_thread(name: &str) {
    let Some(tid) = thread_id(name) else {
        return;
    };
    let _ = Command::new("chrt")
        .args(["-f", "-p", "10", &tid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Moves the relay worker thread onto `cpu` (taskset takes a thread id).
fn pin_worker_to_cpu(cpu: usize) {
    let Some(tid) = thread_id("relay-0") else {
        println!("  (relay worker thread not found: not pinned)");
        return;
    };
    let pinned = Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pinned {
        println!("  (taskset failed: relay worker not pinned)");
    }
}

/// CPU time (user + system) of the relay worker thread, from /proc.
fn worker_cpu_ns() -> u64 {
    let (user, system) = worker_cpu_split_ns();
    user + system
}

/// The relay worker's CPU time so far: (user, system) in ns.
fn worker_cpu_split_ns() -> (u64, u64) {
    let tick_ns = 1e9 / 100.0; // USER_HZ
    let Some(task) = worker_task() else {
        return (0, 0);
    };
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        (utime as f64 * tick_ns) as u64,
        (stime as f64 * tick_ns) as u64,
    )
}

/// The second process: a browser socket sending SRTP to every call's web
/// port and a sink socket standing for the SIP peer.
fn traffic() {
    // On the shared port each call sends from its own address (see
    // `browser_source`): bound to all of them, chosen per datagram.
    let shared = shared_web_port();
    let browser = UdpSocket::bind(if shared { "0.0.0.0:0" } else { "127.0.0.1:0" }).unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    browser.set_nonblocking(true).unwrap();
    sink.set_nonblocking(true).unwrap();
    // The sink takes every call's packets: room for scheduling gaps.
    let _ = set_buffer_sizes(sink.as_raw_fd(), 1 << 20, 1 << 20);
    let _ = set_buffer_sizes(browser.as_raw_fd(), 1 << 20, 4 << 20);
    let mut out = std::io::stdout();
    writeln!(
        out,
        "HELLO {} {}",
        browser.local_addr().unwrap(),
        sink.local_addr().unwrap()
    )
    .unwrap();
    out.flush().unwrap();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut targets: Vec<SocketAddr> = Vec::new();
    let mut sip_targets: Vec<SocketAddr> = Vec::new();
    let mut contexts: Vec<SrtpContext> = Vec::new();
    let mut seqs: Vec<u16> = Vec::new();
    let mut stamps = std::sync::Arc::new(Vec::new());
    let opus = opus_payloads();
    let epoch = Instant::now();
    while let Some(Ok(line)) = lines.next() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("CALLS") => {
                targets = words.map(|a| a.parse().unwrap()).collect();
                contexts = targets
                    .iter()
                    .map(|_| SrtpContext::new(&key()).unwrap())
                    .collect();
                seqs = vec![0; targets.len()];
                stamps = std::sync::Arc::new(
                    (0..transcoded_calls(targets.len()) * STAMPS_PER_CALL)
                        .map(|_| std::sync::atomic::AtomicU64::new(0))
                        .collect(),
                );
            }
            Some("SIP") => {
                sip_targets = words.map(|a| a.parse().unwrap()).collect();
            }
            Some("RUN") => {
                let rate: u64 = words.next().unwrap().parse().unwrap();
                let seconds: u64 = words.next().unwrap().parse().unwrap();
                let direct = words.next() == Some("1");
                let r = run(
                    &browser,
                    &sink,
                    (&targets, &sip_targets),
                    &mut contexts,
                    &mut seqs,
                    rate,
                    seconds,
                    direct,
                    epoch,
                    (&stamps, &opus),
                );
                writeln!(out, "{}", r.line()).unwrap();
                out.flush().unwrap();
            }
            _ => return,
        }
    }
}

/// Receives on the sink in batches until it has been quiet for 300 ms after
/// `stop`, returning each packet's one-way latency in ns. Between empty
/// polls it naps briefly rather than spinning a core the relay needs.
fn receive_all(
    sink: UdpSocket,
    epoch: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stamps: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>>,
    transcoded: usize,
) -> (Vec<u32>, Vec<u32>, Instant) {
    let mut latencies = Vec::new();
    let mut transcoded_latencies = Vec::new();
    let mut last_arrival = Instant::now();
    let mut rx = Batch::new();
    let mut quiet_since = Instant::now();
    loop {
        let n = rx.recv(sink.as_raw_fd()).unwrap_or(0);
        let now = epoch.elapsed().as_nanos() as u64;
        for i in 0..n {
            if rx.lens[i] < 20 {
                continue;
            }
            let packet = &rx.bufs[i];
            let call = u32::from_be_bytes(packet[8..12].try_into().unwrap()) as usize - 1;
            if call < transcoded {
                let seq = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
                let sent_at = stamps[call * STAMPS_PER_CALL + seq % STAMPS_PER_CALL]
                    .load(std::sync::atomic::Ordering::Relaxed);
                transcoded_latencies
                    .push(now.saturating_sub(sent_at).min(u64::from(u32::MAX)) as u32);
            } else {
                let sent_at = u64::from_be_bytes(packet[12..20].try_into().unwrap());
                latencies.push(now.saturating_sub(sent_at).min(u64::from(u32::MAX)) as u32);
            }
        }
        if n > 0 {
            quiet_since = Instant::now();
            last_arrival = quiet_since;
        } else if stop.load(std::sync::atomic::Ordering::Relaxed)
            && quiet_since.elapsed() > Duration::from_millis(300)
        {
            return (latencies, transcoded_latencies, last_arrival);
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// Counts what reaches `socket` until it has been quiet for 300 ms after
/// `stop`: (datagrams, when the last came).
fn count_all(
    socket: UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Instant) {
    let mut rx = Batch::new();
    let (mut count, mut last_arrival, mut quiet_since) = (0u64, Instant::now(), Instant::now());
    loop {
        let n = rx.recv(socket.as_raw_fd()).unwrap_or(0);
        if n > 0 {
            count += n as u64;
            quiet_since = Instant::now();
            last_arrival = quiet_since;
        } else if stop.load(std::sync::atomic::Ordering::Relaxed)
            && quiet_since.elapsed() > Duration::from_millis(300)
        {
            return (count, last_arrival);
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    browser: &UdpSocket,
    sink: &UdpSocket,
    (targets, sip_targets): (&[SocketAddr], &[SocketAddr]),
    contexts: &mut [SrtpContext],
    seqs: &mut [u16],
    rate: u64,
    seconds: u64,
    direct: bool,
    epoch: Instant,
    (stamps, opus): (
        &std::sync::Arc<Vec<std::sync::atomic::AtomicU64>>,
        &[[u8; PAYLOAD]],
    ),
) -> Step {
    let sink_addr = sink.local_addr().unwrap();
    let transcoded = transcoded_calls(targets.len());
    let shared = shared_web_port();
    // A burst leaves as one datagram the kernel cuts into `burst` packets
    // (UDP GSO), so the generator's own kernel path is paid once per burst.
    let burst = burst();
    let segment = if direct { RTP_LEN } else { SRTP_LEN };
    let gso = if burst > 1 { segment as i32 } else { 0 };
    nix::sys::socket::setsockopt(
        browser.as_raw_fd(),
        nix::sys::socket::sockopt::UdpGsoSegment,
        &gso,
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The receiving thread shares CPU 0 with this sending one. When pinned
    // it runs at real-time priority, so it stamps arrivals when they happen
    // rather than when the sender's time slice ends.
    let receiver = {
        let sink = sink.try_clone().unwrap();
        let stop = stop.clone();
        let stamps = stamps.clone();
        std::thread::Builder::new()
            .name("sink".into())
            .spawn(move || receive_all(sink, epoch, stop, stamps, transcoded))
            .unwrap()
    };
    if pin() {
        prioritize_thread("sink");
    }
    // Both ways: the SIP peer's packets too, and the browser socket counts
    // what the relay sends it.
    let both = both_ways() && !direct;
    let browser_receiver = both.then(|| {
        let browser = browser.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("browser".into())
            .spawn(move || count_all(browser, stop))
            .unwrap()
    });
    let mut tx_sip = Batch::new();
    let mut tx = Batch::new();
    let mut sent = 0u64;
    let order: Vec<usize> = (0..BATCH).collect();
    let start = Instant::now();
    let stop_sending = start + Duration::from_secs(seconds);
    let mut next_call = 0usize;
    while Instant::now() < stop_sending {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            // Ahead of schedule: give the core back instead of spinning.
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let count = ((due - sent) as usize).div_ceil(burst).min(BATCH);
        let stamp = epoch.elapsed().as_nanos() as u64;
        for i in 0..count {
            let call = next_call;
            next_call = (next_call + 1) % targets.len();
            let mut message_len = 0;
            for _ in 0..burst {
                let seq = seqs[call];
                seqs[call] = seq.wrapping_add(1);
                let buf = &mut tx.bufs[i][message_len..];
                buf[..12].copy_from_slice(&[
                    0x80,
                    0,
                    (seq >> 8) as u8,
                    seq as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ]);
                buf[8..12].copy_from_slice(&(call as u32 + 1).to_be_bytes());
                if call < transcoded {
                    buf[1] = TRANSCODE.web_pt;
                    buf[12..RTP_LEN].copy_from_slice(&opus[usize::from(seq) % opus.len()]);
                    stamps[call * STAMPS_PER_CALL + usize::from(seq) % STAMPS_PER_CALL]
                        .store(stamp, std::sync::atomic::Ordering::Relaxed);
                } else {
                    buf[12..20].copy_from_slice(&stamp.to_be_bytes());
                }
                message_len += if direct {
                    RTP_LEN
                } else {
                    contexts[call].protect_rtp(buf, RTP_LEN).unwrap()
                };
            }
            tx.lens[i] = message_len;
            tx.addrs[i] = Some(if direct { sink_addr } else { targets[call] });
            tx.locals[i] = (shared && !direct).then(|| browser_source(call).into());
            if both {
                // The switch's 20 ms of µ-law (silence-free, any bytes do).
                let seq = seqs[call];
                let buf = &mut tx_sip.bufs[i];
                buf[..12].copy_from_slice(&[
                    0x80,
                    0,
                    (seq >> 8) as u8,
                    seq as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ]);
                buf[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                buf[8..12].copy_from_slice(&(call as u32 + 0x1000).to_be_bytes());
                for (k, b) in buf[12..RTP_LEN].iter_mut().enumerate() {
                    *b = (k as u8).wrapping_mul(seq as u8) | 0x10;
                }
                tx_sip.lens[i] = RTP_LEN;
                tx_sip.addrs[i] = Some(sip_targets[call]);
                tx_sip.locals[i] = None;
            }
        }
        sent += (tx.send(browser.as_raw_fd(), &order[..count]).unwrap_or(0) * burst) as u64;
        if both {
            sent += tx_sip.send(sink.as_raw_fd(), &order[..count]).unwrap_or(0) as u64;
        }
    }
    let sending_ended = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut latencies, mut transcoded_latencies, mut last_arrival) = receiver.join().unwrap();
    let mut received = (latencies.len() + transcoded_latencies.len()) as u64;
    if let Some(r) = browser_receiver {
        let (count, last) = r.join().unwrap();
        received += count;
        last_arrival = last_arrival.max(last);
    }
    let backlog = last_arrival.saturating_duration_since(sending_ended);
    latencies.sort_unstable();
    transcoded_latencies.sort_unstable();
    let percentile = |of: &[u32], p: f64| -> u64 {
        if of.is_empty() {
            0
        } else {
            u64::from(of[((of.len() - 1) as f64 * p) as usize])
        }
    };
    let pct = |p: f64| percentile(&latencies, p);
    Step {
        received,
        sent,
        p50_ns: pct(0.5),
        p99_ns: pct(0.99),
        transcoded_p50_ns: percentile(&transcoded_latencies, 0.5),
        transcoded_p99_ns: percentile(&transcoded_latencies, 0.99),
        backlog_us: backlog.as_micros() as u64,
    }
}
