//! Media port ranges: which UDP ports are free, handed out as leases that
//! give their ports back when dropped — so every way a call ends (hangup,
//! error, timeout, failed setup) returns its ports without special code.
//!
//! Ports are reused oldest-first, so a port just freed is not handed out
//! again while stray packets of its last call may still arrive.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// API `no_media_ports`, SIP 503.
    #[error("no free media port in {min}-{max}")]
    NoMediaPorts { min: u16, max: u16 },
}

/// The free ports of one range; sans-IO bookkeeping only.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    free: VecDeque<u16>,
    in_use: Vec<bool>,
    capacity: usize,
}

impl PortPool {
    /// Every port of `min..=max` (`pairs`: even RTP ports whose RTCP port+1 is in range too).
    pub fn new(min: u16, max: u16, pairs: bool) -> Self {
        let step: u16 = if pairs { 2 } else { 1 };
        let first = if pairs && min % 2 == 1 {
            min.saturating_add(1)
        } else {
            min
        };
        let mut free = VecDeque::new();
        let mut p = u32::from(first);
        while p + u32::from(step) - 1 <= u32::from(max) && p <= u32::from(max) {
            free.push_back(p as u16);
            p += u32::from(step);
        }
        PortPool {
            min,
            max,
            in_use: vec![false; usize::from(max.saturating_sub(min)) + 1],
            capacity: free.len(),
            free,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    pub fn take(&mut self) -> Result<u16, PortError> {
        let port = self.free.pop_front().ok_or(PortError::NoMediaPorts {
            min: self.min,
            max: self.max,
        })?;
        self.in_use[usize::from(port - self.min)] = true;
        Ok(port)
    }

    /// Returns `port`; a port not taken (or returned twice) is ignored.
    pub fn give_back(&mut self, port: u16) {
        if port < self.min || port > self.max {
            return;
        }
        let slot = &mut self.in_use[usize::from(port - self.min)];
        if *slot {
            *slot = false;
            self.free.push_back(port);
        }
    }
}

/// A port range shared by every call.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    pool: Arc<Mutex<PortPool>>,
    pairs: bool,
}

impl PortAllocator {
    pub fn new(min: u16, max: u16, pairs: bool) -> Self {
        PortAllocator {
            pool: Arc::new(Mutex::new(PortPool::new(min, max, pairs))),
            pairs,
        }
    }

    fn pool(&self) -> MutexGuard<'_, PortPool> {
        // Each pool method completes its own change, so a poisoned lock is still consistent.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn free_count(&self) -> usize {
        self.pool().free_count()
    }

    pub fn capacity(&self) -> usize {
        self.pool().capacity()
    }

    /// Leases a port (or an even/odd pair) without binding it.
    pub fn lease(&self) -> Result<PortLease, PortError> {
        let port = self.pool().take()?;
        Ok(PortLease {
            pool: self.pool.clone(),
            port,
            pair: self.pairs,
        })
    }

    /// Leases ports and binds UDP sockets on `ip` to them: one socket, or
    /// RTP and RTCP sockets for a pair. Ports that another process holds are
    /// skipped (and come back to the pool later); gives up after trying every
    /// free port once.
    pub fn bind(&self, ip: IpAddr) -> Result<BoundPorts, PortError> {
        let attempts = self.free_count();
        for _ in 0..attempts {
            let lease = self.lease()?;
            let rtp = match bind_udp(SocketAddr::new(ip, lease.port)) {
                Ok(s) => s,
                Err(_) => continue,
            };
            let rtcp = if self.pairs {
                match bind_udp(SocketAddr::new(ip, lease.port + 1)) {
                    Ok(s) => Some(s),
                    Err(_) => continue,
                }
            } else {
                None
            };
            return Ok(BoundPorts { lease, rtp, rtcp });
        }
        let pool = self.pool();
        Err(PortError::NoMediaPorts {
            min: pool.min,
            max: pool.max,
        })
    }
}

