//! The small part of STUN (RFC 5389/8489) an ICE-lite agent needs: decoding
//! Binding requests, checking MESSAGE-INTEGRITY (HMAC-SHA1, short-term
//! credentials) and FINGERPRINT, and encoding responses.
//!
//! Written here rather than taken from a crate: it is a few hundred lines,
//! it must never panic on what the network sends, and it needs no state.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;
pub const BINDING_INDICATION: u16 = 0x0011;

pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const ATTR_PRIORITY: u16 = 0x0024;
pub const ATTR_USE_CANDIDATE: u16 = 0x0025;
pub const ATTR_FINGERPRINT: u16 = 0x8028;
pub const ATTR_ICE_CONTROLLED: u16 = 0x8029;
pub const ATTR_ICE_CONTROLLING: u16 = 0x802A;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN message")]
    NotStun,
    #[error("the STUN message is truncated or its length is wrong")]
    BadLength,
    #[error("a STUN attribute runs past the message")]
    BadAttribute,
    #[error("the FINGERPRINT does not match")]
    BadFingerprint,
}

/// A decoded message: its header fields and where each attribute is.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub method_class: u16,
    pub transaction_id: [u8; 12],
    raw: &'a [u8],
    /// (type, value range) of each attribute, in order.
    attributes: Vec<(u16, std::ops::Range<usize>)>,
}

impl<'a> Message<'a> {
    /// Decodes a message, checking the FINGERPRINT if there is one.
    pub fn decode(raw: &'a [u8]) -> Result<Self, StunError> {
        if raw.len() < HEADER_LEN || raw[0] & 0xc0 != 0 {
            return Err(StunError::NotStun);
        }
        let cookie = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        if length % 4 != 0 || HEADER_LEN + length != raw.len() {
            return Err(StunError::BadLength);
        }
        let mut attributes = Vec::new();
        let mut at = HEADER_LEN;
        // RFC 8489 §14.5: after MESSAGE-INTEGRITY only FINGERPRINT counts;
        // anything else there is not covered by it, so it is ignored.
        let mut after_integrity = false;
        while at < raw.len() {
            if at + 4 > raw.len() {
                return Err(StunError::BadAttribute);
            }
            let kind = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let len = usize::from(u16::from_be_bytes([raw[at + 2], raw[at + 3]]));
            let value = at + 4..at + 4 + len;
            if value.end > raw.len() {
                return Err(StunError::BadAttribute);
            }
            if kind == ATTR_FINGERPRINT {
                // FINGERPRINT is last, and covers everything before it.
                if len != 4 || value.end != raw.len() {
                    return Err(StunError::BadAttribute);
                }
                let expected = crc32fast::hash(&raw[..at]) ^ FINGERPRINT_XOR;
                let got = u32::from_be_bytes([
                    raw[value.start],
                    raw[value.start + 1],
                    raw[value.start + 2],
                    raw[value.start + 3],
                ]);
                if expected != got {
                    return Err(StunError::BadFingerprint);
                }
            }
            if !after_integrity || kind == ATTR_FINGERPRINT {
                attributes.push((kind, value.clone()));
            }
            after_integrity |= kind == ATTR_MESSAGE_INTEGRITY;
            at = value.start + len.div_ceil(4) * 4;
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&raw[8..20]);
        Ok(Message {
            method_class: u16::from_be_bytes([raw[0], raw[1]]),
            transaction_id,
            raw,
            attributes,
        })
    }

    pub fn attribute(&self, kind: u16) -> Option<&'a [u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, r)| &self.raw[r.clone()])
    }

    pub fn has(&self, kind: u16) -> bool {
        self.attributes.iter().any(|(k, _)| *k == kind)
    }

    pub fn has_fingerprint(&self) -> bool {
        self.has(ATTR_FINGERPRINT)
    }

    /// Checks MESSAGE-INTEGRITY with `key` (the short-term password).
    /// False when absent or wrong.
    pub fn integrity_ok(&self, key: &[u8]) -> bool {
        let Some(index) = self
            .attributes
            .iter()
            .position(|(k, _)| *k == ATTR_MESSAGE_INTEGRITY)
        else {
            return false;
        };
        let value = self.attributes[index].1.clone();
        if value.len() != 20 {
            return false;
        }
        let attr_start = value.start - 4;
        // The length field covers the message up to and including MESSAGE-INTEGRITY.
        let adjusted_len = (attr_start - HEADER_LEN + 24) as u16;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.raw[..HEADER_LEN]);
        header[2..4].copy_from_slice(&adjusted_len.to_be_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&header);
        ctx.update(&self.raw[HEADER_LEN..attr_start]);
        let tag = ctx.sign();
        verify_slices_are_equal(tag.as_ref(), &self.raw[value]).is_ok()
    }
}

