//! The call machine and the call plan, with virtual time.

use crate::random::Random;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::negotiate::{self, WebLocal};
use super::*;
use crate::config::TranscodePolicy;
use crate::media::relay::PayloadMap;
use crate::sdp::{Codec, CodecName, Description};
use crate::webrtc::stun::{self, Builder};

const CHROMIUM_OFFER: &str = include_str!("../../tests/fixtures/sdp/chromium-offer.sdp");

fn browser() -> SocketAddr {
    "192.0.2.7:50000".parse().unwrap()
}

fn spec(keying: LegKeying) -> WebLegSpec {
    WebLegSpec {
        local_ice: IceCredentials {
            ufrag: "gwuf".into(),
            pwd: "gateway-password-24chars".into(),
        },
        remote_ice: IceCredentials {
            ufrag: "brwz".into(),
            pwd: "browser-password-24char".into(),
        },
        keying,
        consent_timeout: Duration::from_secs(30),
        rtp_timeout: Duration::from_secs(20),
    }
}

fn sdes_call() -> Call {
    let mut call = Call::outbound("c1".into());
    call.prepare_answer(spec(LegKeying::Sdes), "v=0 our answer".into());
    call
}

fn drain(call: &mut Call) -> Vec<CallOutput> {
    std::iter::from_fn(|| match call.poll_output() {
        CallOutput::Timeout(_) => None,
        output => Some(output),
    })
    .collect()
}

/// A browser's ICE check, nominating when `nominate`.
fn check(tid: u8, nominate: bool) -> Vec<u8> {
    let mut b = Builder::new(stun::BINDING_REQUEST, [tid; 12])
        .attribute(stun::ATTR_USERNAME, b"gwuf:brwz")
        .attribute(stun::ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff])
        .attribute(stun::ATTR_ICE_CONTROLLING, &[1; 8]);
    if nominate {
        b = b.attribute(stun::ATTR_USE_CANDIDATE, &[]);
    }
    b.message_integrity(b"gateway-password-24chars")
        .fingerprint()
}

fn ended(outputs: &[CallOutput]) -> Option<(String, Option<u16>)> {
    outputs.iter().find_map(|o| match o {
        CallOutput::Notify(SessionEvent::CallEnded {
            reason, sip_status, ..
        }) => Some((reason.clone(), *sip_status)),
        _ => None,
    })
}

fn finished(outputs: &[CallOutput]) -> bool {
    outputs.iter().any(|o| matches!(o, CallOutput::Finished(_)))
}

/// Replies and media leave from the address of ours each check came to.
#[test]
fn replies_leave_from_the_address_the_browser_talked_to() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    call.far_answered(t0);
    drain(&mut call);
    let first: std::net::IpAddr = "192.0.2.10".parse().unwrap();
    let second: std::net::IpAddr = "198.51.100.10".parse().unwrap();
    call.handle_web_packet(t0, browser(), Some(first), &check(1, false), None);
    let out = drain(&mut call);
    assert!(
        matches!(&out[0], CallOutput::Transmit { to, from, .. } if *to == browser() && *from == Some(first)),
        "{out:?}"
    );
    assert_eq!(
        out[1],
        CallOutput::MediaRemote(crate::webrtc::ice::Pair {
            remote: browser(),
            local: Some(first)
        })
    );
    // A check on the browser's other pair is answered from there; its
    // nomination moves media to that pair.
    call.handle_web_packet(t0, browser(), Some(second), &check(2, true), None);
    let out = drain(&mut call);
    assert!(
        matches!(&out[0], CallOutput::Transmit { from, .. } if *from == Some(second)),
        "{out:?}"
    );
    assert!(
        out.contains(&CallOutput::MediaRemote(crate::webrtc::ice::Pair {
            remote: browser(),
            local: Some(second)
        }))
    );
}

#[test]
fn answered_call_gets_our_sdp_then_ice_selects_the_browser() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    // Before the answer the browser has no SDP of ours: its packets are ignored.
    call.handle_web_packet(t0, browser(), None, &check(1, true), None);
    assert_eq!(drain(&mut call), vec![]);
    assert_eq!(
        call.next_timeout(),
        None,
        "nothing to time before the answer"
    );

    call.far_answered(t0);
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Notify(SessionEvent::CallAnswered {
            call: "c1".into(),
            sdp: Some("v=0 our answer".into()),
        })]
    );
    assert_eq!(call.state(), CallState::Answered);
    // SDES: the first valid check already carries media (RFC 8445 §12.1).
    call.handle_web_packet(t0, browser(), None, &check(2, false), None);
    let out = drain(&mut call);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(&out[0], CallOutput::Transmit { to, .. } if *to == browser()));
    assert_eq!(out[1], CallOutput::MediaRemote(browser().into()));
    // Nominating the same address changes nothing; another one moves media.
    call.handle_web_packet(t0, browser(), None, &check(3, true), None);
    assert_eq!(drain(&mut call).len(), 1);
    let other: SocketAddr = "192.0.2.7:50002".parse().unwrap();
    call.handle_web_packet(t0, other, None, &check(4, true), None);
    let out = drain(&mut call);
    assert!(
        out.contains(&CallOutput::MediaRemote(other.into())),
        "{out:?}"
    );
}

#[test]
fn lost_consent_ends_the_call_with_media_timeout_and_a_bye() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    call.far_answered(t0);
    drain(&mut call);
    call.handle_web_packet(t0, browser(), None, &check(1, true), None);
    drain(&mut call);
    // Media flows (so only consent can run out).
    for s in 1..40 {
        call.media_progress(t0 + Duration::from_secs(s), s * 50);
    }
    let at = call.next_timeout().unwrap();
    assert_eq!(
        at,
        t0 + Duration::from_secs(30),
        "the consent timer comes first"
    );
    call.handle_timeout(at - Duration::from_millis(1));
    assert_eq!(drain(&mut call), vec![]);
    call.handle_timeout(at);
    let out = drain(&mut call);
    assert!(out.contains(&CallOutput::Far(FarRequest::Hangup { answered: true })));
    assert_eq!(ended(&out), Some(("media_timeout".into(), None)));
    assert!(finished(&out));
    assert_eq!(call.next_timeout(), None);
}

#[test]
fn no_media_from_the_browser_ends_the_call() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    call.far_answered(t0);
    drain(&mut call);
    call.media_progress(t0, 0);
    call.media_progress(t0 + Duration::from_secs(5), 100);
    // Consent checks keep coming, but the packet count stops at 100.
    for s in 6..=25 {
        let now = t0 + Duration::from_secs(s);
        call.handle_web_packet(now, browser(), None, &check(s as u8, true), None);
        call.media_progress(now, 100);
        call.handle_timeout(now);
    }
    let out = drain(&mut call);
    assert_eq!(ended(&out), Some(("media_timeout".into(), None)), "{out:?}");
}

