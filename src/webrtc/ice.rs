//! ICE-lite (RFC 8445 §2.5) for the browser leg, sans-IO: the gateway only
//! answers the browser's connectivity checks, learns the browser's address
//! from the nominated pair (USE-CANDIDATE), and watches consent (RFC 7675):
//! when no authenticated check arrives for the consent timeout, the leg has
//! lost its media path.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::stun::{self, Builder, Message, StunError};
use crate::sdp::IceCredentials;

/// Default consent timeout (RFC 7675 suggests 30 s).
pub const DEFAULT_CONSENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A candidate pair as a lite agent sees it: the browser's address and the
/// address of ours its check came to (None where the socket does not say).
/// Replies on the pair leave from `local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub remote: SocketAddr,
    pub local: Option<IpAddr>,
}

impl From<SocketAddr> for Pair {
    fn from(remote: SocketAddr) -> Self {
        Pair {
            remote,
            local: None,
        }
    }
}

/// What the agent is told: a STUN datagram that came on a pair, or the time.
#[derive(Debug, Clone, Copy)]
pub enum IceInput<'a> {
    Stun {
        pair: Pair,
        data: &'a [u8],
        /// The browser's address to name in our answer when it is not
        /// `pair.remote`: a check bridged from ICE-TCP comes from our
        /// loopback socket, and the browser must see its TCP address.
        bridged_from: Option<SocketAddr>,
    },
    /// The instant [`IceEvent::Timeout`] named has come.
    Timeout,
}

