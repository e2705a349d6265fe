//! The random source handed to every protocol core, as time is: SIP tags,
//! branches and Call-IDs, digest cnonces, SDES keys, ICE credentials,
//! SSRCs, session ids and secrets all come from a [`Random`] the core was
//! given, never from the OS inside it.
//!
//! In production a [`Random`] is ChaCha20 (a CSPRNG) seeded once from the
//! OS; in tests it is seeded from a number, so a core fed the same inputs
//! with the same seed writes the same bytes. A core that hands work to a
//! sub-machine (the user agent to a dialog) gives it a [`Random::fork`]:
//! an independent stream drawn from its own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

#[derive(Debug, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

pub struct Random {
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state is a key: never printed.
        f.write_str("Random")
    }
}

impl Random {
    /// Seeded from the OS's generator (aws-lc-rs), for production.
    pub fn from_os() -> Result<Random, RandomError> {
        use aws_lc_rs::rand::{SecureRandom, SystemRandom};
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| RandomError)?;
        Ok(Random {
            rng: ChaCha20Rng::from_seed(seed),
        })
    }

    /// Seeded from a number: the same seed gives the same stream (tests).
    pub fn seeded(seed: u64) -> Random {
        Random {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// An independent stream seeded from this one.
    pub fn fork(&mut self) -> Random {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        Random {
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        self.rng.fill_bytes(buf);
    }

    pub fn u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    /// `bytes` random bytes as lower-case hex (SIP tags, branches, Call-IDs).
    pub fn hex(&mut self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.fill(&mut buf);
        hex::encode(buf)
    }

    /// `bytes` random bytes in unpadded base64url (session ids and secrets).
    pub fn base64url(&mut self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.fill(&mut buf);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// `bytes` random bytes as text made only of characters valid in ICE
    /// credentials (RFC 8839 ice-char) and SDP tokens: base64url with `-`
    /// and `_` turned into letters.
    pub fn ice_token(&mut self, bytes: usize) -> String {
        self.base64url(bytes).replace('-', "a").replace('_', "b")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_stream_and_forks_differ() {
        let (mut a, mut b) = (Random::seeded(7), Random::seeded(7));
        assert_eq!(a.hex(12), b.hex(12));
        let mut child = a.fork();
        let _ = b.fork();
        assert_eq!(a.u32(), b.u32(), "forking draws the same from both parents");
        assert_ne!(child.hex(12), a.hex(12), "a fork is a stream of its own");
        assert_ne!(Random::seeded(8).hex(12), Random::seeded(7).hex(12));
    }

    #[test]
    fn texts_have_their_alphabets() {
        let mut r = Random::from_os().unwrap();
        let hex = r.hex(12);
        assert_eq!(hex.len(), 24);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let token = r.ice_token(18);
        assert_eq!(token.len(), 24);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
        assert_eq!(r.base64url(32).len(), 43);
        assert_eq!(format!("{r:?}"), "Random", "the state is never printed");
    }
}
