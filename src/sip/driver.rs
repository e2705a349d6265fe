//! The tokio driver of the SIP user agent over UDP, TCP or TLS: messages, timers and
//! commands from the API go into the sans-IO [`UserAgent`]; its datagrams
//! go out and its events resolve the API's waiting requests.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::dialog::DialogEvent;
use super::message::{StreamFramer, MAX_MESSAGE_BYTES};
use super::registration::RegistrationEvent;
use super::sources::TrustedSources;
use super::ua::{Over, Transmit, UaCounters, UaEvent, UaInput, UaOutput, UserAgent};
use crate::metrics::Metrics;

/// Why a registration did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("the SIP server refused the registration with {0}")]
    Rejected(u16),
    #[error("the SIP server did not answer")]
    Unreachable,
    #[error("the SIP side has stopped")]
    Stopped,
}

/// What the API asks of the user agent: one [`UaInput`], and what waits
/// for its outcome.
struct Command {
    input: UaInput<'static>,
    waiter: Waiter,
}

enum Waiter {
    Nothing,
    /// A session waiting for its registration's verdict.
    Registration(oneshot::Sender<Result<(), RegisterError>>),
    /// A call's task, hearing of the far end through this channel.
    Dialog(DialogEventSender),
}

/// A call's dialog events as its task receives them. Boxed: a channel's
/// first block holds 32 items from the start, and the events are rare.
pub type DialogEvents = mpsc::UnboundedReceiver<Box<DialogEvent>>;
type DialogEventSender = mpsc::UnboundedSender<Box<DialogEvent>>;

/// A call from the SIP side for one of our users.
pub struct IncomingCall {
    pub key: String,
    /// The Request-URI's user: whom the call is for.
    pub user: String,
    pub from: String,
    pub to: String,
    /// Who calls, by name and identity.
    pub caller: crate::sip::caller_id::Caller,
    /// The switch's call data (headers by name).
    pub call_data: std::collections::BTreeMap<String, Vec<String>>,
    /// The INVITE asks to be answered by itself after this many seconds.
    pub auto_answer: Option<u32>,
    pub sdp: Option<String>,
    /// What the caller does next (CANCEL, BYE, hold…).
    pub events: DialogEvents,
}

/// What the SIP server's keepalive said last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    NotConfigured,
    Unchecked,
    Reachable,
    Unreachable,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::NotConfigured => "not_configured",
            ServerState::Unchecked => "unchecked",
            ServerState::Reachable => "reachable",
            ServerState::Unreachable => "unreachable",
        }
    }
}

/// The API's handle on the SIP side.
#[derive(Clone)]
pub struct SipHandle {
    commands: mpsc::UnboundedSender<Command>,
    server: Arc<AtomicU8>,
    /// The user agent's registrations, in place or being made or ended.
    registrations: Arc<std::sync::atomic::AtomicUsize>,
}

impl SipHandle {
    fn tell(&self, input: UaInput<'static>) {
        let _ = self.commands.send(Command {
            input,
            waiter: Waiter::Nothing,
        });
    }

