//! The per-packet path of a transcoded call (`media::transcode`): the
//! forward path's steps — unprotect, rewrite, renumber, protect — with the
//! payload re-encoded in between. One packet in may make several out (lost
//! browser packets made up before it, a long SIP packet cut into Opus
//! frames after it); those go in the batch's unused slots, so they are
//! sent with the rest and nothing allocates.

use super::forward::{Outgoing, PtOrSrtp};
use super::streams::{SipOutStream, WebOutStream};
use crate::media::batch::{BATCH, BUF_LEN};
use crate::media::dtmf::{self, DtmfReceiver};
use crate::media::payload_map::PayloadMap;
use crate::media::rtp;
use crate::media::srtp::{SrtpContext, SrtpError};
use crate::media::transcode::{Numbers, TranscodeError, Transcoder, OPUS_CLOCK};

impl From<TranscodeError> for PtOrSrtp {
    fn from(e: TranscodeError) -> Self {
        PtOrSrtp::Srtp(match e {
            // The codec states only run forward: counted as a replay.
            TranscodeError::Late => SrtpError::Replay,
            TranscodeError::BadPayload | TranscodeError::Codec => SrtpError::Malformed,
        })
    }
}

/// The batch slots after the received datagrams, free for packets the
/// transcoder makes.
pub(super) struct Spare {
    next: usize,
}

impl Spare {
    pub(super) fn after(received: usize) -> Self {
        Spare { next: received }
    }

