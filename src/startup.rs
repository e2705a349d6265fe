//! Start-up: each part of the gateway built from its own config section —
//! the relay from `[media]`, the SIP user agent and its transport from
//! `[sip]`, the listeners from `[http]` and `[admin]` — and the tasks that
//! tie them together (incoming-call delivery, the session reaper).
//! [`crate::Gateway::start`] calls these in order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::api::tls::TlsIdentity;
use crate::api::{self, SharedState};
use crate::call::routing::{route_incoming, IncomingRoute};
use crate::config::{self, Config, SipTransport};
use crate::media::relay::{Relay, RelayOptions};
use crate::random::Random;
use crate::webrtc::dtls::DtlsIdentity;
use crate::{call, media, netif, session, sip, StartError};

/// How often idle sessions are looked for at most.
const REAPER_MAX_SLEEP: Duration = Duration::from_secs(1);

/// The media relay for `[media]`: its workers and how they move datagrams.
pub(crate) fn relay(
    m: &config::MediaConfig,
    addresses: &MediaAddresses,
) -> Result<Arc<Relay>, StartError> {
    // The shared web port listens where per-call web sockets would.
    let web_family_any = call::driver::web_bind_address(&addresses.web);
    let workers = match m.relay_workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let options = RelayOptions {
        io: m.relay_io,
        busy_poll: Duration::from_micros(m.relay_busy_poll_us.into()),
        web_port: (m.web_port != 0).then(|| SocketAddr::new(web_family_any, m.web_port)),
    };
    let relay = Relay::start_with_options(workers, options)
        .map_err(|e| StartError::Setup(format!("cannot start the media relay: {e}")))?;
    info!(
        workers,
        web_port = ?relay.web_port().map(|a| a.port()),
        io_asked = ?m.relay_io,
        busy_poll_us = m.relay_busy_poll_us,
        "media relay started (a worker that cannot use io_uring says so)"
    );
    Ok(relay)
}

/// The ICE-TCP listener on `[media] web-tcp-port` (if set), bridging
/// browsers whose UDP is blocked into the relay (`media::ice_tcp`).
pub(crate) async fn serve_ice_tcp(
    config: &Config,
    addresses: &MediaAddresses,
    relay: &Arc<Relay>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    let port = config.media.web_tcp_port;
    if port == 0 {
        return Ok(());
    }
    let at = SocketAddr::new(call::driver::web_bind_address(&addresses.web), port);
    let listener = bind_tcp_dual_stack(at).map_err(|e| {
        StartError::Setup(format!("media.web-tcp-port: cannot listen on {at}: {e}"))
    })?;
    info!(at = %at, "ICE-TCP listening (browsers whose UDP is blocked)");
    tasks.push(tokio::spawn(media::ice_tcp::serve(
        listener,
        relay.clone(),
        relay.ice_tcp_counters(),
        shutdown.clone(),
    )));
    Ok(())
}

