//! Transfers the switch asks of us: a REFER in a call's dialog (RFC 3515)
//! has the gateway call the Refer-To target itself and move the call there,
//! and an INVITE with Replaces (RFC 3891) takes a call over from the
//! dialog it names. Either way the call (its key, its browser leg) stays:
//! only its far-end dialog changes, and the call's media follows the new
//! dialog's SDP.
//!
//! While a followed REFER's INVITE is under way the old dialog is kept
//! under a key of its own ([`referrer_key`]) for the NOTIFYs that report
//! the new call's progress; it gets a BYE once the new call is answered,
//! and takes the call back if the new call fails (unless the switch hung
//! it up meanwhile: then the call is over).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Owner, UaEvent, UserAgent};
use crate::sip::dialog::{Dialog, DialogEvent};
use crate::sip::message::{branch_of, header_values as header};
use crate::sip::transaction::response_to;
use crate::sip::transfer;

/// A followed REFER whose INVITE is under way.
pub(super) struct Referral {
    /// The switch hung the old dialog up (after its 202, before the outcome).
    old_gone: bool,
}

/// A REFER waiting for the call's word (follow it, or refuse).
pub(super) struct PendingRefer {
    request: rsip::Request,
    target: transfer::ReferTarget,
    referred_by: Option<String>,
}

/// What referrals the user agent has open, by call key.
#[derive(Default)]
pub(super) struct Referrals {
    pub(super) following: BTreeMap<String, Referral>,
    pub(super) pending: BTreeMap<String, PendingRefer>,
    /// INVITEs with Replaces whose new dialog waits for the call's answer
    /// to their offer, by the key of the call they take over.
    pub(super) replacing: BTreeMap<String, Dialog>,
}

const REFERRER: &str = " referrer";

/// The key the old dialog of call `key` is kept under while its REFER's
/// call is tried.
pub(super) fn referrer_key(key: &str) -> String {
    format!("{key}{REFERRER}")
}

/// The call whose old dialog `key` names, if it is one.
pub(super) fn referring_call(key: &str) -> Option<&str> {
    key.strip_suffix(REFERRER)
}

