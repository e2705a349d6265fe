//! The switch's call data (its X- headers, User-to-User, Diversion,
//! History-Info) between an INVITE and the browser, both ways: which of an
//! incoming INVITE's headers the page sees (`[sip] incoming-header-prefixes`
//! and `incoming-headers`), and which the page may add to our INVITE or 200
//! (the same prefixes and `allowed-outgoing-headers`), each value checked so
//! a page can never write a header line of its own.

use std::collections::BTreeMap;

use super::message::header_values;

/// The most headers a page may add, and the longest value.
pub const MAX_OUTGOING_HEADERS: usize = 16;
pub const MAX_HEADER_VALUE: usize = 1024;

/// Headers that make the SIP message itself: never the page's to set,
/// whatever a prefix says.
const OURS: [&str; 14] = [
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "max-forwards",
    "route",
    "record-route",
    "content-length",
    "content-type",
    "require",
    "supported",
    "allow",
];

/// Which headers pass, each way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallDataRules {
    pub prefixes: Vec<String>,
    pub incoming: Vec<String>,
    pub outgoing: Vec<String>,
}

impl From<&crate::config::SipConfig> for CallDataRules {
    fn from(c: &crate::config::SipConfig) -> Self {
        CallDataRules {
            prefixes: c.incoming_header_prefixes.clone(),
            incoming: c.incoming_headers.clone(),
            outgoing: c.allowed_outgoing_headers.clone(),
        }
    }
}

fn has_prefix(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        name.len() > p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    })
}

fn named(name: &str, names: &[String]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

impl CallDataRules {
    /// The incoming INVITE's headers the page sees: name (as the switch
    /// wrote it, or as `incoming-headers` spells it) → values in order.
    pub fn incoming_of(&self, headers: &rsip::Headers) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for header in headers.iter() {
            let text = header.to_string();
            let Some((name, value)) = text.split_once(':') else {
                continue;
            };
            let name = name.trim();
            let key = match self.incoming.iter().find(|n| n.eq_ignore_ascii_case(name)) {
                Some(spelled) => spelled.clone(),
                None if has_prefix(name, &self.prefixes) => name.to_string(),
                None => continue,
            };
            out.entry(key).or_default().push(value.trim().to_string());
        }
        out
    }

    /// Checks the headers a page gives for our INVITE or 200: each name
    /// allowed, each value one line of printable text, at most
    /// [`MAX_HEADER_VALUE`] bytes; at most [`MAX_OUTGOING_HEADERS`] in all.
    /// The error names what is wrong.
    pub fn check_outgoing(&self, headers: &[(String, String)]) -> Result<(), String> {
        if headers.len() > MAX_OUTGOING_HEADERS {
            return Err(format!("at most {MAX_OUTGOING_HEADERS} headers"));
        }
        for (name, value) in headers {
            let allowed = crate::config::is_header_name(name)
                && !named(name, &OURS.map(String::from))
                && (has_prefix(name, &self.prefixes) || named(name, &self.outgoing));
            if !allowed {
                return Err(format!(
                    "header {name:?} may not be set: allowed are names starting with {:?} and {:?}",
                    self.prefixes, self.outgoing
                ));
            }
            if value.len() > MAX_HEADER_VALUE || value.chars().any(char::is_control) {
                return Err(format!(
                    "header {name:?}: its value must be one line of at most {MAX_HEADER_VALUE} bytes without control characters"
                ));
            }
        }
        Ok(())
    }
}

/// The longest auto-answer delay taken; a longer one is this.
pub const MAX_AUTO_ANSWER_S: u32 = 3600;

/// Whether an incoming INVITE asks to be answered without the agent
/// (intercom, a supervisor's barge-in, an agent's "always on" line), and
/// after how many seconds, in the forms switches and phones use: `Call-Info:
/// <…>;answer-after=N`, `Alert-Info` naming auto-answer (`;info=
/// alert-autoanswer`, `Auto Answer`, with an optional `;delay=N`), and RFC
/// 5373's `Answer-Mode: Auto`.
pub fn auto_answer_after(headers: &rsip::Headers) -> Option<u32> {
    let param = |value: &str, name: &str| -> Option<u32> {
        value.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"').parse::<u32>().ok())
                .flatten()
        })
    };
    let after = header_values(headers, "call-info")
        .iter()
        .find_map(|v| param(v, "answer-after"))
        .or_else(|| {
            header_values(headers, "alert-info").iter().find_map(|v| {
                let plain: String = v
                    .to_ascii_lowercase()
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect();
                plain
                    .contains("autoanswer")
                    .then(|| param(v, "delay").unwrap_or(0))
            })
        })
        .or_else(|| {
            header_values(headers, "answer-mode")
                .iter()
                .any(|v| {
                    v.split(';')
                        .next()
                        .is_some_and(|m| m.trim().eq_ignore_ascii_case("auto"))
                })
                .then_some(0)
        })?;
    Some(after.min(MAX_AUTO_ANSWER_S))
}

