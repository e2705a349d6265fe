//! The media hot path allocates nothing per packet (the relay's forwarding
//! path itself is measured by a unit test in `media::relay::forward`): counted on the
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

/// The io_uring path of a relay worker: a datagram received into a provided
/// buffer, copied into the batch, its buffer given back, a send queued and
/// its completion reaped — nothing allocated once the ring is set up.
#[test]
fn ring_receive_and_send_do_not_allocate() {
    use std::os::fd::AsRawFd;
    use webrtc_sip_gateway::media::batch::Batch;
    use webrtc_sip_gateway::media::ring::{Event, RingIo, SendTag};

    let mut ring = RingIo::new().expect("io_uring is available on these machines");
    // Bound everywhere and reporting each datagram's local address, as a
    // web leg's socket: replies name their source (sendmsg with pktinfo).
    let gateway = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    webrtc_sip_gateway::media::batch::enable_local_address(gateway.as_raw_fd(), false).unwrap();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_nonblocking(true).unwrap();
    let to_gateway: std::net::SocketAddr =
        ([127, 0, 0, 1], gateway.local_addr().unwrap().port()).into();
    let to_peer = peer.local_addr().unwrap();
    let mut batch = Batch::new();
    ring.attach(0, gateway.as_raw_fd());
    ring.arm_recv(0).unwrap();
    let mut bounce = |n: u8, batch: &mut Batch| {
        peer.send_to(&[n; 172], to_gateway).unwrap();
        let (mut got, mut sent) = (false, false);
        let mut back = [0u8; 256];
        while !(got && sent) {
            ring.wait(Some(std::time::Duration::from_millis(100)))
                .unwrap();
            while let Some(event) = ring.next_event() {
                match event {
                    Event::Datagram { .. } => {
                        assert!(ring.take_datagram(batch, 0));
                        let tag = SendTag {
                            slot: 0,
                            call: 1,
                            web: false,
                            len: 172,
                        };
                        assert_eq!(batch.locals[0], Some(to_gateway.ip()));
                        assert!(ring.queue_send(
                            0,
                            &batch.bufs[0][..batch.lens[0]],
                            to_peer,
                            batch.locals[0],
                            tag
                        ));
                        got = true;
                    }
                    Event::Sent { ok, .. } => {
                        assert!(ok);
                        sent = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        while peer.recv(&mut back).is_err() {}
        assert_eq!(back[0], n);
    };
    bounce(0, &mut batch);
    let count = allocations_in(|| {
        for n in 1..200u8 {
            bounce(n, &mut batch);
        }
    });
    assert_eq!(
        count, 0,
        "{count} allocations in 199 datagrams through the ring"
    );
}

/// The epoll workers' path: a `recvmmsg` into the batch (with each
/// datagram's local address) and a `sendmmsg` naming the source, over and
/// over, allocates nothing.
#[test]
fn batch_receive_and_send_from_a_source_do_not_allocate() {
    use std::os::fd::AsRawFd;
    use webrtc_sip_gateway::media::batch::{enable_local_address, Batch};

    let gateway = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    enable_local_address(gateway.as_raw_fd(), false).unwrap();
    let port = gateway.local_addr().unwrap().port();
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_nonblocking(true).unwrap();
    let to_peer = peer.local_addr().unwrap();
    let to_gateway: std::net::SocketAddr = ([127, 0, 0, 6], port).into();
    let mut batch = Batch::new();
    let mut back = [0u8; 256];
    let mut bounce = |n: u8, batch: &mut Batch| {
        peer.send_to(&[n; 172], to_gateway).unwrap();
        while batch.recv(gateway.as_raw_fd()).unwrap() == 0 {}
        assert_eq!(batch.locals[0], Some([127, 0, 0, 6].into()));
        batch.addrs[0] = Some(to_peer);
        assert_eq!(batch.send(gateway.as_raw_fd(), &[0]).unwrap(), 1);
        let from = loop {
            if let Ok((_, from)) = peer.recv_from(&mut back) {
                break from;
            }
        };
        assert_eq!(from.ip(), std::net::IpAddr::from([127, 0, 0, 6]));
    };
    bounce(0, &mut batch);
    let count = allocations_in(|| {
        for n in 1..200u8 {
            bounce(n, &mut batch);
        }
    });
    assert_eq!(count, 0, "{count} allocations");
}
