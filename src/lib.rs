//! webrtc-sip-gateway: browsers place and receive phone calls through it.
//!
//! The signaling plane (this crate's `api`, `session`, and later `call`,
//! `sip`, `sdp`) handles rare events; the media plane (`media`) moves every
//! packet. See `shared/ARCHITECTURE.md` for the design and `README.md` for use.

pub mod api;
pub mod call;
pub mod config;
pub mod echo;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod netif;
pub mod ops;
pub mod sdp;
pub mod session;
pub mod sip;
pub mod webrtc;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use api::tls::{TlsError, TlsIdentity};
use api::{AppState, SharedState};
use config::Config;
use metrics::Metrics;

/// How often idle sessions are looked for at most.
const REAPER_MAX_SLEEP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {key} = {addr}: {reason}")]
    Bind {
        key: &'static str,
        addr: String,
        reason: String,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Setup(String),
}

/// A running gateway: its listeners, background tasks and shared state.
pub struct Gateway {
    pub state: SharedState,
    /// The media relay (its workers run until the gateway is dropped).
    pub relay: Arc<media::relay::Relay>,
    /// The process's DTLS certificate for browser legs.
    pub dtls_identity: webrtc::dtls::DtlsIdentity,
    /// Where the SIP endpoint listens (UDP).
    pub sip_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// SHA-256 of the HTTPS certificate, colon-separated hex.
    pub tls_fingerprint: Option<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind {
        key,
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}

/// The SIP port: UDP always, and TCP on the same port number when streams
/// are taken there. With port 0 the kernel's UDP choice may be taken for
/// TCP by someone else: then another port is tried.
async fn bind_sip(
    listen: &str,
    with_tcp: bool,
) -> Result<(tokio::net::UdpSocket, Option<TcpListener>), StartError> {
    let failed = |e: std::io::Error| StartError::Bind {
        key: "sip.listen",
        addr: listen.to_string(),
        reason: e.to_string(),
    };
    let any_port = listen.ends_with(":0");
    let mut tries = 0;
    loop {
        let udp = tokio::net::UdpSocket::bind(listen).await.map_err(failed)?;
        if !with_tcp {
            return Ok((udp, None));
        }
        let addr = udp.local_addr().map_err(failed)?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(_) if any_port && tries < 16 => tries += 1,
            Err(e) => return Err(failed(e)),
        }
    }
}

fn local_addr(listener: &TcpListener, key: &'static str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|e| StartError::Bind {
        key,
        addr: String::new(),
        reason: e.to_string(),
    })
}

