//! Locating SIP servers (RFC 3263 §4): a `[sip] server` entry that names a
//! domain and no port is looked up as DNS SRV (`_sip._udp`, `_sip._tcp` or
//! `_sips._tcp` by transport); its records, in priority order, become
//! servers of the failover list. Without SRV records the name's own
//! addresses at the transport's default port are used (§4.2). The lookups
//! are the start-up driver's; here is what to ask and how to order the
//! answer.

use crate::config::SipTransport;

/// The SRV owner name for `domain` over `transport`.
pub fn srv_name(domain: &str, transport: SipTransport) -> String {
    let service = match transport {
        SipTransport::Udp => "_sip._udp",
        SipTransport::Tcp => "_sip._tcp",
        SipTransport::Tls => "_sips._tcp",
    };
    format!("{service}.{}.", domain.trim_end_matches('.'))
}

/// One SRV record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The servers an SRV answer names, in the order to try them: lowest
/// priority first and, within one priority, the heavier first (RFC 2782
/// picks by weight at random; a fixed order keeps every node of a fleet on
/// the same primary, which a primary/backup switch pair wants). A target
/// of "." says the service is not offered there and is left out.
pub fn order(mut records: Vec<SrvRecord>) -> Vec<(String, u16)> {
    records.retain(|r| !r.target.trim_end_matches('.').is_empty());
    records.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.weight.cmp(&a.weight))
            .then(a.target.cmp(&b.target))
    });
    records
        .into_iter()
        .map(|r| (r.target.trim_end_matches('.').to_string(), r.port))
        .collect()
}

/// Whether an entry's host is looked up as SRV: a name (not an address)
/// with no port of its own.
pub fn wants_srv(host: &str, port: Option<u16>) -> bool {
    port.is_none()
        && host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[test]
    fn srv_names_follow_the_transport() {
        assert_eq!(
            srv_name("pbx.test", SipTransport::Udp),
            "_sip._udp.pbx.test."
        );
        assert_eq!(
            srv_name("pbx.test.", SipTransport::Tcp),
            "_sip._tcp.pbx.test."
        );
        assert_eq!(
            srv_name("pbx.test", SipTransport::Tls),
            "_sips._tcp.pbx.test."
        );
    }

    #[test]
    fn records_go_by_priority_then_weight_and_dot_is_no_service() {
        let ordered = order(vec![
            srv(20, 100, 5062, "backup.pbx.test."),
            srv(10, 10, 5061, "light.pbx.test."),
            srv(10, 90, 5060, "heavy.pbx.test."),
            srv(5, 0, 0, "."),
        ]);
        assert_eq!(
            ordered,
            [
                ("heavy.pbx.test".to_string(), 5060),
                ("light.pbx.test".to_string(), 5061),
                ("backup.pbx.test".to_string(), 5062),
            ]
        );
    }

    #[test]
    fn only_names_without_a_port_are_looked_up() {
        assert!(wants_srv("pbx.test", None));
        assert!(!wants_srv("pbx.test", Some(5060)));
        assert!(!wants_srv("192.0.2.1", None));
        assert!(!wants_srv("[2001:db8::1]", None));
    }
}
