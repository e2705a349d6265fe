//! Long-poll delivery over real sockets, with events pushed by the gateway's
//! own session store (calls are what push them in production).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use webrtc_sip_gateway::config::Config;
use webrtc_sip_gateway::session::SessionEvent;
use webrtc_sip_gateway::Gateway;

async fn start() -> Gateway {
    let config = Config::from_toml(
        "[http]\nlisten = \"127.0.0.1:0\"\ntls-listen = \"\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [sip]\nlisten = \"127.0.0.1:0\"\n",
        "test",
        Vec::new(),
    )
    .unwrap();
    Gateway::start(config).await.unwrap()
}

async fn create_session(base: &str) -> (String, String) {
    let r: Value = reqwest::Client::new()
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"user": "1001"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        r["session"].as_str().unwrap().to_string(),
        r["session_secret"].as_str().unwrap().to_string(),
    )
}

fn dtmf(digit: &str) -> SessionEvent {
    SessionEvent::CallDtmf {
        call: "c1".into(),
        digit: digit.into(),
    }
}

async fn poll(
    base: &str,
    sid: &str,
    secret: &str,
    after: u64,
    timeout: u64,
) -> reqwest::Result<Value> {
    reqwest::Client::new()
        .get(format!(
            "{base}/v1/sessions/{sid}/events?after={after}&timeout={timeout}"
        ))
        .bearer_auth(secret)
        .timeout(Duration::from_secs(timeout + 5))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

fn seqs(v: &Value) -> Vec<u64> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn dropped_poll_loses_no_event() {
    let gw = start().await;
    let base = format!("http://{}", gw.http_addr.unwrap());
    let (sid, secret) = create_session(&base).await;

    // A waiting poll is woken by an event well before its timeout.
    let waiting = {
        let (base, sid, secret) = (base.clone(), sid.clone(), secret.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            (
                poll(&base, &sid, &secret, 0, 20).await.unwrap(),
                t.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.state.store().push(&sid, dtmf("1")).unwrap();
    let (first, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    assert_eq!(seqs(&first), vec![1]);
    assert_eq!(
        first["events"][0],
        json!({"seq": 1, "type": "call.dtmf", "call": "c1", "digit": "1"})
    );

    // That response is "lost" on the way: the browser never saw seq 1. Meanwhile
    // a poll is abandoned mid-wait (the connection drops) and more events arrive.
    let abandoned = reqwest::Client::new()
        .get(format!(
            "{base}/v1/sessions/{sid}/events?after=0&timeout=20"
        ))
        .bearer_auth(&secret)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    // With seq 1 still queued, that poll may even have returned at once.
    drop(abandoned);
    gw.state.store().push(&sid, dtmf("2")).unwrap();
    gw.state.store().push(&sid, dtmf("3")).unwrap();

    // Polling again from what the browser last saw returns everything, in order.
    let again = poll(&base, &sid, &secret, 0, 0).await.unwrap();
    assert_eq!(seqs(&again), vec![1, 2, 3]);
    let digits: Vec<&str> = again["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, vec!["1", "2", "3"]);

    // Acknowledging 2 (after=2) drops 1 and 2; 3 stays until acknowledged.
    assert_eq!(
        seqs(&poll(&base, &sid, &secret, 2, 0).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        seqs(&poll(&base, &sid, &secret, 2, 0).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        seqs(&poll(&base, &sid, &secret, 3, 0).await.unwrap()),
        Vec::<u64>::new()
    );
    // Acknowledged events are gone for good; numbering goes on.
    assert_eq!(
        seqs(&poll(&base, &sid, &secret, 0, 0).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(gw.state.store().push(&sid, dtmf("4")), Some(4));
    assert_eq!(
        seqs(&poll(&base, &sid, &secret, 3, 0).await.unwrap()),
        vec![4]
    );

    gw.shutdown().await;
}

#[tokio::test]
async fn deleting_a_session_ends_its_poll() {
    let gw = start().await;
    let base = format!("http://{}", gw.http_addr.unwrap());
    let (sid, secret) = create_session(&base).await;
    let waiting = {
        let (base, sid, secret) = (base.clone(), sid.clone(), secret.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{base}/v1/sessions/{sid}/events?timeout=20"))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reqwest::Client::new()
        .delete(format!("{base}/v1/sessions/{sid}"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 404);
    assert!(gw.state.store().is_empty());
}
