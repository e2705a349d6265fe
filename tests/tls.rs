//! HTTPS: TLS 1.2 and 1.3 with a rustls client, ALPN h2 and http/1.1, the
//! self-signed certificate's logged fingerprint, and configured cert files.

mod common;

use std::sync::Arc;

use common::{client, Gateway};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use webrtc_sip_gateway::api::tls::fingerprint;

/// Accepts exactly the certificate whose SHA-256 the gateway logged.
#[derive(Debug)]
struct PinnedFingerprint(String);

impl ServerCertVerifier for PinnedFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("fingerprint mismatch".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::aws_lc_rs::default_provider();
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::aws_lc_rs::default_provider();
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &p.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn handshake(
    gw: &Gateway,
    versions: &[&'static rustls::SupportedProtocolVersion],
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<(ProtocolVersion, Option<Vec<u8>>), std::io::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(gw.https).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    Ok((
        conn.protocol_version().unwrap(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

#[tokio::test]
async fn self_signed_tls_12_and_13_with_pinned_fingerprint() {
    let gw = Gateway::start("", "");
    assert_eq!(
        gw.fingerprint.len(),
        32 * 3 - 1,
        "SHA-256 as colon-separated hex"
    );
    let pinned = Arc::new(PinnedFingerprint(gw.fingerprint.clone()));

    let (v, alpn) = handshake(&gw, &[&rustls::version::TLS13], pinned.clone())
        .await
        .unwrap();
    assert_eq!(v, ProtocolVersion::TLSv1_3);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (v, _) = handshake(&gw, &[&rustls::version::TLS12], pinned)
        .await
        .unwrap();
    assert_eq!(v, ProtocolVersion::TLSv1_2);

    // Another fingerprint is not what the gateway serves.
    let wrong = Arc::new(PinnedFingerprint("00".repeat(32)));
    assert!(handshake(&gw, &[&rustls::version::TLS13], wrong)
        .await
        .is_err());

    // The API over HTTPS, with HTTP/2 by ALPN and HTTP/1.1 when asked.
    let r = client()
        .get(format!("{}/v1/none", gw.api_tls()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 404);
    let h1 = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .build()
        .unwrap();
    let r = h1
        .post(format!("{}/v1/sessions", gw.api_tls()))
        .json(&serde_json::json!({"user": "1001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn configured_certificate_verifies_against_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let cert_path = common::write(dir.path(), "cert.pem", &leaf.pem());
    let key_path = common::write(dir.path(), "key.pem", &leaf_key.serialize_pem());

    let gw = Gateway::start(
        &format!(
            "tls-cert = \"{}\"\ntls-key = \"{}\"",
            cert_path.display(),
            key_path.display()
        ),
        "",
    );
    assert_eq!(gw.fingerprint, fingerprint(leaf.der()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let (v, _) = handshake(
        &gw,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        verifier,
    )
    .await
    .unwrap();
    assert_eq!(v, ProtocolVersion::TLSv1_3);
}
