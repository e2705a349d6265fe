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

    pub fn jitter(&self, clock_rate: u32) -> Duration {
        if clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.jitter / f64::from(clock_rate))
    }
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
