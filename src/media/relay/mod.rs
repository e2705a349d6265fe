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
//! epoll readiness, then `recvmmsg`/`sendmmsg` per socket (`epoll`); or
//! io_uring (`uring`, over `media::ring`), where every socket has a
//! multishot receive armed and a turn's sends go to the kernel with the
//! wait for the next completions. The per-packet work between receive and
//! send (`forward`) is the same code in both.
//!
//! Files by concern: this one is the public API (`Relay`, `CallMedia`);
//! `control` the messages to a worker; `worker` a worker's calls and
//! control handling; `call` one call's legs and sockets; `forward` the
//! per-packet path; `streams` our numbering toward each side; `dtmf_out`
//! the timing of the DTMF packets we insert; `epoll` and `uring` the loops.
//!
//! Each direction is one stream of ours: toward SIP the browser's packets
//! with DTMF inserted (`SipOutStream`), toward the browser our SSRC, our
//! sequence numbers and timestamps across whatever sources the SIP side
//! sends (`WebOutStream`). Media toward the browser leaves from the local
//! address of the ICE-selected pair (see `media::batch`).

mod call;
mod control;
mod dtmf_out;
mod epoll;
mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod streams;
mod transcoded;
mod uring;
mod web_port;
mod worker;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;

use mio::{Poll, Token, Waker};

use super::dtmf::{DtmfError, DtmfSender};
use super::ports::PortLease;
use super::ring::RingIo;
use super::srtp::SrtpContext;
use super::stats::{CallStats, LegSnapshot};
use control::{Control, WorkerLink};
use web_port::{SharedWebPort, WorkerPort};
use worker::Worker;

pub use super::payload_map::PayloadMap;
pub use crate::config::RelayIo;

const WAKER: Token = Token(usize::MAX);
/// Tokens: slot * SOCKETS_PER_CALL + socket kind.
const SOCKETS_PER_CALL: usize = 3;
const WEB: usize = 0;
const SIP_RTP: usize = 1;
const SIP_RTCP: usize = 2;
/// With a shared web port, slot 0's web token is the port's socket.
const PORT_SLOT: usize = 0;

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
    #[error("the relay has no shared web port for a call without a web socket")]
    NoWebPort,
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

/// Everything the relay needs to carry one call.
/// See [`CallMediaSetup::web_check_verifier`].
pub type CheckVerifier = Box<dyn Fn(&[u8]) -> bool + Send>;