    fn take(&mut self) -> Option<usize> {
        (self.next < BATCH).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// The batch's buffers and lengths, as the transcoded path writes them.
pub(super) struct Slots<'a> {
    pub(super) bufs: &'a mut [[u8; BUF_LEN]; BATCH],
    pub(super) lens: &'a mut [usize; BATCH],
}

/// The browser's RTP on a transcoded call, in slot `i` (`len` bytes): its
/// lost predecessors made up into spare slots (listed in `made_up`, oldest
/// first, ready to send) and the packet itself as G.711; returns the
/// length of slot `i` to send. Telephone-event keeps its payload, on the
/// SIP clock.
#[allow(clippy::too_many_arguments)]
pub(super) fn web_to_sip_transcoded(
    slots: Slots<'_>,
    i: usize,
    len: usize,
    web_in: &mut SrtpContext,
    map: &PayloadMap,
    transcoder: Option<&mut Transcoder>,
    mut sip_out: Option<&mut SrtpContext>,
    stream: &mut SipOutStream,
    spare: &mut Spare,
    made_up: &mut Outgoing,
    arrival: std::time::Instant,
) -> Result<usize, PtOrSrtp> {
    let (head, tail) = slots.bufs.split_at_mut(i + 1);
    let buf = &mut head[i];
    let plain = web_in.unprotect_rtp(&mut buf[..len])?;
    let transcoder = transcoder.ok_or(PtOrSrtp::Pt)?;
    let spec = transcoder.spec();
    let web_pt = rtp::rtp_payload_type(&buf[..plain]);
    let sip_pt = map.to_sip[usize::from(web_pt)];
    if sip_pt == PayloadMap::NONE {
        return Err(PtOrSrtp::Pt);
    }
    let header = rtp::rtp_header_len(&buf[..plain]).ok_or(SrtpError::Malformed)?;
    let (seq, timestamp, ssrc) = (
        rtp::rtp_seq(&buf[..plain]),
        rtp::rtp_timestamp(&buf[..plain]),
        rtp::rtp_ssrc(&buf[..plain]),
    );
    let sip_clock = map.sip_clock[usize::from(sip_pt)];
    if web_pt != spec.web_pt {
        // Telephone-event: the payload as in pass-through, the numbers in
        // step with the transcoded audio.
        let numbers = transcoder.web_event(seq, timestamp)?;
        if map.web_event == Some(web_pt) {
            let web_clock = map.web_clock[usize::from(web_pt)];
            dtmf::rescale_duration(&mut buf[header..plain], web_clock, sip_clock);
        }
        let packet = &mut buf[..plain];
        rtp::set_rtp_payload_type(packet, sip_pt);
        send_numbers(packet, numbers, ssrc, sip_clock, stream, arrival);
        return protect(buf, plain, sip_out);
    }
    let end = rtp::rtp_payload_end(&buf[..plain], header).ok_or(SrtpError::Malformed)?;
    let lost = transcoder.web_packet(seq, timestamp, &buf[header..end])?;
    for back in (1..=lost).rev() {
        let Some(j) = spare.take() else {
            break;
        };
        let slot = &mut tail[j - i - 1];
        slot[..header].copy_from_slice(&buf[..header]);
        let Ok((payload, numbers)) = transcoder.web_made_up(back, &mut slot[header..]) else {
            continue;
        };
        let made = header + payload;
        let packet = &mut slot[..made];
        rtp::clear_rtp_padding(packet);
        // Not the start of a talkspurt, whatever the packet after it is.
        packet[1] &= 0x7f;
        rtp::set_rtp_payload_type(packet, sip_pt);
        send_numbers(packet, numbers, ssrc, sip_clock, stream, arrival);
        if let Ok(protected) = protect(slot, made, sip_out.as_deref_mut()) {
            slots.lens[j] = protected;
            made_up.push(j);
        }
    }
    let (payload, numbers) = transcoder.web_current(&mut buf[header..])?;
    let made = header + payload;
    let packet = &mut buf[..made];
    rtp::clear_rtp_padding(packet);
    rtp::set_rtp_payload_type(packet, sip_pt);
    send_numbers(packet, numbers, ssrc, sip_clock, stream, arrival);
    protect(buf, made, sip_out)
}

/// Our numbers toward the SIP side (room made for inserted DTMF).
fn send_numbers(
    packet: &mut [u8],
    numbers: Numbers,
    ssrc: u32,
    clock: u32,
    stream: &mut SipOutStream,
    arrival: std::time::Instant,
) {
    let seq = stream.relayed(numbers.seq, numbers.timestamp, ssrc, clock, arrival);
    rtp::set_rtp_seq(packet, seq);
    rtp::set_rtp_timestamp(packet, numbers.timestamp);
}

fn protect(buf: &mut [u8], plain: usize, out: Option<&mut SrtpContext>) -> Result<usize, PtOrSrtp> {
    Ok(match out {
        Some(out) => out.protect_rtp(buf, plain)?,
        None => plain,
    })
}

/// The SIP side's RTP on a transcoded call, in slot `i` (`len` bytes): the
/// G.711 audio as Opus, its first frame in slot `i` (whose length is
/// returned) and any further frames in spare slots (listed in `more`, in
/// order, ready to send); telephone-event keeps its payload, on the Opus
/// clock. All under our SSRC and numbers when `renumber` has them.
#[allow(clippy::too_many_arguments)]
pub(super) fn sip_to_web_transcoded(
    slots: Slots<'_>,
    i: usize,
    len: usize,
    sip_in: Option<&mut SrtpContext>,
    map: &PayloadMap,
    transcoder: Option<&mut Transcoder>,
    mut renumber: Option<(u32, &mut WebOutStream, std::time::Instant)>,
    web_out: &mut SrtpContext,
    dtmf_in: &mut DtmfReceiver,
    digit: &mut Option<char>,
    spare: &mut Spare,
    more: &mut Outgoing,
) -> Result<usize, PtOrSrtp> {
    let (head, tail) = slots.bufs.split_at_mut(i + 1);
    let buf = &mut head[i];
    let plain = match sip_in {
        Some(sip_in) => sip_in.unprotect_rtp(&mut buf[..len])?,
        None => rtp::rtp_header_len(&buf[..len])
            .map(|_| len)
            .ok_or(SrtpError::Malformed)?,
    };
    let transcoder = transcoder.ok_or(PtOrSrtp::Pt)?;
    let spec = transcoder.spec();
    let sip_pt = rtp::rtp_payload_type(&buf[..plain]);
    let web_pt = map.to_web[usize::from(sip_pt)];
    if web_pt == PayloadMap::NONE {
        return Err(PtOrSrtp::Pt);
    }
    let header = rtp::rtp_header_len(&buf[..plain]).ok_or(SrtpError::Malformed)?;
    let (seq, timestamp, ssrc) = (
        rtp::rtp_seq(&buf[..plain]),
        rtp::rtp_timestamp(&buf[..plain]),
        rtp::rtp_ssrc(&buf[..plain]),
    );
    if sip_pt != spec.sip_pt {
        let numbers = transcoder.sip_event(ssrc, seq, timestamp)?;
        if map.sip_event == Some(sip_pt) {
            *digit = dtmf_in.on_packet(timestamp, &buf[header..plain]);
            let sip_clock = map.sip_clock[usize::from(sip_pt)];
            let web_clock = map.web_clock[usize::from(web_pt)];
            dtmf::rescale_duration(&mut buf[header..plain], sip_clock, web_clock);
        }
        let packet = &mut buf[..plain];
        rtp::set_rtp_payload_type(packet, web_pt);
        web_numbers(packet, numbers, ssrc, renumber.as_mut());
        return Ok(web_out.protect_rtp(buf, plain)?);
    }
    let end = rtp::rtp_payload_end(&buf[..plain], header).ok_or(SrtpError::Malformed)?;
    let frames = transcoder.sip_packet(ssrc, seq, timestamp, &buf[header..end])?;
    let (payload, numbers) = transcoder.sip_chunk(0, &mut buf[header..])?;
    let first = header + payload;
    let packet = &mut buf[..first];
    rtp::clear_rtp_padding(packet);
    rtp::set_rtp_payload_type(packet, web_pt);
    web_numbers(packet, numbers, ssrc, renumber.as_mut());
    for index in 1..frames {
        let Some(j) = spare.take() else {
            break;
        };
        let slot = &mut tail[j - i - 1];
        slot[..header].copy_from_slice(&buf[..header]);
        let Ok((payload, numbers)) = transcoder.sip_chunk(index, &mut slot[header..]) else {
            continue;
        };
        let made = header + payload;
        let packet = &mut slot[..made];
        // A frame in mid-stream: never the start of a talkspurt.
        packet[1] &= 0x7f;
        web_numbers(packet, numbers, ssrc, renumber.as_mut());
        if let Ok(protected) = web_out.protect_rtp(slot, made) {
            slots.lens[j] = protected;
            more.push(j);
        }
    }
    Ok(web_out.protect_rtp(buf, first)?)
}

/// Our SSRC and numbers toward the browser for a transcoded packet.
fn web_numbers(
    packet: &mut [u8],
    numbers: Numbers,
    source: u32,
    renumber: Option<&mut (u32, &mut WebOutStream, std::time::Instant)>,
) {
    let (seq, timestamp) = match renumber {
        Some((ours, stream, at)) => {
            rtp::set_rtp_ssrc(packet, *ours);
            stream.map(source, numbers.seq, numbers.timestamp, OPUS_CLOCK, *at)
        }
        None => (numbers.seq, numbers.timestamp),
    };
    rtp::set_rtp_seq(packet, seq);
    rtp::set_rtp_timestamp(packet, timestamp);
}
