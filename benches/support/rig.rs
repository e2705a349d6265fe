//! The gateway under load and what drives it, shared by the load
//! generators: the release binary with SIPp (`benches/soak/uas.xml`,
//! `-rtp_echo`) as its SIP server, API sessions with their long-poll, the
//! process's figures from `/proc`, and ICE checks.
//!
//! `GATEWAY_WRAPPER` (e.g. `"heaptrack -o /tmp/gw"`) runs the gateway under
//! that command, for a profile of the same load; the process figures are
//! then the wrapper's, so read the profile instead.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use webrtc_sip_gateway::webrtc::stun;

pub const BIN: &str = env!("CARGO_BIN_EXE_webrtc-sip-gateway");

pub fn free_port() -> u16 {
    // A port free for UDP and TCP now (the gateway's SIP port takes both).
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a probe socket");
        let port = udp.local_addr().expect("probe address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The gateway process and its SIPp peer, on their own ports.
pub struct Rig {
    pub gateway: Child,
    pub sipp: Child,
    pub api: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
}

impl Rig {
    pub fn start(web_ports: (u16, u16), sip_ports: (u16, u16), rtp_timeout_s: u64) -> Rig {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (http, admin, sip, sipp) = (free_port(), free_port(), free_port(), free_port());
        let sipp_media = free_port();
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\ntls-listen = \"\"\n\
             max-sessions = 20000\nmax-sessions-per-address = 20000\n\
             rate-limit-per-s = 100000\nrate-limit-burst = 100000\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [sip]\nserver = \"127.0.0.1:{sipp}\"\nlisten = \"127.0.0.1:{sip}\"\nregister = false\n\
             keepalive-interval-s = 0\ntrusted-sources = [\"127.0.0.1\"]\nmedia-address = \"127.0.0.1\"\n\
             max-ringing-calls = 5000\n\
             [media]\npublic-address = \"127.0.0.1\"\nweb-port-min = {}\nweb-port-max = {}\n\
             sip-port-min = {}\nsip-port-max = {}\nconsent-timeout-s = 10\nrtp-timeout-s = {rtp_timeout_s}\n\
             relay-workers = 1\n[log]\nlevel = \"warn\"\n",
            web_ports.0, web_ports.1, sip_ports.0, sip_ports.1
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).expect("write the config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("a log file");
        let wrapper = std::env::var("GATEWAY_WRAPPER").unwrap_or_default();
        let mut wrapper = wrapper.split_whitespace();
        let mut gateway = match wrapper.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(wrapper).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let gateway = gateway
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the gateway binary runs");
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/soak/uas.xml");
        let sipp = Command::new("sipp")
            .arg("-sf")
            .arg(scenario)
            .args([
                "-t",
                "u1",
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-rtp_echo",
                "-nostdin",
            ])
            .args(["-p", &sipp.to_string(), "-mp", &sipp_media.to_string()])
            .args(["-max_socket", "60000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp runs (install sip-tester)");
        Rig {
            gateway,
            sipp,
            api: format!("http://127.0.0.1:{http}"),
            admin: format!("http://127.0.0.1:{admin}"),
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.gateway.id()
    }

    pub fn log_lines(&self, level: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("gateway.log"))
            .map(|t| t.lines().filter(|l| l.contains(level)).count())
            .unwrap_or(0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
        let _ = self.sipp.kill();
        let _ = self.sipp.wait();
    }
}

pub fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

pub async fn wait_ready(http: &reqwest::Client, rig: &Rig) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{}/readyz", rig.admin)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway did not become ready in 20 s");
}

/// One API session and the events its long-poll brings in.
pub struct Session {
    http: reqwest::Client,
    base: String,
    secret: String,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Session {
    pub async fn open(http: &reqwest::Client, api: &str, user: &str) -> Result<Session, String> {
        let r = http
            .post(format!("{api}/v1/sessions"))
            .json(&json!({ "user": user }))
            .send()
            .await
            .map_err(|e| format!("POST /v1/sessions: {e}"))?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != 201 {
            return Err(format!("POST /v1/sessions: {status} {body}"));
        }
        let sid = body["session"].as_str().unwrap_or_default().to_string();
        let secret = body["session_secret"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (tx, events) = mpsc::unbounded_channel();
        let (poll_http, url, poll_secret) = (
            http.clone(),
            format!("{api}/v1/sessions/{sid}/events"),
            secret.clone(),
        );
        tokio::spawn(async move {
            let mut after = 0u64;
            loop {
                let r = poll_http
                    .get(format!("{url}?after={after}&timeout=20"))
                    .bearer_auth(&poll_secret)
                    .send()
                    .await;
                let Ok(r) = r else { return };
                if r.status() != 200 {
                    return;
                }
                let body: Value = r.json().await.unwrap_or(Value::Null);
                for event in body["events"].as_array().into_iter().flatten() {
                    after = after.max(event["seq"].as_u64().unwrap_or(after));
                    if tx.send(event.clone()).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Session {
            http: http.clone(),
            base: format!("{api}/v1/sessions/{sid}"),
            secret,
            events,
        })
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "transport_error": e.to_string() })),
        }
    }

    /// The next event of `call` whose type is one of `types`, within `limit`.
    pub async fn wait_for(&mut self, call: &str, types: &[&str], limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            if event["call"] == call && types.iter().any(|t| event["type"] == *t) {
                return Some(event);
            }
        }
    }

    /// `POST …/calls` to `to` offering `sdp`, then its `call.answered`
    /// within `within`: the call's id and the answer's SDP.
    pub async fn call_answered(
        &mut self,
        to: &str,
        sdp: &str,
        within: Duration,
    ) -> Result<(String, String), String> {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/calls",
                Some(json!({ "to": to, "sdp": sdp })),
            )
            .await;
        if status != 201 {
            return Err(format!("POST calls: {status} {body}"));
        }
        let call = body["call"].as_str().unwrap_or_default().to_string();
        let answered = self
            .wait_for(&call, &["call.answered", "call.ended"], within)
            .await
            .ok_or(format!("no answer in {within:?}"))?;
        if answered["type"] != "call.answered" {
            return Err(format!("ended before the answer: {answered}"));
        }
        let sdp = answered["sdp"].as_str().unwrap_or_default().to_string();
        Ok((call, sdp))
    }

    pub async fn close(self) -> u16 {
        self.send(reqwest::Method::DELETE, "", None).await.0
    }
}

pub static TRANSACTION: AtomicU64 = AtomicU64::new(1);

pub fn transaction_id() -> [u8; 12] {
    let n = TRANSACTION.fetch_add(1, Ordering::Relaxed);
    let mut id = [0x5a; 12];
    id[4..].copy_from_slice(&n.to_be_bytes());
    id
}

pub fn binding_request(id: [u8; 12], user: &str, key: &str, nominate: bool) -> Vec<u8> {
    let mut b = stun::Builder::new(stun::BINDING_REQUEST, id)
        .attribute(stun::ATTR_USERNAME, user.as_bytes())
        .attribute(stun::ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff])
        .attribute(stun::ATTR_ICE_CONTROLLING, &[7; 8]);
    if nominate {
        b = b.attribute(stun::ATTR_USE_CANDIDATE, &[]);
    }
    b.message_integrity(key.as_bytes()).fingerprint()
}

/// Up to the hard limit: thousands of calls need thousands of sockets.
pub fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// A nominating ICE check from `socket` to `gateway`, repeated (every
/// 200 ms, 25 times) until the gateway answers it.
pub async fn nominate(
    socket: &tokio::net::UdpSocket,
    gateway: std::net::SocketAddr,
    user: &str,
    key: &str,
) -> Result<(), String> {
    let mut buf = vec![0u8; 2048];
    for _ in 0..25 {
        let id = transaction_id();
        let check = binding_request(id, user, key, true);
        socket
            .send_to(&check, gateway)
            .await
            .map_err(|e| e.to_string())?;
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await
        {
            if let Ok(m) = stun::Message::decode(&buf[..n]) {
                if m.transaction_id == id && m.method_class == stun::BINDING_SUCCESS {
                    return Ok(());
                }
            }
        }
    }
    Err("no answer to the ICE check".into())
}