/// `headers` as header lines (each ends in CRLF), for a message we write.
pub fn lines(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {}\r\n", value.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> CallDataRules {
        CallDataRules {
            prefixes: vec!["X-".into()],
            incoming: vec!["User-to-User".into(), "Diversion".into()],
            outgoing: vec!["User-to-User".into()],
        }
    }

    #[test]
    fn the_switchs_call_data_reaches_the_page_and_nothing_else() {
        let text = "INVITE sip:1001@gw SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
                    From: <sip:2000@pbx>;tag=1\r\nTo: <sip:1001@gw>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
                    X-Queue: sales\r\nx-queue: vip\r\nuser-to-user: 04a1b2;encoding=hex\r\n\
                    Diversion: <sip:5000@pbx>;reason=unconditional\r\nX-: empty\r\n\
                    Subject: hello\r\nContent-Length: 0\r\n\r\n";
        let request = super::super::message::own_request(text, rsip::Method::Invite);
        let seen = rules().incoming_of(&request.headers);
        let want: BTreeMap<String, Vec<String>> = [
            ("Diversion", vec!["<sip:5000@pbx>;reason=unconditional"]),
            ("User-to-User", vec!["04a1b2;encoding=hex"]),
            ("X-Queue", vec!["sales"]),
            ("x-queue", vec!["vip"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn auto_answer_in_the_forms_switches_use() {
        let after = |lines: &str| {
            let text = format!(
                "INVITE sip:1001@gw SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
                 From: <sip:2000@pbx>;tag=1\r\nTo: <sip:1001@gw>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
                 {lines}Content-Length: 0\r\n\r\n"
            );
            auto_answer_after(
                &super::super::message::own_request(&text, rsip::Method::Invite).headers,
            )
        };
        assert_eq!(after(""), None);
        assert_eq!(after("Call-Info: <sip:pbx>;answer-after=3\r\n"), Some(3));
        assert_eq!(after("Call-Info: <sip:pbx>;Answer-After=0\r\n"), Some(0));
        assert_eq!(
            after("Call-Info: <http://x/logo.png>;purpose=icon\r\n"),
            None
        );
        assert_eq!(
            after("Alert-Info: <http://www.notused.com>;info=alert-autoanswer;delay=2\r\n"),
            Some(2)
        );
        assert_eq!(after("Alert-Info: Auto Answer\r\n"), Some(0));
        assert_eq!(after("Alert-Info: <http://x/ring.wav>\r\n"), None);
        assert_eq!(after("Answer-Mode: Auto;require\r\n"), Some(0));
        assert_eq!(after("Answer-Mode: Manual\r\n"), None);
        assert_eq!(
            after("Call-Info: <sip:pbx>;answer-after=99999\r\n"),
            Some(MAX_AUTO_ANSWER_S)
        );
        assert_eq!(after("Call-Info: <sip:pbx>;answer-after=-1\r\n"), None);
    }

    #[test]
    fn a_page_sets_only_allowed_headers_with_one_line_values() {
        let h = |n: &str, v: &str| vec![(n.to_string(), v.to_string())];
        let r = rules();
        assert!(r.check_outgoing(&h("X-Agent-Id", "7")).is_ok());
        assert!(r
            .check_outgoing(&h("user-to-user", "00ff;encoding=hex"))
            .is_ok());
        for (name, value) in [
            ("Diversion", "<sip:x@y>"),
            ("Via", "SIP/2.0/UDP evil"),
            ("X-", "short"),
            ("X-Bad Name", "1"),
            ("X-Ok", "a\r\nVia: evil"),
            ("X-Ok", "tab\there"),
        ] {
            let e = r.check_outgoing(&h(name, value)).unwrap_err();
            assert!(e.contains(&format!("{name:?}")), "{e}");
        }
        assert!(r
            .check_outgoing(&h("X-Big", &"a".repeat(MAX_HEADER_VALUE + 1)))
            .is_err());
        let many: Vec<_> = (0..=MAX_OUTGOING_HEADERS)
            .map(|i| (format!("X-H{i}"), "v".to_string()))
            .collect();
        assert!(r.check_outgoing(&many).is_err());
        assert_eq!(lines(&h("X-A", " 1 ")), "X-A: 1\r\n");
    }
}
