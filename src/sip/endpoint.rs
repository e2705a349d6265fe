//! The gateway's SIP endpoint core, sans-IO: datagrams in (with their source
//! and the time), datagrams out. It parses (answering malformed requests with
//! a 400 that names the problem), matches requests to server transactions
//! by Via branch (absorbing retransmissions), applies `rport` (RFC 3581), and
//! answers what the gateway serves on its own: OPTIONS (200 with Allow and
//! Accept). Every other request goes first to the user agent (dialogs,
//! incoming INVITEs, CANCEL); one it does not take is answered 501.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rsip::prelude::*;

use super::message::{branch_of, parse_datagram, SipParseError};
use super::timers::TimerTable;
use super::transaction::{response_to, Output, ServerInput, ServerTransaction, TimerConfig};
use crate::random::Random;

pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, NOTIFY, REFER";
/// The option tags we support (RFC 3262 reliable provisionals, RFC 4028
/// session timers).
pub const SUPPORTED: &str = "100rel, timer, replaces";
pub const ACCEPT: &str = "application/sdp, application/dtmf-relay";

/// Counters the metrics exporter reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointCounters {
    pub requests: u64,
    pub malformed: u64,
    pub retransmissions_absorbed: u64,
    /// New requests dropped unanswered: their source, or everyone, held
    /// as many server transactions as allowed.
    pub transactions_refused: u64,
}

/// How many server transactions may be open at once, from one source
/// address and in all (each lives until its timer J or H, up to 64·T1
/// after its final answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionLimits {
    pub per_source: usize,
    pub total: usize,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        TransactionLimits {
            per_source: 5_000,
            total: 20_000,
        }
    }
}

/// The Retry-After of our 503 to OPTIONS while we take no new calls.
const RETRY_AFTER_S: u32 = 5;

pub struct Endpoint {
    timers: TimerConfig,
    /// Requests come over a stream (TCP): no response retransmissions.
    reliable: bool,
    /// Server transactions by (Via branch, method; ACK is matched to INVITE).
    server: BTreeMap<ServerKey, (SocketAddr, ServerTransaction)>,
    /// When each server transaction next wakes.
    wakeups: TimerTable<ServerKey>,
    /// Open server transactions by source address.
    per_source: HashMap<IpAddr, usize>,
    limits: TransactionLimits,
    transmit: VecDeque<Datagram>,
    pub counters: EndpointCounters,
    /// Our To tags.
    random: Random,
    /// The node takes no new calls (draining or overloaded): an OPTIONS
    /// is answered 503, so a dispatcher in front stops sending INVITEs.
    refusing: bool,
}

/// A server transaction's name: the request's Via branch and method.
type ServerKey = (String, String);

/// A datagram to send.
pub type Datagram = (SocketAddr, Vec<u8>);

/// What a received datagram is for.
#[derive(Debug)]
pub enum Received {
    /// Nothing more to do: a keep-alive, a retransmission its transaction
    /// answered, a malformed message (answered 400 when it can be).
    Handled,
    /// A response, for the client transaction its Via branch names.
    Response(rsip::Response),
    /// A new request, or an ACK outside any transaction: the user agent
    /// answers it with [`Endpoint::answer`] (an ACK needs no answer).
    Request(rsip::Request),
}

impl Endpoint {
    pub fn new(timers: TimerConfig, random: Random) -> Self {
        Self::with_reliability(timers, false, random)
    }

    pub fn with_reliability(timers: TimerConfig, reliable: bool, random: Random) -> Self {
        Endpoint {
            timers,
            reliable,
            server: BTreeMap::new(),
            wakeups: TimerTable::default(),
            per_source: HashMap::new(),
            limits: TransactionLimits::default(),
            transmit: VecDeque::new(),
            counters: EndpointCounters::default(),
            random,
            refusing: false,
        }
    }

    /// Whether the node takes new calls (see [`Endpoint::respond`]).
    pub fn set_accepting(&mut self, accepting: bool) {
        self.refusing = !accepting;
    }

    /// The same endpoint with `limits` on its server transactions.
    pub fn with_limits(mut self, limits: TransactionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The endpoint on its own: every new request gets the endpoint's own
    /// answer (OPTIONS 200, else 501). Returns what to send.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Vec<Datagram> {
        if let Received::Request(request) = self.receive(now, from, data) {
            self.answer(now, from, &request, None);
        }
        self.transmit.drain(..).collect()
    }

