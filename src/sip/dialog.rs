//! Our side of a call's SIP dialog (RFC 3261 §12–15), sans-IO. Outgoing:
//! the INVITE, its early and confirmed dialog (tags, route set from
//! Record-Route, remote target from Contact), the ACK for a 2xx (resent when
//! the 2xx is), CANCEL before the answer, BYE after it. Incoming: the
//! dialog from the far end's INVITE and our 180/200/refusal. Both: the
//! answers to the far end's in-dialog requests (BYE, re-INVITE for hold,
//! INFO DTMF). Requests are written as text and read back with [`own_request`].

use std::net::SocketAddr;

use rsip::prelude::*;

use super::digest::DigestAuth;
use super::identity::Identity;
use super::message::branch_of;
use super::message::header_values as header;
use super::message::own_request;
use super::message::{lists_token, supports};
use super::session_timer::{self, SessionClock, SessionInterval, SessionTimerConfig};
use super::transaction::response_to;
use super::transfer::{self, Notification, RemoteControl, TransferProgress};
use crate::random::Random;
use crate::sdp::Direction;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// INVITE sent, no final response yet.
    Calling,
    /// 2xx received and acknowledged.
    Confirmed,
    Terminated,
}

/// What the far end did, for the call layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogEvent {
    /// 1xx; `sdp` when it carried one (183 early media).
    Progress { status: u16, sdp: Option<String> },
    /// 2xx with the far end's SDP.
    Answered { sdp: String },
    /// A final refusal (`Some(status)`) or no answer at all (`None`).
    Failed { status: Option<u16> },
    /// The far end hung up (BYE).
    RemoteBye,
    /// The far end offers new media in a re-INVITE or UPDATE, or (`sdp`
    /// None) sent a re-INVITE without SDP and wants our offer: the call
    /// answers ([`Dialog::answer_offer`]); until then the request waits (a
    /// 100 Trying keeps it from being resent).
    Offer { sdp: Option<String> },
    /// The ACK to a 2xx of ours that carried an offer (an INVITE or
    /// re-INVITE without SDP): its answer, or None when it brought none.
    AckAnswer { sdp: Option<String> },
    /// The far end accepted our re-INVITE putting it on hold (true) or
    /// taking it off; `None`: it refused, nothing changed.
    LocalHold(Option<bool>),
    /// A DTMF digit by SIP INFO.
    Dtmf(char),
    /// How our REFER (a transfer the browser asked for) goes.
    Transfer(TransferProgress),
    /// The far end's REFER asks us to call `target` in its place: the
    /// call follows it with our offer of its media (`UaInput::FollowRefer`)
    /// or refuses it; until then the REFER waits.
    Referred { target: String },
    /// The call's far end is now another dialog (a REFER we followed was
    /// answered, or an INVITE with Replaces took it over): the new far
    /// end's answer to our offer, where the media goes from now on.
    Replaced { sdp: String },
    /// The switch's remote call control: answer (talk) or hold.
    RemoteControl(RemoteControl),
    /// The session timer ran out without the refresh it waited for, or
    /// the far end said the dialog is gone when we refreshed it (RFC 4028
    /// §10): the user agent has sent BYE.
    SessionExpired,
}

/// What our re-INVITE in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReinviteKind {
    /// Hold (true) or resume.
    Hold(bool),
    /// A session refresh (RFC 4028) with our SDP unchanged.
    Refresh,
}

/// A dialog's reliable provisionals (RFC 3262).
#[derive(Default)]
struct Provisionals {
    /// Outgoing: the RSeq of the last reliable provisional we PRACKed, and
    /// the PRACK waiting to be sent.
    last_rseq: Option<u32>,
    prack: Option<rsip::Request>,
    /// A reliable provisional brought the far end's answer (or, incoming,
    /// ours was PRACKed): the first offer/answer is complete, so an UPDATE
    /// may offer in the early dialog (RFC 3311 §5.1).
    early_answered: bool,
    /// Incoming: the INVITE requires reliable provisionals; our last
    /// RSeq, and whether its PRACK is still owed.
    required: bool,
    our_rseq: u32,
    prack_owed: bool,
    /// Incoming: the reliable provisional owed its PRACK carries our SDP
    /// (a 183 with early media), so no 2xx goes out before that PRACK
    /// (RFC 3262 §3).
    owed_has_sdp: bool,
    /// Incoming: a 183 with our SDP went out; the 2xx repeats that SDP.
    early_sdp_sent: bool,
    /// Incoming: what waits for the PRACK owed.
    after_prack: Option<AfterPrack>,
}

/// A response of ours to the far end's INVITE that waits for the PRACK of
/// our reliable provisional: RFC 3262 §3 allows one unacknowledged at a
/// time, and no 2xx while one with SDP is unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterPrack {
    /// 183 with this SDP ([`Dialog::progress`]).
    Progress(String),
    /// 200 with this SDP and these call-data headers ([`Dialog::accept`]).
    Accept(String, Vec<(String, String)>),
}

/// A dialog's session timer (RFC 4028): our settings, the interval our
/// requests ask for (a 422 raises it) with the Min-SE it answered, the
/// interval agreed, and its clock (started again by each refresh).
#[derive(Default)]
struct SessionTimerState {
    config: SessionTimerConfig,
    asked_expires: u32,
    asked_min_se: Option<u32>,
    agreed: Option<SessionInterval>,
    /// The session was refreshed (or its interval changed) since the
    /// clock last started.
    refreshed: bool,
    clock: Option<SessionClock>,
    /// Our UPDATE refreshing the session, in flight: its CSeq.
    refresh_update: Option<u32>,
    /// What our last failed refresh leaves to do.
    refresh_outcome: Option<RefreshOutcome>,
}

impl SessionTimerState {
    /// The session interval our 2xx to the far end's INVITE, re-INVITE or
    /// UPDATE sets (RFC 4028 §9), written into it.
    fn answer(&mut self, request: &rsip::Request, response: &mut rsip::Response) {
        response
            .headers
            .push(rsip::Header::Supported(rsip::headers::Supported::from(
                super::endpoint::SUPPORTED,
            )));
        self.agreed = session_timer::answer_interval(request, self.config, self.agreed);
        self.refreshed = true;
        let Some(interval) = self.agreed else {
            return;
        };
        response.headers.push(rsip::Header::Other(
            "Session-Expires".into(),
            interval.value(false),
        ));
        if supports(&request.headers, "timer") {
            response
                .headers
                .push(rsip::Header::Require(rsip::headers::Require::from("timer")));
        }
    }
}

/// What a failed session refresh leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Send the refresh again now (a 422 raised the interval, or the far
    /// end takes no UPDATE and gets a re-INVITE instead).
    Again,
    /// Refused for a passing reason: try once more a little later.
    Later,
    /// The dialog is gone (481, 408, no answer): end the call.
    Over,
}

pub struct Dialog {
    incoming: bool,
    /// The SIP server this dialog's requests go to (the one the INVITE went
    /// to or came from): a failover moves new calls, not this one. None:
    /// the server in use.
    server: Option<std::net::SocketAddr>,
    call_id: String,
    local_tag: String,
    local_uri: String,
    request_uri: String,
    remote_uri: String,
    remote_tag: Option<String>,
    remote_target: Option<String>,
    route_set: Vec<String>,
    cseq: u32,
    local: SocketAddr,
    /// `transport=` parameter and Via token of our URIs.
    transport: &'static str,
    via: &'static str,
    /// Via parameters after the branch (`;rport`, `;alias` on streams).
    via_params: &'static str,
    contact_user: String,
    invite: rsip::Request,
    state: DialogState,
    ack: Option<Vec<u8>>,
    /// Our SDP in this dialog, and its o= version.
    local_sdp: String,
    sdp_version: u64,
    /// The far end's re-INVITE or UPDATE whose offer waits for our answer.
    pending_offer: Option<rsip::Request>,
    /// Our last 2xx to an INVITE carried an offer: its ACK brings the answer.
    answer_in_ack: bool,
    /// Our re-INVITE in flight: its CSeq and what it is for.
    reinvite: Option<(u32, ReinviteKind)>,
    /// Our INVITE's CSeq (its ACK and CANCEL carry it; a PRACK moves
    /// `cseq` on).
    invite_cseq: u32,
    /// Reliable provisionals (RFC 3262), both ways.
    provisionals: Provisionals,
    /// Session timer (RFC 4028).
    session_timer: SessionTimerState,
    /// The far end's Allow lists UPDATE: refreshes go by UPDATE, not
    /// re-INVITE.
    far_allows_update: bool,
    /// Outgoing: who we say calls (From's display name, identity header,
    /// the page's call-data headers).
    caller: super::caller_id::OutgoingCaller,
    /// Our REFER in flight or accepted and not yet done: its CSeq.
    refer: Option<u32>,
    /// Answers to digest challenges to our INVITE.
    auth: DigestAuth,
    /// The header our INVITE carries in answer to the last challenge.
    authorization: Option<(&'static str, String)>,
    /// Branches and cnonces.
    random: Random,
}

/// The DTMF digit a SIP INFO carries, in the two forms switches send:
/// `application/dtmf-relay` (`Signal=5`, also `Signal=*` or the event
/// code `Signal=10`) and `application/dtmf` (the digit alone, RFC 2976
/// practice). None for anything else.
fn info_digit(content_type: Option<&str>, body: &str) -> Option<char> {
    let media_type = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let signal = match media_type.as_deref() {
        Some("application/dtmf") => body.trim().to_string(),
        _ => body.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| v.trim().to_string())
        })?,
    };
    let mut chars = signal.chars();
    match (chars.next(), chars.next()) {
        (Some(d), None) => crate::media::dtmf::event_code(d).and_then(crate::media::dtmf::digit),
        _ => signal
            .parse::<u8>()
            .ok()
            .filter(|code| *code <= 15)
            .and_then(crate::media::dtmf::digit),
    }
}

