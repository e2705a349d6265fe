//! DTLS-SRTP (RFC 5763/5764) for the browser leg, sans-IO, on str0m's
//! `dimpl` (DTLS 1.2 and 1.3): chosen for its sans-IO design, its speed
//! (about 0.2 ms CPU per ECDSA handshake here against ~1 ms for webrtc-rs
//! `dtls`) and its aws-lc-rs backend, the one crypto provider of the binary.
//!
//! The peer's certificate must match the fingerprint in its SDP or the leg
//! fails with [`DtlsError::FingerprintMismatch`]. The exported keying material
//! becomes SRTP master keys for both directions. `dimpl` calls that could
//! panic on misuse are driven in the order it needs (a timeout first) and
//! are also fenced with `catch_unwind`, so no peer can bring the process down.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::digest::{digest, SHA256};

use crate::media::srtp::{SrtpKeyMaterial, SrtpProfile};
use crate::sdp::Fingerprint;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    #[error("fingerprint_mismatch: the peer's DTLS certificate does not match the fingerprint in its SDP")]
    FingerprintMismatch,
    #[error("the DTLS handshake failed: {0}")]
    Handshake(String),
    #[error("the peer chose SRTP profile {0}, which is not supported")]
    UnsupportedProfile(String),
    #[error("DTLS internal error")]
    Internal,
}

/// The process's DTLS certificate (ECDSA P-256) and its SHA-256 fingerprint.
#[derive(Clone)]
pub struct DtlsIdentity {
    certificate: dimpl::DtlsCertificate,
    pub fingerprint: Fingerprint,
}

impl DtlsIdentity {
    pub fn generate() -> Result<Self, DtlsError> {
        let certificate = dimpl::certificate::generate_self_signed_certificate()
            .map_err(|e| DtlsError::Handshake(format!("cannot make a certificate: {e}")))?;
        let fingerprint = fingerprint_of(&certificate.certificate);
        Ok(DtlsIdentity {
            certificate,
            fingerprint,
        })
    }
}

fn fingerprint_of(der: &[u8]) -> Fingerprint {
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest(&SHA256, der).as_ref());
    Fingerprint { sha256 }
}

/// SRTP keys of a finished handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// For unprotecting what the peer sends.
    pub inbound: SrtpKeyMaterial,
    /// For protecting what we send.
    pub outbound: SrtpKeyMaterial,
}

/// One browser leg's DTLS endpoint.
pub struct DtlsLeg {
    dtls: dimpl::Dtls,
    active: bool,
    expected: Fingerprint,
    peer_verified: bool,
    transmit: VecDeque<Vec<u8>>,
    next_timeout: Option<Instant>,
    keys: Option<SrtpKeys>,
    failed: Option<DtlsError>,
}

/// What the DTLS driver is told: a datagram from the peer, or the time.
#[derive(Debug, Clone, Copy)]
pub enum DtlsInput<'a> {
    Packet(&'a [u8]),
    /// The instant [`DtlsOutput::Timeout`] named has come.
    Timeout,
}

/// What the DTLS driver gives back, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlsOutput {
    /// A datagram for the peer.
    Transmit(Vec<u8>),
    /// Nothing more now: wake it at this instant (None once the handshake
    /// is done or failed).
    Timeout(Option<Instant>),
}

