//! The gateway's own SDP: answers and offers for the browser leg and the SIP
//! leg. Written line by line in a fixed order (browsers and SIP stacks are
//! particular about it); every builder's output parses back with
//! [`Description::parse`](super::Description::parse) in the tests.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Codec, CryptoAttribute, Description, Direction, Fingerprint, IceCredentials, Setup};

/// Where our side of a leg receives media, and the o= line's numbers.
#[derive(Debug, Clone)]
pub struct Local {
    pub address: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub session_version: u64,
}

/// How our side of the web leg is keyed in an answer.
#[derive(Debug, Clone)]
pub enum AnswerKeying {
    /// DTLS: our certificate's fingerprint and our role.
    Dtls {
        fingerprint: Fingerprint,
        setup: Setup,
    },
    /// SDES: our key, under the tag and suite of the offer's line we accept.
    Sdes(CryptoAttribute),
}

/// Our DTLS role answering `offered` (RFC 5763 §5): passive unless the
/// browser insists on being passive itself.
pub fn answer_setup(offered: Setup) -> Setup {
    match offered {
        Setup::Passive => Setup::Active,
        _ => Setup::Passive,
    }
}

fn ip_words(ip: IpAddr) -> (&'static str, String) {
    match ip {
        IpAddr::V4(v4) => ("IP4", v4.to_string()),
        IpAddr::V6(v6) => ("IP6", v6.to_string()),
    }
}

fn header(out: &mut String, local: &Local) {
    let (family, addr) = ip_words(local.address);
    let _ = write!(
        out,
        "v=0\r\no=- {} {} IN {family} {addr}\r\ns=-\r\nt=0 0\r\n",
        local.session_id, local.session_version
    );
}

fn connection(out: &mut String, ip: IpAddr) {
    let (family, addr) = ip_words(ip);
    let _ = write!(out, "c=IN {family} {addr}\r\n");
}

fn payload_list(codecs: &[Codec]) -> String {
    codecs
        .iter()
        .map(|c| c.pt.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn codec_lines(out: &mut String, codecs: &[Codec]) {
    for c in codecs {
        let _ = write!(out, "a=rtpmap:{}\r\n", c.rtpmap());
        if let Some(fmtp) = &c.fmtp {
            let _ = write!(out, "a=fmtp:{} {fmtp}\r\n", c.pt);
        }
    }
}

fn ice_lines(
    out: &mut String,
    ice: &IceCredentials,
    local: &Local,
    candidates: &[IpAddr],
    tcp_port: u16,
) {
    let _ = write!(
        out,
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        ice.ufrag, ice.pwd
    );
    // ICE-lite: a host candidate per address on the leg's one port, the
    // first preferred (RFC 8445 §5.1.2.1: type preference 126 for host,
    // local preference falling by one per address, component 1).
    let own = [local.address];
    let addresses = if candidates.is_empty() {
        &own[..]
    } else {
        candidates
    };
    for (i, address) in addresses.iter().enumerate() {
        let local_preference = 65_535u32.saturating_sub(i as u32);
        let priority = (126u32 << 24) | (local_preference << 8) | 255;
        let _ = write!(
            out,
            "a=candidate:{} 1 udp {priority} {address} {} typ host\r\n",
            i + 1,
            local.port
        );
    }
    // ICE-TCP (RFC 6544): a passive candidate per address for browsers
    // whose UDP is blocked, with a type preference below UDP's (our
    // choice within §4.2's freedom), so UDP wins wherever it works.
    if tcp_port != 0 {
        for (i, address) in addresses.iter().enumerate() {
            let local_preference = 65_535u32.saturating_sub(i as u32);
            let priority = (TCP_TYPE_PREFERENCE << 24) | (local_preference << 8) | 255;
            let _ = write!(
                out,
                "a=candidate:{} 1 tcp {priority} {address} {tcp_port} typ host tcptype passive\r\n",
                addresses.len() + i + 1,
            );
        }
    }
    out.push_str("a=end-of-candidates\r\n");
}

/// Type preference of our ICE-TCP candidates: below a UDP host's 126.
const TCP_TYPE_PREFERENCE: u32 = 90;

/// The web leg's answer to a browser offer.
pub struct WebAnswer<'a> {
    pub offer: &'a Description,
    /// `local.address` is the connection address; `candidates` are every
    /// address offered (the first should be `local.address`; empty: only it).
    pub local: Local,
    pub candidates: &'a [IpAddr],
    /// Our ICE-TCP port (passive candidates on every address); 0: none.
    pub tcp_port: u16,
    pub ice: &'a IceCredentials,
    pub keying: AnswerKeying,
    /// The codecs the call uses, numbered as in the browser's offer.
    pub codecs: &'a [Codec],
    pub direction: Direction,
    /// The SSRC the relay sends to the browser with.
    pub ssrc: u32,
    pub cname: &'a str,
}

pub fn web_answer(a: &WebAnswer<'_>) -> String {
    let mut out = String::new();
    header(&mut out, &a.local);
    out.push_str("a=ice-lite\r\n");
    let audio_mid = a.offer.audio.mid.as_deref();
    if let (Some(_), Some(mid)) = (&a.offer.bundle, audio_mid) {
        // Rejected m-lines leave the bundle group.
        let _ = write!(out, "a=group:BUNDLE {mid}\r\n");
    }
    for (i, other) in a.offer.others.iter().enumerate() {
        match other {
            None => {
                debug_assert_eq!(i, a.offer.audio_index);
                let _ = write!(
                    out,
                    "m=audio {} {} {}\r\n",
                    a.local.port,
                    a.offer.audio.proto,
                    payload_list(a.codecs)
                );
                connection(&mut out, a.local.address);
                if let Some(mid) = audio_mid {
                    let _ = write!(out, "a=mid:{mid}\r\n");
                }
                let _ = write!(out, "a={}\r\na=rtcp-mux\r\n", a.direction.as_str());
                ice_lines(&mut out, a.ice, &a.local, a.candidates, a.tcp_port);
                match &a.keying {
                    AnswerKeying::Dtls { fingerprint, setup } => {
                        let _ = write!(
                            out,
                            "a=fingerprint:{}\r\na=setup:{}\r\n",
                            fingerprint.to_value(),
                            setup.as_str()
                        );
                    }
                    AnswerKeying::Sdes(crypto) => {
                        let _ = write!(out, "a=crypto:{}\r\n", crypto.to_value());
                    }
                }
                codec_lines(&mut out, a.codecs);
                let _ = write!(out, "a=ssrc:{} cname:{}\r\n", a.ssrc, a.cname);
            }
            Some(m) => {
                // Not carried (video, data): rejected with port 0, mid kept.
                let _ = write!(out, "m={} 0 {} {}\r\n", m.media, m.proto, m.fmt);
                connection(&mut out, a.local.address);
                if let Some(mid) = &m.mid {
                    let _ = write!(out, "a=mid:{mid}\r\n");
                }
                out.push_str("a=inactive\r\n");
            }
        }
    }
    out
}

/// The gateway's offer to a browser (an incoming SIP call).
pub struct WebOffer<'a> {
    /// As in [`WebAnswer`]: the connection address and the candidates.
    pub local: Local,
    pub candidates: &'a [IpAddr],
    /// Our ICE-TCP port (passive candidates on every address); 0: none.
    pub tcp_port: u16,
    pub ice: &'a IceCredentials,
    /// Our certificate's fingerprint, when DTLS is enabled.
    pub fingerprint: Option<&'a Fingerprint>,
    /// SDES keys offered (always some when DTLS is off).
    pub crypto: &'a [CryptoAttribute],
    pub codecs: &'a [Codec],
    pub direction: Direction,
    pub ssrc: u32,
    pub cname: &'a str,
}