/// A UDP socket on `at`; on IPv6's any-address it takes IPv4 too (as
/// IPv4-mapped addresses, whatever `net.ipv6.bindv6only` says): a
/// dual-stack web leg.
pub fn bind_udp(at: SocketAddr) -> std::io::Result<UdpSocket> {
    if !(at.is_ipv6() && at.ip().is_unspecified()) {
        return UdpSocket::bind(at);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_only_v6(false)?;
    socket.bind(&at.into())?;
    Ok(socket.into())
}

/// A leased port (or pair); dropping it returns the port to its range.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<Mutex<PortPool>>,
    port: u16,
    pair: bool,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The RTCP port of a pair.
    pub fn rtcp_port(&self) -> Option<u16> {
        self.pair.then(|| self.port + 1)
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .give_back(self.port);
    }
}

/// Sockets bound on leased ports. Fields drop in order: sockets close before
/// the ports go back to the pool.
#[derive(Debug)]
pub struct BoundPorts {
    pub rtp: UdpSocket,
    pub rtcp: Option<UdpSocket>,
    pub lease: PortLease,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_and_fit() {
        let mut pool = PortPool::new(30001, 30010, true);
        let mut got = Vec::new();
        while let Ok(p) = pool.take() {
            got.push(p);
        }
        assert_eq!(
            got,
            vec![30002, 30004, 30006, 30008],
            "30010 has no 30011 for RTCP"
        );
        assert_eq!(
            pool.take(),
            Err(PortError::NoMediaPorts {
                min: 30001,
                max: 30010
            })
        );
        assert_eq!(pool.capacity(), 4);
        let single = PortPool::new(20000, 20002, false);
        assert_eq!(single.free_count(), 3);
        assert_eq!(single.capacity(), 3);
    }

    #[test]
    fn oldest_free_port_first_and_no_double_return() {
        let mut pool = PortPool::new(20000, 20002, false);
        let a = pool.take().unwrap();
        pool.give_back(a);
        assert_eq!(
            pool.take().unwrap(),
            20001,
            "a just-freed port waits its turn"
        );
        pool.give_back(a);
        pool.give_back(a);
        assert_eq!(
            pool.free_count(),
            2,
            "double return ignored (a was not taken again)"
        );
        pool.give_back(5);
        assert_eq!(pool.free_count(), 2);
    }

    /// Thousands of calls that fail at random points: every port comes back.
    #[test]
    fn no_leak_under_random_failures() {
        let web = PortAllocator::new(40000, 40199, false);
        let sip = PortAllocator::new(41000, 41399, true);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut live: Vec<(PortLease, PortLease)> = Vec::new();
        let mut exhausted = 0;
        for _ in 0..20_000 {
            match next() % 6 {
                // Set-up fails after the web port: that lease drops at once.
                0 => {
                    let _web = web.lease();
                }
                // A call comes up (or the range is full: a clear error).
                1..=3 => match (web.lease(), sip.lease()) {
                    (Ok(w), Ok(s)) => live.push((w, s)),
                    (Err(PortError::NoMediaPorts { .. }), _)
                    | (_, Err(PortError::NoMediaPorts { .. })) => exhausted += 1,
                },
                // A random call ends (hangup, timeout, error: all are drops).
                _ => {
                    if !live.is_empty() {
                        let i = (next() as usize) % live.len();
                        live.swap_remove(i);
                    }
                }
            }
            assert_eq!(web.free_count() + live.len(), web.capacity());
        }
        assert!(exhausted > 0, "the test reached exhaustion at least once");
        drop(live);
        assert_eq!(web.free_count(), web.capacity());
        assert_eq!(sip.free_count(), sip.capacity());
    }

    #[test]
    fn bind_skips_ports_held_elsewhere() {
        // Find two free adjacent ports, hold the first elsewhere.
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        let (min, max) = (base.saturating_sub(2).max(1024), base.saturating_add(2));
        let allocator = PortAllocator::new(min, max, false);
        let blocker = UdpSocket::bind(("127.0.0.1", min)).ok();
        let bound = allocator.bind("127.0.0.1".parse().unwrap()).unwrap();
        if blocker.is_some() {
            assert_ne!(bound.lease.port(), min);
        }
        assert_eq!(bound.rtp.local_addr().unwrap().port(), bound.lease.port());
        let taken = allocator.capacity() - allocator.free_count();
        assert!(taken >= 1);
        drop(bound);
        assert_eq!(
            allocator.free_count(),
            allocator.capacity(),
            "busy ports came back too"
        );
    }
}
