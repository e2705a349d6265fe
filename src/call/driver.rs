//! The tokio side of calls: the media plane (relay, ports, DTLS identity),
//! the registry of live calls, and one task per call that feeds its
//! [`Call`] and carries out what it asks.
//!
//! The relay hands STUN/DTLS datagrams and received DTMF digits to one
//! channel; a dispatcher thread routes them to the call's task by relay id.
//! Those are control packets (a few per second per call), never media.
//! Every way a call ends goes through the task's single exit, which removes
//! the call from the registry and drops its relay handle: the relay closes
//! the sockets and the port leases go back to their ranges.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::negotiate::{
    self, CallCodecs, FarMedia, FarMove, FarOffer, MediaPlan, NegotiationContext, Negotiator,
    OutboundPlan,
};
use super::{
    Call, CallError, CallInput, CallOutput, CallState, FarRequest, LegKeying, Party, Refused,
};
use crate::config::{SrtpPolicy, TranscodePolicy};
use crate::echo::{self, Echo};
use crate::media::batch::send_from;
use crate::media::ports::BoundPorts;
use crate::media::ports::{PortAllocator, PortError};
use crate::media::relay::{CallMedia, CallMediaSetup, Relay, RelayError, RelayEvent, SipFar};
use crate::media::srtp::SrtpContext;
use crate::media::stats::{CallStats, LegSnapshot};
use crate::random::Random;
use crate::sdp::SdpError;
use crate::session::{CallerIdentity, IncomingCaller, SessionEvent};
use crate::sip::caller_id::OutgoingCaller;
use crate::sip::dialog::DialogEvent;
use crate::sip::driver::DialogEvents;
use crate::sip::driver::IncomingCall;
use crate::sip::driver::SipHandle;
use crate::sip::transfer::{TransferProgress, TransferTarget};
use crate::webrtc::dtls::DtlsIdentity;

/// How often the relay's packet counters are sampled for the RTP timeout.
const MEDIA_SAMPLE: Duration = Duration::from_secs(1);
/// Control packets waiting for the dispatcher before the relay drops them.
const RELAY_EVENT_QUEUE: usize = 4096;

/// Why a call could not be started. Nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Sdp(#[from] SdpError),
    #[error("{0}")]
    Ports(#[from] PortError),
    #[error("cannot set up the call's media: {0}")]
    Media(String),
    #[error("{0}")]
    Limit(#[from] CallLimit),
}

/// Why a request on a live call was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    State(#[from] CallError),
    #[error("{0}")]
    Dtmf(String),
    #[error("no telephone-event was negotiated for this call, so DTMF cannot be sent")]
    NoTelephoneEvent,
    #[error("{0}")]
    BadSdp(#[from] SdpError),
    #[error("cannot set up the call's media: {0}")]
    Media(String),
}

impl From<Refused> for CommandError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::Call(e) => CommandError::State(e),
            Refused::Sdp(e) => CommandError::BadSdp(e),
        }
    }
}

/// A request from the API to a call's task.
#[derive(Debug)]
pub enum Command {
    Hangup,
    Hold,
    Resume,
    Dtmf {
        digits: String,
        duration: Duration,
    },
    /// The browser's answer to our offer of an incoming call (None: the
    /// one it gave for early media stands), with call-data headers for
    /// our 200 (checked already).
    Answer {
        sdp: Option<String>,
        headers: Vec<(String, String)>,
    },
    /// The browser's answer to our offer of an incoming call, for early
    /// media before it answers.
    Progress {
        sdp: String,
    },
    Reject {
        status: u16,
    },
    /// Transfer the answered call (REFER): blind, or attended replacing
    /// the session's other call.
    Transfer(TransferTarget),
    /// The session's other call was joined with this one's far end by an
    /// attended transfer: end as transferred.
    Transferred,
    /// The browser's new offer (an ICE restart); our answer goes to `reply`.
    Renegotiate {
        sdp: String,
        reply: oneshot::Sender<String>,
    },
}

/// What a call's task is handed. Boxed: a call's channel holds a block of
/// 32 of these from its start, 88 bytes each unboxed (2.8 KiB a call for
/// inputs that are rare: STUN, DTLS, DTMF and the API's commands).
enum Input {
    Relay(Box<RelayEvent>),
    Command(Box<(Command, CommandReply)>),
}

type CommandReply = oneshot::Sender<Result<(), CommandError>>;

/// What `GET …/calls/{cid}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub call: String,
    pub state: &'static str,
    pub direction: &'static str,
    pub to: String,
    /// The browser leg's audio codec as `name/clock` (empty until the legs
    /// are joined).
    pub codec: String,
    /// Each leg's codec and whether the relay transcodes between them
    /// (`null` until the legs are joined).
    pub codecs: Option<CallCodecs>,
    /// The far end's RTP address as its latest SDP gives it (`null` before
    /// the media is set up; `0.0.0.0:0` until its answer in an ACK).
    pub sip_media: Option<SocketAddr>,
    /// How each leg's media is protected: web `dtls` or `sdes`, SIP `srtp`
    /// or `rtp` (empty until the legs are joined).
    pub keying: KeyingView,
    pub held: Option<&'static str>,
    /// The web leg's media path once ICE has chosen one: the browser's
    /// address and ours it sends to (and media leaves from).
    pub web_path: Option<WebPathView>,
    pub stats: CallStatsView,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct WebPathView {
    pub browser: SocketAddr,
    pub gateway: Option<IpAddr>,
    /// `udp`, or `tcp` for a browser on ICE-TCP (then both addresses are
    /// its connection's ends).
    pub transport: &'static str,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KeyingView {
    pub web: &'static str,
    pub sip: &'static str,
}

impl KeyingView {
    fn new(web: &LegKeying, sip_srtp: bool) -> Self {
        KeyingView {
            web: web.as_str(),
            sip: Self::sip_word(sip_srtp),
        }
    }

