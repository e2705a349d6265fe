//! RFC 4733 telephone-events: generating DTMF digits toward the SIP side
//! (for the API's dtmf request), recognising digits that arrive, and
//! rescaling an event's duration between clock rates (8 kHz ↔ 48 kHz).
//! Sans-IO: the relay passes the time and sends what this returns.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Interval between packets of one event (RFC 4733 §2.5.1.2 suggests 50 ms).
pub const PACKET_INTERVAL: Duration = Duration::from_millis(50);
/// Silence between two digits.
pub const INTER_DIGIT_GAP: Duration = Duration::from_millis(60);
/// End packets are sent three times (RFC 4733 §2.5.1.4).
const END_REPEATS: u8 = 3;
/// Longest digit a request may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(5);
/// Most digits one request may queue.
pub const MAX_DIGITS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("{0:?} is not a DTMF digit (0-9, *, #, A-D)")]
    BadDigit(char),
    #[error("duration must be 40 to 5000 ms")]
    BadDuration,
    #[error("at most {MAX_DIGITS} digits per request")]
    TooMany,
}

/// The RFC 4733 event code of a DTMF character.
pub fn event_code(c: char) -> Option<u8> {
    match c {
        '0'..='9' => Some(c as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(12 + (c as u8 - b'A')),
        'a'..='d' => Some(12 + (c as u8 - b'a')),
        _ => None,
    }
}

/// The DTMF character of an event code.
pub fn digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

/// One telephone-event packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// The 4-byte RFC 4733 payload.
    pub payload: [u8; 4],
    /// Set on the first packet of an event.
    pub marker: bool,
    /// RTP timestamp: the event's start, for every packet of it.
    pub timestamp: u32,
}

struct Current {
    code: u8,
    duration_units: u32,
    started: Instant,
    start_timestamp: u32,
    next_at: Instant,
    first: bool,
    ends_sent: u8,
}

/// Sends queued digits as RFC 4733 events.
pub struct DtmfSender {
    clock_rate: u32,
    volume: u8,
    queue: VecDeque<(u8, Duration)>,
    current: Option<Current>,
    /// No new digit before this instant (the gap after the last one).
    quiet_until: Option<Instant>,
}

impl DtmfSender {
    pub fn new(clock_rate: u32) -> Self {
        DtmfSender {
            clock_rate: clock_rate.max(1),
            volume: 10,
            queue: VecDeque::new(),
            current: None,
            quiet_until: None,
        }
    }

    /// Queues `digits`, each lasting `duration`. Nothing is queued if any digit is bad.
    pub fn queue(&mut self, digits: &str, duration: Duration) -> Result<(), DtmfError> {
        if duration < Duration::from_millis(40) || duration > MAX_DURATION {
            return Err(DtmfError::BadDuration);
        }
        let codes = digits
            .chars()
            .map(|c| event_code(c).ok_or(DtmfError::BadDigit(c)))
            .collect::<Result<Vec<_>, _>>()?;
        if codes.len() + self.queue.len() > MAX_DIGITS {
            return Err(DtmfError::TooMany);
        }
        self.queue.extend(codes.into_iter().map(|c| (c, duration)));
        Ok(())
    }

    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.queue.is_empty()
    }

    /// When `poll` next has something to send (`now` if at once).
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        match &self.current {
            Some(c) => Some(c.next_at),
            None if !self.queue.is_empty() => Some(self.quiet_until.map_or(now, |q| q.max(now))),
            None => None,
        }
    }

    /// The packet due at `now`, if any. `timestamp_now` is the RTP timestamp
    /// the outgoing stream has at `now` (a new event starts there).
    pub fn poll(&mut self, now: Instant, timestamp_now: u32) -> Option<EventPacket> {
        if self.current.is_none() {
            if self.quiet_until.is_some_and(|q| now < q) {
                return None;
            }
            let (code, duration) = self.queue.pop_front()?;
            let units = (duration.as_secs_f64() * f64::from(self.clock_rate)) as u32;
            self.current = Some(Current {
                code,
                duration_units: units.min(0xffff),
                started: now,
                start_timestamp: timestamp_now,
                next_at: now,
                first: true,
                ends_sent: 0,
            });
        }
        let c = self.current.as_mut()?;
        if now < c.next_at {
            return None;
        }
        let elapsed = (now.saturating_duration_since(c.started).as_secs_f64()
            * f64::from(self.clock_rate)) as u32;
        let ending = elapsed >= c.duration_units;
        let shown = if ending {
            c.duration_units
        } else {
            elapsed.min(0xffff)
        };
        let flags = if ending { 0x80 } else { 0 } | (self.volume & 0x3f);
        let [hi, lo] = (shown as u16).to_be_bytes();
        let packet = EventPacket {
            payload: [c.code, flags, hi, lo],
            marker: c.first,
            timestamp: c.start_timestamp,
        };
        c.first = false;
        if ending {
            c.ends_sent += 1;
            if c.ends_sent >= END_REPEATS {
                self.current = None;
                self.quiet_until = Some(now + INTER_DIGIT_GAP);
            } else {
                c.next_at = now + Duration::from_millis(5);
            }
        } else {
            let until_end = Duration::from_secs_f64(
                f64::from(c.duration_units - elapsed) / f64::from(self.clock_rate),
            );
            c.next_at = now + PACKET_INTERVAL.min(until_end);
        }
        Some(packet)
    }
}

