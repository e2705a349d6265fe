//! Transcoding for calls whose legs share no codec: Opus toward the
//! browser, G.711 (µ-law or A-law) or G.722 toward the SIP side.
//!
//! A [`Transcoder`] belongs to one call's relay slot and works packet by
//! packet, with every buffer inside it: nothing allocates per packet. It is
//! sans-IO — payloads and RTP numbers in, payloads and numbers out — and
//! the relay does the sockets, SRTP and sending.
//!
//! - Browser → SIP: the Opus payload is decoded and re-encoded as G.711 or
//!   G.722. A
//!   gap in the browser's sequence numbers (lost packets) is made up before
//!   the packet that follows it: the frame just before from that packet's
//!   in-band FEC (when the browser's encoder put it there; libopus falls
//!   back to concealment when it did not), older ones by libopus's packet
//!   loss concealment. The switch gets a continuous stream with the lost
//!   numbers filled. A silence gap the browser's DTX leaves keeps its
//!   timestamps and is not taken for loss (its numbers are contiguous).
//! - SIP → browser: the G.711 or G.722 payload is decoded and encoded as
//!   Opus, one
//!   Opus packet per 10, 20, 40 or 60 ms; a packet of another length (30 ms,
//!   say) is cut into such frames, each an Opus packet of its own. Coded
//!   with CELT while the browser reports next to no loss on it, and with
//!   SILK and in-band FEC once it reports loss ([`BrowserProtection`]).
//!
//! Rates: libopus decodes straight to the SIP codec's rate and encodes
//! straight from it. Its decoder band-limits before it lowers the rate and
//! its encoder resamples its input with its own filters, so the path never
//! drops samples and has no second resampler to run: one filter fewer per
//! packet than decoding at 48 kHz and converting (see the aliasing test
//! below). The RTP clocks differ (48 kHz for Opus, RFC 7587; 8 kHz for
//! G.711, and for G.722 too although it samples at 16 kHz, RFC 3551):
//! timestamps are carried across scaled, steps and all.
//!
//! The Opus binding is the `opus` crate over the system's libopus (Debian's
//! libopus-dev): the reference codec, maintained by its authors and patched
//! by the distribution, with safe wrappers whose encode and decode take
//! caller-owned buffers. G.722 is the `audio-codec` crate's (pure Rust,
//! encoding into and decoding from caller-owned buffers); G.711 is ours.

pub mod g711;

use audio_codec::g722::{G722Decoder, G722Encoder};
use audio_codec::{Decoder as _, Encoder as _};

/// The codec of the SIP leg of a transcoded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipCodec {
    Pcmu,
    Pcma,
    /// 64 kbit/s: 16 kHz audio, two samples a byte.
    G722,
}

impl SipCodec {
    /// Samples per second of its audio.
    pub const fn sample_rate(self) -> u32 {
        match self {
            SipCodec::Pcmu | SipCodec::Pcma => 8000,
            SipCodec::G722 => 16_000,
        }
    }

    /// Its RTP clock: 8 kHz for all three (G.722's by RFC 3551's rule).
    pub const fn rtp_clock(self) -> u32 {
        8000
    }

    /// Samples a payload byte carries.
    const fn samples_per_byte(self) -> usize {
        match self {
            SipCodec::Pcmu | SipCodec::Pcma => 1,
            SipCodec::G722 => 2,
        }
    }
}

/// The SIP codec's coder: G.711 has no state, G.722's adapts.
enum SipCoder {
    G711(SipCodec),
    G722 {
        encoder: Box<G722Encoder>,
        decoder: Box<G722Decoder>,
    },
}

impl SipCoder {
    fn new(codec: SipCodec) -> Self {
        match codec {
            SipCodec::G722 => SipCoder::G722 {
                encoder: Box::new(G722Encoder::new()),
                decoder: Box::new(G722Decoder::new()),
            },
            other => SipCoder::G711(other),
        }
    }

    /// Encodes `pcm` into `out` (room for it checked by the caller);
    /// returns the payload's length.
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, TranscodeError> {
        let encode = match self {
            SipCoder::G711(SipCodec::Pcmu) => g711::ulaw_encode,
            SipCoder::G711(_) => g711::alaw_encode,
            SipCoder::G722 { encoder, .. } => {
                return encoder
                    .encode_into(pcm, out)
                    .map_err(|_| TranscodeError::BadPayload)
            }
        };
        for (byte, &sample) in out.iter_mut().zip(pcm) {
            *byte = encode(sample);
        }
        Ok(pcm.len().min(out.len()))
    }

