//! Offer/answer for both legs of a call, in one sans-IO place.
//!
//! A [`Negotiator`] is made when a call starts — from the browser's offer
//! (outbound: it writes our offer for the far end) or from the far end's
//! offer (inbound: it writes our offer for the browser) — and turns the
//! other side's answer into one [`MediaPlan`]: how each leg is keyed, the
//! codec, the payload-type map, the far end's addresses, and our SDP for
//! whoever still needs one. The call state machine holds it and emits the
//! plan as an output; the driver only binds ports and hands the plan to the
//! relay. Every refusal is an [`SdpError`] and changes nothing: the
//! negotiator can take a corrected answer afterwards.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{LegKeying, WebLegSpec};
use crate::config::{SrtpPolicy, TranscodePolicy};
use crate::media::relay::PayloadMap;
use crate::media::srtp::{SrtpKeyMaterial, SrtpProfile};
use crate::media::transcode::TranscodeSpec;
use crate::random::Random;
use crate::sdp::build::{self, AnswerKeying, Local, SipMedia, WebAnswer, WebOffer};
use crate::sdp::codecs::{
    answer_codecs, is_opus, pair_answer, sip_codec_of, usable, with_opus_first, with_transcodable,
    CodecName, TRANSCODED_OPUS_FMTP,
};
use crate::sdp::{
    web_offer_keying, Codec, CryptoAttribute, Description, Direction, IceCredentials, SdpError,
    Setup, WebKeying,
};
use crate::webrtc::dtls::DtlsIdentity;

/// An outbound call's browser side, checked and ready for the far end.
pub struct OutboundPlan {
    pub offer: Description,
    pub keying: WebKeying,
    pub local_ice: IceCredentials,
    /// Our SDES key toward the browser (when the browser is keyed by SDES).
    pub sdes_local: Option<CryptoAttribute>,
    /// What the far end may be offered: the browser's codecs that the
    /// gateway carries, in the browser's order, then the G.711 codecs the
    /// relay can transcode the browser's Opus to, with telephone-event.
    pub far_offer_codecs: Vec<Codec>,
    pub transcode: TranscodePolicy,
}

/// Checks the browser's offer for an outbound call.
pub fn outbound(
    offer_text: &str,
    web_enable_dtls: bool,
    transcode: TranscodePolicy,
    random: &mut Random,
) -> Result<OutboundPlan, SdpError> {
    let offer = Description::parse(offer_text)?;
    let keying = web_offer_keying(&offer, web_enable_dtls)?;
    let mut far_offer_codecs = usable(&offer.audio.codecs)?;
    if transcode != TranscodePolicy::Never && offer.audio.codecs.iter().any(is_opus) {
        far_offer_codecs = with_transcodable(far_offer_codecs);
    }
    let sdes_local = match &keying {
        WebKeying::Sdes(theirs) => Some(CryptoAttribute::generate(
            theirs.tag,
            theirs.keys.profile,
            random,
        )?),
        WebKeying::Dtls { .. } => None,
    };
    let local_ice = IceCredentials {
        ufrag: random.ice_token(6),
        pwd: random.ice_token(18),
    };
    Ok(OutboundPlan {
        offer,
        keying,
        local_ice,
        sdes_local,
        far_offer_codecs,
        transcode,
    })
}

/// Each leg's audio codec (`name/clock`, lower case) and whether the relay
/// transcodes between them: what the call's view shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CallCodecs {
    pub web: String,
    pub sip: String,
    pub transcoded: bool,
}

impl CallCodecs {
    fn of(web: &Codec, sip: &Codec) -> Self {
        CallCodecs {
            web: codec_label(web),
            sip: codec_label(sip),
            transcoded: !web.same_as(sip),
        }
    }
}

/// The relay's map between the browser's `web` codec and the SIP side's
/// `sip` (transcoded when they differ), with telephone-event on both sides
/// when agreed.
fn transcoded_map(web: &Codec, sip: &Codec, events: Option<(&Codec, &Codec)>) -> PayloadMap {
    let sip_codec = match sip_codec_of(sip) {
        Some(narrow) if !web.same_as(sip) && is_opus(web) => narrow,
        _ => return payload_map_of(web, sip, events),
    };
    let map = PayloadMap::transcoded(TranscodeSpec {
        web_pt: web.pt,
        sip_pt: sip.pt,
        sip_codec,
    });
    match events {
        Some((web, far)) => {
            map.with_telephone_event(web.pt, web.clock_rate, far.pt, far.clock_rate)
        }
        None => map,
    }
}

/// What the far end answered, applied to both legs.
pub struct Negotiated {
    /// Our answer for the browser.
    pub web_sdp: String,
    pub payload_map: PayloadMap,
    /// Each leg's codec, and whether the call is transcoded.
    pub codecs: CallCodecs,
    /// The SSRC we send toward the browser (it is in `web_sdp`).
    pub web_ssrc: u32,
    /// SDES keys for the relay's web leg: (inbound, outbound).
    pub sdes_keys: Option<(SrtpKeyMaterial, SrtpKeyMaterial)>,
    pub leg: WebLegSpec,
    /// The browser's codec and the far end's (each with its own payload
    /// type), and telephone-event on both sides when agreed.
    pub web_audio: Codec,
    pub far_audio: Codec,
    pub events: Option<(Codec, Codec)>,
}

/// Where and how our side of the web leg is reached.
pub struct WebLocal<'a> {
    /// Our addresses offered as candidates; the first is the connection
    /// address.
    pub addresses: &'a [IpAddr],
    pub port: u16,
    /// Our ICE-TCP port; 0: no TCP candidates.
    pub tcp_port: u16,
    pub identity: &'a DtlsIdentity,
    pub consent_timeout: Duration,
    pub rtp_timeout: Duration,
}