#[test]
fn an_answer_without_negotiated_sdp_is_an_error() {
    let mut call = Call::outbound("c2".into());
    call.far_answered(Instant::now());
    let out = drain(&mut call);
    assert_eq!(ended(&out), Some(("error".into(), None)));
    assert!(out.contains(&CallOutput::Far(FarRequest::Hangup { answered: false })));
}

#[test]
fn hangup_before_the_answer_cancels() {
    let mut call = sdes_call();
    call.far_ringing();
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Notify(SessionEvent::CallRinging {
            call: "c1".into()
        })]
    );
    call.hangup();
    let out = drain(&mut call);
    assert_eq!(
        out[0],
        CallOutput::Far(FarRequest::Hangup { answered: false })
    );
    assert_eq!(ended(&out), Some(("hangup".into(), None)));
    assert!(finished(&out));
    // Only once.
    call.hangup();
    call.far_ended(Some(487));
    assert_eq!(drain(&mut call), vec![]);
}

#[test]
fn far_end_refusal_and_hangup() {
    let t0 = Instant::now();
    let mut rejected = sdes_call();
    rejected.far_ended(Some(486));
    let out = drain(&mut rejected);
    assert_eq!(ended(&out), Some(("rejected".into(), Some(486))));
    assert!(
        !out.iter().any(|o| matches!(o, CallOutput::Far(_))),
        "nothing more goes to a far end that refused"
    );

    let mut cancelled = sdes_call();
    cancelled.far_ended(Some(487));
    assert_eq!(
        ended(&drain(&mut cancelled)),
        Some(("cancelled".into(), Some(487)))
    );

    let mut answered = sdes_call();
    answered.far_answered(t0);
    answered.far_ended(None);
    assert_eq!(
        ended(&drain(&mut answered)),
        Some(("remote_hangup".into(), None))
    );
}

#[test]
fn early_media_then_answer_starts_the_leg_once() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    call.far_early_media(t0);
    let out = drain(&mut call);
    assert!(
        matches!(&out[0], CallOutput::Notify(SessionEvent::CallEarlyMedia { sdp, .. }) if sdp == "v=0 our answer")
    );
    call.handle_web_packet(t0, browser(), None, &check(1, true), None);
    assert!(drain(&mut call).contains(&CallOutput::MediaRemote(browser().into())));
    call.far_answered(t0 + Duration::from_secs(3));
    let out = drain(&mut call);
    assert!(matches!(
        &out[0],
        CallOutput::Notify(SessionEvent::CallAnswered { .. })
    ));
    // The leg kept its selection: a consent check is answered, no re-selection needed.
    call.handle_web_packet(
        t0 + Duration::from_secs(4),
        browser(),
        None,
        &check(2, false),
        None,
    );
    assert!(matches!(
        drain(&mut call).as_slice(),
        [CallOutput::Transmit { .. }]
    ));
}

#[test]
fn hold_and_resume() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    assert_eq!(call.hold(), Err(CallError::NotAnswered("calling")));
    call.far_answered(t0);
    drain(&mut call);
    assert_eq!(call.resume(), Err(CallError::NotHeld));
    call.hold().unwrap();
    assert_eq!(drain(&mut call), vec![CallOutput::Far(FarRequest::Hold)]);
    call.far_hold_changed(true, Party::Local);
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Notify(SessionEvent::CallHeld {
            call: "c1".into(),
            by: "local".into()
        })]
    );
    assert_eq!(call.hold(), Err(CallError::AlreadyHeld));
    call.resume().unwrap();
    call.far_hold_changed(false, Party::Local);
    assert_eq!(
        drain(&mut call),
        vec![
            CallOutput::Far(FarRequest::Resume),
            CallOutput::Notify(SessionEvent::CallResumed {
                call: "c1".into(),
                by: "local".into()
            })
        ]
    );
    // A remote hold is reported as such.
    call.far_hold_changed(true, Party::Remote);
    assert!(
        matches!(&drain(&mut call)[0], CallOutput::Notify(SessionEvent::CallHeld { by, .. }) if by == "remote")
    );
    call.hangup();
    drain(&mut call);
    assert_eq!(call.hold(), Err(CallError::Ended));
}

#[test]
fn dtmf_from_the_far_end_only_while_connected() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    call.far_dtmf('5');
    assert_eq!(drain(&mut call), vec![]);
    call.far_answered(t0);
    drain(&mut call);
    call.far_dtmf('#');
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Notify(SessionEvent::CallDtmf {
            call: "c1".into(),
            digit: "#".into()
        })]
    );
}

fn codec(pt: u8, name: CodecName, clock: u32, channels: u8) -> Codec {
    Codec {
        pt,
        name,
        clock_rate: clock,
        channels,
        fmtp: None,
    }
}

/// A host with two addresses: both are candidates, the first is c=.
const WEB_ADDRESSES: [std::net::IpAddr; 2] = [
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)),
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
];

fn local(identity: &crate::webrtc::dtls::DtlsIdentity) -> WebLocal<'_> {
    WebLocal {
        addresses: &WEB_ADDRESSES,
        port: 20002,
        tcp_port: 0,
        identity,
        consent_timeout: Duration::from_secs(30),
        rtp_timeout: Duration::from_secs(30),
    }
}

#[test]
fn plan_maps_payload_types_between_the_legs() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let plan = negotiate::outbound(
        CHROMIUM_OFFER,
        true,
        TranscodePolicy::WhenNeeded,
        &mut Random::seeded(5),
    )
    .unwrap();
    assert!(plan.far_offer_codecs[0].name == CodecName::Opus);
    assert!(plan.local_ice.ufrag.len() >= 4 && plan.local_ice.pwd.len() >= 22);
    // The far end takes PCMU and telephone-event under other numbers.
    let pcmu = plan
        .far_offer_codecs
        .iter()
        .find(|c| c.name == CodecName::Pcmu)
        .unwrap()
        .clone();
    let te8k = plan
        .far_offer_codecs
        .iter()
        .find(|c| c.is_telephone_event() && c.clock_rate == 8000)
        .unwrap()
        .clone();
    let far = vec![
        codec(0, CodecName::Pcmu, 8000, 1),
        codec(101, CodecName::TelephoneEvent, 8000, 1),
    ];
    let n = negotiate::negotiate(&plan, &far, &local(&identity), &mut Random::seeded(6)).unwrap();
    assert_eq!(n.codecs.web, "pcmu/8000");
    assert!(!n.codecs.transcoded);
    let expected =
        PayloadMap::new(&[(pcmu.pt, 0, 8000)]).with_telephone_event(te8k.pt, 8000, 101, 8000);
    assert_eq!(
        n.payload_map.sip_telephone_event(),
        expected.sip_telephone_event()
    );
    let answer = Description::parse(&n.web_sdp).unwrap();
    assert_eq!(answer.audio.port, 20002);
    assert_eq!(
        answer.audio.codecs[0].pt, pcmu.pt,
        "the browser keeps its own numbers"
    );
    assert!(answer.audio.fingerprint.is_some());
    assert_eq!(answer.audio.ice.as_ref().unwrap(), &plan.local_ice);
    assert_eq!(answer.audio.ssrc, Some(n.web_ssrc));
    assert!(matches!(
        n.leg.keying,
        LegKeying::Dtls { active: false, .. }
    ));
    assert!(n.sdes_keys.is_none());
}

