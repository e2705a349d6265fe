//! This host's own addresses: which ones browsers can be offered as ICE
//! host candidates when `[media] public-address` is empty, whether a
//! configured address is one of them (or a NAT's, which the host does not
//! have), and which local address the kernel would send from toward a peer.
//!
//! Below every protocol module: it reads the host's interfaces (getifaddrs,
//! through `nix`) and asks the routing table (a connected UDP socket that
//! sends nothing); it knows nothing of calls or SDP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// One address of an interface that is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    pub interface: String,
    pub ip: IpAddr,
}

/// Every address of every interface that is up, in the kernel's order.
pub fn host_addresses() -> std::io::Result<Vec<HostAddress>> {
    let mut out = Vec::new();
    for ifaddr in getifaddrs().map_err(std::io::Error::from)? {
        if !ifaddr.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(address) = ifaddr.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(*std::net::SocketAddrV4::from(*v4).ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(*std::net::SocketAddrV6::from(*v6).ip())
        } else {
            continue;
        };
        out.push(HostAddress {
            interface: ifaddr.interface_name,
            ip,
        });
    }
    Ok(out)
}

/// Whether browsers on a network can send to `ip` as a host candidate:
/// a unicast address that is not link-local (those are only valid on one
/// link with a zone) and not loopback (browsers pair loopback only when
/// started with a special flag).
pub fn is_lan_candidate(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || link_local)
        }
    }
}

/// The web leg's candidates when none are configured: every usable IPv4
/// address of the host, then every usable IPv6 one (global or unique
/// local; interfaces in the kernel's order, each address once), then IPv4
/// loopback last — for a browser on this host started to use it, and so a
/// host with no network still has one. A dual-stack host offers both
/// families; the web sockets then take both.
pub fn default_web_addresses(host: &[HostAddress]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for v6 in [false, true] {
        for a in host {
            if a.ip.is_ipv6() == v6 && is_lan_candidate(a.ip) && !out.contains(&a.ip) {
                out.push(a.ip);
            }
        }
    }
    out.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    out
}

/// Whether `ip` is one of this host's addresses (a socket can be bound to
/// it and packets can leave from it).
pub fn is_host_address(host: &[HostAddress], ip: IpAddr) -> bool {
    ip.is_loopback() || host.iter().any(|a| a.ip == ip)
}

/// The local address the kernel sends from toward `peer` (its route's
/// source), or None when there is no route.
pub fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let unspecified: IpAddr = match peer {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let probe = UdpSocket::bind(SocketAddr::new(unspecified, 0)).ok()?;
    probe.connect(peer).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(interface: &str, ip: &str) -> HostAddress {
        HostAddress {
            interface: interface.into(),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn defaults_are_lan_ipv4_then_ipv6_then_loopback() {
        let host = [
            at("lo", "127.0.0.1"),
            at("lo", "::1"),
            at("eth0", "192.0.2.10"),
            at("eth0", "fe80::1"),
            at("eth0", "2001:db8::10"),
            at("eth1", "169.254.3.4"),
            at("eth1", "198.51.100.10"),
            at("eth2", "192.0.2.10"),
        ];
        let ips: Vec<String> = default_web_addresses(&host)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ips,
            ["192.0.2.10", "198.51.100.10", "2001:db8::10", "127.0.0.1"]
        );
    }

    #[test]
    fn a_host_without_network_offers_loopback() {
        let ips = default_web_addresses(&[at("lo", "127.0.0.1")]);
        assert_eq!(ips, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }

    #[test]
    fn host_addresses_are_told_from_a_nat_address() {
        let host = [at("eth0", "10.0.0.5")];
        assert!(is_host_address(&host, "10.0.0.5".parse().unwrap()));
        assert!(is_host_address(&host, "127.0.0.1".parse().unwrap()));
        assert!(!is_host_address(&host, "203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn this_host_is_read() {
        let host = host_addresses().unwrap();
        assert!(host.iter().any(|a| a.ip.is_loopback()), "{host:?}");
        let to_loopback = route_source("127.0.0.1:9".parse().unwrap());
        assert_eq!(to_loopback, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
