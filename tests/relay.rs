//! The relay over real UDP sockets on loopback: SRTP (browser side) ↔ plain
//! RTP (SIP side) for 100 concurrent calls with zero loss, payload-type
//! mapping, SSRC rewriting, source checks, drops by cause, STUN hand-off, and
//! ports returned when calls end.

mod interop;

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use webrtc_sip_gateway::media::ports::{BoundPorts, PortAllocator};
use webrtc_sip_gateway::media::relay::{
    CallMedia, CallMediaSetup, PayloadMap, Relay, RelayError, RelayEvent, RelayIo, RelayOptions,
};
use webrtc_sip_gateway::media::rtp;
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};
use webrtc_sip_gateway::media::stats::LegSnapshot;

const WEB_SSRC: u32 = 0x5eb5_5eb5;

fn keys(seed: u8) -> SrtpKeyMaterial {
    SrtpKeyMaterial::new(
        SrtpProfile::AesCm128HmacSha1_80,
        &[seed; 16],
        &[seed ^ 0x55; 14],
    )
    .unwrap()
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// One call: the test plays the browser and the SIP peer.
struct TestCall {
    media: CallMedia,
    browser: UdpSocket,
    gateway_web: SocketAddr,
    sip_peer: UdpSocket,
    gateway_sip: SocketAddr,
    browser_tx: SrtpContext,
    browser_rx: SrtpContext,
    events: Receiver<RelayEvent>,
}

/// A call with its own web socket, or on the relay's shared web port when
/// it has one (found there by the browser's address, set up front).
fn setup_call(relay: &Arc<Relay>, strict: bool) -> TestCall {
    let (sip_rtp, sip_rtcp) = (udp(), udp());
    let browser = udp();
    let sip_peer = udp();
    let (web_socket, gateway_web) = match relay.web_port() {
        Some(port) => (None, port),
        None => {
            let socket = udp();
            let at = socket.local_addr().unwrap();
            (Some(socket), at)
        }
    };
    let gateway_sip = sip_rtp.local_addr().unwrap();
    let (tx, control) = sync_channel(16);
    let setup = CallMediaSetup {
        web_socket,
        web_ufrag: None,
        web_remote: Some(browser.local_addr().unwrap()),
        web_local: None,
        web_srtp: Some((
            SrtpContext::new(&keys(1)).unwrap(),
            SrtpContext::new(&keys(2)).unwrap(),
        )),
        web_ssrc: Some(WEB_SSRC),
        web_check_verifier: None,
        sip_rtp_socket: sip_rtp,
        sip_rtcp_socket: Some(sip_rtcp),
        sip_remote: sip_peer.local_addr().unwrap(),
        sip_remote_rtcp: None,
        sip_strict_source: strict,
        sip_srtp: None,
        payload_map: PayloadMap::new(&[(111, 96, 48_000), (0, 0, 8_000)])
            .with_telephone_event(110, 48_000, 101, 8_000),
        events: Some(tx),
        leases: Vec::new(),
    };
    TestCall {
        media: relay.add_call(setup).unwrap(),
        browser,
        gateway_web,
        sip_peer,
        gateway_sip,
        browser_tx: SrtpContext::new(&keys(1)).unwrap(),
        browser_rx: SrtpContext::new(&keys(2)).unwrap(),
        events: control,
    }
}

fn rtp_packet(pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn srtp(ctx: &mut SrtpContext, packet: &[u8]) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + 16, 0);
    let n = ctx.protect_rtp(&mut buf, packet.len()).unwrap();
    buf.truncate(n);
    buf
}