pub fn web_offer(o: &WebOffer<'_>) -> String {
    let mut out = String::new();
    header(&mut out, &o.local);
    out.push_str("a=ice-lite\r\na=group:BUNDLE 0\r\n");
    let proto = if o.fingerprint.is_some() {
        "UDP/TLS/RTP/SAVPF"
    } else {
        "RTP/SAVPF"
    };
    let _ = write!(
        out,
        "m=audio {} {proto} {}\r\n",
        o.local.port,
        payload_list(o.codecs)
    );
    connection(&mut out, o.local.address);
    let _ = write!(
        out,
        "a=mid:0\r\na={}\r\na=rtcp-mux\r\n",
        o.direction.as_str()
    );
    ice_lines(&mut out, o.ice, &o.local, o.candidates, o.tcp_port);
    if let Some(fp) = o.fingerprint {
        let _ = write!(
            out,
            "a=fingerprint:{}\r\na=setup:actpass\r\n",
            fp.to_value()
        );
    }
    for c in o.crypto {
        let _ = write!(out, "a=crypto:{}\r\n", c.to_value());
    }
    codec_lines(&mut out, o.codecs);
    let _ = write!(out, "a=ssrc:{} cname:{}\r\n", o.ssrc, o.cname);
    out
}

/// The SIP leg's offer or answer.
pub struct SipMedia<'a> {
    pub local: Local,
    pub codecs: &'a [Codec],
    pub direction: Direction,
    /// SDES keys (one line each), if the SIP leg uses SRTP.
    pub crypto: &'a [CryptoAttribute],
    /// `RTP/SAVP` (SRTP required) instead of `RTP/AVP`.
    pub secure_profile: bool,
    /// Answering an offer that had a=rtcp-mux.
    pub rtcp_mux: bool,
    pub ptime: Option<u32>,
}

pub fn sip_media(s: &SipMedia<'_>) -> String {
    let mut out = String::new();
    let (family, addr) = ip_words(s.local.address);
    let _ = write!(
        out,
        "v=0\r\no=- {} {} IN {family} {addr}\r\ns=-\r\nc=IN {family} {addr}\r\nt=0 0\r\n",
        s.local.session_id, s.local.session_version
    );
    let proto = if s.secure_profile {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    };
    let _ = write!(
        out,
        "m=audio {} {proto} {}\r\n",
        s.local.port,
        payload_list(s.codecs)
    );
    codec_lines(&mut out, s.codecs);
    for c in s.crypto {
        let _ = write!(out, "a=crypto:{}\r\n", c.to_value());
    }
    if s.rtcp_mux {
        out.push_str("a=rtcp-mux\r\n");
    }
    if let Some(p) = s.ptime {
        let _ = write!(out, "a=ptime:{p}\r\n");
    }
    let _ = write!(out, "a={}\r\n", s.direction.as_str());
    out
}