#[test]
fn plan_answers_an_sdes_offer_with_sdes() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let sdes_offer: String = CHROMIUM_OFFER
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint") && !l.starts_with("a=setup"))
        .flat_map(|l| {
            let mut v = vec![l.to_string()];
            if l.starts_with("a=rtcp-mux") {
                v.push("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz".into());
            }
            v
        })
        .map(|l| l + "\r\n")
        .collect();
    let plan = negotiate::outbound(
        &sdes_offer,
        true,
        TranscodePolicy::WhenNeeded,
        &mut Random::seeded(5),
    )
    .unwrap();
    let far = negotiate::outbound(
        &sdes_offer,
        true,
        TranscodePolicy::WhenNeeded,
        &mut Random::seeded(5),
    )
    .unwrap()
    .far_offer_codecs;
    let n =
        negotiate::negotiate(&plan, &far[..1], &local(&identity), &mut Random::seeded(6)).unwrap();
    let answer = Description::parse(&n.web_sdp).unwrap();
    assert!(answer.audio.fingerprint.is_none());
    assert_eq!(answer.audio.crypto.len(), 1);
    assert_eq!(answer.audio.crypto[0].tag, 1);
    let (inbound, outbound) = n.sdes_keys.unwrap();
    assert_eq!(
        &inbound, &plan.offer.audio.crypto[0].keys,
        "we decrypt with the browser's key"
    );
    assert_eq!(&outbound, &answer.audio.crypto[0].keys);
    assert!(matches!(n.leg.keying, LegKeying::Sdes));
    // SDES only: a DTLS-only offer is refused before anything happens.
    assert!(matches!(
        negotiate::outbound(
            CHROMIUM_OFFER,
            false,
            TranscodePolicy::WhenNeeded,
            &mut Random::seeded(5)
        ),
        Err(crate::sdp::SdpError::CryptoRequired)
    ));
}

#[test]
fn plan_refuses_what_the_far_end_cannot_take() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let plan = negotiate::outbound(
        CHROMIUM_OFFER,
        true,
        TranscodePolicy::WhenNeeded,
        &mut Random::seeded(5),
    )
    .unwrap();
    let far = vec![codec(18, CodecName::Other("G729".into()), 8000, 1)];
    assert!(negotiate::negotiate(&plan, &far, &local(&identity), &mut Random::seeded(6)).is_err());
    assert!(negotiate::outbound(
        "v=0\r\nnot sdp",
        true,
        TranscodePolicy::WhenNeeded,
        &mut Random::seeded(5)
    )
    .is_err());
}

fn inbound_call(t0: Instant) -> Call {
    Call::inbound(
        "in1".into(),
        caller("2000", "1001"),
        "v=0 our offer".into(),
        Duration::from_secs(45),
        t0,
    )
}

#[test]
fn an_incoming_call_is_offered_then_answered() {
    let t0 = Instant::now();
    let mut call = inbound_call(t0);
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Notify(SessionEvent::CallIncoming {
            call: "in1".into(),
            caller: caller("2000", "1001"),
            sdp: "v=0 our offer".into(),
        })]
    );
    assert_eq!(call.state(), CallState::Incoming);
    assert_eq!(call.hold(), Err(CallError::NotAnswered("incoming")));
    call.prepare_answer(spec(LegKeying::Sdes), String::new());
    call.browser_answered(t0 + Duration::from_secs(2), Vec::new())
        .unwrap();
    let out = drain(&mut call);
    assert_eq!(
        out[0],
        CallOutput::Far(FarRequest::Accept {
            sdp: String::new(),
            headers: Vec::new()
        })
    );
    assert_eq!(
        out[1],
        CallOutput::Notify(SessionEvent::CallAnswered {
            call: "in1".into(),
            sdp: None
        })
    );
    assert_eq!(call.state(), CallState::Answered);
    // The ring timer is gone; the leg's consent timer runs from the answer.
    assert_eq!(
        call.next_timeout(),
        Some(t0 + Duration::from_secs(22)),
        "rtp timeout first"
    );
    assert_eq!(
        call.browser_answered(t0, Vec::new()),
        Err(CallError::NotIncoming("answered"))
    );
    call.handle_web_packet(
        t0 + Duration::from_secs(3),
        browser(),
        None,
        &check(1, true),
        None,
    );
    assert!(drain(&mut call).contains(&CallOutput::MediaRemote(browser().into())));
}

#[test]
fn an_unanswered_incoming_call_gives_up_with_480() {
    let t0 = Instant::now();
    let mut call = inbound_call(t0);
    drain(&mut call);
    assert_eq!(call.next_timeout(), Some(t0 + Duration::from_secs(45)));
    call.handle_timeout(t0 + Duration::from_secs(44));
    assert_eq!(drain(&mut call), vec![]);
    call.handle_timeout(t0 + Duration::from_secs(45));
    let out = drain(&mut call);
    assert_eq!(out[0], CallOutput::Far(FarRequest::Refuse(480)));
    assert_eq!(ended(&out), Some(("cancelled".into(), Some(480))));
    assert!(finished(&out));
}

#[test]
fn an_incoming_call_rejected_or_cancelled() {
    let t0 = Instant::now();
    let mut call = inbound_call(t0);
    drain(&mut call);
    call.browser_rejected(603).unwrap();
    let out = drain(&mut call);
    assert_eq!(out[0], CallOutput::Far(FarRequest::Refuse(603)));
    assert_eq!(ended(&out), Some(("rejected".into(), Some(603))));
    assert_eq!(call.browser_rejected(486), Err(CallError::Ended));

    // The caller gives up first (CANCEL → 487 toward it).
    let mut call = inbound_call(t0);
    drain(&mut call);
    call.far_ended(Some(487));
    let out = drain(&mut call);
    assert_eq!(ended(&out), Some(("cancelled".into(), Some(487))));
    assert!(!out.iter().any(|o| matches!(o, CallOutput::Far(_))));

    // The browser's session ends while it rings: the caller is refused.
    let mut call = inbound_call(t0);
    drain(&mut call);
    call.hangup();
    let out = drain(&mut call);
    assert_eq!(
        out[0],
        CallOutput::Far(FarRequest::Hangup { answered: false })
    );
}

/// A far end whose answer cannot be used (say, plain RTP when SRTP is
/// required): the browser hears 488, and the far end is told to go away.
#[test]
fn an_unusable_far_answer_ends_the_call_and_tells_the_far_end() {
    let mut call = Call::outbound("c9".into());
    call.far_ringing();
    drain(&mut call);
    call.far_media_unusable(488);
    let out = drain(&mut call);
    assert_eq!(ended(&out), Some(("error".into(), Some(488))));
    assert!(
        out.iter()
            .any(|o| matches!(o, CallOutput::Far(FarRequest::Hangup { .. }))),
        "{out:?}"
    );
    assert!(finished(&out));
    // Once ended, a second report changes nothing.
    call.far_media_unusable(488);
    assert_eq!(drain(&mut call), vec![]);
}

