//! Call transfer (RFC 3515 REFER, RFC 3891 Replaces, RFC 5589 practice)
//! and the remote call control a switch sends an agent's phone (NOTIFY
//! `Event: talk` / `Event: hold`), as pure functions over header values and
//! bodies: what a transfer's progress NOTIFY says, how a `Refer-To` names
//! a dialog to replace, and what kind of NOTIFY came. The dialog keeps the
//! state ([`super::dialog::Dialog::refer`]).

/// How a transfer we asked for (our REFER) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferProgress {
    /// The far end took our REFER (202).
    Accepted,
    /// Its call to the target is under way: the sipfrag's provisional
    /// status (100, 180, 183).
    Trying(u16),
    /// The target answered: the transfer is done and our call ends.
    Succeeded,
    /// The far end refused the REFER, the target refused the call (the
    /// status), or no outcome came (None).
    Failed(Option<u16>),
}

/// Where a transfer the browser asks for sends the far end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTarget {
    /// A blind transfer to this number or SIP URI.
    To(String),
    /// An attended transfer: the far end of the call with this key
    /// replaces us in the far end's call (REFER with Replaces).
    Replacing(String),
}

/// What a switch asks of the agent's phone by NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteControl {
    /// `Event: talk`: answer the ringing call, or take a held one off hold.
    Talk,
    /// `Event: hold`: put the call on hold.
    Hold,
}

/// What a NOTIFY in a dialog is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// The progress of our REFER (`Event: refer`): the sipfrag's status
    /// when it carries one, and whether the subscription ended.
    Refer {
        status: Option<u16>,
        terminated: bool,
    },
    Control(RemoteControl),
    /// An event package we do not take (489 Bad Event).
    Unknown,
}

/// The event package of an `Event` header value, lower-case, without its
/// parameters (`refer;id=3` → `refer`).
fn event_package(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The status of a `message/sipfrag` body (RFC 3420): its first line is a
/// status line, `SIP/2.0 180 Ringing`. None when it is not one.
pub fn sipfrag_status(body: &str) -> Option<u16> {
    let line = body.lines().next()?.trim();
    let mut parts = line.split_whitespace();
    if !parts.next()?.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..700).contains(&code).then_some(code)
}

/// What a NOTIFY is, from its `Event` and `Subscription-State` header
/// values and its body.
pub fn classify_notify(
    event: Option<&str>,
    subscription_state: Option<&str>,
    body: &str,
) -> Notification {
    match event.map(event_package).as_deref() {
        Some("refer") => Notification::Refer {
            status: sipfrag_status(body),
            terminated: subscription_state.is_some_and(|s| event_package(s) == "terminated"),
        },
        Some("talk") => Notification::Control(RemoteControl::Talk),
        Some("hold") => Notification::Control(RemoteControl::Hold),
        _ => Notification::Unknown,
    }
}

/// `text` escaped for a URI header value (RFC 3261 §25.1 `hvalue`):
/// everything but unreserved characters and a few safe marks goes as
/// `%XX`, so a Call-ID's `@`, `;` or `=` cannot end the Replaces early.
fn escape_hvalue(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()[]/?:+$".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Refer-To` of an attended transfer (RFC 5589 §7): the target's
/// `uri` with a `Replaces` header naming the dialog the target shares with
/// us. Tags are as the target sees them (RFC 3891 §3): `to-tag` is its own
/// (our remote tag), `from-tag` ours.
pub fn refer_to_replacing(uri: &str, call_id: &str, their_tag: &str, our_tag: &str) -> String {
    let replaces = format!("{call_id};to-tag={their_tag};from-tag={our_tag}");
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("<{uri}{separator}Replaces={}>", escape_hvalue(&replaces))
}

/// What a switch's REFER asks us to call: the `Refer-To` URI, and the
/// dialog a `Replaces` header inside it names (unescaped), for the INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferTarget {
    pub uri: String,
    pub replaces: Option<String>,
}

/// `%XX` escapes of a URI header value undone; None when one is broken or
/// the result is not one line of text.
fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// A `Refer-To` value (RFC 3515 §2.1): a `sip:`/`sips:` URI, in `<…>` or
/// bare, whose headers may carry a Replaces. None for anything else (a
/// `tel:` or `http:` target, a broken escape), which the REFER's 400 names.
pub fn parse_refer_to(value: &str) -> Option<ReferTarget> {
    let value = value.trim();
    let uri = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        (None, None) => value.split(';').next().unwrap_or(value),
        _ => return None,
    };
    let lower = uri.to_ascii_lowercase();
    if !(lower.starts_with("sip:") || lower.starts_with("sips:")) || uri.contains(' ') {
        return None;
    }
    let (uri, headers) = uri.split_once('?').unwrap_or((uri, ""));
    let mut replaces = None;
    for header in headers.split('&').filter(|h| !h.is_empty()) {
        let (name, value) = header.split_once('=')?;
        if name.eq_ignore_ascii_case("replaces") {
            replaces = Some(unescape(value)?);
        }
    }
    (uri.len() > 4).then(|| ReferTarget {
        uri: uri.to_string(),
        replaces,
    })
}

