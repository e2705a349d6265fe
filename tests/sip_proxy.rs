//! The gateway behind a SIP proxy, played by Kamailio (Debian's kamailio
//! package): registration through Kamailio's digest challenge (qop=auth), a
//! wrong password refused, the keepalive answered, a SIPp caller reaching
//! the registered browser user through Kamailio's location lookup (with
//! Record-Route), and the unREGISTER taking the binding away. Then the same
//! over TLS: the server's certificate checked against a CA file and an
//! expected name (a wrong name: no connection), registration, a call in
//! over the gateway's own connection and a call out.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kamailio::Kamailio;
use common::{free_udp_port, ApiSession, Gateway};
use serde_json::{json, Value};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

fn kamailio() -> Kamailio {
    kamailio_with(None, &[])
}

/// Kamailio from tests/kamailio/proxy.cfg; with `tls` (certificate and key
/// PEM files) it also listens for SIP over TLS.
fn kamailio_with(tls: Option<(&std::path::Path, &std::path::Path)>, defines: &[&str]) -> Kamailio {
    Kamailio::start("proxy.cfg", &[], tls, defines)
}

fn sipp_caller(scenario: &[&str], kamailio: &Kamailio) -> Child {
    Command::new("sipp")
        .args(scenario)
        .args(["-s", "1001", "-m", "1", "-i", "127.0.0.1", "-p"])
        .arg(free_udp_port().to_string())
        .arg("-mp")
        .arg(free_udp_port().to_string())
        .args(["-nostdin", "-timeout", "30", "-timeout_error"])
        .arg(format!("127.0.0.1:{}", kamailio.port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp runs")
}

#[tokio::test]
async fn registered_through_kamailio_and_called_through_it() {
    let k = kamailio();
    let gw = Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{}\"\nkeepalive-interval-s = 5\n",
            k.port
        ),
    );
    // Kamailio answers the keepalive: ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric_of_any("gateway_sip_server_up").await != 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.metric_of_any("gateway_sip_server_up").await, 1.0);

    let (status, body) = refused(ApiSession::create(&gw, "1002", Some("wrong")).await);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "registration_failed");
    assert_eq!(body["error"]["sip_status"], 401);

    let mut session = created(ApiSession::create(&gw, "1001", Some("secret1001")).await);

    // Kamailio challenges the INVITEs of registered users (407): another
    // gateway calling as 1001 with a wrong password is refused after its
    // one answer; the right password gets through (the TLS test's calls).
    let other = Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{}\"\nkeepalive-interval-s = 0\nregister = false\n",
            k.port
        ),
    );
    let mut impostor = created(ApiSession::create(&other, "1001", Some("wrong")).await);
    impostor.call("1002", OFFER).await;
    let ended = impostor.wait_for("call.ended").await;
    assert_eq!(ended["sip_status"], 407, "{ended}");
    drop(other);

    // A caller reaches 1001 through Kamailio's location lookup.
    sipp_calls_and_hangs_up(&k, &mut session).await;

    // Session over: unREGISTER, and Kamailio no longer knows 1001.
    common::delete_session(&gw.api(), &session.created).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while gw.metric("gateway_sip_registrations").await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac-404.xml");
    let after_unregister = sipp_caller(&["-sf", scenario], &k);
    common::assert_sipp_passed(&after_unregister.wait_with_output().unwrap());
}

/// The session of a `POST /v1/sessions` that must succeed.
fn created(r: Result<ApiSession, (u16, Value)>) -> ApiSession {
    r.unwrap_or_else(|(status, body)| panic!("session refused ({status}): {body}"))
}

/// The status and body of a `POST /v1/sessions` that must be refused.
fn refused(r: Result<ApiSession, (u16, Value)>) -> (u16, Value) {
    match r {
        Ok(s) => panic!("session created: {}", s.created),
        Err(e) => e,
    }
}

/// The browser's answer to an incoming call's offer.
fn browser_answer() -> Value {
    json!({"sdp": OFFER.replace("a=setup:actpass", "a=setup:active")})
}

/// SIPp calls 1001 through Kamailio; the session answers; SIPp hangs up.
async fn sipp_calls_and_hangs_up(k: &Kamailio, session: &mut ApiSession) {
    let caller = sipp_caller(&["-sn", "uac", "-d", "1000"], k);
    let incoming = session.wait_for("call.incoming").await;
    let cid = incoming["call"].as_str().unwrap();
    let (status, body) = session
        .post(&format!("/calls/{cid}/answer"), browser_answer())
        .await;
    assert_eq!(status, 200, "{body}");
    let ended = session.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    common::assert_sipp_passed(&caller.wait_with_output().unwrap());
}

fn tls_gateway(k: &Kamailio, ca: &std::path::Path, extra: &str) -> Gateway {
    Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{}\"\ntransport = \"tls\"\ntls-ca-file = \"{}\"\n{extra}",
            k.tls_port,
            ca.display()
        ),
    )
}