    /// Registers `user` under `id`; resolves with the server's verdict.
    pub async fn register(
        &self,
        id: &str,
        user: &str,
        password: Option<String>,
    ) -> Result<(), RegisterError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command {
                input: UaInput::Register {
                    id: id.to_string(),
                    user: user.to_string(),
                    password,
                },
                waiter: Waiter::Registration(reply),
            })
            .map_err(|_| RegisterError::Stopped)?;
        answer.await.map_err(|_| RegisterError::Stopped)?
    }

    /// Sends incoming call `key` to `contact` (302).
    pub fn redirect(&self, key: &str, contact: String) {
        self.tell(UaInput::Redirect {
            key: key.to_string(),
            contact,
        });
    }

    /// Whether the node takes new calls (OPTIONS answered 503 if not).
    pub fn set_accepting(&self, accepting: bool) {
        self.tell(UaInput::Accepting(accepting));
    }

    /// Registrations not yet ended (an unREGISTER waiting for its answer
    /// counts).
    pub fn registrations_open(&self) -> usize {
        self.registrations.load(Ordering::Relaxed)
    }

    /// Ends `id`'s registration (unREGISTER); does not wait.
    pub fn unregister(&self, id: &str) {
        self.tell(UaInput::Unregister { id: id.to_string() });
    }

    /// Calls `to` as `user` offering `sdp`; the far end's doings arrive on
    /// the returned channel (it closes when the call is over on the SIP side).
    pub fn invite(
        &self,
        key: &str,
        user: &str,
        password: Option<String>,
        to: &str,
        sdp: String,
        caller: crate::sip::caller_id::OutgoingCaller,
    ) -> DialogEvents {
        let (events, rx) = mpsc::unbounded_channel();
        let _ = self.commands.send(Command {
            input: UaInput::Invite {
                key: key.to_string(),
                user: user.to_string(),
                to: to.to_string(),
                sdp,
                password,
                caller,
            },
            waiter: Waiter::Dialog(events),
        });
        rx
    }

    /// Ends call `key` on the SIP side (CANCEL or BYE); does not wait.
    pub fn hangup(&self, key: &str) {
        self.tell(UaInput::Hangup {
            key: key.to_string(),
        });
    }

    /// Puts call `key`'s far end on hold (re-INVITE sendonly) or takes it off.
    pub fn hold(&self, key: &str, hold: bool) {
        self.tell(UaInput::Hold {
            key: key.to_string(),
            hold,
        });
    }

    /// Sends DTMF `digits` to call `key`'s far end as SIP INFO.
    pub fn info_dtmf(&self, key: &str, digits: &str, duration_ms: u32) {
        self.tell(UaInput::InfoDtmf {
            key: key.to_string(),
            digits: digits.to_string(),
            duration_ms,
        });
    }

    /// Asks call `key`'s far end to call `target` in our place (REFER).
    pub fn transfer(&self, key: &str, target: crate::sip::transfer::TransferTarget) {
        self.tell(UaInput::Transfer {
            key: key.to_string(),
            target,
        });
    }

    /// Follows the far end's REFER of call `key` with our offer `sdp`.
    pub fn follow_refer(&self, key: &str, sdp: String) {
        self.tell(UaInput::FollowRefer {
            key: key.to_string(),
            sdp,
        });
    }

    /// Refuses the far end's REFER of call `key`.
    pub fn refuse_refer(&self, key: &str, code: u16) {
        self.tell(UaInput::RefuseRefer {
            key: key.to_string(),
            code,
        });
    }

    /// 180 Ringing to an incoming call.
    pub fn ring(&self, key: &str) {
        self.tell(UaInput::Ring {
            key: key.to_string(),
        });
    }

    /// 183 Session Progress with our SDP (early media) to an incoming call.
    pub fn progress(&self, key: &str, sdp: String) {
        self.tell(UaInput::Progress {
            key: key.to_string(),
            sdp,
        });
    }

    /// 200 OK with our SDP (and the page's checked call-data `headers`)
    /// to an incoming call.
    pub fn accept(&self, key: &str, sdp: String, headers: Vec<(String, String)>) {
        self.tell(UaInput::Accept {
            key: key.to_string(),
            sdp,
            headers,
        });
    }

    /// Answers the far end's offer in a re-INVITE or UPDATE of call `key`.
    pub fn answer_offer(&self, key: &str, answer: Result<String, u16>) {
        self.tell(UaInput::AnswerOffer {
            key: key.to_string(),
            answer,
        });
    }

    /// Refuses an incoming call with `code`.
    pub fn refuse(&self, key: &str, code: u16) {
        self.tell(UaInput::Refuse {
            key: key.to_string(),
            code,
            reason: None,
        });
    }

    /// Refuses an incoming call with `code` and a reason phrase of ours.
    pub fn refuse_with_reason(&self, key: &str, code: u16, reason: String) {
        self.tell(UaInput::Refuse {
            key: key.to_string(),
            code,
            reason: Some(reason),
        });
    }

    pub fn server_state(&self) -> ServerState {
        match self.server.load(Ordering::Relaxed) {
            0 => ServerState::NotConfigured,
            1 => ServerState::Unchecked,
            2 => ServerState::Reachable,
            _ => ServerState::Unreachable,
        }
    }
}

fn encode(state: ServerState) -> u8 {
    match state {
        ServerState::NotConfigured => 0,
        ServerState::Unchecked => 1,
        ServerState::Reachable => 2,
        ServerState::Unreachable => 3,
    }
}

