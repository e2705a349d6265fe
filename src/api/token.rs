//! Bearer tokens issued by the web application's backend (see `docs/api.md`):
//! `base64url(user ":" expires_unix) "." base64url(HMAC-SHA256(secret, user ":" expires_unix))`.
//!
//! Verification compares MACs in constant time (aws-lc-rs `hmac::verify`).

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not two base64url parts joined by a dot")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token was issued for another user")]
    WrongUser,
    #[error("the token lives longer than auth.token-max-ttl-s allows")]
    TooLong,
}

fn decode(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)
}

/// Issues a token, as the web application's backend would.
pub fn issue(secret: &[u8], user: &str, expires_unix: u64) -> String {
    let payload = format!("{user}:{expires_unix}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, payload.as_bytes());
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes()),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

/// Checks a token for `user` at `now_unix`: signed with `secret`, not
/// expired, and expiring within `max_ttl_s` (a token a backend made to
/// last for ever is refused). The signature is checked before anything in
/// the payload is trusted.
pub fn verify(
    secret: &[u8],
    token: &str,
    user: &str,
    now_unix: u64,
    max_ttl_s: u64,
) -> Result<(), TokenError> {
    let (payload_b64, mac_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = decode(payload_b64)?;
    let mac = decode(mac_b64)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &payload, &mac).map_err(|_| TokenError::BadSignature)?;
    let payload = std::str::from_utf8(&payload).map_err(|_| TokenError::Malformed)?;
    // The user may itself contain ':'; the expiry is after the last one.
    let (token_user, expires) = payload.rsplit_once(':').ok_or(TokenError::Malformed)?;
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    if expires <= now_unix {
        return Err(TokenError::Expired);
    }
    if expires - now_unix > max_ttl_s {
        return Err(TokenError::TooLong);
    }
    if token_user != user {
        return Err(TokenError::WrongUser);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"backend-shared-secret";

    #[test]
    fn valid_token_verifies() {
        let t = issue(SECRET, "1001", 2_000);
        assert_eq!(verify(SECRET, &t, "1001", 1_999, 86_400), Ok(()));
    }

    #[test]
    fn padded_base64_is_accepted() {
        let t = issue(SECRET, "1001", 2_000);
        let (a, b) = t.split_once('.').unwrap();
        let padded = format!("{a}==.{b}=");
        assert_eq!(verify(SECRET, &padded, "1001", 1_000, 86_400), Ok(()));
    }

    #[test]
    fn failures() {
        let t = issue(SECRET, "1001", 2_000);
        assert_eq!(
            verify(SECRET, &t, "1001", 2_000, 86_400),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(SECRET, &t, "1002", 1_000, 86_400),
            Err(TokenError::WrongUser)
        );
        assert_eq!(
            verify(b"other", &t, "1001", 1_000, 86_400),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, "nodot", "1001", 1_000, 86_400),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(SECRET, "a.b.c", "1001", 1_000, 86_400),
            Err(TokenError::Malformed)
        );
        // A payload changed to a later expiry no longer matches its MAC.
        let (_, mac) = t.split_once('.').unwrap();
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode("1001:9999999999"));
        assert_eq!(
            verify(SECRET, &forged, "1001", 1_000, 86_400),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn user_with_colon() {
        let t = issue(SECRET, "a:b", 50);
        assert_eq!(verify(SECRET, &t, "a:b", 10, 86_400), Ok(()));
    }
}
