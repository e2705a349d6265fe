//! SDP for both legs: reading browser and SIP offers/answers into the few
//! facts the gateway needs, negotiating codecs across the legs without
//! transcoding, and writing the gateway's own offers and answers.
//!
//! Parsing lines is `sdp-types`; this module adds the
//! WebRTC and SIP meaning (ICE, DTLS fingerprint and setup, SDES crypto,
//! BUNDLE, rtcp-mux, codecs, direction). Every refusal is an [`SdpError`]
//! that names what is wrong; the API reports it as `bad_sdp`.

pub mod build;
pub mod codecs;
pub mod crypto;

use std::net::IpAddr;

pub use codecs::{Codec, CodecName};
pub use crypto::CryptoAttribute;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the SDP does not parse: {0}")]
    Syntax(String),
    #[error("the SDP has no audio m-line")]
    NoAudio,
    #[error(
        "no codec in common: the offer has {offered}, the gateway takes Opus, G722, PCMU and PCMA"
    )]
    NoCommonCodec { offered: String },
    #[error("the offer has neither a DTLS fingerprint nor an SDES a=crypto line")]
    NoFingerprintNoCrypto,
    #[error("SDES-SRTP only (web-enable-dtls = false) and the offer has no a=crypto line")]
    CryptoRequired,
    #[error("the SIP side requires SRTP and the SDP has no usable a=crypto line")]
    SipSrtpRequired,
    #[error("the SIP offer requires SRTP (RTP/SAVP) and [sip] srtp is \"off\"")]
    SipSrtpOff,
    #[error("unsupported crypto suite {0}")]
    UnsupportedCryptoSuite(String),
    #[error("bad a=crypto: {0}")]
    BadCrypto(String),
    #[error("bad a=fingerprint: {0}")]
    BadFingerprint(String),
    #[error("the DTLS fingerprint uses {0}; only sha-256 is supported")]
    UnsupportedFingerprintHash(String),
    #[error("a=setup:{0} is not valid here")]
    BadSetup(String),
    #[error("the audio m-line lacks ICE credentials (a=ice-ufrag and a=ice-pwd)")]
    NoIceCredentials,
    #[error("the browser offer must use rtcp-mux")]
    NoRtcpMux,
    #[error("bad {what}: {detail}")]
    BadAttribute { what: &'static str, detail: String },
    #[error("no usable connection address (c=) for the audio m-line")]
    NoConnectionAddress,
    #[error("internal: {0}")]
    Internal(String),
}

/// Media direction (RFC 3264 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The direction an answer takes to this offered direction.
    pub fn answer(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether this direction means "on hold" (the other side stops sending to us or both do).
    pub fn is_hold(self) -> bool {
        matches!(self, Direction::SendOnly | Direction::Inactive)
    }
}

/// DTLS role (RFC 4145 / 5763).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    fn parse(s: &str) -> Result<Self, SdpError> {
        Ok(match s {
            "active" => Setup::Active,
            "passive" => Setup::Passive,
            "actpass" => Setup::ActPass,
            "holdconn" => Setup::HoldConn,
            other => return Err(SdpError::BadSetup(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }
}

/// A certificate fingerprint (`a=fingerprint:sha-256 AB:CD:…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub sha256: [u8; 32],
}

impl Fingerprint {
    pub fn parse(value: &str) -> Result<Self, SdpError> {
        let (hash, hex_text) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| SdpError::BadFingerprint(format!("{value:?} is not \"hash value\"")))?;
        if !hash.eq_ignore_ascii_case("sha-256") {
            return Err(SdpError::UnsupportedFingerprintHash(hash.to_string()));
        }
        let bytes = hex_text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| SdpError::BadFingerprint("not colon-separated hex".into()))?;
        let sha256 = bytes
            .try_into()
            .map_err(|_| SdpError::BadFingerprint("a sha-256 fingerprint has 32 bytes".into()))?;
        Ok(Fingerprint { sha256 })
    }

    pub fn to_value(&self) -> String {
        let hex: Vec<String> = self.sha256.iter().map(|b| format!("{b:02X}")).collect();
        format!("sha-256 {}", hex.join(":"))
    }
}

/// ICE short-term credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

/// An m-line the gateway does not carry (video, data): answered with port 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherMedia {
    pub media: String,
    pub proto: String,
    pub fmt: String,
    pub mid: Option<String>,
}

/// The audio m-line, with session-level attributes folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    pub mid: Option<String>,
    pub port: u16,
    pub proto: String,
    pub address: Option<IpAddr>,
    pub codecs: Vec<Codec>,
    pub direction: Direction,
    pub rtcp_mux: bool,
    /// `a=rtcp:` port, if given.
    pub rtcp_port: Option<u16>,
    pub ice: Option<IceCredentials>,
    pub fingerprint: Option<Fingerprint>,
    pub setup: Option<Setup>,
    pub crypto: Vec<CryptoAttribute>,
    pub ssrc: Option<u32>,
    pub ptime: Option<u32>,
}

/// A parsed session description: the audio m-line and the others, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub audio: Audio,
    /// Index of the audio m-line among all m-lines.
    pub audio_index: usize,
    /// Every m-line in order; `None` at the audio one.
    pub others: Vec<Option<OtherMedia>>,
    /// `a=group:BUNDLE` mids, if present.
    pub bundle: Option<Vec<String>>,
    pub ice_lite: bool,
}

fn attr<'a>(attrs: &'a [sdp_types::Attribute], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.attribute == name)
        .map(|a| a.value.as_deref().unwrap_or(""))
}

fn attrs<'a>(
    list: &'a [sdp_types::Attribute],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    list.iter()
        .filter(move |a| a.attribute == name)
        .map(|a| a.value.as_deref().unwrap_or(""))
}