/// Recognises digits in received telephone-event payloads: one per event,
/// reported at its first end packet (repeats share the event's timestamp).
#[derive(Default)]
pub struct DtmfReceiver {
    last_reported: Option<u32>,
}

impl DtmfReceiver {
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        if payload.len() < 4 || payload[1] & 0x80 == 0 {
            return None;
        }
        if self.last_reported == Some(timestamp) {
            return None;
        }
        self.last_reported = Some(timestamp);
        digit(payload[0])
    }
}

/// Rescales an event payload's duration from one clock rate to another, in place.
pub fn rescale_duration(payload: &mut [u8], from_clock: u32, to_clock: u32) {
    if payload.len() < 4 || from_clock == 0 || from_clock == to_clock {
        return;
    }
    let d = u64::from(u16::from_be_bytes([payload[2], payload[3]]));
    let scaled = (d * u64::from(to_clock) / u64::from(from_clock)).min(0xffff) as u16;
    payload[2..4].copy_from_slice(&scaled.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let all = "0123456789*#ABCD";
        for (i, c) in all.chars().enumerate() {
            assert_eq!(event_code(c), Some(i as u8));
            assert_eq!(digit(i as u8), Some(c));
        }
        assert_eq!(event_code('x'), None);
        assert_eq!(digit(16), None);
    }

    #[test]
    fn one_digit_timeline() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(8000);
        assert_eq!(s.next_wakeup(t0), None);
        s.queue("5", Duration::from_millis(100)).unwrap();
        let mut sent = Vec::new();
        let mut now = t0;
        while !s.is_idle() {
            now = s.next_wakeup(now).unwrap().max(now);
            if let Some(p) = s.poll(now, 1000) {
                sent.push((now.duration_since(t0), p));
            }
        }
        // Start (marker) at 0, updates at 50 ms, end at 100 ms sent 3 times.
        assert!(sent[0].1.marker);
        assert!(sent.iter().skip(1).all(|(_, p)| !p.marker));
        assert!(sent
            .iter()
            .all(|(_, p)| p.timestamp == 1000 && p.payload[0] == 5));
        let ends: Vec<_> = sent
            .iter()
            .filter(|(_, p)| p.payload[1] & 0x80 != 0)
            .collect();
        assert_eq!(ends.len(), 3);
        for (_, p) in &ends {
            assert_eq!(
                u16::from_be_bytes([p.payload[2], p.payload[3]]),
                800,
                "100 ms at 8 kHz"
            );
        }
        assert_eq!(sent[1].0, Duration::from_millis(50));
        assert_eq!(
            u16::from_be_bytes([sent[1].1.payload[2], sent[1].1.payload[3]]),
            400
        );
        assert_eq!(sent.len(), 2 + 3);
    }

    #[test]
    fn digits_are_spaced_and_validated() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(48_000);
        assert_eq!(
            s.queue("12x", Duration::from_millis(100)),
            Err(DtmfError::BadDigit('x'))
        );
        assert!(s.is_idle(), "nothing queued from a bad request");
        assert_eq!(
            s.queue("1", Duration::from_millis(10)),
            Err(DtmfError::BadDuration)
        );
        s.queue("1#", Duration::from_millis(80)).unwrap();
        let mut starts = Vec::new();
        let mut now = t0;
        while !s.is_idle() {
            now = s.next_wakeup(now).unwrap().max(now);
            if let Some(p) = s.poll(now, now.duration_since(t0).as_millis() as u32 * 48) {
                if p.marker {
                    starts.push((now.duration_since(t0), p.payload[0], p.timestamp));
                }
            }
        }
        assert_eq!(starts.len(), 2);
        assert_eq!((starts[0].1, starts[1].1), (1, 11));
        assert!(starts[1].0 >= Duration::from_millis(80) + INTER_DIGIT_GAP);
        assert!(
            starts[1].2 > starts[0].2,
            "each event starts at the stream's time"
        );
    }

    #[test]
    fn receiver_reports_each_event_once() {
        let mut r = DtmfReceiver::default();
        assert_eq!(r.on_packet(100, &[7, 0x0a, 0, 160]), None, "not ended yet");
        assert_eq!(r.on_packet(100, &[7, 0x8a, 3, 32]), Some('7'));
        assert_eq!(
            r.on_packet(100, &[7, 0x8a, 3, 32]),
            None,
            "repeat of the end"
        );
        assert_eq!(r.on_packet(900, &[11, 0x8a, 3, 32]), Some('#'));
        assert_eq!(r.on_packet(901, &[1]), None);
    }

    #[test]
    fn duration_rescaling() {
        let mut p = [1, 0x80, 0x03, 0x20]; // 800 units = 100 ms at 8 kHz
        rescale_duration(&mut p, 8000, 48_000);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 4800);
        rescale_duration(&mut p, 48_000, 8000);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 800);
        let mut long = [1, 0x80, 0x40, 0x00];
        rescale_duration(&mut long, 8000, 48_000);
        assert_eq!(u16::from_be_bytes([long[2], long[3]]), 0xffff, "saturates");
    }
}
