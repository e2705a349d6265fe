//! One call on a worker: its two legs, their sockets and source checks,
//! and the state the per-packet path keeps for it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Instant;

use mio::net::UdpSocket;

use super::epoll::flush;
use super::forward::{
    relay_from_sip_replying, relay_from_web_picked, relay_from_web_replying, Outgoing,
};
use super::streams::{SipOutStream, WebOutStream};
use super::CheckVerifier;
use super::{CallMediaSetup, RelayEvent, SipFar, SIP_RTCP, SIP_RTP, SOCKETS_PER_CALL, WEB};
use crate::media::batch::Batch;
use crate::media::dtmf::DtmfReceiver;
use crate::media::payload_map::PayloadMap;
use crate::media::ports::PortLease;
use crate::media::reception::ReceptionStats;
use crate::media::srtp::SrtpContext;
use crate::media::stats::{CallStats, DropCause};
use crate::media::transcode::Transcoder;

pub(super) struct WebSide {
    /// The call's own web socket; `None` on the relay's shared web port.
    pub(super) socket: Option<UdpSocket>,
    pub(super) remote: Option<SocketAddr>,
    /// Where media toward the browser leaves from: the local address of
    /// the ICE-selected pair.
    pub(super) local: Option<IpAddr>,
    /// Inbound and outbound contexts, boxed: about 8 KiB that an inline
    /// pair would take in every call's relay slot, plain RTP or not.
    pub(super) srtp: Option<SrtpPair>,
    pub(super) ssrc: Option<u32>,
    /// Browser addresses that sent us an authenticated ICE check: DTLS is
    /// taken from these (and the selected remote) only.
    pub(super) checked: CheckedSources,
    /// The address media moved away from (by the browser's own choice,
    /// [`WebSide::move_to`]) and until when its stragglers may not move it
    /// back.
    pub(super) left: Option<(SocketAddr, Instant)>,
    /// Shared web port: the browser addresses the worker routes to this
    /// call now, and the [`WebSide::route_version`] they were taken at.
    pub(super) routed: Vec<SocketAddr>,
    pub(super) routed_version: u32,
    /// Counts changes of the remote address (the checked ones count in
    /// [`CheckedSources`]).
    pub(super) remote_version: u32,
}

impl WebSide {
    /// Changes when the addresses media may come from change: the selected
    /// remote or the checked sources. The shared web port routes anew then.
    pub(super) fn route_version(&self) -> u32 {
        self.remote_version.wrapping_add(self.checked.version)
    }

    /// Every address the browser may send from now: the selected one and
    /// those that passed a check.
    pub(super) fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.remote
            .into_iter()
            .chain(self.checked.addresses.iter().flatten().copied())
    }

    /// ICE selected `addr` (or a move chose it): media goes there.
    pub(super) fn set_remote(&mut self, addr: SocketAddr, local: Option<IpAddr>) {
        self.remote = Some(addr);
        self.local = local;
        self.remote_version = self.remote_version.wrapping_add(1);
    }

    /// Whether media from `from`, not the selected address, may move the
    /// pair there (once its SRTP authenticates): it passed a check, and is
    /// not the address the media just left.
    pub(super) fn may_move_to(&self, from: SocketAddr, now: Instant) -> bool {
        self.checked.contains(from)
            && !self
                .left
                .is_some_and(|(addr, until)| addr == from && now < until)
    }

    /// The browser sends authentic media from `to`: ours goes there too,
    /// from our address `local` it sent to.
    pub(super) fn move_to(&mut self, to: SocketAddr, local: Option<IpAddr>, now: Instant) {
        if let Some(old) = self.remote {
            self.left = Some((old, now + MOVED_AWAY_FOR));
        }
        self.set_remote(to, local);
    }
}

/// Browser addresses whose ICE checks the call's verifier took as
/// authentic (a MESSAGE-INTEGRITY made with our ICE password), the last few
/// of them. The relay checks this itself, on the worker that reads the
/// packets, so a browser's DTLS ClientHello — sent once our answer to its
/// check arrives — can never overtake the news that its address passed;
/// the ICE agent still decides what the check gets back.
pub(super) struct CheckedSources {
    verifier: Option<CheckVerifier>,
    addresses: [Option<SocketAddr>; CHECKED_SOURCES],
    next: usize,
    /// Bumped whenever `addresses` changes.
    pub(super) version: u32,
}