fn connection_ip(c: &sdp_types::Connection) -> Option<IpAddr> {
    let address = c.connection_address.split('/').next()?;
    address.parse().ok()
}

impl Description {
    /// Reads an SDP offer or answer (from a browser or a SIP peer).
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        // Browsers and SIP stacks use CRLF; tolerate bare LF too.
        let normalized;
        let text = if text.contains("\r\n") {
            text
        } else {
            normalized = text.replace('\n', "\r\n");
            &normalized
        };
        let session = sdp_types::Session::parse(text.as_bytes())
            .map_err(|e| SdpError::Syntax(e.to_string()))?;
        let session_ip = session.connection.as_ref().and_then(connection_ip);
        let audio_index = session
            .medias
            .iter()
            .position(|m| m.media == "audio" && m.port != 0)
            .ok_or(SdpError::NoAudio)?;
        let m = &session.medias[audio_index];
        let sa = &session.attributes;
        let ma = &m.attributes;
        // Media-level attributes override session-level ones.
        let pick = |name: &str| attr(ma, name).or_else(|| attr(sa, name));

        let codecs = codecs::parse_codecs(&m.fmt, ma)?;
        let direction = ["sendrecv", "sendonly", "recvonly", "inactive"]
            .iter()
            .find(|d| attr(ma, d).is_some())
            .or_else(|| {
                ["sendrecv", "sendonly", "recvonly", "inactive"]
                    .iter()
                    .find(|d| attr(sa, d).is_some())
            })
            .and_then(|d| Direction::parse(d))
            .unwrap_or_default();
        let ice = match (pick("ice-ufrag"), pick("ice-pwd")) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Some(IceCredentials {
                ufrag: u.to_string(),
                pwd: p.to_string(),
            }),
            _ => None,
        };
        let fingerprint = pick("fingerprint").map(Fingerprint::parse).transpose()?;
        let setup = pick("setup").map(Setup::parse).transpose()?;
        // Unsupported suites among several offered are skipped; if none is
        // usable, the first error says why.
        let mut crypto = Vec::new();
        let mut crypto_error = None;
        for value in attrs(ma, "crypto") {
            match CryptoAttribute::parse(value) {
                Ok(c) => crypto.push(c),
                Err(e) => {
                    crypto_error.get_or_insert(e);
                }
            }
        }
        if crypto.is_empty() {
            if let Some(e) = crypto_error {
                return Err(e);
            }
        }
        let rtcp_port = match attr(ma, "rtcp") {
            Some(v) => Some(
                v.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| SdpError::BadAttribute {
                        what: "a=rtcp",
                        detail: v.to_string(),
                    })?,
            ),
            None => None,
        };
        let ssrc = attrs(ma, "ssrc")
            .next()
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        let ptime = attr(ma, "ptime").and_then(|v| v.trim().parse().ok());
        let address = m.connections.first().and_then(connection_ip).or(session_ip);
        let audio = Audio {
            mid: attr(ma, "mid").map(str::to_string),
            port: m.port,
            proto: m.proto.clone(),
            address,
            codecs,
            direction,
            rtcp_mux: attr(ma, "rtcp-mux").is_some(),
            rtcp_port,
            ice,
            fingerprint,
            setup,
            crypto,
            ssrc,
            ptime,
        };
        let others = session
            .medias
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (i != audio_index).then(|| OtherMedia {
                    media: m.media.clone(),
                    proto: m.proto.clone(),
                    fmt: m.fmt.clone(),
                    mid: attr(&m.attributes, "mid").map(str::to_string),
                })
            })
            .collect();
        let bundle = attrs(sa, "group").find_map(|g| {
            let mut words = g.split_whitespace();
            (words.next() == Some("BUNDLE")).then(|| words.map(str::to_string).collect())
        });
        Ok(Description {
            audio,
            audio_index,
            others,
            bundle,
            ice_lite: attr(sa, "ice-lite").is_some(),
        })
    }

    /// Whether the audio m-line uses a secure RTP profile (SAVP, SAVPF).
    pub fn is_secure_profile(&self) -> bool {
        self.audio.proto.contains("SAVP")
    }
}

/// How the browser leg is keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebKeying {
    /// DTLS-SRTP: the browser's certificate fingerprint and its setup role.
    Dtls {
        fingerprint: Fingerprint,
        setup: Setup,
    },
    /// SDES: the browser's key (we answer with our own).
    Sdes(CryptoAttribute),
}

/// Checks a browser's offer for the web leg and says how it will be keyed:
/// DTLS when it has a fingerprint and DTLS is enabled, SDES when it has only
/// crypto lines (or DTLS is disabled).
pub fn web_offer_keying(offer: &Description, web_enable_dtls: bool) -> Result<WebKeying, SdpError> {
    let a = &offer.audio;
    if a.ice.is_none() {
        return Err(SdpError::NoIceCredentials);
    }
    if !a.rtcp_mux {
        return Err(SdpError::NoRtcpMux);
    }
    match (&a.fingerprint, a.crypto.first()) {
        (Some(fp), _) if web_enable_dtls => {
            let setup = a.setup.unwrap_or(Setup::ActPass);
            if setup == Setup::HoldConn {
                return Err(SdpError::BadSetup("holdconn".into()));
            }
            Ok(WebKeying::Dtls {
                fingerprint: fp.clone(),
                setup,
            })
        }
        (_, Some(c)) => Ok(WebKeying::Sdes(c.clone())),
        (Some(_), None) => Err(SdpError::CryptoRequired),
        (None, None) if web_enable_dtls => Err(SdpError::NoFingerprintNoCrypto),
        (None, None) => Err(SdpError::CryptoRequired),
    }
}

#[cfg(test)]
mod tests;
