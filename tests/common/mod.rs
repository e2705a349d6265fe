//! Test harness: runs the real `webrtc-sip-gateway` binary on a temporary
//! config with loopback ports chosen by the OS, and reads its log.

#![allow(dead_code)]

pub mod haproxy;
pub mod kamailio;
pub mod sipp;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_webrtc-sip-gateway");

/// A config whose listeners all take free loopback ports; `extra` is TOML
/// appended to it (its sections must not repeat `[http]`/`[admin]`/`[log]`
/// keys given here, so pass http keys through `http_extra`).
pub fn config_text(http_extra: &str, extra: &str) -> String {
    // Every listener on a free loopback port, the SIP one too; SIP is
    // taken from 127.0.0.1 (the tests' peers) unless a test says whom.
    let mut sip_lines = "listen = \"127.0.0.1:0\"\n".to_string();
    if !extra.contains("trusted-sources") {
        sip_lines.push_str("trusted-sources = [\"127.0.0.1\"]\n");
    }
    let (sip, extra) = if extra.contains("[sip]") {
        (
            String::new(),
            extra.replace("[sip]\n", &format!("[sip]\n{sip_lines}")),
        )
    } else {
        (format!("[sip]\n{sip_lines}"), extra.to_string())
    };
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\ntls-listen = \"127.0.0.1:0\"\n{http_extra}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [log]\nformat = \"json\"\nlevel = \"info,webrtc_sip_gateway=trace\"\n{sip}{extra}\n"
    )
}

pub struct Gateway {
    child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub sip: SocketAddr,
    pub fingerprint: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// Reads the fields this harness needs from a pretty log line
/// (`... target: message key=value key=value`).
fn pretty_to_json(line: &str) -> serde_json::Value {
    let mut fields = serde_json::Map::new();
    let mut message = "";
    for m in ["HTTPS certificate", "gateway listening"] {
        if let Some((_, rest)) = line.split_once(&format!(": {m}")) {
            message = m;
            for pair in rest.split_whitespace() {
                if let Some((k, v)) = pair.split_once('=') {
                    fields.insert(k.to_string(), v.into());
                }
            }
        }
    }
    serde_json::json!({"message": message, "fields": fields})
}

impl Gateway {
    pub fn start(http_extra: &str, extra: &str) -> Gateway {
        Self::start_with_env(&config_text(http_extra, extra), &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&path).envs(env.iter().copied());
        Self::spawn(command, dir)
    }

    /// Starts the binary with `config` from a shell that first lowers the
    /// soft open-file limit to `soft` (as a service manager might leave it).
    pub fn start_with_soft_file_limit(config: &str, soft: u32) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -Sn {soft} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .arg("--config")
            .arg(&path);
        Self::spawn(command, dir)
    }

