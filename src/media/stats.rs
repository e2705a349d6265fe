//! Per-call, per-leg counters. Written by the relay worker with relaxed
//! atomics (no lock), read by the API and the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
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
    drops: [AtomicU64; 7],
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

    pub fn dropped(&self, why: Drop) {
        self.drops[why as usize].fetch_add(1, Relaxed);
    }

    pub fn drops(&self, why: Drop) -> u64 {
        self.drops[why as usize].load(Relaxed)
    }

    pub fn snapshot(&self) -> LegSnapshot {
        LegSnapshot {
            packets_in: self.packets_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            control_packets: self.control_packets.load(Relaxed),
            dropped_foreign_source: self.drops(Drop::ForeignSource),
            dropped_auth_failed: self.drops(Drop::AuthFailed),
            dropped_replay: self.drops(Drop::Replay),
            dropped_malformed: self.drops(Drop::Malformed),
            dropped_payload_type: self.drops(Drop::PayloadType),
            dropped_not_ready: self.drops(Drop::NotReady),
            dropped_overload: self.drops(Drop::Overload),
        }
    }
}

/// Counters of one leg at one moment, as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LegSnapshot {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub control_packets: u64,
    pub dropped_foreign_source: u64,
    pub dropped_auth_failed: u64,
    pub dropped_replay: u64,
    pub dropped_malformed: u64,
    pub dropped_payload_type: u64,
    pub dropped_not_ready: u64,
    pub dropped_overload: u64,
}

/// Counters of both legs of a call. Inbound counters belong to the leg the
/// packet arrived on, outbound ones to the leg it left by.
#[derive(Debug, Default)]
pub struct CallStats {
    pub web: LegStats,
    pub sip: LegStats,
}
