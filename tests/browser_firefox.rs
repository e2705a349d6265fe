//! Calls from a real headless Firefox ESR (Debian's `firefox-esr`, driven
//! by puppeteer-core over WebDriver BiDi: tests/e2e/firefox-calls.mjs), end
//! to end with the audio heard: the shipped config's echo, and a SIPp UAS
//! returning our RTP. Firefox's fake microphone sends a steady 1 kHz tone;
//! the page records what comes back and finds its dominant frequency. Each
//! test re-runs itself in its own network namespace with a LAN-like
//! interface, as the Chromium tests do: Firefox, like a user's, offers mDNS
//! host candidates and never pairs loopback.

mod common;

use std::process::Command;

use serde_json::Value;

/// Runs tests/e2e/firefox-calls.mjs in `mode` against `gw_url`, dialing
/// `dial` (the demo's default, echo, when empty); returns its report.
fn firefox(mode: &str, gw_url: &str, dial: &str) -> Value {
    firefox_with(mode, gw_url, dial, &[])
}

/// [`firefox`] with more of the script's environment (`env`).
fn firefox_with(mode: &str, gw_url: &str, dial: &str, env: &[(&str, &str)]) -> Value {
    let e2e = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let out = Command::new("timeout")
        .args(["150", "node", "firefox-calls.mjs", mode])
        .current_dir(e2e)
        .env("GW_URL", gw_url)
        .env("DIAL", dial)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or(Value::Null);
    eprintln!("firefox report ({mode}): {report}");
    assert!(
        report.get("error").is_none() && !report.is_null(),
        "firefox script failed: {report}"
    );
    report
}

/// What every Firefox call must show: Firefox itself, answered, its own
/// 1 kHz tone heard back through the gateway, counters past 100 each way,
/// and a clean hangup.
fn assert_heard_itself(r: &Value) {
    assert!(
        r["userAgent"].as_str().unwrap_or("").contains("Firefox/"),
        "{r}"
    );
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["answered"], true, "{r}");
    assert_eq!(r["counted"], true, "{r}");
    let mic = r["mic"]["hz"].as_f64().unwrap_or(0.0);
    let heard = r["remote"]["hz"].as_f64().unwrap_or(0.0);
    assert!(
        (mic - 1000.0).abs() <= 20.0,
        "the fake microphone's tone: {r}"
    );
    assert!(
        (heard - 1000.0).abs() <= 20.0,
        "the tone came back: {heard} Hz ({r})"
    );
    assert!(r["remote"]["peak"].as_f64().unwrap_or(0.0) > 0.01, "{r}");
    let stats = &r["stats"];
    assert!(stats["browser"]["packetsReceived"].as_u64().unwrap_or(0) > 100);
    let web = &stats["gateway"]["stats"]["web"];
    let sip = &stats["gateway"]["stats"]["sip"];
    assert!(web["packets_in"].as_u64().unwrap_or(0) > 100, "{web}");
    assert!(web["packets_out"].as_u64().unwrap_or(0) > 100, "{web}");
    assert!(sip["packets_in"].as_u64().unwrap_or(0) > 100, "{sip}");
    assert_eq!(web["dropped_auth_failed"], 0, "{web}");
    assert_eq!(stats["gateway"]["keying"]["web"], "dtls", "{r}");
    assert_eq!(r["ended"], true, "{r}");
    assert!(r.get("pageErrors").is_none(), "{r}");
}

/// README's "Try it" with Firefox: the shipped config, the demo page on
/// https://localhost:8443, Call echo — Opus over DTLS-SRTP on the LAN
/// address, and the tone comes back.
#[test]
fn firefox_calls_the_echo_with_the_shipped_config() {
    if !common::inside_namespace("firefox_calls_the_echo_with_the_shipped_config") {
        return;
    }
    let gw = common::Gateway::start_shipped();
    let r = firefox("echo", "https://localhost:8443", "");
    assert_heard_itself(&r);
    assert_eq!(r["stats"]["gateway"]["codec"], "opus/48000", "{r}");
    assert_eq!(
        r["stats"]["gateway"]["web_path"]["gateway"],
        common::LAN_ADDRESS,
        "{r}"
    );
    drop(gw);
}

/// Firefox calls through the SIP side: SIPp's UAS answers with PCMU and
/// returns the RTP it gets (-rtp_echo), so the tone goes both ways through
/// the relay; the page's hangup is SIPp's BYE.
#[test]
fn firefox_calls_a_sip_uas_and_hears_itself() {
    if !common::inside_namespace("firefox_calls_a_sip_uas_and_hears_itself") {
        return;
    }
    let (sipp, _gw, url) = common::sipp::echoing_uas_and_gateway("uas");
    let r = firefox("sip", &url, "5000");
    assert_heard_itself(&r);
    assert_eq!(r["stats"]["gateway"]["codec"], "pcmu/8000", "{r}");
    let sip = &r["stats"]["gateway"]["stats"]["sip"];
    assert!(sip["packets_out"].as_u64().unwrap_or(0) > 100, "{sip}");
    common::assert_sipp_passed(&sipp.wait_with_output().unwrap());
}

