//! The relay's per-packet rewrite path for the cargo-fuzz targets (built
//! only with the `fuzzing` feature, which the `fuzz/` crate turns on): the
//! functions a worker runs on each datagram are `pub(super)`, so this is
//! their one door to the outside.
//!
//! Each input is cut into packets (a length byte before each); every packet
//! is first protected as the far end would protect it, so it passes the
//! SRTP check and the rewrite itself — payload-type map, our SSRC and
//! sequence numbers, the DTMF receiver and its duration rescaling, RTCP
//! report parsing and the sender rewrite — meets whatever bytes the fuzzer
//! made. Whatever we send on must open again at the other end.

use std::time::{Duration, Instant};

use super::forward::{rtcp_across, sip_to_web_rtp, web_to_sip_rtp};
use super::streams::{SipOutStream, WebOutStream};
use crate::media::dtmf::DtmfReceiver;
use crate::media::payload_map::PayloadMap;
use crate::media::rtp;
use crate::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};
use crate::media::stats::LegStats;

fn context(seed: u8) -> SrtpContext {
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let keys = SrtpKeyMaterial::new(
        profile,
        &vec![seed; profile.master_key_len()],
        &vec![seed ^ 0x5a; profile.master_salt_len()],
    )
    .expect("fixed key lengths");
    SrtpContext::new(&keys).expect("a fixed profile")
}

/// Runs the packets of `data` through the rewrite path both ways.
pub fn rewrite_path(data: &[u8]) {
    let map = PayloadMap::new(&[(111, 0, 8000), (9, 9, 8000)])
        .with_telephone_event(101, 48_000, 101, 8000);
    // Far ends' senders and receivers, and ours.
    let (mut browser_tx, mut web_in, mut web_out, mut browser_rx) =
        (context(1), context(1), context(2), context(2));
    let (mut peer_tx, mut sip_in, mut sip_out, mut peer_rx) =
        (context(3), context(3), context(4), context(4));
    let mut sip_stream = SipOutStream::new(7);
    let mut web_stream = WebOutStream::new();
    let mut dtmf_in = DtmfReceiver::default();
    let leg = LegStats::default();
    let start = Instant::now();
    let mut rest = data;
    let mut turn = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        turn += 1;
        let at = start + Duration::from_millis(20 * turn);
        let mut buf = [0u8; 1600];
        buf[..packet.len()].copy_from_slice(packet);
        let is_rtcp = packet.len() >= 2 && rtp::is_rtcp_packet_type(packet[1]);
        match (turn % 2 == 0, is_rtcp) {
            // Browser to SIP.
            (false, false) => {
                let Ok(n) = browser_tx.protect_rtp(&mut buf, packet.len()) else {
                    continue;
                };
                let sent = web_to_sip_rtp(
                    &mut buf,
                    n,
                    &mut web_in,
                    &map,
                    Some(&mut sip_out),
                    &mut sip_stream,
                    at,
                );
                if let Ok(n) = sent {
                    assert!(peer_rx.unprotect_rtp(&mut buf[..n]).is_ok());
                }
            }
            // SIP to browser.
            (true, false) => {
                let Ok(n) = peer_tx.protect_rtp(&mut buf, packet.len()) else {
                    continue;
                };
                let mut digit = None;
                let sent = sip_to_web_rtp(
                    &mut buf,
                    n,
                    Some(&mut sip_in),
                    &map,
                    Some((0x5157_0001, &mut web_stream, at)),
                    &mut web_out,
                    &mut dtmf_in,
                    &mut digit,
                );
                if let Ok(n) = sent {
                    assert!(browser_rx.unprotect_rtp(&mut buf[..n]).is_ok());
                }
            }
            // RTCP either way, with the sender rewrite toward the browser.
            (toward_browser, true) => {
                let (tx, inbound, outbound, rx) = if toward_browser {
                    (&mut peer_tx, &mut sip_in, &mut web_out, &mut browser_rx)
                } else {
                    (&mut browser_tx, &mut web_in, &mut sip_out, &mut peer_rx)
                };
                let Ok(n) = tx.protect_rtcp(&mut buf, packet.len()) else {
                    continue;
                };
                let sent = rtcp_across(&mut buf, n, inbound, Some(outbound), &leg, 8000, |p| {
                    if toward_browser {
                        let from = rtp::rtcp_sender_ssrc(p).unwrap_or(0);
                        rtp::rewrite_rtcp_sender(p, from, 0x5157_0001, 960);
                    }
                });
                if let Ok(n) = sent {
                    assert!(rx.unprotect_rtcp(&mut buf[..n]).is_ok());
                }
            }
        }
    }
}

