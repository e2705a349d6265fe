//! Session timers (RFC 4028), sans-IO: what the Session-Expires and Min-SE
//! headers of a request or response mean for a dialog, the headers we put
//! on ours, and the clock of one dialog's session — when we refresh it,
//! and when a refresh that the far end owes us is overdue.
//!
//! Written here rather than taken from a crate: it is a few header rules and
//! one deadline, and it must run inside the sans-IO user agent's timer table.

use std::time::{Duration, Instant};

use super::message::{header_values as header, supports};
use super::transaction::response_to;

/// The smallest interval RFC 4028 §4 allows, and the Min-SE we demand.
pub use crate::config::MIN_SESSION_EXPIRES_S;

/// Our side's session timer settings (`[sip] session-expires-s`; the
/// default here is off, the config's is 1800 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionTimerConfig {
    /// The interval we ask for and offer; 0: we never ask for a session
    /// timer (a far end that asks for one is still honoured).
    pub expires_s: u32,
}

/// Who sends the refreshes of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Us,
    Them,
}

/// A dialog's agreed session interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInterval {
    pub expires_s: u32,
    pub refresher: Refresher,
}

impl SessionInterval {
    /// The `refresher=` parameter naming the refresher, seen from a
    /// transaction in which we are the client (`we_send`) or the server.
    fn refresher_param(&self, we_send: bool) -> &'static str {
        match (self.refresher, we_send) {
            (Refresher::Us, true) | (Refresher::Them, false) => "uac",
            (Refresher::Them, true) | (Refresher::Us, false) => "uas",
        }
    }

    /// The Session-Expires value of a request we send (a refresh, a
    /// re-INVITE) or of our 2xx to the far end's.
    pub fn value(&self, we_send: bool) -> String {
        format!(
            "{};refresher={}",
            self.expires_s,
            self.refresher_param(we_send)
        )
    }
}

/// Session-Expires of `headers`: its seconds and `refresher` parameter.
/// None when absent or unreadable (an unreadable one is ignored, as a
/// header we do not understand).
pub fn session_expires(headers: &rsip::Headers) -> Option<(u32, Option<String>)> {
    let value = header(headers, "session-expires").into_iter().next()?;
    let mut parts = value.split(';');
    let seconds = parts.next()?.trim().parse::<u32>().ok()?;
    let refresher = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("refresher")
            .then(|| value.trim().to_ascii_lowercase())
    });
    Some((seconds, refresher))
}

/// Min-SE of `headers` (RFC 4028 §5), None when absent or unreadable.
pub fn min_se(headers: &rsip::Headers) -> Option<u32> {
    let value = header(headers, "min-se").into_iter().next()?;
    value.split(';').next()?.trim().parse().ok()
}

/// The 422 with our Min-SE (RFC 4028 §8.1) for a request that asks for
/// an interval below it; None for any other.
pub fn too_brief_refusal(request: &rsip::Request) -> Option<rsip::Response> {
    let (seconds, _) = session_expires(&request.headers)?;
    if seconds >= MIN_SESSION_EXPIRES_S {
        return None;
    }
    let mut refusal = response_to(request, 422);
    refusal.headers.push(rsip::Header::Other(
        "Min-SE".into(),
        MIN_SESSION_EXPIRES_S.to_string(),
    ));
    Some(refusal)
}

/// The interval we answer the far end's INVITE, re-INVITE or UPDATE with
/// (RFC 4028 §9): its own, shortened toward ours but never below its
/// Min-SE; or, when it asks for none, ours when we want one. `current` is
/// the dialog's interval so far: a refresh without Session-Expires keeps
/// who refreshes. The refresher is the one the request names, else the far
/// end when it supports timers, else us.
pub fn answer_interval(
    request: &rsip::Request,
    config: SessionTimerConfig,
    current: Option<SessionInterval>,
) -> Option<SessionInterval> {
    let their_min = min_se(&request.headers)
        .unwrap_or(MIN_SESSION_EXPIRES_S)
        .max(MIN_SESSION_EXPIRES_S);
    let far_supports = supports(&request.headers, "timer");
    let asked = session_expires(&request.headers);
    let asks = asked.is_some();
    let (expires_s, named) = match asked {
        Some((seconds, refresher)) => {
            let expires = if config.expires_s > 0 {
                seconds.min(config.expires_s.max(their_min))
            } else {
                seconds
            };
            (expires, refresher)
        }
        None => match current {
            Some(current) => (current.expires_s, None),
            None if config.expires_s > 0 => (config.expires_s.max(their_min), None),
            None => return None,
        },
    };
    let refresher = match named.as_deref() {
        Some("uac") if far_supports => Refresher::Them,
        Some("uas") => Refresher::Us,
        _ => match current {
            Some(current) if !asks => current.refresher,
            _ if far_supports => Refresher::Them,
            _ => Refresher::Us,
        },
    };
    Some(SessionInterval {
        expires_s: expires_s.max(MIN_SESSION_EXPIRES_S),
        refresher,
    })
}