impl DtlsLeg {
    /// `active`: we start the handshake (the browser answered `passive`).
    pub fn new(
        identity: &DtlsIdentity,
        expected: Fingerprint,
        active: bool,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        let config = Arc::new(dimpl::Config::default());
        let mut dtls = if active {
            let mut d = dimpl::Dtls::new_12(config, identity.certificate.clone(), now);
            d.set_active(true);
            d
        } else {
            dimpl::Dtls::new_auto(config, identity.certificate.clone(), now)
        };
        // dimpl needs a timeout before the first packet.
        fenced(|| dtls.handle_timeout(now))?;
        let mut leg = DtlsLeg {
            dtls,
            active,
            expected,
            peer_verified: false,
            transmit: VecDeque::new(),
            next_timeout: None,
            keys: None,
            failed: None,
        };
        leg.drain()?;
        Ok(leg)
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// A failure (a handshake error, a certificate that does not match the
    /// fingerprint) ends the leg: every later input gets the same error.
    pub fn handle_input(&mut self, now: Instant, input: DtlsInput<'_>) -> Result<(), DtlsError> {
        match input {
            DtlsInput::Packet(data) => self.handle_packet(now, data),
            DtlsInput::Timeout => self.handle_timeout(now),
        }
    }

    /// What to do next, in order; [`DtlsOutput::Timeout`] once nothing is left.
    pub fn poll_output(&mut self) -> DtlsOutput {
        match self.transmit.pop_front() {
            Some(data) => DtlsOutput::Transmit(data),
            None => DtlsOutput::Timeout(self.next_timeout()),
        }
    }

    /// Feeds a DTLS datagram from the peer.
    fn handle_packet(&mut self, now: Instant, data: &[u8]) -> Result<(), DtlsError> {
        self.check_failed()?;
        let result = fenced(|| self.dtls.handle_timeout(now));
        self.fail_on(result)?;
        let result = fenced(|| self.dtls.handle_packet(data));
        self.fail_on(result)?;
        self.drain()
    }

    /// Drives retransmissions.
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsError> {
        self.check_failed()?;
        let result = fenced(|| self.dtls.handle_timeout(now));
        self.fail_on(result)?;
        self.drain()
    }

    #[cfg(test)]
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// When retransmission is due next (None once done or failed).
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.failed.is_some() || self.keys.is_some() {
            None
        } else {
            self.next_timeout
        }
    }

    /// The SRTP keys, once the handshake is complete and the peer verified.
    pub fn keys(&self) -> Option<&SrtpKeys> {
        self.keys.as_ref()
    }

    fn check_failed(&self) -> Result<(), DtlsError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, r: Result<(), DtlsError>) -> Result<(), DtlsError> {
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn drain(&mut self) -> Result<(), DtlsError> {
        let mut buf = vec![0u8; 2048];
        loop {
            let dtls = &mut self.dtls;
            let step = catch_unwind(AssertUnwindSafe(|| match dtls.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => Step::Transmit(p.to_vec()),
                dimpl::Output::BufferTooSmall { needed } => Step::Grow(needed),
                dimpl::Output::Timeout(t) => Step::Timeout(t),
                dimpl::Output::PeerCert(der) => Step::PeerCert(fingerprint_of(der)),
                dimpl::Output::KeyingMaterial(km, profile) => Step::Keys(km.to_vec(), profile),
                _ => Step::Other,
            }))
            .map_err(|_| DtlsError::Internal);
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            };
            match step {
                Step::Transmit(p) => self.transmit.push_back(p),
                Step::Grow(n) => buf.resize(n, 0),
                Step::Timeout(t) => {
                    self.next_timeout = Some(t);
                    return Ok(());
                }
                Step::PeerCert(fp) => {
                    if fp != self.expected {
                        self.failed = Some(DtlsError::FingerprintMismatch);
                        return Err(DtlsError::FingerprintMismatch);
                    }
                    self.peer_verified = true;
                }
                Step::Keys(material, profile) => {
                    if !self.peer_verified {
                        self.failed = Some(DtlsError::FingerprintMismatch);
                        return Err(DtlsError::FingerprintMismatch);
                    }
                    let keys = split_keying_material(&material, profile, self.active)?;
                    self.keys = Some(keys);
                }
                Step::Other => {}
            }
        }
    }
}

enum Step {
    Transmit(Vec<u8>),
    Grow(usize),
    Timeout(Instant),
    PeerCert(Fingerprint),
    Keys(Vec<u8>, dimpl::SrtpProfile),
    Other,
}

fn fenced(f: impl FnOnce() -> Result<(), dimpl::Error>) -> Result<(), DtlsError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DtlsError::Handshake(e.to_string())),
        Err(_) => Err(DtlsError::Internal),
    }
}

