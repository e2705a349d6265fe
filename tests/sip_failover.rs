//! SIP server failover with real peers: two SIPp servers
//! (`tests/sipp/failover-server.xml`), a primary as `host:port` and a
//! backup as a `sip:` URI, each probed by the keepalive. While the primary
//! answers it takes the session's registration and its calls; once it is
//! killed the registration moves to the backup (the session stays
//! registered) and a new call is answered there. Over UDP, and over TCP
//! (a connection to each server).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sipp::Transport;
use common::{free_udp_port, wait_until_bound, ApiSession, Gateway};
use serde_json::{json, Value};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

/// A SIPp server on `port` (over `transport`) whose SDP names media port
/// `media`.
fn server(port: u16, media: u16, transport: Transport) -> Child {
    let child = Command::new("sipp")
        .args([
            "-t",
            if transport == Transport::Tcp {
                "t1"
            } else {
                "u1"
            },
        ])
        .arg("-sf")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sipp/failover-server.xml"
        ))
        .args([
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-mp",
            &media.to_string(),
        ])
        .args(["-p", &port.to_string(), "-m", "10000", "-nostdin"])
        .args(["-timeout", "90"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs (the test command installs sip-tester)");
    wait_until_bound(port, transport == Transport::Tcp);
    child
}

async fn wait_metric(gw: &Gateway, series: &str, value: f64, within: Duration) {
    let deadline = Instant::now() + within;
    while gw.metric(series).await != value {
        assert!(
            Instant::now() < deadline,
            "{series} never became {value}:\n{}",
            gw.metrics_text().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A call to 5000 until it is answered: the far end's media address.
async fn answered_call(session: &mut ApiSession) -> (String, String) {
    let (status, body, _) = session.try_call(json!({"to": "5000", "sdp": OFFER})).await;
    assert_eq!(status, 201, "{body}");
    let cid = body["call"].as_str().unwrap().to_string();
    session.wait_for("call.answered").await;
    let (_, view): (u16, Value) = session.get(&format!("/calls/{cid}")).await;
    let media = view["sip_media"].as_str().unwrap_or("").to_string();
    (cid, media)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_moves_the_registration_and_new_calls_to_the_backup() {
    failover_over(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tcp_a_killed_primary_moves_everything_to_the_backup() {
    failover_over(Transport::Tcp).await;
}

async fn failover_over(transport: Transport) {
    let (primary_port, backup_port) = (transport.free_port(), transport.free_port());
    let name = transport.config();
    let servers =
        format!("[\"127.0.0.1:{primary_port}\", \"sip:127.0.0.1:{backup_port};transport={name}\"]");
    failover_with(transport, &servers, (primary_port, backup_port)).await;
}

/// DNS SRV names the pair (RFC 3263): a real dnsmasq in this test's own
/// network and mount namespace answers `_sip._udp.pbx.test` with the
/// primary (priority 10) and the backup (priority 20), and their names'
/// addresses; `[sip] server = "pbx.test"` (no port) finds both, in order.
#[test]
fn dns_srv_names_the_primary_and_the_backup() {
    if !inside_dns_namespace("dns_srv_names_the_primary_and_the_backup") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(failover_with(Transport::Udp, "\"pbx.test\"", (5070, 5080)));
}

/// Runs the test `name` of this binary again inside a network and mount
/// namespace with loopback up, `/etc/resolv.conf` naming 127.0.0.1, and
/// dnsmasq there serving pbx.test's SRV records for ports 5070 and 5080.
/// Returns whether the caller is already inside (then it runs the test).
fn inside_dns_namespace(name: &str) -> bool {
    if std::env::var("GW_TEST_DNS").is_ok() {
        return true;
    }
    let dir = tempfile::tempdir().unwrap();
    let resolv = common::write(dir.path(), "resolv.conf", "nameserver 127.0.0.1\n");
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "set -e; ip link set lo up; mount --bind {resolv} /etc/resolv.conf; \
         dnsmasq --conf-file=/dev/null --keep-in-foreground --user=root --pid-file={dir}/dnsmasq.pid \
           --listen-address=127.0.0.1 --bind-interfaces --port=53 --no-resolv --no-hosts \
           --srv-host=_sip._udp.pbx.test,primary.pbx.test,5070,10,100 \
           --srv-host=_sip._udp.pbx.test,backup.pbx.test,5080,20,100 \
           --host-record=primary.pbx.test,127.0.0.1 --host-record=backup.pbx.test,127.0.0.1 \
           --log-facility={dir}/dnsmasq.log & dns=$!; \
         sleep 0.5; set +e; {exe} {name} --exact --nocapture --test-threads 1; status=$?; \
         kill $dns 2>/dev/null; exit $status",
        resolv = resolv.display(),
        dir = dir.path().display(),
        exe = exe.display(),
    );
    let out = Command::new("timeout")
        .args(["120", "unshare", "-n", "-m", "sh", "-c", &script])
        .env("GW_TEST_DNS", "1")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{name} failed inside its namespace");
    false
}

/// Two SIPp servers at `ports` over `transport`, and a gateway whose
/// `[sip] server` is `servers` (TOML): the failover, as the tests above.
async fn failover_with(
    transport: Transport,
    servers: &str,
    (primary_port, backup_port): (u16, u16),
) {
    let (primary_media, backup_media) = (free_udp_port(), free_udp_port());
    let mut primary = server(primary_port, primary_media, transport);
    let mut backup = server(backup_port, backup_media, transport);
    let name = transport.config();
    let gw = Gateway::start(
        "",
        &format!(
            "[sip]\nserver = {servers}\ntransport = \"{name}\"\nkeepalive-interval-s = 5\n\
             timer-t1-ms = 100\ndomain = \"pbx.test\"\n"
        ),
    );
    let up = |port: u16| format!("gateway_sip_server_up{{server=\"127.0.0.1:{port}\"}}");
    wait_metric(&gw, &up(primary_port), 1.0, Duration::from_secs(10)).await;
    wait_metric(&gw, &up(backup_port), 1.0, Duration::from_secs(10)).await;

    let mut session = ApiSession::open(&gw).await;
    assert_eq!(gw.metric("gateway_sip_registrations").await, 1.0);
    let (cid, media) = answered_call(&mut session).await;
    assert_eq!(
        media,
        format!("127.0.0.1:{primary_media}"),
        "the primary answers"
    );
    session.hang_up(&cid).await;

    primary.kill().unwrap();
    let _ = primary.wait();
    // Its next ping goes unanswered (timer F: 64 × T1 = 6.4 s here).
    wait_metric(
        &gw,
        "gateway_sip_failovers_total",
        1.0,
        Duration::from_secs(25),
    )
    .await;
    assert_eq!(gw.metric(&up(primary_port)).await, 0.0);
    let register_ok =
        "gateway_sip_messages_total{direction=\"in\",method=\"REGISTER\",status=\"200\"}";
    wait_metric(&gw, register_ok, 2.0, Duration::from_secs(5)).await;
    assert_eq!(
        gw.metric("gateway_sip_registrations").await,
        1.0,
        "still registered, at the backup"
    );
    let (status, ready) = gw.readyz().await;
    assert_eq!(
        (status, &ready["checks"]["sip"]),
        (200, &json!("reachable"))
    );

    let (cid, media) = answered_call(&mut session).await;
    assert_eq!(
        media,
        format!("127.0.0.1:{backup_media}"),
        "the backup answers"
    );
    session.hang_up(&cid).await;
    let log = gw.stop();
    assert!(log.contains("SIP server failover"), "{log}");
    let _ = backup.kill();
    let _ = backup.wait();
}
