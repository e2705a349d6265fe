//! The SIP user agent's whole input path: datagrams from the network (split
//! at 0xff bytes) into a user agent that has a registration and an outgoing
//! call in progress, with its timers run in between. It reaches the
//! endpoint's server transactions, incoming INVITE dialogs, CANCEL and
//! in-dialog requests (BYE, re-INVITE, INFO). Never panics.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sip::identity::Identity;
use webrtc_sip_gateway::sip::transaction::TimerConfig;
use webrtc_sip_gateway::sip::ua::{UaConfig, UserAgent};

fuzz_target!(|data: &[u8]| {
    let server = "192.0.2.1:5060".parse().unwrap();
    let t0 = Instant::now();
    let mut ua = UserAgent::new(
        UaConfig {
            server: Some(server),
            identity: Identity {
                domain: "pbx.example".into(),
                local: "192.0.2.10:5070".parse().unwrap(),
                transport: webrtc_sip_gateway::config::SipTransport::Udp,
            },
            timers: TimerConfig::default(),
            register_expires: 300,
            keepalive: Some(Duration::from_secs(30)),
        },
        t0,
        webrtc_sip_gateway::random::Random::seeded(1),
    );
    ua.register(t0, "s1", "1001", Some("pw".into()));
    ua.invite(t0, "c1", "1001", "5000", "v=0\r\n".into());
    let mut now = t0;
    for (i, datagram) in data.split(|b| *b == 0xff).enumerate() {
        now += Duration::from_millis(50 * i as u64);
        ua.handle_datagram(now, server, datagram);
        ua.handle_timeout(now);
        while ua.poll_transmit().is_some() {}
        while let Some(event) = ua.poll_event() {
            if let webrtc_sip_gateway::sip::ua::UaEvent::Incoming { key, .. } = event {
                ua.ring(now, &key);
                ua.accept(now, &key, "v=0\r\n".into());
            }
        }
    }
    ua.hold(now, "c1", true);
    ua.hangup(now, "c1");
    ua.unregister(now, "s1");
    while ua.poll_transmit().is_some() {}
});