    /// Decodes `payload` into `pcm`; returns the samples made.
    fn decode(&mut self, payload: &[u8], pcm: &mut [i16]) -> Result<usize, TranscodeError> {
        let decode = match self {
            SipCoder::G711(SipCodec::Pcmu) => g711::ulaw_decode,
            SipCoder::G711(_) => g711::alaw_decode,
            SipCoder::G722 { decoder, .. } => {
                return decoder
                    .decode_into(payload, pcm)
                    .map_err(|_| TranscodeError::BadPayload)
            }
        };
        for (sample, &byte) in pcm.iter_mut().zip(payload) {
            *sample = decode(byte);
        }
        Ok(payload.len().min(pcm.len()))
    }
}

/// Which payload types a call transcodes between: the browser's Opus type
/// and the SIP side's type of `sip_codec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranscodeSpec {
    pub web_pt: u8,
    pub sip_pt: u8,
    pub sip_codec: SipCodec,
}

/// Opus's RTP clock (RFC 7587), whatever the audio's bandwidth.
pub const OPUS_CLOCK: u32 = 48_000;
/// The longest packet taken either way: 120 ms, Opus's longest.
const MAX_PACKET_MS: usize = 120;
/// Samples in the longest packet at the SIP codec's rate (16 kHz at most).
const MAX_SAMPLES: usize = MAX_PACKET_MS * 16;
/// The largest Opus payload taken (an MTU's worth).
const MAX_OPUS_PAYLOAD: usize = 1500;
/// Lost browser packets made up before the next one: at most three (60 ms
/// of 20 ms frames); a longer gap is left to the switch's own concealment
/// rather than filled with a long synthetic tail.
pub const MAX_MADE_UP: u16 = 3;
/// Sequence steps that still belong to the same stream: up to this many
/// ahead (a larger jump starts the numbering afresh, nothing made up)...
const MAX_SEQ_STEP: i16 = 3000;
/// ...and this many behind, a late or repeated packet, refused; further
/// back is a source that started its numbering again, taken as new.
const MAX_SEQ_BEHIND: i16 = 200;

/// How a packet's sequence number follows the last one taken.
enum SeqStep {
    /// Next, after this many lost.
    Next(u16),
    /// Behind, or the same: refused.
    Late,
    /// Far off either way: a new run of numbers.
    Restart,
}

fn seq_step(seq: u16, last: u16) -> SeqStep {
    match seq.wrapping_sub(last) as i16 {
        step if step > MAX_SEQ_STEP || step <= -MAX_SEQ_BEHIND => SeqStep::Restart,
        step if step <= 0 => SeqStep::Late,
        step => SeqStep::Next(step as u16 - 1),
    }
}
/// The Opus bit rate toward the browser. Either of libopus's coders carries
/// the SIP side's narrowband (or G.722's wideband) well at this rate, and
/// it is what lets the encoder use both: libopus weighs the rate against
/// the loss before it codes FEC at all, and at effort 0 counts the rate a
/// fifth lower. At 24 kbit/s (measured) it coded no FEC below about 20 %
/// loss, and once on SILK it stayed there when told the loss was gone; at
/// 32 kbit/s it codes FEC from 2 % on and goes back to CELT.
const OPUS_BITRATE: i32 = 32_000;
/// libopus's encoder effort (0-10) toward the browser. Measured per 20 ms
/// packet of narrowband speech on this project's machines (BENCHMARKS.md),
/// SILK: 28-37 µs at 0 and 1, 67 µs at 2, 93 µs at 4, 177 µs at the
/// library's default of 10; CELT: 11-15 µs at 0, 17-18 µs at 1. The source
/// is G.711, which the higher efforts cannot make sound better than it is.
const OPUS_COMPLEXITY: i32 = 0;

