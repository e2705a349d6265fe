//! The B2BUA's call: one sans-IO state machine per call joining the browser's
//! web leg and the far end (a SIP dialog, or the built-in echo endpoint).
//!
//! Like the other protocol cores it never reads the clock, owns a socket or
//! spawns: the driver ([`driver`]) feeds it the browser's STUN/DTLS
//! datagrams, the far end's progress, API commands and the current time, and
//! applies what [`Call::poll_output`] returns (datagrams to send, the media
//! plan for the relay, events for the session's queue, requests for the far
//! end). Offer/answer is [`negotiate`]'s: the call holds a
//! [`negotiate::Negotiator`] and emits each plan it makes as
//! [`CallOutput::ConnectMedia`].

pub mod driver;
pub mod negotiate;
pub mod routing;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::sdp::{Fingerprint, IceCredentials, SdpError};
use crate::session::{IncomingCaller, SessionEvent};
use crate::sip::transfer::{RemoteControl, TransferProgress, TransferTarget};
use crate::webrtc::dtls::{DtlsIdentity, SrtpKeys};
use crate::webrtc::ice::Pair;
use crate::webrtc::leg::{WebLeg, WebLegEvent, WebLegInput};
use negotiate::{FarMedia, FarMove, MediaPlan, Negotiator};

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Inbound: the browser has our offer and has not answered yet.
    Incoming,
    /// Outbound: the far end has been asked and has not answered yet.
    Calling,
    /// The far end rings.
    Ringing,
    /// Media flows before the answer (183 with SDP).
    EarlyMedia,
    Answered,
    Ended,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Incoming => "incoming",
            CallState::Calling => "calling",
            CallState::Ringing => "ringing",
            CallState::EarlyMedia => "early_media",
            CallState::Answered => "answered",
            CallState::Ended => "ended",
        }
    }
}

/// Who put the call on hold or took it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Local,
    Remote,
}

impl Party {
    fn as_str(self) -> &'static str {
        match self {
            Party::Local => "local",
            Party::Remote => "remote",
        }
    }
}

/// Why a call ended (the `reason` of `call.ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The browser hung up.
    Hangup,
    /// The far end hung up after answering.
    RemoteHangup,
    /// The far end refused the call.
    Rejected,
    /// Cancelled before an answer.
    Cancelled,
    MediaTimeout,
    /// The SIP session timer ran out (RFC 4028): the refresh the far end
    /// owed never came, or it no longer knew the dialog.
    SessionExpired,
    /// The browser's transfer succeeded: the far end talks to the target.
    Transferred,
    Error,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::RemoteHangup => "remote_hangup",
            EndReason::Rejected => "rejected",
            EndReason::Cancelled => "cancelled",
            EndReason::MediaTimeout => "media_timeout",
            EndReason::SessionExpired => "session_expired",
            EndReason::Transferred => "transferred",
            EndReason::Error => "error",
        }
    }
}

/// What the far end is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FarRequest {
    /// End the call: CANCEL before an answer, BYE after.
    Hangup {
        answered: bool,
    },
    /// Put the far end on hold (re-INVITE sendonly) or take it off.
    Hold,
    Resume,
    /// Early media toward the far end's INVITE (183 with our SDP).
    Progress {
        sdp: String,
    },
    /// Answer the far end's INVITE (200 with our SDP and the page's
    /// call-data headers, checked already).
    Accept {
        sdp: String,
        headers: Vec<(String, String)>,
    },
    /// Refuse the far end's INVITE with this status.
    Refuse(u16),
    /// Answer the far end's offer in a re-INVITE or UPDATE (or give ours
    /// for a re-INVITE without SDP), or refuse it with a status.
    AnswerOffer(Result<String, u16>),
    /// Ask the far end to call the target in our place (REFER).
    Transfer(TransferTarget),
    /// Follow the far end's REFER: call its target with this offer of the
    /// call's media as it stands.
    FollowRefer(String),
    /// Refuse the far end's REFER with this status.
    RefuseRefer(u16),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutput {
    /// Send this datagram from the web leg's socket to `to`, leaving from
    /// our address `from` (None: the kernel's choice).
    Transmit {
        to: SocketAddr,
        from: Option<IpAddr>,
        data: Vec<u8>,
    },
    /// Web media goes to and comes from this pair's browser address only,
    /// and leaves from its local address.
    MediaRemote(Pair),
    /// An ICE restart: the browser's checks name this ufrag of ours and are
    /// signed with this password from now on (the relay checks them itself,
    /// and on the shared web port finds the call by the ufrag).
    IceCredentials(IceCredentials),
    /// Both sides' SDP are agreed: hand this plan to the relay (the one
    /// place a call's media is set up).
    ConnectMedia(Box<MediaPlan>),
    /// The far end moved its media (new address, payload types or keys):
    /// the relay sends there from now on; the browser leg is untouched.
    MoveFarMedia(Box<FarMove>),
    /// DTLS produced the web leg's SRTP keys.
    MediaKeys(SrtpKeys),
    /// An event for the session's queue.
    Notify(SessionEvent),
    Far(FarRequest),
    /// The attended transfer succeeded: the browser's other call, whose
    /// far end now talks to this one's, ends as transferred too.
    EndReplacedCall(String),
    /// The call is over: free its ports and forget it.
    Finished(EndReason),
    /// Nothing more now: wake the call at this instant (None: only input
    /// wakes it).
    Timeout(Option<Instant>),
}

