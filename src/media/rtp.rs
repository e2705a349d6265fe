//! The few RTP/RTCP header facts the relay needs, read straight from the
//! packet bytes (RFC 3550, RFC 5761 for muxed RTCP, RFC 7983 for the web leg's
//! first-byte demultiplexing). No parsing into owned structures: the hot path
//! only ever looks at a handful of bytes.

/// What the first byte of a datagram on the web leg says it is (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebPacketKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Unknown,
}

/// Classifies a datagram on a leg that carries STUN, DTLS and (S)RTP/(S)RTCP.
pub fn classify(packet: &[u8]) -> WebPacketKind {
    let Some(&first) = packet.first() else {
        return WebPacketKind::Unknown;
    };
    match first {
        0..=3 => WebPacketKind::Stun,
        20..=63 => WebPacketKind::Dtls,
        128..=191 => {
            if packet.len() >= 2 && is_rtcp_packet_type(packet[1]) {
                WebPacketKind::Rtcp
            } else {
                WebPacketKind::Rtp
            }
        }
        _ => WebPacketKind::Unknown,
    }
}

/// RTCP packet types 192–223 sit where RTP's marker+payload type byte would
/// be; RFC 5761 keeps RTP payload types out of that range when muxing.
pub fn is_rtcp_packet_type(second_byte: u8) -> bool {
    (192..=223).contains(&second_byte)
}

/// Length of the RTP header (fixed part, CSRCs, extension) if the packet is
/// a well-formed RTP version 2 packet that holds it.
pub fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrc_count = usize::from(packet[0] & 0x0f);
    let mut len = 12 + 4 * csrc_count;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    (len <= packet.len()).then_some(len)
}

/// Where an RTP packet's payload ends: before its padding, if it has any
/// (RFC 3550 §5.1: the last byte counts the padding). None when the
/// padding would reach into the header.
pub fn rtp_payload_end(packet: &[u8], header_len: usize) -> Option<usize> {
    if packet[0] & 0x20 == 0 {
        return Some(packet.len());
    }
    let padding = usize::from(*packet.last()?);
    let end = packet.len().checked_sub(padding)?;
    (padding > 0 && end >= header_len).then_some(end)
}

/// Clears the padding flag (for a payload rewritten without padding).
pub fn clear_rtp_padding(packet: &mut [u8]) {
    packet[0] &= !0x20;
}

pub fn rtp_seq(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[2], packet[3]])
}

pub fn rtp_timestamp(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

pub fn rtp_ssrc(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]])
}

pub fn rtp_payload_type(packet: &[u8]) -> u8 {
    packet[1] & 0x7f
}

/// Rewrites the payload type, keeping the marker bit.
pub fn set_rtp_payload_type(packet: &mut [u8], pt: u8) {
    packet[1] = (packet[1] & 0x80) | (pt & 0x7f);
}

