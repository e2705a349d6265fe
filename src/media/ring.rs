//! io_uring for a relay worker (`[media] relay-io = "io-uring"`, Linux 6.0+).
//!
//! With hundreds of calls each socket holds a packet or two when the worker
//! wakes, so per-socket `recvmmsg`/`sendmmsg` pays an epoll wake-up, a
//! receive and a send syscall for nearly every packet. Here every socket has
//! one multishot `recvmsg` armed in the ring, the kernel picks a buffer from
//! a provided-buffer ring for each datagram, and a worker's sends of a turn
//! go in with the single `io_uring_enter` that also waits for what comes
//! next: one syscall per turn instead of three per packet.
//!
//! Written here rather than taken from a crate: tokio-uring and glommio own
//! the whole runtime and allocate per operation; the relay needs a ring it
//! drives from its own loop with buffers allocated once. The `io-uring` crate
//! supplies the raw submission/completion queues. Together with `batch`,
//! this is the relay's syscall batching and the only code with `unsafe`.
//!
//! Lifetimes the kernel relies on, and how they are kept:
//! - receive buffers and the buffer ring are allocated when the ring is made
//!   and freed only after every operation is cancelled ([`RingIo`]'s drop);
//!   a buffer is read only after its completion and given back right after;
//! - a send's header, address and bytes live in a send slot that is reused
//!   only after the send's completion;
//! - a socket with a receive armed must stay open until that receive has
//!   ended ([`Event::Datagram`] without `more`, or [`Event::RecvStopped`]):
//!   the worker keeps a leaving call's sockets until then.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::batch::{read_control, to_storage, write_source, Batch, Control, BUF_LEN, CONTROL_LEN};

/// Receive buffers per worker: datagrams the kernel can hand over before
/// the worker returns buffers (a burst beyond this waits in socket buffers).
/// When they run out, every socket with data waiting ends its multishot
/// receive and is armed again: under overload 1024 buffers cost about one
/// re-arm per three packets relayed, 2048 one per five. With the send slots
/// sized from this, a worker's ring holds about 12 MB.
const RECV_BUFFERS: u16 = 2048;
/// One receive buffer: the kernel's `io_uring_recvmsg_out`, the source
/// address, the control messages (drop count, destination address), then
/// up to [`BUF_LEN`] bytes of datagram.
const RECV_BUFFER_LEN: usize = 2048;
const BUFFER_GROUP: u16 = 0;
/// Sends in flight at once; a turn never queues more than it received.
/// Sends in flight at once. A send's completion queues behind the receives
/// already waiting (at most one per receive buffer), each of which may queue
/// a send meanwhile: twice the buffers plus two turns is never exhausted.
const SEND_SLOTS: usize = 2 * RECV_BUFFERS as usize + 2 * 256;
/// Entries asked for in the ring's file table: three sockets per call slot.
const FIXED_FILES: u32 = 3 * 8192;
const SUBMISSION_ENTRIES: u32 = 2048;
/// Room for the completions of a burst across all sockets.
const COMPLETION_ENTRIES: u32 = 16384;

/// Operation in the top byte of `user_data`; a token or send slot below.
const OP_SHIFT: u32 = 56;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_WAKE: u64 = 3;
const OP_CANCEL: u64 = 4;
const LOW_MASK: u64 = (1 << OP_SHIFT) - 1;

/// Whose send a slot carries, for the statistics when the kernel answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendTag {
    /// The worker's call slot and the call's id (a slot is reused).
    pub slot: u32,
    pub call: u64,
    /// The leg whose socket sends: web (true) or SIP.
    pub web: bool,
    pub len: u32,
}

/// What a completion meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A datagram arrived on socket `token`; copy it with
    /// [`RingIo::take_datagram`] before the next event. Without `more` the
    /// receive has ended too (arm it again, or let the socket go).
    Datagram { token: u32, more: bool },
    /// The receive on `token` ended without a datagram (cancelled, out of
    /// buffers, or an error: the errno).
    RecvStopped { token: u32, errno: i32 },
    /// A send finished: taken by the kernel or not (`ok`).
    Sent { tag: SendTag, ok: bool },
    /// The waker's file became readable.
    Woken,
}

