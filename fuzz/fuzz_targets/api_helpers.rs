//! The API's header and query helpers on what any client may send: the
//! bearer credential of an Authorization header and a long-poll's query
//! string. Never panic; what they return comes from the input.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::api::{bearer, poll_query};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::AUTHORIZATION, value);
        if let Some(credential) = bearer(&headers) {
            assert!(!credential.is_empty());
            assert!(std::str::from_utf8(data).is_ok_and(|t| t.contains(credential)));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((_, timeout)) = poll_query(Some(text)) {
            assert!(timeout.as_secs() <= 30);
        }
    }
});
