//! TLS for the signaling API: rustls (aws-lc-rs provider), TLS 1.2 and 1.3,
//! ALPN h2 and http/1.1, and a self-signed certificate when none is configured.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::certs::fingerprint;
use crate::certs::{load_cert_chain, load_private_key, CertError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Files(#[from] CertError),
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("the certificate and key do not form a usable TLS identity: {0}")]
    Identity(String),
}

/// How long the self-signed start-up certificate is valid: the most a
/// publicly trusted certificate may be (CA/Browser Forum), so a scanner
/// sees a bounded lifetime; a restart makes a new one.
pub const SELF_SIGNED_VALID_DAYS: i64 = 397;

/// A certificate chain and its key, plus the leaf's SHA-256 fingerprint.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint_sha256: String,
    pub self_signed: bool,
}

impl TlsIdentity {
    /// Loads the configured files, or makes a new self-signed certificate
    /// (valid [`SELF_SIGNED_VALID_DAYS`]) for `localhost`, `127.0.0.1`,
    /// `::1` and the extra names given.
    pub fn load_or_generate(
        cert: &str,
        key: &str,
        extra_names: &[String],
    ) -> Result<Self, TlsError> {
        if !cert.is_empty() {
            let chain = load_cert_chain(Path::new(cert))?;
            let key = load_private_key(Path::new(key))?;
            let fingerprint_sha256 = fingerprint(&chain[0]);
            return Ok(TlsIdentity {
                chain,
                key,
                fingerprint_sha256,
                self_signed: false,
            });
        }
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        for n in extra_names {
            if !n.is_empty() && !names.contains(n) {
                names.push(n.clone());
            }
        }
        let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let mut params = rcgen::CertificateParams::new(names).map_err(generate)?;
        // Valid from a day ago (a client clock a little behind still takes
        // it) for SELF_SIGNED_VALID_DAYS; a new one is made at each start.
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(SELF_SIGNED_VALID_DAYS);
        let signing_key = rcgen::KeyPair::generate().map_err(generate)?;
        let der = params
            .self_signed(&signing_key)
            .map_err(generate)?
            .der()
            .clone();
        let key = PrivateKeyDer::try_from(signing_key.serialize_der())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(TlsIdentity {
            fingerprint_sha256: fingerprint(&der),
            chain: vec![der],
            key,
            self_signed: true,
        })
    }

    /// A rustls server config: TLS 1.2+, ALPN h2 then http/1.1.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with_alpn(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    /// The same identity for another protocol (SIP over TLS: no ALPN).
    pub fn server_config_with_alpn(
        &self,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Identity(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }
}
