//! SRTP and SRTCP (RFC 3711; AEAD-AES-GCM per RFC 7714), transforming packets
//! in place in the caller's buffer.
//!
//! Written here rather than taken from a crate because the relay needs every
//! packet transformed in the buffer it was received into, with no allocation,
//! and per-stream state (rollover counter, replay window, SRTCP index) that the
//! relay owns. The primitives are aws-lc-rs (AES-CTR, AES-GCM, key
//! derivation), the crypto provider of the rest of the binary, and
//! RustCrypto's `hmac` + `sha1` for the per-packet HMAC-SHA1 (see
//! `AuthKey`: a keyed state copied by value, a quarter faster per 172-byte
//! packet than aws-lc's context copy).
//!
//! Supported profiles: `AES_CM_128_HMAC_SHA1_80`, `AES_CM_128_HMAC_SHA1_32`
//! (SRTCP keeps an 80-bit tag, as RFC 4568 and libsrtp do),
//! `AEAD_AES_128_GCM` and `AEAD_AES_256_GCM` (browsers offer it first in
//! DTLS-SRTP). No MKI, key derivation rate 0.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::iv::FixedLength;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::rtp;

/// Streams (SSRCs) one context keeps state for. Unprotecting, the least
/// recently used is forgotten when a new one arrives; protecting, none ever
/// is (its index would start again: see [`SrtpError::StreamsFull`]). A
/// call leg carries one or two.
pub const MAX_STREAMS: usize = 8;
/// Largest replay window, in packets: the default. Its bitmap sits in every
/// stream of every context (two per stream, eight streams each), so a larger
/// one would cost every call's memory for a window nobody asks for.
pub const MAX_REPLAY_WINDOW: u32 = 256;
/// Default replay window: room for heavy reordering on an internet path.
pub const DEFAULT_REPLAY_WINDOW: u32 = 256;

const AUTH_KEY_LEN: usize = 20;
const GCM_TAG_LEN: usize = 16;
const SRTCP_INDEX_LEN: usize = 4;
const SRTCP_E_BIT: u32 = 0x8000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl SrtpProfile {
    pub const ALL: [SrtpProfile; 4] = [
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
        SrtpProfile::AesCm128HmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32,
    ];

    /// The SDES crypto-suite name (RFC 4568, RFC 7714).
    pub fn sdes_name(self) -> &'static str {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpProfile::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    pub fn from_sdes_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.sdes_name() == name)
    }

    /// The DTLS-SRTP protection profile id (RFC 5764, RFC 7714).
    pub fn dtls_id(self) -> u16 {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => 0x0001,
            SrtpProfile::AesCm128HmacSha1_32 => 0x0002,
            SrtpProfile::AeadAes128Gcm => 0x0007,
            SrtpProfile::AeadAes256Gcm => 0x0008,
        }
    }

    pub fn master_key_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    pub fn master_salt_len(self) -> usize {
        if self.is_gcm() {
            12
        } else {
            14
        }
    }

    /// Bytes SRTP adds to an RTP packet.
    pub fn rtp_overhead(self) -> usize {
        match self {
            SrtpProfile::AesCm128HmacSha1_80 => 10,
            SrtpProfile::AesCm128HmacSha1_32 => 4,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => GCM_TAG_LEN,
        }
    }

    /// Bytes SRTCP adds to an RTCP packet (tag plus the E/index word).
    pub fn rtcp_overhead(self) -> usize {
        if self.is_gcm() {
            GCM_TAG_LEN + SRTCP_INDEX_LEN
        } else {
            10 + SRTCP_INDEX_LEN
        }
    }

    fn is_gcm(self) -> bool {
        matches!(
            self,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("the packet is too short or its header is malformed")]
    Malformed,
    #[error("the buffer has no room for the authentication tag")]
    NoRoom,
    #[error("authentication failed")]
    AuthFailed,
    #[error("replayed packet")]
    Replay,
    #[error("packet older than the replay window")]
    TooOld,
    #[error("master key or salt has the wrong length for the profile")]
    BadKeyLength,
    #[error("the cipher failed")]
    Crypto,
    /// Protecting for a new SSRC with every stream in use: forgetting one
    /// would let its packet indices be used again, which reuses keystream
    /// (AES-CM) or a nonce (AES-GCM).
    #[error("every stream of the context is in use")]
    StreamsFull,
}

/// Master key and salt for one direction, as SDES or DTLS-SRTP deliver them.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeyMaterial {
    pub profile: SrtpProfile,
    /// Master key, left-aligned; only `profile.master_key_len()` bytes are used.
    key: [u8; 32],
    /// Salt, left-aligned; only `profile.master_salt_len()` bytes are used.
    salt: [u8; 14],
}

