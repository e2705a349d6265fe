//! The ICE-TCP deframer (RFC 4571) on bytes the fuzzer makes, read in cuts
//! the first byte chooses: never panics, and the frames it yields, framed
//! again, are exactly the stream's beginning (until a frame too large).
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::media::ice_tcp::Deframer;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(1);
    let mut deframer = Deframer::default();
    let mut again = Vec::new();
    let mut at = 0;
    'read: while at < stream.len() {
        let space = deframer.space();
        let n = cut.min(space.len()).min(stream.len() - at);
        space[..n].copy_from_slice(&stream[at..at + n]);
        deframer.filled(n);
        at += n;
        loop {
            match deframer.frame() {
                Ok(Some(frame)) => {
                    again.extend_from_slice(&(frame.len() as u16).to_be_bytes());
                    again.extend_from_slice(frame);
                    deframer.consume();
                }
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
    }
    assert_eq!(&stream[..again.len()], &again[..]);
});
