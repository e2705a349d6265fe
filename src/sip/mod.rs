//! The SIP side: messages on the wire and the transaction layer (RFC 3261
//! §17), sans-IO. Transports, dialogs and registration build on these.

pub mod dialog;
pub mod digest;
pub mod driver;
pub mod endpoint;
pub mod message;
pub mod registration;
pub mod tls;
pub mod transaction;
pub mod ua;
