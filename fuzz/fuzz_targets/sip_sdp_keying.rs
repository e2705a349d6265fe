//! The SIP leg's SDP keying: a far end's offer checked as it arrives, its
//! SDES keys weighed under each policy, and an answer to an offer of ours.
//! Never panics; a key it takes is one it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::call::negotiate::{sip_answer_keying, sip_answer_keys, sip_offer_crypto, FarOffer};
use webrtc_sip_gateway::config::SrtpPolicy;
use webrtc_sip_gateway::random::Random;
use webrtc_sip_gateway::sdp::crypto::CryptoAttribute;
use webrtc_sip_gateway::sdp::Description;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for policy in [SrtpPolicy::Off, SrtpPolicy::Optional, SrtpPolicy::Required] {
        let _ = FarOffer::check(text, policy);
        let mut random = Random::seeded(1);
        // Each line as an a=crypto value, and the whole as an answer's SDP.
        let offered: Vec<CryptoAttribute> = text
            .lines()
            .filter_map(|l| CryptoAttribute::parse(l.trim_start_matches("a=crypto:")).ok())
            .collect();
        for secure in [false, true] {
            let _ = sip_answer_keying(policy, &offered, secure, &mut random);
        }
        let ours = sip_offer_crypto(policy, &mut random).unwrap_or_default();
        if let Ok(answer) = Description::parse(text) {
            let answered = &answer.audio.crypto;
            let secure = answer.audio.proto.contains("SAVP");
            if let Ok(Some((theirs, mine))) = sip_answer_keys(policy, &ours, answered, secure) {
                assert!(answered.iter().any(|a| a.keys == theirs));
                assert!(ours.iter().any(|o| o.keys == mine));
                assert!(theirs != mine);
            }
        }
    }
});
