//! The signaling API against the real binary over real sockets: CORS, auth,
//! limits, error shapes, long-poll timing and session expiry.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client, create_session, error_code, Gateway};
use serde_json::json;
use webrtc_sip_gateway::api::token;

const WHITELIST: &str = r#"domain-whitelist = ["https://app.example.com", "https://*.example.org", "partner.example.net", "http://localhost:3000"]"#;

async fn post_session(base: &str, origin: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"user": "1001", "password": "pw"}));
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    req.send().await.unwrap()
}

fn has_cors_headers(r: &reqwest::Response) -> bool {
    r.headers()
        .keys()
        .any(|k| k.as_str().starts_with("access-control-allow"))
}

#[tokio::test]
async fn cors_matrix() {
    let gw = Gateway::start(WHITELIST, "");
    let base = gw.api();
    let mut created = 0.0;

    for origin in [
        "https://app.example.com",
        "https://APP.example.com:443",
        "https://a.example.org",
        "https://a.b.example.org",
        "http://partner.example.net",
        "https://partner.example.net",
        "http://localhost:3000",
    ] {
        let r = post_session(&base, Some(origin)).await;
        assert_eq!(r.status(), 201, "{origin} should be allowed");
        assert_eq!(r.headers()["access-control-allow-origin"], origin);
        assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
        created += 1.0;
    }

    for origin in [
        "http://app.example.com",       // wrong scheme
        "https://app.example.com:8443", // wrong port
        "https://example.org",          // bare domain of a wildcard
        "https://evil.com",
        "https://partner.example.net:8443",
        "http://localhost:3001",
        "null",
    ] {
        let r = post_session(&base, Some(origin)).await;
        assert_eq!(r.status(), 403, "{origin} should be refused");
        assert!(!has_cors_headers(&r), "{origin} got CORS headers");
        assert_eq!(error_code(r).await, "origin_not_allowed");
    }

    // No Origin: a server-side client, served normally, no CORS headers.
    let r = post_session(&base, None).await;
    assert_eq!(r.status(), 201);
    assert!(!has_cors_headers(&r));
    created += 1.0;

    // Preflight, allowed and refused.
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/sessions"))
        .header("Origin", "https://x.example.org")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://x.example.org");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("DELETE"));
    let allowed_headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed_headers.contains("content-type") && allowed_headers.contains("authorization"));
    assert!(h.contains_key("access-control-max-age"));

    let r = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/sessions/abc/events"),
        )
        .header("Origin", "https://evil.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!has_cors_headers(&r));

    // A refused origin created nothing: only the allowed requests made sessions.
    assert_eq!(gw.metric("gateway_sessions").await, created);
    assert_eq!(gw.metric("gateway_sessions_created_total").await, created);
    assert_eq!(gw.metric("gateway_cors_rejections_total").await, 8.0);

    // A refused origin cannot reach a session's resources either (no side effect on DELETE).
    let (sid, secret) = create_session(&base, "2000").await;
    let r = client()
        .delete(format!("{base}/v1/sessions/{sid}"))
        .header("Origin", "https://evil.com")
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(gw.metric("gateway_sessions").await, created + 1.0);
}

