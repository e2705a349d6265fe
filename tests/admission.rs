//! Admission control with real peers: a node full at `[media] max-calls`
//! refuses the next call both ways — the API with 503 `overloaded` and
//! Retry-After, a SIPp caller's INVITE with 503, a SIPp dispatcher probe's
//! OPTIONS with 503 — says so on `/readyz` and in
//! `gateway_calls_refused_total`, and takes calls again when one ends; and
//! over `[media] max-cpu-percent` (this test keeps every core busy) new
//! calls are refused until the machine is quiet again.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sipp::{gateway_toward, Sipp, Transport};
use common::{free_udp_port, ApiSession, Gateway};
use serde_json::{json, Value};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

async fn try_call(session: &ApiSession) -> (u16, Value, Option<String>) {
    session.try_call(json!({"to": "echo", "sdp": OFFER})).await
}

async fn readyz(gw: &Gateway) -> (u16, Value) {
    gw.readyz().await
}

/// Runs SIPp `scenario` once against the gateway's SIP port; asserts it passed.
fn sipp_caller(gw: &Gateway, scenario: &str) {
    Sipp::caller(scenario, gw.sip, Transport::Udp).passed();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_node_refuses_the_next_call_both_ways_until_one_ends() {
    let gw = gateway_toward(free_udp_port(), Transport::Udp, "[media]\nmax-calls = 1\n");
    let session = ApiSession::open(&gw).await;
    let (status, first, _) = try_call(&session).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(readyz(&gw).await.0, 503, "full: not ready for more");
    assert_eq!(readyz(&gw).await.1["checks"]["admission"], "full");

    let (status, body, retry) = try_call(&session).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("media.max-calls"), "{message}");
    assert_eq!(retry.as_deref(), Some("5"));
    let refused = "gateway_calls_refused_total{reason=\"max_calls\"}";
    assert_eq!(gw.metric(refused).await, 1.0);

    // A SIP caller for the session's user is shed too.
    sipp_caller(&gw, "uac-503.xml");
    assert_eq!(gw.metric(refused).await, 2.0);
    // The SIP side says so to a dispatcher's probe (the sampler looks
    // once a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sipp_caller(&gw, "options-503.xml");
    assert_eq!(
        gw.metric("gateway_calls").await,
        1.0,
        "the first call is up"
    );

    session.hang_up(first["call"].as_str().unwrap()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while readyz(&gw).await.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readyz(&gw).await.1["checks"]["admission"], "ok");
    let (status, again, _) = try_call(&session).await;
    assert_eq!(status, 201, "room again: {again}");
    session.hang_up(again["call"].as_str().unwrap()).await;
}

/// Keeps every core busy until dropped.
struct Burner {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burner {
    fn start() -> Burner {
        let stop = Arc::new(AtomicBool::new(false));
        // One more than the cores, so none is left idle.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x: u64 = 1;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005) + 1);
                        }
                    }
                })
            })
            .collect();
        Burner { stop, threads }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_machine_refuses_new_calls_until_it_is_quiet() {
    // High enough that the machine's own work (other tests' leftovers, a
    // VM's steal time) stays under it once the burner stops.
    let gw = Gateway::start("", "[media]\nmax-cpu-percent = 90\n");
    let session = ApiSession::open(&gw).await;
    let burner = Burner::start();
    // The load is averaged over 5 s: calls go through until it climbs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let (status, body, retry) = try_call(&session).await;
        match status {
            201 => session.hang_up(body["call"].as_str().unwrap()).await,
            503 => break (body, retry),
            other => panic!("{other}: {body}"),
        }
        assert!(
            Instant::now() < deadline,
            "never refused while every core was busy"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (body, retry) = refused;
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("max-cpu-percent = 90"), "{message}");
    assert_eq!(retry.as_deref(), Some("5"));
    assert!(
        gw.metric("gateway_calls_refused_total{reason=\"cpu\"}")
            .await
            >= 1.0
    );
    assert!(gw.metric("gateway_cpu_busy_percent").await >= 90.0);
    let (status, ready) = readyz(&gw).await;
    assert_eq!(
        (status, &ready["checks"]["admission"]),
        (503, &json!("overloaded"))
    );
    // A new session is still taken: only calls cost CPU.
    assert!(ApiSession::create(&gw, "1002", None).await.is_ok());

    drop(burner);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, _) = try_call(&session).await;
        if status == 201 {
            session.hang_up(body["call"].as_str().unwrap()).await;
            break;
        }
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert!(
            Instant::now() < deadline,
            "still refused after the load went"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gw.metric("gateway_cpu_busy_percent").await < 90.0);
}