const PBX_OFFER: &str = include_str!("../../tests/fixtures/sdp/sip-pbx-offer.sdp");

fn context(identity: &crate::webrtc::dtls::DtlsIdentity) -> negotiate::NegotiationContext {
    negotiate::NegotiationContext {
        web_addresses: WEB_ADDRESSES.to_vec(),
        web_port: 20002,
        web_tcp_port: 0,
        sip_address: "192.0.2.10".parse().unwrap(),
        sip_port: 30000,
        web_enable_dtls: true,
        sip_srtp: crate::config::SrtpPolicy::Off,
        transcode: TranscodePolicy::WhenNeeded,
        identity: identity.clone(),
        consent_timeout: Duration::from_secs(30),
        rtp_timeout: Duration::from_secs(30),
    }
}

fn far_offer() -> negotiate::FarOffer {
    negotiate::FarOffer::check(PBX_OFFER, crate::config::SrtpPolicy::Off).unwrap()
}

fn plans(outputs: &[CallOutput]) -> Vec<&negotiate::MediaPlan> {
    outputs
        .iter()
        .filter_map(|o| match o {
            CallOutput::ConnectMedia(plan) => Some(&**plan),
            _ => None,
        })
        .collect()
}

/// Outbound: our SIP offer carries the browser's codecs; the far end's 183
/// is negotiated once into one plan, emitted before the browser hears of
/// it, and the 200 that repeats the SDP makes no second plan.
#[test]
fn the_far_answer_becomes_one_media_plan() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let t0 = Instant::now();
    let mut random = Random::seeded(11);
    let plan = negotiate::outbound(
        CHROMIUM_OFFER,
        true,
        TranscodePolicy::WhenNeeded,
        &mut random,
    )
    .unwrap();
    let (negotiator, offer) =
        negotiate::Negotiator::outbound(context(&identity), plan, true, random).unwrap();
    let offer = offer.unwrap();
    assert!(offer.contains("m=audio 30000 RTP/AVP") && offer.contains("c=IN IP4 192.0.2.10"));
    let mut call = Call::outbound("c1".into()).with_negotiator(negotiator);
    let far_answer =
        "v=0\r\no=- 1 1 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\n\
                      m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
                      a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    call.far_progress_sdp(t0, far_answer);
    let out = drain(&mut call);
    let made = plans(&out);
    assert_eq!(made.len(), 1, "{out:?}");
    assert!(
        matches!(out[0], CallOutput::ConnectMedia(_)),
        "the plan comes first"
    );
    let plan = made[0];
    assert_eq!(plan.codecs.sip, "pcmu/8000");
    assert_eq!(plan.far.rtp, "203.0.113.9:40000".parse().unwrap());
    assert_eq!(plan.far.rtcp, Some("203.0.113.9:40001".parse().unwrap()));
    assert!(
        plan.sip_keys.is_none() && plan.web_keys.is_none(),
        "DTLS and plain RTP"
    );
    assert_eq!(plan.leg.keying.as_str(), "dtls");
    let web_sdp = plan.web_sdp.clone().unwrap();
    assert!(out.iter().any(|o| matches!(o,
        CallOutput::Notify(SessionEvent::CallEarlyMedia { sdp, .. }) if *sdp == web_sdp)));
    call.far_answered_sdp(t0, far_answer);
    let out = drain(&mut call);
    assert!(plans(&out).is_empty(), "negotiated once");
    assert_eq!(call.state(), CallState::Answered);
}

/// A far answer that cannot be used ends the call with 488, and the far
/// end is told.
#[test]
fn an_unusable_far_sdp_ends_the_call_with_488() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let mut random = Random::seeded(12);
    let plan = negotiate::outbound(
        CHROMIUM_OFFER,
        true,
        TranscodePolicy::WhenNeeded,
        &mut random,
    )
    .unwrap();
    let (negotiator, _) =
        negotiate::Negotiator::outbound(context(&identity), plan, true, random).unwrap();
    let mut call = Call::outbound("c1".into()).with_negotiator(negotiator);
    call.far_answered_sdp(Instant::now(), "v=0\r\nnot an answer");
    let out = drain(&mut call);
    assert!(plans(&out).is_empty());
    assert_eq!(ended(&out), Some(("error".into(), Some(488))));
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Far(FarRequest::Hangup { .. }))));
}

/// Inbound: the far end's offer gives our offer to the browser; a bad
/// answer is refused and changes nothing; the browser's real answer makes
/// one plan, then our 200 carries the SIP answer the plan wrote.
#[test]
fn the_browser_answer_becomes_one_media_plan_and_our_200() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let t0 = Instant::now();
    let (negotiator, web_offer) =
        negotiate::Negotiator::inbound(context(&identity), far_offer(), Random::seeded(13))
            .unwrap();
    assert!(web_offer.contains("a=ice-lite") && web_offer.contains("a=fingerprint:sha-256"));
    assert!(web_offer.contains("c=IN IP4 198.51.100.1"), "{web_offer}");
    let mut call = Call::inbound(
        "k1".into(),
        caller("sip:caller@pbx", "1001"),
        web_offer.clone(),
        Duration::from_secs(45),
        t0,
    )
    .with_negotiator(negotiator);
    drain(&mut call);
    assert!(matches!(
        call.browser_answer(t0, Some("v=0\r\nnonsense"), Vec::new()),
        Err(Refused::Sdp(_))
    ));
    assert!(
        drain(&mut call).is_empty(),
        "a refused answer changes nothing"
    );
    assert_eq!(call.state(), CallState::Incoming);
    // The browser answers as Chromium does: our offer's codecs, DTLS active.
    let answer = CHROMIUM_OFFER.replace("a=setup:actpass", "a=setup:active");
    let agent = vec![("X-Agent-Id".to_string(), "7".to_string())];
    call.browser_answer(t0, Some(&answer), agent.clone())
        .unwrap();
    let out = drain(&mut call);
    let made = plans(&out);
    assert_eq!(made.len(), 1, "{out:?}");
    let sip_answer = made[0].sip_sdp.clone().unwrap();
    assert!(sip_answer.contains("m=audio 30000 RTP/AVP"), "{sip_answer}");
    // The page's call data goes with our 200.
    assert!(out.contains(&CallOutput::Far(FarRequest::Accept {
        sdp: sip_answer,
        headers: agent
    })));
    assert_eq!(made[0].leg.keying.as_str(), "dtls");
    assert_eq!(call.state(), CallState::Answered);
    assert!(matches!(
        call.browser_answer(t0, Some(&answer), Vec::new()),
        Err(Refused::Call(_))
    ));
}

