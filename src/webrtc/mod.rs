//! The browser leg's connectivity and keys, sans-IO: ICE-lite with consent
//! freshness over a small STUN codec, DTLS-SRTP on dimpl, and the leg driver
//! state that joins them ([`leg::WebLeg`]).

pub mod dtls;
pub mod ice;
pub mod leg;
pub mod stun;
