//! What a transfer reads from the network: a NOTIFY's Event and
//! Subscription-State values and its sipfrag body, and the Replaces a
//! Refer-To is built from (a Call-ID and tags the far end chose). Never
//! panics; a status read is a SIP status; the Replaces stays inside the
//! URI (no `>`, `;`, `&`, `@` or `=` of the input escapes unescaped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use webrtc_sip_gateway::sip::transfer::{classify_notify, refer_to_replacing, sipfrag_status};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (event, state, body) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let _ = classify_notify(event, state, body);
    if let Some(status) = sipfrag_status(body) {
        assert!((100..700).contains(&status));
    }
    let refer_to = refer_to_replacing(
        "sip:5001@pbx.example",
        event.unwrap_or(""),
        state.unwrap_or(""),
        body,
    );
    let replaces = refer_to
        .strip_prefix("<sip:5001@pbx.example?Replaces=")
        .and_then(|r| r.strip_suffix('>'))
        .expect("the Replaces sits inside the URI");
    assert!(!replaces.contains(['>', '<', '&', '@', '=', ' ', '"']));
});