/// `5000` → `sip:5000@domain`; a `sip:`/`sips:` URI stays as it is.
pub fn target_uri(to: &str, domain: &str) -> String {
    if to.starts_with("sip:") || to.starts_with("sips:") {
        to.to_string()
    } else {
        format!("sip:{to}@{domain}")
    }
}

/// The URI inside `<…>` of a name-addr, or the value up to its parameters.
fn addr_uri(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_string(),
        _ => value.split(';').next().unwrap_or(value).trim().to_string(),
    }
}

fn tag_of(value: &str) -> Option<String> {
    let after = value.rsplit_once('>').map_or(value, |(_, rest)| rest);
    after
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag=").map(str::to_string))
}

/// An SDP body with its Content-Type and Content-Length.
fn set_body(response: &mut rsip::Response, sdp: &str) {
    response.headers.retain(|h| {
        !matches!(
            h,
            rsip::Header::ContentLength(_) | rsip::Header::ContentType(_)
        )
    });
    response
        .headers
        .push(rsip::Header::ContentType(rsip::headers::ContentType::from(
            "application/sdp",
        )));
    response.headers.push(rsip::Header::ContentLength(
        rsip::headers::ContentLength::from(sdp.len() as u32),
    ));
    response.body = sdp.as_bytes().to_vec();
}

/// The RSeq of a reliable provisional response (RFC 3262 §7.1): one that
/// requires 100rel and numbers itself.
fn reliable_rseq(response: &rsip::Response) -> Option<u32> {
    if !lists_token(&response.headers, "require", "100rel") {
        return None;
    }
    header(&response.headers, "rseq")
        .first()?
        .trim()
        .parse()
        .ok()
}

/// The route set of a response's Record-Route, in the order our requests
/// carry it (reversed, RFC 3261 §12.1.2).
fn route_set_of(response: &rsip::Response) -> Vec<String> {
    let mut routes = super::message::header_tokens(&response.headers, "record-route");
    routes.reverse();
    routes
}

/// Whether a message's Allow header lists UPDATE.
fn allows_update(headers: &rsip::Headers) -> bool {
    lists_token(headers, "allow", "UPDATE")
}

/// The CSeq number of a response.
fn cseq_number(response: &rsip::Response) -> Option<u32> {
    Some(response.cseq_header().ok()?.typed().ok()?.seq)
}

fn body_text(body: &[u8]) -> Option<String> {
    (!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned())
}

/// Rewrites the direction attribute and bumps the o= version of our SDP.
fn with_direction(sdp: &str, direction: Direction, version: u64) -> String {
    let directed: Vec<String> = sdp
        .split("\r\n")
        .map(|line| {
            if ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(&line) {
                format!("a={}", direction.as_str())
            } else {
                line.to_string()
            }
        })
        .collect();
    with_origin(&directed.join("\r\n"), None, version)
}

/// The session id of an SDP's o= line.
fn origin_session_id(sdp: &str) -> Option<String> {
    let origin = sdp.split("\r\n").find_map(|l| l.strip_prefix("o="))?;
    origin.split(' ').nth(1).map(str::to_string)
}

/// `sdp` with its o= line's session id (when given) and version set.
fn with_origin(sdp: &str, session_id: Option<&str>, version: u64) -> String {
    let mut out = String::new();
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        match line.strip_prefix("o=") {
            Some(rest) => {
                let mut parts: Vec<String> = rest.split(' ').map(str::to_string).collect();
                if parts.len() >= 3 {
                    if let Some(id) = session_id {
                        parts[1] = id.to_string();
                    }
                    parts[2] = version.to_string();
                }
                out.push_str("o=");
                out.push_str(&parts.join(" "));
            }
            None => out.push_str(line),
        }
        out.push_str("\r\n");
    }
    out
}

impl Dialog {
    /// The INVITE from `user` to `to` (a number or URI) carrying `sdp`.
    pub fn new(user: &str, to: &str, identity: &Identity, sdp: String, mut random: Random) -> Self {
        let (domain, local) = (identity.domain.as_str(), identity.local);
        let request_uri = target_uri(to, domain);
        let local_uri = format!("sip:{user}@{domain}");
        let mut call = Dialog {
            incoming: false,
            server: None,
            call_id: format!("{}@webrtc-sip-gateway", random.hex(12)),
            local_tag: random.hex(12),
            remote_uri: request_uri.clone(),
            request_uri,
            local_uri,
            remote_tag: None,
            remote_target: None,
            route_set: Vec::new(),
            cseq: 1,
            local,
            transport: identity.uri_transport(),
            via: identity.via_transport(),
            via_params: identity.via_params(),
            contact_user: user.to_string(),
            invite: own_request("", rsip::Method::Invite),
            state: DialogState::Calling,
            ack: None,
            local_sdp: sdp,
            sdp_version: 1,
            pending_offer: None,
            answer_in_ack: false,
            reinvite: None,
            invite_cseq: 1,
            provisionals: Provisionals::default(),
            session_timer: SessionTimerState::default(),
            far_allows_update: false,
            caller: Default::default(),
            refer: None,
            auth: DigestAuth::default(),
            authorization: None,
            random,
        };
        call.invite = call.build_invite();
        call
    }

    /// The dialog of the far end's INVITE (None: it lacks what a dialog needs).
    pub fn incoming(
        invite: &rsip::Request,
        identity: &Identity,
        mut random: Random,
    ) -> Option<Self> {
        let local = identity.local;
        let from = header(&invite.headers, "from").into_iter().next()?;
        let to = header(&invite.headers, "to").into_iter().next()?;
        let call_id = header(&invite.headers, "call-id").into_iter().next()?;
        // Our Contact keeps the user as it came, escapes and all.
        let contact_user =
            super::message::uri_user_as_written(&invite.uri).unwrap_or_else(|| "gateway".into());
        Some(Dialog {
            incoming: true,
            server: None,
            call_id,
            local_tag: random.hex(12),
            local_uri: addr_uri(&to),
            request_uri: invite.uri.to_string(),
            remote_uri: addr_uri(&from),
            remote_tag: tag_of(&from),
            remote_target: header(&invite.headers, "contact")
                .first()
                .map(|c| addr_uri(c)),
            route_set: super::message::header_tokens(&invite.headers, "record-route"),
            cseq: 0,
            local,
            transport: identity.uri_transport(),
            via: identity.via_transport(),
            via_params: identity.via_params(),
            contact_user,
            invite: invite.clone(),
            state: DialogState::Calling,
            ack: None,
            local_sdp: String::new(),
            sdp_version: 1,
            pending_offer: None,
            answer_in_ack: false,
            reinvite: None,
            invite_cseq: 0,
            provisionals: Provisionals {
                required: lists_token(&invite.headers, "require", "100rel"),
                // RFC 3262 §3: the first RSeq is random, below 2^31.
                our_rseq: random.u32() >> 12,
                ..Provisionals::default()
            },
            session_timer: SessionTimerState::default(),
            far_allows_update: allows_update(&invite.headers),
            caller: Default::default(),
            refer: None,
            auth: DigestAuth::default(),
            authorization: None,
            random,
        })
    }

    /// Our session timer settings; an outgoing INVITE not yet answered
    /// asks for the interval from now on.
    pub fn set_session_timer(&mut self, timer: SessionTimerConfig) {
        self.session_timer.config = timer;
        if !self.incoming && self.state == DialogState::Calling {
            self.session_timer.asked_expires = timer.expires_s;
            self.invite = self.build_invite();
        }
    }

