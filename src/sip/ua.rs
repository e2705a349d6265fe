//! The gateway's SIP user agent toward its one SIP server, sans-IO: the
//! requests it serves itself ([`Endpoint`]), the browser users'
//! registrations, and the OPTIONS keepalive that tells `/readyz` whether the
//! server answers, and the calls' dialogs. Each request we send runs in a
//! client transaction (retransmissions, timer F); responses find it by
//! their top Via branch. Over UDP a request too large for it is handed out
//! for TCP instead (RFC 3261 §18.1.1, [`UserAgent::poll_transmit_stream`]);
//! digest challenges to our INVITEs are answered from the call's password.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::prelude::*;

use super::dialog::{Dialog, DialogEvent};
use super::endpoint::{Datagram, Endpoint};
use super::identity::Identity;
use super::message::branch_of;
use super::message::{own_request, parse_datagram};
use super::registration::{Registration, RegistrationEvent};
use super::transaction::{ClientTransaction, Output, TimerConfig};
use crate::random::Random;

#[derive(Debug, Clone)]
pub struct UaConfig {
    /// Where every request goes; None: no SIP server (requests we would
    /// send fail at once, the endpoint still answers OPTIONS).
    pub server: Option<SocketAddr>,
    pub identity: Identity,
    pub timers: TimerConfig,
    pub register_expires: u32,
    /// OPTIONS ping interval; None: no keepalive.
    pub keepalive: Option<Duration>,
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
    /// [`UserAgent::ring`], [`UserAgent::accept`] or [`UserAgent::refuse`].
    Incoming {
        key: String,
        user: String,
        from: String,
        to: String,
        sdp: Option<String>,
    },
    /// The server answered a keepalive (true) or stopped answering (false).
    ServerReachable(bool),
}

/// Counters for the metrics exporter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UaCounters {
    pub requests_sent: u64,
    pub transaction_timeouts: u64,
    pub registrations_failed: u64,
    /// The endpoint's: datagrams that did not parse, and retransmitted
    /// requests answered from their transaction.
    pub malformed_received: u64,
    pub retransmissions_absorbed: u64,
}

#[derive(Clone)]
enum Owner {
    Registration(String),
    Keepalive,
    /// A BYE for a call already gone from our side: its answer only counts.
    Farewell,
    /// A call's INVITE, CANCEL or BYE.
    Call(String),
}

/// Over UDP, requests larger than this go over TCP (RFC 3261 §18.1.1: the
/// path MTU is unknown, so 1300 bytes).
pub const UDP_REQUEST_LIMIT: usize = 1300;

/// `request` with the transport of its top Via set to `transport`.
fn with_via_transport(mut request: rsip::Request, transport: &str) -> rsip::Request {
    if let Some(rsip::Header::Via(via)) = request
        .headers
        .iter_mut()
        .find(|h| matches!(h, rsip::Header::Via(_)))
    {
        let value = via.value().to_string();
        if let Some((_, rest)) = value.split_once(' ') {
            *via = rsip::headers::Via::new(format!("SIP/2.0/{transport} {rest}"));
        }
    }
    request
}

pub struct UserAgent {
    cfg: UaConfig,
    endpoint: Endpoint,
    clients: BTreeMap<String, (ClientTransaction, Owner)>,
    registrations: BTreeMap<String, Registration>,
    calls: BTreeMap<String, Dialog>,
    /// Our 2xx to an incoming INVITE, resent until the ACK (RFC 3261 §13.3.1.4).
    unacked: BTreeMap<String, UnackedAnswer>,
    next_keepalive: Option<Instant>,
    reachable: Option<bool>,
    transmit: VecDeque<Datagram>,
    /// Requests too large for UDP (RFC 3261 §18.1.1), for a TCP connection
    /// to the server.
    transmit_stream: VecDeque<Datagram>,
    /// Client transactions whose request went over TCP because of its size.
    over_stream: std::collections::BTreeSet<String>,
    events: VecDeque<UaEvent>,
    pub counters: UaCounters,
    /// Messages since the last [`UserAgent::take_message_counts`]:
    /// (direction, method, status or 0 for requests) → count.
    messages: BTreeMap<(MessageDirection, String, u16), u64>,
    /// Call keys and the OPTIONS' tags; each registration and dialog gets
    /// a stream of its own from it.
    random: Random,
    /// Responses that did not parse (requests are the endpoint's to count).
    malformed_responses: u64,
}

