//! The drain for a rolling upgrade, on the gateway binary with real peers:
//! SIGTERM (or `POST /admin/drain`) stops new sessions and calls (503 with
//! Retry-After, `/readyz` 503, a SIPp dispatcher probe's OPTIONS 503) while
//! the call in progress goes on; when it ends the node unREGISTERs its
//! session at the SIPp registrar and exits 0. `[admin] drain-timeout-s`
//! bounds the wait, and a second SIGTERM ends it at once. (That a
//! draining node's call keeps its audio is a Chromium test in
//! `browser_calls.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::sipp::{Sipp, Transport};
use common::{free_udp_port, ApiSession, Gateway};
use serde_json::{json, Value};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

async fn readyz(gw: &Gateway) -> (u16, Value) {
    gw.readyz().await
}

async fn wait_draining(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while readyz(gw).await.1["checks"]["admission"] != "draining" {
        assert!(Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn echo_call(session: &ApiSession) -> (u16, Value, Option<String>) {
    session.try_call(json!({"to": "echo", "sdp": OFFER})).await
}

/// A gateway whose SIP server is 127.0.0.1:`port` (registering there if
/// `register`, no keepalive), with `admin` lines in `[admin]`, and a
/// session of 1001.
async fn gateway_with_session(port: u16, admin: &str, register: bool) -> (Gateway, ApiSession) {
    let config = common::config_text(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{port}\"\nkeepalive-interval-s = 0\nregister = {register}\n"
        ),
    )
    .replace("[admin]\n", &format!("[admin]\n{admin}\n"));
    let gw = Gateway::start_with_env(&config, &[]);
    let session = ApiSession::create(&gw, "1001", Some("secret1001"))
        .await
        .expect("registered at the SIPp registrar");
    (gw, session)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_the_call_in_progress_then_unregisters_and_exits_0() {
    let port = free_udp_port();
    let registrar = Sipp::server("registrar-auth.xml", port, Transport::Udp);
    let (mut gw, session) = gateway_with_session(port, "", true).await;
    let (status, call, _) = echo_call(&session).await;
    assert_eq!(status, 201, "{call}");

    gw.terminate();
    wait_draining(&gw).await;
    assert_eq!(readyz(&gw).await.0, 503);
    assert_eq!(gw.metric("gateway_draining").await, 1.0);
    // No new session, no new call: another node takes them.
    let (status, body) = common::post_session(&gw, &json!({"user": "1002"})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("draining")),
        "{body}"
    );
    let (status, body, retry) = echo_call(&session).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("draining")),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(
        gw.metric("gateway_calls_refused_total{reason=\"draining\"}")
            .await,
        1.0
    );
    // A dispatcher's probe sees the node as one to avoid.
    Sipp::caller("options-503.xml", gw.sip, Transport::Udp).passed();
    // The session and its call carry on.
    let cid = call["call"].as_str().unwrap();
    let (status, view) = session.get(&format!("/calls/{cid}")).await;
    assert_eq!(status, 200, "{view}");
    assert!(
        gw.wait_exit(Duration::from_secs(1)).is_none(),
        "waits for the call"
    );

    session.hang_up(cid).await;
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exits once the call ended");
    assert!(status.success(), "{status}");
    // The registrar took the unREGISTER (Expires: 0).
    registrar.passed();
    assert!(
        gw.log_shows("drained", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_timeout_ends_the_calls_left_and_the_admin_port_can_start_it() {
    let port = free_udp_port();
    let registrar = Sipp::server("registrar-auth.xml", port, Transport::Udp);
    let (mut gw, session) = gateway_with_session(port, "drain-timeout-s = 1", true).await;
    let (status, call, _) = echo_call(&session).await;
    assert_eq!(status, 201, "{call}");
    let (status, body) = gw.admin_drain().await;
    assert_eq!(status, 202);
    assert_eq!(
        (body["calls"].as_u64(), body["sessions"].as_u64()),
        (Some(1), Some(1))
    );
    let started = Instant::now();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the timeout");
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "waited for the call first"
    );
    registrar.passed();
    assert!(gw.log_shows(
        "drain timeout: ending the calls left",
        Duration::from_secs(5)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_stops_at_once() {
    let (mut gw, session) = gateway_with_session(free_udp_port(), "", false).await;
    let (status, call, _) = echo_call(&session).await;
    assert_eq!(status, 201, "{call}");
    gw.terminate();
    wait_draining(&gw).await;
    assert!(
        gw.wait_exit(Duration::from_millis(500)).is_none(),
        "drains: the call is up"
    );
    gw.terminate();
    let status = gw
        .wait_exit(Duration::from_secs(3))
        .expect("the second signal ends it");
    assert!(status.success(), "{status}");
    assert!(gw.log_shows("second stop signal", Duration::from_secs(5)));
}