/// A SIP caller reaches Firefox: the demo page, connected as 1001, says it
/// is ready, SIPp (`args`: its scenario) calls 1001 and returns the RTP it
/// gets, the page answers and hears its own tone, and the caller's BYE
/// ends the call. Returns the page's report once SIPp has passed.
fn firefox_answers(sip_config: &str, args: &[&str]) -> Value {
    let gw = common::Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:5090\"\nregister = false\nkeepalive-interval-s = 0\n{sip_config}"
        ),
    );
    let e2e = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let mut node = Command::new("timeout")
        .args(["150", "node", "firefox-calls.mjs", "incoming"])
        .current_dir(e2e)
        .env("GW_URL", format!("https://127.0.0.1:{}", gw.https.port()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(node.stdout.take().unwrap()));
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        ready.contains("\"ready\":true"),
        "the page connected: {ready}"
    );
    let sipp = common::sipp::calling_user_1001(args, gw.sip);
    let text = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = node.wait();
    let r: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    eprintln!("firefox report (incoming): {r}");
    common::assert_sipp_passed(&sipp.wait_with_output().unwrap());
    assert!(r.get("error").is_none() && !r.is_null(), "{r}");
    assert_eq!(r["rang"], true, "{r}");
    assert_eq!(r["stats"]["gateway"]["direction"], "inbound", "{r}");
    r
}

/// A SIP caller (SIPp's own UAC, PCMU) reaches the Firefox page, which
/// answers and hears its tone come back; the caller's BYE ends the call.
#[test]
fn a_sip_caller_reaches_firefox() {
    if !common::inside_namespace("a_sip_caller_reaches_firefox") {
        return;
    }
    let r = firefox_answers("", &["-sn", "uac", "-d", "10000"]);
    assert_heard_itself(&r);
    assert_eq!(r["stats"]["gateway"]["codec"], "pcmu/8000", "{r}");
}

/// Transcoding with Firefox (`[media] transcode = "prefer-opus-web"`): a
/// PCMU-only caller reaches the page, which is offered Opus and takes it;
/// its tone goes to the caller as µ-law, comes back, and is heard as
/// Opus.
#[test]
fn a_pcmu_only_caller_reaches_firefox_through_the_transcoder() {
    if !common::inside_namespace("a_pcmu_only_caller_reaches_firefox_through_the_transcoder") {
        return;
    }
    let r = firefox_answers(
        "[media]\ntranscode = \"prefer-opus-web\"\n",
        &["-sn", "uac", "-d", "10000"],
    );
    assert_heard_itself(&r);
    common::assert_transcoded(&r, "pcmu/8000");
}

/// ICE restarts keep a Firefox call: the page restarts ICE itself (new
/// credentials both ways), then the network drops the web leg's UDP both
/// ways until Firefox gives ICE up, and js-api recovers by itself once the
/// path is back. Firefox's DTLS fails with ICE, so js-api gives the call a
/// new peer connection and the gateway a new DTLS association (an ICE
/// restart alone brought ICE back and no audio); the tone is heard again,
/// one call throughout.
#[test]
fn ice_restarts_keep_a_firefox_call() {
    if !common::inside_namespace("ice_restarts_keep_a_firefox_call") {
        return;
    }
    let gw = common::Gateway::start_shipped();
    let r = firefox("restart", "https://localhost:8443", "");
    assert_came_back_after_ice_failed(&r, &gw);
}

/// The same on the one web port (`[media] web-port`): the new peer
/// connection's first check (a new ufrag, a new browser address) finds the
/// call on the shared socket.
#[test]
fn ice_restarts_keep_a_firefox_call_on_the_one_web_port() {
    if !common::inside_namespace("ice_restarts_keep_a_firefox_call_on_the_one_web_port") {
        return;
    }
    let gw = common::Gateway::start("", "[media]\nweb-port = 3478\n");
    let url = format!("https://127.0.0.1:{}", gw.https.port());
    let r = firefox_with("restart", &url, "", &[("BLIP_PORTS", "3478")]);
    assert_came_back_after_ice_failed(&r, &gw);
}