/// A TCP listener on `at`; on IPv6's any-address it takes IPv4 too.
fn bind_tcp_dual_stack(at: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if at.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&at.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The process's DTLS certificate for browser legs.
pub(crate) fn dtls_identity() -> Result<DtlsIdentity, StartError> {
    let identity = DtlsIdentity::generate()
        .map_err(|e| StartError::Setup(format!("cannot make the DTLS certificate: {e}")))?;
    info!(
        fingerprint = %identity.fingerprint.to_value(),
        "DTLS certificate for browser legs"
    );
    Ok(identity)
}

/// The call dispatcher for `[media]`, `[sip]` and `[echo]`: port ranges,
/// addresses and the per-call settings.
pub(crate) fn media_plane(
    config: &Config,
    addresses: &MediaAddresses,
    relay: &Arc<Relay>,
    dtls_identity: &DtlsIdentity,
) -> Result<call::driver::MediaPlane, StartError> {
    let m = &config.media;
    info!(
        web = ?addresses.web.iter().map(ToString::to_string).collect::<Vec<_>>(),
        configured = !m.public_address.is_empty(),
        "web leg addresses offered to browsers (ICE host candidates, the first in c=)"
    );
    info!(
        sip = %addresses.sip,
        bound = %addresses.sip_bind,
        "SIP leg media address"
    );
    let settings = call::driver::CallSettings {
        web_addresses: addresses.web.clone(),
        web_tcp_port: m.web_tcp_port,
        web_enable_dtls: m.web_enable_dtls,
        transcode: m.transcode,
        consent_timeout: Duration::from_secs(m.consent_timeout_s),
        rtp_timeout: Duration::from_secs(m.rtp_timeout_s),
        echo_number: config.echo.number.clone(),
        sip_media_address: addresses.sip,
        sip_media_bind: addresses.sip_bind,
        ring_timeout: Duration::from_secs(config.sip.ring_timeout_s),
        dtmf_info: config.sip.dtmf == config::DtmfMode::Info,
        early_media: config.sip.early_media,
        refer_routing: call::driver::ReferRouting {
            domain: config.sip.effective_domain(),
            allowed_domains: config.sip.allowed_destination_domains.clone(),
        },
        asserted_identity: config.sip.asserted_identity,
        sip_srtp: config.sip.srtp,
        limits: call::driver::CallLimits {
            per_session: config.http.max_calls_per_session,
            ringing_out_per_session: config.http.max_ringing_calls_per_session,
            ringing_in_per_user: config.sip.max_ringing_calls_per_user,
            ringing_in_total: config.sip.max_ringing_calls,
            total: config.media.max_calls,
        },
    };
    call::driver::MediaPlane::new(
        relay.clone(),
        dtls_identity.clone(),
        media::ports::PortAllocator::new(m.web_port_min, m.web_port_max, false),
        media::ports::PortAllocator::new(m.sip_port_min, m.sip_port_max, true),
        settings,
    )
    .map_err(|e| StartError::Setup(format!("cannot start the call dispatcher: {e}")))
}

/// Raises the soft open-file limit to the hard one: every media port, SIP
/// and HTTP connection is a descriptor, and distributions start services
/// with a soft limit of 1024. A failure is logged, not fatal (the limit
/// stays what it was).
pub(crate) fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => info!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// One certificate for HTTPS and for SIP over TLS taken on our port: the
/// configured files, else a self-signed one naming the web addresses.
pub(crate) fn tls_identity(
    config: &Config,
    addresses: &MediaAddresses,
) -> Result<Option<TlsIdentity>, StartError> {
    let sip_over_tls = config.sip.transport == SipTransport::Tls && !config.sip.server.is_empty();
    if config.http.tls_listen.is_empty() && !sip_over_tls {
        return Ok(None);
    }
    let names: Vec<String> = addresses.web.iter().map(ToString::to_string).collect();
    let identity =
        TlsIdentity::load_or_generate(&config.http.tls_cert, &config.http.tls_key, &names)?;
    Ok(Some(identity))
}

/// Binds an API listener where [`config::api_bind_address`] says, saying
/// so when that is loopback instead of the configured address.
async fn bind_api(
    state: &SharedState,
    key: &'static str,
    configured: &str,
) -> Result<TcpListener, StartError> {
    let addr = config::api_bind_address(&state.config.auth, configured);
    if addr != configured {
        tracing::warn!(
            configured,
            listening = %addr,
            "auth.mode is \"none\" (anyone may open a session): {key} listens on loopback only; \
             set auth.allow-anonymous = true to listen where configured, or use auth.mode = \"token\""
        );
    }
    bind(key, &addr).await
}

/// Concurrent connections the admin port takes.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Where the API ended up listening.
pub(crate) struct Listening {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// The signaling API on `[http]` (HTTPS and/or plain HTTP) and the
/// operators' endpoints on `[admin]`.
pub(crate) async fn serve_api(
    state: &SharedState,
    tls_identity: Option<&TlsIdentity>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Listening, StartError> {
    let http = &state.config.http;
    let router = api::router(state.clone());
    // One connection budget for the API's HTTP and HTTPS listeners.
    let limits = api::server::ServeOptions::new(
        http.max_connections,
        Duration::from_secs(http.idle_timeout_s),
        state.metrics.http_connections_refused.clone(),
    );
    let mut https_addr = None;
    if let (false, Some(identity)) = (http.tls_listen.is_empty(), tls_identity) {
        let listener = bind_api(state, "http.tls-listen", &http.tls_listen).await?;
        https_addr = Some(local_addr(&listener, "http.tls-listen")?);
        info!(
            fingerprint_sha256 = %identity.fingerprint_sha256,
            self_signed = identity.self_signed,
            "HTTPS certificate"
        );
        // HSTS only with a real certificate: on a self-signed one it would
        // leave browsers no way past the warning.
        let options = if identity.self_signed || http.hsts_max_age_s == 0 {
            limits.clone()
        } else {
            limits.with_hsts(http.hsts_max_age_s)
        };
        tasks.push(tokio::spawn(api::server::serve(
            listener,
            router.clone(),
            Some(identity.server_config()?),
            options,
            shutdown.clone(),
        )));
    }
    let mut http_addr = None;
    if !http.listen.is_empty() {
        let listener = bind_api(state, "http.listen", &http.listen).await?;
        http_addr = Some(local_addr(&listener, "http.listen")?);
        tasks.push(tokio::spawn(api::server::serve(
            listener,
            router,
            None,
            limits,
            shutdown.clone(),
        )));
    }
    let admin = &state.config.admin;
    let listener = bind("admin.listen", &admin.listen).await?;
    let admin_addr = local_addr(&listener, "admin.listen")?;
    // The admin port has a small budget of its own: a flood of API
    // connections cannot lock out health checks and scrapes.
    tasks.push(tokio::spawn(api::server::serve(
        listener,
        api::admin_router(state.clone()),
        None,
        api::server::ServeOptions::new(
            ADMIN_MAX_CONNECTIONS,
            Duration::from_secs(http.idle_timeout_s),
            state.metrics.http_connections_refused.clone(),
        ),
        shutdown.clone(),
    )));
    Ok(Listening {
        https: https_addr,
        http: http_addr,
        admin: admin_addr,
    })
}

/// Our SIP port, bound before the user agent is made (it advertises the
/// port the kernel chose).
pub(crate) struct SipPort {
    pub addr: SocketAddr,
    udp: UdpSocket,
    streams: TcpListener,
}

impl SipPort {
    pub(crate) async fn bind(c: &config::SipConfig) -> Result<SipPort, StartError> {
        // TCP on the same port whatever the transport: RFC 3261 §18 asks
        // every element for both, and a server sends a request too large
        // for UDP over TCP.
        let (udp, streams) = bind_sip(&c.listen).await?;
        let addr = udp.local_addr().map_err(|e| StartError::Bind {
            key: "sip.listen",
            addr: c.listen.clone(),
            reason: e.to_string(),
        })?;
        Ok(SipPort { addr, udp, streams })
    }
}

/// The SIP side for `[sip]`: the link to the server (UDP, or a TCP/TLS
/// stream), connections the server opens to us, the user agent's driver,
/// and delivery of incoming calls to browser sessions.
pub(crate) fn start_sip(
    state: &SharedState,
    port: SipPort,
    (ua, server_names): (sip::ua::UserAgent, &[String]),
    tls_identity: Option<&TlsIdentity>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    let c = &state.config.sip;
    let link = match (ua.server(), c.transport) {
        (Some(_), SipTransport::Tcp) => sip::driver::Link::streams(
            ua.servers().iter().map(|s| (*s, None)).collect(),
            shutdown.clone(),
        ),
        (Some(_), SipTransport::Tls) => {
            let servers = ua
                .servers()
                .iter()
                .zip(server_names)
                .map(|(server, host)| Ok((*server, Some(sip_tls_client(c, host)?))))
                .collect::<Result<Vec<_>, StartError>>()?;
            sip::driver::Link::streams(servers, shutdown.clone())
        }
        _ => sip::driver::Link::Udp(port.udp),
    };
    // The server may open connections to our SIP port: TLS ones with
    // transport "tls", plain TCP ones otherwise.
    let acceptor = match (c.transport, tls_identity) {
        (SipTransport::Udp | SipTransport::Tcp, _) => Some(None),
        (SipTransport::Tls, Some(identity)) => Some(Some(tokio_rustls::TlsAcceptor::from(
            identity.server_config_with_alpn(Vec::new())?,
        ))),
        _ => None,
    };
    let inbound = match acceptor {
        Some(tls) => {
            let listener = port.streams;
            let accepted = sip::driver::Accepted::default();
            let (to_ua, messages) = tokio::sync::mpsc::unbounded_channel();
            tasks.push(sip::driver::accept_stream(
                listener,
                tls,
                ua.trusted().clone(),
                state.metrics.clone(),
                accepted.clone(),
                to_ua,
                shutdown.clone(),
            ));
            Some(sip::driver::Inbound { accepted, messages })
        }
        _ => None,
    };
    let (incoming_tx, incoming_rx) = tokio::sync::mpsc::unbounded_channel();
    let (sip, sip_task) = sip::driver::start(
        link,
        inbound,
        ua,
        state.metrics.clone(),
        incoming_tx,
        shutdown.clone(),
    );
    tasks.push(sip_task);
    tasks.push(tokio::spawn(deliver_incoming_calls(
        state.clone(),
        sip.clone(),
        incoming_rx,
    )));
    if state.sip.set(sip).is_err() {
        return Err(StartError::Setup("the SIP side started twice".into()));
    }
    Ok(())
}

/// The TLS client toward a SIP server whose host is `host`: the configured
/// CA file (or the system roots) and the expected name (`tls-server-name`,
/// else that host).
fn sip_tls_client(c: &config::SipConfig, host: &str) -> Result<sip::tls::TlsClient, StartError> {
    let name = if c.tls_server_name.is_empty() {
        host.to_string()
    } else {
        c.tls_server_name.clone()
    };
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    sip::tls::client(&c.tls_ca_file, &name).map_err(|e| StartError::Setup(format!("sip: {e}")))
}

/// Where each media leg is reached and sends from.
pub struct MediaAddresses {
    /// Web leg candidates, in the order offered (never empty).
    pub web: Vec<IpAddr>,
    /// The SIP leg's address in our SDP, and what its sockets bind to.
    pub sip: IpAddr,
    pub sip_bind: IpAddr,
}

impl MediaAddresses {
    /// From `[media] public-address` (else the host's own addresses) and
    /// `[sip] media-address` (else the route's source toward `server`,
    /// loopback without one).
    pub fn find(config: &Config, server: Option<SocketAddr>) -> Result<Self, StartError> {
        let host = netif::host_addresses()
            .map_err(|e| StartError::Setup(format!("cannot read the host's addresses: {e}")))?;
        let configured = config
            .media
            .public_address
            .parse()
            .map_err(|e| StartError::Setup(format!("media.public-address: {e}")))?;
        let web = if configured.is_empty() {
            netif::default_web_addresses(&host)
        } else {
            configured
        };
        let sip =
            if config.sip.media_address.is_empty() {
                server
                    .and_then(netif::route_source)
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
            } else {
                config.sip.media_address.parse().map_err(|_| {
                    StartError::Setup("sip.media-address is not an IP address".into())
                })?
            };
        let sip_bind = if netif::is_host_address(&host, sip) {
            sip
        } else if sip.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        Ok(MediaAddresses { web, sip, sip_bind })
    }
}

/// The SIP user agent for `[sip]`: the servers located, our advertised
/// address, timers and intervals; and the name each server's TLS
/// certificate must carry (its entry's host: for servers an SRV record
/// named, the domain looked up, RFC 5922 §4).
pub(crate) async fn user_agent(
    c: &config::SipConfig,
    listening: SocketAddr,
) -> Result<(sip::ua::UserAgent, Vec<String>), StartError> {
    let mut servers = Vec::new();
    let mut names = Vec::new();
    let mut server_ips = Vec::new();
    let domain = c.effective_domain();
    for entry in c.server.entries() {
        let (host, port) = config::server_parts(entry, c.transport).map_err(StartError::Setup)?;
        let mut targets = Vec::new();
        if sip::locate::wants_srv(&host, port) {
            targets = srv_targets(&host, c.transport).await;
            if !targets.is_empty() {
                info!(server = %entry, targets = ?targets, "SIP servers from DNS SRV");
            }
        }
        if targets.is_empty() {
            targets.push((
                host.clone(),
                port.unwrap_or_else(|| c.transport.default_port()),
            ));
        }
        let mut found = false;
        for (target, target_port) in targets {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((target.as_str(), target_port))
                .await
                .map(Iterator::collect)
                .unwrap_or_default();
            if let Some(first) = resolved.first().copied() {
                if !servers.contains(&first) {
                    servers.push(first);
                    names.push(host.clone());
                }
                server_ips.extend(resolved.iter().map(SocketAddr::ip));
                found = true;
            }
        }
        if !found {
            return Err(StartError::Setup(format!(
                "sip.server: cannot resolve {entry:?}"
            )));
        }
    }
    let server = servers.first().copied();
    let cfg = sip::ua::UaConfig {
        servers,
        identity: sip::identity::Identity {
            domain,
            local: sip::driver::advertised_address(listening, server),
            transport: if server.is_some() {
                c.transport
            } else {
                SipTransport::Udp
            },
        },
        timers: sip::transaction::TimerConfig {
            t1: Duration::from_millis(c.timer_t1_ms),
            t2: Duration::from_millis(c.timer_t2_ms),
            t4: Duration::from_millis(c.timer_t4_ms),
        },
        register_expires: c.register_expires_s,
        keepalive: (server.is_some() && c.keepalive_interval_s > 0)
            .then(|| Duration::from_secs(c.keepalive_interval_s)),
        trusted: trusted_sources(c, &server_ips)?,
        call_data: sip::call_data::CallDataRules::from(c),
        accept_refer: c.accept_refer,
        session_timer: sip::session_timer::SessionTimerConfig {
            expires_s: c.session_expires_s,
        },
        transactions: sip::endpoint::TransactionLimits {
            per_source: c.max_transactions_per_source,
            total: c.max_transactions,
        },
    };
    let random = Random::from_os().map_err(|e| StartError::Setup(format!("sip: {e}")))?;
    Ok((sip::ua::UserAgent::new(cfg, Instant::now(), random), names))
}

/// The (target, port) pairs DNS SRV gives for `domain` over `transport`,
/// in the order to try them; none when it has no records or DNS cannot be
/// asked (then the name's own addresses are used).
async fn srv_targets(domain: &str, transport: SipTransport) -> Vec<(String, u16)> {
    let resolver = match hickory_resolver::TokioResolver::builder_tokio() {
        Ok(builder) => builder.build(),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver configuration: SRV not looked up");
            return Vec::new();
        }
    };
    let name = sip::locate::srv_name(domain, transport);
    // A resolver that does not answer must not hold the start for long.
    let lookup = tokio::time::timeout(SRV_LOOKUP_TIMEOUT, resolver.srv_lookup(name.as_str()));
    match lookup.await {
        Err(_) => {
            tracing::warn!(%name, "DNS SRV lookup timed out: using the name's own addresses");
            Vec::new()
        }
        Ok(Ok(answer)) => sip::locate::order(
            answer
                .iter()
                .map(|srv| sip::locate::SrvRecord {
                    priority: srv.priority(),
                    weight: srv.weight(),
                    port: srv.port(),
                    target: srv.target().to_utf8(),
                })
                .collect(),
        ),
        Ok(Err(_)) => Vec::new(),
    }
}

/// The longest the start waits for one DNS SRV answer.
const SRV_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Whom SIP is taken from: the server's resolved addresses and
/// `[sip] trusted-sources` (checked by `validate`, so a bad entry here
/// is a setup error, not a panic).
fn trusted_sources(
    c: &config::SipConfig,
    server: &[std::net::IpAddr],
) -> Result<sip::sources::TrustedSources, StartError> {
    let networks = c
        .trusted_sources
        .iter()
        .map(|entry| config::parse_network(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Setup(format!("sip.trusted-sources: {e}")))?;
    Ok(sip::sources::TrustedSources::new(server, &networks))
}

/// Hands each incoming SIP call to the session [`route_incoming`] picks,
/// or refuses it with the status it gives.
async fn deliver_incoming_calls(
    state: SharedState,
    sip: sip::driver::SipHandle,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<sip::driver::IncomingCall>,
) {
    while let Some(call) = incoming.recv().await {
        if let Err(refusal) = state.admission.check_call() {
            state.metrics.count_call_refused(refusal.as_str());
            info!(user = %call.user, status = 503, "incoming call refused: {refusal}");
            sip.refuse(&call.key, 503);
            continue;
        }
        let session = match route_incoming(state.store().find_by_user(&call.user)) {
            IncomingRoute::ToSession(id) => id,
            IncomingRoute::Refuse { status, why } => {
                match state.directory.get().cloned() {
                    // Perhaps on another node: the directory says (in a
                    // task of its own, not to hold up the calls behind).
                    Some(directory) => {
                        tokio::spawn(redirect_or_refuse(
                            state.clone(),
                            sip.clone(),
                            directory,
                            call,
                            (status, why),
                        ));
                    }
                    None => {
                        info!(user = %call.user, status, "incoming call refused: {why}");
                        sip.refuse(&call.key, status);
                    }
                }
                continue;
            }
        };
        let events = state.clone();
        let notify = move |sid: &str, event: session::SessionEvent| {
            if let session::SessionEvent::CallEnded { reason, .. } = &event {
                events.metrics.call_ended(reason);
            }
            events.store().push(sid, event);
        };
        match state.media.start_inbound_call(&sip, &session, call, notify) {
            Ok(_) => state.metrics.call_started(),
            Err(e) => {
                if matches!(
                    e,
                    call::driver::StartError::Limit(call::driver::CallLimit::Total(_))
                ) {
                    state.metrics.count_call_refused("max_calls");
                }
                tracing::warn!(error = %e, "incoming call refused");
            }
        }
    }
}

/// The driver of [`crate::ops::admission`]: samples the machine's CPU
/// counters once a second into the averaged load, and tells the SIP side
/// whenever the node starts or stops taking new calls (its OPTIONS answer).
pub(crate) async fn watch_admission(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    use crate::ops::admission::{parse_proc_stat, CpuLoad};
    let mut load = CpuLoad::default();
    let mut accepting = true;
    let mut warned = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let read = tokio::fs::read_to_string("/proc/stat")
            .await
            .map_err(|e| e.to_string())
            .and_then(|text| parse_proc_stat(&text));
        match read {
            Ok(times) => {
                if let Some(permille) = load.sample(times) {
                    state.admission.note_cpu_busy(permille);
                    state.metrics.cpu_busy_percent.set(i64::from(permille / 10));
                }
            }
            Err(e) if !warned => {
                warned = true;
                if state.config.media.max_cpu_percent > 0 {
                    tracing::warn!("media.max-cpu-percent cannot work: /proc/stat: {e}");
                }
            }
            Err(_) => {}
        }
        let now = state.admission_state();
        if (now == "ok") != accepting {
            accepting = now == "ok";
            if accepting {
                info!("taking new calls again");
            } else {
                tracing::warn!(reason = now, "taking no new calls");
            }
            if let Some(sip) = state.sip.get() {
                sip.set_accepting(accepting);
            }
        }
    }
}

/// An incoming call for a user with no session here: redirected (302) to
/// the node the session directory names, else refused as without one.
async fn redirect_or_refuse(
    state: SharedState,
    sip: sip::driver::SipHandle,
    directory: Arc<crate::directory::Directory>,
    call: sip::driver::IncomingCall,
    (status, why): (u16, &'static str),
) {
    match directory.lookup(&call.user).await {
        Ok(Some(node)) => {
            info!(user = %call.user, %node, "incoming call redirected to the node with the user's session");
            state.metrics.calls_redirected.inc();
            sip.redirect(&call.key, format!("sip:{}@{node}", call.user));
        }
        Ok(None) => {
            info!(user = %call.user, status, "incoming call refused: {why}");
            sip.refuse(&call.key, status);
        }
        Err(e) => {
            state.metrics.directory_errors.inc();
            tracing::warn!(user = %call.user, error = %e, "session directory unread; incoming call refused");
            sip.refuse(&call.key, status);
        }
    }
}

/// Keeps this node's entries in the session directory alive (they expire
/// if the node dies).
pub(crate) async fn refresh_directory(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    let Some(directory) = state.directory.get().cloned() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::directory::REFRESH_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let users = state.store().users_receiving_calls();
        if let Err(e) = directory.refresh(&users).await {
            state.metrics.directory_errors.inc();
            tracing::warn!(error = %e, "session directory not refreshed");
        }
    }
}

/// The session reaper: the driver for [`session::SessionStore::expire`].
pub(crate) async fn reap_sessions(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = state.expire_sessions(Instant::now());
        let sleep = next
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(REAPER_MAX_SLEEP)
            .clamp(Duration::from_millis(10), REAPER_MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind {
        key,
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}

fn local_addr(listener: &TcpListener, key: &'static str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|e| StartError::Bind {
        key,
        addr: String::new(),
        reason: e.to_string(),
    })
}

/// The SIP port: UDP and TCP on the same port number. With port 0 the kernel's UDP choice may be taken for
/// TCP by someone else: then another port is tried.
async fn bind_sip(listen: &str) -> Result<(UdpSocket, TcpListener), StartError> {
    let failed = |e: std::io::Error| StartError::Bind {
        key: "sip.listen",
        addr: listen.to_string(),
        reason: e.to_string(),
    };
    let any_port = listen.ends_with(":0");
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(listen).await.map_err(failed)?;
        let addr = udp.local_addr().map_err(failed)?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if any_port && tries < 16 => tries += 1,
            Err(e) => return Err(failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, "test", Vec::new()).unwrap()
    }

    #[test]
    fn media_addresses_default_to_the_host_and_the_route() {
        let found = MediaAddresses::find(&config(""), None).unwrap();
        assert_eq!(
            found.web.last(),
            Some(&std::net::IpAddr::from([127, 0, 0, 1])),
            "loopback is offered last"
        );
        assert!(found.web[..found.web.len() - 1]
            .iter()
            .all(|ip| netif::is_lan_candidate(*ip)));
        // No server: the SIP leg is the echo's, on loopback.
        assert_eq!(found.sip, std::net::IpAddr::from([127, 0, 0, 1]));
        let server: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let found = MediaAddresses::find(&config(""), Some(server)).unwrap();
        assert_eq!(
            found.sip,
            server.ip(),
            "the route's source toward the server"
        );
        assert_eq!(found.sip_bind, found.sip, "bound, so media leaves from it");
    }

    #[test]
    fn configured_media_addresses_are_taken_as_given() {
        let c = config(
            "[media]\npublic-address = [\"203.0.113.5\", \"127.0.0.1\"]\n\
             [sip]\nmedia-address = \"127.0.0.5\"\n",
        );
        let found = MediaAddresses::find(&c, None).unwrap();
        let web: Vec<String> = found.web.iter().map(ToString::to_string).collect();
        assert_eq!(web, ["203.0.113.5", "127.0.0.1"]);
        assert_eq!(found.sip.to_string(), "127.0.0.5");
        assert_eq!(found.sip_bind.to_string(), "127.0.0.5");
        // A NAT's address: advertised, but the sockets listen everywhere.
        let c = config("[sip]\nmedia-address = \"203.0.113.7\"\n");
        let found = MediaAddresses::find(&c, None).unwrap();
        assert_eq!(found.sip.to_string(), "203.0.113.7");
        assert!(found.sip_bind.is_unspecified());
    }
}
