//! A transcoded call's per-packet path (Opus <-> G.711 through libopus and
//! our G.711, loss made up, long packets cut, telephone-event renumbered)
//! on packets the fuzzer makes, protected as a far end would. Never
//! panics; what we send on always opens again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    webrtc_sip_gateway::media::relay::fuzzing::transcode_path(data);
});
