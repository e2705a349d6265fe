//! One browser user's SIP registration, sans-IO: REGISTER with digest
//! answers to 401/407, 423 Min-Expires handling, refresh before expiry, and
//! the unREGISTER when the session ends. It returns requests to send (the
//! user agent wraps each in a client transaction) and what happened.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::digest::DigestAuth;
use super::identity::Identity;
#[cfg(test)]
use super::message::parse_datagram;
use super::message::{header_value, own_request};
use crate::random::Random;

/// Refresh when this share of the granted time has passed.
const REFRESH_SHARE: f64 = 0.8;
/// Never refresh sooner than this after a success (a server granting 1 s).
const MIN_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// The server accepted the binding for this many seconds.
    Registered { expires: u32 },
    /// The server refused (`Some(status)`) or never answered (`None`).
    Failed { status: Option<u16> },
    /// The unREGISTER was answered (or could not be sent): the binding is gone.
    Unregistered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A REGISTER is out.
    Registering,
    Registered {
        refresh_at: Instant,
    },
    Unregistering,
    Done,
}

pub struct Registration {
    user: String,
    identity: Identity,
    call_id: String,
    from_tag: String,
    cseq: u32,
    expires: u32,
    state: State,
    registered_once: bool,
    /// Answers to the server's digest challenges.
    auth: DigestAuth,
    /// Tags, branches and cnonces.
    random: Random,
}

impl Registration {
    /// A registration for `user`; [`Registration::start`] sends the first REGISTER.
    pub fn new(
        user: &str,
        password: Option<String>,
        identity: Identity,
        expires: u32,
        mut random: Random,
    ) -> Self {
        Registration {
            user: user.to_string(),
            identity,
            call_id: format!("{}@webrtc-sip-gateway", random.hex(12)),
            from_tag: random.hex(12),
            random,
            cseq: 0,
            expires,
            state: State::Registering,
            registered_once: false,
            auth: DigestAuth::new(user, password),
        }
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered { .. })
    }

    /// The first REGISTER.
    pub fn start(&mut self) -> rsip::Request {
        self.state = State::Registering;
        self.request(self.expires)
    }

    /// When the binding needs refreshing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Registered { refresh_at } => Some(refresh_at),
            _ => None,
        }
    }

    /// A refresh REGISTER when it is due.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<rsip::Request> {
        match self.state {
            State::Registered { refresh_at } if now >= refresh_at => {
                self.state = State::Registering;
                Some(self.request(self.expires))
            }
            _ => None,
        }
    }

    /// The request to send again to another server (a failover): the
    /// binding is made there anew, or its ending repeated; None once done.
    /// The first `Registered` event is not repeated.
    pub fn restart(&mut self) -> Option<rsip::Request> {
        match self.state {
            State::Done => None,
            State::Unregistering => Some(self.request(0)),
            State::Registering | State::Registered { .. } => {
                self.state = State::Registering;
                Some(self.request(self.expires))
            }
        }
    }

    /// Ends the binding: an unREGISTER when one is in place (None: nothing to undo).
    pub fn unregister(&mut self) -> Option<rsip::Request> {
        let bound = self.registered_once && self.state != State::Done;
        if bound {
            self.state = State::Unregistering;
            Some(self.request(0))
        } else {
            self.state = State::Done;
            None
        }
    }

    /// The final response to our latest REGISTER (`None`: no answer in
    /// time). Returns a request to send next, if any, and what happened.
    pub fn handle_final(
        &mut self,
        now: Instant,
        response: Option<&rsip::Response>,
    ) -> (Option<rsip::Request>, Option<RegistrationEvent>) {
        let Some(response) = response else {
            return self.finish_failed(None);
        };
        let code = response.status_code.code();
        if self.state == State::Unregistering {
            if matches!(code, 401 | 407) && self.auth.take_challenge(response) {
                return (Some(self.request(0)), None);
            }
            self.state = State::Done;
            return (None, Some(RegistrationEvent::Unregistered));
        }
        match code {
            200..=299 => {
                self.auth.succeeded();
                let granted = granted_expires(response, &self.identity.local, self.expires);
                let wait =
                    Duration::from_secs_f64(f64::from(granted) * REFRESH_SHARE).max(MIN_REFRESH);
                self.state = State::Registered {
                    refresh_at: now + wait,
                };
                let first = !self.registered_once;
                self.registered_once = true;
                (
                    None,
                    first.then_some(RegistrationEvent::Registered { expires: granted }),
                )
            }
            401 | 407 if self.auth.take_challenge(response) => {
                (Some(self.request(self.expires)), None)
            }
            423 => {
                let min = header_value(response, "min-expires")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .filter(|&m| m > self.expires);
                match min {
                    Some(min) => {
                        self.expires = min;
                        (Some(self.request(self.expires)), None)
                    }
                    None => self.finish_failed(Some(423)),
                }
            }
            _ => self.finish_failed(Some(code)),
        }
    }

    fn finish_failed(
        &mut self,
        status: Option<u16>,
    ) -> (Option<rsip::Request>, Option<RegistrationEvent>) {
        let event = if self.state == State::Unregistering {
            RegistrationEvent::Unregistered
        } else {
            RegistrationEvent::Failed { status }
        };
        self.state = State::Done;
        (None, Some(event))
    }

    fn request(&mut self, expires: u32) -> rsip::Request {
        self.cseq += 1;
        let domain = &self.identity.domain;
        let local = self.identity.local;
        let uri = format!("sip:{domain}");
        let mut text = format!(
            "REGISTER {uri} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {local};branch=z9hG4bK{branch}{via_params}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local};transport={tp}>\r\n\
             Expires: {expires}\r\n\
             User-Agent: webrtc-sip-gateway/{version}\r\n",
            branch = self.random.hex(12),
            via = self.identity.via_transport(),
            via_params = self.identity.via_params(),
            tp = self.identity.uri_transport(),
            user = self.user,
            tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
            version = env!("CARGO_PKG_VERSION"),
        );
        let cnonce = self.random.hex(12);
        if let Some((name, value)) = self.auth.authorization("REGISTER", &uri, &cnonce) {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        own_request(&text, rsip::Method::Register)
    }
}

