//! Two gateway nodes behind Kamailio's `dispatcher`
//! (`tests/kamailio/dispatcher.cfg`), as a contact center runs them: the
//! switch's INVITEs (a SIPp caller that cancels once it rings) are spread
//! round robin over both nodes while both answer the dispatcher's OPTIONS
//! probes; once one node drains — an echo call of its own keeps it up — its
//! probes get 503 and the dispatcher sends every new INVITE to the other.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::kamailio::Kamailio;
use common::sipp::{Sipp, Transport};
use common::{ApiSession, Gateway};
use serde_json::json;

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

/// A node whose SIP server is the dispatcher (no registration: a trunk).
fn node(dispatcher: u16) -> Gateway {
    Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{dispatcher}\"\nregister = false\nkeepalive-interval-s = 0\n"
        ),
    )
}

/// `calls` SIPp calls to 1001 through the dispatcher, each cancelled once
/// it rings.
fn calls_through(kamailio: &Kamailio, calls: u32) -> Output {
    let target = format!("127.0.0.1:{}", kamailio.port).parse().unwrap();
    Sipp::caller_from(
        "uac-cancel.xml",
        target,
        Transport::Udp,
        30,
        common::free_udp_port(),
        &["-m", &calls.to_string()],
    )
    .output()
}

async fn incoming(gw: &Gateway) -> f64 {
    gw.metric("gateway_calls_started_total").await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dispatcher_spreads_calls_and_skips_a_draining_node() {
    // The nodes' SIP ports are known once they run; the dispatcher's list
    // names them, so they point at a port the dispatcher then takes.
    let dispatcher_port = common::free_udp_and_tcp_port();
    let n1 = node(dispatcher_port);
    let n2 = node(dispatcher_port);
    let dir = tempfile::tempdir().unwrap();
    let list = common::write(
        dir.path(),
        "dispatcher.list",
        &format!("1 sip:{}\n1 sip:{}\n", n1.sip, n2.sip),
    );
    let kamailio = Kamailio::start_on(
        dispatcher_port,
        "dispatcher.cfg",
        &[("LIST_FILE", list.to_str().unwrap())],
    );
    // The agent 1001 is signed in on both nodes (calls may land on either).
    let _s1 = ApiSession::open(&n1).await;
    let _s2 = ApiSession::open(&n2).await;
    // Both nodes answer the probes (each second).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    common::assert_sipp_passed(&calls_through(&kamailio, 4));
    let (a, b) = (incoming(&n1).await, incoming(&n2).await);
    assert_eq!(a + b, 4.0);
    assert!(a >= 1.0 && b >= 1.0, "round robin: {a} and {b}");

    // n1 drains, kept up by an echo call of its own.
    let agent = ApiSession::create(&n1, "1002", None).await.unwrap();
    let (status, call, _) = agent.try_call(json!({"to": "echo", "sdp": OFFER})).await;
    assert_eq!(status, 201, "{call}");
    assert_eq!(n1.admin_drain().await.0, 202);
    // Its OPTIONS answer is 503 from the next probe on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while n1.readyz().await.1["checks"]["admission"] != "draining" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    common::assert_sipp_passed(&calls_through(&kamailio, 4));
    assert_eq!(incoming(&n1).await, a + 1.0, "only n1's own echo call");
    assert_eq!(incoming(&n2).await, b + 4.0, "every new INVITE went to n2");
    assert_eq!(
        n1.metric("gateway_calls_refused_total{reason=\"draining\"}")
            .await,
        0.0,
        "none reached n1 to be refused"
    );
    agent.hang_up(call["call"].as_str().unwrap()).await;
}