impl std::fmt::Debug for SrtpKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach a log.
        f.debug_struct("SrtpKeyMaterial")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl SrtpKeyMaterial {
    pub fn new(profile: SrtpProfile, key: &[u8], salt: &[u8]) -> Result<Self, SrtpError> {
        if key.len() != profile.master_key_len() || salt.len() != profile.master_salt_len() {
            return Err(SrtpError::BadKeyLength);
        }
        let mut k = [0u8; 32];
        k[..key.len()].copy_from_slice(key);
        let mut s = [0u8; 14];
        s[..salt.len()].copy_from_slice(salt);
        Ok(SrtpKeyMaterial {
            profile,
            key: k,
            salt: s,
        })
    }

    /// Key followed by salt, as in an SDES `inline:` parameter.
    pub fn concatenated(&self) -> Vec<u8> {
        let mut v = self.key[..self.profile.master_key_len()].to_vec();
        v.extend_from_slice(&self.salt[..self.profile.master_salt_len()]);
        v
    }
}

/// The AES variant of a master key length (RFC 6188 for 256 bits).
fn aes(key_len: usize) -> &'static aws_lc_rs::cipher::Algorithm {
    if key_len == 32 {
        &AES_256
    } else {
        &AES_128
    }
}

/// RFC 3711 §4.3.1 key derivation (AES-CM PRF, key derivation rate 0).
fn derive(master: &SrtpKeyMaterial, label: u8, out: &mut [u8]) -> Result<(), SrtpError> {
    let key_len = master.profile.master_key_len();
    let key = UnboundCipherKey::new(aes(key_len), &master.key[..key_len])
        .map_err(|_| SrtpError::Crypto)?;
    let ctr = EncryptingKey::ctr(key).map_err(|_| SrtpError::Crypto)?;
    // x = (label || r) XOR master_salt, r = 0; a 96-bit GCM salt is zero-padded.
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(&master.salt);
    iv[7] ^= label;
    out.fill(0);
    ctr.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| SrtpError::Crypto)?;
    Ok(())
}

/// HMAC-SHA1 keyed once per session. RustCrypto's keyed state is a plain
/// value (the inner and outer SHA-1 states after the padded key), so each
/// packet starts from a copy of a few dozen bytes; aws-lc's `HMAC_CTX` copy
/// per packet was the largest cost of ours that `perf` showed in SRTP.
/// SHA-1 itself runs on the CPU's SHA extensions where present.
#[derive(Clone)]
struct AuthKey(Hmac<Sha1>);

impl AuthKey {
    fn new(key: &[u8]) -> Result<Self, SrtpError> {
        <Hmac<Sha1> as Mac>::new_from_slice(key)
            .map(AuthKey)
            .map_err(|_| SrtpError::Crypto)
    }

    /// The full 20-byte tag over `parts`, in order.
    fn tag(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

// A context exists per call leg, not per packet: keeping the larger variant
// inline saves a pointer chase on every packet.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    /// AES-128 in counter mode with HMAC-SHA1 authentication.
    Cm {
        ctr: EncryptingKey,
        auth: AuthKey,
    },
    Gcm {
        aead: LessSafeKey,
    },
}

/// Session keys for RTP or for RTCP.
struct SessionKeys {
    cipher: Cipher,
    salt: [u8; 14],
}

impl SessionKeys {
    fn derive(master: &SrtpKeyMaterial, rtcp: bool) -> Result<Self, SrtpError> {
        let base = if rtcp { 3 } else { 0 };
        let key_len = master.profile.master_key_len();
        let mut key_buf = [0u8; 32];
        let key = &mut key_buf[..key_len];
        derive(master, base, key)?;
        let mut salt = [0u8; 14];
        let salt_len = master.profile.master_salt_len();
        derive(master, base + 2, &mut salt[..salt_len])?;
        let cipher = if master.profile.is_gcm() {
            let algorithm = if key_len == 32 {
                &AES_256_GCM
            } else {
                &AES_128_GCM
            };
            let unbound = UnboundKey::new(algorithm, key).map_err(|_| SrtpError::Crypto)?;
            Cipher::Gcm {
                aead: LessSafeKey::new(unbound),
            }
        } else {
            let mut auth = [0u8; AUTH_KEY_LEN];
            derive(master, base + 1, &mut auth)?;
            let unbound = UnboundCipherKey::new(&AES_128, key).map_err(|_| SrtpError::Crypto)?;
            Cipher::Cm {
                ctr: EncryptingKey::ctr(unbound).map_err(|_| SrtpError::Crypto)?,
                auth: AuthKey::new(&auth)?,
            }
        };
        Ok(SessionKeys { cipher, salt })
    }

