//! One UDP port for every call's web leg (`[media] web-port`).
//!
//! Each worker has a socket of its own on the port (`SO_REUSEPORT`): the
//! kernel hashes each browser address to one of them, and a receive call
//! brings up to a batch of datagrams of many calls at once — the way past
//! one or two datagrams per wake-up on per-call sockets. A datagram is
//! routed by its source address (a hash map lookup on the worker, no
//! allocation, no lock). A call is not on any worker until its browser is
//! heard: the first binding request signed with the call's ICE password
//! (found by the USERNAME's first part, our ufrag) — or the first datagram
//! from the address the call was set up with — places it on the worker
//! whose socket received it, so its media is moved where it arrives. The
//! rare datagram that lands on another worker (a browser checking from
//! several addresses that nominates one the kernel hashes elsewhere) is
//! steered there, copied through that worker's inbox a batch at a time.
//!
//! The directory of calls (by ufrag and by address) is shared and behind a
//! lock; workers ask it only for an address they have no route for, and the
//! signaling side changes it with a call's control messages.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use mio::Waker;

use super::call::ControlBudget;
use super::control::Control;
use super::{CallMediaSetup, RelayError};
use crate::media::batch::{Batch, BATCH, BUF_LEN};
use crate::media::stats::CallStats;

/// The STUN (RFC 8489) fields the port reads to find a check's call (the
/// ICE agent above owns the rest of STUN; the relay sits below it).
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
const STUN_USERNAME: u16 = 0x0006;

/// Datagrams a worker's inbox holds for it; more are dropped and counted.
const INBOX: usize = 256;

/// Kernel receive buffer of each worker's socket on the port: every call's
/// browser traffic on this worker queues here.
const PORT_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// The shared web port: its sockets, directory and inboxes.
pub(super) struct SharedWebPort {
    /// The address the sockets are bound to (the port as bound).
    pub(super) address: SocketAddr,
    /// One socket per worker until the worker takes it at start.
    sockets: Mutex<Vec<Option<std::net::UdpSocket>>>,
    /// A handle on the first socket for the signaling side's sends (STUN
    /// answers and DTLS): any socket of the port sends from it.
    control: std::net::UdpSocket,
    directory: Mutex<Directory>,
    /// Bumped when a call's routes go away, so workers drop what they
    /// cached about other workers' calls.
    pub(super) generation: AtomicU64,
    inboxes: Vec<Mutex<Inbox>>,
    wakers: OnceLock<Vec<Arc<Waker>>>,
    pub(super) counters: PortCounters,
}

/// What the shared port drops before any call is known, and what it
/// steers between workers.
#[derive(Default)]
pub(super) struct PortCounters {
    /// From an address no call knows (and not a valid first check).
    pub(super) unknown_source: AtomicU64,
    /// Lost for want of room: the kernel's buffer or a worker's inbox.
    pub(super) overload: AtomicU64,
    /// Carried from the worker that received it to the call's worker.
    pub(super) steered: AtomicU64,
}

/// A call waiting for its browser's first packet.
pub(super) struct Awaiting {
    pub(super) setup: Box<CallMediaSetup>,
    pub(super) stats: Arc<CallStats>,
    ufrag: Option<Box<[u8]>>,
    /// Checks verified for it so far (an HMAC each): a flood naming its
    /// ufrag costs at most this budget.
    budget: ControlBudget,
}

struct Placed {
    worker: usize,
    ufrag: Option<Box<[u8]>>,
    addresses: Vec<SocketAddr>,
}

#[derive(Default)]
struct Directory {
    awaiting: HashMap<u64, Awaiting>,
    placed: HashMap<u64, Placed>,
    by_ufrag: HashMap<Box<[u8]>, u64>,
    by_address: HashMap<SocketAddr, u64>,
}

/// Where the directory says a datagram goes.
pub(super) enum Found {
    /// A waiting call, now this worker's: add it and relay the datagram.
    Place(u64, Box<Awaiting>),
    /// A call on `worker`; `by_address`: found by the datagram's source
    /// (a route worth keeping), not just its ufrag.
    Owner {
        worker: usize,
        id: u64,
        by_address: bool,
    },
    Unknown,
}

/// Datagrams steered to one worker.
struct Inbox {
    bufs: Box<[[u8; BUF_LEN]; INBOX]>,
    lens: [usize; INBOX],
    addrs: [Option<SocketAddr>; INBOX],
    locals: [Option<IpAddr>; INBOX],
    /// Held: `head..head + count` (modulo INBOX).
    head: usize,
    count: usize,
}

