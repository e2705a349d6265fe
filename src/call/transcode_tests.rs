//! Negotiation under `[media] transcode`: when a call is transcoded, what
//! each side is offered, and what the relay is told.

use std::time::Duration;

use super::negotiate::{self, FarOffer, NegotiationContext, Negotiator, WebLocal};
use crate::config::{SrtpPolicy, TranscodePolicy};
use crate::media::transcode::{SipCodec, TranscodeSpec};
use crate::random::Random;
use crate::sdp::{Codec, CodecName, Description};
use crate::webrtc::dtls::DtlsIdentity;

const CHROMIUM_OFFER: &str = include_str!("../../tests/fixtures/sdp/chromium-offer.sdp");
const PBX_OFFER: &str = include_str!("../../tests/fixtures/sdp/sip-pbx-offer.sdp");

/// Chromium's offer with Opus as its only audio codec (a page that set
/// its codec preferences), telephone-event at 48 kHz only.
fn opus_only_offer() -> String {
    CHROMIUM_OFFER
        .lines()
        .map(|l| {
            if l.starts_with("m=audio") {
                "m=audio 50217 UDP/TLS/RTP/SAVPF 111 110".to_string()
            } else {
                l.to_string()
            }
        })
        .filter(|l| {
            !["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
                .iter()
                .any(|p| l.starts_with(p))
                || l.contains(":111 ")
                || l.contains(":110 ")
        })
        .map(|l| l + "\r\n")
        .collect()
}

fn local(identity: &DtlsIdentity) -> WebLocal<'_> {
    WebLocal {
        addresses: &[],
        port: 20002,
        tcp_port: 0,
        identity,
        consent_timeout: Duration::from_secs(30),
        rtp_timeout: Duration::from_secs(30),
    }
}

fn codec(pt: u8, name: CodecName, clock_rate: u32) -> Codec {
    Codec {
        pt,
        name,
        clock_rate,
        channels: 1,
        fmtp: None,
    }
}

fn labels(codecs: &[Codec]) -> Vec<String> {
    codecs
        .iter()
        .map(|c| format!("{} {}/{}", c.pt, c.name.encoding(), c.clock_rate))
        .collect()
}

/// The far end's answer: PCMU 0 and telephone-event 101.
fn pcmu_answer() -> Vec<Codec> {
    vec![
        codec(0, CodecName::Pcmu, 8000),
        codec(101, CodecName::TelephoneEvent, 8000),
    ]
}

fn negotiate_with(
    offer: &str,
    policy: TranscodePolicy,
    far_answer: &[Codec],
) -> Result<negotiate::Negotiated, crate::sdp::SdpError> {
    let identity = DtlsIdentity::generate().unwrap();
    let mut local = local(&identity);
    let addresses = ["198.51.100.1".parse().unwrap()];
    local.addresses = &addresses;
    let plan = negotiate::outbound(offer, true, policy, &mut Random::seeded(5))?;
    negotiate::negotiate(&plan, far_answer, &local, &mut Random::seeded(6))
}

#[test]
fn an_opus_only_browser_reaches_a_g711_switch_through_the_transcoder() {
    let offer = opus_only_offer();
    // The far end is offered the browser's Opus and the G.711 pair the
    // relay can make of it, with telephone-event at its rate.
    let plan = negotiate::outbound(
        &offer,
        true,
        TranscodePolicy::WhenNeeded,
        &mut Random::seeded(5),
    )
    .unwrap();
    assert_eq!(
        labels(&plan.far_offer_codecs),
        [
            "111 opus/48000",
            "9 G722/8000",
            "0 PCMU/8000",
            "8 PCMA/8000",
            "110 telephone-event/48000",
            "101 telephone-event/8000"
        ]
    );
    let n = negotiate_with(&offer, TranscodePolicy::WhenNeeded, &pcmu_answer()).unwrap();
    assert!(n.codecs.transcoded);
    assert_eq!(
        (n.codecs.web.as_str(), n.codecs.sip.as_str()),
        ("opus/48000", "pcmu/8000")
    );
    assert_eq!(
        n.payload_map.transcode(),
        Some(TranscodeSpec {
            web_pt: 111,
            sip_pt: 0,
            sip_codec: SipCodec::Pcmu
        })
    );
    assert_eq!(n.payload_map.sip_telephone_event(), Some((101, 8000)));
    // The browser's answer: its Opus and its telephone-event.
    let answer = Description::parse(&n.web_sdp).unwrap();
    assert_eq!(
        labels(&answer.audio.codecs),
        ["111 opus/48000", "110 telephone-event/48000"]
    );
    // In-band FEC asked for, whatever the browser's offer said.
    assert_eq!(
        answer.audio.codecs[0].fmtp.as_deref(),
        Some("minptime=10;useinbandfec=1")
    );
    // Never: the far end hears only of Opus, and G.711 is no answer.
    let plan =
        negotiate::outbound(&offer, true, TranscodePolicy::Never, &mut Random::seeded(5)).unwrap();
    assert_eq!(
        labels(&plan.far_offer_codecs),
        ["111 opus/48000", "110 telephone-event/48000"]
    );
    assert!(negotiate_with(&offer, TranscodePolicy::Never, &pcmu_answer()).is_err());
}