/// A `Replaces` header value (RFC 3891 §6.1): the Call-ID and the
/// `to-tag` and `from-tag` of the dialog to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
}

pub fn parse_replaces(value: &str) -> Option<Replaces> {
    let mut parts = value.split(';').map(str::trim);
    let call_id = parts.next().filter(|c| !c.is_empty())?.to_string();
    let (mut to_tag, mut from_tag) = (None, None);
    for part in parts {
        let (name, v) = part.split_once('=').unwrap_or((part, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "to-tag" => to_tag = Some(v.trim().to_string()),
            "from-tag" => from_tag = Some(v.trim().to_string()),
            _ => {}
        }
    }
    Some(Replaces {
        call_id,
        to_tag: to_tag.filter(|t| !t.is_empty())?,
        from_tag: from_tag.filter(|t| !t.is_empty())?,
    })
}

/// The reason phrase of a status we report in a sipfrag.
pub fn sipfrag(status: u16) -> String {
    let reason = match status {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200..=299 => "OK",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        487 => "Request Terminated",
        603 => "Declined",
        _ => "Status",
    };
    format!("SIP/2.0 {status} {reason}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipfrag_statuses() {
        assert_eq!(sipfrag_status("SIP/2.0 100 Trying\r\n"), Some(100));
        assert_eq!(sipfrag_status("SIP/2.0 200 OK"), Some(200));
        assert_eq!(
            sipfrag_status("sip/2.0 603 Declined\r\nVia: x\r\n"),
            Some(603)
        );
        assert_eq!(sipfrag_status("INVITE sip:a@b SIP/2.0"), None);
        assert_eq!(sipfrag_status("SIP/2.0 99 Low"), None);
        assert_eq!(sipfrag_status("SIP/2.0 abc"), None);
        assert_eq!(sipfrag_status(""), None);
    }

    #[test]
    fn notifications_by_event_package() {
        assert_eq!(
            classify_notify(
                Some("refer;id=2"),
                Some("terminated;reason=noresource"),
                "SIP/2.0 200 OK"
            ),
            Notification::Refer {
                status: Some(200),
                terminated: true
            }
        );
        assert_eq!(
            classify_notify(Some("Refer"), Some("active;expires=60"), ""),
            Notification::Refer {
                status: None,
                terminated: false
            }
        );
        assert_eq!(
            classify_notify(Some("talk"), None, ""),
            Notification::Control(RemoteControl::Talk)
        );
        assert_eq!(
            classify_notify(Some(" HOLD "), None, ""),
            Notification::Control(RemoteControl::Hold)
        );
        assert_eq!(
            classify_notify(Some("presence"), None, ""),
            Notification::Unknown
        );
        assert_eq!(classify_notify(None, None, ""), Notification::Unknown);
    }

    #[test]
    fn refer_to_targets_and_their_replaces() {
        assert_eq!(
            parse_refer_to("<sip:5002@pbx.example;user=phone>"),
            Some(ReferTarget {
                uri: "sip:5002@pbx.example;user=phone".into(),
                replaces: None
            })
        );
        assert_eq!(
            parse_refer_to("sip:5002@pbx.example").map(|t| t.uri),
            Some("sip:5002@pbx.example".into())
        );
        let attended = parse_refer_to(&refer_to_replacing("sip:5001@pbx", "a@b;c", "t1", "f2"));
        assert_eq!(
            attended,
            Some(ReferTarget {
                uri: "sip:5001@pbx".into(),
                replaces: Some("a@b;c;to-tag=t1;from-tag=f2".into())
            })
        );
        for bad in [
            "<tel:+15551234>",
            "<http://x>",
            "<sip:a@b?Replaces=%zz>",
            "<sip:a@b?Replaces=%0d%0aVia:x>",
            "<sip:a@b",
            "",
        ] {
            assert_eq!(parse_refer_to(bad), None, "{bad}");
        }
        assert_eq!(
            parse_replaces("a@b;to-tag=t1; from-tag=f2;early-only"),
            Some(Replaces {
                call_id: "a@b".into(),
                to_tag: "t1".into(),
                from_tag: "f2".into()
            })
        );
        assert_eq!(parse_replaces("a@b;to-tag=t1"), None);
        assert_eq!(parse_replaces(";to-tag=t1;from-tag=f"), None);
        assert_eq!(sipfrag(486), "SIP/2.0 486 Busy Here\r\n");
    }

    #[test]
    fn a_replaces_header_is_escaped_inside_the_uri() {
        let refer_to = refer_to_replacing("sip:5001@pbx.example", "a8;b@host=1", "far9", "ours3");
        assert_eq!(
            refer_to,
            "<sip:5001@pbx.example?Replaces=a8%3Bb%40host%3D1%3Bto-tag%3Dfar9%3Bfrom-tag%3Dours3>"
        );
        assert!(refer_to_replacing("sip:x@y?h=1", "c", "t", "f").contains("?h=1&Replaces=c%3B"));
    }
}
