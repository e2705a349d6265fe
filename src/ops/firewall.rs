//! `firewall-rules`: nftables rules for exactly the configured listeners and
//! port ranges. Web side (HTTPS and the web UDP range) is open to anyone; SIP
//! side (SIP port and SIP media range) only to and from the SIP server.
//!
//! The rules live in their own `inet` table with `policy accept` chains that
//! accept what the gateway needs and drop everything else aimed at the
//! gateway's own ports, so they compose with a host's existing ruleset
//! without touching other services (note that a drop in another table still wins).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::config::{Config, SipTransport};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("sip.server {0:?} does not resolve to an address: {1}")]
    Resolve(String, String),
    #[error("{0} is not a valid listen address")]
    Listen(&'static str),
}

fn addr(text: &str, key: &'static str) -> Result<SocketAddr, FirewallError> {
    text.parse().map_err(|_| FirewallError::Listen(key))
}

/// Resolves every `sip.server` entry to the addresses the rules allow.
pub fn sip_server_addresses(config: &Config) -> Result<Vec<IpAddr>, FirewallError> {
    let mut ips = Vec::new();
    for server in config.sip.server.entries() {
        let (host, port) = crate::config::parse_server(server, config.sip.transport)
            .map_err(|e| FirewallError::Resolve(server.clone(), e))?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            ips.push(ip);
            continue;
        }
        let resolved: Vec<IpAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| FirewallError::Resolve(server.clone(), e.to_string()))?
            .map(|a| a.ip())
            .collect();
        if resolved.is_empty() {
            return Err(FirewallError::Resolve(server.clone(), "no address".into()));
        }
        ips.extend(resolved);
    }
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// The ruleset, given the SIP server's addresses (empty when none is configured).
pub fn render(
    config: &Config,
    sip_servers: &[IpAddr],
    source: &str,
) -> Result<String, FirewallError> {
    let media = &config.media;
    // One port for every call's browser media, or a range of them.
    let web_range = if media.web_port != 0 {
        media.web_port.to_string()
    } else {
        format!("{}-{}", media.web_port_min, media.web_port_max)
    };
    let sip_range = format!("{}-{}", media.sip_port_min, media.sip_port_max);
    let sip_port = addr(&config.sip.listen, "sip.listen")?.port();
    // Over UDP the listener takes TCP too (RFC 3261 §18: a server sends a
    // request too large for UDP over TCP); over TCP or TLS only TCP.
    let sip_protos: &[&str] = match config.sip.transport {
        SipTransport::Udp => &["udp", "tcp"],
        SipTransport::Tcp | SipTransport::Tls => &["tcp"],
    };
    // Whom the gateway takes SIP from: the server and `trusted-sources`,
    // each as (IPv6?, address or network).
    let mut peers: Vec<(bool, String)> = sip_servers
        .iter()
        .map(|ip| (ip.is_ipv6(), ip.to_string()))
        .collect();
    for entry in &config.sip.trusted_sources {
        if let Ok(net) = crate::config::parse_network(entry) {
            peers.push((matches!(net, ipnet::IpNet::V6(_)), net.to_string()));
        }
    }
    let family = |v6: bool| if v6 { "ip6" } else { "ip" };
    let sources: Vec<String> = peers
        .iter()
        .map(|(v6, at)| format!("{} saddr {at}", family(*v6)))
        .collect();

    let mut lines: Vec<String> = vec![
        "#!/usr/sbin/nft -f".into(),
        format!("# nftables rules for webrtc-sip-gateway, made from {source}."),
        "# Load with: nft -f <this file>. They accept the gateway's traffic and drop".into(),
        "# anything else aimed at its ports; other services are left alone.".into(),
        "table inet webrtc_sip_gateway".into(),
        "delete table inet webrtc_sip_gateway".into(),
        "table inet webrtc_sip_gateway {".into(),
        "    chain input {".into(),
        "        type filter hook input priority filter; policy accept;".into(),
        "        ct state established,related accept".into(),
        "        # Web side, from anywhere".into(),
    ];
    let mut rule = |text: String| lines.push(format!("        {text}"));
    if !config.http.tls_listen.is_empty() {
        let https = addr(&config.http.tls_listen, "http.tls-listen")?;
        rule(format!(
            "tcp dport {} accept comment \"signaling API (HTTPS)\"",
            https.port()
        ));
    }
    if !config.http.listen.is_empty() {
        let http = addr(&config.http.listen, "http.listen")?;
        if http.ip().is_loopback() {
            rule(format!(
                "# plain HTTP on {http} is loopback-only: nothing to open"
            ));
        } else {
            rule(format!(
                "tcp dport {} accept comment \"signaling API (plain HTTP; prefer HTTPS)\"",
                http.port()
            ));
        }
    }
    rule(format!(
        "udp dport {web_range} accept comment \"browser media: ICE, DTLS-SRTP, SRTP\""
    ));
    if media.web_tcp_port != 0 {
        rule(format!(
            "tcp dport {} accept comment \"browser media over TCP (ICE-TCP), when UDP is blocked\"",
            media.web_tcp_port
        ));
    }
    if sources.is_empty() {
        rule(
            "# SIP side: no sip.server and no trusted-sources (echo only), so it stays closed"
                .into(),
        );
    } else {
        rule("# SIP side, from the SIP server (and trusted-sources) only".into());
        for s in &sources {
            for proto in sip_protos {
                rule(format!(
                    "{s} {proto} dport {sip_port} accept comment \"SIP signaling\""
                ));
            }
            rule(format!(
                "{s} udp dport {sip_range} accept comment \"SIP media: RTP/RTCP\""
            ));
        }
    }
    for proto in sip_protos {
        rule(format!("{proto} dport {sip_port} drop"));
    }
    rule(format!("udp dport {sip_range} drop"));
    let admin = addr(&config.admin.listen, "admin.listen")?;
    if !admin.ip().is_loopback() {
        rule(format!(
            "# admin port {} (health, metrics) is internal: allow your monitoring hosts above this line",
            admin.port()
        ));
        rule(format!("tcp dport {} drop", admin.port()));
    }
    lines.push("    }".into());
    lines.push("    chain output {".into());
    lines.push("        type filter hook output priority filter; policy accept;".into());
    let mut rule = |text: String| lines.push(format!("        {text}"));
    // The server's addresses and the trusted networks, by family.
    let of_family = |want_v6: bool| -> Vec<String> {
        peers
            .iter()
            .filter(|(v6, _)| *v6 == want_v6)
            .map(|(_, at)| at.clone())
            .collect()
    };
    let (v4, v6) = (of_family(false), of_family(true));
    if v4.is_empty() && v6.is_empty() {
        rule(format!(
            "udp sport {sip_range} drop comment \"no SIP server: no SIP media\""
        ));
    } else {
        rule("# SIP media goes to the SIP server (and trusted-sources) only".into());
        for (family, nfproto, list) in [("ip", "ipv4", &v4), ("ip6", "ipv6", &v6)] {
            match list.as_slice() {
                [] => rule(format!("meta nfproto {nfproto} udp sport {sip_range} drop")),
                [one] => rule(format!(
                    "udp sport {sip_range} {family} daddr != {one} drop"
                )),
                many => rule(format!(
                    "udp sport {sip_range} {family} daddr != {{ {} }} drop",
                    many.join(", ")
                )),
            }
        }
    }
    lines.push("    }".into());
    lines.push("}".into());
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(extra, "t", Vec::new()).unwrap()
    }

    #[test]
    fn default_config_opens_web_side_only() {
        let rules = render(&config(""), &[], "test").unwrap();
        assert!(rules.contains("tcp dport 8443 accept"));
        assert!(rules.contains("udp dport 20000-29999 accept"));
        assert!(rules.contains("udp dport 5070 drop"));
        assert!(
            rules.contains("tcp dport 5070 drop"),
            "the SIP port takes TCP too"
        );
        assert!(rules.contains("udp dport 30000-39999 drop"));
        assert!(
            !rules.contains("saddr"),
            "no SIP server, no SIP accepts:\n{rules}"
        );
        assert!(
            !rules.contains("dport 8080 accept"),
            "loopback HTTP is not opened"
        );
        assert!(!rules.contains("9090"), "loopback admin needs no rule");
    }

    #[test]
    fn one_web_port_opens_that_port_alone() {
        let rules = render(&config("[media]\nweb-port = 3478\n"), &[], "test").unwrap();
        assert!(
            rules.contains("udp dport 3478 accept comment \"browser media"),
            "{rules}"
        );
        assert!(!rules.contains("20000-29999"), "{rules}");
        let rules = render(
            &config("[media]\nweb-port = 3478\nweb-tcp-port = 3479\n"),
            &[],
            "test",
        )
        .unwrap();
        assert!(
            rules.contains("tcp dport 3479 accept comment \"browser media over TCP"),
            "{rules}"
        );
    }

    #[test]
    fn sip_side_limited_to_server() {
        let c = config(
            "[sip]\nserver = \"192.0.2.10\"\ntransport = \"tcp\"\nlisten = \"0.0.0.0:5080\"\n\
             [media]\nsip-port-min = 40000\nsip-port-max = 40999\n[http]\ntls-listen = \"0.0.0.0:443\"\n",
        );
        let ips = sip_server_addresses(&c).unwrap();
        let rules = render(&c, &ips, "test").unwrap();
        assert!(
            rules.contains("ip saddr 192.0.2.10 tcp dport 5080 accept"),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr 192.0.2.10 udp dport 40000-40999 accept"),
            "{rules}"
        );
        assert!(rules.contains("tcp dport 443 accept"));
        assert!(
            rules.contains("udp sport 40000-40999 ip daddr != 192.0.2.10 drop"),
            "{rules}"
        );
        assert!(rules.contains("meta nfproto ipv6 udp sport 40000-40999 drop"));
    }

    #[test]
    fn trusted_sources_are_let_in_like_the_server() {
        let c = config(
            "[sip]\nserver = \"192.0.2.10\"\ntrusted-sources = [\"10.20.0.0/24\", \"2001:db8:5::/48\"]\n",
        );
        let ips = sip_server_addresses(&c).unwrap();
        let rules = render(&c, &ips, "test").unwrap();
        for line in [
            "ip saddr 10.20.0.0/24 udp dport 5070 accept",
            "ip saddr 10.20.0.0/24 tcp dport 5070 accept",
            "ip6 saddr 2001:db8:5::/48 udp dport 30000-39999 accept",
            "ip saddr 192.0.2.10 tcp dport 5070 accept",
            "udp sport 30000-39999 ip daddr != { 192.0.2.10, 10.20.0.0/24 } drop",
            "udp sport 30000-39999 ip6 daddr != 2001:db8:5::/48 drop",
        ] {
            assert!(rules.contains(line), "{line:?} missing:\n{rules}");
        }
    }

    #[test]
    fn both_families() {
        let c = config("");
        let ips: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let rules = render(&c, &ips, "test").unwrap();
        assert!(
            rules.contains("ip6 saddr 2001:db8::1 udp dport 5070 accept"),
            "{rules}"
        );
        assert!(rules.contains("ip6 daddr != 2001:db8::1 drop"), "{rules}");
        assert!(rules.contains("ip daddr != 192.0.2.1 drop"), "{rules}");
    }
}
