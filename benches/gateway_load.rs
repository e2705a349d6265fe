//! The whole gateway under load (a benchmark, not a test): N concurrent
//! calls, each set up through the API with ICE and DTLS-SRTP by a made-up
//! browser whose DTLS is OpenSSL's (the system libssl, as a browser's own
//! BoringSSL would be — not the gateway's code), answered by SIPp
//! (`benches/soak/uas.xml`, `-rtp_echo`), then 50 packets a second each way
//! per call for a while.
//!
//!   cargo bench --bench gateway_load -- [--calls 100,250,500] [--seconds 10]
//!       [--at-once 50]
//!
//! For each N: call setups per second (`--at-once` in flight), p50 and p99
//! setup time (the `POST …/calls` to the first echo decrypted), the loss
//! over the hold (packets sent by the browsers against echoes they
//! decrypted: both gateway legs and SIPp's echo in between), the gateway's
//! CPU (`/proc`, one relay worker) per call and in all, and its RSS: per
//! session (every agent signs in first; the growth over the idle figure)
//! and per call (the growth once every call is up, over the sessions'
//! figure). The browsers, SIPp and the gateway share this machine's cores:
//! see BENCHMARKS.md for what limits each figure. `GATEWAY_WRAPPER="taskset
//! -c 1"` gives the gateway a core of its own (taskset execs it, so the
//! figures stay the gateway's).
//! Loopback only; needs `sipp` on PATH.

mod support;
use support::arg;
use support::rig::{
    binding_request, nominate, raise_file_limit, status_field, transaction_id, wait_ready, Rig,
    Session,
};

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVerifyMode};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use webrtc_srtp::context::Context as Srtp;
use webrtc_srtp::protection_profile::ProtectionProfile;

use webrtc_sip_gateway::sdp::Description;

/// The browsers' DTLS side: one OpenSSL context with a fresh certificate.
struct Dtls {
    context: SslContext,
    fingerprint: String,
}