    /// Reads a datagram from `from`.
    pub fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Received {
        // Keep-alive CRLFs (RFC 5626) are not messages.
        if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
            return Received::Handled;
        }
        let message = match parse_datagram(data) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed += 1;
                self.transmit.extend(self.bad_request(from, data, &e));
                return Received::Handled;
            }
        };
        let request = match message {
            rsip::SipMessage::Request(request) => request,
            rsip::SipMessage::Response(response) => return Received::Response(response),
        };
        self.counters.requests += 1;
        let Some(key) = server_key(&request) else {
            return Received::Handled;
        };
        if let Some((_, tx)) = self.server.get_mut(&key) {
            self.counters.retransmissions_absorbed +=
                u64::from(request.method != rsip::Method::Ack);
            tx.handle_input(now, ServerInput::Request(&request));
            self.collect(&key);
            return Received::Handled;
        }
        // A new transaction: only within the limits (a flood of requests
        // with fresh branches cannot grow memory without bound). An ACK
        // opens none.
        if request.method != rsip::Method::Ack {
            let of_source = self.per_source.get(&from.ip()).copied().unwrap_or(0);
            if of_source >= self.limits.per_source || self.server.len() >= self.limits.total {
                self.counters.transactions_refused += 1;
                return Received::Handled;
            }
        }
        Received::Request(request)
    }

    /// Answers a new request from `from` (not an ACK) in a server
    /// transaction of its own: with `response`, or the endpoint's own
    /// answer when None.
    pub fn answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: &rsip::Request,
        response: Option<rsip::Response>,
    ) {
        let Some(key) = server_key(request) else {
            return;
        };
        if request.method == rsip::Method::Ack || self.server.contains_key(&key) {
            return;
        }
        let mut tx = ServerTransaction::new(request.clone(), self.reliable, self.timers);
        let response = match response {
            Some(mut response) => {
                apply_rport(&mut response, from);
                response
            }
            None => self.respond(request, from),
        };
        tx.handle_input(now, ServerInput::Respond(response));
        self.server.insert(key.clone(), (from, tx));
        *self.per_source.entry(from.ip()).or_default() += 1;
        self.collect(&key);
    }

    /// Sends `response` in the server transaction of the request with Via
    /// branch `branch` and `method` (a later response: 180 after 100, or the
    /// final answer to an INVITE). Nothing when that transaction is gone.
    pub fn send_response(
        &mut self,
        now: Instant,
        branch: &str,
        method: &str,
        response: rsip::Response,
    ) {
        let key = (branch.to_string(), method.to_string());
        let Some((from, tx)) = self.server.get_mut(&key) else {
            return;
        };
        let mut response = response;
        apply_rport(&mut response, *from);
        tx.handle_input(now, ServerInput::Respond(response));
        self.collect(&key);
    }

    /// Where the request of server transaction (`branch`, `method`) came
    /// from: the real source address, whatever its Via claims.
    pub fn source_of(&self, branch: &str, method: &str) -> Option<SocketAddr> {
        self.server
            .get(&(branch.to_string(), method.to_string()))
            .map(|(from, _)| *from)
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for key in self.wakeups.take_due(now) {
            if let Some((_, tx)) = self.server.get_mut(&key) {
                tx.handle_input(now, ServerInput::Timeout);
            }
            self.collect(&key);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wakeups.next()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmit.pop_front()
    }

    /// Queues a transaction's output; forgets it once terminated, else
    /// notes when it next wakes.
    fn collect(&mut self, key: &ServerKey) {
        let mut done = false;
        let mut next = None;
        if let Some((peer, tx)) = self.server.get_mut(key) {
            loop {
                match tx.poll_output() {
                    Output::Transmit(bytes) => self.transmit.push_back((*peer, bytes)),
                    Output::Terminated => done = true,
                    Output::Timeout(at) => {
                        next = at;
                        break;
                    }
                    _ => {}
                }
            }
        }
        if done {
            if let Some((peer, _)) = self.server.remove(key) {
                if let Some(n) = self.per_source.get_mut(&peer.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_source.remove(&peer.ip());
                    }
                }
            }
            next = None;
        }
        self.wakeups.set(key.clone(), next);
    }

    /// What the gateway answers by itself.
    fn respond(&mut self, request: &rsip::Request, from: SocketAddr) -> rsip::Response {
        let mut response = match request.method {
            rsip::Method::Options if self.refusing => {
                let mut r = response_to(request, 503);
                r.headers
                    .push(rsip::Header::RetryAfter(rsip::headers::RetryAfter::from(
                        RETRY_AFTER_S.to_string(),
                    )));
                r
            }
            rsip::Method::Options => {
                let mut r = response_to(request, 200);
                r.headers
                    .push(rsip::Header::Allow(rsip::headers::Allow::from(ALLOW)));
                r.headers
                    .push(rsip::Header::Supported(rsip::headers::Supported::from(
                        SUPPORTED,
                    )));
                r.headers
                    .push(rsip::Header::Accept(rsip::headers::Accept::from(ACCEPT)));
                r
            }
            _ => response_to(request, 501),
        };
        apply_rport(&mut response, from);
        add_to_tag(&mut response, self.random.u32());
        response
    }

    /// A 400 naming the problem, when the request is readable enough to answer.
    fn bad_request(
        &self,
        from: SocketAddr,
        data: &[u8],
        error: &SipParseError,
    ) -> Option<Datagram> {
        let text = std::str::from_utf8(data).ok()?;
        if text.starts_with("SIP/2.0") {
            return None; // never answer a response
        }
        let head = text.split("\r\n\r\n").next()?;
        let mut lines = vec![format!(
            "SIP/2.0 {} {}",
            error.status(),
            error.reason_phrase()
        )];
        for line in head.split("\r\n").skip(1) {
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"].contains(&name.as_str())
            {
                lines.push(line.to_string());
            }
        }
        if !lines
            .iter()
            .any(|l| l.to_ascii_lowercase().starts_with("via") || l.starts_with("v:"))
        {
            return None; // nowhere to send a response
        }
        lines.push("Content-Length: 0".into());
        lines.push(String::new());
        lines.push(String::new());
        Some((from, lines.join("\r\n").into_bytes()))
    }
}

