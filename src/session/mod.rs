//! Browser sessions: who is signed in, their secrets, and the ordered event
//! queue read by long-polls.
//!
//! [`SessionStore`] is sans-IO: every method that depends on time takes `now`,
//! and the driver (the API server) owns the clock and the waiting. Events are
//! numbered from 1 per session and stay queued until a later poll's `after`
//! passes them, so a poll lost on the network loses nothing.

pub mod events;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{digest, SHA256};
use tokio::sync::Notify;

use crate::random::Random;

pub use events::{AutoAnswer, CallerIdentity, EventRecord, IncomingCaller, SessionEvent};

/// Opaque session id handed to the browser.
pub type SessionId = String;

/// What a browser is given when its session is created.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the gateway already holds its maximum number of sessions")]
    TooMany,
    #[error("this user has {0} sessions open already (http.max-sessions-per-user)")]
    TooManyForUser(usize),
    #[error("this client address has {0} sessions open already (http.max-sessions-per-address)")]
    TooManyForAddress(usize),
    #[error("the session secret is not valid")]
    Unauthorized,
    #[error("no such session")]
    NotFound,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Deleted,
    Expired,
    /// The gateway drained for a restart.
    Drained,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Expired => "expired",
            EndReason::Drained => "drained",
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub user: String,
    /// The user's SIP password (for REGISTER and for digest challenges to
    /// the user's calls), when the session or the config gave one.
    pub sip_password: Option<crate::config::Secret>,
    pub display_name: Option<String>,
    pub created: Instant,
    /// The address that opened it (for `max-sessions-per-address`).
    pub client: IpAddr,
    /// Whether incoming calls for the user come here: once its
    /// registration succeeded (at once when nothing registers), so a
    /// session still registering, or refused, steals nobody's calls.
    pub receives_calls: bool,
    secret_digest: [u8; 32],
    last_activity: Instant,
    polls_in_progress: u32,
    next_seq: u64,
    queue: VecDeque<EventRecord>,
    /// Wakes long-polls when an event arrives or the session ends.
    notify: Arc<Notify>,
}

impl Session {
    pub fn queued_events(&self) -> usize {
        self.queue.len()
    }
}

/// The result of starting a poll: events to return now, or a handle to wait on.
pub struct PollStart {
    pub events: Vec<EventRecord>,
    pub wake: Arc<Notify>,
}

/// Users remembered as departed at most; the memory starts over when full.
const MAX_DEPARTED: usize = 100_000;

/// The answer to "where does a call for this user go?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserLookup {
    Session(SessionId),
    /// The user had a session here that has ended.
    Gone,
    /// Nobody of that name was ever here.
    Unknown,
}

pub struct SessionStore {
    sessions: HashMap<SessionId, Session>,
    /// Before each new session id: `<node-id>.` in a cluster.
    id_prefix: String,
    /// SHA-256 of each secret → its session, so a secret is found without
    /// comparing it byte by byte against every session.
    by_secret: HashMap<[u8; 32], SessionId>,
    /// Users whose sessions ended (a call for them gets 480, not 404).
    departed: HashSet<String>,
    timeout: Duration,
    max_sessions: usize,
    max_per_user: usize,
    max_per_address: usize,
    /// Session ids and secrets.
    random: Random,
}

fn secret_digest(secret: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
    out
}

impl SessionStore {
    pub fn new(timeout: Duration, max_sessions: usize, random: Random) -> Self {
        SessionStore {
            sessions: HashMap::new(),
            id_prefix: String::new(),
            by_secret: HashMap::new(),
            departed: HashSet::new(),
            timeout,
            max_sessions,
            max_per_user: usize::MAX,
            max_per_address: usize::MAX,
            random,
        }
    }

    /// The same store with at most `per_user` sessions for one user and
    /// `per_address` from one client address.
    /// Session ids start with `node` and a "." (a cluster's node id; ""
    /// for none), so another node can tell whose a session is.
    pub fn with_node(mut self, node: &str) -> Self {
        self.id_prefix = if node.is_empty() {
            String::new()
        } else {
            format!("{node}.")
        };
        self
    }

