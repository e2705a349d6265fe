//! Operations: whether the node takes new work (`admission`), and operator
//! commands that do not run the gateway (`firewall`).

pub mod admission;
pub mod firewall;