/// A 2xx we resend until its ACK comes: every `interval` (doubling up to
/// T2) until `give_up_at` (64·T1).
struct UnackedAnswer {
    to: SocketAddr,
    bytes: Vec<u8>,
    next_send: Instant,
    interval: Duration,
    give_up_at: Instant,
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

impl UserAgent {
    pub fn new(cfg: UaConfig, now: Instant, mut random: Random) -> Self {
        UserAgent {
            endpoint: Endpoint::with_reliability(
                cfg.timers,
                cfg.identity.reliable(),
                random.fork(),
            ),
            next_keepalive: cfg.keepalive.map(|_| now),
            cfg,
            clients: BTreeMap::new(),
            registrations: BTreeMap::new(),
            calls: BTreeMap::new(),
            unacked: BTreeMap::new(),
            reachable: None,
            transmit: VecDeque::new(),
            transmit_stream: VecDeque::new(),
            over_stream: Default::default(),
            events: VecDeque::new(),
            counters: UaCounters::default(),
            messages: BTreeMap::new(),
            random,
            malformed_responses: 0,
        }
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

    pub fn server(&self) -> Option<SocketAddr> {
        self.cfg.server
    }

    /// Registrations in place now.
    pub fn registered_count(&self) -> usize {
        self.registrations
            .values()
            .filter(|r| r.is_registered())
            .count()
    }

    /// Registers `user` for `id` (a session); the outcome comes as an event.
    pub fn register(&mut self, now: Instant, id: &str, user: &str, password: Option<String>) {
        let mut reg = Registration::new(
            user,
            password,
            self.cfg.identity.clone(),
            self.cfg.register_expires,
            self.random.fork(),
        );
        let request = reg.start();
        self.registrations.insert(id.to_string(), reg);
        self.send(now, request, Owner::Registration(id.to_string()));
    }

    /// Ends `id`'s registration (unREGISTER if it was in place).
    pub fn unregister(&mut self, now: Instant, id: &str) {
        let request = self.registrations.get_mut(id).and_then(|r| r.unregister());
        // A REGISTER still in flight answers into a finished registration.
        self.clients
            .retain(|_, (_, owner)| !matches!(owner, Owner::Registration(o) if o == id));
        match request {
            Some(request) => self.send(now, request, Owner::Registration(id.to_string())),
            None => {
                self.registrations.remove(id);
            }
        }
    }

    /// Calls `to` for call `key` as `user`, offering `sdp`; what happens
    /// comes back as [`UaEvent::Call`] events.
    /// The password with which call `key` answers digest challenges to
    /// its INVITE (401/407); the user name is the caller's.
    pub fn set_call_password(&mut self, key: &str, password: String) {
        if let Some(call) = self.calls.get_mut(key) {
            let user = call.local_user().to_string();
            call.set_credentials(&user, password);
        }
    }

    pub fn invite(&mut self, now: Instant, key: &str, user: &str, to: &str, sdp: String) {
        let call = Dialog::new(user, to, &self.cfg.identity, sdp, self.random.fork());
        let invite = call.invite().clone();
        self.calls.insert(key.to_string(), call);
        self.send(now, invite, Owner::Call(key.to_string()));
    }

    /// Ends call `key` from our side: CANCEL before the answer, BYE after.
    pub fn hangup(&mut self, now: Instant, key: &str) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if call.is_incoming() && call.state() == super::dialog::DialogState::Calling {
            self.refuse(now, key, 480);
            return;
        }
        if let Some(cancel) = call.cancel() {
            // The INVITE's 487 ends the call (its transaction ACKs it).
            self.send(now, cancel, Owner::Call(key.to_string()));
        } else if let Some(bye) = call.bye() {
            self.calls.remove(key);
            self.send(now, bye, Owner::Farewell);
        } else {
            self.calls.remove(key);
        }
    }

    /// Puts the far end of call `key` on hold (re-INVITE sendonly) or takes
    /// it off; the outcome comes as [`DialogEvent::LocalHold`].
    pub fn hold(&mut self, now: Instant, key: &str, hold: bool) {
        let request = self.calls.get_mut(key).and_then(|c| c.reinvite(hold));
        match request {
            Some(request) => self.send(now, request, Owner::Call(key.to_string())),
            None => self.events.push_back(UaEvent::Call {
                key: key.to_string(),
                event: DialogEvent::LocalHold(None),
            }),
        }
    }

    /// Sends `digits` to call `key`'s far end as SIP INFO, one request per digit.
    pub fn info_dtmf(&mut self, now: Instant, key: &str, digits: &str, duration_ms: u32) {
        for digit in digits.chars() {
            let request = self
                .calls
                .get_mut(key)
                .and_then(|c| c.info_dtmf(digit, duration_ms));
            if let Some(request) = request {
                self.send(now, request, Owner::Call(key.to_string()));
            }
        }
    }

    /// 180 Ringing to an incoming call.
    pub fn ring(&mut self, now: Instant, key: &str) {
        if let Some(call) = self.calls.get(key) {
            let response = call.ringing();
            self.respond_invite(now, key, response);
        }
    }

    /// Answers an incoming call with our SDP.
    pub fn accept(&mut self, now: Instant, key: &str, sdp: String) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let response = call.accept(sdp);
        let bytes = response.to_string().into_bytes();
        self.respond_invite(now, key, response);
        // Over TCP the transport itself delivers the 2xx.
        if let Some(to) = self
            .invite_source(key)
            .filter(|_| !self.cfg.identity.reliable())
        {
            let t1 = self.cfg.timers.t1;
            self.unacked.insert(
                key.to_string(),
                UnackedAnswer {
                    to,
                    bytes,
                    next_send: now + t1,
                    interval: t1,
                    give_up_at: now + 64 * t1,
                },
            );
        }
    }

    /// Refuses an incoming call with `code` (its transaction takes the ACK).
    pub fn refuse(&mut self, now: Instant, key: &str, code: u16) {
        let Some(mut call) = self.calls.remove(key) else {
            return;
        };
        let response = call.refuse(code);
        self.calls.insert(key.to_string(), call);
        self.respond_invite(now, key, response);
        self.calls.remove(key);
    }