/// A request's server transaction: its Via branch, and its method (an ACK
/// belongs to its INVITE's).
fn server_key(request: &rsip::Request) -> Option<ServerKey> {
    let branch = branch_of(request)?;
    let method = if request.method == rsip::Method::Ack {
        rsip::Method::Invite.to_string()
    } else {
        request.method.to_string()
    };
    Some((branch, method))
}

/// RFC 3581: a request with `rport` gets `received` and `rport=<port>` in the
/// top Via of the response (which goes back to the source address).
fn apply_rport(response: &mut rsip::Response, from: SocketAddr) {
    for h in response.headers.iter_mut() {
        if let rsip::Header::Via(via) = h {
            let value = via.value().to_string();
            let mut params: Vec<String> = value.split(';').map(str::to_string).collect();
            let has_rport = params
                .iter()
                .any(|p| p.trim() == "rport" || p.trim().starts_with("rport="));
            if has_rport {
                params.retain(|p| {
                    !p.trim().starts_with("rport") && !p.trim().starts_with("received=")
                });
                params.push(format!("received={}", from.ip()));
                params.push(format!("rport={}", from.port()));
                *via = rsip::headers::Via::from(params.join(";"));
            }
            break;
        }
    }
}

/// Our To tag (`tag`) on a final response to an out-of-dialog request.
fn add_to_tag(response: &mut rsip::Response, tag: u32) {
    if response.status_code.code() < 200 {
        return;
    }
    for h in response.headers.iter_mut() {
        if let rsip::Header::To(to) = h {
            if !to.value().contains("tag=") {
                *to = rsip::headers::To::from(format!("{};tag=gw{tag:08x}", to.value()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn options(branch: &str) -> Vec<u8> {
        [
            "OPTIONS sip:gw@127.0.0.1:5070 SIP/2.0".to_string(),
            format!("Via: SIP/2.0/UDP 10.0.0.9:5060;branch={branch};rport"),
            "Max-Forwards: 70".into(),
            "From: <sip:probe@example.com>;tag=p1".into(),
            "To: <sip:gw@127.0.0.1>".into(),
            "Call-ID: opt-1".into(),
            "CSeq: 1 OPTIONS".into(),
            "Content-Length: 0".into(),
            String::new(),
            String::new(),
        ]
        .join("\r\n")
        .into_bytes()
    }

    #[test]
    fn options_gets_200_with_allow_accept_and_rport() {
        let mut ep = Endpoint::new(TimerConfig::default(), Random::seeded(1));
        let from: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        let out = ep.handle_datagram(Instant::now(), from, &options("z9hG4bKo1"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, from, "responses go back to the source (rport)");
        let text = String::from_utf8(out[0].1.clone()).unwrap();
        assert!(text.starts_with("SIP/2.0 200"), "{text}");
        assert!(text.contains(&format!("Allow: {ALLOW}")), "{text}");
        assert!(text.contains("Accept: application/sdp"), "{text}");
        assert!(
            text.contains("received=198.51.100.4") && text.contains("rport=40000"),
            "{text}"
        );
        assert!(text.contains("tag=gw"), "{text}");
        // The same request again is a retransmission: the same answer, no new transaction.
        let again = ep.handle_datagram(Instant::now(), from, &options("z9hG4bKo1"));
        assert_eq!(again[0].1, out[0].1);
        assert_eq!(ep.counters.retransmissions_absorbed, 1);
    }

    #[test]
    fn a_node_taking_no_calls_answers_options_503_until_it_takes_them_again() {
        let mut ep = Endpoint::new(TimerConfig::default(), Random::seeded(1));
        let from: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        ep.set_accepting(false);
        let out = ep.handle_datagram(Instant::now(), from, &options("z9hG4bKd1"));
        let text = String::from_utf8(out[0].1.clone()).unwrap();
        assert!(text.starts_with("SIP/2.0 503"), "{text}");
        assert!(text.contains("Retry-After: 5"), "{text}");
        assert!(text.contains("tag=gw"), "{text}");
        ep.set_accepting(true);
        let out = ep.handle_datagram(Instant::now(), from, &options("z9hG4bKd2"));
        assert!(out[0].1.starts_with(b"SIP/2.0 200"));
    }

    #[test]
    fn server_transactions_are_bounded_per_source_and_in_all() {
        let limits = TransactionLimits {
            per_source: 3,
            total: 5,
        };
        let mut ep = Endpoint::new(TimerConfig::default(), Random::seeded(1)).with_limits(limits);
        let t0 = Instant::now();
        let a: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        let b: SocketAddr = "198.51.100.5:40000".parse().unwrap();
        let c: SocketAddr = "198.51.100.6:40000".parse().unwrap();
        let answered = |ep: &mut Endpoint, from, branch: &str| {
            !ep.handle_datagram(t0, from, &options(branch)).is_empty()
        };
        for i in 0..3 {
            assert!(answered(&mut ep, a, &format!("z9hG4bKa{i}")));
        }
        assert!(
            !answered(&mut ep, a, "z9hG4bKa3"),
            "a fourth from one source"
        );
        // A retransmission of an open one is still answered.
        assert!(answered(&mut ep, a, "z9hG4bKa0"));
        assert!(answered(&mut ep, b, "z9hG4bKb0"));
        assert!(answered(&mut ep, b, "z9hG4bKb1"));
        assert!(!answered(&mut ep, c, "z9hG4bKc0"), "the total is reached");
        assert_eq!(ep.counters.transactions_refused, 2);
        // Timer J ends them (64·T1 over UDP): room again.
        ep.handle_timeout(t0 + Duration::from_secs(40));
        assert!(
            ep.handle_datagram(t0 + Duration::from_secs(40), c, &options("z9hG4bKc1"))
                .len()
                == 1
        );
        assert!(
            !ep.per_source.contains_key(&a.ip()),
            "counts go back to nothing"
        );
    }

    #[test]
    fn malformed_requests_get_400_naming_the_problem() {
        let mut ep = Endpoint::new(TimerConfig::default(), Random::seeded(1));
        let from: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        let broken = String::from_utf8(options("z9hG4bKo2"))
            .unwrap()
            .replace("CSeq: 1 OPTIONS\r\n", "");
        let out = ep.handle_datagram(Instant::now(), from, broken.as_bytes());
        let text = String::from_utf8(out[0].1.clone()).unwrap();
        assert!(
            text.starts_with("SIP/2.0 400 Bad Request - Missing CSeq Header"),
            "{text}"
        );
        assert_eq!(ep.counters.malformed, 1);
        // Garbage with no Via cannot be answered, and never panics.
        assert!(ep
            .handle_datagram(Instant::now(), from, b"\x00\x01garbage")
            .is_empty());
        assert!(ep
            .handle_datagram(Instant::now(), from, b"\r\n\r\n")
            .is_empty());
    }

    #[test]
    fn transactions_are_forgotten_after_timer_j() {
        let t0 = Instant::now();
        let mut ep = Endpoint::new(TimerConfig::default(), Random::seeded(1));
        let from: SocketAddr = "198.51.100.4:40000".parse().unwrap();
        ep.handle_datagram(t0, from, &options("z9hG4bKo3"));
        assert!(ep.poll_timeout().is_some());
        ep.handle_timeout(t0 + std::time::Duration::from_secs(33));
        assert_eq!(ep.poll_timeout(), None);
    }
}
