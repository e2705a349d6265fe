//! The io_uring loop (over `media::ring`): a multishot receive armed on
//! every socket, a turn's sends submitted with the wait for the next
//! completions.

use std::os::fd::AsRawFd;

use mio::Events;

use super::call::{Relayed, RelayedCall};
use super::worker::{spin_until, Worker};
use super::{PORT_SLOT, SIP_RTCP, SIP_RTP, SOCKETS_PER_CALL, WEB};
use crate::media::batch::{Batch, BATCH};
use crate::media::ring;
use crate::media::stats::DropCause;

/// io_uring mode: completions handled between two submits (each received
/// datagram may queue one send; the ring has far more send slots).
pub(super) const COMPLETIONS_PER_TURN: usize = 256;

/// io_uring mode: a socket's name in the ring (slot and kind, as mio tokens).
pub(super) fn token(slot: usize, kind: usize) -> u32 {
    (slot * SOCKETS_PER_CALL + kind) as u32
}

pub(super) fn socket_of(token: u32) -> (usize, usize) {
    let t = token as usize;
    (t / SOCKETS_PER_CALL, t % SOCKETS_PER_CALL)
}

impl Worker {
    /// The io_uring loop: one `io_uring_enter` per turn submits the last
    /// turn's sends and waits for completions; each completion is a
    /// datagram (relayed in runs per socket), a send's outcome, a receive
    /// that ended, or the waker.
    pub(super) fn run_ring(mut self) {
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
            self.relay_steered();
            self.ring_turn(waker_fd, &mut events);
            if !self.dtmf_slots.is_empty() {
                self.send_dtmf(std::time::Instant::now());
            }
        }
        // Receives end before sockets close and ports return.
        self.ring = None;
    }

    /// Handles the completions waiting now (at most a bounded number, so
    /// sends go out and send slots come back between runs of them).
    pub(super) fn ring_turn(&mut self, waker_fd: std::os::fd::RawFd, events: &mut Events) {
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
    pub(super) fn ring_relay(&mut self, socket: Option<(usize, usize)>, count: usize) {
        // Taken here whatever happens next, so a count never passes to
        // another socket's run.
        if socket == Some((PORT_SLOT, WEB)) && self.port.is_some() {
            self.note_port_drops();
            if count > 0 {
                self.relay_from_port(count, false);
            }
            return;
        }
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
        queue_relayed(ring, &self.batch, slot, call, &out);
    }

    /// A receive on `socket` has ended (`errno` 0: after a datagram): armed
    /// again, or, for a leaving call, one fewer to wait for before its
    /// sockets may close. An unexpected error is not retried, so a socket
    /// the kernel keeps refusing cannot spin the worker; the call then ends
    /// by its media timeout.
    pub(super) fn recv_ended(&mut self, (slot, kind): (usize, usize), errno: i32) {
        if (slot, kind) == (PORT_SLOT, WEB) {
            if let (Some(ring), Some(port)) = (self.ring.as_mut(), self.port.as_mut()) {
                port.armed = false;
                if matches!(errno, 0 | libc::ENOBUFS | libc::EINTR | libc::EAGAIN) {
                    match ring.arm_recv(token(PORT_SLOT, WEB)) {
                        Ok(()) => port.armed = true,
                        Err(e) => {
                            tracing::error!(error = %e, "relay cannot arm the web port's receive again")
                        }
                    }
                } else {
                    tracing::error!(
                        errno,
                        "relay receive on the web port failed; this worker takes no more from it"
                    );
                }
                return;
            }
        }
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
}

/// Queues the sends [`RelayedCall::relay`] (or its shared-port form) chose
/// for the call in `slot`: toward the browser by its web socket or the
/// shared port's, toward the SIP side by its RTP or RTCP socket.
pub(super) fn queue_relayed(
    ring: &mut crate::media::ring::RingIo,
    batch: &Batch,
    slot: usize,
    call: &RelayedCall,
    out: &Relayed,
) {
    let web_socket = if call.web.socket.is_some() {
        token(slot, WEB)
    } else {
        token(PORT_SLOT, WEB)
    };
    let sip_rtcp = if call.sip.rtcp.is_some() {
        token(slot, SIP_RTCP)
    } else {
        token(slot, SIP_RTP)
    };
    let (main, rtcp, replies) = if out.to_web {
        (web_socket, web_socket, sip_rtcp)
    } else {
        (token(slot, SIP_RTP), sip_rtcp, web_socket)
    };
    for (socket, list, web) in [
        (main, &out.main, out.to_web),
        (rtcp, &out.rtcp, out.to_web),
        (replies, &out.replies, !out.to_web),
    ] {
        let leg = if web {
            &call.stats.web
        } else {
            &call.stats.sip
        };
        for &i in &list.order[..list.count] {
            let len = batch.lens[i];
            let queued = batch.addrs[i].is_some_and(|to| {
                let tag = ring::SendTag {
                    slot: slot as u32,
                    call: call.id,
                    web,
                    len: len as u32,
                };
                ring.queue_send(socket, &batch.bufs[i][..len], to, batch.locals[i], tag)
            });
            if !queued {
                leg.dropped(DropCause::Overload);
            }
        }
    }
}