    fn invite_source(&self, key: &str) -> Option<SocketAddr> {
        let call = self.calls.get(key)?;
        let via = call.invite().via_header().ok()?.typed().ok()?;
        let host = via.uri.host_with_port.to_string();
        // rport/received on the Via say where the request really came from.
        let received = via.params.iter().find_map(|p| match p {
            rsip::Param::Received(r) => Some(r.value().to_string()),
            _ => None,
        });
        let rport = via.params.iter().find_map(|p| match p {
            rsip::Param::Other(k, Some(v)) if k.value().eq_ignore_ascii_case("rport") => {
                v.value().parse::<u16>().ok()
            }
            _ => None,
        });
        let base: SocketAddr = host
            .parse()
            .ok()
            .or_else(|| format!("{host}:5060").parse().ok())?;
        let ip = received.and_then(|r| r.parse().ok()).unwrap_or(base.ip());
        Some(SocketAddr::new(ip, rport.unwrap_or(base.port())))
    }

    fn respond_invite(&mut self, now: Instant, key: &str, response: rsip::Response) {
        let Some(branch) = self.calls.get(key).and_then(|c| c.invite_branch()) else {
            return;
        };
        let out = self
            .endpoint
            .send_response(now, &branch, "INVITE", response);
        self.transmit.extend(out);
    }

