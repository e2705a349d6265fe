//! Soak run (a benchmark, not a test): the release binary under call churn
//! for a bounded time, then its resources read back.
//!
//!   cargo bench --bench soak -- [--minutes 30] [--calls 200] [--idle-calls 1000]
//!       [--phase churn|idle|both]
//!
//! The far end is SIPp (`benches/soak/uas.xml`, `-rtp_echo`): it answers at
//! once with PCMU and echoes the audio, and refuses user `busy` with 486.
//! The browsers are made up here, one task per call: each binds its own UDP
//! socket, offers DTLS-SRTP through `POST …/calls`, answers the gateway's ICE
//! with a nominating check, runs the DTLS handshake as the active side with the
//! gateway's own DTLS code, then sends 20 ms PCMU packets as SRTP and counts
//! the echoes it can decrypt, with consent checks every 2 s.
//!
//! `churn`: `--calls` workers, each with a session of its own, place calls
//! one after the other for `--minutes`. Of every 20 calls of a worker, 16 are
//! normal (5–25 s of audio both ways, then `DELETE`), and four fail on
//! purpose: a body with a broken SDP (must get 400 and leave nothing), a call
//! to `busy` (refused by SIPp with 486), a browser that vanishes after 2 s
//! (must end by the consent/RTP timeout), and a session deleted mid-call
//! (every call of it hung up). The gateway's RSS, open descriptors, threads,
//! free media ports and runtime tasks are read at the start, every minute,
//! and at the end after the last call is gone.
//!
//! `idle`: a new gateway, a few warm-up calls, then `--idle-calls` calls
//! set up (ICE, DTLS) and held with consent checks but no audio; the RSS
//! difference over the call count is the memory per established call.
//!
//! Loopback only. Needs `sipp` (Debian's sip-tester) on PATH.

mod support;
use support::arg;
use support::rig::{
    binding_request, metric, nominate, raise_file_limit, status_field, transaction_id, wait_ready,
    Rig, Session,
};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use webrtc_sip_gateway::media::srtp::SrtpContext;
use webrtc_sip_gateway::sdp::Description;
use webrtc_sip_gateway::webrtc::dtls::{DtlsIdentity, DtlsInput, DtlsLeg, DtlsOutput};

/// Outcome counters of one run, by what happened.
#[derive(Default)]
struct Outcomes {
    normal_ok: AtomicU64,
    normal_failed: AtomicU64,
    bad_sdp_refused: AtomicU64,
    busy_refused: AtomicU64,
    vanished_ended: AtomicU64,
    session_deleted: AtomicU64,
    unexpected: AtomicU64,
    packets_sent: AtomicU64,
    packets_echoed: AtomicU64,
}

impl Outcomes {
    fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "normal calls ok {} / failed {}; bad SDP refused {}; busy refused {}; vanished browsers ended {}; \
             sessions deleted mid-call {}; unexpected {}; audio packets sent {} / echoed back {}",
            g(&self.normal_ok),
            g(&self.normal_failed),
            g(&self.bad_sdp_refused),
            g(&self.busy_refused),
            g(&self.vanished_ended),
            g(&self.session_deleted),
            g(&self.unexpected),
            g(&self.packets_sent),
            g(&self.packets_echoed),
        )
    }
}

/// The process figures the soak watches.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    calls: f64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    web_ports_free: f64,
    sip_ports_free: f64,
    tasks: f64,
}

async fn sample(http: &reqwest::Client, rig: &Rig) -> Sample {
    let pid = rig.pid();
    // The process first: the metrics request's own connection is not yet
    // open (and the last one has long closed), so it is never counted.
    let rss_kib = status_field(pid, "VmRSS:");
    let threads = status_field(pid, "Threads:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let text = match http.get(format!("{}/metrics", rig.admin)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    Sample {
        calls: metric(&text, "gateway_calls"),
        rss_kib,
        fds,
        threads,
        web_ports_free: metric(&text, "gateway_media_ports_free{leg=\"web\"}"),
        sip_ports_free: metric(&text, "gateway_media_ports_free{leg=\"sip\"}"),
        tasks: metric(&text, "gateway_runtime_tasks"),
    }
}

fn row(label: &str, s: &Sample) -> String {
    format!(
        "| {label} | {} | {:.1} | {} | {} | {} / {} | {} |",
        s.calls,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        s.web_ports_free,
        s.sip_ports_free,
        s.tasks
    )
}

const TABLE_HEAD: &str = "| when | calls | RSS MiB | open fds | threads | ports free web / sip | runtime tasks |\n| --- | --- | --- | --- | --- | --- | --- |";