/// Joins the browser's offer with the far end's answer (`far_answer`: the
/// codecs it accepted out of [`OutboundPlan::far_offer_codecs`], with its
/// payload types).
pub fn negotiate(
    plan: &OutboundPlan,
    far_answer: &[Codec],
    local: &WebLocal<'_>,
    random: &mut Random,
) -> Result<Negotiated, SdpError> {
    let pairs = pair_answer(&plan.far_offer_codecs, far_answer)?;
    let (far_choice_offered, far_choice) = pairs
        .iter()
        .find(|(o, _)| o.is_carried_audio())
        .cloned()
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: "no audio codec in the far end's answer".into(),
        })?;
    let browser_codecs = &plan.offer.audio.codecs;
    let browser_opus = browser_codecs.iter().find(|c| is_opus(c));
    let browser_has = browser_codecs
        .iter()
        .any(|c| c.same_as(&far_choice_offered));
    let transcode_from = match (plan.transcode, browser_opus, sip_codec_of(&far_choice)) {
        (TranscodePolicy::WhenNeeded, Some(opus), Some(_)) if !browser_has => Some(opus),
        (TranscodePolicy::PreferOpusWeb, Some(opus), Some(_)) => Some(opus),
        _ => None,
    };
    let far_event_for = |clock: u32| {
        pairs
            .iter()
            .find(|(_, a)| a.is_telephone_event() && a.clock_rate == clock)
            .map(|(_, a)| a.clone())
    };
    let (web_audio, codecs, far_audio, map_event, payload_map) = if let Some(opus) = transcode_from
    {
        let mut codecs = answer_codecs(browser_codecs, opus)?;
        codecs[0].fmtp = Some(TRANSCODED_OPUS_FMTP.into());
        let web_event = codecs.iter().find(|c| c.is_telephone_event()).cloned();
        let map_event = web_event.zip(far_event_for(far_choice.clock_rate));
        let payload_map =
            transcoded_map(opus, &far_choice, map_event.as_ref().map(|(w, f)| (w, f)));
        (opus.clone(), codecs, far_choice, map_event, payload_map)
    } else {
        let web_audio = far_choice_offered;
        if !browser_has {
            return Err(SdpError::NoCommonCodec {
                offered: format!(
                    "the far end chose {}, which the browser did not offer",
                    codec_label(&web_audio)
                ),
            });
        }
        let codecs = answer_codecs(browser_codecs, &web_audio)?;
        let mut triples = Vec::new();
        let mut map_event: Option<(Codec, Codec)> = None;
        let mut far_audio = None;
        for (web, far) in &pairs {
            if web.is_telephone_event() {
                if web.clock_rate == web_audio.clock_rate || map_event.is_none() {
                    map_event = Some((web.clone(), far.clone()));
                }
            } else if web.is_carried_audio() {
                triples.push((web.pt, far.pt, web.clock_rate));
                if web == &web_audio && far_audio.is_none() {
                    far_audio = Some(far.clone());
                }
            }
        }
        let far_audio = far_audio.unwrap_or_else(|| web_audio.clone());
        let mut payload_map = PayloadMap::new(&triples);
        if let Some((web, far)) = &map_event {
            payload_map =
                payload_map.with_telephone_event(web.pt, web.clock_rate, far.pt, far.clock_rate);
        }
        (web_audio, codecs, far_audio, map_event, payload_map)
    };
    let web_ssrc = random.u32();
    let (keying, leg_keying, sdes_keys) = match (&plan.keying, &plan.sdes_local) {
        (WebKeying::Sdes(theirs), Some(ours)) => (
            AnswerKeying::Sdes(ours.clone()),
            LegKeying::Sdes,
            Some((theirs.keys.clone(), ours.keys.clone())),
        ),
        (WebKeying::Dtls { fingerprint, setup }, _) => {
            let our_setup = build::answer_setup(*setup);
            (
                AnswerKeying::Dtls {
                    fingerprint: local.identity.fingerprint.clone(),
                    setup: our_setup,
                },
                LegKeying::Dtls {
                    identity: local.identity.clone(),
                    peer_fingerprint: fingerprint.clone(),
                    active: our_setup == crate::sdp::Setup::Active,
                },
                None,
            )
        }
        (WebKeying::Sdes(_), None) => {
            return Err(SdpError::Internal("no SDES key was made".into()))
        }
    };
    let remote_ice = plan
        .offer
        .audio
        .ice
        .clone()
        .ok_or(SdpError::NoIceCredentials)?;
    let address = local
        .addresses
        .first()
        .copied()
        .ok_or_else(|| SdpError::Internal("no address for the web leg".into()))?;
    let web_sdp = build::web_answer(&WebAnswer {
        offer: &plan.offer,
        candidates: local.addresses,
        tcp_port: local.tcp_port,
        local: Local {
            address,
            port: local.port,
            session_id: u64::from(random.u32()),
            session_version: 1,
        },
        ice: &plan.local_ice,
        keying,
        codecs: &codecs,
        direction: plan.offer.audio.direction.answer(),
        ssrc: web_ssrc,
        cname: "gateway",
    });
    Ok(Negotiated {
        web_sdp,
        payload_map,
        codecs: CallCodecs::of(&web_audio, &far_audio),
        web_ssrc,
        sdes_keys,
        leg: WebLegSpec {
            local_ice: plan.local_ice.clone(),
            remote_ice,
            keying: leg_keying,
            consent_timeout: local.consent_timeout,
            rtp_timeout: local.rtp_timeout,
        },
        web_audio,
        far_audio,
        events: map_event,
    })
}

/// Our SDES keys for an offer on the SIP leg under `policy`: none when SRTP
/// is off, else one key per suite most SIP servers take (tag 1: 80-bit tag,
/// tag 2: 32-bit tag), each fresh from `random`.
pub fn sip_offer_crypto(
    policy: SrtpPolicy,
    random: &mut Random,
) -> Result<Vec<CryptoAttribute>, SdpError> {
    if policy == SrtpPolicy::Off {
        return Ok(Vec::new());
    }
    Ok(vec![
        CryptoAttribute::generate(1, SrtpProfile::AesCm128HmacSha1_80, random)?,
        CryptoAttribute::generate(2, SrtpProfile::AesCm128HmacSha1_32, random)?,
    ])
}

/// Whether our SIP-side offer uses the secure profile `RTP/SAVP`: only when
/// SRTP is required; "optional" offers keys in `RTP/AVP` so a far end
/// without SRTP can still answer (best-effort SRTP).
pub fn sip_offer_secure_profile(policy: SrtpPolicy) -> bool {
    policy == SrtpPolicy::Required
}

/// SRTP keys of the SIP leg as (inbound: the far end's key, outbound: ours).
pub type SipLegKeys = (SrtpKeyMaterial, SrtpKeyMaterial);

/// The far end answered our SIP-side offer (made with `ours`; none: the
/// offer had no keys) with `answered` keys, in a secure profile or not:
/// the keys the relay uses on the SIP leg, or `None` for plain RTP.
pub fn sip_answer_keys(
    policy: SrtpPolicy,
    ours: &[CryptoAttribute],
    answered: &[CryptoAttribute],
    secure_profile: bool,
) -> Result<Option<SipLegKeys>, SdpError> {
    if policy == SrtpPolicy::Off || ours.is_empty() {
        return Ok(None);
    }
    let chosen = answered.iter().find_map(|theirs| {
        ours.iter()
            .find(|o| o.tag == theirs.tag && o.keys.profile == theirs.keys.profile)
            .map(|o| (theirs.keys.clone(), o.keys.clone()))
    });
    match chosen {
        Some((theirs, ours)) if theirs == ours => Err(repeated_key()),
        Some(keys) => Ok(Some(keys)),
        None if !answered.is_empty() => Err(SdpError::BadCrypto(
            "the answer's a=crypto matches no tag and suite we offered".into(),
        )),
        None if policy == SrtpPolicy::Required || secure_profile => Err(SdpError::SipSrtpRequired),
        None => Ok(None),
    }
}

/// An SDES answer that hands our own key back: both directions would be
/// protected under one key and salt (one keystream, two senders), which
/// no honest peer does; refused as an attack or a broken peer.
fn repeated_key() -> SdpError {
    SdpError::BadCrypto(
        "the answer's a=crypto repeats the key we offered; each direction needs its own".into(),
    )
}

/// How we answer a SIP-side offer under `policy`.
pub struct SipAnswerKeying {
    /// With SRTP: our key for the answer's a=crypto line (same tag and
    /// suite as the far end's chosen one) and the far end's key of that
    /// line; `None` for plain RTP.
    pub sdes: Option<(CryptoAttribute, SrtpKeyMaterial)>,
    /// Answer with `RTP/SAVP` (the offer used it).
    pub secure_profile: bool,
}

impl SipAnswerKeying {
    const PLAIN: SipAnswerKeying = SipAnswerKeying {
        sdes: None,
        secure_profile: false,
    };

    /// Our a=crypto line for the answer (none or one).
    pub fn crypto(&self) -> &[CryptoAttribute] {
        match &self.sdes {
            Some((ours, _)) => std::slice::from_ref(ours),
            None => &[],
        }
    }

    /// The relay's SIP-leg keys: (inbound, outbound).
    pub fn leg_keys(&self) -> Option<SipLegKeys> {
        self.sdes
            .as_ref()
            .map(|(ours, theirs)| (theirs.clone(), ours.keys.clone()))
    }
}

/// Decides how to answer a SIP-side offer (its supported `offered` keys,
/// in a secure profile or not): SRTP with the first offered suite we
/// support when `policy` allows it; plain RTP when the offer has no keys and
/// SRTP is not required. Refusals name why (the caller sends 488).
pub fn sip_answer_keying(
    policy: SrtpPolicy,
    offered: &[CryptoAttribute],
    secure: bool,
    random: &mut Random,
) -> Result<SipAnswerKeying, SdpError> {
    match (sip_offer_keyed(policy, offered, secure)?, offered.first()) {
        (true, Some(theirs)) => Ok(SipAnswerKeying {
            sdes: Some((
                CryptoAttribute::generate(theirs.tag, theirs.keys.profile, random)?,
                theirs.keys.clone(),
            )),
            secure_profile: secure,
        }),
        _ => Ok(SipAnswerKeying::PLAIN),
    }
}

