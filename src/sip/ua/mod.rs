//! The gateway's SIP user agent toward its one SIP server, sans-IO, with
//! one input and one output as str0m's `Rtc` and our `Call` have:
//! [`UserAgent::handle_input`] takes a datagram, a command or the time;
//! [`UserAgent::poll_output`] gives what to send, what happened, and when to
//! wake it next.
//!
//! By concern: `calls` (INVITE dialogs both ways and our resent 2xx),
//! `referrals` (the far end's REFER followed, an INVITE with Replaces),
//! `registrations` (each browser user's REGISTER), `keepalive` (the OPTIONS
//! ping behind `/readyz`), `large_requests` (over UDP, a request too big for
//! it goes over TCP, RFC 3261 §18.1.1). Each request we send runs in a
//! client transaction; responses find it by their top Via branch. Every
//! wake-up — transactions, registrations, resent answers, the keepalive —
//! is in one [`TimerTable`], so a datagram or a timeout touches only what
//! it concerns.

mod calls;
mod keepalive;
mod large_requests;
mod referrals;
mod registrations;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::prelude::*;

use super::caller_id::OutgoingCaller;
use super::dialog::DialogEvent;
use super::endpoint::{Endpoint, Received, TransactionLimits};
use super::identity::Identity;
use super::message::branch_of;
use super::registration::{Registration, RegistrationEvent};
use super::session_timer::SessionTimerConfig;
use super::sources::TrustedSources;
use super::timers::TimerTable;
use super::transaction::{ClientInput, ClientTransaction, Output, TimerConfig};
use crate::random::Random;
use calls::{Calls, UnackedAnswer};
pub use large_requests::UDP_REQUEST_LIMIT;

#[derive(Debug, Clone)]
pub struct UaConfig {
    /// The SIP servers in the order they are tried: requests go to the
    /// first one the keepalive has not found down (empty: no SIP server;
    /// requests we would send fail at once, the endpoint still answers
    /// OPTIONS). A dialog's requests stay with the server it began on.
    pub servers: Vec<SocketAddr>,
    pub identity: Identity,
    pub timers: TimerConfig,
    pub register_expires: u32,
    /// OPTIONS ping interval; None: no keepalive.
    pub keepalive: Option<Duration>,
    /// Whom SIP is taken from; anything else is dropped unread.
    pub trusted: TrustedSources,
    /// Server transactions open at once, per source and in all.
    pub transactions: TransactionLimits,
    /// Session timers (RFC 4028) of our calls.
    pub session_timer: SessionTimerConfig,
    /// Which of an incoming INVITE's headers reach the browser.
    pub call_data: super::call_data::CallDataRules,
    /// A REFER from the far end is offered to the call (else 603).
    pub accept_refer: bool,
}

/// What the user agent is told: a message, the time, or a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UaInput<'a> {
    /// A datagram (or a message framed from a stream) from `from`.
    Datagram { from: SocketAddr, data: &'a [u8] },
    /// The instant [`UaOutput::Timeout`] named has come.
    Timeout,
    /// The TCP connection for large requests could not be made, or dropped
    /// before their answers: they go again over UDP.
    StreamFailed,
    /// Register `user` for session `id`; the outcome comes as an event.
    Register {
        id: String,
        user: String,
        password: Option<String>,
    },
    /// End `id`'s registration (unREGISTER if it was in place).
    Unregister { id: String },
    /// Call `to` for call `key` as `user`, offering `sdp`; a digest
    /// challenge to the INVITE is answered with `password`.
    Invite {
        key: String,
        user: String,
        to: String,
        sdp: String,
        password: Option<String>,
        /// Who calls, as our From (and identity header) shows it.
        caller: OutgoingCaller,
    },
    /// End call `key` from our side: CANCEL before the answer, BYE after
    /// (an unanswered incoming call is refused with 480).
    Hangup { key: String },
    /// Put the far end on hold (re-INVITE sendonly) or take it off; the
    /// outcome comes as [`DialogEvent::LocalHold`].
    Hold { key: String, hold: bool },
    /// DTMF as SIP INFO, one request per digit.
    InfoDtmf {
        key: String,
        digits: String,
        duration_ms: u32,
    },
    /// Ask call `key`'s far end to call `target` in our place (REFER);
    /// the outcome comes as [`DialogEvent::Transfer`].
    Transfer {
        key: String,
        target: super::transfer::TransferTarget,
    },
    /// Follow the far end's REFER of call `key` ([`DialogEvent::Referred`])
    /// with our offer of the call's media.
    FollowRefer { key: String, sdp: String },
    /// Refuse the far end's REFER of call `key` with this status.
    RefuseRefer { key: String, code: u16 },
    /// 180 Ringing to an incoming call.
    Ring { key: String },
    /// 183 with our SDP (early media) to an incoming call.
    Progress { key: String, sdp: String },
    /// Answer an incoming call with our SDP, and the page's call-data
    /// headers (checked by the caller).
    Accept {
        key: String,
        sdp: String,
        headers: Vec<(String, String)>,
    },
    /// Answer the far end's offer in a re-INVITE or UPDATE of call `key`
    /// ([`DialogEvent::Offer`]) with our SDP, or refuse it with a status.
    AnswerOffer {
        key: String,
        answer: Result<String, u16>,
    },
    /// Send an incoming call elsewhere: 302 with `contact` as the Contact
    /// (the node of a cluster that holds the user's session).
    Redirect { key: String, contact: String },
    /// Whether the node takes new calls: while it does not (a drain, the
    /// CPU threshold, `max-calls`) an OPTIONS outside a dialog gets 503.
    Accepting(bool),
    /// Refuse an incoming call with `code`, and `reason` as the reason
    /// phrase when given (a 400 naming what is wrong with the INVITE).
    Refuse {
        key: String,
        code: u16,
        reason: Option<String>,
    },
}

