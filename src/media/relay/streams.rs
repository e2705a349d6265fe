//! Our numbering toward each side: the SIP peer gets the browser's stream
//! with room made for the DTMF packets we insert; the browser gets one
//! SSRC of ours across whatever sources the SIP side sends.

use crate::media::dtmf::DtmfSender;

/// The stream the relay sends toward the SIP peer: the browser's packets,
/// with sequence numbers moved past the DTMF packets the relay inserted.
pub(super) struct SipOutStream {
    pub(super) seq_offset: u16,
    pub(super) last_seq: Option<u16>,
    pub(super) last_timestamp: u32,
    pub(super) last_at: Option<std::time::Instant>,
    pub(super) ssrc: u32,
    pub(super) clock: u32,
    pub(super) dtmf: Option<DtmfSender>,
}

impl SipOutStream {
    pub(super) fn new(id: u64) -> Self {
        SipOutStream {
            seq_offset: 0,
            last_seq: None,
            last_timestamp: 0,
            last_at: None,
            // Used only if DTMF is sent before any audio: any fixed value works.
            ssrc: 0x7e1e_0000 ^ (id as u32),
            clock: 8000,
            dtmf: None,
        }
    }

    /// Notes a relayed browser packet; returns its outgoing sequence number.
    pub(super) fn relayed(
        &mut self,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        clock: u32,
        at: std::time::Instant,
    ) -> u16 {
        let out = seq.wrapping_add(self.seq_offset);
        self.last_seq = Some(out);
        self.last_timestamp = timestamp;
        self.last_at = Some(at);
        self.ssrc = ssrc;
        if clock > 0 {
            self.clock = clock;
        }
        out
    }

    /// A sequence number for an inserted packet; later packets move up by one.
    pub(super) fn inserted_seq(&mut self) -> u16 {
        let seq = self.last_seq.map_or(0, |s| s.wrapping_add(1));
        self.seq_offset = self.seq_offset.wrapping_add(1);
        self.last_seq = Some(seq);
        seq
    }

    /// The stream's RTP timestamp at `now`.
    pub(super) fn timestamp_at(&self, now: std::time::Instant) -> u32 {
        let elapsed = self
            .last_at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.last_timestamp
            .wrapping_add((elapsed * f64::from(self.clock)) as u32)
    }
}

/// The stream the relay sends toward the browser: one SSRC (the one our
/// SDP announces), and our own sequence numbers and timestamps. The SIP
/// side's source may change under it (early media then the answer, a
/// transfer, music on hold) or repeat its numbers; each SRTP index must be
/// used once only (keystream reuse under AES-CM, nonce reuse under
/// AES-GCM), and the browser drops what looks like a replay. So a new
/// source continues our numbering where it stood — the next sequence
/// number, the timestamp moved on by the time since the last packet —
/// and a repeated number maps to one already sent, which SRTP refuses.
pub(super) struct WebOutStream {
    /// The SIP-side SSRC relayed now, its newest sequence number, and how
    /// its numbers map onto ours.
    pub(super) source: Option<u32>,
    pub(super) newest_in: u16,
    pub(super) seq_offset: u16,
    pub(super) timestamp_offset: u32,
    /// Our newest packet's numbers and when it was relayed.
    pub(super) last_seq: u16,
    pub(super) last_timestamp: u32,
    pub(super) last_at: Option<std::time::Instant>,
}

/// Sequence steps within one SIP-side SSRC that still count as the same
/// stream: up to this many lost packets ahead, this many reordered behind.
/// Anything else (a source reusing its SSRC with new numbers) is a new
/// source.
pub(super) const MAX_SEQ_GAP_AHEAD: i16 = 3000;
pub(super) const MAX_SEQ_BEHIND: i16 = 200;

impl WebOutStream {
    pub(super) fn new() -> Self {
        WebOutStream {
            source: None,
            newest_in: 0,
            seq_offset: 0,
            timestamp_offset: 0,
            last_seq: 0,
            last_timestamp: 0,
            last_at: None,
        }
    }

    /// Our sequence number and timestamp for a SIP-side packet (`ssrc`,
    /// `seq`, `timestamp`) relayed at `at`; `clock` is its rate on the web
    /// side.
    pub(super) fn map(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        clock: u32,
        at: std::time::Instant,
    ) -> (u16, u32) {
        let step = seq.wrapping_sub(self.newest_in) as i16;
        let same_source =
            self.source == Some(ssrc) && (-MAX_SEQ_BEHIND..=MAX_SEQ_GAP_AHEAD).contains(&step);
        if !same_source {
            if let Some(last_at) = self.last_at {
                let elapsed = at.saturating_duration_since(last_at).as_secs_f64();
                let ticks = ((elapsed * f64::from(clock)) as u32).max(1);
                self.seq_offset = self.last_seq.wrapping_add(1).wrapping_sub(seq);
                self.timestamp_offset = self
                    .last_timestamp
                    .wrapping_add(ticks)
                    .wrapping_sub(timestamp);
            }
            self.source = Some(ssrc);
        }
        let out = (
            seq.wrapping_add(self.seq_offset),
            timestamp.wrapping_add(self.timestamp_offset),
        );
        if !same_source || step > 0 {
            self.newest_in = seq;
            (self.last_seq, self.last_timestamp) = out;
            self.last_at = Some(at);
        }
        out
    }
}