/// Buffer ring entry as the kernel reads it (`struct io_uring_buf`); the
/// first entry's last field doubles as the ring's tail.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    tail_or_reserved: u16,
}

struct SendSlot {
    addr: libc::sockaddr_storage,
    buf: [u8; BUF_LEN],
    tag: SendTag,
    /// For a send that names its source address: the message header, its
    /// one iovec and the control message (`IP_PKTINFO`/`IPV6_PKTINFO`).
    header: libc::msghdr,
    iov: libc::iovec,
    control: Control,
}

/// How an operation names a socket.
enum Target {
    Fixed(Fixed),
    Fd(Fd),
}

/// One worker's ring, receive buffers and send slots.
pub struct RingIo {
    ring: IoUring,
    entries: *mut BufEntry,
    entries_layout: Layout,
    memory: *mut u8,
    memory_layout: Layout,
    /// Our copy of the buffer ring's tail (the kernel's copy is in entry 0).
    tail: u16,
    /// Whether the kernel knows the buffer ring (then it may write to the
    /// buffers until every operation has ended).
    registered: bool,
    recv_header: Box<libc::msghdr>,
    sends: Box<[SendSlot]>,
    free_sends: Vec<u32>,
    /// The datagram of the last [`Event::Datagram`]: buffer id and length.
    current: Option<(u16, usize)>,
    /// Each token's socket, and whether it is in the ring's file table
    /// (then operations skip the kernel's per-operation file lookup).
    sockets: Vec<(RawFd, bool)>,
    /// Entries in the ring's file table (0: none).
    file_table: u32,
}