    /// AES-CM IV: (salt·2^16) XOR (SSRC·2^64) XOR (index·2^16).
    fn cm_iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..8]) {
            *b ^= s;
        }
        iv
    }

    /// GCM nonce: salt XOR (0 0 | SSRC | `high` | `low`), RFC 7714 §8.1 and §9.1.
    fn gcm_nonce(&self, ssrc: u32, high: u32, low: u16) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[2..6].copy_from_slice(&ssrc.to_be_bytes());
        n[6..10].copy_from_slice(&high.to_be_bytes());
        n[10..12].copy_from_slice(&low.to_be_bytes());
        for (b, s) in n.iter_mut().zip(&self.salt[..12]) {
            *b ^= s;
        }
        n
    }

    fn ctr_apply(ctr: &EncryptingKey, iv: [u8; 16], data: &mut [u8]) -> Result<(), SrtpError> {
        if data.is_empty() {
            return Ok(());
        }
        ctr.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(iv)))
            .map(|_| ())
            .map_err(|_| SrtpError::Crypto)
    }
}

/// Sliding replay window over 64-bit packet indices.
#[derive(Clone)]
struct ReplayWindow {
    /// Highest index accepted; `None` before the first packet.
    top: Option<u64>,
    /// Bit i set: index `top - i` was seen.
    bits: [u64; (MAX_REPLAY_WINDOW / 64) as usize],
    size: u32,
}

impl ReplayWindow {
    fn new(size: u32) -> Self {
        ReplayWindow {
            top: None,
            bits: [0; (MAX_REPLAY_WINDOW / 64) as usize],
            size: size.clamp(64, MAX_REPLAY_WINDOW),
        }
    }

    fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(top) = self.top else { return Ok(()) };
        if index > top {
            return Ok(());
        }
        let age = top - index;
        if age >= u64::from(self.size) {
            return Err(SrtpError::TooOld);
        }
        let (word, bit) = ((age / 64) as usize, age % 64);
        if self.bits[word] & (1 << bit) != 0 {
            Err(SrtpError::Replay)
        } else {
            Ok(())
        }
    }

    fn accept(&mut self, index: u64) {
        let top = match self.top {
            None => {
                self.top = Some(index);
                self.bits = [0; (MAX_REPLAY_WINDOW / 64) as usize];
                self.bits[0] = 1;
                return;
            }
            Some(t) => t,
        };
        if index > top {
            self.shift(index - top);
            self.top = Some(index);
            self.bits[0] |= 1;
        } else {
            let age = top - index;
            if age < u64::from(self.size) {
                self.bits[(age / 64) as usize] |= 1 << (age % 64);
            }
        }
    }

    /// Ages every bit by `by` positions. Only the words the window's size
    /// uses are moved (4 of 16 for the default 256 packets): this runs for
    /// nearly every packet, both ways.
    fn shift(&mut self, by: u64) {
        let words = (self.size as usize).div_ceil(64);
        if by >= (words * 64) as u64 {
            self.bits = [0; (MAX_REPLAY_WINDOW / 64) as usize];
            return;
        }
        let (word_shift, bit_shift) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..words).rev() {
            let src = i.checked_sub(word_shift);
            let mut v = src.map_or(0, |s| self.bits[s] << bit_shift);
            if bit_shift > 0 {
                if let Some(lower) = src.and_then(|s| s.checked_sub(1)) {
                    v |= self.bits[lower] >> (64 - bit_shift);
                }
            }
            self.bits[i] = v;
        }
    }
}

/// Per-SSRC state of one direction.
#[derive(Clone)]
struct Stream {
    ssrc: u32,
    in_use: bool,
    last_used: u64,
    /// Rollover counter and highest sequence number (RFC 3711 §3.3.1).
    roc: u32,
    highest_seq: u16,
    seq_started: bool,
    rtp_replay: ReplayWindow,
    /// Next SRTCP index to send (outbound).
    rtcp_next_index: u32,
    rtcp_replay: ReplayWindow,
}

impl Stream {
    fn new(replay: u32) -> Self {
        Stream {
            ssrc: 0,
            in_use: false,
            last_used: 0,
            roc: 0,
            highest_seq: 0,
            seq_started: false,
            rtp_replay: ReplayWindow::new(replay),
            rtcp_next_index: 0,
            rtcp_replay: ReplayWindow::new(replay),
        }
    }