    /// Calls with a dialog in progress.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if data.starts_with(b"SIP/2.0") {
            match parse_datagram(data) {
                Ok(rsip::SipMessage::Response(response)) => self.handle_response(now, response),
                _ => self.malformed_responses += 1,
            }
            self.counters.malformed_received =
                self.endpoint.counters.malformed + self.malformed_responses;
            return;
        }
        let calls = &mut self.calls;
        let events = &mut self.events;
        let unacked = &mut self.unacked;
        let identity = self.cfg.identity.clone();
        let random = &mut self.random;
        let mut cancelled = Vec::new();
        let mut received = None;
        let out = self
            .endpoint
            .handle_datagram_with(now, from, data, &mut |request| {
                received = Some(request.method.to_string());
                if let Some((key, call)) = calls.iter_mut().find(|(_, c)| c.matches(request)) {
                    if request.method == rsip::Method::Ack {
                        unacked.remove(key);
                        return None;
                    }
                    let (response, event) = call.on_request(request);
                    if let Some(event) = event {
                        events.push_back(UaEvent::Call {
                            key: key.clone(),
                            event,
                        });
                    }
                    return Some(response);
                }
                match request.method {
                    rsip::Method::Cancel => {
                        let branch = branch_of(request);
                        let found = calls.iter().find(|(_, c)| {
                            c.is_incoming()
                                && c.state() == super::dialog::DialogState::Calling
                                && c.invite_branch() == branch
                        });
                        Some(match found {
                            Some((key, _)) => {
                                cancelled.push(key.clone());
                                super::transaction::response_to(request, 200)
                            }
                            None => super::transaction::response_to(request, 481),
                        })
                    }
                    rsip::Method::Invite if !has_to_tag(request) => {
                        let call = Dialog::incoming(request, &identity, random.fork())?;
                        let key = random.hex(12);
                        let (from, to) = call.parties();
                        let user = super::message::uri_user(&request.uri).unwrap_or_default();
                        events.push_back(UaEvent::Incoming {
                            key: key.clone(),
                            user,
                            from,
                            to,
                            sdp: call.remote_offer(),
                        });
                        calls.insert(key, call);
                        // 100 keeps the transaction open for our answer.
                        Some(super::transaction::response_to(request, 100))
                    }
                    // A request inside a dialog we do not know (RFC 3261 §12.2.2).
                    _ if has_to_tag(request) && request.method != rsip::Method::Ack => {
                        Some(super::transaction::response_to(request, 481))
                    }
                    _ => None,
                }
            });
        self.transmit.extend(out);
        self.counters.malformed_received =
            self.endpoint.counters.malformed + self.malformed_responses;
        self.counters.retransmissions_absorbed = self.endpoint.counters.retransmissions_absorbed;
        if let Some(method) = received {
            self.count(MessageDirection::In, &method, 0);
        }
        for key in cancelled {
            self.refuse(now, &key, 487);
            self.events.push_back(UaEvent::Call {
                key,
                event: DialogEvent::Failed { status: Some(487) },
            });
        }
        self.calls
            .retain(|_, c| c.state() != super::dialog::DialogState::Terminated);
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
            tx.handle_response(now, response);
            self.drain_client(now, &key);
            return;
        }
        // A 2xx retransmitted after its transaction ended: ACK it again.
        if method == "INVITE" {
            let call_id = response.call_id_header().map(|c| c.to_string()).ok();
            let mut ack = None;
            for call in self.calls.values_mut() {
                if call_id
                    .as_deref()
                    .is_some_and(|id| id.contains(call.call_id()))
                {
                    ack = call.on_invite_response(&response).0;
                }
            }
            if let (Some(ack), Some(server)) = (ack, self.cfg.server) {
                self.transmit.push_back((server, ack));
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let out = self.endpoint.handle_timeout(now);
        self.transmit.extend(out);
        let t2 = self.cfg.timers.t2;
        let transmit = &mut self.transmit;
        self.unacked.retain(|_, answer| {
            if now >= answer.give_up_at {
                return false;
            }
            if now >= answer.next_send {
                transmit.push_back((answer.to, answer.bytes.clone()));
                answer.interval = (answer.interval * 2).min(t2);
                answer.next_send = now + answer.interval;
            }
            true
        });
        let due: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, (tx, _))| tx.poll_timeout().is_some_and(|t| now >= t))
            .map(|(b, _)| b.clone())
            .collect();
        for branch in due {
            if let Some((tx, _)) = self.clients.get_mut(&branch) {
                tx.handle_timeout(now);
            }
            self.drain_client(now, &branch);
        }
        let refreshes: Vec<(String, rsip::Request)> = self
            .registrations
            .iter_mut()
            .filter_map(|(id, r)| r.handle_timeout(now).map(|req| (id.clone(), req)))
            .collect();
        for (id, request) in refreshes {
            self.send(now, request, Owner::Registration(id));
        }
        if let (Some(at), Some(interval)) = (self.next_keepalive, self.cfg.keepalive) {
            if now >= at {
                self.next_keepalive = Some(now + interval);
                let ping = self.options_request();
                self.send(now, ping, Owner::Keepalive);
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let clients = self
            .clients
            .values()
            .filter_map(|(tx, _)| tx.poll_timeout());
        let regs = self.registrations.values().filter_map(|r| r.poll_timeout());
        let unacked = self.unacked.values().map(|answer| answer.next_send);
        clients
            .chain(regs)
            .chain(unacked)
            .chain(self.endpoint.poll_timeout())
            .chain(self.next_keepalive)
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmit.pop_front()
    }

    /// The next request that must go to the server over a TCP connection:
    /// over UDP, a request larger than 1300 bytes goes over TCP instead
    /// (RFC 3261 §18.1.1), its Via saying so.
    pub fn poll_transmit_stream(&mut self) -> Option<Datagram> {
        self.transmit_stream.pop_front()
    }

    /// The TCP connection for large requests could not be made or dropped
    /// before their answers: they go again over UDP (§18.1.1 allows it),
    /// each with a fresh UDP transaction.
    pub fn stream_failed(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.over_stream) {
            let Some((tx, owner)) = self.clients.remove(&key) else {
                continue;
            };
            let request = with_via_transport(tx.request().clone(), "UDP");
            let tx = ClientTransaction::new(request, false, self.cfg.timers, now);
            self.clients.insert(key.clone(), (tx, owner));
            self.drain_client(now, &key);
        }
    }

    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, now: Instant, request: rsip::Request, owner: Owner) {
        let (Some(branch), Some(_)) = (branch_of(&request), self.cfg.server) else {
            // Nowhere to send it: as if it went unanswered.
            match owner {
                Owner::Registration(id) => self.registration_final(now, &id, None),
                Owner::Call(key) => self.call_final(now, &key, &request.method, None),
                Owner::Keepalive | Owner::Farewell => {}
            }
            return;
        };
        self.counters.requests_sent += 1;
        self.count(MessageDirection::Out, &request.method.to_string(), 0);
        let key = format!("{branch} {}", request.method);
        let too_large = !self.cfg.identity.reliable()
            && request.to_string().len() > UDP_REQUEST_LIMIT
            && request.method != rsip::Method::Ack;
        let request = if too_large {
            self.over_stream.insert(key.clone());
            with_via_transport(request, "TCP")
        } else {
            request
        };
        let reliable = self.cfg.identity.reliable() || too_large;
        let tx = ClientTransaction::new(request, reliable, self.cfg.timers, now);
        self.clients.insert(key.clone(), (tx, owner));
        self.drain_client(now, &key);
    }

    fn drain_client(&mut self, now: Instant, branch: &str) {
        let Some(server) = self.cfg.server else {
            return;
        };
        let mut finals = Vec::new();
        let mut done = false;
        let mut method = rsip::Method::Options;
        if let Some((tx, owner)) = self.clients.get_mut(branch) {
            method = tx.request().method;
            let queue = if self.over_stream.contains(branch) {
                &mut self.transmit_stream
            } else {
                &mut self.transmit
            };
            while let Some(output) = tx.poll_output() {
                match output {
                    Output::Transmit(bytes) => queue.push_back((server, bytes)),
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
            self.over_stream.remove(branch);
            self.clients.remove(branch).map(|(_, o)| o)
        } else if finals.is_empty() {
            None
        } else {
            self.clients.get(branch).map(|(_, o)| o.clone())
        };
        let Some(owner) = owner else {
            return;
        };
        for response in finals {
            match &owner {
                Owner::Keepalive => self.set_reachable(response.is_some()),
                Owner::Farewell => {}
                Owner::Registration(id) => self.registration_final(now, id, response),
                Owner::Call(key) => self.call_final(now, key, &method, response),
            }
        }
    }

    /// A response (or none in time) to a call's INVITE or CANCEL.
    fn call_final(
        &mut self,
        now: Instant,
        key: &str,
        method: &rsip::Method,
        response: Option<rsip::Response>,
    ) {
        if *method != rsip::Method::Invite {
            // CANCEL's own answer says nothing; the INVITE's 487 does.
            return;
        }
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        // A digest challenge we can answer: the INVITE again, with it.
        if let Some(again) = response.as_ref().and_then(|r| call.answer_challenge(r)) {
            self.set_reachable(true);
            self.send(now, again, Owner::Call(key.to_string()));
            return;
        }
        let reinvite = match &response {
            Some(r) => call.is_reinvite_response(r),
            None => call.state() == super::dialog::DialogState::Confirmed,
        };
        if reinvite {
            if response
                .as_ref()
                .is_some_and(|r| r.status_code.code() < 200)
            {
                return;
            }
            let (ack, event) = call.on_reinvite_response(response.as_ref());
            if let (Some(ack), Some(server)) = (ack, self.cfg.server) {
                self.transmit.push_back((server, ack));
            }
            if let Some(event) = event {
                self.events.push_back(UaEvent::Call {
                    key: key.to_string(),
                    event,
                });
            }
            return;
        }
        let (ack, event) = match &response {
            Some(r) => call.on_invite_response(r),
            None => (None, call.on_invite_timeout()),
        };
        if let (Some(ack), Some(server)) = (ack, self.cfg.server) {
            self.transmit.push_back((server, ack));
        }
        if response.is_some() {
            self.set_reachable(true);
        }
        if let Some(event) = event {
            if matches!(event, DialogEvent::Failed { .. }) {
                self.calls.remove(key);
            }
            self.events.push_back(UaEvent::Call {
                key: key.to_string(),
                event,
            });
        }
    }

    fn registration_final(&mut self, now: Instant, id: &str, response: Option<rsip::Response>) {
        if response.is_some() {
            self.set_reachable(true);
        }
        let Some(reg) = self.registrations.get_mut(id) else {
            return;
        };
        let (next, event) = reg.handle_final(now, response.as_ref());
        let done = reg.is_done();
        if let Some(request) = next {
            self.send(now, request, Owner::Registration(id.to_string()));
        }
        if let Some(event) = event {
            if matches!(event, RegistrationEvent::Failed { .. }) {
                self.counters.registrations_failed += 1;
            }
            self.events.push_back(UaEvent::Registration {
                id: id.to_string(),
                event,
            });
        }
        if done {
            self.registrations.remove(id);
        }
    }

    fn set_reachable(&mut self, reachable: bool) {
        if self.reachable != Some(reachable) {
            self.reachable = Some(reachable);
            self.events.push_back(UaEvent::ServerReachable(reachable));
        }
    }

    fn options_request(&mut self) -> rsip::Request {
        let Identity { domain, local, .. } = &self.cfg.identity;
        let via = self.cfg.identity.via_transport();
        let via_params = self.cfg.identity.via_params();
        let text = format!(
            "OPTIONS sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {local};branch=z9hG4bK{branch}{via_params}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:gateway@{domain}>;tag={tag}\r\n\
             To: <sip:{domain}>\r\n\
             Call-ID: {call_id}@webrtc-sip-gateway\r\n\
             CSeq: 1 OPTIONS\r\n\
             Accept: application/sdp\r\n\
             User-Agent: webrtc-sip-gateway/{version}\r\n\
             Content-Length: 0\r\n\r\n",
            branch = self.random.hex(12),
            tag = self.random.hex(12),
            call_id = self.random.hex(12),
            version = env!("CARGO_PKG_VERSION"),
        );
        own_request(&text, rsip::Method::Options)
    }
}

/// Whether a request carries a To tag (it belongs to a dialog).
fn has_to_tag(request: &rsip::Request) -> bool {
    request
        .headers
        .iter()
        .any(|h| matches!(h, rsip::Header::To(to) if to.value().contains("tag=")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(keepalive: Option<Duration>) -> UaConfig {
        UaConfig {
            server: Some("192.0.2.1:5060".parse().unwrap()),
            identity: Identity {
                domain: "pbx.example".into(),
                local: "192.0.2.10:5070".parse().unwrap(),
                transport: crate::config::SipTransport::Udp,
            },
            timers: TimerConfig::default(),
            register_expires: 300,
            keepalive,
        }
    }

    fn server() -> SocketAddr {
        "192.0.2.1:5060".parse().unwrap()
    }

    /// The server's answer to the datagram we sent.
    fn answer(sent: &[u8], status: &str, extra: &str) -> Vec<u8> {
        let text = std::str::from_utf8(sent).unwrap();
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in text.split("\r\n") {
            let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
            if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str(extra);
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }

    /// Everything a UA sends for a registration with a digest challenge,
    /// an INVITE and the keepalive, from one seed.
    fn wire_bytes(seed: u64) -> Vec<Vec<u8>> {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(Some(Duration::from_secs(30))), t0, Random::seeded(seed));
        ua.register(t0, "s1", "1001", Some("pw".into()));
        ua.invite(t0, "c1", "1001", "5000", "v=0\r\n".into());
        let mut sent = Vec::new();
        while let Some((_, bytes)) = ua.poll_transmit() {
            sent.push(bytes);
        }
        let challenge = answer(
            &sent[0],
            "401 Unauthorized",
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\"\r\n",
        );
        ua.handle_datagram(t0, server(), &challenge);
        ua.handle_timeout(t0 + Duration::from_secs(30));
        while let Some((_, bytes)) = ua.poll_transmit() {
            sent.push(bytes);
        }
        sent
    }

    #[test]
    fn one_seed_gives_the_same_bytes_on_the_wire() {
        let first = wire_bytes(42);
        assert!(first.len() >= 4, "REGISTER, INVITE, the answer, OPTIONS");
        assert!(
            String::from_utf8_lossy(&first.concat()).contains("cnonce="),
            "the cnonce is drawn too"
        );
        let again = wire_bytes(42);
        let differs = |a: &[Vec<u8>], b: &[Vec<u8>]| {
            (a.len() != b.len())
                .then(|| format!("{} messages, then {}", a.len(), b.len()))
                .or_else(|| {
                    a.iter().zip(b).position(|(x, y)| x != y).map(|i| {
                        format!(
                            "{}\n---\n{}",
                            String::from_utf8_lossy(&a[i]),
                            String::from_utf8_lossy(&b[i])
                        )
                    })
                })
        };
        assert_eq!(
            differs(&first, &again),
            None,
            "tags, branches, Call-IDs, cnonce"
        );
        assert!(differs(&first, &wire_bytes(43)).is_some());
    }

    #[test]
    fn registration_through_transactions_with_a_lost_request() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
        ua.register(t0, "s1", "1001", Some("pw".into()));
        let (to, first) = ua.poll_transmit().unwrap();
        assert_eq!(Some(to), ua.server());
        assert!(first.starts_with(b"REGISTER sip:pbx.example SIP/2.0"));
        // Lost: timer E retransmits after T1.
        assert_eq!(ua.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        ua.handle_timeout(t0 + Duration::from_millis(500));
        let (_, again) = ua.poll_transmit().unwrap();
        assert_eq!(again, first);
        let t1 = t0 + Duration::from_millis(600);
        ua.handle_datagram(
            t1,
            server(),
            &answer(
                &first,
                "401 Unauthorized",
                "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n",
            ),
        );
        let (_, second) = ua.poll_transmit().unwrap();
        assert!(String::from_utf8_lossy(&second).contains("Authorization: Digest"));
        ua.handle_datagram(t1, server(), &answer(&second, "200 OK", "Expires: 300\r\n"));
        assert_eq!(ua.poll_event(), Some(UaEvent::ServerReachable(true)));
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::Registration {
                id: "s1".into(),
                event: RegistrationEvent::Registered { expires: 300 }
            })
        );
        assert_eq!(ua.registered_count(), 1);
        ua.unregister(t1, "s1");
        let (_, bye) = ua.poll_transmit().unwrap();
        assert!(String::from_utf8_lossy(&bye).contains("Expires: 0"));
        ua.handle_datagram(t1, server(), &answer(&bye, "200 OK", ""));
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::Registration {
                id: "s1".into(),
                event: RegistrationEvent::Unregistered
            })
        );
        assert_eq!(ua.registered_count(), 0);
    }

    #[test]
    fn an_unanswered_register_fails_after_timer_f() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
        ua.register(t0, "s1", "1001", None);
        let mut now = t0;
        let mut sent = 0;
        while let Some(at) = ua.poll_timeout() {
            now = at;
            ua.handle_timeout(now);
            while ua.poll_transmit().is_some() {
                sent += 1;
            }
        }
        assert_eq!(now, t0 + Duration::from_secs(32), "timer F = 64·T1");
        assert!(sent >= 9, "retransmitted up to T2 spacing: {sent}");
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::Registration {
                id: "s1".into(),
                event: RegistrationEvent::Failed { status: None }
            })
        );
        assert_eq!(ua.counters.transaction_timeouts, 1);
    }

    #[test]
    fn without_a_server_registration_fails_at_once() {
        let t0 = Instant::now();
        let mut c = cfg(None);
        c.server = None;
        let mut ua = UserAgent::new(c, t0, Random::seeded(1));
        ua.register(t0, "s1", "1001", None);
        assert_eq!(ua.poll_transmit(), None);
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::Registration {
                id: "s1".into(),
                event: RegistrationEvent::Failed { status: None }
            })
        );
    }

    #[test]
    fn keepalive_reports_reachability_changes() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(Some(Duration::from_secs(30))), t0, Random::seeded(1));
        ua.handle_timeout(t0);
        let (_, ping) = ua.poll_transmit().unwrap();
        assert!(ping.starts_with(b"OPTIONS sip:pbx.example"));
        ua.handle_datagram(t0, server(), &answer(&ping, "404 Not Found", ""));
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::ServerReachable(true)),
            "any answer counts"
        );
        // The next ping goes unanswered.
        let t1 = t0 + Duration::from_secs(30);
        ua.handle_timeout(t1);
        let mut now = t1;
        while let Some(at) = ua
            .poll_timeout()
            .filter(|&at| at < t1 + Duration::from_secs(33))
        {
            now = at;
            ua.handle_timeout(now);
        }
        assert_eq!(ua.poll_event(), Some(UaEvent::ServerReachable(false)));
        assert!(now >= t1 + Duration::from_secs(32));
    }

    fn incoming_invite(branch: &str) -> Vec<u8> {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        format!(
            "INVITE sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             From: \"Caller\" <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 INVITE\r\nContact: <sip:2000@192.0.2.1:5060>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    }

    fn sent(ua: &mut UserAgent) -> Vec<String> {
        std::iter::from_fn(|| ua.poll_transmit())
            .map(|(_, b)| String::from_utf8(b).unwrap())
            .collect()
    }

    #[test]
    fn an_incoming_call_rings_is_answered_and_its_200_repeats_until_the_ack() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
        ua.handle_datagram(t0, server(), &incoming_invite("z9hG4bKin1"));
        let out = sent(&mut ua);
        assert!(out[0].starts_with("SIP/2.0 100"), "{out:?}");
        let Some(UaEvent::Incoming {
            key,
            user,
            from,
            to,
            sdp,
        }) = ua.poll_event()
        else {
            panic!("an incoming call event");
        };
        assert_eq!(
            (user.as_str(), from.as_str(), to.as_str()),
            ("1001", "2000", "1001")
        );
        assert!(sdp.unwrap().contains("m=audio 4000"));
        ua.ring(t0, &key);
        let out = sent(&mut ua);
        assert!(
            out[0].starts_with("SIP/2.0 180") && out[0].contains(";tag="),
            "{out:?}"
        );
        // The INVITE again: the 180 again, no second call.
        ua.handle_datagram(t0, server(), &incoming_invite("z9hG4bKin1"));
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 180"));
        assert_eq!(ua.poll_event(), None);
        ua.accept(t0, &key, "v=0 answer\r\n".into());
        let ok = sent(&mut ua);
        assert!(
            ok[0].starts_with("SIP/2.0 200") && ok[0].ends_with("v=0 answer\r\n"),
            "{ok:?}"
        );
        let tag = ok[0]
            .lines()
            .find(|l| l.starts_with("To:"))
            .and_then(|l| l.split("tag=").nth(1))
            .unwrap()
            .to_string();
        // No ACK: the 200 goes again after T1, then 2·T1.
        ua.handle_timeout(t0 + Duration::from_millis(500));
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
        ua.handle_timeout(t0 + Duration::from_millis(1400));
        assert_eq!(sent(&mut ua).len(), 0);
        ua.handle_timeout(t0 + Duration::from_millis(1500));
        assert_eq!(sent(&mut ua).len(), 1);
        let ack = format!(
            "ACK sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        ua.handle_datagram(t0 + Duration::from_millis(1600), server(), ack.as_bytes());
        ua.handle_timeout(t0 + Duration::from_secs(10));
        assert!(
            sent(&mut ua).iter().all(|m| !m.starts_with("SIP/2.0 200")),
            "the ACK stopped it"
        );
        // The caller hangs up.
        let bye = ack
            .replace("ACK sip", "BYE sip")
            .replace("CSeq: 7 ACK", "CSeq: 8 BYE")
            .replace("z9hG4bKack", "z9hG4bKbye");
        ua.handle_datagram(t0 + Duration::from_secs(11), server(), bye.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::Call {
                key,
                event: DialogEvent::RemoteBye
            })
        );
        assert_eq!(ua.call_count(), 0);
    }

    /// A 407 to our INVITE is answered once with Proxy-Authorization (next
    /// CSeq, new branch); a second refusal of the same kind ends the call.
    #[test]
    fn a_challenged_invite_is_sent_again_with_our_answer() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
        ua.invite(t0, "c1", "1001", "2000", "v=0\r\n".into());
        ua.set_call_password("c1", "secret".into());
        let first = sent(&mut ua).remove(0);
        let challenge = "Proxy-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", qop=\"auth\"\r\n";
        ua.handle_datagram(
            t0,
            server(),
            &answer(
                first.as_bytes(),
                "407 Proxy Authentication Required",
                challenge,
            ),
        );
        let out = sent(&mut ua);
        let again = out
            .iter()
            .find(|m| m.starts_with("INVITE "))
            .unwrap_or_else(|| panic!("{out:?}"));
        assert!(
            out.iter().any(|m| m.starts_with("ACK ")),
            "the 407 is ACKed: {out:?}"
        );
        assert!(again.contains("CSeq: 2 INVITE"), "{again}");
        assert!(
            again.contains("Proxy-Authorization: Digest username=\"1001\", realm=\"pbx\""),
            "{again}"
        );
        assert!(
            std::iter::from_fn(|| ua.poll_event())
                .all(|e| matches!(e, UaEvent::ServerReachable(_))),
            "the call goes on"
        );
        // A 401 from another hop is answered too, in Authorization.
        let www = challenge.replace("Proxy-Authenticate", "WWW-Authenticate");
        ua.handle_datagram(
            t0,
            server(),
            &answer(again.as_bytes(), "401 Unauthorized", &www),
        );
        let third = sent(&mut ua)
            .into_iter()
            .find(|m| m.starts_with("INVITE "))
            .expect("the INVITE again");
        assert!(third.contains("CSeq: 3 INVITE") && third.contains("\r\nAuthorization: Digest"));
        let again = third;
        // Refused again: the call ends with the 407.
        ua.handle_datagram(
            t0,
            server(),
            &answer(
                again.as_bytes(),
                "407 Proxy Authentication Required",
                challenge,
            ),
        );
        sent(&mut ua);
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::Call {
                key: "c1".into(),
                event: DialogEvent::Failed { status: Some(407) }
            })
        );
    }

    /// RFC 3261 §18.1.1: over UDP an INVITE above 1300 bytes goes over TCP
    /// (its Via says TCP, no retransmissions); when TCP cannot be had it
    /// goes again over UDP with retransmissions. Small requests stay on UDP.
    #[test]
    fn a_large_request_goes_over_tcp_and_back_to_udp_if_it_must() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
        ua.invite(t0, "small", "1001", "2000", "v=0\r\n".into());
        let (_, small) = ua.poll_transmit().unwrap();
        assert!(String::from_utf8_lossy(&small).contains("Via: SIP/2.0/UDP "));
        assert_eq!(ua.poll_transmit_stream(), None);

        let sdp = format!("v=0\r\n{}", "a=x-filler:0123456789abcdef\r\n".repeat(60));
        ua.invite(t0, "large", "1001", "2000", sdp);
        assert_eq!(ua.poll_transmit(), None, "nothing large over UDP");
        let (to, large) = ua.poll_transmit_stream().unwrap();
        assert_eq!(Some(to), ua.server());
        assert!(large.len() > UDP_REQUEST_LIMIT);
        let text = String::from_utf8_lossy(&large).to_string();
        assert!(text.contains("Via: SIP/2.0/TCP "), "{text}");
        // Reliable: no timer A retransmission.
        ua.handle_timeout(t0 + Duration::from_millis(600));
        assert_eq!(ua.poll_transmit_stream(), None);
        let again: Vec<_> = std::iter::from_fn(|| ua.poll_transmit())
            .map(|(_, b)| String::from_utf8_lossy(&b).to_string())
            .collect();
        assert!(again.iter().all(|m| !m.contains("x-filler")), "{again:?}");
        // No TCP to be had: over UDP, same branch, retransmitted.
        let t1 = t0 + Duration::from_secs(1);
        ua.stream_failed(t1);
        let (_, udp) = ua.poll_transmit().unwrap();
        let udp = String::from_utf8_lossy(&udp).to_string();
        assert!(udp.contains("Via: SIP/2.0/UDP ") && udp.contains("x-filler"));
        let branch = |m: &str| m.split("branch=").nth(1).map(|b| b[..20].to_string());
        assert_eq!(branch(&udp), branch(&text));
        ua.handle_timeout(t1 + Duration::from_millis(500));
        let (_, resent) = ua.poll_transmit().unwrap();
        assert_eq!(String::from_utf8_lossy(&resent), udp);
    }

    /// Our BYE's answer, or its going unanswered, is about the call, not
    /// about the server: reachability stays as the keepalive left it.
    #[test]
    fn our_bye_says_nothing_about_the_server() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
        ua.handle_datagram(t0, server(), &incoming_invite("z9hG4bKin9"));
        sent(&mut ua);
        let Some(UaEvent::Incoming { key, .. }) = ua.poll_event() else {
            panic!("an incoming call event");
        };
        ua.accept(t0, &key, "v=0 answer\r\n".into());
        let ok = sent(&mut ua);
        let tag = ok[0]
            .lines()
            .find(|l| l.starts_with("To:"))
            .and_then(|l| l.split("tag=").nth(1))
            .unwrap()
            .to_string();
        let ack = format!(
            "ACK sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack9\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        ua.handle_datagram(t0, server(), ack.as_bytes());
        ua.hangup(t0, &key);
        let out = sent(&mut ua);
        assert!(out.iter().any(|m| m.starts_with("BYE ")), "{out:?}");
        // Nobody answers the BYE: timer F ends its transaction quietly.
        let mut now = t0;
        while let Some(at) = ua.poll_timeout() {
            now = at;
            ua.handle_timeout(now);
            sent(&mut ua);
        }
        assert!(now >= t0 + Duration::from_secs(32));
        let events: Vec<_> = std::iter::from_fn(|| ua.poll_event()).collect();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, UaEvent::ServerReachable(_))),
            "{events:?}"
        );
        assert_eq!(ua.call_count(), 0);
    }

    #[test]
    fn a_cancelled_incoming_call_gets_487_and_unknown_dialogs_481() {
        let t0 = Instant::now();
        let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
        ua.handle_datagram(t0, server(), &incoming_invite("z9hG4bKin2"));
        sent(&mut ua);
        let Some(UaEvent::Incoming { key, .. }) = ua.poll_event() else {
            panic!("an incoming call event");
        };
        let cancel = "CANCEL sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKin2\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 CANCEL\r\nContent-Length: 0\r\n\r\n";
        ua.handle_datagram(t0, server(), cancel.as_bytes());
        let out = sent(&mut ua);
        assert!(
            out[0].starts_with("SIP/2.0 200") && out[0].contains("CSeq: 7 CANCEL"),
            "{out:?}"
        );
        assert!(
            out[1].starts_with("SIP/2.0 487") && out[1].contains("CSeq: 7 INVITE"),
            "{out:?}"
        );
        assert_eq!(
            ua.poll_event(),
            Some(UaEvent::Call {
                key,
                event: DialogEvent::Failed { status: Some(487) }
            })
        );
        let stray = cancel
            .replace("CANCEL sip", "BYE sip")
            .replace(
                "To: <sip:1001@pbx.example>",
                "To: <sip:1001@pbx.example>;tag=nope",
            )
            .replace("CSeq: 7 CANCEL", "CSeq: 9 BYE")
            .replace("z9hG4bKin2", "z9hG4bKstray");
        ua.handle_datagram(t0, server(), stray.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 481"));
    }
}