/// Runs the packets of `data` through a transcoded call's path both ways
/// (Opus 111 and telephone-event 110 from the browser, PCMU 0 and
/// telephone-event 101 from the SIP side), each protected as the far end
/// would: the payloads the fuzzer makes meet libopus and our G.711, the
/// numbering and the made-up and extra packets. Never panics; every packet
/// sent on opens again at the other end.
pub fn transcode_path(data: &[u8]) {
    use super::forward::Outgoing;
    use super::transcoded::{sip_to_web_transcoded, web_to_sip_transcoded, Slots, Spare};
    use crate::media::batch::Batch;
    use crate::media::transcode::{SipCodec, TranscodeSpec, Transcoder};

    let spec = TranscodeSpec {
        web_pt: 111,
        sip_pt: 0,
        sip_codec: SipCodec::Pcmu,
    };
    let map = PayloadMap::transcoded(spec).with_telephone_event(110, 48_000, 101, 8000);
    let Ok(mut transcoder) = Transcoder::new(spec) else {
        return;
    };
    let (mut browser_tx, mut web_in, mut web_out, mut browser_rx) =
        (context(1), context(1), context(2), context(2));
    let (mut peer_rx, mut sip_out) = (context(4), context(4));
    let mut sip_stream = SipOutStream::new(7);
    let mut web_stream = WebOutStream::new();
    let mut dtmf_in = DtmfReceiver::default();
    let mut batch = Batch::new();
    let start = Instant::now();
    let mut rest = data;
    let mut turn = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        turn += 1;
        let at = start + Duration::from_millis(20 * turn);
        batch.bufs[0][..packet.len()].copy_from_slice(packet);
        let mut extra = Outgoing::new();
        let mut spare = Spare::after(1);
        let slots = Slots {
            bufs: &mut batch.bufs,
            lens: &mut batch.lens,
        };
        let (sent, rx) = if turn % 2 == 1 {
            let Ok(n) = browser_tx.protect_rtp(&mut slots.bufs[0], packet.len()) else {
                continue;
            };
            let sent = web_to_sip_transcoded(
                slots,
                0,
                n,
                &mut web_in,
                &map,
                Some(&mut transcoder),
                Some(&mut sip_out),
                &mut sip_stream,
                &mut spare,
                &mut extra,
                at,
            );
            (sent, &mut peer_rx)
        } else {
            // The SIP side in plain RTP, as most switches send it.
            let mut digit = None;
            let sent = sip_to_web_transcoded(
                slots,
                0,
                packet.len(),
                None,
                &map,
                Some(&mut transcoder),
                Some((0x5157_0001, &mut web_stream, at)),
                &mut web_out,
                &mut dtmf_in,
                &mut digit,
                &mut spare,
                &mut extra,
            );
            (sent, &mut browser_rx)
        };
        let Ok(n) = sent else {
            continue;
        };
        batch.lens[0] = n;
        for &i in std::iter::once(&0).chain(&extra.order[..extra.count]) {
            let len = batch.lens[i];
            assert!(rx.unprotect_rtp(&mut batch.bufs[i][..len]).is_ok());
        }
    }
}

/// The shared web port's routing (`web_port`) on datagrams the fuzzer
/// makes: each input byte run is one datagram from one of a few browser
/// addresses (its first byte picks which), into a worker that has a call
/// placed by address, a call waiting for a check that names its ufrag,
/// and nothing for the rest. Forged checks, checks for nobody, junk and
/// media from strangers are dropped and counted; nothing panics, and every
/// datagram ends up counted once: in a call or as the port's drop.
pub fn web_port_routing(data: &[u8]) {
    super::web_port::fuzz_routing(data);
}