pub struct CallMediaSetup {
    /// The web leg's socket (rtcp-mux: RTP, RTCP, STUN and DTLS on one
    /// port); `None`: the relay's shared web port ([`RelayOptions::web_port`]).
    pub web_socket: Option<std::net::UdpSocket>,
    /// Our ICE username fragment: on the shared web port, the browser's
    /// first check that names it (and passes `web_check_verifier`) finds
    /// the call.
    pub web_ufrag: Option<String>,
    /// The ICE-selected browser address, once known, and our address it
    /// sends to.
    pub web_remote: Option<SocketAddr>,
    pub web_local: Option<IpAddr>,
    /// Web leg SRTP: (inbound, outbound); may arrive later (DTLS).
    pub web_srtp: Option<(SrtpContext, SrtpContext)>,
    /// SSRC to send toward the browser (the one our SDP announces), if any.
    pub web_ssrc: Option<u32>,
    /// Says whether a STUN datagram from the browser is an authentic ICE
    /// check (the call layer knows the ICE password and the STUN format);
    /// DTLS is taken only from addresses that sent one, and from
    /// `web_remote`. None: DTLS only from `web_remote`.
    pub web_check_verifier: Option<CheckVerifier>,
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

impl CallMediaSetup {
    /// A call whose browser is not known yet: SIP media by `sip_rtp_socket`
    /// (RTCP muxed) toward `sip_remote`, latching, plain RTP, through
    /// `payload_map`; its web leg on the relay's shared port (set
    /// `web_socket` for one of its own), no browser address, keys, SSRC or
    /// ICE check yet, no events. The rest is set field by field.
    pub fn new(
        sip_rtp_socket: std::net::UdpSocket,
        sip_remote: SocketAddr,
        payload_map: PayloadMap,
    ) -> Self {
        CallMediaSetup {
            web_socket: None,
            web_ufrag: None,
            web_remote: None,
            web_local: None,
            web_srtp: None,
            web_ssrc: None,
            web_check_verifier: None,
            sip_rtp_socket,
            sip_rtcp_socket: None,
            sip_remote,
            sip_remote_rtcp: None,
            sip_strict_source: false,
            sip_srtp: None,
            payload_map,
            events: None,
            leases: Vec::new(),
        }
    }
}

/// Where the SIP side's media goes now, after the far end moved it (a
/// re-INVITE or UPDATE with a new address, port, payload types or keys, or
/// the answer in an ACK to our offer).
pub struct SipFar {
    pub remote: SocketAddr,
    pub remote_rtcp: Option<SocketAddr>,
    pub strict_source: bool,
    /// New SRTP contexts (inbound, outbound) for the SIP leg, or plain RTP;
    /// `None` keeps the leg's contexts as they are (same keys: a fresh
    /// context would restart the rollover counter under the same key).
    pub srtp: Option<Option<(SrtpContext, SrtpContext)>>,
    pub payload_map: PayloadMap,
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
    /// The one web port every call's browser leg uses, if configured.
    port: Option<Arc<SharedWebPort>>,
    /// Each call's ICE ufrag and the UDP port its browser media reaches
    /// (its own or the shared one): where ICE-TCP hands a connection's
    /// datagrams. Control path only.
    web_ports_by_call: std::sync::Mutex<HashMap<u64, CallWebPort>>,
    /// Each open ICE-TCP connection's loopback socket (the browser address
    /// the relay and the call see) and the browser's TCP address behind it.
    /// Control path only: read for checks and when ICE picks a path.
    ice_tcp_peers: std::sync::Mutex<HashMap<SocketAddr, IceTcpPeer>>,
    /// What the ICE-TCP listener (if any) has done.
    ice_tcp: Arc<IceTcpCounters>,
}

/// A call's ICE ufrag and the UDP port its browser media reaches.
type CallWebPort = (Box<[u8]>, u16);

/// The two ends of a browser's ICE-TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IceTcpPeer {
    /// The browser's TCP address.
    pub browser: SocketAddr,
    /// Our address it connected to.
    pub gateway: IpAddr,
}

/// What the ICE-TCP listener (`media::ice_tcp`) did, for the metrics.
#[derive(Debug, Default)]
pub struct IceTcpCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections whose ICE check was answered with success.
    pub connected: AtomicU64,
    /// Closed before that: not a check for a known call, bad framing, no
    /// success in time, or over the connection limit.
    pub refused: AtomicU64,
    /// Datagrams dropped toward a browser whose connection could not take
    /// them, or toward the call's port when it refused them.
    pub dropped: AtomicU64,
}

/// Our ufrag in a browser's binding request (the USERNAME's first part).
pub fn check_ufrag(packet: &[u8]) -> Option<&[u8]> {
    web_port::ufrag_of(packet)
}

/// What the shared web port has dropped or steered (all calls together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebPortCounters {
    /// Datagrams from an address no call knows.
    pub unknown_source: u64,
    /// Lost for want of room (the kernel's buffer, a worker's inbox).
    pub overload: u64,
    /// Received by one worker and moved to the worker of their call.
    pub steered: u64,
}

