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

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::batch::{Batch, BATCH};
use super::ports::PortLease;
use super::rtp::{self, WebPacketKind};
use super::srtp::{SrtpContext, SrtpError};
use super::stats::{CallStats, Drop as DropCause, LegStats};

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
}

/// A STUN or DTLS datagram from a web leg, for the ICE agent / DTLS driver.
#[derive(Debug)]
pub struct ControlPacket {
    pub call: u64,
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// Payload-type mapping between the legs: `to_sip[web_pt]`, `to_web[sip_pt]`;
/// 255 means "not negotiated: drop".
#[derive(Clone)]
pub struct PayloadMap {
    to_sip: [u8; 128],
    to_web: [u8; 128],
}

impl PayloadMap {
    const NONE: u8 = 255;

    /// From `(web_pt, sip_pt)` pairs.
    pub fn new(pairs: &[(u8, u8)]) -> Self {
        let mut map = PayloadMap {
            to_sip: [Self::NONE; 128],
            to_web: [Self::NONE; 128],
        };
        for &(web, sip) in pairs {
            if web < 128 && sip < 128 {
                map.to_sip[usize::from(web)] = sip;
                map.to_web[usize::from(sip)] = web;
            }
        }
        map
    }
}

/// Everything the relay needs to carry one call.
pub struct CallMediaSetup {
    /// The web leg's socket (rtcp-mux: RTP, RTCP, STUN and DTLS on one port).
    pub web_socket: std::net::UdpSocket,
    /// The ICE-selected browser address, once known.
    pub web_remote: Option<SocketAddr>,
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
    /// Where STUN/DTLS datagrams from the browser go.
    pub control_packets: Option<SyncSender<ControlPacket>>,
    /// Port leases, returned when the relay has closed the sockets.
    pub leases: Vec<PortLease>,
}

enum Control {
    Add(u64, Box<CallMediaSetup>, Arc<CallStats>),
    Remove(u64),
    WebRemote(u64, SocketAddr),
    WebSrtp(u64, Box<(SrtpContext, SrtpContext)>),
    Stop,
}

struct WorkerLink {
    tx: Sender<Control>,
    waker: Arc<Waker>,
    calls: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerLink {
    fn send(&self, c: Control) -> Result<(), RelayError> {
        self.tx.send(c).map_err(|_| RelayError::Stopped)?;
        self.waker.wake().map_err(RelayError::Io)
    }
}

/// The running relay.
pub struct Relay {
    workers: Vec<WorkerLink>,
    next_id: AtomicU64,
}

impl Relay {
    /// Starts `workers` threads (at least one).
    pub fn start(workers: usize) -> Result<Arc<Relay>, RelayError> {
        let mut links = Vec::new();
        for n in 0..workers.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = mpsc::channel();
            let calls = Arc::new(AtomicUsize::new(0));
            let worker_calls = calls.clone();
            let thread = std::thread::Builder::new()
                .name(format!("relay-{n}"))
                .spawn(move || Worker::new(poll, rx, worker_calls).run())?;
            links.push(WorkerLink {
                tx,
                waker,
                calls,
                thread: Some(thread),
            });
        }
        Ok(Arc::new(Relay {
            workers: links,
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
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
        let stats = Arc::new(CallStats::default());
        self.workers[worker].calls.fetch_add(1, Ordering::Relaxed);
        self.workers[worker].send(Control::Add(id, Box::new(setup), stats.clone()))?;
        Ok(CallMedia {
            id,
            worker,
            relay: self.clone(),
            stats,
        })
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
}

impl CallMedia {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The browser address ICE selected (USE-CANDIDATE); web media is
    /// accepted from and sent to it only.
    pub fn set_web_remote(&self, addr: SocketAddr) -> Result<(), RelayError> {
        self.relay.workers[self.worker].send(Control::WebRemote(self.id, addr))
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

impl Drop for CallMedia {
    fn drop(&mut self) {
        let _ = self.relay.workers[self.worker].send(Control::Remove(self.id));
    }
}

struct WebLeg {
    socket: UdpSocket,
    remote: Option<SocketAddr>,
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

struct CallState {
    id: u64,
    web: WebLeg,
    sip: SipLeg,
    map: PayloadMap,
    stats: Arc<CallStats>,
    control_packets: Option<SyncSender<ControlPacket>>,
    _leases: Vec<PortLease>,
}

struct Worker {
    poll: Poll,
    control: Receiver<Control>,
    load: Arc<AtomicUsize>,
    slots: Vec<Option<CallState>>,
    free_slots: Vec<usize>,
    by_id: HashMap<u64, usize>,
    batch: Batch,
}

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

impl Worker {
    fn new(poll: Poll, control: Receiver<Control>, load: Arc<AtomicUsize>) -> Self {
        Worker {
            poll,
            control,
            load,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            batch: Batch::new(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
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
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let slot = event.token().0 / SOCKETS_PER_CALL;
                let kind = event.token().0 % SOCKETS_PER_CALL;
                self.drain(slot, kind);
            }
        }
    }

    /// Applies a control message; false means stop.
    fn apply(&mut self, c: Control) -> bool {
        match c {
            Control::Add(id, setup, stats) => {
                if let Err(e) = self.add(id, *setup, stats) {
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(call = id, error = %e, "relay could not take the call");
                }
            }
            Control::Remove(id) => {
                if let Some(slot) = self.by_id.remove(&id) {
                    if let Some(mut call) = self.slots[slot].take() {
                        let registry = self.poll.registry();
                        let _ = registry.deregister(&mut call.web.socket);
                        let _ = registry.deregister(&mut call.sip.rtp);
                        if let Some(s) = call.sip.rtcp.as_mut() {
                            let _ = registry.deregister(s);
                        }
                    }
                    self.free_slots.push(slot);
                    self.load.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Control::WebRemote(id, addr) => {
                if let Some(call) = self.call_mut(id) {
                    call.web.remote = Some(addr);
                }
            }
            Control::WebSrtp(id, keys) => {
                if let Some(call) = self.call_mut(id) {
                    call.web.srtp = Some(*keys);
                }
            }
            Control::Stop => return false,
        }
        true
    }

    fn call_mut(&mut self, id: u64) -> Option<&mut CallState> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot].as_mut()
    }

    fn add(&mut self, id: u64, setup: CallMediaSetup, stats: Arc<CallStats>) -> io::Result<()> {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let mut web = UdpSocket::from_std(nonblocking(setup.web_socket)?);
        let mut sip_rtp = UdpSocket::from_std(nonblocking(setup.sip_rtp_socket)?);
        let mut sip_rtcp = match setup.sip_rtcp_socket {
            Some(s) => Some(UdpSocket::from_std(nonblocking(s)?)),
            None => None,
        };
        let registry = self.poll.registry();
        let base = slot * SOCKETS_PER_CALL;
        let registered = registry
            .register(&mut web, Token(base + WEB), Interest::READABLE)
            .and_then(|_| {
                registry.register(&mut sip_rtp, Token(base + SIP_RTP), Interest::READABLE)
            })
            .and_then(|_| match sip_rtcp.as_mut() {
                Some(s) => registry.register(s, Token(base + SIP_RTCP), Interest::READABLE),
                None => Ok(()),
            });
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
            control_packets: setup.control_packets,
            _leases: setup.leases,
        });
        self.by_id.insert(id, slot);
        Ok(())
    }

    /// Reads a socket until it is empty (mio is edge-triggered), relaying
    /// each batch as it arrives.
    fn drain(&mut self, slot: usize, kind: usize) {
        let Some(call) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        loop {
            let fd = match kind {
                WEB => call.web.socket.as_raw_fd(),
                SIP_RTP => call.sip.rtp.as_raw_fd(),
                _ => match &call.sip.rtcp {
                    Some(s) => s.as_raw_fd(),
                    None => return,
                },
            };
            let n = match self.batch.recv(fd) {
                Ok(0) => return,
                Ok(n) => n,
                Err(_) => return,
            };
            if kind == WEB {
                relay_from_web(call, &mut self.batch, n);
            } else {
                relay_from_sip(call, &mut self.batch, n, kind == SIP_RTCP);
            }
            // A short batch emptied the queue; a datagram arriving after the
            // recvmmsg raises a new readiness event, so no extra syscall to
            // see EAGAIN.
            if n < BATCH {
                return;
            }
        }
    }
}

/// Kernel buffer per relay socket: a few hundred packets of slack for bursts.
const SOCKET_BUFFER_BYTES: usize = 512 * 1024;

fn nonblocking(s: std::net::UdpSocket) -> io::Result<std::net::UdpSocket> {
    s.set_nonblocking(true)?;
    // Best effort: a smaller buffer than asked for still works.
    let _ = super::batch::set_buffer_sizes(s.as_raw_fd(), SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES);
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

fn relay_from_web(call: &mut CallState, batch: &mut Batch, n: usize) {
    let stats = &*call.stats;
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
            if let Some(tx) = &call.control_packets {
                let packet = ControlPacket {
                    call: call.id,
                    from,
                    data: batch.bufs[i][..len].to_vec(),
                };
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
            web_to_sip_rtp(buf, len, web_in, &call.map, sip_out)
        } else {
            rtcp_across(buf, len, web_in, sip_out)
        };
        match result {
            Ok(out_len) => {
                batch.lens[i] = out_len;
                if kind == WebPacketKind::Rtp {
                    batch.addrs[i] = Some(call.sip.rtp_destination());
                    rtp_out.push(i);
                } else {
                    batch.addrs[i] = Some(call.sip.rtcp_destination());
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
    flush(batch, &call.sip.rtp, &rtp_out, &stats.sip);
    if let Some(rtcp) = &call.sip.rtcp {
        flush(batch, rtcp, &rtcp_out, &stats.sip);
    }
}

fn relay_from_sip(call: &mut CallState, batch: &mut Batch, n: usize, rtcp_socket: bool) {
    let stats = &*call.stats;
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
        let result = if is_rtcp {
            match sip_in {
                Some(sip_in) => rtcp_across(buf, len, sip_in, Some(web_out)),
                None => web_out.protect_rtcp(buf, len).map_err(PtOrSrtp::from),
            }
        } else {
            sip_to_web_rtp(buf, len, sip_in, &call.map, call.web.ssrc, web_out)
        };
        match result {
            Ok(out_len) => {
                batch.lens[i] = out_len;
                batch.addrs[i] = Some(web_remote);
                out.push(i);
            }
            Err(PtOrSrtp::Pt) => stats.sip.dropped(DropCause::PayloadType),
            Err(PtOrSrtp::Srtp(e)) => count_srtp_error(&stats.sip, e),
        }
    }
    flush(batch, &call.web.socket, &out, &stats.web);
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
) -> Result<usize, PtOrSrtp> {
    let plain = web_in.unprotect_rtp(&mut buf[..len])?;
    let pt = map.to_sip[usize::from(rtp::rtp_payload_type(&buf[..plain]))];
    if pt == PayloadMap::NONE {
        return Err(PtOrSrtp::Pt);
    }
    rtp::set_rtp_payload_type(&mut buf[..plain], pt);
    Ok(match sip_out {
        Some(out) => out.protect_rtp(buf, plain)?,
        None => plain,
    })
}

/// SIP RTP to the browser: unprotect (or check), map the payload type, set
/// the SSRC the browser was told about, protect.
fn sip_to_web_rtp(
    buf: &mut [u8],
    len: usize,
    sip_in: Option<&mut SrtpContext>,
    map: &PayloadMap,
    ssrc: Option<u32>,
    web_out: &mut SrtpContext,
) -> Result<usize, PtOrSrtp> {
    let plain = match sip_in {
        Some(sip_in) => sip_in.unprotect_rtp(&mut buf[..len])?,
        None => rtp::rtp_header_len(&buf[..len])
            .map(|_| len)
            .ok_or(SrtpError::Malformed)?,
    };
    let pt = map.to_web[usize::from(rtp::rtp_payload_type(&buf[..plain]))];
    if pt == PayloadMap::NONE {
        return Err(PtOrSrtp::Pt);
    }
    rtp::set_rtp_payload_type(&mut buf[..plain], pt);
    if let Some(ssrc) = ssrc {
        rtp::set_rtp_ssrc(&mut buf[..plain], ssrc);
    }
    Ok(web_out.protect_rtp(buf, plain)?)
}

/// RTCP from one leg to the other: unprotect, then protect (or plain).
fn rtcp_across(
    buf: &mut [u8],
    len: usize,
    inbound: &mut SrtpContext,
    outbound: Option<&mut SrtpContext>,
) -> Result<usize, PtOrSrtp> {
    let plain = inbound.unprotect_rtcp(&mut buf[..len])?;
    Ok(match outbound {
        Some(out) => out.protect_rtcp(buf, plain)?,
        None => plain,
    })
}
