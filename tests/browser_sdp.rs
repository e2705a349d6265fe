//! Real headless Chromium accepts the gateway's SDP: our answers to its
//! offers (audio, and audio+video with video refused), and our offer for an
//! incoming call, which it answers with a codec we then negotiate.
//! Needs Debian's chromium and tests/e2e's npm packages (the test command
//! installs both); runs Chromium in its own network namespace.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};
use webrtc_sip_gateway::media::srtp::SrtpProfile;
use webrtc_sip_gateway::sdp::build::{self, AnswerKeying, Local, WebAnswer, WebOffer};
use webrtc_sip_gateway::sdp::codecs::{answer_codecs, usable};
use webrtc_sip_gateway::sdp::{
    web_offer_keying, CryptoAttribute, Description, Direction, Fingerprint, IceCredentials,
    WebKeying,
};

struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn start(args: &[&str]) -> Browser {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
        let script = format!(
            "{} exec node sdp-exchange.mjs {}",
            common::network_setup(common::Network::Lan),
            args.join(" ")
        );
        // A stuck browser must not hang the suite: the whole exchange gets 60 s.
        let mut child = Command::new("timeout")
            .args(["60", "unshare", "-n", "sh", "-c", &script])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare and node run (the test command installs node packages and chromium)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Browser {
            child,
            stdin,
            stdout,
        }
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad line from the browser script {line:?}: {e}"))
    }

    fn send(&mut self, v: Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn finish(mut self) -> Value {
        let result = self.read();
        let _ = self.child.wait();
        result
    }
}

fn local() -> Local {
    Local {
        address: "127.0.0.1".parse().unwrap(),
        port: 20000,
        session_id: 7,
        session_version: 1,
    }
}

fn ice() -> IceCredentials {
    IceCredentials {
        ufrag: "gw7f".into(),
        pwd: "0123456789abcdefghijklmn".into(),
    }
}

fn answer_for(offer_text: &str) -> String {
    let offer = Description::parse(offer_text).unwrap();
    let WebKeying::Dtls { setup, .. } = web_offer_keying(&offer, true).unwrap() else {
        panic!("Chromium offers DTLS");
    };
    // The SIP side chose PCMU: the answer carries it and 8 kHz telephone-event.
    let pcmu = offer
        .audio
        .codecs
        .iter()
        .find(|c| c.pt == 0)
        .unwrap()
        .clone();
    let codecs = answer_codecs(&offer.audio.codecs, &pcmu).unwrap();
    build::web_answer(&WebAnswer {
        candidates: &[],
        tcp_port: 0,
        offer: &offer,
        local: local(),
        ice: &ice(),
        keying: AnswerKeying::Dtls {
            fingerprint: Fingerprint { sha256: [0x3c; 32] },
            setup: build::answer_setup(setup),
        },
        codecs: &codecs,
        direction: Direction::SendRecv,
        ssrc: 4242,
        cname: "gateway",
    })
}

#[test]
fn chromium_accepts_our_answers() {
    for args in [&[][..], &["--video"][..]] {
        let mut browser = Browser::start(args);
        let offer = browser.read();
        let offer = offer["offer"].as_str().expect("an offer");
        browser.send(json!({ "answer": answer_for(offer) }));
        let result = browser.finish();
        assert_eq!(
            result,
            json!({"ok": true}),
            "Chromium refused our answer ({args:?})"
        );
    }
}

#[test]
fn chromium_answers_our_offer() {
    let pbx = Description::parse(include_str!("fixtures/sdp/sip-pbx-offer.sdp")).unwrap();
    let codecs = usable(&pbx.audio.codecs).unwrap();
    let crypto = vec![CryptoAttribute::generate(
        1,
        SrtpProfile::AesCm128HmacSha1_80,
        &mut webrtc_sip_gateway::random::Random::seeded(1),
    )
    .unwrap()];
    let fingerprint = Fingerprint { sha256: [0x5a; 32] };
    let offer = build::web_offer(&WebOffer {
        candidates: &[],
        tcp_port: 0,
        local: local(),
        ice: &ice(),
        fingerprint: Some(&fingerprint),
        crypto: &crypto,
        codecs: &codecs,
        direction: Direction::SendRecv,
        ssrc: 99,
        cname: "gateway",
    });
    let mut browser = Browser::start(&["--offer-from-gateway"]);
    browser.send(json!({ "offer": offer }));
    let reply = browser.read();
    let answer_text = reply["answer"]
        .as_str()
        .unwrap_or_else(|| panic!("Chromium refused our offer: {reply}"));
    assert_eq!(browser.finish(), json!({"ok": true}));
    let answer = Description::parse(answer_text).unwrap();
    // Chromium picks from what we offered, keeps rtcp-mux and takes the DTLS role.
    assert!(answer
        .audio
        .codecs
        .iter()
        .all(|c| codecs.iter().any(|o| o.same_as(c))));
    assert!(answer.audio.codecs[0].is_carried_audio());
    assert!(answer.audio.rtcp_mux);
    assert!(answer.audio.fingerprint.is_some());
    assert!(matches!(
        answer.audio.setup,
        Some(webrtc_sip_gateway::sdp::Setup::Active)
    ));
}