/// Which way a datagram leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The SIP link: UDP, or the stream to the server (or one the peer
    /// opened to us).
    Link,
    /// A TCP connection to the server for a request too large for UDP.
    LargeRequestStream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
    pub over: Over,
}

/// What the user agent gives back, in order: datagrams, then events, then
/// when to wake it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UaOutput {
    Transmit(Transmit),
    Event(UaEvent),
    /// Nothing more until the next input or this instant (None: input only).
    Timeout(Option<Instant>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UaEvent {
    Registration {
        id: String,
        event: RegistrationEvent,
    },
    /// What the far end of call `key` did.
    Call { key: String, event: DialogEvent },
    /// A new call for `user` (the Request-URI's user); answer it with
    /// [`UaInput::Ring`], [`UaInput::Accept`] or [`UaInput::Refuse`].
    Incoming {
        key: String,
        user: String,
        from: String,
        to: String,
        /// Who calls, by name and identity.
        caller: super::caller_id::Caller,
        /// The switch's call data: the headers `call_data` lets through.
        call_data: std::collections::BTreeMap<String, Vec<String>>,
        /// The INVITE asks to be answered by itself after this many seconds.
        auto_answer: Option<u32>,
        sdp: Option<String>,
    },
    /// The server in use answered (true) or stopped answering (false).
    ServerReachable(bool),
    /// One of several servers was found up or down (each is probed).
    ServerUp { server: SocketAddr, up: bool },
    /// Registrations and new calls go to `to` from now on: `from` stopped
    /// answering.
    FailedOver { from: SocketAddr, to: SocketAddr },
}

/// Counters for the metrics exporter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UaCounters {
    pub requests_sent: u64,
    pub transaction_timeouts: u64,
    pub registrations_failed: u64,
    /// Datagrams that did not parse, and retransmitted requests answered
    /// from their transaction.
    pub malformed_received: u64,
    pub retransmissions_absorbed: u64,
    /// Datagrams dropped unread: their source is not a trusted one.
    pub untrusted_dropped: u64,
    /// New requests dropped unanswered: too many server transactions open.
    pub transactions_refused: u64,
}

/// Who a client transaction's answers go to.
#[derive(Clone)]
enum Owner {
    Registration(String),
    /// The OPTIONS ping of the server with this index.
    Keepalive(usize),
    /// A BYE (or NOTIFY) for a call already gone from our side, to the
    /// server its dialog began on: its answer only counts.
    Farewell(Option<SocketAddr>),
    /// A call's INVITE, CANCEL or BYE.
    Call(String),
}

/// What waits for a wake-up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Wakeup {
    /// The endpoint's server transactions (it keeps its own table).
    Endpoint,
    Keepalive,
    /// A client transaction, by "branch method".
    Client(String),
    Registration(String),
    /// Our 2xx to call `key`, resent until its ACK.
    Unacked(String),
    /// Call `key`'s session timer: a refresh to send or a session over.
    Session(String),
}

/// Whether a counted message came in or went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageDirection {
    In,
    Out,
}

