//! Real Chromium ↔ the gateway's web leg over UDP on loopback: ICE-lite
//! answers its checks, DTLS completes with its certificate checked against
//! the fingerprint in its offer, and the relay carries its SRTP to a SIP-side
//! socket (plain RTP) that echoes it back; Chromium then receives audio.
//! Runs in its own network namespace (Chromium and this test both inside).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use webrtc_sip_gateway::media::batch::send_from;
use webrtc_sip_gateway::media::relay::{CallMediaSetup, PayloadMap, Relay, RelayEvent};
use webrtc_sip_gateway::media::srtp::SrtpContext;
use webrtc_sip_gateway::sdp::build::{self, AnswerKeying, Local, WebAnswer};
use webrtc_sip_gateway::sdp::codecs::answer_codecs;
use webrtc_sip_gateway::sdp::{
    web_offer_keying, Description, Direction, IceCredentials, WebKeying,
};
use webrtc_sip_gateway::webrtc::dtls::{DtlsError, DtlsIdentity};
use webrtc_sip_gateway::webrtc::leg::{WebLeg, WebLegEvent, WebLegInput};

const WEB_SSRC: u32 = 0x1234_5678;

#[test]
fn chromium_media_through_the_web_leg() {
    if common::inside_namespace("chromium_media_through_the_web_leg") {
        run_call(false);
    }
}

/// The fingerprint we expect is not the one Chromium's certificate has:
/// the leg fails with fingerprint_mismatch and no key reaches the relay.
#[test]
fn wrong_fingerprint_fails_the_leg() {
    if common::inside_namespace("wrong_fingerprint_fails_the_leg") {
        run_call(true);
    }
}