/// Whether a SIP-side offer is answered with SRTP under `policy` (true) or
/// plain RTP (false), or refused (488).
fn sip_offer_keyed(
    policy: SrtpPolicy,
    offered: &[CryptoAttribute],
    secure: bool,
) -> Result<bool, SdpError> {
    match (policy, offered.is_empty()) {
        (SrtpPolicy::Off, _) if secure => Err(SdpError::SipSrtpOff),
        // Best-effort keys in RTP/AVP: answering without a=crypto declines them.
        (SrtpPolicy::Off, _) => Ok(false),
        (_, false) => Ok(true),
        (SrtpPolicy::Required, true) => Err(SdpError::SipSrtpRequired),
        (_, true) if secure => Err(SdpError::SipSrtpRequired),
        (_, true) => Ok(false),
    }
}

/// The far end's offer for an incoming call, checked before anything is
/// made for it (no port is bound for an offer that is refused).
pub struct FarOffer {
    far: FarMedia,
    codecs: Vec<Codec>,
}

impl FarOffer {
    /// Refused (the caller answers 488) when the SDP does not parse, has no
    /// codec the gateway carries, or its keying is not what `policy` allows.
    pub fn check(far_offer: &str, policy: SrtpPolicy) -> Result<FarOffer, SdpError> {
        let far = FarMedia::from_sdp(far_offer)?;
        sip_offer_keyed(policy, &far.crypto, far.secure)?;
        let codecs = usable(&far.codecs)?;
        Ok(FarOffer { far, codecs })
    }
}

/// What negotiation knows of this gateway and of the call's bound ports.
#[derive(Clone)]
pub struct NegotiationContext {
    /// Our web leg addresses, offered as candidates; the first is the
    /// connection address.
    pub web_addresses: Vec<IpAddr>,
    pub web_port: u16,
    /// Our ICE-TCP port (`[media] web-tcp-port`); 0: none.
    pub web_tcp_port: u16,
    /// Our SIP leg address (c= toward the far end) and RTP port.
    pub sip_address: IpAddr,
    pub sip_port: u16,
    pub web_enable_dtls: bool,
    pub sip_srtp: SrtpPolicy,
    pub transcode: TranscodePolicy,
    pub identity: DtlsIdentity,
    pub consent_timeout: Duration,
    pub rtp_timeout: Duration,
}

impl NegotiationContext {
    fn web_local(&self) -> WebLocal<'_> {
        WebLocal {
            addresses: &self.web_addresses,
            port: self.web_port,
            tcp_port: self.web_tcp_port,
            identity: &self.identity,
            consent_timeout: self.consent_timeout,
            rtp_timeout: self.rtp_timeout,
        }
    }

    fn sip_local(&self, random: &mut Random) -> Local {
        Local {
            address: self.sip_address,
            port: self.sip_port,
            session_id: u64::from(random.u32()),
            session_version: 1,
        }
    }
}

/// Where and how the far end takes its media.
#[derive(Debug, Clone)]
pub struct FarMedia {
    pub codecs: Vec<Codec>,
    /// Its SDES keys (the ones we support).
    pub crypto: Vec<CryptoAttribute>,
    /// It uses the secure profile RTP/SAVP.
    pub secure: bool,
    pub rtp: SocketAddr,
    /// RTCP address; None: RTCP muxed on the RTP port.
    pub rtcp: Option<SocketAddr>,
    /// Take media from `rtp` only (else latch to the first packet from its IP).
    pub strict: bool,
    /// The direction its SDP gives.
    pub direction: Direction,
}

impl FarMedia {
    /// A far end whose address is not known yet (a call whose SIP offer is
    /// ours, in the 2xx: the answer comes in the ACK). The relay sends
    /// nothing to it.
    fn unknown() -> FarMedia {
        let nowhere = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
        FarMedia {
            codecs: Vec::new(),
            crypto: Vec::new(),
            secure: false,
            rtp: nowhere,
            rtcp: Some(nowhere),
            strict: false,
            direction: Direction::SendRecv,
        }
    }

    /// Whether this SDP puts the call on hold: it stops sending to us
    /// (sendonly, inactive) or gives no address (`c=0.0.0.0`, RFC 2543).
    pub fn holds(&self) -> bool {
        self.direction.is_hold() || self.rtp.ip().is_unspecified()
    }
}

impl FarMedia {
    /// From the far end's SDP (an offer, or an answer in a 183 or 200).
    pub fn from_sdp(text: &str) -> Result<FarMedia, SdpError> {
        let d = Description::parse(text)?;
        let ip = d.audio.address.ok_or(SdpError::NoConnectionAddress)?;
        let rtp = SocketAddr::new(ip, d.audio.port);
        let rtcp = (!d.audio.rtcp_mux).then(|| {
            SocketAddr::new(
                ip,
                d.audio.rtcp_port.unwrap_or(d.audio.port.wrapping_add(1)),
            )
        });
        Ok(FarMedia {
            secure: d.is_secure_profile(),
            crypto: d.audio.crypto,
            codecs: d.audio.codecs,
            rtp,
            rtcp,
            strict: false,
            direction: d.audio.direction,
        })
    }
}

/// One negotiated change of a call's media: everything the relay and the
/// web leg need.
#[derive(Clone)]
pub struct MediaPlan {
    /// Each leg's codec, and whether the call is transcoded.
    pub codecs: CallCodecs,
    pub payload_map: PayloadMap,
    /// SDES keys for the web leg (inbound, outbound); None: DTLS brings them.
    pub web_keys: Option<SipLegKeys>,
    /// The SSRC we send toward the browser (the one our SDP announced).
    pub web_ssrc: u32,
    /// SRTP keys for the SIP leg (inbound, outbound); None: plain RTP.
    pub sip_keys: Option<SipLegKeys>,
    pub far: FarMedia,
    /// How the browser's ICE and DTLS (or SDES) leg is run.
    pub leg: WebLegSpec,
    /// Our SDP for the browser (an outbound call's answer), if it needs one.
    pub web_sdp: Option<String>,
    /// Our SDP for the far end (an inbound call's answer), if it needs one.
    pub sip_sdp: Option<String>,
}

/// Shows what was agreed, never the keys.
impl std::fmt::Debug for MediaPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaPlan")
            .field("codecs", &self.codecs)
            .field("web_keying", &self.leg.keying.as_str())
            .field("sip_srtp", &self.sip_keys.is_some())
            .field("web_ssrc", &self.web_ssrc)
            .field("far_rtp", &self.far.rtp)
            .field("far_rtcp", &self.far.rtcp)
            .finish_non_exhaustive()
    }
}

/// Two plans are the same when they agree on what the legs see: codec,
/// keying, addresses and our SDP (keys are drawn afresh each time).
impl PartialEq for MediaPlan {
    fn eq(&self, other: &Self) -> bool {
        self.codecs == other.codecs
            && self.leg.keying.as_str() == other.leg.keying.as_str()
            && self.web_keys.is_some() == other.web_keys.is_some()
            && self.sip_keys.is_some() == other.sip_keys.is_some()
            && self.web_ssrc == other.web_ssrc
            && (self.far.rtp, self.far.rtcp, self.far.strict)
                == (other.far.rtp, other.far.rtcp, other.far.strict)
            && self.web_sdp == other.web_sdp
            && self.sip_sdp == other.sip_sdp
    }
}

impl Eq for MediaPlan {}

