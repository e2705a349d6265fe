//! Batched UDP receive and send (`recvmmsg`/`sendmmsg`) into buffers owned by
//! the relay worker. With `ring` (io_uring), the only code with `unsafe`: the
//! syscalls take raw pointers to arrays that live in [`Batch`], which is
//! allocated once per worker and reused for every packet.
//!
//! A web leg's socket listens on every address of the host, and a browser
//! may reach it at any of the addresses it was offered. Replies must leave
//! from the address the browser sent to (ICE checks fail otherwise, and the
//! routing table's choice differs on a host with several addresses), so the
//! web socket reports each datagram's destination (`IP_PKTINFO` /
//! `IPV6_PKTINFO`, see [`enable_local_address`]) and sends name their
//! source the same way ([`Batch::locals`], [`send_from`]).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams moved per syscall.
pub const BATCH: usize = 32;
/// Room per datagram: an Ethernet MTU, plus slack for SRTP tags added in place.
pub const BUF_LEN: usize = 1600;

/// Fixed arrays for one `recvmmsg`/`sendmmsg` round.
pub struct Batch {
    pub bufs: Box<[[u8; BUF_LEN]; BATCH]>,
    /// Datagram lengths (received) or lengths to send.
    pub lens: [usize; BATCH],
    /// Source (received) or destination (to send) of each datagram.
    pub addrs: [Option<SocketAddr>; BATCH],
    /// The local address each datagram was sent to (received, on a socket
    /// with [`enable_local_address`]) or is to be sent from (to send; None
    /// lets the kernel choose by its routes).
    pub locals: [Option<IpAddr>; BATCH],
    /// The socket's cumulative count of datagrams the kernel dropped for a
    /// full receive buffer, as last reported (needs [`enable_drop_counter`]).
    pub kernel_drops: Option<u32>,
    storage: [libc::sockaddr_storage; BATCH],
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
    /// Ancillary data per datagram: on receive the drop count and the
    /// destination address, on send the source address.
    control: [Control; BATCH],
}

/// Room for the control messages of one datagram: `SO_RXQ_OVFL` (24 bytes
/// on 64-bit Linux) and an `IPV6_PKTINFO` (40; `IP_PKTINFO` takes 32).
pub(super) const CONTROL_LEN: usize = 64;

/// Control message bytes, aligned as the kernel's `cmsghdr` needs.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct Control(pub(super) [u8; CONTROL_LEN]);

impl Control {
    pub(super) const fn new() -> Self {
        Control([0; CONTROL_LEN])
    }
}