/// One seed, one negotiation: the same offers, keys and SDP each time.
#[test]
fn negotiation_is_deterministic_for_a_seed() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let offer = |seed| {
        negotiate::Negotiator::inbound(context(&identity), far_offer(), Random::seeded(seed))
            .unwrap()
            .1
    };
    assert_eq!(offer(5), offer(5));
    assert_ne!(offer(5), offer(6));
}

/// The driver's view: commands and the far end's doings go in through
/// `handle_input`, a refused one changes nothing, and `poll_output` ends
/// with the instant the call next needs the time.
#[test]
fn one_input_and_one_output() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    assert!(matches!(
        call.handle_input(t0, CallInput::Hold),
        Err(Refused::Call(CallError::NotAnswered("calling")))
    ));
    assert_eq!(
        call.poll_output(),
        CallOutput::Timeout(None),
        "nothing to wait for yet"
    );
    call.handle_input(t0, CallInput::FarRinging).unwrap();
    call.handle_input(t0, CallInput::FarAnsweredSdp("ignored: prepared by hand"))
        .unwrap();
    let mut outputs = Vec::new();
    let wake = loop {
        match call.poll_output() {
            CallOutput::Timeout(at) => break at,
            output => outputs.push(output),
        }
    };
    assert!(outputs
        .iter()
        .any(|o| matches!(o, CallOutput::Notify(SessionEvent::CallAnswered { .. }))));
    let wake = wake.expect("ICE consent and the RTP timeout are waiting");
    assert!(wake > t0 && wake <= t0 + Duration::from_secs(30));
    call.handle_input(t0, CallInput::Hold).unwrap();
    assert_eq!(call.poll_output(), CallOutput::Far(FarRequest::Hold));
}

/// An incoming offer is checked before anything is made for it.
#[test]
fn far_offers_are_checked_before_ports_are_bound() {
    use crate::config::SrtpPolicy;
    let srtp_offer = include_str!("../../tests/fixtures/sdp/sip-pbx-offer-srtp.sdp");
    assert!(negotiate::FarOffer::check(PBX_OFFER, SrtpPolicy::Off).is_ok());
    assert!(negotiate::FarOffer::check(PBX_OFFER, SrtpPolicy::Optional).is_ok());
    assert!(matches!(
        negotiate::FarOffer::check(PBX_OFFER, SrtpPolicy::Required),
        Err(SdpError::SipSrtpRequired)
    ));
    assert!(negotiate::FarOffer::check(srtp_offer, SrtpPolicy::Required).is_ok());
    assert!(negotiate::FarOffer::check("v=0\r\nnot sdp", SrtpPolicy::Off).is_err());
}

/// An outbound call answered by the far end at 203.0.113.9:40000 (PCMU
/// and telephone-event), its plan taken.
fn answered_outbound(identity: &crate::webrtc::dtls::DtlsIdentity) -> Call {
    let mut random = Random::seeded(21);
    let plan = negotiate::outbound(
        CHROMIUM_OFFER,
        true,
        TranscodePolicy::WhenNeeded,
        &mut random,
    )
    .unwrap();
    let (negotiator, _) =
        negotiate::Negotiator::outbound(context(identity), plan, true, random).unwrap();
    let mut call = Call::outbound("c1".into()).with_negotiator(negotiator);
    call.far_answered_sdp(
        Instant::now(),
        &far_sdp("203.0.113.9", 40000, "0 101", "sendrecv"),
    );
    drain(&mut call);
    assert_eq!(call.state(), CallState::Answered);
    call
}

/// The far end's SDP at `ip`:`port` with payload types `pts` (0 PCMU, 8
/// PCMA, 101 and 96 telephone-event) and `direction`.
fn far_sdp(ip: &str, port: u16, pts: &str, direction: &str) -> String {
    let mut sdp = format!(
        "v=0\r\no=- 9 9 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\n"
    );
    for pt in pts.split(' ') {
        let map = match pt {
            "0" => "PCMU/8000",
            "8" => "PCMA/8000",
            _ => "telephone-event/8000",
        };
        sdp.push_str(&format!("a=rtpmap:{pt} {map}\r\n"));
    }
    sdp.push_str(&format!("a=ssrc:4242 cname:far\r\na={direction}\r\n"));
    sdp
}

fn moves(outputs: &[CallOutput]) -> Vec<&negotiate::FarMove> {
    outputs
        .iter()
        .filter_map(|o| match o {
            CallOutput::MoveFarMedia(m) => Some(&**m),
            _ => None,
        })
        .collect()
}

fn offer_answer(outputs: &[CallOutput]) -> Option<Result<String, u16>> {
    outputs.iter().find_map(|o| match o {
        CallOutput::Far(FarRequest::AnswerOffer(a)) => Some(a.clone()),
        _ => None,
    })
}