    /// The binary on `config` inside the named network namespace `netns`
    /// (`ip netns exec`, which execs it: the child is the gateway itself).
    pub fn start_in_netns(netns: &str, config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns, BIN, "--config"])
            .arg(&path);
        Self::spawn(command, dir)
    }

    /// The gateway process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The README's first command as a user runs it: the binary with no
    /// arguments in the repository, so it reads the shipped
    /// `config/gateway.toml` (fixed ports: run it in a namespace).
    pub fn start_shipped() -> Gateway {
        let mut command = Command::new(BIN);
        command.current_dir(env!("CARGO_MANIFEST_DIR"));
        Self::spawn(command, tempfile::tempdir().unwrap())
    }

    fn spawn(mut command: Command, dir: tempfile::TempDir) -> Gateway {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                let event = serde_json::from_str::<serde_json::Value>(&line)
                    .unwrap_or_else(|_| pretty_to_json(&line));
                let _ = tx.send(event);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut fingerprint = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match rx.recv_timeout(left) {
                Ok(e) => e,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("gateway did not start; log:\n{}", log.lock().unwrap());
                }
            };
            let fields = &event["fields"];
            if event["message"] == "HTTPS certificate" {
                fingerprint = fields["fingerprint_sha256"].as_str().unwrap().to_string();
            }
            if event["message"] == "gateway listening" {
                let addr = |k: &str| fields[k].as_str().unwrap().parse().unwrap();
                return Gateway {
                    http: addr("http"),
                    https: addr("https"),
                    admin: addr("admin"),
                    sip: addr("sip"),
                    fingerprint,
                    child,
                    log,
                    _dir: dir,
                };
            }
        }
    }

    pub fn api(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn api_tls(&self) -> String {
        format!("https://localhost:{}", self.https.port())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log holds `needle` within `within`: the log is read from
    /// the process's stderr by a thread of its own, which on a loaded
    /// machine may be a little behind what the API already said.
    pub fn log_shows(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin listener's whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the first series of metric `name`, whatever its labels
    /// (0 when absent): for a family with one series, such as
    /// `gateway_sip_server_up` with one server.
    pub async fn metric_of_any(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix('{')?;
                rest.split_once("} ")
                    .map(|(_, v)| v.trim().parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    /// `POST /admin/drain` on the admin port: its status and body.
    pub async fn admin_drain(&self) -> (u16, serde_json::Value) {
        status_and_json(client().post(format!("http://{}/admin/drain", self.admin))).await
    }

    /// `/readyz` on the admin port: its status and body.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let r = reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// One metric's value from `/metrics` (0 when absent), by exact series text.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Sends the process SIGTERM (a drain; a second one stops it at once).
    pub fn terminate(&self) {
        // The kill command keeps the test free of unsafe code.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
    }

    /// The process's exit status once it has exited, waiting up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process politely and returns its whole log: SIGTERM (the
    /// drain, quick without calls), a second one if calls keep it up.
    pub fn stop(mut self) -> String {
        self.terminate();
        if self.wait_exit(Duration::from_secs(4)).is_none() {
            self.terminate();
            self.wait_exit(Duration::from_secs(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.log()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process of a test's peer (SIPp, Redis…), killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the binary with arguments and returns its output.
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("GATEWAY_SECRET_KEY")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        // A command that refuses before reading its input (no key, say)
        // may have exited already: its pipe is closed, which is no failure
        // of the test (seen once in CI); its exit status says what it did.
        let written = child.stdin.take().unwrap().write_all(text.as_bytes());
        if let Err(e) = written {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    child.wait_with_output().unwrap()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

/// Creates a session (auth none) and returns (id, secret).
pub async fn create_session(base: &str, user: &str) -> (String, String) {
    let r = client()
        .post(format!("{base}/v1/sessions"))
        .json(&serde_json::json!({"user": user}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    (
        v["session"].as_str().unwrap().to_string(),
        v["session_secret"].as_str().unwrap().to_string(),
    )
}

/// Asserts the API's error shape and returns the code.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    let message = v["error"]["message"].as_str().expect("error.message");
    assert!(!message.is_empty());
    v["error"]["code"].as_str().expect("error.code").to_string()
}

/// The network a namespaced test sees: loopback plus LAN-like interfaces,
/// as a user's machine has (a browser then offers its LAN addresses, not
/// loopback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `eth0` = 192.0.2.10/24 with the default route.
    Lan,
    /// `eth0` as in `Lan`, and `eth1` = 198.51.100.10/24: a host with two
    /// interfaces.
    TwoInterfaces,
    /// `eth0` = 2001:db8::10/64 only, the default route IPv6: an
    /// IPv6-only network (loopback keeps 127.0.0.1 and ::1).
    Ipv6Only,
    /// `eth0` with 192.0.2.10/24 and 2001:db8::10/64, a default route for
    /// each: a dual-stack host.
    DualStack,
}

/// The LAN address of the namespace's `eth0`, and of `eth1` with
/// [`Network::TwoInterfaces`].
pub const LAN_ADDRESS: &str = "192.0.2.10";
pub const SECOND_ADDRESS: &str = "198.51.100.10";
/// The IPv6 address of `eth0` with [`Network::Ipv6Only`] and
/// [`Network::DualStack`].
pub const LAN_ADDRESS_V6: &str = "2001:db8::10";

/// Shell commands that give a fresh network namespace its interfaces: each
/// a veth pair with both ends up (the `dummy` link type is missing on
/// these kernels), documentation-range addresses, nothing leaving the
/// namespace.
pub fn network_setup(network: Network) -> String {
    let mut interfaces = match network {
        Network::Lan | Network::TwoInterfaces => vec![("eth0", "192.0.2.10/24")],
        Network::Ipv6Only => vec![("eth0", "2001:db8::10/64")],
        Network::DualStack => vec![("eth0", "192.0.2.10/24"), ("eth0", "2001:db8::10/64")],
    };
    if network == Network::TwoInterfaces {
        interfaces.push(("eth1", "198.51.100.10/24"));
    }
    let mut script = String::from("set -e; ip link set lo up; ");
    let mut made: Vec<&str> = Vec::new();
    for (name, address) in &interfaces {
        // No duplicate address detection: the IPv6 link-local address is
        // final at once instead of changing a second later, which Chromium
        // takes as a network change (ERR_NETWORK_CHANGED on a page load).
        if !made.contains(name) {
            made.push(name);
            script.push_str(&format!(
                "ip link add {name} type veth peer name {name}p; \
                 if [ -e /proc/sys/net/ipv6/conf/{name}/accept_dad ]; then \
                   echo 0 > /proc/sys/net/ipv6/conf/{name}/accept_dad; \
                   echo 0 > /proc/sys/net/ipv6/conf/{name}p/accept_dad; fi; "
            ));
        }
        let nodad = if address.contains(':') { " nodad" } else { "" };
        script.push_str(&format!("ip addr add {address} dev {name}{nodad}; "));
    }
    for name in &made {
        script.push_str(&format!("ip link set {name} up; ip link set {name}p up; "));
    }
    if network != Network::Ipv6Only {
        script.push_str("ip route add default dev eth0; ");
    }
    if matches!(network, Network::Ipv6Only | Network::DualStack) {
        script.push_str("ip -6 route add default dev eth0; ");
    }
    script.push_str("set +e; ");
    // Let the interfaces' addresses settle before anything starts: up to
    // 3 s for link-local addresses to appear and none to be tentative.
    script.push_str(
        "for i in $(seq 30); do \
           ip -6 addr show dev eth0 scope link 2>/dev/null | grep -q inet6 \
             && ! ip -6 addr show 2>/dev/null | grep -q tentative && break; \
           sleep 0.1; done; ",
    );
    script
}

/// Re-runs test `name` of the current test binary inside its own network
/// namespace with a LAN-like interface ([`Network::Lan`]), so a browser, the
/// gateway and the test see a network like a user's and fixed ports cannot
/// clash. Returns true when already inside (the caller runs the test body);
/// false after the re-run passed (it panics if the re-run failed, or ran no
/// test because `name` does not name one).
pub fn inside_namespace(name: &str) -> bool {
    inside_network(name, Network::Lan)
}

/// [`inside_namespace`] with the given network.
pub fn inside_network(name: &str, network: Network) -> bool {
    if std::env::var("GW_TEST_NETNS").is_ok() {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "{} exec {} {name} --exact --nocapture --include-ignored --test-threads 1",
        network_setup(network),
        exe.display()
    );
    let out = Command::new("timeout")
        .args(["180", "unshare", "-n", "sh", "-c", &script])
        .env("GW_TEST_NETNS", "1")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "{name} failed inside its network namespace"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the re-run inside the namespace ran no test named {name}"
    );
    false
}

/// An nftables table in the test's namespace that drops what `rule`
/// matches on input (so on its way in, as a network drops it: a drop on
/// output would fail the sender's call instead, which it can see); the
/// table goes when this does.
pub struct InputDrop(&'static str);

impl InputDrop {
    pub fn add(table: &'static str, rule: &str) -> InputDrop {
        let nft = |args: &[&str]| {
            let ok = Command::new("nft").args(args).status().unwrap().success();
            assert!(ok, "nft {args:?}");
        };
        nft(&["add", "table", "inet", table]);
        let chain = "{ type filter hook input priority 0 ; }";
        nft(&["add", "chain", "inet", table, "in", chain]);
        nft(&["add", "rule", "inet", table, "in", rule]);
        InputDrop(table)
    }
}

impl Drop for InputDrop {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", self.0])
            .status();
    }
}

/// The ICE-TCP fallback tests' set-up: every UDP datagram to the gateway's
/// LAN address dropped in this namespace (while the returned table lives),
/// and the gateway's `[media]` sections to try — with a UDP port per call,
/// and with the one shared UDP port — each with the TCP candidate on 8444.
pub fn udp_blocked_to_the_gateway() -> (InputDrop, [&'static str; 2]) {
    let rule = format!("ip daddr {LAN_ADDRESS} udp dport 1024-65535 drop");
    let layouts = [
        "[media]\nweb-tcp-port = 8444\n",
        "[media]\nweb-port = 3478\nweb-tcp-port = 8444\n",
    ];
    (InputDrop::add("noudp", &rule), layouts)
}

/// A browser test's report says the call was transcoded between the
/// browser's Opus and the switch's `sip` codec (the call's view).
pub fn assert_transcoded(r: &serde_json::Value, sip: &str) {
    let codecs = &r["stats"]["gateway"]["codecs"];
    assert_eq!(codecs["web"], "opus/48000", "{r}");
    assert_eq!(codecs["sip"], sip, "{r}");
    assert_eq!(codecs["transcoded"], true, "{r}");
}

/// What a browser's restart-mode report must show, in Chromium and Firefox
/// alike: the page's own ICE restart got new credentials both ways on the
/// same call and audio flowed after it; the outage cut the path, js-api saw
/// it go and come back, and audio flowed again on the same call.
pub fn assert_ice_restarts_kept_the_call(r: &serde_json::Value) {
    let (before, after) = (&r["before"], &r["afterRestart"]);
    assert_ne!(before["browser"], after["browser"], "a new offer: {r}");
    assert_ne!(
        before["gateway"], after["gateway"],
        "our answer has new credentials: {r}"
    );
    assert_eq!(before["call"], after["call"], "{r}");
    assert_eq!(r["restartConnected"], true, "{r}");
    assert!(
        r["packetsAfterRestart"].as_i64().unwrap_or(0) > 40,
        "audio flows after the page's restart: {r}"
    );
    assert_eq!(r["reconnecting"], true, "js-api saw the path go: {r}");
    assert!(
        r["packetsWhileDown"].as_i64().unwrap_or(i64::MAX) < 5,
        "the rule did cut the path: {r}"
    );
    assert_eq!(r["reconnected"], true, "{r}");
    assert!(r["packetsAfterBlip"].as_i64().unwrap_or(0) > 40, "{r}");
    assert_eq!(r["afterBlip"]["call"], before["call"], "{r}");
}

/// Asserts SIPp exited 0, showing the end of its output otherwise.
pub fn assert_sipp_passed(out: &Output) {
    assert!(
        out.status.success(),
        "SIPp failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UDP port free on loopback right now (for a peer started next).
pub fn free_udp_port() -> u16 {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// Waits (at most 15 s) until a socket is bound to `port` on this host: a
/// listening TCP socket when `tcp`, else a UDP socket. A peer such as SIPp
/// takes a moment after spawn to open its port, and a fixed sleep proved too
/// short on a loaded machine (a registration over TCP was refused in CI).
#[allow(dead_code)]
pub fn wait_until_bound(port: u16, tcp: bool) {
    let tables: &[&str] = if tcp {
        &["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        &["/proc/net/udp", "/proc/net/udp6"]
    };
    let bound = || {
        tables.iter().any(|table| {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields
                    .get(1)
                    .and_then(|local| local.rsplit(':').next())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                // State 0A is LISTEN; unconnected UDP sockets show 07.
                local_port == Some(port) && (!tcp || fields.get(3) == Some(&"0A"))
            })
        })
    };
    // Generous: on a loaded two-core machine twenty tests start their peers at once.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !bound() {
        assert!(
            Instant::now() < deadline,
            "nothing bound port {port} within 15 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port free for UDP and for TCP at once on 127.0.0.1 (for a peer that
/// listens on both, as Kamailio and the gateway's own SIP port do: a port
/// probed free for UDP alone may be held by someone's TCP listener).
#[allow(dead_code)]
pub fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A TCP port free on loopback right now.
#[allow(dead_code)]
pub fn free_tcp_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// `POST /v1/sessions` with `body`: the status and the JSON answer (null
/// when the body is not JSON).
#[allow(dead_code)]
/// Sends `request`: the status and the JSON body (null when it has none).
async fn status_and_json(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = request.send().await.unwrap();
    (
        r.status().as_u16(),
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

pub async fn post_session(gw: &Gateway, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = client()
        .post(format!("{}/v1/sessions", gw.api()))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Ends the session that `created` (a `POST /v1/sessions` answer) describes.
pub async fn delete_session(base: &str, created: &serde_json::Value) {
    let r = client()
        .delete(format!(
            "{base}/v1/sessions/{}",
            created["session"].as_str().unwrap()
        ))
        .bearer_auth(created["session_secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// A browser user's session through the API, for tests that drive calls.
#[allow(dead_code)]
pub struct ApiSession {
    base: String,
    /// The `POST /v1/sessions` answer.
    pub created: serde_json::Value,
    /// The last event seen.
    pub after: u64,
}

#[allow(dead_code)]
impl ApiSession {
    /// `POST /v1/sessions` for `user` (with a SIP `password`): the session,
    /// or the refusal's status and body.
    pub async fn create(
        gw: &Gateway,
        user: &str,
        password: Option<&str>,
    ) -> Result<ApiSession, (u16, serde_json::Value)> {
        let mut body = serde_json::json!({ "user": user });
        if let Some(p) = password {
            body["password"] = p.into();
        }
        ApiSession::create_from(gw, &body).await
    }

    /// `POST /v1/sessions` with `body`: the session, or the refusal.
    pub async fn create_from(
        gw: &Gateway,
        body: &serde_json::Value,
    ) -> Result<ApiSession, (u16, serde_json::Value)> {
        let (status, created) = post_session(gw, body).await;
        if status != 201 {
            return Err((status, created));
        }
        Ok(ApiSession {
            base: gw.api(),
            created,
            after: 0,
        })
    }

    /// `POST /v1/sessions` for `user` at `base` (a load balancer), then,
    /// as js-api does, every request of the session at the node the answer
    /// names (`node_url`): the session, or the refusal.
    pub async fn create_through(
        base: &str,
        user: &str,
    ) -> Result<ApiSession, (u16, serde_json::Value)> {
        let (status, created) = status_and_json(
            client()
                .post(format!("{base}/v1/sessions"))
                .json(&serde_json::json!({ "user": user })),
        )
        .await;
        if status != 201 {
            return Err((status, created));
        }
        let base = created["node_url"].as_str().unwrap_or(base).to_string();
        Ok(ApiSession {
            base,
            created,
            after: 0,
        })
    }

    /// The node this session lives on (its `node_url`).
    pub fn node_url(&self) -> &str {
        &self.base
    }

    /// A session for user 1001 that must be created.
    pub async fn open(gw: &Gateway) -> ApiSession {
        match ApiSession::create(gw, "1001", None).await {
            Ok(s) => s,
            Err(e) => panic!("session refused: {e:?}"),
        }
    }

    /// A request at `path` under the session, with its secret.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(
                method,
                format!(
                    "{}/v1/sessions/{}{path}",
                    self.base,
                    self.created["session"].as_str().unwrap()
                ),
            )
            .bearer_auth(self.created["session_secret"].as_str().unwrap())
    }

    /// Calls `to` offering `sdp`; returns the call id.
    pub async fn call(&self, to: &str, sdp: &str) -> String {
        let r = self
            .request(reqwest::Method::POST, "/calls")
            .json(&serde_json::json!({"to": to, "sdp": sdp}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let v: serde_json::Value = r.json().await.unwrap();
        v["call"].as_str().unwrap().to_string()
    }

    /// `POST …/calls` with `body`: the status, the JSON body and the
    /// Retry-After header (for refusals that have one).
    pub async fn try_call(
        &self,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value, Option<String>) {
        let r = self
            .request(reqwest::Method::POST, "/calls")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (
            status,
            r.json().await.unwrap_or(serde_json::Value::Null),
            retry,
        )
    }

    /// `GET` at `path` under the session: the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        status_and_json(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        status_and_json(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    /// `POST` at `path` without a body.
    pub async fn post_empty(&self, path: &str) -> (u16, serde_json::Value) {
        status_and_json(self.request(reqwest::Method::POST, path)).await
    }

    pub async fn hang_up(&self, cid: &str) {
        let r = self
            .request(reqwest::Method::DELETE, &format!("/calls/{cid}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// Waits for an event of `kind`; returns it (events before it are skipped).
    pub async fn wait_for(&mut self, kind: &str) -> serde_json::Value {
        self.wait_for_within(kind, Duration::from_secs(20)).await
    }

    /// [`ApiSession::wait_for`] with a deadline of its own.
    pub async fn wait_for_within(&mut self, kind: &str, within: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            for e in self.events(5).await {
                self.after = e["seq"].as_u64().unwrap();
                if e["type"] == kind {
                    return e;
                }
            }
        }
        panic!("no {kind} event");
    }

    /// The events after the last one seen, waiting up to `timeout` seconds
    /// for the first.
    pub async fn events(&self, timeout: u32) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self
            .request(
                reqwest::Method::GET,
                &format!("/events?after={}&timeout={timeout}", self.after),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["events"].as_array().cloned().unwrap_or_default()
    }
}
