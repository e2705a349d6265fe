//! A fleet as a contact center runs it, each gateway node a host of its own
//! (a network namespace with its own address, every node on the same
//! ports and the same config but for its id): HAProxy in front of the
//! nodes' APIs (round robin, probing `/readyz`), Kamailio in front of
//! their SIP side (`tests/kamailio/fleet.cfg`: the registrar the nodes
//! register their agents with, and a dispatcher probing them), and a SIPp
//! switch behind it. Sessions opened through the balancer live on the node
//! that made them and js-api's way (`node_url`) reaches it; a call from the
//! switch for an agent lands on the agent's node, an agent's call goes out
//! from its own node. One node drained (SIGTERM) keeps its call in progress
//! while the balancer and the dispatcher send everything new to the other;
//! once its call ends it exits 0 and, restarted, takes sessions and calls
//! again.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::haproxy::HaProxy;
use common::kamailio::Kamailio;
use common::{ApiSession, Gateway, Killed, Network};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

/// The front host's address (this namespace): Kamailio, the switch, the
/// balancer's clients.
const FRONT: &str = "10.77.0.1";
const PROXY_PORT: u16 = 5060;
const SWITCH_PORT: u16 = 5070;
const BALANCER_PORT: u16 = 8000;

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host on the fleet's network: a named network namespace joined to this
/// one by a veth pair, 10.77.`index`.2 on its side and .1 on ours, which is
/// its default route (so it reaches the front address too).
struct Host {
    netns: String,
    address: String,
}

impl Host {
    fn new(index: u8) -> Host {
        let netns = format!("gwfleet{}n{index}", std::process::id());
        let link = format!("fleet{index}");
        sh(&format!(
            "ip netns add {netns}; \
             ip link add {link} type veth peer name {link}p; \
             ip link set {link}p netns {netns}; \
             ip addr add 10.77.{index}.1/24 dev {link}; ip link set {link} up; \
             ip -n {netns} link set lo up; \
             ip -n {netns} link set {link}p name eth0; \
             ip -n {netns} addr add 10.77.{index}.2/24 dev eth0; \
             ip -n {netns} link set eth0 up; \
             ip -n {netns} route add default via 10.77.{index}.1"
        ));
        Host {
            netns,
            address: format!("10.77.{index}.2"),
        }
    }