    /// Who our outgoing INVITE says calls; an INVITE not yet answered
    /// carries it from now on.
    pub fn set_caller(&mut self, caller: super::caller_id::OutgoingCaller) {
        self.caller = caller;
        if !self.incoming && self.state == DialogState::Calling {
            self.invite = self.build_invite();
        }
    }

    /// Our From (or identity header) value: the session's display name,
    /// quoted, before our URI.
    fn our_name_addr(&self) -> String {
        match &self.caller.display_name {
            Some(name) => format!("{} <{}>", super::caller_id::quoted(name), self.local_uri),
            None => format!("<{}>", self.local_uri),
        }
    }

    /// Starts the session clock again at `now` when the session was
    /// refreshed since the last call; returns when it next needs
    /// [`Dialog::session_due`] (None: no session timer).
    pub fn sync_session_clock(&mut self, now: std::time::Instant) -> Option<std::time::Instant> {
        if std::mem::take(&mut self.session_timer.refreshed) {
            self.session_timer.clock = self.session_timer.agreed.map(|i| SessionClock::new(i, now));
        }
        if self.state != DialogState::Confirmed {
            self.session_timer.clock = None;
        }
        self.session_timer.clock.as_ref().map(SessionClock::due_at)
    }

    /// The session clock's wake-up came: a refresh to send, or the
    /// session over.
    pub fn session_due(&mut self, now: std::time::Instant) -> Option<session_timer::SessionDue> {
        self.session_timer.clock.as_mut()?.on_due(now)
    }

    /// Our refresh failed for a passing reason: one more try in a few
    /// seconds, if that is still before the session ends.
    pub fn session_refresh_failed(&mut self, now: std::time::Instant) {
        if let Some(clock) = self.session_timer.clock.as_mut() {
            clock.retry_at(now + std::time::Duration::from_secs(4));
        }
    }

    pub fn is_incoming(&self) -> bool {
        self.incoming
    }

    /// The server this dialog's requests go to (None: the one in use).
    pub fn server(&self) -> Option<std::net::SocketAddr> {
        self.server
    }

    pub fn set_server(&mut self, server: Option<std::net::SocketAddr>) {
        self.server = server;
    }

    /// The far end's offer in its INVITE.
    pub fn remote_offer(&self) -> Option<String> {
        body_text(&self.invite.body)
    }

    /// Who calls (the From URI's user, or the URI) and whom (the To's).
    pub fn parties(&self) -> (String, String) {
        // The user part, without a password a sender put after ':' (RFC
        // 3261 §19.1.1 deprecates it): it must reach neither the browser
        // nor the log.
        let user = |uri: &str| {
            let userinfo = uri
                .trim_start_matches("sips:")
                .trim_start_matches("sip:")
                .split(['@', ';'])
                .next()
                .unwrap_or(uri);
            userinfo.split(':').next().unwrap_or(userinfo).to_string()
        };
        (user(&self.remote_uri), user(&self.local_uri))
    }

    /// A response of ours to the far end's INVITE, with our tag and, for
    /// one that makes a dialog, the INVITE's Record-Route (RFC 3261 §12.1.1).
    fn response(&self, code: u16) -> rsip::Response {
        let mut r = response_to(&self.invite, code);
        if (101..300).contains(&code) {
            let routes = self
                .invite
                .headers
                .iter()
                .filter(|h| matches!(h, rsip::Header::RecordRoute(_)))
                .cloned()
                .collect::<Vec<_>>();
            for route in routes {
                r.headers.push(route);
            }
        }
        for h in r.headers.iter_mut() {
            if let rsip::Header::To(to) = h {
                if !to.value().contains("tag=") {
                    *to = rsip::headers::To::from(format!("{};tag={}", to.value(), self.local_tag));
                }
            }
        }
        r
    }

    /// Our Contact header (RFC 3261 §8.1.1.8).
    fn contact(&self) -> rsip::Header {
        rsip::Header::Contact(rsip::headers::Contact::from(format!(
            "<sip:{}@{};transport={}>",
            self.contact_user, self.local, self.transport
        )))
    }

    /// 180 Ringing for an incoming call: reliable (RFC 3262) when the
    /// INVITE requires it (then true: resend it until [`Dialog::prack_owed`]
    /// is false). While one is owed its PRACK, another goes unreliably.
    pub fn ringing(&mut self) -> (rsip::Response, bool) {
        let mut r = self.response(180);
        let reliable = self.provisionals.required && !self.provisionals.prack_owed;
        if reliable {
            self.make_reliable(&mut r);
        } else {
            // It makes an early dialog too (RFC 3261 §12.1.1): requests in
            // it (a switch's NOTIFY talk) need our Contact.
            r.headers.push(self.contact());
        }
        (r, reliable)
    }

    /// 183 Session Progress with our answer `sdp` for an incoming call
    /// (early media from the browser): reliable when the INVITE supports or
    /// requires 100rel (then true: resend it until its PRACK), else plain,
    /// as most switches take early media. None while an earlier reliable
    /// provisional is owed its PRACK: the 183 goes once that comes
    /// ([`Dialog::take_after_prack`]).
    pub fn progress(&mut self, sdp: String) -> Option<(rsip::Response, bool)> {
        let reliable = supports(&self.invite.headers, "100rel");
        if reliable && self.provisionals.prack_owed {
            self.provisionals.after_prack = Some(AfterPrack::Progress(sdp));
            return None;
        }
        self.local_sdp = sdp;
        self.provisionals.early_sdp_sent = true;
        let mut r = self.response(183);
        if reliable {
            self.make_reliable(&mut r);
            self.provisionals.owed_has_sdp = true;
        } else {
            r.headers.push(self.contact());
        }
        set_body(&mut r, &self.local_sdp);
        Some((r, reliable))
    }

    /// Makes `r` our next reliable provisional (RFC 3262 §3: Require:
    /// 100rel, the next RSeq, and our Contact for the early dialog); its
    /// PRACK is owed from now on.
    fn make_reliable(&mut self, r: &mut rsip::Response) {
        self.provisionals.our_rseq += 1;
        self.provisionals.prack_owed = true;
        r.headers
            .push(rsip::Header::Require(rsip::headers::Require::from(
                "100rel",
            )));
        r.headers.push(rsip::Header::Other(
            "RSeq".into(),
            self.provisionals.our_rseq.to_string(),
        ));
        r.headers.push(self.contact());
    }

    /// What waited for the PRACK that has just come, to send now.
    pub fn take_after_prack(&mut self) -> Option<AfterPrack> {
        if self.provisionals.prack_owed {
            return None;
        }
        self.provisionals.after_prack.take()
    }

    /// Our reliable provisional waits for its PRACK (it is resent until).
    pub fn prack_owed(&self) -> bool {
        self.provisionals.prack_owed
    }

    /// The far end's PRACK (RFC 3262 §3): 200 when its RAck names our
    /// reliable provisional, else 481.
    fn on_prack(&mut self, request: &rsip::Request) -> rsip::Response {
        let rack = header(&request.headers, "rack");
        let mut parts = rack
            .first()
            .map(|v| v.split_whitespace())
            .into_iter()
            .flatten();
        let rseq = parts.next().and_then(|n| n.parse::<u32>().ok());
        let cseq = parts.next().and_then(|n| n.parse::<u32>().ok());
        let invite_cseq = self
            .invite
            .cseq_header()
            .ok()
            .and_then(|c| c.typed().ok())
            .map(|c| c.seq);
        let method = parts.next();
        let ours = self.incoming
            && rseq == Some(self.provisionals.our_rseq)
            && cseq.is_some()
            && cseq == invite_cseq
            && method.is_some_and(|m| m.eq_ignore_ascii_case("INVITE"));
        if !ours {
            return response_to(request, 481);
        }
        // A resent PRACK is answered again.
        self.provisionals.prack_owed = false;
        // Our 183's answer is acknowledged: the first offer/answer is
        // complete, so the caller may offer anew by UPDATE (RFC 3311 §5.1).
        if std::mem::take(&mut self.provisionals.owed_has_sdp) {
            self.provisionals.early_answered = true;
        }
        response_to(request, 200)
    }