/// Our offer to the browser for an incoming call, and the far end's media.
struct WebOfferState {
    local_ice: IceCredentials,
    crypto: Vec<CryptoAttribute>,
    ssrc: u32,
    codecs: Vec<Codec>,
    far: FarMedia,
    /// How our answer on the SIP side is keyed.
    sip_keying: SipAnswerKeying,
    /// The far end's INVITE had an offer (else ours goes in the 2xx).
    far_offered: bool,
    /// Our offer's o= session id.
    web_session_id: u64,
}

impl WebOfferState {
    /// Our offer's ICE credentials, SDES key and SSRC, fresh from `random`.
    fn new(
        codecs: Vec<Codec>,
        far: FarMedia,
        sip_keying: SipAnswerKeying,
        far_offered: bool,
        random: &mut Random,
    ) -> Result<Self, SdpError> {
        Ok(WebOfferState {
            local_ice: IceCredentials {
                ufrag: random.ice_token(6),
                pwd: random.ice_token(18),
            },
            crypto: vec![CryptoAttribute::generate(
                1,
                SrtpProfile::AesCm128HmacSha1_80,
                random,
            )?],
            ssrc: random.u32(),
            codecs,
            far,
            sip_keying,
            far_offered,
            web_session_id: 0,
        })
    }
}

enum Pending {
    /// The browser offered (`plan`, checked); our offer to the far end
    /// carried `sip_crypto` (none: plain RTP). Waiting for its answer.
    FarAnswer {
        plan: Box<OutboundPlan>,
        sip_crypto: Vec<CryptoAttribute>,
    },
    /// The far end offered (or, `far_offered` false, sent an INVITE without
    /// SDP); waiting for the browser's answer to ours.
    BrowserAnswer(Box<WebOfferState>),
    /// Both sides are agreed (the SIP side perhaps still owes the answer
    /// to our offer in its ACK).
    Agreed(Box<Agreed>),
}

/// What the call's legs agreed, kept for the far end's later offers (a
/// re-INVITE or UPDATE) and for the answer in an ACK to an offer of ours.
struct Agreed {
    /// The browser leg's codec and telephone-event, with the browser's
    /// payload types: fixed for the call (the browser is not asked again).
    web_audio: Codec,
    web_event: Option<Codec>,
    /// The codecs of our last SDP toward the far end, with its numbers.
    sip_codecs: Vec<Codec>,
    /// The SDES keys our last SIP SDP carried: every one we offered, or
    /// the one of our answer; none for plain RTP.
    sip_crypto: Vec<CryptoAttribute>,
    /// The SIP leg's keys now: (inbound, outbound).
    sip_keys: Option<SipLegKeys>,
    /// Our SIP SDP says a=rtcp-mux (decided once: our sockets are bound).
    rtcp_mux: bool,
    /// Our SIP SDP's profile is RTP/SAVP.
    secure_profile: bool,
    /// Where the far end's media is and how its packets are typed now.
    place: FarPlace,
    /// The browser leg as agreed, for the browser's later offers.
    web: WebAgreed,
    /// Whether the far end's later SDP may move the call to transcoding.
    transcode: TranscodePolicy,
}

/// What the browser leg agreed, kept for its later offers (an ICE restart
/// after a network change): its keying, codec and our SSRC never change
/// (no new DTLS association, no transcoding); only ICE credentials do.
struct WebAgreed {
    /// Our keying as our SDP states it: our fingerprint and DTLS role, or
    /// our SDES key.
    keying: AnswerKeying,
    /// The browser's fingerprint, or its SDES key: a new offer must keep it.
    their_fingerprint: Option<crate::sdp::Fingerprint>,
    their_key: Option<SrtpKeyMaterial>,
    local_ice: IceCredentials,
    remote_ice: IceCredentials,
    ssrc: u32,
    /// Our web SDP's o= session id and version.
    session_id: u64,
    version: u64,
}

impl WebAgreed {
    /// From the web leg's plan: its keying and ICE, with `ours` our SDES key
    /// for an SDES leg and `their_key` the browser's.
    fn of(
        leg: &WebLegSpec,
        ours: Option<CryptoAttribute>,
        their_key: Option<SrtpKeyMaterial>,
        ssrc: u32,
        session_id: u64,
    ) -> Result<WebAgreed, SdpError> {
        let (keying, their_fingerprint) = match (&leg.keying, ours) {
            (
                LegKeying::Dtls {
                    identity,
                    peer_fingerprint,
                    active,
                },
                _,
            ) => (
                AnswerKeying::Dtls {
                    fingerprint: identity.fingerprint.clone(),
                    setup: if *active {
                        Setup::Active
                    } else {
                        Setup::Passive
                    },
                },
                Some(peer_fingerprint.clone()),
            ),
            (LegKeying::Sdes, Some(ours)) => (AnswerKeying::Sdes(ours), None),
            (LegKeying::Sdes, None) => {
                return Err(SdpError::Internal("an SDES leg without our key".into()))
            }
        };
        Ok(WebAgreed {
            keying,
            their_fingerprint,
            their_key,
            local_ice: leg.local_ice.clone(),
            remote_ice: leg.remote_ice.clone(),
            ssrc,
            session_id,
            version: 1,
        })
    }
}

/// Our answer to the browser's new offer, and the ICE credentials (ours,
/// the browser's) when it restarts ICE.
pub struct WebReanswer {
    pub sdp: String,
    pub ice_restart: Option<(IceCredentials, IceCredentials)>,
    /// The browser's new certificate, when the offer starts a new DTLS
    /// association (with an ICE restart; we take the role in our answer:
    /// `active`, we send the ClientHello).
    pub dtls_restart: Option<(crate::sdp::Fingerprint, bool)>,
}

/// The session id of an SDP's o= line (0 when unreadable).
fn session_id_of(sdp: &str) -> u64 {
    sdp.lines()
        .find_map(|l| l.strip_prefix("o="))
        .and_then(|o| o.split(' ').nth(1))
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

/// What of the far end's SDP the relay acts on: its addresses, whether it
/// is held to them, and its payload types. A new SDP with the same place
/// and keys (a session refresh, a direction change) moves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FarPlace {
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
    strict: bool,
    audio_pt: u8,
    event_pt: Option<u8>,
}

impl FarPlace {
    fn of(far: &FarMedia, audio: &Codec, event: Option<&Codec>) -> FarPlace {
        FarPlace {
            rtp: far.rtp,
            rtcp: far.rtcp,
            strict: far.strict,
            audio_pt: audio.pt,
            event_pt: event.map(|e| e.pt),
        }
    }
}

/// The far end moved its media: where it is now and how packets map.
#[derive(Clone)]
pub struct FarMove {
    pub far: FarMedia,
    pub payload_map: PayloadMap,
    /// The SIP leg's keys (inbound, outbound), None for plain RTP; the
    /// relay takes them only when `keys_changed`.
    pub sip_keys: Option<SipLegKeys>,
    pub keys_changed: bool,
    /// Anything the relay acts on changed (addresses, payload types, keys);
    /// false for a session refresh or a direction change alone.
    pub changed: bool,
    /// Each leg's codec, and whether the call is transcoded.
    pub codecs: CallCodecs,
}

impl std::fmt::Debug for FarMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FarMove")
            .field("far_rtp", &self.far.rtp)
            .field("codecs", &self.codecs)
            .field("keys_changed", &self.keys_changed)
            .finish_non_exhaustive()
    }
}

impl PartialEq for FarMove {
    fn eq(&self, other: &Self) -> bool {
        (self.far.rtp, self.far.rtcp, &self.codecs, self.keys_changed)
            == (
                other.far.rtp,
                other.far.rtcp,
                &other.codecs,
                other.keys_changed,
            )
    }
}

impl Eq for FarMove {}

/// Our answer to the far end's new offer, and what it changes.
#[derive(Debug, PartialEq, Eq)]
pub struct Reanswer {
    pub sdp: String,
    pub moved: FarMove,
}

