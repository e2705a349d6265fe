//! A datagram on the browser leg, routed as the relay routes it (RFC 7983
//! first-byte demultiplexing): STUN to the ICE-lite agent, RTP/RTCP to SRTP.
//! Never panics; every STUN response the agent makes decodes again.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::media::rtp::{classify, WebPacketKind};
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};
use webrtc_sip_gateway::sdp::IceCredentials;
use webrtc_sip_gateway::webrtc::ice::{IceEvent, IceInput, IceLiteAgent};
use webrtc_sip_gateway::webrtc::stun::Message;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let from: std::net::SocketAddr = "192.0.2.9:5000".parse().unwrap();
    match classify(data) {
        WebPacketKind::Stun => {
            let mut agent = IceLiteAgent::new(
                IceCredentials { ufrag: "gwuf".into(), pwd: "gateway-password-24chars".into() },
                IceCredentials { ufrag: "brwz".into(), pwd: "browser-password-24char".into() },
                Duration::from_secs(30),
                now,
            );
            let _ = agent.handle_input(now, IceInput::Stun { pair: from.into(), data });
            let later = now + Duration::from_secs(31);
            let _ = agent.handle_input(later, IceInput::Timeout);
            loop {
                match agent.poll_output() {
                    IceEvent::Transmit { data, .. } => {
                        Message::decode(&data).expect("our response decodes");
                    }
                    IceEvent::Timeout(_) => break,
                    _ => {}
                }
            }
        }
        WebPacketKind::Rtp | WebPacketKind::Rtcp => {
            let keys = SrtpKeyMaterial::new(SrtpProfile::AesCm128HmacSha1_80, &[3; 16], &[4; 14]).unwrap();
            let mut ctx = SrtpContext::new(&keys).unwrap();
            let mut buf = data.to_vec();
            let _ = ctx.unprotect_rtp(&mut buf);
            let mut buf = data.to_vec();
            let _ = ctx.unprotect_rtcp(&mut buf);
        }
        WebPacketKind::Dtls | WebPacketKind::Unknown => {}
    }
});
