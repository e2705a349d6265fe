//! From the browser's offer to what both legs of a call need: the codecs the
//! far end may be offered, how the web leg is keyed, and — once the far end
//! has chosen — our answer for the browser and the relay's payload-type map.
//! Pure functions: every refusal is an [`SdpError`] and nothing has been
//! allocated or sent when one comes back.

use std::net::IpAddr;
use std::time::Duration;

use super::{LegKeying, WebLegSpec};
use crate::config::SrtpPolicy;
use crate::media::relay::PayloadMap;
use crate::media::srtp::{SrtpKeyMaterial, SrtpProfile};
use crate::random::Random;
use crate::sdp::build::{self, AnswerKeying, Local, WebAnswer};
use crate::sdp::codecs::{answer_codecs, pair_answer, usable};
use crate::sdp::{
    web_offer_keying, Codec, CryptoAttribute, Description, IceCredentials, SdpError, WebKeying,
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
    /// gateway carries, in the browser's order, with telephone-event.
    pub far_offer_codecs: Vec<Codec>,
}

/// Checks the browser's offer for an outbound call.
pub fn outbound(
    offer_text: &str,
    web_enable_dtls: bool,
    random: &mut Random,
) -> Result<OutboundPlan, SdpError> {
    let offer = Description::parse(offer_text)?;
    let keying = web_offer_keying(&offer, web_enable_dtls)?;
    let far_offer_codecs = usable(&offer.audio.codecs)?;
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
    /// Our addresses offered as candidates; the first is the connection
    /// address.
    pub addresses: &'a [IpAddr],
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
    random: &mut Random,
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
        Some(keys) => Ok(Some(keys)),
        None if !answered.is_empty() => Err(SdpError::BadCrypto(
            "the answer's a=crypto matches no tag and suite we offered".into(),
        )),
        None if policy == SrtpPolicy::Required || secure_profile => Err(SdpError::SipSrtpRequired),
        None => Ok(None),
    }
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
    if policy == SrtpPolicy::Off {
        if secure {
            return Err(SdpError::SipSrtpOff);
        }
        // Best-effort keys in RTP/AVP: answering without a=crypto declines them.
        return Ok(SipAnswerKeying::PLAIN);
    }
    match offered.first() {
        Some(theirs) => Ok(SipAnswerKeying {
            sdes: Some((
                CryptoAttribute::generate(theirs.tag, theirs.keys.profile, random)?,
                theirs.keys.clone(),
            )),
            secure_profile: secure,
        }),
        None if policy == SrtpPolicy::Required || secure => Err(SdpError::SipSrtpRequired),
        None => Ok(SipAnswerKeying::PLAIN),
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