/// Linux `SO_RXQ_OVFL` (asm-generic/socket.h); not exported by the libc crate.
pub(super) const SO_RXQ_OVFL: libc::c_int = 40;

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        // SAFETY: these C structs are plain data for which all-zero bytes are
        // a valid (empty) value; every pointer in them is set before each syscall.
        let (storage, iovecs, headers) = unsafe { (zeroed(), zeroed(), zeroed()) };
        Batch {
            bufs: Box::new([[0u8; BUF_LEN]; BATCH]),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            locals: [None; BATCH],
            kernel_drops: None,
            storage,
            iovecs,
            headers,
            control: [Control::new(); BATCH],
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking. Returns how many
    /// arrived (0 when none is waiting); `lens` and `addrs` describe them.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN,
            };
            self.headers[i].msg_hdr.msg_name =
                (&mut self.storage[i] as *mut libc::sockaddr_storage).cast();
            self.headers[i].msg_hdr.msg_namelen =
                size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            self.headers[i].msg_hdr.msg_iov = &mut self.iovecs[i];
            self.headers[i].msg_hdr.msg_iovlen = 1;
            self.headers[i].msg_hdr.msg_control = self.control[i].0.as_mut_ptr().cast();
            self.headers[i].msg_hdr.msg_controllen = CONTROL_LEN as _;
            self.headers[i].msg_hdr.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: `headers` holds BATCH entries whose name, iovec and control
        // pointers point into `self.storage`, `self.iovecs`, `self.bufs` and
        // `self.control`, all alive and
        // not otherwise borrowed for the duration of the call; the lengths given
        // match those allocations. MSG_DONTWAIT keeps the call from blocking.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.headers[i].msg_len as usize;
            self.addrs[i] = from_storage(&self.storage[i]);
            let written = self.headers[i].msg_hdr.msg_controllen.min(CONTROL_LEN);
            let (drops, local) = read_control(&self.control[i].0[..written]);
            if drops.is_some() {
                self.kernel_drops = drops;
            }
            self.locals[i] = local;
        }
        Ok(n)
    }

    /// Sends datagrams `bufs[i][..lens[i]]` to `addrs[i]` (from `locals[i]`
    /// when set) for each index in `order[..count]` (indices into the
    /// batch), from socket `fd`. Returns how many the kernel took; the rest
    /// could not be sent now (buffer full).
    pub fn send(&mut self, fd: RawFd, order: &[usize]) -> io::Result<usize> {
        let mut count = 0;
        for &i in order {
            let Some(addr) = self.addrs[i] else { continue };
            let name_len = to_storage(addr, &mut self.storage[count]);
            self.iovecs[count] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            // The control buffers' receive contents were read in `recv`.
            let control_len = match self.locals[i] {
                Some(source) => write_source(&mut self.control[count], source),
                None => 0,
            };
            let h = &mut self.headers[count].msg_hdr;
            h.msg_name = (&mut self.storage[count] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = name_len;
            h.msg_iov = &mut self.iovecs[count];
            h.msg_iovlen = 1;
            h.msg_control = if control_len == 0 {
                std::ptr::null_mut()
            } else {
                self.control[count].0.as_mut_ptr().cast()
            };
            h.msg_controllen = control_len as _;
            h.msg_flags = 0;
            count += 1;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: entries sent..count of `headers` point at initialized
            // addresses in `self.storage`, iovecs over live buffers in
            // `self.bufs` with in-bounds lengths, and control messages
            // written by `write_source` into `self.control` (or none);
            // nothing else borrows them during the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers.as_mut_ptr().add(sent),
                    (count - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    // A datagram the network refuses (e.g. ICMP unreachable
                    // reported on this socket) is skipped, not fatal.
                    _ if sent + 1 < count => {
                        sent += 1;
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            if n == 0 {
                break;
            }
            sent += n as usize;
        }
        Ok(sent)
    }
}

/// A `cmsghdr` in bytes: its length (a `size_t`), level and type, padded
/// to the length's alignment; payloads are padded the same way.
const CMSG_HEADER: usize = cmsg_align(size_of::<usize>() + 8);

const fn cmsg_align(n: usize) -> usize {
    (n + size_of::<usize>() - 1) & !(size_of::<usize>() - 1)
}

/// From a received message's ancillary data (`control`, as much as the
/// kernel wrote): the `SO_RXQ_OVFL` drop count and the datagram's
/// destination address (`IP_PKTINFO`/`IPV6_PKTINFO`), each if present.
/// Read field by field, so a short or odd buffer yields nothing.
pub(super) fn read_control(control: &[u8]) -> (Option<u32>, Option<IpAddr>) {
    let (mut drops, mut local) = (None, None);
    let word = size_of::<usize>();
    let mut at = 0;
    while let Some(header) = control.get(at..at + CMSG_HEADER) {
        let Ok(len_bytes) = header[..word].try_into() else {
            break;
        };
        let len = usize::from_ne_bytes(len_bytes);
        let level = i32::from_ne_bytes([
            header[word],
            header[word + 1],
            header[word + 2],
            header[word + 3],
        ]);
        let kind = i32::from_ne_bytes([
            header[word + 4],
            header[word + 5],
            header[word + 6],
            header[word + 7],
        ]);
        let Some(data) = (len >= CMSG_HEADER)
            .then(|| control.get(at + CMSG_HEADER..at + len))
            .flatten()
        else {
            break;
        };
        match (level, kind) {
            (libc::SOL_SOCKET, SO_RXQ_OVFL) => {
                drops = data
                    .get(..4)
                    .map(|d| u32::from_ne_bytes([d[0], d[1], d[2], d[3]]));
            }
            // in_pktinfo: interface index, local address, header destination.
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                if let Some(d) = data.get(8..12) {
                    local = Some(IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3])));
                }
            }
            // in6_pktinfo: destination address, interface index.
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                if let Some(d) = data.get(..16).and_then(|d| <[u8; 16]>::try_from(d).ok()) {
                    // An IPv4 datagram on a dual-stack socket: IPv4 again.
                    local = Some(IpAddr::V6(Ipv6Addr::from(d)).to_canonical());
                }
            }
            _ => {}
        }
        at += cmsg_align(len);
    }
    (drops, local)
}