/// How the relay's workers run (`[media] relay-io`, `relay-busy-poll-us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayOptions {
    pub io: RelayIo,
    /// After each turn, look for new datagrams without sleeping for up to
    /// this long before the worker blocks. Zero: block at once. Spinning
    /// spares the wake-up of a sleeping thread (on a virtual machine, of a
    /// halted virtual CPU) at the price of CPU time.
    pub busy_poll: std::time::Duration,
    /// One UDP port for every call's web leg, bound here (port 0: one the
    /// kernel picks), shared by the workers; `None`: each call brings its
    /// own web socket.
    pub web_port: Option<SocketAddr>,
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
        let workers = workers.max(1);
        let port = match options.web_port {
            Some(address) => Some(SharedWebPort::bind(address, workers)?),
            None => None,
        };
        for n in 0..workers {
            let worker_port = match &port {
                Some(shared) => Some(WorkerPort::new(n, shared.clone())?),
                None => None,
            };
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
                    let mut worker = Worker::new(
                        poll,
                        rx,
                        worker_calls,
                        worker_totals,
                        options.busy_poll,
                        worker_port,
                    );
                    if io == RelayIo::IoUring {
                        match RingIo::new() {
                            Ok(ring) => worker.ring = Some(ring),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "io_uring unavailable; this relay worker uses epoll"
                            ),
                        }
                    }
                    if let Err(e) = worker.start_port() {
                        tracing::error!(error = %e, "relay worker cannot receive on the web port");
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
        if let Some(port) = &port {
            port.set_wakers(links.iter().map(|l| l.waker.clone()).collect());
        }
        Ok(Arc::new(Relay {
            workers: links,
            next_id: AtomicU64::new(1),
            totals,
            port,
            web_ports_by_call: std::sync::Mutex::new(HashMap::new()),
            ice_tcp_peers: std::sync::Mutex::new(HashMap::new()),
            ice_tcp: Arc::default(),
        }))
    }

    /// The UDP port the browser media of the call whose ICE ufrag is
    /// `ufrag` reaches (see `ice_tcp`).
    pub fn web_port_for_ufrag(&self, ufrag: &[u8]) -> Option<u16> {
        self.web_ports_by_call
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|(u, _)| &**u == ufrag)
            .map(|&(_, port)| port)
    }

    /// A browser's ICE-TCP connection is bridged from our loopback socket
    /// `bridge` (see `ice_tcp`); [`Relay::forget_ice_tcp_peer`] when it
    /// closes.
    pub fn note_ice_tcp_peer(&self, bridge: SocketAddr, peer: IceTcpPeer) {
        self.ice_tcp_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bridge, peer);
    }

    pub fn forget_ice_tcp_peer(&self, bridge: SocketAddr) {
        self.ice_tcp_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&bridge);
    }

    /// The ICE-TCP connection behind `from` when `from` is the loopback
    /// socket of an open one; None for any other address.
    pub fn ice_tcp_peer(&self, from: SocketAddr) -> Option<IceTcpPeer> {
        if !from.ip().is_loopback() {
            return None;
        }
        self.ice_tcp_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&from)
            .copied()
    }

    fn web_port_for_id(&self, id: u64) -> Option<u16> {
        self.web_ports_by_call
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|&(_, port)| port)
    }

    /// Notes call `id`'s ufrag (None: forget the call), keeping its port
    /// (`udp_port` for a new call).
    fn note_web_port(&self, id: u64, ufrag: Option<&[u8]>, udp_port: u16) {
        let mut calls = self
            .web_ports_by_call
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match ufrag {
            Some(u) => {
                let port = calls.get(&id).map_or(udp_port, |&(_, p)| p);
                calls.insert(id, (u.into(), port));
            }
            None => {
                calls.remove(&id);
            }
        }
    }

    /// The ICE-TCP listener's counters (it bridges into this relay).
    pub fn ice_tcp_counters(&self) -> Arc<IceTcpCounters> {
        self.ice_tcp.clone()
    }

    /// The shared web port's address, if the relay has one.
    pub fn web_port(&self) -> Option<SocketAddr> {
        self.port.as_ref().map(|p| p.address)
    }

    /// A handle on the shared web port for the signaling side's STUN and
    /// DTLS sends (answers leave from the port the browser sent to).
    pub fn web_port_socket(&self) -> Option<io::Result<std::net::UdpSocket>> {
        self.port.as_ref().map(|p| p.control_socket())
    }

    /// What the shared web port dropped before a call was known, and
    /// steered between workers.
    pub fn web_port_counters(&self) -> WebPortCounters {
        self.port
            .as_ref()
            .map_or_else(WebPortCounters::default, |p| {
                let c = &p.counters;
                WebPortCounters {
                    unknown_source: c.unknown_source.load(Ordering::Relaxed),
                    overload: c.overload.load(Ordering::Relaxed),
                    steered: c.steered.load(Ordering::Relaxed),
                }
            })
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

    /// Calls being relayed now (on the shared web port: also those whose
    /// browser has not been heard yet).
    pub fn call_count(&self) -> usize {
        let awaiting = self.port.as_ref().map_or(0, |p| p.awaiting_count());
        awaiting
            + self
                .workers
                .iter()
                .map(|w| w.calls.load(Ordering::Relaxed))
                .sum::<usize>()
    }

    /// Hands a call to the least loaded worker; on the shared web port
    /// (no web socket in `setup`), to the worker its browser's first
    /// packet arrives at.
    pub fn add_call(self: &Arc<Self>, setup: CallMediaSetup) -> Result<CallMedia, RelayError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = setup.web_socket.is_none();
        if shared && self.port.is_none() {
            return Err(RelayError::NoWebPort);
        }
        let udp_port = match (&setup.web_socket, &self.port) {
            (Some(own), _) => own.local_addr().map(|a| a.port()).ok(),
            (None, Some(port)) => Some(port.address.port()),
            (None, None) => None,
        };
        if let (Some(ufrag), Some(udp_port)) = (&setup.web_ufrag, udp_port) {
            self.note_web_port(id, Some(ufrag.as_bytes()), udp_port);
        }
        let sip_event = setup.payload_map.sip_telephone_event();
        let stats = Arc::new(CallStats::default());
        self.totals
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, stats.clone());
        let media = |worker| CallMedia {
            id,
            worker,
            relay: self.clone(),
            stats: stats.clone(),
            sip_event,
        };
        let worker = (0..self.workers.len())
            .min_by_key(|&i| self.workers[i].calls.load(Ordering::Relaxed))
            .unwrap_or(0);
        if let (true, Some(port)) = (shared, &self.port) {
            if setup.web_remote.is_none() {
                // Placed by its browser's first check.
                port.add(id, Box::new(setup), stats.clone());
                return Ok(media(None));
            }
            port.add_placed(id, worker, &setup);
        }
        self.workers[worker].calls.fetch_add(1, Ordering::Relaxed);
        self.workers[worker].send(Control::Add(id, Box::new(setup), stats.clone()))?;
        // Controls of a call on the shared port go by its directory.
        Ok(media((!shared).then_some(worker)))
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
    /// Its worker; `None` on the shared web port, where the port's
    /// directory knows (see [`CallMedia::control`]).
    worker: Option<usize>,
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
        self.control(Control::WebRemote(self.id, addr, local), None)
    }

    /// Sends `c` to the call's worker, or on the shared web port through
    /// its directory (which applies it itself while the call waits for its
    /// browser). `ufrag`: the new one of an ICE restart.
    fn control(&self, c: Control, ufrag: Option<&str>) -> Result<(), RelayError> {
        match (self.worker, &self.relay.port) {
            (Some(worker), _) => self.relay.workers[worker].send(c),
            (None, Some(port)) => {
                let workers = &self.relay.workers;
                let gone = port.control(self.id, c, ufrag, |w, c| workers[w].send(c))?;
                if gone {
                    self.relay.totals.forget(self.id);
                }
                Ok(())
            }
            (None, None) => Err(RelayError::NoWebPort),
        }
    }

    /// An ICE restart: the browser's checks name our new `ufrag` and are
    /// signed with a new password now, which `verifier` knows; the
    /// addresses checked before are forgotten.
    pub fn set_web_ice(&self, ufrag: &str, verifier: CheckVerifier) -> Result<(), RelayError> {
        if self.relay.web_port_for_id(self.id).is_some() {
            self.relay.note_web_port(self.id, Some(ufrag.as_bytes()), 0);
        }
        self.control(Control::WebCheckVerifier(self.id, verifier), Some(ufrag))
    }

    /// The far end moved its media ([`SipFar`]): packets go to the new
    /// address from now on, the source latch starts again there, and the
    /// browser's stream keeps our numbering whatever source comes next.
    pub fn set_sip_far(&mut self, far: SipFar) -> Result<(), RelayError> {
        self.sip_event = far.payload_map.sip_telephone_event();
        self.control(Control::SipFar(self.id, Box::new(far)), None)
    }

    /// Web leg keys (inbound, outbound) once DTLS-SRTP has exported them.
    pub fn set_web_srtp(
        &self,
        inbound: SrtpContext,
        outbound: SrtpContext,
    ) -> Result<(), RelayError> {
        self.control(
            Control::WebSrtp(self.id, Box::new((inbound, outbound))),
            None,
        )
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
        self.control(
            Control::SendDtmf(self.id, digits.to_string(), duration),
            None,
        )
    }
}

impl Drop for CallMedia {
    fn drop(&mut self) {
        self.relay.note_web_port(self.id, None, 0);
        let _ = self.control(Control::Remove(self.id), None);
    }
}
