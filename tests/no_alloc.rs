//! The media hot path allocates nothing per packet: counted with a global
//! allocator that records allocations made on the measuring thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use webrtc_sip_gateway::media::rtp;
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn srtp_transforms_do_not_allocate() {
    for profile in SrtpProfile::ALL {
        let keys =
            SrtpKeyMaterial::new(profile, &[7; 16], &vec![9; profile.master_salt_len()]).unwrap();
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
