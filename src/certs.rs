//! Certificates and keys read from PEM files, shared by the HTTPS API (its
//! server identity) and SIP over TLS (the trust anchors for the server's
//! chain), and checked by `check-config` before either starts.

use std::path::Path;

use aws_lc_rs::digest::{digest, SHA256};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("{path}: no usable CA certificate in it ({reason})")]
    BadCa { path: String, reason: String },
    #[error("no system root certificates found; set sip.tls-ca-file")]
    NoSystemRoots,
}

/// Every certificate in a PEM file, leaf first.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let data = read(path)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(chain)
}

/// The first private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let data = read(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|_| CertError::NoKey {
        path: path.display().to_string(),
    })
}

/// Trust anchors: every certificate in `ca_file` (PEM), or the system's
/// roots when it is empty.
pub fn root_store(ca_file: &str) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    if ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(CertError::NoSystemRoots);
        }
        return Ok(roots);
    }
    for cert in load_cert_chain(Path::new(ca_file))? {
        roots.add(cert).map_err(|e| CertError::BadCa {
            path: ca_file.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// SHA-256 of a DER certificate as colon-separated upper-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    digest(&SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_hold_nothing_usable_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let err = load_cert_chain(&junk).unwrap_err().to_string();
        assert!(
            err.contains("junk.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = load_private_key(&junk).unwrap_err().to_string();
        assert!(err.contains("no PEM private key"), "{err}");
        let err = root_store(dir.path().join("absent.pem").to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("absent.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_generated_certificate_loads_and_has_a_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let chain = load_cert_chain(&cert).unwrap();
        assert!(load_private_key(&key).is_ok());
        let print = fingerprint(&chain[0]);
        assert_eq!(print.len(), 32 * 3 - 1);
        assert_eq!(root_store(cert.to_str().unwrap()).unwrap().len(), 1);
    }
}