impl MessageDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageDirection::In => "in",
            MessageDirection::Out => "out",
        }
    }
}

pub struct UserAgent {
    cfg: UaConfig,
    endpoint: Endpoint,
    clients: BTreeMap<String, (ClientTransaction, Owner)>,
    registrations: BTreeMap<String, Registration>,
    calls: Calls,
    /// Transfers the far end asked of us (REFER, Replaces).
    referrals: referrals::Referrals,
    unacked: BTreeMap<String, UnackedAnswer>,
    wakeups: TimerTable<Wakeup>,
    next_keepalive: Option<Instant>,
    reachable: Option<bool>,
    /// The server in use, an index into `cfg.servers`.
    current: usize,
    /// What each server's keepalive found last (None: nothing yet).
    server_up: Vec<Option<bool>>,
    /// Where each client transaction's request goes, by "branch method".
    destinations: BTreeMap<String, SocketAddr>,
    transmit: VecDeque<Transmit>,
    /// Client transactions whose request went over TCP because of its size.
    over_stream: BTreeSet<String>,
    events: VecDeque<UaEvent>,
    pub counters: UaCounters,
    /// Messages since the last [`UserAgent::take_message_counts`]:
    /// (direction, method, status or 0 for requests) → count.
    messages: BTreeMap<(MessageDirection, String, u16), u64>,
    /// Call keys and the OPTIONS' tags; each registration and dialog gets
    /// a stream of its own from it.
    random: Random,
}

impl UserAgent {
    pub fn new(cfg: UaConfig, now: Instant, mut random: Random) -> Self {
        let cfg_servers = cfg.servers.len();
        let next_keepalive = cfg.keepalive.map(|_| now);
        let mut wakeups = TimerTable::default();
        wakeups.set(Wakeup::Keepalive, next_keepalive);
        UserAgent {
            endpoint: Endpoint::with_reliability(
                cfg.timers,
                cfg.identity.reliable(),
                random.fork(),
            )
            .with_limits(cfg.transactions),
            next_keepalive,
            cfg,
            clients: BTreeMap::new(),
            registrations: BTreeMap::new(),
            calls: Calls::default(),
            referrals: Default::default(),
            unacked: BTreeMap::new(),
            wakeups,
            reachable: None,
            current: 0,
            server_up: vec![None; cfg_servers],
            destinations: BTreeMap::new(),
            transmit: VecDeque::new(),
            over_stream: BTreeSet::new(),
            events: VecDeque::new(),
            counters: UaCounters::default(),
            messages: BTreeMap::new(),
            random,
        }
    }

    /// Whom SIP is taken from.
    pub fn trusted(&self) -> &TrustedSources {
        &self.cfg.trusted
    }

    /// Everything the user agent is told goes through here.
    pub fn handle_input(&mut self, now: Instant, input: UaInput<'_>) {
        match input {
            UaInput::Datagram { from, data } => self.handle_datagram(now, from, data),
            UaInput::Timeout => self.handle_timeout(now),
            UaInput::StreamFailed => self.stream_failed(now),
            UaInput::Register { id, user, password } => self.register(now, &id, &user, password),
            UaInput::Unregister { id } => self.unregister(now, &id),
            UaInput::Accepting(accepting) => self.endpoint.set_accepting(accepting),
            UaInput::Redirect { key, contact } => self.redirect(now, &key, &contact),
            UaInput::Invite {
                key,
                user,
                to,
                sdp,
                password,
                caller,
            } => self.invite(now, &key, (&user, &to), sdp, password, caller),
            UaInput::Hangup { key } => self.hangup(now, &key),
            UaInput::Hold { key, hold } => self.hold(now, &key, hold),
            UaInput::InfoDtmf {
                key,
                digits,
                duration_ms,
            } => self.info_dtmf(now, &key, &digits, duration_ms),
            UaInput::Transfer { key, target } => self.transfer(now, &key, target),
            UaInput::FollowRefer { key, sdp } => self.follow_refer(now, &key, sdp),
            UaInput::RefuseRefer { key, code } => self.refuse_refer(now, &key, code),
            UaInput::Ring { key } => self.ring(now, &key),
            UaInput::Progress { key, sdp } => self.progress(now, &key, sdp),
            UaInput::Accept { key, sdp, headers } => self.accept(now, &key, sdp, headers),
            UaInput::AnswerOffer { key, answer } => self.answer_offer(now, &key, answer),
            UaInput::Refuse { key, code, reason } => {
                self.refuse(now, &key, code, reason.as_deref())
            }
        }
        self.sync_endpoint();
    }