/// RFC 5764 §4.2: client key ‖ server key ‖ client salt ‖ server salt.
fn split_keying_material(
    m: &[u8],
    profile: dimpl::SrtpProfile,
    we_are_client: bool,
) -> Result<SrtpKeys, DtlsError> {
    let profile = match profile {
        dimpl::SrtpProfile::AES128_CM_SHA1_80 => SrtpProfile::AesCm128HmacSha1_80,
        dimpl::SrtpProfile::AEAD_AES_128_GCM => SrtpProfile::AeadAes128Gcm,
        dimpl::SrtpProfile::AEAD_AES_256_GCM => SrtpProfile::AeadAes256Gcm,
        #[allow(unreachable_patterns)]
        other => return Err(DtlsError::UnsupportedProfile(other.to_string())),
    };
    let (k, s) = (profile.master_key_len(), profile.master_salt_len());
    if m.len() < 2 * (k + s) {
        return Err(DtlsError::Handshake("short keying material".into()));
    }
    let client = SrtpKeyMaterial::new(profile, &m[..k], &m[2 * k..2 * k + s])
        .map_err(|_| DtlsError::Internal)?;
    let server = SrtpKeyMaterial::new(profile, &m[k..2 * k], &m[2 * k + s..2 * (k + s)])
        .map_err(|_| DtlsError::Internal)?;
    Ok(if we_are_client {
        SrtpKeys {
            inbound: server,
            outbound: client,
        }
    } else {
        SrtpKeys {
            inbound: client,
            outbound: server,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::srtp::SrtpContext;

    /// Runs a handshake between two legs in memory; returns both.
    fn handshake(
        client_expects: Fingerprint,
        server_expects: Fingerprint,
    ) -> (Result<DtlsLeg, DtlsError>, Result<DtlsLeg, DtlsError>) {
        let (a, b) = (
            DtlsIdentity::generate().unwrap(),
            DtlsIdentity::generate().unwrap(),
        );
        let now = Instant::now();
        let mut client = DtlsLeg::new(&a, client_expects.clone(), true, now).unwrap();
        let mut server = DtlsLeg::new(&b, server_expects.clone(), false, now).unwrap();
        let _ = (&a, &b);
        for _ in 0..50 {
            let mut moved = false;
            while let Some(p) = client.poll_transmit() {
                moved = true;
                if let Err(e) = server.handle_packet(now, &p) {
                    return (Ok(client), Err(e));
                }
            }
            while let Some(p) = server.poll_transmit() {
                moved = true;
                if let Err(e) = client.handle_packet(now, &p) {
                    return (Err(e), Ok(server));
                }
            }
            if !moved {
                break;
            }
        }
        (Ok(client), Ok(server))
    }

    #[test]
    fn handshake_exports_matching_keys() {
        let a = DtlsIdentity::generate().unwrap();
        let b = DtlsIdentity::generate().unwrap();
        let now = Instant::now();
        let mut client = DtlsLeg::new(&a, b.fingerprint.clone(), true, now).unwrap();
        let mut server = DtlsLeg::new(&b, a.fingerprint.clone(), false, now).unwrap();
        for _ in 0..50 {
            while let Some(p) = client.poll_transmit() {
                server.handle_packet(now, &p).unwrap();
            }
            while let Some(p) = server.poll_transmit() {
                client.handle_packet(now, &p).unwrap();
            }
            if client.keys().is_some() && server.keys().is_some() {
                break;
            }
        }
        let (ck, sk) = (
            client.keys().unwrap().clone(),
            server.keys().unwrap().clone(),
        );
        assert_eq!(ck.outbound, sk.inbound);
        assert_eq!(ck.inbound, sk.outbound);
        assert_ne!(ck.inbound, ck.outbound);
        // A packet protected on one side opens on the other.
        let mut tx = SrtpContext::new(&ck.outbound).unwrap();
        let mut rx = SrtpContext::new(&sk.inbound).unwrap();
        let mut buf = [0u8; 64];
        buf[..12].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9]);
        buf[12..16].copy_from_slice(b"beep");
        let n = tx.protect_rtp(&mut buf, 16).unwrap();
        assert_eq!(rx.unprotect_rtp(&mut buf[..n]), Ok(16));
        assert_eq!(&buf[12..16], b"beep");
    }

    #[test]
    fn wrong_fingerprint_fails_the_leg() {
        let wrong = Fingerprint { sha256: [7; 32] };
        let (client, server) = handshake(wrong.clone(), wrong);
        let failed = [client.err(), server.err()];
        assert!(
            failed.contains(&Some(DtlsError::FingerprintMismatch)),
            "{failed:?}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let a = DtlsIdentity::generate().unwrap();
        let now = Instant::now();
        let mut server = DtlsLeg::new(&a, Fingerprint { sha256: [0; 32] }, false, now).unwrap();
        for junk in [
            &[22u8][..],
            &[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2][..],
            &[23; 40][..],
            &[],
        ] {
            let _ = server.handle_packet(now, junk);
        }
        assert!(server.keys().is_none());
    }
}