impl UserAgent {
    /// The far end's REFER in call `key`'s dialog: refused at once when
    /// `[sip] accept-refer` is off (603), the dialog is not confirmed or
    /// busy with another transfer (491), or Refer-To is no SIP URI (400);
    /// otherwise it waits for the call ([`DialogEvent::Referred`]).
    pub(super) fn far_refer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: String,
        request: &rsip::Request,
    ) {
        let refuse = |code: u16| Some(response_to(request, code));
        let busy = referring_call(&key).is_some()
            || self.referrals.following.contains_key(&key)
            || self.referrals.pending.contains_key(&key)
            || self.referrals.replacing.contains_key(&key);
        let confirmed = self
            .calls
            .get(&key)
            .is_some_and(|c| c.state() == crate::sip::dialog::DialogState::Confirmed);
        let target = header(&request.headers, "refer-to")
            .first()
            .and_then(|v| transfer::parse_refer_to(v));
        let refusal = match (&target, self.cfg.accept_refer) {
            (_, false) => refuse(603),
            _ if !confirmed => refuse(603),
            _ if busy => refuse(491),
            (None, true) => {
                let mut r = response_to(request, 400);
                r.status_code =
                    rsip::StatusCode::Other(400, "Refer-To is not a SIP URI".to_string());
                Some(r)
            }
            (Some(_), true) => None,
        };
        if let Some(refusal) = refusal {
            self.endpoint.answer(now, from, request, Some(refusal));
            return;
        }
        let Some(target) = target else {
            return;
        };
        self.endpoint
            .answer(now, from, request, Some(response_to(request, 100)));
        let uri = target.uri.clone();
        self.referrals.pending.insert(
            key.clone(),
            PendingRefer {
                request: request.clone(),
                target,
                referred_by: header(&request.headers, "referred-by").into_iter().next(),
            },
        );
        self.events.push_back(UaEvent::Call {
            key,
            event: DialogEvent::Referred { target: uri },
        });
    }

    /// The final response to call `key`'s REFER waiting for it.
    fn answer_refer(&mut self, now: Instant, refer: &rsip::Request, code: u16) {
        if let Some(branch) = branch_of(refer) {
            self.endpoint
                .send_response(now, &branch, "REFER", response_to(refer, code));
        }
    }

    /// The call refuses the far end's REFER (a target it may not call).
    pub(super) fn refuse_refer(&mut self, now: Instant, key: &str, code: u16) {
        if let Some(pending) = self.referrals.pending.remove(key) {
            self.answer_refer(now, &pending.request, code);
        }
    }

    /// The call follows the far end's REFER with `sdp`, its offer of the
    /// media as it stands: 202, a NOTIFY 100 in the old dialog, and our
    /// INVITE to the target, which becomes call `key`'s dialog.
    pub(super) fn follow_refer(&mut self, now: Instant, key: &str, sdp: String) {
        let Some(pending) = self.referrals.pending.remove(key) else {
            return;
        };
        self.answer_refer(now, &pending.request, 202);
        // The 202 leaves before our NOTIFY (a switch expects them in order).
        self.sync_endpoint();
        let Some(mut old) = self.calls.remove(key) else {
            return;
        };
        let mut call = old.referred_call(
            &pending.target.uri,
            pending.referred_by.as_deref(),
            pending.target.replaces.as_deref(),
            sdp,
            &self.cfg.identity,
            self.random.fork(),
        );
        call.set_session_timer(self.cfg.session_timer);
        tracing::info!(call_id = %old.call_id(), target = %pending.target.uri, "following the switch's REFER");
        if let Some(notify) = old.refer_notify(100, false) {
            let server = old.server();
            self.send(now, notify, Owner::Farewell(server));
        }
        let old_key = referrer_key(key);
        self.calls.insert(old_key.clone(), old);
        self.wakeups
            .set(super::Wakeup::Session(key.to_string()), None);
        self.sync_session(now, &old_key);
        let invite = call.invite().clone();
        self.calls.insert(key.to_string(), call);
        self.referrals
            .following
            .insert(key.to_string(), Referral { old_gone: false });
        self.send(now, invite, Owner::Call(key.to_string()));
    }

    /// What a followed REFER's INVITE (call `key`'s dialog now) brings:
    /// progress goes to the old dialog as NOTIFYs; the answer ends the old
    /// dialog and moves the call ([`DialogEvent::Replaced`]); a failure
    /// gives the call back to the old dialog. Returns the event for the call.
    pub(super) fn referred_call_event(
        &mut self,
        now: Instant,
        key: &str,
        event: DialogEvent,
    ) -> Option<DialogEvent> {
        let old_key = referrer_key(key);
        let (status, outcome) = match &event {
            DialogEvent::Progress { status, .. } => (*status, None),
            DialogEvent::Answered { sdp } => {
                (200, Some(Some(DialogEvent::Replaced { sdp: sdp.clone() })))
            }
            DialogEvent::Failed { status } => (status.unwrap_or(408), Some(None)),
            _ => return Some(event),
        };
        let terminated = outcome.is_some();
        let notify = self
            .calls
            .get_mut(&old_key)
            .and_then(|old| old.refer_notify(status, terminated));
        if let Some(notify) = notify {
            let server = self.call_server(&old_key);
            self.send(now, notify, Owner::Farewell(server));
        }
        let forward = outcome?;
        let referral = self.referrals.following.remove(key);
        match forward {
            Some(replaced) => {
                // The transfer is done: the old dialog ends.
                let server = self.call_server(&old_key);
                let bye = self.calls.get_mut(&old_key).and_then(Dialog::bye);
                self.forget_call(&old_key);
                if let Some(bye) = bye {
                    self.send(now, bye, Owner::Farewell(server));
                }
                Some(replaced)
            }
            None => {
                tracing::info!(
                    status,
                    "the REFER's call failed: the call stays where it was"
                );
                self.forget_call(key);
                match (referral, self.calls.remove(&old_key)) {
                    (Some(Referral { old_gone: false }), Some(old)) => {
                        self.calls.insert(key.to_string(), old);
                        self.sync_session(now, key);
                        None
                    }
                    // The switch hung the old dialog up meanwhile.
                    _ => Some(DialogEvent::RemoteBye),
                }
            }
        }
    }

    /// What the old dialog of a followed REFER does meanwhile: its BYE is
    /// noted (the call goes on with the new one), an offer is refused (the
    /// media is on its way elsewhere); nothing reaches the call.
    pub(super) fn referrer_event(&mut self, now: Instant, old_key: &str, event: DialogEvent) {
        match event {
            DialogEvent::RemoteBye => {
                if let Some(r) =
                    referring_call(old_key).and_then(|key| self.referrals.following.get_mut(key))
                {
                    r.old_gone = true;
                }
            }
            DialogEvent::Offer { .. } => self.answer_offer(now, old_key, Err(491)),
            _ => {}
        }
    }

    /// A new INVITE with Replaces: it takes over the confirmed dialog it
    /// names (its offer goes to that call as one in a re-INVITE, and the
    /// call's answer goes in our 200: [`UserAgent::take_over`]), or gets
    /// 481 when it names none of ours.
    pub(super) fn invite_replacing(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: &rsip::Request,
        replaces: &str,
    ) {
        let named = transfer::parse_replaces(replaces).and_then(|r| {
            let (key, _) = self.calls.find(&r.call_id, |d| d.is_replaced_by(&r))?;
            Some(key)
        });
        let key = named.filter(|key| {
            referring_call(key).is_none()
                && !self.referrals.following.contains_key(key)
                && !self.referrals.replacing.contains_key(key)
        });
        let dialog = key
            .as_ref()
            .and_then(|_| Dialog::incoming(request, &self.cfg.identity, self.random.fork()));
        let (Some(key), Some(mut dialog)) = (key, dialog) else {
            self.endpoint
                .answer(now, from, request, Some(response_to(request, 481)));
            return;
        };
        tracing::info!(call_id = %dialog.call_id(), "an INVITE with Replaces takes over a call");
        dialog.set_session_timer(self.cfg.session_timer);
        let sdp = dialog.remote_offer();
        self.referrals.replacing.insert(key.clone(), dialog);
        self.endpoint
            .answer(now, from, request, Some(response_to(request, 100)));
        self.events.push_back(UaEvent::Call {
            key,
            event: DialogEvent::Offer { sdp },
        });
    }

    /// The call's answer to the offer of an INVITE with Replaces: our 200
    /// (resent until its ACK), the new dialog becomes call `key`'s, and
    /// the old one gets BYE; or the INVITE is refused and nothing changes.
    pub(super) fn take_over(
        &mut self,
        now: Instant,
        key: &str,
        mut dialog: Dialog,
        answer: Result<String, u16>,
    ) {
        let Some(branch) = dialog.invite_branch() else {
            return;
        };
        let source = self.endpoint.source_of(&branch, "INVITE");
        let sdp = match answer {
            Ok(sdp) => sdp,
            Err(code) => {
                let refusal = dialog.refuse(code);
                self.endpoint.send_response(now, &branch, "INVITE", refusal);
                return;
            }
        };
        let Some(ok) = dialog.accept(sdp, Vec::new()) else {
            return;
        };
        let bytes = ok.to_string().into_bytes();
        self.endpoint.send_response(now, &branch, "INVITE", ok);
        // Our 200 leaves before the BYE of the dialog it replaces.
        self.sync_endpoint();
        let server = self.call_server(key);
        let bye = self.calls.get_mut(key).and_then(Dialog::bye);
        self.forget_call(key);
        if let Some(bye) = bye {
            self.send(now, bye, Owner::Farewell(server));
        }
        self.calls.insert(key.to_string(), dialog);
        if let Some(to) = source {
            self.resend_until_acked(now, key, to, bytes);
        }
        self.sync_session(now, key);
    }
}