/// A made-up browser: one UDP socket and its ICE credentials.
struct Browser {
    socket: UdpSocket,
    ufrag: String,
    pwd: String,
    ssrc: u32,
}

/// A browser whose ICE check and DTLS handshake went through.
struct Connected {
    browser: Browser,
    gateway: SocketAddr,
    check_user: String,
    check_key: String,
    protect: SrtpContext,
    unprotect: SrtpContext,
}

impl Browser {
    async fn new(n: u64) -> Browser {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("a browser socket (raise the open-file limit?)");
        Browser {
            socket,
            ufrag: format!("s{n:06x}"),
            pwd: format!("soakpassword{n:016x}"),
            ssrc: 0x5000_0000 | (n as u32 & 0x0fff_ffff),
        }
    }

    fn offer(&self, fingerprint: &str) -> String {
        let port = self.socket.local_addr().map(|a| a.port()).unwrap_or(9);
        format!(
            "v=0\r\no=- {ssrc} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=audio {port} UDP/TLS/RTP/SAVPF 0 126\r\nc=IN IP4 127.0.0.1\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=candidate:1 1 udp 2122260223 127.0.0.1 {port} typ host\r\n\
             a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:{fingerprint}\r\na=setup:actpass\r\n\
             a=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:126 telephone-event/8000\r\na=ssrc:{ssrc} cname:soak\r\n",
            self.ufrag,
            self.pwd,
            ssrc = self.ssrc,
        )
    }

    /// ICE (one nominating check, answered) then DTLS as the active side.
    async fn connect(self, answer: &str, identity: &DtlsIdentity) -> Result<Connected, String> {
        let answer = Description::parse(answer).map_err(|e| format!("answer: {e}"))?;
        let audio = &answer.audio;
        let address = audio.address.ok_or("the answer has no address")?;
        let gateway = SocketAddr::new(address, audio.port);
        let ice = audio
            .ice
            .as_ref()
            .ok_or("the answer has no ICE credentials")?;
        let fingerprint = audio.fingerprint.clone().ok_or("no fingerprint")?;
        let check_user = format!("{}:{}", ice.ufrag, self.ufrag);
        let check_key = ice.pwd.clone();
        let mut buf = vec![0u8; 2048];

        // ICE: a nominating check, repeated until answered.
        nominate(&self.socket, gateway, &check_user, &check_key).await?;

        // DTLS, driven by the gateway's own sans-IO leg as the client.
        let mut dtls =
            DtlsLeg::new(identity, fingerprint, true, Instant::now()).map_err(|e| e.to_string())?;
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let wake;
            loop {
                match dtls.poll_output() {
                    DtlsOutput::Transmit(data) => {
                        self.socket
                            .send_to(&data, gateway)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    DtlsOutput::Timeout(t) => {
                        wake = t;
                        break;
                    }
                }
            }
            if dtls.keys().is_some() {
                break;
            }
            let now = Instant::now();
            if now > give_up {
                return Err("the DTLS handshake did not finish in 10 s".into());
            }
            let wait = wake
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(100))
                .min(give_up - now);
            match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) if n > 0 && (20..=63).contains(&buf[0]) => dtls
                    .handle_input(Instant::now(), DtlsInput::Packet(&buf[..n]))
                    .map_err(|e| e.to_string())?,
                Ok(_) => {}
                Err(_) => dtls
                    .handle_input(Instant::now(), DtlsInput::Timeout)
                    .map_err(|e| e.to_string())?,
            }
        }
        let keys = dtls.keys().ok_or("no keys")?;
        let protect = SrtpContext::new(&keys.outbound).map_err(|e| format!("{e:?}"))?;
        let unprotect = SrtpContext::new(&keys.inbound).map_err(|e| format!("{e:?}"))?;
        Ok(Connected {
            browser: self,
            gateway,
            check_user,
            check_key,
            protect,
            unprotect,
        })
    }
}