impl Inbox {
    fn new() -> Self {
        Inbox {
            bufs: vec![[0u8; BUF_LEN]; INBOX]
                .into_boxed_slice()
                .try_into()
                .unwrap_or_else(|_| unreachable!("INBOX buffers")),
            lens: [0; INBOX],
            addrs: [None; INBOX],
            locals: [None; INBOX],
            head: 0,
            count: 0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `count` sockets to `address` in one `SO_REUSEPORT` group. Port 0
/// (tests, benchmarks) takes a port the kernel gives a plain socket: the
/// kernel may hand a reuse-port socket asking for any port one that another
/// group of the same user holds, which would merge two relays' traffic.
fn bind_group(address: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    if address.port() != 0 {
        return bind_group_at(address, count);
    }
    let mut last = None;
    for _ in 0..8 {
        let free = std::net::UdpSocket::bind(address)?.local_addr()?;
        match bind_group_at(free, count) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            done => return done,
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

fn bind_group_at(at: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if at.is_ipv6() && at.ip().is_unspecified() {
            // Dual-stack: IPv4 browsers arrive as IPv4-mapped addresses,
            // which the receive path turns back into IPv4 ones.
            socket.set_only_v6(false)?;
        }
        socket.bind(&at.into())?;
        sockets.push(socket.into());
    }
    Ok(sockets)
}

impl SharedWebPort {
    /// The port's sockets for `workers` workers, bound to `address`.
    pub(super) fn bind(address: SocketAddr, workers: usize) -> io::Result<Arc<Self>> {
        let sockets = bind_group(address, workers)?;
        let address = sockets[0].local_addr()?;
        let control = sockets[0].try_clone()?;
        Ok(Arc::new(SharedWebPort {
            address,
            sockets: Mutex::new(sockets.into_iter().map(Some).collect()),
            control,
            directory: Mutex::new(Directory::default()),
            generation: AtomicU64::new(0),
            inboxes: (0..workers.max(1))
                .map(|_| Mutex::new(Inbox::new()))
                .collect(),
            wakers: OnceLock::new(),
            counters: PortCounters::default(),
        }))
    }

    pub(super) fn set_wakers(&self, wakers: Vec<Arc<Waker>>) {
        let _ = self.wakers.set(wakers);
    }

    /// Worker `index`'s socket, made ready for the worker (once).
    pub(super) fn take_socket(&self, index: usize) -> io::Result<mio::net::UdpSocket> {
        let socket = lock(&self.sockets)
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| io::Error::other("the web port's socket was taken already"))?;
        socket.set_nonblocking(true)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        crate::media::batch::enable_local_address(fd, self.address.is_ipv6())?;
        // Beyond net.core.rmem_max where the process may (CAP_NET_ADMIN):
        // this one buffer absorbs the bursts of every call on the worker.
        let forced = nix::sys::socket::setsockopt(
            fd,
            nix::sys::socket::sockopt::RcvBufForce,
            &PORT_BUFFER_BYTES,
        );
        if forced.is_err() {
            let _ = crate::media::batch::set_buffer_sizes(fd, PORT_BUFFER_BYTES, PORT_BUFFER_BYTES);
        } else {
            let _ = nix::sys::socket::setsockopt(
                fd,
                nix::sys::socket::sockopt::SndBufForce,
                &PORT_BUFFER_BYTES,
            );
        }
        let _ = crate::media::batch::enable_drop_counter(fd);
        Ok(mio::net::UdpSocket::from_std(socket))
    }

    /// A handle for the signaling side's STUN and DTLS sends.
    pub(super) fn control_socket(&self) -> io::Result<std::net::UdpSocket> {
        self.control.try_clone()
    }

    /// Calls not yet heard from.
    pub(super) fn awaiting_count(&self) -> usize {
        lock(&self.directory).awaiting.len()
    }

    /// The directory, locked, with call `id`'s ufrag (if any) entered.
    fn enter_ufrag(
        &self,
        id: u64,
        setup: &CallMediaSetup,
    ) -> (MutexGuard<'_, Directory>, Option<Box<[u8]>>) {
        let ufrag = setup
            .web_ufrag
            .as_deref()
            .map(|u| u.as_bytes().to_vec().into_boxed_slice());
        let mut d = lock(&self.directory);
        if let Some(u) = &ufrag {
            d.by_ufrag.insert(u.clone(), id);
        }
        (d, ufrag)
    }

    /// A call set up with its browser's address (no ICE to wait for)
    /// goes on `worker` at once; what the kernel hands another worker
    /// from that address is steered there.
    pub(super) fn add_placed(&self, id: u64, worker: usize, setup: &CallMediaSetup) {
        let (mut d, ufrag) = self.enter_ufrag(id, setup);
        let addresses: Vec<SocketAddr> = setup.web_remote.into_iter().collect();
        for &addr in &addresses {
            d.by_address.insert(addr, id);
        }
        d.placed.insert(
            id,
            Placed {
                worker,
                ufrag,
                addresses,
            },
        );
    }

    /// Takes a new call in: it waits for its browser's first check.
    pub(super) fn add(&self, id: u64, setup: Box<CallMediaSetup>, stats: Arc<CallStats>) {
        let (mut d, ufrag) = self.enter_ufrag(id, &setup);
        d.awaiting.insert(
            id,
            Awaiting {
                setup,
                stats,
                ufrag,
                budget: ControlBudget::new(Instant::now()),
            },
        );
    }

    /// Where a datagram from `from` that no route of worker `worker` knows
    /// goes; a waiting call it is the first valid packet of is placed on
    /// `worker` here.
    pub(super) fn find(
        &self,
        worker: usize,
        from: SocketAddr,
        packet: &[u8],
        now: Instant,
    ) -> Found {
        let mut d = lock(&self.directory);
        // By address: a call placed already (waiting calls are found by
        // their ufrag only).
        let (id, by_address) = match d.by_address.get(&from) {
            Some(&id) => (id, true),
            None => match ufrag_of(packet).and_then(|u| d.by_ufrag.get(u)) {
                Some(&id) => (id, false),
                None => return Found::Unknown,
            },
        };
        if let Some(placed) = d.placed.get(&id) {
            return Found::Owner {
                worker: placed.worker,
                id,
                by_address,
            };
        }
        let Some(waiting) = d.awaiting.get_mut(&id) else {
            return Found::Unknown;
        };
        {
            let authentic = waiting.budget.take(now)
                && waiting
                    .setup
                    .web_check_verifier
                    .as_ref()
                    .is_some_and(|verify| verify(packet));
            if !authentic {
                return Found::Unknown;
            }
        }
        let Some(waiting) = d.awaiting.remove(&id) else {
            return Found::Unknown;
        };
        let addresses = vec![from];
        d.by_address.insert(from, id);
        d.placed.insert(
            id,
            Placed {
                worker,
                ufrag: waiting.ufrag.clone(),
                addresses,
            },
        );
        Found::Place(id, Box::new(waiting))
    }

    /// Worker `worker` routes `added` to call `id` and no longer `removed`.
    pub(super) fn routes_changed(
        &self,
        worker: usize,
        id: u64,
        added: &[SocketAddr],
        removed: &[SocketAddr],
    ) {
        let mut d = lock(&self.directory);
        let Directory {
            placed, by_address, ..
        } = &mut *d;
        let Some(call) = placed.get_mut(&id).filter(|p| p.worker == worker) else {
            return;
        };
        for addr in removed {
            call.addresses.retain(|a| a != addr);
            if by_address.get(addr) == Some(&id) {
                by_address.remove(addr);
            }
        }
        for &addr in added {
            if !call.addresses.contains(&addr) {
                call.addresses.push(addr);
            }
            by_address.insert(addr, id);
        }
        if !removed.is_empty() {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// A control message for call `id` on the port: sent to the worker the
    /// call is on (by `send`), or applied to the waiting call itself.
    /// Returns whether the call has left the relay for good (its counters
    /// are final).
    pub(super) fn control(
        &self,
        id: u64,
        c: Control,
        ufrag: Option<&str>,
        send: impl FnOnce(usize, Control) -> Result<(), RelayError>,
    ) -> Result<bool, RelayError> {
        let mut d = lock(&self.directory);
        let new_ufrag = ufrag.map(|u| u.as_bytes().to_vec().into_boxed_slice());
        let Directory {
            placed, by_ufrag, ..
        } = &mut *d;
        if let Some(call) = placed.get_mut(&id) {
            let worker = call.worker;
            if let (Control::WebCheckVerifier(..), Some(u)) = (&c, new_ufrag.clone()) {
                // An ICE restart: checks name the new ufrag from now on.
                if let Some(old) = call.ufrag.replace(u.clone()).filter(|old| *old != u) {
                    by_ufrag.remove(&old);
                }
                by_ufrag.insert(u, id);
            }
            if matches!(c, Control::Remove(_)) {
                if let Some(placed) = d.placed.remove(&id) {
                    forget(&mut d, id, placed.ufrag.as_deref(), &placed.addresses);
                }
                self.generation.fetch_add(1, Ordering::Release);
            }
            send(worker, c)?;
            return Ok(false);
        }
        let Some(waiting) = d.awaiting.get_mut(&id) else {
            return Ok(false);
        };
        let setup = &mut waiting.setup;
        match c {
            Control::Remove(_) => {
                if let Some(waiting) = d.awaiting.remove(&id) {
                    forget(&mut d, id, waiting.ufrag.as_deref(), &[]);
                    // Dropped here: its SIP sockets close, its ports return.
                    drop(waiting);
                }
                return Ok(true);
            }
            // Taken when the call is placed (by its first check).
            Control::WebRemote(_, addr, local) => {
                setup.web_remote = Some(addr);
                setup.web_local = local;
            }
            Control::WebCheckVerifier(_, verifier) => {
                setup.web_check_verifier = Some(verifier);
                if let Some(u) = new_ufrag {
                    let old = waiting.ufrag.replace(u.clone());
                    if let Some(old) = old.filter(|o| *o != u) {
                        d.by_ufrag.remove(&old);
                    }
                    d.by_ufrag.insert(u, id);
                }
            }
            Control::WebSrtp(_, keys) => setup.web_srtp = Some(*keys),
            Control::SipFar(_, far) => {
                setup.sip_remote = far.remote;
                setup.sip_remote_rtcp = far.remote_rtcp;
                setup.sip_strict_source = far.strict_source;
                if let Some(srtp) = far.srtp {
                    setup.sip_srtp = srtp;
                }
                setup.payload_map = far.payload_map;
            }
            // No media has flowed yet: there is no stream to put digits in.
            Control::SendDtmf(..) => {}
            Control::Add(..) | Control::Stop => {}
        }
        Ok(false)
    }

    /// Copies the datagrams of `batch` listed in `picked` to worker
    /// `worker`'s inbox and wakes it if the inbox was empty; what does not
    /// fit is dropped and counted.
    pub(super) fn steer(&self, worker: usize, batch: &Batch, picked: &[usize]) {
        let Some(inbox) = self.inboxes.get(worker) else {
            return;
        };
        let was_empty = {
            let mut inbox = lock(inbox);
            let was_empty = inbox.count == 0;
            for &i in picked {
                if inbox.count == INBOX {
                    self.counters.overload.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let at = (inbox.head + inbox.count) % INBOX;
                let len = batch.lens[i].min(BUF_LEN);
                inbox.bufs[at][..len].copy_from_slice(&batch.bufs[i][..len]);
                inbox.lens[at] = len;
                inbox.addrs[at] = batch.addrs[i];
                inbox.locals[at] = batch.locals[i];
                inbox.count += 1;
                self.counters.steered.fetch_add(1, Ordering::Relaxed);
            }
            was_empty
        };
        if was_empty {
            if let Some(waker) = self.wakers.get().and_then(|w| w.get(worker)) {
                let _ = waker.wake();
            }
        }
    }

    /// Moves up to a batch of worker `worker`'s steered datagrams into
    /// `batch`; returns how many.
    pub(super) fn take_steered(&self, worker: usize, batch: &mut Batch) -> usize {
        let Some(inbox) = self.inboxes.get(worker) else {
            return 0;
        };
        let mut inbox = lock(inbox);
        let n = inbox.count.min(BATCH);
        for i in 0..n {
            let at = (inbox.head + i) % INBOX;
            let len = inbox.lens[at];
            batch.bufs[i][..len].copy_from_slice(&inbox.bufs[at][..len]);
            batch.lens[i] = len;
            batch.addrs[i] = inbox.addrs[at];
            batch.locals[i] = inbox.locals[at];
        }
        inbox.head = (inbox.head + n) % INBOX;
        inbox.count -= n;
        n
    }
}

/// Takes call `id`'s ufrag and addresses out of the directory.
fn forget(d: &mut Directory, id: u64, ufrag: Option<&[u8]>, addresses: &[SocketAddr]) {
    if let Some(u) = ufrag {
        if d.by_ufrag.get(u) == Some(&id) {
            d.by_ufrag.remove(u);
        }
    }
    for addr in addresses {
        if d.by_address.get(addr) == Some(&id) {
            d.by_address.remove(addr);
        }
    }
}

/// Our part of a binding request's USERNAME ("ours:theirs", RFC 8445
/// §7.2.2): which call a browser's check is for. Walks the attributes in
/// place; nothing is checked here but the framing (the call's verifier
/// checks the rest).
pub(super) fn ufrag_of(packet: &[u8]) -> Option<&[u8]> {
    const HEADER: usize = 20;
    if packet.len() < HEADER
        || u16::from_be_bytes([packet[0], packet[1]]) != STUN_BINDING_REQUEST
        || u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]) != STUN_MAGIC_COOKIE
    {
        return None;
    }
    let mut at = HEADER;
    while at + 4 <= packet.len() {
        let kind = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        let value = packet.get(at + 4..at + 4 + len)?;
        if kind == STUN_USERNAME {
            let ours = value.split(|&b| b == b':').next()?;
            return (!ours.is_empty()).then_some(ours);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// A worker's side of the shared port: its socket and its routes.
pub(super) struct WorkerPort {
    /// This worker's number (its socket and inbox on the port).
    pub(super) index: usize,
    pub(super) shared: Arc<SharedWebPort>,
    pub(super) socket: mio::net::UdpSocket,
    routes: HashMap<SocketAddr, Route>,
    /// The port's generation the `Foreign` routes were learnt at.
    generation: u64,
    /// io_uring mode: whether the socket's receive is armed.
    pub(super) armed: bool,
    /// The kernel's drop count on the socket last seen (cumulative).
    kernel_drops_seen: u32,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    /// A call on this worker, in this slot.
    Local(usize),
    /// A call on another worker.
    Foreign(usize),
}

impl WorkerPort {
    pub(super) fn new(index: usize, shared: Arc<SharedWebPort>) -> io::Result<Self> {
        let socket = shared.take_socket(index)?;
        Ok(WorkerPort {
            index,
            shared,
            socket,
            routes: HashMap::new(),
            generation: 0,
            armed: false,
            kernel_drops_seen: 0,
        })
    }
}

/// What became of each datagram of a batch from the port.
const DROP: usize = usize::MAX;
/// Marks a datagram for another worker: `FOREIGN + worker`.
const FOREIGN: usize = usize::MAX / 2;

impl super::worker::Worker {
    /// Relays the first `n` datagrams of the batch, received on the shared
    /// web port (`steered`: handed over by another worker, which is never
    /// done twice). Each goes to its call, grouped per call so that a call
    /// relays its share in one pass and sends it together.
    pub(super) fn relay_from_port(&mut self, n: usize, steered: bool) {
        let Some(mut port) = self.port.take() else {
            return;
        };
        let generation = port.shared.generation.load(Ordering::Acquire);
        if generation != port.generation {
            port.routes.retain(|_, r| matches!(r, Route::Local(_)));
            port.generation = generation;
        }
        // One clock read for the batch: its datagrams arrived together.
        let now = Instant::now();
        let mut target = [DROP; BATCH];
        for (i, t) in target.iter_mut().enumerate().take(n) {
            *t = self.route(&mut port, i, steered, now);
        }
        let mut done = [false; BATCH];
        let mut picked = [0usize; BATCH];
        for i in 0..n {
            if done[i] || target[i] == DROP {
                continue;
            }
            let mut count = 0;
            for j in i..n {
                if target[j] == target[i] {
                    picked[count] = j;
                    count += 1;
                    done[j] = true;
                }
            }
            if target[i] >= FOREIGN {
                port.shared
                    .steer(target[i] - FOREIGN, &self.batch, &picked[..count]);
            } else {
                self.relay_port_share(&mut port, target[i], &picked[..count], n, now);
            }
        }
        self.port = Some(port);
    }

    /// Where datagram `i` of the batch goes: a slot, `FOREIGN + worker`,
    /// or `DROP` (counted).
    fn route(&mut self, port: &mut WorkerPort, i: usize, steered: bool, now: Instant) -> usize {
        let counters = &port.shared.counters;
        let Some(from) = self.batch.addrs[i] else {
            counters.unknown_source.fetch_add(1, Ordering::Relaxed);
            return DROP;
        };
        match port.routes.get(&from) {
            Some(&Route::Local(slot)) => return slot,
            Some(&Route::Foreign(_)) if steered => {
                counters.unknown_source.fetch_add(1, Ordering::Relaxed);
                return DROP;
            }
            Some(&Route::Foreign(worker)) => return FOREIGN + worker,
            None => {}
        }
        let packet = &self.batch.bufs[i][..self.batch.lens[i]];
        match port.shared.find(port.index, from, packet, now) {
            Found::Place(id, waiting) => {
                let Awaiting { setup, stats, .. } = *waiting;
                match self.place(id, *setup, stats) {
                    Some(slot) => {
                        port.routes.insert(from, Route::Local(slot));
                        if let Some(call) = self.slots[slot].as_mut() {
                            call.web.routed.push(from);
                        }
                        slot
                    }
                    None => DROP,
                }
            }
            Found::Owner { worker, id, .. } if worker == port.index => {
                self.by_id.get(&id).copied().unwrap_or(DROP)
            }
            Found::Owner { .. } if steered => {
                counters.unknown_source.fetch_add(1, Ordering::Relaxed);
                DROP
            }
            Found::Owner {
                worker, by_address, ..
            } => {
                if by_address {
                    port.routes.insert(from, Route::Foreign(worker));
                }
                FOREIGN + worker
            }
            Found::Unknown => {
                counters.unknown_source.fetch_add(1, Ordering::Relaxed);
                DROP
            }
        }
    }

    /// Call `slot`'s datagrams `picked` of a port batch of `n`: relayed,
    /// sent, and the call's routes brought up to date.
    fn relay_port_share(
        &mut self,
        port: &mut WorkerPort,
        slot: usize,
        picked: &[usize],
        n: usize,
        now: Instant,
    ) {
        let Some(call) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if call.leaving {
            return;
        }
        // A check from a new address is verified before anything is handed
        // to the ICE side, and its route taken at once: the browser's next
        // datagram from there (DTLS, once our answer arrives) may reach
        // another worker, which must find the call by that address.
        for &i in picked {
            let (Some(from), packet) = (
                self.batch.addrs[i],
                &self.batch.bufs[i][..self.batch.lens[i]],
            ) else {
                continue;
            };
            if crate::media::rtp::classify(packet) == crate::media::rtp::WebPacketKind::Stun
                && !call.web.checked.contains(from)
                && call.control_budget.take(now)
            {
                call.web.checked.note_check(from, packet);
            }
        }
        if call.web.route_version() != call.web.routed_version {
            sync_routes(port, slot, call);
        }
        let out = call.relay_web_picked(&mut self.batch, picked, n);
        match self.ring.as_mut() {
            Some(ring) => super::uring::queue_relayed(ring, &self.batch, slot, call, &out),
            None => call.flush(&mut self.batch, &out, Some(&port.socket)),
        }
        if call.web.route_version() != call.web.routed_version {
            sync_routes(port, slot, call);
        }
    }

    /// A call that was waiting, placed in a slot of this worker; `None`
    /// (and the call dropped: its sockets close) when that fails.
    fn place(&mut self, id: u64, setup: CallMediaSetup, stats: Arc<CallStats>) -> Option<usize> {
        self.load.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.add(id, setup, stats) {
            self.load.fetch_sub(1, Ordering::Relaxed);
            self.totals.forget(id);
            tracing::warn!(call = id, error = %e, "relay could not take the call");
            return None;
        }
        self.by_id.get(&id).copied()
    }

    /// Forgets the port's routes to the call in `slot` (it is leaving).
    pub(super) fn unroute(&mut self, slot: usize) {
        let (Some(port), Some(call)) = (
            self.port.as_mut(),
            self.slots.get(slot).and_then(Option::as_ref),
        ) else {
            return;
        };
        for addr in &call.web.routed {
            if matches!(port.routes.get(addr), Some(Route::Local(s)) if *s == slot) {
                port.routes.remove(addr);
            }
        }
    }

    /// Counts what the kernel dropped on the port's socket (reported with
    /// the last receive): no single call's loss.
    pub(super) fn note_port_drops(&mut self) {
        if let (Some(port), Some(total)) = (self.port.as_mut(), self.batch.kernel_drops.take()) {
            let new = total.wrapping_sub(port.kernel_drops_seen);
            port.kernel_drops_seen = total;
            port.shared
                .counters
                .overload
                .fetch_add(u64::from(new), Ordering::Relaxed);
        }
    }

    /// Takes datagrams other workers steered here, a batch at a time.
    pub(super) fn relay_steered(&mut self) {
        let Some(port) = self.port.as_ref() else {
            return;
        };
        let (shared, index) = (port.shared.clone(), port.index);
        loop {
            let n = shared.take_steered(index, &mut self.batch);
            if n == 0 {
                break;
            }
            self.relay_from_port(n, true);
        }
    }
}

/// The routes to `call` (in `slot`) made to match the addresses it takes
/// media from now, here and in the shared directory.
fn sync_routes(port: &mut WorkerPort, slot: usize, call: &mut super::call::RelayedCall) {
    let mut added = [None; 16];
    let mut removed = [None; 16];
    let (mut a, mut r) = (0, 0);
    for addr in call.web.addresses() {
        if !call.web.routed.contains(&addr) && a < added.len() {
            added[a] = Some(addr);
            a += 1;
        }
    }
    for &addr in &call.web.routed {
        if !call.web.addresses().any(|x| x == addr) && r < removed.len() {
            removed[r] = Some(addr);
            r += 1;
        }
    }
    let added: Vec<SocketAddr> = added.iter().flatten().copied().collect();
    let removed: Vec<SocketAddr> = removed.iter().flatten().copied().collect();
    for addr in &removed {
        call.web.routed.retain(|x| x != addr);
        if matches!(port.routes.get(addr), Some(Route::Local(s)) if *s == slot) {
            port.routes.remove(addr);
        }
    }
    for &addr in &added {
        call.web.routed.push(addr);
        port.routes.insert(addr, Route::Local(slot));
    }
    call.web.routed_version = call.web.route_version();
    if !added.is_empty() || !removed.is_empty() {
        port.shared
            .routes_changed(port.index, call.id, &added, &removed);
    }
}

/// The body of `fuzzing::web_port_routing` (here, where the port's parts
/// are visible).
#[cfg(feature = "fuzzing")]
pub(super) fn fuzz_routing(data: &[u8]) {
    use super::PayloadMap;
    let Ok(shared) = SharedWebPort::bind("127.0.0.1:0".parse().expect("an address"), 1) else {
        return;
    };
    let Ok(port) = WorkerPort::new(0, shared.clone()) else {
        return;
    };
    let (_control, rx) = std::sync::mpsc::channel();
    let Ok(poll) = mio::Poll::new() else {
        return;
    };
    let mut worker = super::worker::Worker::new(
        poll,
        rx,
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(super::Totals::default()),
        std::time::Duration::ZERO,
        Some(port),
    );
    let Ok(sink) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return;
    };
    let Ok(sink_at) = sink.local_addr() else {
        return;
    };
    let browser = |k: u8| SocketAddr::from(([127, 0, 0, 1], 42_000 + u16::from(k % 4)));
    let setup = |remote: Option<SocketAddr>, ufrag: Option<&str>| {
        let sip = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
        Some(CallMediaSetup {
            web_ufrag: ufrag.map(str::to_string),
            web_remote: remote,
            // "Authentic" here: a check whose last byte is 0x42.
            web_check_verifier: Some(Box::new(|p: &[u8]| p.last() == Some(&0x42))),
            ..CallMediaSetup::new(sip, sink_at, PayloadMap::new(&[(0, 0, 8_000)]))
        })
    };
    let (Some(placed), Some(waiting)) = (setup(Some(browser(0)), None), setup(None, Some("fz")))
    else {
        return;
    };
    let placed_stats = Arc::new(CallStats::default());
    shared.add_placed(1, 0, &placed);
    if worker.add(1, placed, placed_stats.clone()).is_err() {
        return;
    }
    let waiting_stats = Arc::new(CallStats::default());
    shared.add(2, Box::new(waiting), waiting_stats.clone());
    let mut rest = data;
    let mut datagrams = 0u64;
    while !rest.is_empty() {
        let mut n = 0;
        while n < BATCH {
            let Some((&len, tail)) = rest.split_first() else {
                break;
            };
            let len = usize::from(len).min(tail.len());
            let (packet, tail) = tail.split_at(len);
            rest = tail;
            let Some((&from, payload)) = packet.split_first() else {
                continue;
            };
            worker.batch.bufs[n][..payload.len()].copy_from_slice(payload);
            worker.batch.lens[n] = payload.len();
            worker.batch.addrs[n] = (from != 0xff).then(|| browser(from));
            worker.batch.locals[n] = None;
            n += 1;
        }
        if n == 0 {
            break;
        }
        datagrams += n as u64;
        worker.relay_from_port(n, false);
        worker.relay_steered();
    }
    let taken = placed_stats.web.snapshot().packets_in + waiting_stats.web.snapshot().packets_in;
    let dropped = shared.counters.unknown_source.load(Ordering::Relaxed);
    assert_eq!(taken + dropped, datagrams, "every datagram counted once");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::relay::worker::Worker;
    use crate::media::relay::PayloadMap;
    use crate::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};

    fn srtp() -> SrtpContext {
        let keys =
            SrtpKeyMaterial::new(SrtpProfile::AesCm128HmacSha1_80, &[3; 16], &[5; 14]).unwrap();
        SrtpContext::new(&keys).unwrap()
    }

    /// A batch from the port carrying eight calls' media, routed, relayed
    /// and sent, allocates nothing once each call's routes are in.
    #[test]
    fn relaying_a_port_batch_of_many_calls_allocates_nothing() {
        const CALLS: usize = 8;
        let shared = SharedWebPort::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let port = WorkerPort::new(0, shared.clone()).unwrap();
        let (_control, rx) = std::sync::mpsc::channel();
        let mut worker = Worker::new(
            mio::Poll::new().unwrap(),
            rx,
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            Arc::new(super::super::Totals::default()),
            std::time::Duration::ZERO,
            Some(port),
        );
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let browsers: Vec<SocketAddr> = (0..CALLS)
            .map(|k| SocketAddr::from(([127, 0, 0, 1], 41_000 + k as u16)))
            .collect();
        let mut senders: Vec<SrtpContext> = (0..CALLS).map(|_| srtp()).collect();
        let mut calls = Vec::new();
        for (k, &browser) in browsers.iter().enumerate() {
            let setup = CallMediaSetup {
                web_remote: Some(browser),
                web_srtp: Some((srtp(), srtp())),
                ..CallMediaSetup::new(
                    std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
                    peer.local_addr().unwrap(),
                    PayloadMap::new(&[(0, 0, 8_000)]),
                )
            };
            let id = k as u64 + 1;
            shared.add_placed(id, 0, &setup);
            let stats = Arc::new(CallStats::default());
            worker.add(id, setup, stats.clone()).unwrap();
            calls.push(stats);
        }
        let mut seq = 0u16;
        let mut fill = |batch: &mut Batch| {
            seq = seq.wrapping_add(1);
            for i in 0..BATCH {
                let k = i % CALLS;
                let buf = &mut batch.bufs[i];
                buf[..12].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, k as u8]);
                buf[2..4]
                    .copy_from_slice(&(seq.wrapping_mul(8) + (i / CALLS) as u16).to_be_bytes());
                buf[12..172].fill(0x55);
                batch.lens[i] = senders[k].protect_rtp(&mut buf[..], 172).unwrap();
                batch.addrs[i] = Some(browsers[k]);
                batch.locals[i] = None;
            }
        };
        // Warm-up: routes taken, each stream's SRTP state made.
        fill(&mut worker.batch);
        worker.relay_from_port(BATCH, false);
        for _ in 0..50 {
            fill(&mut worker.batch);
            let used = allocation_counter::measure(|| worker.relay_from_port(BATCH, false));
            assert_eq!(used.count_total, 0, "{used:?}");
        }
        for (k, stats) in calls.iter().enumerate() {
            let (web, sip) = (stats.web.snapshot(), stats.sip.snapshot());
            assert_eq!(
                web.packets_in,
                51 * (BATCH / CALLS) as u64,
                "call {k}: {web:?}"
            );
            assert_eq!(sip.packets_out + sip.dropped_overload, web.packets_in);
        }
        assert_eq!(shared.counters.unknown_source.load(Ordering::Relaxed), 0);
    }

    /// A binding request with a PRIORITY, then `username` (padded).
    fn request(username: &[u8]) -> Vec<u8> {
        let mut attributes = vec![0x00, 0x24, 0, 4, 0, 0, 0, 1];
        attributes.extend_from_slice(&STUN_USERNAME.to_be_bytes());
        attributes.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attributes.extend_from_slice(username);
        while attributes.len() % 4 != 0 {
            attributes.push(0);
        }
        let mut packet = STUN_BINDING_REQUEST.to_be_bytes().to_vec();
        packet.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
        packet.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        packet.extend_from_slice(&[7; 12]);
        packet.extend_from_slice(&attributes);
        packet
    }

    #[test]
    fn a_checks_username_names_our_ufrag() {
        assert_eq!(ufrag_of(&request(b"abcd:WXYZ")), Some(&b"abcd"[..]));
        // An odd-length value is padded: the next attribute is still found.
        assert_eq!(ufrag_of(&request(b"abc:WXYZ1")), Some(&b"abc"[..]));
        assert_eq!(ufrag_of(&request(b":WXYZ")), None);
        // Not a binding request, truncated, or without a USERNAME.
        let mut response = request(b"abcd:WXYZ");
        response[1] = 0x01;
        response[0] = 0x01;
        assert_eq!(ufrag_of(&response), None);
        let whole = request(b"abcd:WXYZ");
        for cut in 0..whole.len() {
            let _ = ufrag_of(&whole[..cut]);
        }
        assert_eq!(ufrag_of(&whole[..28]), None);
        assert_eq!(ufrag_of(&whole[..20]), None, "no attributes");
        assert_eq!(ufrag_of(b"\x80\x00 not stun at all, just RTP"), None);
    }
}
