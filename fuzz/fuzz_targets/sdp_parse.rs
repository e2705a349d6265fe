//! SDP from browsers and SIP peers: parsing, keying checks and codec
//! negotiation never panic, and an answer built from any offer we accept
//! parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sdp::build::{self, AnswerKeying, Local, WebAnswer};
use webrtc_sip_gateway::sdp::codecs::{answer_codecs, usable};
use webrtc_sip_gateway::sdp::{web_offer_keying, Description, Direction, Fingerprint, IceCredentials, Setup};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(offer) = Description::parse(text) else { return };
    let _ = web_offer_keying(&offer, true);
    let _ = web_offer_keying(&offer, false);
    let Ok(codecs) = usable(&offer.audio.codecs) else { return };
    let Ok(chosen) = answer_codecs(&offer.audio.codecs, &codecs[0]) else { return };
    let answer = build::web_answer(&WebAnswer {
        candidates: &[],
        tcp_port: 9,
        offer: &offer,
        local: Local { address: "192.0.2.1".parse().unwrap(), port: 20000, session_id: 1, session_version: 1 },
        ice: &IceCredentials { ufrag: "abcd".into(), pwd: "0123456789abcdefghijklmn".into() },
        keying: AnswerKeying::Dtls { fingerprint: Fingerprint { sha256: [1; 32] }, setup: Setup::Passive },
        codecs: &chosen,
        direction: Direction::SendRecv,
        ssrc: 1,
        cname: "gw",
    });
    let parsed = Description::parse(&answer).expect("our answer parses");
    assert_eq!(parsed.audio.codecs.len(), chosen.len());
});