#[test]
fn when_needed_passes_through_what_both_legs_take() {
    let n = negotiate_with(CHROMIUM_OFFER, TranscodePolicy::WhenNeeded, &pcmu_answer()).unwrap();
    assert!(!n.codecs.transcoded);
    assert_eq!(n.payload_map.transcode(), None);
    assert_eq!(
        (n.codecs.web.as_str(), n.codecs.sip.as_str()),
        ("pcmu/8000", "pcmu/8000")
    );
}

#[test]
fn prefer_opus_web_transcodes_g711_and_passes_opus_through() {
    let n = negotiate_with(
        CHROMIUM_OFFER,
        TranscodePolicy::PreferOpusWeb,
        &pcmu_answer(),
    )
    .unwrap();
    assert!(n.codecs.transcoded);
    assert_eq!(n.codecs.web, "opus/48000");
    let answer = Description::parse(&n.web_sdp).unwrap();
    assert_eq!(answer.audio.codecs[0].name, CodecName::Opus);
    // A far end that takes Opus gets it as it is.
    let opus = Codec {
        channels: 2,
        ..codec(107, CodecName::Opus, 48_000)
    };
    let n = negotiate_with(CHROMIUM_OFFER, TranscodePolicy::PreferOpusWeb, &[opus]).unwrap();
    assert!(!n.codecs.transcoded);
    assert_eq!(n.codecs.sip, "opus/48000");
    // A G.722 switch is transcoded too (Opus toward the browser)...
    let g722 = [codec(9, CodecName::G722, 8000)];
    let n = negotiate_with(CHROMIUM_OFFER, TranscodePolicy::PreferOpusWeb, &g722).unwrap();
    assert!(n.codecs.transcoded);
    assert_eq!(
        n.payload_map.transcode().map(|t| t.sip_codec),
        Some(SipCodec::G722)
    );
    // ...and passed through when the browser's G.722 will do.
    let n = negotiate_with(CHROMIUM_OFFER, TranscodePolicy::WhenNeeded, &g722).unwrap();
    assert!(!n.codecs.transcoded);
    assert_eq!(n.codecs.web, "g722/8000");
}

fn context(identity: &DtlsIdentity, transcode: TranscodePolicy) -> NegotiationContext {
    NegotiationContext {
        web_addresses: vec!["198.51.100.1".parse().unwrap()],
        web_port: 20002,
        web_tcp_port: 0,
        sip_address: "192.0.2.10".parse().unwrap(),
        sip_port: 30000,
        web_enable_dtls: true,
        sip_srtp: SrtpPolicy::Off,
        transcode,
        identity: identity.clone(),
        consent_timeout: Duration::from_secs(30),
        rtp_timeout: Duration::from_secs(30),
    }
}

/// The browser's answer to `offer`: Chromium's, taking `pt` (and the
/// telephone-event at its rate).
fn browser_answer(offer: &str, pt: u8) -> String {
    let ours = Description::parse(offer).unwrap();
    let chosen = ours.audio.codecs.iter().find(|c| c.pt == pt).unwrap();
    let event = ours
        .audio
        .codecs
        .iter()
        .find(|c| c.is_telephone_event() && c.clock_rate == chosen.clock_rate);
    let mut pts = vec![chosen.pt];
    pts.extend(event.map(|e| e.pt));
    let m_line = format!(
        "m=audio 50217 UDP/TLS/RTP/SAVPF {}",
        pts.iter().map(u8::to_string).collect::<Vec<_>>().join(" ")
    );
    let mut text = String::new();
    for line in CHROMIUM_OFFER.lines() {
        if line.starts_with("m=audio") {
            text += &m_line;
        } else if line.starts_with("a=rtpmap:")
            || line.starts_with("a=fmtp:")
            || line.starts_with("a=rtcp-fb:")
        {
            continue;
        } else if line.starts_with("a=setup:") {
            text += "a=setup:active";
        } else {
            text += line;
        }
        text += "\r\n";
        if line.starts_with("m=audio") {
            for c in std::iter::once(chosen).chain(event) {
                text += &format!("a=rtpmap:{}\r\n", c.rtpmap());
            }
        }
    }
    text
}

