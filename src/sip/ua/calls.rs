//! Calls: INVITE dialogs both ways — our INVITEs with their digest
//! answers, CANCEL, BYE, hold and INFO; the far end's INVITEs offered to
//! the gateway, its in-dialog requests and CANCEL; and our 2xx resent
//! until its ACK comes (RFC 3261 §13.3.1.4).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::prelude::*;

use super::{Owner, UaEvent, UserAgent, Wakeup};
use crate::sip::caller_id::OutgoingCaller;
use crate::sip::dialog::{AfterPrack, Dialog, DialogEvent, DialogState, RefreshOutcome};
use crate::sip::message::branch_of;
use crate::sip::session_timer::{self, SessionDue};
use crate::sip::transaction::response_to;
use crate::sip::transfer::{TransferProgress, TransferTarget};

/// The calls by key, and by Call-ID so a request finds its dialog without
/// looking at every call. One Call-ID may name two of our dialogs: a call
/// between two users of this gateway comes back to us through the proxy.
#[derive(Default)]
pub(super) struct Calls {
    by_key: BTreeMap<String, Dialog>,
    by_call_id: BTreeSet<(String, String)>,
}

impl Calls {
    pub(super) fn insert(&mut self, key: String, dialog: Dialog) {
        self.by_call_id
            .insert((dialog.call_id().to_string(), key.clone()));
        self.by_key.insert(key, dialog);
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Dialog> {
        let dialog = self.by_key.remove(key)?;
        self.by_call_id
            .remove(&(dialog.call_id().to_string(), key.to_string()));
        Some(dialog)
    }

    pub(super) fn get(&self, key: &str) -> Option<&Dialog> {
        self.by_key.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut Dialog> {
        self.by_key.get_mut(key)
    }

    /// The call with this Call-ID whose dialog `wanted` picks.
    pub(super) fn find(
        &mut self,
        call_id: &str,
        mut wanted: impl FnMut(&Dialog) -> bool,
    ) -> Option<(String, &mut Dialog)> {
        let from = (call_id.to_string(), String::new());
        let key = self
            .by_call_id
            .range(from..)
            .take_while(|(id, _)| id == call_id)
            .map(|(_, key)| key)
            .find(|key| self.by_key.get(*key).is_some_and(&mut wanted))?
            .clone();
        let dialog = self.by_key.get_mut(&key)?;
        Some((key, dialog))
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The calls whose dialog has ended.
    fn terminated(&self) -> Vec<String> {
        self.by_key
            .iter()
            .filter(|(_, d)| d.state() == DialogState::Terminated)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// A 2xx we resend until its ACK comes, or a reliable provisional until
/// its PRACK: every `interval` (doubling up to T2) until `give_up_at`
/// (64·T1).
pub(super) struct UnackedAnswer {
    /// A reliable provisional of this call (its INVITE is refused if the
    /// PRACK never comes); None for a 2xx.
    provisional_of: Option<String>,
    to: SocketAddr,
    bytes: Vec<u8>,
    next_send: Instant,
    interval: Duration,
    give_up_at: Instant,
}

/// The Call-ID of a message's headers.
fn call_id_of(headers: &rsip::Headers) -> Option<String> {
    headers.iter().find_map(|h| match h {
        rsip::Header::CallId(id) => Some(id.value().trim().to_string()),
        _ => None,
    })
}

/// Whether `response` is a 2xx to an INVITE of the far end's: the one
/// response we resend ourselves until its ACK.
fn is_invite_2xx(request: &rsip::Request, response: &rsip::Response) -> bool {
    request.method == rsip::Method::Invite && (200..300).contains(&response.status_code.code())
}

/// The resend entry of call `key`'s reliable provisional.
fn prack_key(key: &str) -> String {
    format!("{key} 100rel")
}

/// The refusal of a new INVITE the gateway cannot take up as it stands:
/// 420 naming the extensions it requires that we lack (RFC 3261
/// §8.2.2.3), or 422 for a session interval below our Min-SE (RFC 4028).
fn refusal_of_new_invite(request: &rsip::Request) -> Option<rsip::Response> {
    let lacking: Vec<String> = crate::sip::message::header_tokens(&request.headers, "require")
        .into_iter()
        .filter(|t| {
            !crate::sip::endpoint::SUPPORTED
                .split(',')
                .any(|s| s.trim().eq_ignore_ascii_case(t))
        })
        .collect();
    if !lacking.is_empty() {
        let mut refusal = response_to(request, 420);
        refusal.headers.push(rsip::Header::Other(
            "Unsupported".into(),
            lacking.join(", "),
        ));
        return Some(refusal);
    }
    session_timer::too_brief_refusal(request)
}

/// Whether a request carries a To tag (it belongs to a dialog).
fn has_to_tag(request: &rsip::Request) -> bool {
    request
        .headers
        .iter()
        .any(|h| matches!(h, rsip::Header::To(to) if to.value().contains("tag=")))
}

impl UserAgent {
    pub(super) fn invite(
        &mut self,
        now: Instant,
        key: &str,
        (user, to): (&str, &str),
        sdp: String,
        password: Option<String>,
        caller: OutgoingCaller,
    ) {
        let mut call = Dialog::new(user, to, &self.cfg.identity, sdp, self.random.fork());
        call.set_session_timer(self.cfg.session_timer);
        call.set_caller(caller);
        if let Some(password) = password {
            call.set_credentials(user, password);
        }
        call.set_server(self.server());
        let invite = call.invite().clone();
        self.calls.insert(key.to_string(), call);
        self.send(now, invite, Owner::Call(key.to_string()));
    }

    pub(super) fn hangup(&mut self, now: Instant, key: &str) {
        if self
            .calls
            .get(key)
            .is_some_and(|c| c.is_incoming() && c.state() == DialogState::Calling)
        {
            self.refuse(now, key, 480, None);
            return;
        }
        // A REFER's call under way: the old dialog ends too.
        if self.referrals.following.remove(key).is_some() {
            let old_key = super::referrals::referrer_key(key);
            let server = self.call_server(&old_key);
            let bye = self.calls.get_mut(&old_key).and_then(Dialog::bye);
            self.forget_call(&old_key);
            if let Some(bye) = bye {
                self.send(now, bye, Owner::Farewell(server));
            }
        }
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        if let Some(cancel) = call.cancel() {
            // The INVITE's 487 ends the call (its transaction ACKs it).
            self.send(now, cancel, Owner::Call(key.to_string()));
        } else if let Some(bye) = call.bye() {
            let server = call.server();
            self.forget_call(key);
            self.send(now, bye, Owner::Farewell(server));
        } else {
            self.forget_call(key);
        }
    }

    /// The server call `key`'s dialog began on (None: the one in use).
    pub(super) fn call_server(&self, key: &str) -> Option<SocketAddr> {
        self.calls.get(key).and_then(Dialog::server)
    }

    /// Forgets call `key` and its wake-ups.
    pub(super) fn forget_call(&mut self, key: &str) {
        self.calls.remove(key);
        self.wakeups.set(Wakeup::Session(key.to_string()), None);
        self.acked(&prack_key(key));
    }

    /// Starts call `key`'s session clock again if its dialog was refreshed,
    /// and sets the clock's wake-up.
    pub(super) fn sync_session(&mut self, now: Instant, key: &str) {
        let due = self
            .calls
            .get_mut(key)
            .and_then(|c| c.sync_session_clock(now));
        self.wakeups.set(Wakeup::Session(key.to_string()), due);
    }

    /// Call `key`'s session clock came due: our refresh goes out, or the
    /// session is over (BYE, and the call hears of it).
    pub(super) fn session_due(&mut self, now: Instant, key: &str) {
        let due = self.calls.get_mut(key).and_then(|c| c.session_due(now));
        match due {
            Some(SessionDue::Refresh) => self.send_refresh(now, key),
            Some(SessionDue::Expired) => return self.session_over(now, key),
            None => {}
        }
        self.sync_session(now, key);
    }

    /// Our session refresh for call `key`; when the dialog is busy with
    /// another exchange, one more try shortly.
    fn send_refresh(&mut self, now: Instant, key: &str) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        match call.refresh_request() {
            Some(request) => self.send(now, request, Owner::Call(key.to_string())),
            None => call.session_refresh_failed(now),
        }
    }

    /// What a failed refresh of call `key` leaves to do.
    fn after_refresh(&mut self, now: Instant, key: &str) {
        let outcome = self
            .calls
            .get_mut(key)
            .and_then(|c| c.take_refresh_outcome());
        match outcome {
            Some(RefreshOutcome::Again) => self.send_refresh(now, key),
            Some(RefreshOutcome::Later) => {
                if let Some(call) = self.calls.get_mut(key) {
                    call.session_refresh_failed(now);
                }
            }
            Some(RefreshOutcome::Over) => return self.session_over(now, key),
            None => {}
        }
        self.sync_session(now, key);
    }

    /// The session of call `key` ended by its timer: BYE, and the event.
    fn session_over(&mut self, now: Instant, key: &str) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        tracing::info!(call_id = %call.call_id(), "session timer expired: ending the call");
        let (bye, server) = (call.bye(), call.server());
        self.forget_call(key);
        if let Some(bye) = bye {
            self.send(now, bye, Owner::Farewell(server));
        }
        self.events.push_back(UaEvent::Call {
            key: key.to_string(),
            event: DialogEvent::SessionExpired,
        });
    }

    pub(super) fn hold(&mut self, now: Instant, key: &str, hold: bool) {
        let request = self.calls.get_mut(key).and_then(|c| c.reinvite(hold));
        match request {
            Some(request) => self.send(now, request, Owner::Call(key.to_string())),
            None => self.events.push_back(UaEvent::Call {
                key: key.to_string(),
                event: DialogEvent::LocalHold(None),
            }),
        }
    }

    pub(super) fn info_dtmf(&mut self, now: Instant, key: &str, digits: &str, duration_ms: u32) {
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

    /// A REFER in call `key`'s dialog: a blind transfer to a number or
    /// URI, or (attended) one naming the dialog of another call of ours
    /// for the far end to replace. When no REFER can go (the dialog is
    /// not confirmed, a transfer is under way, the other call is not
    /// answered) the transfer fails at once.
    pub(super) fn transfer(&mut self, now: Instant, key: &str, target: TransferTarget) {
        let refer_to = match &target {
            TransferTarget::To(to) => Some(format!(
                "<{}>",
                crate::sip::dialog::target_uri(to, &self.cfg.identity.domain)
            )),
            TransferTarget::Replacing(other) if other != key => {
                self.calls.get(other).and_then(Dialog::replacing_refer_to)
            }
            TransferTarget::Replacing(_) => None,
        };
        let request = refer_to.and_then(|r| self.calls.get_mut(key)?.refer(&r));
        match request {
            Some(request) => self.send(now, request, Owner::Call(key.to_string())),
            None => self.events.push_back(UaEvent::Call {
                key: key.to_string(),
                event: DialogEvent::Transfer(TransferProgress::Failed(None)),
            }),
        }
    }

    pub(super) fn ring(&mut self, now: Instant, key: &str) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let (response, reliable) = call.ringing();
        self.send_provisional(now, key, response, reliable);
    }

    /// 183 with our SDP (early media) to incoming call `key`; reliable
    /// ones are resent until their PRACK.
    pub(super) fn progress(&mut self, now: Instant, key: &str, sdp: String) {
        let Some((response, reliable)) = self.calls.get_mut(key).and_then(|c| c.progress(sdp))
        else {
            // None: it waits for a PRACK, or the call is gone.
            return;
        };
        self.send_provisional(now, key, response, reliable);
    }

    /// Sends our provisional `response` to call `key`'s INVITE; a reliable
    /// one is resent until its PRACK (RFC 3262 §3), as a 2xx is until its ACK.
    fn send_provisional(
        &mut self,
        now: Instant,
        key: &str,
        response: rsip::Response,
        reliable: bool,
    ) {
        let bytes = response.to_string().into_bytes();
        let source = self.invite_source(key);
        self.respond_invite(now, key, response);
        if let (true, Some(to)) = (reliable, source) {
            self.resend_until_pracked(now, key, to, bytes);
        }
    }

    /// Answers incoming call `key` (our 200), with the page's `headers`.
    pub(super) fn accept(
        &mut self,
        now: Instant,
        key: &str,
        sdp: String,
        headers: Vec<(String, String)>,
    ) {
        let Some(response) = self.calls.get_mut(key).and_then(|c| c.accept(sdp, headers)) else {
            // None: it waits for the PRACK of our 183, or the call is gone.
            return;
        };
        self.acked(&prack_key(key));
        let bytes = response.to_string().into_bytes();
        // Read before the 2xx ends the INVITE's server transaction.
        let source = self.invite_source(key);
        self.respond_invite(now, key, response);
        if let Some(to) = source {
            self.resend_until_acked(now, key, to, bytes);
        }
        self.sync_session(now, key);
    }

    /// The PRACK call `key` owed has come: what waited for it goes now.
    fn after_prack(&mut self, now: Instant, key: &str) {
        self.acked(&prack_key(key));
        match self.calls.get_mut(key).and_then(|c| c.take_after_prack()) {
            Some(AfterPrack::Progress(sdp)) => self.progress(now, key, sdp),
            Some(AfterPrack::Accept(sdp, headers)) => self.accept(now, key, sdp, headers),
            None => {}
        }
    }

    /// The call's answer to the far end's offer in a re-INVITE or UPDATE
    /// (our SDP, or a refusal status), in that request's transaction.
    pub(super) fn answer_offer(&mut self, now: Instant, key: &str, answer: Result<String, u16>) {
        if let Some(dialog) = self.referrals.replacing.remove(key) {
            return self.take_over(now, key, dialog, answer);
        }
        let Some((response, request)) =
            self.calls.get_mut(key).and_then(|c| c.answer_offer(answer))
        else {
            return;
        };
        let (Some(branch), method) = (branch_of(&request), request.method.to_string()) else {
            return;
        };
        let source = self.endpoint.source_of(&branch, &method);
        let invite_2xx = is_invite_2xx(&request, &response);
        let bytes = response.to_string().into_bytes();
        self.endpoint.send_response(now, &branch, &method, response);
        if let (true, Some(to)) = (invite_2xx, source) {
            self.resend_until_acked(now, key, to, bytes);
        }
        self.sync_session(now, key);
    }

    /// Resends `bytes`, a 2xx to an INVITE of the far end's in call `key`,
    /// to `to` until its ACK comes (RFC 3261 §13.3.1.4). Over TCP the
    /// transport itself delivers it.
    pub(super) fn resend_until_acked(
        &mut self,
        now: Instant,
        key: &str,
        to: SocketAddr,
        bytes: Vec<u8>,
    ) {
        self.resend(now, key.to_string(), None, to, bytes);
    }

    /// Resends `bytes`, call `key`'s reliable provisional, until its PRACK
    /// (RFC 3262 §3), under [`prack_key`].
    fn resend_until_pracked(&mut self, now: Instant, key: &str, to: SocketAddr, bytes: Vec<u8>) {
        self.resend(now, prack_key(key), Some(key.to_string()), to, bytes);
    }

    fn resend(
        &mut self,
        now: Instant,
        entry: String,
        provisional_of: Option<String>,
        to: SocketAddr,
        bytes: Vec<u8>,
    ) {
        if self.cfg.identity.reliable() {
            return;
        }
        let t1 = self.cfg.timers.t1;
        self.wakeups
            .set(Wakeup::Unacked(entry.clone()), Some(now + t1));
        self.unacked.insert(
            entry,
            UnackedAnswer {
                provisional_of,
                to,
                bytes,
                next_send: now + t1,
                interval: t1,
                give_up_at: now + 64 * t1,
            },
        );
    }

    pub(super) fn refuse(&mut self, now: Instant, key: &str, code: u16, reason: Option<&str>) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let mut response = call.refuse(code);
        if let Some(reason) = reason {
            response.status_code = rsip::StatusCode::Other(code, reason_phrase(reason));
        }
        self.respond_invite(now, key, response);
        self.forget_call(key);
    }

    /// Sends an incoming call `key` elsewhere: 302 with `contact` (a
    /// cluster's node holding the user's session).
    pub(super) fn redirect(&mut self, now: Instant, key: &str, contact: &str) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let mut response = call.refuse(302);
        response
            .headers
            .push(rsip::Header::Contact(rsip::headers::Contact::from(
                format!("<{contact}>"),
            )));
        self.respond_invite(now, key, response);
        self.forget_call(key);
    }

    /// Resends call `key`'s 2xx when due; gives up after 64·T1.
    pub(super) fn resend_unacked(&mut self, now: Instant, key: &str) {
        let t2 = self.cfg.timers.t2;
        let Some(answer) = self.unacked.get_mut(key) else {
            return;
        };
        if now >= answer.give_up_at {
            let provisional_of = answer.provisional_of.take();
            self.unacked.remove(key);
            if let Some(call_key) = provisional_of {
                self.prack_never_came(now, &call_key);
            }
            return;
        }
        if now >= answer.next_send {
            self.transmit.push_back(super::Transmit {
                to: answer.to,
                data: answer.bytes.clone(),
                over: super::Over::Link,
            });
            answer.interval = (answer.interval * 2).min(t2);
            answer.next_send = now + answer.interval;
        }
        let next = answer.next_send.min(answer.give_up_at);
        self.wakeups
            .set(Wakeup::Unacked(key.to_string()), Some(next));
    }

    /// Our reliable provisional to call `key` was resent for 64·T1 without
    /// a PRACK: the INVITE is refused with a 5xx (RFC 3262 §3) and the call
    /// fails as one that got no answer.
    fn prack_never_came(&mut self, now: Instant, key: &str) {
        let unanswered = self
            .calls
            .get(key)
            .is_some_and(|c| c.is_incoming() && c.state() == DialogState::Calling);
        if !unanswered {
            return;
        }
        tracing::info!(
            key,
            "no PRACK for our reliable provisional: refusing the INVITE"
        );
        self.refuse(now, key, 500, Some("Reliable provisional not acknowledged"));
        self.events.push_back(UaEvent::Call {
            key: key.to_string(),
            event: DialogEvent::Failed { status: None },
        });
    }

    fn acked(&mut self, key: &str) {
        self.unacked.remove(key);
        self.wakeups.set(Wakeup::Unacked(key.to_string()), None);
    }

    /// Where the far end's INVITE for call `key` came from: the source
    /// address its server transaction saw (never its Via's `received` or
    /// `rport`, which the sender writes and could point anywhere).
    fn invite_source(&self, key: &str) -> Option<SocketAddr> {
        let branch = self.calls.get(key)?.invite_branch()?;
        self.endpoint.source_of(&branch, "INVITE")
    }

    fn respond_invite(&mut self, now: Instant, key: &str, response: rsip::Response) {
        let Some(branch) = self.calls.get(key).and_then(|c| c.invite_branch()) else {
            return;
        };
        self.endpoint
            .send_response(now, &branch, "INVITE", response);
    }

    /// A new request from the far end (or an ACK outside a transaction):
    /// its dialog's, an incoming call, a CANCEL, or the endpoint's to answer.
    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: &rsip::Request,
    ) {
        let call_id = call_id_of(&request.headers).unwrap_or_default();
        let dialog = self.calls.find(&call_id, |call| call.matches(request));
        if let Some((key, call)) = dialog {
            if request.method == rsip::Method::Refer {
                return self.far_refer(now, from, key, request);
            }
            if request.method == rsip::Method::Ack {
                let event = call.on_ack(request);
                self.acked(&key);
                if let Some(event) = event {
                    self.events.push_back(UaEvent::Call { key, event });
                }
                return;
            }
            let (response, event) = call.on_request(request);
            let pracked = request.method == rsip::Method::PRack && !call.prack_owed();
            let referrer = super::referrals::referring_call(&key).is_some();
            match event {
                // The old dialog of a followed REFER: the call has moved on.
                Some(event) if referrer => self.referrer_event(now, &key, event),
                Some(event) => self.events.push_back(UaEvent::Call {
                    key: key.clone(),
                    event,
                }),
                None => {}
            }
            match response {
                Some(response) => {
                    let bytes = is_invite_2xx(request, &response)
                        .then(|| response.to_string().into_bytes());
                    self.endpoint.answer(now, from, request, Some(response));
                    if let Some(bytes) = bytes {
                        self.resend_until_acked(now, &key, from, bytes);
                    }
                }
                // The call answers the offer; a 100 stops the far end resending.
                None => self
                    .endpoint
                    .answer(now, from, request, Some(response_to(request, 100))),
            }
            if pracked {
                self.after_prack(now, &key);
            }
            self.sync_session(now, &key);
            for ended in self.calls.terminated() {
                self.forget_call(&ended);
            }
            return;
        }
        let response = match request.method {
            rsip::Method::Ack => return,
            rsip::Method::Cancel => {
                let branch = branch_of(request);
                let ringing = self.calls.find(&call_id, |c| {
                    c.is_incoming()
                        && c.state() == DialogState::Calling
                        && c.invite_branch() == branch
                });
                match ringing {
                    Some((key, _)) => {
                        self.endpoint
                            .answer(now, from, request, Some(response_to(request, 200)));
                        self.refuse(now, &key, 487, None);
                        self.events.push_back(UaEvent::Call {
                            key,
                            event: DialogEvent::Failed { status: Some(487) },
                        });
                        return;
                    }
                    None => Some(response_to(request, 481)),
                }
            }
            rsip::Method::Invite if !has_to_tag(request) => {
                if let Some(refusal) = refusal_of_new_invite(request) {
                    self.endpoint.answer(now, from, request, Some(refusal));
                    return;
                }
                let replaces = crate::sip::message::header_values(&request.headers, "replaces");
                if let Some(replaces) = replaces.first() {
                    return self.invite_replacing(now, from, request, replaces);
                }
                let random = self.random.fork();
                match Dialog::incoming(request, &self.cfg.identity, random) {
                    Some(mut call) => {
                        call.set_session_timer(self.cfg.session_timer);
                        let key = self.random.hex(12);
                        let (from_party, to) = call.parties();
                        let user = crate::sip::message::uri_user(&request.uri).unwrap_or_default();
                        self.events.push_back(UaEvent::Incoming {
                            key: key.clone(),
                            user,
                            from: from_party,
                            to,
                            caller: crate::sip::caller_id::Caller::of_invite(&request.headers),
                            call_data: self.cfg.call_data.incoming_of(&request.headers),
                            auto_answer: crate::sip::call_data::auto_answer_after(&request.headers),
                            sdp: call.remote_offer(),
                        });
                        // Its requests go back to the server it came from.
                        call.set_server(self.cfg.servers.iter().copied().find(|s| *s == from));
                        self.calls.insert(key, call);
                        // A provisional answer keeps the transaction open for
                        // ours (its own 100 Trying went out already).
                        Some(response_to(request, 100))
                    }
                    None => None,
                }
            }
            // A request inside a dialog we do not know (RFC 3261 §12.2.2).
            _ if has_to_tag(request) => Some(response_to(request, 481)),
            _ => None,
        };
        self.endpoint.answer(now, from, request, response);
    }

