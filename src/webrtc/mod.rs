//! The browser leg's transport security and connectivity: ICE-lite with
//! consent freshness over a small STUN codec (sans-IO).

pub mod dtls;
pub mod ice;
pub mod leg;
pub mod stun;
