//! The call endpoints over real sockets, in process: refusals that change
//! nothing, the echo call's life through the API, and that every way a call
//! ends gives its ports back (counted in the allocators).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use webrtc_sip_gateway::config::Config;
use webrtc_sip_gateway::Gateway;

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

/// A gateway on loopback with its own small port ranges (`base`..): four web
/// ports and four SIP pairs, so a leak shows up within a few calls.
/// A gateway whose media ports are `base`..`base + 17`. The tests' bases
/// lie below the kernel's ephemeral ports (32768 and up, where other
/// tests' sockets land) and the default ranges (20000 and up): a test that
/// needs every port of its range once failed in CI when another socket
/// held one.
async fn start(base: u16, extra: &str) -> Gateway {
    let config = Config::from_toml(
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ntls-listen = \"\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [sip]\nlisten = \"127.0.0.1:0\"\n\
             [media]\nweb-port-min = {}\nweb-port-max = {}\nsip-port-min = {}\nsip-port-max = {}\n\
             relay-workers = 1\n{extra}",
            base,
            base + 3,
            base + 10,
            base + 17
        ),
        "test",
        Vec::new(),
    )
    .unwrap();
    Gateway::start(config).await.unwrap()
}

struct Api {
    base: String,
    sid: String,
    secret: String,
    http: reqwest::Client,
}

