//! ICE-TCP, passive (RFC 6544), for browsers that cannot send UDP to us
//! (`[media] web-tcp-port`).
//!
//! Our SDP carries a `tcptype passive` host candidate per address on the
//! TCP port, ranked below UDP, so a browser falls back to it only when its
//! UDP checks fail. A browser connects and sends its checks, then DTLS and
//! SRTP, each datagram framed with a 16-bit length (RFC 4571). A connection
//! is bridged to the call's UDP web port (its own, or the shared one) over
//! loopback: its first frame must be a binding request whose USERNAME
//! names a call's ufrag; from then on every frame goes to that port as a
//! datagram from a loopback socket of the connection's own, and every
//! datagram back is framed onto the connection. The relay, the ICE agent
//! and DTLS see one more browser address (that socket) and need nothing
//! new: the check is verified there as any other, the pair selected, the
//! media relayed with the same SRTP. One extra loopback hop per packet for
//! the few browsers that need TCP, in exchange for no second media path to
//! keep right.
//!
//! Bounds: a frame larger than any datagram we carry ends the connection;
//! toward the browser at most [`PENDING_BYTES`] wait for the socket (more
//! is dropped, not queued: media late is media lost); a connection whose
//! first frame is not a check for a call, or that has no ICE success
//! answer within [`ICE_DEADLINE`], is closed, as is one idle for
//! [`IDLE_LIMIT`]; at most [`MAX_CONNECTIONS`] at once. Written here: the
//! framing is a length prefix, and the bridge is a small tokio loop over
//! buffers it owns (nothing allocated per frame).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};

pub use super::relay::IceTcpCounters;
use super::relay::{IceTcpPeer, Relay};

/// The largest frame taken: a datagram of ours or a browser's (STUN, DTLS
/// records, SRTP) is far below; anything larger is not ICE-TCP.
pub const MAX_FRAME: usize = 1600;
/// Bytes waiting to go to a browser whose connection is slow; a datagram
/// that would pass this is dropped.
pub const PENDING_BYTES: usize = 64 * 1024;
/// A connection must have an ICE check answered with success by then.
pub const ICE_DEADLINE: Duration = Duration::from_secs(5);
/// A connection with nothing either way for this long is closed (consent
/// checks come every few seconds on a live one).
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Connections bridged at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 4096;

/// RFC 4571 framing over a fixed buffer: bytes in, whole frames out.
pub struct Deframer {
    buf: Box<[u8; 2 + MAX_FRAME]>,
    filled: usize,
}

/// A stream that is not RFC 4571 framing of datagrams we could carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an ICE-TCP frame of {0} bytes is larger than any datagram carried")]
pub struct FrameTooLarge(pub usize);

impl Default for Deframer {
    fn default() -> Self {
        Deframer {
            buf: Box::new([0; 2 + MAX_FRAME]),
            filled: 0,
        }
    }
}

impl Deframer {
    /// Where the next bytes read go (never empty while no whole frame
    /// waits: take frames first).
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }

    /// `n` bytes were read into [`Deframer::space`].
    pub fn filled(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// The length of the frame at the front when it is all in, or an
    /// error when its length cannot be one of ours.
    fn front(&self) -> Result<Option<usize>, FrameTooLarge> {
        if self.filled < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len > MAX_FRAME {
            return Err(FrameTooLarge(len));
        }
        Ok((self.filled >= 2 + len).then_some(len))
    }

    /// The whole frame at the front, if there is one (see
    /// [`Deframer::consume`]).
    pub fn frame(&self) -> Result<Option<&[u8]>, FrameTooLarge> {
        Ok(self.front()?.map(|len| &self.buf[2..2 + len]))
    }

    /// Drops the frame at the front.
    pub fn consume(&mut self) {
        if let Ok(Some(len)) = self.front() {
            self.buf.copy_within(2 + len..self.filled, 0);
            self.filled -= 2 + len;
        }
    }
}

/// Datagrams framed for the browser, waiting for its connection.
struct Pending {
    buf: Vec<u8>,
}

