//! The SIP user agent's whole input path: datagrams from the network (split
//! at 0xff bytes) into a user agent that has a registration and an outgoing
//! call in progress, with its timers run in between. It reaches the
//! endpoint's server transactions, incoming INVITE dialogs, CANCEL and
//! in-dialog requests (BYE, re-INVITE, UPDATE, PRACK, INFO, NOTIFY), and
//! the answers to our REFERs (each answered call is transferred), the
//! far end's REFERs (followed) and INVITEs with Replaces. Two servers, a
//! primary and a backup, send the datagrams (every third from the backup),
//! and the time run between them lets pings go unanswered, so failover is
//! reached too. Never panics.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sip::dialog::DialogEvent;
use webrtc_sip_gateway::sip::identity::Identity;
use webrtc_sip_gateway::sip::transaction::TimerConfig;
use webrtc_sip_gateway::sip::transfer::TransferTarget;
use webrtc_sip_gateway::sip::ua::{UaConfig, UaEvent, UaInput, UaOutput, UserAgent};

fuzz_target!(|data: &[u8]| {
    let server = "192.0.2.1:5060".parse().unwrap();
    let backup = "192.0.2.2:5060".parse().unwrap();
    let t0 = Instant::now();
    let mut ua = UserAgent::new(
        UaConfig {
            servers: vec![server, backup],
            identity: Identity {
                domain: "pbx.example".into(),
                local: "192.0.2.10:5070".parse().unwrap(),
                transport: webrtc_sip_gateway::config::SipTransport::Udp,
            },
            timers: TimerConfig::default(),
            register_expires: 300,
            keepalive: Some(Duration::from_secs(30)),
            trusted: webrtc_sip_gateway::sip::sources::TrustedSources::anyone(),
            transactions: Default::default(),
            // The shortest interval, so later datagrams reach its refresh.
            session_timer: webrtc_sip_gateway::sip::session_timer::SessionTimerConfig {
                expires_s: 90,
            },
            call_data: webrtc_sip_gateway::sip::call_data::CallDataRules {
                prefixes: vec!["X-".into()],
                incoming: vec!["User-to-User".into()],
                outgoing: vec!["User-to-User".into()],
            },
            // The far end's REFERs are followed, so its NOTIFYs and the
            // new INVITE's answers are reached too.
            accept_refer: true,
        },
        t0,
        webrtc_sip_gateway::random::Random::seeded(1),
    );
    ua.handle_input(
        t0,
        UaInput::Register {
            id: "s1".into(),
            user: "1001".into(),
            password: Some("pw".into()),
        },
    );
    ua.handle_input(
        t0,
        UaInput::Invite {
            key: "c1".into(),
            user: "1001".into(),
            to: "5000".into(),
            sdp: "v=0\r\n".into(),
            password: Some("pw".into()),
            caller: webrtc_sip_gateway::sip::caller_id::OutgoingCaller {
                display_name: Some("Agent \"1\"".into()),
                identity_header: Some("P-Asserted-Identity"),
                headers: vec![("X-Agent".into(), "7".into())],
            },
        },
    );
    let mut now = t0;
    for (i, datagram) in data.split(|b| *b == 0xff).enumerate() {
        now += Duration::from_millis(50 * i as u64);
        ua.handle_input(
            now,
            UaInput::Datagram {
                from: if i % 3 == 2 { backup } else { server },
                data: datagram,
            },
        );
        ua.handle_input(now, UaInput::Timeout);
        drain(&mut ua, now);
    }
    ua.handle_input(
        now,
        UaInput::Hold {
            key: "c1".into(),
            hold: true,
        },
    );
    ua.handle_input(now, UaInput::Hangup { key: "c1".into() });
    ua.handle_input(now, UaInput::Unregister { id: "s1".into() });
    drain(&mut ua, now);
});

/// Takes every output; an incoming call is rung, given early media (a
/// reliable 183 when it asks for 100rel, whose PRACK the data may bring)
/// and answered.
fn drain(ua: &mut UserAgent, now: Instant) {
    loop {
        match ua.poll_output() {
            UaOutput::Transmit(_) => {}
            UaOutput::Event(UaEvent::Incoming { key, .. }) => {
                ua.handle_input(now, UaInput::Ring { key: key.clone() });
                ua.handle_input(
                    now,
                    UaInput::Progress {
                        key: key.clone(),
                        sdp: "v=0\r\n".into(),
                    },
                );
                ua.handle_input(
                    now,
                    UaInput::Accept {
                        key: key.clone(),
                        sdp: "v=0\r\n".into(),
                        headers: vec![("X-Agent".into(), "7".into())],
                    },
                );
                // An attended transfer joining it with our outgoing call.
                ua.handle_input(
                    now,
                    UaInput::Transfer {
                        key,
                        target: TransferTarget::Replacing("c1".into()),
                    },
                );
            }
            UaOutput::Event(UaEvent::Call {
                key,
                event: DialogEvent::Referred { .. },
            }) => ua.handle_input(
                now,
                UaInput::FollowRefer {
                    key,
                    sdp: "v=0\r\n".into(),
                },
            ),
            UaOutput::Event(UaEvent::Call {
                key,
                event: DialogEvent::Answered { .. },
            }) => ua.handle_input(
                now,
                UaInput::Transfer {
                    key,
                    target: TransferTarget::To("5001".into()),
                },
            ),
            UaOutput::Event(_) => {}
            UaOutput::Timeout(_) => return,
        }
    }
}
