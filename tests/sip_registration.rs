//! Registration with the SIP server, played by SIPp registrars (Debian's
//! sip-tester): a 401 digest
//! challenge then 200 and the unREGISTER at session end; a 403 refusal; a
//! server that never answers; and the keepalive that feeds /readyz.

mod common;

use std::time::{Duration, Instant};

use common::sipp::{Sipp, Transport};
use common::{free_udp_port, post_session, Gateway};
use serde_json::{json, Value};

fn gateway_for(server_port: u16, extra: &str) -> Gateway {
    Gateway::start(
        "",
        &format!("[sip]\nserver = \"127.0.0.1:{server_port}\"\nkeepalive-interval-s = 0\n{extra}"),
    )
}

#[tokio::test]
async fn digest_challenge_then_registered_then_unregistered() {
    let port = free_udp_port();
    let sipp = Sipp::server("registrar-auth.xml", port, Transport::Udp);
    let gw = gateway_for(port, "");
    let (status, body) =
        post_session(&gw, &json!({"user": "1001", "password": "secret1001"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(gw.metric("gateway_sip_registrations").await, 1.0);
    assert_eq!(
        gw.metric(
            "gateway_sip_messages_total{direction=\"in\",method=\"REGISTER\",status=\"401\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric("gateway_sip_messages_total{direction=\"out\",method=\"REGISTER\",status=\"0\"}")
            .await,
        2.0,
        "the first REGISTER and the one with credentials"
    );
    common::delete_session(&gw.api(), &body).await;
    sipp.passed();
    let deadline = Instant::now() + Duration::from_secs(3);
    while gw.metric("gateway_sip_registrations").await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metric("gateway_sip_registrations").await, 0.0);
    let log = gw.stop();
    assert!(
        !log.contains("secret1001"),
        "the SIP password is never logged"
    );
}

#[tokio::test]
async fn a_wrong_password_is_registration_failed() {
    let port = free_udp_port();
    let sipp = Sipp::server("registrar-auth.xml", port, Transport::Udp);
    let gw = gateway_for(port, "");
    let (status, body) = post_session(&gw, &json!({"user": "1001", "password": "wrong"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "registration_failed");
    assert_eq!(body["error"]["sip_status"], 403);
    assert_eq!(
        gw.metric("gateway_sessions").await,
        0.0,
        "no session is left"
    );
    sipp.passed();
}

#[tokio::test]
async fn a_refusing_registrar_is_registration_failed() {
    let port = free_udp_port();
    let sipp = Sipp::server("registrar-reject.xml", port, Transport::Udp);
    let gw = gateway_for(port, "");
    let (status, body) = post_session(&gw, &json!({"user": "1002"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "registration_failed");
    assert_eq!(body["error"]["sip_status"], 403);
    assert_eq!(
        gw.metric("gateway_sip_registrations_failed_total").await,
        1.0
    );
    sipp.passed();
}

#[tokio::test]
async fn a_silent_server_is_sip_unreachable() {
    // Nothing listens there; T1 = 20 ms makes timer F 1.28 s.
    let port = free_udp_port();
    let gw = gateway_for(port, "timer-t1-ms = 20\ntimer-t2-ms = 100\n");
    let started = Instant::now();
    let (status, body) = post_session(&gw, &json!({"user": "1003"})).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "sip_unreachable");
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "waited for timer F"
    );
    assert_eq!(gw.metric("gateway_sessions").await, 0.0);
    assert_eq!(
        gw.metric("gateway_sip_transaction_timeouts_total").await,
        1.0
    );
}

#[tokio::test]
async fn keepalive_feeds_readiness() {
    let port = free_udp_port();
    let sipp = Sipp::server("options-server.xml", port, Transport::Udp);
    let gw = Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{port}\"\nkeepalive-interval-s = 5\n\
             timer-t1-ms = 20\ntimer-t2-ms = 100\n"
        ),
    );
    let readyz = || async {
        let r = reqwest::get(format!("http://{}/readyz", gw.admin))
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (
            status,
            body["checks"]["sip"].as_str().unwrap_or("").to_string(),
        )
    };
    let wait_for = |want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, sip) = readyz().await;
            if sip == want || Instant::now() > deadline {
                return (status, sip);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(wait_for("reachable").await, (200, "reachable".to_string()));
    assert_eq!(gw.metric_of_any("gateway_sip_server_up").await, 1.0);
    sipp.passed();
    // SIPp is gone: the next ping goes unanswered.
    assert_eq!(
        wait_for("unreachable").await,
        (503, "unreachable".to_string())
    );
    assert_eq!(gw.metric_of_any("gateway_sip_server_up").await, 0.0);
}

/// The same registrar over TCP: one connection carries the challenge, the
/// answer with credentials and the unREGISTER, with no retransmissions.
#[tokio::test]
async fn registration_over_tcp() {
    let port = Transport::Tcp.free_port();
    let sipp = Sipp::server("registrar-auth.xml", port, Transport::Tcp);
    let gw = gateway_for(port, "transport = \"tcp\"\n");
    let (status, body) =
        post_session(&gw, &json!({"user": "1001", "password": "secret1001"})).await;
    assert_eq!(status, 201, "{body}");
    common::delete_session(&gw.api(), &body).await;
    sipp.passed();
    assert_eq!(
        gw.metric("gateway_sip_messages_total{direction=\"out\",method=\"REGISTER\",status=\"0\"}")
            .await,
        3.0,
        "challenge answer and unREGISTER, each sent once"
    );
}