/// What the agent gives back, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceEvent {
    /// Our answer to a check: send it back on its pair (to `pair.remote`,
    /// from `pair.local`).
    Transmit { pair: Pair, data: Vec<u8> },
    /// The browser nominated this pair: media goes to and comes from its
    /// remote address only, and leaves from its local one.
    Selected(Pair),
    /// No valid check for the consent timeout: the media path is gone.
    ConsentLost,
    /// Nothing more now: wake the agent at this instant (None once consent
    /// is lost).
    Timeout(Option<Instant>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    #[error(transparent)]
    Stun(#[from] StunError),
    #[error("not a Binding request")]
    NotARequest,
}

pub struct IceLiteAgent {
    local: IceCredentials,
    remote: IceCredentials,
    consent_timeout: Duration,
    started: Instant,
    selected: Option<Pair>,
    last_consent: Option<Instant>,
    consent_lost: bool,
    events: Vec<IceEvent>,
    /// Addresses whose checks we answered with success (DTLS may come from them).
    validated: Vec<SocketAddr>,
    /// The credentials before an ICE restart (ours, the browser's), still
    /// taken until a check with the new ones comes: the browser goes on
    /// with the old ones until it has applied our answer.
    previous: Option<(IceCredentials, IceCredentials)>,
}

impl IceLiteAgent {
    /// `local`: our credentials (in our SDP); `remote`: the browser's.
    pub fn new(
        local: IceCredentials,
        remote: IceCredentials,
        consent_timeout: Duration,
        now: Instant,
    ) -> Self {
        IceLiteAgent {
            local,
            remote,
            consent_timeout,
            started: now,
            selected: None,
            last_consent: None,
            consent_lost: false,
            events: Vec::new(),
            validated: Vec::new(),
            previous: None,
        }
    }

    /// An ICE restart (RFC 8445 §9): new credentials on both sides. Media
    /// stays on the selected pair, and consent keeps its clock, until the
    /// browser nominates a pair with the new credentials.
    pub fn restart(&mut self, local: IceCredentials, remote: IceCredentials) {
        let old_local = std::mem::replace(&mut self.local, local);
        let old_remote = std::mem::replace(&mut self.remote, remote);
        self.previous = Some((old_local, old_remote));
    }

    /// An ICE restart waits for the browser's first check with the new
    /// credentials.
    pub fn restart_pending(&self) -> bool {
        self.previous.is_some()
    }

    /// Whether `addr` sent an authenticated check we answered.
    pub fn is_validated(&self, addr: SocketAddr) -> bool {
        self.validated.contains(&addr)
    }

    pub fn selected(&self) -> Option<Pair> {
        self.selected
    }

    /// A STUN datagram that does not decode, or is not a Binding request or
    /// indication, is refused and changes nothing.
    pub fn handle_input(&mut self, now: Instant, input: IceInput<'_>) -> Result<(), IceError> {
        match input {
            IceInput::Stun {
                pair,
                data,
                bridged_from,
            } => {
                // The answer goes out before what the check changed.
                let at = self.events.len();
                if let Some(data) = self.handle_packet(now, pair, data, bridged_from)? {
                    self.events.insert(at, IceEvent::Transmit { pair, data });
                }
            }
            IceInput::Timeout => self.handle_timeout(now),
        }
        Ok(())
    }

    /// What to do next, in order; [`IceEvent::Timeout`] once nothing is left.
    pub fn poll_output(&mut self) -> IceEvent {
        if self.events.is_empty() {
            IceEvent::Timeout(self.next_timeout())
        } else {
            self.events.remove(0)
        }
    }

    /// The next event that is not a datagram (the tests read answers from
    /// `handle_packet` directly).
    #[cfg(test)]
    fn poll_event(&mut self) -> Option<IceEvent> {
        let at = self
            .events
            .iter()
            .position(|e| !matches!(e, IceEvent::Transmit { .. }))?;
        Some(self.events.remove(at))
    }

    /// Handles a STUN datagram that came on `pair`; returns the response to
    /// send back on it (to `pair.remote`, from `pair.local`), naming the
    /// browser's address as `bridged_from` when given, else `pair.remote`.
    fn handle_packet(
        &mut self,
        now: Instant,
        pair: Pair,
        data: &[u8],
        bridged_from: Option<SocketAddr>,
    ) -> Result<Option<Vec<u8>>, IceError> {
        let from = pair.remote;
        let msg = Message::decode(data)?;
        match msg.method_class {
            stun::BINDING_REQUEST => {}
            // Keepalive indications need no answer.
            stun::BINDING_INDICATION => return Ok(None),
            _ => return Err(IceError::NotARequest),
        }
        let tid = msg.transaction_id;
        let error = |code: u16, reason: &str| {
            Some(
                Builder::new(stun::BINDING_ERROR, tid)
                    .error_code(code, reason)
                    .fingerprint(),
            )
        };
        // USERNAME is "our-ufrag:their-ufrag" in a check sent to us.
        let (Some(user), true) = (
            msg.attribute(stun::ATTR_USERNAME),
            msg.has(stun::ATTR_MESSAGE_INTEGRITY),
        ) else {
            return Ok(error(400, "Bad Request"));
        };
        let valid = |local: &IceCredentials, remote: &IceCredentials| {
            user == format!("{}:{}", local.ufrag, remote.ufrag).as_bytes()
                && msg.integrity_ok(local.pwd.as_bytes())
        };
        // The password our answer is signed with: the current one, or
        // until the browser uses the new ones, the one before a restart.
        let pwd = if valid(&self.local, &self.remote) {
            self.previous = None;
            self.local.pwd.clone()
        } else {
            match &self.previous {
                Some((local, remote)) if valid(local, remote) => local.pwd.clone(),
                _ => return Ok(error(401, "Unauthorized")),
            }
        };
        if !msg.has_fingerprint() {
            return Ok(error(400, "Bad Request"));
        }
        // A lite agent is always controlled; a peer that also claims to be
        // controlled must switch (RFC 8445 §7.3.1.1).
        if msg.has(stun::ATTR_ICE_CONTROLLED) {
            return Ok(Some(
                Builder::new(stun::BINDING_ERROR, tid)
                    .error_code(487, "Role Conflict")
                    .message_integrity(pwd.as_bytes())
                    .fingerprint(),
            ));
        }
        if msg.has(stun::ATTR_USE_CANDIDATE) && self.selected != Some(pair) {
            self.selected = Some(pair);
            self.events.push(IceEvent::Selected(pair));
        }
        if self.selected.is_none_or(|p| p.remote == from) {
            self.last_consent = Some(now);
        }
        // A browser has a handful of candidates; keep the list small anyway.
        if !self.validated.contains(&from) && self.validated.len() < 16 {
            self.validated.push(from);
        }
        Ok(Some(
            Builder::new(stun::BINDING_SUCCESS, tid)
                .xor_mapped_address(bridged_from.unwrap_or(from), &tid)
                .message_integrity(pwd.as_bytes())
                .fingerprint(),
        ))
    }

    /// Drives the consent timer.
    fn handle_timeout(&mut self, now: Instant) {
        if self.consent_lost {
            return;
        }
        if self.next_timeout().is_some_and(|at| now >= at) {
            self.consent_lost = true;
            self.events.push(IceEvent::ConsentLost);
        }
    }

    /// When the consent timer fires next (None once consent is lost).
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.consent_lost {
            return None;
        }
        Some(self.last_consent.unwrap_or(self.started) + self.consent_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> IceCredentials {
        IceCredentials {
            ufrag: u.into(),
            pwd: p.into(),
        }
    }

    fn agent(now: Instant) -> IceLiteAgent {
        IceLiteAgent::new(
            creds("gwuf", "gateway-password-24chars"),
            creds("brwz", "browser-password-24char"),
            DEFAULT_CONSENT_TIMEOUT,
            now,
        )
    }

    /// A check as the browser sends it.
    fn check(tid: u8, user: &str, key: &str, extra: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = Builder::new(stun::BINDING_REQUEST, [tid; 12])
            .attribute(stun::ATTR_USERNAME, user.as_bytes());
        for (k, v) in extra {
            b = b.attribute(*k, v);
        }
        b.attribute(stun::ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff])
            .attribute(stun::ATTR_ICE_CONTROLLING, &[1; 8])
            .message_integrity(key.as_bytes())
            .fingerprint()
    }

    fn from() -> SocketAddr {
        "192.0.2.7:50000".parse().unwrap()
    }

    /// An ICE restart: old credentials are answered (signed with the old
    /// password) until the first check with the new ones; from then on only
    /// the new ones pass, and the new nomination moves the selection.
    #[test]
    fn a_restart_takes_the_old_credentials_until_the_new_ones_come() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let old = check(
            1,
            "gwuf:brwz",
            "gateway-password-24chars",
            &[(stun::ATTR_USE_CANDIDATE, &[])],
        );
        a.handle_packet(t0, Pair::from(from()), &old, None).unwrap();
        a.restart(
            creds("gwu2", "gateway-new-password-24c"),
            creds("brw2", "browser-new-password-24"),
        );
        let answer = a
            .handle_packet(t0, Pair::from(from()), &old, None)
            .unwrap()
            .unwrap();
        let msg = Message::decode(&answer).unwrap();
        assert_eq!(msg.method_class, stun::BINDING_SUCCESS);
        assert!(msg.integrity_ok(b"gateway-password-24chars"));
        // The browser moved to a new address with the new credentials.
        let moved: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let new = check(
            2,
            "gwu2:brw2",
            "gateway-new-password-24c",
            &[(stun::ATTR_USE_CANDIDATE, &[])],
        );
        let answer = a
            .handle_packet(t0, Pair::from(moved), &new, None)
            .unwrap()
            .unwrap();
        assert!(Message::decode(&answer)
            .unwrap()
            .integrity_ok(b"gateway-new-password-24c"));
        assert_eq!(a.selected(), Some(moved.into()));
        assert!(a.is_validated(moved));
        let refused = a
            .handle_packet(t0, Pair::from(from()), &old, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::decode(&refused).unwrap().method_class,
            stun::BINDING_ERROR,
            "the old credentials are gone once the new ones are in use"
        );
    }

    #[test]
    fn answers_a_valid_check_and_selects_on_use_candidate() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let req = check(1, "gwuf:brwz", "gateway-password-24chars", &[]);
        let resp = a
            .handle_packet(t0, Pair::from(from()), &req, None)
            .unwrap()
            .unwrap();
        let msg = Message::decode(&resp).unwrap();
        assert_eq!(msg.method_class, stun::BINDING_SUCCESS);
        assert_eq!(msg.transaction_id, [1; 12]);
        assert!(msg.integrity_ok(b"gateway-password-24chars"));
        assert!(msg.has_fingerprint());
        let mapped = stun::decode_xor_mapped_address(
            msg.attribute(stun::ATTR_XOR_MAPPED_ADDRESS).unwrap(),
            &[1; 12],
        );
        assert_eq!(mapped, Some(from()));
        assert_eq!(a.poll_event(), None, "no nomination yet");
        let nominate = check(
            2,
            "gwuf:brwz",
            "gateway-password-24chars",
            &[(stun::ATTR_USE_CANDIDATE, &[])],
        );
        a.handle_packet(t0, Pair::from(from()), &nominate, None)
            .unwrap()
            .unwrap();
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(from().into())));
        assert_eq!(a.selected(), Some(from().into()));
        // Re-nomination of another address moves the selection.
        let other: SocketAddr = "192.0.2.7:50002".parse().unwrap();
        a.handle_packet(t0, Pair::from(other), &nominate, None)
            .unwrap()
            .unwrap();
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(other.into())));
        // The same browser address nominating the pair with another of our
        // addresses moves where media leaves from.
        let ours: IpAddr = "198.51.100.10".parse().unwrap();
        let moved = Pair {
            remote: other,
            local: Some(ours),
        };
        a.handle_packet(t0, moved, &nominate, None)
            .unwrap()
            .unwrap();
        assert_eq!(a.poll_event(), Some(IceEvent::Selected(moved)));
        assert_eq!(a.selected(), Some(moved));
    }

    #[test]
    fn bad_credentials_and_roles_are_refused() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let code = |resp: Vec<u8>| {
            let m = Message::decode(&resp).unwrap();
            assert_eq!(m.method_class, stun::BINDING_ERROR);
            let v = m.attribute(stun::ATTR_ERROR_CODE).unwrap();
            u16::from(v[2]) * 100 + u16::from(v[3])
        };
        let wrong_key = check(
            1,
            "gwuf:brwz",
            "not-the-password-at-all",
            &[(stun::ATTR_USE_CANDIDATE, &[])],
        );
        assert_eq!(
            code(
                a.handle_packet(t0, Pair::from(from()), &wrong_key, None)
                    .unwrap()
                    .unwrap()
            ),
            401
        );
        let wrong_user = check(2, "other:brwz", "gateway-password-24chars", &[]);
        assert_eq!(
            code(
                a.handle_packet(t0, Pair::from(from()), &wrong_user, None)
                    .unwrap()
                    .unwrap()
            ),
            401
        );
        let no_integrity = Builder::new(stun::BINDING_REQUEST, [3; 12])
            .attribute(stun::ATTR_USERNAME, b"gwuf:brwz")
            .fingerprint();
        assert_eq!(
            code(
                a.handle_packet(t0, Pair::from(from()), &no_integrity, None)
                    .unwrap()
                    .unwrap()
            ),
            400
        );
        let conflict = check(
            4,
            "gwuf:brwz",
            "gateway-password-24chars",
            &[(stun::ATTR_ICE_CONTROLLED, &[2; 8])],
        );
        let resp = a
            .handle_packet(t0, Pair::from(from()), &conflict, None)
            .unwrap()
            .unwrap();
        assert!(Message::decode(&resp)
            .unwrap()
            .integrity_ok(b"gateway-password-24chars"));
        assert_eq!(code(resp), 487);
        assert_eq!(a.selected(), None, "nothing refused selects a pair");
        assert_eq!(a.poll_event(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        assert!(a.handle_packet(t0, Pair::from(from()), b"", None).is_err());
        assert!(a
            .handle_packet(t0, Pair::from(from()), &[0u8; 19], None)
            .is_err());
        let mut req = check(1, "gwuf:brwz", "gateway-password-24chars", &[]);
        let last = req.len() - 1;
        req[last] ^= 1;
        assert_eq!(
            a.handle_packet(t0, Pair::from(from()), &req, None),
            Err(IceError::Stun(StunError::BadFingerprint))
        );
        req[3] = req[3].wrapping_add(4);
        assert!(a.handle_packet(t0, Pair::from(from()), &req, None).is_err());
    }

    #[test]
    fn consent_freshness_with_virtual_time() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        let nominate = check(
            2,
            "gwuf:brwz",
            "gateway-password-24chars",
            &[(stun::ATTR_USE_CANDIDATE, &[])],
        );
        a.handle_packet(t0, Pair::from(from()), &nominate, None)
            .unwrap();
        a.poll_event();
        // Chromium checks every few seconds during the call: consent holds.
        let mut now = t0;
        for _ in 0..40 {
            now += Duration::from_millis(2500);
            a.handle_packet(
                now,
                Pair::from(from()),
                &check(5, "gwuf:brwz", "gateway-password-24chars", &[]),
                None,
            )
            .unwrap();
            a.handle_timeout(now);
        }
        assert_eq!(a.poll_event(), None);
        // Checks from another address, or with bad credentials, do not keep consent.
        let stranger: SocketAddr = "198.51.100.1:4000".parse().unwrap();
        let last_good = now;
        for _ in 0..11 {
            now += Duration::from_millis(2500);
            a.handle_packet(
                now,
                Pair::from(stranger),
                &check(6, "gwuf:brwz", "gateway-password-24chars", &[]),
                None,
            )
            .unwrap();
            a.handle_packet(
                now,
                Pair::from(from()),
                &check(7, "gwuf:brwz", "wrong-password-000000000", &[]),
                None,
            )
            .unwrap();
            a.handle_timeout(now);
        }
        assert_eq!(a.next_timeout(), Some(last_good + DEFAULT_CONSENT_TIMEOUT));
        a.handle_timeout(last_good + DEFAULT_CONSENT_TIMEOUT);
        assert_eq!(a.poll_event(), Some(IceEvent::ConsentLost));
        assert_eq!(a.next_timeout(), None);
        a.handle_timeout(now + Duration::from_secs(100));
        assert_eq!(a.poll_event(), None, "reported once");
    }

    #[test]
    fn no_check_at_all_times_out_too() {
        let t0 = Instant::now();
        let mut a = agent(t0);
        a.handle_timeout(t0 + Duration::from_secs(29));
        assert_eq!(a.poll_event(), None);
        a.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(a.poll_event(), Some(IceEvent::ConsentLost));
    }
}