/// The far end moves the call (a transfer, a conference bridge): its new
/// offer is answered with the call's codec at its payload types, the relay
/// is retargeted before the answer goes, and the browser is told nothing
/// (its leg is untouched). Hold and resume follow the offer's direction or
/// a `c=0.0.0.0`; an offer without the call's codec is refused with 488
/// and changes nothing.
#[test]
fn a_far_reoffer_moves_the_media_and_leaves_the_browser_leg_alone() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let t0 = Instant::now();
    let mut call = answered_outbound(&identity);
    let moved_sdp = far_sdp("198.51.100.20", 41000, "0 96", "sendrecv");
    call.handle_input(t0, CallInput::FarOffer(Some(&moved_sdp)))
        .unwrap();
    let out = drain(&mut call);
    assert!(
        matches!(out[0], CallOutput::MoveFarMedia(_)),
        "the relay first: {out:?}"
    );
    let moved = moves(&out)[0];
    assert_eq!(moved.far.rtp, "198.51.100.20:41000".parse().unwrap());
    assert_eq!(moved.codecs.sip, "pcmu/8000");
    assert_eq!(moved.payload_map.sip_telephone_event(), Some((96, 8000)));
    assert!(!moved.keys_changed, "plain RTP stays plain");
    let answer = offer_answer(&out).unwrap().unwrap();
    assert!(
        answer.contains("m=audio 30000 RTP/AVP 0 96\r\n") && answer.contains("a=sendrecv"),
        "{answer}"
    );
    assert!(
        !out.iter().any(|o| matches!(o, CallOutput::Notify(_))),
        "nothing for the browser: {out:?}"
    );

    // The same SDP again (a session refresh): answered, the relay and its
    // latch left alone.
    call.handle_input(t0, CallInput::FarOffer(Some(&moved_sdp)))
        .unwrap();
    let out = drain(&mut call);
    assert!(offer_answer(&out).unwrap().is_ok());
    assert!(moves(&out).is_empty(), "a refresh moves nothing: {out:?}");

    // Hold by direction (nothing to move), resume, hold by c=0.0.0.0.
    let hold = far_sdp("198.51.100.20", 41000, "0 96", "sendonly");
    call.handle_input(t0, CallInput::FarOffer(Some(&hold)))
        .unwrap();
    let out = drain(&mut call);
    assert!(moves(&out).is_empty(), "{out:?}");
    assert!(offer_answer(&out).unwrap().unwrap().contains("a=recvonly"));
    assert!(out.iter().any(|o| matches!(o,
        CallOutput::Notify(SessionEvent::CallHeld { by, .. }) if by == "remote")));
    assert_eq!(call.held_by(), Some(Party::Remote));
    let resume = far_sdp("198.51.100.20", 41000, "0 96", "sendrecv");
    call.handle_input(t0, CallInput::FarOffer(Some(&resume)))
        .unwrap();
    assert!(drain(&mut call)
        .iter()
        .any(|o| matches!(o, CallOutput::Notify(SessionEvent::CallResumed { .. }))));
    let blackhole = far_sdp("0.0.0.0", 41000, "0 96", "sendrecv");
    call.handle_input(t0, CallInput::FarOffer(Some(&blackhole)))
        .unwrap();
    assert_eq!(moves(&drain(&mut call)).len(), 1, "sent nowhere while held");
    assert_eq!(call.held_by(), Some(Party::Remote));
    call.handle_input(t0, CallInput::FarOffer(Some(&resume)))
        .unwrap();
    drain(&mut call);
    assert_eq!(call.held_by(), None);

    // PCMA only: the browser leg has PCMU, so nothing fits.
    let other_codec = far_sdp("198.51.100.30", 42000, "8", "sendrecv");
    call.handle_input(t0, CallInput::FarOffer(Some(&other_codec)))
        .unwrap();
    let out = drain(&mut call);
    assert_eq!(offer_answer(&out), Some(Err(488)));
    assert!(moves(&out).is_empty(), "{out:?}");
    assert_eq!(call.state(), CallState::Answered);
    let unreadable = "v=0\r\nm=nonsense";
    call.handle_input(t0, CallInput::FarOffer(Some(unreadable)))
        .unwrap();
    assert_eq!(offer_answer(&drain(&mut call)), Some(Err(488)));

    // A re-INVITE without SDP: our offer keeps the call's media; the
    // answer in the ACK moves it.
    call.handle_input(t0, CallInput::FarOffer(None)).unwrap();
    let out = drain(&mut call);
    let offer = offer_answer(&out).unwrap().unwrap();
    assert!(
        offer.contains("m=audio 30000 RTP/AVP 0 96\r\n") && offer.contains("a=sendrecv"),
        "{offer}"
    );
    assert!(moves(&out).is_empty());
    let answer = far_sdp("198.51.100.40", 43000, "0 96", "sendrecv");
    call.handle_input(t0, CallInput::FarAckAnswer(Some(&answer)))
        .unwrap();
    let out = drain(&mut call);
    assert_eq!(
        moves(&out)[0].far.rtp,
        "198.51.100.40:43000".parse().unwrap()
    );
    // An ACK without the answer it owes ends the call with a BYE.
    call.handle_input(t0, CallInput::FarOffer(None)).unwrap();
    drain(&mut call);
    call.handle_input(t0, CallInput::FarAckAnswer(None))
        .unwrap();
    let out = drain(&mut call);
    assert_eq!(ended(&out), Some(("error".into(), None)));
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Far(FarRequest::Hangup { answered: true }))));
}

/// SRTP on the SIP leg: a new offer with the same suite keeps our key (a
/// fresh one would restart its counter), a new key of theirs is taken, and
/// a key of ours handed back is refused.
#[test]
fn a_far_reoffer_with_new_keys_keeps_ours() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let t0 = Instant::now();
    let mut ctx = context(&identity);
    ctx.sip_srtp = crate::config::SrtpPolicy::Required;
    let mut random = Random::seeded(22);
    let plan = negotiate::outbound(
        CHROMIUM_OFFER,
        true,
        TranscodePolicy::WhenNeeded,
        &mut random,
    )
    .unwrap();
    let (negotiator, offer) = negotiate::Negotiator::outbound(ctx, plan, true, random).unwrap();
    let offer = offer.unwrap();
    let our_line = offer
        .lines()
        .find(|l| l.starts_with("a=crypto:1 "))
        .unwrap()
        .to_string();
    let theirs = |key: &str| {
        far_sdp("203.0.113.9", 40000, "0 101", "sendrecv").replace("RTP/AVP", "RTP/SAVP")
            + &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n")
    };
    let mut call = Call::outbound("c1".into()).with_negotiator(negotiator);
    call.far_answered_sdp(t0, &theirs("WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"));
    assert_eq!(plans(&drain(&mut call)).len(), 1);
    call.handle_input(
        t0,
        CallInput::FarOffer(Some(&theirs("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk"))),
    )
    .unwrap();
    let out = drain(&mut call);
    let answer = offer_answer(&out).unwrap().unwrap();
    assert!(answer.contains(&our_line), "our key kept: {answer}");
    assert!(answer.contains("RTP/SAVP"), "{answer}");
    assert!(moves(&out)[0].keys_changed, "their new key is taken");
    let ours = our_line.trim_start_matches("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:");
    call.handle_input(t0, CallInput::FarOffer(Some(&theirs(ours))))
        .unwrap();
    assert_eq!(offer_answer(&drain(&mut call)), Some(Err(488)));
}

/// An INVITE without SDP (delayed offer): the browser is offered G.711
/// and telephone-event, its answer makes our SIP offer (the codec it
/// chose) for the 200 and a plan with no far address yet; the answer in
/// the ACK moves the media there. An ACK without one ends the call.
#[test]
fn a_delayed_offer_goes_to_the_browser_then_in_our_200() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let t0 = Instant::now();
    let start = |seed| {
        let (negotiator, web_offer) =
            negotiate::Negotiator::inbound_without_offer(context(&identity), Random::seeded(seed))
                .unwrap();
        let mut call = Call::inbound(
            "k1".into(),
            caller("sip:caller@pbx", "1001"),
            web_offer,
            Duration::from_secs(45),
            t0,
        )
        .with_negotiator(negotiator);
        let out = drain(&mut call);
        let offer = out
            .iter()
            .find_map(|o| match o {
                CallOutput::Notify(SessionEvent::CallIncoming { sdp, .. }) => Some(sdp.clone()),
                _ => None,
            })
            .unwrap();
        (call, offer)
    };
    let (mut call, web_offer) = start(23);
    let d = Description::parse(&web_offer).unwrap();
    let names: Vec<String> = d.audio.codecs.iter().map(|c| c.rtpmap()).collect();
    assert_eq!(
        names,
        ["0 PCMU/8000", "8 PCMA/8000", "101 telephone-event/8000"]
    );
    let answer = CHROMIUM_OFFER.replace("a=setup:actpass", "a=setup:active");
    call.browser_answer(t0, Some(&answer), Vec::new()).unwrap();
    let out = drain(&mut call);
    let plan = plans(&out)[0];
    assert!(plan.far.rtp.ip().is_unspecified(), "no far address yet");
    let sip_offer = plan.sip_sdp.clone().unwrap();
    assert!(
        sip_offer.contains("m=audio 30000 RTP/AVP 0 101\r\n") && !sip_offer.contains("rtcp-mux"),
        "{sip_offer}"
    );
    assert!(out.contains(&CallOutput::Far(FarRequest::Accept {
        sdp: sip_offer,
        headers: Vec::new()
    })));
    let far_answer = far_sdp("203.0.113.9", 40000, "0 101", "sendrecv");
    call.handle_input(t0, CallInput::FarAckAnswer(Some(&far_answer)))
        .unwrap();
    let out = drain(&mut call);
    let moved = moves(&out)[0];
    assert_eq!(moved.far.rtp, "203.0.113.9:40000".parse().unwrap());
    assert_eq!(moved.codecs.sip, "pcmu/8000");
    assert!(ended(&out).is_none());

    // The ACK's answer without the codec we offered: the call ends.
    let (mut call, _) = start(24);
    call.browser_answer(t0, Some(&answer), Vec::new()).unwrap();
    drain(&mut call);
    let wrong = far_sdp("203.0.113.9", 40000, "8", "sendrecv");
    call.handle_input(t0, CallInput::FarAckAnswer(Some(&wrong)))
        .unwrap();
    let out = drain(&mut call);
    assert_eq!(ended(&out), Some(("error".into(), None)));
    assert!(out
        .iter()
        .any(|o| matches!(o, CallOutput::Far(FarRequest::Hangup { answered: true }))));
}

