//! The relay: worker threads that move every media packet between a call's
//! web leg and SIP leg.
//!
//! Calls are spread over a fixed set of workers; both legs of a call live on
//! one worker, so a packet never crosses threads. Control (add a call, the
//! ICE-selected address, keys, removal) reaches a worker through a channel and
//! a `mio::Waker`; packets never do. Per packet the worker only touches the
//! buffers of its [`Batch`], the call's SRTP contexts and atomic counters: no
//! allocation, lock, channel hop or log line (STUN/DTLS datagrams, which are
//! not media, are copied to the ICE/DTLS side).
//!
//! A worker waits and moves datagrams in one of two ways ([`RelayIo`]):
//! epoll readiness, then `recvmmsg`/`sendmmsg` per socket (`run`); or
//! io_uring (`run_ring`, see `media::ring`), where every socket has a
//! multishot receive armed and a turn's sends go to the kernel with the
//! wait for the next completions. The per-packet work between receive and
//! send (`CallState::relay`) is the same code in both.
//!
//! Each direction is one stream of ours: toward SIP the browser's packets
//! with DTMF inserted (`SipOutStream`), toward the browser our SSRC, our
//! sequence numbers and timestamps across whatever sources the SIP side
//! sends (`WebOutStream`). Media toward the browser leaves from the local
//! address of the ICE-selected pair (see `media::batch`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::batch::{Batch, BATCH};
use super::dtmf::{self, DtmfError, DtmfReceiver, DtmfSender};
use super::ports::PortLease;
use super::reception::{first_report_block, ReceptionStats};
use super::ring::{self, RingIo};
use super::rtp::{self, WebPacketKind};
use super::srtp::{SrtpContext, SrtpError};
use super::stats::{CallStats, Drop as DropCause, LegSnapshot, LegStats};