    /// A response to an INVITE whose transaction has ended: a retransmitted
    /// 2xx, whose ACK we send again.
    pub(super) fn late_invite_response(&mut self, response: &rsip::Response) {
        let Some(call_id) = call_id_of(&response.headers) else {
            return;
        };
        let ack = self
            .calls
            .find(&call_id, |call| !call.is_incoming())
            .and_then(|(_, call)| Some((call.on_invite_response(response).0?, call.server())));
        if let Some((ack, server)) = ack {
            self.send_to_server(ack, server);
        }
    }

    /// A response (or none in time) to a call's INVITE or CANCEL.
    pub(super) fn call_final(
        &mut self,
        now: Instant,
        key: &str,
        method: &rsip::Method,
        response: Option<rsip::Response>,
    ) {
        if *method == rsip::Method::Refer {
            let event = self
                .calls
                .get_mut(key)
                .and_then(|c| c.on_refer_response(response.as_ref()));
            if let Some(event) = event {
                self.events.push_back(UaEvent::Call {
                    key: key.to_string(),
                    event,
                });
            }
            return;
        }
        if *method == rsip::Method::Update {
            if response
                .as_ref()
                .is_some_and(|r| r.status_code.code() < 200)
            {
                return;
            }
            if let Some(call) = self.calls.get_mut(key) {
                if call.on_update_response(response.as_ref()) {
                    self.after_refresh(now, key);
                }
            }
            return;
        }
        if *method != rsip::Method::Invite {
            // CANCEL's own answer says nothing; the INVITE's 487 does.
            return;
        }
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let server = call.server();
        // A digest challenge we can answer, or a 422 naming a longer
        // session interval: the INVITE again, with it.
        let again = response.as_ref().and_then(|r| {
            call.answer_challenge(r)
                .or_else(|| call.answer_too_brief(r))
        });
        if let Some(again) = again {
            self.set_reachable(true);
            self.send(now, again, Owner::Call(key.to_string()));
            return;
        }
        let reinvite = match &response {
            Some(r) => call.is_reinvite_response(r),
            None => call.state() == DialogState::Confirmed,
        };
        if reinvite {
            if response
                .as_ref()
                .is_some_and(|r| r.status_code.code() < 200)
            {
                return;
            }
            let (ack, event) = call.on_reinvite_response(response.as_ref());
            if let Some(ack) = ack {
                self.send_to_server(ack, server);
            }
            if let Some(event) = event {
                self.events.push_back(UaEvent::Call {
                    key: key.to_string(),
                    event,
                });
            }
            self.after_refresh(now, key);
            return;
        }
        let (ack, event) = match &response {
            Some(r) => call.on_invite_response(r),
            None => (None, call.on_invite_timeout()),
        };
        let prack = call.take_prack();
        if let Some(ack) = ack {
            self.send_to_server(ack, server);
        }
        if let Some(prack) = prack {
            self.send(now, prack, Owner::Call(key.to_string()));
        }
        if response.is_some() {
            self.set_reachable(true);
        }
        let event = match event {
            Some(event) if self.referrals.following.contains_key(key) => {
                self.referred_call_event(now, key, event)
            }
            other => other,
        };
        if let Some(event) = event {
            if matches!(event, DialogEvent::Failed { .. }) {
                self.forget_call(key);
            }
            self.events.push_back(UaEvent::Call {
                key: key.to_string(),
                event,
            });
        }
        self.sync_session(now, key);
    }
}

/// `text` as a reason phrase: one line of printable text, at most 160
/// bytes (what it names may come from the caller's own bytes).
fn reason_phrase(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 160 {
        let mut end = 160;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}
