//! SDES (RFC 4568) `a=crypto` attributes: parsing offered keys, and making
//! fresh ones from the system CSPRNG for our offers and answers.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::SdpError;
use crate::media::srtp::{SrtpKeyMaterial, SrtpProfile};
use crate::random::Random;

/// Smallest key lifetime we accept: 2^24 packets is over 90 hours of audio
/// at 50 packets per second, longer than any call; we never re-key.
const MIN_LIFETIME: u64 = 1 << 24;

/// One `a=crypto` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    pub keys: SrtpKeyMaterial,
}

impl CryptoAttribute {
    /// Parses the attribute value: `tag suite inline:KEY[|lifetime][|MKI:len] [params]`.
    pub fn parse(value: &str) -> Result<Self, SdpError> {
        let bad = |why: String| SdpError::BadCrypto(why);
        let mut parts = value.split_whitespace();
        let tag = parts
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or_else(|| bad(format!("{value:?} has no numeric tag")))?;
        let suite = parts.next().ok_or_else(|| bad("no crypto suite".into()))?;
        let profile = SrtpProfile::from_sdes_name(suite)
            .ok_or_else(|| SdpError::UnsupportedCryptoSuite(suite.to_string()))?;
        let key_params = parts
            .next()
            .ok_or_else(|| bad("no key parameters".into()))?;
        if let Some(param) = parts.next() {
            return Err(bad(format!("session parameter {param:?} is not supported")));
        }
        if key_params.contains(';') {
            return Err(bad("more than one key (key lists) is not supported".into()));
        }
        let inline = key_params
            .strip_prefix("inline:")
            .ok_or_else(|| bad(format!("key method must be inline, got {key_params:?}")))?;
        let mut fields = inline.split('|');
        let key_b64 = fields.next().unwrap_or("");
        let fields: Vec<&str> = fields.collect();
        if fields.iter().any(|f| f.contains(':')) {
            return Err(bad("MKI is not supported".into()));
        }
        for field in fields {
            let lifetime = match field.strip_prefix("2^") {
                Some(exp) => exp
                    .parse::<u32>()
                    .ok()
                    .map(|e| 1u64.checked_shl(e).unwrap_or(u64::MAX)),
                None => field.parse::<u64>().ok(),
            }
            .ok_or_else(|| bad(format!("key lifetime {field:?} is not understood")))?;
            if lifetime < MIN_LIFETIME {
                return Err(bad(format!(
                    "key lifetime {field} is too short: re-keying is not supported"
                )));
            }
        }
        let material = STANDARD
            .decode(key_b64)
            .map_err(|_| bad("the inline key is not base64".into()))?;
        let key_len = profile.master_key_len();
        if material.len() != key_len + profile.master_salt_len() {
            return Err(bad(format!(
                "{suite} needs {} bytes of key and salt, got {}",
                key_len + profile.master_salt_len(),
                material.len()
            )));
        }
        let keys = SrtpKeyMaterial::new(profile, &material[..key_len], &material[key_len..])
            .map_err(|e| bad(e.to_string()))?;
        Ok(CryptoAttribute { tag, keys })
    }

    /// A fresh key for `profile` drawn from `random`.
    pub fn generate(tag: u32, profile: SrtpProfile, random: &mut Random) -> Result<Self, SdpError> {
        let mut material = vec![0u8; profile.master_key_len() + profile.master_salt_len()];
        random.fill(&mut material);
        let (key, salt) = material.split_at(profile.master_key_len());
        let keys = SrtpKeyMaterial::new(profile, key, salt)
            .map_err(|e| SdpError::Internal(e.to_string()))?;
        Ok(CryptoAttribute { tag, keys })
    }

    /// The attribute value for our SDP.
    pub fn to_value(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.keys.profile.sdes_name(),
            STANDARD.encode(self.keys.concatenated())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_b64(len: usize) -> String {
        STANDARD.encode((0..len as u8).collect::<Vec<_>>())
    }

    #[test]
    fn parses_common_forms() {
        let k = key_b64(30);
        for line in [
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^31"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2147483648"),
        ] {
            let c = CryptoAttribute::parse(&line).unwrap();
            assert_eq!(c.tag, 1);
            assert_eq!(c.keys.profile, SrtpProfile::AesCm128HmacSha1_80);
            assert_eq!(c.keys.concatenated(), (0..30u8).collect::<Vec<_>>());
        }
        let gcm =
            CryptoAttribute::parse(&format!("2 AEAD_AES_128_GCM inline:{}", key_b64(28))).unwrap();
        assert_eq!(gcm.keys.profile, SrtpProfile::AeadAes128Gcm);
    }

    #[test]
    fn refuses_what_we_do_not_support() {
        let k = key_b64(30);
        let cases = [
            (format!("1 F8_128_HMAC_SHA1_80 inline:{k}"), "F8_128"),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^20|1:4"),
                "MKI",
            ),
            (format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|1:4"), "MKI"),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k}|2^10"),
                "lifetime",
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k} UNENCRYPTED_SRTP"),
                "UNENCRYPTED_SRTP",
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{k};inline:{k}"),
                "more than one key",
            ),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:@@@".to_string(), "base64"),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{}", key_b64(16)),
                "30 bytes",
            ),
            ("x AES_CM_128_HMAC_SHA1_80 inline:abc".to_string(), "tag"),
            (format!("1 AES_CM_128_HMAC_SHA1_80 uri:{k}"), "inline"),
        ];
        for (line, why) in cases {
            let err = CryptoAttribute::parse(&line).unwrap_err().to_string();
            assert!(err.contains(why), "{line}: {err}");
        }
    }

    #[test]
    fn generated_keys_round_trip_and_differ() {
        let mut random = Random::seeded(1);
        let a =
            CryptoAttribute::generate(1, SrtpProfile::AesCm128HmacSha1_80, &mut random).unwrap();
        let b =
            CryptoAttribute::generate(1, SrtpProfile::AesCm128HmacSha1_80, &mut random).unwrap();
        assert_ne!(a.keys, b.keys);
        assert_eq!(CryptoAttribute::parse(&a.to_value()).unwrap(), a);
    }
}
