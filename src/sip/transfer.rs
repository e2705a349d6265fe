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
    fn a_replaces_header_is_escaped_inside_the_uri() {
        let refer_to = refer_to_replacing("sip:5001@pbx.example", "a8;b@host=1", "far9", "ours3");
        assert_eq!(
            refer_to,
            "<sip:5001@pbx.example?Replaces=a8%3Bb%40host%3D1%3Bto-tag%3Dfar9%3Bfrom-tag%3Dours3>"
        );
        assert!(refer_to_replacing("sip:x@y?h=1", "c", "t", "f").contains("?h=1&Replaces=c%3B"));
    }
}