/// Writes into `control` the control message that makes a datagram leave
/// from `source` (`IP_PKTINFO` with it as `ipi_spec_dst`, or
/// `IPV6_PKTINFO`); returns its length, the `msg_controllen` to give.
pub(super) fn write_source(control: &mut Control, source: IpAddr) -> usize {
    let bytes = &mut control.0;
    let word = size_of::<usize>();
    let (level, kind, data_len) = match source {
        IpAddr::V4(v4) => {
            let data = &mut bytes[CMSG_HEADER..CMSG_HEADER + 12];
            data.fill(0);
            data[4..8].copy_from_slice(&v4.octets());
            (libc::IPPROTO_IP, libc::IP_PKTINFO, 12)
        }
        IpAddr::V6(v6) => {
            let data = &mut bytes[CMSG_HEADER..CMSG_HEADER + 20];
            data.fill(0);
            data[..16].copy_from_slice(&v6.octets());
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, 20)
        }
    };
    bytes[..word].copy_from_slice(&(CMSG_HEADER + data_len).to_ne_bytes());
    bytes[word..word + 4].copy_from_slice(&level.to_ne_bytes());
    bytes[word + 4..word + 8].copy_from_slice(&kind.to_ne_bytes());
    CMSG_HEADER + cmsg_align(data_len)
}

/// Asks the kernel to report with each datagram the local address it was
/// sent to (`IP_PKTINFO`, or `IPV6_RECVPKTINFO` on an IPv6 socket).
pub fn enable_local_address(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    set_flag(fd, level, option)
}

