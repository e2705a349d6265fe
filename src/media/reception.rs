//! Receive-side quality of a stream: packet loss from sequence numbers and
//! interarrival jitter (RFC 3550 A.3 and A.8), plus what the far end reports
//! about our stream in RTCP receiver/sender reports. Sans-IO: the caller
//! passes arrival times.

use std::time::{Duration, Instant};

/// Loss and jitter of the packets received from one source.
#[derive(Debug, Clone)]
pub struct ReceptionStats {
    ssrc: Option<u32>,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    /// Interarrival jitter in timestamp units (RFC 3550 A.8).
    jitter: f64,
    /// Expected and received counts at our last report (RFC 3550 A.3).
    expected_prior: i64,
    received_prior: u64,
    last_transit: Option<f64>,
    epoch: Instant,
}

impl ReceptionStats {
    pub fn new(epoch: Instant) -> Self {
        ReceptionStats {
            ssrc: None,
            base_seq: 0,
            max_seq: 0,
            cycles: 0,
            received: 0,
            jitter: 0.0,
            expected_prior: 0,
            received_prior: 0,
            last_transit: None,
            epoch,
        }
    }

    /// Records an authenticated RTP packet that arrived at `arrival`.
    pub fn record(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        clock_rate: u32,
        arrival: Instant,
    ) {
        if self.ssrc != Some(ssrc) {
            // A new source starts over (RFC 3550 A.1's re-initialisation).
            *self = ReceptionStats::new(self.epoch);
            self.ssrc = Some(ssrc);
            self.base_seq = u32::from(seq);
            self.max_seq = seq;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta != 0 && delta < 0x8000 {
                if seq < self.max_seq {
                    self.cycles += 1;
                }
                self.max_seq = seq;
            }
        }
        self.received += 1;
        if clock_rate > 0 {
            let arrival_units =
                arrival.saturating_duration_since(self.epoch).as_secs_f64() * f64::from(clock_rate);
            let transit = arrival_units - f64::from(timestamp);
            if let Some(last) = self.last_transit {
                let d = (transit - last).abs();
                // A timestamp jump (new talk spurt after a long gap, wrap) is not jitter.
                if d < f64::from(clock_rate) * 10.0 {
                    self.jitter += (d - self.jitter) / 16.0;
                }
            }
            self.last_transit = Some(transit);
        }
    }

    /// Packets expected but not received (negative with duplicates).
    pub fn lost(&self) -> i64 {
        if self.ssrc.is_none() {
            return 0;
        }
        let extended_max = (u64::from(self.cycles) << 16) + u64::from(self.max_seq);
        let expected = extended_max as i64 - i64::from(self.base_seq) + 1;
        expected - self.received as i64
    }

    /// A report block on this source for an RTCP receiver report of ours
    /// (RFC 3550 §6.4.1), with the loss since the last one; `last_sr` is
    /// the middle of the NTP timestamp of the source's latest sender report
    /// (answered at once: no delay since it). None before any packet.
    pub fn report(&mut self, last_sr: u32) -> Option<OwnReport> {
        let ssrc = self.ssrc?;
        let extended_max = (u64::from(self.cycles) << 16) + u64::from(self.max_seq);
        let expected = extended_max as i64 - i64::from(self.base_seq) + 1;
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received as i64 - self.received_prior as i64;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval - received_interval;
        let fraction_lost = if expected_interval <= 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval).min(255) as u8
        };
        Some(OwnReport {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_max: extended_max as u32,
            jitter: self.jitter as u32,
            last_sr,
        })
    }

    pub fn jitter(&self, clock_rate: u32) -> Duration {
        if clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.jitter / f64::from(clock_rate))
    }
}

/// What one of our receiver reports says about a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnReport {
    pub ssrc: u32,
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub extended_max: u32,
    pub jitter: u32,
    pub last_sr: u32,
}

impl OwnReport {
    /// Length of the receiver report [`OwnReport::write`] makes.
    pub const LEN: usize = 32;