fn run_call(wrong_fingerprint: bool) {
    let relay = Relay::start(1).unwrap();
    let identity = DtlsIdentity::generate().unwrap();
    // On every address, as the gateway binds it; the answer offers the LAN one.
    let web_socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    let web_port = web_socket.local_addr().unwrap().port();
    let control_socket = web_socket.try_clone().unwrap();
    let sip_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sip_addr = sip_socket.local_addr().unwrap();
    let sip_peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip_peer
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let mut node = Command::new("node")
        .arg("media-call.mjs")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut to_node = node.stdin.take().unwrap();
    let mut from_node = BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    from_node.read_line(&mut line).unwrap();
    let offer_text = serde_json::from_str::<Value>(&line).unwrap()["offer"]
        .as_str()
        .unwrap()
        .to_string();

    // Our answer: ICE-lite on the relay's web port, DTLS passive, Opus.
    let offer = Description::parse(&offer_text).unwrap();
    let WebKeying::Dtls {
        mut fingerprint,
        setup,
    } = web_offer_keying(&offer, true).unwrap()
    else {
        panic!("Chromium offers DTLS");
    };
    if wrong_fingerprint {
        fingerprint.sha256[0] ^= 0xff;
    }
    let opus = offer.audio.codecs[0].clone();
    let codecs = answer_codecs(&offer.audio.codecs, &opus).unwrap();
    let ours = IceCredentials {
        ufrag: "gwt1".into(),
        pwd: "gateway-test-password-01".into(),
    };
    let answer = build::web_answer(&WebAnswer {
        candidates: &[],
        tcp_port: 0,
        offer: &offer,
        local: Local {
            address: common::LAN_ADDRESS.parse().unwrap(),
            port: web_port,
            session_id: 1,
            session_version: 1,
        },
        ice: &ours,
        keying: AnswerKeying::Dtls {
            fingerprint: identity.fingerprint.clone(),
            setup: build::answer_setup(setup),
        },
        codecs: &codecs,
        direction: Direction::SendRecv,
        ssrc: WEB_SSRC,
        cname: "gateway",
    });

    let (events_tx, events) = sync_channel(256);
    let pt_pairs: Vec<(u8, u8, u32)> = codecs.iter().map(|c| (c.pt, c.pt, c.clock_rate)).collect();
    let media = relay
        .add_call(CallMediaSetup {
            web_socket: Some(web_socket),
            web_ufrag: None,
            web_remote: None,
            web_local: None,
            web_srtp: None,
            web_ssrc: Some(WEB_SSRC),
            web_check_verifier: Some({
                let key = ours.pwd.clone().into_bytes();
                Box::new(move |packet: &[u8]| {
                    webrtc_sip_gateway::webrtc::stun::is_authenticated_binding_request(packet, &key)
                })
            }),
            sip_rtp_socket: sip_socket,
            sip_rtcp_socket: None,
            sip_remote: sip_peer.local_addr().unwrap(),
            sip_remote_rtcp: None,
            sip_strict_source: false,
            sip_srtp: None,
            payload_map: PayloadMap::new(&pt_pairs),
            events: Some(events_tx),
            leases: Vec::new(),
        })
        .unwrap();

    // The SIP side: echo every RTP packet back (like SIPp's -rtp_echo).
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (echoed, stop) = (echoed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = sip_peer.recv_from(&mut buf) {
                    let _ = sip_peer.send_to(&buf[..n], sip_addr);
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    writeln!(to_node, "{}", json!({ "answer": answer })).unwrap();
    to_node.flush().unwrap();

    // The call's control side: ICE and DTLS from the relay's hand-offs.
    let mut leg = WebLeg::with_dtls(
        ours,
        offer.audio.ice.clone().unwrap(),
        Duration::from_secs(30),
        &identity,
        fingerprint,
        build::answer_setup(setup) == webrtc_sip_gateway::sdp::Setup::Active,
        Instant::now(),
    )
    .unwrap();
    let (report_tx, report_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = from_node.read_line(&mut line);
        let _ = report_tx.send(line);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut selected, mut keyed) = (false, false);
    let mut failure = None;
    let mut wake = None;
    let report = loop {
        assert!(Instant::now() < deadline, "no report from the browser");
        if let Ok(line) = report_rx.try_recv() {
            break serde_json::from_str::<Value>(&line).unwrap_or(Value::Null);
        }
        let now = Instant::now();
        let wait = wake.map_or(Duration::from_millis(20), |t: Instant| {
            t.saturating_duration_since(now)
        });
        match events.recv_timeout(wait.min(Duration::from_millis(20))) {
            Ok(RelayEvent::Packet(p)) => {
                let packet = WebLegInput::Packet {
                    from: p.from,
                    to: p.to,
                    data: &p.data,
                    bridged_from: None,
                };
                leg.handle_input(Instant::now(), packet);
            }
            Ok(RelayEvent::Dtmf { .. }) => {}
            Err(_) => leg.handle_input(Instant::now(), WebLegInput::Timeout),
        }
        loop {
            match leg.poll_output() {
                WebLegEvent::Timeout(at) => {
                    wake = at;
                    break;
                }
                WebLegEvent::Transmit { to, from, data } => {
                    send_from(control_socket.as_raw_fd(), &data, to, from).unwrap();
                }
                WebLegEvent::Selected(pair) => {
                    selected = true;
                    media.set_web_remote(pair.remote, pair.local).unwrap();
                }
                WebLegEvent::Keys(keys) => {
                    keyed = true;
                    media
                        .set_web_srtp(
                            SrtpContext::new(&keys.inbound).unwrap(),
                            SrtpContext::new(&keys.outbound).unwrap(),
                        )
                        .unwrap();
                }
                WebLegEvent::Failed(e) => failure = Some(e),
                WebLegEvent::MediaTimeout => panic!("consent lost"),
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    let _ = node.wait();
    eprintln!(
        "browser report: {report}; relay web leg: {:?}",
        media.stats.web.snapshot()
    );
    if wrong_fingerprint {
        assert_eq!(failure, Some(DtlsError::FingerprintMismatch));
        assert!(!keyed, "no keys from an unverified peer");
        assert_eq!(
            echoed.load(Ordering::Relaxed),
            0,
            "no media reached the SIP side"
        );
        assert_eq!(report["packetsReceived"].as_u64().unwrap_or(0), 0);
        assert_ne!(report["connected"], "connected");
        return;
    }
    assert_eq!(failure, None);
    assert!(selected, "ICE never selected the browser's address");
    assert!(keyed, "DTLS never produced SRTP keys");
    assert_eq!(report["connected"], "connected", "{report}");
    assert!(report["packetsSent"].as_u64().unwrap_or(0) > 50, "{report}");
    assert!(
        report["packetsReceived"].as_u64().unwrap_or(0) > 50,
        "audio came back: {report}"
    );
    assert!(
        echoed.load(Ordering::Relaxed) > 50,
        "the SIP side got the browser's audio as plain RTP"
    );
    let web = media.stats.web.snapshot();
    assert_eq!(
        web.dropped_auth_failed, 0,
        "every SRTP packet from Chromium authenticated"
    );
}
