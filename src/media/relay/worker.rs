//! A relay worker: its calls in slots (a socket's token names its slot),
//! the control messages that add, change and remove them, and busy
//! polling. The loops that move datagrams are `epoll` and `uring`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use mio::{Interest, Poll, Token};

use super::call::RelayedCall;
use super::control::Control;
use super::uring::token;
use super::web_port::WorkerPort;
use super::{CallMediaSetup, Totals, PORT_SLOT, SIP_RTCP, SIP_RTP, SOCKETS_PER_CALL, WEB};
use crate::media::batch::Batch;
use crate::media::dtmf::DtmfSender;
use crate::media::ring::RingIo;
use crate::media::stats::CallStats;

pub(super) struct Worker {
    /// io_uring mode. First field, so dropped first: its receives end before
    /// any socket of a call closes and returns its port.
    pub(super) ring: Option<RingIo>,
    pub(super) poll: Poll,
    pub(super) control: Receiver<Control>,
    pub(super) load: Arc<AtomicUsize>,
    pub(super) totals: Arc<Totals>,
    pub(super) slots: Vec<Option<RelayedCall>>,
    pub(super) free_slots: Vec<usize>,
    pub(super) by_id: HashMap<u64, usize>,
    pub(super) batch: Batch,
    /// Sockets left with data when their turn's budget ran out.
    pub(super) pending: Vec<(usize, usize)>,
    /// Calls with DTMF digits being sent.
    pub(super) dtmf_slots: Vec<usize>,
    /// How long to look for work without sleeping after a turn.
    pub(super) busy_poll: std::time::Duration,
    /// This worker's socket on the shared web port, if the relay has one
    /// (then slot 0 is the port's: no call takes it).
    pub(super) port: Option<WorkerPort>,
}

/// Batches one socket may move per turn before the others get theirs: a
/// flood on one call delays the rest by at most this much work.
pub(super) const BATCHES_PER_TURN: usize = 8;

/// Busy polling: asks `found` until it says yes (true) or `until` passes
/// (false).
pub(super) fn spin_until(until: std::time::Instant, mut found: impl FnMut() -> bool) -> bool {
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
    pub(super) fn new(
        poll: Poll,
        control: Receiver<Control>,
        load: Arc<AtomicUsize>,
        totals: Arc<Totals>,
        busy_poll: std::time::Duration,
        port: Option<WorkerPort>,
    ) -> Self {
        // The port's socket has slot 0's web token: no call may take it.
        let slots = if port.is_some() {
            vec![None]
        } else {
            Vec::new()
        };
        Worker {
            poll,
            control,
            load,
            totals,
            slots,
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            batch: Batch::new(),
            pending: Vec::new(),
            dtmf_slots: Vec::new(),
            busy_poll,
            ring: None,
            port,
        }
    }

    /// Registers the port's socket with this worker's epoll, or arms its
    /// receive in io_uring mode (call once the loop is chosen).
    pub(super) fn start_port(&mut self) -> io::Result<()> {
        let Some(port) = self.port.as_mut() else {
            return Ok(());
        };
        match self.ring.as_mut() {
            Some(ring) => {
                use std::os::fd::AsRawFd;
                ring.attach(token(PORT_SLOT, WEB), port.socket.as_raw_fd());
                ring.arm_recv(token(PORT_SLOT, WEB))?;
                port.armed = true;
            }
            None => self.poll.registry().register(
                &mut port.socket,
                Token(PORT_SLOT * SOCKETS_PER_CALL + WEB),
                Interest::READABLE,
            )?,
        }
        Ok(())
    }

    /// Until when to look for work without sleeping before a wait of
    /// `timeout` (None: no busy polling, or a wait that does not sleep).
    pub(super) fn spin_deadline(
        &self,
        now: std::time::Instant,
        timeout: Option<std::time::Duration>,
    ) -> Option<std::time::Instant> {
        let spin = timeout.map_or(self.busy_poll, |t| t.min(self.busy_poll));
        (!spin.is_zero()).then(|| now + spin)
    }

    /// Applies a control message; false means stop.
    pub(super) fn apply(&mut self, c: Control) -> bool {
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
                    self.unroute(slot);
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
                            if let Some(s) = call.web.socket.as_mut() {
                                let _ = registry.deregister(s);
                            }
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
                    // ICE's choice overrides any move media made.
                    call.web.set_remote(addr, local);
                    call.web.left = None;
                }
            }
            Control::WebCheckVerifier(id, verifier) => {
                if let Some(call) = self.call_mut(id) {
                    call.web.checked.restart(verifier);
                }
            }
            Control::SipFar(id, far) => {
                if let Some(call) = self.call_mut(id) {
                    call.move_sip_far(*far);
                }
            }
            Control::WebSrtp(id, keys) => {
                if let Some(call) = self.call_mut(id) {
                    call.web.srtp = Some(keys);
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

    pub(super) fn call_mut(&mut self, id: u64) -> Option<&mut RelayedCall> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot].as_mut()
    }

    pub(super) fn add(
        &mut self,
        id: u64,
        setup: CallMediaSetup,
        stats: Arc<CallStats>,
    ) -> io::Result<()> {
        // Sockets are set up before a slot is taken, so a failure leaves
        // none behind.
        let mut call = RelayedCall::new(id, setup, stats)?;
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
            match call.web.socket.as_mut() {
                Some(s) => registry.register(s, Token(base + WEB), Interest::READABLE),
                None => Ok(()),
            }
            .and_then(|_| {
                registry.register(&mut call.sip.rtp, Token(base + SIP_RTP), Interest::READABLE)
            })
            .and_then(|_| match call.sip.rtcp.as_mut() {
                Some(s) => registry.register(s, Token(base + SIP_RTCP), Interest::READABLE),
                None => Ok(()),
            })
        };
        if let Err(e) = registered {
            if let Some(s) = call.web.socket.as_mut() {
                let _ = registry.deregister(s);
            }
            let _ = registry.deregister(&mut call.sip.rtp);
            if let Some(s) = call.sip.rtcp.as_mut() {
                let _ = registry.deregister(s);
            }
            self.free_slots.push(slot);
            return Err(e);
        }
        self.slots[slot] = Some(call);
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
    pub(super) fn release(&mut self, slot: usize) {
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
}
