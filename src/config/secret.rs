//! Secrets in the config: a string type that never prints itself, and the
//! `CRYPT:` envelope (AES-256-GCM) that keeps passwords out of plain text files.
//!
//! The envelope is `CRYPT:` followed by base64url(nonce ‖ ciphertext ‖ tag). The
//! 32-byte key comes from the `GATEWAY_SECRET_KEY` environment variable or from
//! the file named by `[secrets] key-file`, written as 64 hex digits or as
//! base64 of 32 bytes.

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix that marks an encrypted secret in the config.
pub const CRYPT_PREFIX: &str = "CRYPT:";
/// Environment variable holding the key that opens `CRYPT:` values.
pub const KEY_ENV: &str = "GATEWAY_SECRET_KEY";
/// What a secret looks like wherever it is shown.
pub const MASK: &str = "****";

/// A secret string from the config. `Debug`, `Display` and `Serialize` print
/// `****` (or nothing when empty), so it cannot leak through a log line or
/// through `check-config`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; call only where it is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn is_encrypted(&self) -> bool {
        self.0.starts_with(CRYPT_PREFIX)
    }
    fn masked(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            MASK
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.masked())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("no key to open CRYPT: values: set {KEY_ENV} or [secrets] key-file")]
    NoKey,
    #[error("the secret key must be 64 hex digits or base64 of 32 bytes")]
    BadKey,
    #[error("cannot read key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the CRYPT: value is not valid base64url or is too short")]
    Malformed,
    #[error("the CRYPT: value does not open with this key (wrong key or altered text)")]
    WrongKey,
    #[error("the decrypted secret is not UTF-8")]
    NotUtf8,
    #[error("the system random generator failed")]
    Random,
}

/// A 256-bit key for `CRYPT:` values.
pub struct CryptKey(LessSafeKey);

impl CryptKey {
    /// Parses 64 hex digits or base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, CryptError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| CryptError::BadKey)?
        } else {
            STANDARD.decode(text).map_err(|_| CryptError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(CryptError::BadKey);
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| CryptError::BadKey)?;
        Ok(CryptKey(LessSafeKey::new(key)))
    }

    /// Finds the key: the environment variable first, then the key file.
    pub fn locate(env_value: Option<&str>, key_file: &str) -> Result<Self, CryptError> {
        if let Some(value) = env_value.filter(|v| !v.trim().is_empty()) {
            return Self::parse(value);
        }
        if key_file.is_empty() {
            return Err(CryptError::NoKey);
        }
        let text =
            std::fs::read_to_string(Path::new(key_file)).map_err(|e| CryptError::KeyFile {
                path: key_file.to_string(),
                reason: e.to_string(),
            })?;
        Self::parse(&text)
    }

    /// Seals `plain` into a `CRYPT:` string with a fresh random nonce.
    pub fn encrypt(&self, plain: &str) -> Result<String, CryptError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptError::Random)?;
        let mut data = plain.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(CRYPT_PREFIX.as_bytes()),
                &mut data,
            )
            .map_err(|_| CryptError::Random)?;
        let mut envelope = nonce.to_vec();
        envelope.extend_from_slice(&data);
        Ok(format!(
            "{CRYPT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(envelope)
        ))
    }

    /// Opens a `CRYPT:` string.
    pub fn decrypt(&self, value: &str) -> Result<String, CryptError> {
        let body = value.strip_prefix(CRYPT_PREFIX).unwrap_or(value).trim();
        let mut data = URL_SAFE_NO_PAD
            .decode(body.trim_end_matches('='))
            .map_err(|_| CryptError::Malformed)?;
        if data.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptError::Malformed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let sealed = &mut data[NONCE_LEN..];
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(CRYPT_PREFIX.as_bytes()),
                sealed,
            )
            .map_err(|_| CryptError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| CryptError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn round_trip_and_fresh_nonce() {
        let key = CryptKey::parse(KEY_HEX).unwrap();
        let a = key.encrypt("s3cret pass").unwrap();
        let b = key.encrypt("s3cret pass").unwrap();
        assert!(a.starts_with(CRYPT_PREFIX));
        assert_ne!(a, b, "each encryption uses a new nonce");
        assert_eq!(key.decrypt(&a).unwrap(), "s3cret pass");
        assert_eq!(key.decrypt(&b).unwrap(), "s3cret pass");
    }

    #[test]
    fn wrong_key_and_tampering_fail() {
        let key = CryptKey::parse(KEY_HEX).unwrap();
        let other = CryptKey::parse(&STANDARD.encode([7u8; 32])).unwrap();
        let sealed = key.encrypt("pw").unwrap();
        assert_eq!(other.decrypt(&sealed), Err(CryptError::WrongKey));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(key.decrypt(&tampered), Err(CryptError::WrongKey));
        assert_eq!(key.decrypt("CRYPT:!!"), Err(CryptError::Malformed));
        assert_eq!(key.decrypt("CRYPT:AAAA"), Err(CryptError::Malformed));
    }

    #[test]
    fn key_forms() {
        assert!(CryptKey::parse(KEY_HEX).is_ok());
        assert!(CryptKey::parse(&STANDARD.encode([1u8; 32])).is_ok());
        assert!(matches!(CryptKey::parse("abcd"), Err(CryptError::BadKey)));
        assert!(matches!(
            CryptKey::parse(&STANDARD.encode([1u8; 16])),
            Err(CryptError::BadKey)
        ));
        assert!(matches!(CryptKey::locate(None, ""), Err(CryptError::NoKey)));
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"****\"");
        assert_eq!(format!("{s}"), "****");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"****\"");
        assert_eq!(format!("{}", Secret::default()), "");
    }
}