/// The far end's RTCP address: the one its SDP gives, else RTP port + 1.
fn rtcp_beside(rtp: SocketAddr, rtcp: Option<SocketAddr>) -> SocketAddr {
    rtcp.unwrap_or_else(|| SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)))
}

/// A browser checks from a handful of candidates; older ones give way.
const CHECKED_SOURCES: usize = 8;

impl CheckedSources {
    pub(super) fn new(verifier: Option<CheckVerifier>) -> Self {
        CheckedSources {
            verifier,
            addresses: [None; CHECKED_SOURCES],
            next: 0,
            version: 0,
        }
    }

    /// An ICE restart: checks are verified by `verifier` from now on and
    /// the addresses checked before are forgotten — a change of the
    /// addresses like any other (the version goes on).
    pub(super) fn restart(&mut self, verifier: CheckVerifier) {
        self.verifier = Some(verifier);
        self.addresses = [None; CHECKED_SOURCES];
        self.next = 0;
        self.version = self.version.wrapping_add(1);
    }

    pub(super) fn contains(&self, from: SocketAddr) -> bool {
        self.addresses.contains(&Some(from))
    }

    /// Notes `from` when the verifier takes `packet` as an authentic check.
    pub(super) fn note_check(&mut self, from: SocketAddr, packet: &[u8]) {
        let Some(verifier) = self.verifier.as_ref() else {
            return;
        };
        if self.contains(from) {
            return;
        }
        let authenticated = verifier(packet);
        if authenticated {
            self.addresses[self.next] = Some(from);
            self.next = (self.next + 1) % CHECKED_SOURCES;
            self.version = self.version.wrapping_add(1);
        }
    }
}

pub(super) struct SipSide {
    pub(super) rtp: UdpSocket,
    pub(super) rtcp: Option<UdpSocket>,
    pub(super) sdp_remote: SocketAddr,
    pub(super) sdp_remote_rtcp: SocketAddr,
    pub(super) latched: Option<SocketAddr>,
    pub(super) latched_rtcp: Option<SocketAddr>,
    /// Where the media came from before the far end moved it, and until
    /// when that address may not latch again: a straggler of the old
    /// source on the same host would otherwise take the stream back, and
    /// our media with it, from a new source that waits to hear us first.
    /// Only for a while ([`MOVED_AWAY_FOR`]): behind a NAT the old source
    /// port may be the new one's too.
    pub(super) left: Option<(SocketAddr, Instant)>,
    pub(super) left_rtcp: Option<(SocketAddr, Instant)>,
    pub(super) strict: bool,
    /// As [`WebSide::srtp`]; `None` (and no memory) for plain RTP.
    pub(super) srtp: Option<SrtpPair>,
}

/// A leg's SRTP contexts, inbound then outbound, on the heap: made once
/// when keys arrive, never per packet.
pub(super) type SrtpPair = Box<(SrtpContext, SrtpContext)>;

/// How long the address a far end moved away from may not latch again.
pub(super) const MOVED_AWAY_FOR: std::time::Duration = std::time::Duration::from_secs(2);

impl SipSide {
    /// Source check on the SIP leg; latches on the first good packet.
    pub(super) fn accept_source(
        &mut self,
        from: SocketAddr,
        rtcp_socket: bool,
        now: Instant,
    ) -> bool {
        let (latched, expected, left) = if rtcp_socket {
            (&mut self.latched_rtcp, self.sdp_remote_rtcp, self.left_rtcp)
        } else {
            (&mut self.latched, self.sdp_remote, self.left)
        };
        match *latched {
            None if from != expected
                && left.is_some_and(|(addr, until)| addr == from && now < until) =>
            {
                false
            }
            Some(addr) if addr == from => true,
            // The SDP's own address wins over a port latched before it
            // spoke (the old source of a moved call, still sending).
            Some(_) if from == expected => {
                *latched = Some(from);
                true
            }
            Some(_) => false,
            None if self.strict => from == expected,
            None if from.ip() == expected.ip() => {
                *latched = Some(from);
                true
            }
            None => false,
        }
    }

    /// Whether the far end has an address to send to: none before the
    /// answer to an offer of ours in an ACK, or while it holds the call
    /// with `c=0.0.0.0` (a packet sent there would reach this very host).
    pub(super) fn has_destination(&self) -> bool {
        let to = self.rtp_destination();
        !to.ip().is_unspecified() && to.port() != 0
    }