/// The binding time the server granted: our Contact's `expires` parameter,
/// else the Expires header, else what we asked for.
fn granted_expires(response: &rsip::Response, local: &SocketAddr, asked: u32) -> u32 {
    let ours = local.to_string();
    let from_contact = response
        .headers
        .iter()
        .filter(|h| matches!(h, rsip::Header::Contact(_)))
        .flat_map(|h| {
            h.to_string()
                .split_once(':')
                .map(|(_, v)| v.to_string())
                .unwrap_or_default()
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|c| c.contains(&ours))
        .and_then(|c| {
            c.split(';')
                .find_map(|p| p.trim().strip_prefix("expires=").map(str::to_string))
        })
        .and_then(|v| v.trim().parse::<u32>().ok());
    from_contact
        .or_else(|| header_value(response, "expires").and_then(|v| v.parse().ok()))
        .unwrap_or(asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SipTransport;
    use crate::sip::message::branch_of;
    use rsip::prelude::*;

    fn identity() -> Identity {
        Identity {
            domain: "pbx.example".into(),
            local: "192.0.2.10:5070".parse().unwrap(),
            transport: SipTransport::Udp,
        }
    }

    fn response_to(request: &rsip::Request, status: &str, extra: &str) -> rsip::Response {
        let mut text = format!("SIP/2.0 {status}\r\n");
        for h in request.headers.iter() {
            let line = h.to_string();
            let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
            if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
                text.push_str(&line);
                text.push_str("\r\n");
            }
        }
        text.push_str(extra);
        text.push_str("Content-Length: 0\r\n\r\n");
        match parse_datagram(text.as_bytes()).unwrap() {
            rsip::SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    fn header(request: &rsip::Request, name: &str) -> Option<String> {
        request.headers.iter().find_map(|h| {
            let t = h.to_string();
            let (n, v) = t.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    #[test]
    fn challenge_then_success_then_refresh_then_unregister() {
        let t0 = Instant::now();
        let mut r = Registration::new(
            "1001",
            Some("secret".into()),
            identity(),
            600,
            Random::seeded(1),
        );
        let first = r.start();
        assert_eq!(first.method, rsip::Method::Register);
        assert!(header(&first, "authorization").is_none());
        assert_eq!(header(&first, "expires").as_deref(), Some("600"));
        let challenge = response_to(
            &first,
            "401 Unauthorized",
            "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", qop=\"auth\", algorithm=SHA-256\r\n",
        );
        let (next, event) = r.handle_final(t0, Some(&challenge));
        assert_eq!(event, None);
        let second = next.expect("a REGISTER with credentials");
        let auth = header(&second, "authorization").unwrap();
        assert!(
            auth.contains("algorithm=SHA-256") && auth.contains("nc=00000001"),
            "{auth}"
        );
        assert!(auth.contains("uri=\"sip:pbx.example\""));
        assert_ne!(branch_of(&first), branch_of(&second), "a new transaction");
        assert_eq!(
            second.call_id_header().unwrap().to_string(),
            first.call_id_header().unwrap().to_string()
        );
        let ok = response_to(
            &second,
            "200 OK",
            "Contact: <sip:1001@192.0.2.10:5070;transport=udp>;expires=120\r\n",
        );
        let (next, event) = r.handle_final(t0, Some(&ok));
        assert_eq!(next, None);
        assert_eq!(event, Some(RegistrationEvent::Registered { expires: 120 }));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(96)));
        assert!(r.handle_timeout(t0 + Duration::from_secs(95)).is_none());
        let refresh = r.handle_timeout(t0 + Duration::from_secs(96)).unwrap();
        let auth = header(&refresh, "authorization").unwrap();
        assert!(auth.contains("nc=00000002"), "the nonce is reused: {auth}");
        let (_, event) = r.handle_final(
            t0 + Duration::from_secs(96),
            Some(&response_to(&refresh, "200 OK", "Expires: 120\r\n")),
        );
        assert_eq!(event, None, "a refresh is not news");
        let bye = r.unregister().unwrap();
        assert_eq!(header(&bye, "expires").as_deref(), Some("0"));
        let (_, event) = r.handle_final(t0, Some(&response_to(&bye, "200 OK", "")));
        assert_eq!(event, Some(RegistrationEvent::Unregistered));
        assert!(r.is_done());
    }

    #[test]
    fn refusals_and_timeouts() {
        let t0 = Instant::now();
        let mut r = Registration::new(
            "1001",
            Some("pw".into()),
            identity(),
            600,
            Random::seeded(1),
        );
        let req = r.start();
        let (next, event) = r.handle_final(t0, Some(&response_to(&req, "403 Forbidden", "")));
        assert_eq!(
            (next, event),
            (None, Some(RegistrationEvent::Failed { status: Some(403) }))
        );
        assert!(r.unregister().is_none(), "nothing to undo");

        // A wrong password: the second challenge for the same nonce ends it.
        let mut r = Registration::new(
            "1001",
            Some("wrong".into()),
            identity(),
            600,
            Random::seeded(1),
        );
        let req = r.start();
        let ch = "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\"\r\n";
        let (next, _) = r.handle_final(t0, Some(&response_to(&req, "401 Unauthorized", ch)));
        let req = next.unwrap();
        let (next, event) = r.handle_final(t0, Some(&response_to(&req, "401 Unauthorized", ch)));
        assert_eq!(
            (next, event),
            (None, Some(RegistrationEvent::Failed { status: Some(401) }))
        );

        // No password at all: the challenge is the answer.
        let mut r = Registration::new("1001", None, identity(), 600, Random::seeded(1));
        let req = r.start();
        let (_, event) = r.handle_final(t0, Some(&response_to(&req, "401 Unauthorized", ch)));
        assert_eq!(event, Some(RegistrationEvent::Failed { status: Some(401) }));

        // No answer at all.
        let mut r = Registration::new("1001", None, identity(), 600, Random::seeded(1));
        r.start();
        assert_eq!(
            r.handle_final(t0, None).1,
            Some(RegistrationEvent::Failed { status: None })
        );
    }

    #[test]
    fn interval_too_brief_raises_expires() {
        let t0 = Instant::now();
        let mut r = Registration::new("1001", None, identity(), 60, Random::seeded(1));
        let req = r.start();
        let (next, event) = r.handle_final(
            t0,
            Some(&response_to(
                &req,
                "423 Interval Too Brief",
                "Min-Expires: 3600\r\n",
            )),
        );
        assert_eq!(event, None);
        assert_eq!(header(&next.unwrap(), "expires").as_deref(), Some("3600"));
        let req = r.start();
        let (_, event) = r.handle_final(
            t0,
            Some(&response_to(
                &req,
                "423 Interval Too Brief",
                "Min-Expires: 10\r\n",
            )),
        );
        assert_eq!(
            event,
            Some(RegistrationEvent::Failed { status: Some(423) }),
            "a lower minimum makes no sense"
        );
    }
}