/// The codecs a browser is offered for a call whose INVITE had no SDP: the
/// G.711 pair every SIP switch takes, and telephone-event. The far end's
/// codecs are unknown until its answer in the ACK, and the browser is not
/// asked again, so the offer keeps to what the far end will surely take.
fn delayed_offer_codecs() -> Vec<Codec> {
    let codec = |pt, name, clock_rate| Codec {
        pt,
        name,
        clock_rate,
        channels: 1,
        fmtp: None,
    };
    vec![
        codec(0, CodecName::Pcmu, 8000),
        codec(8, CodecName::Pcma, 8000),
        Codec {
            fmtp: Some("0-16".into()),
            ..codec(101, CodecName::TelephoneEvent, 8000)
        },
    ]
}

/// The payload-type map between the browser's codec (and telephone-event)
/// and the far end's.
fn payload_map_of(
    web_audio: &Codec,
    far_audio: &Codec,
    events: Option<(&Codec, &Codec)>,
) -> PayloadMap {
    let map = PayloadMap::new(&[(web_audio.pt, far_audio.pt, web_audio.clock_rate)]);
    match events {
        Some((web, far)) => {
            map.with_telephone_event(web.pt, web.clock_rate, far.pt, far.clock_rate)
        }
        None => map,
    }
}

/// `name/clock` of a codec, lower case.
fn codec_label(codec: &Codec) -> String {
    format!(
        "{}/{}",
        codec.name.encoding().to_ascii_lowercase(),
        codec.clock_rate
    )
}

impl Agreed {
    /// The far end's codec (and telephone-event) in `codecs`: the browser
    /// leg's own, else — when the browser has Opus and transcoding is
    /// allowed — the first G.711 codec the relay transcodes it to.
    fn far_codecs(&self, codecs: &[Codec]) -> Result<(Codec, Option<Codec>), SdpError> {
        let may_transcode = self.transcode != TranscodePolicy::Never && is_opus(&self.web_audio);
        let audio = codecs
            .iter()
            .find(|c| c.same_as(&self.web_audio))
            .or_else(|| {
                codecs
                    .iter()
                    .find(|c| may_transcode && sip_codec_of(c).is_some())
            })
            .cloned()
            .ok_or_else(|| SdpError::NoCommonCodec {
                offered: format!(
                    "the far end's new SDP lacks the call's codec {}",
                    codec_label(&self.web_audio)
                ),
            })?;
        let event = self
            .web_event
            .as_ref()
            .and_then(|_| {
                codecs
                    .iter()
                    .find(|c| c.is_telephone_event() && c.clock_rate == audio.clock_rate)
            })
            .cloned();
        Ok((audio, event))
    }

    /// Takes `far` (with its codec and telephone-event) and `sip_keys` as
    /// the call's media now.
    fn take(
        &mut self,
        far: FarMedia,
        audio: &Codec,
        event: Option<&Codec>,
        sip_keys: Option<SipLegKeys>,
    ) -> FarMove {
        let web_event = self.web_event.as_ref();
        let payload_map = transcoded_map(&self.web_audio, audio, web_event.zip(event));
        let keys_changed = sip_keys != self.sip_keys;
        self.sip_keys = sip_keys.clone();
        let place = FarPlace::of(&far, audio, event);
        let changed = keys_changed || place != self.place;
        self.place = place;
        // An answer keeps the offer's profile, so ours and theirs agree.
        self.secure_profile = far.secure;
        FarMove {
            far,
            payload_map,
            sip_keys,
            keys_changed,
            changed,
            codecs: CallCodecs::of(&self.web_audio, audio),
        }
    }
}

/// One call's offer/answer state.
pub struct Negotiator {
    context: NegotiationContext,
    pending: Pending,
    random: Random,
}

impl Negotiator {
    /// An outbound call: the browser's checked offer (`plan`). Returns our
    /// offer for the far end (None for the echo, which is handed the
    /// browser's codecs directly).
    pub fn outbound(
        context: NegotiationContext,
        plan: OutboundPlan,
        offer_to_far: bool,
        mut random: Random,
    ) -> Result<(Negotiator, Option<String>), SdpError> {
        let (sip_crypto, offer) = if offer_to_far {
            let crypto = sip_offer_crypto(context.sip_srtp, &mut random)?;
            let sdp = build::sip_media(&SipMedia {
                local: context.sip_local(&mut random),
                codecs: &plan.far_offer_codecs,
                direction: Direction::SendRecv,
                crypto: &crypto,
                secure_profile: sip_offer_secure_profile(context.sip_srtp),
                rtcp_mux: false,
                ptime: None,
            });
            (crypto, Some(sdp))
        } else {
            (Vec::new(), None)
        };
        let negotiator = Negotiator {
            context,
            pending: Pending::FarAnswer {
                plan: Box::new(plan),
                sip_crypto,
            },
            random,
        };
        Ok((negotiator, offer))
    }

    /// An inbound call: the far end's offer, checked. Returns our offer for
    /// the browser.
    pub fn inbound(
        context: NegotiationContext,
        far_offer: FarOffer,
        mut random: Random,
    ) -> Result<(Negotiator, String), SdpError> {
        let FarOffer { far, codecs } = far_offer;
        let sip_keying = sip_answer_keying(context.sip_srtp, &far.crypto, far.secure, &mut random)?;
        let codecs = Self::web_offer_codecs(&context, codecs);
        let offer = WebOfferState::new(codecs, far, sip_keying, true, &mut random)?;
        Self::offer_to_browser(context, offer, random)
    }

    /// An inbound call whose INVITE has no SDP (delayed offer): the browser
    /// is offered [`delayed_offer_codecs`]; once it answers, our offer for
    /// the far end is built from the codec it chose and goes in the 2xx,
    /// and the far end's answer comes in the ACK. Returns our offer for the
    /// browser.
    pub fn inbound_without_offer(
        context: NegotiationContext,
        mut random: Random,
    ) -> Result<(Negotiator, String), SdpError> {
        let codecs = delayed_offer_codecs();
        let far = FarMedia {
            codecs: codecs.clone(),
            ..FarMedia::unknown()
        };
        let codecs = Self::web_offer_codecs(&context, codecs);
        let offer = WebOfferState::new(codecs, far, SipAnswerKeying::PLAIN, false, &mut random)?;
        Self::offer_to_browser(context, offer, random)
    }

    /// What the browser is offered for an incoming call whose far end
    /// offered `codecs`: the same, with Opus first (to be transcoded) under
    /// `prefer-opus-web` when the far end has G.711 and no Opus. Under
    /// `when-needed` the browser is offered only the far end's codecs: every
    /// browser takes G.711, so adding Opus would only invite transcoding.
    fn web_offer_codecs(context: &NegotiationContext, codecs: Vec<Codec>) -> Vec<Codec> {
        let transcodable = codecs.iter().any(|c| sip_codec_of(c).is_some());
        if context.transcode == TranscodePolicy::PreferOpusWeb && transcodable {
            with_opus_first(codecs)
        } else {
            codecs
        }
    }

    fn offer_to_browser(
        context: NegotiationContext,
        mut offer: WebOfferState,
        mut random: Random,
    ) -> Result<(Negotiator, String), SdpError> {
        offer.web_session_id = u64::from(random.u32());
        let web_sdp = build::web_offer(&WebOffer {
            candidates: &context.web_addresses,
            tcp_port: context.web_tcp_port,
            local: Local {
                address: context
                    .web_addresses
                    .first()
                    .copied()
                    .ok_or_else(|| SdpError::Internal("no address for the web leg".into()))?,
                port: context.web_port,
                session_id: offer.web_session_id,
                session_version: 1,
            },
            ice: &offer.local_ice,
            fingerprint: context
                .web_enable_dtls
                .then_some(&context.identity.fingerprint),
            crypto: &offer.crypto,
            codecs: &offer.codecs,
            direction: Direction::SendRecv,
            ssrc: offer.ssrc,
            cname: "gateway",
        });
        let negotiator = Negotiator {
            context,
            pending: Pending::BrowserAnswer(Box::new(offer)),
            random,
        };
        Ok((negotiator, web_sdp))
    }

