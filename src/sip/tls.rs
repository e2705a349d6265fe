//! The client side of SIP over TLS: which certificates the SIP server's
//! chain may lead to (a configured CA file, or the system's roots) and
//! which name it must carry. rustls with the aws-lc-rs provider, as the
//! HTTPS API uses; certificate checks are rustls's own (webpki).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::certs::{root_store, CertError};

/// Why SIP over TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SipTlsError {
    #[error("{0}")]
    CaFile(#[from] CertError),
    #[error("{0:?} is not a valid TLS server name")]
    BadServerName(String),
    #[error("TLS setup: {0}")]
    Config(String),
}

/// What the SIP driver needs to open TLS connections to the server.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    /// The name the server's certificate must carry (a DNS name or an IP).
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A TLS client for the SIP server: trusts `ca_file` (or the system roots)
/// and expects `server_name` in the server's certificate.
pub fn client(ca_file: &str, server_name: &str) -> Result<TlsClient, SipTlsError> {
    let roots = root_store(ca_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SipTlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|_| SipTlsError::BadServerName(server_name.to_string()))?;
    Ok(TlsClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let err = client(empty.to_str().unwrap(), "sip.example.com")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("empty.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(client(missing.to_str().unwrap(), "sip.example.com").is_err());
        let cert = rcgen::generate_simple_self_signed(vec!["sip.test".into()]).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let tls = client(ca.to_str().unwrap(), "sip.test").unwrap();
        assert_eq!(format!("{:?}", tls.server_name), "DnsName(\"sip.test\")");
        assert!(client(ca.to_str().unwrap(), "127.0.0.1").is_ok());
        assert!(matches!(
            client(ca.to_str().unwrap(), "bad name!"),
            Err(SipTlsError::BadServerName(_))
        ));
    }
}
