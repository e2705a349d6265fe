//! The per-packet path: what happens to each datagram between receive and
//! send. A batch's datagrams are checked (source, SRTP), rewritten in place
//! (payload type, our SSRC and numbers, DTMF durations) and re-protected
//! for the other leg; each is sent or dropped and counted. Nothing here
//! allocates, locks or logs, except the copy of a STUN or DTLS datagram
//! (not media, a few per second) for the ICE agent and DTLS driver.

use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;

use super::call::RelayedCall;
use super::streams::{SipOutStream, WebOutStream};
use super::transcoded::{sip_to_web_transcoded, web_to_sip_transcoded, Slots, Spare};
use super::{ControlPacket, RelayEvent};
use crate::media::batch::{Batch, BATCH};
use crate::media::dtmf::{self, DtmfReceiver};
use crate::media::payload_map::PayloadMap;
use crate::media::reception::{first_report_block, sender_report, ReceptionStats};
use crate::media::rtp::{self, WebPacketKind};
use crate::media::srtp::{SrtpContext, SrtpError};
use crate::media::stats::{DropCause, LegStats};
use crate::media::transcode::{BrowserProtection, OPUS_CLOCK};

/// Indices of a batch's datagrams going out by one socket.
pub(super) struct Outgoing {
    pub(super) order: [usize; BATCH],
    pub(super) count: usize,
}

impl Outgoing {
    pub(super) fn new() -> Self {
        Outgoing {
            order: [0; BATCH],
            count: 0,
        }
    }
    pub(super) fn push(&mut self, i: usize) {
        self.order[self.count] = i;
        self.count += 1;
    }
}

pub(super) fn count_srtp_error(stats: &LegStats, e: SrtpError) {
    stats.dropped(match e {
        SrtpError::AuthFailed => DropCause::AuthFailed,
        SrtpError::Replay | SrtpError::TooOld => DropCause::Replay,
        _ => DropCause::Malformed,
    });
}

/// The browser's datagrams, as [`relay_from_web_replying`] without the
/// replies (for the tests, which look at what goes on to the SIP side).
#[cfg(test)]
pub(super) fn relay_from_web(
    call: &mut RelayedCall,
    batch: &mut Batch,
    n: usize,
) -> (Outgoing, Outgoing) {
    relay_from_web_replying(call, batch, n, &mut Outgoing::new())
}

/// [`relay_from_web`], with our answers to the browser's sender reports
/// on a transcoded call (receiver reports, to go back by the web socket)
/// listed in `replies`.
pub(super) fn relay_from_web_replying(
    call: &mut RelayedCall,
    batch: &mut Batch,
    n: usize,
    replies: &mut Outgoing,
) -> (Outgoing, Outgoing) {
    relay_from_web_picked(call, batch, &EVERY_SLOT[..n], n, replies)
}

/// Slot numbers 0, 1, … of a batch: a whole batch as a list of slots.
pub(super) const EVERY_SLOT: [usize; BATCH] = {
    let mut slots = [0; BATCH];
    let mut i = 0;
    while i < BATCH {
        slots[i] = i;
        i += 1;
    }
    slots
};

/// [`relay_from_web_replying`] for the batch slots listed in `picked` (in
/// order), the call's share of a batch from the shared web port; slots from
/// `spare_from` on are free for the packets a transcoded call makes up.
pub(super) fn relay_from_web_picked(
    call: &mut RelayedCall,
    batch: &mut Batch,
    picked: &[usize],
    spare_from: usize,
    replies: &mut Outgoing,
) -> (Outgoing, Outgoing) {
    let stats = &*call.stats;
    // One clock read per batch: its packets arrived together.
    let arrival = std::time::Instant::now();
    let mut rtp_out = Outgoing::new();
    let mut rtcp_out = Outgoing::new();
    let mut spare = Spare::after(spare_from);
    let mut made_up = Outgoing::new();
    for &i in picked {
        let len = batch.lens[i];
        stats.web.received(len);
        let Some(from) = batch.addrs[i] else {
            stats.web.dropped(DropCause::Malformed);
            continue;
        };
        let kind = rtp::classify(&batch.bufs[i][..len]);
        if matches!(kind, WebPacketKind::Stun | WebPacketKind::Dtls) {
            // Not media: ICE checks and the DTLS handshake, a few per second.
            stats.web.control_packets.fetch_add(1, Ordering::Relaxed);
            // DTLS only from an address that passed a check: the rest is
            // dropped before it costs the call's budget.
            if kind == WebPacketKind::Dtls
                && call.web.remote != Some(from)
                && !call.web.checked.contains(from)
            {
                stats.web.dropped(DropCause::ForeignSource);
                continue;
            }
            if !call.control_budget.take(arrival) {
                stats.web.dropped(DropCause::Overload);
                continue;
            }
            if kind == WebPacketKind::Stun {
                call.web.checked.note_check(from, &batch.bufs[i][..len]);
            }
            if let Some(tx) = &call.events {
                let packet = RelayEvent::Packet(ControlPacket {
                    call: call.id,
                    from,
                    to: batch.locals[i],
                    data: batch.bufs[i][..len].to_vec(),
                });
                if let Err(TrySendError::Full(_)) = tx.try_send(packet) {
                    stats.web.dropped(DropCause::Overload);
                }
            }
            continue;
        }
        // Media from another address than the selected pair's is taken
        // only from one that passed an authenticated check, and moves the
        // pair there once its SRTP authenticates (below): a browser sends
        // on the pair it chose as soon as its check is answered, which
        // after an ICE restart may be before it nominates it (RFC 8445
        // §12.1), or never for a pair it nominated earlier.
        let moving = call.web.remote != Some(from);
        if moving && !call.web.may_move_to(from, arrival) {
            stats.web.dropped(DropCause::ForeignSource);
            continue;
        }
        if !call.sip.has_destination() {
            stats.web.dropped(DropCause::NotReady);
            continue;
        }
        let Some((web_in, web_out)) = call.web.srtp.as_deref_mut() else {
            stats.web.dropped(DropCause::NotReady);
            continue;
        };
        if call.map.transcode.is_some() {
            if kind != WebPacketKind::Rtp {
                // The browser's reports speak of the Opus stream we send
                // it: kept for the call's figures, not passed on to a SIP
                // side that gets another codec's stream from us. Its
                // sender reports get our receiver report back, whose loss
                // figure turns on its encoder's in-band FEC. The loss it
                // reports on our Opus steers our encoder's FEC the same way.
                let transcoder = call.transcoder.as_deref_mut();
                let answered = answer_sender_report(
                    &mut batch.bufs[i],
                    len,
                    (Some(web_in), Some(web_out)),
                    &mut call.web_reception,
                    &stats.web,
                    OPUS_CLOCK,
                    call.web.ssrc,
                    |fraction_lost| {
                        if let Some(t) = transcoder {
                            // Only a libopus refusing a setting it takes
                            // fails here; the encoder then stays as it was.
                            let _ = t.browser_reported_loss(fraction_lost);
                            let fec = matches!(
                                t.browser_protection(),
                                BrowserProtection::Protected { .. }
                            );
                            stats.web.fec_out.store(fec, Ordering::Relaxed);
                        }
                    },
                );
                if let (Some(answer), Some(to)) = (answered, call.web.remote) {
                    batch.lens[i] = answer;
                    batch.addrs[i] = Some(to);
                    batch.locals[i] = call.web.local;
                    replies.push(i);
                }
                continue;
            }
            made_up.count = 0;
            let result = web_to_sip_transcoded(
                Slots {
                    bufs: &mut batch.bufs,
                    lens: &mut batch.lens,
                },
                i,
                len,
                web_in,
                &call.map,
                call.transcoder.as_deref_mut(),
                call.sip.srtp.as_deref_mut().map(|(_, out)| out),
                &mut call.sip_out,
                &mut spare,
                &mut made_up,
                arrival,
            );
            match result {
                Ok(out_len) => {
                    if moving {
                        call.web.move_to(from, batch.locals[i], arrival);
                    }
                    batch.lens[i] = out_len;
                    record_toward_sip(
                        (&mut call.web_reception, &mut call.web_clock),
                        &call.map,
                        call.sip_out.seq_offset,
                        &stats.web,
                        &batch.bufs[i],
                        arrival,
                    );
                    stats
                        .web
                        .made_up
                        .fetch_add(made_up.count as u64, Ordering::Relaxed);
                    // Made-up packets first: they stand for earlier ones.
                    let to = call.sip.rtp_destination();
                    for &j in made_up.order[..made_up.count].iter().chain([&i]) {
                        batch.addrs[j] = Some(to);
                        batch.locals[j] = None;
                        rtp_out.push(j);
                    }
                }
                Err(PtOrSrtp::Pt) => stats.web.dropped(DropCause::PayloadType),
                Err(PtOrSrtp::Srtp(e)) => count_srtp_error(&stats.web, e),
            }
            continue;
        }
        let buf = &mut batch.bufs[i];
        let sip_out = call.sip.srtp.as_deref_mut().map(|(_, out)| out);
        let result = if kind == WebPacketKind::Rtp {
            web_to_sip_rtp(
                buf,
                len,
                web_in,
                &call.map,
                sip_out,
                &mut call.sip_out,
                arrival,
            )
        } else {
            rtcp_across(
                buf,
                len,
                web_in,
                sip_out,
                &stats.web,
                call.sip_clock,
                |_| {},
            )
        };
        match result {
            Ok(out_len) => {
                if moving {
                    // Authentic media from a checked address: the browser's
                    // choice; our media follows it, from the address it
                    // sent to.
                    call.web.move_to(from, batch.locals[i], arrival);
                }
                batch.lens[i] = out_len;
                if kind == WebPacketKind::Rtp {
                    // The header stays readable in SRTP.
                    record_toward_sip(
                        (&mut call.web_reception, &mut call.web_clock),
                        &call.map,
                        call.sip_out.seq_offset,
                        &stats.web,
                        buf,
                        arrival,
                    );
                    batch.addrs[i] = Some(call.sip.rtp_destination());
                    batch.locals[i] = None;
                    rtp_out.push(i);
                } else {
                    batch.addrs[i] = Some(call.sip.rtcp_destination());
                    batch.locals[i] = None;
                    if call.sip.rtcp.is_some() {
                        rtcp_out.push(i);
                    } else {
                        rtp_out.push(i);
                    }
                }
            }
            Err(PtOrSrtp::Pt) => stats.web.dropped(DropCause::PayloadType),
            Err(PtOrSrtp::Srtp(e)) => count_srtp_error(&stats.web, e),
        }
    }
    (rtp_out, rtcp_out)
}