    /// Writes an RTCP receiver report from `sender` with this one block
    /// into `out` (at least [`OwnReport::LEN`] bytes); returns its length.
    pub fn write(&self, sender: u32, out: &mut [u8]) -> usize {
        out[..4].copy_from_slice(&[0x81, 201, 0, 7]);
        out[4..8].copy_from_slice(&sender.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = (self.cumulative_lost as u32) & 0x00ff_ffff;
        out[12..16].copy_from_slice(&((u32::from(self.fraction_lost) << 24) | lost).to_be_bytes());
        out[16..20].copy_from_slice(&self.extended_max.to_be_bytes());
        out[20..24].copy_from_slice(&self.jitter.to_be_bytes());
        out[24..28].copy_from_slice(&self.last_sr.to_be_bytes());
        // Answered as it arrives: no delay since the sender report.
        out[28..32].fill(0);
        Self::LEN
    }
}

/// A sender report in a (compound) RTCP packet: its sender's SSRC and the
/// middle 32 bits of its NTP timestamp (what a receiver report echoes).
pub fn sender_report(packet: &[u8]) -> Option<(u32, u32)> {
    let mut at = 0;
    while at + 8 <= packet.len() {
        let header = &packet[at..];
        if header[0] >> 6 != 2 {
            return None;
        }
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        if header[1] == 200 && len >= 28 && header.len() >= 28 {
            let word = |i: usize| {
                u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
            };
            let ntp_middle = (word(8) << 16) | (word(12) >> 16);
            return Some((word(4), ntp_middle));
        }
        at += len;
    }
    None
}

/// The first report block of an RTCP SR or RR: the far end's view of the
/// stream it receives from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
}

