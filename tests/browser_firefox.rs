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
    let e2e = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let out = Command::new("timeout")
        .args(["150", "node", "firefox-calls.mjs", mode])
        .current_dir(e2e)
        .env("GW_URL", gw_url)
        .env("DIAL", dial)
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