/// A restart-mode report: the call heard itself, kept through the page's
/// restart and an outage that failed Firefox's ICE, and heard its tone
/// again after it through a new DTLS association.
fn assert_came_back_after_ice_failed(r: &Value, gw: &common::Gateway) {
    if r["packetsAfterBlip"].as_i64().unwrap_or(0) < 40 {
        eprintln!("GWLOG {}", gw.log());
    }
    let mut r = r.clone();
    // Firefox says so on the page while the network is down; nothing else.
    if let Some(errors) = r.get_mut("pageErrors").and_then(Value::as_array_mut) {
        errors.retain(|e| !e.as_str().unwrap_or("").contains("ICE failed"));
        if errors.is_empty() {
            r.as_object_mut().map(|o| o.remove("pageErrors"));
        }
    }
    assert_heard_itself(&r);
    common::assert_ice_restarts_kept_the_call(&r);
    assert_eq!(r["iceFailed"], true, "the outage outlasted ICE: {r}");
    let heard = r["remoteAfterBlip"]["hz"].as_f64().unwrap_or(0.0);
    assert!((heard - 1000.0).abs() <= 20.0, "the tone is back: {r}");
    let log = gw.log();
    assert!(log.contains("ICE restart from the browser"), "{log}");
    // Firefox's DTLS failed with its path: js-api renewed the peer
    // connection and the gateway took the new DTLS association.
    assert!(
        log.contains("new DTLS association from the browser"),
        "{log}"
    );
}

/// Firefox's selected path ends at `remote` (the gateway's address and
/// port) over `protocol` ("udp" or "tcp").
fn assert_path(r: &Value, remote: &str, protocol: &str) {
    let selected = &r["selected"];
    assert_eq!(selected["remote"].as_str(), Some(remote), "{r}");
    assert_eq!(selected["protocol"].as_str(), Some(protocol), "{r}");
}

/// Firefox on the one shared web port (`[media] web-port`): its checks,
/// DTLS and media go to that port, and the tone comes back.
#[test]
fn firefox_calls_through_the_one_web_port() {
    if !common::inside_namespace("firefox_calls_through_the_one_web_port") {
        return;
    }
    let gw = common::Gateway::start("", "[media]\nweb-port = 3478\n");
    let url = format!("https://127.0.0.1:{}", gw.https.port());
    let r = firefox("echo", &url, "");
    assert_heard_itself(&r);
    assert_path(&r, &format!("{}:3478", common::LAN_ADDRESS), "udp");
    assert_eq!(r["stats"]["gateway"]["web_path"]["transport"], "udp", "{r}");
}

/// Firefox whose UDP to the gateway is dropped in its network (an nftables
/// rule in the test's namespace) falls back to our passive ICE-TCP
/// candidate (`[media] web-tcp-port`), with a UDP port per call and with
/// the one shared port, and hears its tone back over the connection.
#[test]
fn firefox_without_udp_falls_back_to_ice_tcp() {
    if !common::inside_namespace("firefox_without_udp_falls_back_to_ice_tcp") {
        return;
    }
    let (no_udp, layouts) = common::udp_blocked_to_the_gateway();
    for media in layouts {
        let gw = common::Gateway::start("", media);
        let url = format!("https://127.0.0.1:{}", gw.https.port());
        let r = firefox("echo", &url, "");
        assert_heard_itself(&r);
        assert_path(&r, &format!("{}:8444", common::LAN_ADDRESS), "tcp");
        // The call's view shows the connection's ends, not its bridge.
        let web_path = &r["stats"]["gateway"]["web_path"];
        assert_eq!(web_path["transport"], "tcp", "{r}");
        assert_eq!(web_path["gateway"], common::LAN_ADDRESS, "{r}");
        let browser = web_path["browser"].as_str().unwrap_or("");
        assert!(
            browser.starts_with(&format!("{}:", common::LAN_ADDRESS)),
            "{r}"
        );
    }
    drop(no_udp);
}

/// Firefox on a dual-stack host: the gateway offers its IPv4 and IPv6
/// addresses, Firefox picks the IPv6 path, and the tone comes back over
/// it. (On an IPv6-only network this headless Firefox gathers no candidate
/// at all, so it cannot call there; Chromium's IPv6-only call is in
/// browser_calls.rs.)
#[test]
fn firefox_on_a_dual_stack_host_calls_over_ipv6() {
    if !common::inside_network(
        "firefox_on_a_dual_stack_host_calls_over_ipv6",
        common::Network::DualStack,
    ) {
        return;
    }
    let gw = common::Gateway::start("", "");
    let url = format!("https://127.0.0.1:{}", gw.https.port());
    let r = firefox("echo", &url, "");
    assert_heard_itself(&r);
    let port = r["selected"]["remote"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .unwrap_or("");
    assert_path(&r, &format!("{}:{port}", common::LAN_ADDRESS_V6), "udp");
    let web_path = &r["stats"]["gateway"]["web_path"];
    assert_eq!(web_path["gateway"], common::LAN_ADDRESS_V6, "{r}");
    assert_eq!(web_path["transport"], "udp", "{r}");
}