    /// Inbound: the far end's INVITE carried an offer (false: a delayed
    /// offer, or an outbound call).
    pub fn far_offered(&self) -> bool {
        matches!(&self.pending, Pending::BrowserAnswer(offer) if offer.far_offered)
    }

    /// Whether a plan has been made (later SDP changes nothing yet).
    pub fn is_done(&self) -> bool {
        matches!(self.pending, Pending::Agreed(_))
    }

    /// The far end answered our offer (outbound): the plan, with our answer
    /// for the browser.
    pub fn far_answered(&mut self, far: FarMedia) -> Result<MediaPlan, SdpError> {
        let Pending::FarAnswer { plan, sip_crypto } = &self.pending else {
            return Err(SdpError::Internal(
                "no offer of ours awaits the far end's answer".into(),
            ));
        };
        let negotiated = negotiate(
            plan,
            &far.codecs,
            &self.context.web_local(),
            &mut self.random,
        )?;
        let sip_keys = sip_answer_keys(self.context.sip_srtp, sip_crypto, &far.crypto, far.secure)?;
        let ours_chosen = sip_crypto
            .iter()
            .filter(|c| sip_keys.as_ref().is_some_and(|(_, out)| *out == c.keys))
            .cloned()
            .collect();
        let mut sip_codecs = vec![negotiated.far_audio.clone()];
        sip_codecs.extend(negotiated.events.as_ref().map(|(_, far)| far.clone()));
        let web = WebAgreed::of(
            &negotiated.leg,
            plan.sdes_local.clone(),
            negotiated
                .sdes_keys
                .as_ref()
                .map(|(theirs, _)| theirs.clone()),
            negotiated.web_ssrc,
            session_id_of(&negotiated.web_sdp),
        )?;
        self.pending = Pending::Agreed(Box::new(Agreed {
            web_audio: negotiated.web_audio.clone(),
            web_event: negotiated.events.as_ref().map(|(web, _)| web.clone()),
            sip_codecs,
            sip_crypto: ours_chosen,
            sip_keys: sip_keys.clone(),
            rtcp_mux: far.rtcp.is_none(),
            secure_profile: sip_offer_secure_profile(self.context.sip_srtp),
            place: FarPlace::of(
                &far,
                &negotiated.far_audio,
                negotiated.events.as_ref().map(|(_, far)| far),
            ),
            web,
            transcode: self.context.transcode,
        }));
        Ok(MediaPlan {
            codecs: negotiated.codecs,
            payload_map: negotiated.payload_map,
            web_keys: negotiated.sdes_keys,
            web_ssrc: negotiated.web_ssrc,
            sip_keys,
            far,
            leg: negotiated.leg,
            web_sdp: Some(negotiated.web_sdp),
            sip_sdp: None,
        })
    }

    /// The far end's SDP in a 18x or 200 (outbound).
    pub fn far_answered_sdp(&mut self, sdp: &str) -> Result<MediaPlan, SdpError> {
        self.far_answered(FarMedia::from_sdp(sdp)?)
    }

    /// The browser answered our offer (inbound): its keying (DTLS by the
    /// answer's fingerprint when allowed, else the SDES key it took of
    /// ours), the codec it chose among ours, and our answer for the far end.
    pub fn browser_answered(&mut self, sdp: &str) -> Result<MediaPlan, SdpError> {
        let Pending::BrowserAnswer(offer) = &self.pending else {
            return Err(SdpError::Internal(
                "no offer of ours awaits the browser's answer".into(),
            ));
        };
        let answer = Description::parse(sdp)?;
        let remote_ice = answer.audio.ice.clone().ok_or(SdpError::NoIceCredentials)?;
        let dtls = self.context.web_enable_dtls;
        let mut our_crypto = None;
        let (keying, web_keys) = match (&answer.audio.fingerprint, answer.audio.crypto.first()) {
            (Some(fp), _) if dtls => (
                LegKeying::Dtls {
                    identity: self.context.identity.clone(),
                    peer_fingerprint: fp.clone(),
                    active: answer.audio.setup == Some(Setup::Passive),
                },
                None,
            ),
            (_, Some(theirs)) => {
                let ours = offer
                    .crypto
                    .iter()
                    .find(|c| c.tag == theirs.tag && c.keys.profile == theirs.keys.profile)
                    .ok_or_else(|| {
                        SdpError::BadCrypto("the answer's a=crypto is not one we offered".into())
                    })?;
                if theirs.keys == ours.keys {
                    return Err(repeated_key());
                }
                our_crypto = Some(ours.clone());
                (
                    LegKeying::Sdes,
                    Some((theirs.keys.clone(), ours.keys.clone())),
                )
            }
            _ if dtls => return Err(SdpError::NoFingerprintNoCrypto),
            _ => return Err(SdpError::CryptoRequired),
        };
        let chosen = answer
            .audio
            .codecs
            .iter()
            .find(|c| c.is_carried_audio() && offer.codecs.iter().any(|o| o.same_as(c)))
            .cloned()
            .ok_or_else(|| SdpError::NoCommonCodec {
                offered: "none of the codecs we offered".into(),
            })?;
        let far_has = offer.far.codecs.iter().any(|c| c.same_as(&chosen));
        let sip_codecs = if far_has || !is_opus(&chosen) {
            answer_codecs(&offer.far.codecs, &chosen)?
        } else {
            // The browser took the Opus we added: the far end gets G.711,
            // transcoded. Our answer names the first it offered; with no
            // offer of its own, our offer names every one it may choose.
            let narrow = offer
                .far
                .codecs
                .iter()
                .find(|c| sip_codec_of(c).is_some())
                .cloned()
                .ok_or_else(|| SdpError::NoCommonCodec {
                    offered: "no G.711 codec for the far end".into(),
                })?;
            if offer.far_offered {
                answer_codecs(&offer.far.codecs, &narrow)?
            } else {
                offer
                    .far
                    .codecs
                    .iter()
                    .filter(|c| {
                        sip_codec_of(c).is_some()
                            || (c.is_telephone_event() && c.clock_rate == narrow.clock_rate)
                    })
                    .cloned()
                    .collect()
            }
        };
        let web_event = answer
            .audio
            .codecs
            .iter()
            .find(|c| c.is_telephone_event() && c.clock_rate == chosen.clock_rate)
            .cloned();
        let sip_event = sip_codecs
            .iter()
            .find(|c| c.is_telephone_event())
            .filter(|_| web_event.is_some())
            .cloned();
        let payload_map = transcoded_map(
            &chosen,
            &sip_codecs[0],
            web_event.as_ref().zip(sip_event.as_ref()),
        );
        // With the far end's offer, our answer; without one, our offer (our
        // keys by policy, the codec the browser chose).
        let (sip_crypto, secure_profile, sip_keys) = if offer.far_offered {
            (
                offer.sip_keying.crypto().to_vec(),
                offer.sip_keying.secure_profile,
                offer.sip_keying.leg_keys(),
            )
        } else {
            (
                sip_offer_crypto(self.context.sip_srtp, &mut self.random)?,
                sip_offer_secure_profile(self.context.sip_srtp),
                None,
            )
        };
        let rtcp_mux = offer.far_offered && offer.far.rtcp.is_none();
        let sip_sdp = build::sip_media(&SipMedia {
            local: self.context.sip_local(&mut self.random),
            codecs: &sip_codecs,
            direction: Direction::SendRecv,
            crypto: &sip_crypto,
            secure_profile,
            rtcp_mux,
            ptime: None,
        });
        let plan = MediaPlan {
            codecs: CallCodecs::of(&chosen, &sip_codecs[0]),
            payload_map,
            web_keys,
            web_ssrc: offer.ssrc,
            sip_keys: sip_keys.clone(),
            far: if offer.far_offered {
                offer.far.clone()
            } else {
                FarMedia::unknown()
            },
            leg: WebLegSpec {
                local_ice: offer.local_ice.clone(),
                remote_ice,
                keying,
                consent_timeout: self.context.consent_timeout,
                rtp_timeout: self.context.rtp_timeout,
            },
            web_sdp: None,
            sip_sdp: Some(sip_sdp),
        };
        let place = FarPlace::of(&plan.far, &sip_codecs[0], sip_event.as_ref());
        let web = WebAgreed::of(
            &plan.leg,
            our_crypto,
            plan.web_keys.as_ref().map(|(theirs, _)| theirs.clone()),
            offer.ssrc,
            offer.web_session_id,
        )?;
        let mut sip_sent = vec![sip_codecs[0].clone()];
        sip_sent.extend(sip_event);
        self.pending = Pending::Agreed(Box::new(Agreed {
            web_audio: chosen,
            web_event,
            sip_codecs: sip_sent,
            sip_crypto,
            sip_keys,
            rtcp_mux,
            secure_profile,
            place,
            web,
            transcode: self.context.transcode,
        }));
        Ok(plan)
    }
}