/// What a call is told: the browser's control packets, the time, the far
/// end's doings and the browser's commands.
#[derive(Debug)]
pub enum CallInput<'a> {
    /// A STUN or DTLS datagram from the browser's `from` to our address
    /// `to` (the relay hands them over); `bridged_from`: the browser's TCP
    /// address when `from` is our loopback socket for its ICE-TCP
    /// connection.
    WebPacket {
        from: SocketAddr,
        to: Option<IpAddr>,
        data: &'a [u8],
        bridged_from: Option<SocketAddr>,
    },
    /// The instant [`CallOutput::Timeout`] named has come.
    Timeout,
    /// The relay's count of media packets from the browser, sampled now;
    /// a count that stops moving for the RTP timeout ends the call.
    MediaProgress {
        browser_packets: u64,
    },
    /// The relay could not take the call's media plan.
    MediaFailed,
    /// The far end rings (180 without SDP).
    FarRinging,
    /// The far end's SDP in a 183: early media.
    FarEarlySdp(&'a str),
    /// The far end answered with this SDP (or repeats it after early media).
    FarAnsweredSdp(&'a str),
    /// The far end answered with media it describes itself (the echo).
    FarAnsweredMedia(FarMedia),
    /// The far end refused the call (a status ≥ 300) or hung up.
    FarEnded {
        status: Option<u16>,
    },
    /// The far end could not be reached or failed.
    FarFailed {
        status: Option<u16>,
    },
    /// The far end's re-INVITE or UPDATE offers this SDP, or (None) a
    /// re-INVITE without SDP asks for our offer.
    FarOffer(Option<&'a str>),
    /// The ACK to our offer in a 2xx, with the far end's answer (None: it
    /// brought none).
    FarAckAnswer(Option<&'a str>),
    /// The far end confirmed our hold or resume.
    FarHoldChanged {
        held: bool,
        by: Party,
    },
    /// A DTMF digit from the far end.
    FarDtmf(char),
    /// How the far end takes our transfer.
    FarTransfer(TransferProgress),
    /// The switch's remote call control (NOTIFY talk / hold).
    FarRemoteControl(RemoteControl),
    /// The far end's REFER asks us to call its target in its place (the
    /// target passed the routing rules already).
    FarReferred,
    /// The call's far end is a new dialog now (a followed REFER was
    /// answered): its answer to our offer moves the media there.
    FarReplaced(&'a str),
    /// The browser transfers the answered call: blind to a number, or
    /// attended, joining its far end with another call's.
    BrowserTransfer(TransferTarget),
    /// The browser's other call was joined with this one's far end by an
    /// attended transfer that succeeded: this one ends as transferred.
    Transferred,
    /// The SIP session timer ran out; the SIP side sent BYE.
    FarSessionExpired,
    /// The browser hangs up (or its session ended).
    Hangup,
    /// The browser asks for hold or its end.
    Hold,
    Resume,
    /// The browser's answer to our offer for an incoming call (`sdp` None
    /// after [`CallInput::BrowserProgress`] gave it already), with the
    /// page's call-data headers for our 200.
    BrowserAnswer {
        sdp: Option<&'a str>,
        headers: Vec<(String, String)>,
    },
    /// The browser's answer to our offer for an incoming call, for early
    /// media: the far end gets our 183 and media flows both ways before
    /// the call is answered.
    BrowserProgress(&'a str),
    /// The browser refuses an incoming call with this status.
    BrowserReject {
        status: u16,
    },
}

/// How the web leg is keyed once the browser has our SDP.
#[derive(Clone)]
pub enum LegKeying {
    Dtls {
        identity: DtlsIdentity,
        peer_fingerprint: Fingerprint,
        /// We send the ClientHello.
        active: bool,
    },
    /// SDES: the keys are known up front and go to the relay at once.
    Sdes,
}

impl LegKeying {
    pub fn as_str(&self) -> &'static str {
        match self {
            LegKeying::Dtls { .. } => "dtls",
            LegKeying::Sdes => "sdes",
        }
    }
}

/// Everything needed to start the web leg when our SDP reaches the browser.
#[derive(Clone)]
pub struct WebLegSpec {
    pub local_ice: IceCredentials,
    pub remote_ice: IceCredentials,
    pub keying: LegKeying,
    /// ICE consent freshness (RFC 7675): no valid check for this long ends the call.
    pub consent_timeout: Duration,
    /// No media from the browser for this long (after the leg is up) ends the call.
    pub rtp_timeout: Duration,
}

/// Errors of API commands that the call's state refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the call is {0}; that request needs an answered call")]
    NotAnswered(&'static str),
    #[error("the call has ended")]
    Ended,
    #[error("the call is already on hold")]
    AlreadyHeld,
    #[error("the call is not on hold")]
    NotHeld,
    #[error("the call is {0}; only an incoming call can be answered or rejected")]
    NotIncoming(&'static str),
    #[error("early media toward callers is off ([sip] early-media = false)")]
    EarlyMediaDisabled,
    #[error("the caller's INVITE carried no SDP offer, so early media has nothing to answer")]
    EarlyMediaNeedsOffer,
    #[error("the browser's SDP answer is missing")]
    AnswerMissing,
    #[error("a transfer of this call is under way already")]
    TransferInProgress,
}

/// Why the call refused an input (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("{0}")]
    Sdp(#[from] SdpError),
}

pub struct Call {
    id: String,
    state: CallState,
    /// The far end called (the browser answers).
    inbound: bool,
    /// Inbound: the browser may send early media before it answers
    /// (`[sip] early-media`).
    early_media_allowed: bool,
    /// The web leg to start and our SDP for the browser, once the far end's
    /// SDP made them (sent with the answer or early media).
    answer: Option<(WebLegSpec, String)>,
    leg: Option<WebLeg>,
    held_by: Option<Party>,
    /// Browser packets counted by the relay, and when that count last moved.
    media_seen: u64,
    media_moved_at: Option<Instant>,
    /// The browser's packet count when the relay got the leg's current
    /// DTLS keys: packets past it authenticated with them.
    keys_at: Option<u64>,
    /// Inbound: when an unanswered call gives up (480).
    ring_deadline: Option<Instant>,
    /// Offer/answer for both legs (none: the answer is prepared by hand).
    negotiator: Option<Negotiator>,
    /// Our SDP for the far end's 200, once the browser has answered.
    sip_answer: Option<String>,
    /// The browser's transfer under way.
    transfer: Option<Transfer>,
    outputs: VecDeque<CallOutput>,
}

/// A transfer under way: what it replaces (attended), whether the far end
/// took it, and when it fails for want of an outcome.
struct Transfer {
    replacing: Option<String>,
    accepted: bool,
    deadline: Instant,
}

/// How long a transfer may take from our REFER to the target's answer
/// (the target may ring a long time); then it has failed.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

impl Call {
    /// An outbound call from the browser; the far end has been asked.
    pub fn outbound(id: String) -> Self {
        Call {
            id,
            state: CallState::Calling,
            inbound: false,
            early_media_allowed: false,
            answer: None,
            leg: None,
            held_by: None,
            media_seen: 0,
            keys_at: None,
            media_moved_at: None,
            ring_deadline: None,
            negotiator: None,
            sip_answer: None,
            transfer: None,
            outputs: VecDeque::new(),
        }
    }

    /// The call negotiates its media with `negotiator` (made with the
    /// first offer; see [`negotiate`]).
    pub fn with_negotiator(mut self, negotiator: Negotiator) -> Self {
        self.negotiator = Some(negotiator);
        self
    }

    /// A call from the far end for this browser: `web_offer` is our offer
    /// to the browser; unanswered after `ring_timeout` it is refused with 480.
    pub fn inbound(
        id: String,
        caller: IncomingCaller,
        web_offer: String,
        ring_timeout: Duration,
        now: Instant,
    ) -> Self {
        let mut call = Call::outbound(id);
        call.state = CallState::Incoming;
        call.inbound = true;
        call.ring_deadline = Some(now + ring_timeout);
        call.notify(SessionEvent::CallIncoming {
            call: call.id.clone(),
            caller,
            sdp: web_offer,
        });
        call
    }

    /// The browser may answer an incoming call with early media first
    /// ([`CallInput::BrowserProgress`]).
    pub fn allow_early_media(mut self, allowed: bool) -> Self {
        self.early_media_allowed = allowed;
        self
    }

    /// An incoming call the browser has not answered yet: ringing, or in
    /// early media of its own.
    fn awaits_browser_answer(&self) -> bool {
        self.inbound && matches!(self.state, CallState::Incoming | CallState::EarlyMedia)
    }

    /// The browser answered an incoming call ([`Call::prepare_answer`] first,
    /// with the leg its answer describes): the far end gets our 200.
    fn browser_answered(
        &mut self,
        now: Instant,
        headers: Vec<(String, String)>,
    ) -> Result<(), CallError> {
        if !self.awaits_browser_answer() {
            return Err(self.not_incoming());
        }
        if self.answer.is_none() {
            self.end(EndReason::Error, None, true);
            return Err(CallError::Ended);
        }
        self.state = CallState::Answered;
        self.ring_deadline = None;
        let sdp = self.sip_answer.take().unwrap_or_default();
        self.outputs
            .push_back(CallOutput::Far(FarRequest::Accept { sdp, headers }));
        self.notify(SessionEvent::CallAnswered {
            call: self.id.clone(),
            sdp: None,
        });
        self.start_leg(now);
        Ok(())
    }

    /// The browser's answer to our offer for an incoming call: negotiated
    /// (a bad answer is refused and changes nothing), then the media plan
    /// goes out, the far end gets our 200 and the web leg starts.
    /// After early media of its own the browser's answer stands: `sdp`
    /// may be left out (one given is not read again).
    fn browser_answer(
        &mut self,
        now: Instant,
        sdp: Option<&str>,
        headers: Vec<(String, String)>,
    ) -> Result<(), Refused> {
        if !self.awaits_browser_answer() {
            return Err(self.not_incoming().into());
        }
        if self.state == CallState::Incoming {
            self.negotiate_browser_answer(sdp.ok_or(CallError::AnswerMissing)?)?;
        }
        Ok(self.browser_answered(now, headers)?)
    }

    /// The browser's answer to our offer, negotiated (a bad one is refused
    /// and changes nothing): the media plan goes out.
    fn negotiate_browser_answer(&mut self, sdp: &str) -> Result<(), Refused> {
        let negotiator = self
            .negotiator
            .as_mut()
            .ok_or(CallError::NotIncoming("outbound"))?;
        let plan = negotiator.browser_answered(sdp)?;
        self.sip_answer = plan.sip_sdp.clone();
        self.accept_plan(plan);
        Ok(())
    }

    /// The browser answers an incoming call for early media: negotiated
    /// as an answer is, then the far end gets our 183 with our SDP, the web
    /// leg starts and media flows both ways; the call stays unanswered
    /// (it may still be rejected, cancelled or time out) until
    /// [`CallInput::BrowserAnswer`].
    fn browser_progress(&mut self, now: Instant, sdp: &str) -> Result<(), Refused> {
        if !(self.inbound && self.state == CallState::Incoming) {
            return Err(self.not_incoming().into());
        }
        if !self.early_media_allowed {
            return Err(CallError::EarlyMediaDisabled.into());
        }
        if !self
            .negotiator
            .as_ref()
            .is_some_and(Negotiator::far_offered)
        {
            return Err(CallError::EarlyMediaNeedsOffer.into());
        }
        self.negotiate_browser_answer(sdp)?;
        let sdp = self.sip_answer.clone().unwrap_or_default();
        self.state = CallState::EarlyMedia;
        self.outputs
            .push_back(CallOutput::Far(FarRequest::Progress { sdp }));
        self.start_leg(now);
        Ok(())
    }

    /// The browser refused an incoming call.
    fn browser_rejected(&mut self, status: u16) -> Result<(), CallError> {
        if !self.awaits_browser_answer() {
            return Err(self.not_incoming());
        }
        self.outputs
            .push_back(CallOutput::Far(FarRequest::Refuse(status)));
        self.end(EndReason::Rejected, Some(status), false);
        Ok(())
    }

    fn not_incoming(&self) -> CallError {
        match self.state {
            CallState::Ended => CallError::Ended,
            other => CallError::NotIncoming(other.as_str()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The far end's SDP has been negotiated: this is the browser's leg and
    /// answer, used by the next early media or answer.
    fn prepare_answer(&mut self, spec: WebLegSpec, web_sdp: String) {
        if self.answer.is_none() {
            self.answer = Some((spec, web_sdp));
        }
    }

    fn web_sdp(&self) -> Option<String> {
        self.answer.as_ref().map(|(_, sdp)| sdp.clone())
    }

    fn rtp_timeout(&self) -> Duration {
        self.answer
            .as_ref()
            .map_or(Duration::from_secs(30), |(spec, _)| spec.rtp_timeout)
    }

    pub fn state(&self) -> CallState {
        self.state
    }

    pub fn held_by(&self) -> Option<Party> {
        self.held_by
    }

    /// Everything the call is told goes through here. Inputs that the
    /// call's state refuses (a command at the wrong time, an SDP that
    /// cannot be used) change nothing and say why.
    pub fn handle_input(&mut self, now: Instant, input: CallInput<'_>) -> Result<(), Refused> {
        match input {
            CallInput::WebPacket {
                from,
                to,
                data,
                bridged_from,
            } => self.handle_web_packet(now, from, to, data, bridged_from),
            CallInput::Timeout => self.handle_timeout(now),
            CallInput::MediaProgress { browser_packets } => {
                self.media_progress(now, browser_packets)
            }
            CallInput::MediaFailed => self.media_failed(),
            CallInput::FarRinging => self.far_ringing(),
            CallInput::FarEarlySdp(sdp) => self.far_progress_sdp(now, sdp),
            CallInput::FarAnsweredSdp(sdp) => self.far_answered_sdp(now, sdp),
            CallInput::FarAnsweredMedia(far) => self.far_answered_media(now, far)?,
            CallInput::FarEnded { status } => self.far_ended(status),
            CallInput::FarSessionExpired => {
                if self.state != CallState::Ended {
                    self.end(EndReason::SessionExpired, None, false);
                }
            }
            CallInput::FarFailed { status } => self.far_failed(status),
            CallInput::FarOffer(sdp) => self.far_offer(sdp),
            CallInput::FarAckAnswer(sdp) => self.far_ack_answer(sdp),
            CallInput::FarHoldChanged { held, by } => self.far_hold_changed(held, by),
            CallInput::FarDtmf(digit) => self.far_dtmf(digit),
            CallInput::FarTransfer(progress) => self.far_transfer(progress),
            CallInput::FarRemoteControl(control) => self.far_remote_control(control),
            CallInput::BrowserTransfer(target) => self.browser_transfer(now, target)?,
            CallInput::FarReferred => self.far_referred(),
            CallInput::FarReplaced(sdp) => self.far_ack_answer(Some(sdp)),
            CallInput::Transferred => {
                if self.state != CallState::Ended {
                    self.end(EndReason::Transferred, None, true);
                }
            }
            CallInput::Hangup => self.hangup(),
            CallInput::Hold => self.hold()?,
            CallInput::Resume => self.resume()?,
            CallInput::BrowserAnswer { sdp, headers } => self.browser_answer(now, sdp, headers)?,
            CallInput::BrowserProgress(sdp) => self.browser_progress(now, sdp)?,
            CallInput::BrowserReject { status } => self.browser_rejected(status)?,
        }
        Ok(())
    }

    /// What to do next, in order; [`CallOutput::Timeout`] once nothing is
    /// left, naming when the call next needs [`CallInput::Timeout`].
    pub fn poll_output(&mut self) -> CallOutput {
        self.outputs
            .pop_front()
            .unwrap_or_else(|| CallOutput::Timeout(self.next_timeout()))
    }

    /// The earliest instant the call has work to do at.
    fn next_timeout(&self) -> Option<Instant> {
        if self.state == CallState::Ended {
            return None;
        }
        let leg = self.leg.as_ref().and_then(WebLeg::next_timeout);
        let media = self.media_moved_at.map(|at| at + self.rtp_timeout());
        let transfer = self.transfer.as_ref().map(|t| t.deadline);
        [leg, media, self.ring_deadline, transfer]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.state == CallState::Ended {
            return;
        }
        if self.ring_deadline.is_some_and(|at| now >= at) {
            self.ring_deadline = None;
            self.outputs
                .push_back(CallOutput::Far(FarRequest::Refuse(480)));
            self.end(EndReason::Cancelled, Some(480), false);
            return;
        }
        if self.transfer.as_ref().is_some_and(|t| now >= t.deadline) {
            self.far_transfer(TransferProgress::Failed(None));
        }
        if let Some(leg) = self.leg.as_mut() {
            leg.handle_input(now, WebLegInput::Timeout);
        }
        self.drain_leg();
        if self
            .media_moved_at
            .is_some_and(|at| now >= at + self.rtp_timeout())
        {
            self.end(EndReason::MediaTimeout, None, true);
        }
    }

    /// A STUN or DTLS datagram from the browser's `from` to our address
    /// `to` (the relay hands them over).
    fn handle_web_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: Option<IpAddr>,
        data: &[u8],
        bridged_from: Option<SocketAddr>,
    ) {
        if self.state == CallState::Ended {
            return;
        }
        if let Some(leg) = self.leg.as_mut() {
            let packet = WebLegInput::Packet {
                from,
                to,
                data,
                bridged_from,
            };
            leg.handle_input(now, packet);
        }
        self.drain_leg();
    }

    /// The relay's count of media packets from the browser, sampled now.
    /// A count that stops moving for `rtp_timeout` ends the call.
    fn media_progress(&mut self, now: Instant, browser_packets: u64) {
        if self.leg.is_none() || self.state == CallState::Ended {
            return;
        }
        if browser_packets != self.media_seen || self.media_moved_at.is_none() {
            self.media_seen = browser_packets;
            self.media_moved_at = Some(now);
        }
        // The relay counts only packets whose SRTP authenticated: past the
        // count when the keys came, with those keys.
        if self.keys_at.is_some_and(|at| browser_packets > at) {
            if let Some(leg) = self.leg.as_mut() {
                leg.media_authenticated();
            }
        }
    }

    /// The far end's SDP in a 183: negotiated (once), then early media.
    /// An SDP that cannot be used ends the call (488 for the browser, and
    /// the far end is told).
    fn far_progress_sdp(&mut self, now: Instant, sdp: &str) {
        if self.take_far_sdp(sdp) {
            self.far_early_media(now);
        }
    }

    /// The far end answered with `sdp` (after early media it may repeat it).
    fn far_answered_sdp(&mut self, now: Instant, sdp: &str) {
        if self.take_far_sdp(sdp) {
            self.far_answered(now);
        }
    }

    /// The far end answered with media it describes itself (the built-in
    /// echo). A refusal changes nothing.
    fn far_answered_media(&mut self, now: Instant, far: FarMedia) -> Result<(), SdpError> {
        let negotiator = self
            .negotiator
            .as_mut()
            .ok_or_else(|| SdpError::Internal("the call negotiates nothing".into()))?;
        let plan = negotiator.far_answered(far)?;
        self.accept_plan(plan);
        self.far_answered(now);
        Ok(())
    }

    /// Negotiates the far end's answer unless that is done; false when the
    /// call could not go on.
    fn take_far_sdp(&mut self, sdp: &str) -> bool {
        let Some(negotiator) = self.negotiator.as_mut() else {
            return self.answer.is_some();
        };
        if negotiator.is_done() {
            return true;
        }
        match negotiator.far_answered_sdp(sdp) {
            Ok(plan) => {
                self.accept_plan(plan);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the far end's SDP is unusable");
                self.far_media_unusable(488);
                false
            }
        }
    }

    /// A negotiated plan: the browser's leg and answer are ready, and the
    /// plan goes to the driver first, before any packet of the leg.
    fn accept_plan(&mut self, plan: MediaPlan) {
        self.prepare_answer(plan.leg.clone(), plan.web_sdp.clone().unwrap_or_default());
        self.outputs
            .push_back(CallOutput::ConnectMedia(Box::new(plan)));
    }

    /// The relay could not take the call's media: the call ends (the far
    /// end is told).
    fn media_failed(&mut self) {
        if self.state != CallState::Ended {
            self.end(EndReason::Error, None, true);
        }
    }

    /// The far end rings (180 without SDP).
    fn far_ringing(&mut self) {
        if self.state == CallState::Calling {
            self.state = CallState::Ringing;
            self.notify(SessionEvent::CallRinging {
                call: self.id.clone(),
            });
        }
    }

    /// The far end sends early media (183 with SDP): the browser gets our
    /// answer now ([`Call::prepare_answer`] first).
    fn far_early_media(&mut self, now: Instant) {
        if !matches!(self.state, CallState::Calling | CallState::Ringing) {
            return;
        }
        let Some(sdp) = self.web_sdp() else {
            return self.end(EndReason::Error, None, true);
        };
        self.state = CallState::EarlyMedia;
        self.notify(SessionEvent::CallEarlyMedia {
            call: self.id.clone(),
            sdp,
        });
        self.start_leg(now);
    }

    /// The far end answered ([`Call::prepare_answer`] first).
    fn far_answered(&mut self, now: Instant) {
        if !matches!(
            self.state,
            CallState::Calling | CallState::Ringing | CallState::EarlyMedia
        ) {
            return;
        }
        let Some(sdp) = self.web_sdp() else {
            return self.end(EndReason::Error, None, true);
        };
        // After early media the browser has our SDP already; it comes again
        // so a client that missed early media can still apply it.
        let early = self.state == CallState::EarlyMedia;
        self.state = CallState::Answered;
        self.notify(SessionEvent::CallAnswered {
            call: self.id.clone(),
            sdp: Some(sdp),
        });
        if !early {
            self.start_leg(now);
        }
    }

    /// The far end ended the call: refused it (`status` ≥ 300 before an
    /// answer) or hung up.
    fn far_ended(&mut self, status: Option<u16>) {
        let reason = match self.state {
            // Some switches hang up on the transferor once they have taken
            // the REFER, before its outcome.
            CallState::Answered if self.transfer.as_ref().is_some_and(|t| t.accepted) => {
                EndReason::Transferred
            }
            CallState::Answered => EndReason::RemoteHangup,
            CallState::Ended => return,
            _ if status == Some(487) => EndReason::Cancelled,
            _ => EndReason::Rejected,
        };
        self.end(reason, status, false);
    }

    /// The far end could not be reached or failed.
    fn far_failed(&mut self, status: Option<u16>) {
        self.end(EndReason::Error, status, false);
    }

    /// The far end's SDP (in a 18x or 200) cannot be used: the call ends
    /// with `status` for the browser, and the far end is told (CANCEL
    /// before its 200, BYE after).
    fn far_media_unusable(&mut self, status: u16) {
        if self.state != CallState::Ended {
            self.end(EndReason::Error, Some(status), true);
        }
    }

    /// The far end's re-INVITE or UPDATE: its offer answered (the media
    /// moves, the hold state follows its direction), or our offer made for
    /// a re-INVITE without SDP. An offer the call cannot take is refused
    /// with 488 and changes nothing.
    fn far_offer(&mut self, sdp: Option<&str>) {
        // Early media is an agreed exchange too: an UPDATE in the early
        // dialog may move it.
        if !matches!(self.state, CallState::Answered | CallState::EarlyMedia) {
            // A dialog hands offers over only once it is confirmed.
            self.outputs
                .push_back(CallOutput::Far(FarRequest::AnswerOffer(Err(491))));
            return;
        }
        let Some(negotiator) = self.negotiator.as_mut() else {
            self.outputs
                .push_back(CallOutput::Far(FarRequest::AnswerOffer(Err(488))));
            return;
        };
        let answer = match sdp {
            Some(sdp) => negotiator.far_reoffer(sdp).map(|r| (r.sdp, Some(r.moved))),
            None => {
                let direction = if self.held_by == Some(Party::Local) {
                    crate::sdp::Direction::SendOnly
                } else {
                    crate::sdp::Direction::SendRecv
                };
                negotiator.offer_current(direction).map(|sdp| (sdp, None))
            }
        };
        match answer {
            Ok((sdp, moved)) => {
                if let Some(moved) = moved {
                    self.far_moved(moved);
                }
                self.outputs
                    .push_back(CallOutput::Far(FarRequest::AnswerOffer(Ok(sdp))));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the far end's new offer is refused");
                self.outputs
                    .push_back(CallOutput::Far(FarRequest::AnswerOffer(Err(488))));
            }
        }
    }

    /// The ACK to our offer: its answer moves the media there. No answer,
    /// or one the call cannot use, ends the call (BYE): its media would
    /// have nowhere to go.
    fn far_ack_answer(&mut self, sdp: Option<&str>) {
        if self.state == CallState::Ended {
            return;
        }
        let moved = match (sdp, self.negotiator.as_mut()) {
            (Some(sdp), Some(negotiator)) => negotiator.far_answered_in_ack(sdp),
            _ => Err(SdpError::Syntax(
                "the ACK to our offer carries no SDP answer".into(),
            )),
        };
        match moved {
            Ok(moved) => self.far_moved(moved),
            Err(e) => {
                tracing::warn!(error = %e, "the far end's answer in its ACK is unusable");
                self.end(EndReason::Error, None, true);
            }
        }
    }

    /// The far end's media is now `moved`: the relay is told first, then
    /// the hold state follows what its SDP says (unless the hold is ours).
    fn far_moved(&mut self, moved: FarMove) {
        let held = moved.far.holds();
        // A refresh or a direction change alone leaves the relay (and its
        // latch) as it is.
        if moved.changed {
            self.outputs
                .push_back(CallOutput::MoveFarMedia(Box::new(moved)));
        }
        if self.held_by != Some(Party::Local) {
            self.far_hold_changed(held, Party::Remote);
        }
    }

    /// The hold state changed: a remote re-INVITE, or the far end confirmed ours.
    fn far_hold_changed(&mut self, held: bool, by: Party) {
        if self.state != CallState::Answered {
            return;
        }
        match (held, self.held_by) {
            (true, None) => {
                self.held_by = Some(by);
                self.notify(SessionEvent::CallHeld {
                    call: self.id.clone(),
                    by: by.as_str().into(),
                });
            }
            (false, Some(_)) => {
                self.held_by = None;
                self.notify(SessionEvent::CallResumed {
                    call: self.id.clone(),
                    by: by.as_str().into(),
                });
            }
            _ => {}
        }
    }

    /// A DTMF digit from the far end.
    fn far_dtmf(&mut self, digit: char) {
        if matches!(self.state, CallState::Answered | CallState::EarlyMedia) {
            self.notify(SessionEvent::CallDtmf {
                call: self.id.clone(),
                digit: digit.to_string(),
            });
        }
    }

    /// The browser transfers the answered call: the far end gets our
    /// REFER; its outcome comes as `call.transfer` events, and success
    /// ends the call as transferred.
    fn browser_transfer(&mut self, now: Instant, target: TransferTarget) -> Result<(), CallError> {
        self.require_answered()?;
        if self.transfer.is_some() {
            return Err(CallError::TransferInProgress);
        }
        self.transfer = Some(Transfer {
            replacing: match &target {
                TransferTarget::Replacing(other) => Some(other.clone()),
                TransferTarget::To(_) => None,
            },
            accepted: false,
            deadline: now + TRANSFER_TIMEOUT,
        });
        self.outputs
            .push_back(CallOutput::Far(FarRequest::Transfer(target)));
        Ok(())
    }

    /// How the far end takes our transfer: `call.transfer` events; success
    /// ends the call (BYE) as transferred, and the other call of an
    /// attended transfer with it; a failure leaves the call as it is.
    fn far_transfer(&mut self, progress: TransferProgress) {
        if self.state != CallState::Answered {
            return;
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let (state, sip_status) = match progress {
            TransferProgress::Accepted => {
                transfer.accepted = true;
                ("accepted", None)
            }
            TransferProgress::Trying(status) => ("trying", Some(status)),
            TransferProgress::Failed(status) => {
                self.transfer = None;
                ("failed", status)
            }
            TransferProgress::Succeeded => {
                if let Some(other) = transfer.replacing.take() {
                    self.outputs.push_back(CallOutput::EndReplacedCall(other));
                }
                self.end(EndReason::Transferred, None, true);
                return;
            }
        };
        self.notify(SessionEvent::CallTransfer {
            call: self.id.clone(),
            state: state.into(),
            sip_status,
        });
    }

    /// The far end's REFER: followed with our offer of the media as it
    /// stands (sendonly while we hold the call), so the browser leg stays
    /// as it is; refused (603) unless the call is answered, or (488) when
    /// it has no media to offer.
    fn far_referred(&mut self) {
        let request = match (self.state, self.negotiator.as_mut()) {
            (CallState::Answered, Some(negotiator)) => {
                let direction = if self.held_by == Some(Party::Local) {
                    crate::sdp::Direction::SendOnly
                } else {
                    crate::sdp::Direction::SendRecv
                };
                match negotiator.offer_current(direction) {
                    Ok(sdp) => FarRequest::FollowRefer(sdp),
                    Err(e) => {
                        tracing::warn!(error = %e, "no offer for the REFER's call");
                        FarRequest::RefuseRefer(488)
                    }
                }
            }
            (CallState::Answered, None) => FarRequest::RefuseRefer(488),
            _ => FarRequest::RefuseRefer(603),
        };
        self.outputs.push_back(CallOutput::Far(request));
    }

    /// The switch's remote call control: `talk` asks for a ringing call to
    /// be answered (the page hears `call.answer_requested`; only it can
    /// answer) or a call we hold to be resumed; `hold` holds an answered
    /// call as if the browser had asked.
    fn far_remote_control(&mut self, control: RemoteControl) {
        match control {
            RemoteControl::Talk if self.awaits_browser_answer() => {
                self.notify(SessionEvent::CallAnswerRequested {
                    call: self.id.clone(),
                });
            }
            RemoteControl::Talk if self.held_by == Some(Party::Local) => {
                let _ = self.resume();
            }
            RemoteControl::Hold if self.state == CallState::Answered && self.held_by.is_none() => {
                let _ = self.hold();
            }
            _ => {}
        }
    }

    /// The browser hangs up (or its session ended).
    fn hangup(&mut self) {
        if self.state != CallState::Ended {
            self.end(EndReason::Hangup, None, true);
        }
    }

    /// The browser asks for hold; the far end's confirmation comes back
    /// through [`Call::far_hold_changed`].
    fn hold(&mut self) -> Result<(), CallError> {
        self.require_answered()?;
        if self.held_by.is_some() {
            return Err(CallError::AlreadyHeld);
        }
        self.outputs.push_back(CallOutput::Far(FarRequest::Hold));
        Ok(())
    }

    fn resume(&mut self) -> Result<(), CallError> {
        self.require_answered()?;
        if self.held_by.is_none() {
            return Err(CallError::NotHeld);
        }
        self.outputs.push_back(CallOutput::Far(FarRequest::Resume));
        Ok(())
    }

    /// The browser's new offer for a call whose media is up (answered or
    /// in early media): our answer; when it restarts ICE, the leg takes the
    /// new credentials and the call, its SIP dialog and its SRTP go on;
    /// when it also brings a new certificate (a new peer connection), a new
    /// DTLS handshake gives the relay new keys. A refusal changes nothing.
    pub fn browser_reoffer(&mut self, now: Instant, sdp: &str) -> Result<String, Refused> {
        match self.state {
            CallState::Answered | CallState::EarlyMedia => {}
            CallState::Ended => return Err(CallError::Ended.into()),
            other => return Err(CallError::NotAnswered(other.as_str()).into()),
        }
        let (Some(negotiator), Some(leg)) = (self.negotiator.as_mut(), self.leg.as_mut()) else {
            return Err(SdpError::Internal("the call's browser leg is not up".into()).into());
        };
        let reanswer = negotiator.browser_reoffer(sdp)?;
        if let Some((fingerprint, active)) = reanswer.dtls_restart {
            let Some((spec, _)) = self.answer.as_mut() else {
                return Err(SdpError::Internal("the call's browser leg is not up".into()).into());
            };
            let LegKeying::Dtls {
                identity,
                peer_fingerprint,
                active: ours_active,
            } = &mut spec.keying
            else {
                return Err(SdpError::Internal("a DTLS restart on an SDES leg".into()).into());
            };
            if let Err(e) = leg.restart_dtls(identity, fingerprint.clone(), active, now) {
                return Err(SdpError::Internal(format!("no new DTLS association: {e}")).into());
            }
            *peer_fingerprint = fingerprint;
            *ours_active = active;
            self.keys_at = None;
            tracing::info!(call = %self.id, "new DTLS association from the browser");
        }
        if let Some((local, remote)) = reanswer.ice_restart {
            tracing::info!(call = %self.id, "ICE restart from the browser");
            self.outputs
                .push_back(CallOutput::IceCredentials(local.clone()));
            leg.restart_ice(local, remote);
        }
        self.drain_leg();
        Ok(reanswer.sdp)
    }

    pub fn require_answered(&self) -> Result<(), CallError> {
        match self.state {
            CallState::Answered => Ok(()),
            CallState::Ended => Err(CallError::Ended),
            other => Err(CallError::NotAnswered(other.as_str())),
        }
    }

    fn notify(&mut self, event: SessionEvent) {
        self.outputs.push_back(CallOutput::Notify(event));
    }

    fn start_leg(&mut self, now: Instant) {
        if self.leg.is_some() {
            return;
        }
        let Some((s, _)) = &self.answer else {
            return;
        };
        let leg = match &s.keying {
            LegKeying::Dtls {
                identity,
                peer_fingerprint,
                active,
            } => WebLeg::with_dtls(
                s.local_ice.clone(),
                s.remote_ice.clone(),
                s.consent_timeout,
                identity,
                peer_fingerprint.clone(),
                *active,
                now,
            ),
            LegKeying::Sdes => Ok(WebLeg::with_sdes(
                s.local_ice.clone(),
                s.remote_ice.clone(),
                s.consent_timeout,
                now,
            )),
        };
        match leg {
            Ok(leg) => {
                self.leg = Some(leg);
                self.media_moved_at = Some(now);
                self.drain_leg();
            }
            Err(_) => self.end(EndReason::Error, None, true),
        }
    }

    fn drain_leg(&mut self) {
        let Some(leg) = self.leg.as_mut() else {
            return;
        };
        let mut failure = None;
        loop {
            match leg.poll_output() {
                WebLegEvent::Timeout(_) => break,
                WebLegEvent::Transmit { to, from, data } => self
                    .outputs
                    .push_back(CallOutput::Transmit { to, from, data }),
                WebLegEvent::Selected(pair) => {
                    self.outputs.push_back(CallOutput::MediaRemote(pair))
                }
                WebLegEvent::Keys(keys) => {
                    self.keys_at = Some(self.media_seen);
                    self.outputs.push_back(CallOutput::MediaKeys(keys));
                }
                WebLegEvent::Failed(_) => failure = failure.or(Some(EndReason::Error)),
                WebLegEvent::MediaTimeout => failure = Some(EndReason::MediaTimeout),
            }
        }
        if let Some(reason) = failure {
            self.end(reason, None, true);
        }
    }

    /// Ends the call once; `tell_far`: the far end still needs a CANCEL/BYE.
    fn end(&mut self, reason: EndReason, sip_status: Option<u16>, tell_far: bool) {
        if self.state == CallState::Ended {
            return;
        }
        let answered = self.state == CallState::Answered;
        self.state = CallState::Ended;
        self.leg = None;
        self.transfer = None;
        if tell_far {
            self.outputs
                .push_back(CallOutput::Far(FarRequest::Hangup { answered }));
        }
        self.notify(SessionEvent::CallEnded {
            call: self.id.clone(),
            reason: reason.as_str().into(),
            sip_status,
        });
        self.outputs.push_back(CallOutput::Finished(reason));
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod transcode_tests;
