//! Two gateway nodes behind a real HAProxy (Debian's, installed by the test
//! command) balancing round-robin and probing each node's `/readyz`: a
//! session made through the balancer names its node (`node_url`, the id's
//! `<node>.` prefix); a request for it that the balancer hands to the other
//! node is redirected there (307, same path); one node drained takes no new
//! sessions (the balancer's probe sees its 503) while the other takes them
//! all, and the drained node exits 0. With a real Redis as the nodes'
//! session directory, a trunk's INVITE (SIPp) reaching the node without
//! the user's session is redirected (302) to the node with it, and refused
//! once that session has ended.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::haproxy::HaProxy;
use common::sipp::{Sipp, Transport};
use common::{client, free_tcp_port, wait_until_bound, ApiSession, Gateway, Killed};
use serde_json::{json, Value};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

/// A node `id` whose API listens on 127.0.0.1:`port`, knowing `peer`.
fn node(id: &str, port: u16, peer: (&str, u16)) -> Gateway {
    let config = common::config_text(
        "",
        &format!(
            "[cluster]\nnode-id = \"{id}\"\nnode-url = \"http://127.0.0.1:{port}\"\n\
             [cluster.nodes]\n{} = \"http://127.0.0.1:{}\"\n",
            peer.0, peer.1
        ),
    )
    .replacen(
        "[http]\nlisten = \"127.0.0.1:0\"",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    Gateway::start_with_env(&config, &[])
}

/// `POST /v1/sessions` through `base`: status and body.
async fn new_session(base: &str, user: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/v1/sessions"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_behind_haproxy_route_each_session_to_its_node_and_drain_one() {
    let (p1, p2, lb) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let mut n1 = node("n1", p1, ("n2", p2));
    let n2 = node("n2", p2, ("n1", p1));
    let _lb = HaProxy::start(lb, &[("n1", &n1), ("n2", &n2)]);
    let base = format!("http://127.0.0.1:{lb}");
    // Both nodes up in the balancer's eyes.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut by_node = std::collections::BTreeMap::<String, Value>::new();
    for user in ["1001", "1002", "1003", "1004"] {
        let (status, body) = new_session(&base, user).await;
        assert_eq!(status, 201, "{body}");
        let url = body["node_url"].as_str().unwrap().to_string();
        let sid = body["session"].as_str().unwrap();
        let node = if url.ends_with(&p1.to_string()) {
            "n1"
        } else {
            "n2"
        };
        assert!(sid.starts_with(&format!("{node}.")), "{sid} made by {url}");
        by_node.insert(node.to_string(), body);
    }
    assert_eq!(by_node.len(), 2, "round robin used both nodes");

    // n1's session asked for through the balancer: answered by n1, or
    // redirected to it by n2.
    let s1 = &by_node["n1"];
    let (sid, secret) = (
        s1["session"].as_str().unwrap(),
        s1["session_secret"].as_str().unwrap(),
    );
    let path = format!("/v1/sessions/{sid}/events?after=0&timeout=0");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = no_redirects
            .get(format!("{base}{path}"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 307 {
            let location = r.headers()["location"].to_str().unwrap().to_string();
            assert_eq!(location, format!("http://127.0.0.1:{p1}{path}"));
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "wrong_node");
            let there = client()
                .get(&location)
                .bearer_auth(secret)
                .send()
                .await
                .unwrap();
            assert_eq!(there.status(), 200, "the owner answers");
        } else {
            assert_eq!(status, 200);
        }
        seen.insert(status);
    }
    assert_eq!(seen.len(), 2, "both nodes were asked: {seen:?}");
    // A call on the node itself, as js-api makes it.
    let node_url = s1["node_url"].as_str().unwrap();
    let r = client()
        .post(format!("{node_url}/v1/sessions/{sid}/calls"))
        .bearer_auth(secret)
        .json(&json!({"to": "echo", "sdp": OFFER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let call: Value = r.json().await.unwrap();

    // n1 drains: the balancer's probe takes it out, n2 takes every new session.
    assert_eq!(n1.admin_drain().await.0, 202);
    // Until its probe says so (within a second) n1 refuses with 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut on_n2 = 0;
    let mut user = 2000;
    while on_n2 < 4 {
        assert!(Instant::now() < deadline, "n2 never took every new session");
        user += 1;
        let (status, body) = new_session(&base, &user.to_string()).await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "draining", "{body}");
            on_n2 = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            body["node_url"].as_str().unwrap(),
            format!("http://127.0.0.1:{p2}")
        );
        on_n2 += 1;
    }
    // Its session still works on the node itself until its call ends.
    let r = client()
        .delete(format!(
            "{node_url}/v1/sessions/{sid}/calls/{}",
            call["call"].as_str().unwrap()
        ))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = n1
        .wait_exit(deadline.saturating_duration_since(Instant::now()))
        .expect("the drained node exits");
    assert!(status.success(), "{status}");
}

/// A throwaway Redis on `port`: no persistence, loopback only.
fn redis(port: u16) -> Killed {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (the test command installs it)");
    wait_until_bound(port, true);
    Killed(child)
}

/// A node `id` sharing the session directory in Redis on `redis_port`,
/// whose SIP trunk (nothing plays it) does not register.
fn directory_node(id: &str, redis_port: u16) -> Gateway {
    Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{}\"\nregister = false\nkeepalive-interval-s = 0\n\
             [cluster]\nnode-id = \"{id}\"\nredis-url = \"redis://127.0.0.1:{redis_port}/\"\n",
            common::free_udp_port()
        ),
    )
}