    pub fn with_limits(mut self, per_user: usize, per_address: usize) -> Self {
        self.max_per_user = per_user;
        self.max_per_address = per_address;
        self
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Creates a session for `user`, opened from `client`; it takes
    /// incoming calls once [`SessionStore::take_calls`] says so.
    pub fn create(
        &mut self,
        user: &str,
        display_name: Option<String>,
        client: IpAddr,
        now: Instant,
    ) -> Result<NewSession, SessionError> {
        if self.sessions.len() >= self.max_sessions {
            return Err(SessionError::TooMany);
        }
        let (mut of_user, mut of_client) = (0, 0);
        for s in self.sessions.values() {
            of_user += usize::from(s.user == user);
            of_client += usize::from(s.client == client);
        }
        if of_user >= self.max_per_user {
            return Err(SessionError::TooManyForUser(of_user));
        }
        if of_client >= self.max_per_address {
            return Err(SessionError::TooManyForAddress(of_client));
        }
        let id = format!("{}{}", self.id_prefix, self.random.base64url(16));
        let secret = self.random.base64url(32);
        let digest = secret_digest(&secret);
        self.by_secret.insert(digest, id.clone());
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                user: user.to_string(),
                sip_password: None,
                display_name,
                created: now,
                client,
                receives_calls: false,
                secret_digest: digest,
                last_activity: now,
                polls_in_progress: 0,
                next_seq: 1,
                queue: VecDeque::new(),
                notify: Arc::new(Notify::new()),
            },
        );
        Ok(NewSession { id, secret })
    }

    /// Checks `secret` for session `id`. A secret that belongs to no session is
    /// `Unauthorized`; a valid secret used with another id is `NotFound`
    /// whether or not that id exists, so ids cannot be probed.
    pub fn authorize(&self, id: &str, secret: &str) -> Result<&Session, SessionError> {
        let owner = self
            .by_secret
            .get(&secret_digest(secret))
            .ok_or(SessionError::Unauthorized)?;
        if owner != id {
            return Err(SessionError::NotFound);
        }
        self.sessions.get(id).ok_or(SessionError::NotFound)
    }

    /// From now on incoming calls for session `id`'s user may come to it.
    pub fn take_calls(&mut self, id: &str) {
        if let Some(session) = self.sessions.get_mut(id) {
            session.receives_calls = true;
        }
    }

    /// Sets session `id`'s SIP password.
    pub fn set_sip_password(&mut self, id: &str, password: Option<crate::config::Secret>) {
        if let Some(session) = self.sessions.get_mut(id) {
            session.sip_password = password;
        }
    }

    fn authorized_mut(&mut self, id: &str, secret: &str) -> Result<&mut Session, SessionError> {
        self.authorize(id, secret)?;
        self.sessions.get_mut(id).ok_or(SessionError::NotFound)
    }

    /// Starts a long-poll: drops events up to `after` (the client has them),
    /// returns the rest, and marks the session as being polled so it cannot
    /// expire meanwhile. Every `begin_poll` must be paired with `end_poll`.
    pub fn begin_poll(
        &mut self,
        id: &str,
        secret: &str,
        after: u64,
        now: Instant,
    ) -> Result<PollStart, SessionError> {
        let session = self.authorized_mut(id, secret)?;
        while session.queue.front().is_some_and(|e| e.seq <= after) {
            session.queue.pop_front();
        }
        session.last_activity = now;
        session.polls_in_progress += 1;
        Ok(PollStart {
            events: session
                .queue
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect(),
            wake: session.notify.clone(),
        })
    }

    /// Events after `after`, without acknowledging anything (a poll re-checking
    /// after a wake-up).
    pub fn events_after(&self, id: &str, after: u64) -> Option<Vec<EventRecord>> {
        let session = self.sessions.get(id)?;
        Some(
            session
                .queue
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect(),
        )
    }

    /// Ends a long-poll; the session's idle time starts again from `now`.
    pub fn end_poll(&mut self, id: &str, now: Instant) {
        if let Some(session) = self.sessions.get_mut(id) {
            session.polls_in_progress = session.polls_in_progress.saturating_sub(1);
            session.last_activity = now;
        }
    }

    /// Queues an event for the session and wakes its polls. Returns its seq.
    pub fn push(&mut self, id: &str, event: SessionEvent) -> Option<u64> {
        let session = self.sessions.get_mut(id)?;
        let seq = session.next_seq;
        session.next_seq += 1;
        session.queue.push_back(EventRecord { seq, event });
        session.notify.notify_waiters();
        Some(seq)
    }

    /// Where an incoming call for `user` goes: their newest session that
    /// takes calls, or why there is none.
    /// The users with a session here that takes calls, each once.
    pub fn users_receiving_calls(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.receives_calls)
            .map(|s| s.user.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }

    pub fn find_by_user(&self, user: &str) -> UserLookup {
        let newest = self
            .sessions
            .values()
            .filter(|s| s.user == user && s.receives_calls)
            .max_by_key(|s| s.created)
            .map(|s| s.id.clone());
        match newest {
            Some(id) => UserLookup::Session(id),
            None if self.departed.contains(user) => UserLookup::Gone,
            None => UserLookup::Unknown,
        }
    }

    /// Removes a session (DELETE, or the caller's own end logic).
    pub fn remove(&mut self, id: &str) -> Option<Session> {
        let session = self.sessions.remove(id)?;
        self.by_secret.remove(&session.secret_digest);
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.clear();
        }
        self.departed.insert(session.user.clone());
        session.notify.notify_waiters();
        Some(session)
    }

    /// Removes and returns every session (the end of a drain).
    pub fn take_all(&mut self) -> Vec<Session> {
        let ids: Vec<SessionId> = self.sessions.keys().cloned().collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Removes and returns the sessions that nobody polled for the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<Session> {
        let timeout = self.timeout;
        let stale: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| {
                s.polls_in_progress == 0
                    && now.saturating_duration_since(s.last_activity) >= timeout
            })
            .map(|s| s.id.clone())
            .collect();
        stale.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// When the next session could expire, if none is polled before then.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter(|s| s.polls_in_progress == 0)
            .map(|s| s.last_activity + self.timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn store() -> SessionStore {
        SessionStore::new(Duration::from_secs(300), 3, Random::seeded(1))
    }

    fn dtmf(call: &str, digit: char) -> SessionEvent {
        SessionEvent::CallDtmf {
            call: call.into(),
            digit: digit.to_string(),
        }
    }

    #[test]
    fn secrets_and_ids() {
        let mut s = store();
        let t0 = Instant::now();
        let a = s.create("1001", None, CLIENT, t0).unwrap();
        let b = s.create("1002", None, CLIENT, t0).unwrap();
        assert_ne!(a.id, b.id);
        assert!(a.secret.len() >= 43, "32 random bytes in base64url");
        assert_eq!(s.authorize(&a.id, &a.secret).unwrap().user, "1001");
        assert_eq!(
            s.authorize(&a.id, "wrong").unwrap_err(),
            SessionError::Unauthorized
        );
        assert_eq!(
            s.authorize(&b.id, &a.secret).unwrap_err(),
            SessionError::NotFound
        );
        assert_eq!(
            s.authorize("no-such-id", &a.secret).unwrap_err(),
            SessionError::NotFound
        );
        assert_eq!(
            s.authorize("no-such-id", "wrong").unwrap_err(),
            SessionError::Unauthorized
        );
    }

    #[test]
    fn calls_find_the_newest_session_of_a_user() {
        let mut s = store();
        let t0 = Instant::now();
        assert_eq!(s.find_by_user("1001"), UserLookup::Unknown);
        let old = s.create("1001", None, CLIENT, t0).unwrap();
        s.take_calls(&old.id);
        let new = s
            .create("1001", None, CLIENT, t0 + Duration::from_secs(1))
            .unwrap();
        // Still registering: the calls stay with the old one.
        assert_eq!(s.find_by_user("1001"), UserLookup::Session(old.id.clone()));
        s.take_calls(&new.id);
        assert_eq!(s.find_by_user("1001"), UserLookup::Session(new.id.clone()));
        s.remove(&new.id);
        assert_eq!(s.find_by_user("1001"), UserLookup::Session(old.id.clone()));
        s.remove(&old.id);
        assert_eq!(s.find_by_user("1001"), UserLookup::Gone);
        assert_eq!(s.find_by_user("1002"), UserLookup::Unknown);
    }

    #[test]
    fn max_sessions() {
        let mut s = store();
        let t0 = Instant::now();
        for u in ["a", "b", "c"] {
            s.create(u, None, CLIENT, t0).unwrap();
        }
        assert_eq!(
            s.create("d", None, CLIENT, t0).unwrap_err(),
            SessionError::TooMany
        );
    }

    #[test]
    fn sessions_per_user_and_per_address_are_bounded() {
        let mut s =
            SessionStore::new(Duration::from_secs(300), 100, Random::seeded(1)).with_limits(2, 3);
        let t0 = Instant::now();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
        s.create("1001", None, CLIENT, t0).unwrap();
        s.create("1001", None, other, t0).unwrap();
        assert_eq!(
            s.create("1001", None, other, t0).unwrap_err(),
            SessionError::TooManyForUser(2)
        );
        s.create("1002", None, CLIENT, t0).unwrap();
        let third = s.create("1003", None, CLIENT, t0).unwrap();
        assert_eq!(
            s.create("1004", None, CLIENT, t0).unwrap_err(),
            SessionError::TooManyForAddress(3)
        );
        // Another address still gets in; a session ending frees a place.
        s.create("1004", None, other, t0).unwrap();
        s.remove(&third.id);
        s.create("1005", None, CLIENT, t0).unwrap();
    }

    #[test]
    fn lost_poll_loses_nothing() {
        let mut s = store();
        let t0 = Instant::now();
        let n = s.create("1001", None, CLIENT, t0).unwrap();
        assert_eq!(s.push(&n.id, dtmf("c1", '1')), Some(1));
        assert_eq!(s.push(&n.id, dtmf("c1", '2')), Some(2));
        // A poll returns both, but its response never reaches the browser.
        let p = s.begin_poll(&n.id, &n.secret, 0, t0).unwrap();
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        s.end_poll(&n.id, t0);
        s.push(&n.id, dtmf("c1", '3'));
        // The browser polls again from what it last saw (0): everything is there.
        let p = s.begin_poll(&n.id, &n.secret, 0, t0).unwrap();
        assert_eq!(
            p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        s.end_poll(&n.id, t0);
        // Acknowledging 2 drops 1 and 2 for good.
        let p = s.begin_poll(&n.id, &n.secret, 2, t0).unwrap();
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
        s.end_poll(&n.id, t0);
        assert_eq!(s.sessions[&n.id].queued_events(), 1);
        let p = s.begin_poll(&n.id, &n.secret, 3, t0).unwrap();
        assert!(p.events.is_empty());
        s.end_poll(&n.id, t0);
        assert_eq!(
            s.push(&n.id, dtmf("c1", '4')),
            Some(4),
            "seq keeps growing by one"
        );
    }

    #[test]
    fn expiry_with_virtual_time() {
        let mut s = store();
        let t0 = Instant::now();
        let idle = s.create("idle", None, CLIENT, t0).unwrap();
        let polled = s.create("polled", None, CLIENT, t0).unwrap();
        assert_eq!(s.next_expiry(), Some(t0 + Duration::from_secs(300)));
        // One poll starts at t0+200 s and is still waiting at t0+600 s.
        s.begin_poll(&polled.id, &polled.secret, 0, t0 + Duration::from_secs(200))
            .unwrap();
        assert!(s.expire(t0 + Duration::from_secs(299)).is_empty());
        let gone = s.expire(t0 + Duration::from_secs(300));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, idle.id);
        assert_eq!(
            s.authorize(&idle.id, &idle.secret).unwrap_err(),
            SessionError::Unauthorized
        );
        assert!(
            s.expire(t0 + Duration::from_secs(600)).is_empty(),
            "a poll in progress keeps it"
        );
        s.end_poll(&polled.id, t0 + Duration::from_secs(610));
        assert!(s.expire(t0 + Duration::from_secs(909)).is_empty());
        assert_eq!(s.expire(t0 + Duration::from_secs(910)).len(), 1);
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn push_wakes_waiting_poll() {
        let mut s = store();
        let t0 = Instant::now();
        let n = s.create("1001", None, CLIENT, t0).unwrap();
        let p = s.begin_poll(&n.id, &n.secret, 0, t0).unwrap();
        assert!(p.events.is_empty());
        // Taken before the push (as the poll driver does under its lock), so
        // the push must complete it even though it was not polled yet.
        let notified = p.wake.notified();
        s.push(&n.id, dtmf("c", '5'));
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("the push wakes the poll");
        assert_eq!(s.events_after(&n.id, 0).unwrap().len(), 1);
    }
}