const WAKER: Token = Token(usize::MAX);
/// Tokens: slot * SOCKETS_PER_CALL + socket kind.
const SOCKETS_PER_CALL: usize = 3;
const WEB: usize = 0;
const SIP_RTP: usize = 1;
const SIP_RTCP: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay I/O: {0}")]
    Io(#[from] io::Error),
    #[error("the relay has stopped")]
    Stopped,
    #[error("no telephone-event was negotiated with the SIP side")]
    NoTelephoneEvent,
    #[error("{0}")]
    Dtmf(#[from] DtmfError),
}

/// A STUN or DTLS datagram from a web leg, for the ICE agent / DTLS driver.
#[derive(Debug)]
pub struct ControlPacket {
    pub call: u64,
    pub from: SocketAddr,
    /// The local address it was sent to (replies must leave from it).
    pub to: Option<IpAddr>,
    pub data: Vec<u8>,
}

/// What the relay tells the signaling side (rare: never per media packet).
#[derive(Debug)]
pub enum RelayEvent {
    /// STUN or DTLS from the browser.
    Packet(ControlPacket),
    /// A DTMF digit (RFC 4733) that arrived from the SIP side.
    Dtmf { call: u64, digit: char },
}

/// Payload-type mapping between the legs: `to_sip[web_pt]`, `to_web[sip_pt]`;
/// 255 means "not negotiated: drop". Each mapped type has its clock rate.
#[derive(Clone)]
pub struct PayloadMap {
    to_sip: [u8; 128],
    to_web: [u8; 128],
    /// Clock rate by payload type on each side.
    web_clock: [u32; 128],
    sip_clock: [u32; 128],
    /// The telephone-event types (RFC 4733), if negotiated.
    web_event: Option<u8>,
    sip_event: Option<u8>,
}

impl PayloadMap {
    const NONE: u8 = 255;

    /// From `(web_pt, sip_pt, clock_rate)` triples.
    pub fn new(pairs: &[(u8, u8, u32)]) -> Self {
        let mut map = PayloadMap {
            to_sip: [Self::NONE; 128],
            to_web: [Self::NONE; 128],
            web_clock: [0; 128],
            sip_clock: [0; 128],
            web_event: None,
            sip_event: None,
        };
        for &(web, sip, clock) in pairs {
            if web < 128 && sip < 128 {
                map.to_sip[usize::from(web)] = sip;
                map.to_web[usize::from(sip)] = web;
                map.web_clock[usize::from(web)] = clock;
                map.sip_clock[usize::from(sip)] = clock;
            }
        }
        map
    }

    /// Adds the telephone-event mapping; the clock rates may differ (the
    /// relay rescales event durations between them).
    pub fn with_telephone_event(
        mut self,
        web_pt: u8,
        web_clock: u32,
        sip_pt: u8,
        sip_clock: u32,
    ) -> Self {
        if web_pt < 128 && sip_pt < 128 {
            self.to_sip[usize::from(web_pt)] = sip_pt;
            self.to_web[usize::from(sip_pt)] = web_pt;
            self.web_clock[usize::from(web_pt)] = web_clock;
            self.sip_clock[usize::from(sip_pt)] = sip_clock;
            self.web_event = Some(web_pt);
            self.sip_event = Some(sip_pt);
        }
        self
    }

    /// The SIP side's telephone-event type and clock rate.
    pub fn sip_telephone_event(&self) -> Option<(u8, u32)> {
        self.sip_event
            .map(|pt| (pt, self.sip_clock[usize::from(pt)]))
    }
}

/// Everything the relay needs to carry one call.
pub struct CallMediaSetup {
    /// The web leg's socket (rtcp-mux: RTP, RTCP, STUN and DTLS on one port).
    pub web_socket: std::net::UdpSocket,
    /// The ICE-selected browser address, once known, and our address it
    /// sends to.
    pub web_remote: Option<SocketAddr>,
    pub web_local: Option<IpAddr>,
    /// Web leg SRTP: (inbound, outbound); may arrive later (DTLS).
    pub web_srtp: Option<(SrtpContext, SrtpContext)>,
    /// SSRC to send toward the browser (the one our SDP announces), if any.
    pub web_ssrc: Option<u32>,
    pub sip_rtp_socket: std::net::UdpSocket,
    /// The RTCP socket (RTP port + 1); `None` when the SIP peer muxes RTCP.
    pub sip_rtcp_socket: Option<std::net::UdpSocket>,
    /// RTP address from the SIP peer's SDP (and its RTCP address).
    pub sip_remote: SocketAddr,
    pub sip_remote_rtcp: Option<SocketAddr>,
    /// Accept SIP media only from the SDP address (else latch to the first
    /// packet from the SDP's IP: symmetric RTP).
    pub sip_strict_source: bool,
    /// SIP leg SRTP (inbound, outbound) or plain RTP.
    pub sip_srtp: Option<(SrtpContext, SrtpContext)>,
    pub payload_map: PayloadMap,
    /// Where STUN/DTLS datagrams from the browser and received DTMF digits go.
    pub events: Option<SyncSender<RelayEvent>>,
    /// Port leases, returned when the relay has closed the sockets.
    pub leases: Vec<PortLease>,
}

enum Control {
    Add(u64, Box<CallMediaSetup>, Arc<CallStats>),
    Remove(u64),
    WebRemote(u64, SocketAddr, Option<IpAddr>),
    WebSrtp(u64, Box<(SrtpContext, SrtpContext)>),
    SendDtmf(u64, String, std::time::Duration),
    Stop,
}

struct WorkerLink {
    tx: Sender<Control>,
    waker: Arc<Waker>,
    calls: Arc<AtomicUsize>,
    /// Set by the worker once it runs on io_uring.
    on_ring: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerLink {
    fn send(&self, c: Control) -> Result<(), RelayError> {
        self.tx.send(c).map_err(|_| RelayError::Stopped)?;
        self.waker.wake().map_err(RelayError::Io)
    }
}

/// Counters over all calls, live and ended, for the metrics exporter.
#[derive(Default)]
struct Totals {
    live: std::sync::Mutex<HashMap<u64, Arc<CallStats>>>,
    /// Web and SIP leg counters of calls that have ended.
    ended: std::sync::Mutex<(LegSnapshot, LegSnapshot)>,
}

impl Totals {
    fn forget(&self, id: u64) {
        let stats = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(stats) = stats {
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            ended.0.add_counters(&stats.web.snapshot());
            ended.1.add_counters(&stats.sip.snapshot());
        }
    }
}

/// The running relay.
pub struct Relay {
    workers: Vec<WorkerLink>,
    next_id: AtomicU64,
    totals: Arc<Totals>,
}

pub use crate::config::RelayIo;

/// How the relay's workers run (`[media] relay-io`, `relay-busy-poll-us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayOptions {
    pub io: RelayIo,
    /// After each turn, look for new datagrams without sleeping for up to
    /// this long before the worker blocks. Zero: block at once. Spinning
    /// spares the wake-up of a sleeping thread (on a virtual machine, of a
    /// halted virtual CPU) at the price of CPU time.
    pub busy_poll: std::time::Duration,
}

/// Whether a relay worker could run on io_uring here (it sets up and drops
/// one worker's ring), and if not, why.
pub fn io_uring_usable() -> io::Result<()> {
    RingIo::new().map(drop)
}

impl Relay {
    /// Starts `workers` threads (at least one) with the default I/O.
    pub fn start(workers: usize) -> Result<Arc<Relay>, RelayError> {
        Self::start_with(workers, RelayIo::default())
    }

    /// Starts `workers` threads (at least one) moving datagrams by `io`.
    pub fn start_with(workers: usize, io: RelayIo) -> Result<Arc<Relay>, RelayError> {
        Self::start_with_options(
            workers,
            RelayOptions {
                io,
                ..RelayOptions::default()
            },
        )
    }

    /// Starts `workers` threads (at least one) run as `options` say.
    pub fn start_with_options(
        workers: usize,
        options: RelayOptions,
    ) -> Result<Arc<Relay>, RelayError> {
        let io = options.io;
        let mut links = Vec::new();
        let totals = Arc::new(Totals::default());
        for n in 0..workers.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = mpsc::channel();
            let calls = Arc::new(AtomicUsize::new(0));
            let worker_calls = calls.clone();
            let worker_totals = totals.clone();
            let on_ring = Arc::new(AtomicBool::new(false));
            let worker_on_ring = on_ring.clone();
            let thread = std::thread::Builder::new()
                .name(format!("relay-{n}"))
                .spawn(move || {
                    let mut worker =
                        Worker::new(poll, rx, worker_calls, worker_totals, options.busy_poll);
                    if io == RelayIo::IoUring {
                        match RingIo::new() {
                            Ok(ring) => worker.ring = Some(ring),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "io_uring unavailable; this relay worker uses epoll"
                            ),
                        }
                    }
                    if worker.ring.is_some() {
                        worker_on_ring.store(true, Ordering::Relaxed);
                        worker.run_ring()
                    } else {
                        worker.run()
                    }
                })?;
            links.push(WorkerLink {
                tx,
                waker,
                calls,
                on_ring,
                thread: Some(thread),
            });
        }
        Ok(Arc::new(Relay {
            workers: links,
            next_id: AtomicU64::new(1),
            totals,
        }))
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Workers running on io_uring (the others use epoll). A worker reports
    /// it shortly after it starts.
    pub fn io_uring_workers(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.on_ring.load(Ordering::Relaxed))
            .count()
    }

    /// Calls being relayed now.
    pub fn call_count(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.calls.load(Ordering::Relaxed))
            .sum()
    }

    /// Hands a call to the least loaded worker.
    pub fn add_call(self: &Arc<Self>, setup: CallMediaSetup) -> Result<CallMedia, RelayError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let worker = (0..self.workers.len())
            .min_by_key(|&i| self.workers[i].calls.load(Ordering::Relaxed))
            .unwrap_or(0);
        let sip_event = setup.payload_map.sip_telephone_event();
        let stats = Arc::new(CallStats::default());
        self.totals
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, stats.clone());
        self.workers[worker].calls.fetch_add(1, Ordering::Relaxed);
        self.workers[worker].send(Control::Add(id, Box::new(setup), stats.clone()))?;
        Ok(CallMedia {
            id,
            worker,
            relay: self.clone(),
            stats,
            sip_event,
        })
    }
}