/// Whether SIPp's `scenario` toward `gw` passes within 5 s (tried again
/// every 200 ms: the directory is written and cleared in the background).
async fn passes_soon(scenario: &str, gw: &Gateway) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if Sipp::caller(scenario, gw.sip, Transport::Udp)
            .output()
            .status
            .success()
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_for_a_user_on_another_node_is_redirected_there() {
    let redis_port = free_tcp_port();
    let _redis = redis(redis_port);
    let n1 = directory_node("n1", redis_port);
    let n2 = directory_node("n2", redis_port);
    let agent = ApiSession::open(&n1).await;
    // The directory is written just after the session is made.
    assert!(passes_soon("uac-302.xml", &n2).await, "never redirected");
    assert_eq!(n2.metric("gateway_calls_redirected_total").await, 1.0);
    // The Contact named n1 (SIPp checked its shape; the log says which).
    let n1_named = format!("\"node\":\"{}\"", n1.sip);
    assert!(
        n2.log_shows(&n1_named, Duration::from_secs(5)),
        "n2 named n1 ({n1_named}):\n{}",
        n2.log()
    );
    // The node with the session takes the call itself (it rings the page).
    Sipp::caller("uac-cancel.xml", n1.sip, Transport::Udp).passed();
    assert_eq!(n1.metric("gateway_calls_redirected_total").await, 0.0);

    // The session ends: the directory forgets it, the call is refused.
    common::delete_session(&n1.api(), &agent.created).await;
    assert!(
        passes_soon("uac-480.xml", &n2).await,
        "still redirected after the session ended"
    );
    assert_eq!(n2.metric("gateway_directory_errors_total").await, 0.0);

    // A node that drains away takes its users out of the directory first:
    // no call is sent after it once it is gone.
    let _again = ApiSession::open(&n1).await;
    let mut n1 = n1;
    assert!(
        passes_soon("uac-302.xml", &n2).await,
        "the new session never published"
    );
    n1.terminate();
    let status = n1
        .wait_exit(Duration::from_secs(10))
        .expect("n1 drains and exits");
    assert!(status.success(), "{status}");
    Sipp::caller("uac-480.xml", n2.sip, Transport::Udp).passed();
}