    /// 200 OK with our SDP: the incoming call is answered. After a 183 with
    /// our SDP the 200 repeats the SDP this dialog agreed then (an early
    /// UPDATE may have changed it since), whatever `sdp` says. None while
    /// that 183 is owed its PRACK: the 200 goes once it comes
    /// ([`Dialog::take_after_prack`]).
    pub fn accept(
        &mut self,
        sdp: String,
        headers: Vec<(String, String)>,
    ) -> Option<rsip::Response> {
        if self.provisionals.prack_owed && self.provisionals.owed_has_sdp {
            self.provisionals.after_prack = Some(AfterPrack::Accept(sdp, headers));
            return None;
        }
        if !self.provisionals.early_sdp_sent {
            self.local_sdp = sdp;
        }
        self.state = DialogState::Confirmed;
        // A 2xx may follow a reliable 180 without SDP before its PRACK
        // (RFC 3262 §3); the 180 is resent no more.
        self.provisionals.prack_owed = false;
        self.provisionals.after_prack = None;
        // No offer in the INVITE: ours is in this 2xx, the answer in the ACK.
        self.answer_in_ack = self.invite.body.is_empty();
        let mut r = self.response(200);
        r.headers.push(self.contact());
        for (name, value) in headers {
            r.headers
                .push(rsip::Header::Other(name, value.trim().to_string()));
        }
        self.session_timer.answer(&self.invite, &mut r);
        set_body(&mut r, &self.local_sdp);
        Some(r)
    }

