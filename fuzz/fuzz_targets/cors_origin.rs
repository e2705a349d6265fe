//! The `Origin` header and whitelist entries: parsing never panics, and an
//! origin built from a parsed entry's own text is judged consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::api::cors::{CorsPolicy, OriginVerdict};
use webrtc_sip_gateway::origin::{Origin, OriginPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (entry, origin) = text.split_once('\n').unwrap_or((text, text));
    let _ = Origin::parse(origin);
    if OriginPattern::parse(entry).is_ok() {
        let policy = CorsPolicy::new(&[entry.to_string()]).expect("entry parsed once");
        match policy.judge(Some(origin)) {
            OriginVerdict::Allowed(echo) => assert_eq!(echo, origin),
            OriginVerdict::Denied => {}
            OriginVerdict::NoOrigin => panic!("an Origin header was given"),
        }
    }
});