/// The browser's loss (of 256, RTCP's `fraction lost`) from which our Opus
/// toward it carries in-band FEC: about 2 %.
const PROTECT_FROM_LOSS: u8 = 5;
/// Below this loss (about 1 %) in [`CLEAR_REPORTS`] reports in a row, the
/// FEC is dropped again.
const CLEAR_BELOW_LOSS: u8 = 3;
const CLEAR_REPORTS: u8 = 2;
/// The least loss (percent) the FEC is sized for once it is on.
const MIN_PROTECTED_LOSS: i32 = 2;

/// How our Opus toward the browser is coded, steered by the loss the
/// browser reports on it (RTCP receiver report blocks).
///
/// - `Clear` (from the start, and while the browser loses next to nothing):
///   libopus's CELT layer, low in delay and about half SILK's encoding
///   cost at effort 0 (11-15 µs against 26 µs per 20 ms here) — the larger
///   part of what a transcoded call costs, so this is what sets how many
///   calls a core carries.
/// - `Protected`: SILK with in-band FEC sized for the loss reported, so the
///   browser's decoder can make up a lost packet from the next one — the
///   same protection we make use of in the other direction. CELT has no
///   FEC; SILK's costs twice the CPU, so it is spent where there is loss.
///
/// libopus has no public switch for its coders: the encoder is told the
/// signal is music (which tips its choice to CELT at this bit rate) or
/// voice (SILK). `transcode::tests` pins what each gives with the linked
/// libopus, packet by packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserProtection {
    Clear,
    Protected { loss_percent: u8 },
}

/// Why a packet could not be transcoded (the relay drops and counts it).
#[derive(Debug, PartialEq, Eq)]
pub enum TranscodeError {
    /// Not a payload the codec reads, or a length it cannot carry.
    BadPayload,
    /// Older than or the same as one already transcoded (reordered or
    /// repeated): the codec states run forward only.
    Late,
    /// libopus refused it.
    Codec,
}

impl From<opus::Error> for TranscodeError {
    fn from(_: opus::Error) -> Self {
        TranscodeError::Codec
    }
}

/// An RTP packet's numbers after transcoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    pub seq: u16,
    pub timestamp: u32,
}

/// One call's transcoding state, both directions.
pub struct Transcoder {
    spec: TranscodeSpec,
    decoder: opus::Decoder,
    encoder: opus::Encoder,
    sip_coder: SipCoder,
    /// Decoded samples at the SIP codec's rate.
    pcm: [i16; MAX_SAMPLES],
    /// The browser's packet being transcoded (its payload is overwritten by
    /// the G.711 one in place, so it is kept here).
    opus_payload: [u8; MAX_OPUS_PAYLOAD],
    opus_len: usize,
    /// Its frame length at the SIP codec's rate, and its numbers toward
    /// the SIP side.
    web_frame: usize,
    web_numbers: Numbers,
    web_in: Option<(u16, u32)>,
    /// SIP side: the source, its last packet's numbers and ours.
    sip_in: Option<(u32, u16, u32)>,
    sip_out: Numbers,
    /// The decoded SIP packet, cut into Opus frames: (offset, length).
    sip_chunks: [(usize, usize); MAX_PACKET_MS / 10],
    sip_chunk_count: usize,
    /// Counters for the call's view and the metrics.
    pub recovered: u64,
    /// How our Opus toward the browser is coded now, and the browser's
    /// reports in a row under [`CLEAR_BELOW_LOSS`] while protected.
    protection: BrowserProtection,
    clear_reports: u8,
}