impl Dtls {
    fn new() -> Dtls {
        let made = rcgen::generate_simple_self_signed(vec!["browser".into()]).expect("a cert");
        let cert = openssl::x509::X509::from_pem(made.cert.pem().as_bytes()).expect("PEM cert");
        let key =
            openssl::pkey::PKey::private_key_from_pem(made.signing_key.serialize_pem().as_bytes())
                .expect("PEM key");
        let digest = cert
            .digest(openssl::hash::MessageDigest::sha256())
            .expect("a digest");
        let fingerprint = format!(
            "sha-256 {}",
            digest
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        let mut b = SslContext::builder(SslMethod::dtls()).expect("DTLS");
        b.set_certificate(&cert).expect("cert");
        b.set_private_key(&key).expect("key");
        b.set_tlsext_use_srtp("SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80")
            .expect("use_srtp");
        // The gateway's certificate is self-signed: its fingerprint in the
        // answer is what is checked, after the handshake.
        b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
        Dtls {
            context: b.build(),
            fingerprint,
        }
    }
}

/// Datagrams between OpenSSL and the socket: one read or write is one
/// datagram.
#[derive(Default)]
struct Datagrams {
    inbox: VecDeque<Vec<u8>>,
    outbox: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outbox.push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A call with its media up: the browser's SRTP both ways.
struct Media {
    socket: UdpSocket,
    gateway: SocketAddr,
    check_user: String,
    check_key: String,
    protect: Srtp,
    unprotect: Srtp,
    ssrc: u32,
}

/// Counters of a run.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    echoed: AtomicU64,
    failed: AtomicU64,
}

/// One call from the API request to its first echo; returns its media and
/// the setup time.
async fn set_up(session: &mut Session, dtls: &Dtls, n: u64) -> Result<(Media, Duration), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e} (raise the open-file limit?)"))?;
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    let (ufrag, pwd, ssrc) = (
        format!("l{n:06x}"),
        format!("loadpassword{n:016x}"),
        0x6000_0000 | (n as u32 & 0x0fff_ffff),
    );
    let offer = format!(
        "v=0\r\no=- {ssrc} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=audio {port} UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=candidate:1 1 udp 2122260223 127.0.0.1 {port} typ host\r\n\
         a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:{}\r\na=setup:actpass\r\n\
         a=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=ssrc:{ssrc} cname:load\r\n",
        dtls.fingerprint
    );
    let started = Instant::now();
    let (_call, answer) = session
        .call_answered("5000", &offer, Duration::from_secs(20))
        .await?;
    let answer = Description::parse(&answer).map_err(|e| format!("answer: {e}"))?;
    let audio = &answer.audio;
    let gateway = SocketAddr::new(audio.address.ok_or("no address")?, audio.port);
    let ice = audio.ice.as_ref().ok_or("no ICE credentials")?;
    let expected = audio.fingerprint.clone().ok_or("no fingerprint")?;
    let check_user = format!("{}:{ufrag}", ice.ufrag);
    let check_key = ice.pwd.clone();
    let mut buf = vec![0u8; 2048];

    // ICE: a nominating check until answered.
    nominate(&socket, gateway, &check_user, &check_key).await?;

    // DTLS as the active side, by OpenSSL, its flights carried by hand.
    let mut ssl = Ssl::new(&dtls.context).map_err(|e| e.to_string())?;
    ssl.set_mtu(1200).map_err(|e| e.to_string())?;
    ssl.set_connect_state();
    let mut stream = SslStream::new(ssl, Datagrams::default()).map_err(|e| e.to_string())?;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let step = stream.do_handshake();
        for d in std::mem::take(&mut stream.get_mut().outbox) {
            socket
                .send_to(&d, gateway)
                .await
                .map_err(|e| e.to_string())?;
        }
        match step {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Err(e) => return Err(format!("DTLS: {e}")),
        }
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the DTLS handshake did not finish in 10 s".into());
        }
        match tokio::time::timeout(left, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if n > 0 && (20..=63).contains(&buf[0]) => {
                stream.get_mut().inbox.push_back(buf[..n].to_vec());
            }
            Ok(_) => {}
            Err(_) => return Err("the DTLS handshake did not finish in 10 s".into()),
        }
    }
    let ssl = stream.ssl();
    let peer = ssl.peer_certificate().ok_or("no gateway certificate")?;
    let digest = peer
        .digest(openssl::hash::MessageDigest::sha256())
        .map_err(|e| e.to_string())?;
    let got: Vec<u8> = digest.to_vec();
    if expected.sha256[..] != got[..] {
        return Err("the gateway's certificate is not the answer's fingerprint".into());
    }
    let (profile, key_len, salt_len) = match ssl.selected_srtp_profile().map(|p| p.id().as_raw()) {
        Some(7) => (ProtectionProfile::AeadAes128Gcm, 16, 12),
        Some(1) => (ProtectionProfile::Aes128CmHmacSha1_80, 16, 14),
        other => return Err(format!("SRTP profile {other:?}")),
    };
    let mut keys = vec![0u8; 2 * (key_len + salt_len)];
    ssl.export_keying_material(&mut keys, "EXTRACTOR-dtls_srtp", None)
        .map_err(|e| e.to_string())?;
    let (client_key, rest) = keys.split_at(key_len);
    let (server_key, rest) = rest.split_at(key_len);
    let (client_salt, server_salt) = rest.split_at(salt_len);
    let protect =
        Srtp::new(client_key, client_salt, profile, None, None).map_err(|e| e.to_string())?;
    let unprotect =
        Srtp::new(server_key, server_salt, profile, None, None).map_err(|e| e.to_string())?;
    let mut media = Media {
        socket,
        gateway,
        check_user,
        check_key,
        protect,
        unprotect,
        ssrc,
    };
    // Audio until the first echo comes back.
    let mut seq = 0u16;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        media.send_audio(&mut seq).await;
        let wait =
            tokio::time::timeout(Duration::from_millis(20), media.socket.recv_from(&mut buf));
        if let Ok(Ok((n, _))) = wait.await {
            if media.is_echo(&buf[..n]) {
                return Ok((media, started.elapsed()));
            }
        }
        if Instant::now() > deadline {
            return Err("no echo in 10 s".into());
        }
    }
}