impl Gateway {
    /// Binds every listener and starts serving. The config must be valid
    /// (it is, when it came from [`Config::load`]).
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        // Refuse what this build cannot do rather than silently doing less.
        let config = Arc::new(config);
        let workers = match config.media.relay_workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let relay_options = media::relay::RelayOptions {
            io: config.media.relay_io,
            busy_poll: std::time::Duration::from_micros(config.media.relay_busy_poll_us.into()),
        };
        let relay = media::relay::Relay::start_with_options(workers, relay_options)
            .map_err(|e| StartError::Setup(format!("cannot start the media relay: {e}")))?;
        info!(
            workers,
            io_asked = ?config.media.relay_io,
            busy_poll_us = config.media.relay_busy_poll_us,
            "media relay started (a worker that cannot use io_uring says so)"
        );
        let metrics = Metrics::new(Some(relay.clone()));
        let dtls_identity = webrtc::dtls::DtlsIdentity::generate()
            .map_err(|e| StartError::Setup(format!("cannot make the DTLS certificate: {e}")))?;
        info!(
            fingerprint = %dtls_identity.fingerprint.to_value(),
            "DTLS certificate for browser legs"
        );
        let takes_streams = matches!(
            config.sip.transport,
            config::SipTransport::Tcp | config::SipTransport::Tls
        );
        let (sip_socket, sip_stream_listener) = bind_sip(&config.sip.listen, takes_streams).await?;
        let sip_addr = sip_socket.local_addr().map_err(|e| StartError::Bind {
            key: "sip.listen",
            addr: config.sip.listen.clone(),
            reason: e.to_string(),
        })?;
        let ua = sip_user_agent(&config, sip_addr).await?;
        let m = &config.media;
        let addresses = MediaAddresses::find(&config, ua.server())?;
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
            web_enable_dtls: m.web_enable_dtls,
            consent_timeout: Duration::from_secs(m.consent_timeout_s),
            rtp_timeout: Duration::from_secs(m.rtp_timeout_s),
            echo_number: config.echo.number.clone(),
            sip_media_address: addresses.sip,
            sip_media_bind: addresses.sip_bind,
            ring_timeout: Duration::from_secs(config.sip.ring_timeout_s),
            dtmf_info: config.sip.dtmf == config::DtmfMode::Info,
            sip_srtp: config.sip.srtp,
        };
        let plane = call::driver::MediaPlane::new(
            relay.clone(),
            dtls_identity.clone(),
            media::ports::PortAllocator::new(m.web_port_min, m.web_port_max, false),
            media::ports::PortAllocator::new(m.sip_port_min, m.sip_port_max, true),
            settings,
        )
        .map_err(|e| StartError::Setup(format!("cannot start the call dispatcher: {e}")))?;
        let state: SharedState =
            Arc::new(AppState::new(config.clone(), metrics, plane).map_err(StartError::Setup)?);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let api_router = api::router(state.clone());

        let mut https_addr = None;
        let mut tls_fingerprint = None;
        // One certificate for HTTPS and for SIP over TLS taken on our port.
        let sip_over_tls =
            config.sip.transport == config::SipTransport::Tls && !config.sip.server.is_empty();
        let tls_identity = if !config.http.tls_listen.is_empty() || sip_over_tls {
            let names: Vec<String> = addresses.web.iter().map(ToString::to_string).collect();
            Some(TlsIdentity::load_or_generate(
                &config.http.tls_cert,
                &config.http.tls_key,
                &names,
            )?)
        } else {
            None
        };
        if let (false, Some(identity)) = (config.http.tls_listen.is_empty(), &tls_identity) {
            let listener = bind("http.tls-listen", &config.http.tls_listen).await?;
            let addr = local_addr(&listener, "http.tls-listen")?;
            info!(
                fingerprint_sha256 = %identity.fingerprint_sha256,
                self_signed = identity.self_signed,
                "HTTPS certificate"
            );
            tasks.push(tokio::spawn(api::server::serve(
                listener,
                api_router.clone(),
                Some(identity.server_config()?),
                shutdown_rx.clone(),
            )));
            https_addr = Some(addr);
            tls_fingerprint = Some(identity.fingerprint_sha256.clone());
        }

        let mut http_addr = None;
        if !config.http.listen.is_empty() {
            let listener = bind("http.listen", &config.http.listen).await?;
            http_addr = Some(local_addr(&listener, "http.listen")?);
            tasks.push(tokio::spawn(api::server::serve(
                listener,
                api_router,
                None,
                shutdown_rx.clone(),
            )));
        }

        let listener = bind("admin.listen", &config.admin.listen).await?;
        let admin_addr = local_addr(&listener, "admin.listen")?;
        tasks.push(tokio::spawn(api::server::serve(
            listener,
            api::admin_router(state.clone()),
            None,
            shutdown_rx.clone(),
        )));

        let (incoming_tx, incoming_rx) = tokio::sync::mpsc::unbounded_channel();
        let link = match (ua.server(), config.sip.transport) {
            (Some(server), config::SipTransport::Tcp) => {
                sip::driver::Link::stream(server, None, shutdown_rx.clone())
            }
            (Some(server), config::SipTransport::Tls) => {
                let tls = sip_tls_client(&config.sip)?;
                sip::driver::Link::stream(server, Some(tls), shutdown_rx.clone())
            }
            _ => sip::driver::Link::Udp(sip_socket),
        };
        // Over TCP or TLS the server may also open connections to our SIP port.
        let acceptor = match (config.sip.transport, &tls_identity) {
            (config::SipTransport::Tcp, _) => Some(None),
            (config::SipTransport::Tls, Some(identity)) => Some(Some(
                tokio_rustls::TlsAcceptor::from(identity.server_config_with_alpn(Vec::new())?),
            )),
            _ => None,
        };
        let inbound = match (acceptor, sip_stream_listener) {
            (Some(tls), Some(listener)) => {
                let accepted = sip::driver::Accepted::default();
                let (to_ua, messages) = tokio::sync::mpsc::unbounded_channel();
                tasks.push(sip::driver::accept_stream(
                    listener,
                    tls,
                    accepted.clone(),
                    to_ua,
                    shutdown_rx.clone(),
                ));
                Some(sip::driver::Inbound { accepted, messages })
            }
            _ => None,
        };
        let (sip, sip_task) = sip::driver::start(
            link,
            inbound,
            ua,
            state.metrics.clone(),
            incoming_tx,
            shutdown_rx.clone(),
        );
        tasks.push(sip_task);
        tasks.push(tokio::spawn(route_incoming_calls(
            state.clone(),
            sip.clone(),
            incoming_rx,
        )));
        if state.sip.set(sip).is_err() {
            return Err(StartError::Setup("the SIP side started twice".into()));
        }

        tasks.push(tokio::spawn(reap_sessions(state.clone(), shutdown_rx)));
        state.readiness.api_listening.store(true, Ordering::Relaxed);
        let shown = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
        info!(
            https = %shown(https_addr),
            http = %shown(http_addr),
            admin = %admin_addr,
            sip = %sip_addr,
            "gateway listening"
        );
        Ok(Gateway {
            state,
            relay,
            dtls_identity,
            sip_addr,
            http_addr,
            https_addr,
            admin_addr,
            tls_fingerprint,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting and ends the background tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The TLS client toward the SIP server: the configured CA file (or the
/// system roots) and the expected name (`tls-server-name`, else the host of
/// `server`).
fn sip_tls_client(c: &config::SipConfig) -> Result<sip::tls::TlsClient, StartError> {
    let name = if c.tls_server_name.is_empty() {
        config::parse_host_port(&c.server, c.transport.default_port())
            .map_err(StartError::Setup)?
            .0
    } else {
        c.tls_server_name.clone()
    };
    let name = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    sip::tls::client(&c.tls_ca_file, &name).map_err(|e| StartError::Setup(format!("sip: {e}")))
}

/// The SIP user agent for the config: the server resolved, our advertised
/// address, timers and intervals.
/// Where each media leg is reached and sends from.
pub struct MediaAddresses {
    /// Web leg candidates, in the order offered (never empty).
    pub web: Vec<std::net::IpAddr>,
    /// The SIP leg's address in our SDP, and what its sockets bind to.
    pub sip: std::net::IpAddr,
    pub sip_bind: std::net::IpAddr,
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
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            } else {
                config.sip.media_address.parse().map_err(|_| {
                    StartError::Setup("sip.media-address is not an IP address".into())
                })?
            };
        let sip_bind = if netif::is_host_address(&host, sip) {
            sip
        } else if sip.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        Ok(MediaAddresses { web, sip, sip_bind })
    }
}

async fn sip_user_agent(
    config: &Config,
    listening: SocketAddr,
) -> Result<sip::ua::UserAgent, StartError> {
    let c = &config.sip;
    let mut server = None;
    let mut domain = c.domain.clone();
    if !c.server.is_empty() {
        let (host, port) = config::parse_host_port(&c.server, c.transport.default_port())
            .map_err(StartError::Setup)?;
        let resolved = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                StartError::Setup(format!("sip.server: cannot resolve {:?}", c.server))
            })?;
        server = Some(resolved);
        if domain.is_empty() {
            domain = host;
        }
    }
    if domain.is_empty() {
        domain = "invalid".into();
    }
    let cfg = sip::ua::UaConfig {
        server,
        identity: sip::registration::Identity {
            domain,
            local: sip::driver::advertised_address(listening, server),
            transport: if server.is_some() {
                c.transport
            } else {
                config::SipTransport::Udp
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
    };
    Ok(sip::ua::UserAgent::new(cfg, Instant::now()))
}

/// Incoming SIP calls go to the newest session of the Request-URI's user;
/// a user whose session ended gets 480, one never seen 404.
async fn route_incoming_calls(
    state: SharedState,
    sip: sip::driver::SipHandle,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<sip::driver::IncomingCall>,
) {
    while let Some(call) = incoming.recv().await {
        let found = state.store().find_by_user(&call.user);
        let session = match found {
            session::UserLookup::Session(id) => id,
            session::UserLookup::Gone => {
                info!(user = %call.user, "incoming call for a user whose session ended: 480");
                sip.refuse(&call.key, 480);
                continue;
            }
            session::UserLookup::Unknown => {
                info!(user = %call.user, "incoming call for nobody here: 404");
                sip.refuse(&call.key, 404);
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
            Err(e) => tracing::warn!(error = %e, "incoming call refused"),
        }
    }
}

/// The session reaper: the driver for [`session::SessionStore::expire`].
async fn reap_sessions(state: SharedState, mut shutdown: watch::Receiver<bool>) {
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
