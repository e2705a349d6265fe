//! The relay's per-packet rewrite path (payload-type map, our SSRC and
//! sequence numbers, DTMF receiver and duration rescale, RTCP report
//! parsing and sender rewrite) on packets the fuzzer makes, protected as a
//! far end would. Never panics; what we send on always opens again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    webrtc_sip_gateway::media::relay::fuzzing::rewrite_path(data);
});
