//! Batched UDP receive and send (`recvmmsg`/`sendmmsg`) into buffers owned by
//! the relay worker. With `ring` (io_uring), the only code with `unsafe`: the
//! syscalls take raw pointers to arrays that live in [`Batch`], which is
//! allocated once per worker and reused for every packet.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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
    /// The socket's cumulative count of datagrams the kernel dropped for a
    /// full receive buffer, as last reported (needs [`enable_drop_counter`]).
    pub kernel_drops: Option<u32>,
    storage: [libc::sockaddr_storage; BATCH],
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
    /// Ancillary data per datagram (room for one u32 control message), u64 for alignment.
    control: [[u64; 4]; BATCH],
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
            kernel_drops: None,
            storage,
            iovecs,
            headers,
            control: [[0; 4]; BATCH],
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
            self.headers[i].msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            self.headers[i].msg_hdr.msg_controllen = size_of::<[u64; 4]>() as _;
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
            if let Some(drops) = drop_count(&self.headers[i].msg_hdr) {
                self.kernel_drops = Some(drops);
            }
        }
        Ok(n)
    }

    /// Sends datagrams `bufs[i][..lens[i]]` to `addrs[i]` for each index in
    /// `order[..count]` (indices into the batch), from socket `fd`. Returns how
    /// many the kernel took; the rest could not be sent now (buffer full).
    pub fn send(&mut self, fd: RawFd, order: &[usize]) -> io::Result<usize> {
        let mut count = 0;
        for &i in order {
            let Some(addr) = self.addrs[i] else { continue };
            let name_len = to_storage(addr, &mut self.storage[count]);
            self.iovecs[count] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let h = &mut self.headers[count].msg_hdr;
            h.msg_name = (&mut self.storage[count] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = name_len;
            h.msg_iov = &mut self.iovecs[count];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            count += 1;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: entries sent..count of `headers` point at initialized
            // addresses in `self.storage` and iovecs over live buffers in
            // `self.bufs` with in-bounds lengths; nothing else borrows them
            // during the call.
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

/// The `SO_RXQ_OVFL` value in a received message's ancillary data, if any.
fn drop_count(header: &libc::msghdr) -> Option<u32> {
    // SAFETY: `header` was filled by recvmmsg: msg_control points at this
    // batch's control buffer and msg_controllen says how much of it the
    // kernel wrote, which is what the CMSG_* walkers rely on.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == SO_RXQ_OVFL {
                let data = libc::CMSG_DATA(cmsg).cast::<u32>();
                return Some(data.read_unaligned());
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Asks the kernel to report, with received datagrams, how many it dropped
/// on this socket for a full receive buffer.
pub fn enable_drop_counter(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_RXQ_OVFL,
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
            Some(SocketAddr::V6(SocketAddrV6::new(
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
