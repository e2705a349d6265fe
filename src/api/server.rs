//! Listener loops: plain HTTP, HTTPS (tokio-rustls, HTTP/1.1 and HTTP/2 by
//! ALPN) and the admin port. Each connection runs in its own task; the peer
//! address reaches handlers as `ConnectInfo` for the rate limit and logs.
//!
//! Connection hygiene lives here, below the router: a cap on concurrent
//! connections (over it a connection is closed at once and counted), an
//! idle timeout (a connection with no request in flight and no bytes moving
//! is closed gracefully), HTTP/2 keepalive pings, and the security headers
//! every response carries (`Strict-Transport-Security` on HTTPS when
//! configured).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::debug;

/// Longest a client may take to finish the TLS handshake or send its headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval on a quiet connection, and how long its answer may take.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// What one listener enforces.
#[derive(Clone)]
pub struct ServeOptions {
    /// Concurrent connections, shared by the listeners that share it.
    pub connections: Arc<Semaphore>,
    /// Connections closed at once because `connections` was used up.
    pub refused: Counter,
    /// A connection with no request in flight and no bytes moving for
    /// this long is closed.
    pub idle_timeout: Duration,
    /// `Strict-Transport-Security`'s value on this listener, if any.
    pub hsts: Option<HeaderValue>,
}

impl ServeOptions {
    /// `max_connections` at once, `idle_timeout`, no HSTS.
    pub fn new(max_connections: usize, idle_timeout: Duration, refused: Counter) -> Self {
        ServeOptions {
            connections: Arc::new(Semaphore::new(max_connections)),
            refused,
            idle_timeout,
            hsts: None,
        }
    }

    /// The same limits (and connection count), with HSTS of `max_age_s`.
    pub fn with_hsts(&self, max_age_s: u64) -> Self {
        let mut options = self.clone();
        options.hsts = HeaderValue::from_str(&format!("max-age={max_age_s}")).ok();
        options
    }
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Handshaking connections count too: a flood cannot queue up.
        let Ok(permit) = options.connections.clone().try_acquire_owned() else {
            options.refused.inc();
            debug!(%peer, "too many HTTP connections; closing this one");
            drop(stream);
            continue;
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let options = options.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handle_connection(stream, peer, router, acceptor, options, shutdown).await;
        });
    }
}

/// When a connection last moved bytes, and how many of its requests are
/// in flight: what the idle timer reads.
#[derive(Default)]
struct Activity {
    /// Milliseconds since `epoch` at the last read or write.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self, epoch: Instant) {
        self.last_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long until the connection counts as idle (zero: it is idle).
    fn idle_in(&self, epoch: Instant, timeout: Duration) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return timeout;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        (last + timeout).saturating_sub(epoch.elapsed())
    }
}

/// An I/O stream that notes when bytes move.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    epoch: Instant,
}

impl<S> Watched<S> {
    fn new(inner: S, activity: &Arc<Activity>, epoch: Instant) -> Self {
        Watched {
            inner,
            activity: activity.clone(),
            epoch,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch(self.epoch);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(self.epoch);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The headers every response carries: no MIME sniffing, no referrer
/// leaking a session URL, and HSTS where the listener has it.
fn add_security_headers(headers: &mut axum::http::HeaderMap, hsts: Option<&HeaderValue>) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Some(hsts) = hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    acceptor: Option<TlsAcceptor>,
    options: ServeOptions,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let epoch = Instant::now();
    match acceptor {
        Some(acceptor) => {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let io = Watched::new(tls, &activity, epoch);
            serve_io(io, peer, router, &options, &activity, epoch, shutdown).await;
        }
        None => {
            let io = Watched::new(stream, &activity, epoch);
            serve_io(io, peer, router, &options, &activity, epoch, shutdown).await;
        }
    }
}

/// Serves one connection's requests until it ends, goes idle or the
/// gateway stops (both of the latter end it gracefully: requests in
/// flight finish, HTTP/2 gets a GOAWAY).
async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    options: &ServeOptions,
    activity: &Arc<Activity>,
    epoch: Instant,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hsts = options.hsts.clone();
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let hsts = hsts.clone();
        let in_flight = InFlight::new(&requests);
        async move {
            let _in_flight = in_flight;
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let (body, leftover) = super::leftover::wrap(body);
            let req = hyper::Request::from_parts(parts, axum::body::Body::new(body));
            let mut response = router.oneshot(req).await;
            // What a refusal left unread goes before the refusal does.
            if !leftover.drain().await {
                debug!(%peer, "a refused request's body was too long or too slow to read");
            }
            if let Ok(response) = response.as_mut() {
                add_security_headers(response.headers_mut(), hsts.as_ref());
            }
            response
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    activity.touch(epoch);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = false;
    let result = loop {
        let idle_in = activity.idle_in(epoch, options.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = tokio::time::sleep(idle_in), if !closing => {
                if activity.idle_in(epoch, options.idle_timeout).is_zero() {
                    debug!(%peer, "idle HTTP connection closed");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = shutdown.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