/// Early media (a reliable 183) is an agreed exchange: the far end's UPDATE
/// in the early dialog moves it, and the call is still not answered.
#[test]
fn an_early_update_moves_the_early_media() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let t0 = Instant::now();
    let mut random = Random::seeded(22);
    let plan = negotiate::outbound(
        CHROMIUM_OFFER,
        true,
        TranscodePolicy::WhenNeeded,
        &mut random,
    )
    .unwrap();
    let (negotiator, _) =
        negotiate::Negotiator::outbound(context(&identity), plan, true, random).unwrap();
    let mut call = Call::outbound("c1".into()).with_negotiator(negotiator);
    let early = far_sdp("203.0.113.9", 40000, "0 101", "sendrecv");
    call.handle_input(t0, CallInput::FarEarlySdp(&early))
        .unwrap();
    drain(&mut call);
    assert_eq!(call.state(), CallState::EarlyMedia);
    let moved = far_sdp("203.0.113.20", 40100, "0 101", "sendrecv");
    call.handle_input(t0, CallInput::FarOffer(Some(&moved)))
        .unwrap();
    let out = drain(&mut call);
    assert_eq!(
        moves(&out)[0].far.rtp,
        "203.0.113.20:40100".parse().unwrap()
    );
    assert!(offer_answer(&out).unwrap().is_ok(), "{out:?}");
    assert_eq!(call.state(), CallState::EarlyMedia);
}

/// Inbound early media of the browser's own: refused while the option is
/// off and for a delayed offer (nothing changes); allowed, the browser's
/// answer makes the one plan and our 183, the leg starts, and the call
/// stays unanswered (no hold) until the answer, whose 200 carries the same
/// SDP without negotiating again. A reject after early media still works.
#[test]
fn the_browsers_early_media_goes_in_a_183_before_its_answer() {
    let identity = crate::webrtc::dtls::DtlsIdentity::generate().unwrap();
    let t0 = Instant::now();
    let answer = CHROMIUM_OFFER.replace("a=setup:actpass", "a=setup:active");
    let incoming = |negotiator, allowed| {
        let mut call = Call::inbound(
            "k1".into(),
            caller("sip:caller@pbx", "1001"),
            String::new(),
            Duration::from_secs(45),
            t0,
        )
        .with_negotiator(negotiator)
        .allow_early_media(allowed);
        drain(&mut call);
        call
    };
    let offered = || {
        negotiate::Negotiator::inbound(context(&identity), far_offer(), Random::seeded(13))
            .unwrap()
            .0
    };

    let mut off = incoming(offered(), false);
    assert!(matches!(
        off.handle_input(t0, CallInput::BrowserProgress(&answer)),
        Err(Refused::Call(CallError::EarlyMediaDisabled))
    ));
    assert!(drain(&mut off).is_empty());
    assert_eq!(off.state(), CallState::Incoming);

    let delayed =
        negotiate::Negotiator::inbound_without_offer(context(&identity), Random::seeded(3))
            .unwrap()
            .0;
    let mut delayed = incoming(delayed, true);
    assert!(matches!(
        delayed.handle_input(t0, CallInput::BrowserProgress(&answer)),
        Err(Refused::Call(CallError::EarlyMediaNeedsOffer))
    ));
    assert!(drain(&mut delayed).is_empty());

    let mut call = incoming(offered(), true);
    assert!(matches!(
        call.handle_input(
            t0,
            CallInput::BrowserAnswer {
                sdp: None,
                headers: Vec::new()
            }
        ),
        Err(Refused::Call(CallError::AnswerMissing))
    ));
    assert!(matches!(
        call.handle_input(t0, CallInput::BrowserProgress("v=0\r\nnonsense")),
        Err(Refused::Sdp(_))
    ));
    assert!(
        drain(&mut call).is_empty(),
        "a refused answer changes nothing"
    );
    call.handle_input(t0, CallInput::BrowserProgress(&answer))
        .unwrap();
    let out = drain(&mut call);
    let made = plans(&out);
    assert_eq!(made.len(), 1, "{out:?}");
    let sip_answer = made[0].sip_sdp.clone().unwrap();
    assert!(out.contains(&CallOutput::Far(FarRequest::Progress {
        sdp: sip_answer.clone()
    })));
    assert!(call.leg.is_some(), "the web leg starts");
    assert!(
        !out.iter().any(|o| matches!(o, CallOutput::Notify(_))),
        "{out:?}"
    );
    assert_eq!(call.state(), CallState::EarlyMedia);
    assert!(matches!(
        call.handle_input(t0, CallInput::Hold),
        Err(Refused::Call(CallError::NotAnswered("early_media")))
    ));
    assert!(matches!(
        call.handle_input(t0, CallInput::BrowserProgress(&answer)),
        Err(Refused::Call(CallError::NotIncoming("early_media")))
    ));

    call.handle_input(
        t0,
        CallInput::BrowserAnswer {
            sdp: None,
            headers: Vec::new(),
        },
    )
    .unwrap();
    let out = drain(&mut call);
    assert!(plans(&out).is_empty(), "no second plan: {out:?}");
    assert!(out.contains(&CallOutput::Far(FarRequest::Accept {
        sdp: sip_answer,
        headers: Vec::new()
    })));
    assert_eq!(call.state(), CallState::Answered);

    let mut rejected = incoming(offered(), true);
    rejected
        .handle_input(t0, CallInput::BrowserProgress(&answer))
        .unwrap();
    drain(&mut rejected);
    rejected
        .handle_input(t0, CallInput::BrowserReject { status: 486 })
        .unwrap();
    let out = drain(&mut rejected);
    assert!(
        out.contains(&CallOutput::Far(FarRequest::Refuse(486))),
        "{out:?}"
    );
    assert_eq!(rejected.state(), CallState::Ended);
}

