//! Codecs on an m-line and their negotiation across the two legs. A call
//! uses one codec that both the browser and the SIP side take, with
//! payload-type numbers mapped between the legs — or, under `[media]
//! transcode`, Opus toward the browser and G.711 toward the SIP side (the
//! helpers at the end add what each side must be offered for that).

use super::SdpError;
use crate::media::transcode::SipCodec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecName {
    Opus,
    G722,
    Pcmu,
    Pcma,
    TelephoneEvent,
    Other(String),
}

impl CodecName {
    fn from_encoding(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "opus" => CodecName::Opus,
            "g722" => CodecName::G722,
            "pcmu" => CodecName::Pcmu,
            "pcma" => CodecName::Pcma,
            "telephone-event" => CodecName::TelephoneEvent,
            _ => CodecName::Other(name.to_string()),
        }
    }

    pub fn encoding(&self) -> &str {
        match self {
            CodecName::Opus => "opus",
            CodecName::G722 => "G722",
            CodecName::Pcmu => "PCMU",
            CodecName::Pcma => "PCMA",
            CodecName::TelephoneEvent => "telephone-event",
            CodecName::Other(n) => n,
        }
    }
}

/// One payload type offered on an m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub pt: u8,
    pub name: CodecName,
    /// RTP clock rate (8000 for G722, as RFC 3551 fixes it).
    pub clock_rate: u32,
    pub channels: u8,
    pub fmtp: Option<String>,
}

impl Codec {
    /// An audio codec the gateway carries (telephone-event is not audio).
    pub fn is_carried_audio(&self) -> bool {
        matches!(
            (&self.name, self.clock_rate, self.channels),
            (CodecName::Opus, 48_000, 2)
                | (CodecName::G722, 8000, 1)
                | (CodecName::Pcmu, 8000, 1)
                | (CodecName::Pcma, 8000, 1)
        )
    }

    pub fn is_telephone_event(&self) -> bool {
        self.name == CodecName::TelephoneEvent
    }

    /// The same codec, however each side numbers it.
    pub fn same_as(&self, other: &Codec) -> bool {
        self.name == other.name
            && self.clock_rate == other.clock_rate
            && self.channels == other.channels
    }

    /// The `a=rtpmap` value.
    pub fn rtpmap(&self) -> String {
        if self.channels > 1 {
            format!(
                "{} {}/{}/{}",
                self.pt,
                self.name.encoding(),
                self.clock_rate,
                self.channels
            )
        } else {
            format!("{} {}/{}", self.pt, self.name.encoding(), self.clock_rate)
        }
    }
}

/// Static payload types (RFC 3551) that may appear without an rtpmap.
fn static_codec(pt: u8) -> Option<(CodecName, u32, u8)> {
    Some(match pt {
        0 => (CodecName::Pcmu, 8000, 1),
        8 => (CodecName::Pcma, 8000, 1),
        9 => (CodecName::G722, 8000, 1),
        3 => (CodecName::Other("GSM".into()), 8000, 1),
        18 => (CodecName::Other("G729".into()), 8000, 1),
        _ => return None,
    })
}