    /// RFC 3711 Appendix A: the rollover counter this sequence number belongs to.
    fn estimate_roc(&self, seq: u16) -> u32 {
        if !self.seq_started {
            return self.roc;
        }
        let (s_l, seq) = (i32::from(self.highest_seq), i32::from(seq));
        if s_l < 32_768 {
            if seq - s_l > 32_768 {
                self.roc.wrapping_sub(1)
            } else {
                self.roc
            }
        } else if s_l - 32_768 > seq {
            self.roc.wrapping_add(1)
        } else {
            self.roc
        }
    }

    fn advance(&mut self, roc: u32, seq: u16) {
        if !self.seq_started {
            self.seq_started = true;
            self.roc = roc;
            self.highest_seq = seq;
        } else if roc == self.roc.wrapping_add(1) {
            self.roc = roc;
            self.highest_seq = seq;
        } else if roc == self.roc && seq > self.highest_seq {
            self.highest_seq = seq;
        }
    }
}

/// One direction's SRTP/SRTCP crypto context (RFC 3711 §3.2): keys plus the
/// state of each SSRC seen. Use one for protecting and another for
/// unprotecting.
pub struct SrtpContext {
    profile: SrtpProfile,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    streams: [Stream; MAX_STREAMS],
    replay_window: u32,
    clock: u64,
}

impl SrtpContext {
    /// A context with the default replay window.
    pub fn new(master: &SrtpKeyMaterial) -> Result<Self, SrtpError> {
        Self::with_replay_window(master, DEFAULT_REPLAY_WINDOW)
    }

    /// `replay_window` packets (64 to [`MAX_REPLAY_WINDOW`]) may arrive out
    /// of order.
    pub fn with_replay_window(
        master: &SrtpKeyMaterial,
        replay_window: u32,
    ) -> Result<Self, SrtpError> {
        Ok(SrtpContext {
            profile: master.profile,
            rtp: SessionKeys::derive(master, false)?,
            rtcp: SessionKeys::derive(master, true)?,
            streams: std::array::from_fn(|_| Stream::new(replay_window)),
            replay_window,
            clock: 0,
        })
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    fn find(&self, ssrc: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.in_use && s.ssrc == ssrc)
    }

