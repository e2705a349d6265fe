//! SDP tests over fixtures captured from real peers: Chromium (with
//! tests/e2e/capture-offer.mjs, audio and audio+video), Firefox ESR (with
//! tests/e2e/firefox_offer.py), SIPp and baresip; and SIP offers of a PBX.

use std::net::IpAddr;

use super::build::{self, AnswerKeying, Local, SipMedia, WebAnswer, WebOffer};
use super::codecs::{answer_codecs, pair_answer, usable};
use super::*;
use crate::media::srtp::SrtpProfile;
use crate::random::Random;

const CHROMIUM: &str = include_str!("../../tests/fixtures/sdp/chromium-offer.sdp");
const CHROMIUM_VIDEO: &str = include_str!("../../tests/fixtures/sdp/chromium-offer-video.sdp");
const PBX: &str = include_str!("../../tests/fixtures/sdp/sip-pbx-offer.sdp");
const PBX_SRTP: &str = include_str!("../../tests/fixtures/sdp/sip-pbx-offer-srtp.sdp");

fn local(port: u16) -> Local {
    Local {
        address: "203.0.113.5".parse().unwrap(),
        port,
        session_id: 42,
        session_version: 1,
    }
}

fn our_ice() -> IceCredentials {
    IceCredentials {
        ufrag: "gw01".into(),
        pwd: "gatewaypasswordof24chars".into(),
    }
}

fn our_fingerprint() -> Fingerprint {
    Fingerprint { sha256: [0xab; 32] }
}

fn pts(codecs: &[Codec]) -> Vec<u8> {
    codecs.iter().map(|c| c.pt).collect()
}

#[test]
fn reads_a_real_chromium_offer() {
    let d = Description::parse(CHROMIUM).unwrap();
    let a = &d.audio;
    assert_eq!(a.proto, "UDP/TLS/RTP/SAVPF");
    assert_eq!(pts(&a.codecs), vec![111, 63, 9, 0, 8, 13, 110, 126]);
    assert_eq!(a.codecs[0].name, CodecName::Opus);
    assert_eq!((a.codecs[0].clock_rate, a.codecs[0].channels), (48_000, 2));
    assert_eq!(
        a.codecs[0].fmtp.as_deref(),
        Some("minptime=10;useinbandfec=1")
    );
    assert!(a.rtcp_mux);
    assert_eq!(a.mid.as_deref(), Some("0"));
    assert_eq!(d.bundle, Some(vec!["0".to_string()]));
    assert!(a.ice.is_some() && a.fingerprint.is_some());
    assert_eq!(a.setup, Some(Setup::ActPass));
    assert!(a.ssrc.is_some());
    assert_eq!(a.address, Some("127.0.0.1".parse::<IpAddr>().unwrap()));
    assert!(matches!(
        web_offer_keying(&d, true),
        Ok(WebKeying::Dtls {
            setup: Setup::ActPass,
            ..
        })
    ));
    assert_eq!(web_offer_keying(&d, false), Err(SdpError::CryptoRequired));
}