    /// The next thing to do: datagrams first, then events, then the
    /// instant to be woken at.
    pub fn poll_output(&mut self) -> UaOutput {
        if let Some(transmit) = self.transmit.pop_front() {
            return UaOutput::Transmit(transmit);
        }
        if let Some(event) = self.events.pop_front() {
            return UaOutput::Event(event);
        }
        UaOutput::Timeout(self.wakeups.next())
    }

    /// The server in use (None: no SIP server).
    pub fn server(&self) -> Option<SocketAddr> {
        self.cfg.servers.get(self.current).copied()
    }

    /// Every configured server, in order.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.cfg.servers
    }

    /// Registrations known, in place or still being made or ended.
    pub fn registration_count(&self) -> usize {
        self.registrations.len()
    }

    /// Registrations in place now.
    pub fn registered_count(&self) -> usize {
        self.registrations
            .values()
            .filter(|r| r.is_registered())
            .count()
    }

    /// Calls with a dialog in progress.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// SIP messages counted since the last call (requests without
    /// retransmissions: status 0; responses received: their status).
    pub fn take_message_counts(&mut self) -> Vec<(MessageDirection, String, u16, u64)> {
        std::mem::take(&mut self.messages)
            .into_iter()
            .map(|((d, m, s), n)| (d, m, s, n))
            .collect()
    }

    fn count(&mut self, direction: MessageDirection, method: &str, status: u16) {
        // A metric label: methods from outside are one of a known few, so
        // made-up ones cannot create a series each.
        let method = crate::sip::message::method_label(method);
        *self
            .messages
            .entry((direction, method.to_string(), status))
            .or_insert(0) += 1;
    }

    /// The endpoint's datagrams and wake-up into ours, its counts into ours.
    fn sync_endpoint(&mut self) {
        while let Some((to, data)) = self.endpoint.poll_transmit() {
            self.transmit.push_back(Transmit {
                to,
                data,
                over: Over::Link,
            });
        }
        self.wakeups
            .set(Wakeup::Endpoint, self.endpoint.poll_timeout());
        self.counters.malformed_received = self.endpoint.counters.malformed;
        self.counters.retransmissions_absorbed = self.endpoint.counters.retransmissions_absorbed;
        self.counters.transactions_refused = self.endpoint.counters.transactions_refused;
    }

    /// Queues a datagram for `to` (None: the server in use) over the SIP
    /// link.
    fn send_to_server(&mut self, data: Vec<u8>, to: Option<SocketAddr>) {
        if let Some(to) = to.or_else(|| self.server()) {
            self.transmit.push_back(Transmit {
                to,
                data,
                over: Over::Link,
            });
        }
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if !self.cfg.trusted.allows(from.ip()) {
            self.counters.untrusted_dropped += 1;
            return;
        }
        match self.endpoint.receive(now, from, data) {
            Received::Handled => {}
            Received::Response(response) => self.handle_response(now, response),
            Received::Request(request) => {
                self.count(MessageDirection::In, &request.method.to_string(), 0);
                self.handle_request(now, from, &request);
            }
        }
    }

    fn handle_response(&mut self, now: Instant, response: rsip::Response) {
        let Some(branch) = response
            .via_header()
            .ok()
            .and_then(|v| v.typed().ok())
            .and_then(|v| v.branch().map(|b| b.to_string()))
        else {
            return;
        };
        let method = response
            .cseq_header()
            .ok()
            .and_then(|c| c.typed().ok())
            .map(|c| c.method.to_string())
            .unwrap_or_default();
        self.count(MessageDirection::In, &method, response.status_code.code());
        let key = format!("{branch} {method}");
        if let Some((tx, _)) = self.clients.get_mut(&key) {
            tx.handle_input(now, ClientInput::Response(response));
            self.drain_client(now, &key);
            return;
        }
        if method == "INVITE" {
            self.late_invite_response(&response);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for wakeup in self.wakeups.take_due(now) {
            match wakeup {
                Wakeup::Endpoint => self.endpoint.handle_timeout(now),
                Wakeup::Keepalive => self.keepalive_due(now),
                Wakeup::Client(key) => {
                    if let Some((tx, _)) = self.clients.get_mut(&key) {
                        tx.handle_input(now, ClientInput::Timeout);
                    }
                    self.drain_client(now, &key);
                }
                Wakeup::Registration(id) => self.registration_due(now, &id),
                Wakeup::Unacked(key) => self.resend_unacked(now, &key),
                Wakeup::Session(key) => self.session_due(now, &key),
            }
        }
    }

    /// Sends `request` in a new client transaction whose answers go to
    /// `owner`.
    fn send(&mut self, now: Instant, request: rsip::Request, owner: Owner) {
        let (Some(branch), Some(to)) = (branch_of(&request), self.destination(&owner)) else {
            // Nowhere to send it: as if it went unanswered.
            match owner {
                Owner::Registration(id) => self.registration_final(now, &id, None),
                Owner::Call(key) => self.call_final(now, &key, &request.method, None),
                Owner::Keepalive(_) | Owner::Farewell(_) => {}
            }
            return;
        };
        self.counters.requests_sent += 1;
        self.count(MessageDirection::Out, &request.method.to_string(), 0);
        let key = format!("{branch} {}", request.method);
        let (request, reliable) = self.route_for_size(&key, request);
        let tx = ClientTransaction::new(request, reliable, self.cfg.timers, now);
        self.clients.insert(key.clone(), (tx, owner));
        self.destinations.insert(key.clone(), to);
        self.drain_client(now, &key);
    }

    /// Where a request of `owner` goes: a ping to the server it probes, a
    /// call's to the server its dialog began on, the rest to the server in
    /// use.
    fn destination(&self, owner: &Owner) -> Option<SocketAddr> {
        match owner {
            Owner::Keepalive(i) => self.cfg.servers.get(*i).copied(),
            Owner::Call(key) => self
                .calls
                .get(key)
                .and_then(|call| call.server())
                .or_else(|| self.server()),
            Owner::Farewell(server) => server.or_else(|| self.server()),
            Owner::Registration(_) => self.server(),
        }
    }

    /// Queues a client transaction's output and hands its answers to their
    /// owner; forgets it once terminated.
    fn drain_client(&mut self, now: Instant, key: &str) {
        let Some(server) = self.destinations.get(key).copied() else {
            return;
        };
        let mut finals = Vec::new();
        let mut done = false;
        let mut next = None;
        let mut method = rsip::Method::Options;
        if let Some((tx, owner)) = self.clients.get_mut(key) {
            method = tx.request().method;
            let over = if self.over_stream.contains(key) {
                Over::LargeRequestStream
            } else {
                Over::Link
            };
            loop {
                match tx.poll_output() {
                    Output::Timeout(at) => {
                        next = at;
                        break;
                    }
                    Output::Transmit(data) => self.transmit.push_back(Transmit {
                        to: server,
                        data,
                        over,
                    }),
                    // A call hears of every response to its INVITE.
                    Output::Response(r) if matches!(owner, Owner::Call(_)) => finals.push(Some(r)),
                    Output::Response(r) if r.status_code.code() >= 200 => finals.push(Some(r)),
                    Output::TimedOut => {
                        self.counters.transaction_timeouts += 1;
                        finals.push(None);
                    }
                    Output::Terminated => done = true,
                    _ => {}
                }
            }
        }
        let owner = if done {
            self.over_stream.remove(key);
            self.destinations.remove(key);
            next = None;
            self.clients.remove(key).map(|(_, o)| o)
        } else if finals.is_empty() {
            None
        } else {
            self.clients.get(key).map(|(_, o)| o.clone())
        };
        self.wakeups.set(Wakeup::Client(key.to_string()), next);
        let Some(owner) = owner else {
            return;
        };
        for response in finals {
            // With servers to fail over to, a request the server let go
            // unanswered says it is down at once (the keepalive would say
            // so within its interval); registrations it held move on.
            let moved = response.is_none()
                && self.cfg.servers.len() > 1
                && self.server_answered(now, server, false);
            match &owner {
                Owner::Keepalive(_) => {
                    self.server_answered(now, server, response.is_some());
                }
                Owner::Farewell(_) => {}
                // Sent again to the new server by the failover.
                Owner::Registration(_) if moved => {}
                Owner::Registration(id) => self.registration_final(now, id, response),
                Owner::Call(call) => self.call_final(now, call, &method, response),
            }
        }
    }

    /// Forgets the client transactions `keep` says no to (their timers too).
    fn drop_clients(&mut self, mut keep: impl FnMut(&Owner) -> bool) {
        let gone: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, (_, owner))| !keep(owner))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.clients.remove(&key);
            self.destinations.remove(&key);
            self.over_stream.remove(&key);
            self.wakeups.set(Wakeup::Client(key), None);
        }
    }
}