    fn api(&self) -> String {
        format!("http://{}:8080", self.address)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// The config every node runs, but for its id and address; `peer` is the
/// other node (id, host) for redirects.
fn node_config(id: &str, host: &Host, peer: (&str, &Host)) -> String {
    let a = &host.address;
    format!(
        "[http]\nlisten = \"{a}:8080\"\ntls-listen = \"{a}:8443\"\n\
         [auth]\nallow-anonymous = true\n\
         [admin]\nlisten = \"{a}:9090\"\ndrain-timeout-s = 60\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n\
         [sip]\nserver = \"{FRONT}:{PROXY_PORT}\"\nlisten = \"{a}:5060\"\nkeepalive-interval-s = 5\n\
         [cluster]\nnode-id = \"{id}\"\nnode-url = \"{}\"\n\
         [cluster.nodes]\n{} = \"{}\"\n",
        host.api(),
        peer.0,
        peer.1.api()
    )
}

/// The switch: SIPp's own UAS answering the agents' calls and echoing
/// their media.
fn switch() -> Killed {
    let child = Command::new("sipp")
        .args(["-sn", "uas", "-i", FRONT, "-p", &SWITCH_PORT.to_string()])
        .args(["-mi", FRONT, "-mp", &common::free_udp_port().to_string()])
        .args(["-rtp_echo", "-nostdin", "-timeout", "170", "-trace_err"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs (the test command installs sip-tester)");
    common::wait_until_bound(SWITCH_PORT, false);
    Killed(child)
}

/// The switch calls `user` through the proxy and gives up once it rings.
fn switch_calls(user: &str) -> Output {
    switch_plays("uac-cancel.xml", user)
}

/// The switch calls `user` through the proxy, playing `scenario`.
fn switch_plays(scenario: &str, user: &str) -> Output {
    Command::new("sipp")
        .arg("-sf")
        .arg(format!(
            "{}/tests/sipp/{scenario}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(["-i", FRONT, "-p", &common::free_udp_port().to_string()])
        .args(["-mi", FRONT, "-mp", &common::free_udp_port().to_string()])
        .args(["-s", user, "-m", "1", "-nostdin", "-timeout", "20"])
        .arg("-timeout_error")
        .arg(format!("{FRONT}:{PROXY_PORT}"))
        .output()
        .expect("sipp runs")
}

/// Calls from the switch a node has taken.
async fn incoming(gw: &Gateway) -> f64 {
    gw.metric("gateway_calls_started_total").await
}

/// Whether `session`'s events, after the last seen, hold a `call.incoming`.
async fn rang(session: &mut ApiSession) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for e in session.events(1).await {
            session.after = e["seq"].as_u64().unwrap();
            if e["type"] == "call.incoming" {
                return true;
            }
        }
    }
    false
}

/// Waits until `gw`'s `/readyz` says `ready` (true or false), then gives
/// the balancer's and the dispatcher's probes (each second at most) time
/// to see it.
async fn wait_ready(gw: &Gateway, ready: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.readyz().await.1["ready"] != ready {
        assert!(
            Instant::now() < deadline,
            "readyz never {ready}: {}",
            gw.readyz().await.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_routes_each_call_to_its_node_and_drains_one_node_for_a_restart() {
    if !common::inside_network(
        "a_fleet_routes_each_call_to_its_node_and_drains_one_node_for_a_restart",
        Network::Lan,
    ) {
        return;
    }
    sh(&format!("ip addr add {FRONT}/32 dev lo"));
    let (h1, h2) = (Host::new(1), Host::new(2));
    let dir = tempfile::tempdir().unwrap();
    let list = common::write(
        dir.path(),
        "dispatcher.list",
        &format!("1 sip:{}:5060\n1 sip:{}:5060\n", h1.address, h2.address),
    );
    let switch_address = format!("{FRONT}:{SWITCH_PORT}");
    let _proxy = Kamailio::start_on_address(
        FRONT,
        PROXY_PORT,
        "fleet.cfg",
        &[
            ("LIST_FILE", list.to_str().unwrap()),
            ("SWITCH", &switch_address),
        ],
    );
    let _switch = switch();
    let config1 = node_config("gw1", &h1, ("gw2", &h2));
    let mut n1 = Gateway::start_in_netns(&h1.netns, &config1);
    let n2 = Gateway::start_in_netns(&h2.netns, &node_config("gw2", &h2, ("gw1", &h1)));
    let _balancer = HaProxy::start(BALANCER_PORT, &[("gw1", &n1), ("gw2", &n2)]);
    let balancer = format!("http://127.0.0.1:{BALANCER_PORT}");
    wait_ready(&n1, true).await;
    wait_ready(&n2, true).await;

    // Two agents signed in through the balancer: round robin puts them on
    // different nodes, each registered with the proxy from its node.
    let (on1, on2) = (h1.api(), h2.api());
    let mut agents = Vec::new();
    for user in ["1001", "1002"] {
        let session = ApiSession::create_through(&balancer, user).await.unwrap();
        // The session id names the node the session lives on.
        let node = session.created["session"]
            .as_str()
            .unwrap()
            .split('.')
            .next();
        let expected = if session.node_url() == on1 {
            "gw1"
        } else {
            "gw2"
        };
        assert_eq!(node, Some(expected), "{}", session.created);
        agents.push((user, session));
    }
    agents.sort_by(|a, b| a.1.node_url().cmp(b.1.node_url()));
    let [(user_1, mut agent_1), (user_2, mut agent_2)]: [(&str, ApiSession); 2] =
        agents.try_into().ok().unwrap();
    assert_eq!(
        [agent_1.node_url(), agent_2.node_url()],
        [on1.as_str(), on2.as_str()],
        "one agent per node"
    );

    // Calls from the switch land on each agent's own node.
    for _ in 0..2 {
        common::assert_sipp_passed(&switch_calls(user_1));
        assert!(rang(&mut agent_1).await, "{user_1} rang on gw1");
        common::assert_sipp_passed(&switch_calls(user_2));
        assert!(rang(&mut agent_2).await, "{user_2} rang on gw2");
    }
    assert_eq!(incoming(&n1).await, 2.0);
    assert_eq!(incoming(&n2).await, 2.0);

    // The agent on gw1 calls out: from gw1, through the proxy, to the
    // switch, which answers.
    let call = agent_1.call("5000", OFFER).await;
    agent_1.wait_for("call.answered").await;

    // gw1 drains for a restart, its call up meanwhile.
    n1.terminate();
    wait_ready(&n1, false).await;
    assert_eq!(n1.readyz().await.1["checks"]["admission"], "draining");
    // Everything new goes to gw2: sessions through the balancer...
    for user in ["1003", "1004", "1005"] {
        let s = ApiSession::create_through(&balancer, user).await.unwrap();
        assert_eq!(s.node_url(), on2, "a new session while gw1 drains");
    }
    // ...and the switch's calls for anyone not signed in anywhere, which
    // the dispatcher spreads over the nodes that answer its probes (gw2
    // refuses them: nobody is signed in as 1009 there).
    let before = (incoming(&n1).await, incoming(&n2).await);
    for _ in 0..2 {
        let out = switch_calls("1009");
        assert!(!out.status.success(), "nobody answers 1009");
    }
    assert_eq!(incoming(&n1).await, before.0, "none reached gw1");
    assert_eq!(
        n1.metric("gateway_calls_refused_total{reason=\"draining\"}")
            .await,
        0.0,
        "the dispatcher sent gw1 nothing to refuse"
    );
    // The agent on gw2 still takes calls.
    common::assert_sipp_passed(&switch_calls(user_2));
    assert!(
        rang(&mut agent_2).await,
        "{user_2} rang on gw2 while gw1 drains"
    );
    // gw1's call is still up, and gw1 with it.
    let (status, view) = agent_1.get(&format!("/calls/{call}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "answered", "{view}");
    assert!(n1.wait_exit(Duration::from_millis(100)).is_none());

    // The call ends: gw1 unregisters its agent and exits 0.
    agent_1.hang_up(&call).await;
    let status = n1.wait_exit(Duration::from_secs(20)).expect("gw1 exits");
    assert!(status.success(), "{status}");
    drop(n1);
    // Its agent is no longer registered: the proxy no longer sends their
    // calls to the stopped gw1 (no answer) but to gw2, where nobody is
    // signed in as that user (480).
    common::assert_sipp_passed(&switch_plays("uac-480.xml", user_1));

    // Restarted with the same config, gw1 takes sessions again (round
    // robin: one of two new ones) and the switch's calls for them.
    let n1 = Gateway::start_in_netns(&h1.netns, &config1);
    wait_ready(&n1, true).await;
    let mut back = None;
    for user in ["1006", "1007", "1008"] {
        let s = ApiSession::create_through(&balancer, user).await.unwrap();
        if s.node_url() == on1 {
            back = Some((user, s));
            break;
        }
    }
    let (user, mut agent) = back.expect("the restarted gw1 takes a new session");
    common::assert_sipp_passed(&switch_calls(user));
    assert!(rang(&mut agent).await, "{user} rang on the restarted gw1");
    assert_eq!(incoming(&n1).await, 1.0);
}