/// Sends one datagram from socket `fd` to `to`, leaving from `from` when
/// given (the address a browser's request came to) — for the few STUN and
/// DTLS datagrams the signaling side sends on a web leg's socket.
pub fn send_from(
    fd: RawFd,
    data: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    // SAFETY: an all-zero sockaddr_storage and msghdr are valid empty values.
    let (mut storage, mut header): (libc::sockaddr_storage, libc::msghdr) =
        unsafe { (zeroed(), zeroed()) };
    let mut control = Control::new();
    let name_len = to_storage(to, &mut storage);
    let mut iov = libc::iovec {
        // sendmsg only reads through this pointer.
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    header.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    header.msg_namelen = name_len;
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if let Some(source) = from {
        let len = write_source(&mut control, source);
        header.msg_control = control.0.as_mut_ptr().cast();
        header.msg_controllen = len as _;
    }
    // SAFETY: `header` points at `storage`, `iov` (over `data`, which
    // outlives the call) and `control`, all alive on this stack frame for
    // the duration of the call, with the lengths of what they hold.
    let n = unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn set_flag(fd: RawFd, level: libc::c_int, option: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to report, with received datagrams, how many it dropped
/// on this socket for a full receive buffer.
pub fn enable_drop_counter(fd: RawFd) -> io::Result<()> {
    set_flag(fd, libc::SOL_SOCKET, SO_RXQ_OVFL)
}

/// Sets a socket's kernel receive and send buffer sizes (bytes; the kernel
/// caps them at `net.core.rmem_max` / `wmem_max`). Bigger buffers ride out
/// bursts while a worker is busy elsewhere.
pub fn set_buffer_sizes(fd: RawFd, recv: usize, send: usize) -> io::Result<()> {
    for (option, value) in [(libc::SO_RCVBUF, recv), (libc::SO_SNDBUF, send)] {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: `value` is a live c_int and the length passed is its size;
        // setsockopt only reads it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A sender's address as the rest of the gateway sees it: an IPv4 peer of a
/// dual-stack socket (`::ffff:a.b.c.d`) as the IPv4 address it is, so ICE,
/// source checks and STUN answers see one address whichever socket took it
/// (a send to an IPv4 address from a dual-stack socket goes out as IPv4).
pub(crate) fn canonical(v6: SocketAddrV6) -> SocketAddr {
    match v6.ip().to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
        None => SocketAddr::V6(v6),
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in here (family AF_INET), and
            // sockaddr_storage is large and aligned enough for it.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6 (family AF_INET6).
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(canonical(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub(super) fn to_storage(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let a: &mut libc::sockaddr_in =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = v4.port().to_be();
            a.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            a.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let a: &mut libc::sockaddr_in6 =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = v6.port().to_be();
            a.sin6_flowinfo = v6.flowinfo();
            a.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            a.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_over_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        let mut out = Batch::new();
        for i in 0..5 {
            out.bufs[i][..3].copy_from_slice(&[i as u8, 1, 2]);
            out.lens[i] = 3;
            out.addrs[i] = Some(b_addr);
        }
        assert_eq!(out.send(a.as_raw_fd(), &[0, 1, 2, 3, 4]).unwrap(), 5);
        let mut inb = Batch::new();
        let mut got = 0;
        for _ in 0..100 {
            got += inb.recv(b.as_raw_fd()).unwrap();
            if got == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 5);
        assert_eq!(inb.addrs[0], Some(a.local_addr().unwrap()));
        assert_eq!(&inb.bufs[4][..inb.lens[4]], &[4, 1, 2]);
        assert_eq!(
            inb.recv(b.as_raw_fd()).unwrap(),
            0,
            "nothing waiting: no block"
        );
    }

    /// A socket bound to every address learns where each datagram was
    /// sent, and replies from that address, in a batch or one by one.
    #[test]
    fn local_addresses_come_in_and_go_out() {
        let gateway = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = gateway.local_addr().unwrap().port();
        enable_local_address(gateway.as_raw_fd(), false).unwrap();
        enable_drop_counter(gateway.as_raw_fd()).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        peer.send_to(b"a", ("127.0.0.7", port)).unwrap();
        peer.send_to(b"b", ("127.0.0.8", port)).unwrap();
        let mut batch = Batch::new();
        let mut got = 0;
        for _ in 0..100 {
            got += batch.recv(gateway.as_raw_fd()).unwrap();
            if got == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 2);
        assert_eq!(
            batch.locals[..2],
            [
                Some("127.0.0.7".parse().unwrap()),
                Some("127.0.0.8".parse().unwrap())
            ]
        );
        // Each goes back from where it came; a third with no source set
        // leaves from the kernel's choice.
        for i in 0..2 {
            batch.addrs[i] = Some(peer.local_addr().unwrap());
        }
        assert_eq!(batch.send(gateway.as_raw_fd(), &[1, 0]).unwrap(), 2);
        let mut buf = [0u8; 8];
        let (_, first) = peer.recv_from(&mut buf).unwrap();
        let (_, second) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(first, SocketAddr::new("127.0.0.8".parse().unwrap(), port));
        assert_eq!(second, SocketAddr::new("127.0.0.7".parse().unwrap(), port));
        let to = peer.local_addr().unwrap();
        send_from(
            gateway.as_raw_fd(),
            b"c",
            to,
            Some("127.0.0.9".parse().unwrap()),
        )
        .unwrap();
        let (_, third) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(third, SocketAddr::new("127.0.0.9".parse().unwrap(), port));
        send_from(gateway.as_raw_fd(), b"d", to, None).unwrap();
        let (_, fourth) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(fourth, SocketAddr::new("127.0.0.1".parse().unwrap(), port));
    }

    #[test]
    fn control_bytes_round_trip() {
        for source in ["192.0.2.10", "2001:db8::10"] {
            let ip: IpAddr = source.parse().unwrap();
            let mut control = Control::new();
            let len = write_source(&mut control, ip);
            // What we write for sending has the layout the kernel gives on
            // receive, except that IPv4's address sits in ipi_spec_dst.
            let (drops, local) = read_control(&control.0[..len]);
            assert_eq!(drops, None);
            match ip {
                IpAddr::V6(_) => assert_eq!(local, Some(ip)),
                IpAddr::V4(_) => assert_eq!(local, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
            }
        }
        assert_eq!(read_control(&[0xff; 7]), (None, None));
        assert_eq!(read_control(&[0xff; CONTROL_LEN]), (None, None));
    }

    #[test]
    fn kernel_drops_are_reported() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_drop_counter(b.as_raw_fd()).unwrap();
        set_buffer_sizes(b.as_raw_fd(), 4096, 65536).unwrap();
        // Far more than a tiny receive buffer holds.
        for _ in 0..500 {
            let _ = a.send_to(&[0u8; 1000], b.local_addr().unwrap());
        }
        // Read what fit, then one more datagram carries the drop count.
        let mut inb = Batch::new();
        while inb.recv(b.as_raw_fd()).unwrap() > 0 {}
        a.send_to(&[1u8; 10], b.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        while inb.recv(b.as_raw_fd()).unwrap() > 0 {}
        let drops = inb.kernel_drops.expect("the kernel reported drops");
        assert!(drops > 400, "{drops}");
    }
}