/// The interval a 2xx to our INVITE, re-INVITE or UPDATE sets: None when
/// it carries no Session-Expires (the far end runs no session timer).
pub fn interval_of_answer(response: &rsip::Response) -> Option<SessionInterval> {
    let (seconds, refresher) = session_expires(&response.headers)?;
    let refresher = match refresher.as_deref() {
        Some("uas") => Refresher::Them,
        // "uac", or none named: the one who asked refreshes.
        _ => Refresher::Us,
    };
    Some(SessionInterval {
        expires_s: seconds.max(MIN_SESSION_EXPIRES_S),
        refresher,
    })
}

/// What a dialog's session clock asks for when it comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionDue {
    /// Send a refresh now (we are the refresher).
    Refresh,
    /// No refresh came in time: end the call with BYE.
    Expired,
}

/// One dialog's session clock: started again by every refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionClock {
    interval: SessionInterval,
    refreshed_at: Instant,
    refresh_sent: bool,
    /// A refresh that failed is tried again at this instant.
    retry_at: Option<Instant>,
}

impl SessionClock {
    pub fn new(interval: SessionInterval, now: Instant) -> Self {
        SessionClock {
            interval,
            refreshed_at: now,
            refresh_sent: false,
            retry_at: None,
        }
    }

    pub fn interval(&self) -> SessionInterval {
        self.interval
    }

    /// When the session expires for the side without the refresh duty: a
    /// little before the interval's end (RFC 4028 §10: the lesser of 32 s
    /// and a third of it), so a BYE leaves before the far end gives up.
    fn expiry(&self) -> Instant {
        let seconds = self.interval.expires_s;
        let margin = (seconds / 3).min(32);
        self.refreshed_at + Duration::from_secs(u64::from(seconds - margin))
    }

    /// The next instant the clock needs attention.
    pub fn due_at(&self) -> Instant {
        match (self.interval.refresher, self.refresh_sent) {
            // RFC 4028 §10: the refresher sends at half the interval.
            (Refresher::Us, false) => self.retry_at.unwrap_or(
                self.refreshed_at + Duration::from_secs(u64::from(self.interval.expires_s / 2)),
            ),
            _ => self.expiry(),
        }
    }

    /// Our refresh failed: send another at `at`, unless the session ends
    /// first (then its expiry ends the call).
    pub fn retry_at(&mut self, at: Instant) {
        if self.interval.refresher == Refresher::Us && at < self.expiry() {
            self.refresh_sent = false;
            self.retry_at = Some(at);
        }
    }

