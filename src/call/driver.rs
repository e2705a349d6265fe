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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::plan::{self, OutboundPlan, WebLocal};
use super::{Call, CallError, CallOutput, CallState, FarRequest, Party};
use crate::echo::{self, Echo};
use crate::media::ports::{PortAllocator, PortError};
use crate::media::relay::{CallMedia, CallMediaSetup, Relay, RelayError, RelayEvent};
use crate::media::srtp::SrtpContext;
use crate::media::stats::{CallStats, LegSnapshot};
use crate::sdp::SdpError;
use crate::session::SessionEvent;
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
}

/// A request from the API to a call's task.
#[derive(Debug)]
pub enum Command {
    Hangup,
    Hold,
    Resume,
    Dtmf { digits: String, duration: Duration },
}

enum Input {
    Relay(RelayEvent),
    Command(Command, oneshot::Sender<Result<(), CommandError>>),
}

/// What `GET …/calls/{cid}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub call: String,
    pub state: &'static str,
    pub direction: &'static str,
    pub to: String,
    pub codec: String,
    pub held: Option<&'static str>,
    pub stats: CallStatsView,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallStatsView {
    pub web: LegSnapshot,
    pub sip: LegSnapshot,
}

struct Status {
    state: CallState,
    held: Option<Party>,
}

struct Entry {
    session: String,
    relay_id: u64,
    to: String,
    codec: String,
    inputs: mpsc::UnboundedSender<Input>,
    status: Arc<Mutex<Status>>,
    stats: Arc<CallStats>,
}

#[derive(Default)]
struct Tables {
    calls: HashMap<String, Entry>,
    by_relay: HashMap<u64, mpsc::UnboundedSender<Input>>,
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
        Some(CallView {
            call: cid.to_string(),
            state: status.state.as_str(),
            direction: "outbound",
            to: e.to.clone(),
            codec: e.codec.clone(),
            held: status.held.map(Party::as_str),
            stats: CallStatsView {
                web: e.stats.web.snapshot(),
                sip: e.stats.sip.snapshot(),
            },
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
            e.inputs.send(Input::Command(command, tx)).ok()?;
        }
        rx.await.ok()
    }

    /// Hangs up every call of a session (it ended); does not wait.
    pub fn hang_up_session(&self, session: &str) {
        let tables = lock(&self.tables);
        for e in tables.calls.values().filter(|e| e.session == session) {
            let (tx, _) = oneshot::channel();
            let _ = e.inputs.send(Input::Command(Command::Hangup, tx));
        }
    }

    /// Hands a relay event to its call's task.
    fn dispatch(&self, event: RelayEvent) {
        let id = match &event {
            RelayEvent::Packet(p) => p.call,
            RelayEvent::Dtmf { call, .. } => *call,
        };
        if let Some(tx) = lock(&self.tables).by_relay.get(&id) {
            let _ = tx.send(Input::Relay(event));
        }
    }

    fn insert(&self, cid: String, entry: Entry) {
        let mut tables = lock(&self.tables);
        tables.by_relay.insert(entry.relay_id, entry.inputs.clone());
        tables.calls.insert(cid, entry);
    }

    fn remove(&self, cid: &str) {
        let mut tables = lock(&self.tables);
        if let Some(e) = tables.calls.remove(cid) {
            tables.by_relay.remove(&e.relay_id);
        }
    }
}

/// Settings a call needs from the config.
#[derive(Debug, Clone)]
pub struct CallSettings {
    pub public_address: IpAddr,
    pub web_enable_dtls: bool,
    pub consent_timeout: Duration,
    pub rtp_timeout: Duration,
    pub echo_number: String,
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
        })
    }

    /// Whether `to` is the built-in echo endpoint.
    pub fn is_echo(&self, to: &str) -> bool {
        echo::is_echo_number(&self.settings.echo_number, to)
    }

    /// Checks the browser's offer for an outbound call (nothing is allocated).
    pub fn plan_outbound(&self, offer: &str) -> Result<OutboundPlan, SdpError> {
        plan::outbound(offer, self.settings.web_enable_dtls)
    }

    /// Starts an outbound call to the echo endpoint for `session`; events go
    /// to the session's queue through `notify`. Returns the call id.
    pub async fn start_echo_call<N>(
        &self,
        session: &str,
        to: &str,
        plan: OutboundPlan,
        notify: N,
    ) -> Result<String, StartError>
    where
        N: Fn(&str, SessionEvent) + Send + 'static,
    {
        let cid = plan::random_token(12)?;
        let unspecified = match self.settings.public_address {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let web = self.web_ports.bind(unspecified)?;
        let sip = self.sip_ports.bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
        let echo = Echo::start()
            .await
            .map_err(|e| StartError::Media(format!("echo endpoint: {e}")))?;
        let far_answer = echo::answer(&plan.far_offer_codecs)?;
        let negotiated = plan::negotiate(
            &plan,
            &far_answer,
            &WebLocal {
                address: self.settings.public_address,
                port: web.lease.port(),
                identity: &self.identity,
                consent_timeout: self.settings.consent_timeout,
                rtp_timeout: self.settings.rtp_timeout,
            },
        )?;
        let control_socket = web
            .rtp
            .try_clone()
            .map_err(|e| StartError::Media(e.to_string()))?;
        let web_srtp = match &negotiated.sdes_keys {
            Some((inbound, outbound)) => Some((
                SrtpContext::new(inbound).map_err(|e| StartError::Media(e.to_string()))?,
                SrtpContext::new(outbound).map_err(|e| StartError::Media(e.to_string()))?,
            )),
            None => None,
        };
        // The echo muxes RTCP on its one port; the pair's RTCP port stays leased.
        let media = self
            .relay
            .add_call(CallMediaSetup {
                web_socket: web.rtp,
                web_remote: None,
                web_srtp,
                web_ssrc: Some(negotiated.web_ssrc),
                sip_rtp_socket: sip.rtp,
                sip_rtcp_socket: None,
                sip_remote: echo.addr(),
                sip_remote_rtcp: None,
                sip_strict_source: true,
                sip_srtp: None,
                payload_map: negotiated.payload_map,
                events: Some(self.relay_events.clone()),
                leases: vec![web.lease, sip.lease],
            })
            .map_err(|e| StartError::Media(e.to_string()))?;
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(Status {
            state: CallState::Calling,
            held: None,
        }));
        self.calls.insert(
            cid.clone(),
            Entry {
                session: session.to_string(),
                relay_id: media.id(),
                to: to.to_string(),
                codec: negotiated.codec.clone(),
                inputs,
                status: status.clone(),
                stats: media.stats.clone(),
            },
        );
        let mut call = Call::outbound(cid.clone(), negotiated.leg, negotiated.web_sdp);
        // The echo answers at once.
        call.far_answered(Instant::now());
        let task = CallTask {
            call,
            started: Instant::now(),
            session: session.to_string(),
            media,
            control_socket,
            far: Far::Echo(echo),
            status,
            registry: self.calls.clone(),
            notify,
        };
        let span = tracing::info_span!("call", cid = %cid, sid = %session);
        span.in_scope(|| info!(to = %to, codec = %negotiated.codec, "call to the echo endpoint"));
        tokio::spawn(task.run(inputs_rx).instrument(span));
        Ok(cid)
    }
}

