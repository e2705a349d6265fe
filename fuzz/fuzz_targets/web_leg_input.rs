//! A datagram on the browser leg, routed as the relay routes it (RFC 7983
//! first-byte demultiplexing): STUN to the ICE-lite agent, RTP/RTCP to SRTP,
//! DTLS through a whole web leg (after a valid ICE check from the sender,
//! as DTLS is taken only then), in the fuzzer's pieces, both as the
//! handshake's active and passive side. Never panics; every STUN response
//! the agent makes decodes again.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::media::rtp::{classify, WebPacketKind};
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};
use webrtc_sip_gateway::sdp::IceCredentials;
use webrtc_sip_gateway::webrtc::ice::{IceEvent, IceInput, IceLiteAgent};
use webrtc_sip_gateway::webrtc::dtls::DtlsIdentity;
use webrtc_sip_gateway::webrtc::leg::{WebLeg, WebLegEvent, WebLegInput};
use webrtc_sip_gateway::webrtc::stun::{self, Builder, Message};

/// One certificate for every run (making one is slow).
fn identity() -> &'static DtlsIdentity {
    static IDENTITY: std::sync::OnceLock<DtlsIdentity> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| DtlsIdentity::generate().expect("a DTLS certificate"))
}

/// Drains the leg's outputs until it waits for the time.
fn drain(leg: &mut WebLeg) {
    loop {
        if let WebLegEvent::Timeout(_) = leg.poll_output() {
            break;
        }
    }
}

fn dtls_through_the_leg(data: &[u8], active: bool) {
    let now = Instant::now();
    let from: std::net::SocketAddr = "192.0.2.9:5000".parse().unwrap();
    let Ok(mut leg) = WebLeg::with_dtls(
        IceCredentials { ufrag: "gwuf".into(), pwd: "gateway-password-24chars".into() },
        IceCredentials { ufrag: "brwz".into(), pwd: "browser-password-24char".into() },
        Duration::from_secs(30),
        identity(),
        identity().fingerprint.clone(),
        active,
        now,
    ) else {
        return;
    };
    // A valid check from the sender first: DTLS is taken only after one.
    let check = Builder::new(stun::BINDING_REQUEST, [9; 12])
        .attribute(stun::ATTR_USERNAME, b"gwuf:brwz")
        .attribute(stun::ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff])
        .attribute(stun::ATTR_ICE_CONTROLLING, &[1; 8])
        .message_integrity(b"gateway-password-24chars")
        .fingerprint();
    leg.handle_input(now, WebLegInput::Packet { from, to: None, data: &check, bridged_from: None });
    drain(&mut leg);
    // The fuzzer's bytes as DTLS records, cut where it says.
    let Some((&piece, rest)) = data.split_first() else { return };
    for (i, chunk) in rest.chunks(usize::from(piece).max(13)).enumerate() {
        let mut datagram = chunk.to_vec();
        datagram[0] = 20 + (datagram[0] % 44); // a DTLS first byte (RFC 7983)
        let at = now + Duration::from_millis(10 * i as u64);
        leg.handle_input(at, WebLegInput::Packet { from, to: None, data: &datagram, bridged_from: None });
        drain(&mut leg);
        leg.handle_input(at + Duration::from_secs(2), WebLegInput::Timeout);
        drain(&mut leg);
    }
}

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
            // Half the inputs as if bridged from an ICE-TCP connection.
            let bridged_from = (data.len() % 2 == 1).then(|| "192.0.2.9:40000".parse().ok()).flatten();
            let _ = agent.handle_input(now, IceInput::Stun { pair: from.into(), data, bridged_from });
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
    dtls_through_the_leg(data, data.len() % 2 == 0);
});