impl Api {
    async fn new(gw: &Gateway) -> Api {
        let base = format!("http://{}", gw.http_addr.unwrap());
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{base}/v1/sessions"))
            .json(&json!({"user": "1001"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Api {
            sid: r["session"].as_str().unwrap().into(),
            secret: r["session_secret"].as_str().unwrap().into(),
            base,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/sessions/{}{path}", self.base, self.sid)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn call(&self, to: &str, sdp: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/calls",
            Some(json!({"to": to, "sdp": sdp})),
        )
        .await
    }

    async fn events(&self, after: u64, timeout: u64) -> Vec<Value> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                &format!("/events?after={after}&timeout={timeout}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().unwrap().clone()
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn ports_free(gw: &Gateway) -> (usize, usize) {
    let m = &gw.state.media;
    (m.web_ports.free_count(), m.sip_ports.free_count())
}

/// Waits until every port is back (the relay closes sockets on its thread).
async fn all_ports_back(gw: &Gateway, full: (usize, usize)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ports_free(gw) != full && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ports_free(gw), full, "every port came back");
    assert_eq!(gw.relay.call_count(), 0, "the relay carries no call");
    assert!(
        gw.state.media.calls.is_empty(),
        "no call is left registered"
    );
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let gw = start(14000, "").await;
    let full = ports_free(&gw);
    let api = Api::new(&gw).await;
    let (s, b) = api.call("echo", "v=0\r\nthis is not SDP").await;
    assert_eq!((s, code(&b)), (400, "bad_sdp"), "{b}");
    let no_crypto: String = OFFER
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let (s, b) = api.call("echo", &no_crypto).await;
    assert_eq!((s, code(&b)), (400, "bad_sdp"));
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fingerprint"),
        "the message names what is wrong: {b}"
    );
    let g729_only = OFFER.replace(
        "m=audio 50217 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "m=audio 50217 UDP/TLS/RTP/SAVPF 18",
    );
    assert_ne!(g729_only, OFFER, "the fixture's m-line changed");
    let (s, b) = api.call("echo", &g729_only).await;
    assert_eq!((s, code(&b)), (400, "bad_sdp"), "{b}");
    let (s, b) = api.call("bad number<>", OFFER).await;
    assert_eq!((s, code(&b)), (400, "invalid_destination"));
    let (s, b) = api.call("5000", OFFER).await;
    assert_eq!(
        (s, code(&b)),
        (404, "unknown_destination"),
        "no SIP server: {b}"
    );
    let (s, b) = api
        .send(reqwest::Method::POST, "/calls", Some(json!({"to": "echo"})))
        .await;
    assert_eq!((s, code(&b)), (400, "bad_json"));
    // Another session's secret, and no secret at all.
    let other = Api::new(&gw).await;
    let r = other
        .http
        .post(api.url("/calls"))
        .bearer_auth(&other.secret)
        .json(&json!({"to": "echo", "sdp": OFFER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = api
        .http
        .post(api.url("/calls"))
        .json(&json!({"to": "echo", "sdp": OFFER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        api.events(0, 0).await.is_empty(),
        "no event for refused calls"
    );
    all_ports_back(&gw, full).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_echo_call_through_the_api() {
    let gw = start(14100, "").await;
    let full = ports_free(&gw);
    let api = Api::new(&gw).await;
    let (s, b) = api.call("sip:echo@gateway.invalid", OFFER).await;
    assert_eq!(s, 201, "{b}");
    let cid = b["call"].as_str().unwrap().to_string();
    assert_eq!(
        ports_free(&gw),
        (full.0 - 1, full.1 - 1),
        "one web port, one SIP pair"
    );

    let events = api.events(0, 5).await;
    assert_eq!(events[0]["type"], "call.answered", "{events:?}");
    assert_eq!(events[0]["call"], cid.as_str());
    let answer = events[0]["sdp"].as_str().unwrap();
    assert!(answer.contains("a=ice-lite") && answer.contains("a=fingerprint:sha-256"));
    assert!(answer.contains("a=setup:passive"));

    let (s, view) = api
        .send(reqwest::Method::GET, &format!("/calls/{cid}"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(view["state"], "answered");
    assert_eq!(view["direction"], "outbound");
    assert_eq!(view["codec"], "opus/48000");
    // The echo call: the fixture offers DTLS; the echo's side is plain RTP.
    assert_eq!(view["keying"], json!({"web": "dtls", "sip": "rtp"}));
    assert!(view["stats"]["web"]["packets_in"].is_u64());

    // Answer/reject are for incoming calls; hold twice and resume unheld are refused.
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            &format!("/calls/{cid}/answer"),
            Some(json!({"sdp": "x"})),
        )
        .await;
    assert_eq!((s, code(&b)), (409, "invalid_call_state"));
    let (s, b) = api
        .send(reqwest::Method::POST, &format!("/calls/{cid}/resume"), None)
        .await;
    assert_eq!((s, code(&b)), (409, "invalid_call_state"));
    let (s, _) = api
        .send(reqwest::Method::POST, &format!("/calls/{cid}/hold"), None)
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .send(reqwest::Method::POST, &format!("/calls/{cid}/hold"), None)
        .await;
    assert_eq!((s, code(&b)), (409, "invalid_call_state"));
    let (s, _) = api
        .send(reqwest::Method::POST, &format!("/calls/{cid}/resume"), None)
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            &format!("/calls/{cid}/dtmf"),
            Some(json!({"digits": "12x"})),
        )
        .await;
    assert_eq!((s, code(&b)), (400, "invalid_dtmf"), "{b}");
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            &format!("/calls/{cid}/dtmf"),
            Some(json!({"digits": "1", "duration_ms": 10})),
        )
        .await;
    assert_eq!((s, code(&b)), (400, "invalid_dtmf"), "{b}");
    let (s, _) = api
        .send(
            reqwest::Method::POST,
            &format!("/calls/{cid}/dtmf"),
            Some(json!({"digits": "12#"})),
        )
        .await;
    assert_eq!(s, 200);
    let events = api.events(1, 5).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["call.held", "call.resumed"]);
    assert_eq!(events[0]["by"], "local");

    // The browser's new offer: the same ICE session gets the same
    // credentials back; new ones (an ICE restart) get new ones of ours;
    // a new fingerprint is taken only with an ICE restart; a bad SDP is
    // refused and changes nothing.
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap_or_default()
            .to_string()
    };
    let renegotiate = |sdp: String| {
        let path = format!("/calls/{cid}/renegotiate");
        let api = &api;
        async move {
            api.send(reqwest::Method::POST, &path, Some(json!({ "sdp": sdp })))
                .await
        }
    };
    let (s, b) = renegotiate(OFFER.to_string()).await;
    assert_eq!(s, 200, "{b}");
    let same = b["sdp"].as_str().unwrap();
    assert_eq!(ufrag(same), ufrag(answer), "no restart: {same}");
    assert!(same.contains("a=setup:passive") && same.contains("a=fingerprint:sha-256"));
    let restarted_offer = OFFER.replacen(
        &format!("a=ice-ufrag:{}", ufrag(OFFER)),
        "a=ice-ufrag:rstr",
        1,
    );
    let (s, b) = renegotiate(restarted_offer.clone()).await;
    assert_eq!(s, 200, "{b}");
    let restarted = b["sdp"].as_str().unwrap();
    assert_ne!(
        ufrag(restarted),
        ufrag(answer),
        "an ICE restart: {restarted}"
    );
    assert!(restarted.contains("a=setup:passive"), "our DTLS role stays");
    let fingerprint = OFFER
        .lines()
        .find(|l| l.starts_with("a=fingerprint:"))
        .unwrap();
    // A new certificate with the ICE session the call has: refused.
    let new_certificate = format!("a=fingerprint:sha-256 {}", ["00"; 32].join(":"));
    let other_fingerprint = restarted_offer.replacen(fingerprint, &new_certificate, 1);
    let (s, b) = renegotiate(other_fingerprint.clone()).await;
    assert_eq!((s, code(&b)), (400, "bad_sdp"), "{b}");
    // With new ICE credentials too (a browser's new peer connection): a new
    // DTLS association, our role and certificate as before.
    let new_connection = other_fingerprint.replacen("a=ice-ufrag:rstr", "a=ice-ufrag:nwpc", 1);
    // ...but not when anything else refuses it: that changes nothing, and
    // the call's own certificate and ICE session are answered as before.
    let without_codec =
        new_connection.replacen("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 L16/8000", 1);
    let (s, b) = renegotiate(without_codec).await;
    assert_eq!((s, code(&b)), (400, "bad_sdp"), "{b}");
    let (s, b) = renegotiate(restarted_offer.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(ufrag(b["sdp"].as_str().unwrap()), ufrag(restarted), "{b}");
    let (s, b) = renegotiate(new_connection).await;
    assert_eq!(s, 200, "{b}");
    let renewed = b["sdp"].as_str().unwrap();
    assert_ne!(ufrag(renewed), ufrag(restarted), "{renewed}");
    assert!(renewed.contains("a=setup:passive"), "{renewed}");
    let ours = |sdp: &str| {
        sdp.lines()
            .find(|l| l.starts_with("a=fingerprint:"))
            .map(str::to_string)
    };
    assert_eq!(ours(renewed), ours(answer), "our certificate stays");
    let (s, b) = renegotiate("v=0\r\nnonsense".into()).await;
    assert_eq!((s, code(&b)), (400, "bad_sdp"), "{b}");
    let (s, b) = api
        .send(
            reqwest::Method::POST,
            "/calls/nosuchcall/renegotiate",
            Some(json!({"sdp": OFFER})),
        )
        .await;
    assert_eq!((s, code(&b)), (404, "call_not_found"), "{b}");

    let (s, _) = api
        .send(reqwest::Method::DELETE, &format!("/calls/{cid}"), None)
        .await;
    assert_eq!(s, 204);
    let events = api.events(3, 5).await;
    assert_eq!(events[0]["type"], "call.ended");
    assert_eq!(events[0]["reason"], "hangup");
    let (s, b) = api
        .send(reqwest::Method::GET, &format!("/calls/{cid}"), None)
        .await;
    assert_eq!((s, code(&b)), (404, "call_not_found"));
    all_ports_back(&gw, full).await;
    gw.shutdown().await;
}

/// No browser ever checks in: consent freshness ends the call.
#[tokio::test]
async fn a_call_nobody_connects_to_times_out() {
    let gw = start(14200, "consent-timeout-s = 5\n").await;
    let full = ports_free(&gw);
    let api = Api::new(&gw).await;
    let (s, _) = api.call("echo", OFFER).await;
    assert_eq!(s, 201);
    let started = Instant::now();
    let mut ended = None;
    let mut after = 0;
    while ended.is_none() && started.elapsed() < Duration::from_secs(15) {
        for e in api.events(after, 10).await {
            after = e["seq"].as_u64().unwrap();
            if e["type"] == "call.ended" {
                ended = Some(e);
            }
        }
    }
    let ended = ended.expect("the call ended");
    assert_eq!(ended["reason"], "media_timeout");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "not before the timeout"
    );
    all_ports_back(&gw, full).await;
    gw.shutdown().await;
}

/// Thousands of nothing: many calls ended every way, the ranges stay whole,
/// and a full range says no_media_ports until a call ends.
#[tokio::test]
async fn ports_come_back_on_every_end() {
    let gw = start(14300, "").await;
    let full = ports_free(&gw);
    let api = Api::new(&gw).await;
    for round in 0..12 {
        let (s, b) = api.call("echo", OFFER).await;
        assert_eq!(s, 201, "round {round}: {b}");
        let cid = b["call"].as_str().unwrap();
        let (s, _) = api
            .send(reqwest::Method::DELETE, &format!("/calls/{cid}"), None)
            .await;
        assert_eq!(s, 204);
        all_ports_back(&gw, full).await;
    }
    // Four web ports: the fifth call finds none, and nothing of it is left.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let (s, b) = api.call("echo", OFFER).await;
        assert_eq!(s, 201, "{b}");
        calls.push(b["call"].as_str().unwrap().to_string());
    }
    let (s, b) = api.call("echo", OFFER).await;
    assert_eq!((s, code(&b)), (503, "no_media_ports"), "{b}");
    assert_eq!(ports_free(&gw), (0, full.1 - 4));
    // /readyz says so too (API.md: "ports free").
    let readyz = || async {
        let r = reqwest::get(format!("http://{}/readyz", gw.admin_addr))
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        (
            status,
            v["checks"]["ports"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(readyz().await, (503, "exhausted".to_string()));
    // Ending the session ends its calls.
    let (s, _) = api.send(reqwest::Method::DELETE, "", None).await;
    assert_eq!(s, 204);
    all_ports_back(&gw, full).await;
    assert_eq!(readyz().await, (200, "ok".to_string()));
    let metrics = gw.state.metrics.render();
    assert!(metrics.contains("gateway_calls 0"), "{metrics}");
    assert!(
        metrics.contains("gateway_calls_ended_total{kind=\"hangup\"} 16"),
        "{metrics}"
    );
    gw.shutdown().await;
}