    pub(super) fn rtp_destination(&self) -> SocketAddr {
        self.latched.unwrap_or(self.sdp_remote)
    }

    pub(super) fn rtcp_destination(&self) -> SocketAddr {
        if self.rtcp.is_some() {
            self.latched_rtcp.unwrap_or(self.sdp_remote_rtcp)
        } else {
            self.rtp_destination()
        }
    }
}

/// STUN and DTLS datagrams one call passes on per second, and the burst
/// above that: a browser's checks (a few pairs, every 50 ms at most while
/// it connects, then consent every few seconds) and a DTLS handshake's
/// flights stay well inside it.
pub(super) const CONTROL_PER_SECOND: u32 = 50;
pub(super) const CONTROL_BURST: u32 = 100;

/// A token bucket of [`CONTROL_PER_SECOND`] up to [`CONTROL_BURST`].
pub(super) struct ControlBudget {
    tokens: u32,
    refilled_at: Instant,
}

impl ControlBudget {
    pub(super) fn new(now: Instant) -> Self {
        ControlBudget {
            tokens: CONTROL_BURST,
            refilled_at: now,
        }
    }

    /// Takes one token at `now`; false when none is left.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = (elapsed.as_millis() as u64 * u64::from(CONTROL_PER_SECOND) / 1000) as u32;
        if earned > 0 {
            self.tokens = (self.tokens.saturating_add(earned)).min(CONTROL_BURST);
            // Keep the remainder: a token per 20 ms, not per whole interval.
            self.refilled_at += std::time::Duration::from_millis(
                u64::from(earned) * 1000 / u64::from(CONTROL_PER_SECOND),
            );
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

pub(super) struct RelayedCall {
    pub(super) id: u64,
    pub(super) web: WebSide,
    pub(super) sip: SipSide,
    pub(super) map: PayloadMap,
    /// The codec states of a call whose legs share no codec (made when
    /// the map asks for transcoding, kept while it asks for the same).
    pub(super) transcoder: Option<Box<Transcoder>>,
    pub(super) stats: Arc<CallStats>,
    pub(super) events: Option<SyncSender<RelayEvent>>,
    /// Kernel drop counts last seen per socket kind (cumulative, wrapping).
    pub(super) kernel_drops_seen: [u32; SOCKETS_PER_CALL],
    /// What arrives from the browser and from the SIP peer.
    pub(super) web_reception: ReceptionStats,
    pub(super) sip_reception: ReceptionStats,
    /// Clock rate of the last RTP packet from each side (for RTCP jitter).
    pub(super) web_clock: u32,
    pub(super) sip_clock: u32,
    pub(super) sip_out: SipOutStream,
    pub(super) web_out: WebOutStream,
    pub(super) dtmf_in: DtmfReceiver,
    /// What this call may hand the control side of STUN and DTLS: a flood
    /// aimed at one call's port is dropped here, before it can fill the
    /// queue every call's ICE checks and handshakes share.
    pub(super) control_budget: ControlBudget,
    /// io_uring mode: receives armed on this call's sockets, and whether the
    /// call is leaving (its sockets close once no receive is left).
    pub(super) armed: u8,
    pub(super) leaving: bool,
    pub(super) _leases: Vec<PortLease>,
}

impl RelayedCall {
    /// A call's state from its setup: sockets made non-blocking (and the
    /// web one told to report each datagram's local address: the browser
    /// may talk to any of ours), legs as the setup says, nothing latched.
    pub(super) fn new(id: u64, setup: CallMediaSetup, stats: Arc<CallStats>) -> io::Result<Self> {
        let web = match setup.web_socket {
            Some(socket) => {
                let web_ipv6 = socket.local_addr()?.is_ipv6();
                crate::media::batch::enable_local_address(socket.as_raw_fd(), web_ipv6)?;
                Some(UdpSocket::from_std(nonblocking(socket)?))
            }
            None => None,
        };
        let sip_rtp = UdpSocket::from_std(nonblocking(setup.sip_rtp_socket)?);
        let sip_rtcp = match setup.sip_rtcp_socket {
            Some(s) => Some(UdpSocket::from_std(nonblocking(s)?)),
            None => None,
        };
        let sdp_remote_rtcp = rtcp_beside(setup.sip_remote, setup.sip_remote_rtcp);
        let now = Instant::now();
        Ok(RelayedCall {
            id,
            web: WebSide {
                socket: web,
                remote: setup.web_remote,
                local: setup.web_local,
                srtp: setup.web_srtp.map(Box::new),
                ssrc: setup.web_ssrc,
                checked: CheckedSources::new(setup.web_check_verifier),
                left: None,
                routed: Vec::new(),
                routed_version: 0,
                // Not the routed version: a call placed with an address
                // routes it at once.
                remote_version: 1,
            },
            sip: SipSide {
                rtp: sip_rtp,
                rtcp: sip_rtcp,
                sdp_remote: setup.sip_remote,
                sdp_remote_rtcp,
                latched: None,
                latched_rtcp: None,
                left: None,
                left_rtcp: None,
                strict: setup.sip_strict_source,
                srtp: setup.sip_srtp.map(Box::new),
            },
            transcoder: transcoder_for(&setup.payload_map, None),
            map: setup.payload_map,
            stats,
            events: setup.events,
            kernel_drops_seen: [0; SOCKETS_PER_CALL],
            web_reception: ReceptionStats::new(now),
            sip_reception: ReceptionStats::new(now),
            web_clock: 0,
            sip_clock: 0,
            sip_out: SipOutStream::new(id),
            web_out: WebOutStream::new(),
            dtmf_in: DtmfReceiver::default(),
            control_budget: ControlBudget::new(now),
            armed: 0,
            leaving: false,
            _leases: setup.leases,
        })
    }

    /// The far end moved its media: new addresses, payload types and
    /// (when they changed) keys; the latch starts again at the new address.
    pub(super) fn move_sip_far(&mut self, far: SipFar) {
        let sip = &mut self.sip;
        let until = Instant::now() + MOVED_AWAY_FOR;
        sip.left = Some((sip.rtp_destination(), until));
        sip.left_rtcp = Some((sip.latched_rtcp.unwrap_or(sip.sdp_remote_rtcp), until));
        sip.sdp_remote = far.remote;
        sip.sdp_remote_rtcp = rtcp_beside(far.remote, far.remote_rtcp);
        sip.latched = None;
        sip.latched_rtcp = None;
        sip.strict = far.strict_source;
        if let Some(srtp) = far.srtp {
            sip.srtp = srtp.map(Box::new);
        }
        self.transcoder = transcoder_for(&far.payload_map, self.transcoder.take());
        self.map = far.payload_map;
    }

    pub(super) fn fd(&self, kind: usize) -> Option<std::os::fd::RawFd> {
        match kind {
            WEB => self.web.socket.as_ref().map(|s| s.as_raw_fd()),
            SIP_RTP => Some(self.sip.rtp.as_raw_fd()),
            _ => self.sip.rtcp.as_ref().map(|s| s.as_raw_fd()),
        }
    }

    /// Socket kinds this call has.
    pub(super) fn kinds(&self) -> &'static [usize] {
        match (self.web.socket.is_some(), self.sip.rtcp.is_some()) {
            (true, true) => &[WEB, SIP_RTP, SIP_RTCP],
            (true, false) => &[WEB, SIP_RTP],
            (false, true) => &[SIP_RTP, SIP_RTCP],
            (false, false) => &[SIP_RTP],
        }
    }

    /// Counts the kernel's drops on socket `kind`, from the cumulative
    /// count reported with its last receive (if one was).
    pub(super) fn note_kernel_drops(&mut self, kind: usize, reported: Option<u32>) {
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
    pub(super) fn relay(&mut self, batch: &mut Batch, n: usize, kind: usize) -> Relayed {
        if kind == WEB {
            let mut replies = Outgoing::new();
            let (rtp, rtcp) = relay_from_web_replying(self, batch, n, &mut replies);
            Relayed {
                to_web: false,
                main: rtp,
                rtcp,
                replies,
            }
        } else {
            let mut replies = Outgoing::new();
            let main = relay_from_sip_replying(self, batch, n, kind == SIP_RTCP, &mut replies);
            Relayed {
                to_web: true,
                main,
                rtcp: Outgoing::new(),
                replies,
            }
        }
    }

    /// The call's datagrams from the shared web port in the batch slots
    /// `picked` (slots from `spare_from` on are free); as
    /// [`RelayedCall::relay`] for its own web socket.
    pub(super) fn relay_web_picked(
        &mut self,
        batch: &mut Batch,
        picked: &[usize],
        spare_from: usize,
    ) -> Relayed {
        let mut replies = Outgoing::new();
        let (main, rtcp) = relay_from_web_picked(self, batch, picked, spare_from, &mut replies);
        Relayed {
            to_web: false,
            main,
            rtcp,
            replies,
        }
    }

    /// Sends what [`RelayedCall::relay`] chose with `sendmmsg` (epoll
    /// mode); toward the browser by the call's web socket, else by
    /// `shared_web` (the worker's socket on the shared web port).
    pub(super) fn flush(&self, batch: &mut Batch, out: &Relayed, shared_web: Option<&UdpSocket>) {
        let web = self.web.socket.as_ref().or(shared_web);
        let web_out = |batch: &mut Batch, list: &Outgoing| match web {
            Some(socket) => flush(batch, socket, list, &self.stats.web),
            None => self
                .stats
                .web
                .dropped_many(DropCause::NotReady, list.count as u64),
        };
        if out.to_web {
            web_out(batch, &out.main);
            let rtcp = self.sip.rtcp.as_ref().unwrap_or(&self.sip.rtp);
            flush(batch, rtcp, &out.replies, &self.stats.sip);
        } else {
            flush(batch, &self.sip.rtp, &out.main, &self.stats.sip);
            if let Some(rtcp) = &self.sip.rtcp {
                flush(batch, rtcp, &out.rtcp, &self.stats.sip);
            }
            web_out(batch, &out.replies);
        }
    }
}

/// The transcoder `map` needs: `current` when it already transcodes the
/// same types (its codec states go on), a new one when the types changed,
/// none for pass-through. Made on the control path, never per packet; if
/// libopus cannot make one, the call's audio is dropped and counted as an
/// unmapped payload type rather than passed through mislabelled.
fn transcoder_for(map: &PayloadMap, current: Option<Box<Transcoder>>) -> Option<Box<Transcoder>> {
    let spec = map.transcode()?;
    match current {
        Some(t) if t.spec() == spec => Some(t),
        _ => match Transcoder::new(spec) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = ?e, "cannot make the call's transcoder");
                None
            }
        },
    }
}

