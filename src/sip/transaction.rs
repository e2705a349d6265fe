//! SIP transactions (RFC 3261 §17), sans-IO: the four state machines with
//! their timers A–K. Each takes one input (`handle_input`: a message or the
//! time) and gives one output (`poll_output`: what to send, what to hand to
//! the transaction user, and last when to wake it).
//!
//! Timers live in one small table per transaction (as quinn-proto keeps a
//! connection's timers), so the driver sleeps until `poll_timeout()`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rsip::prelude::*;

/// T1, T2, T4 of RFC 3261 §17.1.1.1 (configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Retransmit the request (A: INVITE, E: non-INVITE) or the final response (G).
    Retransmit,
    /// Give up waiting (B, F: no final response; H: no ACK).
    GiveUp,
    /// Linger to absorb retransmissions (D, K, I, J), then terminate.
    Linger,
}

#[derive(Debug, Default)]
struct Timers([Option<Instant>; 3]);

impl Timers {
    fn set(&mut self, t: Timer, at: Instant) {
        self.0[t as usize] = Some(at);
    }
    fn stop(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }
    fn clear(&mut self) {
        self.0 = [None; 3];
    }
    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
    fn due(&self, t: Timer, now: Instant) -> bool {
        self.0[t as usize].is_some_and(|at| now >= at)
    }
}

/// What a transaction asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes to the transaction's peer.
    Transmit(Vec<u8>),
    /// A response for the transaction user (client transactions).
    Response(rsip::Response),
    /// A request for the transaction user (server transactions: the first one only).
    Request(rsip::Request),
    /// No final response in time (timer B or F): the TU treats it as 408.
    TimedOut,
    /// The server transaction never got its ACK (timer H).
    NoAck,
    /// Done: the transaction can be forgotten.
    Terminated,
    /// Nothing more now: wake the transaction at this instant (None: it
    /// waits for nothing).
    Timeout(Option<Instant>),
}

/// What a client transaction is told.
#[derive(Debug)]
pub enum ClientInput {
    /// A response matched to it (by Via branch and method).
    Response(rsip::Response),
    /// The instant its last [`Output::Timeout`] named has come.
    Timeout,
}