/// The SIP side's datagrams, as [`relay_from_sip_replying`] without the
/// replies (for the tests, which look at what goes on to the browser).
#[cfg(test)]
pub(super) fn relay_from_sip(
    call: &mut RelayedCall,
    batch: &mut Batch,
    n: usize,
    rtcp_socket: bool,
) -> Outgoing {
    relay_from_sip_replying(call, batch, n, rtcp_socket, &mut Outgoing::new())
}

/// [`relay_from_sip`], with our answers to the SIP side's sender reports
/// on a transcoded call (receiver reports, to go back by the SIP side's
/// RTCP socket) listed in `replies`.
pub(super) fn relay_from_sip_replying(
    call: &mut RelayedCall,
    batch: &mut Batch,
    n: usize,
    rtcp_socket: bool,
    replies: &mut Outgoing,
) -> Outgoing {
    let stats = &*call.stats;
    let arrival = std::time::Instant::now();
    let mut out = Outgoing::new();
    let mut spare = Spare::after(n);
    let mut more = Outgoing::new();
    for i in 0..n {
        let len = batch.lens[i];
        stats.sip.received(len);
        let Some(from) = batch.addrs[i] else {
            stats.sip.dropped(DropCause::Malformed);
            continue;
        };
        if !call.sip.accept_source(from, rtcp_socket, arrival) {
            stats.sip.dropped(DropCause::ForeignSource);
            continue;
        }
        let buf = &mut batch.bufs[i];
        let is_rtcp = rtcp_socket || (len >= 2 && rtp::is_rtcp_packet_type(buf[1]));
        let (Some(web_remote), Some((_, web_out))) =
            (call.web.remote, call.web.srtp.as_deref_mut())
        else {
            stats.sip.dropped(DropCause::NotReady);
            continue;
        };
        let sip_in = call.sip.srtp.as_deref_mut().map(|(sip_in, _)| sip_in);
        let mut digit = None;
        if call.map.transcode.is_some() {
            if is_rtcp {
                // As from the browser: the SIP side's reports are kept, not
                // passed on about a stream the browser never got.
                // Its sender reports get our receiver report back.
                let keys = match call.sip.srtp.as_deref_mut() {
                    Some((inbound, outbound)) => (Some(inbound), Some(outbound)),
                    None => (None, None),
                };
                if let Some(answer) = answer_sender_report(
                    &mut batch.bufs[i],
                    len,
                    keys,
                    &mut call.sip_reception,
                    &stats.sip,
                    call.sip_clock,
                    Some(call.sip_out.ssrc),
                    |_| {},
                ) {
                    batch.lens[i] = answer;
                    batch.addrs[i] = Some(call.sip.rtcp_destination());
                    batch.locals[i] = None;
                    replies.push(i);
                }
                continue;
            }
            more.count = 0;
            // The switch's own numbers, for what we report back to it (the
            // header reads the same in SRTP).
            let theirs = (len >= 12).then(|| {
                let header = &buf[..12];
                (
                    rtp::rtp_ssrc(header),
                    rtp::rtp_seq(header),
                    rtp::rtp_timestamp(header),
                )
            });
            let renumber = call.web.ssrc.map(|ssrc| (ssrc, &mut call.web_out, arrival));
            let result = sip_to_web_transcoded(
                Slots {
                    bufs: &mut batch.bufs,
                    lens: &mut batch.lens,
                },
                i,
                len,
                sip_in,
                &call.map,
                call.transcoder.as_deref_mut(),
                renumber,
                web_out,
                &mut call.dtmf_in,
                &mut digit,
                &mut spare,
                &mut more,
            );
            if let (Some(digit), Some(events)) = (digit.take(), &call.events) {
                let _ = events.try_send(RelayEvent::Dtmf {
                    call: call.id,
                    digit,
                });
            }
            match result {
                Ok(out_len) => {
                    batch.lens[i] = out_len;
                    // The SIP side's reports are of our G.711 stream.
                    let clock = call.map.transcode.map_or(8000, |t| t.sip_codec.rtp_clock());
                    call.sip_clock = clock;
                    if let Some((ssrc, seq, timestamp)) = theirs {
                        let reception = &mut call.sip_reception;
                        reception.record(ssrc, seq, timestamp, clock, arrival);
                        stats.sip.set_reception(
                            reception.lost(),
                            reception.jitter(clock).as_micros() as u64,
                        );
                    }
                    for &j in [&i].into_iter().chain(&more.order[..more.count]) {
                        batch.addrs[j] = Some(web_remote);
                        batch.locals[j] = call.web.local;
                        out.push(j);
                    }
                }
                Err(PtOrSrtp::Pt) => stats.sip.dropped(DropCause::PayloadType),
                Err(PtOrSrtp::Srtp(e)) => count_srtp_error(&stats.sip, e),
            }
            continue;
        }
        // RTCP from the SIP side speaks for the stream we renumber: it
        // goes out under our SSRC and timestamps.
        let out_stream = &call.web_out;
        let rename = |plain: &mut [u8]| {
            if let (Some(ours), Some(theirs)) = (call.web.ssrc, out_stream.source) {
                rtp::rewrite_rtcp_sender(plain, theirs, ours, out_stream.timestamp_offset);
            }
        };
        let result = if is_rtcp {
            match sip_in {
                Some(sip_in) => rtcp_across(
                    buf,
                    len,
                    sip_in,
                    Some(web_out),
                    &stats.sip,
                    call.web_clock,
                    rename,
                ),
                None => {
                    note_peer_report(&buf[..len], &stats.sip, call.web_clock);
                    rename(&mut buf[..len]);
                    web_out.protect_rtcp(buf, len).map_err(PtOrSrtp::from)
                }
            }
        } else {
            let renumber = call.web.ssrc.map(|ssrc| (ssrc, &mut call.web_out, arrival));
            sip_to_web_rtp(
                buf,
                len,
                sip_in,
                &call.map,
                renumber,
                web_out,
                &mut call.dtmf_in,
                &mut digit,
            )
        };
        if let (Some(digit), Some(events)) = (digit.take(), &call.events) {
            // A digit is a rare event: a channel message is fine here.
            let _ = events.try_send(RelayEvent::Dtmf {
                call: call.id,
                digit,
            });
        }
        match result {
            Ok(out_len) => {
                batch.lens[i] = out_len;
                if !is_rtcp {
                    let clock = call.map.web_clock[usize::from(rtp::rtp_payload_type(buf))];
                    call.sip_clock = clock;
                    record(&mut call.sip_reception, &stats.sip, buf, clock, arrival);
                }
                batch.addrs[i] = Some(web_remote);
                batch.locals[i] = call.web.local;
                out.push(i);
            }
            Err(PtOrSrtp::Pt) => stats.sip.dropped(DropCause::PayloadType),
            Err(PtOrSrtp::Srtp(e)) => count_srtp_error(&stats.sip, e),
        }
    }
    out
}