#[tokio::test]
async fn over_tls_through_kamailio() {
    let dir = tempfile::tempdir().unwrap();
    // Kamailio's certificate names sip.test only (not 127.0.0.1).
    let made = rcgen::generate_simple_self_signed(vec!["sip.test".into()]).unwrap();
    let cert = common::write(dir.path(), "cert.pem", &made.cert.pem());
    let key = common::write(dir.path(), "key.pem", &made.signing_key.serialize_pem());
    let k = kamailio_with(Some((&cert, &key)), &[]);

    // Expecting the name 127.0.0.1 (the server's host): the handshake
    // fails, nothing is registered, the log says why.
    let wrong = tls_gateway(&k, &cert, "keepalive-interval-s = 0\ntimer-t1-ms = 50\n");
    let (status, body) = refused(ApiSession::create(&wrong, "1001", Some("secret1001")).await);
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "sip_unreachable");
    let log = wrong.stop();
    assert!(
        log.contains("SIP over TLS: cannot connect") && log.contains("certificate"),
        "{log}"
    );

    let gw = tls_gateway(
        &k,
        &cert,
        "tls-server-name = \"sip.test\"\nkeepalive-interval-s = 5\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric_of_any("gateway_sip_server_up").await != 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gw.metric_of_any("gateway_sip_server_up").await,
        1.0,
        "{}",
        gw.log()
    );
    let mut session = created(ApiSession::create(&gw, "1001", Some("secret1001")).await);
    assert!(gw.log().contains("SIP over TLS: connected"));

    // A caller over UDP reaches 1001 through Kamailio, which sends the
    // INVITE over our TLS connection.
    sipp_calls_and_hangs_up(&k, &mut session).await;

    // A call out over TLS: 1001 calls 1001, so Kamailio brings the INVITE
    // back to us (a call between two users of one gateway); answered,
    // then hung up by the caller.
    let out_cid = session.call("1001", OFFER).await;
    let incoming = session.wait_for("call.incoming").await;
    let in_cid = incoming["call"].as_str().unwrap();
    assert_ne!(in_cid, out_cid);
    let (status, body) = session
        .post(&format!("/calls/{in_cid}/answer"), browser_answer())
        .await;
    assert_eq!(status, 200, "{body}");
    // Both calls report the answer; the outgoing one's says the far end took it.
    let mut answered = Vec::new();
    for _ in 0..2 {
        let e = session.wait_for("call.answered").await;
        answered.push(e["call"].as_str().unwrap().to_string());
    }
    assert!(answered.contains(&out_cid), "{answered:?}");
    session.hang_up(&out_cid).await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let e = session.wait_for("call.ended").await;
        reasons.push((
            e["call"].as_str().unwrap().to_string(),
            e["reason"].as_str().unwrap_or("").to_string(),
        ));
    }
    reasons.sort();
    let mut expected = vec![
        (out_cid.clone(), "hangup".to_string()),
        (in_cid.to_string(), "remote_hangup".to_string()),
    ];
    expected.sort();
    assert_eq!(reasons, expected);
    let deadline = Instant::now() + Duration::from_secs(5);
    while (gw.metric("gateway_calls").await != 0.0 || gw.metric("gateway_sip_dialogs").await != 0.0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metric("gateway_calls").await, 0.0);
    assert_eq!(gw.metric("gateway_sip_dialogs").await, 0.0);
}

/// RFC 3261 §18.1.1 against Kamailio: over UDP, an INVITE above 1300 bytes
/// (here from a 64-character user to a 256-digit number) goes over TCP to the same port, and
/// Kamailio's answer (404: nobody registered that number) comes back over
/// that connection.
#[tokio::test]
async fn a_large_invite_goes_over_tcp() {
    let k = kamailio();
    let gw = Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{}\"\nkeepalive-interval-s = 0\n",
            k.port
        ),
    );
    // The longest user name and number the API takes.
    let mut session = created(ApiSession::create(&gw, &"7".repeat(64), Some("secret1001")).await);
    session.call(&"9".repeat(256), OFFER).await;
    let ended = session.wait_for("call.ended").await;
    assert_eq!(ended["sip_status"], 404, "{ended}");
    let log = gw.log();
    assert!(
        log.contains("SIP over TCP for a request too large for UDP"),
        "{log}"
    );
    assert!(!log.contains("sending it over UDP"), "{log}");
}

/// Without connection aliases Kamailio does not reuse our TLS connection:
/// it opens its own to our Contact (our SIP port, TLS, our certificate),
/// and the call comes in over that.
#[tokio::test]
async fn kamailio_opens_its_own_tls_connection_to_us() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["sip.test".into()]).unwrap();
    let cert = common::write(dir.path(), "cert.pem", &made.cert.pem());
    let key = common::write(dir.path(), "key.pem", &made.signing_key.serialize_pem());
    let k = kamailio_with(Some((&cert, &key)), &["NO_ALIAS"]);
    let gw = tls_gateway(
        &k,
        &cert,
        "tls-server-name = \"sip.test\"\nkeepalive-interval-s = 0\n",
    );
    let mut session = created(ApiSession::create(&gw, "1001", Some("secret1001")).await);
    sipp_calls_and_hangs_up(&k, &mut session).await;
    assert!(
        gw.log().contains("SIP over TLS: connection accepted"),
        "{}",
        gw.log()
    );
}
