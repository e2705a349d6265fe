//! SIPp (Debian's sip-tester, installed by the test command) against the
//! running gateway's SIP endpoint over UDP: OPTIONS answered 200 with
//! Allow/Accept and rport; a request with a bad Content-Length answered 400
//! naming it, and counted in `gateway_sip_malformed_received_total`.

mod common;

use std::process::Command;

use common::Gateway;

#[test]
fn sipp_options_and_malformed_request() {
    let gw = Gateway::start("", "");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/options.xml");
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let local_port = probe.local_addr().unwrap().port().to_string();
    drop(probe);
    let out = Command::new("sipp")
        .args([
            "-sf",
            scenario,
            "-m",
            "3",
            "-l",
            "1",
            "-i",
            "127.0.0.1",
            "-p",
            &local_port,
            "-nostdin",
            "-timeout",
            "15",
            "-timeout_error",
            "-recv_timeout",
            "5000",
        ])
        .arg(gw.sip.to_string())
        .output()
        .expect("sipp runs (the test command installs sip-tester)");
    common::assert_sipp_passed(&out);
    // Each of the three calls sent one request that does not parse.
    let metrics = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(gw.metrics_text());
    assert!(
        metrics.contains("gateway_sip_malformed_received_total 3\n"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_sip_retransmissions_absorbed_total 0\n"));
}