/// A transcoded call's RTCP from one leg (`len` bytes in `buf`, protected
/// by `keys.0` if keyed): noted for the call's figures and not passed on;
/// a sender report in it is answered with our receiver report on
/// `reception` from `ours`, written over it and protected by `keys.1`.
/// The loss the leg reports on the stream we send it (of 256) goes to
/// `peer_loss`. Returns the answer's length, if there is one to send back.
#[allow(clippy::too_many_arguments)]
fn answer_sender_report(
    buf: &mut [u8],
    len: usize,
    keys: (Option<&mut SrtpContext>, Option<&mut SrtpContext>),
    reception: &mut ReceptionStats,
    leg: &LegStats,
    clock: u32,
    ours: Option<u32>,
    peer_loss: impl FnOnce(u8),
) -> Option<usize> {
    let (inbound, outbound) = keys;
    let plain = match inbound.map(|c| c.unprotect_rtcp(&mut buf[..len])) {
        Some(Err(e)) => {
            count_srtp_error(leg, e);
            return None;
        }
        Some(Ok(plain)) => plain,
        None => len,
    };
    if let Some(fraction_lost) = note_peer_report(&buf[..plain], leg, clock) {
        peer_loss(fraction_lost);
    }
    let (_, last_sr) = sender_report(&buf[..plain])?;
    let written = reception.report(last_sr)?.write(ours?, buf);
    match outbound {
        Some(out) => out.protect_rtcp(buf, written).ok(),
        None => Some(written),
    }
}

/// A packet failed either the payload-type map or an SRTP transform.
pub(super) enum PtOrSrtp {
    Pt,
    Srtp(SrtpError),
}

impl From<SrtpError> for PtOrSrtp {
    fn from(e: SrtpError) -> Self {
        PtOrSrtp::Srtp(e)
    }
}

/// Browser RTP to the SIP leg: unprotect, map the payload type, protect (or plain).
pub(super) fn web_to_sip_rtp(
    buf: &mut [u8],
    len: usize,
    web_in: &mut SrtpContext,
    map: &PayloadMap,
    sip_out: Option<&mut SrtpContext>,
    stream: &mut SipOutStream,
    arrival: std::time::Instant,
) -> Result<usize, PtOrSrtp> {
    let plain = web_in.unprotect_rtp(&mut buf[..len])?;
    let web_pt = rtp::rtp_payload_type(&buf[..plain]);
    let pt = map.to_sip[usize::from(web_pt)];
    if pt == PayloadMap::NONE {
        return Err(PtOrSrtp::Pt);
    }
    rtp::set_rtp_payload_type(&mut buf[..plain], pt);
    let (web_clock, sip_clock) = (
        map.web_clock[usize::from(web_pt)],
        map.sip_clock[usize::from(pt)],
    );
    if map.web_event == Some(web_pt) && web_clock != sip_clock {
        let header = rtp::rtp_header_len(&buf[..plain]).ok_or(SrtpError::Malformed)?;
        dtmf::rescale_duration(&mut buf[header..plain], web_clock, sip_clock);
    }
    let seq = stream.relayed(
        rtp::rtp_seq(&buf[..plain]),
        rtp::rtp_timestamp(&buf[..plain]),
        rtp::rtp_ssrc(&buf[..plain]),
        sip_clock,
        arrival,
    );
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    Ok(match sip_out {
        Some(out) => out.protect_rtp(buf, plain)?,
        None => plain,
    })
}

/// SIP RTP to the browser: unprotect (or check), map the payload type, set
/// the SSRC the browser was told about, protect.
#[allow(clippy::too_many_arguments)]
pub(super) fn sip_to_web_rtp(
    buf: &mut [u8],
    len: usize,
    sip_in: Option<&mut SrtpContext>,
    map: &PayloadMap,
    renumber: Option<(u32, &mut WebOutStream, std::time::Instant)>,
    web_out: &mut SrtpContext,
    dtmf_in: &mut DtmfReceiver,
    digit: &mut Option<char>,
) -> Result<usize, PtOrSrtp> {
    let plain = match sip_in {
        Some(sip_in) => sip_in.unprotect_rtp(&mut buf[..len])?,
        None => rtp::rtp_header_len(&buf[..len])
            .map(|_| len)
            .ok_or(SrtpError::Malformed)?,
    };
    let sip_pt = rtp::rtp_payload_type(&buf[..plain]);
    let pt = map.to_web[usize::from(sip_pt)];
    if pt == PayloadMap::NONE {
        return Err(PtOrSrtp::Pt);
    }
    rtp::set_rtp_payload_type(&mut buf[..plain], pt);
    if map.sip_event == Some(sip_pt) {
        let header = rtp::rtp_header_len(&buf[..plain]).ok_or(SrtpError::Malformed)?;
        *digit = dtmf_in.on_packet(rtp::rtp_timestamp(&buf[..plain]), &buf[header..plain]);
        let (sip_clock, web_clock) = (
            map.sip_clock[usize::from(sip_pt)],
            map.web_clock[usize::from(pt)],
        );
        dtmf::rescale_duration(&mut buf[header..plain], sip_clock, web_clock);
    }
    // Our SSRC, sequence numbers and timestamps; a number already used
    // is refused by the SRTP context (counted as a replay).
    if let Some((ssrc, stream, at)) = renumber {
        let packet = &mut buf[..plain];
        let (seq, timestamp) = stream.map(
            rtp::rtp_ssrc(packet),
            rtp::rtp_seq(packet),
            rtp::rtp_timestamp(packet),
            map.web_clock[usize::from(pt)],
            at,
        );
        rtp::set_rtp_ssrc(packet, ssrc);
        rtp::set_rtp_seq(packet, seq);
        rtp::set_rtp_timestamp(packet, timestamp);
    }
    Ok(web_out.protect_rtp(buf, plain)?)
}

/// Updates a leg's receive quality from a relayed RTP packet's header.
pub(super) fn record(
    reception: &mut ReceptionStats,
    leg: &LegStats,
    packet: &[u8],
    clock: u32,
    arrival: std::time::Instant,
) {
    record_renumbered(reception, leg, packet, 0, clock, arrival);
}

