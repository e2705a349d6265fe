//! The shared web port's routing of datagrams to calls (by address, by the
//! ufrag of a first check, or nowhere) on datagrams the fuzzer makes from a
//! few browser addresses. Never panics; every datagram is counted once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    webrtc_sip_gateway::media::relay::fuzzing::web_port_routing(data);
});