    fn sip_word(sip_srtp: bool) -> &'static str {
        if sip_srtp {
            "srtp"
        } else {
            "rtp"
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CallStatsView {
    pub web: LegSnapshot,
    pub sip: LegSnapshot,
}

struct Status {
    state: CallState,
    held: Option<Party>,
    web_path: Option<WebPathView>,
}

struct Entry {
    session: String,
    user: String,
    inbound: bool,
    to: String,
    inputs: mpsc::UnboundedSender<Input>,
    status: Arc<Mutex<Status>>,
    /// Once the relay carries the call.
    media: Option<RelayedMedia>,
}

/// What the registry knows of a call the relay carries.
struct RelayedMedia {
    relay_id: u64,
    stats: Arc<CallStats>,
    codecs: CallCodecs,
    keying: KeyingView,
    /// The far end's RTP address as its SDP gives it (unspecified until
    /// its answer comes in an ACK).
    far: SocketAddr,
}

#[derive(Default)]
struct Tables {
    calls: HashMap<String, Entry>,
    by_relay: HashMap<u64, mpsc::UnboundedSender<Input>>,
    /// Calls being set up (ports binding, the offer checked) under a
    /// [`Reservation`], so concurrent starts cannot pass a limit together.
    reserved: HashMap<u64, Reserved>,
    next_reservation: u64,
}

struct Reserved {
    session: String,
    user: String,
    inbound: bool,
}

/// How many calls a session and a user may have at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Calls of one session in any state (`http.max-calls-per-session`).
    pub per_session: usize,
    /// Outgoing calls of one session not answered yet
    /// (`http.max-ringing-calls-per-session`).
    pub ringing_out_per_session: usize,
    /// Incoming calls ringing for one user (`sip.max-ringing-calls-per-user`).
    pub ringing_in_per_user: usize,
    /// Incoming calls ringing in all (`sip.max-ringing-calls`).
    pub ringing_in_total: usize,
    /// Calls of this node in all, any state, both ways (`media.max-calls`;
    /// 0: no limit but the ports).
    pub total: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            per_session: 16,
            ringing_out_per_session: 10,
            ringing_in_per_user: 4,
            ringing_in_total: 500,
            total: 0,
        }
    }
}

/// The limit a new call would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallLimit {
    #[error("the session has {0} calls already (http.max-calls-per-session)")]
    PerSession(usize),
    #[error(
        "the session has {0} outgoing calls not answered yet (http.max-ringing-calls-per-session)"
    )]
    RingingOutPerSession(usize),
    #[error("the user has {0} incoming calls ringing already (sip.max-ringing-calls-per-user)")]
    RingingInPerUser(usize),
    #[error("{0} incoming calls are ringing already (sip.max-ringing-calls)")]
    RingingInTotal(usize),
    #[error("the gateway carries {0} calls already (media.max-calls)")]
    Total(usize),
}

/// A place for one call being set up, counted against the limits until
/// the call is registered or the set-up fails (dropped).
pub struct Reservation {
    registry: Arc<CallRegistry>,
    id: u64,
    session: String,
    user: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.registry.tables).reserved.remove(&self.id);
    }
}

