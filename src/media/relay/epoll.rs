//! The epoll loop: mio readiness, then `recvmmsg`/`sendmmsg` per socket.

use std::io;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use mio::Events;

use super::forward::Outgoing;
use super::worker::{spin_until, Worker, BATCHES_PER_TURN};
use super::{PORT_SLOT, SIP_RTP, SOCKETS_PER_CALL, WAKER, WEB};
use crate::media::batch::{Batch, BATCH};
use crate::media::stats::{DropCause, LegStats};

impl Worker {
    pub(super) fn run(mut self) {
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
            self.relay_steered();
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

    /// Reads a socket until it is empty (mio is edge-triggered) or its turn
    /// is used up, relaying each batch as it arrives. Returns true when data
    /// may be left for a later turn.
    pub(super) fn drain(&mut self, slot: usize, kind: usize) -> bool {
        if slot == PORT_SLOT && kind == WEB && self.port.is_some() {
            return self.drain_port();
        }
        let Some(call) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let shared_web = self.port.as_ref().map(|p| &p.socket);
        for _ in 0..BATCHES_PER_TURN {
            let fd = match kind {
                WEB => match &call.web.socket {
                    Some(s) => s.as_raw_fd(),
                    None => return false,
                },
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
            call.flush(&mut self.batch, &out, shared_web);
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

impl Worker {
    /// Reads the shared web port's socket as [`Worker::drain`] reads a
    /// call's: every batch goes to its calls (see `web_port`).
    fn drain_port(&mut self) -> bool {
        for _ in 0..BATCHES_PER_TURN {
            let Some(port) = self.port.as_ref() else {
                return false;
            };
            let n = match self.batch.recv(port.socket.as_raw_fd()) {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            self.note_port_drops();
            self.relay_from_port(n, false);
            if n < BATCH {
                return false;
            }
        }
        true
    }
}

/// Sends the selected datagrams of the batch by `socket`; what the kernel
/// does not take now is dropped and counted (a burst never stalls a stream).
pub(super) fn flush(batch: &mut Batch, socket: &UdpSocket, out: &Outgoing, stats: &LegStats) {
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
