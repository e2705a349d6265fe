//! SIP from the network: datagram parsing (with compact forms and limits),
//! stream framing, digest challenges, and the transaction layer's input
//! path. Never panics.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sip::digest::Challenge;
use webrtc_sip_gateway::sip::message::{parse_datagram, StreamFramer};
use webrtc_sip_gateway::sip::transaction::{
    ClientInput, ClientTransaction, Output, ServerInput, ServerTransaction, TimerConfig,
};

fuzz_target!(|data: &[u8]| {
    // The stream framer, fed in pieces whose size the first byte picks.
    if let Some((&piece, rest)) = data.split_first() {
        let mut framer = StreamFramer::default();
        for chunk in rest.chunks(usize::from(piece).max(1)) {
            framer.push(chunk);
            while let Ok(Some(message)) = framer.next_message() {
                let _ = parse_datagram(&message);
            }
        }
    }
    // A digest challenge as a WWW-Authenticate value.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(challenge) = Challenge::parse(text) {
            let _ = challenge.respond("REGISTER", "sip:pbx", "u", "p", "c", 1);
        }
    }
    let Ok(message) = parse_datagram(data) else { return };
    let now = Instant::now();
    match message {
        rsip::SipMessage::Request(request) => {
            let mut server = ServerTransaction::new(request.clone(), false, TimerConfig::default());
            server.handle_input(now, ServerInput::Request(&request));
            while !matches!(server.poll_output(), Output::Timeout(_)) {}
            let mut client = ClientTransaction::new(request, false, TimerConfig::default(), now);
            // Every timer until the transaction waits for nothing.
            loop {
                match client.poll_output() {
                    Output::Timeout(Some(at)) => client.handle_input(at, ClientInput::Timeout),
                    Output::Timeout(None) => break,
                    _ => {}
                }
            }
        }
        rsip::SipMessage::Response(_) => {}
    }
});