/// [`record`] for a packet whose sequence number we moved up by
/// `seq_offset` (toward SIP, past the DTMF packets the relay inserted):
/// the sender's own number counts, so our insertions are not its losses.
/// The browser's RTP packet `buf` on its way to SIP (its payload type the
/// SIP one now, its number ours): its clock kept for RTCP jitter (in
/// `clock_seen`) and its arrival recorded in the browser's own numbering.
fn record_toward_sip(
    (reception, clock_seen): (&mut ReceptionStats, &mut u32),
    map: &PayloadMap,
    seq_offset: u16,
    leg: &LegStats,
    buf: &[u8],
    arrival: std::time::Instant,
) {
    let clock = map.sip_clock[usize::from(rtp::rtp_payload_type(buf))];
    *clock_seen = clock;
    record_renumbered(reception, leg, buf, seq_offset, clock, arrival);
}

pub(super) fn record_renumbered(
    reception: &mut ReceptionStats,
    leg: &LegStats,
    packet: &[u8],
    seq_offset: u16,
    clock: u32,
    arrival: std::time::Instant,
) {
    reception.record(
        rtp::rtp_ssrc(packet),
        rtp::rtp_seq(packet).wrapping_sub(seq_offset),
        rtp::rtp_timestamp(packet),
        clock,
        arrival,
    );
    leg.set_reception(reception.lost(), reception.jitter(clock).as_micros() as u64);
}

/// Keeps what a peer's RTCP report says about the stream we send it
/// (`clock`: that stream's clock rate, for the jitter); returns the loss it
/// reports (of 256), if it has a report block.
pub(super) fn note_peer_report(plain_rtcp: &[u8], leg: &LegStats, clock: u32) -> Option<u8> {
    let block = first_report_block(plain_rtcp)?;
    let jitter_us = if clock > 0 {
        u64::from(block.jitter) * 1_000_000 / u64::from(clock)
    } else {
        0
    };
    leg.set_peer_report(block.fraction_lost, block.cumulative_lost, jitter_us);
    Some(block.fraction_lost)
}

/// RTCP from one leg to the other: unprotect, note the report, then protect
/// (or plain).
pub(super) fn rtcp_across(
    buf: &mut [u8],
    len: usize,
    inbound: &mut SrtpContext,
    outbound: Option<&mut SrtpContext>,
    inbound_leg: &LegStats,
    clock: u32,
    rewrite: impl FnOnce(&mut [u8]),
) -> Result<usize, PtOrSrtp> {
    let plain = inbound.unprotect_rtcp(&mut buf[..len])?;
    note_peer_report(&buf[..plain], inbound_leg, clock);
    rewrite(&mut buf[..plain]);
    Ok(match outbound {
        Some(out) => out.protect_rtcp(buf, plain)?,
        None => plain,
    })
}

#[cfg(test)]
mod tests {
    //! The real per-packet path, run on a call built as a worker builds it,
    //! with the counting allocator watching this thread.

    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;

    use super::*;
    use crate::media::relay::{CallMediaSetup, SipFar};
    use crate::media::srtp::{SrtpKeyMaterial, SrtpProfile};
    use crate::media::stats::CallStats;

    const BROWSER: &str = "192.0.2.7:50000";
    const PEER: &str = "192.0.2.9:40000";
    const OUR_SSRC: u32 = 0x5157_0001;
    /// What the test calls' verifier takes as an authentic check (the real
    /// one, `webrtc::stun`'s, is the call layer's and tested there).
    const AUTHENTIC: &[u8] = b"signed-with-our-password";

    fn keys(seed: u8) -> SrtpKeyMaterial {
        let profile = SrtpProfile::AeadAes128Gcm;
        SrtpKeyMaterial::new(
            profile,
            &vec![seed; profile.master_key_len()],
            &vec![seed ^ 0x55; profile.master_salt_len()],
        )
        .unwrap()
    }

    fn context(seed: u8) -> SrtpContext {
        SrtpContext::new(&keys(seed)).unwrap()
    }

    /// A call with SRTP on the web leg (browser keys 1, ours 2) and on the
    /// SIP leg (peer keys 3, ours 4), Opus 111 ↔ PCMU 0 and
    /// telephone-event 101 ↔ 101.
    fn call() -> RelayedCall {
        let socket = || UdpSocket::bind("127.0.0.1:0").unwrap();
        let setup = CallMediaSetup {
            web_socket: Some(socket()),
            web_ufrag: None,
            web_remote: Some(BROWSER.parse().unwrap()),
            web_local: None,
            web_srtp: Some((context(1), context(2))),
            web_ssrc: Some(OUR_SSRC),
            web_check_verifier: Some(Box::new(|p: &[u8]| p.ends_with(AUTHENTIC))),
            sip_rtp_socket: socket(),
            sip_rtcp_socket: None,
            sip_remote: PEER.parse().unwrap(),
            sip_remote_rtcp: None,
            sip_strict_source: true,
            sip_srtp: Some((context(3), context(4))),
            payload_map: PayloadMap::new(&[(111, 0, 8000)])
                .with_telephone_event(101, 8000, 101, 8000),
            events: None,
            leases: Vec::new(),
        };
        RelayedCall::new(1, setup, Arc::new(CallStats::default())).unwrap()
    }

    fn rtp(pt: u8, seq: u16, ssrc: u32) -> [u8; 172] {
        let mut packet = [0u8; 172];
        packet[0] = 0x80;
        packet[1] = pt;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
        packet
    }

    /// An empty receiver report from `ssrc` (the stream's own source).
    fn rtcp(ssrc: u32) -> [u8; 8] {
        let mut packet = [0x80, 201, 0, 1, 0, 0, 0, 0];
        packet[4..8].copy_from_slice(&ssrc.to_be_bytes());
        packet
    }

    /// Fills the batch with `n` datagrams from `from`, each protected by
    /// `sender` (RTP, with every fourth one RTCP).
    fn fill(
        batch: &mut Batch,
        n: usize,
        from: &str,
        sender: &mut SrtpContext,
        pt: u8,
        seq: &mut u16,
    ) {
        let from: SocketAddr = from.parse().unwrap();
        for i in 0..n {
            let buf = &mut batch.bufs[i];
            let len = if i % 4 == 3 {
                buf[..8].copy_from_slice(&rtcp(0xa11ce));
                sender.protect_rtcp(buf, 8).unwrap()
            } else {
                buf[..172].copy_from_slice(&rtp(pt, *seq, 0xa11ce));
                *seq = seq.wrapping_add(1);
                sender.protect_rtp(buf, 172).unwrap()
            };
            batch.lens[i] = len;
            batch.addrs[i] = Some(from);
            batch.locals[i] = None;
        }
    }

    /// A flood of STUN-looking datagrams at one call passes at most that
    /// call's burst to the shared control queue; the rest is dropped and
    /// counted, and another call's budget is its own.
    #[test]
    fn a_control_flood_is_bounded_per_call() {
        let (events, queue) = std::sync::mpsc::sync_channel(10_000);
        let mut flooded = call();
        flooded.events = Some(events.clone());
        let mut other = call();
        other.events = Some(events);
        let mut batch = Batch::new();
        let flood = |batch: &mut Batch| {
            for i in 0..BATCH {
                batch.bufs[i][..20].copy_from_slice(&[0u8; 20]);
                batch.lens[i] = 20;
                batch.addrs[i] = Some("203.0.113.66:4000".parse().unwrap());
                batch.locals[i] = None;
            }
        };
        for _ in 0..20 {
            flood(&mut batch);
            relay_from_web(&mut flooded, &mut batch, BATCH);
        }
        let passed = queue.try_iter().count();
        assert_eq!(passed, super::super::call::CONTROL_BURST as usize);
        let dropped = flooded.stats.web.snapshot().dropped_overload;
        assert_eq!(dropped, (20 * BATCH - passed) as u64);
        // The other call still passes its checks.
        flood(&mut batch);
        relay_from_web(&mut other, &mut batch, 1);
        assert_eq!(queue.try_iter().count(), 1);
    }