impl Relay {
    /// Web and SIP leg counters summed over every call the relay has carried.
    pub fn totals(&self) -> (LegSnapshot, LegSnapshot) {
        let (mut web, mut sip) = *self.totals.ended.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<Arc<CallStats>> = self
            .totals
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for stats in live {
            web.add_counters(&stats.web.snapshot());
            sip.add_counters(&stats.sip.snapshot());
        }
        (web, sip)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.send(Control::Stop);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A call on the relay. Dropping it removes the call (closing its sockets
/// and returning its ports).
pub struct CallMedia {
    id: u64,
    worker: usize,
    relay: Arc<Relay>,
    pub stats: Arc<CallStats>,
    sip_event: Option<(u8, u32)>,
}

impl CallMedia {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The browser address ICE selected (USE-CANDIDATE); web media is
    /// accepted from and sent to it only, sent from `local` (the address of
    /// ours the browser sends to; None: the kernel's choice).
    pub fn set_web_remote(
        &self,
        addr: SocketAddr,
        local: Option<IpAddr>,
    ) -> Result<(), RelayError> {
        self.relay.workers[self.worker].send(Control::WebRemote(self.id, addr, local))
    }

    /// Web leg keys (inbound, outbound) once DTLS-SRTP has exported them.
    pub fn set_web_srtp(
        &self,
        inbound: SrtpContext,
        outbound: SrtpContext,
    ) -> Result<(), RelayError> {
        self.relay.workers[self.worker]
            .send(Control::WebSrtp(self.id, Box::new((inbound, outbound))))
    }
}

impl CallMedia {
    /// Sends `digits` to the SIP side as RFC 4733 events, each lasting
    /// `duration`, in the browser's stream. Refused (nothing sent) when a
    /// digit or the duration is invalid, or no telephone-event was
    /// negotiated (then SIP INFO is the way).
    pub fn send_dtmf(&self, digits: &str, duration: std::time::Duration) -> Result<(), RelayError> {
        let (_, clock) = self.sip_event.ok_or(RelayError::NoTelephoneEvent)?;
        DtmfSender::new(clock).queue(digits, duration)?;
        self.relay.workers[self.worker].send(Control::SendDtmf(
            self.id,
            digits.to_string(),
            duration,
        ))
    }
}

impl Drop for CallMedia {
    fn drop(&mut self) {
        let _ = self.relay.workers[self.worker].send(Control::Remove(self.id));
    }
}

struct WebLeg {
    socket: UdpSocket,
    remote: Option<SocketAddr>,
    /// Where media toward the browser leaves from: the local address of
    /// the ICE-selected pair.
    local: Option<IpAddr>,
    srtp: Option<(SrtpContext, SrtpContext)>,
    ssrc: Option<u32>,
}

struct SipLeg {
    rtp: UdpSocket,
    rtcp: Option<UdpSocket>,
    sdp_remote: SocketAddr,
    sdp_remote_rtcp: SocketAddr,
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    strict: bool,
    srtp: Option<(SrtpContext, SrtpContext)>,
}

impl SipLeg {
    /// Source check on the SIP leg; latches on the first good packet.
    fn accept_source(&mut self, from: SocketAddr, rtcp_socket: bool) -> bool {
        let (latched, expected) = if rtcp_socket {
            (&mut self.latched_rtcp, self.sdp_remote_rtcp)
        } else {
            (&mut self.latched, self.sdp_remote)
        };
        match *latched {
            Some(addr) => addr == from,
            None if self.strict => from == expected,
            None if from.ip() == expected.ip() => {
                *latched = Some(from);
                true
            }
            None => false,
        }
    }

    fn rtp_destination(&self) -> SocketAddr {
        self.latched.unwrap_or(self.sdp_remote)
    }

    fn rtcp_destination(&self) -> SocketAddr {
        if self.rtcp.is_some() {
            self.latched_rtcp.unwrap_or(self.sdp_remote_rtcp)
        } else {
            self.rtp_destination()
        }
    }
}

/// The stream the relay sends toward the SIP peer: the browser's packets,
/// with sequence numbers moved past the DTMF packets the relay inserted.
struct SipOutStream {
    seq_offset: u16,
    last_seq: Option<u16>,
    last_timestamp: u32,
    last_at: Option<std::time::Instant>,
    ssrc: u32,
    clock: u32,
    dtmf: Option<DtmfSender>,
}

impl SipOutStream {
    fn new(id: u64) -> Self {
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
    fn relayed(
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
    fn inserted_seq(&mut self) -> u16 {
        let seq = self.last_seq.map_or(0, |s| s.wrapping_add(1));
        self.seq_offset = self.seq_offset.wrapping_add(1);
        self.last_seq = Some(seq);
        seq
    }

    /// The stream's RTP timestamp at `now`.
    fn timestamp_at(&self, now: std::time::Instant) -> u32 {
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
struct WebOutStream {
    /// The SIP-side SSRC relayed now, its newest sequence number, and how
    /// its numbers map onto ours.
    source: Option<u32>,
    newest_in: u16,
    seq_offset: u16,
    timestamp_offset: u32,
    /// Our newest packet's numbers and when it was relayed.
    last_seq: u16,
    last_timestamp: u32,
    last_at: Option<std::time::Instant>,
}

/// Sequence steps within one SIP-side SSRC that still count as the same
/// stream: up to this many lost packets ahead, this many reordered behind.
/// Anything else (a source reusing its SSRC with new numbers) is a new
/// source.
const MAX_SEQ_GAP_AHEAD: i16 = 3000;
const MAX_SEQ_BEHIND: i16 = 200;

impl WebOutStream {
    fn new() -> Self {
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
    fn map(
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

struct CallState {
    id: u64,
    web: WebLeg,
    sip: SipLeg,
    map: PayloadMap,
    stats: Arc<CallStats>,
    events: Option<SyncSender<RelayEvent>>,
    /// Kernel drop counts last seen per socket kind (cumulative, wrapping).
    kernel_drops_seen: [u32; SOCKETS_PER_CALL],
    /// What arrives from the browser and from the SIP peer.
    web_reception: ReceptionStats,
    sip_reception: ReceptionStats,
    /// Clock rate of the last RTP packet from each side (for RTCP jitter).
    web_clock: u32,
    sip_clock: u32,
    sip_out: SipOutStream,
    web_out: WebOutStream,
    dtmf_in: DtmfReceiver,
    /// io_uring mode: receives armed on this call's sockets, and whether the
    /// call is leaving (its sockets close once no receive is left).
    armed: u8,
    leaving: bool,
    _leases: Vec<PortLease>,
}

impl CallState {
    fn fd(&self, kind: usize) -> Option<std::os::fd::RawFd> {
        match kind {
            WEB => Some(self.web.socket.as_raw_fd()),
            SIP_RTP => Some(self.sip.rtp.as_raw_fd()),
            _ => self.sip.rtcp.as_ref().map(|s| s.as_raw_fd()),
        }
    }

    /// Socket kinds this call has.
    fn kinds(&self) -> &'static [usize] {
        if self.sip.rtcp.is_some() {
            &[WEB, SIP_RTP, SIP_RTCP]
        } else {
            &[WEB, SIP_RTP]
        }
    }

    /// Counts the kernel's drops on socket `kind`, from the cumulative
    /// count reported with its last receive (if one was).
    fn note_kernel_drops(&mut self, kind: usize, reported: Option<u32>) {
        if let Some(total) = reported {
            let seen = &mut self.kernel_drops_seen[kind];
            let new_drops = total.wrapping_sub(*seen);
            *seen = total;
            let leg = if kind == WEB {
                &self.stats.web
            } else {
                &self.stats.sip
            };
            leg.dropped_many(DropCause::Overload, u64::from(new_drops));
        }
    }

    /// Relays the `n` datagrams of `batch` that came in on socket `kind`;
    /// says which go out and by which socket.
    fn relay(&mut self, batch: &mut Batch, n: usize, kind: usize) -> Relayed {
        if kind == WEB {
            let (rtp, rtcp) = relay_from_web(self, batch, n);
            Relayed {
                to_web: false,
                main: rtp,
                rtcp,
            }
        } else {
            Relayed {
                to_web: true,
                main: relay_from_sip(self, batch, n, kind == SIP_RTCP),
                rtcp: Outgoing::new(),
            }
        }
    }

    /// Sends what [`CallState::relay`] chose with `sendmmsg` (epoll mode).
    fn flush(&self, batch: &mut Batch, out: &Relayed) {
        if out.to_web {
            flush(batch, &self.web.socket, &out.main, &self.stats.web);
        } else {
            flush(batch, &self.sip.rtp, &out.main, &self.stats.sip);
            if let Some(rtcp) = &self.sip.rtcp {
                flush(batch, rtcp, &out.rtcp, &self.stats.sip);
            }
        }
    }
}

/// A relayed batch's datagrams to send: toward the browser (by the web
/// socket) or toward the SIP peer (RTP socket, and RTCP socket if any).
struct Relayed {
    to_web: bool,
    main: Outgoing,
    rtcp: Outgoing,
}

struct Worker {
    /// io_uring mode. First field, so dropped first: its receives end before
    /// any socket of a call closes and returns its port.
    ring: Option<RingIo>,
    poll: Poll,
    control: Receiver<Control>,
    load: Arc<AtomicUsize>,
    totals: Arc<Totals>,
    slots: Vec<Option<CallState>>,
    free_slots: Vec<usize>,
    by_id: HashMap<u64, usize>,
    batch: Batch,
    /// Sockets left with data when their turn's budget ran out.
    pending: Vec<(usize, usize)>,
    /// Calls with DTMF digits being sent.
    dtmf_slots: Vec<usize>,
    /// How long to look for work without sleeping after a turn.
    busy_poll: std::time::Duration,
}

/// io_uring mode: completions handled between two submits (each received
/// datagram may queue one send; the ring has far more send slots).
const COMPLETIONS_PER_TURN: usize = 256;

/// io_uring mode: a socket's name in the ring (slot and kind, as mio tokens).
fn token(slot: usize, kind: usize) -> u32 {
    (slot * SOCKETS_PER_CALL + kind) as u32
}

fn socket_of(token: u32) -> (usize, usize) {
    let t = token as usize;
    (t / SOCKETS_PER_CALL, t % SOCKETS_PER_CALL)
}

/// Batches one socket may move per turn before the others get theirs: a
/// flood on one call delays the rest by at most this much work.
const BATCHES_PER_TURN: usize = 8;

/// Indices of a batch's datagrams going out by one socket.
struct Outgoing {
    order: [usize; BATCH],
    count: usize,
}

impl Outgoing {
    fn new() -> Self {
        Outgoing {
            order: [0; BATCH],
            count: 0,
        }
    }
    fn push(&mut self, i: usize) {
        self.order[self.count] = i;
        self.count += 1;
    }
}

/// Busy polling: asks `found` until it says yes (true) or `until` passes
/// (false).
fn spin_until(until: std::time::Instant, mut found: impl FnMut() -> bool) -> bool {
    loop {
        if found() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
    }
}

impl Worker {
    fn new(
        poll: Poll,
        control: Receiver<Control>,
        load: Arc<AtomicUsize>,
        totals: Arc<Totals>,
        busy_poll: std::time::Duration,
    ) -> Self {
        Worker {
            poll,
            control,
            load,
            totals,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            batch: Batch::new(),
            pending: Vec::new(),
            dtmf_slots: Vec::new(),
            busy_poll,
            ring: None,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut turn: Vec<(usize, usize)> = Vec::new();
        loop {
            // With sockets still holding data, only look for new events; with
            // DTMF being sent, wake for its next packet.
            let now = std::time::Instant::now();
            let timeout = if self.pending.is_empty() {
                self.next_dtmf(now)
                    .map(|at| at.saturating_duration_since(now))
            } else {
                Some(std::time::Duration::ZERO)
            };
            // A spin that finds events leaves them in `events`; otherwise wait.
            let spun = self.spin_deadline(now, timeout).is_some_and(|until| {
                spin_until(until, || {
                    let found = self.poll.poll(&mut events, Some(std::time::Duration::ZERO));
                    found.is_ok() && !events.is_empty()
                })
            });
            let waited = if spun {
                Ok(())
            } else {
                self.poll.poll(&mut events, timeout)
            };
            if let Err(e) = waited {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "relay worker poll failed; worker stops");
                return;
            }
            // Control first: what a controller said before a packet arrived
            // (an ICE-selected address, keys) applies to that packet.
            while let Ok(c) = self.control.try_recv() {
                if !self.apply(c) {
                    return;
                }
            }
            turn.clear();
            turn.append(&mut self.pending);
            // Events name each socket once (epoll keeps one entry per fd):
            // only the few carried over from the last turn can repeat, so
            // this stays linear in the number of ready sockets.
            let carried = turn.len();
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let socket = (
                    event.token().0 / SOCKETS_PER_CALL,
                    event.token().0 % SOCKETS_PER_CALL,
                );
                if !turn[..carried].contains(&socket) {
                    turn.push(socket);
                }
            }
            for &(slot, kind) in &turn {
                if self.drain(slot, kind) {
                    self.pending.push((slot, kind));
                }
            }
            if !self.dtmf_slots.is_empty() {
                self.send_dtmf(std::time::Instant::now());
            }
        }
    }

    /// The io_uring loop: one `io_uring_enter` per turn submits the last
    /// turn's sends and waits for completions; each completion is a
    /// datagram (relayed in runs per socket), a send's outcome, a receive
    /// that ended, or the waker.
    fn run_ring(mut self) {
        let waker_fd = self.poll.as_raw_fd();
        let mut events = Events::with_capacity(16);
        if let Some(Err(e)) = self.ring.as_mut().map(|r| r.arm_wake(waker_fd)) {
            tracing::error!(error = %e, "relay worker cannot watch its waker; worker stops");
            return;
        }
        'turns: loop {
            let now = std::time::Instant::now();
            let timeout = self
                .next_dtmf(now)
                .map(|at| at.saturating_duration_since(now));
            let spin = self.spin_deadline(now, timeout);
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            if let Some(until) = spin {
                // An error ends the spin; the wait below reports it.
                spin_until(until, || !matches!(ring.poll_completions(), Ok(false)));
            }
            if let Err(e) = ring.wait(timeout) {
                tracing::error!(error = %e, "relay worker io_uring failed; worker stops");
                break;
            }
            // Control first, as in `run`.
            while let Ok(c) = self.control.try_recv() {
                if !self.apply(c) {
                    break 'turns;
                }
            }
            self.ring_turn(waker_fd, &mut events);
            if !self.dtmf_slots.is_empty() {
                self.send_dtmf(std::time::Instant::now());
            }
        }
        // Receives end before sockets close and ports return.
        self.ring = None;
    }

    /// Until when to look for work without sleeping before a wait of
    /// `timeout` (None: no busy polling, or a wait that does not sleep).
    fn spin_deadline(
        &self,
        now: std::time::Instant,
        timeout: Option<std::time::Duration>,
    ) -> Option<std::time::Instant> {
        let spin = timeout.map_or(self.busy_poll, |t| t.min(self.busy_poll));
        (!spin.is_zero()).then(|| now + spin)
    }

    /// Handles the completions waiting now (at most a bounded number, so
    /// sends go out and send slots come back between runs of them).
    fn ring_turn(&mut self, waker_fd: std::os::fd::RawFd, events: &mut Events) {
        // Datagrams of one socket in a row are relayed as one batch.
        let mut run: Option<(usize, usize)> = None;
        let mut count = 0;
        for _ in 0..COMPLETIONS_PER_TURN {
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            let Some(event) = ring.next_event() else {
                break;
            };
            match event {
                ring::Event::Datagram { token: t, more } => {
                    let socket = socket_of(t);
                    if run != Some(socket) && count > 0 {
                        self.ring_relay(run, count);
                        count = 0;
                    }
                    run = Some(socket);
                    let Some(ring) = self.ring.as_mut() else {
                        return;
                    };
                    if ring.take_datagram(&mut self.batch, count) {
                        count += 1;
                    }
                    if count == BATCH || !more {
                        self.ring_relay(run, count);
                        count = 0;
                    }
                    if !more {
                        self.recv_ended(socket, 0);
                    }
                }
                ring::Event::RecvStopped { token: t, errno } => {
                    self.ring_relay(run, count);
                    count = 0;
                    self.recv_ended(socket_of(t), errno);
                }
                ring::Event::Sent { tag, ok } => {
                    let call = self
                        .slots
                        .get(tag.slot as usize)
                        .and_then(Option::as_ref)
                        .filter(|c| c.id == tag.call);
                    if let Some(call) = call {
                        let leg = if tag.web {
                            &call.stats.web
                        } else {
                            &call.stats.sip
                        };
                        if ok {
                            leg.sent(tag.len as usize);
                        } else {
                            leg.dropped(DropCause::Overload);
                        }
                    }
                }
                ring::Event::Woken => {
                    // Clears the waker; controls are read every turn anyway.
                    let _ = self.poll.poll(events, Some(std::time::Duration::ZERO));
                    if let Some(Err(e)) = self.ring.as_mut().map(|r| r.arm_wake(waker_fd)) {
                        tracing::error!(error = %e, "relay worker cannot watch its waker");
                    }
                }
            }
        }
        self.ring_relay(run, count);
    }

    /// Relays the first `count` datagrams of the batch, all from `socket`,
    /// and queues their sends in the ring.
    fn ring_relay(&mut self, socket: Option<(usize, usize)>, count: usize) {
        // Taken here whatever happens next, so a count never passes to
        // another socket's run.
        let reported = self.batch.kernel_drops.take();
        let (Some((slot, kind)), true) = (socket, count > 0) else {
            return;
        };
        let (Some(ring), Some(call)) = (
            self.ring.as_mut(),
            self.slots.get_mut(slot).and_then(Option::as_mut),
        ) else {
            return;
        };
        if call.leaving {
            return;
        }
        call.note_kernel_drops(kind, reported);
        let out = call.relay(&mut self.batch, count, kind);
        let (main, rtcp, leg) = if out.to_web {
            (token(slot, WEB), token(slot, WEB), &call.stats.web)
        } else {
            let rtcp = if call.sip.rtcp.is_some() {
                SIP_RTCP
            } else {
                SIP_RTP
            };
            (token(slot, SIP_RTP), token(slot, rtcp), &call.stats.sip)
        };
        for (socket, list) in [(main, &out.main), (rtcp, &out.rtcp)] {
            for &i in &list.order[..list.count] {
                let len = self.batch.lens[i];
                let queued = self.batch.addrs[i].is_some_and(|to| {
                    let tag = ring::SendTag {
                        slot: slot as u32,
                        call: call.id,
                        web: out.to_web,
                        len: len as u32,
                    };
                    let from = self.batch.locals[i];
                    ring.queue_send(socket, &self.batch.bufs[i][..len], to, from, tag)
                });
                if !queued {
                    leg.dropped(DropCause::Overload);
                }
            }
        }
    }

    /// A receive on `socket` has ended (`errno` 0: after a datagram): armed
    /// again, or, for a leaving call, one fewer to wait for before its
    /// sockets may close. An unexpected error is not retried, so a socket
    /// the kernel keeps refusing cannot spin the worker; the call then ends
    /// by its media timeout.
    fn recv_ended(&mut self, (slot, kind): (usize, usize), errno: i32) {
        let (Some(ring), Some(call)) = (
            self.ring.as_mut(),
            self.slots.get_mut(slot).and_then(Option::as_mut),
        ) else {
            return;
        };
        call.armed = call.armed.saturating_sub(1);
        let retry = matches!(errno, 0 | libc::ENOBUFS | libc::EINTR | libc::EAGAIN);
        if !call.leaving && !retry {
            tracing::warn!(
                call = call.id,
                errno,
                "relay receive failed; this socket of the call takes no more packets"
            );
        } else if !call.leaving {
            match ring.arm_recv(token(slot, kind)) {
                Ok(()) => call.armed += 1,
                Err(e) => {
                    tracing::error!(call = call.id, error = %e, "relay cannot arm a receive again")
                }
            }
        } else if call.armed == 0 {
            self.release(slot);
        }
    }

    /// Applies a control message; false means stop.
    fn apply(&mut self, c: Control) -> bool {
        match c {
            Control::Add(id, setup, stats) => {
                if let Err(e) = self.add(id, *setup, stats) {
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    self.totals.forget(id);
                    tracing::warn!(call = id, error = %e, "relay could not take the call");
                }
            }
            Control::Remove(id) => {
                if let Some(slot) = self.by_id.remove(&id) {
                    self.pending.retain(|&(s, _)| s != slot);
                    self.dtmf_slots.retain(|&s| s != slot);
                    match (self.ring.as_mut(), self.slots[slot].as_mut()) {
                        (Some(ring), Some(call)) => {
                            // Its sockets close once the kernel has ended
                            // every receive on them (see `recv_ended`).
                            call.leaving = true;
                            for &kind in call.kinds() {
                                if let Err(e) = ring.cancel_recv(token(slot, kind)) {
                                    tracing::error!(call = id, error = %e, "relay cannot cancel a receive");
                                }
                            }
                            if call.armed == 0 {
                                self.release(slot);
                            }
                        }
                        (None, Some(call)) => {
                            let registry = self.poll.registry();
                            let _ = registry.deregister(&mut call.web.socket);
                            let _ = registry.deregister(&mut call.sip.rtp);
                            if let Some(s) = call.sip.rtcp.as_mut() {
                                let _ = registry.deregister(s);
                            }
                            self.release(slot);
                        }
                        _ => {}
                    }
                }
            }
            Control::WebRemote(id, addr, local) => {
                if let Some(call) = self.call_mut(id) {
                    call.web.remote = Some(addr);
                    call.web.local = local;
                }
            }
            Control::WebSrtp(id, keys) => {
                if let Some(call) = self.call_mut(id) {
                    call.web.srtp = Some(*keys);
                }
            }
            Control::SendDtmf(id, digits, duration) => {
                let Some(&slot) = self.by_id.get(&id) else {
                    return true;
                };
                let Some(call) = self.slots[slot].as_mut() else {
                    return true;
                };
                let Some((_, clock)) = call.map.sip_telephone_event() else {
                    return true;
                };
                let sender = call
                    .sip_out
                    .dtmf
                    .get_or_insert_with(|| DtmfSender::new(clock));
                // Checked by the caller already; a queue that is full refuses here.
                if sender.queue(&digits, duration).is_ok() && !self.dtmf_slots.contains(&slot) {
                    self.dtmf_slots.push(slot);
                }
            }
            Control::Stop => return false,
        }
        true
    }

    fn next_dtmf(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        self.dtmf_slots
            .iter()
            .filter_map(|&slot| {
                self.slots[slot]
                    .as_ref()?
                    .sip_out
                    .dtmf
                    .as_ref()?
                    .next_wakeup(now)
            })
            .min()
    }

    /// Sends the DTMF packets that are due, in each call's SIP-bound stream.
    fn send_dtmf(&mut self, now: std::time::Instant) {
        let slots = &mut self.slots;
        self.dtmf_slots.retain(|&slot| {
            let Some(call) = slots.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            let Some((pt, _)) = call.map.sip_telephone_event() else {
                return false;
            };
            loop {
                let timestamp = call.sip_out.timestamp_at(now);
                let Some(packet) = call
                    .sip_out
                    .dtmf
                    .as_mut()
                    .and_then(|d| d.poll(now, timestamp))
                else {
                    break;
                };
                let seq = call.sip_out.inserted_seq();
                let mut buf = [0u8; 64];
                buf[0] = 0x80;
                buf[1] = (u8::from(packet.marker) << 7) | pt;
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                buf[4..8].copy_from_slice(&packet.timestamp.to_be_bytes());
                buf[8..12].copy_from_slice(&call.sip_out.ssrc.to_be_bytes());
                buf[12..16].copy_from_slice(&packet.payload);
                let len = match call.sip.srtp.as_mut() {
                    Some((_, out)) => match out.protect_rtp(&mut buf, 16) {
                        Ok(n) => n,
                        Err(_) => continue,
                    },
                    None => 16,
                };
                match call
                    .sip
                    .rtp
                    .send_to(&buf[..len], call.sip.rtp_destination())
                {
                    Ok(_) => call.stats.sip.sent(len),
                    Err(_) => call.stats.sip.dropped(DropCause::Overload),
                }
            }
            call.sip_out.dtmf.as_ref().is_some_and(|d| !d.is_idle())
        });
    }

    fn call_mut(&mut self, id: u64) -> Option<&mut CallState> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot].as_mut()
    }

    fn add(&mut self, id: u64, setup: CallMediaSetup, stats: Arc<CallStats>) -> io::Result<()> {
        // The browser may talk to any of our addresses: learn which, per
        // datagram. Sockets are set up before a slot is taken, so a failure
        // leaves none behind.
        let web_ipv6 = setup.web_socket.local_addr()?.is_ipv6();
        super::batch::enable_local_address(setup.web_socket.as_raw_fd(), web_ipv6)?;
        let mut web = UdpSocket::from_std(nonblocking(setup.web_socket)?);
        let mut sip_rtp = UdpSocket::from_std(nonblocking(setup.sip_rtp_socket)?);
        let mut sip_rtcp = match setup.sip_rtcp_socket {
            Some(s) => Some(UdpSocket::from_std(nonblocking(s)?)),
            None => None,
        };
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let registry = self.poll.registry();
        let base = slot * SOCKETS_PER_CALL;
        // io_uring mode arms receives below instead.
        let registered = if self.ring.is_some() {
            Ok(())
        } else {
            registry
                .register(&mut web, Token(base + WEB), Interest::READABLE)
                .and_then(|_| {
                    registry.register(&mut sip_rtp, Token(base + SIP_RTP), Interest::READABLE)
                })
                .and_then(|_| match sip_rtcp.as_mut() {
                    Some(s) => registry.register(s, Token(base + SIP_RTCP), Interest::READABLE),
                    None => Ok(()),
                })
        };
        if let Err(e) = registered {
            let _ = registry.deregister(&mut web);
            let _ = registry.deregister(&mut sip_rtp);
            if let Some(s) = sip_rtcp.as_mut() {
                let _ = registry.deregister(s);
            }
            self.free_slots.push(slot);
            return Err(e);
        }
        let sdp_remote_rtcp = setup.sip_remote_rtcp.unwrap_or_else(|| {
            SocketAddr::new(
                setup.sip_remote.ip(),
                setup.sip_remote.port().wrapping_add(1),
            )
        });
        self.slots[slot] = Some(CallState {
            id,
            web: WebLeg {
                socket: web,
                remote: setup.web_remote,
                local: setup.web_local,
                srtp: setup.web_srtp,
                ssrc: setup.web_ssrc,
            },
            sip: SipLeg {
                rtp: sip_rtp,
                rtcp: sip_rtcp,
                sdp_remote: setup.sip_remote,
                sdp_remote_rtcp,
                latched: None,
                latched_rtcp: None,
                strict: setup.sip_strict_source,
                srtp: setup.sip_srtp,
            },
            map: setup.payload_map,
            stats,
            events: setup.events,
            kernel_drops_seen: [0; SOCKETS_PER_CALL],
            web_reception: ReceptionStats::new(std::time::Instant::now()),
            sip_reception: ReceptionStats::new(std::time::Instant::now()),
            web_clock: 0,
            sip_clock: 0,
            sip_out: SipOutStream::new(id),
            web_out: WebOutStream::new(),
            dtmf_in: DtmfReceiver::default(),
            armed: 0,
            leaving: false,
            _leases: setup.leases,
        });
        self.by_id.insert(id, slot);
        let mut failed = false;
        if let (Some(ring), Some(call)) = (self.ring.as_mut(), self.slots[slot].as_mut()) {
            for &kind in call.kinds() {
                let Some(fd) = call.fd(kind) else { continue };
                ring.attach(token(slot, kind), fd);
                match ring.arm_recv(token(slot, kind)) {
                    Ok(()) => call.armed += 1,
                    Err(e) => {
                        tracing::warn!(call = id, error = %e, "relay cannot arm a receive");
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            // Not half a call: what was armed is cancelled, and the call
            // leaves as if removed.
            self.apply(Control::Remove(id));
        }
        Ok(())
    }

    /// A slot's call is gone for good: its sockets close, its ports return.
    fn release(&mut self, slot: usize) {
        if let Some(call) = self.slots[slot].take() {
            if let Some(ring) = self.ring.as_mut() {
                for &kind in call.kinds() {
                    ring.detach(token(slot, kind));
                }
            }
            self.free_slots.push(slot);
            self.load.fetch_sub(1, Ordering::Relaxed);
            let id = call.id;
            drop(call);
            // After the sockets closed: nothing more can be counted for it.
            self.totals.forget(id);
        }
    }

    /// Reads a socket until it is empty (mio is edge-triggered) or its turn
    /// is used up, relaying each batch as it arrives. Returns true when data
    /// may be left for a later turn.
    fn drain(&mut self, slot: usize, kind: usize) -> bool {
        let Some(call) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        for _ in 0..BATCHES_PER_TURN {
            let fd = match kind {
                WEB => call.web.socket.as_raw_fd(),
                SIP_RTP => call.sip.rtp.as_raw_fd(),
                _ => match &call.sip.rtcp {
                    Some(s) => s.as_raw_fd(),
                    None => return false,
                },
            };
            let n = match self.batch.recv(fd) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(_) => return false,
            };
            call.note_kernel_drops(kind, self.batch.kernel_drops.take());
            let out = call.relay(&mut self.batch, n, kind);
            call.flush(&mut self.batch, &out);
            // A short batch emptied the queue; a datagram arriving after the
            // recvmmsg raises a new readiness event, so no extra syscall to
            // see EAGAIN.
            if n < BATCH {
                return false;
            }
        }
        true
    }
}

/// Kernel buffer per relay socket: a few hundred packets of slack for bursts.
const SOCKET_BUFFER_BYTES: usize = 512 * 1024;

fn nonblocking(s: std::net::UdpSocket) -> io::Result<std::net::UdpSocket> {
    s.set_nonblocking(true)?;
    // Best effort: a smaller buffer than asked for still works, and without
    // the drop counter only kernel-side overload goes uncounted per call.
    let _ = super::batch::set_buffer_sizes(s.as_raw_fd(), SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES);
    let _ = super::batch::enable_drop_counter(s.as_raw_fd());
    Ok(s)
}

fn count_srtp_error(stats: &LegStats, e: SrtpError) {
    stats.dropped(match e {
        SrtpError::AuthFailed => DropCause::AuthFailed,
        SrtpError::Replay | SrtpError::TooOld => DropCause::Replay,
        _ => DropCause::Malformed,
    });
}

/// Sends the selected datagrams of the batch by `socket`; what the kernel
/// does not take now is dropped and counted (a burst never stalls a stream).
fn flush(batch: &mut Batch, socket: &UdpSocket, out: &Outgoing, stats: &LegStats) {
    if out.count == 0 {
        return;
    }
    let sent = batch
        .send(socket.as_raw_fd(), &out.order[..out.count])
        .unwrap_or(0);
    for (k, &i) in out.order[..out.count].iter().enumerate() {
        if k < sent {
            stats.sent(batch.lens[i]);
        } else {
            stats.dropped(DropCause::Overload);
        }
    }
}

fn relay_from_web(call: &mut CallState, batch: &mut Batch, n: usize) -> (Outgoing, Outgoing) {
    let stats = &*call.stats;
    // One clock read per batch: its packets arrived together.
    let arrival = std::time::Instant::now();
    let mut rtp_out = Outgoing::new();
    let mut rtcp_out = Outgoing::new();
    for i in 0..n {
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
        if call.web.remote != Some(from) {
            stats.web.dropped(DropCause::ForeignSource);
            continue;
        }
        let Some((web_in, _)) = call.web.srtp.as_mut() else {
            stats.web.dropped(DropCause::NotReady);
            continue;
        };
        let buf = &mut batch.bufs[i];
        let sip_out = call.sip.srtp.as_mut().map(|(_, out)| out);
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
                batch.lens[i] = out_len;
                if kind == WebPacketKind::Rtp {
                    // The header stays readable in SRTP; its type is the SIP one now.
                    let clock = call.map.sip_clock[usize::from(rtp::rtp_payload_type(buf))];
                    call.web_clock = clock;
                    record(&mut call.web_reception, &stats.web, buf, clock, arrival);
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

fn relay_from_sip(
    call: &mut CallState,
    batch: &mut Batch,
    n: usize,
    rtcp_socket: bool,
) -> Outgoing {
    let stats = &*call.stats;
    let arrival = std::time::Instant::now();
    let mut out = Outgoing::new();
    for i in 0..n {
        let len = batch.lens[i];
        stats.sip.received(len);
        let Some(from) = batch.addrs[i] else {
            stats.sip.dropped(DropCause::Malformed);
            continue;
        };
        if !call.sip.accept_source(from, rtcp_socket) {
            stats.sip.dropped(DropCause::ForeignSource);
            continue;
        }
        let buf = &mut batch.bufs[i];
        let is_rtcp = rtcp_socket || (len >= 2 && rtp::is_rtcp_packet_type(buf[1]));
        let (Some(web_remote), Some((_, web_out))) = (call.web.remote, call.web.srtp.as_mut())
        else {
            stats.sip.dropped(DropCause::NotReady);
            continue;
        };
        let sip_in = call.sip.srtp.as_mut().map(|(sip_in, _)| sip_in);
        let mut digit = None;
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

/// A packet failed either the payload-type map or an SRTP transform.
enum PtOrSrtp {
    Pt,
    Srtp(SrtpError),
}

impl From<SrtpError> for PtOrSrtp {
    fn from(e: SrtpError) -> Self {
        PtOrSrtp::Srtp(e)
    }
}

/// Browser RTP to the SIP leg: unprotect, map the payload type, protect (or plain).
fn web_to_sip_rtp(
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
fn sip_to_web_rtp(
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
fn record(
    reception: &mut ReceptionStats,
    leg: &LegStats,
    packet: &[u8],
    clock: u32,
    arrival: std::time::Instant,
) {
    reception.record(
        rtp::rtp_ssrc(packet),
        rtp::rtp_seq(packet),
        rtp::rtp_timestamp(packet),
        clock,
        arrival,
    );
    leg.set_reception(reception.lost(), reception.jitter(clock).as_micros() as u64);
}

/// Keeps what a peer's RTCP report says about the stream we send it
/// (`clock`: that stream's clock rate, for the jitter).
fn note_peer_report(plain_rtcp: &[u8], leg: &LegStats, clock: u32) {
    if let Some(block) = first_report_block(plain_rtcp) {
        let jitter_us = if clock > 0 {
            u64::from(block.jitter) * 1_000_000 / u64::from(clock)
        } else {
            0
        };
        leg.set_peer_report(block.fraction_lost, block.cumulative_lost, jitter_us);
    }
}

/// RTCP from one leg to the other: unprotect, note the report, then protect
/// (or plain).
fn rtcp_across(
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