/// The payload types of an m-line, in its order, with their rtpmap and fmtp.
pub fn parse_codecs(
    fmt: &str,
    attributes: &[sdp_types::Attribute],
) -> Result<Vec<Codec>, SdpError> {
    let mut codecs = Vec::new();
    for token in fmt.split_whitespace() {
        let pt: u8 =
            token
                .parse()
                .ok()
                .filter(|pt| *pt < 128)
                .ok_or_else(|| SdpError::BadAttribute {
                    what: "m= payload type",
                    detail: token.to_string(),
                })?;
        let rtpmap = attributes
            .iter()
            .filter(|a| a.attribute == "rtpmap")
            .filter_map(|a| a.value.as_deref())
            .find(|v| v.split_whitespace().next() == Some(token));
        let (name, clock_rate, channels) = match rtpmap {
            Some(v) => {
                let encoding =
                    v.split_whitespace()
                        .nth(1)
                        .ok_or_else(|| SdpError::BadAttribute {
                            what: "a=rtpmap",
                            detail: v.to_string(),
                        })?;
                let mut parts = encoding.split('/');
                let name = CodecName::from_encoding(parts.next().unwrap_or(""));
                let clock: u32 = parts
                    .next()
                    .and_then(|c| c.parse().ok())
                    .filter(|c| *c > 0)
                    .ok_or_else(|| SdpError::BadAttribute {
                        what: "a=rtpmap clock rate",
                        detail: v.to_string(),
                    })?;
                let channels: u8 = parts
                    .next()
                    .map_or(Some(1), |c| c.parse().ok())
                    .ok_or_else(|| SdpError::BadAttribute {
                        what: "a=rtpmap channels",
                        detail: v.to_string(),
                    })?;
                (name, clock, channels)
            }
            None => match static_codec(pt) {
                Some(c) => c,
                // A dynamic type without rtpmap: nothing we can use; skip it.
                None => continue,
            },
        };
        let fmtp = attributes
            .iter()
            .filter(|a| a.attribute == "fmtp")
            .filter_map(|a| a.value.as_deref())
            .find(|v| v.split_whitespace().next() == Some(token))
            .and_then(|v| v.split_once(' ').map(|(_, p)| p.trim().to_string()));
        codecs.push(Codec {
            pt,
            name,
            clock_rate,
            channels,
            fmtp,
        });
    }
    Ok(codecs)
}

/// From one leg's offer, what the gateway can offer the other leg: the audio
/// codecs it carries in the offer's order (so the offerer's preference
/// stands), then telephone-event at the clock rates of those codecs.
pub fn usable(offered: &[Codec]) -> Result<Vec<Codec>, SdpError> {
    let audio: Vec<Codec> = offered
        .iter()
        .filter(|c| c.is_carried_audio())
        .cloned()
        .collect();
    if audio.is_empty() {
        return Err(SdpError::NoCommonCodec {
            offered: describe(offered),
        });
    }
    let mut out = audio.clone();
    for te in offered.iter().filter(|c| c.is_telephone_event()) {
        if audio.iter().any(|a| a.clock_rate == te.clock_rate) && !out.iter().any(|c| c.same_as(te))
        {
            out.push(te.clone());
        }
    }
    Ok(out)
}

/// Pairs each codec of an answer with the offered codec it accepts, as
/// (offer's codec, answer's codec). The first pair is the call's audio codec.
pub fn pair_answer(offer: &[Codec], answer: &[Codec]) -> Result<Vec<(Codec, Codec)>, SdpError> {
    let pairs: Vec<(Codec, Codec)> = answer
        .iter()
        .filter_map(|a| {
            offer
                .iter()
                .find(|o| o.same_as(a))
                .map(|o| (o.clone(), a.clone()))
        })
        .collect();
    if !pairs.iter().any(|(o, _)| o.is_carried_audio()) {
        return Err(SdpError::NoCommonCodec {
            offered: describe(answer),
        });
    }
    Ok(pairs)
}

/// For the answer to an offer: the offered codecs that the other leg's
/// choice allows, the chosen audio codec first, plus a matching telephone-event.
pub fn answer_codecs(offer: &[Codec], chosen_audio: &Codec) -> Result<Vec<Codec>, SdpError> {
    let audio = offer
        .iter()
        .find(|c| c.same_as(chosen_audio))
        .cloned()
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: describe(offer),
        })?;
    let mut out = vec![audio.clone()];
    if let Some(te) = offer
        .iter()
        .find(|c| c.is_telephone_event() && c.clock_rate == audio.clock_rate)
    {
        out.push(te.clone());
    }
    Ok(out)
}

