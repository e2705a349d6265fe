//! The gateway against Kamailio (Debian's kamailio package) as its SIP
//! server: registration through Kamailio's digest challenge (qop=auth), a
//! wrong password refused, the keepalive answered, a SIPp caller reaching
//! the registered browser user through Kamailio's location lookup (with
//! Record-Route), and the unREGISTER taking the binding away.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, free_udp_port, Gateway};
use serde_json::{json, Value};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

struct Kamailio {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // Its worker processes follow the main one out.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn kamailio() -> Kamailio {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/kamailio/proxy.cfg"
    ))
    .unwrap();
    let cfg = dir.path().join("kamailio.cfg");
    std::fs::write(&cfg, template.replace("LISTEN_PORT", &port.to_string())).unwrap();
    let child = Command::new("kamailio")
        .arg("-f")
        .arg(&cfg)
        .args(["-D", "-E", "-m", "64", "-M", "8", "-Y"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kamailio runs (the test command installs it)");
    // Ready when it answers OPTIONS.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let local = probe.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "kamailio did not start");
        let options = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p\r\nTo: <sip:127.0.0.1:{port}>\r\n\
             Call-ID: probe@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            deadline.elapsed().as_nanos()
        );
        let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", port));
        if let Ok(n) = probe.recv(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 200") {
                break;
            }
        }
    }
    Kamailio {
        child,
        port,
        _dir: dir,
    }
}

async fn create(gw: &Gateway, user: &str, password: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1/sessions", gw.api()))
        .json(&json!({"user": user, "password": password}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn events(gw: &Gateway, s: &Value, after: u64) -> Vec<Value> {
    let v: Value = client()
        .get(format!(
            "{}/v1/sessions/{}/events?after={after}&timeout=5",
            gw.api(),
            s["session"].as_str().unwrap()
        ))
        .bearer_auth(s["session_secret"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["events"].as_array().cloned().unwrap_or_default()
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
    while gw.metric("gateway_sip_server_up").await != 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.metric("gateway_sip_server_up").await, 1.0);

    let (status, body) = create(&gw, "1002", "wrong").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "registration_failed");
    assert_eq!(body["error"]["sip_status"], 401);

    let (status, session) = create(&gw, "1001", "secret1001").await;
    assert_eq!(status, 201, "{session}");

    // A caller reaches 1001 through Kamailio's location lookup.
    let caller = sipp_caller(&["-sn", "uac", "-d", "1000"], &k);
    let mut after = 0;
    let mut incoming = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while incoming.is_none() && Instant::now() < deadline {
        for e in events(&gw, &session, after).await {
            after = e["seq"].as_u64().unwrap();
            if e["type"] == "call.incoming" {
                incoming = Some(e);
            }
        }
    }
    let incoming = incoming.expect("the call came through Kamailio");
    let cid = incoming["call"].as_str().unwrap();
    let r = client()
        .post(format!(
            "{}/v1/sessions/{}/calls/{cid}/answer",
            gw.api(),
            session["session"].as_str().unwrap()
        ))
        .bearer_auth(session["session_secret"].as_str().unwrap())
        .json(&json!({"sdp": OFFER.replace("a=setup:actpass", "a=setup:active")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut ended = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ended.is_none() && Instant::now() < deadline {
        for e in events(&gw, &session, after).await {
            after = e["seq"].as_u64().unwrap();
            if e["type"] == "call.ended" {
                ended = Some(e);
            }
        }
    }
    assert_eq!(ended.expect("the call ended")["reason"], "remote_hangup");
    common::assert_sipp_passed(&caller.wait_with_output().unwrap());

    // Session over: unREGISTER, and Kamailio no longer knows 1001.
    common::delete_session(&gw.api(), &session).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while gw.metric("gateway_sip_registrations").await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac-404.xml");
    let after_unregister = sipp_caller(&["-sf", scenario], &k);
    common::assert_sipp_passed(&after_unregister.wait_with_output().unwrap());
}
