//! What reaches a worker from the signaling side: one channel and a waker
//! per worker; a few messages per call, never per packet.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::Waker;

use super::{CallMediaSetup, RelayError, SipFar};
use crate::media::srtp::SrtpContext;
use crate::media::stats::CallStats;
use std::net::{IpAddr, SocketAddr};

pub(super) enum Control {
    Add(u64, Box<CallMediaSetup>, Arc<CallStats>),
    Remove(u64),
    WebRemote(u64, SocketAddr, Option<IpAddr>),
    /// An ICE restart: checks are signed with a new password from now on.
    WebCheckVerifier(u64, super::CheckVerifier),
    WebSrtp(u64, Box<(SrtpContext, SrtpContext)>),
    SipFar(u64, Box<SipFar>),
    SendDtmf(u64, String, std::time::Duration),
    Stop,
}

pub(super) struct WorkerLink {
    pub(super) tx: Sender<Control>,
    pub(super) waker: Arc<Waker>,
    pub(super) calls: Arc<AtomicUsize>,
    /// Set by the worker once it runs on io_uring.
    pub(super) on_ring: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl WorkerLink {
    pub(super) fn send(&self, c: Control) -> Result<(), RelayError> {
        self.tx.send(c).map_err(|_| RelayError::Stopped)?;
        self.waker.wake().map_err(RelayError::Io)
    }
}