/// Finds the first report block in a (compound) RTCP packet.
pub fn first_report_block(packet: &[u8]) -> Option<ReportBlock> {
    let mut at = 0;
    while at + 8 <= packet.len() {
        let header = &packet[at..];
        if header[0] >> 6 != 2 {
            return None;
        }
        let count = usize::from(header[0] & 0x1f);
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let blocks_at = match header[1] {
            200 => 8 + 20, // SR: sender info before the blocks
            201 => 8,
            _ => {
                at += len;
                continue;
            }
        };
        if count > 0 && len <= header.len() && blocks_at + 24 <= len {
            let b = &header[blocks_at..blocks_at + 24];
            let lost = i32::from_be_bytes([b[5], b[6], b[7], 0]) >> 8;
            return Some(ReportBlock {
                ssrc: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                fraction_lost: b[4],
                cumulative_lost: lost,
                jitter: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            });
        }
        at += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_across_a_wrap() {
        let t0 = Instant::now();
        let mut r = ReceptionStats::new(t0);
        for (i, seq) in [65_534u16, 65_535, 1, 2, 4].into_iter().enumerate() {
            r.record(
                7,
                seq,
                i as u32 * 160,
                8000,
                t0 + Duration::from_millis(20 * i as u64),
            );
        }
        // Expected 65534..=65540 (7 packets), received 5: seq 0 and 3 are missing.
        assert_eq!(r.lost(), 2);
        // A late duplicate arrival of 2 (reordered) does not count as more loss.
        r.record(7, 2, 3 * 160, 8000, t0 + Duration::from_millis(100));
        assert_eq!(r.lost(), 1);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let t0 = Instant::now();
        let mut steady = ReceptionStats::new(t0);
        let mut shaky = ReceptionStats::new(t0);
        for i in 0..200u32 {
            let ts = i * 160;
            steady.record(
                1,
                i as u16,
                ts,
                8000,
                t0 + Duration::from_millis(20 * u64::from(i)),
            );
            // Every other packet arrives 10 ms late.
            let late = if i % 2 == 1 { 10 } else { 0 };
            shaky.record(
                1,
                i as u16,
                ts,
                8000,
                t0 + Duration::from_millis(20 * u64::from(i) + late),
            );
        }
        assert!(steady.jitter(8000) < Duration::from_micros(100));
        let j = shaky.jitter(8000);
        // |D| is 10 ms every packet, so the estimate converges to 10 ms.
        assert!(
            j > Duration::from_millis(9) && j < Duration::from_millis(11),
            "{j:?}"
        );
    }

    #[test]
    fn our_receiver_reports_say_what_was_lost_since_the_last() {
        let t0 = Instant::now();
        let mut r = ReceptionStats::new(t0);
        assert_eq!(r.report(0), None, "nothing received, nothing to say");
        // 100 packets with every tenth missing, then a report.
        for seq in (0u16..100).filter(|s| s % 10 != 5) {
            r.record(0xb00, seq, u32::from(seq) * 960, 48_000, t0);
        }
        let first = r.report(0x1234_5678).unwrap();
        assert_eq!(
            (first.ssrc, first.cumulative_lost, first.extended_max),
            (0xb00, 10, 99)
        );
        assert_eq!(first.fraction_lost, (10 * 256 / 100) as u8);
        // The next 100 all arrive: nothing lost since, 10 in all.
        for seq in 100u16..200 {
            r.record(0xb00, seq, u32::from(seq) * 960, 48_000, t0);
        }
        let second = r.report(0).unwrap();
        assert_eq!((second.fraction_lost, second.cumulative_lost), (0, 10));
        // As a packet: an RR of one block, which our parser reads back.
        let mut out = [0u8; 64];
        let len = first.write(0x5157, &mut out);
        assert_eq!(len, OwnReport::LEN);
        let block = first_report_block(&out[..len]).unwrap();
        assert_eq!(
            (block.ssrc, block.fraction_lost, block.cumulative_lost),
            (0xb00, first.fraction_lost, 10)
        );
        assert_eq!(&out[24..28], &0x1234_5678u32.to_be_bytes());
    }

    #[test]
    fn a_sender_report_is_found_in_a_compound() {
        let mut compound = vec![0x80, 200, 0, 6, 0, 0, 0xb0, 0x0b];
        compound.extend_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd, 0x11, 0x22, 0x33, 0x44]);
        compound.extend_from_slice(&[0u8; 12]);
        compound.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0xb0, 0x0b]);
        assert_eq!(sender_report(&compound), Some((0xb00b, 0xccdd_1122)));
        assert_eq!(sender_report(&compound[28..]), None, "SDES alone");
        assert_eq!(sender_report(&[0x80, 200, 0, 6]), None);
    }

    #[test]
    fn report_blocks_from_rr_and_sr() {
        let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 1];
        rr.extend_from_slice(&[
            0, 0, 0, 9, 64, 0xff, 0xff, 0xfe, 0, 1, 0, 5, 0, 0, 1, 0x40, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        let b = first_report_block(&rr).unwrap();
        assert_eq!(
            b,
            ReportBlock {
                ssrc: 9,
                fraction_lost: 64,
                cumulative_lost: -2,
                jitter: 320
            }
        );
        let mut sr = vec![0x81, 200, 0, 12, 0, 0, 0, 1];
        sr.extend_from_slice(&[0u8; 20]);
        sr.extend_from_slice(&[
            0, 0, 0, 9, 1, 0, 0, 3, 0, 1, 0, 5, 0, 0, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        let b = first_report_block(&sr).unwrap();
        assert_eq!((b.fraction_lost, b.cumulative_lost, b.jitter), (1, 3, 80));
        // An SDES-only packet, or garbage, has none.
        assert_eq!(first_report_block(&[0x81, 202, 0, 1, 0, 0, 0, 1]), None);
        assert_eq!(first_report_block(&[0x81, 201, 0, 7]), None);
        assert_eq!(
            first_report_block(&[0x80, 201, 0xff, 0xff, 0, 0, 0, 1]),
            None
        );
    }
}