    /// DTLS from an address that never sent an authenticated check is
    /// dropped as a foreign source without touching the call's budget;
    /// once the address checks in with our password, its DTLS goes on.
    #[test]
    fn dtls_is_taken_only_from_checked_addresses() {
        let (events, queue) = std::sync::mpsc::sync_channel(10_000);
        let mut call = call();
        call.web.remote = None;
        call.events = Some(events);
        let mut batch = Batch::new();
        let stranger: SocketAddr = "203.0.113.66:4000".parse().unwrap();
        let browser: SocketAddr = "192.0.2.7:50001".parse().unwrap();
        let send = |call: &mut RelayedCall, batch: &mut Batch, from: SocketAddr, data: &[u8]| {
            batch.bufs[0][..data.len()].copy_from_slice(data);
            batch.lens[0] = data.len();
            batch.addrs[0] = Some(from);
            batch.locals[0] = None;
            relay_from_web(call, batch, 1);
        };
        let client_hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for _ in 0..500 {
            send(&mut call, &mut batch, stranger, &client_hello);
        }
        let web = call.stats.web.snapshot();
        assert_eq!(web.dropped_foreign_source, 500);
        assert_eq!(web.dropped_overload, 0, "the budget is untouched");
        assert_eq!(queue.try_iter().count(), 0);

        // A check the verifier refuses does not let it in.
        let check = |tail: &[u8]| {
            let mut packet = vec![0u8; 20];
            packet[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            packet.extend_from_slice(tail);
            packet
        };
        send(
            &mut call,
            &mut batch,
            browser,
            &check(b"signed-with-another-one"),
        );
        send(&mut call, &mut batch, browser, &client_hello);
        assert_eq!(call.stats.web.snapshot().dropped_foreign_source, 501);
        // One it takes does; the check itself goes to the ICE agent either way.
        send(&mut call, &mut batch, browser, &check(AUTHENTIC));
        send(&mut call, &mut batch, browser, &client_hello);
        assert_eq!(call.stats.web.snapshot().dropped_foreign_source, 501);
        assert_eq!(queue.try_iter().count(), 3, "two checks and the handshake");
        send(&mut call, &mut batch, stranger, &client_hello);
        assert_eq!(call.stats.web.snapshot().dropped_foreign_source, 502);
    }

    /// The browser sends its media from another checked address (the pair
    /// it chose after an ICE restart, before it nominates it): authentic
    /// SRTP from there moves the web pair; forged SRTP does not, nor does
    /// media from an address that never checked in, nor a straggler of the
    /// address just left.
    #[test]
    fn authentic_media_from_a_checked_address_moves_the_web_pair() {
        let mut call = call();
        let mut batch = Batch::new();
        let moved: SocketAddr = "192.0.2.7:50002".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.66:4000".parse().unwrap();
        let mut browser_out = context(1);
        let mut seq = 1u16;
        let mut media_from = |call: &mut RelayedCall, from: SocketAddr, forged: bool| {
            let buf = &mut batch.bufs[0];
            buf[..172].copy_from_slice(&rtp(111, seq, 0xa11ce));
            seq += 1;
            let len = if forged {
                context(9).protect_rtp(buf, 172).unwrap()
            } else {
                browser_out.protect_rtp(buf, 172).unwrap()
            };
            batch.lens[0] = len;
            batch.addrs[0] = Some(from);
            batch.locals[0] = Some("192.0.2.1".parse().unwrap());
            relay_from_web(call, &mut batch, 1).0.count
        };
        // Not checked: foreign, whatever its SRTP.
        assert_eq!(media_from(&mut call, moved, false), 0);
        assert_eq!(call.stats.web.snapshot().dropped_foreign_source, 1);
        let mut check = vec![0u8; 20];
        check[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        check.extend_from_slice(AUTHENTIC);
        call.web.checked.note_check(moved, &check);
        // Checked, but forged SRTP: dropped, the pair stays.
        assert_eq!(media_from(&mut call, moved, true), 0);
        assert_eq!(call.stats.web.snapshot().dropped_auth_failed, 1);
        assert_eq!(call.web.remote, Some(BROWSER.parse().unwrap()));
        // Authentic: relayed, and our media goes there, from where it came.
        assert_eq!(media_from(&mut call, moved, false), 1);
        assert_eq!(call.web.remote, Some(moved));
        assert_eq!(call.web.local, Some("192.0.2.1".parse().unwrap()));
        // A straggler of the old pair (checked too) does not take it back.
        call.web
            .checked
            .note_check(BROWSER.parse().unwrap(), &check);
        assert_eq!(media_from(&mut call, BROWSER.parse().unwrap(), false), 0);
        assert_eq!(call.web.remote, Some(moved));
        assert_eq!(media_from(&mut call, stranger, false), 0);
        assert_eq!(call.stats.web.snapshot().dropped_foreign_source, 3);
    }

    /// The far end moves (a re-INVITE to another host, port, payload type
    /// and key): the browser's packets go to the new address with the new
    /// type and key, the old address is a stranger from then on, the new
    /// one is taken, and the browser's stream keeps our numbering across
    /// the new source. Before an address is known (or on `c=0.0.0.0`)
    /// nothing is sent.
    /// A far end moved to another port of the same host (a media server
    /// handing the call to another of its ports): a late packet of the old
    /// port neither takes the latch back nor draws our media there; the
    /// new port, once it speaks, is taken.
    #[test]
    fn a_move_within_one_host_is_not_taken_back_by_the_old_port() {
        let mut call = call();
        let mut batch = Batch::new();
        let (mut browser_out, mut browser_in) = (context(1), context(2));
        let (mut web_seq, mut sip_seq) = (1u16, 1u16);
        let mut peer_out = context(3);
        fill(&mut batch, 2, PEER, &mut peer_out, 0, &mut sip_seq);
        assert_eq!(relay_from_sip(&mut call, &mut batch, 2, false).count, 2);
        let peer: SocketAddr = PEER.parse().unwrap();
        let moved = SocketAddr::new(peer.ip(), peer.port() + 100);
        call.move_sip_far(SipFar {
            remote: moved,
            remote_rtcp: None,
            strict_source: false,
            srtp: None,
            payload_map: PayloadMap::new(&[(111, 0, 8000)]),
        });
        // A straggler from the old port, after the move.
        fill(&mut batch, 1, PEER, &mut peer_out, 0, &mut sip_seq);
        assert_eq!(relay_from_sip(&mut call, &mut batch, 1, false).count, 0);
        assert_eq!(call.stats.sip.snapshot().dropped_foreign_source, 1);
        fill(&mut batch, 2, BROWSER, &mut browser_out, 111, &mut web_seq);
        let (rtp_out, _) = relay_from_web(&mut call, &mut batch, 2);
        for &i in &rtp_out.order[..rtp_out.count] {
            assert_eq!(
                batch.addrs[i],
                Some(moved),
                "our media goes to the new port"
            );
        }
        let mut new_out = context(3);
        let mut new_seq = 500u16;
        fill(
            &mut batch,
            1,
            &moved.to_string(),
            &mut new_out,
            0,
            &mut new_seq,
        );
        let out = relay_from_sip(&mut call, &mut batch, 1, false);
        assert_eq!(out.count, 1, "the new port is taken");
        let i = out.order[0];
        let len = batch.lens[i];
        assert!(browser_in.unprotect_rtp(&mut batch.bufs[i][..len]).is_ok());
        // Only for a while: behind a NAT the old port may be the new
        // source's too, and it latches once that while is over.
        call.move_sip_far(SipFar {
            remote: peer,
            remote_rtcp: None,
            strict_source: false,
            srtp: None,
            payload_map: PayloadMap::new(&[(111, 0, 8000)]),
        });
        let now = std::time::Instant::now();
        assert!(!call.sip.accept_source(moved, false, now));
        let later = now + super::super::call::MOVED_AWAY_FOR;
        assert!(call.sip.accept_source(moved, false, later));
    }

    #[test]
    fn a_moved_far_end_gets_the_media_and_the_old_one_is_dropped() {
        let mut call = call();
        let mut batch = Batch::new();
        let (mut browser_out, mut browser_in) = (context(1), context(2));
        let (mut web_seq, mut sip_seq) = (1u16, 1u16);
        let mut peer_out = context(3);
        fill(&mut batch, 3, PEER, &mut peer_out, 0, &mut sip_seq);
        let out = relay_from_sip(&mut call, &mut batch, 3, false);
        assert_eq!(out.count, 3);
        let mut last_seq = 0;
        for &i in &out.order[..out.count] {
            let len = batch.lens[i];
            let buf = &mut batch.bufs[i][..len];
            if !rtp::is_rtcp_packet_type(buf[1]) {
                browser_in.unprotect_rtp(buf).unwrap();
                last_seq = u16::from_be_bytes([buf[2], buf[3]]);
            }
        }

        let moved: SocketAddr = "198.51.100.20:41000".parse().unwrap();
        call.move_sip_far(SipFar {
            remote: moved,
            remote_rtcp: None,
            strict_source: false,
            srtp: Some(Some((context(5), context(6)))),
            payload_map: PayloadMap::new(&[(111, 8, 8000)]),
        });
        fill(&mut batch, 3, BROWSER, &mut browser_out, 111, &mut web_seq);
        let (rtp_out, _) = relay_from_web(&mut call, &mut batch, 3);
        assert_eq!(rtp_out.count, 3);
        let mut new_peer_in = context(6);
        for &i in &rtp_out.order[..rtp_out.count] {
            assert_eq!(batch.addrs[i], Some(moved));
            let len = batch.lens[i];
            let buf = &mut batch.bufs[i][..len];
            if !rtp::is_rtcp_packet_type(buf[1]) {
                new_peer_in.unprotect_rtp(buf).unwrap();
                assert_eq!(rtp::rtp_payload_type(buf), 8, "the new type, PCMA");
            }
        }
        // The old far end is a stranger now; the new one (another port of
        // its host: symmetric RTP latches there) is taken, with a new SSRC
        // and numbers that continue ours toward the browser.
        let mut old_seq = sip_seq;
        fill(&mut batch, 2, PEER, &mut peer_out, 0, &mut old_seq);
        assert_eq!(relay_from_sip(&mut call, &mut batch, 2, false).count, 0);
        assert_eq!(call.stats.sip.snapshot().dropped_foreign_source, 2);
        let mut new_peer_out = context(5);
        let from_moved = "198.51.100.20:41002";
        for (i, new_seq) in (0..2).zip(40_000u16..) {
            let buf = &mut batch.bufs[i];
            buf[..172].copy_from_slice(&rtp(8, new_seq, 0xb0b));
            batch.lens[i] = new_peer_out.protect_rtp(buf, 172).unwrap();
            batch.addrs[i] = Some(from_moved.parse().unwrap());
        }
        let out = relay_from_sip(&mut call, &mut batch, 2, false);
        assert_eq!(out.count, 2);
        for (n, &i) in out.order[..out.count].iter().enumerate() {
            let len = batch.lens[i];
            let buf = &mut batch.bufs[i][..len];
            let plain = browser_in.unprotect_rtp(buf).unwrap();
            assert_eq!(rtp::rtp_ssrc(&buf[..plain]), OUR_SSRC);
            assert_eq!(rtp::rtp_payload_type(&buf[..plain]), 111);
            let seq = u16::from_be_bytes([buf[2], buf[3]]);
            assert_eq!(
                seq,
                last_seq.wrapping_add(1 + n as u16),
                "our numbering goes on"
            );
        }

        // On hold with c=0.0.0.0 the browser's packets go nowhere.
        call.move_sip_far(SipFar {
            remote: "0.0.0.0:41000".parse().unwrap(),
            remote_rtcp: None,
            strict_source: false,
            srtp: None,
            payload_map: PayloadMap::new(&[(111, 8, 8000)]),
        });
        fill(&mut batch, 3, BROWSER, &mut browser_out, 111, &mut web_seq);
        let (rtp_out, rtcp_out) = relay_from_web(&mut call, &mut batch, 3);
        assert_eq!(rtp_out.count + rtcp_out.count, 0);
        assert_eq!(call.stats.web.snapshot().dropped_not_ready, 3);
    }

    #[test]
    fn forwarding_both_ways_allocates_nothing() {
        let mut call = call();
        let mut batch = Batch::new();
        let (mut browser_out, mut browser_in) = (context(1), context(2));
        let (mut peer_out, mut peer_in) = (context(3), context(4));
        let (mut web_seq, mut sip_seq) = (1u16, 1u16);
        let mut relayed = 0usize;
        let mut turn = |call: &mut RelayedCall, batch: &mut Batch, check: bool| {
            // The fill and the checks encrypt and decrypt as the far ends
            // do; only the relay's calls are measured.
            fill(batch, BATCH, BROWSER, &mut browser_out, 111, &mut web_seq);
            let (rtp_out, rtcp_out) = {
                let mut out = None;
                let used =
                    allocation_counter::measure(|| out = Some(relay_from_web(call, batch, BATCH)));
                assert_eq!(used.count_total, 0, "browser to SIP: {used:?}");
                out.unwrap()
            };
            assert_eq!(
                rtp_out.count + rtcp_out.count,
                BATCH,
                "every datagram goes on"
            );
            assert_eq!(
                rtcp_out.count, 0,
                "RTCP shares the RTP socket without rtcp-mux off"
            );
            if check {
                for &i in &rtp_out.order[..rtp_out.count] {
                    assert_eq!(batch.addrs[i], Some(PEER.parse().unwrap()));
                    let len = batch.lens[i];
                    let buf = &mut batch.bufs[i][..len];
                    if rtp::is_rtcp_packet_type(buf[1]) {
                        peer_in.unprotect_rtcp(buf).unwrap();
                    } else {
                        peer_in.unprotect_rtp(buf).unwrap();
                        assert_eq!(rtp::rtp_payload_type(buf), 0, "Opus 111 maps to PCMU 0");
                    }
                }
            }
            fill(batch, BATCH, PEER, &mut peer_out, 0, &mut sip_seq);
            let out = {
                let mut out = None;
                let used = allocation_counter::measure(|| {
                    out = Some(relay_from_sip(call, batch, BATCH, false))
                });
                assert_eq!(used.count_total, 0, "SIP to browser: {used:?}");
                out.unwrap()
            };
            assert_eq!(out.count, BATCH);
            if check {
                for &i in &out.order[..out.count] {
                    assert_eq!(batch.addrs[i], Some(BROWSER.parse().unwrap()));
                    let len = batch.lens[i];
                    let buf = &mut batch.bufs[i][..len];
                    if rtp::is_rtcp_packet_type(buf[1]) {
                        browser_in.unprotect_rtcp(buf).unwrap();
                        assert_eq!(&buf[4..8], &OUR_SSRC.to_be_bytes(), "renamed to our SSRC");
                    } else {
                        let n = browser_in.unprotect_rtp(buf).unwrap();
                        assert_eq!(rtp::rtp_payload_type(&buf[..n]), 111);
                        assert_eq!(rtp::rtp_ssrc(&buf[..n]), OUR_SSRC);
                    }
                }
            }
            relayed += 2 * BATCH;
        };
        // Warm-up: each stream's first packet takes an SRTP state slot.
        turn(&mut call, &mut batch, true);
        for _ in 0..200 {
            turn(&mut call, &mut batch, false);
        }
        turn(&mut call, &mut batch, true);
        assert!(relayed > 6000, "{relayed} datagrams relayed");
        let snapshot = call.stats.web.snapshot();
        assert_eq!(snapshot.dropped_auth_failed + snapshot.dropped_replay, 0);
    }

    /// A call that transcodes the browser's Opus 111 to PCMU 0, with
    /// telephone-event 110/48000 ↔ 101/8000; keyed as [`call`].
    fn transcoded_call() -> RelayedCall {
        let mut call = call();
        call.move_sip_far(SipFar {
            remote: PEER.parse().unwrap(),
            remote_rtcp: None,
            strict_source: true,
            srtp: Some(None),
            payload_map: PayloadMap::transcoded(crate::media::transcode::TranscodeSpec {
                web_pt: 111,
                sip_pt: 0,
                sip_codec: crate::media::transcode::SipCodec::Pcmu,
            })
            .with_telephone_event(110, 48_000, 101, 8000),
        });
        call
    }

    /// 20 ms Opus packets of a 1 kHz tone, as a browser's encoder makes them.
    fn opus_packets(count: usize) -> Vec<Vec<u8>> {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        encoder.set_inband_fec(true).unwrap();
        encoder.set_packet_loss_perc(10).unwrap();
        (0..count)
            .map(|k| {
                let frame: Vec<i16> = (0..960)
                    .map(|n| {
                        let t = (k * 960 + n) as f64 / 48_000.0;
                        (6000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
                    })
                    .collect();
                encoder.encode_vec(&frame, 1500).unwrap()
            })
            .collect()
    }

    /// Puts a browser RTP packet (`pt`, `seq`, 960 ticks a number) with
    /// `payload` in slot `i`, protected by `sender`.
    fn browser_rtp(
        batch: &mut Batch,
        i: usize,
        sender: &mut SrtpContext,
        pt: u8,
        seq: u16,
        payload: &[u8],
    ) {
        let buf = &mut batch.bufs[i];
        buf[..12].copy_from_slice(&rtp(pt, seq, 0xa11ce)[..12]);
        buf[4..8].copy_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        buf[12..12 + payload.len()].copy_from_slice(payload);
        batch.lens[i] = sender.protect_rtp(buf, 12 + payload.len()).unwrap();
        batch.addrs[i] = Some(BROWSER.parse().unwrap());
        batch.locals[i] = None;
    }

    #[test]
    fn a_transcoded_call_turns_opus_into_pcmu_and_makes_up_a_lost_packet() {
        let mut call = transcoded_call();
        let mut batch = Batch::new();
        let mut browser_out = context(1);
        let packets = opus_packets(6);
        // Numbers 1 and 2, then 4: 3 was lost.
        for (i, seq) in [1u16, 2, 4].into_iter().enumerate() {
            browser_rtp(
                &mut batch,
                i,
                &mut browser_out,
                111,
                seq,
                &packets[seq as usize],
            );
        }
        let (rtp_out, rtcp_out) = relay_from_web(&mut call, &mut batch, 3);
        assert_eq!(rtcp_out.count, 0);
        assert_eq!(rtp_out.count, 4, "three relayed and one made up");
        let mut seqs = Vec::new();
        let mut timestamps = Vec::new();
        for &i in &rtp_out.order[..rtp_out.count] {
            assert_eq!(batch.addrs[i], Some(PEER.parse().unwrap()));
            let packet = &batch.bufs[i][..batch.lens[i]];
            assert_eq!(rtp::rtp_payload_type(packet), 0, "PCMU");
            assert_eq!(packet.len(), 12 + 160, "20 ms of G.711, plain RTP");
            seqs.push(rtp::rtp_seq(packet));
            timestamps.push(rtp::rtp_timestamp(packet));
        }
        assert_eq!(seqs, [1, 2, 3, 4], "the lost number filled, in order");
        assert_eq!(timestamps, [160, 320, 480, 640], "the 8 kHz clock");
        assert_eq!(call.transcoder.as_ref().unwrap().recovered, 1);
        assert_eq!(call.stats.web.snapshot().made_up, 1);

        // A telephone-event beside the audio: its duration and timestamp
        // on the 8 kHz clock, and no loss counted for its number.
        let event = [5u8, 0x0a, 0x03, 0xc0]; // digit 5, 960 ticks at 48 kHz
        browser_rtp(&mut batch, 0, &mut browser_out, 110, 5, &event);
        browser_rtp(&mut batch, 1, &mut browser_out, 111, 6, &packets[5]);
        let (rtp_out, _) = relay_from_web(&mut call, &mut batch, 2);
        assert_eq!(rtp_out.count, 2, "no packet made up for the event's number");
        let first = rtp_out.order[0];
        let packet = &batch.bufs[first][..batch.lens[first]];
        assert_eq!(rtp::rtp_payload_type(packet), 101);
        assert_eq!(rtp::rtp_timestamp(packet), 800);
        assert_eq!(
            &packet[12..16],
            &[5, 0x0a, 0x00, 0xa0],
            "160 ticks at 8 kHz"
        );
    }

    #[test]
    fn a_transcoded_call_turns_a_30_ms_pcmu_packet_into_two_opus_packets() {
        let mut call = transcoded_call();
        let mut batch = Batch::new();
        let mut browser_in = context(2);
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = [0i16; 5760];
        let mut last: Option<(u16, u32)> = None;
        for (round, seq) in (0..3).zip(700u16..) {
            let buf = &mut batch.bufs[0];
            buf[..12].copy_from_slice(&rtp(0, seq, 0xb0b)[..12]);
            buf[4..8].copy_from_slice(&(u32::from(seq) * 240).to_be_bytes());
            buf[12..252].fill(0xff);
            batch.lens[0] = 252;
            batch.addrs[0] = Some(PEER.parse().unwrap());
            let out = relay_from_sip(&mut call, &mut batch, 1, false);
            assert_eq!(out.count, 2, "20 + 10 ms, round {round}");
            for (k, &i) in out.order[..out.count].iter().enumerate() {
                assert_eq!(batch.addrs[i], Some(BROWSER.parse().unwrap()));
                let len = batch.lens[i];
                let buf = &mut batch.bufs[i][..len];
                let n = browser_in.unprotect_rtp(buf).unwrap();
                let packet = &buf[..n];
                assert_eq!(rtp::rtp_payload_type(packet), 111);
                assert_eq!(rtp::rtp_ssrc(packet), OUR_SSRC);
                let samples = decoder.decode(&packet[12..], &mut pcm, false).unwrap();
                assert_eq!(samples, if k == 0 { 960 } else { 480 });
                let (seq, ts) = (rtp::rtp_seq(packet), rtp::rtp_timestamp(packet));
                if let Some((last_seq, last_ts)) = last {
                    assert_eq!(seq, last_seq.wrapping_add(1));
                    let step = if k == 0 { 480 } else { 960 };
                    assert_eq!(ts, last_ts.wrapping_add(step));
                }
                last = Some((seq, ts));
            }
        }
    }

    #[test]
    fn transcoding_allocates_nothing() {
        let mut call = transcoded_call();
        let mut batch = Batch::new();
        let (mut browser_out, mut browser_in) = (context(1), context(2));
        let packets = opus_packets(50);
        let mut web_seq = 1u16;
        let mut sip_seq = 1u16;
        let mut relayed = 0;
        for round in 0..40 {
            // Eight browser packets with one lost among them, then eight
            // 20 ms PCMU packets from the SIP side.
            let mut n = 0;
            for k in 0..9 {
                if k != 4 {
                    browser_rtp(
                        &mut batch,
                        n,
                        &mut browser_out,
                        111,
                        web_seq,
                        &packets[(web_seq as usize) % 50],
                    );
                    n += 1;
                }
                web_seq = web_seq.wrapping_add(1);
            }
            let mut out = None;
            let used = allocation_counter::measure(|| {
                out = Some(relay_from_web(&mut call, &mut batch, n))
            });
            let (rtp_out, _) = out.unwrap();
            if round > 0 {
                assert_eq!(used.count_total, 0, "browser to SIP: {used:?}");
            }
            assert_eq!(rtp_out.count, 9);
            relayed += rtp_out.count;
            for i in 0..8 {
                let buf = &mut batch.bufs[i];
                buf[..12].copy_from_slice(&rtp(0, sip_seq, 0xb0b)[..12]);
                buf[12..172].fill(0xd5);
                batch.lens[i] = 172;
                batch.addrs[i] = Some(PEER.parse().unwrap());
                sip_seq = sip_seq.wrapping_add(1);
            }
            let mut out = None;
            let used = allocation_counter::measure(|| {
                out = Some(relay_from_sip(&mut call, &mut batch, 8, false))
            });
            let out = out.unwrap();
            if round > 0 {
                assert_eq!(used.count_total, 0, "SIP to browser: {used:?}");
            }
            assert_eq!(out.count, 8);
            for &i in &out.order[..out.count] {
                let len = batch.lens[i];
                browser_in.unprotect_rtp(&mut batch.bufs[i][..len]).unwrap();
            }
            relayed += out.count;
        }
        assert_eq!(relayed, 40 * 17);
        assert_eq!(call.transcoder.as_ref().unwrap().recovered, 40);
    }

    #[test]
    fn a_browsers_sender_report_gets_our_receiver_report_on_a_transcoded_call() {
        let mut call = transcoded_call();
        let mut batch = Batch::new();
        let (mut browser_out, mut browser_in) = (context(1), context(2));
        let packets = opus_packets(20);
        // Twenty packets, two of them lost.
        let mut n = 0;
        for seq in (1u16..=20).filter(|s| *s != 7 && *s != 13) {
            browser_rtp(
                &mut batch,
                n,
                &mut browser_out,
                111,
                seq,
                &packets[seq as usize - 1],
            );
            n += 1;
        }
        relay_from_web(&mut call, &mut batch, n);
        // A sender report (NTP 0x0000aaaa_bbbb0000) with an SDES after it.
        let mut sr = vec![0x80, 200, 0, 6, 0, 0x0a, 0x11, 0xce];
        sr.extend_from_slice(&[0, 0, 0xaa, 0xaa, 0xbb, 0xbb, 0, 0]);
        sr.extend_from_slice(&[0u8; 12]);
        sr.extend_from_slice(&[0x81, 202, 0, 1, 0, 0x0a, 0x11, 0xce]);
        let len = sr.len();
        batch.bufs[0][..len].copy_from_slice(&sr);
        batch.lens[0] = browser_out.protect_rtcp(&mut batch.bufs[0], len).unwrap();
        batch.addrs[0] = Some(BROWSER.parse().unwrap());
        let mut replies = Outgoing::new();
        let (rtp_out, rtcp_out) = relay_from_web_replying(&mut call, &mut batch, 1, &mut replies);
        assert_eq!(
            rtp_out.count + rtcp_out.count,
            0,
            "not passed to the SIP side"
        );
        assert_eq!(replies.count, 1);
        let i = replies.order[0];
        assert_eq!(batch.addrs[i], Some(BROWSER.parse().unwrap()));
        let len = batch.lens[i];
        let plain = browser_in
            .unprotect_rtcp(&mut batch.bufs[i][..len])
            .unwrap();
        let rr = &batch.bufs[i][..plain];
        assert_eq!(rr[1], 201, "a receiver report");
        assert_eq!(&rr[4..8], &OUR_SSRC.to_be_bytes());
        let block = first_report_block(rr).unwrap();
        assert_eq!(block.ssrc, 0xa11ce);
        assert_eq!(block.cumulative_lost, 2);
        assert_eq!(block.fraction_lost, (2 * 256 / 20) as u8);
        assert_eq!(
            &rr[24..28],
            &[0xaa, 0xaa, 0xbb, 0xbb],
            "the SR's NTP middle"
        );
    }

    /// The browser's receiver report on our Opus steers the transcoder's
    /// encoder: in-band FEC from its first report of loss, none again
    /// after two reports of none.
    #[test]
    fn the_loss_a_browser_reports_on_our_opus_turns_its_fec_on_and_off() {
        let mut call = transcoded_call();
        let mut batch = Batch::new();
        let mut browser_out = context(1);
        let mut report = |call: &mut RelayedCall, fraction_lost: u8| {
            let mut rr = vec![0x81, 201, 0, 7, 0, 0x0a, 0x11, 0xce];
            rr.extend_from_slice(&OUR_SSRC.to_be_bytes());
            rr.extend_from_slice(&[fraction_lost, 0, 0, 9]);
            rr.extend_from_slice(&[0u8; 16]);
            let len = rr.len();
            batch.bufs[0][..len].copy_from_slice(&rr);
            batch.lens[0] = browser_out.protect_rtcp(&mut batch.bufs[0], len).unwrap();
            batch.addrs[0] = Some(BROWSER.parse().unwrap());
            relay_from_web(call, &mut batch, 1);
            call.transcoder.as_ref().unwrap().browser_protection()
        };
        assert_eq!(report(&mut call, 0), BrowserProtection::Clear);
        assert_eq!(
            report(&mut call, 26),
            BrowserProtection::Protected { loss_percent: 11 }
        );
        assert_eq!(call.stats.web.snapshot().peer_fraction_lost, 26.0 / 256.0);
        assert!(
            call.stats.web.snapshot().fec_out,
            "shown in the call's view"
        );
        assert!(matches!(
            report(&mut call, 0),
            BrowserProtection::Protected { .. }
        ));
        assert_eq!(report(&mut call, 0), BrowserProtection::Clear);
        assert!(!call.stats.web.snapshot().fec_out);
    }

    /// DTMF packets the relay inserts toward SIP move the browser's numbers
    /// up there; the browser's own numbering is what its losses count in.
    #[test]
    fn packets_we_insert_are_not_counted_as_the_browsers_losses() {
        let mut call = call();
        let mut batch = Batch::new();
        let mut browser_out = context(1);
        let mut seq = 1u16;
        fill(&mut batch, 3, BROWSER, &mut browser_out, 111, &mut seq);
        relay_from_web(&mut call, &mut batch, 3);
        // Five event packets of ours went out in between.
        for _ in 0..5 {
            call.sip_out.inserted_seq();
        }
        fill(&mut batch, 3, BROWSER, &mut browser_out, 111, &mut seq);
        let (rtp_out, _) = relay_from_web(&mut call, &mut batch, 3);
        let last = rtp_out.order[rtp_out.count - 1];
        let numbered = rtp::rtp_seq(&batch.bufs[last][..12]);
        assert_eq!(
            numbered,
            seq.wrapping_sub(1).wrapping_add(5),
            "moved up past ours"
        );
        assert_eq!(call.stats.web.snapshot().lost, 0);
    }

    #[test]
    fn a_switchs_sender_report_gets_our_receiver_report_on_a_transcoded_call() {
        let mut call = transcoded_call();
        let mut batch = Batch::new();
        // Ten PCMU packets, the fourth lost.
        let mut n = 0;
        for seq in (65_520u16..65_530).filter(|s| *s != 65_523) {
            let buf = &mut batch.bufs[n];
            buf[..12].copy_from_slice(&rtp(0, seq, 0xb0b)[..12]);
            buf[12..172].fill(0xff);
            batch.lens[n] = 172;
            batch.addrs[n] = Some(PEER.parse().unwrap());
            n += 1;
        }
        assert_eq!(relay_from_sip(&mut call, &mut batch, n, false).count, n);
        assert_eq!(
            call.stats.sip.snapshot().lost,
            1,
            "the switch's own numbers"
        );
        let mut sr = vec![0x80, 200, 0, 6, 0, 0, 0x0b, 0x0b];
        sr.extend_from_slice(&[0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0]);
        sr.extend_from_slice(&[0u8; 12]);
        batch.bufs[0][..sr.len()].copy_from_slice(&sr);
        batch.lens[0] = sr.len();
        batch.addrs[0] = Some(PEER.parse().unwrap());
        let mut replies = Outgoing::new();
        let out = relay_from_sip_replying(&mut call, &mut batch, 1, false, &mut replies);
        assert_eq!(out.count, 0, "not passed to the browser");
        assert_eq!(replies.count, 1);
        let i = replies.order[0];
        // Plain RTP on this SIP leg, RTCP on its RTP socket: the report
        // goes as it is, where the RTP goes.
        assert_eq!(batch.addrs[i], Some(PEER.parse().unwrap()));
        let rr = &batch.bufs[i][..batch.lens[i]];
        let block = first_report_block(rr).unwrap();
        assert_eq!((block.ssrc, block.cumulative_lost), (0xb0b, 1));
        assert_eq!(&rr[16..20], &65_529u32.to_be_bytes(), "the highest number");
        assert_eq!(&rr[24..28], &[0x12, 0x34, 0x56, 0x78]);
    }
}