impl Connected {
    /// Audio (when `audio`) every 20 ms and a consent check every
    /// `consent`, until `stop` says so or `limit` passes. Returns the
    /// packets sent and the echoes decrypted.
    async fn run(
        &mut self,
        audio: bool,
        consent: Duration,
        limit: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> (u64, u64) {
        let end = tokio::time::Instant::now() + limit;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut check = tokio::time::interval(consent);
        let (mut sent, mut echoed) = (0u64, 0u64);
        let (mut seq, mut ts) = (1u16, 0u32);
        let mut out = vec![0u8; 256];
        let mut inbound = vec![0u8; 2048];
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => break,
                _ = stop.changed() => break,
                _ = tick.tick(), if audio => {
                    out[..12].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                    out[2..4].copy_from_slice(&seq.to_be_bytes());
                    out[4..8].copy_from_slice(&ts.to_be_bytes());
                    out[8..12].copy_from_slice(&self.browser.ssrc.to_be_bytes());
                    out[12..172].fill(0xff);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                    if let Ok(n) = self.protect.protect_rtp(&mut out, 172) {
                        if self.browser.socket.send_to(&out[..n], self.gateway).await.is_ok() {
                            sent += 1;
                        }
                    }
                }
                _ = check.tick() => {
                    let id = transaction_id();
                    let request = binding_request(id, &self.check_user, &self.check_key, false);
                    let _ = self.browser.socket.send_to(&request, self.gateway).await;
                }
                r = self.browser.socket.recv_from(&mut inbound) => {
                    if let Ok((n, _)) = r {
                        // RTP (not RTCP: those have payload types 200–204 here).
                        if n > 12 && (128..=191).contains(&inbound[0]) && !(192..=223).contains(&inbound[1])
                            && self.unprotect.unprotect_rtp(&mut inbound[..n]).is_ok()
                        {
                            echoed += 1;
                        }
                    }
                }
            }
        }
        (sent, echoed)
    }
}

/// What the soak shares with every worker.
struct Shared {
    http: reqwest::Client,
    api: String,
    identity: DtlsIdentity,
    fingerprint: String,
    outcomes: Outcomes,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Normal,
    BadSdp,
    Busy,
    Vanish,
    SessionDeleted,
}

fn kind_of(n: u64) -> Kind {
    match n % 20 {
        3 => Kind::BadSdp,
        8 => Kind::Busy,
        13 => Kind::Vanish,
        18 => Kind::SessionDeleted,
        _ => Kind::Normal,
    }
}

/// The call was answered and connected: its browser, or why not.
async fn place(
    shared: &Shared,
    session: &mut Session,
    n: u64,
    to: &str,
) -> Result<(String, Connected), String> {
    let browser = Browser::new(n).await;
    let offer = browser.offer(&shared.fingerprint);
    let (call, answer) = session
        .call_answered(to, &offer, Duration::from_secs(10))
        .await?;
    let connected = browser.connect(&answer, &shared.identity).await?;
    Ok((call, connected))
}

