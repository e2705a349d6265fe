//! Black-box checks of the HTTP listeners' hygiene against the real
//! binary (loopback only, bounded): connection cap, idle and body-read
//! timeouts, security headers, the start-up certificate's lifetime and the
//! open-file limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Gateway;

/// Reads from `stream` until it closes or `within` passes: (closed, bytes).
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (true, got),
        }
    }
    (false, got)
}

fn get(stream: &mut TcpStream, path: &str) -> String {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 8192];
    let n = stream.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Over `max-connections` a connection is closed at once and counted; once
/// one closes, a new one is served.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_counted() {
    let gw = Gateway::start("max-connections = 3\n", "");
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(gw.http).unwrap())
        .collect();
    // Each held one is served.
    for stream in &mut held {
        assert!(get(stream, "/v1/nothing").starts_with("HTTP/1.1 404"));
    }
    let mut over = TcpStream::connect(gw.http).unwrap();
    let _ = over.write_all(b"GET /v1/nothing HTTP/1.1\r\nHost: gw\r\n\r\n");
    let (closed, got) = read_until_closed(&mut over, Duration::from_secs(3));
    assert!(closed && got.is_empty(), "the fourth was served: {got:?}");
    assert_eq!(
        gw.metric("gateway_http_connections_refused_total").await,
        1.0
    );
    drop(held.pop());
    // The freed slot is taken again (the server notices the close first).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = TcpStream::connect(gw.http).unwrap();
        let _ = again.write_all(b"GET /v1/nothing HTTP/1.1\r\nHost: gw\r\n\r\n");
        let (_, got) = read_until_closed(&mut again, Duration::from_millis(500));
        if got.starts_with(b"HTTP/1.1 404") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came free");
    }
}

/// A kept-alive connection with nothing in flight is closed after
/// `idle-timeout-s`; a long-poll longer than that is not cut.
#[tokio::test]
async fn idle_connections_are_closed_but_a_long_poll_is_not() {
    let gw = Gateway::start("idle-timeout-s = 1\n", "");
    let mut idle = TcpStream::connect(gw.http).unwrap();
    assert!(get(&mut idle, "/v1/nothing").starts_with("HTTP/1.1 404"));
    let (closed, _) = read_until_closed(&mut idle, Duration::from_secs(4));
    assert!(closed, "an idle connection stayed open");

    let (sid, secret) = common::create_session(&gw.api(), "1001").await;
    let started = Instant::now();
    let r = common::client()
        .get(format!("{}/v1/sessions/{sid}/events?timeout=3", gw.api()))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("the long-poll is answered");
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(2500));
}

/// A body that trickles is cut off after `body-read-timeout-s` with a 408
/// in the API's JSON.
#[tokio::test]
async fn a_trickled_body_times_out_with_408() {
    let gw = Gateway::start("body-read-timeout-s = 1\n", "");
    let mut stream = TcpStream::connect(gw.http).unwrap();
    stream
        .write_all(
            b"POST /v1/sessions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"user\":",
        )
        .unwrap();
    let started = Instant::now();
    let (_, got) = read_until_closed(&mut stream, Duration::from_secs(8));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408") && text.contains("body_timeout"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// Every response, on every listener, says nosniff and no-referrer; HSTS
/// goes only on HTTPS, only with a configured certificate, with the
/// configured max-age.
#[tokio::test]
async fn security_headers_on_every_response_and_hsts_with_a_real_certificate() {
    let check = |r: &reqwest::Response, hsts: Option<&str>, what: &str| {
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
        assert_eq!(
            h.get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            hsts,
            "{what}"
        );
    };
    let client = common::client();
    // Self-signed: no HSTS anywhere.
    let gw = Gateway::start("", "");
    for base in [
        format!("https://{}", gw.https),
        format!("http://{}", gw.http),
    ] {
        for path in ["/v1/nothing", "/demo/", "/js/gateway.js"] {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            check(&r, None, &format!("{base}{path}"));
        }
        let r = client
            .post(format!("{base}/v1/sessions"))
            .body("{bad")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        check(&r, None, "an error");
    }
    drop(gw);

    // A configured certificate: HSTS on HTTPS with its max-age.
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = common::write(dir.path(), "cert.pem", &made.cert.pem());
    let key = common::write(dir.path(), "key.pem", &made.signing_key.serialize_pem());
    let gw = Gateway::start(
        &format!(
            "tls-cert = \"{}\"\ntls-key = \"{}\"\nhsts-max-age-s = 1234\n",
            cert.display(),
            key.display()
        ),
        "",
    );
    let r = client
        .get(format!("https://{}/v1/nothing", gw.https))
        .send()
        .await
        .unwrap();
    check(&r, Some("max-age=1234"), "HTTPS with a certificate");
    let r = client
        .get(format!("http://{}/v1/nothing", gw.http))
        .send()
        .await
        .unwrap();
    check(&r, None, "plain HTTP");
}

/// The start-up certificate is made anew at each start and is valid for a
/// bounded time (not 1975–4096).
#[test]
fn the_self_signed_certificate_is_new_each_start_with_a_bounded_lifetime() {
    let dates = |gw: &Gateway| {
        let out = std::process::Command::new("curl")
            .args(["-vsk", "-o", "/dev/null"])
            .arg(format!("https://{}/v1/nothing", gw.https))
            .output()
            .expect("curl runs (the test command installs it)");
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        let year = |label: &str| -> i64 {
            let line = text
                .lines()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("no {label} in {text}"));
            line.split_whitespace()
                .rev()
                .nth(1)
                .and_then(|y| y.parse().ok())
                .unwrap_or_else(|| panic!("no year in {line}"))
        };
        (year("start date:"), year("expire date:"))
    };
    let now_year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952) as i64;
    let first = Gateway::start("", "");
    let (start, expire) = dates(&first);
    assert!(
        (now_year - 1..=now_year).contains(&start),
        "starts {start}, now {now_year}"
    );
    assert!(
        expire > start && expire - start <= 2,
        "valid {start} to {expire}"
    );
    let second = Gateway::start("", "");
    assert_ne!(
        first.fingerprint, second.fingerprint,
        "the same certificate twice"
    );
}

/// A soft open-file limit below the hard one is raised at start.
#[test]
fn the_open_file_limit_is_raised_at_start() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        .unwrap();
    if hard.parse::<u64>().is_ok_and(|h| h <= 256) {
        panic!("this machine's hard open-file limit ({hard}) leaves nothing to raise");
    }
    let gw = Gateway::start_with_soft_file_limit(&common::config_text("", ""), 256);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft not raised to hard: {line}");
    assert_eq!(fields[4], hard);
}
