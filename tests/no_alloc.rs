//! The media hot path allocates nothing per packet: counted on the
//! measuring thread by the `allocation-counter` crate's global allocator.

use webrtc_sip_gateway::media::rtp;
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};

fn allocations_in(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[test]
fn srtp_transforms_do_not_allocate() {
    for profile in SrtpProfile::ALL {
        let keys = SrtpKeyMaterial::new(
            profile,
            &vec![7; profile.master_key_len()],
            &vec![9; profile.master_salt_len()],
        )
        .unwrap();
        let mut tx = SrtpContext::new(&keys).unwrap();
        let mut rx = SrtpContext::new(&keys).unwrap();
        let mut buf = [0u8; 1500];
        let mut rtcp = [0u8; 1500];
        // Warm up: the first packet of a stream takes a state slot.
        let mut run = |seq: u16| {
            buf[..12].copy_from_slice(&[
                0x80,
                111,
                (seq >> 8) as u8,
                seq as u8,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                42,
            ]);
            let n = tx.protect_rtp(&mut buf, 172).unwrap();
            let n = rx.unprotect_rtp(&mut buf[..n]).unwrap();
            rtp::set_rtp_payload_type(&mut buf[..n], 0);
            rtcp[..8].copy_from_slice(&[0x80, 201, 0, 1, 0, 0, 0, 42]);
            let m = tx.protect_rtcp(&mut rtcp, 8).unwrap();
            rx.unprotect_rtcp(&mut rtcp[..m]).unwrap();
        };
        run(0);
        let count = allocations_in(|| {
            for seq in 1..2000u16 {
                run(seq);
            }
        });
        assert_eq!(count, 0, "{profile:?}: {count} allocations in 1999 packets");
    }
}
