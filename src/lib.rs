//! webrtc-sip-gateway: browsers place and receive phone calls through it.
//!
//! The signaling plane (`api`, `session`, `call`, `sip`, `sdp`, `webrtc`)
//! handles rare events; the media plane (`media`) moves every packet.
//! [`Gateway::start`] wires them together (`startup` builds each part from
//! its config section). See `docs/architecture.md` for the module map and
//! `README.md` for use.

pub mod api;
pub mod call;
pub mod certs;
pub mod config;
pub mod directory;
pub mod echo;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod netif;
pub mod ops;
pub mod origin;
pub mod random;
pub mod sdp;
pub mod session;
pub mod sip;
mod startup;
pub mod webrtc;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use api::tls::TlsError;
use api::{AppState, SharedState};
use config::Config;
use metrics::Metrics;

pub use startup::MediaAddresses;

/// How often a drain looks whether the calls in progress have ended.
const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(200);
/// The longest a drain's end waits for the answers to its unREGISTERs.
pub const UNREGISTER_WAIT: Duration = Duration::from_secs(2);

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

impl Gateway {
    /// Binds every listener and starts serving. The config must be valid
    /// (it is, when it came from [`Config::load`]).
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        startup::raise_open_file_limit();
        let dtls_identity = startup::dtls_identity()?;
        let sip_port = startup::SipPort::bind(&config.sip).await?;
        let (ua, server_names) = startup::user_agent(&config.sip, sip_port.addr).await?;
        let addresses = MediaAddresses::find(&config, ua.server())?;
        // After the addresses: a shared web port binds in their family.
        let relay = startup::relay(&config.media, &addresses)?;
        let metrics = Metrics::new(Some(relay.clone()));
        let plane = startup::media_plane(&config, &addresses, &relay, &dtls_identity)?;
        let state: SharedState =
            Arc::new(AppState::new(config.clone(), metrics, plane).map_err(StartError::Setup)?);
        let redis_url = config.cluster.redis_url.expose();
        if !redis_url.is_empty() {
            let node_sip = sip::driver::advertised_address(sip_port.addr, ua.server());
            let directory = directory::Directory::new(redis_url, node_sip.to_string())
                .map_err(|e| StartError::Setup(e.to_string()))?;
            let _ = state.directory.set(Arc::new(directory));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let tls_identity = startup::tls_identity(&config, &addresses)?;
        let listening =
            startup::serve_api(&state, tls_identity.as_ref(), &shutdown_rx, &mut tasks).await?;
        let sip_addr = sip_port.addr;
        startup::start_sip(
            &state,
            sip_port,
            (ua, &server_names),
            tls_identity.as_ref(),
            &shutdown_rx,
            &mut tasks,
        )?;
        startup::serve_ice_tcp(&config, &addresses, &relay, &shutdown_rx, &mut tasks).await?;
        tasks.push(tokio::spawn(startup::reap_sessions(
            state.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(startup::watch_admission(
            state.clone(),
            shutdown_rx.clone(),
        )));
        if state.directory.get().is_some() {
            tasks.push(tokio::spawn(startup::refresh_directory(
                state.clone(),
                shutdown_rx,
            )));
        }
        state.readiness.api_listening.store(true, Ordering::Relaxed);
        let shown = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
        info!(
            https = %shown(listening.https),
            http = %shown(listening.http),
            admin = %listening.admin,
            sip = %sip_addr,
            "gateway listening"
        );
        Ok(Gateway {
            state,
            relay,
            dtls_identity,
            sip_addr,
            http_addr: listening.http,
            https_addr: listening.https,
            admin_addr: listening.admin,
            tls_fingerprint: tls_identity
                .filter(|_| listening.https.is_some())
                .map(|identity| identity.fingerprint_sha256),
            shutdown,
            tasks,
        })
    }

    /// The drain before a restart: no new sessions or calls from now on
    /// (503, `/readyz` 503, OPTIONS 503); the calls in progress go on until
    /// they end or `[admin] drain-timeout-s` passes; then the calls left and
    /// every session end, and their registrations are taken back
    /// (unREGISTER), waiting [`UNREGISTER_WAIT`] at most for the answers.
    /// Call [`Gateway::shutdown`] after it.
    pub async fn drain(&self) {
        let state = &self.state;
        state.admission.start_drain();
        state.metrics.draining.set(1);
        if let Some(sip) = state.sip.get() {
            sip.set_accepting(false);
        }
        let timeout = Duration::from_secs(state.config.admin.drain_timeout_s);
        info!(
            calls = state.media.calls.len(),
            sessions = state.store().len(),
            timeout_s = timeout.as_secs(),
            "draining: no new sessions or calls; waiting for the calls in progress"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        while !state.media.calls.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_CHECK_EVERY).await;
        }
        let left = state.media.calls.len();
        if left > 0 {
            warn!(calls = left, "drain timeout: ending the calls left");
        }
        let sessions = state.store().take_all();
        let ended = sessions.len();
        let mut users: Vec<String> = sessions.iter().map(|s| s.user.clone()).collect();
        for session in sessions {
            state.end_session(session, session::EndReason::Drained);
        }
        // The directory forgets this node's users before it goes (not left
        // to its background tasks, which the exit would cut short), so no
        // node redirects a call here once it is gone.
        if let Some(directory) = state.directory.get() {
            users.sort();
            users.dedup();
            for user in &users {
                if let Err(e) = directory.withdraw(user).await {
                    warn!(%user, error = %e, "session directory not updated");
                }
            }
        }
        if let Some(sip) = state.sip.get() {
            let until = tokio::time::Instant::now() + UNREGISTER_WAIT;
            while sip.registrations_open() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if sip.registrations_open() > 0 {
                warn!(
                    left = sip.registrations_open(),
                    "unREGISTERs unanswered; exiting anyway"
                );
            }
        }
        info!(sessions = ended, "drained");
    }

    /// Stops accepting and ends the background tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