/// The address the SIP server should reach us at: the socket's own, or when
/// it listens on every interface, the one the kernel would send from.
pub fn advertised_address(listen: SocketAddr, server: Option<SocketAddr>) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = server
        .and_then(|server| {
            let probe = std::net::UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).ok()?;
            probe.connect(server).ok()?;
            probe.local_addr().ok().map(|a| a.ip())
        })
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, listen.port())
}

/// Where SIP messages go out and come in.
pub enum Link {
    Udp(UdpSocket),
    /// One TCP or TLS connection to each SIP server, each kept up by its
    /// own task; messages arrive framed by Content-Length.
    Stream {
        /// By server; the first is the primary.
        to_servers: Vec<(SocketAddr, mpsc::UnboundedSender<Vec<u8>>)>,
        from_server: mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>,
    },
}

impl Link {
    /// A TCP link to `server` (TLS over it with `tls`): connects now and
    /// again whenever the connection drops (every quarter second while the
    /// server refuses or the handshake fails).
    pub fn stream(
        server: SocketAddr,
        tls: Option<super::tls::TlsClient>,
        shutdown: watch::Receiver<bool>,
    ) -> Link {
        Link::streams(vec![(server, tls)], shutdown)
    }

    /// [`Link::stream`] to each of several servers (a failover list), each
    /// with its own TLS client (the name each is checked against).
    pub fn streams(
        servers: Vec<(SocketAddr, Option<super::tls::TlsClient>)>,
        shutdown: watch::Receiver<bool>,
    ) -> Link {
        let (incoming, from_server) = mpsc::unbounded_channel();
        let to_servers = servers
            .into_iter()
            .map(|(server, tls)| {
                let (to_server, outgoing) = mpsc::unbounded_channel();
                tokio::spawn(keep_stream(
                    server,
                    tls,
                    outgoing,
                    incoming.clone(),
                    shutdown.clone(),
                ));
                (server, to_server)
            })
            .collect();
        Link::Stream {
            to_servers,
            from_server,
        }
    }

    async fn recv(&mut self, buf: &mut [u8]) -> Option<(Vec<u8>, SocketAddr)> {
        match self {
            Link::Udp(socket) => socket
                .recv_from(buf)
                .await
                .ok()
                .map(|(n, from)| (buf[..n].to_vec(), from)),
            Link::Stream { from_server, .. } => match from_server.recv().await {
                Some(message) => Some(message),
                None => std::future::pending().await,
            },
        }
    }

    async fn send(&self, to: SocketAddr, bytes: &[u8]) {
        match self {
            Link::Udp(socket) => {
                let _ = socket.send_to(bytes, to).await;
            }
            // Everything goes over the connection to the server it is
            // for (a response to an address of none of them: the primary).
            Link::Stream { to_servers, .. } => {
                let to_server = to_servers
                    .iter()
                    .find(|(server, _)| *server == to)
                    .or(to_servers.first());
                if let Some((_, to_server)) = to_server {
                    let _ = to_server.send(bytes.to_vec());
                }
            }
        }
    }
}

/// Connections peers opened to us, by their address: what the user agent
/// sends to such an address goes over its connection (responses and
/// in-dialog requests to a caller that came in over TCP).
#[derive(Clone, Default)]
pub struct Accepted {
    connections: Arc<std::sync::Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>>,
}

impl Accepted {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends over `to`'s connection; false when there is none.
    fn send(&self, to: SocketAddr, bytes: &[u8]) -> bool {
        self.lock()
            .get(&to)
            .is_some_and(|c| c.send(bytes.to_vec()).is_ok())
    }
}

/// Connections taken on the SIP port at once, at most: SIP servers need a
/// handful; the cap keeps a flood of connections from using up the process.
const MAX_ACCEPTED_CONNECTIONS: usize = 256;

/// Connections one address may hold open to the SIP port: a server needs
/// a few; more from one place is a flood.
const MAX_CONNECTIONS_PER_SOURCE: usize = 32;

