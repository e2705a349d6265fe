//! The media input path as the relay runs it on a datagram from the network:
//! RFC 7983 classification, RTP header parsing, SRTP/SRTCP unprotect, the
//! RTCP sender rewrite of the path toward the browser, and a
//! protect → unprotect round trip of whatever parses as RTP/RTCP. Never
//! panics; a packet we protected always opens again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::media::rtp::{self, WebPacketKind};
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else { return };
    let profile = SrtpProfile::ALL[usize::from(selector) % SrtpProfile::ALL.len()];
    let keys = SrtpKeyMaterial::new(profile, &vec![1; profile.master_key_len()], &vec![2; profile.master_salt_len()]).unwrap();
    let mut rx = SrtpContext::new(&keys).unwrap();
    let kind = rtp::classify(packet);
    let mut buf = [0u8; 2048];
    let len = packet.len().min(1500);
    buf[..len].copy_from_slice(&packet[..len]);
    match kind {
        WebPacketKind::Rtp => {
            let _ = rtp::rtp_header_len(&buf[..len]);
            let _ = rx.unprotect_rtp(&mut buf[..len]);
        }
        WebPacketKind::Rtcp => {
            // The relay renames the SIP side's RTCP senders toward the browser.
            let mut renamed = buf;
            rtp::rewrite_rtcp_sender(&mut renamed[..len], rtp::rtcp_sender_ssrc(&buf[..len]).unwrap_or(0), 0x5eb5_5eb5, 960);
            let _ = rx.unprotect_rtcp(&mut buf[..len]);
        }
        _ => {}
    }
    // Round trip: what we protect, a fresh receiver opens to the same bytes.
    let mut tx = SrtpContext::new(&keys).unwrap();
    let mut fresh = SrtpContext::new(&keys).unwrap();
    buf[..len].copy_from_slice(&packet[..len]);
    let rtcp = kind == WebPacketKind::Rtcp;
    let protected = if rtcp { tx.protect_rtcp(&mut buf, len) } else { tx.protect_rtp(&mut buf, len) };
    if let Ok(n) = protected {
        let opened = if rtcp { fresh.unprotect_rtcp(&mut buf[..n]) } else { fresh.unprotect_rtp(&mut buf[..n]) };
        assert_eq!(opened, Ok(len));
        assert_eq!(&buf[..len], &packet[..len]);
    }
});