fn recv(socket: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// Waits until the relay has applied a call's set-up (control is asynchronous).
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A relay on `workers` threads; with io_uring asked for, every worker must
/// run on it (these machines allow io_uring), so the io_uring variants of
/// the tests cannot pass on epoll by accident.
fn start_relay(workers: usize, options: RelayOptions) -> Arc<Relay> {
    let relay = Relay::start_with_options(workers, options).unwrap();
    if options.io == RelayIo::IoUring {
        until("every worker on io_uring", || {
            relay.io_uring_workers() == workers
        });
    } else {
        assert_eq!(relay.io_uring_workers(), 0);
    }
    relay
}

fn hundred_calls_both_ways_without_loss(options: RelayOptions) {
    let relay = start_relay(2, options);
    let mut calls: Vec<TestCall> = (0..100).map(|_| setup_call(&relay, false)).collect();
    until("calls added", || relay.call_count() == 100);
    let per_call = 50u16; // 50 packets per second for one second
    let started = Instant::now();
    for seq in 0..per_call {
        for (n, c) in calls.iter_mut().enumerate() {
            let payload = [n as u8, seq as u8, 0xaa, 0xbb];
            let wire = srtp(
                &mut c.browser_tx,
                &rtp_packet(111, seq, 1000 + n as u32, &payload),
            );
            c.browser.send_to(&wire, c.gateway_web).unwrap();
            let plain = rtp_packet(96, seq, 7000 + n as u32, &payload);
            c.sip_peer.send_to(&plain, c.gateway_sip).unwrap();
        }
        // Pace at 20 ms per packet of each call.
        let next = started + Duration::from_millis(20 * u64::from(seq + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for (n, c) in calls.iter_mut().enumerate() {
        for seq in 0..per_call {
            let payload = [n as u8, seq as u8, 0xaa, 0xbb];
            let at_sip = recv(&c.sip_peer)
                .unwrap_or_else(|| panic!("call {n} lost packet {seq} toward SIP"));
            assert_eq!(
                at_sip,
                rtp_packet(96, seq, 1000 + n as u32, &payload),
                "PT 111 → 96, plain RTP"
            );
            let mut at_web =
                recv(&c.browser).unwrap_or_else(|| panic!("call {n} lost packet {seq} toward web"));
            let len = c
                .browser_rx
                .unprotect_rtp(&mut at_web)
                .expect("valid SRTP toward the browser");
            assert_eq!(
                &at_web[..len],
                &rtp_packet(111, seq, WEB_SSRC, &payload)[..],
                "PT 96 → 111, SSRC set"
            );
        }
        let web: LegSnapshot = c.media.stats.web.snapshot();
        let sip: LegSnapshot = c.media.stats.sip.snapshot();
        assert_eq!((web.packets_in, web.packets_out), (50, 50));
        assert_eq!((sip.packets_in, sip.packets_out), (50, 50));
        assert_eq!(web.dropped_overload + sip.dropped_overload, 0);
    }
    drop(calls);
    until("calls removed", || relay.call_count() == 0);
}

fn source_checks_and_drops_are_counted(options: RelayOptions) {
    let relay = start_relay(1, options);
    let mut c = setup_call(&relay, false);
    until("call added", || relay.call_count() == 1);

    // Web leg: a stranger's valid-looking SRTP is dropped as foreign.
    let stranger = udp();
    let good = srtp(&mut c.browser_tx, &rtp_packet(111, 1, 5, b"ok"));
    stranger.send_to(&good, c.gateway_web).unwrap();
    // Tampered, then the real one, then its replay, then an unmapped payload type.
    let mut tampered = good.clone();
    tampered[13] ^= 0xff;
    c.browser.send_to(&tampered, c.gateway_web).unwrap();
    c.browser.send_to(&good, c.gateway_web).unwrap();
    c.browser.send_to(&good, c.gateway_web).unwrap();
    let odd_pt = srtp(&mut c.browser_tx, &rtp_packet(63, 2, 5, b"red"));
    c.browser.send_to(&odd_pt, c.gateway_web).unwrap();
    // A STUN binding request goes to the ICE side, not to SIP.
    let stun = [
        0u8, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    c.browser.send_to(&stun, c.gateway_web).unwrap();

    assert_eq!(recv(&c.sip_peer).unwrap(), rtp_packet(96, 1, 5, b"ok"));
    assert!(
        recv(&c.sip_peer).is_none(),
        "only the one good packet passed"
    );
    let Ok(RelayEvent::Packet(handed)) = c.events.recv_timeout(Duration::from_secs(2)) else {
        panic!("the STUN packet was not handed over");
    };
    assert_eq!(handed.data, stun.to_vec());
    assert_eq!(handed.from, c.browser.local_addr().unwrap());
    let web = c.media.stats.web.snapshot();
    assert_eq!(web.dropped_foreign_source, 1);
    assert_eq!(web.dropped_auth_failed, 1);
    assert_eq!(web.dropped_replay, 1);
    assert_eq!(web.dropped_payload_type, 1);
    assert_eq!(web.control_packets, 1);

    // SIP leg: only the SDP's IP may start the stream; then only the latched address.
    let other_ip = UdpSocket::bind("127.0.0.2:0").unwrap();
    other_ip
        .send_to(&rtp_packet(0, 1, 9, b"x"), c.gateway_sip)
        .unwrap();
    c.sip_peer
        .send_to(&rtp_packet(0, 2, 9, b"y"), c.gateway_sip)
        .unwrap();
    let latecomer = udp(); // same IP, other port, after latching
    latecomer
        .send_to(&rtp_packet(0, 3, 9, b"z"), c.gateway_sip)
        .unwrap();
    let mut at_web = recv(&c.browser).unwrap();
    let n = c.browser_rx.unprotect_rtp(&mut at_web).unwrap();
    assert_eq!(&at_web[..n], &rtp_packet(0, 2, WEB_SSRC, b"y")[..]);
    assert!(recv(&c.browser).is_none());
    assert_eq!(c.media.stats.sip.snapshot().dropped_foreign_source, 2);
}

fn strict_mode_takes_only_the_sdp_address(options: RelayOptions) {
    let relay = start_relay(1, options);
    let mut c = setup_call(&relay, true);
    until("call added", || relay.call_count() == 1);
    let same_ip_other_port = udp();
    same_ip_other_port
        .send_to(&rtp_packet(0, 1, 9, b"x"), c.gateway_sip)
        .unwrap();
    c.sip_peer
        .send_to(&rtp_packet(0, 2, 9, b"y"), c.gateway_sip)
        .unwrap();
    let mut at_web = recv(&c.browser).unwrap();
    let n = c.browser_rx.unprotect_rtp(&mut at_web).unwrap();
    assert_eq!(rtp::rtp_seq(&at_web[..n]), 2);
    assert_eq!(c.media.stats.sip.snapshot().dropped_foreign_source, 1);
}

fn web_media_waits_for_ice_and_keys(options: RelayOptions) {
    let relay = start_relay(1, options);
    let (web_socket, sip_rtp) = (udp(), udp());
    let (browser, sip_peer) = (udp(), udp());
    let gateway_web = web_socket.local_addr().unwrap();
    let media = relay
        .add_call(CallMediaSetup {
            web_socket: Some(web_socket),
            ..CallMediaSetup::new(
                sip_rtp,
                sip_peer.local_addr().unwrap(),
                PayloadMap::new(&[(0, 0, 8_000)]),
            )
        })
        .unwrap();
    let mut tx = SrtpContext::new(&keys(1)).unwrap();
    browser
        .send_to(&srtp(&mut tx, &rtp_packet(0, 1, 5, b"early")), gateway_web)
        .unwrap();
    until("early packet counted", || {
        media.stats.web.snapshot().dropped_foreign_source == 1
    });
    media
        .set_web_remote(browser.local_addr().unwrap(), None)
        .unwrap();
    browser
        .send_to(
            &srtp(&mut tx, &rtp_packet(0, 2, 5, b"no keys")),
            gateway_web,
        )
        .unwrap();
    until("keyless packet counted", || {
        media.stats.web.snapshot().dropped_not_ready == 1
    });
    media
        .set_web_srtp(
            SrtpContext::new(&keys(1)).unwrap(),
            SrtpContext::new(&keys(2)).unwrap(),
        )
        .unwrap();
    browser
        .send_to(&srtp(&mut tx, &rtp_packet(0, 3, 5, b"now")), gateway_web)
        .unwrap();
    assert_eq!(recv(&sip_peer).unwrap(), rtp_packet(0, 3, 5, b"now"));
}

/// A call on allocated ports toward `sip_remote`; with `browser`, the web
/// leg is ready (that remote, SDES keys 1 and 2, G.711 mapped through).
fn call_on_ports(
    relay: &Arc<Relay>,
    web: BoundPorts,
    sip: BoundPorts,
    sip_remote: SocketAddr,
    browser: Option<SocketAddr>,
) -> CallMedia {
    let web_srtp = browser.map(|_| {
        (
            SrtpContext::new(&keys(1)).unwrap(),
            SrtpContext::new(&keys(2)).unwrap(),
        )
    });
    relay
        .add_call(CallMediaSetup {
            web_socket: Some(web.rtp),
            web_remote: browser,
            web_srtp,
            sip_rtcp_socket: sip.rtcp,
            leases: vec![web.lease, sip.lease],
            ..CallMediaSetup::new(sip.rtp, sip_remote, PayloadMap::new(&[(0, 0, 8_000)]))
        })
        .unwrap()
}

/// A call on the next free ports of both ranges (see [`call_on_ports`]),
/// with the web and SIP RTP addresses it listens on.
fn call_on_free_ports(
    relay: &Arc<Relay>,
    ranges: (&PortAllocator, &PortAllocator),
    sip_remote: SocketAddr,
    browser: Option<SocketAddr>,
) -> (CallMedia, SocketAddr, SocketAddr) {
    let ip = "127.0.0.1".parse().unwrap();
    let web = ranges.0.bind(ip).unwrap();
    let sip = ranges.1.bind(ip).unwrap();
    let (web_at, sip_at) = (web.rtp.local_addr().unwrap(), sip.rtp.local_addr().unwrap());
    let call = call_on_ports(relay, web, sip, sip_remote, browser);
    (call, web_at, sip_at)
}

fn ports_return_when_calls_end(options: RelayOptions) {
    let relay = start_relay(2, options);
    let web_ports = PortAllocator::new(42000, 42099, false);
    let sip_ports = PortAllocator::new(43000, 43199, true);
    let ip = "127.0.0.1".parse().unwrap();
    let peer = udp();
    let mut calls = Vec::new();
    for _ in 0..50 {
        let ranges = (&web_ports, &sip_ports);
        let (call, _, _) = call_on_free_ports(&relay, ranges, peer.local_addr().unwrap(), None);
        calls.push(call);
    }
    until("calls added", || relay.call_count() == 50);
    assert_eq!(web_ports.free_count(), web_ports.capacity() - 50);
    drop(calls);
    until("ports returned", || {
        web_ports.free_count() == web_ports.capacity()
            && sip_ports.free_count() == sip_ports.capacity()
    });
    // The ports are free for real: they bind again.
    let again = web_ports.bind(ip).unwrap();
    assert!((42000..=42099).contains(&again.lease.port()));
}

/// Once more than `packets` went out each way, `calls` leave one by one;
/// waits until the relay has none.
fn leave_once_flowing(relay: &Arc<Relay>, mut calls: Vec<CallMedia>, packets: u64) {
    until("packets relayed both ways", || {
        let (web, sip) = relay.totals();
        web.packets_out > packets && sip.packets_out > packets
    });
    while let Some(call) = calls.pop() {
        drop(call);
        std::thread::sleep(Duration::from_millis(5));
    }
    until("calls removed", || relay.call_count() == 0);
}

/// Calls leave one by one while packets pour into every one of them: each
/// leaves cleanly (with io_uring its receives end before its sockets close),
/// and afterwards every port of both ranges binds again at once.
fn calls_leave_while_packets_flow(options: RelayOptions) {
    let relay = start_relay(2, options);
    // Each mode's variant runs in parallel with the other: its own ranges,
    // below the kernel's ephemeral ports (32768 and up, where other tests'
    // sockets land) and the gateway's default ranges (20000 and up), since
    // every port of a range is needed.
    let base = if options.io == RelayIo::Epoll {
        16000
    } else {
        18000
    };
    let web_ports = PortAllocator::new(base, base + 39, false);
    let sip_ports = PortAllocator::new(base + 1000, base + 1079, true);
    let ip = "127.0.0.1".parse().unwrap();
    let (browser, peer) = (udp(), udp());
    let mut calls = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..40 {
        let (call, web_at, sip_at) = call_on_free_ports(
            &relay,
            (&web_ports, &sip_ports),
            peer.local_addr().unwrap(),
            Some(browser.local_addr().unwrap()),
        );
        calls.push(call);
        targets.extend([web_at, sip_at]);
    }
    until("calls added", || relay.call_count() == 40);
    let pouring = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let pouring = pouring.clone();
        let browser = browser.try_clone().unwrap();
        let peer = peer.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut tx = SrtpContext::new(&keys(1)).unwrap();
            let mut seq = 0u16;
            while pouring.load(std::sync::atomic::Ordering::Relaxed) {
                for (k, target) in targets.iter().enumerate() {
                    seq = seq.wrapping_add(1);
                    let plain = rtp_packet(0, seq, 7, &[0; 160]);
                    if k % 2 == 0 {
                        let _ = browser.send_to(&srtp(&mut tx, &plain), target);
                    } else {
                        let _ = peer.send_to(&plain, target);
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    leave_once_flowing(&relay, calls, 100);
    pouring.store(false, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    until("ports returned", || {
        web_ports.free_count() == web_ports.capacity()
            && sip_ports.free_count() == sip_ports.capacity()
    });
    // Every port binds again, all at once: no socket of a gone call lingers.
    let _web_again: Vec<_> = (0..40)
        .map(|_| web_ports.bind(ip).expect("a web port is still held"))
        .collect();
    let _sip_again: Vec<_> = (0..40)
        .map(|_| sip_ports.bind(ip).expect("a SIP port pair is still held"))
        .collect();
    assert_eq!(web_ports.free_count() + sip_ports.free_count(), 0);
}

/// A burst far beyond what a worker moves: every packet is either relayed or
/// counted as dropped, and the stream flows again afterwards.
fn burst_is_dropped_and_counted_then_the_stream_goes_on(options: RelayOptions) {
    let relay = start_relay(1, options);
    let mut c = setup_call(&relay, false);
    let quiet = setup_call(&relay, false);
    until("calls added", || relay.call_count() == 2);
    let burst: Vec<Vec<u8>> = (0..30_000u16)
        .map(|seq| srtp(&mut c.browser_tx, &rtp_packet(111, seq, 5, &[0x55; 160])))
        .collect();
    let mut sent = 0u64;
    for p in &burst {
        if c.browser.send_to(p, c.gateway_web).is_ok() {
            sent += 1;
        }
    }
    // Meanwhile the other call is still served.
    let mut quiet_tx = quiet.browser_tx;
    let q = srtp(&mut quiet_tx, &rtp_packet(0, 1, 6, b"still here"));
    quiet.browser.send_to(&q, quiet.gateway_web).unwrap();
    assert_eq!(
        recv(&quiet.sip_peer).unwrap(),
        rtp_packet(0, 1, 6, b"still here")
    );

    // The kernel reports its drop count with the next datagram it queues:
    // one more packet after the burst carries the count of the last drops.
    std::thread::sleep(Duration::from_millis(300));
    let probe = srtp(&mut c.browser_tx, &rtp_packet(111, 30_000, 5, b"probe"));
    c.browser.send_to(&probe, c.gateway_web).unwrap();
    sent += 1;
    // Conservation: every datagram that reached the socket is accounted for,
    // and every one taken in was sent on or counted dropped. (The worker
    // counts a packet in before it sends it: wait for both to settle.)
    until("the burst is accounted for", || {
        let web = c.media.stats.web.snapshot();
        let sip = c.media.stats.sip.snapshot();
        web.packets_in + web.dropped_overload == sent
            && sip.packets_out + sip.dropped_overload == web.packets_in
    });
    let web = c.media.stats.web.snapshot();
    let sip = c.media.stats.sip.snapshot();
    assert_eq!(
        web.dropped_auth_failed + web.dropped_replay + web.dropped_malformed,
        0
    );
    assert_eq!(sip.packets_out + sip.dropped_overload, web.packets_in);
    eprintln!(
        "burst of {sent}: {} relayed, {} dropped at the web socket, {} at the SIP socket",
        sip.packets_out, web.dropped_overload, sip.dropped_overload
    );

    // After the burst, normal packets flow again.
    while recv(&c.sip_peer).is_some() {}
    for seq in 40_000..40_010u16 {
        let p = srtp(&mut c.browser_tx, &rtp_packet(111, seq, 5, b"after"));
        c.browser.send_to(&p, c.gateway_web).unwrap();
        assert_eq!(recv(&c.sip_peer).unwrap(), rtp_packet(96, seq, 5, b"after"));
    }
}

/// Loss counted from sequence gaps, and the SIP peer's RTCP receiver report
/// kept as what it says about the stream we send it.
fn reception_quality_and_peer_reports(options: RelayOptions) {
    let relay = start_relay(1, options);
    let mut c = setup_call(&relay, false);
    until("call added", || relay.call_count() == 1);
    for seq in (0..20u16).filter(|s| ![5, 6, 7].contains(s)) {
        let p = srtp(&mut c.browser_tx, &rtp_packet(0, seq, 5, b"voice"));
        c.browser.send_to(&p, c.gateway_web).unwrap();
        assert!(recv(&c.sip_peer).is_some());
    }
    let web = c.media.stats.web.snapshot();
    assert_eq!(web.lost, 3, "seq 5, 6 and 7 never came");
    // The SIP peer reports 25 % loss, 12 lost, jitter 80 units (10 ms at 8 kHz), on its RTCP port.
    let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
    rr.extend_from_slice(&[
        0, 0, 0, 5, 64, 0, 0, 12, 0, 0, 0, 19, 0, 0, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    // Sent muxed on the RTP port: the relay tells RTCP from RTP by its packet type.
    c.sip_peer.send_to(&rr, c.gateway_sip).unwrap();
    let mut at_web = recv(&c.browser).expect("RTCP relayed to the browser");
    let n = c
        .browser_rx
        .unprotect_rtcp(&mut at_web)
        .expect("valid SRTCP");
    assert_eq!(&at_web[..n], &rr[..]);
    let sip = c.media.stats.sip.snapshot();
    assert_eq!(sip.peer_fraction_lost, 0.25);
    assert_eq!(sip.peer_cumulative_lost, 12);
    assert_eq!(sip.peer_jitter_us, 10_000);
}

fn event_payload(code: u8, end: bool, duration: u16) -> Vec<u8> {
    let mut p = vec![code, if end { 0x80 | 10 } else { 10 }];
    p.extend_from_slice(&duration.to_be_bytes());
    p
}

/// DTMF both ways: browser events (48 kHz) reach SIP at 8 kHz; SIP events
/// reach the browser at 48 kHz and are reported as digits; digits asked for
/// through the API go out in the browser's stream without breaking its
/// sequence numbers.
fn dtmf_relayed_reported_and_generated(options: RelayOptions) {
    let relay = start_relay(1, options);
    let mut c = setup_call(&relay, false);
    until("call added", || relay.call_count() == 1);

    // Browser → SIP: duration 4800 at 48 kHz becomes 800 at 8 kHz, PT 110 → 101.
    let p = srtp(
        &mut c.browser_tx,
        &rtp_packet(110, 1, 5, &event_payload(3, true, 4800)),
    );
    c.browser.send_to(&p, c.gateway_web).unwrap();
    assert_eq!(
        recv(&c.sip_peer).unwrap(),
        rtp_packet(101, 1, 5, &event_payload(3, true, 800))
    );

    // SIP → browser: the end packet, sent three times, is one digit.
    let with_timestamp = |mut p: Vec<u8>, ts: u32| {
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p
    };
    for seq in 9..12u16 {
        let p = with_timestamp(
            rtp_packet(101, seq, 77, &event_payload(11, true, 800)),
            4242,
        );
        c.sip_peer.send_to(&p, c.gateway_sip).unwrap();
    }
    for seq in 9..12u16 {
        let mut at_web = recv(&c.browser).unwrap();
        let n = c.browser_rx.unprotect_rtp(&mut at_web).unwrap();
        let expected = with_timestamp(
            rtp_packet(110, seq, WEB_SSRC, &event_payload(11, true, 4800)),
            4242,
        );
        assert_eq!(&at_web[..n], &expected[..]);
    }
    match c.events.recv_timeout(Duration::from_secs(2)) {
        Ok(RelayEvent::Dtmf { digit, .. }) => assert_eq!(digit, '#'),
        other => panic!("expected a digit, got {other:?}"),
    }
    assert!(
        c.events.recv_timeout(Duration::from_millis(200)).is_err(),
        "one digit, not three"
    );

    // API → SIP: between browser audio packets 10..=12 and 13.., the relay sends "7".
    for seq in 10..13u16 {
        let p = srtp(&mut c.browser_tx, &rtp_packet(0, seq, 5, b"audio"));
        c.browser.send_to(&p, c.gateway_web).unwrap();
        assert_eq!(rtp::rtp_seq(&recv(&c.sip_peer).unwrap()), seq);
    }
    assert!(matches!(
        c.media.send_dtmf("7x", Duration::from_millis(100)),
        Err(RelayError::Dtmf(_))
    ));
    c.media.send_dtmf("7", Duration::from_millis(100)).unwrap();
    let mut events = Vec::new();
    while events.len() < 5 {
        let p = recv(&c.sip_peer).expect("DTMF packets");
        events.push(p);
    }
    for (i, p) in events.iter().enumerate() {
        assert_eq!(rtp::rtp_payload_type(p), 101);
        assert_eq!(rtp::rtp_ssrc(p), 5, "in the browser's stream");
        assert_eq!(
            rtp::rtp_seq(p),
            13 + i as u16,
            "sequence numbers continue the stream"
        );
        assert_eq!(p[12], 7);
        assert_eq!(p[1] & 0x80 != 0, i == 0, "marker on the first packet only");
    }
    let first_ts = rtp::rtp_timestamp(&events[0]);
    assert!(events.iter().all(|p| rtp::rtp_timestamp(p) == first_ts));
    let ends: Vec<_> = events.iter().filter(|p| p[13] & 0x80 != 0).collect();
    assert_eq!(ends.len(), 3);
    assert!(ends
        .iter()
        .all(|p| u16::from_be_bytes([p[14], p[15]]) == 800));
    assert!(recv(&c.sip_peer).is_none());
    // The browser's next packet (seq 13) goes out after the inserted ones.
    let p = srtp(&mut c.browser_tx, &rtp_packet(0, 13, 5, b"audio"));
    c.browser.send_to(&p, c.gateway_web).unwrap();
    assert_eq!(rtp::rtp_seq(&recv(&c.sip_peer).unwrap()), 18);
}

fn dtmf_needs_telephone_event(options: RelayOptions) {
    let relay = start_relay(1, options);
    let media = relay
        .add_call(CallMediaSetup {
            web_socket: Some(udp()),
            ..CallMediaSetup::new(
                udp(),
                "127.0.0.1:9".parse().unwrap(),
                PayloadMap::new(&[(0, 0, 8_000)]),
            )
        })
        .unwrap();
    assert!(matches!(
        media.send_dtmf("1", Duration::from_millis(100)),
        Err(RelayError::NoTelephoneEvent)
    ));
}

/// A SIP-side packet with its own timestamp.
fn sip_packet(seq: u16, timestamp: u32, ssrc: u32) -> Vec<u8> {
    let mut p = rtp_packet(96, seq, ssrc, &seq.to_be_bytes());
    p[4..8].copy_from_slice(&timestamp.to_be_bytes());
    p
}

/// What reached the browser in the time given, decrypted by libsrtp (an
/// independent SRTP stack, inbound with any SSRC): each packet's plain
/// bytes, or None where libsrtp refused it (a replayed index).
fn browser_side_through_libsrtp(c: &TestCall, expected: usize) -> Vec<Option<Vec<u8>>> {
    let mut wire = Vec::new();
    while wire.len() < expected {
        match recv(&c.browser) {
            Some(p) => wire.push(hex::encode(p)),
            None => break,
        }
    }
    // Nothing more comes.
    c.browser
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Some(p) = recv(&c.browser) {
        wire.push(hex::encode(p));
    }
    let answer = interop::libsrtp(serde_json::json!({
        "op": "unprotect", "profile": "AES_CM_128_HMAC_SHA1_80",
        "key": hex::encode(keys(2).concatenated()), "rtp": wire, "rtcp": [],
    }));
    answer["rtp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().map(|h| hex::decode(h).unwrap()))
        .collect()
}

/// The SIP side changes source mid-call (early media, then the answer; a
/// transfer) and the new one starts at the same sequence numbers: toward
/// the browser the stream goes on under our SSRC with the next sequence
/// numbers and a timestamp that moves on, so every packet decrypts in
/// libsrtp — none is a replay of an index already used.
fn a_new_sip_source_continues_our_numbering(options: RelayOptions) {
    let relay = start_relay(1, options);
    let c = setup_call(&relay, false);
    until("call added", || relay.call_count() == 1);
    for (ssrc, first_ts) in [(0xaaaa_0001u32, 8_000u32), (0xbbbb_0002, 3_000_000)] {
        for k in 0..10u16 {
            let packet = sip_packet(1000 + k, first_ts + u32::from(k) * 160, ssrc);
            c.sip_peer.send_to(&packet, c.gateway_sip).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = browser_side_through_libsrtp(&c, 20);
    assert_eq!(got.len(), 20, "every packet was relayed");
    let plain: Vec<Vec<u8>> = got
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.unwrap_or_else(|| panic!("libsrtp refused packet {i} (an index used twice)"))
        })
        .collect();
    let seqs: Vec<u16> = plain.iter().map(|p| rtp::rtp_seq(p)).collect();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (0..20).map(|k| first.wrapping_add(k)).collect::<Vec<_>>(),
        "one run of sequence numbers"
    );
    assert!(plain.iter().all(|p| rtp::rtp_ssrc(p) == WEB_SSRC));
    let stamps: Vec<u32> = plain.iter().map(|p| rtp::rtp_timestamp(p)).collect();
    for w in stamps.windows(2) {
        let step = w[1].wrapping_sub(w[0]);
        assert!(
            step > 0 && step < 48_000,
            "the timestamp moves on steadily: {stamps:?}"
        );
    }
    // The payloads are what each source sent, in order.
    let payloads: Vec<u16> = plain
        .iter()
        .map(|p| u16::from_be_bytes([p[12], p[13]]))
        .collect();
    assert_eq!(payloads[..10], (1000..1010).collect::<Vec<_>>()[..]);
    assert_eq!(payloads[10..], (1000..1010).collect::<Vec<_>>()[..]);
}

/// A SIP peer that sends the same sequence numbers again (a broken or
/// hostile one) never gets a second packet encrypted under one SRTP
/// index: the repeats are dropped and counted, and what the browser gets
/// all decrypts.
fn a_sip_peer_repeating_sequence_numbers_gets_no_index_twice(options: RelayOptions) {
    let relay = start_relay(1, options);
    let c = setup_call(&relay, false);
    until("call added", || relay.call_count() == 1);
    for round in 0..2 {
        for k in 0..10u16 {
            // Same numbers, other payloads: what AES-CM keystream reuse would leak.
            let mut packet = sip_packet(500 + k, u32::from(k) * 160, 0xcccc_0003);
            packet.push(round);
            c.sip_peer.send_to(&packet, c.gateway_sip).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let got = browser_side_through_libsrtp(&c, 10);
    assert_eq!(got.len(), 10, "the repeats were not sent: {}", got.len());
    assert!(got.iter().all(Option::is_some), "all decrypt");
    let sip = c.media.stats.sip.snapshot();
    assert_eq!(sip.packets_in, 20);
    assert_eq!(sip.dropped_replay, 10, "{sip:?}");
}

/// A browser's ICE check naming our `ufrag`, signed with `password`.
fn ice_check(ufrag: &str, password: &str, transaction: u8) -> Vec<u8> {
    use webrtc_sip_gateway::webrtc::stun;
    stun::Builder::new(stun::BINDING_REQUEST, [transaction; 12])
        .attribute(stun::ATTR_USERNAME, format!("{ufrag}:browser").as_bytes())
        .attribute(stun::ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff])
        .message_integrity(password.as_bytes())
        .finish()
}

/// The relay's test of a check: signed with `password` (as the call layer's).
fn check_verifier(password: &'static str) -> webrtc_sip_gateway::media::relay::CheckVerifier {
    Box::new(move |packet: &[u8]| {
        webrtc_sip_gateway::webrtc::stun::is_authenticated_binding_request(
            packet,
            password.as_bytes(),
        )
    })
}

/// A call on the shared web port that knows its browser by ICE only: our
/// ufrag "ourufrag", password "ourpassword", G.711 through, SIP toward
/// `sip_peer`. Returns the call, its SIP address and its event queue.
fn call_by_ice(
    relay: &Arc<Relay>,
    sip_peer: &UdpSocket,
    web_srtp: bool,
) -> (CallMedia, SocketAddr, Receiver<RelayEvent>) {
    call_by_ice_on(relay, None, sip_peer, web_srtp)
}

/// [`call_by_ice`] with its own web socket (`Some`) or on the shared port.
fn call_by_ice_on(
    relay: &Arc<Relay>,
    web_socket: Option<UdpSocket>,
    sip_peer: &UdpSocket,
    web_srtp: bool,
) -> (CallMedia, SocketAddr, Receiver<RelayEvent>) {
    let sip_rtp = udp();
    let gateway_sip = sip_rtp.local_addr().unwrap();
    let (tx, events) = sync_channel(64);
    let media = relay
        .add_call(CallMediaSetup {
            web_socket,
            web_ufrag: Some("ourufrag".into()),
            web_srtp: web_srtp.then(|| {
                (
                    SrtpContext::new(&keys(1)).unwrap(),
                    SrtpContext::new(&keys(2)).unwrap(),
                )
            }),
            web_ssrc: Some(WEB_SSRC),
            web_check_verifier: Some(check_verifier("ourpassword")),
            events: Some(tx),
            ..CallMediaSetup::new(
                sip_rtp,
                sip_peer.local_addr().unwrap(),
                PayloadMap::new(&[(0, 0, 8_000)]),
            )
        })
        .unwrap();
    (media, gateway_sip, events)
}

/// Shared web port: nothing reaches a call before its browser's first
/// authentic check (media, a check signed with another password, a check
/// for another ufrag are dropped and counted); controls sent meanwhile
/// apply; the check itself goes to the ICE side with the call's id, and
/// from then on the browser's media flows both ways through the port.
fn a_call_is_found_by_its_first_authentic_check(options: RelayOptions) {
    let relay = start_relay(2, options);
    let port = relay.web_port().expect("the relay has a web port");
    let (sip_peer, browser, stranger) = (udp(), udp(), udp());
    let (media, gateway_sip, events) = call_by_ice(&relay, &sip_peer, false);
    let unknown = || relay.web_port_counters().unknown_source;
    let mut browser_tx = SrtpContext::new(&keys(1)).unwrap();

    browser
        .send_to(&srtp(&mut browser_tx, &rtp_packet(0, 1, 5, b"early")), port)
        .unwrap();
    until("early media counted", || unknown() == 1);
    stranger
        .send_to(&ice_check("ourufrag", "guessed", 1), port)
        .unwrap();
    until("forged check counted", || unknown() == 2);
    stranger
        .send_to(&ice_check("otherufrag", "ourpassword", 2), port)
        .unwrap();
    until("check for nobody counted", || unknown() == 3);
    assert!(events.try_recv().is_err(), "nothing reached the ICE side");
    assert_eq!(relay.call_count(), 1, "the call waits");

    // Keys arrive while the call waits for its browser.
    media
        .set_web_srtp(
            SrtpContext::new(&keys(1)).unwrap(),
            SrtpContext::new(&keys(2)).unwrap(),
        )
        .unwrap();
    let check = ice_check("ourufrag", "ourpassword", 3);
    browser.send_to(&check, port).unwrap();
    let Ok(RelayEvent::Packet(handed)) = events.recv_timeout(Duration::from_secs(2)) else {
        panic!("the authentic check was not handed over");
    };
    assert_eq!(handed.call, media.id());
    assert_eq!(handed.from, browser.local_addr().unwrap());
    assert_eq!(handed.data, check);

    media_both_ways((&browser, &mut browser_tx, 2), port, &sip_peer, gateway_sip);
    assert_eq!(unknown(), 3, "{:?}", relay.web_port_counters());
    until("the send toward the browser counted", || {
        let web = media.stats.web.snapshot();
        (web.control_packets, web.packets_out) == (1, 1)
    });
}

/// A checked browser's media both ways through `gateway_web`: its SRTP
/// (sequence `seq` from `tx`, keys 1) reaches the SIP peer as the RTP it
/// was, and the peer's RTP comes back to it as SRTP (keys 2, our SSRC)
/// from `gateway_web`, the address it sent to.
fn media_both_ways(
    (browser, tx, seq): (&UdpSocket, &mut SrtpContext, u16),
    gateway_web: SocketAddr,
    sip_peer: &UdpSocket,
    gateway_sip: SocketAddr,
) {
    browser
        .send_to(&srtp(tx, &rtp_packet(0, seq, 5, b"in")), gateway_web)
        .unwrap();
    assert_eq!(recv(sip_peer).unwrap(), rtp_packet(0, seq, 5, b"in"));
    sip_peer
        .send_to(&rtp_packet(0, 1, 9, b"back"), gateway_sip)
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = browser.recv_from(&mut buf).expect("media back");
    assert_eq!(from, gateway_web, "from the address the browser sent to");
    let mut back = buf[..n].to_vec();
    let len = SrtpContext::new(&keys(2))
        .unwrap()
        .unprotect_rtp(&mut back)
        .unwrap();
    assert_eq!(&back[..len], &rtp_packet(0, 1, WEB_SSRC, b"back")[..]);
}

/// Shared web port, two workers: a browser that checks from many
/// addresses lands on both workers' sockets (the kernel hashes each
/// address to one); whatever lands on the worker without the call is
/// steered to it, so every check reaches the ICE side and every address's
/// media reaches the SIP peer, in order.
fn what_lands_on_another_worker_is_steered_to_the_call(options: RelayOptions) {
    let relay = start_relay(2, options);
    let port = relay.web_port().unwrap();
    let sip_peer = udp();
    let (media, _, events) = call_by_ice(&relay, &sip_peer, true);
    // With 24 addresses all hashing to one socket once in 2^23 runs. Each
    // checks, then sends (a call keeps the last 8 checked addresses).
    let browsers: Vec<UdpSocket> = (0..24).map(|_| udp()).collect();
    let mut tx = SrtpContext::new(&keys(1)).unwrap();
    for (k, b) in browsers.iter().enumerate() {
        b.send_to(&ice_check("ourufrag", "ourpassword", k as u8), port)
            .unwrap();
        let Ok(RelayEvent::Packet(handed)) = events.recv_timeout(Duration::from_secs(2)) else {
            panic!("check {k} was not handed over");
        };
        assert_eq!(handed.from, b.local_addr().unwrap());
        let seq = k as u16 + 1;
        b.send_to(&srtp(&mut tx, &rtp_packet(0, seq, 5, b"m")), port)
            .unwrap();
        assert_eq!(
            recv(&sip_peer).unwrap_or_else(|| panic!("media from address {k} lost")),
            rtp_packet(0, seq, 5, b"m")
        );
    }
    let counters = relay.web_port_counters();
    assert!(counters.steered > 0, "{counters:?}");
    assert_eq!((counters.unknown_source, counters.overload), (0, 0));
    // Counted once the kernel has taken the send (after the peer may see it).
    until("every send counted", || {
        media.stats.sip.snapshot().packets_out == 24
    });
}

/// A call on the shared web port with SIP ports `sip` toward `peer`: G.711
/// through, no browser address, keys or ICE yet.
fn port_setup(sip: BoundPorts, peer: SocketAddr) -> CallMediaSetup {
    CallMediaSetup {
        sip_rtcp_socket: sip.rtcp,
        leases: vec![sip.lease],
        ..CallMediaSetup::new(sip.rtp, peer, PayloadMap::new(&[(0, 0, 8_000)]))
    }
}

/// A relay of `workers` on a shared web port (and its address), with 40
/// SIP port pairs from `base` (epoll) or `base` + 200 (io_uring): below the
/// kernel's ephemeral ports, apart from the other tests' ranges.
fn port_relay_with_sip_ports(
    workers: usize,
    options: RelayOptions,
    base: u16,
) -> (Arc<Relay>, SocketAddr, PortAllocator) {
    let relay = start_relay(workers, options);
    let port = relay.web_port().expect("the relay has a web port");
    let base = if options.io == RelayIo::Epoll {
        base
    } else {
        base + 200
    };
    (relay, port, PortAllocator::new(base, base + 79, true))
}

/// Shared web port, ICE restart: after `set_web_ice` the call is found by
/// its new ufrag from a new address (on whichever worker it lands) and no
/// longer by the old one; its media from the new address flows.
fn an_ice_restart_finds_the_call_by_its_new_ufrag(options: RelayOptions) {
    let relay = start_relay(2, options);
    let port = relay.web_port().unwrap();
    let sip_peer = udp();
    let (media, _, events) = call_by_ice(&relay, &sip_peer, true);
    let first = udp();
    first
        .send_to(&ice_check("ourufrag", "ourpassword", 1), port)
        .unwrap();
    assert!(matches!(
        events.recv_timeout(Duration::from_secs(2)),
        Ok(RelayEvent::Packet(_))
    ));
    media
        .set_web_ice("newufrag", check_verifier("newpassword"))
        .unwrap();
    // Old credentials from a new address find nothing now.
    let stale = udp();
    stale
        .send_to(&ice_check("ourufrag", "ourpassword", 2), port)
        .unwrap();
    until("the old ufrag is gone", || {
        relay.web_port_counters().unknown_source == 1
    });
    // New ones do, from several new addresses (some on the other worker).
    let mut tx = SrtpContext::new(&keys(1)).unwrap();
    for k in 0..8u16 {
        let b = udp();
        b.send_to(&ice_check("newufrag", "newpassword", 3), port)
            .unwrap();
        let Ok(RelayEvent::Packet(handed)) = events.recv_timeout(Duration::from_secs(2)) else {
            panic!("check {k} with the new ufrag was not handed over");
        };
        assert_eq!(handed.from, b.local_addr().unwrap());
        b.send_to(&srtp(&mut tx, &rtp_packet(0, k + 1, 5, b"r")), port)
            .unwrap();
        assert_eq!(recv(&sip_peer).unwrap(), rtp_packet(0, k + 1, 5, b"r"));
    }
    assert!(events.try_recv().is_err(), "the stale check reached nobody");
}

/// Shared web port: calls whose browser never speaks take every control
/// message while they wait and leave cleanly when dropped — their SIP
/// ports return, their ufrag finds nothing any more.
fn a_call_that_never_hears_its_browser_leaves_cleanly(options: RelayOptions) {
    let (relay, port, sip_ports) = port_relay_with_sip_ports(1, options, 12000);
    let peer = udp();
    let mut calls = Vec::new();
    for k in 0..10 {
        let sip = sip_ports.bind("127.0.0.1".parse().unwrap()).unwrap();
        let mut media = relay
            .add_call(CallMediaSetup {
                web_ufrag: Some(format!("waiting{k}")),
                web_check_verifier: Some(check_verifier("ourpassword")),
                payload_map: PayloadMap::new(&[(0, 0, 8_000)])
                    .with_telephone_event(101, 8_000, 101, 8_000),
                ..port_setup(sip, peer.local_addr().unwrap())
            })
            .unwrap();
        media
            .set_web_remote("127.0.0.9:4000".parse().unwrap(), None)
            .unwrap();
        media
            .set_web_srtp(
                SrtpContext::new(&keys(1)).unwrap(),
                SrtpContext::new(&keys(2)).unwrap(),
            )
            .unwrap();
        media
            .set_web_ice(&format!("restarted{k}"), check_verifier("newpassword"))
            .unwrap();
        media
            .set_sip_far(webrtc_sip_gateway::media::relay::SipFar {
                remote: peer.local_addr().unwrap(),
                remote_rtcp: None,
                strict_source: true,
                srtp: None,
                payload_map: PayloadMap::new(&[(0, 0, 8_000)]),
            })
            .unwrap();
        calls.push(media);
    }
    assert_eq!(relay.call_count(), 10);
    assert_eq!(sip_ports.free_count(), sip_ports.capacity() - 10);
    drop(calls);
    assert_eq!(relay.call_count(), 0);
    assert_eq!(sip_ports.free_count(), sip_ports.capacity());
    // Neither the old nor the restarted ufrag finds a call now.
    let stranger = udp();
    stranger
        .send_to(&ice_check("waiting3", "ourpassword", 1), port)
        .unwrap();
    stranger
        .send_to(&ice_check("restarted3", "newpassword", 2), port)
        .unwrap();
    until("checks for gone calls counted", || {
        relay.web_port_counters().unknown_source == 2
    });
}

/// Shared web port: calls leave one by one while packets pour into the
/// port and their SIP sockets; each leaves cleanly, what still comes for
/// them is dropped and counted, their SIP ports return, and the port then
/// carries a new call both ways.
fn calls_on_the_port_leave_while_packets_flow(options: RelayOptions) {
    let (relay, port, sip_ports) = port_relay_with_sip_ports(2, options, 12400);
    let peer = udp();
    let mut calls = Vec::new();
    let mut browsers = Vec::new();
    let mut sip_targets = Vec::new();
    for _ in 0..40 {
        let browser = udp();
        let sip = sip_ports.bind("127.0.0.1".parse().unwrap()).unwrap();
        let sip_at = sip.rtp.local_addr().unwrap();
        let media = relay
            .add_call(CallMediaSetup {
                web_remote: Some(browser.local_addr().unwrap()),
                web_srtp: Some((
                    SrtpContext::new(&keys(1)).unwrap(),
                    SrtpContext::new(&keys(2)).unwrap(),
                )),
                ..port_setup(sip, peer.local_addr().unwrap())
            })
            .unwrap();
        calls.push(media);
        browsers.push(browser);
        sip_targets.push(sip_at);
    }
    let pouring = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let pouring = pouring.clone();
        let browsers: Vec<UdpSocket> = browsers.iter().map(|b| b.try_clone().unwrap()).collect();
        let peer = peer.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut tx: Vec<SrtpContext> = (0..browsers.len())
                .map(|_| SrtpContext::new(&keys(1)).unwrap())
                .collect();
            let mut seq = 0u16;
            while pouring.load(std::sync::atomic::Ordering::Relaxed) {
                seq = seq.wrapping_add(1);
                for (k, b) in browsers.iter().enumerate() {
                    let plain = rtp_packet(0, seq, 7, &[0; 160]);
                    let _ = b.send_to(&srtp(&mut tx[k], &plain), port);
                    let _ = peer.send_to(&plain, sip_targets[k]);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    leave_once_flowing(&relay, calls, 200);
    until("what comes for gone calls counted", || {
        relay.web_port_counters().unknown_source > 40
    });
    pouring.store(false, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    until("SIP ports returned", || {
        sip_ports.free_count() == sip_ports.capacity()
    });
    let _again: Vec<_> = (0..40)
        .map(|_| {
            sip_ports
                .bind("127.0.0.1".parse().unwrap())
                .expect("a SIP port pair is still held")
        })
        .collect();
    // A new call on the port, from one of the old browsers' addresses.
    let mut c = setup_call(&relay, false);
    let wire = srtp(&mut c.browser_tx, &rtp_packet(111, 1, 3, b"new"));
    c.browser.send_to(&wire, c.gateway_web).unwrap();
    assert_eq!(recv(&c.sip_peer).unwrap(), rtp_packet(96, 1, 3, b"new"));
    c.sip_peer
        .send_to(&rtp_packet(96, 1, 4, b"new back"), c.gateway_sip)
        .unwrap();
    let mut at_web = recv(&c.browser).unwrap();
    let n = c.browser_rx.unprotect_rtp(&mut at_web).unwrap();
    assert_eq!(&at_web[..n], &rtp_packet(111, 1, WEB_SSRC, b"new back")[..]);
}

/// Shared web port: a burst far beyond what a worker moves, from one
/// call's browser. The port's socket queues every call's datagrams, so a
/// flood delays the others there (a call of its own socket would not);
/// still every datagram is relayed or counted dropped (by the kernel, on
/// the port), and the other call's packet gets through.
fn a_burst_on_the_port_is_accounted_for(options: RelayOptions) {
    let relay = start_relay(1, options);
    let mut c = setup_call(&relay, false);
    let quiet = setup_call(&relay, false);
    let mut sent = 0u64;
    for seq in 0..30_000u16 {
        let p = srtp(&mut c.browser_tx, &rtp_packet(111, seq, 5, &[0x55; 160]));
        if c.browser.send_to(&p, c.gateway_web).is_ok() {
            sent += 1;
        }
    }
    // The other call's stream (a packet per 20 ms) gets through.
    let mut quiet_tx = quiet.browser_tx;
    quiet
        .sip_peer
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut quiet_sent = 0u64;
    let through = (1..=250u16).any(|seq| {
        let q = srtp(&mut quiet_tx, &rtp_packet(0, seq, 6, b"still here"));
        quiet_sent += u64::from(quiet.browser.send_to(&q, quiet.gateway_web).is_ok());
        recv(&quiet.sip_peer).is_some()
    });
    assert!(through, "the other call's stream stayed blocked for 5 s");
    // The kernel reports its drop count with the next datagram it queues.
    std::thread::sleep(Duration::from_millis(300));
    let probe = srtp(&mut c.browser_tx, &rtp_packet(111, 30_000, 5, b"probe"));
    c.browser.send_to(&probe, c.gateway_web).unwrap();
    sent += 1;
    until("the burst is accounted for", || {
        let web = c.media.stats.web.snapshot();
        let sip = c.media.stats.sip.snapshot();
        let quiet_in = quiet.media.stats.web.snapshot().packets_in;
        let port = relay.web_port_counters();
        web.packets_in + quiet_in + port.overload == sent + quiet_sent
            && sip.packets_out + sip.dropped_overload == web.packets_in
    });
    let port = relay.web_port_counters();
    assert_eq!(port.unknown_source, 0);
    eprintln!(
        "burst of {sent}: {} relayed, {} dropped at the port",
        c.media.stats.sip.snapshot().packets_out,
        port.overload
    );
}

/// A dual-stack web leg: one socket on IPv6's any-address takes an IPv4
/// browser and an IPv6 one (a port per call, and the shared port). The
/// IPv4 browser is seen as its IPv4 address (not `::ffff:…`), and each
/// browser hears back from the address it sent to.
fn a_dual_stack_web_leg_takes_both_families(options: RelayOptions) {
    let shared = options.web_port.is_some();
    let options = RelayOptions {
        web_port: shared.then(|| "[::]:0".parse().unwrap()),
        ..options
    };
    let relay = start_relay(2, options);
    for browser_at in ["127.0.0.1:0", "[::1]:0"] {
        let browser = UdpSocket::bind(browser_at).unwrap();
        browser
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let sip_peer = udp();
        let (web_socket, port) = if shared {
            (None, relay.web_port().unwrap().port())
        } else {
            let own =
                webrtc_sip_gateway::media::ports::bind_udp("[::]:0".parse().unwrap()).unwrap();
            let port = own.local_addr().unwrap().port();
            (Some(own), port)
        };
        // The browser sends to the gateway's address of its own family.
        let gateway_web = SocketAddr::new(browser.local_addr().unwrap().ip(), port);
        let (media, gateway_sip, events) = call_by_ice_on(&relay, web_socket, &sip_peer, true);
        browser
            .send_to(&ice_check("ourufrag", "ourpassword", 1), gateway_web)
            .unwrap();
        let Ok(RelayEvent::Packet(check)) = events.recv_timeout(Duration::from_secs(2)) else {
            panic!("the check from {browser_at} was not handed over");
        };
        assert_eq!(
            check.from,
            browser.local_addr().unwrap(),
            "as the browser is"
        );
        assert_eq!(check.to, Some(gateway_web.ip()), "the address it went to");
        let mut tx = SrtpContext::new(&keys(1)).unwrap();
        media_both_ways((&browser, &mut tx, 1), gateway_web, &sip_peer, gateway_sip);
        drop(media);
    }
}

/// Every test named, in module `$module`, with workers moving datagrams
/// by `$io` and busy polling for `$busy_poll_us` after each turn.
macro_rules! with_options {
    ($module:ident, $io:ident, $busy_poll_us:expr; $($name:ident),*) => {
        with_options!($module, $io, $busy_poll_us, None; $($name),*);
    };
    ($module:ident, $io:ident, $busy_poll_us:expr, $web_port:expr; $($name:ident),*) => {
        mod $module {
            use webrtc_sip_gateway::media::relay::{RelayIo, RelayOptions};
            $(#[test]
            fn $name() {
                super::$name(RelayOptions {
                    io: RelayIo::$io,
                    busy_poll: std::time::Duration::from_micros($busy_poll_us),
                    web_port: $web_port,
                })
            })*
        }
    };
}

/// Every test named, once per way the relay hands datagrams to the kernel
/// (modules `$epoll` and `$io_uring`).
macro_rules! each_io {
    ($epoll:ident, $io_uring:ident, $busy_poll_us:expr; $($name:ident),*) => {
        with_options!($epoll, Epoll, $busy_poll_us; $($name),*);
        with_options!($io_uring, IoUring, $busy_poll_us; $($name),*);
    };
}

each_io!(
    epoll, io_uring, 0;
    hundred_calls_both_ways_without_loss,
    source_checks_and_drops_are_counted,
    strict_mode_takes_only_the_sdp_address,
    web_media_waits_for_ice_and_keys,
    ports_return_when_calls_end,
    calls_leave_while_packets_flow,
    burst_is_dropped_and_counted_then_the_stream_goes_on,
    reception_quality_and_peer_reports,
    dtmf_relayed_reported_and_generated,
    dtmf_needs_telephone_event,
    a_new_sip_source_continues_our_numbering,
    a_sip_peer_repeating_sequence_numbers_gets_no_index_twice,
    a_dual_stack_web_leg_takes_both_families
);

// Busy-polling workers: traffic, control messages (calls added, ICE address
// and keys set while the worker spins), overload, and DTMF timing.
each_io!(
    epoll_busy_poll, io_uring_busy_poll, 200;
    hundred_calls_both_ways_without_loss,
    web_media_waits_for_ice_and_keys,
    burst_is_dropped_and_counted_then_the_stream_goes_on,
    dtmf_relayed_reported_and_generated
);

// The same on one shared web port (`[media] web-port`), where a call is
// found by its browser's address.
macro_rules! on_shared_port {
    ($epoll:ident, $io_uring:ident; $($name:ident),*) => {
        with_options!($epoll, Epoll, 0, Some("127.0.0.1:0".parse().unwrap()); $($name),*);
        with_options!($io_uring, IoUring, 0, Some("127.0.0.1:0".parse().unwrap()); $($name),*);
    };
}

on_shared_port!(
    shared_port_epoll, shared_port_io_uring;
    hundred_calls_both_ways_without_loss,
    strict_mode_takes_only_the_sdp_address,
    a_burst_on_the_port_is_accounted_for,
    reception_quality_and_peer_reports,
    dtmf_relayed_reported_and_generated,
    a_new_sip_source_continues_our_numbering,
    a_sip_peer_repeating_sequence_numbers_gets_no_index_twice,
    a_call_is_found_by_its_first_authentic_check,
    what_lands_on_another_worker_is_steered_to_the_call,
    a_call_that_never_hears_its_browser_leaves_cleanly,
    calls_on_the_port_leave_while_packets_flow,
    a_dual_stack_web_leg_takes_both_families,
    an_ice_restart_finds_the_call_by_its_new_ufrag
);