/// A connection a peer opened that carries nothing (not even a CRLF
/// keep-alive, RFC 5626) for this long is closed; the peer connects again
/// when it has something to send.
const ACCEPTED_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Our own connections to the server stay up however quiet they are.
const OUR_LINK_IDLE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Open accepted connections by peer address (handshaking ones too).
#[derive(Clone, Default)]
struct PerSource(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in [`PerSource`], given back when dropped.
struct SourceSlot {
    counts: PerSource,
    ip: IpAddr,
}

impl PerSource {
    fn take(&self, ip: IpAddr) -> Option<SourceSlot> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// `gateway_sip_refused_total`'s reason for SIP from a source that is
/// neither the server nor in `trusted-sources`.
const UNTRUSTED_SOURCE: &str = "untrusted_source";

/// Takes TCP connections on the SIP port (TLS over them with `tls`) from
/// `trusted` sources (others are closed at once, before any handshake):
/// each is served until it drops, its messages going to `incoming` with
/// the peer's address.
#[allow(clippy::too_many_arguments)]
pub fn accept_stream(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trusted: TrustedSources,
    metrics: Metrics,
    accepted: Accepted,
    incoming: mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ACCEPTED_CONNECTIONS));
    let per_source = PerSource::default();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "SIP over TCP: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            if !trusted.allows(peer.ip()) {
                metrics.count_sip_refused(UNTRUSTED_SOURCE, 1);
                drop(stream);
                continue;
            }
            // Handshaking ones count too: a flood cannot queue up.
            let Some(source_slot) = per_source.take(peer.ip()) else {
                metrics.count_sip_refused("too_many_connections", 1);
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                warn!(%peer, "SIP: too many connections taken already; closing this one");
                metrics.count_sip_refused("too_many_connections", 1);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let accepted = accepted.clone();
            let incoming = incoming.clone();
            let mut shutdown = shutdown.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _source_slot = source_slot;
                let (to_peer, mut outgoing) = mpsc::unbounded_channel();
                // Served once it is one: as it came, or after the handshake.
                let taken = |transport: &str| {
                    info!(%peer, "SIP over {transport}: connection accepted");
                    accepted.lock().insert(peer, to_peer);
                };
                match tls {
                    None => {
                        taken("TCP");
                        serve_accepted(stream, peer, &mut outgoing, &incoming, &mut shutdown).await;
                    }
                    Some(tls) => {
                        let handshake =
                            tokio::time::timeout(Duration::from_secs(10), tls.accept(stream));
                        let stream = match handshake.await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                warn!(%peer, error = %e, "SIP over TLS: handshake failed");
                                return;
                            }
                            Err(_) => {
                                warn!(%peer, "SIP over TLS: handshake timed out");
                                return;
                            }
                        };
                        taken("TLS");
                        serve_accepted(stream, peer, &mut outgoing, &incoming, &mut shutdown).await;
                    }
                }
                accepted.lock().remove(&peer);
            });
        }
    })
}

/// Serves a connection a peer opened to us, closed when it goes idle.
async fn serve_accepted<S>(
    stream: S,
    peer: SocketAddr,
    outgoing: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    incoming: &mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    shutdown: &mut watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    serve_until_idle(
        stream,
        peer,
        outgoing,
        incoming,
        shutdown,
        ACCEPTED_IDLE_TIMEOUT,
    )
    .await;
}

/// A TCP connection to `server` for requests too large for UDP: made
/// once; when it cannot be made or drops, `failed` hears of it (the user
/// agent then sends what is unanswered over UDP, and the next large
/// request makes a new connection).
async fn large_request_link(
    server: SocketAddr,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    incoming: mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    failed: mpsc::UnboundedSender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connected = tokio::select! {
        c = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(server)) => c,
        _ = shutdown.changed() => return,
    };
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            warn!(%server, error = %e, "a large request cannot go over TCP; sending it over UDP");
            let _ = failed.send(());
            return;
        }
        Err(_) => {
            warn!(%server, "TCP connect timed out; sending the large request over UDP");
            let _ = failed.send(());
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    info!(%server, "SIP over TCP for a request too large for UDP");
    if let Ended::Lost = serve(stream, server, &mut outgoing, &incoming, &mut shutdown).await {
        let _ = failed.send(());
    }
}

/// Where the user agent's messages leave by.
struct Outlets {
    /// Connections peers opened to us.
    accepted: Accepted,
    /// Over UDP, requests too large for it go over a TCP connection to the
    /// server made when first needed (RFC 3261 §18.1.1).
    large: Option<mpsc::UnboundedSender<Vec<u8>>>,
    large_in: mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    large_failed: mpsc::UnboundedSender<()>,
    shutdown: watch::Receiver<bool>,
}

