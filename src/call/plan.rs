//! From the browser's offer to what both legs of a call need: the codecs the
//! far end may be offered, how the web leg is keyed, and — once the far end
//! has chosen — our answer for the browser and the relay's payload-type map.
//! Pure functions: every refusal is an [`SdpError`] and nothing has been
//! allocated or sent when one comes back.

use std::net::IpAddr;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::{LegKeying, WebLegSpec};
use crate::media::relay::PayloadMap;
use crate::media::srtp::SrtpKeyMaterial;
use crate::sdp::build::{self, AnswerKeying, Local, WebAnswer};
use crate::sdp::codecs::{answer_codecs, pair_answer, usable};
use crate::sdp::{
    web_offer_keying, Codec, CryptoAttribute, Description, IceCredentials, SdpError, WebKeying,
};
use crate::webrtc::dtls::DtlsIdentity;

/// Random text from the system CSPRNG: `bytes` bytes in base64url, with
/// only characters valid in ICE credentials and SDP tokens.
pub fn random_token(bytes: usize) -> Result<String, SdpError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| SdpError::Internal("the system random generator failed".into()))?;
    // '-' and '_' are not ice-chars (RFC 8839): map them to letters.
    Ok(URL_SAFE_NO_PAD
        .encode(buf)
        .replace('-', "a")
        .replace('_', "b"))
}

/// A random 32-bit value (SSRC, SDP session id).
pub fn random_u32() -> Result<u32, SdpError> {
    let mut buf = [0u8; 4];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| SdpError::Internal("the system random generator failed".into()))?;
    Ok(u32::from_be_bytes(buf))
}

/// An outbound call's browser side, checked and ready for the far end.
pub struct OutboundPlan {
    pub offer: Description,
    pub keying: WebKeying,
    pub local_ice: IceCredentials,
    /// Our SDES key toward the browser (when the browser is keyed by SDES).
    pub sdes_local: Option<CryptoAttribute>,
    /// What the far end may be offered: the browser's codecs that the
    /// gateway carries, in the browser's order, with telephone-event.
    pub far_offer_codecs: Vec<Codec>,
}

/// Checks the browser's offer for an outbound call.
pub fn outbound(offer_text: &str, web_enable_dtls: bool) -> Result<OutboundPlan, SdpError> {
    let offer = Description::parse(offer_text)?;
    let keying = web_offer_keying(&offer, web_enable_dtls)?;
    let far_offer_codecs = usable(&offer.audio.codecs)?;
    let sdes_local = match &keying {
        WebKeying::Sdes(theirs) => {
            Some(CryptoAttribute::generate(theirs.tag, theirs.keys.profile)?)
        }
        WebKeying::Dtls { .. } => None,
    };
    let local_ice = IceCredentials {
        ufrag: random_token(6)?,
        pwd: random_token(18)?,
    };
    Ok(OutboundPlan {
        offer,
        keying,
        local_ice,
        sdes_local,
        far_offer_codecs,
    })
}

/// What the far end answered, applied to both legs.
pub struct Negotiated {
    /// Our answer for the browser.
    pub web_sdp: String,
    pub payload_map: PayloadMap,
    /// The call's audio codec as `name/clock`, e.g. `opus/48000`.
    pub codec: String,
    /// The SSRC we send toward the browser (it is in `web_sdp`).
    pub web_ssrc: u32,
    /// SDES keys for the relay's web leg: (inbound, outbound).
    pub sdes_keys: Option<(SrtpKeyMaterial, SrtpKeyMaterial)>,
    pub leg: WebLegSpec,
}

/// Where and how our side of the web leg is reached.
pub struct WebLocal<'a> {
    pub address: IpAddr,
    pub port: u16,
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
) -> Result<Negotiated, SdpError> {
    let pairs = pair_answer(&plan.far_offer_codecs, far_answer)?;
    let (web_audio, _) = pairs
        .iter()
        .find(|(o, _)| o.is_carried_audio())
        .cloned()
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: "no audio codec in the far end's answer".into(),
        })?;
    let codecs = answer_codecs(&plan.offer.audio.codecs, &web_audio)?;
    let mut triples = Vec::new();
    let mut map_event = None;
    for (web, far) in &pairs {
        if web.is_telephone_event() {
            if web.clock_rate == web_audio.clock_rate || map_event.is_none() {
                map_event = Some((web.pt, web.clock_rate, far.pt, far.clock_rate));
            }
        } else if web.is_carried_audio() {
            triples.push((web.pt, far.pt, web.clock_rate));
        }
    }
    let mut payload_map = PayloadMap::new(&triples);
    if let Some((web_pt, web_clock, far_pt, far_clock)) = map_event {
        payload_map = payload_map.with_telephone_event(web_pt, web_clock, far_pt, far_clock);
    }
    let web_ssrc = random_u32()?;
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
    let web_sdp = build::web_answer(&WebAnswer {
        offer: &plan.offer,
        local: Local {
            address: local.address,
            port: local.port,
            session_id: u64::from(random_u32()?),
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
        codec: format!(
            "{}/{}",
            web_audio.name.encoding().to_ascii_lowercase(),
            web_audio.clock_rate
        ),
        web_ssrc,
        sdes_keys,
        leg: WebLegSpec {
            local_ice: plan.local_ice.clone(),
            remote_ice,
            keying: leg_keying,
            consent_timeout: local.consent_timeout,
            rtp_timeout: local.rtp_timeout,
        },
    })
}
