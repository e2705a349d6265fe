//! Operator commands that do not run the gateway: firewall rules.

pub mod firewall;