impl Outlets {
    /// Sends one of the user agent's datagrams the way it names.
    async fn send(&mut self, transmit: Transmit, link: &Link) {
        let Transmit { to, data, over } = transmit;
        match over {
            Over::Link => {
                if !self.accepted.send(to, &data) {
                    link.send(to, &data).await;
                }
            }
            Over::LargeRequestStream => {
                let large = self.large.get_or_insert_with(|| {
                    let (requests, outgoing) = mpsc::unbounded_channel();
                    tokio::spawn(large_request_link(
                        to,
                        outgoing,
                        self.large_in.clone(),
                        self.large_failed.clone(),
                        self.shutdown.clone(),
                    ));
                    requests
                });
                let _ = large.send(data);
            }
        }
    }
}

/// Connections taken on the SIP port and what arrives over them.
pub struct Inbound {
    pub accepted: Accepted,
    pub messages: mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>,
}

async fn next_accepted(
    messages: &mut Option<mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>>,
) -> Option<(Vec<u8>, SocketAddr)> {
    match messages {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How a connection to the server ended.
enum Ended {
    /// It dropped or sent garbage: connect again.
    Lost,
    /// The gateway is stopping (or the user agent is gone).
    Stop,
}

/// The connection's task: connects (and shakes hands, with `tls`), then
/// serves the connection until it drops, and again.
async fn keep_stream(
    server: SocketAddr,
    tls: Option<super::tls::TlsClient>,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    incoming: mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let transport = if tls.is_some() { "TLS" } else { "TCP" };
    // Say a failure once, not four times a second.
    let mut failing = false;
    loop {
        let connected = tokio::select! {
            s = connect(server, tls.as_ref()) => s,
            _ = shutdown.changed() => return,
        };
        let ended = match connected {
            Err(e) => {
                if !failing {
                    warn!(%server, error = %e, "SIP over {transport}: cannot connect to the server");
                    failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            Ok(Connection::Tcp(stream)) => {
                failing = false;
                serve(stream, server, &mut outgoing, &incoming, &mut shutdown).await
            }
            Ok(Connection::Tls(stream)) => {
                failing = false;
                info!(%server, "SIP over TLS: connected, the server's certificate checked");
                serve(*stream, server, &mut outgoing, &incoming, &mut shutdown).await
            }
        };
        match ended {
            Ended::Stop => return,
            Ended::Lost => warn!(%server, "SIP {transport} connection lost"),
        }
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

async fn connect(
    server: SocketAddr,
    tls: Option<&super::tls::TlsClient>,
) -> std::io::Result<Connection> {
    let stream = tokio::net::TcpStream::connect(server).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Connection::Tcp(stream)),
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), stream)
                .await?;
            Ok(Connection::Tls(Box::new(stream)))
        }
    }
}

/// [`serve_until_idle`] for our own connections to the server, which stay
/// up however quiet they are.
async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    outgoing: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    incoming: &mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    serve_until_idle(stream, peer, outgoing, incoming, shutdown, OUR_LINK_IDLE).await
}

/// Writes what the user agent sends, cuts what arrives from `peer` into
/// messages (skipping keep-alive CRLFs, RFC 5626). A stream that does not
/// frame, or on which nothing arrives for `idle_timeout`, is dropped.
async fn serve_until_idle<S>(
    stream: S,
    peer: SocketAddr,
    outgoing: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    incoming: &mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    shutdown: &mut watch::Receiver<bool>,
    idle_timeout: Duration,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut framer = StreamFramer::default();
    let mut chunk = vec![0u8; 16 * 1024];
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            message = outgoing.recv() => match message {
                Some(bytes) => {
                    if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                        return Ended::Lost;
                    }
                }
                None => return Ended::Stop,
            },
            read = reader.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return Ended::Lost,
                    Ok(n) => n,
                };
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                framer.push(&chunk[..n]);
                loop {
                    match framer.next_message() {
                        Ok(Some(message)) => {
                            if incoming.send((message, peer)).is_err() {
                                return Ended::Stop;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(error = %e, "SIP stream: a message does not frame; closing it");
                            return Ended::Lost;
                        }
                    }
                }
            }
            _ = &mut idle => {
                info!(%peer, "SIP stream idle; closing it");
                return Ended::Lost;
            }
            _ = shutdown.changed() => return Ended::Stop,
        }
    }
}