#[tokio::test]
async fn empty_whitelist_echoes_any_origin() {
    let gw = Gateway::start("domain-whitelist = []", "");
    for origin in ["https://anything.test", "http://127.0.0.1:5173"] {
        let r = post_session(&gw.api(), Some(origin)).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["access-control-allow-origin"], origin);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn token_auth_matrix() {
    let secret = "backend-and-gateway-share-this-32-bytes";
    let gw = Gateway::start(
        "",
        &format!("[auth]\nmode = \"token\"\ntoken-secret = \"{secret}\"\n"),
    );
    let base = gw.api();
    let create = |token: Option<String>, user: &'static str| {
        let base = base.clone();
        async move {
            let mut req = client()
                .post(format!("{base}/v1/sessions"))
                .json(&json!({"user": user}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap()
        }
    };
    let valid = token::issue(secret.as_bytes(), "1001", unix_now() + 600);
    let r = create(Some(valid), "1001").await;
    assert_eq!(r.status(), 201);

    let refused = [
        (None, "missing"),
        (
            Some(token::issue(secret.as_bytes(), "1001", unix_now() - 1)),
            "expired",
        ),
        (
            Some(token::issue(b"some-other-secret", "1001", unix_now() + 600)),
            "forged",
        ),
        (
            Some(token::issue(secret.as_bytes(), "1002", unix_now() + 600)),
            "other user",
        ),
        (Some("not-a-token".to_string()), "garbage"),
        // Ten days: longer than auth.token-max-ttl-s (an hour by default).
        (
            Some(token::issue(
                secret.as_bytes(),
                "1001",
                unix_now() + 864_000,
            )),
            "lives too long",
        ),
    ];
    let mut messages = std::collections::BTreeSet::new();
    for (t, why) in refused {
        let r = create(t, "1001").await;
        assert_eq!(r.status(), 401, "{why}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{why}");
        messages.insert(body["error"]["message"].to_string());
    }
    assert_eq!(
        messages.len(),
        1,
        "one answer for every refusal: {messages:?}"
    );
    assert_eq!(gw.metric("gateway_sessions").await, 1.0);
    assert_eq!(
        gw.metric("gateway_auth_failures_total{kind=\"token\"}")
            .await,
        6.0
    );
}

#[tokio::test]
async fn session_secret_matrix() {
    let gw = Gateway::start("", "");
    let base = gw.api();
    let (a, a_secret) = create_session(&base, "1001").await;
    let (b, b_secret) = create_session(&base, "1002").await;
    let events = |sid: &str| format!("{base}/v1/sessions/{sid}/events?timeout=0");

    let r = client()
        .get(events(&a))
        .bearer_auth(&a_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        json!({"events": []})
    );

    let r = client()
        .get(events(&a))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "invalid_session_secret");
    let r = client().get(events(&a)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Another session's id with your own secret: 404, as for an id that does not exist.
    let r = client()
        .get(events(&b))
        .bearer_auth(&a_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .get(events("nonexistent"))
        .bearer_auth(&a_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // DELETE follows the same rules and only then ends the session.
    let r = client()
        .delete(format!("{base}/v1/sessions/{b}"))
        .bearer_auth(&a_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .delete(format!("{base}/v1/sessions/{b}"))
        .bearer_auth("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(gw.metric("gateway_sessions").await, 2.0);
    let r = client()
        .delete(format!("{base}/v1/sessions/{b}"))
        .bearer_auth(&b_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(gw.metric("gateway_sessions").await, 1.0);
    let r = client()
        .get(events(&b))
        .bearer_auth(&b_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the ended session's secret is no longer valid"
    );
    assert_eq!(
        gw.metric("gateway_auth_failures_total{kind=\"session_secret\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn limits_and_error_shapes() {
    let gw = Gateway::start(
        "max-sessions = 2\nmax-body-bytes = 2048\nrate-limit-per-s = 0",
        "",
    );
    let base = gw.api();

    let big = json!({"user": "1001", "display_name": "x".repeat(4000)});
    let r = client()
        .post(format!("{base}/v1/sessions"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "body_too_large");

    // Chunked (no Content-Length) is held to the same limit.
    let status = raw_chunked_post(gw.http, &[vec![b' '; 1500], vec![b' '; 1500]]);
    assert_eq!(status, 413);

    for (body, code) in [
        ("{not json", "bad_json"),
        ("{\"user\": 1234}", "bad_json"),
        ("{}", "bad_json"),
        ("{\"user\": \"bad user\"}", "invalid_user"),
        ("{\"user\": \"\"}", "invalid_user"),
        (
            "{\"user\": \"1001\", \"display_name\": \"Agent\\r\\nX-Evil: 1\"}",
            "invalid_display_name",
        ),
        (
            "{\"user\": \"1001\", \"display_name\": \"Agent\\u0007\"}",
            "invalid_display_name",
        ),
    ] {
        let r = client()
            .post(format!("{base}/v1/sessions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(error_code(r).await, code, "{body}");
    }
    // A mistyped password is not echoed back.
    let r = client()
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"user": "1001", "password": 987654321}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!r.text().await.unwrap().contains("987654321"));

    let r = client()
        .post(format!("{base}/v1/sessions"))
        .header("content-type", "text/plain")
        .body("{\"user\":\"1\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let r = client()
        .get(format!("{base}/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "not_found");
    let r = client()
        .put(format!("{base}/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "method_not_allowed");

    create_session(&base, "a").await;
    create_session(&base, "b").await;
    let r = post_session(&base, None).await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "too_many_sessions");
}

/// Posts a chunked body over a raw socket and returns the response status.
fn raw_chunked_post(addr: std::net::SocketAddr, chunks: &[Vec<u8>]) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(&req);
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[tokio::test]
async fn rate_limit_per_client_ip() {
    let gw = Gateway::start("rate-limit-per-s = 1\nrate-limit-burst = 3", "");
    let url = format!("{}/v1/sessions/x/events", gw.api());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(client().get(&url).send().await.unwrap());
    }
    let last = statuses.pop().unwrap();
    assert_eq!(last.status(), 429);
    assert!(last.headers().contains_key("retry-after"));
    assert_eq!(error_code(last).await, "rate_limited");
    assert_eq!(statuses[0].status(), 401);
    assert_eq!(gw.metric("gateway_rate_limited_total").await, 2.0);
    // The admin port is not rate limited.
    for _ in 0..10 {
        let r = reqwest::get(format!("http://{}/healthz", gw.admin))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn long_poll_waits_and_keeps_the_session_alive() {
    let gw = Gateway::start("session-timeout-s = 2", "");
    let base = gw.api();
    let (sid, secret) = create_session(&base, "1001").await;
    let url = |t: u64| format!("{base}/v1/sessions/{sid}/events?after=0&timeout={t}");

    // A poll with nothing to deliver waits its timeout, then returns an empty list.
    let started = Instant::now();
    let r = client()
        .get(url(3))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["events"],
        json!([])
    );
    assert!(started.elapsed() >= Duration::from_millis(2900));
    // The 3 s poll outlasted the 2 s session timeout: the session is still there.
    let r = client()
        .get(url(0))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A poll the client abandons mid-wait still counts as activity and frees its hold.
    let abandoned = client()
        .get(url(30))
        .bearer_auth(&secret)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(abandoned.is_err());

    // Nobody polls now: the session ends after its timeout.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = client()
        .get(url(0))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(gw.metric("gateway_sessions").await, 0.0);
    assert_eq!(
        gw.metric("gateway_sessions_ended_total{kind=\"expired\"}")
            .await,
        1.0
    );

    let r = client()
        .get(format!("{base}/v1/sessions/{sid}/events?after=x"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "auth is checked before the query");
}

#[tokio::test]
async fn bad_poll_query_is_a_clear_error() {
    let gw = Gateway::start("", "");
    let base = gw.api();
    let (sid, secret) = create_session(&base, "1001").await;
    let r = client()
        .get(format!("{base}/v1/sessions/{sid}/events?after=x"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "bad_request");
}

#[tokio::test]
async fn admin_endpoints() {
    let gw = Gateway::start("", "");
    let admin = format!("http://{}", gw.admin);
    let r = reqwest::get(format!("{admin}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "no SIP server configured: ready once listening"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    create_session(&gw.api(), "1001").await;
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "gateway_sessions 1",
        "gateway_http_requests_total{route=\"/v1/sessions\",method=\"POST\",status=\"201\"} 1",
        "gateway_media_calls 0",
        "gateway_media_packets_total{leg=\"web\",direction=\"in\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    let r = reqwest::get(format!("{admin}/nothing")).await.unwrap();
    assert_eq!(r.status(), 404);

    // With a SIP server configured but not yet reachable, the gateway is not ready.
    let gw = Gateway::start("", "[sip]\nserver = \"192.0.2.1\"\n");
    let r = reqwest::get(format!("http://{}/readyz", gw.admin))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}
