//! Who we are toward the SIP server: its domain, our address as it sees us,
//! and the transport, which together shape every Via, Contact and URI we
//! write.

use std::net::SocketAddr;

use crate::config::SipTransport;

/// Where requests go and what they say about us.
#[derive(Debug, Clone)]
pub struct Identity {
    /// SIP domain (the Request-URI host and the AOR's host).
    pub domain: String,
    /// Our address as the server sees it (Via, Contact).
    pub local: SocketAddr,
    /// UDP, or one TCP or TLS connection to the server.
    pub transport: SipTransport,
}

impl Identity {
    /// Whether messages go over a reliable stream (no retransmissions).
    pub fn reliable(&self) -> bool {
        self.transport != SipTransport::Udp
    }

    /// The Via header's transport token, with `;alias` on a stream: the
    /// server may send its requests back over our connection (RFC 5923)
    /// instead of opening one to our Contact.
    pub fn via_transport(&self) -> &'static str {
        match self.transport {
            SipTransport::Udp => "UDP",
            SipTransport::Tcp => "TCP",
            SipTransport::Tls => "TLS",
        }
    }

    /// Via parameters after the branch.
    pub fn via_params(&self) -> &'static str {
        if self.reliable() {
            ";rport;alias"
        } else {
            ";rport"
        }
    }

    /// The `transport=` URI parameter.
    pub fn uri_transport(&self) -> &'static str {
        match self.transport {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        }
    }
}
