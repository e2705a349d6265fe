//! Per-call, per-leg counters. Written by the relay worker with relaxed
//! atomics (no lock), read by the API and the metrics exporter.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// From an address other than the ICE-selected / latched / SDP one.
    ForeignSource,
    /// SRTP/SRTCP authentication failed.
    AuthFailed,
    /// A replayed or too old SRTP packet.
    Replay,
    /// Not RTP/RTCP, or a malformed header.
    Malformed,
    /// A payload type with no mapping to the other leg.
    PayloadType,
    /// No destination or keys yet (ICE or DTLS not complete).
    NotReady,
    /// The worker could not send it on (socket buffer full: overload).
    Overload,
}

#[derive(Debug, Default)]
pub struct LegStats {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// STUN and DTLS datagrams handed to the ICE/DTLS side.
    pub control_packets: AtomicU64,
    /// Packets of a transcoded call made up for ones lost on the way in
    /// (from in-band FEC, or concealed).
    pub made_up: AtomicU64,
    /// Transcoded calls: the Opus we send this leg carries in-band FEC
    /// (its peer reported loss on it).
    pub fec_out: AtomicBool,
    drops: [AtomicU64; 7],
    /// Our own view of what arrives on this leg (RFC 3550 A.3, A.8).
    lost: AtomicI64,
    jitter_us: AtomicU64,
    /// What the peer on this leg reports (RTCP) about the stream we send it.
    peer_fraction_lost: AtomicU64,
    peer_cumulative_lost: AtomicI64,
    peer_jitter_us: AtomicU64,
}

impl LegStats {
    pub fn received(&self, bytes: usize) {
        self.packets_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.packets_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    pub fn dropped(&self, why: DropCause) {
        self.dropped_many(why, 1);
    }

    pub fn dropped_many(&self, why: DropCause, count: u64) {
        self.drops[why as usize].fetch_add(count, Relaxed);
    }

    /// Publishes the receive quality measured on this leg.
    pub fn set_reception(&self, lost: i64, jitter_us: u64) {
        self.lost.store(lost, Relaxed);
        self.jitter_us.store(jitter_us, Relaxed);
    }

    /// Publishes the peer's last RTCP report about the stream we send it.
    pub fn set_peer_report(&self, fraction_lost: u8, cumulative_lost: i32, jitter_us: u64) {
        self.peer_fraction_lost
            .store(u64::from(fraction_lost), Relaxed);
        self.peer_cumulative_lost
            .store(i64::from(cumulative_lost), Relaxed);
        self.peer_jitter_us.store(jitter_us, Relaxed);
    }

    pub fn drops(&self, why: DropCause) -> u64 {
        self.drops[why as usize].load(Relaxed)
    }

    pub fn snapshot(&self) -> LegSnapshot {
        LegSnapshot {
            packets_in: self.packets_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            control_packets: self.control_packets.load(Relaxed),
            made_up: self.made_up.load(Relaxed),
            fec_out: self.fec_out.load(Relaxed),
            dropped_foreign_source: self.drops(DropCause::ForeignSource),
            dropped_auth_failed: self.drops(DropCause::AuthFailed),
            dropped_replay: self.drops(DropCause::Replay),
            dropped_malformed: self.drops(DropCause::Malformed),
            dropped_payload_type: self.drops(DropCause::PayloadType),
            dropped_not_ready: self.drops(DropCause::NotReady),
            dropped_overload: self.drops(DropCause::Overload),
            lost: self.lost.load(Relaxed),
            jitter_us: self.jitter_us.load(Relaxed),
            peer_fraction_lost: self.peer_fraction_lost.load(Relaxed) as f64 / 256.0,
            peer_cumulative_lost: self.peer_cumulative_lost.load(Relaxed),
            peer_jitter_us: self.peer_jitter_us.load(Relaxed),
        }
    }
}

/// Counters of one leg at one moment, as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LegSnapshot {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub control_packets: u64,
    /// Transcoded calls: packets made up for ones lost on the way in.
    pub made_up: u64,
    /// Transcoded calls: our Opus toward this leg carries in-band FEC.
    pub fec_out: bool,
    pub dropped_foreign_source: u64,
    pub dropped_auth_failed: u64,
    pub dropped_replay: u64,
    pub dropped_malformed: u64,
    pub dropped_payload_type: u64,
    pub dropped_not_ready: u64,
    pub dropped_overload: u64,
    /// Packets of the incoming stream that never arrived (our count).
    pub lost: i64,
    /// Interarrival jitter of the incoming stream, microseconds.
    pub jitter_us: u64,
    /// The peer's RTCP report on the stream we send it: fraction lost (0–1),
    /// cumulative lost, jitter.
    pub peer_fraction_lost: f64,
    pub peer_cumulative_lost: i64,
    pub peer_jitter_us: u64,
}

impl LegSnapshot {
    /// Adds another snapshot's counters (for totals over calls); quality
    /// figures, which do not add up, are left as they are.
    pub fn add_counters(&mut self, o: &LegSnapshot) {
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.control_packets += o.control_packets;
        self.made_up += o.made_up;
        self.dropped_foreign_source += o.dropped_foreign_source;
        self.dropped_auth_failed += o.dropped_auth_failed;
        self.dropped_replay += o.dropped_replay;
        self.dropped_malformed += o.dropped_malformed;
        self.dropped_payload_type += o.dropped_payload_type;
        self.dropped_not_ready += o.dropped_not_ready;
        self.dropped_overload += o.dropped_overload;
        self.lost += o.lost;
    }
}

/// Counters of both legs of a call. Inbound counters belong to the leg the
/// packet arrived on, outbound ones to the leg it left by.
#[derive(Debug, Default)]
pub struct CallStats {
    pub web: LegStats,
    pub sip: LegStats,
}
