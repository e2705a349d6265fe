//! Who calls, as SIP writes it (RFC 3261 §20.20 From, RFC 3325
//! P-Asserted-Identity and P-Preferred-Identity): the display name and URI
//! of an incoming INVITE's caller, and our own for an outgoing one.
//!
//! An incoming P-Asserted-Identity is taken as the switch's word: SIP is
//! only taken from the server and `[sip] trusted-sources` (see `sources`),
//! which is the trust domain RFC 3325 asks for.

use super::message::header_values;

/// Who we say calls, on an outgoing INVITE: the session's display name in
/// our From, the identity header `[sip] asserted-identity` names (its
/// value the From's name-addr), and the page's call data (headers checked
/// by [`super::call_data::CallDataRules::check_outgoing`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingCaller {
    pub display_name: Option<String>,
    pub identity_header: Option<&'static str>,
    pub headers: Vec<(String, String)>,
}

/// The caller of an incoming INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// The From header's display name.
    pub display_name: Option<String>,
    /// The identity the switch asserted (P-Asserted-Identity's first SIP
    /// URI, else its first), or the From's when it asserted none.
    pub identity_uri: String,
    pub identity_display_name: Option<String>,
    pub asserted: bool,
}

impl Caller {
    pub fn of_invite(headers: &rsip::Headers) -> Caller {
        let from = header_values(headers, "from")
            .into_iter()
            .next()
            .unwrap_or_default();
        let from_name = display_name(&from);
        let asserted = header_values(headers, "p-asserted-identity");
        let pick = asserted
            .iter()
            .find(|v| {
                let uri = addr_spec(v);
                uri.starts_with("sip:") || uri.starts_with("sips:")
            })
            .or_else(|| asserted.first());
        match pick {
            Some(value) => Caller {
                display_name: from_name,
                identity_uri: without_password(&addr_spec(value)),
                identity_display_name: display_name(value),
                asserted: true,
            },
            None => Caller {
                identity_uri: without_password(&addr_spec(&from)),
                identity_display_name: from_name.clone(),
                display_name: from_name,
                asserted: false,
            },
        }
    }
}

/// The display name before a name-addr's `<`: a quoted string unescaped
/// (RFC 3261 §25.1 `quoted-pair`), or tokens as written; None when there is
/// none (an addr-spec, or nothing before `<`).
pub fn display_name(name_addr: &str) -> Option<String> {
    let value = name_addr.trim_start();
    let name = if let Some(quoted) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => break,
                c => out.push(c),
            }
        }
        out
    } else {
        let open = value.find('<')?;
        value[..open].trim().to_string()
    };
    let name = name.trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// `name` as a quoted display name (backslash and quote escaped).
pub fn quoted(name: &str) -> String {
    let mut out = String::from("\"");
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The URI of a name-addr (inside `<>`) or of an addr-spec (before its
/// header parameters).
fn addr_spec(value: &str) -> String {
    let after_name = match value.trim_start().strip_prefix('"') {
        // Skip the quoted display name: it may hold `<`.
        Some(quoted) => {
            let mut escaped = false;
            let end = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(quoted.len(), |(i, _)| i + 1);
            &quoted[end..]
        }
        None => value,
    };
    match (after_name.find('<'), after_name.find('>')) {
        (Some(a), Some(b)) if a < b => after_name[a + 1..b].trim().to_string(),
        _ => after_name
            .split(';')
            .next()
            .unwrap_or(after_name)
            .trim()
            .to_string(),
    }
}

/// A SIP URI without a password after the user (RFC 3261 §19.1.1
/// deprecates it; it must reach neither the browser nor the log).
fn without_password(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return uri.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or(userinfo);
            format!("{scheme}:{user}@{host}")
        }
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &str) -> rsip::Headers {
        let text = format!(
            "INVITE sip:1001@gw SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
             To: <sip:1001@gw>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{lines}Content-Length: 0\r\n\r\n"
        );
        super::super::message::own_request(&text, rsip::Method::Invite).headers
    }

    #[test]
    fn display_names_are_unquoted_and_unescaped() {
        assert_eq!(
            display_name("\"Ann \\\"A\\\" B\" <sip:a@x>").as_deref(),
            Some("Ann \"A\" B")
        );
        assert_eq!(
            display_name("Ann  Bee <sip:a@x>;tag=1").as_deref(),
            Some("Ann  Bee")
        );
        assert_eq!(
            display_name("\"<sip:no@x>\" <sip:a@x>").as_deref(),
            Some("<sip:no@x>")
        );
        assert_eq!(display_name("<sip:a@x>"), None);
        assert_eq!(display_name("sip:a@x;tag=1"), None);
        assert_eq!(display_name("\"\" <sip:a@x>"), None);
        assert_eq!(quoted("Ann \"A\" \\ B"), "\"Ann \\\"A\\\" \\\\ B\"");
        assert_eq!(
            display_name(&format!("{} <sip:a@x>", quoted("x\"\\y"))).as_deref(),
            Some("x\"\\y")
        );
    }

    #[test]
    fn the_switchs_assertion_wins_over_the_from() {
        let plain = Caller::of_invite(&headers("From: \"Front Desk\" <sip:2000:pw@pbx>;tag=1\r\n"));
        assert_eq!(
            plain,
            Caller {
                display_name: Some("Front Desk".into()),
                identity_uri: "sip:2000@pbx".into(),
                identity_display_name: Some("Front Desk".into()),
                asserted: false,
            }
        );
        let asserted = Caller::of_invite(&headers(
            "From: \"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=1\r\n\
             P-Asserted-Identity: <tel:+15551234567>\r\n\
             P-Asserted-Identity: \"Jane \\\"JD\\\" Doe\" <sip:+15551234567@pbx;user=phone>\r\n",
        ));
        assert_eq!(asserted.display_name.as_deref(), Some("Anonymous"));
        assert_eq!(asserted.identity_uri, "sip:+15551234567@pbx;user=phone");
        assert_eq!(
            asserted.identity_display_name.as_deref(),
            Some("Jane \"JD\" Doe")
        );
        assert!(asserted.asserted);
        let tel_only = Caller::of_invite(&headers(
            "From: <sip:2000@pbx>;tag=1\r\nP-Asserted-Identity: tel:+15551234567\r\n",
        ));
        assert_eq!(tel_only.identity_uri, "tel:+15551234567");
        assert_eq!(tel_only.identity_display_name, None);
    }
}
