//! Where an incoming SIP call goes: the policy, apart from its delivery.
//!
//! A call for a user goes to that user's newest session (the browser tab
//! they opened last); anyone else — a user whose session ended, or one this
//! gateway never saw — is temporarily unavailable (480). The two get the
//! same answer so a caller cannot probe which users exist; only our log
//! tells them apart.
//!
//! Where an outgoing call may go: a number (to the SIP domain), or a SIP
//! URI whose host is the SIP domain or one the operator allowed; anything
//! else is refused before a port is bound (no toll fraud through
//! `sip:anything@anywhere`).

use crate::session::{SessionId, UserLookup};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingRoute {
    ToSession(SessionId),
    Refuse { status: u16, why: &'static str },
}

/// The route for a call whose Request-URI user was looked up as `lookup`.
pub fn route_incoming(lookup: UserLookup) -> IncomingRoute {
    match lookup {
        UserLookup::Session(id) => IncomingRoute::ToSession(id),
        UserLookup::Gone => IncomingRoute::Refuse {
            status: 480,
            why: "the user's session ended",
        },
        UserLookup::Unknown => IncomingRoute::Refuse {
            status: 480,
            why: "nobody of that name is here",
        },
    }
}

/// The host of a `sip:`/`sips:` URI, lower-cased, without port,
/// parameters or headers; None for anything else.
fn uri_host(uri: &str) -> Option<String> {
    let lower = uri.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("sip:")
        .or_else(|| lower.strip_prefix("sips:"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split(';').next().unwrap_or(hostport);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        hostport.split(':').next().unwrap_or(hostport)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Whether a call to `to` may be placed: a bare number or user always
/// (it goes to `domain`); a SIP URI when its host is `domain` or in
/// `allowed` (`"*"` there allows every host).
pub fn outgoing_allowed(to: &str, domain: &str, allowed: &[String]) -> bool {
    let lower = to.to_ascii_lowercase();
    if !lower.starts_with("sip:") && !lower.starts_with("sips:") {
        return !to.contains(':') && !to.contains('@');
    }
    let Some(host) = uri_host(to) else {
        return false;
    };
    host.eq_ignore_ascii_case(domain)
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(&host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_calls_stay_in_the_sip_domain_unless_allowed() {
        let none: Vec<String> = Vec::new();
        assert!(outgoing_allowed("5000", "pbx.example", &none));
        assert!(outgoing_allowed(
            "sip:5000@pbx.example",
            "pbx.example",
            &none
        ));
        assert!(outgoing_allowed(
            "SIP:5000@PBX.example:5060;transport=tcp",
            "pbx.example",
            &none
        ));
        assert!(outgoing_allowed(
            "sips:5000@pbx.example?X-A=b",
            "pbx.example",
            &none
        ));
        assert!(!outgoing_allowed(
            "sip:5000@evil.example",
            "pbx.example",
            &none
        ));
        // A user part that names the domain does not make the host it.
        assert!(!outgoing_allowed(
            "sip:pbx.example@evil.example",
            "pbx.example",
            &none
        ));
        assert!(!outgoing_allowed(
            "sip:a@pbx.example.evil.example",
            "pbx.example",
            &none
        ));
        assert!(!outgoing_allowed("tel:+15551234", "pbx.example", &none));
        assert!(!outgoing_allowed("5000@evil.example", "pbx.example", &none));
        assert!(outgoing_allowed(
            "sip:5000@[2001:db8::1]:5060",
            "2001:db8::1",
            &none
        ));
        let partner = vec!["partner.example".to_string()];
        assert!(outgoing_allowed(
            "sip:7@partner.example",
            "pbx.example",
            &partner
        ));
        assert!(!outgoing_allowed(
            "sip:7@other.example",
            "pbx.example",
            &partner
        ));
        let any = vec!["*".to_string()];
        assert!(outgoing_allowed("sip:7@other.example", "pbx.example", &any));
    }

    #[test]
    fn a_session_gets_the_call_and_the_absent_and_the_unknown_one_answer() {
        let id: SessionId = "s1".to_string();
        assert_eq!(
            route_incoming(UserLookup::Session(id.clone())),
            IncomingRoute::ToSession(id)
        );
        assert!(matches!(
            route_incoming(UserLookup::Gone),
            IncomingRoute::Refuse { status: 480, .. }
        ));
        assert!(matches!(
            route_incoming(UserLookup::Unknown),
            IncomingRoute::Refuse { status: 480, .. }
        ));
    }
}
