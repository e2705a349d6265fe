//! Bearer tokens from browsers: verification never panics, never accepts a
//! token it did not sign, and always accepts one it did.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::api::token;

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Forging an HMAC-SHA256 by chance is out of reach: anything given is refused.
    assert!(token::verify(SECRET, text, "1001", 0, 3600).is_err());
    // Whatever the user name, a token we issue verifies until it expires.
    let expires = 1 + u64::from(data.first().copied().unwrap_or(0));
    let issued = token::issue(SECRET, text, expires);
    assert_eq!(token::verify(SECRET, &issued, text, expires - 1, 3600), Ok(()));
    assert!(token::verify(SECRET, &issued, text, expires, 3600).is_err());
});