pub fn set_rtp_ssrc(packet: &mut [u8], ssrc: u32) {
    packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

pub fn set_rtp_seq(packet: &mut [u8], seq: u16) {
    packet[2..4].copy_from_slice(&seq.to_be_bytes());
}

pub fn set_rtp_timestamp(packet: &mut [u8], timestamp: u32) {
    packet[4..8].copy_from_slice(&timestamp.to_be_bytes());
}

/// Rewrites, in every packet of an RTCP compound, the sender's SSRC (SR,
/// RR, BYE, and SDES's first chunk) from `from` to `to`, and moves a
/// sender report's RTP timestamp by `timestamp_offset` (its sender's
/// stream goes out renumbered). Packets of other senders, and a compound
/// whose lengths do not add up, are left as they are past that point.
pub fn rewrite_rtcp_sender(packet: &mut [u8], from: u32, to: u32, timestamp_offset: u32) {
    let mut at = 0;
    while let Some(header) = packet.get(at..at + 8) {
        if header[0] >> 6 != 2 {
            return;
        }
        let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let end = at + 4 * (words + 1);
        if end > packet.len() {
            return;
        }
        let kind = header[1];
        let sender = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if matches!(kind, 200..=203) && sender == from {
            packet[at + 4..at + 8].copy_from_slice(&to.to_be_bytes());
            if kind == 200 && end >= at + 20 {
                let ts = &mut packet[at + 16..at + 20];
                let moved =
                    u32::from_be_bytes([ts[0], ts[1], ts[2], ts[3]]).wrapping_add(timestamp_offset);
                ts.copy_from_slice(&moved.to_be_bytes());
            }
        }
        at = end;
    }
}

/// Sender SSRC of an RTCP packet (bytes 4..8 of the first packet in a compound).
pub fn rtcp_sender_ssrc(packet: &[u8]) -> Option<u32> {
    let b = packet.get(4..8)?;
    (packet[0] >> 6 == 2).then(|| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtcp_senders_are_renamed_in_every_packet() {
        // SR from 7 (one block), SDES for 7, RR from 9.
        let mut compound = vec![0x81, 200, 0, 12];
        compound.extend_from_slice(&7u32.to_be_bytes());
        compound.extend_from_slice(&[0; 8]); // NTP
        compound.extend_from_slice(&1000u32.to_be_bytes()); // RTP timestamp
        compound.extend_from_slice(&[0; 8]); // counts
        compound.extend_from_slice(&[0x33; 24]); // report block
        compound.extend_from_slice(&[0x81, 202, 0, 2]);
        compound.extend_from_slice(&7u32.to_be_bytes());
        compound.extend_from_slice(&[1, 0, 0, 0]);
        compound.extend_from_slice(&[0x80, 201, 0, 1]);
        compound.extend_from_slice(&9u32.to_be_bytes());
        rewrite_rtcp_sender(&mut compound, 7, 0xabcd, 500);
        assert_eq!(&compound[4..8], &0xabcdu32.to_be_bytes());
        assert_eq!(&compound[16..20], &1500u32.to_be_bytes());
        assert_eq!(&compound[56..60], &0xabcdu32.to_be_bytes());
        assert_eq!(&compound[68..72], &9u32.to_be_bytes(), "another sender");
        // Lengths that do not add up stop the walk, without a panic.
        let mut short = vec![0x81, 200, 0, 40, 0, 0, 0, 7];
        rewrite_rtcp_sender(&mut short, 7, 1, 0);
        assert_eq!(&short[4..8], &7u32.to_be_bytes());
    }

    #[test]
    fn demux_by_first_byte() {
        assert_eq!(classify(&[0x00, 0x01]), WebPacketKind::Stun);
        assert_eq!(classify(&[22, 0xfe]), WebPacketKind::Dtls);
        assert_eq!(classify(&[0x80, 111]), WebPacketKind::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 111]), WebPacketKind::Rtp);
        assert_eq!(classify(&[0x81, 200]), WebPacketKind::Rtcp);
        assert_eq!(classify(&[0x80, 201]), WebPacketKind::Rtcp);
        assert_eq!(classify(&[]), WebPacketKind::Unknown);
        assert_eq!(classify(&[64]), WebPacketKind::Unknown);
        assert_eq!(classify(&[255]), WebPacketKind::Unknown);
    }

    #[test]
    fn header_lengths() {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 9, 9];
        assert_eq!(rtp_header_len(&p), Some(12));
        p[0] = 0x82; // two CSRCs, but only 2 bytes follow
        assert_eq!(rtp_header_len(&p), None);
        // One-word extension (0xBEDE profile) after the fixed header.
        let mut x = vec![
            0x90, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xbe, 0xde, 0, 1, 1, 2, 3, 4, 7,
        ];
        assert_eq!(rtp_header_len(&x), Some(20));
        x[15] = 5; // claims 5 words
        assert_eq!(rtp_header_len(&x), None);
        assert_eq!(rtp_header_len(&[0x40; 20]), None, "version 1");
    }

    #[test]
    fn field_access() {
        let mut p = [
            0x80,
            0x80 | 8,
            0x12,
            0x34,
            0,
            0,
            0x01,
            0x00,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        assert_eq!(rtp_seq(&p), 0x1234);
        assert_eq!(rtp_timestamp(&p), 256);
        assert_eq!(rtp_ssrc(&p), 0xdeadbeef);
        assert_eq!(rtp_payload_type(&p), 8);
        set_rtp_payload_type(&mut p, 96);
        assert_eq!(p[1], 0x80 | 96, "marker kept");
        set_rtp_ssrc(&mut p, 7);
        assert_eq!(rtp_ssrc(&p), 7);
    }
}