impl Media {
    async fn send_audio(&mut self, seq: &mut u16) -> bool {
        let mut packet = [0u8; 172];
        packet[0] = 0x80;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(*seq) * 160).to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        packet[12..].fill(0xff);
        *seq = seq.wrapping_add(1);
        match self.protect.encrypt_rtp(&packet) {
            Ok(srtp) => self.socket.send_to(&srtp, self.gateway).await.is_ok(),
            Err(_) => false,
        }
    }

    fn is_echo(&mut self, data: &[u8]) -> bool {
        data.len() > 12
            && (128..=191).contains(&data[0])
            && !(192..=223).contains(&data[1])
            && self.unprotect.decrypt_rtp(data).is_ok()
    }

    /// 50 packets a second and a consent check every 2 s until `stop`;
    /// counts what was sent and echoed while `counting`.
    async fn hold(
        mut self,
        counts: Arc<Counts>,
        counting: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut consent = tokio::time::interval(Duration::from_secs(2));
        let mut buf = vec![0u8; 2048];
        let mut seq = 1000u16;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    if self.send_audio(&mut seq).await && *counting.borrow() {
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = consent.tick() => {
                    let check = binding_request(transaction_id(), &self.check_user, &self.check_key, false);
                    let _ = self.socket.send_to(&check, self.gateway).await;
                }
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, _)) = r {
                        if self.is_echo(&buf[..n]) && *counting.borrow() {
                            counts.echoed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

/// The gateway's CPU time so far, in seconds (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name's closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn run(calls: u64, seconds: u64, at_once: usize) -> String {
    let ports = calls as u16 + 20;
    let rig = Rig::start((20000, 20000 + ports), (30000, 30000 + 2 * ports + 1), 30);
    let http = reqwest::Client::new();
    wait_ready(&http, &rig).await;
    let pid = rig.pid();
    let rss_idle = status_field(pid, "VmRSS:");
    let dtls = Arc::new(Dtls::new());
    let counts = Arc::new(Counts::default());
    let (count_tx, count_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Every agent signs in first (`at_once` in flight), so what the
    // sessions hold (their long-polls' connections, event queues) is told
    // apart from what the calls add.
    let gate = Arc::new(tokio::sync::Semaphore::new(at_once));
    let mut opening = Vec::new();
    for n in 0..calls {
        let (gate, http, api) = (gate.clone(), http.clone(), rig.api.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            match Session::open(&http, &api, &format!("load{n}")).await {
                Ok(session) => Some((n, session)),
                Err(e) => {
                    eprintln!("session {n}: {e}");
                    None
                }
            }
        }));
    }
    let mut signed_in = Vec::new();
    for t in opening {
        if let Ok(Some(opened)) = t.await {
            signed_in.push(opened);
        }
    }
    let sessions_open = signed_in.len() as f64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_sessions = status_field(pid, "VmRSS:");

    // Setups, `at_once` in flight.
    let setup_started = Instant::now();
    let mut tasks = Vec::new();
    for (n, mut session) in signed_in {
        let (gate, dtls) = (gate.clone(), dtls.clone());
        let (counts, count_rx, stop_rx) = (counts.clone(), count_rx.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok()?;
            let result = set_up(&mut session, &dtls, n).await;
            drop(permit);
            match result {
                Ok((media, took)) => {
                    tokio::spawn(media.hold(counts, count_rx, stop_rx));
                    Some((took, session))
                }
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("call {n}: {e}");
                    None
                }
            }
        }));
    }
    let mut setups = Vec::new();
    let mut sessions = Vec::new();
    for t in tasks {
        if let Ok(Some((took, session))) = t.await {
            setups.push(took);
            sessions.push(session);
        }
    }
    let setup_wall = setup_started.elapsed();
    setups.sort();

    // The hold: every call up, counted for `seconds`.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_up = status_field(pid, "VmRSS:");
    let cpu_before = cpu_seconds(pid);
    let _ = count_tx.send(true);
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let _ = count_tx.send(false);
    let cpu = cpu_seconds(pid) - cpu_before;
    let held = hold_started.elapsed().as_secs_f64();
    // Echoes still in flight when counting stopped are not counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(true);
    for session in sessions {
        let _ = session.close().await;
    }
    let up = setups.len() as f64;
    let sent = counts.sent.load(Ordering::Relaxed) as f64;
    let echoed = counts.echoed.load(Ordering::Relaxed) as f64;
    let loss = if sent > 0.0 {
        100.0 * (1.0 - echoed / sent).max(0.0)
    } else {
        f64::NAN
    };
    format!(
        "| {calls} | {up} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1} | {:.2} | {:.1} | {:.1} |",
        counts.failed.load(Ordering::Relaxed),
        up / setup_wall.as_secs_f64(),
        percentile(&setups, 0.5),
        percentile(&setups, 0.99),
        loss,
        100.0 * cpu / held,
        1000.0 * cpu / held / up.max(1.0),
        (rss_sessions.saturating_sub(rss_idle)) as f64 / sessions_open.max(1.0),
        (rss_up.saturating_sub(rss_sessions)) as f64 / up.max(1.0),
    )
}

fn main() {
    raise_file_limit();
    let calls: Vec<u64> = arg("--calls", "100,250,500")
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let seconds: u64 = arg("--seconds", "10").parse().unwrap_or(10);
    let at_once: usize = arg("--at-once", "50").parse().unwrap_or(50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "| calls | up | failed | setups/s | setup p50 ms | setup p99 ms | loss % | gateway CPU % of a core | CPU ms/s per call | RSS KiB per session | RSS KiB per call |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for n in calls {
        println!("{}", runtime.block_on(run(n, seconds, at_once)));
    }
}