fn describe(codecs: &[Codec]) -> String {
    if codecs.is_empty() {
        return "no codecs".into();
    }
    codecs
        .iter()
        .map(|c| format!("{}/{}", c.name.encoding(), c.clock_rate))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Opus parameters toward a browser whose audio is transcoded to G.711
/// (RFC 7587): in-band FEC asked for. The audio band is left to the
/// browser: capped at wideband (`maxplaybackrate`), Chromium coded a steady
/// tone with SILK whose level swung by half from frame to frame, where
/// left alone it codes speech with SILK (and its FEC) and a tone with CELT.
pub const TRANSCODED_OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

/// Whether `codec` is Opus as browsers offer it (48 kHz, two channels
/// declared, RFC 7587).
pub fn is_opus(codec: &Codec) -> bool {
    codec.name == CodecName::Opus && codec.clock_rate == 48_000 && codec.channels == 2
}

/// The SIP-side codec the relay transcodes Opus to, if `codec` is one.
pub fn sip_codec_of(codec: &Codec) -> Option<SipCodec> {
    match (&codec.name, codec.clock_rate, codec.channels) {
        (CodecName::Pcmu, 8000, 1) => Some(SipCodec::Pcmu),
        (CodecName::Pcma, 8000, 1) => Some(SipCodec::Pcma),
        (CodecName::G722, 8000, 1) => Some(SipCodec::G722),
        _ => None,
    }
}

/// A payload type not used in `codecs`, from the dynamic range (96-127)
/// starting at `preferred`.
fn free_dynamic_pt(codecs: &[Codec], preferred: u8) -> Option<u8> {
    (preferred..=127)
        .chain(96..preferred)
        .find(|pt| !codecs.iter().any(|c| c.pt == *pt))
}

fn plain_codec(pt: u8, name: CodecName, clock_rate: u32, channels: u8) -> Codec {
    Codec {
        pt,
        name,
        clock_rate,
        channels,
        fmtp: None,
    }
}

/// `codecs` (an offer toward the SIP side) with the codecs the relay can
/// transcode Opus to appended where missing — G.722, µ-law, then A-law, at
/// their static types — and telephone-event at 8 kHz if the offer has it
/// at another rate only.
pub fn with_transcodable(mut codecs: Vec<Codec>) -> Vec<Codec> {
    let audio_end = codecs
        .iter()
        .rposition(|c| c.is_carried_audio())
        .map_or(0, |i| i + 1);
    let mut added = Vec::new();
    for (pt, name) in [
        (9, CodecName::G722),
        (0, CodecName::Pcmu),
        (8, CodecName::Pcma),
    ] {
        let codec = plain_codec(pt, name, 8000, 1);
        if !codecs.iter().any(|c| c.same_as(&codec)) && !codecs.iter().any(|c| c.pt == pt) {
            added.push(codec);
        }
    }
    let inserted = added.len();
    codecs.splice(audio_end..audio_end, added);
    let has_event = codecs.iter().any(|c| c.is_telephone_event());
    let has_event_8k = codecs
        .iter()
        .any(|c| c.is_telephone_event() && c.clock_rate == 8000);
    if inserted > 0 && has_event && !has_event_8k {
        if let Some(pt) = free_dynamic_pt(&codecs, 101) {
            codecs.push(Codec {
                fmtp: Some("0-16".into()),
                ..plain_codec(pt, CodecName::TelephoneEvent, 8000, 1)
            });
        }
    }
    codecs
}

/// `codecs` (an offer toward the browser) with Opus first, at a free
/// dynamic type, and telephone-event at 48 kHz beside the offer's 8 kHz
/// one. Unchanged when the offer has Opus already.
pub fn with_opus_first(codecs: Vec<Codec>) -> Vec<Codec> {
    if codecs.iter().any(is_opus) {
        return codecs;
    }
    let Some(pt) = free_dynamic_pt(&codecs, 111) else {
        return codecs;
    };
    let opus = Codec {
        fmtp: Some(TRANSCODED_OPUS_FMTP.into()),
        ..plain_codec(pt, CodecName::Opus, 48_000, 2)
    };
    let mut out = vec![opus];
    out.extend(codecs);
    if out.iter().any(|c| c.is_telephone_event())
        && !out
            .iter()
            .any(|c| c.is_telephone_event() && c.clock_rate == 48_000)
    {
        if let Some(pt) = free_dynamic_pt(&out, 110) {
            out.push(Codec {
                fmtp: Some("0-16".into()),
                ..plain_codec(pt, CodecName::TelephoneEvent, 48_000, 1)
            });
        }
    }
    out
}