/// An incoming call's parties as the SIP side reports them: `from` calls
/// `to`, with neither a display name nor an asserted identity.
fn caller(from: &str, to: &str) -> crate::session::IncomingCaller {
    crate::session::IncomingCaller {
        from: from.into(),
        to: to.into(),
        display_name: None,
        identity: crate::session::CallerIdentity {
            uri: format!("sip:{from}@pbx"),
            display_name: None,
            asserted: false,
        },
        headers: Default::default(),
        auto_answer: None,
    }
}

fn transfer_events(outputs: &[CallOutput]) -> Vec<(String, Option<u16>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            CallOutput::Notify(SessionEvent::CallTransfer {
                state, sip_status, ..
            }) => Some((state.clone(), *sip_status)),
            _ => None,
        })
        .collect()
}

/// A blind transfer: only an answered call, one at a time; the far end's
/// acceptance and progress become `call.transfer` events, a failure leaves
/// the call up (another may follow), success ends it as transferred with
/// a BYE.
#[test]
fn a_transfer_reports_its_progress_and_success_ends_the_call() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    let to = || TransferTarget::To("5001".into());
    assert_eq!(
        call.browser_transfer(t0, to()),
        Err(CallError::NotAnswered("calling"))
    );
    call.far_answered(t0);
    drain(&mut call);
    call.browser_transfer(t0, to()).unwrap();
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Far(FarRequest::Transfer(to()))]
    );
    assert_eq!(
        call.browser_transfer(t0, to()),
        Err(CallError::TransferInProgress)
    );
    call.far_transfer(TransferProgress::Failed(Some(603)));
    let out = drain(&mut call);
    assert_eq!(transfer_events(&out), vec![("failed".into(), Some(603))]);
    assert!(!finished(&out), "a failed transfer leaves the call up");

    call.browser_transfer(t0, to()).unwrap();
    drain(&mut call);
    call.far_transfer(TransferProgress::Accepted);
    call.far_transfer(TransferProgress::Trying(180));
    let out = drain(&mut call);
    assert_eq!(
        transfer_events(&out),
        vec![("accepted".into(), None), ("trying".into(), Some(180))]
    );
    call.far_transfer(TransferProgress::Succeeded);
    let out = drain(&mut call);
    assert!(out.contains(&CallOutput::Far(FarRequest::Hangup { answered: true })));
    assert_eq!(ended(&out), Some(("transferred".into(), None)));
    assert!(finished(&out));
}

/// A transfer with no outcome fails after its timeout; a switch that hangs
/// up on us after taking the REFER has transferred the call.
#[test]
fn a_transfer_times_out_and_a_bye_after_its_acceptance_is_its_success() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    call.far_answered(t0);
    drain(&mut call);
    call.browser_transfer(t0, TransferTarget::To("5001".into()))
        .unwrap();
    drain(&mut call);
    // The browser's checks and media keep the call up meanwhile.
    for second in (0..TRANSFER_TIMEOUT.as_secs()).step_by(5) {
        let now = t0 + Duration::from_secs(second);
        let data = check(second as u8, true);
        let packet = CallInput::WebPacket {
            from: browser(),
            to: None,
            data: &data,
            bridged_from: None,
        };
        call.handle_input(now, packet).unwrap();
        call.media_progress(now, second);
        let _ = call.handle_input(now, CallInput::Timeout);
        let out = drain(&mut call);
        assert!(transfer_events(&out).is_empty(), "at {second} s");
        assert!(!finished(&out), "at {second} s");
    }
    let _ = call.handle_input(t0 + TRANSFER_TIMEOUT, CallInput::Timeout);
    assert_eq!(
        transfer_events(&drain(&mut call)),
        vec![("failed".into(), None)]
    );

    let t1 = t0 + TRANSFER_TIMEOUT;
    call.browser_transfer(t1, TransferTarget::To("5001".into()))
        .unwrap();
    call.far_transfer(TransferProgress::Accepted);
    drain(&mut call);
    call.far_ended(None);
    let out = drain(&mut call);
    assert_eq!(ended(&out), Some(("transferred".into(), None)));
    assert!(
        !out.contains(&CallOutput::Far(FarRequest::Hangup { answered: true })),
        "the far end hung up already"
    );
}

/// An attended transfer's success ends the other call it joined too.
#[test]
fn an_attended_transfer_ends_both_calls() {
    let t0 = Instant::now();
    let mut call = sdes_call();
    call.far_answered(t0);
    drain(&mut call);
    call.browser_transfer(t0, TransferTarget::Replacing("c2".into()))
        .unwrap();
    call.far_transfer(TransferProgress::Accepted);
    call.far_transfer(TransferProgress::Succeeded);
    let out = drain(&mut call);
    assert!(out.contains(&CallOutput::EndReplacedCall("c2".into())));
    assert_eq!(ended(&out), Some(("transferred".into(), None)));

    let mut other = sdes_call();
    other.far_answered(t0);
    drain(&mut other);
    other.handle_input(t0, CallInput::Transferred).unwrap();
    let out = drain(&mut other);
    assert!(out.contains(&CallOutput::Far(FarRequest::Hangup { answered: true })));
    assert_eq!(ended(&out), Some(("transferred".into(), None)));
}

/// NOTIFY talk on a ringing incoming call asks the page to answer; on a
/// call we hold, it resumes; NOTIFY hold holds an answered call.
#[test]
fn remote_call_control_answers_holds_and_resumes() {
    let t0 = Instant::now();
    let mut call = inbound_call(t0);
    drain(&mut call);
    call.far_remote_control(RemoteControl::Hold);
    assert!(drain(&mut call).is_empty(), "nothing to hold yet");
    call.far_remote_control(RemoteControl::Talk);
    assert_eq!(
        drain(&mut call),
        vec![CallOutput::Notify(SessionEvent::CallAnswerRequested {
            call: "in1".into()
        })]
    );

    let mut call = sdes_call();
    call.far_answered(t0);
    drain(&mut call);
    call.far_remote_control(RemoteControl::Talk);
    assert!(
        drain(&mut call).is_empty(),
        "an answered call talks already"
    );
    call.far_remote_control(RemoteControl::Hold);
    assert_eq!(drain(&mut call), vec![CallOutput::Far(FarRequest::Hold)]);
    call.far_hold_changed(true, Party::Local);
    drain(&mut call);
    call.far_remote_control(RemoteControl::Hold);
    assert!(drain(&mut call).is_empty(), "held already");
    call.far_remote_control(RemoteControl::Talk);
    assert_eq!(drain(&mut call), vec![CallOutput::Far(FarRequest::Resume)]);
}