impl Pending {
    /// Frames `datagram` behind what waits; false (dropped) when it would
    /// not fit.
    fn push(&mut self, datagram: &[u8]) -> bool {
        if datagram.len() > MAX_FRAME || self.buf.len() + 2 + datagram.len() > PENDING_BYTES {
            return false;
        }
        self.buf
            .extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(datagram);
        true
    }
}

/// Whether `packet` is a STUN binding success response (a check of the
/// browser's answered: ICE passed on this connection).
fn is_binding_success(packet: &[u8]) -> bool {
    packet.len() >= 20 && packet[0] == 0x01 && packet[1] == 0x01
}

/// A loopback socket of the connection's own, connected to the call's UDP
/// `port`: the tokio side to receive on, and a plain handle to send with
/// (a send that cannot go at once is dropped, not awaited; tokio's own
/// would refuse until it had seen the socket writable).
fn socket_toward(port: u16) -> Option<(UdpSocket, std::net::UdpSocket)> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let socket = std::net::UdpSocket::bind(SocketAddr::new(loopback, 0)).ok()?;
    socket.connect(SocketAddr::new(loopback, port)).ok()?;
    socket.set_nonblocking(true).ok()?;
    let sender = socket.try_clone().ok()?;
    Some((UdpSocket::from_std(socket).ok()?, sender))
}

/// Takes ICE-TCP connections on `listener` until `shutdown` says so.
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    counters: Arc<IceTcpCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, from)) = accepted else {
            // Out of descriptors or a connection reset before accept:
            // breathe, then go on.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (relay, counters) = (relay.clone(), counters.clone());
        tokio::spawn(async move {
            let outcome = bridge(stream, from, &relay, &counters).await;
            tracing::debug!(browser = %from, outcome, "ICE-TCP connection closed");
            drop(slot);
        });
    }
}

/// While it lives, the relay knows which browser a bridge's loopback
/// socket stands for: checks over TCP are answered with the browser's own
/// address (XOR-MAPPED-ADDRESS), as over UDP — Firefox refuses an answer
/// that names a loopback address it never sent from — and the call's view
/// shows it.
struct NotedPeer<'a> {
    relay: &'a Relay,
    bridge: SocketAddr,
}

impl<'a> NotedPeer<'a> {
    fn new(relay: &'a Relay, bridge: SocketAddr, browser: SocketAddr, gateway: IpAddr) -> Self {
        // A dual-stack listener sees IPv4 addresses as `::ffff:a.b.c.d`.
        let peer = IceTcpPeer {
            browser: SocketAddr::new(browser.ip().to_canonical(), browser.port()),
            gateway: gateway.to_canonical(),
        };
        relay.note_ice_tcp_peer(bridge, peer);
        NotedPeer { relay, bridge }
    }
}

impl Drop for NotedPeer<'_> {
    fn drop(&mut self) {
        self.relay.forget_ice_tcp_peer(self.bridge);
    }
}