#[test]
fn an_incoming_g711_call_reaches_the_browser_as_opus_under_prefer_opus_web() {
    let identity = DtlsIdentity::generate().unwrap();
    let far = FarOffer::check(PBX_OFFER, SrtpPolicy::Off).unwrap();
    let (mut negotiator, web_offer) = Negotiator::inbound(
        context(&identity, TranscodePolicy::PreferOpusWeb),
        far,
        Random::seeded(3),
    )
    .unwrap();
    let offered = Description::parse(&web_offer).unwrap();
    assert_eq!(
        labels(&offered.audio.codecs),
        [
            "111 opus/48000",
            "8 PCMA/8000",
            "0 PCMU/8000",
            "9 G722/8000",
            "101 telephone-event/8000",
            "110 telephone-event/48000"
        ],
        "Opus first, then the far end's codecs"
    );
    let plan = negotiator
        .browser_answered(&browser_answer(&web_offer, 111))
        .unwrap();
    assert!(plan.codecs.transcoded);
    assert_eq!(plan.codecs.sip, "pcma/8000", "the far end's first G.711");
    assert_eq!(
        plan.payload_map.transcode(),
        Some(TranscodeSpec {
            web_pt: 111,
            sip_pt: 8,
            sip_codec: SipCodec::Pcma
        })
    );
    let sip_answer = Description::parse(plan.sip_sdp.as_ref().unwrap()).unwrap();
    assert_eq!(
        labels(&sip_answer.audio.codecs),
        ["8 PCMA/8000", "101 telephone-event/8000"]
    );
    // The far end moves to PCMU only: still transcoded, now to µ-law.
    let reoffer = "v=0\r\no=pbx 4711 4712 IN IP4 192.0.2.20\r\ns=call\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
                   m=audio 40002 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    let re = negotiator.far_reoffer(reoffer).unwrap();
    assert!(re.moved.codecs.transcoded);
    assert_eq!(re.moved.codecs.sip, "pcmu/8000");
    assert_eq!(
        re.moved.payload_map.transcode().map(|t| t.sip_codec),
        Some(SipCodec::Pcmu)
    );
    // A browser that takes the far end's PCMU instead: no transcoding.
    let far = FarOffer::check(PBX_OFFER, SrtpPolicy::Off).unwrap();
    let (mut negotiator, web_offer) = Negotiator::inbound(
        context(&identity, TranscodePolicy::PreferOpusWeb),
        far,
        Random::seeded(3),
    )
    .unwrap();
    let plan = negotiator
        .browser_answered(&browser_answer(&web_offer, 0))
        .unwrap();
    assert!(!plan.codecs.transcoded);
}

#[test]
fn when_needed_offers_the_browser_only_the_far_ends_codecs() {
    let identity = DtlsIdentity::generate().unwrap();
    let far = FarOffer::check(PBX_OFFER, SrtpPolicy::Off).unwrap();
    let (_, web_offer) = Negotiator::inbound(
        context(&identity, TranscodePolicy::WhenNeeded),
        far,
        Random::seeded(3),
    )
    .unwrap();
    let offered = Description::parse(&web_offer).unwrap();
    assert!(!offered
        .audio
        .codecs
        .iter()
        .any(|c| c.name == CodecName::Opus));
}

#[test]
fn a_delayed_offer_call_transcodes_once_the_far_end_answers_in_its_ack() {
    let identity = DtlsIdentity::generate().unwrap();
    let (mut negotiator, web_offer) = Negotiator::inbound_without_offer(
        context(&identity, TranscodePolicy::PreferOpusWeb),
        Random::seeded(4),
    )
    .unwrap();
    let plan = negotiator
        .browser_answered(&browser_answer(&web_offer, 111))
        .unwrap();
    // Our offer in the 200 names every G.711 the far end may choose.
    let our_offer = Description::parse(plan.sip_sdp.as_ref().unwrap()).unwrap();
    assert_eq!(
        labels(&our_offer.audio.codecs),
        ["0 PCMU/8000", "8 PCMA/8000", "101 telephone-event/8000"]
    );
    let ack = "v=0\r\no=pbx 1 1 IN IP4 192.0.2.20\r\ns=call\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
               m=audio 40004 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n";
    let moved = negotiator.far_answered_in_ack(ack).unwrap();
    assert!(moved.codecs.transcoded);
    assert_eq!(
        moved
            .payload_map
            .transcode()
            .map(|t| (t.sip_pt, t.sip_codec)),
        Some((8, SipCodec::Pcma))
    );
}
