//! Who may talk SIP to us: the configured server's addresses and the
//! networks `[sip] trusted-sources` lists. Everything else is dropped
//! unanswered before it is parsed (a reply would confirm a gateway is
//! here, and an INVITE from anywhere would ring a browser and hold ports).
//!
//! Checked per datagram and per accepted connection, so it is a short list
//! scanned in place: no allocation, no lock.

use std::net::IpAddr;

use ipnet::IpNet;

/// The addresses SIP is taken from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedSources {
    networks: Vec<IpNet>,
}

impl TrustedSources {
    /// The server's resolved addresses (each a host network) and the
    /// configured networks. Empty: nobody is trusted.
    pub fn new(server: &[IpAddr], networks: &[IpNet]) -> Self {
        let mut all: Vec<IpNet> = server
            .iter()
            .map(|ip| IpNet::from(ip.to_canonical()))
            .collect();
        all.extend(networks.iter().copied());
        all.sort();
        all.dedup();
        TrustedSources { networks: all }
    }

    /// Trusts everything (unit tests of the cores that do not test this).
    pub fn anyone() -> Self {
        TrustedSources {
            networks: vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
        }
    }

    /// Whether SIP from `ip` is taken (an IPv4-mapped IPv6 address counts
    /// as the IPv4 one, as a dual-stack socket reports it).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_network;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_server_and_listed_networks_are_taken_the_rest_not() {
        let nets = [
            parse_network("10.1.0.0/16").unwrap(),
            parse_network("2001:db8::/32").unwrap(),
        ];
        let sources = TrustedSources::new(&[ip("192.0.2.10")], &nets);
        assert!(sources.allows(ip("192.0.2.10")));
        assert!(!sources.allows(ip("192.0.2.11")));
        assert!(sources.allows(ip("10.1.200.3")));
        assert!(!sources.allows(ip("10.2.0.1")));
        assert!(sources.allows(ip("2001:db8::5")));
        assert!(!sources.allows(ip("2001:db9::5")));
        // As a dual-stack socket reports an IPv4 peer.
        assert!(sources.allows(ip("::ffff:192.0.2.10")));
        assert!(!sources.allows(ip("::ffff:192.0.2.11")));
    }

    #[test]
    fn no_server_and_no_list_trusts_nobody() {
        let sources = TrustedSources::new(&[], &[]);
        assert!(!sources.allows(ip("127.0.0.1")));
        assert!(TrustedSources::anyone().allows(ip("203.0.113.9")));
        assert!(TrustedSources::anyone().allows(ip("2001:db8::1")));
    }

    #[test]
    fn entries_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_network("127.0.0.1").unwrap(),
            "127.0.0.1/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_network(" 10.0.0.0/8 ").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        let e = parse_network("10.0.0.1/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        let e = parse_network("sip.example.com").unwrap_err();
        assert!(e.contains("sip.example.com"), "{e}");
        assert!(parse_network("10.0.0.0/33").is_err());
    }
}