/// Starts the driver; the returned handle talks to it.
pub fn start(
    socket: Link,
    inbound: Option<Inbound>,
    ua: UserAgent,
    metrics: Metrics,
    incoming: mpsc::UnboundedSender<IncomingCall>,
    shutdown: watch::Receiver<bool>,
) -> (SipHandle, tokio::task::JoinHandle<()>) {
    let (commands, rx) = mpsc::unbounded_channel();
    let initial = if ua.server().is_some() {
        ServerState::Unchecked
    } else {
        ServerState::NotConfigured
    };
    let server = Arc::new(AtomicU8::new(encode(initial)));
    let registrations = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handle = SipHandle {
        commands,
        server: server.clone(),
        registrations: registrations.clone(),
    };
    let task = tokio::spawn(run(
        socket,
        inbound,
        ua,
        rx,
        (server, registrations),
        metrics,
        incoming,
        shutdown,
    ));
    (handle, task)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut socket: Link,
    inbound: Option<Inbound>,
    mut ua: UserAgent,
    mut commands: mpsc::UnboundedReceiver<Command>,
    (server, registrations): (Arc<AtomicU8>, Arc<std::sync::atomic::AtomicUsize>),
    metrics: Metrics,
    incoming: mpsc::UnboundedSender<IncomingCall>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut waiting: HashMap<String, oneshot::Sender<Result<(), RegisterError>>> = HashMap::new();
    let mut seen = UaCounters::default();
    let mut calls: HashMap<String, DialogEventSender> = HashMap::new();
    let (large_in, mut from_large) = mpsc::unbounded_channel::<(Vec<u8>, SocketAddr)>();
    let (large_failed, mut large_lost) = mpsc::unbounded_channel();
    let (accepted, mut from_accepted) = match inbound {
        Some(Inbound { accepted, messages }) => (accepted, Some(messages)),
        None => (Accepted::default(), None),
    };
    let mut outlets = Outlets {
        accepted,
        large: None,
        large_in,
        large_failed,
        shutdown: shutdown.clone(),
    };
    let mut wake;
    loop {
        // What the last input (or the start) left to do.
        loop {
            let event = match ua.poll_output() {
                UaOutput::Transmit(transmit) => {
                    outlets.send(transmit, &socket).await;
                    continue;
                }
                UaOutput::Timeout(at) => {
                    wake = at;
                    break;
                }
                UaOutput::Event(event) => event,
            };
            match event {
                UaEvent::ServerReachable(up) => {
                    let state = if up {
                        ServerState::Reachable
                    } else {
                        ServerState::Unreachable
                    };
                    if up {
                        info!("SIP server reachable");
                    } else {
                        warn!("SIP server not answering");
                    }
                    server.store(encode(state), Ordering::Relaxed);
                    if let Some(current) = ua.server() {
                        metrics.sip_server_state(&current.to_string(), up);
                    }
                }
                UaEvent::ServerUp { server, up } => {
                    if up {
                        info!(%server, "SIP server up");
                    } else {
                        warn!(%server, "SIP server down");
                    }
                    metrics.sip_server_state(&server.to_string(), up);
                }
                UaEvent::FailedOver { from, to } => {
                    warn!(%from, %to, "SIP server failover: registrations and new calls move");
                    metrics.sip_failovers.inc();
                }
                UaEvent::Incoming {
                    key,
                    user,
                    from,
                    to,
                    caller,
                    call_data,
                    auto_answer,
                    sdp,
                } => {
                    let (tx, events) = mpsc::unbounded_channel();
                    calls.insert(key.clone(), tx);
                    info!(%user, %from, "incoming call");
                    let call = IncomingCall {
                        key: key.clone(),
                        user,
                        from,
                        to,
                        caller,
                        call_data,
                        auto_answer,
                        sdp,
                        events,
                    };
                    if incoming.send(call).is_err() {
                        calls.remove(&key);
                        ua.handle_input(
                            Instant::now(),
                            UaInput::Refuse {
                                key,
                                code: 480,
                                reason: None,
                            },
                        );
                    }
                }
                UaEvent::Call { key, event } => {
                    let last = matches!(
                        event,
                        DialogEvent::Failed { .. }
                            | DialogEvent::RemoteBye
                            | DialogEvent::SessionExpired
                    );
                    if let Some(tx) = calls.get(&key) {
                        let _ = tx.send(Box::new(event));
                    }
                    if last {
                        calls.remove(&key);
                    }
                }
                UaEvent::Registration { id, event } => {
                    let verdict = match event {
                        RegistrationEvent::Registered { expires } => {
                            info!(sid = %id, expires, "registered");
                            Ok(())
                        }
                        RegistrationEvent::Failed { status: Some(code) } => {
                            warn!(sid = %id, status = code, "registration refused");
                            Err(RegisterError::Rejected(code))
                        }
                        RegistrationEvent::Failed { status: None } => {
                            warn!(sid = %id, "registration unanswered");
                            Err(RegisterError::Unreachable)
                        }
                        RegistrationEvent::Unregistered => {
                            info!(sid = %id, "unregistered");
                            continue;
                        }
                    };
                    if let Some(reply) = waiting.remove(&id) {
                        let _ = reply.send(verdict);
                    }
                }
            }
        }
        let now = ua.counters;
        for (counter, total, counted) in [
            (
                &metrics.sip_requests_sent,
                now.requests_sent,
                seen.requests_sent,
            ),
            (
                &metrics.sip_transaction_timeouts,
                now.transaction_timeouts,
                seen.transaction_timeouts,
            ),
            (
                &metrics.sip_registrations_failed,
                now.registrations_failed,
                seen.registrations_failed,
            ),
            (
                &metrics.sip_malformed_received,
                now.malformed_received,
                seen.malformed_received,
            ),
            (
                &metrics.sip_retransmissions_absorbed,
                now.retransmissions_absorbed,
                seen.retransmissions_absorbed,
            ),
        ] {
            counter.inc_by(total - counted);
        }
        for (reason, total, counted) in [
            (
                UNTRUSTED_SOURCE,
                now.untrusted_dropped,
                seen.untrusted_dropped,
            ),
            (
                "too_many_transactions",
                now.transactions_refused,
                seen.transactions_refused,
            ),
        ] {
            if total > counted {
                metrics.count_sip_refused(reason, total - counted);
            }
        }
        seen = now;
        metrics.sip_registrations.set(ua.registered_count() as i64);
        registrations.store(ua.registration_count(), Ordering::Relaxed);
        metrics.sip_dialogs.set(ua.call_count() as i64);
        for (direction, method, status, n) in ua.take_message_counts() {
            metrics
                .sip_messages
                .get_or_create(&crate::metrics::SipMessageLabels {
                    direction: direction.as_str().into(),
                    method,
                    status,
                })
                .inc_by(n);
        }
        let wake_at = wake
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = socket.recv(&mut buf) => {
                if let Some((message, from)) = r {
                    ua.handle_input(Instant::now(), UaInput::Datagram { from, data: &message });
                }
            }
            Some((message, from)) = next_accepted(&mut from_accepted) => {
                ua.handle_input(Instant::now(), UaInput::Datagram { from, data: &message });
            }
            Some((message, from)) = from_large.recv() => {
                ua.handle_input(Instant::now(), UaInput::Datagram { from, data: &message });
            }
            Some(()) = large_lost.recv() => {
                outlets.large = None;
                ua.handle_input(Instant::now(), UaInput::StreamFailed);
            }
            command = commands.recv() => {
                let Some(Command { input, waiter }) = command else { return };
                match (&input, waiter) {
                    (UaInput::Register { id, .. }, Waiter::Registration(reply)) => {
                        waiting.insert(id.clone(), reply);
                    }
                    (UaInput::Invite { key, .. }, Waiter::Dialog(events)) => {
                        calls.insert(key.clone(), events);
                    }
                    (UaInput::Unregister { id }, _) => {
                        if let Some(reply) = waiting.remove(id) {
                            let _ = reply.send(Err(RegisterError::Stopped));
                        }
                    }
                    (
                        UaInput::Hangup { key }
                        | UaInput::Refuse { key, .. }
                        | UaInput::Redirect { key, .. },
                        _,
                    ) => {
                        calls.remove(key);
                    }
                    _ => {}
                }
                ua.handle_input(Instant::now(), input);
            }
            _ = tokio::time::sleep_until(wake_at) => ua.handle_input(Instant::now(), UaInput::Timeout),
            _ = shutdown.changed() => return,
        }
    }
}