/// One browser connection from `browser`, bridged to its call's UDP port
/// until it ends; says why it ended.
async fn bridge(
    stream: TcpStream,
    browser: SocketAddr,
    relay: &Relay,
    counters: &IceTcpCounters,
) -> &'static str {
    let _ = stream.set_nodelay(true);
    let refused = |why| {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        why
    };
    let Ok(gateway) = stream.local_addr() else {
        return refused("closed before a check");
    };
    let (mut from_browser, to_browser) = stream.into_split();
    let mut frames = Deframer::default();
    // The first frame names the call.
    let first = tokio::time::timeout(ICE_DEADLINE, async {
        loop {
            match frames.frame() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(_) => return Err("a frame too large"),
            }
            match from_browser.read(frames.space()).await {
                Ok(0) | Err(_) => return Err("closed before a check"),
                Ok(n) => frames.filled(n),
            }
        }
    })
    .await;
    match first {
        Err(_) => return refused("no check in time"),
        Ok(Err(why)) => return refused(why),
        Ok(Ok(())) => {}
    }
    let Ok(Some(check)) = frames.frame() else {
        return refused("no check");
    };
    let Some(port) = super::relay::check_ufrag(check).and_then(|u| relay.web_port_for_ufrag(u))
    else {
        return refused("not a check for a call");
    };
    let Some((udp, sender)) = socket_toward(port) else {
        return refused("no socket toward the call");
    };
    let Ok(bridge_address) = udp.local_addr() else {
        return refused("no socket toward the call");
    };
    let _noted = NotedPeer::new(relay, bridge_address, browser, gateway.ip());
    let started = tokio::time::Instant::now();
    let mut last_heard = started;
    let mut ice_ok = false;
    let mut pending = Pending {
        buf: Vec::with_capacity(PENDING_BYTES),
    };
    let mut datagram = [0u8; MAX_FRAME];
    loop {
        // Every whole frame in goes on as a datagram.
        loop {
            match frames.frame() {
                Ok(Some(frame)) => {
                    // A plain non-blocking send: dropped, never waited for.
                    if sender.send(frame).is_err() {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    frames.consume();
                }
                Ok(None) => break,
                Err(_) => {
                    return if ice_ok {
                        "a frame too large"
                    } else {
                        refused("a frame too large")
                    }
                }
            }
        }
        let deadline = if ice_ok {
            last_heard + IDLE_LIMIT
        } else {
            started + ICE_DEADLINE
        };
        tokio::select! {
            read = from_browser.read(frames.space()) => match read {
                Ok(0) | Err(_) => return if ice_ok { "closed" } else { refused("closed before ICE") },
                Ok(n) => {
                    frames.filled(n);
                    last_heard = tokio::time::Instant::now();
                }
            },
            got = udp.recv(&mut datagram) => match got {
                Ok(n) => {
                    if !ice_ok && is_binding_success(&datagram[..n]) {
                        ice_ok = true;
                        counters.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    if !pending.push(&datagram[..n]) {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The call's port is gone (the call ended).
                Err(_) => return if ice_ok { "the call ended" } else { refused("the call ended") },
            },
            ready = to_browser.writable(), if !pending.buf.is_empty() => {
                if ready.is_err() {
                    return "closed";
                }
                match to_browser.try_write(&pending.buf) {
                    Ok(n) => {
                        pending.buf.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return "closed",
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return if ice_ok { "idle" } else { refused("no ICE success in time") };
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u16).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// Frames come out whole and in order whatever the reads cut them
    /// into, one byte at a time included.
    #[test]
    fn frames_survive_any_cutting() {
        let sent: Vec<Vec<u8>> = (0..20u8).map(|k| vec![k; usize::from(k) * 37]).collect();
        let refs: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        let stream = framed(&refs);
        for chunk in [1, 2, 3, 7, 100, stream.len()] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let space = d.space();
                let n = chunk.min(space.len()).min(stream.len() - at);
                space[..n].copy_from_slice(&stream[at..at + n]);
                d.filled(n);
                at += n;
                while let Ok(Some(f)) = d.frame() {
                    got.push(f.to_vec());
                    d.consume();
                }
            }
            assert_eq!(got, sent, "cut every {chunk} bytes");
        }
    }

    #[test]
    fn a_frame_longer_than_any_datagram_is_refused() {
        let mut d = Deframer::default();
        d.space()[..2].copy_from_slice(&2000u16.to_be_bytes());
        d.filled(2);
        assert_eq!(d.frame(), Err(FrameTooLarge(2000)));
        // The largest taken fits the buffer.
        let mut d = Deframer::default();
        let big = framed(&[&[9u8; MAX_FRAME]]);
        d.space()[..big.len()].copy_from_slice(&big);
        d.filled(big.len());
        assert_eq!(d.frame().unwrap().map(<[u8]>::len), Some(MAX_FRAME));
    }

    #[test]
    fn what_waits_for_a_slow_browser_is_bounded() {
        let mut p = Pending {
            buf: Vec::with_capacity(PENDING_BYTES),
        };
        let datagram = [0u8; 1000];
        let taken = (0..100).filter(|_| p.push(&datagram)).count();
        assert_eq!(taken, PENDING_BYTES / 1002);
        assert!(p.buf.len() <= PENDING_BYTES);
        assert_eq!(p.buf.capacity(), PENDING_BYTES, "never grown");
    }
}