/// The live calls, by call id and by relay id.
#[derive(Default)]
pub struct CallRegistry {
    tables: Mutex<Tables>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a single insert or remove.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CallRegistry {
    pub fn len(&self) -> usize {
        lock(&self.tables).calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The call `cid` if it belongs to `session`.
    pub fn view(&self, session: &str, cid: &str) -> Option<CallView> {
        let tables = lock(&self.tables);
        let e = tables.calls.get(cid).filter(|e| e.session == session)?;
        let status = lock(&e.status);
        let (codecs, keying, web, sip, sip_media) = match &e.media {
            Some(m) => (
                Some(m.codecs.clone()),
                m.keying,
                m.stats.web.snapshot(),
                m.stats.sip.snapshot(),
                Some(m.far),
            ),
            None => (
                None,
                KeyingView::default(),
                LegSnapshot::default(),
                LegSnapshot::default(),
                None,
            ),
        };
        Some(CallView {
            call: cid.to_string(),
            state: status.state.as_str(),
            direction: if e.inbound { "inbound" } else { "outbound" },
            to: e.to.clone(),
            codec: codecs.as_ref().map(|c| c.web.clone()).unwrap_or_default(),
            codecs,
            sip_media,
            keying,
            held: status.held.map(Party::as_str),
            web_path: status.web_path,
            stats: CallStatsView { web, sip },
        })
    }

    /// Sends `command` to call `cid` of `session`; `None` when there is no such call.
    pub async fn command(
        &self,
        session: &str,
        cid: &str,
        command: Command,
    ) -> Option<Result<(), CommandError>> {
        let (tx, rx) = oneshot::channel();
        {
            let tables = lock(&self.tables);
            let e = tables.calls.get(cid).filter(|e| e.session == session)?;
            e.inputs
                .send(Input::Command(Box::new((command, tx))))
                .ok()?;
        }
        rx.await.ok()
    }

    /// Reserves a place for a new call of `session` (for `user`; `inbound`
    /// when it comes from the SIP side), or names the limit it would pass.
    pub fn reserve(
        self: &Arc<Self>,
        session: &str,
        user: &str,
        inbound: bool,
        limits: &CallLimits,
    ) -> Result<Reservation, CallLimit> {
        let mut tables = lock(&self.tables);
        let mut of_session = 0;
        let mut ringing_out = 0;
        let mut ringing_in_user = 0;
        let mut ringing_in = 0;
        let all = tables.calls.len() + tables.reserved.len();
        if limits.total > 0 && all >= limits.total {
            return Err(CallLimit::Total(all));
        }
        let mut count = |e_session: &str, e_user: &str, e_inbound: bool, ringing: bool| {
            if e_session == session {
                of_session += 1;
                if !e_inbound && ringing {
                    ringing_out += 1;
                }
            }
            if e_inbound && ringing {
                ringing_in += 1;
                if e_user == user {
                    ringing_in_user += 1;
                }
            }
        };
        for e in tables.calls.values() {
            let state = lock(&e.status).state;
            let ringing = matches!(
                state,
                CallState::Incoming
                    | CallState::Calling
                    | CallState::Ringing
                    | CallState::EarlyMedia
            );
            count(&e.session, &e.user, e.inbound, ringing);
        }
        for r in tables.reserved.values() {
            count(&r.session, &r.user, r.inbound, true);
        }
        if inbound {
            if ringing_in >= limits.ringing_in_total {
                return Err(CallLimit::RingingInTotal(ringing_in));
            }
            if ringing_in_user >= limits.ringing_in_per_user {
                return Err(CallLimit::RingingInPerUser(ringing_in_user));
            }
        } else if ringing_out >= limits.ringing_out_per_session {
            return Err(CallLimit::RingingOutPerSession(ringing_out));
        }
        if of_session >= limits.per_session {
            return Err(CallLimit::PerSession(of_session));
        }
        let id = tables.next_reservation;
        tables.next_reservation += 1;
        tables.reserved.insert(
            id,
            Reserved {
                session: session.to_string(),
                user: user.to_string(),
                inbound,
            },
        );
        Ok(Reservation {
            registry: self.clone(),
            id,
            session: session.to_string(),
            user: user.to_string(),
        })
    }

    /// Hands `command` to call `cid` of `session` if there is one; does
    /// not wait for its outcome.
    pub fn tell(&self, session: &str, cid: &str, command: Command) {
        let tables = lock(&self.tables);
        if let Some(e) = tables.calls.get(cid).filter(|e| e.session == session) {
            let (tx, _) = oneshot::channel();
            let _ = e.inputs.send(Input::Command(Box::new((command, tx))));
        }
    }

    /// Whether `session` has a call `cid`.
    pub fn has_call(&self, session: &str, cid: &str) -> bool {
        lock(&self.tables)
            .calls
            .get(cid)
            .is_some_and(|e| e.session == session)
    }

    /// Hangs up every call of a session (it ended); does not wait.
    pub fn hang_up_session(&self, session: &str) {
        let tables = lock(&self.tables);
        for e in tables.calls.values().filter(|e| e.session == session) {
            let (tx, _) = oneshot::channel();
            let _ = e
                .inputs
                .send(Input::Command(Box::new((Command::Hangup, tx))));
        }
    }

    /// Hands a relay event to its call's task.
    fn dispatch(&self, event: RelayEvent) {
        let id = match &event {
            RelayEvent::Packet(p) => p.call,
            RelayEvent::Dtmf { call, .. } => *call,
        };
        if let Some(tx) = lock(&self.tables).by_relay.get(&id) {
            let _ = tx.send(Input::Relay(Box::new(event)));
        }
    }

    fn insert(&self, cid: String, entry: Entry) {
        lock(&self.tables).calls.insert(cid, entry);
    }

    /// The relay carries call `cid` now.
    fn attach_media(
        &self,
        cid: &str,
        media: &CallMedia,
        codecs: CallCodecs,
        keying: KeyingView,
        far: SocketAddr,
    ) {
        let mut tables = lock(&self.tables);
        let Some(e) = tables.calls.get_mut(cid) else {
            return;
        };
        e.media = Some(RelayedMedia {
            relay_id: media.id(),
            stats: media.stats.clone(),
            codecs,
            keying,
            far,
        });
        let inputs = e.inputs.clone();
        tables.by_relay.insert(media.id(), inputs);
    }

    /// The far end of call `cid` moved its media: its codec, address and
    /// SIP keying now.
    fn set_far_media(&self, cid: &str, codecs: CallCodecs, far: SocketAddr, sip_srtp: bool) {
        let mut tables = lock(&self.tables);
        if let Some(media) = tables.calls.get_mut(cid).and_then(|e| e.media.as_mut()) {
            media.codecs = codecs;
            media.far = far;
            media.keying.sip = KeyingView::sip_word(sip_srtp);
        }
    }

    fn remove(&self, cid: &str) {
        let mut tables = lock(&self.tables);
        if let Some(e) = tables.calls.remove(cid) {
            if let Some(media) = e.media {
                tables.by_relay.remove(&media.relay_id);
            }
        }
    }
}

/// Who places an outbound SIP call.
pub struct SipCaller<'a> {
    pub session: &'a str,
    /// The SIP user (From, Contact, digest user name).
    pub user: &'a str,
    /// For digest challenges to the INVITE (401/407).
    pub password: Option<String>,
    /// The session's display name, for our From.
    pub display_name: Option<&'a str>,
    /// The page's call-data headers for the INVITE (checked already).
    pub headers: Vec<(String, String)>,
}

/// Settings a call needs from the config.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Our web-leg addresses offered to browsers as ICE candidates (never
    /// empty); the first is the SDP connection address.
    pub web_addresses: Vec<IpAddr>,
    /// Our ICE-TCP port (`[media] web-tcp-port`; 0: none).
    pub web_tcp_port: u16,
    pub web_enable_dtls: bool,
    /// When a call's audio is transcoded (`[media] transcode`).
    pub transcode: TranscodePolicy,
    pub consent_timeout: Duration,
    pub rtp_timeout: Duration,
    pub echo_number: String,
    /// Our media address toward the SIP side (in our SDP offers there).
    pub sip_media_address: IpAddr,
    /// What the SIP leg's sockets bind to: the media address when it is
    /// this host's (so media leaves from it), else every address (it is a
    /// NAT's, which maps ours).
    pub sip_media_bind: IpAddr,
    /// An incoming call the browser leaves unanswered this long is refused (480).
    pub ring_timeout: Duration,
    /// DTMF toward SIP always as SIP INFO (else RFC 4733, INFO as fallback).
    pub dtmf_info: bool,
    /// The browser may send early media (183) before answering an incoming call.
    pub early_media: bool,
    /// Where a REFER from the switch may send a call: the rules of the
    /// browser's own calls.
    pub refer_routing: ReferRouting,
    /// Which identity header our INVITEs carry (none, PAI or PPI).
    pub asserted_identity: crate::config::AssertedIdentity,
    /// SRTP on the SIP media leg.
    pub sip_srtp: SrtpPolicy,
    /// How many calls a session and a user may have at once.
    pub limits: CallLimits,
}

/// The SIP domain and the other hosts calls may go to (`[sip]
/// allowed-destination-domains`).
#[derive(Debug, Clone, Default)]
pub struct ReferRouting {
    pub domain: String,
    pub allowed_domains: Vec<String>,
}

impl CallSettings {
    /// What web sockets bind to: every address of the candidates' family,
    /// both families (IPv6's any-address, dual-stack) when any is IPv6.
    pub fn web_bind_address(&self) -> IpAddr {
        web_bind_address(&self.web_addresses)
    }