/// What a server transaction is told.
#[derive(Debug)]
pub enum ServerInput<'a> {
    /// The same request again (a retransmission), or the ACK of an INVITE.
    Request(&'a rsip::Request),
    /// The transaction user's response.
    Respond(rsip::Response),
    /// The instant its last [`Output::Timeout`] named has come.
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// A client transaction (INVITE or non-INVITE).
pub struct ClientTransaction {
    invite: bool,
    reliable: bool,
    cfg: TimerConfig,
    state: ClientState,
    request: rsip::Request,
    wire: Vec<u8>,
    interval: Duration,
    ack: Option<Vec<u8>>,
    timers: Timers,
    out: VecDeque<Output>,
}

impl ClientTransaction {
    /// Starts the transaction: the request goes out at once.
    pub fn new(request: rsip::Request, reliable: bool, cfg: TimerConfig, now: Instant) -> Self {
        let invite = request.method == rsip::Method::Invite;
        let wire = request.to_string().into_bytes();
        let mut t = ClientTransaction {
            invite,
            reliable,
            cfg,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            request,
            interval: cfg.t1,
            wire: wire.clone(),
            ack: None,
            timers: Timers::default(),
            out: VecDeque::new(),
        };
        t.out.push_back(Output::Transmit(wire));
        if !reliable {
            t.timers.set(Timer::Retransmit, now + cfg.t1);
        }
        t.timers.set(Timer::GiveUp, now + 64 * cfg.t1);
        t
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn request(&self) -> &rsip::Request {
        &self.request
    }

    pub fn handle_input(&mut self, now: Instant, input: ClientInput) {
        match input {
            ClientInput::Response(response) => self.handle_response(now, response),
            ClientInput::Timeout => self.handle_timeout(now),
        }
    }

    /// What to do next, in order; [`Output::Timeout`] once nothing is left.
    pub fn poll_output(&mut self) -> Output {
        self.out
            .pop_front()
            .unwrap_or_else(|| Output::Timeout(self.timers.next()))
    }

    /// A response matched to this transaction.
    fn handle_response(&mut self, now: Instant, response: rsip::Response) {
        let code = response.status_code.code();
        match self.state {
            ClientState::Calling | ClientState::Trying | ClientState::Proceeding => {
                if code < 200 {
                    self.state = ClientState::Proceeding;
                    if self.invite {
                        // INVITE: a provisional response stops retransmission (timer A).
                        self.timers.stop(Timer::Retransmit);
                    } else if !self.reliable {
                        // Non-INVITE: keep retransmitting, at T2.
                        self.interval = self.cfg.t2;
                    }
                    self.out.push_back(Output::Response(response));
                } else if self.invite && code < 300 {
                    // 2xx: the TU acknowledges end to end; this transaction is done.
                    self.out.push_back(Output::Response(response));
                    self.terminate();
                } else {
                    if self.invite {
                        let ack = build_ack(&self.request, &response);
                        self.out.push_back(Output::Transmit(ack.clone()));
                        self.ack = Some(ack);
                    }
                    self.out.push_back(Output::Response(response));
                    self.state = ClientState::Completed;
                    self.timers.clear();
                    let linger = match (self.reliable, self.invite) {
                        (true, _) => Duration::ZERO,
                        // Timer D: at least 32 s; timer K: T4.
                        (false, true) => Duration::from_secs(32).max(64 * self.cfg.t1 / 2),
                        (false, false) => self.cfg.t4,
                    };
                    self.timers.set(Timer::Linger, now + linger);
                }
            }
            ClientState::Completed => {
                // A retransmitted final response: the ACK went missing.
                if let Some(ack) = &self.ack {
                    if code >= 300 {
                        self.out.push_back(Output::Transmit(ack.clone()));
                    }
                }
            }
            ClientState::Terminated => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.timers.due(Timer::GiveUp, now) {
            self.out.push_back(Output::TimedOut);
            self.terminate();
            return;
        }
        if self.timers.due(Timer::Linger, now) {
            self.terminate();
            return;
        }
        if self.timers.due(Timer::Retransmit, now) {
            self.out.push_back(Output::Transmit(self.wire.clone()));
            self.interval = if self.invite {
                self.interval * 2
            } else {
                (self.interval * 2).min(self.cfg.t2)
            };
            self.timers.set(Timer::Retransmit, now + self.interval);
        }
    }

    #[cfg(test)]
    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.timers.clear();
        self.out.push_back(Output::Terminated);
    }
}

/// The ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3):
/// same Request-URI, Call-ID, From, CSeq number and top Via; the response's To.
pub fn build_ack(invite: &rsip::Request, response: &rsip::Response) -> Vec<u8> {
    let mut headers = rsip::Headers::default();
    if let Ok(via) = invite.via_header() {
        headers.push(via.clone().into());
    }
    for route in invite
        .headers
        .iter()
        .filter(|h| matches!(h, rsip::Header::Route(_)))
    {
        headers.push(route.clone());
    }
    headers.push(rsip::Header::MaxForwards(rsip::headers::MaxForwards::from(
        70u32,
    )));
    if let Ok(from) = invite.from_header() {
        headers.push(from.clone().into());
    }
    if let Ok(to) = response.to_header() {
        headers.push(to.clone().into());
    }
    if let Ok(call_id) = invite.call_id_header() {
        headers.push(call_id.clone().into());
    }
    let seq = invite
        .cseq_header()
        .and_then(|c| c.typed())
        .map(|c| c.seq)
        .unwrap_or(1);
    headers.push(
        rsip::typed::CSeq {
            seq,
            method: rsip::Method::Ack,
        }
        .into(),
    );
    headers.push(rsip::Header::ContentLength(
        rsip::headers::ContentLength::from(0u32),
    ));
    rsip::Request {
        method: rsip::Method::Ack,
        uri: invite.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
    .to_string()
    .into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Terminated,
}

/// A server transaction (INVITE or non-INVITE).
pub struct ServerTransaction {
    invite: bool,
    reliable: bool,
    cfg: TimerConfig,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    interval: Duration,
    timers: Timers,
    out: VecDeque<Output>,
}

impl ServerTransaction {
    /// Takes a new request: it goes to the TU; an INVITE is answered 100 Trying at once.
    pub fn new(request: rsip::Request, reliable: bool, cfg: TimerConfig) -> Self {
        let invite = request.method == rsip::Method::Invite;
        let mut t = ServerTransaction {
            invite,
            reliable,
            cfg,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            interval: cfg.t1,
            timers: Timers::default(),
            out: VecDeque::new(),
        };
        if invite {
            let trying = response_to(&request, 100).to_string().into_bytes();
            t.out.push_back(Output::Transmit(trying.clone()));
            t.last_response = Some(trying);
        }
        t.out.push_back(Output::Request(request));
        t
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn handle_input(&mut self, now: Instant, input: ServerInput<'_>) {
        match input {
            ServerInput::Request(request) => self.handle_request(now, request),
            ServerInput::Respond(response) => self.send_response(now, response),
            ServerInput::Timeout => self.handle_timeout(now),
        }
    }

    /// What to do next, in order; [`Output::Timeout`] once nothing is left.
    pub fn poll_output(&mut self) -> Output {
        self.out
            .pop_front()
            .unwrap_or_else(|| Output::Timeout(self.timers.next()))
    }

    /// The same request again (a retransmission), or the ACK of an INVITE.
    fn handle_request(&mut self, now: Instant, request: &rsip::Request) {
        if request.method == rsip::Method::Ack {
            if self.state == ServerState::Completed {
                self.state = ServerState::Confirmed;
                self.timers.clear();
                // Timer I absorbs ACK retransmissions.
                let linger = if self.reliable {
                    Duration::ZERO
                } else {
                    self.cfg.t4
                };
                self.timers.set(Timer::Linger, now + linger);
            }
            return;
        }
        // Absorbed: the last response answers it again.
        if matches!(self.state, ServerState::Proceeding | ServerState::Completed) {
            if let Some(r) = &self.last_response {
                self.out.push_back(Output::Transmit(r.clone()));
            }
        }
    }

    /// The TU's response.
    fn send_response(&mut self, now: Instant, response: rsip::Response) {
        if matches!(
            self.state,
            ServerState::Completed | ServerState::Confirmed | ServerState::Terminated
        ) {
            return;
        }
        let code = response.status_code.code();
        if self.invite && code == 100 {
            // The transaction said 100 Trying when it began: once is enough.
            return;
        }
        let wire = response.to_string().into_bytes();
        self.out.push_back(Output::Transmit(wire.clone()));
        self.last_response = Some(wire);
        if code < 200 {
            self.state = ServerState::Proceeding;
        } else if self.invite && code < 300 {
            // 2xx: the TU retransmits it until the ACK (the dialog's job).
            self.terminate();
        } else {
            self.state = ServerState::Completed;
            if self.invite {
                if !self.reliable {
                    self.timers.set(Timer::Retransmit, now + self.cfg.t1);
                }
                self.timers.set(Timer::GiveUp, now + 64 * self.cfg.t1);
            } else {
                let linger = if self.reliable {
                    Duration::ZERO
                } else {
                    64 * self.cfg.t1
                };
                self.timers.set(Timer::Linger, now + linger);
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.timers.due(Timer::GiveUp, now) {
            self.out.push_back(Output::NoAck);
            self.terminate();
            return;
        }
        if self.timers.due(Timer::Linger, now) {
            self.terminate();
            return;
        }
        if self.timers.due(Timer::Retransmit, now) {
            if let Some(r) = &self.last_response {
                self.out.push_back(Output::Transmit(r.clone()));
            }
            self.interval = (self.interval * 2).min(self.cfg.t2);
            self.timers.set(Timer::Retransmit, now + self.interval);
        }
    }

    #[cfg(test)]
    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.timers.clear();
        self.out.push_back(Output::Terminated);
    }
}

/// A response to `request` copying Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2).
pub fn response_to(request: &rsip::Request, code: u16) -> rsip::Response {
    let mut headers = rsip::Headers::default();
    for h in request.headers.iter() {
        if matches!(
            h,
            rsip::Header::Via(_)
                | rsip::Header::From(_)
                | rsip::Header::To(_)
                | rsip::Header::CallId(_)
                | rsip::Header::CSeq(_)
        ) {
            headers.push(h.clone());
        }
    }
    headers.push(rsip::Header::ContentLength(
        rsip::headers::ContentLength::from(0u32),
    ));
    rsip::Response {
        status_code: status_with_reason(code),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// A status with its RFC reason phrase: rsip 0.4 prints its own variant
/// names (`486 BusyHere`), which are not the phrases peers and people read.
pub fn status_with_reason(code: u16) -> rsip::StatusCode {
    let phrase = match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code {
            100..=199 => "Session Progress",
            200..=299 => "OK",
            300..=399 => "Redirected",
            400..=499 => "Request Failed",
            500..=599 => "Server Error",
            _ => "Global Failure",
        },
    };
    rsip::StatusCode::Other(code, phrase.into())
}

#[cfg(test)]
mod tests;