    /// A final refusal of the incoming call (486, 480, 487…).
    pub fn refuse(&mut self, code: u16) -> rsip::Response {
        self.state = DialogState::Terminated;
        self.response(code)
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn state(&self) -> DialogState {
        self.state
    }

    pub fn invite(&self) -> &rsip::Request {
        &self.invite
    }

    fn build_invite(&mut self) -> rsip::Request {
        self.invite_cseq = self.cseq;
        let text = format!(
            "INVITE {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {local};branch=z9hG4bK{branch}{via_params}\r\n\
             Max-Forwards: 70\r\n\
             From: {from};tag={tag}\r\n\
             To: <{to}>\r\n\
             {identity}{call_data}\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} INVITE\r\n\
             Contact: <sip:{user}@{local};transport={transport}>\r\n\
             Allow: {allow}\r\n\
             Supported: {supported}\r\n\
             {session_timer}\
             Content-Type: application/sdp\r\n\
             User-Agent: webrtc-sip-gateway/{version}\r\n\
             {authorization}\
             Content-Length: {len}\r\n\r\n{sdp}",
            ruri = self.request_uri,
            allow = super::endpoint::ALLOW,
            supported = super::endpoint::SUPPORTED,
            local = self.local,
            via = self.via,
            via_params = self.via_params,
            transport = self.transport,
            branch = self.random.hex(12),
            from = self.our_name_addr(),
            identity = self
                .caller
                .identity_header
                .map(|name| format!("{name}: {}\r\n", self.our_name_addr()))
                .unwrap_or_default(),
            call_data = super::call_data::lines(&self.caller.headers),
            tag = self.local_tag,
            to = self.remote_uri,
            call_id = self.call_id,
            cseq = self.cseq,
            user = self.contact_user,
            version = env!("CARGO_PKG_VERSION"),
            len = self.local_sdp.len(),
            sdp = self.local_sdp,
            authorization = self
                .authorization
                .as_ref()
                .map(|(name, value)| format!("{name}: {value}\r\n"))
                .unwrap_or_default(),
            session_timer = self.asked_session_headers(),
        );
        own_request(&text, rsip::Method::Invite)
    }

    /// Session-Expires (and Min-SE after a 422) of our INVITE; nothing when
    /// we ask for no session timer.
    fn asked_session_headers(&self) -> String {
        if self.session_timer.asked_expires == 0 {
            return String::new();
        }
        let mut text = format!("Session-Expires: {}\r\n", self.session_timer.asked_expires);
        if let Some(min_se) = self.session_timer.asked_min_se {
            text.push_str(&format!("Min-SE: {min_se}\r\n"));
        }
        text
    }

    /// The user part of our Contact (the caller, for our calls).
    pub fn local_user(&self) -> &str {
        &self.contact_user
    }

    /// Who we are to a server that challenges our INVITE.
    pub fn set_credentials(&mut self, user: &str, password: String) {
        self.auth.set_credentials(user, password);
    }

    /// A 401/407 to our INVITE: the INVITE again (next CSeq, new branch)
    /// with our answer to the challenge, or None when there is no answer to
    /// give (no password, an unreadable challenge, or the server refused
    /// our answer already).
    pub fn answer_challenge(&mut self, response: &rsip::Response) -> Option<rsip::Request> {
        if self.state != DialogState::Calling {
            return None;
        }
        if !self.auth.take_challenge(response) {
            return None;
        }
        let cnonce = self.random.hex(12);
        self.authorization = self
            .auth
            .authorization("INVITE", &self.request_uri, &cnonce);
        self.cseq += 1;
        self.invite = self.build_invite();
        Some(self.invite.clone())
    }

    /// A 422 to our INVITE (RFC 4028 §7.4): the INVITE again (next CSeq,
    /// new branch) asking for the interval its Min-SE names. None when it
    /// names none above what we asked, or we tried twice already.
    pub fn answer_too_brief(&mut self, response: &rsip::Response) -> Option<rsip::Request> {
        if self.state != DialogState::Calling || response.status_code.code() != 422 {
            return None;
        }
        let min_se = session_timer::min_se(&response.headers)?;
        if min_se <= self.session_timer.asked_expires
            || self.session_timer.asked_min_se.is_some_and(|m| m >= min_se)
        {
            return None;
        }
        self.session_timer.asked_expires = min_se;
        self.session_timer.asked_min_se = Some(min_se);
        self.cseq += 1;
        self.invite = self.build_invite();
        Some(self.invite.clone())
    }

    /// A response to our INVITE (from its client transaction). Returns the
    /// ACK to send for a 2xx and what it means for the call.
    pub fn on_invite_response(
        &mut self,
        response: &rsip::Response,
    ) -> (Option<Vec<u8>>, Option<DialogEvent>) {
        let code = response.status_code.code();
        if self.state != DialogState::Calling {
            // A retransmitted 2xx: its ACK went missing.
            let ack = (200..300)
                .contains(&code)
                .then(|| self.ack.clone())
                .flatten();
            return (ack, None);
        }
        if let Some(to) = header(&response.headers, "to").first() {
            if let Some(tag) = tag_of(to) {
                self.remote_tag = Some(tag);
            }
        }
        if code < 200 {
            if code == 100 {
                return (None, None);
            }
            if let Some(rseq) = reliable_rseq(response) {
                if self.provisionals.last_rseq.is_some_and(|last| rseq <= last) {
                    // A resend of one we PRACKed: its PRACK's own
                    // transaction covers it.
                    return (None, None);
                }
                self.provisionals.last_rseq = Some(rseq);
                self.provisionals.early_answered |= !response.body.is_empty();
                // A reliable provisional sets up the early dialog our
                // PRACK goes in (RFC 3262 §4).
                if let Some(contact) = header(&response.headers, "contact").first() {
                    self.remote_target = Some(addr_uri(contact));
                }
                self.route_set = route_set_of(response);
                self.cseq += 1;
                let rack = format!("RAck: {rseq} {} INVITE\r\n", self.invite_cseq);
                self.provisionals.prack =
                    Some(self.in_dialog_with(rsip::Method::PRack, self.cseq, &rack, "", None));
            }
            return (
                None,
                Some(DialogEvent::Progress {
                    status: code,
                    sdp: body_text(&response.body),
                }),
            );
        }
        if code >= 300 {
            self.state = DialogState::Terminated;
            return (None, Some(DialogEvent::Failed { status: Some(code) }));
        }
        self.remote_target = header(&response.headers, "contact")
            .first()
            .map(|c| addr_uri(c));
        self.route_set = route_set_of(response);
        self.state = DialogState::Confirmed;
        self.far_allows_update = allows_update(&response.headers);
        self.session_timer.agreed = session_timer::interval_of_answer(response);
        self.session_timer.refreshed = true;
        let ack = self
            .in_dialog(rsip::Method::Ack, self.invite_cseq, "", None)
            .to_string()
            .into_bytes();
        self.ack = Some(ack.clone());
        let sdp = body_text(&response.body).unwrap_or_default();
        (Some(ack), Some(DialogEvent::Answered { sdp }))
    }

    /// An INFO carrying one DTMF digit (`application/dtmf-relay`); None
    /// before the dialog is confirmed.
    pub fn info_dtmf(&mut self, digit: char, duration_ms: u32) -> Option<rsip::Request> {
        if self.state != DialogState::Confirmed {
            return None;
        }
        self.cseq += 1;
        let body = format!("Signal={digit}\r\nDuration={duration_ms}\r\n");
        Some(self.in_dialog(
            rsip::Method::Info,
            self.cseq,
            &body,
            Some("application/dtmf-relay"),
        ))
    }

    /// A re-INVITE putting the far end on hold (`a=sendonly`) or taking it
    /// off (`a=sendrecv`). None when the dialog is not confirmed or one is
    /// already in flight (RFC 3261 §14.1).
    pub fn reinvite(&mut self, hold: bool) -> Option<rsip::Request> {
        if self.state != DialogState::Confirmed || self.reinvite.is_some() {
            return None;
        }
        let direction = if hold {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        self.sdp_version += 1;
        self.local_sdp = with_direction(&self.local_sdp, direction, self.sdp_version);
        Some(self.next_reinvite(ReinviteKind::Hold(hold)))
    }

    /// A re-INVITE with our SDP as it stands, in flight for `kind`.
    fn next_reinvite(&mut self, kind: ReinviteKind) -> rsip::Request {
        self.cseq += 1;
        self.reinvite = Some((self.cseq, kind));
        let sdp = self.local_sdp.clone();
        self.in_dialog(
            rsip::Method::Invite,
            self.cseq,
            &sdp,
            Some("application/sdp"),
        )
    }

    /// A final response to our re-INVITE (`None`: none in time). Returns the
    /// ACK for a 2xx and the outcome.
    pub fn on_reinvite_response(
        &mut self,
        response: Option<&rsip::Response>,
    ) -> (Option<Vec<u8>>, Option<DialogEvent>) {
        let Some((cseq, kind)) = self.reinvite.take() else {
            return (None, None);
        };
        match (response, kind) {
            (Some(r), kind) if r.status_code.code() / 100 == 2 => {
                let ack = self
                    .in_dialog(rsip::Method::Ack, cseq, "", None)
                    .to_string()
                    .into_bytes();
                // Every re-INVITE of ours refreshes the session.
                self.session_timer.agreed = session_timer::interval_of_answer(r);
                self.session_timer.refreshed = true;
                let event = match kind {
                    ReinviteKind::Hold(hold) => Some(DialogEvent::LocalHold(Some(hold))),
                    ReinviteKind::Refresh => None,
                };
                (Some(ack), event)
            }
            (_, ReinviteKind::Hold(_)) => (None, Some(DialogEvent::LocalHold(None))),
            (response, ReinviteKind::Refresh) => {
                self.refresh_failed(response);
                (None, None)
            }
        }
    }

    /// What a failed refresh (by re-INVITE or UPDATE) leaves to do, kept
    /// for [`Dialog::take_refresh_outcome`].
    fn refresh_failed(&mut self, response: Option<&rsip::Response>) {
        let code = response.map(|r| r.status_code.code());
        self.session_timer.refresh_outcome = Some(match code {
            None | Some(408) | Some(481) => RefreshOutcome::Over,
            Some(422) => match response.and_then(|r| session_timer::min_se(&r.headers)) {
                Some(min_se)
                    if self
                        .session_timer
                        .agreed
                        .is_some_and(|s| min_se > s.expires_s) =>
                {
                    if let Some(session) = self.session_timer.agreed.as_mut() {
                        session.expires_s = min_se;
                    }
                    self.session_timer.asked_min_se = Some(min_se);
                    RefreshOutcome::Again
                }
                _ => RefreshOutcome::Later,
            },
            Some(405) | Some(501) if self.far_allows_update => {
                // It listed UPDATE yet refuses it: re-INVITE from now on.
                self.far_allows_update = false;
                RefreshOutcome::Again
            }
            _ => RefreshOutcome::Later,
        });
    }

    /// The outcome of our last refresh that did not succeed, once.
    pub fn take_refresh_outcome(&mut self) -> Option<RefreshOutcome> {
        self.session_timer.refresh_outcome.take()
    }

    /// A session refresh (RFC 4028 §7.3, §9): an UPDATE without SDP when
    /// the far end takes UPDATE, else a re-INVITE with our SDP unchanged.
    /// None when the dialog has no session or is busy with another offer
    /// exchange (its own request refreshes the session).
    pub fn refresh_request(&mut self) -> Option<rsip::Request> {
        if self.state != DialogState::Confirmed
            || self.session_timer.agreed.is_none()
            || self.reinvite.is_some()
            || self.session_timer.refresh_update.is_some()
            || self.pending_offer.is_some()
            || self.answer_in_ack
        {
            return None;
        }
        if self.far_allows_update {
            self.cseq += 1;
            self.session_timer.refresh_update = Some(self.cseq);
            return Some(self.in_dialog(rsip::Method::Update, self.cseq, "", None));
        }
        Some(self.next_reinvite(ReinviteKind::Refresh))
    }

    /// A final response (None: none in time) to our UPDATE refreshing the
    /// session. Returns whether it was that UPDATE's.
    pub fn on_update_response(&mut self, response: Option<&rsip::Response>) -> bool {
        let cseq = response.and_then(cseq_number);
        match (self.session_timer.refresh_update, cseq) {
            (Some(ours), Some(theirs)) if ours != theirs => return false,
            (None, _) => return false,
            _ => {}
        }
        self.session_timer.refresh_update = None;
        match response {
            Some(r) if r.status_code.code() / 100 == 2 => {
                self.session_timer.agreed = session_timer::interval_of_answer(r);
                self.session_timer.refreshed = true;
                if let Some(contact) = header(&r.headers, "contact").first() {
                    self.remote_target = Some(addr_uri(contact));
                }
            }
            other => self.refresh_failed(other),
        }
        true
    }

    /// Whether `response` answers our re-INVITE in flight.
    pub fn is_reinvite_response(&self, response: &rsip::Response) -> bool {
        let cseq = cseq_number(response);
        matches!((self.reinvite, cseq), (Some((ours, _)), Some(theirs)) if ours == theirs)
    }

    /// The INVITE got no final response (timer B).
    pub fn on_invite_timeout(&mut self) -> Option<DialogEvent> {
        (self.state == DialogState::Calling).then(|| {
            self.state = DialogState::Terminated;
            DialogEvent::Failed { status: None }
        })
    }

    /// CANCEL for the INVITE (before a final response; RFC 3261 §9.1).
    pub fn cancel(&mut self) -> Option<rsip::Request> {
        if self.state != DialogState::Calling {
            return None;
        }
        let via = header(&self.invite.headers, "via").into_iter().next()?;
        let from = header(&self.invite.headers, "from").into_iter().next()?;
        let to = header(&self.invite.headers, "to").into_iter().next()?;
        let text = format!(
            "CANCEL {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} CANCEL\r\nContent-Length: 0\r\n\r\n",
            ruri = self.request_uri,
            call_id = self.call_id,
            cseq = self.invite_cseq,
        );
        Some(own_request(&text, rsip::Method::Cancel))
    }

    /// BYE after the answer.
    pub fn bye(&mut self) -> Option<rsip::Request> {
        if self.state != DialogState::Confirmed {
            return None;
        }
        self.state = DialogState::Terminated;
        self.cseq += 1;
        Some(self.in_dialog(rsip::Method::Bye, self.cseq, "", None))
    }

    fn in_dialog(
        &mut self,
        method: rsip::Method,
        cseq: u32,
        body: &str,
        content_type: Option<&str>,
    ) -> rsip::Request {
        self.in_dialog_with(method, cseq, "", body, content_type)
    }

    /// The PRACK for the last reliable provisional, once.
    pub fn take_prack(&mut self) -> Option<rsip::Request> {
        self.provisionals.prack.take()
    }

    /// An in-dialog request with `extra` header lines.
    fn in_dialog_with(
        &mut self,
        method: rsip::Method,
        cseq: u32,
        extra: &str,
        body: &str,
        content_type: Option<&str>,
    ) -> rsip::Request {
        let target = self
            .remote_target
            .clone()
            .unwrap_or_else(|| self.request_uri.clone());
        let to_tag = self
            .remote_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let mut text = format!(
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {local};branch=z9hG4bK{branch}{via_params}\r\n\
             Max-Forwards: 70\r\n",
            local = self.local,
            via = self.via,
            via_params = self.via_params,
            branch = self.random.hex(12),
        );
        for route in &self.route_set {
            text.push_str(&format!("Route: {route}\r\n"));
        }
        text.push_str(&format!(
            "From: {from};tag={tag}\r\nTo: <{to}>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n",
            from = self.our_name_addr(),
            tag = self.local_tag,
            to = self.remote_uri,
            call_id = self.call_id,
        ));
        let offers = matches!(method, rsip::Method::Invite | rsip::Method::Update);
        // Target refresh requests (and NOTIFY, RFC 6665 §4.1.2) carry our Contact.
        if offers || matches!(method, rsip::Method::Refer | rsip::Method::Notify) {
            text.push_str(&format!(
                "Contact: <sip:{}@{};transport={}>\r\n",
                self.contact_user, self.local, self.transport,
            ));
        }
        if offers {
            text.push_str(&format!("Supported: {}\r\n", super::endpoint::SUPPORTED));
            // Each re-INVITE and UPDATE of ours refreshes the session.
            if let Some(interval) = self.session_timer.agreed {
                text.push_str(&format!("Session-Expires: {}\r\n", interval.value(true)));
                if let Some(min_se) = self.session_timer.asked_min_se {
                    text.push_str(&format!("Min-SE: {min_se}\r\n"));
                }
            }
        }
        text.push_str(extra);
        if let Some(ct) = content_type {
            text.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        own_request(&text, method)
    }

    /// Whether `request` belongs to this dialog (Call-ID and our tag as To tag).
    pub fn matches(&self, request: &rsip::Request) -> bool {
        let call_id = header(&request.headers, "call-id");
        let to_tag = header(&request.headers, "to")
            .first()
            .and_then(|t| tag_of(t));
        call_id.first().map(String::as_str) == Some(self.call_id.as_str())
            && to_tag.as_deref() == Some(self.local_tag.as_str())
    }

    /// Answers the far end's in-dialog request: the response now, or None
    /// when it waits for the call's answer to the offer it carries.
    pub fn on_request(
        &mut self,
        request: &rsip::Request,
    ) -> (Option<rsip::Response>, Option<DialogEvent>) {
        let (response, event) = match request.method {
            rsip::Method::Invite | rsip::Method::Update => return self.on_offer_request(request),
            rsip::Method::Bye => {
                self.state = DialogState::Terminated;
                (response_to(request, 200), Some(DialogEvent::RemoteBye))
            }
            rsip::Method::Info => {
                let content_type = header(&request.headers, "content-type");
                let body = String::from_utf8_lossy(&request.body);
                match info_digit(content_type.first().map(String::as_str), &body) {
                    Some(d) => (response_to(request, 200), Some(DialogEvent::Dtmf(d))),
                    None => (response_to(request, 415), None),
                }
            }
            rsip::Method::Options => (response_to(request, 200), None),
            rsip::Method::PRack => (self.on_prack(request), None),
            rsip::Method::Notify => self.on_notify(request),
            _ => {
                let mut refusal = response_to(request, 405);
                refusal
                    .headers
                    .push(rsip::Header::Allow(rsip::headers::Allow::from(
                        super::endpoint::ALLOW,
                    )));
                (refusal, None)
            }
        };
        (Some(response), event)
    }

    /// The far end's re-INVITE or UPDATE (RFC 3261 §14.2, RFC 3311 §5.2).
    /// With an offer in a confirmed dialog it waits for the call's answer;
    /// a re-INVITE without one waits for the call's offer (its answer comes
    /// in the ACK); an UPDATE without one gets a plain 200 (a refresh). Requests that cross an offer exchange in progress
    /// get 491 (ours is pending) or 500 with Retry-After (theirs is).
    fn on_offer_request(
        &mut self,
        request: &rsip::Request,
    ) -> (Option<rsip::Response>, Option<DialogEvent>) {
        let offer = body_text(&request.body);
        let update = request.method == rsip::Method::Update;
        let refuse = |code: u16| {
            let mut r = response_to(request, code);
            if code == 500 {
                r.headers
                    .push(rsip::Header::Other("Retry-After".into(), "2".into()));
            }
            (Some(r), None)
        };
        if let Some(refusal) = session_timer::too_brief_refusal(request) {
            return (Some(refusal), None);
        }
        match self.state {
            DialogState::Terminated => return refuse(481),
            // Before our 2xx: only an UPDATE without an offer (a refresh);
            // an offer there needs the first offer/answer complete, which
            // only reliable provisionals give (RFC 3311 §5.2).
            // The INVITE's offer was answered in a reliable 18x (theirs or
            // ours): an UPDATE may offer in the early dialog, as in a
            // confirmed one.
            DialogState::Calling
                if update && offer.is_some() && self.provisionals.early_answered => {}
            DialogState::Calling => {
                return match (update, offer) {
                    (true, None) => (Some(self.target_refresh_response(request, None)), None),
                    (true, Some(_)) if self.incoming => refuse(500),
                    _ => refuse(491),
                };
            }
            DialogState::Confirmed => {}
        }
        if self.reinvite.is_some() {
            return refuse(491);
        }
        if self.pending_offer.is_some() || self.answer_in_ack {
            return refuse(500);
        }
        if update && offer.is_none() {
            return (Some(self.target_refresh_response(request, None)), None);
        }
        // An offer to answer, or (a re-INVITE without SDP) one to make.
        self.pending_offer = Some(request.clone());
        (None, Some(DialogEvent::Offer { sdp: offer }))
    }

    /// The call's answer to the far end's offer in its re-INVITE or UPDATE
    /// ([`DialogEvent::Offer`]), or our offer for a re-INVITE without one:
    /// our SDP in a 200, or a refusal (488, and the media stays as it was). Returns the response and the request it
    /// answers; None when no offer waits.
    pub fn answer_offer(
        &mut self,
        answer: Result<String, u16>,
    ) -> Option<(rsip::Response, rsip::Request)> {
        let request = self.pending_offer.take()?;
        let response = match answer {
            Ok(sdp) => {
                // Without an offer in the request, ours is in this 2xx.
                self.answer_in_ack = request.body.is_empty();
                let sdp = self.stamp_sdp(&sdp);
                self.target_refresh_response(&request, Some(&sdp))
            }
            Err(code) => response_to(&request, code),
        };
        Some((response, request))
    }

    /// An ACK in this dialog: the answer it carries when our 2xx offered.
    pub fn on_ack(&mut self, ack: &rsip::Request) -> Option<DialogEvent> {
        if !std::mem::take(&mut self.answer_in_ack) {
            return None;
        }
        Some(DialogEvent::AckAnswer {
            sdp: body_text(&ack.body),
        })
    }

    /// A 2xx to a re-INVITE or UPDATE: our Contact (both are target
    /// refresh requests) and `sdp` when given, which becomes our SDP.
    fn target_refresh_response(
        &mut self,
        request: &rsip::Request,
        sdp: Option<&str>,
    ) -> rsip::Response {
        let mut response = response_to(request, 200);
        response.headers.push(self.contact());
        // A target refresh moves where our requests go.
        if let Some(contact) = header(&request.headers, "contact").first() {
            self.remote_target = Some(addr_uri(contact));
        }
        if self.state == DialogState::Confirmed {
            self.far_allows_update |= allows_update(&request.headers);
            self.session_timer.answer(request, &mut response);
        }
        if let Some(sdp) = sdp {
            self.local_sdp = sdp.to_string();
            set_body(&mut response, sdp);
        }
        response
    }

    /// `sdp` as this dialog's next SDP of ours: its o= line keeps the
    /// session id we began with, and the version moves on when anything
    /// else changed (RFC 3264 §8).
    fn stamp_sdp(&mut self, sdp: &str) -> String {
        let body = |text: &str| -> String {
            text.split("\r\n")
                .filter(|l| !l.starts_with("o="))
                .collect::<Vec<_>>()
                .join("\r\n")
        };
        let session_id = origin_session_id(&self.local_sdp);
        if body(sdp) != body(&self.local_sdp) {
            self.sdp_version += 1;
        }
        with_origin(sdp, session_id.as_deref(), self.sdp_version)
    }

    /// The INVITE's transaction key: its Via branch.
    pub fn invite_branch(&self) -> Option<String> {
        branch_of(&self.invite)
    }

    /// A REFER (RFC 3515) asking the far end to call `refer_to` (a
    /// `<URI>`) in our place, with us as Referred-By. None unless the
    /// dialog is confirmed and no other transfer is under way.
    pub fn refer(&mut self, refer_to: &str) -> Option<rsip::Request> {
        if self.state != DialogState::Confirmed || self.refer.is_some() {
            return None;
        }
        self.cseq += 1;
        self.refer = Some(self.cseq);
        let extra = format!(
            "Refer-To: {refer_to}\r\nReferred-By: {}\r\n",
            self.our_name_addr()
        );
        Some(self.in_dialog_with(rsip::Method::Refer, self.cseq, &extra, "", None))
    }

    /// The `Refer-To` that has another dialog's far end replace this
    /// dialog with a call of its own (an attended transfer, RFC 5589 §7):
    /// our far end's URI with Replaces naming this dialog. None unless it
    /// is confirmed.
    pub fn replacing_refer_to(&self) -> Option<String> {
        if self.state != DialogState::Confirmed {
            return None;
        }
        let their_tag = self.remote_tag.as_deref()?;
        Some(transfer::refer_to_replacing(
            &self.remote_uri,
            &self.call_id,
            their_tag,
            &self.local_tag,
        ))
    }

    /// A final response to our REFER (None: none came): accepted, or the
    /// transfer failed with its status.
    pub fn on_refer_response(&mut self, response: Option<&rsip::Response>) -> Option<DialogEvent> {
        let code = response.map(|r| r.status_code.code());
        if code.is_some_and(|c| c < 200) {
            return None;
        }
        let ours = self.refer?;
        if response.and_then(cseq_number).is_some_and(|c| c != ours) {
            return None;
        }
        Some(DialogEvent::Transfer(match code {
            Some(c) if (200..300).contains(&c) => TransferProgress::Accepted,
            other => {
                self.refer = None;
                TransferProgress::Failed(other)
            }
        }))
    }

    /// A NOTIFY telling the far end how the call its REFER asked for goes
    /// (RFC 3515 §2.4.5): a sipfrag of `status`; `terminated` ends the
    /// implicit subscription. None once the dialog is over.
    pub fn refer_notify(&mut self, status: u16, terminated: bool) -> Option<rsip::Request> {
        if self.state != DialogState::Confirmed {
            return None;
        }
        self.cseq += 1;
        let state = if terminated {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        let extra = format!("Event: refer\r\nSubscription-State: {state}\r\n");
        let body = transfer::sipfrag(status);
        Some(self.in_dialog_with(
            rsip::Method::Notify,
            self.cseq,
            &extra,
            &body,
            Some("message/sipfrag;version=2.0"),
        ))
    }

    /// Our INVITE to `target` that a REFER in this dialog asked for: from
    /// the same user with the same credentials, `Referred-By` as the REFER
    /// gave it and a Replaces when its Refer-To carried one.
    pub fn referred_call(
        &self,
        target: &str,
        referred_by: Option<&str>,
        replaces: Option<&str>,
        sdp: String,
        identity: &Identity,
        random: Random,
    ) -> Dialog {
        let mut call = Dialog::new(&self.contact_user, target, identity, sdp, random);
        if let Some((user, password)) = self.auth.credentials() {
            call.set_credentials(user, password.to_string());
        }
        let mut headers = Vec::new();
        if let Some(by) = referred_by {
            headers.push(("Referred-By".to_string(), by.to_string()));
        }
        if let Some(replaces) = replaces {
            headers.push(("Replaces".to_string(), replaces.to_string()));
        }
        call.set_caller(super::caller_id::OutgoingCaller {
            display_name: self.caller.display_name.clone(),
            identity_header: self.caller.identity_header,
            headers,
        });
        call
    }

    /// Whether an INVITE's Replaces names this confirmed dialog (RFC 3891
    /// §3: its to-tag is ours, its from-tag the far end's).
    pub fn is_replaced_by(&self, replaces: &transfer::Replaces) -> bool {
        self.state == DialogState::Confirmed
            && replaces.call_id == self.call_id
            && replaces.to_tag == self.local_tag
            && self.remote_tag.as_deref() == Some(replaces.from_tag.as_str())
    }

    /// The far end's NOTIFY: the progress of our REFER (its sipfrag), or
    /// remote call control (talk, hold). 481 for a REFER progress without
    /// a REFER of ours, 489 for an event package we do not take.
    fn on_notify(&mut self, request: &rsip::Request) -> (rsip::Response, Option<DialogEvent>) {
        let event = header(&request.headers, "event");
        let state = header(&request.headers, "subscription-state");
        let body = String::from_utf8_lossy(&request.body);
        let kind = transfer::classify_notify(
            event.first().map(String::as_str),
            state.first().map(String::as_str),
            &body,
        );
        match kind {
            Notification::Refer { status, terminated } => {
                if self.refer.is_none() {
                    return (response_to(request, 481), None);
                }
                let progress = match status {
                    Some(c) if c < 200 && !terminated => Some(TransferProgress::Trying(c)),
                    Some(c) if (200..300).contains(&c) => Some(TransferProgress::Succeeded),
                    Some(c) if c >= 300 => Some(TransferProgress::Failed(Some(c))),
                    _ if terminated => Some(TransferProgress::Failed(None)),
                    _ => None,
                };
                if matches!(
                    progress,
                    Some(TransferProgress::Succeeded | TransferProgress::Failed(_))
                ) {
                    self.refer = None;
                }
                (
                    response_to(request, 200),
                    progress.map(DialogEvent::Transfer),
                )
            }
            Notification::Control(control) => (
                response_to(request, 200),
                Some(DialogEvent::RemoteControl(control)),
            ),
            Notification::Unknown => (response_to(request, 489), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_datagram;

    fn call() -> Dialog {
        Dialog::new(
            "1001",
            "5000",
            &Identity {
                domain: "pbx.example".into(),
                local: "192.0.2.10:5070".parse().unwrap(),
                transport: crate::config::SipTransport::Udp,
            },
            "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\na=sendrecv\r\n".into(),
            Random::seeded(1),
        )
    }

    fn response(text: &str) -> rsip::Response {
        match parse_datagram(text.as_bytes()).unwrap() {
            rsip::SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    fn request(text: &str) -> rsip::Request {
        match parse_datagram(text.as_bytes()).unwrap() {
            rsip::SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn answer_to(c: &Dialog, status: &str, extra: &str, body: &str) -> rsip::Response {
        let inv = c.invite().to_string();
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in inv.split("\r\n") {
            let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
            if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str("To: <sip:5000@pbx.example>;tag=far1\r\n");
        out.push_str(extra);
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        response(&out)
    }

    #[test]
    fn invite_answer_ack_and_bye_follow_the_dialog() {
        let mut c = call();
        let invite = c.invite().to_string();
        assert!(invite.starts_with("INVITE sip:5000@pbx.example SIP/2.0"));
        assert!(invite.contains("Content-Type: application/sdp"));
        let (ack, ev) = c.on_invite_response(&answer_to(&c, "180 Ringing", "", ""));
        assert_eq!(
            (ack, ev),
            (
                None,
                Some(DialogEvent::Progress {
                    status: 180,
                    sdp: None
                })
            )
        );
        let ok = answer_to(
            &c,
            "200 OK",
            "Contact: <sip:5000@198.51.100.7:5080>\r\nRecord-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\nContent-Type: application/sdp\r\n",
            "v=0\r\n",
        );
        let (ack, ev) = c.on_invite_response(&ok);
        assert_eq!(
            ev,
            Some(DialogEvent::Answered {
                sdp: "v=0\r\n".into()
            })
        );
        let ack = String::from_utf8(ack.unwrap()).unwrap();
        assert!(
            ack.starts_with("ACK sip:5000@198.51.100.7:5080 SIP/2.0"),
            "to the remote target: {ack}"
        );
        assert!(ack.contains("CSeq: 1 ACK"));
        assert!(ack.contains(";tag=far1"));
        let routes: Vec<&str> = ack.lines().filter(|l| l.starts_with("Route:")).collect();
        assert_eq!(
            routes,
            ["Route: <sip:p2.example;lr>", "Route: <sip:p1.example;lr>"],
            "route set reversed"
        );
        // The 2xx again: the same ACK again, no new event.
        let (again, ev) = c.on_invite_response(&ok);
        assert_eq!(again.map(String::from_utf8).unwrap().unwrap(), ack);
        assert_eq!(ev, None);
        assert!(c.cancel().is_none(), "too late to cancel");
        let bye = c.bye().unwrap().to_string();
        assert!(bye.starts_with("BYE sip:5000@198.51.100.7:5080"));
        assert!(bye.contains("CSeq: 2 BYE"));
        assert_eq!(c.state(), DialogState::Terminated);
        assert!(c.bye().is_none(), "only one BYE");
    }

    #[test]
    fn cancel_matches_the_invite() {
        let mut c = call();
        let cancel = c.cancel().unwrap();
        assert_eq!(cancel.method, rsip::Method::Cancel);
        assert_eq!(
            branch_of(&cancel),
            c.invite_branch(),
            "same branch as the INVITE"
        );
        assert!(cancel.to_string().contains("CSeq: 1 CANCEL"));
        let (_, ev) = c.on_invite_response(&answer_to(&c, "487 Request Terminated", "", ""));
        assert_eq!(ev, Some(DialogEvent::Failed { status: Some(487) }));
    }

    #[test]
    fn info_dtmf_in_both_forms() {
        let relay = Some("application/dtmf-relay");
        assert_eq!(info_digit(relay, "Signal=5\r\nDuration=160\r\n"), Some('5'));
        assert_eq!(info_digit(relay, "signal= *\r\n"), Some('*'));
        assert_eq!(info_digit(relay, "Signal=11\r\n"), Some('#'));
        assert_eq!(info_digit(relay, "Signal=d\r\n"), Some('D'));
        assert_eq!(info_digit(relay, "Signal=16\r\n"), None);
        assert_eq!(info_digit(relay, "Duration=160\r\n"), None);
        assert_eq!(
            info_digit(Some("Application/DTMF; charset=x"), "9\r\n"),
            Some('9')
        );
        assert_eq!(info_digit(Some("application/dtmf"), "95"), None);
        assert_eq!(info_digit(Some("application/dtmf"), "x"), None);
        assert_eq!(info_digit(None, "Signal=3"), Some('3'));
    }

    #[test]
    fn far_end_requests_in_the_dialog() {
        let mut c = call();
        c.on_invite_response(&answer_to(
            &c,
            "200 OK",
            "Contact: <sip:5000@198.51.100.7>\r\n",
            "v=0\r\n",
        ));
        let (tag, id) = (c.local_tag.clone(), c.call_id.clone());
        let in_dialog = |method: &str, cseq: u32, extra: &str, body: &str| {
            request(&format!(
                "{method} sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKx{cseq}\r\n\
                 From: <sip:5000@pbx.example>;tag=far1\r\nTo: <sip:1001@pbx.example>;tag={}\r\n\
                 Call-ID: {}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                tag,
                id,
                body.len()
            ))
        };
        // A re-INVITE with an offer waits for the call's answer; its 200
        // keeps our session id and moves the version on.
        let hold = in_dialog(
            "INVITE",
            10,
            "Contact: <sip:5000@198.51.100.8>\r\nContent-Type: application/sdp\r\n",
            "v=0\r\no=- 5 2 IN IP4 198.51.100.7\r\na=sendonly\r\n",
        );
        assert!(c.matches(&hold));
        let (resp, ev) = c.on_request(&hold);
        assert!(resp.is_none(), "it waits for the call");
        assert_eq!(
            ev,
            Some(DialogEvent::Offer {
                sdp: Some("v=0\r\no=- 5 2 IN IP4 198.51.100.7\r\na=sendonly\r\n".into())
            })
        );
        // Another offer while this one waits: 500 with Retry-After.
        let crossing = in_dialog("UPDATE", 11, "", "v=0\r\n");
        let (resp, ev) = c.on_request(&crossing);
        let resp = resp.unwrap();
        assert_eq!((resp.status_code.code(), ev), (500, None));
        assert!(resp.to_string().contains("Retry-After: 2"), "{resp}");
        let answer = "v=0\r\no=- 777 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\na=recvonly\r\n";
        let (resp, answered) = c.answer_offer(Ok(answer.into())).unwrap();
        assert_eq!(answered.method, rsip::Method::Invite);
        assert_eq!(resp.status_code.code(), 200);
        let body = String::from_utf8(resp.body.clone()).unwrap();
        assert!(
            body.contains("a=recvonly") && body.starts_with("v=0\r\no=- 1 2 IN IP4"),
            "{body}"
        );
        assert!(resp
            .to_string()
            .contains("Contact: <sip:1001@192.0.2.10:5070"));
        assert!(c.answer_offer(Ok(answer.into())).is_none(), "answered once");
        // The re-INVITE refreshed the target: our next request goes there.
        let next = c.info_dtmf('1', 100).unwrap();
        assert!(next
            .to_string()
            .starts_with("INFO sip:5000@198.51.100.8 SIP/2.0"));
        // The same SDP again keeps its version.
        let again = in_dialog("UPDATE", 14, "", "v=0\r\na=sendonly\r\n");
        assert!(c.on_request(&again).0.is_none());
        let (resp, _) = c.answer_offer(Ok(answer.into())).unwrap();
        let body = String::from_utf8(resp.body.clone()).unwrap();
        assert!(body.starts_with("v=0\r\no=- 1 2 IN IP4"), "{body}");
        // A refusal leaves everything as it was.
        let bad = in_dialog("INVITE", 15, "", "v=0\r\n");
        c.on_request(&bad);
        let (resp, _) = c.answer_offer(Err(488)).unwrap();
        assert_eq!(resp.status_code.code(), 488);
        // An UPDATE without SDP is a refresh: 200 at once, no body.
        let refresh = in_dialog("UPDATE", 16, "", "");
        let (resp, ev) = c.on_request(&refresh);
        let resp = resp.unwrap();
        assert_eq!(
            (resp.status_code.code(), ev, resp.body.len()),
            (200, None, 0)
        );
        // A re-INVITE without SDP asks for our offer; the ACK brings the
        // answer, once.
        let bare = in_dialog("INVITE", 17, "", "");
        let (resp, ev) = c.on_request(&bare);
        assert_eq!((resp, ev), (None, Some(DialogEvent::Offer { sdp: None })));
        let (resp, _) = c
            .answer_offer(Ok(answer.replace("recvonly", "sendrecv")))
            .unwrap();
        assert_eq!(resp.status_code.code(), 200);
        let body = String::from_utf8(resp.body.clone()).unwrap();
        assert!(body.starts_with("v=0\r\no=- 1 3 IN IP4"), "{body}");
        let while_acking = in_dialog("UPDATE", 18, "", "v=0\r\n");
        assert_eq!(
            c.on_request(&while_acking).0.unwrap().status_code.code(),
            500
        );
        let ack = in_dialog(
            "ACK",
            17,
            "Content-Type: application/sdp\r\n",
            "v=0\r\nm=audio 4 RTP/AVP 0\r\n",
        );
        assert_eq!(
            c.on_ack(&ack),
            Some(DialogEvent::AckAnswer {
                sdp: Some("v=0\r\nm=audio 4 RTP/AVP 0\r\n".into())
            })
        );
        assert_eq!(c.on_ack(&ack), None, "a resent ACK brings nothing new");
        // While our own re-INVITE is out, theirs gets 491.
        c.reinvite(true).unwrap();
        let glare = in_dialog("INVITE", 19, "", "v=0\r\n");
        assert_eq!(c.on_request(&glare).0.unwrap().status_code.code(), 491);
        let info = in_dialog(
            "INFO",
            12,
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=5\r\nDuration=160\r\n",
        );
        assert_eq!(c.on_request(&info).1, Some(DialogEvent::Dtmf('5')));
        let bye = in_dialog("BYE", 20, "", "");
        let (resp, ev) = c.on_request(&bye);
        assert_eq!(
            (resp.unwrap().status_code.code(), ev),
            (200, Some(DialogEvent::RemoteBye))
        );
        let mut other = bye.clone();
        other
            .headers
            .retain(|h| !matches!(h, rsip::Header::CallId(_)));
        other
            .headers
            .push(rsip::Header::CallId("someone-else".into()));
        assert!(!c.matches(&other));
    }

    #[test]
    fn an_incoming_dialog_answers_with_the_record_route() {
        let invite = request(
            "INVITE sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKp1\r\n\
             Record-Route: <sip:198.51.100.1;lr>\r\nFrom: <sip:2000@pbx.example>;tag=a1\r\n\
             To: <sip:1001@pbx.example>\r\nCall-ID: c-1\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:2000@198.51.100.9>\r\nContent-Length: 0\r\n\r\n",
        );
        let identity = Identity {
            domain: "pbx.example".into(),
            local: "192.0.2.10:5070".parse().unwrap(),
            transport: crate::config::SipTransport::Udp,
        };
        let mut call = Dialog::incoming(&invite, &identity, Random::seeded(2)).unwrap();
        assert_eq!(call.parties(), ("2000".to_string(), "1001".to_string()));
        let ringing = call.ringing().0.to_string();
        assert!(
            ringing.contains("Record-Route: <sip:198.51.100.1;lr>"),
            "{ringing}"
        );
        let ok = call
            .accept("v=0\r\n".into(), Vec::new())
            .expect("no PRACK owed")
            .to_string();
        assert!(
            ok.contains("Record-Route: <sip:198.51.100.1;lr>") && ok.contains(";tag="),
            "{ok}"
        );
        let busy = Dialog::incoming(&invite, &identity, Random::seeded(2))
            .unwrap()
            .refuse(486)
            .to_string();
        assert!(
            !busy.contains("Record-Route"),
            "no route set for a refusal: {busy}"
        );
        // Our BYE follows the route set toward the caller's contact.
        let bye = call.bye().unwrap().to_string();
        assert!(
            bye.starts_with("BYE sip:2000@198.51.100.9 SIP/2.0"),
            "{bye}"
        );
        assert!(
            bye.contains("Route: <sip:198.51.100.1;lr>")
                && bye.contains("To: <sip:2000@pbx.example>;tag=a1"),
            "{bye}"
        );
    }

    #[test]
    fn numbers_and_uris() {
        assert_eq!(target_uri("5000", "pbx"), "sip:5000@pbx");
        assert_eq!(
            target_uri("sip:a@b;transport=tcp", "pbx"),
            "sip:a@b;transport=tcp"
        );
    }
}