impl RingIo {
    /// A ring with its buffers registered. Fails where io_uring or the
    /// needed features are missing (old kernels, seccomp filters, a sysctl
    /// that disables it); the worker then uses epoll.
    pub fn new() -> io::Result<RingIo> {
        // Deferred task work: the kernel does the receives' work when the
        // worker enters it to wait, not by interrupting it per datagram.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(COMPLETION_ENTRIES)
            .build(SUBMISSION_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(COMPLETION_ENTRIES)
                    .build(SUBMISSION_ENTRIES)
            })?;
        let entries_layout =
            Layout::from_size_align(usize::from(RECV_BUFFERS) * size_of::<BufEntry>(), 4096)
                .map_err(io::Error::other)?;
        let memory_layout =
            Layout::from_size_align(usize::from(RECV_BUFFERS) * RECV_BUFFER_LEN, 4096)
                .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let (entries, memory) = unsafe {
            (
                alloc_zeroed(entries_layout).cast::<BufEntry>(),
                alloc_zeroed(memory_layout),
            )
        };
        if entries.is_null() || memory.is_null() {
            // SAFETY: whichever allocation succeeded came from these layouts.
            unsafe {
                if !entries.is_null() {
                    dealloc(entries.cast(), entries_layout);
                }
                if !memory.is_null() {
                    dealloc(memory, memory_layout);
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // SAFETY: a zeroed msghdr is a valid empty one; only the two
        // lengths matter to a multishot receive (its layout of each buffer).
        let mut recv_header: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        recv_header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        recv_header.msg_controllen = CONTROL_LEN as _;
        let sends = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                // SAFETY: an all-zero sockaddr_storage is a valid empty one.
                addr: unsafe { zeroed() },
                buf: [0; BUF_LEN],
                tag: SendTag::default(),
                // SAFETY: an all-zero msghdr is a valid empty one; it is
                // filled before each send that uses it.
                header: unsafe { zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                control: Control::new(),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let mut io = RingIo {
            ring,
            entries,
            entries_layout,
            memory,
            memory_layout,
            tail: 0,
            registered: false,
            recv_header,
            sends,
            free_sends: (0..SEND_SLOTS as u32).rev().collect(),
            current: None,
            sockets: Vec::new(),
            file_table: 0,
        };
        // Best effort: a smaller table where the kernel refuses the full one
        // (some kernels cap it at RLIMIT_NOFILE), plain fds without one.
        for size in [FIXED_FILES, FIXED_FILES / 8] {
            if io.ring.submitter().register_files_sparse(size).is_ok() {
                io.file_table = size;
                break;
            }
        }
        for bid in 0..RECV_BUFFERS {
            io.give_back(bid);
        }
        // SAFETY: the entry array (page aligned, RECV_BUFFERS entries) and
        // the buffers it points to stay allocated until drop, which cancels
        // every operation and unregisters the ring before freeing them.
        unsafe {
            io.ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                RECV_BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        io.registered = true;
        io.self_test()?;
        Ok(io)
    }

    /// Moves one datagram through the ring over loopback — a send with a
    /// destination address, a multishot receive that stays armed, and its
    /// cancellation — so a kernel that has io_uring but not these (before
    /// 6.0) is found here, and the worker uses epoll instead.
    fn self_test(&mut self) -> io::Result<()> {
        let unsupported =
            |what: &str| io::Error::new(io::ErrorKind::Unsupported, format!("io_uring {what}"));
        let from = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let to = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let (sender, receiver) = (0, 1);
        self.attach(sender, std::os::fd::AsRawFd::as_raw_fd(&from));
        self.attach(receiver, std::os::fd::AsRawFd::as_raw_fd(&to));
        let result = (|| {
            self.arm_recv(receiver)?;
            if !self.queue_send(sender, b"probe", to.local_addr()?, None, SendTag::default()) {
                return Err(unsupported("send slots"));
            }
            let (mut sent, mut received) = (false, false);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !(sent && received) && std::time::Instant::now() < deadline {
                self.wait(Some(Duration::from_millis(50)))?;
                while let Some(event) = self.next_event() {
                    match event {
                        Event::Sent { ok: true, .. } => sent = true,
                        Event::Datagram { more: true, .. } => received = true,
                        Event::Sent { ok: false, .. } => {
                            return Err(unsupported("send to an address"))
                        }
                        Event::Datagram { more: false, .. } | Event::RecvStopped { .. } => {
                            return Err(unsupported("multishot recvmsg"))
                        }
                        Event::Woken => {}
                    }
                }
            }
            if !(sent && received) {
                return Err(unsupported("loopback datagram (timed out)"));
            }
            self.cancel_recv(receiver)?;
            let mut stopped = false;
            while !stopped && std::time::Instant::now() < deadline {
                self.wait(Some(Duration::from_millis(50)))?;
                while let Some(event) = self.next_event() {
                    stopped |= matches!(
                        event,
                        Event::RecvStopped { .. } | Event::Datagram { more: false, .. }
                    );
                }
            }
            if stopped {
                Ok(())
            } else {
                Err(unsupported("cancel"))
            }
        })();
        self.detach(sender);
        self.detach(receiver);
        result
    }

    /// Returns receive buffer `bid` to the kernel.
    fn give_back(&mut self, bid: u16) {
        let index = usize::from(self.tail & (RECV_BUFFERS - 1));
        // SAFETY: `index` is within the entry array. The kernel reads entries
        // only between its head and the published tail; this one is past the
        // tail until the store below. Fields are written through raw
        // pointers so no reference covers entry 0's tail, which the kernel
        // may read meanwhile.
        unsafe {
            let entry = self.entries.add(index);
            std::ptr::addr_of_mut!((*entry).addr)
                .write(self.memory.add(usize::from(bid) * RECV_BUFFER_LEN) as u64);
            std::ptr::addr_of_mut!((*entry).len).write(RECV_BUFFER_LEN as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: entry 0's last field is the ring's tail, shared with the
        // kernel, which reads it atomically; it is aligned for u16 and lives
        // as long as the entry array.
        let tail = unsafe {
            AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.entries).tail_or_reserved))
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// Queues `entry`, making room by submitting when the queue is full.
    ///
    /// # Safety
    /// Whatever `entry` points to must stay valid until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: passed on from the caller.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("io_uring submission queue stays full"))
    }

    /// Names socket `fd` as `token` for the operations below, entering it
    /// in the ring's file table where there is room. The socket must stay
    /// open until [`RingIo::detach`] and the end of its receive.
    pub fn attach(&mut self, token: u32, fd: RawFd) {
        let t = token as usize;
        if self.sockets.len() <= t {
            self.sockets.resize(t + 1, (-1, false));
        }
        let fixed = token < self.file_table
            && self
                .ring
                .submitter()
                .register_files_update(token, &[fd])
                .is_ok();
        self.sockets[t] = (fd, fixed);
    }

    /// Forgets `token`'s socket (the file table lets go of it).
    pub fn detach(&mut self, token: u32) {
        if let Some(entry) = self.sockets.get_mut(token as usize) {
            if entry.1 {
                let _ = self.ring.submitter().register_files_update(token, &[-1]);
            }
            *entry = (-1, false);
        }
    }

    /// How operations name `token`'s socket: its file table entry or its fd.
    fn target(&self, token: u32) -> io::Result<Target> {
        match self.sockets.get(token as usize) {
            Some(&(_, true)) => Ok(Target::Fixed(Fixed(token))),
            Some(&(fd, false)) if fd >= 0 => Ok(Target::Fd(Fd(fd))),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "relay ring: no socket attached as this token",
            )),
        }
    }

    /// Arms a multishot receive on `token`'s socket. The socket must stay
    /// open until the receive has ended.
    pub fn arm_recv(&mut self, token: u32) -> io::Result<()> {
        let header: *const libc::msghdr = &*self.recv_header;
        let entry = match self.target(token)? {
            Target::Fixed(f) => opcode::RecvMsgMulti::new(f, header, BUFFER_GROUP).build(),
            Target::Fd(f) => opcode::RecvMsgMulti::new(f, header, BUFFER_GROUP).build(),
        }
        .user_data(OP_RECV << OP_SHIFT | u64::from(token));
        // SAFETY: the header is boxed and lives as long as the ring; the
        // buffers come from the registered group; the caller keeps `fd` open.
        unsafe { self.push(&entry) }
    }

    /// Asks the kernel to end the receive armed as `token`; its end is
    /// reported as an event like any other.
    pub fn cancel_recv(&mut self, token: u32) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(OP_RECV << OP_SHIFT | u64::from(token))
            .build()
            .user_data(OP_CANCEL << OP_SHIFT);
        // SAFETY: a cancel points at no memory.
        unsafe { self.push(&entry) }
    }

    /// Watches `fd` (the worker's waker) for readability once: one
    /// [`Event::Woken`], then arm again after clearing it.
    pub fn arm_wake(&mut self, fd: RawFd) -> io::Result<()> {
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(OP_WAKE << OP_SHIFT);
        // SAFETY: a poll points at no memory; the waker outlives the ring.
        unsafe { self.push(&entry) }
    }

    /// Queues `data` to go to `to` by `token`'s socket, from local address
    /// `from` when given. False when it cannot go (every send slot in
    /// flight, larger than a slot, no such socket): count it dropped.
    pub fn queue_send(
        &mut self,
        token: u32,
        data: &[u8],
        to: SocketAddr,
        from: Option<IpAddr>,
        tag: SendTag,
    ) -> bool {
        if data.len() > BUF_LEN {
            return false;
        }
        let Ok(target) = self.target(token) else {
            return false;
        };
        let Some(k) = self.free_sends.pop() else {
            return false;
        };
        let slot = &mut self.sends[k as usize];
        slot.buf[..data.len()].copy_from_slice(data);
        let name_len = to_storage(to, &mut slot.addr);
        slot.tag = tag;
        // MSG_DONTWAIT: a full socket buffer fails the send at once (counted
        // as overload) instead of parking it in the kernel.
        let entry = match from {
            None => {
                let (buf, len) = (slot.buf.as_ptr(), data.len() as u32);
                let addr: *const libc::sockaddr = std::ptr::addr_of!(slot.addr).cast();
                match target {
                    Target::Fixed(f) => opcode::Send::new(f, buf, len)
                        .dest_addr(addr)
                        .dest_addr_len(name_len)
                        .flags(libc::MSG_DONTWAIT)
                        .build(),
                    Target::Fd(f) => opcode::Send::new(f, buf, len)
                        .dest_addr(addr)
                        .dest_addr_len(name_len)
                        .flags(libc::MSG_DONTWAIT)
                        .build(),
                }
            }
            Some(source) => {
                // A source address needs a control message, so sendmsg.
                let control_len = write_source(&mut slot.control, source);
                slot.iov = libc::iovec {
                    iov_base: slot.buf.as_mut_ptr().cast(),
                    iov_len: data.len(),
                };
                slot.header.msg_name = std::ptr::addr_of_mut!(slot.addr).cast();
                slot.header.msg_namelen = name_len;
                slot.header.msg_iov = std::ptr::addr_of_mut!(slot.iov);
                slot.header.msg_iovlen = 1;
                slot.header.msg_control = slot.control.0.as_mut_ptr().cast();
                slot.header.msg_controllen = control_len as _;
                slot.header.msg_flags = 0;
                let header: *const libc::msghdr = std::ptr::addr_of!(slot.header);
                match target {
                    Target::Fixed(f) => opcode::SendMsg::new(f, header)
                        .flags(libc::MSG_DONTWAIT as u32)
                        .build(),
                    Target::Fd(f) => opcode::SendMsg::new(f, header)
                        .flags(libc::MSG_DONTWAIT as u32)
                        .build(),
                }
            }
        }
        .user_data(OP_SEND << OP_SHIFT | u64::from(k));
        // SAFETY: the slot (address, bytes, and for sendmsg its header,
        // iovec and control message, which point into the slot itself) is
        // in a boxed slice that lives as long as the ring and is not reused
        // before this send's completion returns it to `free_sends`; the
        // socket is attached, and a send holds its own reference to it once
        // issued.
        if unsafe { self.push(&entry) }.is_ok() {
            true
        } else {
            self.free_sends.push(k);
            false
        }
    }

    /// Submits what is queued and waits for at least one completion, or
    /// until `timeout`. A timeout or a signal is not an error.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and takes the completions ready now, without
    /// sleeping; true when there is at least one.
    pub fn poll_completions(&mut self) -> io::Result<bool> {
        if self.ring.completion().is_empty() {
            self.wait(Some(Duration::ZERO))?;
        }
        Ok(!self.ring.completion().is_empty())
    }

    /// The next completion, if any. A datagram not taken by
    /// [`RingIo::take_datagram`] before this call is dropped.
    pub fn next_event(&mut self) -> Option<Event> {
        if let Some((bid, _)) = self.current.take() {
            self.give_back(bid);
        }
        loop {
            let cqe = self.ring.completion().next()?;
            let low = cqe.user_data() & LOW_MASK;
            let result = cqe.result();
            match cqe.user_data() >> OP_SHIFT {
                OP_RECV => {
                    let token = low as u32;
                    let more = cqueue::more(cqe.flags());
                    match cqueue::buffer_select(cqe.flags()) {
                        Some(bid) if result >= 0 => {
                            self.current = Some((bid, result as usize));
                            return Some(Event::Datagram { token, more });
                        }
                        Some(bid) => self.give_back(bid),
                        None => {}
                    }
                    if !more {
                        return Some(Event::RecvStopped {
                            token,
                            errno: result.saturating_neg(),
                        });
                    }
                }
                OP_SEND => {
                    let k = low as usize;
                    let Some(slot) = self.sends.get(k) else {
                        continue;
                    };
                    let tag = slot.tag;
                    self.free_sends.push(k as u32);
                    return Some(Event::Sent {
                        tag,
                        ok: result >= 0,
                    });
                }
                OP_WAKE => return Some(Event::Woken),
                _ => {}
            }
        }
    }

    /// Copies the datagram of the last [`Event::Datagram`] into entry `i`
    /// of `batch` (length, source; the kernel's drop count if it came) and
    /// gives its buffer back. False when there is none. A datagram too long
    /// for the batch, or from an unreadable source, gets no address, so the
    /// relay counts it malformed.
    pub fn take_datagram(&mut self, batch: &mut Batch, i: usize) -> bool {
        let Some((bid, len)) = self.current.take() else {
            return false;
        };
        // SAFETY: the kernel wrote `len` bytes into buffer `bid` and
        // completed; it does not use the buffer again until `give_back`.
        let data = unsafe {
            std::slice::from_raw_parts(
                self.memory.add(usize::from(bid) * RECV_BUFFER_LEN),
                len.min(RECV_BUFFER_LEN),
            )
        };
        batch.lens[i] = 0;
        batch.addrs[i] = None;
        batch.locals[i] = None;
        if let Ok(message) = io_uring::types::RecvMsgOut::parse(data, &self.recv_header) {
            let payload = message.payload_data();
            let n = payload.len().min(BUF_LEN);
            batch.bufs[i][..n].copy_from_slice(&payload[..n]);
            batch.lens[i] = n;
            if !message.is_payload_truncated() && n == payload.len() {
                batch.addrs[i] = address_from_bytes(message.name_data());
            }
            let (drops, local) = read_control(message.control_data());
            if drops.is_some() {
                batch.kernel_drops = drops;
            }
            batch.locals[i] = local;
        }
        self.give_back(bid);
        true
    }
}

impl Drop for RingIo {
    fn drop(&mut self) {
        // Every operation ends before the memory it may touch is freed.
        let cancelled = self
            .ring
            .submitter()
            .register_sync_cancel(Some(Timespec::new().sec(5)), CancelBuilder::any().all());
        let quiet = match cancelled {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        let unregistered = !self.registered
            || self
                .ring
                .submitter()
                .unregister_buf_ring(BUFFER_GROUP)
                .is_ok();
        if quiet && unregistered {
            // SAFETY: allocated in `new` with these layouts; no operation is
            // left that could write into them, and the kernel has let go of
            // the buffer ring.
            unsafe {
                dealloc(self.entries.cast(), self.entries_layout);
                dealloc(self.memory, self.memory_layout);
            }
        } else {
            // The kernel may still use them: leak rather than risk it (the
            // send slots and the receive header too).
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::replace(
                &mut self.recv_header,
                // SAFETY: an all-zero msghdr is a valid empty one.
                Box::new(unsafe { zeroed() }),
            ));
            tracing::warn!("relay io_uring did not wind down cleanly; its buffers are leaked");
        }
    }
}

/// A `sockaddr_in`/`sockaddr_in6` as bytes (the kernel's copy in a receive
/// buffer), read field by field.
fn address_from_bytes(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(crate::media::batch::canonical(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The project's machines (Linux 6.x) allow io_uring; a machine that
    /// does not runs the relay on epoll, and these tests say so by failing.
    fn ring() -> RingIo {
        RingIo::new().expect("io_uring is available (Linux 6.0 or later, not disabled)")
    }

    /// A ring with a loopback socket attached as `token` and its receive
    /// armed, a peer to talk to it, and a batch to copy datagrams into.
    fn armed(token: u32) -> (RingIo, std::net::UdpSocket, std::net::UdpSocket, Batch) {
        let mut ring = ring();
        let gateway = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ring.attach(token, gateway.as_raw_fd());
        ring.arm_recv(token).unwrap();
        (ring, gateway, peer, Batch::new())
    }

    /// Events until `want` have come, or none came for 300 ms (everything
    /// the tests wait for was sent before; loopback delivers at once).
    fn events(ring: &mut RingIo, want: usize, batch: &mut Batch) -> Vec<Event> {
        let mut got = Vec::new();
        let mut last = std::time::Instant::now();
        while got.len() < want && last.elapsed() < Duration::from_millis(300) {
            ring.wait(Some(Duration::from_millis(20))).unwrap();
            while let Some(e) = ring.next_event() {
                if let Event::Datagram { .. } = e {
                    assert!(ring.take_datagram(batch, 0));
                }
                got.push(e);
                last = std::time::Instant::now();
            }
        }
        got
    }

    #[test]
    fn receives_sends_and_cancels() {
        let (mut ring, gateway, peer, mut batch) = armed(7);
        assert_eq!(
            ring.sockets[7],
            (gateway.as_raw_fd(), true),
            "in the ring's file table"
        );
        super::super::batch::enable_drop_counter(gateway.as_raw_fd()).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for n in 0..3u8 {
            peer.send_to(&[n; 5], gateway.local_addr().unwrap())
                .unwrap();
        }
        let got = events(&mut ring, 3, &mut batch);
        assert_eq!(
            got,
            vec![
                Event::Datagram {
                    token: 7,
                    more: true
                };
                3
            ],
            "three datagrams, the receive still armed"
        );
        assert_eq!(&batch.bufs[0][..batch.lens[0]], &[2; 5]);
        assert_eq!(batch.addrs[0], Some(peer.local_addr().unwrap()));
        assert_eq!(batch.kernel_drops, None, "no drop yet, so no count");

        // A send goes out and reports its tag.
        let tag = SendTag {
            slot: 3,
            call: 99,
            web: true,
            len: 4,
        };
        assert!(ring.queue_send(7, b"pong", peer.local_addr().unwrap(), None, tag));
        let got = events(&mut ring, 1, &mut batch);
        assert_eq!(got, vec![Event::Sent { tag, ok: true }]);
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"pong"[..], gateway.local_addr().unwrap())
        );

        // Cancelled: the receive ends, and nothing more is reported.
        ring.cancel_recv(7).unwrap();
        let got = events(&mut ring, 1, &mut batch);
        assert_eq!(
            got,
            vec![Event::RecvStopped {
                token: 7,
                errno: libc::ECANCELED
            }]
        );
        peer.send_to(b"late", gateway.local_addr().unwrap())
            .unwrap();
        assert!(events(&mut ring, 1, &mut batch).is_empty());
        // Detached: the token names nothing any more.
        ring.detach(7);
        assert_eq!(
            ring.arm_recv(7).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        assert!(!ring.queue_send(7, b"x", peer.local_addr().unwrap(), None, tag));
    }

    #[test]
    fn polling_without_sleep_sees_only_what_has_arrived() {
        let (mut ring, gateway, peer, _) = armed(5);
        // Nothing sent yet: the receive was submitted, nothing completed.
        assert!(!ring.poll_completions().unwrap());
        assert!(ring.next_event().is_none());
        peer.send_to(b"now", gateway.local_addr().unwrap()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !ring.poll_completions().unwrap() {
            assert!(std::time::Instant::now() < deadline, "datagram never seen");
        }
        assert!(matches!(
            ring.next_event(),
            Some(Event::Datagram {
                token: 5,
                more: true
            })
        ));
        assert!(!ring.poll_completions().unwrap());
    }

    #[test]
    fn oversized_datagrams_come_without_a_source() {
        let (mut ring, gateway, peer, mut batch) = armed(4);
        // Larger than a batch entry, then larger than a receive buffer: the
        // relay counts an entry without a source as malformed.
        for size in [BUF_LEN, BUF_LEN + 100, RECV_BUFFER_LEN + 100] {
            peer.send_to(&vec![9; size], gateway.local_addr().unwrap())
                .unwrap();
            let got = events(&mut ring, 1, &mut batch);
            assert_eq!(got.len(), 1, "{size}: {got:?}");
            let fits = size <= BUF_LEN;
            assert_eq!(batch.addrs[0].is_some(), fits, "{size}");
            assert_eq!(batch.lens[0], size.min(BUF_LEN), "{size}");
        }
    }

    #[test]
    fn kernel_drops_come_with_datagrams() {
        let mut ring = ring();
        let gateway = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = gateway.as_raw_fd();
        super::super::batch::enable_drop_counter(fd).unwrap();
        super::super::batch::set_buffer_sizes(fd, 4096, 4096).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Far more than a 4 KiB buffer holds, before anyone reads.
        for _ in 0..200 {
            peer.send_to(&[1; 100], gateway.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::new();
        ring.attach(2, fd);
        ring.arm_recv(2).unwrap();
        let queued = events(&mut ring, 200, &mut batch).len();
        assert!(queued < 200, "the buffer overflowed: {queued} kept");
        peer.send_to(&[2; 100], gateway.local_addr().unwrap())
            .unwrap();
        assert_eq!(
            events(&mut ring, 1, &mut batch),
            vec![Event::Datagram {
                token: 2,
                more: true
            }]
        );
        assert_eq!(batch.kernel_drops, Some(200 - queued as u32));
    }

    #[test]
    fn every_buffer_comes_back() {
        let (mut ring, gateway, peer, mut batch) = armed(1);
        // Three times the buffers there are, in rounds the socket can hold:
        // only buffers given back let the later rounds in.
        let total = 3 * usize::from(RECV_BUFFERS);
        let mut received = 0;
        for round in 0..(total / 128) {
            for _ in 0..128 {
                peer.send_to(&[round as u8; 8], gateway.local_addr().unwrap())
                    .unwrap();
            }
            for e in events(&mut ring, 128, &mut batch) {
                match e {
                    Event::Datagram { more, .. } => {
                        received += 1;
                        if !more {
                            ring.arm_recv(1).unwrap();
                        }
                    }
                    Event::RecvStopped { .. } => ring.arm_recv(1).unwrap(),
                    _ => {}
                }
            }
        }
        assert_eq!(received, total);
    }

    /// On a socket bound to every address, a datagram says which address
    /// it came to, and a send names the address it leaves from (the whole
    /// 127/8 is this host's, so loopback shows both).
    #[test]
    fn datagrams_carry_their_local_address_both_ways() {
        let mut ring = ring();
        let gateway = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = gateway.local_addr().unwrap().port();
        super::super::batch::enable_local_address(gateway.as_raw_fd(), false).unwrap();
        super::super::batch::enable_drop_counter(gateway.as_raw_fd()).unwrap();
        ring.attach(4, gateway.as_raw_fd());
        ring.arm_recv(4).unwrap();
        let mut batch = Batch::new();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for to in ["127.0.0.3", "127.0.0.4"] {
            peer.send_to(b"hi", (to, port)).unwrap();
            let got = events(&mut ring, 1, &mut batch);
            assert!(
                matches!(got[..], [Event::Datagram { token: 4, .. }]),
                "{got:?}"
            );
            assert_eq!(batch.locals[0], Some(to.parse().unwrap()));
        }
        let tag = SendTag::default();
        let from: IpAddr = "127.0.0.5".parse().unwrap();
        assert!(ring.queue_send(4, b"back", peer.local_addr().unwrap(), Some(from), tag));
        assert_eq!(
            events(&mut ring, 1, &mut batch),
            vec![Event::Sent { tag, ok: true }]
        );
        let mut buf = [0u8; 16];
        let (n, source) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], source),
            (&b"back"[..], SocketAddr::new(from, port))
        );
    }

    #[test]
    fn control_and_address_bytes() {
        let mut control = vec![0u8; CONTROL_LEN];
        control[..size_of::<usize>()].copy_from_slice(&20usize.to_ne_bytes());
        let at = size_of::<usize>();
        control[at..at + 4].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        control[at + 4..at + 8].copy_from_slice(&super::super::batch::SO_RXQ_OVFL.to_ne_bytes());
        control[16..20].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(read_control(&control), (Some(77), None));
        assert_eq!(read_control(&control[..10]), (None, None));
        control[at..at + 4].copy_from_slice(&libc::IPPROTO_IP.to_ne_bytes());
        assert_eq!(read_control(&control), (None, None));

        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&5004u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(
            address_from_bytes(&v4),
            Some("10.0.0.9:5004".parse().unwrap())
        );
        assert_eq!(address_from_bytes(&v4[..6]), None);
        v4[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(address_from_bytes(&v4), None);
    }
}