/// Whether `packet` is a binding request whose MESSAGE-INTEGRITY was made
/// with `key` (our ICE password): what the relay asks of each STUN
/// datagram before it takes DTLS from the sender's address.
pub fn is_authenticated_binding_request(packet: &[u8], key: &[u8]) -> bool {
    Message::decode(packet).is_ok_and(|m| m.method_class == BINDING_REQUEST && m.integrity_ok(key))
}

/// Builds a message attribute by attribute.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(method_class: u16, transaction_id: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&method_class.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        Builder { buf }
    }

    fn set_length(&mut self, extra: usize) {
        let len = (self.buf.len() - HEADER_LEN + extra) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn attribute(mut self, kind: u16, value: &[u8]) -> Self {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
        self.set_length(0);
        self
    }

    pub fn xor_mapped_address(self, addr: SocketAddr, transaction_id: &[u8; 12]) -> Self {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut value = vec![0u8];
        match addr.ip() {
            IpAddr::V4(v4) => {
                value.push(0x01);
                value.extend_from_slice(&port.to_be_bytes());
                value.extend_from_slice(&(u32::from(v4) ^ MAGIC_COOKIE).to_be_bytes());
            }
            IpAddr::V6(v6) => {
                value.push(0x02);
                value.extend_from_slice(&port.to_be_bytes());
                let mut mask = [0u8; 16];
                mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                mask[4..].copy_from_slice(transaction_id);
                let ip: Vec<u8> = v6.octets().iter().zip(mask).map(|(a, b)| a ^ b).collect();
                value.extend_from_slice(&ip);
            }
        }
        self.attribute(ATTR_XOR_MAPPED_ADDRESS, &value)
    }

    pub fn error_code(self, code: u16, reason: &str) -> Self {
        let mut value = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        value.extend_from_slice(reason.as_bytes());
        self.attribute(ATTR_ERROR_CODE, &value)
    }

    pub fn message_integrity(mut self, key: &[u8]) -> Self {
        self.set_length(24);
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let tag = hmac::sign(&key, &self.buf);
        self.attribute(ATTR_MESSAGE_INTEGRITY, tag.as_ref())
    }

    pub fn fingerprint(mut self) -> Vec<u8> {
        self.set_length(8);
        let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
        self.attribute(ATTR_FINGERPRINT, &crc.to_be_bytes()).buf
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads an XOR-MAPPED-ADDRESS value.
pub fn decode_xor_mapped_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 8 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match value[1] {
        0x01 => {
            let ip = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::from(ip.to_be_bytes()), port))
        }
        0x02 if value.len() >= 20 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(transaction_id);
            let mut ip = [0u8; 16];
            for i in 0..16 {
                ip[i] = value[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_binding_request_signed_with_the_key_counts_as_a_check() {
        let request = |class: u16, key: &[u8]| {
            Builder::new(class, [3; 12])
                .attribute(ATTR_USERNAME, b"ours:theirs")
                .message_integrity(key)
                .fingerprint()
        };
        assert!(is_authenticated_binding_request(
            &request(BINDING_REQUEST, b"the-password"),
            b"the-password"
        ));
        assert!(!is_authenticated_binding_request(
            &request(BINDING_REQUEST, b"another"),
            b"the-password"
        ));
        assert!(!is_authenticated_binding_request(
            &request(BINDING_SUCCESS, b"the-password"),
            b"the-password"
        ));
        let unsigned = Builder::new(BINDING_REQUEST, [3; 12]).fingerprint();
        assert!(!is_authenticated_binding_request(
            &unsigned,
            b"the-password"
        ));
        assert!(!is_authenticated_binding_request(
            b"\x16\xfe\xfd",
            b"the-password"
        ));
    }

    #[test]
    fn attributes_after_message_integrity_other_than_fingerprint_are_ignored() {
        let id = [7u8; 12];
        let raw = Builder::new(0x0001, id)
            .attribute(ATTR_USERNAME, b"a:b")
            .message_integrity(b"key")
            .attribute(ATTR_USE_CANDIDATE, &[])
            .attribute(ATTR_USERNAME, b"evil:b")
            .fingerprint();
        let message = Message::decode(&raw).unwrap();
        assert!(message.integrity_ok(b"key"));
        assert!(message.has_fingerprint());
        assert!(
            !message.has(ATTR_USE_CANDIDATE),
            "not covered by the integrity"
        );
        assert_eq!(message.attribute(ATTR_USERNAME), Some(&b"a:b"[..]));
    }
}