/// The far end of a call.
enum Far {
    Echo(Echo),
}

impl Far {
    /// Carries out `request`; what the far end says back goes into `call`.
    fn request(&mut self, request: &FarRequest, call: &mut Call) {
        match self {
            Far::Echo(echo) => match request {
                FarRequest::Hangup { .. } => echo.set_paused(true),
                FarRequest::Hold => {
                    echo.set_paused(true);
                    call.far_hold_changed(true, Party::Local);
                }
                FarRequest::Resume => {
                    echo.set_paused(false);
                    call.far_hold_changed(false, Party::Local);
                }
            },
        }
    }
}

struct CallTask<N> {
    call: Call,
    started: Instant,
    session: String,
    media: CallMedia,
    control_socket: UdpSocket,
    far: Far,
    status: Arc<Mutex<Status>>,
    registry: Arc<CallRegistry>,
    notify: N,
}

impl<N: Fn(&str, SessionEvent) + Send + 'static> CallTask<N> {
    async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<Input>) {
        let mut sample = tokio::time::interval(MEDIA_SAMPLE);
        loop {
            if self.apply_outputs() {
                break;
            }
            let wake = self
                .call
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(Input::Relay(RelayEvent::Packet(p))) => {
                        self.call.handle_web_packet(Instant::now(), p.from, &p.data);
                    }
                    Some(Input::Relay(RelayEvent::Dtmf { digit, .. })) => self.call.far_dtmf(digit),
                    Some(Input::Command(command, reply)) => {
                        let result = self.command(command);
                        let _ = reply.send(result);
                    }
                    // The registry is gone: the gateway is stopping.
                    None => self.call.hangup(),
                },
                _ = tokio::time::sleep_until(wake) => self.call.handle_timeout(Instant::now()),
                _ = sample.tick() => {
                    let packets = self.media.stats.web.packets_in.load(std::sync::atomic::Ordering::Relaxed);
                    self.call.media_progress(Instant::now(), packets);
                    self.call.handle_timeout(Instant::now());
                }
            }
        }
        self.registry.remove(self.call.id());
        // Dropping the task drops `media`: the relay closes the sockets and
        // returns the ports.
    }

    fn command(&mut self, command: Command) -> Result<(), CommandError> {
        match command {
            Command::Hangup => {
                self.call.hangup();
                Ok(())
            }
            Command::Hold => Ok(self.call.hold()?),
            Command::Resume => Ok(self.call.resume()?),
            Command::Dtmf { digits, duration } => {
                self.call.require_answered()?;
                self.media
                    .send_dtmf(&digits, duration)
                    .map_err(|e| match e {
                        RelayError::NoTelephoneEvent => CommandError::NoTelephoneEvent,
                        other => CommandError::Dtmf(other.to_string()),
                    })
            }
        }
    }

    /// Carries out the call's outputs; true once the call has finished.
    fn apply_outputs(&mut self) -> bool {
        let mut finished = false;
        while let Some(output) = self.call.poll_output() {
            match output {
                CallOutput::Transmit { to, data } => {
                    // A full socket buffer loses this datagram; ICE and DTLS retransmit.
                    let _ = self.control_socket.send_to(&data, to);
                }
                CallOutput::MediaRemote(addr) => {
                    debug!(browser = %addr, after_ms = self.started.elapsed().as_millis() as u64, "ICE selected the browser's address");
                    let _ = self.media.set_web_remote(addr);
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
                            let _ = self.media.set_web_srtp(inbound, outbound);
                        }
                        _ => {
                            warn!("DTLS keys unusable for SRTP");
                            self.call.far_failed(None);
                        }
                    }
                }
                CallOutput::Notify(event) => (self.notify)(&self.session, event),
                CallOutput::Far(request) => self.far.request(&request, &mut self.call),
                CallOutput::Finished(reason) => {
                    info!(reason = reason.as_str(), "call ended");
                    finished = true;
                }
            }
        }
        let mut status = lock(&self.status);
        status.state = self.call.state();
        status.held = self.call.held_by();
        finished
    }
}

impl std::fmt::Debug for MediaPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaPlane")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}