async fn churn_worker(shared: Arc<Shared>, worker: u64, until: tokio::time::Instant) {
    let user = format!("soak{worker}");
    let (_never_tx, mut never) = watch::channel(false);
    let mut session = match Session::open(&shared.http, &shared.api, &user).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker {worker}: {e}");
            shared.outcomes.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut n = worker * 7;
    while tokio::time::Instant::now() < until {
        n += 1;
        let o = &shared.outcomes;
        let id = worker * 1_000_000 + n;
        match kind_of(n) {
            Kind::BadSdp => {
                let (status, body) = session
                    .send(
                        reqwest::Method::POST,
                        "/calls",
                        Some(json!({"to": "5000", "sdp": "v=0\r\nm=audio nonsense\r\n"})),
                    )
                    .await;
                if status == 400 {
                    o.bad_sdp_refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("bad SDP got {status} {body}");
                    o.unexpected.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Kind::Busy => {
                let browser = Browser::new(id).await;
                let (status, body) = session
                    .send(
                        reqwest::Method::POST,
                        "/calls",
                        Some(json!({"to": "busy", "sdp": browser.offer(&shared.fingerprint)})),
                    )
                    .await;
                let call = body["call"].as_str().unwrap_or_default().to_string();
                let ended = if status == 201 {
                    session
                        .wait_for(&call, &["call.ended"], Duration::from_secs(10))
                        .await
                } else {
                    None
                };
                match ended {
                    Some(e) if e["sip_status"] == 486 => {
                        o.busy_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("busy call: {status} {body} then {other:?}");
                        o.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            kind => match place(&shared, &mut session, id, "5000").await {
                Err(e) => {
                    eprintln!("worker {worker}: {kind:?} call: {e}");
                    o.normal_failed.fetch_add(1, Ordering::Relaxed);
                }
                Ok((call, mut connected)) => {
                    let seconds = match kind {
                        Kind::Normal => 5 + (id * 7919) % 21,
                        Kind::Vanish => 2,
                        _ => 3,
                    };
                    let (sent, echoed) = connected
                        .run(
                            true,
                            Duration::from_secs(2),
                            Duration::from_secs(seconds),
                            &mut never,
                        )
                        .await;
                    o.packets_sent.fetch_add(sent, Ordering::Relaxed);
                    o.packets_echoed.fetch_add(echoed, Ordering::Relaxed);
                    let heard = echoed * 2 >= sent && echoed > 0;
                    match kind {
                        Kind::Normal => {
                            let (status, _) = session
                                .send(reqwest::Method::DELETE, &format!("/calls/{call}"), None)
                                .await;
                            let ended = session
                                .wait_for(&call, &["call.ended"], Duration::from_secs(5))
                                .await;
                            if status == 204 && ended.is_some() && heard {
                                o.normal_ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                eprintln!(
                                    "normal call: DELETE {status}, ended {ended:?}, sent {sent} echoed {echoed}"
                                );
                                o.normal_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Kind::Vanish => {
                            drop(connected);
                            let ended = session
                                .wait_for(&call, &["call.ended"], Duration::from_secs(20))
                                .await;
                            match ended {
                                Some(e) if e["reason"] == "media_timeout" => {
                                    o.vanished_ended.fetch_add(1, Ordering::Relaxed);
                                }
                                other => {
                                    eprintln!("vanished browser: {other:?}");
                                    o.unexpected.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        _ => {
                            let status = session.close().await;
                            drop(connected);
                            if status == 204 {
                                o.session_deleted.fetch_add(1, Ordering::Relaxed);
                            } else {
                                eprintln!("DELETE session: {status}");
                                o.unexpected.fetch_add(1, Ordering::Relaxed);
                            }
                            session = loop {
                                match Session::open(&shared.http, &shared.api, &user).await {
                                    Ok(s) => break s,
                                    Err(e) => {
                                        eprintln!("worker {worker}: {e}");
                                        tokio::time::sleep(Duration::from_secs(1)).await;
                                    }
                                }
                            };
                        }
                    }
                }
            },
        }
    }
    session.close().await;
}

async fn settle(http: &reqwest::Client, rig: &Rig) -> Sample {
    // Calls end and ports come back within a few seconds; wait for zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = sample(http, rig).await;
        if s.calls == 0.0 || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return sample(http, rig).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the calls share. Their HTTP client is their own: once the last
/// worker lets go of it, its kept-alive connections close, so the end
/// sample does not count them as the gateway's descriptors and tasks.
fn shared(rig: &Rig) -> Arc<Shared> {
    let identity = DtlsIdentity::generate().expect("a DTLS certificate");
    let fingerprint = identity.fingerprint.to_value();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("an HTTP client");
    Arc::new(Shared {
        http,
        api: rig.api.clone(),
        identity,
        fingerprint,
        outcomes: Outcomes::default(),
    })
}

async fn churn(http: &reqwest::Client, minutes: f64, calls: u64) {
    let rig = Rig::start(
        (20000, 20000 + 2 * calls as u16 + 99),
        (30000, 30000 + 4 * calls as u16 + 199),
        10,
    );
    wait_ready(http, &rig).await;
    let shared = shared(&rig);
    println!(
        "\n## churn: {calls} workers for {minutes} min (gateway pid {})\n",
        rig.pid()
    );
    // Let the readiness probe's connection close before the first sample.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = sample(http, &rig).await;
    let mut rows = vec![row("start (no call yet)", &start)];
    println!("{TABLE_HEAD}\n{}", rows[0]);
    let began = tokio::time::Instant::now();
    let until = began + Duration::from_secs_f64(minutes * 60.0);
    let mut workers = Vec::new();
    for w in 0..calls {
        workers.push(tokio::spawn(churn_worker(shared.clone(), w, until)));
        // Ramp up over about 10 s.
        tokio::time::sleep(Duration::from_millis(10_000 / calls.max(1))).await;
    }
    let mut minute = 1u64;
    let mut middle = None;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep_until(began + Duration::from_secs(60 * minute)).await;
        if tokio::time::Instant::now() > until {
            break;
        }
        let s = sample(http, &rig).await;
        let label = format!("{minute} min");
        println!("{}", row(&label, &s));
        if minute as f64 >= minutes / 2.0 && middle.is_none() {
            middle = Some(s);
            rows.push(row(&format!("middle ({label})"), &s));
        }
        minute += 1;
    }
    for w in workers {
        let _ = w.await;
    }
    let outcomes = shared.outcomes.line();
    drop(shared);
    let end = settle(http, &rig).await;
    rows.push(row("end (last call gone, 5 s later)", &end));
    println!("{}", rows.last().map(String::as_str).unwrap_or_default());
    println!("\nsummary:\n{TABLE_HEAD}\n{}", rows.join("\n"));
    println!("\n{outcomes}");
    println!(
        "gateway log: {} ERROR lines, {} WARN lines",
        rig.log_lines("ERROR"),
        rig.log_lines("WARN")
    );
    let back = end.fds <= start.fds
        && end.web_ports_free == start.web_ports_free
        && end.sip_ports_free == start.sip_ports_free
        && end.tasks <= start.tasks
        && end.calls == 0.0;
    println!(
        "descriptors, ports, tasks and calls back to the start: {}",
        if back { "yes" } else { "NO" }
    );
}

async fn idle(http: &reqwest::Client, count: u64) {
    let rig = Rig::start(
        (20000, 20000 + count as u16 + 99),
        (30000, 30000 + 2 * count as u16 + 199),
        3600,
    );
    wait_ready(http, &rig).await;
    let shared = shared(&rig);
    println!(
        "\n## idle: {count} established calls, no audio (gateway pid {})\n",
        rig.pid()
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    // Ten sessions' worth of warm-up calls, ended, so what is made once per
    // process (the relay worker, first-use buffers) is not counted per call.
    {
        let mut s = Session::open(&shared.http, &rig.api, "warmup")
            .await
            .expect("a session");
        for n in 0..10 {
            if let Ok((call, mut c)) = place(&shared, &mut s, 900_000 + n, "5000").await {
                let mut rx = stop_rx.clone();
                c.run(
                    true,
                    Duration::from_secs(2),
                    Duration::from_secs(1),
                    &mut rx,
                )
                .await;
                s.send(reqwest::Method::DELETE, &format!("/calls/{call}"), None)
                    .await;
            }
        }
        s.close().await;
    }
    let before = settle(http, &rig).await;
    println!(
        "{TABLE_HEAD}\n{}",
        row("0 calls (after 10 warm-up calls)", &before)
    );
    let per_session = 10u64;
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in 0..count.div_ceil(per_session) {
        let (shared, connected, mut stop) = (shared.clone(), connected.clone(), stop_rx.clone());
        let calls = per_session.min(count - s * per_session);
        tasks.push(tokio::spawn(async move {
            let mut session = Session::open(&shared.http, &shared.api, &format!("idle{s}"))
                .await
                .expect("a session");
            let mut held = Vec::new();
            for c in 0..calls {
                match place(&shared, &mut session, s * 100 + c, "5000").await {
                    Ok(call) => {
                        connected.fetch_add(1, Ordering::Relaxed);
                        held.push(call);
                    }
                    Err(e) => eprintln!("idle call: {e}"),
                }
            }
            // Consent checks only, every 5 s per call, until told to stop.
            let mut runs = tokio::task::JoinSet::new();
            for (_, mut c) in held {
                let mut stop = stop.clone();
                runs.spawn(async move {
                    c.run(
                        false,
                        Duration::from_secs(5),
                        Duration::from_secs(3600),
                        &mut stop,
                    )
                    .await;
                });
            }
            let _ = stop.changed().await;
            while runs.join_next().await.is_some() {}
            session.close().await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while connected.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let held = sample(http, &rig).await;
    let n = connected.load(Ordering::Relaxed);
    println!(
        "{}",
        row(&format!("{n} calls connected, 10 s later"), &held)
    );
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    drop(shared);
    let after = settle(http, &rig).await;
    println!("{}", row("all ended", &after));
    let per_call = (held.rss_kib as f64 - before.rss_kib as f64) / n.max(1) as f64;
    println!(
        "\nmemory per established call: ({} - {}) KiB / {n} = {per_call:.1} KiB",
        held.rss_kib, before.rss_kib
    );
    println!("calls set up: {n} of {count}");
}

fn main() {
    raise_file_limit();
    let minutes: f64 = arg("--minutes", "30")
        .parse()
        .expect("--minutes is a number");
    let calls: u64 = arg("--calls", "200").parse().expect("--calls is a number");
    let idle_calls: u64 = arg("--idle-calls", "1000")
        .parse()
        .expect("--idle-calls is a number");
    let phase = arg("--phase", "both");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        // The sampler keeps no connection open between samples.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("an HTTP client");
        if phase == "churn" || phase == "both" {
            churn(&http, minutes, calls).await;
        }
        if phase == "idle" || phase == "both" {
            idle(&http, idle_calls).await;
        }
    });
}
