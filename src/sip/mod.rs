//! The SIP side. Sans-IO: messages on the wire (`message`), transactions
//! (RFC 3261 §17, `transaction`), the requests we serve ourselves
//! (`endpoint`), dialogs (`dialog`), registration and digest auth
//! (`registration`, `digest`), session timers (`session_timer`), who we are toward the server (`identity`),
//! who calls (`caller_id`), the switch's call data in headers (`call_data`),
//! transfers and remote call control (`transfer`),
//! whom SIP is taken from (`sources`)
//! and the user agent joining them (`ua`). The
//! tokio `driver` carries its messages over UDP, TCP or TLS (`tls`: the
//! client's trust anchors and expected name).

pub mod call_data;
pub mod caller_id;
pub mod dialog;
pub mod digest;
pub mod driver;
pub mod endpoint;
pub mod identity;
pub mod locate;
pub mod message;
pub mod registration;
pub mod session_timer;
pub mod sources;
pub mod timers;
pub mod tls;
pub mod transaction;
pub mod transfer;
pub mod ua;