impl Negotiator {
    fn agreed(&mut self) -> Result<&mut Agreed, SdpError> {
        match &mut self.pending {
            Pending::Agreed(agreed) => Ok(agreed),
            _ => Err(SdpError::Internal(
                "the call's first offer/answer is not complete".into(),
            )),
        }
    }

    /// The far end's new offer in a re-INVITE or UPDATE: our answer, with
    /// the call's codec at the far end's payload type, our key kept when
    /// the suite is the same (a new one otherwise), and the direction
    /// answered; and the media's new place. Refused (the far end gets 488,
    /// and the media stays as it was) when it lacks the call's codec — the
    /// browser leg is not renegotiated — or its keying breaks the policy.
    pub fn far_reoffer(&mut self, sdp: &str) -> Result<Reanswer, SdpError> {
        let far = FarMedia::from_sdp(sdp)?;
        let policy = self.context.sip_srtp;
        let keyed = sip_offer_keyed(policy, &far.crypto, far.secure)?;
        let local = Local {
            session_version: 1,
            ..self.context.sip_local(&mut self.random)
        };
        let mut random = self.random.fork();
        let agreed = self.agreed()?;
        let (audio, event) = agreed.far_codecs(&far.codecs)?;
        let chosen = if keyed { far.crypto.first() } else { None };
        let ours = match chosen {
            Some(theirs) => {
                let kept = agreed
                    .sip_crypto
                    .iter()
                    .find(|o| o.tag == theirs.tag && o.keys.profile == theirs.keys.profile)
                    .filter(|o| {
                        agreed
                            .sip_keys
                            .as_ref()
                            .is_some_and(|(_, out)| *out == o.keys)
                    });
                Some(match kept {
                    Some(kept) => kept.clone(),
                    None => {
                        CryptoAttribute::generate(theirs.tag, theirs.keys.profile, &mut random)?
                    }
                })
            }
            None => None,
        };
        let sip_keys = chosen
            .zip(ours.as_ref())
            .map(|(theirs, ours)| (theirs.keys.clone(), ours.keys.clone()));
        if sip_keys
            .as_ref()
            .is_some_and(|(inbound, outbound)| inbound == outbound)
        {
            return Err(repeated_key());
        }
        let mut codecs = vec![audio.clone()];
        codecs.extend(event.clone());
        let crypto: Vec<CryptoAttribute> = ours.into_iter().collect();
        let answer = build::sip_media(&SipMedia {
            local,
            codecs: &codecs,
            direction: far.direction.answer(),
            crypto: &crypto,
            secure_profile: far.secure,
            rtcp_mux: agreed.rtcp_mux,
            ptime: None,
        });
        agreed.sip_codecs = codecs;
        agreed.sip_crypto = crypto;
        let moved = agreed.take(far, &audio, event.as_ref(), sip_keys);
        Ok(Reanswer { sdp: answer, moved })
    }

    /// The browser's new offer (after a network change, RFC 8445 §9 ICE
    /// restart; or the same session offered again): our answer with the
    /// call's codec at its payload type, our SSRC, keying and DTLS role as
    /// before, and fresh ICE credentials of ours when its own changed. A
    /// new fingerprint or SDES key (a new DTLS association or new keys), or
    /// an offer without the call's codec, is refused and changes nothing.
    pub fn browser_reoffer(&mut self, sdp: &str) -> Result<WebReanswer, SdpError> {
        let offer = Description::parse(sdp)?;
        let remote_ice = offer.audio.ice.clone().ok_or(SdpError::NoIceCredentials)?;
        if !offer.audio.rtcp_mux {
            return Err(SdpError::NoRtcpMux);
        }
        let address = self
            .context
            .web_addresses
            .first()
            .copied()
            .ok_or_else(|| SdpError::Internal("no address for the web leg".into()))?;
        let (port, candidates) = (self.context.web_port, self.context.web_addresses.clone());
        let tcp_port = self.context.web_tcp_port;
        let fresh_ice = IceCredentials {
            ufrag: self.random.ice_token(6),
            pwd: self.random.ice_token(18),
        };
        let agreed = self.agreed()?;
        let web = &mut agreed.web;
        let restart = remote_ice != web.remote_ice;
        // A browser whose DTLS broke (Firefox's does when ICE fails for a
        // while) recovers with a new peer connection: a new certificate and
        // new ICE credentials. Its new association replaces the call's; a
        // new fingerprint without an ICE restart is refused.
        let mut dtls_restart = None;
        match (&web.their_fingerprint, &web.their_key) {
            (Some(theirs), _) if offer.audio.fingerprint.as_ref() != Some(theirs) => {
                let (Some(new), true) = (&offer.audio.fingerprint, restart) else {
                    return Err(SdpError::BadFingerprint(
                        "the new offer changes the call's fingerprint without restarting ICE (a new DTLS association comes with new ICE credentials)"
                            .into(),
                    ));
                };
                // Taken below, once nothing else refuses the offer.
                let setup = build::answer_setup(offer.audio.setup.unwrap_or(Setup::ActPass));
                dtls_restart = Some((new.clone(), setup));
            }
            (None, Some(theirs)) if !offer.audio.crypto.iter().any(|c| &c.keys == theirs) => {
                return Err(SdpError::BadCrypto(
                    "the new offer does not keep the call's SDES key".into(),
                ))
            }
            _ => {}
        }
        let audio = offer
            .audio
            .codecs
            .iter()
            .find(|c| c.pt == agreed.web_audio.pt && c.same_as(&agreed.web_audio))
            .cloned()
            .ok_or_else(|| SdpError::NoCommonCodec {
                offered: format!(
                    "the new offer lacks the call's codec {} at payload type {}",
                    codec_label(&agreed.web_audio),
                    agreed.web_audio.pt
                ),
            })?;
        let mut codecs = vec![audio];
        codecs.extend(
            agreed
                .web_event
                .iter()
                .filter(|e| {
                    offer
                        .audio
                        .codecs
                        .iter()
                        .any(|c| c.pt == e.pt && c.is_telephone_event())
                })
                .cloned(),
        );
        let web = &mut agreed.web;
        if restart {
            web.remote_ice = remote_ice;
            web.local_ice = fresh_ice;
        }
        if let Some((theirs, setup)) = &dtls_restart {
            if let AnswerKeying::Dtls { setup: ours, .. } = &mut web.keying {
                *ours = *setup;
            }
            web.their_fingerprint = Some(theirs.clone());
        }
        web.version += 1;
        let answer = build::web_answer(&WebAnswer {
            offer: &offer,
            local: Local {
                address,
                port,
                session_id: web.session_id,
                session_version: web.version,
            },
            candidates: &candidates,
            tcp_port,
            ice: &web.local_ice,
            keying: web.keying.clone(),
            codecs: &codecs,
            direction: offer.audio.direction.answer(),
            ssrc: web.ssrc,
            cname: "gateway",
        });
        Ok(WebReanswer {
            sdp: answer,
            ice_restart: restart.then(|| (web.local_ice.clone(), web.remote_ice.clone())),
            dtls_restart: dtls_restart.map(|(theirs, setup)| (theirs, setup == Setup::Active)),
        })
    }