    /// The clock came due at `now`: a refresh to send, the session over,
    /// or nothing yet (a wake-up that came early).
    pub fn on_due(&mut self, now: Instant) -> Option<SessionDue> {
        if now < self.due_at() {
            return None;
        }
        match (self.interval.refresher, self.refresh_sent) {
            (Refresher::Us, false) => {
                self.refresh_sent = true;
                Some(SessionDue::Refresh)
            }
            _ => Some(SessionDue::Expired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_datagram;

    fn request(extra: &str) -> rsip::Request {
        let text = format!(
            "INVITE sip:1001@gw.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa\r\n\
             From: <sip:5000@pbx.example>;tag=1\r\nTo: <sip:1001@gw.example>\r\nCall-ID: c1\r\n\
             CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse_datagram(text.as_bytes()) {
            Ok(rsip::SipMessage::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn on() -> SessionTimerConfig {
        SessionTimerConfig { expires_s: 1800 }
    }

    #[test]
    fn the_far_ends_interval_is_honoured_shortened_and_its_refresher_kept() {
        // It asks 3600 s and refreshes itself: shortened to our 1800.
        let asked = request("Supported: timer\r\nSession-Expires: 3600;refresher=uac\r\n");
        assert_eq!(
            answer_interval(&asked, on(), None),
            Some(SessionInterval {
                expires_s: 1800,
                refresher: Refresher::Them
            })
        );
        // Its Min-SE is a floor for our shortening.
        let floor = request("Supported: timer\r\nSession-Expires: 3600\r\nMin-SE: 2400\r\n");
        assert_eq!(
            answer_interval(&floor, on(), None).map(|i| i.expires_s),
            Some(2400)
        );
        // A far end without timer support (a proxy asked): we refresh.
        let proxy_asked = request("Session-Expires: 600\r\n");
        assert_eq!(
            answer_interval(&proxy_asked, on(), None),
            Some(SessionInterval {
                expires_s: 600,
                refresher: Refresher::Us
            })
        );
        // Compact form `x`, refresher=uas: we refresh.
        let compact = request("k: timer\r\nx: 900;refresher=uas\r\n");
        assert_eq!(
            answer_interval(&compact, on(), None),
            Some(SessionInterval {
                expires_s: 900,
                refresher: Refresher::Us
            })
        );
        // Ours off: a far end's own interval stands.
        let off = SessionTimerConfig { expires_s: 0 };
        assert_eq!(
            answer_interval(&asked, off, None).map(|i| i.expires_s),
            Some(3600)
        );
        assert_eq!(answer_interval(&request(""), off, None), None);
        // Nothing asked, ours on: ours, and the far end refreshes if it can.
        assert_eq!(
            answer_interval(&request("Supported: timer\r\n"), on(), None),
            Some(SessionInterval {
                expires_s: 1800,
                refresher: Refresher::Them
            })
        );
        // A refresh without Session-Expires keeps who refreshes.
        let current = SessionInterval {
            expires_s: 600,
            refresher: Refresher::Us,
        };
        assert_eq!(
            answer_interval(&request("Supported: timer\r\n"), on(), Some(current)),
            Some(current)
        );
        // Too brief, and an unreadable one ignored.
        let refusal = too_brief_refusal(&request("Session-Expires: 30\r\n")).unwrap();
        assert_eq!(refusal.status_code.code(), 422);
        assert!(refusal.to_string().contains("Min-SE: 90\r\n"));
        assert!(too_brief_refusal(&request("Session-Expires: 90\r\n")).is_none());
        assert!(too_brief_refusal(&request("Session-Expires: soon\r\n")).is_none());
    }

    #[test]
    fn the_clock_refreshes_at_half_and_expires_before_the_end() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let mut ours = SessionClock::new(
            SessionInterval {
                expires_s: 120,
                refresher: Refresher::Us,
            },
            t0,
        );
        assert_eq!(ours.due_at(), secs(60));
        assert_eq!(ours.on_due(secs(59)), None);
        assert_eq!(ours.on_due(secs(60)), Some(SessionDue::Refresh));
        // The refresh went unanswered: the session ends 32 s before its end.
        assert_eq!(ours.due_at(), secs(88));
        // It was refused (a 491): one more try a few seconds on.
        ours.retry_at(secs(64));
        assert_eq!(ours.on_due(secs(64)), Some(SessionDue::Refresh));
        // No later try past the end: the expiry stands.
        ours.retry_at(secs(90));
        assert_eq!(ours.due_at(), secs(88));
        assert_eq!(ours.on_due(secs(88)), Some(SessionDue::Expired));

        let mut theirs = SessionClock::new(
            SessionInterval {
                expires_s: 90,
                refresher: Refresher::Them,
            },
            t0,
        );
        // A third of 90 s is less than 32 s.
        assert_eq!(theirs.due_at(), secs(60));
        assert_eq!(theirs.on_due(secs(60)), Some(SessionDue::Expired));
    }
}