/// A relayed batch's datagrams to send: toward the browser (by the web
/// socket) or toward the SIP peer (RTP socket, and RTCP socket if any).
pub(super) struct Relayed {
    pub(super) to_web: bool,
    pub(super) main: Outgoing,
    pub(super) rtcp: Outgoing,
    /// Datagrams going back the way the batch came (our RTCP receiver
    /// reports answering a transcoded call's sender reports).
    pub(super) replies: Outgoing,
}

/// Kernel buffer per relay socket: a few hundred packets of slack for bursts.
pub(super) const SOCKET_BUFFER_BYTES: usize = 512 * 1024;

pub(super) fn nonblocking(s: std::net::UdpSocket) -> io::Result<std::net::UdpSocket> {
    s.set_nonblocking(true)?;
    // Best effort: a smaller buffer than asked for still works, and without
    // the drop counter only kernel-side overload goes uncounted per call.
    let _ = crate::media::batch::set_buffer_sizes(
        s.as_raw_fd(),
        SOCKET_BUFFER_BYTES,
        SOCKET_BUFFER_BYTES,
    );
    let _ = crate::media::batch::enable_drop_counter(s.as_raw_fd());
    Ok(s)
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_control_budget_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut budget = ControlBudget::new(t0);
        let taken = (0..1000).filter(|_| budget.take(t0)).count();
        assert_eq!(taken, CONTROL_BURST as usize);
        // One second later: a second's worth more.
        let t1 = t0 + Duration::from_secs(1);
        let taken = (0..1000).filter(|_| budget.take(t1)).count();
        assert_eq!(taken, CONTROL_PER_SECOND as usize);
        // A token every 20 ms, not lost to rounding.
        let mut at = t1;
        let mut got = 0;
        for _ in 0..50 {
            at += Duration::from_millis(10);
            got += usize::from(budget.take(at));
        }
        assert_eq!(got, 25);
        // Idle for an hour: back to the burst, no more.
        let later = at + Duration::from_secs(3600);
        assert_eq!(
            (0..1000).filter(|_| budget.take(later)).count(),
            CONTROL_BURST as usize
        );
    }
}