    /// Our offer for a re-INVITE without SDP: the call's media as it
    /// stands (its codec, our key, our address), in `direction`.
    pub fn offer_current(&mut self, direction: Direction) -> Result<String, SdpError> {
        let local = Local {
            session_version: 1,
            ..self.context.sip_local(&mut self.random)
        };
        let agreed = self.agreed()?;
        Ok(build::sip_media(&SipMedia {
            local,
            codecs: &agreed.sip_codecs,
            direction,
            crypto: &agreed.sip_crypto,
            secure_profile: agreed.secure_profile,
            rtcp_mux: agreed.rtcp_mux,
            ptime: None,
        }))
    }

    /// The far end's answer, in its ACK, to our offer in a 2xx (the
    /// INVITE or re-INVITE had no SDP): the media's place, keys and types.
    /// Refused when it lacks the call's codec or a key we offered.
    pub fn far_answered_in_ack(&mut self, sdp: &str) -> Result<FarMove, SdpError> {
        let far = FarMedia::from_sdp(sdp)?;
        let policy = self.context.sip_srtp;
        let agreed = self.agreed()?;
        let (audio, event) = agreed.far_codecs(&far.codecs)?;
        let sip_keys = sip_answer_keys(policy, &agreed.sip_crypto, &far.crypto, far.secure)?;
        agreed
            .sip_crypto
            .retain(|c| sip_keys.as_ref().is_some_and(|(_, out)| *out == c.keys));
        agreed.sip_codecs = vec![audio.clone()];
        agreed.sip_codecs.extend(event.clone());
        Ok(agreed.take(far, &audio, event.as_ref(), sip_keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u32, profile: SrtpProfile) -> CryptoAttribute {
        CryptoAttribute::generate(tag, profile, &mut Random::seeded(u64::from(tag))).unwrap()
    }

    #[test]
    fn offers_by_policy() {
        assert!(sip_offer_crypto(SrtpPolicy::Off, &mut Random::seeded(3))
            .unwrap()
            .is_empty());
        let mut random = Random::seeded(3);
        for policy in [SrtpPolicy::Optional, SrtpPolicy::Required] {
            let ours = sip_offer_crypto(policy, &mut random).unwrap();
            let suites: Vec<_> = ours.iter().map(|c| (c.tag, c.keys.profile)).collect();
            assert_eq!(
                suites,
                vec![
                    (1, SrtpProfile::AesCm128HmacSha1_80),
                    (2, SrtpProfile::AesCm128HmacSha1_32)
                ]
            );
            // Fresh keys every time from one source; the same from one seed.
            assert_ne!(ours, sip_offer_crypto(policy, &mut random).unwrap());
            assert_eq!(
                sip_offer_crypto(policy, &mut Random::seeded(30)).unwrap(),
                sip_offer_crypto(policy, &mut Random::seeded(30)).unwrap()
            );
        }
        assert!(!sip_offer_secure_profile(SrtpPolicy::Optional));
        assert!(sip_offer_secure_profile(SrtpPolicy::Required));
    }

    #[test]
    fn the_far_answer_picks_one_of_our_keys() {
        let ours = sip_offer_crypto(SrtpPolicy::Optional, &mut Random::seeded(3)).unwrap();
        let theirs = key(2, SrtpProfile::AesCm128HmacSha1_32);
        let keys = sip_answer_keys(
            SrtpPolicy::Optional,
            &ours,
            std::slice::from_ref(&theirs),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(keys, (theirs.keys.clone(), ours[1].keys.clone()));
        // A tag we offered with another suite is no match.
        let wrong = key(1, SrtpProfile::AesCm128HmacSha1_32);
        assert!(matches!(
            sip_answer_keys(SrtpPolicy::Required, &ours, &[wrong], true),
            Err(SdpError::BadCrypto(_))
        ));
        // Our own key handed back: refused, whatever the policy.
        for policy in [SrtpPolicy::Optional, SrtpPolicy::Required] {
            let echoed = sip_answer_keys(policy, &ours, std::slice::from_ref(&ours[0]), true);
            assert!(
                matches!(&echoed, Err(SdpError::BadCrypto(m)) if m.contains("repeats the key")),
                "{echoed:?}"
            );
        }
    }

    #[test]
    fn a_plain_answer_by_policy() {
        let ours = sip_offer_crypto(SrtpPolicy::Required, &mut Random::seeded(3)).unwrap();
        assert_eq!(
            sip_answer_keys(SrtpPolicy::Optional, &ours, &[], false),
            Ok(None)
        );
        assert_eq!(
            sip_answer_keys(SrtpPolicy::Required, &ours, &[], false),
            Err(SdpError::SipSrtpRequired)
        );
        // RTP/SAVP without a key is no answer at all.
        assert_eq!(
            sip_answer_keys(SrtpPolicy::Optional, &ours, &[], true),
            Err(SdpError::SipSrtpRequired)
        );
        // We offered no keys (off, or the echo endpoint): plain, whatever came back.
        let stray = key(1, SrtpProfile::AesCm128HmacSha1_80);
        assert_eq!(
            sip_answer_keys(
                SrtpPolicy::Required,
                &[],
                std::slice::from_ref(&stray),
                true
            ),
            Ok(None)
        );
        assert_eq!(
            sip_answer_keys(SrtpPolicy::Off, &ours, &[stray], true),
            Ok(None)
        );
    }

    #[test]
    fn answering_a_far_offer() {
        let offered = [
            key(5, SrtpProfile::AeadAes128Gcm),
            key(6, SrtpProfile::AesCm128HmacSha1_80),
        ];
        for policy in [SrtpPolicy::Optional, SrtpPolicy::Required] {
            for secure in [false, true] {
                let k =
                    sip_answer_keying(policy, &offered, secure, &mut Random::seeded(4)).unwrap();
                let ours = k.crypto()[0].clone();
                assert_eq!(
                    (ours.tag, ours.keys.profile),
                    (5, SrtpProfile::AeadAes128Gcm)
                );
                assert_ne!(
                    ours.keys, offered[0].keys,
                    "our own key, not an echo of theirs"
                );
                assert_eq!(k.secure_profile, secure);
                assert_eq!(k.leg_keys(), Some((offered[0].keys.clone(), ours.keys)));
            }
        }
        // Off: keys in RTP/AVP are declined, RTP/SAVP is refused.
        let k =
            sip_answer_keying(SrtpPolicy::Off, &offered, false, &mut Random::seeded(4)).unwrap();
        assert!(k.crypto().is_empty() && k.leg_keys().is_none() && !k.secure_profile);
        assert_eq!(
            sip_answer_keying(SrtpPolicy::Off, &offered, true, &mut Random::seeded(4)).err(),
            Some(SdpError::SipSrtpOff)
        );
        // No keys offered.
        let k =
            sip_answer_keying(SrtpPolicy::Optional, &[], false, &mut Random::seeded(4)).unwrap();
        assert!(k.leg_keys().is_none());
        assert_eq!(
            sip_answer_keying(SrtpPolicy::Required, &[], false, &mut Random::seeded(4)).err(),
            Some(SdpError::SipSrtpRequired)
        );
        assert_eq!(
            sip_answer_keying(SrtpPolicy::Optional, &[], true, &mut Random::seeded(4)).err(),
            Some(SdpError::SipSrtpRequired)
        );
    }
}