impl Transcoder {
    /// A transcoder for `spec`: libopus's state is made here (tens of
    /// kilobytes), on the control path, never per packet.
    pub fn new(spec: TranscodeSpec) -> Result<Box<Transcoder>, TranscodeError> {
        let rate = spec.sip_codec.sample_rate();
        let decoder = opus::Decoder::new(rate, opus::Channels::Mono)?;
        let mut encoder = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))?;
        encoder.set_complexity(OPUS_COMPLEXITY)?;
        encoder.set_inband_fec(true)?;
        let protection = BrowserProtection::Clear;
        code_for(&mut encoder, protection)?;
        Ok(Box::new(Transcoder {
            spec,
            decoder,
            encoder,
            sip_coder: SipCoder::new(spec.sip_codec),
            pcm: [0; MAX_SAMPLES],
            opus_payload: [0; MAX_OPUS_PAYLOAD],
            opus_len: 0,
            web_frame: 0,
            web_numbers: Numbers {
                seq: 0,
                timestamp: 0,
            },
            web_in: None,
            sip_in: None,
            sip_out: Numbers {
                seq: 0,
                timestamp: 0,
            },
            sip_chunks: [(0, 0); MAX_PACKET_MS / 10],
            sip_chunk_count: 0,
            recovered: 0,
            protection,
            clear_reports: 0,
        }))
    }

    /// How our Opus toward the browser is coded now.
    pub fn browser_protection(&self) -> BrowserProtection {
        self.protection
    }

    /// The browser reports it lost `fraction_lost` (of 256) of our Opus
    /// lately (an RTCP report block): the encoder toward it turns in-band
    /// FEC on from about 2 % (sized for the loss reported, and resized by
    /// each report while on) and off after two reports under about 1 %.
    /// Takes effect from the next frame encoded.
    pub fn browser_reported_loss(&mut self, fraction_lost: u8) -> Result<(), TranscodeError> {
        let loss_percent = (u32::from(fraction_lost) * 100).div_ceil(256) as u8;
        let next = match self.protection {
            _ if fraction_lost >= PROTECT_FROM_LOSS => {
                self.clear_reports = 0;
                BrowserProtection::Protected { loss_percent }
            }
            BrowserProtection::Protected { .. } if fraction_lost < CLEAR_BELOW_LOSS => {
                self.clear_reports += 1;
                if self.clear_reports >= CLEAR_REPORTS {
                    self.clear_reports = 0;
                    BrowserProtection::Clear
                } else {
                    self.protection
                }
            }
            BrowserProtection::Protected { .. } => {
                self.clear_reports = 0;
                self.protection
            }
            BrowserProtection::Clear => BrowserProtection::Clear,
        };
        if next != self.protection {
            code_for(&mut self.encoder, next)?;
            self.protection = next;
        }
        Ok(())
    }

    pub fn spec(&self) -> TranscodeSpec {
        self.spec
    }

    /// Opus clock ticks per tick of the SIP side's RTP clock.
    fn ratio(&self) -> u32 {
        OPUS_CLOCK / self.spec.sip_codec.rtp_clock()
    }

    /// Opus clock ticks per sample at the SIP codec's rate.
    fn opus_ticks_per_sample(&self) -> u32 {
        OPUS_CLOCK / self.spec.sip_codec.sample_rate()
    }

    /// The SIP side's RTP ticks for `samples` at its codec's rate.
    fn sip_ticks(&self, samples: usize) -> u32 {
        let codec = self.spec.sip_codec;
        (samples as u64 * u64::from(codec.rtp_clock()) / u64::from(codec.sample_rate())) as u32
    }

    /// A browser packet (`seq`, `timestamp`, Opus `payload`) arrives: kept
    /// for [`Transcoder::web_current`]; returns how many lost packets just
    /// before it to make up first ([`Transcoder::web_made_up`], oldest
    /// first), at most [`MAX_MADE_UP`].
    pub fn web_packet(
        &mut self,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<u16, TranscodeError> {
        if payload.is_empty() || payload.len() > MAX_OPUS_PAYLOAD {
            return Err(TranscodeError::BadPayload);
        }
        let rate = self.spec.sip_codec.sample_rate();
        let frame =
            opus::packet::get_nb_samples(payload, rate).map_err(|_| TranscodeError::BadPayload)?;
        if frame == 0 || frame > MAX_SAMPLES {
            return Err(TranscodeError::BadPayload);
        }
        let ratio = self.ratio();
        let (lost, out_timestamp) = match self.web_in {
            Some((last_seq, last_timestamp)) => {
                let lost = match seq_step(seq, last_seq) {
                    SeqStep::Late => return Err(TranscodeError::Late),
                    SeqStep::Next(lost) => lost,
                    SeqStep::Restart => 0,
                };
                let ticks = timestamp.wrapping_sub(last_timestamp) as i32;
                let out = self
                    .web_numbers
                    .timestamp
                    .wrapping_add_signed(ticks / ratio as i32);
                (lost, out)
            }
            None => (0, timestamp / ratio),
        };
        self.opus_payload[..payload.len()].copy_from_slice(payload);
        self.opus_len = payload.len();
        self.web_frame = frame;
        self.web_in = Some((seq, timestamp));
        self.web_numbers = Numbers {
            seq,
            timestamp: out_timestamp,
        };
        Ok(lost.min(MAX_MADE_UP))
    }

    /// Makes up the packet `back` places before the current one (1: the one
    /// just before, from the current packet's in-band FEC; further back, by
    /// concealment) as a SIP payload in `out`; returns its length and
    /// numbers. Call from the oldest to `back` = 1, then
    /// [`Transcoder::web_current`].
    pub fn web_made_up(
        &mut self,
        back: u16,
        out: &mut [u8],
    ) -> Result<(usize, Numbers), TranscodeError> {
        let frame = self.web_frame;
        if out.len() < frame / self.spec.sip_codec.samples_per_byte() {
            return Err(TranscodeError::BadPayload);
        }
        let decoded = if back == 1 {
            self.decoder.decode(
                &self.opus_payload[..self.opus_len],
                &mut self.pcm[..frame],
                true,
            )?
        } else {
            self.decoder.decode(&[], &mut self.pcm[..frame], false)?
        };
        let decoded = decoded.min(frame);
        let written = self.sip_coder.encode(&self.pcm[..decoded], out)?;
        self.recovered += 1;
        let back32 = u32::from(back);
        Ok((
            written,
            Numbers {
                seq: self.web_numbers.seq.wrapping_sub(back),
                timestamp: self
                    .web_numbers
                    .timestamp
                    .wrapping_sub(back32 * self.sip_ticks(frame)),
            },
        ))
    }

    /// The current browser packet as a SIP payload in `out`: its length and
    /// numbers.
    pub fn web_current(&mut self, out: &mut [u8]) -> Result<(usize, Numbers), TranscodeError> {
        let frame = self.web_frame;
        let decoded = self.decoder.decode(
            &self.opus_payload[..self.opus_len],
            &mut self.pcm[..frame],
            false,
        )?;
        let decoded = decoded.min(frame);
        if out.len() < decoded / self.spec.sip_codec.samples_per_byte() {
            return Err(TranscodeError::BadPayload);
        }
        let written = self.sip_coder.encode(&self.pcm[..decoded], out)?;
        Ok((written, self.web_numbers))
    }

    /// A browser timestamp (Opus clock) on the SIP side's clock, in step
    /// with the transcoded audio.
    pub fn web_timestamp_to_sip(&self, timestamp: u32) -> u32 {
        match self.web_in {
            Some((_, last)) => {
                let ticks = timestamp.wrapping_sub(last) as i32;
                self.web_numbers
                    .timestamp
                    .wrapping_add_signed(ticks / self.ratio() as i32)
            }
            None => timestamp / self.ratio(),
        }
    }

    /// A SIP packet (`ssrc`, `seq`, `timestamp`, G.711 `payload`) arrives:
    /// decoded and cut into Opus frames; returns how many Opus packets it
    /// makes ([`Transcoder::sip_chunk`] each, in order).
    pub fn sip_packet(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<usize, TranscodeError> {
        // 10 ms steps: every Opus frame length from 10 ms up is one.
        let codec = self.spec.sip_codec;
        let step = codec.sample_rate() as usize / 100;
        let samples = payload.len() * codec.samples_per_byte();
        if samples == 0 || samples % step != 0 || samples > MAX_SAMPLES {
            return Err(TranscodeError::BadPayload);
        }
        self.sip_step(ssrc, seq, timestamp)?;
        let samples = self.sip_coder.decode(payload, &mut self.pcm[..samples])?;
        // Longest frames first: 60, 40, 20, 10 ms.
        self.sip_chunk_count = 0;
        let mut offset = 0;
        while offset < samples {
            let left = samples - offset;
            let length = [6, 4, 2, 1]
                .iter()
                .map(|tens| tens * step)
                .find(|&l| l <= left)
                .unwrap_or(step);
            self.sip_chunks[self.sip_chunk_count] = (offset, length);
            self.sip_chunk_count += 1;
            offset += length;
        }
        Ok(self.sip_chunk_count)
    }

    /// Moves our SIP-to-browser numbering on to a packet of the SIP side:
    /// our sequence number just before its first, and its timestamp on the
    /// Opus clock.
    fn sip_step(&mut self, ssrc: u32, seq: u16, timestamp: u32) -> Result<(), TranscodeError> {
        let ratio = self.ratio();
        match self.sip_in {
            Some((last_ssrc, last_seq, last_timestamp)) if last_ssrc == ssrc => {
                match seq_step(seq, last_seq) {
                    SeqStep::Late => return Err(TranscodeError::Late),
                    // Lost packets leave a gap in our numbers too.
                    SeqStep::Next(lost) => self.sip_out.seq = self.sip_out.seq.wrapping_add(lost),
                    SeqStep::Restart => {}
                }
                let ticks = timestamp.wrapping_sub(last_timestamp) as i32;
                self.sip_out.timestamp = self
                    .sip_out
                    .timestamp
                    .wrapping_add_signed(ticks.wrapping_mul(ratio as i32));
            }
            Some(_) => {
                // A new source continues our stream where it stood.
                self.sip_out.timestamp =
                    self.sip_out.timestamp.wrapping_add(self.last_chunk_ticks());
            }
            None => {
                self.sip_out.timestamp = timestamp.wrapping_mul(ratio);
            }
        }
        self.sip_in = Some((ssrc, seq, timestamp));
        self.sip_chunk_count = 0;
        Ok(())
    }

    /// A packet of the SIP side that is not audio (telephone-event) but
    /// shares its source's numbers: our numbers for it toward the browser,
    /// in step with the transcoded audio.
    pub fn sip_event(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
    ) -> Result<Numbers, TranscodeError> {
        self.sip_step(ssrc, seq, timestamp)?;
        self.sip_out.seq = self.sip_out.seq.wrapping_add(1);
        Ok(self.sip_out)
    }

    /// A browser packet that is not audio (telephone-event) in the audio's
    /// numbering: its timestamp on the SIP clock; its number is taken, so
    /// the next audio packet does not count it lost.
    pub fn web_event(&mut self, seq: u16, timestamp: u32) -> Result<Numbers, TranscodeError> {
        if let Some((last_seq, _)) = self.web_in {
            if matches!(seq_step(seq, last_seq), SeqStep::Late) {
                return Err(TranscodeError::Late);
            }
        }
        let mapped = self.web_timestamp_to_sip(timestamp);
        self.web_in = Some((seq, timestamp));
        self.web_numbers = Numbers {
            seq,
            timestamp: mapped,
        };
        Ok(self.web_numbers)
    }

    /// Opus clock ticks the last SIP packet's frames took.
    fn last_chunk_ticks(&self) -> u32 {
        let samples: usize = self.sip_chunks[..self.sip_chunk_count]
            .iter()
            .map(|(_, l)| l)
            .sum();
        samples as u32 * self.opus_ticks_per_sample()
    }

    /// Opus frame `index` of the last SIP packet, encoded into `out`: its
    /// length and numbers (our own sequence, the Opus clock).
    pub fn sip_chunk(
        &mut self,
        index: usize,
        out: &mut [u8],
    ) -> Result<(usize, Numbers), TranscodeError> {
        let Some(&(offset, length)) = self.sip_chunks[..self.sip_chunk_count].get(index) else {
            return Err(TranscodeError::BadPayload);
        };
        let written = self
            .encoder
            .encode(&self.pcm[offset..offset + length], out)?;
        self.sip_out.seq = self.sip_out.seq.wrapping_add(1);
        Ok((
            written,
            Numbers {
                seq: self.sip_out.seq,
                timestamp: self
                    .sip_out
                    .timestamp
                    .wrapping_add(offset as u32 * self.opus_ticks_per_sample()),
            },
        ))
    }
}

/// Sets libopus's encoder up for `protection` (see [`BrowserProtection`]).
fn code_for(encoder: &mut opus::Encoder, protection: BrowserProtection) -> Result<(), opus::Error> {
    match protection {
        BrowserProtection::Clear => {
            encoder.set_signal(opus::Signal::Music)?;
            encoder.set_packet_loss_perc(0)
        }
        BrowserProtection::Protected { loss_percent } => {
            encoder.set_signal(opus::Signal::Voice)?;
            encoder.set_packet_loss_perc(i32::from(loss_percent).max(MIN_PROTECTED_LOSS))
        }
    }
}

#[cfg(test)]
mod tests;