    /// The SDP connection address of the web leg: the first candidate
    /// (loopback if a caller built settings without any).
    pub fn web_connection_address(&self) -> IpAddr {
        self.web_addresses
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

/// The media plane as the signaling side sees it.
pub struct MediaPlane {
    pub relay: Arc<Relay>,
    pub identity: DtlsIdentity,
    pub web_ports: PortAllocator,
    pub sip_ports: PortAllocator,
    pub calls: Arc<CallRegistry>,
    pub settings: CallSettings,
    relay_events: SyncSender<RelayEvent>,
    /// Each call draws from a stream forked from this one.
    random: Mutex<Random>,
}

impl MediaPlane {
    /// Joins the relay to a new registry and starts the dispatcher thread
    /// (it ends when the plane is dropped).
    pub fn new(
        relay: Arc<Relay>,
        identity: DtlsIdentity,
        web_ports: PortAllocator,
        sip_ports: PortAllocator,
        settings: CallSettings,
    ) -> std::io::Result<Self> {
        let random = Random::from_os().map_err(std::io::Error::other)?;
        let calls = Arc::new(CallRegistry::default());
        let (relay_events, events) = sync_channel(RELAY_EVENT_QUEUE);
        let registry = calls.clone();
        std::thread::Builder::new()
            .name("relay-events".into())
            .spawn(move || {
                while let Ok(event) = events.recv() {
                    registry.dispatch(event);
                }
            })?;
        Ok(MediaPlane {
            relay,
            identity,
            web_ports,
            sip_ports,
            calls,
            settings,
            relay_events,
            random: Mutex::new(random),
        })
    }

    /// A random stream of its own for one call (or one plan).
    fn call_random(&self) -> Random {
        lock(&self.random).fork()
    }

    /// What a call's negotiation needs: our addresses, its bound ports,
    /// the keying policy of each leg.
    fn negotiation_context(
        &self,
        web: &Option<BoundPorts>,
        sip: &BoundPorts,
        sip_address: IpAddr,
    ) -> NegotiationContext {
        let web_port = match (web, self.relay.web_port()) {
            (Some(own), _) => own.lease.port(),
            (None, Some(shared)) => shared.port(),
            (None, None) => 0,
        };
        NegotiationContext {
            web_addresses: self.settings.web_addresses.clone(),
            web_port,
            web_tcp_port: self.settings.web_tcp_port,
            sip_address,
            sip_port: sip.lease.port(),
            web_enable_dtls: self.settings.web_enable_dtls,
            sip_srtp: self.settings.sip_srtp,
            transcode: self.settings.transcode,
            identity: self.identity.clone(),
            consent_timeout: self.settings.consent_timeout,
            rtp_timeout: self.settings.rtp_timeout,
        }
    }

    /// Web ports free for new calls; `None` when every call's web leg is
    /// on the relay's one shared port.
    pub fn web_ports_free(&self) -> Option<usize> {
        self.relay
            .web_port()
            .is_none()
            .then(|| self.web_ports.free_count())
    }

    /// Whether `to` is the built-in echo endpoint.
    pub fn is_echo(&self, to: &str) -> bool {
        echo::is_echo_number(&self.settings.echo_number, to)
    }

    /// Checks the browser's offer for an outbound call (nothing is allocated).
    pub fn plan_outbound(&self, offer: &str) -> Result<OutboundPlan, SdpError> {
        negotiate::outbound(
            offer,
            self.settings.web_enable_dtls,
            self.settings.transcode,
            &mut self.call_random(),
        )
    }

    /// Binds a call's sockets: the web port (on every address of the web
    /// addresses' family: a browser may reach any of them) unless the relay
    /// has one web port for all calls, the SIP pair (on `sip_bind`), and a
    /// second handle on the web socket for ICE/DTLS replies.
    fn bind_legs(
        &self,
        sip_bind: IpAddr,
    ) -> Result<(Option<BoundPorts>, BoundPorts, UdpSocket), StartError> {
        let media_error = |e: std::io::Error| StartError::Media(e.to_string());
        if let Some(shared) = self.relay.web_port_socket() {
            let control_socket = shared.map_err(media_error)?;
            let sip = self.sip_ports.bind(sip_bind)?;
            return Ok((None, sip, control_socket));
        }
        let web = self.web_ports.bind(self.settings.web_bind_address())?;
        let sip = self.sip_ports.bind(sip_bind)?;
        let control_socket = web.rtp.try_clone().map_err(media_error)?;
        Ok((Some(web), sip, control_socket))
    }

    /// A call's task around `call`, with the plane's shared parts.
    #[allow(clippy::too_many_arguments)]
    fn new_task<N>(
        &self,
        call: Call,
        session: &str,
        pending: PendingMedia,
        control_socket: UdpSocket,
        far: Far,
        status: Arc<Mutex<Status>>,
        notify: N,
    ) -> CallTask<N> {
        CallTask {
            finished: false,
            wake: None,
            call,
            started: Instant::now(),
            session: session.to_string(),
            media: None,
            pending: Some(pending),
            control_socket,
            far,
            status,
            registry: self.calls.clone(),
            notify,
            relay: self.relay.clone(),
            settings: self.settings.clone(),
            relay_events: self.relay_events.clone(),
        }
    }

    /// Starts an outbound call to the echo endpoint for `session`; events go
    /// to the session's queue through `notify`. Returns the call id.
    pub async fn start_echo_call<N>(
        &self,
        session: &str,
        reservation: Reservation,
        to: &str,
        plan: OutboundPlan,
        notify: N,
    ) -> Result<String, StartError>
    where
        N: Fn(&str, SessionEvent) + Send + 'static,
    {
        let mut random = self.call_random();
        let cid = random.ice_token(12);
        // The echo answers on IPv4 loopback.
        let (web, sip, control_socket) = self.bind_legs(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        let echo = Echo::start()
            .await
            .map_err(|e| StartError::Media(format!("echo endpoint: {e}")))?;
        let far_answer = echo::answer(&plan.far_offer_codecs)?;
        let echo_addr = echo.addr();
        let context = self.negotiation_context(&web, &sip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let (negotiator, _) = Negotiator::outbound(context, plan, false, random)?;
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let status = self.register_call(&cid, reservation, to, false, inputs);
        let mut task = self.new_task(
            Call::outbound(cid.clone()).with_negotiator(negotiator),
            session,
            PendingMedia { web, sip },
            control_socket,
            Far::Echo(echo),
            status,
            notify,
        );
        // The echo answers at once, from its own loopback address.
        let far = FarMedia {
            direction: crate::sdp::Direction::SendRecv,
            codecs: far_answer,
            crypto: Vec::new(),
            secure: false,
            rtp: echo_addr,
            rtcp: None,
            strict: true,
        };
        let answered = task
            .call
            .handle_input(Instant::now(), CallInput::FarAnsweredMedia(far));
        if let Err(e) = answered {
            self.calls.remove(&cid);
            return Err(match e {
                Refused::Sdp(e) => StartError::Sdp(e),
                Refused::Call(e) => StartError::Media(e.to_string()),
            });
        }
        let span = tracing::info_span!("call", cid = %cid, sid = %session);
        span.in_scope(|| info!(to = %to, "call to the echo endpoint"));
        tokio::spawn(Box::new(task).run(inputs_rx).instrument(span));
        Ok(cid)
    }

    /// Starts an outbound call toward the SIP server for `caller`; the
    /// INVITE carries our SIP-side offer.
    pub async fn start_sip_call<N>(
        &self,
        sip_side: &SipHandle,
        caller: SipCaller<'_>,
        reservation: Reservation,
        to: &str,
        plan: OutboundPlan,
        notify: N,
    ) -> Result<String, StartError>
    where
        N: Fn(&str, SessionEvent) + Send + 'static,
    {
        let SipCaller {
            session,
            user,
            password,
            display_name,
            headers,
        } = caller;
        let caller_id = OutgoingCaller {
            display_name: display_name.map(str::to_string),
            identity_header: self.settings.asserted_identity.header_name(),
            headers,
        };
        let mut random = self.call_random();
        let cid = random.ice_token(12);
        let (web, sip, control_socket) = self.bind_legs(self.settings.sip_media_bind)?;
        let context = self.negotiation_context(&web, &sip, self.settings.sip_media_address);
        let (negotiator, offer) = Negotiator::outbound(context, plan, true, random)?;
        let offer = offer.unwrap_or_default();
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let status = self.register_call(&cid, reservation, to, false, inputs);
        let events = sip_side.invite(&cid, user, password, to, offer, caller_id);
        let task = self.new_task(
            Call::outbound(cid.clone()).with_negotiator(negotiator),
            session,
            PendingMedia { web, sip },
            control_socket,
            Far::sip(sip_side, events),
            status,
            notify,
        );
        let span = tracing::info_span!("call", cid = %cid, sid = %session);
        span.in_scope(|| info!(to = %to, "INVITE toward the SIP server"));
        tokio::spawn(Box::new(task).run(inputs_rx).instrument(span));
        Ok(cid)
    }

    /// Offers a call from the SIP side to the browser of `session`. The
    /// SIP transaction is refused here (488, 503) when it cannot go on.
    pub fn start_inbound_call<N>(
        &self,
        sip_side: &SipHandle,
        session: &str,
        incoming: IncomingCall,
        notify: N,
    ) -> Result<String, StartError>
    where
        N: Fn(&str, SessionEvent) + Send + 'static,
    {
        let IncomingCall {
            key,
            user,
            from,
            to,
            caller,
            call_data,
            auto_answer,
            sdp,
            events,
        } = incoming;
        let refuse = |code: u16, e: StartError| {
            sip_side.refuse(&key, code);
            e
        };
        // Over a limit: busy for the user's own, unavailable for the total.
        let reservation = self
            .calls
            .reserve(session, &user, true, &self.settings.limits)
            .map_err(|limit| {
                let code = match limit {
                    CallLimit::RingingInTotal(_) | CallLimit::Total(_) => 503,
                    _ => 486,
                };
                refuse(code, StartError::Limit(limit))
            })?;
        // An SDP that does not parse is a bad request, named in the reason
        // phrase; one that parses but cannot be used is 488. No SDP at all
        // is a delayed offer: ours goes in the 2xx.
        let offer = sdp.map(|sdp| FarOffer::check(&sdp, self.settings.sip_srtp));
        let offer = offer.transpose().map_err(|e| {
            if matches!(
                e,
                SdpError::Syntax(_)
                    | SdpError::NoAudio
                    | SdpError::BadAttribute { .. }
                    | SdpError::NoConnectionAddress
            ) {
                sip_side.refuse_with_reason(&key, 400, format!("Bad Request - Malformed SDP: {e}"));
                StartError::Sdp(e)
            } else {
                refuse(488, e.into())
            }
        })?;
        let (web, sip, control_socket) = self
            .bind_legs(self.settings.sip_media_bind)
            .map_err(|e| refuse(503, e))?;
        let context = self.negotiation_context(&web, &sip, self.settings.sip_media_address);
        let negotiated = match offer {
            Some(offer) => Negotiator::inbound(context, offer, self.call_random()),
            None => Negotiator::inbound_without_offer(context, self.call_random()),
        };
        let (negotiator, web_sdp) = negotiated.map_err(|e| refuse(488, e.into()))?;
        let cid = key.clone();
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let status = self.register_call(&cid, reservation, &to, true, inputs);
        let parties = IncomingCaller {
            from: from.clone(),
            to: to.clone(),
            display_name: caller.display_name,
            identity: CallerIdentity {
                uri: caller.identity_uri,
                display_name: caller.identity_display_name,
                asserted: caller.asserted,
            },
            headers: call_data,
            auto_answer: auto_answer.map(|after_s| crate::session::AutoAnswer { after_s }),
        };
        let call = Call::inbound(
            cid.clone(),
            parties,
            web_sdp,
            self.settings.ring_timeout,
            Instant::now(),
        )
        .with_negotiator(negotiator)
        .allow_early_media(self.settings.early_media);
        sip_side.ring(&key);
        let task = self.new_task(
            call,
            session,
            PendingMedia { web, sip },
            control_socket,
            Far::sip(sip_side, events),
            status,
            notify,
        );
        let span = tracing::info_span!("call", cid = %cid, sid = %session);
        span.in_scope(|| info!(from = %from, "incoming call offered to the browser"));
        tokio::spawn(Box::new(task).run(inputs_rx).instrument(span));
        Ok(cid)
    }

    fn register_call(
        &self,
        cid: &str,
        reservation: Reservation,
        to: &str,
        inbound: bool,
        inputs: mpsc::UnboundedSender<Input>,
    ) -> Arc<Mutex<Status>> {
        let status = Arc::new(Mutex::new(Status {
            state: if inbound {
                CallState::Incoming
            } else {
                CallState::Calling
            },
            held: None,
            web_path: None,
        }));
        self.calls.insert(
            cid.to_string(),
            Entry {
                inbound,
                session: reservation.session.clone(),
                user: reservation.user.clone(),
                to: to.to_string(),
                inputs,
                status: status.clone(),
                media: None,
            },
        );
        status
    }
}

/// SRTP contexts for a leg from its (inbound, outbound) keys.
fn srtp_pair(
    keys: Option<negotiate::SipLegKeys>,
) -> Result<Option<(SrtpContext, SrtpContext)>, crate::media::srtp::SrtpError> {
    keys.map(|(inbound, outbound)| Ok((SrtpContext::new(&inbound)?, SrtpContext::new(&outbound)?)))
        .transpose()
}

/// What web sockets bind to for these candidates (see
/// [`CallSettings::web_bind_address`]).
pub fn web_bind_address(candidates: &[IpAddr]) -> IpAddr {
    if candidates.iter().any(IpAddr::is_ipv6) {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// The sockets of a call whose legs are not joined yet.
struct PendingMedia {
    /// `None` on the relay's shared web port.
    web: Option<BoundPorts>,
    sip: BoundPorts,
}

/// The far end of a call.
enum Far {
    Echo(Echo),
    Sip {
        handle: SipHandle,
        events: Option<DialogEvents>,
    },
}

impl Far {
    /// The SIP side's dialog `events` for a call, through `handle`.
    fn sip(handle: &SipHandle, events: DialogEvents) -> Far {
        Far::Sip {
            handle: handle.clone(),
            events: Some(events),
        }
    }

    /// Carries out `request`; what the far end says back goes into `call`.
    fn request(&mut self, request: &FarRequest, call: &mut Call) {
        match self {
            Far::Echo(echo) => match request {
                FarRequest::Hangup { .. } | FarRequest::Accept { .. } | FarRequest::Refuse(_) => {
                    echo.set_paused(true)
                }
                // The echo never calls, so it is never answered early.
                FarRequest::Progress { .. } => {}
                // The echo never offers anew.
                FarRequest::AnswerOffer(_) => {}
                // The echo cannot be transferred: it says so as a SIP
                // endpoint without REFER would.
                // The echo sends no REFER.
                FarRequest::FollowRefer(_) | FarRequest::RefuseRefer(_) => {}
                FarRequest::Transfer(_) => {
                    let refused = CallInput::FarTransfer(TransferProgress::Failed(Some(405)));
                    let _ = call.handle_input(Instant::now(), refused);
                }
                FarRequest::Hold => {
                    echo.set_paused(true);
                    let held = CallInput::FarHoldChanged {
                        held: true,
                        by: Party::Local,
                    };
                    let _ = call.handle_input(Instant::now(), held);
                }
                FarRequest::Resume => {
                    echo.set_paused(false);
                    let resumed = CallInput::FarHoldChanged {
                        held: false,
                        by: Party::Local,
                    };
                    let _ = call.handle_input(Instant::now(), resumed);
                }
            },
            Far::Sip { handle, .. } => match request {
                FarRequest::Hangup { .. } => handle.hangup(call.id()),
                FarRequest::Progress { sdp } => handle.progress(call.id(), sdp.clone()),
                FarRequest::Accept { sdp, headers } => {
                    handle.accept(call.id(), sdp.clone(), headers.clone())
                }
                FarRequest::Refuse(code) => handle.refuse(call.id(), *code),
                FarRequest::Hold => handle.hold(call.id(), true),
                FarRequest::Resume => handle.hold(call.id(), false),
                FarRequest::AnswerOffer(answer) => handle.answer_offer(call.id(), answer.clone()),
                FarRequest::Transfer(target) => handle.transfer(call.id(), target.clone()),
                FarRequest::FollowRefer(sdp) => handle.follow_refer(call.id(), sdp.clone()),
                FarRequest::RefuseRefer(code) => handle.refuse_refer(call.id(), *code),
            },
        }
    }
}

/// The next event of the far end's dialog, or never (echo, or the dialog is over).
async fn next_dialog_event(events: &mut Option<DialogEvents>) -> Option<DialogEvent> {
    match events {
        Some(rx) => rx.recv().await.map(|event| *event),
        None => std::future::pending().await,
    }
}

struct CallTask<N> {
    call: Call,
    /// The call has finished: the task ends.
    finished: bool,
    /// When the call next needs the time.
    wake: Option<Instant>,
    started: Instant,
    session: String,
    media: Option<CallMedia>,
    pending: Option<PendingMedia>,
    control_socket: UdpSocket,
    far: Far,
    status: Arc<Mutex<Status>>,
    registry: Arc<CallRegistry>,
    notify: N,
    relay: Arc<Relay>,
    settings: CallSettings,
    relay_events: SyncSender<RelayEvent>,
}

impl<N: Fn(&str, SessionEvent) + Send + 'static> CallTask<N> {
    /// The task's life. Boxed: a future holding `self` by value stores
    /// it twice (the argument and the moved local), some 11 KiB per call
    /// where one boxed copy takes 5.
    async fn run(mut self: Box<Self>, mut inputs: mpsc::UnboundedReceiver<Input>) {
        let mut sample = tokio::time::interval(MEDIA_SAMPLE);
        let mut no_dialog = None;
        loop {
            self.apply_outputs();
            if self.finished {
                break;
            }
            let wake = self
                .wake
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(Input::Relay(event)) => match *event {
                        RelayEvent::Packet(p) => {
                            let bridged_from = self.relay.ice_tcp_peer(p.from).map(|t| t.browser);
                            self.input(CallInput::WebPacket { from: p.from, to: p.to, data: &p.data, bridged_from });
                        }
                        RelayEvent::Dtmf { digit, .. } => self.input(CallInput::FarDtmf(digit)),
                    },
                    Some(Input::Command(command)) => {
                        let (command, reply) = *command;
                        let result = self.command(command);
                        let _ = reply.send(result);
                    }
                    // The registry is gone: the gateway is stopping.
                    None => self.input(CallInput::Hangup),
                },
                _ = tokio::time::sleep_until(wake) => self.input(CallInput::Timeout),
                event = next_dialog_event(match &mut self.far { Far::Sip { events, .. } => events, Far::Echo(_) => &mut no_dialog }) => {
                    self.dialog_event(event);
                }
                _ = sample.tick() => {
                    if let Some(media) = &self.media {
                        let packets = media.stats.web.packets_in.load(std::sync::atomic::Ordering::Relaxed);
                        self.input(CallInput::MediaProgress { browser_packets: packets });
                    }
                    self.input(CallInput::Timeout);
                }
            }
        }
        self.registry.remove(self.call.id());
        // Dropping the task drops `media` (the relay closes the sockets and
        // returns the ports) or the pending sockets and leases.
    }

    /// An input that cannot be refused (only commands can be).
    fn input(&mut self, input: CallInput<'_>) {
        if let Err(e) = self.call.handle_input(Instant::now(), input) {
            warn!(error = %e, "the call refused an input");
        }
    }

    /// What the SIP dialog reported.
    fn dialog_event(&mut self, event: Option<DialogEvent>) {
        let input = match &event {
            // The SIP side dropped the call without a word (it stopped).
            None => {
                if let Far::Sip { events, .. } = &mut self.far {
                    *events = None;
                }
                CallInput::FarFailed { status: None }
            }
            Some(DialogEvent::Progress { sdp: None, .. }) => CallInput::FarRinging,
            Some(DialogEvent::Progress { sdp: Some(sdp), .. }) => CallInput::FarEarlySdp(sdp),
            Some(DialogEvent::Answered { sdp }) => CallInput::FarAnsweredSdp(sdp),
            Some(DialogEvent::Failed { status: Some(code) }) => CallInput::FarEnded {
                status: Some(*code),
            },
            Some(DialogEvent::Failed { status: None }) => {
                CallInput::FarFailed { status: Some(408) }
            }
            Some(DialogEvent::RemoteBye) => CallInput::FarEnded { status: None },
            Some(DialogEvent::SessionExpired) => CallInput::FarSessionExpired,
            Some(DialogEvent::Offer { sdp }) => CallInput::FarOffer(sdp.as_deref()),
            Some(DialogEvent::AckAnswer { sdp }) => CallInput::FarAckAnswer(sdp.as_deref()),
            Some(DialogEvent::Dtmf(digit)) => CallInput::FarDtmf(*digit),
            Some(DialogEvent::Transfer(progress)) => CallInput::FarTransfer(*progress),
            Some(DialogEvent::RemoteControl(control)) => CallInput::FarRemoteControl(*control),
            Some(DialogEvent::Referred { target }) => {
                let routing = &self.settings.refer_routing;
                if !super::routing::outgoing_allowed(
                    target,
                    &routing.domain,
                    &routing.allowed_domains,
                ) {
                    warn!(%target, "the switch's REFER names a host calls may not go to");
                    if let Far::Sip { handle, .. } = &self.far {
                        handle.refuse_refer(self.call.id(), 403);
                    }
                    return;
                }
                CallInput::FarReferred
            }
            Some(DialogEvent::Replaced { sdp }) => CallInput::FarReplaced(sdp),
            Some(DialogEvent::LocalHold(Some(held))) => CallInput::FarHoldChanged {
                held: *held,
                by: Party::Local,
            },
            Some(DialogEvent::LocalHold(None)) => {
                warn!("the far end refused our hold/resume");
                return;
            }
        };
        self.input(input);
    }

    /// The one place a call's media is set up: the plan's legs handed to
    /// the relay with the sockets bound when the call started.
    fn connect(&mut self, plan: MediaPlan) -> Result<(), CommandError> {
        let Some(PendingMedia { web, sip }) = self.pending.take() else {
            return Err(CommandError::Media(
                "the call's media is set up already".into(),
            ));
        };
        let (web_socket, web_lease) = match web {
            Some(own) => (Some(own.rtp), Some(own.lease)),
            None => (None, None),
        };
        let media_error = |e: crate::media::srtp::SrtpError| CommandError::Media(e.to_string());
        let web_srtp = srtp_pair(plan.web_keys.clone()).map_err(media_error)?;
        let sip_srtp = srtp_pair(plan.sip_keys.clone()).map_err(media_error)?;
        // With RTCP muxed by the far end the pair's RTCP port stays leased, unused.
        let sip_rtcp_socket = if plan.far.rtcp.is_some() {
            sip.rtcp
        } else {
            None
        };
        let media = self
            .relay
            .add_call(CallMediaSetup {
                web_ufrag: Some(plan.leg.local_ice.ufrag.clone()),
                web_socket,
                web_remote: None,
                web_local: None,
                web_srtp,
                web_ssrc: Some(plan.web_ssrc),
                web_check_verifier: Some(check_verifier(&plan.leg.local_ice.pwd)),
                sip_rtp_socket: sip.rtp,
                sip_rtcp_socket,
                sip_remote: plan.far.rtp,
                sip_remote_rtcp: plan.far.rtcp,
                sip_strict_source: plan.far.strict,
                sip_srtp,
                payload_map: plan.payload_map,
                events: Some(self.relay_events.clone()),
                leases: web_lease.into_iter().chain([sip.lease]).collect(),
            })
            .map_err(|e| CommandError::Media(e.to_string()))?;
        info!(
            web_codec = %plan.codecs.web,
            sip_codec = %plan.codecs.sip,
            transcoded = plan.codecs.transcoded,
            far = %plan.far.rtp,
            "media connected"
        );
        let keying = KeyingView::new(&plan.leg.keying, plan.sip_keys.is_some());
        self.registry
            .attach_media(self.call.id(), &media, plan.codecs, keying, plan.far.rtp);
        self.media = Some(media);
        Ok(())
    }

    /// The far end moved its media: the relay is retargeted (the browser
    /// leg is untouched) and the call's view shows the codec now used.
    fn move_far(&mut self, moved: FarMove) -> Result<(), CommandError> {
        let Some(media) = self.media.as_mut() else {
            return Err(CommandError::Media("the call has no media yet".into()));
        };
        let srtp = if moved.keys_changed {
            Some(
                srtp_pair(moved.sip_keys.clone())
                    .map_err(|e| CommandError::Media(e.to_string()))?,
            )
        } else {
            None
        };
        media
            .set_sip_far(SipFar {
                remote: moved.far.rtp,
                remote_rtcp: moved.far.rtcp,
                strict_source: moved.far.strict,
                srtp,
                payload_map: moved.payload_map,
            })
            .map_err(|e| CommandError::Media(e.to_string()))?;
        info!(
            sip_codec = %moved.codecs.sip,
            transcoded = moved.codecs.transcoded,
            far = %moved.far.rtp,
            "the far end's media moved"
        );
        self.registry.set_far_media(
            self.call.id(),
            moved.codecs,
            moved.far.rtp,
            moved.sip_keys.is_some(),
        );
        Ok(())
    }

    fn command(&mut self, command: Command) -> Result<(), CommandError> {
        match command {
            Command::Hangup => Ok(self.call.handle_input(Instant::now(), CallInput::Hangup)?),
            Command::Hold => Ok(self.call.handle_input(Instant::now(), CallInput::Hold)?),
            Command::Resume => Ok(self.call.handle_input(Instant::now(), CallInput::Resume)?),
            Command::Answer { sdp, headers } => {
                let answer = CallInput::BrowserAnswer {
                    sdp: sdp.as_deref(),
                    headers,
                };
                self.call.handle_input(Instant::now(), answer)?;
                self.media_taken()
            }
            Command::Progress { sdp } => {
                self.call
                    .handle_input(Instant::now(), CallInput::BrowserProgress(&sdp))?;
                self.media_taken()
            }
            Command::Transfer(target) => Ok(self
                .call
                .handle_input(Instant::now(), CallInput::BrowserTransfer(target))?),
            Command::Transferred => Ok(self
                .call
                .handle_input(Instant::now(), CallInput::Transferred)?),
            Command::Reject { status } => Ok(self
                .call
                .handle_input(Instant::now(), CallInput::BrowserReject { status })?),
            Command::Renegotiate { sdp, reply } => {
                let answer = self.call.browser_reoffer(Instant::now(), &sdp)?;
                // The relay learns the new ICE password (and the leg's
                // wake-up may have moved) before the browser has our answer
                // to check with.
                self.apply_outputs();
                let _ = reply.send(answer);
                Ok(())
            }
            Command::Dtmf { digits, duration } => {
                self.call.require_answered()?;
                // Digits and duration are checked the same way for both ways of sending.
                crate::media::dtmf::DtmfSender::new(8000)
                    .queue(&digits, duration)
                    .map_err(|e| CommandError::Dtmf(e.to_string()))?;
                let media = self.media.as_ref().ok_or(CommandError::NoTelephoneEvent)?;
                let as_info = |handle: &SipHandle, id: &str| {
                    let ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
                    handle.info_dtmf(id, &digits, ms);
                    Ok(())
                };
                match &self.far {
                    Far::Sip { handle, .. } if self.settings.dtmf_info => {
                        as_info(handle, self.call.id())
                    }
                    far => match media.send_dtmf(&digits, duration) {
                        Ok(()) => Ok(()),
                        Err(RelayError::NoTelephoneEvent) => match far {
                            Far::Sip { handle, .. } => as_info(handle, self.call.id()),
                            Far::Echo(_) => Err(CommandError::NoTelephoneEvent),
                        },
                        Err(other) => Err(CommandError::Dtmf(other.to_string())),
                    },
                }
            }
        }
    }

    /// The plan of the browser's answer reaches the relay now, so a
    /// failure is the answering request's answer.
    fn media_taken(&mut self) -> Result<(), CommandError> {
        self.apply_outputs();
        match self.media {
            Some(_) => Ok(()),
            None => Err(CommandError::Media(
                "the relay did not take the call".into(),
            )),
        }
    }

    /// Carries out the call's outputs (`finished` is set once it ends).
    fn apply_outputs(&mut self) {
        loop {
            match self.call.poll_output() {
                CallOutput::Timeout(at) => {
                    self.wake = at;
                    break;
                }
                CallOutput::ConnectMedia(plan) => {
                    if let Err(e) = self.connect(*plan) {
                        warn!(error = %e, "the call's media could not be set up");
                        self.input(CallInput::MediaFailed);
                    }
                }
                CallOutput::Transmit { to, from, data } => {
                    // A full socket buffer loses this datagram; ICE and DTLS retransmit.
                    let _ = send_from(self.control_socket.as_raw_fd(), &data, to, from);
                }
                CallOutput::MoveFarMedia(moved) => {
                    if let Err(e) = self.move_far(*moved) {
                        warn!(error = %e, "the far end's new media could not be taken");
                        self.input(CallInput::MediaFailed);
                    }
                }
                CallOutput::MediaRemote(pair) => {
                    debug!(
                        browser = %pair.remote,
                        gateway = ?pair.local,
                        after_ms = self.started.elapsed().as_millis() as u64,
                        "ICE selected the browser's address"
                    );
                    if let Some(media) = &self.media {
                        let _ = media.set_web_remote(pair.remote, pair.local);
                    }
                    // Over ICE-TCP the pair's ends are the bridge's
                    // loopback sockets: the view shows the connection's.
                    let path = match self.relay.ice_tcp_peer(pair.remote) {
                        Some(tcp) => WebPathView {
                            browser: tcp.browser,
                            gateway: Some(tcp.gateway),
                            transport: "tcp",
                        },
                        None => WebPathView {
                            browser: pair.remote,
                            gateway: pair.local,
                            transport: "udp",
                        },
                    };
                    lock(&self.status).web_path = Some(path);
                }
                CallOutput::IceCredentials(ice) => {
                    if let Some(media) = &self.media {
                        let _ = media.set_web_ice(&ice.ufrag, check_verifier(&ice.pwd));
                    }
                }
                CallOutput::MediaKeys(keys) => {
                    match (
                        SrtpContext::new(&keys.inbound),
                        SrtpContext::new(&keys.outbound),
                    ) {
                        (Ok(inbound), Ok(outbound)) => {
                            debug!(
                                after_ms = self.started.elapsed().as_millis() as u64,
                                "DTLS-SRTP keys ready"
                            );
                            if let Some(media) = &self.media {
                                let _ = media.set_web_srtp(inbound, outbound);
                            }
                        }
                        _ => {
                            warn!("DTLS keys unusable for SRTP");
                            self.input(CallInput::MediaFailed);
                        }
                    }
                }
                CallOutput::Notify(event) => (self.notify)(&self.session, event),
                CallOutput::EndReplacedCall(other) => {
                    self.registry
                        .tell(&self.session, &other, Command::Transferred);
                }
                CallOutput::Far(request) => self.far.request(&request, &mut self.call),
                CallOutput::Finished(reason) => {
                    info!(reason = reason.as_str(), "call ended");
                    self.finished = true;
                }
            }
        }
        let mut status = lock(&self.status);
        status.state = self.call.state();
        status.held = self.call.held_by();
    }
}

impl std::fmt::Debug for MediaPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaPlane")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

/// The relay's test of a browser's STUN datagram: a binding request signed
/// with our ICE password (`pwd`).
fn check_verifier(pwd: &str) -> crate::media::relay::CheckVerifier {
    let key = pwd.as_bytes().to_vec();
    Box::new(move |packet: &[u8]| {
        crate::webrtc::stun::is_authenticated_binding_request(packet, &key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CallLimits = CallLimits {
        per_session: 3,
        ringing_out_per_session: 2,
        ringing_in_per_user: 1,
        ringing_in_total: 2,
        total: 0,
    };

    /// `media.max-calls` counts every call and reservation of the node,
    /// whoever holds them; dropping one makes room again.
    #[test]
    fn the_nodes_call_limit_counts_every_call() {
        let registry = Arc::new(CallRegistry::default());
        let full = CallLimits { total: 2, ..LIMITS };
        let a = registry.reserve("s1", "1001", false, &full).unwrap();
        let _b = registry.reserve("s2", "1002", true, &full).unwrap();
        assert_eq!(
            registry.reserve("s3", "1003", false, &full).err(),
            Some(CallLimit::Total(2))
        );
        assert_eq!(
            registry.reserve("s3", "1003", true, &full).err(),
            Some(CallLimit::Total(2))
        );
        drop(a);
        assert!(registry.reserve("s3", "1003", false, &full).is_ok());
    }

    #[test]
    fn reservations_count_against_the_limits_until_dropped() {
        let registry = Arc::new(CallRegistry::default());
        let out1 = registry.reserve("s1", "1001", false, &LIMITS).unwrap();
        let _out2 = registry.reserve("s1", "1001", false, &LIMITS).unwrap();
        assert_eq!(
            registry.reserve("s1", "1001", false, &LIMITS).err(),
            Some(CallLimit::RingingOutPerSession(2))
        );
        // An incoming one for the same session is not outgoing ringing.
        let in1 = registry.reserve("s1", "1001", true, &LIMITS).unwrap();
        assert_eq!(
            registry.reserve("s2", "1001", true, &LIMITS).err(),
            Some(CallLimit::RingingInPerUser(1))
        );
        let _in2 = registry.reserve("s3", "1002", true, &LIMITS).unwrap();
        assert_eq!(
            registry.reserve("s4", "1003", true, &LIMITS).err(),
            Some(CallLimit::RingingInTotal(2))
        );
        drop(in1);
        drop(out1);
        // s1 holds one now; with room for ringing, two more fit and a
        // fourth passes the per-session limit.
        let roomy = CallLimits {
            ringing_out_per_session: 10,
            ..LIMITS
        };
        let _second = registry.reserve("s1", "1001", false, &roomy).unwrap();
        let _third = registry.reserve("s1", "1001", false, &roomy).unwrap();
        assert_eq!(
            registry.reserve("s1", "1001", false, &roomy).err(),
            Some(CallLimit::PerSession(3))
        );
    }
}