    /// The slot for `ssrc`, taking the least recently used one for a new SSRC.
    /// Inbound, only an authenticated packet may take a slot, so forged
    /// packets cannot push a real stream's state out.
    fn slot(&mut self, ssrc: u32) -> usize {
        self.clock += 1;
        let i = match self.find(ssrc) {
            Some(i) => i,
            None => {
                let i = self
                    .streams
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| if s.in_use { s.last_used } else { 0 })
                    .map_or(0, |(i, _)| i);
                self.streams[i] = Stream::new(self.replay_window);
                self.streams[i].ssrc = ssrc;
                self.streams[i].in_use = true;
                i
            }
        };
        self.streams[i].last_used = self.clock;
        i
    }

    /// The slot for `ssrc` when protecting: its own, or a free one; never
    /// another stream's, whose state (the indices it used) must outlive it.
    fn outbound_slot(&mut self, ssrc: u32) -> Result<usize, SrtpError> {
        if self.find(ssrc).is_none() && self.streams.iter().all(|s| s.in_use) {
            return Err(SrtpError::StreamsFull);
        }
        Ok(self.slot(ssrc))
    }

    /// Protects the RTP packet in `buf[..len]`, writing the tag after it.
    /// Returns the SRTP packet's length. `buf` must have room for
    /// [`SrtpProfile::rtp_overhead`] more bytes. A packet whose index
    /// (rollover counter and sequence number) this context has protected
    /// before is refused ([`SrtpError::Replay`], or [`SrtpError::TooOld`]
    /// behind the window): one index, one packet.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::Malformed)?;
        let header_len = rtp::rtp_header_len(packet).ok_or(SrtpError::Malformed)?;
        let out_len = len + self.profile.rtp_overhead();
        if buf.len() < out_len {
            return Err(SrtpError::NoRoom);
        }
        let (ssrc, seq) = (rtp::rtp_ssrc(packet), rtp::rtp_seq(packet));
        let slot = self.outbound_slot(ssrc)?;
        let stream = &mut self.streams[slot];
        let roc = stream.estimate_roc(seq);
        stream
            .rtp_replay
            .check((u64::from(roc) << 16) | u64::from(seq))?;
        stream.advance(roc, seq);
        stream
            .rtp_replay
            .accept((u64::from(roc) << 16) | u64::from(seq));
        match &self.rtp.cipher {
            Cipher::Cm { ctr, auth } => {
                let index = (u64::from(roc) << 16) | u64::from(seq);
                SessionKeys::ctr_apply(
                    ctr,
                    self.rtp.cm_iv(ssrc, index),
                    &mut buf[header_len..len],
                )?;
                let tag = auth.tag(&[&buf[..len], &roc.to_be_bytes()]);
                buf[len..out_len].copy_from_slice(&tag[..out_len - len]);
            }
            Cipher::Gcm { aead } => {
                let nonce = Nonce::assume_unique_for_key(self.rtp.gcm_nonce(ssrc, roc, seq));
                let (header, rest) = buf.split_at_mut(header_len);
                let tag = aead
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(&*header),
                        &mut rest[..len - header_len],
                    )
                    .map_err(|_| SrtpError::Crypto)?;
                buf[len..out_len].copy_from_slice(tag.as_ref());
            }
        }
        Ok(out_len)
    }

    /// Checks and decrypts the SRTP packet in `buf` in place. Returns the RTP
    /// packet's length. Nothing about the stream changes unless it authenticates.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.profile.rtp_overhead();
        let len = buf.len().checked_sub(tag_len).ok_or(SrtpError::Malformed)?;
        let header_len = rtp::rtp_header_len(&buf[..len]).ok_or(SrtpError::Malformed)?;
        let (ssrc, seq) = (rtp::rtp_ssrc(buf), rtp::rtp_seq(buf));
        let known = self.find(ssrc);
        let (roc, index) = match known {
            Some(i) => {
                let stream = &self.streams[i];
                let roc = stream.estimate_roc(seq);
                let index = (u64::from(roc) << 16) | u64::from(seq);
                stream.rtp_replay.check(index)?;
                (roc, index)
            }
            // A stream not seen yet starts at rollover counter 0.
            None => (0, u64::from(seq)),
        };
        match &self.rtp.cipher {
            Cipher::Cm { ctr, auth } => {
                let tag = auth.tag(&[&buf[..len], &roc.to_be_bytes()]);
                verify_slices_are_equal(&tag[..tag_len], &buf[len..])
                    .map_err(|_| SrtpError::AuthFailed)?;
                SessionKeys::ctr_apply(
                    ctr,
                    self.rtp.cm_iv(ssrc, index),
                    &mut buf[header_len..len],
                )?;
            }
            Cipher::Gcm { aead } => {
                let nonce = Nonce::assume_unique_for_key(self.rtp.gcm_nonce(ssrc, roc, seq));
                let (header, rest) = buf.split_at_mut(header_len);
                aead.open_in_place(nonce, Aad::from(&*header), rest)
                    .map_err(|_| SrtpError::AuthFailed)?;
            }
        }
        let slot = match known {
            Some(i) => i,
            None => self.slot(ssrc),
        };
        let stream = &mut self.streams[slot];
        stream.last_used = self.clock;
        stream.advance(roc, seq);
        stream.rtp_replay.accept(index);
        Ok(len)
    }

    /// Protects the RTCP packet in `buf[..len]` (encrypted, E bit set).
    /// Returns the SRTCP packet's length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < 8 || len > buf.len() {
            return Err(SrtpError::Malformed);
        }
        let ssrc = rtp::rtcp_sender_ssrc(&buf[..len]).ok_or(SrtpError::Malformed)?;
        let out_len = len + self.profile.rtcp_overhead();
        if buf.len() < out_len {
            return Err(SrtpError::NoRoom);
        }
        let slot = self.outbound_slot(ssrc)?;
        let stream = &mut self.streams[slot];
        let index = stream.rtcp_next_index;
        stream.rtcp_next_index = (index + 1) & !SRTCP_E_BIT;
        let e_index = (SRTCP_E_BIT | index).to_be_bytes();
        match &self.rtcp.cipher {
            Cipher::Cm { ctr, auth } => {
                SessionKeys::ctr_apply(
                    ctr,
                    self.rtcp.cm_iv(ssrc, u64::from(index)),
                    &mut buf[8..len],
                )?;
                buf[len..len + 4].copy_from_slice(&e_index);
                let tag = auth.tag(&[&buf[..len + 4]]);
                buf[len + 4..out_len].copy_from_slice(&tag[..out_len - len - 4]);
            }
            Cipher::Gcm { aead } => {
                let nonce = Nonce::assume_unique_for_key(self.rtcp.gcm_nonce(
                    ssrc,
                    index >> 16,
                    index as u16,
                ));
                let aad = rtcp_gcm_aad(&buf[..8], e_index);
                let tag = aead
                    .seal_in_place_separate_tag(nonce, Aad::from(&aad), &mut buf[8..len])
                    .map_err(|_| SrtpError::Crypto)?;
                buf[len..len + GCM_TAG_LEN].copy_from_slice(tag.as_ref());
                buf[len + GCM_TAG_LEN..out_len].copy_from_slice(&e_index);
            }
        }
        Ok(out_len)
    }

    /// Checks and decrypts the SRTCP packet in `buf` in place. Returns the
    /// RTCP packet's length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let overhead = self.profile.rtcp_overhead();
        if buf.len() < 8 + overhead {
            return Err(SrtpError::Malformed);
        }
        let ssrc = rtp::rtcp_sender_ssrc(buf).ok_or(SrtpError::Malformed)?;
        let len = buf.len() - overhead;
        let known = self.find(ssrc);
        let replay_check = |index: u32| match known {
            Some(i) => self.streams[i].rtcp_replay.check(u64::from(index)),
            None => Ok(()),
        };
        let index = match &self.rtcp.cipher {
            Cipher::Cm { ctr, auth } => {
                let tag_at = buf.len() - 10;
                let tag = auth.tag(&[&buf[..tag_at]]);
                verify_slices_are_equal(&tag[..10], &buf[tag_at..])
                    .map_err(|_| SrtpError::AuthFailed)?;
                let word = read_u32(&buf[len..len + 4]);
                let index = word & !SRTCP_E_BIT;
                replay_check(index)?;
                if word & SRTCP_E_BIT != 0 {
                    SessionKeys::ctr_apply(
                        ctr,
                        self.rtcp.cm_iv(ssrc, u64::from(index)),
                        &mut buf[8..len],
                    )?;
                }
                index
            }
            Cipher::Gcm { aead } => {
                let word_at = buf.len() - SRTCP_INDEX_LEN;
                let word = read_u32(&buf[word_at..]);
                let index = word & !SRTCP_E_BIT;
                replay_check(index)?;
                let nonce = Nonce::assume_unique_for_key(self.rtcp.gcm_nonce(
                    ssrc,
                    index >> 16,
                    index as u16,
                ));
                if word & SRTCP_E_BIT != 0 {
                    let aad = rtcp_gcm_aad(&buf[..8], word.to_be_bytes());
                    aead.open_in_place(nonce, Aad::from(&aad), &mut buf[8..word_at])
                        .map_err(|_| SrtpError::AuthFailed)?;
                } else {
                    // Unencrypted SRTCP: the packet and the index word are all AAD.
                    // Move the word next to the packet so the AAD is one slice.
                    let tag_at = word_at - GCM_TAG_LEN;
                    let mut tag = [0u8; GCM_TAG_LEN];
                    tag.copy_from_slice(&buf[tag_at..word_at]);
                    buf.copy_within(word_at.., tag_at);
                    let expected = aead
                        .seal_in_place_separate_tag(
                            nonce,
                            Aad::from(&buf[..tag_at + SRTCP_INDEX_LEN]),
                            &mut [],
                        )
                        .map_err(|_| SrtpError::Crypto)?;
                    verify_slices_are_equal(expected.as_ref(), &tag)
                        .map_err(|_| SrtpError::AuthFailed)?;
                }
                index
            }
        };
        let slot = match known {
            Some(i) => i,
            None => self.slot(ssrc),
        };
        self.streams[slot].rtcp_replay.accept(u64::from(index));
        Ok(len)
    }
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// RFC 7714 §9.1: the first 8 octets of the RTCP packet, then E‖SRTCP index.
fn rtcp_gcm_aad(header: &[u8], e_index: [u8; 4]) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..8].copy_from_slice(header);
    aad[8..].copy_from_slice(&e_index);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let master = SrtpKeyMaterial::new(
            SrtpProfile::AesCm128HmacSha1_80,
            &unhex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            &unhex("0EC675AD498AFEEBB6960B3AABE6"),
        )
        .unwrap();
        let mut key = [0u8; 16];
        derive(&master, 0, &mut key).unwrap();
        assert_eq!(key.to_vec(), unhex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&master, 2, &mut salt).unwrap();
        assert_eq!(salt.to_vec(), unhex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(&master, 1, &mut auth).unwrap();
        assert_eq!(
            auth[..16].to_vec(),
            unhex("CEBE321F6FF7716B6FD4AB49AF256A15")
        );
    }

    fn material(profile: SrtpProfile) -> SrtpKeyMaterial {
        let key: Vec<u8> = (1..=profile.master_key_len() as u8).collect();
        let salt: Vec<u8> = (100..100 + profile.master_salt_len() as u8).collect();
        SrtpKeyMaterial::new(profile, &key, &salt).unwrap()
    }

    fn rtp_packet(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn protect(ctx: &mut SrtpContext, packet: &[u8]) -> Vec<u8> {
        let mut buf = packet.to_vec();
        buf.resize(packet.len() + 64, 0);
        let n = ctx.protect_rtp(&mut buf, packet.len()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn rtp_round_trip_every_profile() {
        for profile in SrtpProfile::ALL {
            let mut tx = SrtpContext::new(&material(profile)).unwrap();
            let mut rx = SrtpContext::new(&material(profile)).unwrap();
            for seq in [65_530u16, 65_535, 0, 1, 2] {
                let packet = rtp_packet(seq, 0x1234_5678, b"hello, media plane");
                let mut wire = protect(&mut tx, &packet);
                assert_eq!(wire.len(), packet.len() + profile.rtp_overhead());
                assert_ne!(
                    &wire[12..packet.len()],
                    &packet[12..],
                    "{profile:?} payload encrypted"
                );
                let n = rx.unprotect_rtp(&mut wire).unwrap();
                assert_eq!(&wire[..n], &packet[..], "{profile:?} seq {seq}");
            }
            // The rollover counter moved with the wrap.
            let slot = rx.find(0x1234_5678).unwrap();
            assert_eq!(rx.streams[slot].roc, 1, "{profile:?}");
        }
    }

    #[test]
    fn tampering_replay_and_age_are_refused() {
        for profile in SrtpProfile::ALL {
            let mut tx = SrtpContext::new(&material(profile)).unwrap();
            let mut rx = SrtpContext::with_replay_window(&material(profile), 64).unwrap();
            let wire = protect(&mut tx, &rtp_packet(10, 1, b"abc"));
            let mut bad = wire.clone();
            bad[13] ^= 1;
            assert_eq!(rx.unprotect_rtp(&mut bad), Err(SrtpError::AuthFailed));
            let mut bad_header = wire.clone();
            bad_header[1] ^= 1; // payload type is authenticated too
            assert_eq!(
                rx.unprotect_rtp(&mut bad_header),
                Err(SrtpError::AuthFailed)
            );
            assert_eq!(rx.unprotect_rtp(&mut wire.clone()), Ok(15));
            assert_eq!(rx.unprotect_rtp(&mut wire.clone()), Err(SrtpError::Replay));
            // Reordering inside the window is fine, outside it is not.
            let later: Vec<Vec<u8>> = (11..100)
                .map(|s| protect(&mut tx, &rtp_packet(s, 1, b"x")))
                .collect();
            for w in later.iter().skip(5) {
                rx.unprotect_rtp(&mut w.clone()).unwrap();
            }
            assert_eq!(
                rx.unprotect_rtp(&mut later[4].clone()),
                Err(SrtpError::TooOld),
                "{profile:?}"
            );
            rx.unprotect_rtp(&mut later[60].clone()).unwrap_err();
            let wrong_keys = SrtpKeyMaterial::new(
                profile,
                &vec![9u8; profile.master_key_len()],
                &vec![9u8; profile.master_salt_len()],
            )
            .unwrap();
            let mut other = SrtpContext::new(&wrong_keys).unwrap();
            assert_eq!(
                other.unprotect_rtp(&mut wire.clone()),
                Err(SrtpError::AuthFailed)
            );
            assert_eq!(
                rx.unprotect_rtp(&mut [0x80, 0, 0]),
                Err(SrtpError::Malformed)
            );
        }
    }

    #[test]
    fn forged_packets_do_not_evict_streams() {
        let profile = SrtpProfile::AesCm128HmacSha1_80;
        let mut tx = SrtpContext::new(&material(profile)).unwrap();
        let mut rx = SrtpContext::new(&material(profile)).unwrap();
        rx.unprotect_rtp(&mut protect(&mut tx, &rtp_packet(1, 42, b"a")))
            .unwrap();
        for ssrc in 1000..1100u32 {
            let mut forged = rtp_packet(5, ssrc, b"garbage-garbage");
            assert_eq!(rx.unprotect_rtp(&mut forged), Err(SrtpError::AuthFailed));
        }
        assert!(rx.find(42).is_some());
        assert_eq!(rx.streams.iter().filter(|s| s.in_use).count(), 1);
    }

    #[test]
    fn an_index_is_never_protected_twice() {
        for profile in SrtpProfile::ALL {
            let mut tx = SrtpContext::new(&material(profile)).unwrap();
            let packet = rtp_packet(7, 99, b"once only");
            protect(&mut tx, &packet);
            let mut again = packet.clone();
            again.resize(packet.len() + profile.rtp_overhead(), 0);
            // The same index, whatever the payload: refused, nothing written.
            again[12] ^= 0xff;
            let before = again.clone();
            assert_eq!(
                tx.protect_rtp(&mut again, packet.len()),
                Err(SrtpError::Replay),
                "{profile:?}"
            );
            assert_eq!(again, before);
            // Newer indices go on; a late one not yet used is still fine.
            protect(&mut tx, &rtp_packet(9, 99, b"x"));
            protect(&mut tx, &rtp_packet(8, 99, b"x"));
            let mut late = rtp_packet(8, 99, b"x");
            late.resize(late.len() + profile.rtp_overhead(), 0);
            assert_eq!(tx.protect_rtp(&mut late, 13), Err(SrtpError::Replay));
        }
    }

    #[test]
    fn protecting_never_forgets_a_stream() {
        let profile = SrtpProfile::AesCm128HmacSha1_80;
        let mut tx = SrtpContext::new(&material(profile)).unwrap();
        for ssrc in 0..MAX_STREAMS as u32 {
            protect(&mut tx, &rtp_packet(1, ssrc, b"x"));
        }
        let mut one_more = rtp_packet(1, 1000, b"x");
        one_more.resize(one_more.len() + 10, 0);
        assert_eq!(
            tx.protect_rtp(&mut one_more, 13),
            Err(SrtpError::StreamsFull)
        );
        let mut rtcp = rtcp_packet(1000);
        let len = rtcp.len();
        rtcp.resize(len + 14, 0);
        assert_eq!(tx.protect_rtcp(&mut rtcp, len), Err(SrtpError::StreamsFull));
        // The streams it has keep going.
        protect(&mut tx, &rtp_packet(2, 0, b"x"));
    }

    fn rtcp_packet(ssrc: u32) -> Vec<u8> {
        // A receiver report with one report block.
        let mut p = vec![0x81, 201, 0, 7];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xab; 24]);
        p
    }

    #[test]
    fn rtcp_round_trip_and_replay() {
        for profile in SrtpProfile::ALL {
            let mut tx = SrtpContext::new(&material(profile)).unwrap();
            let mut rx = SrtpContext::new(&material(profile)).unwrap();
            let packet = rtcp_packet(77);
            for expected_index in 0..3u32 {
                let mut buf = packet.clone();
                buf.resize(packet.len() + 40, 0);
                let n = tx.protect_rtcp(&mut buf, packet.len()).unwrap();
                buf.truncate(n);
                assert_eq!(n, packet.len() + profile.rtcp_overhead());
                let word_at = if profile.is_gcm() { n - 4 } else { n - 14 };
                assert_eq!(read_u32(&buf[word_at..]), SRTCP_E_BIT | expected_index);
                let mut bad = buf.clone();
                bad[10] ^= 0x40;
                assert_eq!(rx.unprotect_rtcp(&mut bad), Err(SrtpError::AuthFailed));
                let mut copy = buf.clone();
                assert_eq!(rx.unprotect_rtcp(&mut copy), Ok(packet.len()));
                assert_eq!(&copy[..packet.len()], &packet[..]);
                assert_eq!(rx.unprotect_rtcp(&mut buf.clone()), Err(SrtpError::Replay));
            }
        }
    }

    #[test]
    fn replay_window_shifts() {
        let mut w = ReplayWindow::new(256);
        w.accept(5);
        w.accept(250);
        assert_eq!(w.check(5), Err(SrtpError::Replay), "245 back: inside");
        assert!(w.check(6).is_ok());
        w.accept(270);
        assert_eq!(w.check(250), Err(SrtpError::Replay));
        assert_eq!(w.check(5), Err(SrtpError::TooOld), "265 back: outside 256");
        assert!(w.check(20).is_ok(), "250 back: inside, never seen");
        w.accept(500);
        assert_eq!(w.check(5), Err(SrtpError::TooOld));
        assert_eq!(w.check(270), Err(SrtpError::Replay), "230 back: still seen");
        assert!(w.check(271).is_ok());
        w.accept(1250);
        assert!(w.check(1249).is_ok());
        assert_eq!(w.check(500), Err(SrtpError::TooOld));
    }

    #[test]
    fn sdes_names() {
        for p in SrtpProfile::ALL {
            assert_eq!(SrtpProfile::from_sdes_name(p.sdes_name()), Some(p));
        }
        assert_eq!(SrtpProfile::from_sdes_name("F8_128_HMAC_SHA1_80"), None);
    }
}