#[test]
fn outbound_call_negotiation_maps_payload_types() {
    // Browser offer → our SIP offer: the codecs we carry, browser order and numbers.
    let browser = Description::parse(CHROMIUM).unwrap();
    let sip_codecs = usable(&browser.audio.codecs).unwrap();
    assert_eq!(
        pts(&sip_codecs),
        vec![111, 9, 0, 8, 110, 126],
        "red and CN are not carried"
    );
    let sip_offer = build::sip_media(&SipMedia {
        local: local(30000),
        codecs: &sip_codecs,
        direction: Direction::SendRecv,
        crypto: &[],
        secure_profile: false,
        rtcp_mux: false,
        ptime: Some(20),
    });
    let parsed = Description::parse(&sip_offer).unwrap();
    assert_eq!(parsed.audio.proto, "RTP/AVP");
    assert_eq!(parsed.audio.port, 30000);
    assert_eq!(parsed.audio.codecs, sip_codecs);

    // The SIP side answers PCMU with telephone-event under its own numbers.
    let sip_answer = "v=0\r\no=pbx 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
        m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
    let answer = Description::parse(sip_answer).unwrap();
    let pairs = pair_answer(&sip_codecs, &answer.audio.codecs).unwrap();
    let mapping: Vec<(u8, u8)> = pairs.iter().map(|(o, a)| (o.pt, a.pt)).collect();
    assert_eq!(
        mapping,
        vec![(0, 0), (126, 101)],
        "browser PT 126 is SIP PT 101"
    );

    // Our answer to the browser uses the chosen codec and the 8 kHz telephone-event.
    let codecs = answer_codecs(&browser.audio.codecs, &pairs[0].0).unwrap();
    assert_eq!(pts(&codecs), vec![0, 126]);
    let text = build::web_answer(&WebAnswer {
        candidates: &[],
        tcp_port: 0,
        offer: &browser,
        local: local(20000),
        ice: &our_ice(),
        keying: AnswerKeying::Dtls {
            fingerprint: our_fingerprint(),
            setup: build::answer_setup(Setup::ActPass),
        },
        codecs: &codecs,
        direction: Direction::SendRecv,
        ssrc: 1234,
        cname: "gateway",
    });
    for line in [
        "a=ice-lite",
        "a=group:BUNDLE 0",
        "m=audio 20000 UDP/TLS/RTP/SAVPF 0 126",
        "a=mid:0",
        "a=rtcp-mux",
        "a=setup:passive",
        "a=ice-ufrag:gw01",
        "a=candidate:1 1 udp 2130706431 203.0.113.5 20000 typ host",
        "a=ssrc:1234 cname:gateway",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let back = Description::parse(&text).unwrap();
    assert_eq!(back.audio.fingerprint, Some(our_fingerprint()));
    assert!(back.ice_lite);
    assert_eq!(pts(&back.audio.codecs), vec![0, 126]);
}

/// Our DTLS answer to Chromium's offer with host candidates `addresses` on
/// `port`, the first in c= (as negotiated).
fn dtls_answer_on(addresses: &[&str], port: u16) -> String {
    dtls_answer_with_tcp(addresses, port, 0)
}

/// [`dtls_answer_on`] with ICE-TCP candidates on `tcp_port` (0: none).
fn dtls_answer_with_tcp(addresses: &[&str], port: u16, tcp_port: u16) -> String {
    let browser = Description::parse(CHROMIUM).unwrap();
    let codecs = answer_codecs(&browser.audio.codecs, &browser.audio.codecs[0]).unwrap();
    let addresses: Vec<IpAddr> = addresses.iter().map(|a| a.parse().unwrap()).collect();
    build::web_answer(&WebAnswer {
        candidates: &addresses,
        tcp_port,
        offer: &browser,
        local: Local {
            address: addresses[0],
            ..local(port)
        },
        ice: &our_ice(),
        keying: AnswerKeying::Dtls {
            fingerprint: our_fingerprint(),
            setup: Setup::Passive,
        },
        codecs: &codecs,
        direction: Direction::SendRecv,
        ssrc: 1234,
        cname: "gateway",
    })
}

/// Every address of ours is a host candidate on the one port, the first
/// preferred and in c=.
#[test]
fn answer_offers_a_candidate_per_address() {
    let text = dtls_answer_on(&["203.0.113.5", "192.0.2.10", "127.0.0.1"], 20000);
    let candidates: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert_eq!(
        candidates,
        [
            "a=candidate:1 1 udp 2130706431 203.0.113.5 20000 typ host",
            "a=candidate:2 1 udp 2130706175 192.0.2.10 20000 typ host",
            "a=candidate:3 1 udp 2130705919 127.0.0.1 20000 typ host",
        ]
    );
    assert_eq!(text.matches("a=end-of-candidates").count(), 1);
    assert!(text.contains("c=IN IP4 203.0.113.5\r\n"));
    Description::parse(&text).unwrap();
}

/// A dual-stack gateway whose first address is IPv6: `c=IN IP6`, and a
/// host candidate per address of either family on the one port.
#[test]
fn an_ipv6_first_answer_says_ip6_and_offers_both_families() {
    let text = dtls_answer_on(&["2001:db8::10", "192.0.2.10"], 3478);
    assert!(text.contains("c=IN IP6 2001:db8::10\r\n"), "{text}");
    for candidate in [
        "a=candidate:1 1 udp 2130706431 2001:db8::10 3478 typ host",
        "a=candidate:2 1 udp 2130706175 192.0.2.10 3478 typ host",
    ] {
        assert!(text.lines().any(|l| l == candidate), "{candidate}:\n{text}");
    }
    Description::parse(&text).unwrap();
}

/// With ICE-TCP on: a passive TCP candidate per address on the TCP port,
/// every one below every UDP candidate in priority.
#[test]
fn ice_tcp_adds_passive_candidates_below_udp() {
    let text = dtls_answer_with_tcp(&["192.0.2.10", "2001:db8::10"], 3478, 8444);
    let candidates: Vec<Vec<&str>> = text
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(candidates.len(), 4, "{text}");
    let tcp: Vec<&Vec<&str>> = candidates.iter().filter(|c| c[2] == "tcp").collect();
    assert_eq!(tcp.len(), 2);
    for c in &tcp {
        assert_eq!(
            &c[5..],
            ["8444", "typ", "host", "tcptype", "passive"],
            "{text}"
        );
    }
    let lowest_udp = candidates
        .iter()
        .filter(|c| c[2] == "udp")
        .map(|c| c[3].parse::<u32>().unwrap())
        .min()
        .unwrap();
    assert!(tcp
        .iter()
        .all(|c| c[3].parse::<u32>().unwrap() < lowest_udp));
    // Foundations stay distinct.
    let foundations: std::collections::HashSet<&str> = candidates.iter().map(|c| c[0]).collect();
    assert_eq!(foundations.len(), 4);
    Description::parse(&text).unwrap();
}

#[test]
fn opus_call_keeps_48k_telephone_event() {
    let browser = Description::parse(CHROMIUM).unwrap();
    let opus = browser.audio.codecs[0].clone();
    let codecs = answer_codecs(&browser.audio.codecs, &opus).unwrap();
    assert_eq!(pts(&codecs), vec![111, 110]);
}

#[test]
fn video_is_rejected_cleanly() {
    let browser = Description::parse(CHROMIUM_VIDEO).unwrap();
    assert_eq!(browser.others.len(), 2);
    let codecs = answer_codecs(&browser.audio.codecs, &browser.audio.codecs[0]).unwrap();
    let text = build::web_answer(&WebAnswer {
        candidates: &[],
        tcp_port: 0,
        offer: &browser,
        local: local(20002),
        ice: &our_ice(),
        keying: AnswerKeying::Dtls {
            fingerprint: our_fingerprint(),
            setup: Setup::Passive,
        },
        codecs: &codecs,
        direction: Direction::SendRecv,
        ssrc: 1,
        cname: "gw",
    });
    assert!(
        text.contains("a=group:BUNDLE 0\r\n"),
        "video left the bundle:\n{text}"
    );
    let m_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(
        m_lines.len(),
        2,
        "one answer m-line per offered m-line, in order"
    );
    assert!(m_lines[1].starts_with("m=video 0 UDP/TLS/RTP/SAVPF "));
    assert!(text.contains("a=mid:1\r\n"));
}

#[test]
fn sdes_only_browser_offer_gets_sdes() {
    let key = "inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";
    let sdes: String = CHROMIUM
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint") && !l.starts_with("a=setup"))
        .map(|l| {
            if l.starts_with("a=mid:") {
                format!("{l}\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 {key}")
            } else {
                l.replace("UDP/TLS/RTP/SAVPF", "RTP/SAVPF")
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    let d = Description::parse(&sdes).unwrap();
    let WebKeying::Sdes(theirs) = web_offer_keying(&d, true).unwrap() else {
        panic!("an offer with only crypto lines is answered with SDES");
    };
    assert_eq!(theirs.keys.profile, SrtpProfile::AesCm128HmacSha1_80);
    assert!(matches!(
        web_offer_keying(&d, false),
        Ok(WebKeying::Sdes(_))
    ));
    let ours =
        CryptoAttribute::generate(theirs.tag, theirs.keys.profile, &mut Random::seeded(9)).unwrap();
    let codecs = answer_codecs(&d.audio.codecs, &d.audio.codecs[0]).unwrap();
    let text = build::web_answer(&WebAnswer {
        candidates: &[],
        tcp_port: 0,
        offer: &d,
        local: local(20004),
        ice: &our_ice(),
        keying: AnswerKeying::Sdes(ours.clone()),
        codecs: &codecs,
        direction: Direction::SendRecv,
        ssrc: 1,
        cname: "gw",
    });
    let back = Description::parse(&text).unwrap();
    assert_eq!(back.audio.proto, "RTP/SAVPF");
    assert_eq!(back.audio.crypto, vec![ours]);
    assert!(back.audio.fingerprint.is_none());
}

#[test]
fn incoming_call_offer_to_browser() {
    let pbx = Description::parse(PBX).unwrap();
    assert_eq!(
        pbx.audio.address,
        Some("192.0.2.20".parse::<IpAddr>().unwrap())
    );
    let codecs = usable(&pbx.audio.codecs).unwrap();
    assert_eq!(
        pts(&codecs),
        vec![8, 0, 9, 101],
        "G729 is not carried; PBX order kept"
    );
    assert_eq!(codecs[3].fmtp.as_deref(), Some("0-16"));
    let crypto = vec![CryptoAttribute::generate(
        1,
        SrtpProfile::AesCm128HmacSha1_80,
        &mut Random::seeded(9),
    )
    .unwrap()];
    for (dtls, proto) in [(true, "UDP/TLS/RTP/SAVPF"), (false, "RTP/SAVPF")] {
        let fp = our_fingerprint();
        let text = build::web_offer(&WebOffer {
            candidates: &[],
            tcp_port: 0,
            local: local(20006),
            ice: &our_ice(),
            fingerprint: dtls.then_some(&fp),
            crypto: &crypto,
            codecs: &codecs,
            direction: Direction::SendRecv,
            ssrc: 99,
            cname: "gw",
        });
        let back = Description::parse(&text).unwrap();
        assert_eq!(back.audio.proto, proto);
        assert_eq!(back.audio.setup, dtls.then_some(Setup::ActPass));
        assert_eq!(back.audio.crypto, crypto, "crypto lines in both modes");
        assert_eq!(pts(&back.audio.codecs), vec![8, 0, 9, 101]);
        assert!(back.audio.rtcp_mux && back.ice_lite);
    }
}

#[test]
fn sip_srtp_offer_and_hold() {
    let d = Description::parse(PBX_SRTP).unwrap();
    assert!(d.is_secure_profile());
    assert_eq!(d.audio.crypto.len(), 2);
    assert_eq!(
        d.audio.crypto[1].keys.profile,
        SrtpProfile::AesCm128HmacSha1_32
    );
    assert!(d.audio.rtcp_mux);
    assert_eq!(d.audio.direction, Direction::SendOnly);
    assert!(d.audio.direction.is_hold());
    assert_eq!(d.audio.direction.answer(), Direction::RecvOnly);
    let ours =
        CryptoAttribute::generate(1, SrtpProfile::AesCm128HmacSha1_80, &mut Random::seeded(9))
            .unwrap();
    let codecs = answer_codecs(&d.audio.codecs, &d.audio.codecs[0]).unwrap();
    let text = build::sip_media(&SipMedia {
        local: local(30002),
        codecs: &codecs,
        direction: d.audio.direction.answer(),
        crypto: std::slice::from_ref(&ours),
        secure_profile: true,
        rtcp_mux: true,
        ptime: None,
    });
    let back = Description::parse(&text).unwrap();
    assert_eq!(back.audio.proto, "RTP/SAVP");
    assert_eq!(back.audio.direction, Direction::RecvOnly);
    assert!(back.audio.rtcp_mux);
    assert_eq!(back.audio.crypto, vec![ours]);
}

/// Every cause of `bad_sdp`, each with its own error.
#[test]
fn bad_sdp_causes() {
    let no_fp_no_crypto: String = CHROMIUM
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint") && !l.starts_with("a=setup"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let replace = |from: &str, to: &str| CHROMIUM.replace(from, to);
    let fingerprint_line = CHROMIUM
        .lines()
        .find(|l| l.starts_with("a=fingerprint"))
        .unwrap();
    type IsExpected = fn(&SdpError) -> bool;
    let cases: Vec<(String, IsExpected)> = vec![
        ("this is not sdp".into(), |e| matches!(e, SdpError::Syntax(_))),
        (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 RTP/AVP 96\r\n".into(),
            |e| matches!(e, SdpError::NoAudio),
        ),
        (replace("a=rtcp-mux\r\n", ""), |e| matches!(e, SdpError::NoRtcpMux)),
        (
            replace("a=ice-pwd:", "a=x-ice-pwd:"),
            |e| matches!(e, SdpError::NoIceCredentials),
        ),
        (no_fp_no_crypto, |e| matches!(e, SdpError::NoFingerprintNoCrypto)),
        (
            replace(fingerprint_line, "a=fingerprint:sha-1 AB:CD"),
            |e| matches!(e, SdpError::UnsupportedFingerprintHash(_)),
        ),
        (
            replace(fingerprint_line, "a=fingerprint:sha-256 AB:CD"),
            |e| matches!(e, SdpError::BadFingerprint(_)),
        ),
        (
            replace("a=mid:0", "a=mid:0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"),
            |e| matches!(e, SdpError::UnsupportedCryptoSuite(_)),
        ),
        (replace("a=setup:actpass", "a=setup:sideways"), |e| matches!(e, SdpError::BadSetup(_))),
    ];
    for (text, expected) in cases {
        let result = Description::parse(&text).and_then(|d| web_offer_keying(&d, true).map(|_| d));
        let err = result.expect_err("must be refused");
        assert!(expected(&err), "unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
    // No codec in common: only red, CN and G729.
    let d = Description::parse(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 63 13 18\r\n\
         a=rtpmap:63 red/48000/2\r\na=rtpmap:13 CN/8000\r\n",
    )
    .unwrap();
    let err = usable(&d.audio.codecs).unwrap_err();
    assert!(matches!(err, SdpError::NoCommonCodec { .. }));
    assert!(err.to_string().contains("red/48000"), "{err}");
}

/// Offers captured from the real SIP peers of the test suite (SIPp's built-in
/// uac, baresip 1.0 dialing): both negotiate, keeping their order and numbers.
#[test]
fn real_sip_peer_offers() {
    let sipp =
        Description::parse(include_str!("../../tests/fixtures/sdp/sipp-uac-offer.sdp")).unwrap();
    assert_eq!(sipp.audio.port, 6000);
    assert_eq!(pts(&usable(&sipp.audio.codecs).unwrap()), vec![0]);
    assert!(!sipp.is_secure_profile());
    assert!(!sipp.audio.rtcp_mux);

    let baresip =
        Description::parse(include_str!("../../tests/fixtures/sdp/baresip-offer.sdp")).unwrap();
    assert_eq!(
        pts(&usable(&baresip.audio.codecs).unwrap()),
        vec![0, 8, 9, 101]
    );
    assert_eq!(baresip.audio.ptime, Some(20));
    assert!(baresip.audio.ssrc.is_some());
    // The browser offer for this incoming call carries them, and Chromium's
    // answer (any of them) maps straight back.
    let chosen = answer_codecs(&baresip.audio.codecs, &baresip.audio.codecs[1]).unwrap();
    assert_eq!(pts(&chosen), vec![8, 101]);
}

/// A real Firefox ESR offer (captured with tests/e2e/firefox_offer.py): the
/// fingerprint and direction sit at session level, G722 spells out its one
/// channel, and there is no 48 kHz telephone-event.
#[test]
fn reads_a_real_firefox_offer() {
    let d = Description::parse(include_str!("../../tests/fixtures/sdp/firefox-offer.sdp")).unwrap();
    let a = &d.audio;
    assert_eq!(pts(&a.codecs), vec![109, 9, 0, 8, 101]);
    assert_eq!(a.codecs[0].name, CodecName::Opus);
    assert_eq!(a.codecs[1].name, CodecName::G722);
    assert!(a.codecs[1].is_carried_audio());
    assert!(
        a.fingerprint.is_some(),
        "session-level fingerprint applies to the m-line"
    );
    assert_eq!(a.setup, Some(Setup::ActPass));
    assert_eq!(a.direction, Direction::SendRecv);
    assert!(a.rtcp_mux && a.ice.is_some());
    assert_eq!(d.bundle, Some(vec!["0".to_string()]));
    assert!(matches!(
        web_offer_keying(&d, true),
        Ok(WebKeying::Dtls { .. })
    ));
    assert_eq!(pts(&usable(&a.codecs).unwrap()), vec![109, 9, 0, 8, 101]);
    // Opus has no telephone-event at its rate here: the answer carries Opus alone.
    assert_eq!(
        pts(&answer_codecs(&a.codecs, &a.codecs[0]).unwrap()),
        vec![109]
    );
    assert_eq!(
        pts(&answer_codecs(&a.codecs, &a.codecs[2]).unwrap()),
        vec![0, 101]
    );
}
