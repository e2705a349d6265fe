//! The signaling API (`docs/api.md`): routing, CORS, auth, rate limit,
//! request metrics and spans, and the session endpoints.
//!
//! Handlers lock the session store only for short, non-awaiting sections; a
//! long-poll waits on the session's `Notify` outside the lock.

pub mod assets;
pub mod calls;
pub mod cors;
pub mod error;
pub mod leftover;
pub mod ratelimit;
pub mod server;
pub mod tls;
pub mod token;

use crate::random::Random;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Path, RawQuery, Request, State,
};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::{info, warn, Instrument};

use crate::call::driver::MediaPlane;
use crate::config::{AuthMode, Config};
use crate::metrics::{HttpLabels, KindLabels, Metrics};
use crate::session::{EndReason, EventRecord, Session, SessionError, SessionStore};
use crate::sip::driver::{RegisterError, ServerState, SipHandle};
use cors::{CorsPolicy, OriginVerdict};
pub use error::ApiError;
use ratelimit::RateLimiter;

/// Longest a long-poll may wait, in seconds (docs/api.md).
pub const MAX_POLL_TIMEOUT_S: u64 = 30;
/// Wait used when a poll names no timeout.
pub const DEFAULT_POLL_TIMEOUT_S: u64 = 25;

/// Whether the gateway can take calls, as reported by `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    pub api_listening: std::sync::atomic::AtomicBool,
}

/// State shared by every request.
pub struct AppState {
    pub config: Arc<Config>,
    pub sessions: Mutex<SessionStore>,
    pub metrics: Metrics,
    pub cors: CorsPolicy,
    pub limiter: Mutex<RateLimiter>,
    pub readiness: Readiness,
    /// Relay, ports and live calls.
    pub media: MediaPlane,
    /// The SIP side (set once it runs).
    pub sip: std::sync::OnceLock<SipHandle>,
    /// Drain and CPU threshold: whether new sessions and calls are taken.
    pub admission: Arc<crate::ops::admission::Admission>,
    /// The cluster's session directory in Redis (set at start-up when
    /// `[cluster] redis-url` names one).
    pub directory: std::sync::OnceLock<Arc<crate::directory::Directory>>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(config: Arc<Config>, metrics: Metrics, media: MediaPlane) -> Result<Self, String> {
        let cors = CorsPolicy::new(&config.http.domain_whitelist)?;
        let admission = Arc::new(crate::ops::admission::Admission::new(
            config.media.max_cpu_percent,
        ));
        Ok(AppState {
            sessions: Mutex::new(
                SessionStore::new(
                    config.session_timeout(),
                    config.http.max_sessions,
                    Random::from_os().map_err(|e| e.to_string())?,
                )
                .with_limits(
                    config.http.max_sessions_per_user,
                    config.http.max_sessions_per_address,
                )
                .with_node(&config.cluster.node_id),
            ),
            limiter: Mutex::new(RateLimiter::new(
                config.http.rate_limit_per_s,
                config.http.rate_limit_burst,
            )),
            cors,
            metrics,
            config,
            readiness: Readiness::default(),
            media,
            sip: std::sync::OnceLock::new(),
            admission,
            directory: std::sync::OnceLock::new(),
        })
    }

    /// The session store. A panic while it was held cannot leave it
    /// inconsistent (every method finishes its own change), so a poisoned
    /// lock is taken over rather than turned into a second panic.
    pub fn store(&self) -> MutexGuard<'_, SessionStore> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a session for `reason`: the one place every session end goes through.
    pub fn end_session(&self, session: Session, reason: EndReason) {
        self.media.calls.hang_up_session(&session.id);
        if let Some(sip) = self.sip.get() {
            sip.unregister(&session.id);
        }
        // The user's last session here: the directory forgets this node.
        let others = matches!(
            self.store().find_by_user(&session.user),
            crate::session::UserLookup::Session(_)
        );
        if !others {
            self.directory_update(&session.user, false);
        }
        self.metrics
            .sessions_ended
            .get_or_create(&KindLabels {
                kind: reason.as_str().into(),
            })
            .inc();
        self.metrics.sessions.set(self.store().len() as i64);
        info!(sid = %session.id, user = %session.user, reason = reason.as_str(), "session ended");
    }

    /// Tells the session directory (if any) that `user` has a session
    /// here (`here`) or no more; in the background, a failure only logged.
    pub fn directory_update(&self, user: &str, here: bool) {
        let Some(directory) = self.directory.get().cloned() else {
            return;
        };
        let user = user.to_string();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let done = if here {
                directory.publish(&user).await
            } else {
                directory.withdraw(&user).await
            };
            if let Err(e) = done {
                metrics.directory_errors.inc();
                warn!(%user, error = %e, "session directory not updated");
            }
        });
    }

    /// Whether a new call would be taken now: `ok`, `draining`,
    /// `overloaded` (CPU threshold) or `full` (`[media] max-calls`).
    pub fn admission_state(&self) -> &'static str {
        use crate::ops::admission::Refusal;
        let max_calls = self.config.media.max_calls;
        match self.admission.check_call() {
            Err(Refusal::Draining) => "draining",
            Err(Refusal::CpuBusy { .. }) => "overloaded",
            Ok(()) if max_calls > 0 && self.media.calls.len() >= max_calls => "full",
            Ok(()) => "ok",
        }
    }

    /// Removes sessions nobody polled for the timeout. Called by the reaper.
    pub fn expire_sessions(&self, now: Instant) -> Option<Instant> {
        let (expired, next) = {
            let mut store = self.store();
            let expired = store.expire(now);
            (expired, store.next_expiry())
        };
        for session in expired {
            self.end_session(session, EndReason::Expired);
        }
        next
    }
}

/// The API router, with its middleware, ready to serve.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/{sid}", axum::routing::delete(delete_session))
        .route("/v1/sessions/{sid}/events", get(poll_events))
        .route("/v1/sessions/{sid}/calls", post(calls::create))
        .route(
            "/v1/sessions/{sid}/calls/{cid}",
            get(calls::show).delete(calls::hang_up),
        )
        .route("/v1/sessions/{sid}/calls/{cid}/answer", post(calls::answer))
        .route(
            "/v1/sessions/{sid}/calls/{cid}/progress",
            post(calls::progress),
        )
        .route(
            "/v1/sessions/{sid}/calls/{cid}/renegotiate",
            post(calls::renegotiate),
        )
        .route("/v1/sessions/{sid}/calls/{cid}/reject", post(calls::reject))
        .route("/v1/sessions/{sid}/calls/{cid}/dtmf", post(calls::dtmf))
        .route(
            "/v1/sessions/{sid}/calls/{cid}/transfer",
            post(calls::transfer),
        )
        .route("/v1/sessions/{sid}/calls/{cid}/hold", post(calls::hold))
        .route("/v1/sessions/{sid}/calls/{cid}/resume", post(calls::resume))
        .merge(assets::routes())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), node_layer))
        .layer(middleware::from_fn_with_state(state.clone(), cors_layer))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit_layer,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe_layer))
        .with_state(state)
}

/// With `[cluster]`: a request for a session another node made (its id
/// starts with that node's id) is redirected there (307, the same path and
/// query, and `wrong_node` with the node's URL in the body), or is
/// `session_not_found` when that node is not known here. Browsers never
/// need it — js-api talks to the node the create response named, since a
/// cross-origin redirect drops the Authorization header — but other
/// clients behind a load balancer do.
async fn node_layer(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let cluster = &state.config.cluster;
    if cluster.node_id.is_empty() {
        return next.run(req).await;
    }
    let owner = req
        .uri()
        .path()
        .strip_prefix("/v1/sessions/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|sid| sid.split_once('.'))
        .map(|(node, _)| node.to_string());
    let Some(owner) = owner.filter(|node| *node != cluster.node_id) else {
        return next.run(req).await;
    };
    let Some(url) = cluster.nodes.get(&owner) else {
        return ApiError::session_not_found().into_response();
    };
    let target = format!(
        "{}{}",
        url.trim_end_matches('/'),
        req.uri()
            .path_and_query()
            .map_or(req.uri().path(), |p| p.as_str())
    );
    let Ok(location) = HeaderValue::from_str(&target) else {
        return ApiError::session_not_found().into_response();
    };
    let body = serde_json::json!({
        "error": {
            "code": "wrong_node",
            "message": format!("this session lives on node {owner}"),
            "node_url": url,
        }
    });
    let mut response = (StatusCode::TEMPORARY_REDIRECT, Json(body)).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// Outermost: a span per request, the request metric, one log line per response.
async fn observe_layer(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // Metric labels stay a bounded set: a route template, or `other` for a
    // path no route matched; a standard method, or `other`.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let method_label = match method.as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    };
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    // The full URI goes through the log layer's masking like every field.
    let span = tracing::info_span!("http", %method, route = %route, uri = %req.uri(), %client);
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method: method_label.to_string(),
            status,
        })
        .inc();
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        )
    });
    response
}

async fn rate_limit_layer(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        let verdict = state
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(peer.ip(), Instant::now());
        if let Err(wait) = verdict {
            state.metrics.rate_limited.inc();
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address; slow down",
            )
            .with_retry_after(wait.as_secs_f64().ceil() as u64)
            .into_response();
        }
    }
    next.run(req).await
}

const ALLOWED_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const ALLOWED_HEADERS: &str = "Content-Type, Authorization";
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// CORS by `domain-whitelist`: a refused origin gets 403 before any handler
/// runs, so it causes nothing.
async fn cors_layer(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let origin = match req.headers().get(header::ORIGIN) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(s) => Some(s.to_string()),
            // Not text at all: no whitelist entry can match it.
            Err(_) => Some(String::new()),
        },
    };
    let verdict = match origin.as_deref() {
        Some("") => OriginVerdict::Denied,
        other => state.cors.judge(other),
    };
    let mut response = match verdict {
        OriginVerdict::NoOrigin => next.run(req).await,
        OriginVerdict::Denied => {
            state.metrics.cors_rejections.inc();
            warn!(
                origin = origin.as_deref().unwrap_or(""),
                "origin not allowed"
            );
            ApiError::origin_not_allowed().into_response()
        }
        OriginVerdict::Allowed(origin) => {
            let preflight = req.method() == Method::OPTIONS
                && req
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
            let mut response = if preflight {
                let mut r = StatusCode::NO_CONTENT.into_response();
                let h = r.headers_mut();
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOWED_METHODS),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOWED_HEADERS),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static(PREFLIGHT_MAX_AGE_S),
                );
                r
            } else {
                let mut r = next.run(req).await;
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("Retry-After"),
                );
                r
            };
            match HeaderValue::from_str(&origin) {
                Ok(v) => {
                    response
                        .headers_mut()
                        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                }
                Err(_) => response = ApiError::origin_not_allowed().into_response(),
            }
            response
        }
    };
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// The session of the path's `{sid}`, its secret in `Authorization`
/// checked. Put before a body extractor, it refuses a stranger's request
/// before its body is read.
pub struct AuthorizedSession {
    pub sid: String,
    pub user: String,
    pub sip_password: Option<crate::config::Secret>,
    /// The display name given when the session was created.
    pub display_name: Option<String>,
}

impl FromRequestParts<SharedState> for AuthorizedSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &SharedState,
    ) -> Result<Self, ApiError> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::session_not_found())?;
        let sid = params
            .iter()
            .find(|(name, _)| *name == "sid")
            .map(|(_, value)| value.to_string())
            .ok_or_else(ApiError::session_not_found)?;
        let secret = session_secret(state, &parts.headers)?;
        let store = state.store();
        let session = store
            .authorize(&sid, secret)
            .map_err(|e| session_error(state, e))?;
        Ok(AuthorizedSession {
            user: session.user.clone(),
            sip_password: session.sip_password.clone(),
            display_name: session.display_name.clone(),
            sid,
        })
    }
}

/// A request body read within `max-body-bytes` (any content; JSON bodies
/// take [`ApiJson`]).
pub struct ApiBody(pub axum::body::Bytes);

impl FromRequest<SharedState> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, ApiError> {
        read_limited(req, &state.config.http).await.map(ApiBody)
    }
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// The body, refused as soon as it is known to be larger than
/// `max-body-bytes`, or when it takes longer than `body-read-timeout-s`
/// to arrive (a client trickling a body cannot hold a task forever).
async fn read_limited(
    req: Request,
    http: &crate::config::HttpConfig,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = http.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(body_too_large(limit));
    }
    let timeout = Duration::from_secs(http.body_read_timeout_s);
    match tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit)).await {
        Ok(read) => read.map_err(|_| body_too_large(limit)),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                http.body_read_timeout_s
            ),
        )),
    }
}

/// A JSON body read within `max-body-bytes`; errors in the API's shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<SharedState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let is_json = ct
                .to_str()
                .map(|s| {
                    s.trim_start()
                        .to_ascii_lowercase()
                        .starts_with("application/json")
                })
                .unwrap_or(false);
            if !is_json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the body must be JSON (Content-Type: application/json)",
                ));
            }
        }
        let bytes = read_limited(req, &state.config.http).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request("bad_json", json_error_message(&e)))
    }
}

/// serde_json's message, without any value it quotes (a value may be a password).
fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let place = format!("line {} column {}", e.line(), e.column());
    if text.starts_with("invalid type")
        || text.starts_with("invalid value")
        || text.starts_with("invalid length")
    {
        let expected = text
            .split_once(", expected ")
            .map(|(_, rest)| rest.split(" at line ").next().unwrap_or(rest))
            .unwrap_or("another value");
        format!("the body is not valid: a value has the wrong type or form (expected {expected}) at {place}")
    } else {
        format!("the body is not valid JSON for this request: {text}")
    }
}

/// The credential of an `Authorization: Bearer …` header (public for the
/// fuzz targets: it reads what any client sends).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
        .filter(|c| !c.is_empty())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn session_error(state: &AppState, e: SessionError) -> ApiError {
    match e {
        SessionError::Unauthorized => {
            state.metrics.auth_failure("session_secret");
            ApiError::invalid_session_secret()
        }
        SessionError::NotFound => ApiError::session_not_found(),
        SessionError::TooMany => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "the gateway holds its maximum number of sessions; try again later",
        )
        .with_retry_after(5),
        e @ SessionError::TooManyForUser(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions_for_user",
            e.to_string(),
        ),
        e @ SessionError::TooManyForAddress(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions_for_address",
            e.to_string(),
        ),
    }
}

/// Checks the session secret in `Authorization` for session `sid`.
fn session_secret<'h>(state: &AppState, headers: &'h HeaderMap) -> Result<&'h str, ApiError> {
    bearer(headers).ok_or_else(|| {
        state.metrics.auth_failure("session_secret");
        ApiError::invalid_session_secret()
    })
}

/// A SIP user part: what may stand before the `@` without escaping.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b))
}

#[derive(Deserialize)]
struct CreateSession {
    user: String,
    /// SIP password for REGISTER (else `[sip] password`).
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

async fn create_session(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    let client = peer.ip();
    if !valid_user(&body.user) {
        return Err(ApiError::bad_request(
            "invalid_user",
            "user must be 1 to 64 characters that may stand in a SIP URI's user part",
        ));
    }
    if body
        .display_name
        .as_ref()
        .is_some_and(|d| d.len() > 128 || d.chars().any(char::is_control))
    {
        // Quotes and backslashes are fine: our From escapes them.
        return Err(ApiError::bad_request(
            "invalid_display_name",
            "display_name must be at most 128 bytes without control characters",
        ));
    }
    if state.config.auth.mode == AuthMode::Token {
        let secret = state.config.auth.token_secret.expose().as_bytes();
        let verdict = match bearer(&headers) {
            None => Err("an Authorization: Bearer token is required".to_string()),
            Some(t) => token::verify(
                secret,
                t,
                &body.user,
                unix_now(),
                state.config.auth.token_max_ttl_s,
            )
            .map_err(|e| e.to_string()),
        };
        if let Err(reason) = verdict {
            state.metrics.auth_failure("token");
            // Why goes to the log only: the answer says the same for every
            // refusal, so it tells a prober nothing.
            warn!(user = %body.user, %reason, "token refused");
            return Err(ApiError::invalid_token(
                "a valid bearer token for this user is required",
            ));
        }
    }
    if let Err(refusal) = state.admission.check_session() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            refusal.to_string(),
        )
        .with_retry_after(5));
    }
    // The session's SIP password, else the configured default.
    let default_password = state.config.sip.password.expose();
    let password = body
        .password
        .clone()
        .or_else(|| (!default_password.is_empty()).then(|| default_password.to_string()));
    let created = {
        let mut store = state.store();
        let created = store.create(
            &body.user,
            body.display_name.clone(),
            client,
            Instant::now(),
        );
        state.metrics.sessions.set(store.len() as i64);
        if let Ok(created) = &created {
            store.set_sip_password(
                &created.id,
                password.clone().map(crate::config::Secret::new),
            );
        }
        created
    }
    .map_err(|e| session_error(&state, e))?;
    let registrar = state
        .sip
        .get()
        .filter(|_| !state.config.sip.server.is_empty() && state.config.sip.register);
    if let Some(sip) = registrar {
        if let Err(e) = sip.register(&created.id, &body.user, password).await {
            // The session never existed for anyone: remove it quietly.
            {
                let mut store = state.store();
                store.remove(&created.id);
                state.metrics.sessions.set(store.len() as i64);
            }
            warn!(user = %body.user, error = %e, "session refused: registration failed");
            return Err(match e {
                RegisterError::Rejected(code) => {
                    let mut err = ApiError::new(
                        StatusCode::FORBIDDEN,
                        "registration_failed",
                        format!("the SIP server refused the registration ({code})"),
                    );
                    err.sip_status = Some(code);
                    err
                }
                RegisterError::Unreachable => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "sip_unreachable",
                    "the SIP server did not answer the registration",
                ),
                RegisterError::Stopped => ApiError::internal(),
            });
        }
    }
    // Registered (or nothing to register): calls for the user come here now.
    state.store().take_calls(&created.id);
    state.directory_update(&body.user, true);
    state.metrics.sessions_created.inc();
    let span = tracing::info_span!("session", sid = %created.id);
    span.in_scope(|| info!(user = %body.user, "session created"));
    let mut body = serde_json::json!({
        "session": created.id,
        "session_secret": created.secret,
        "expires_in": state.config.http.session_timeout_s,
    });
    if !state.config.cluster.node_url.is_empty() {
        // This node's own URL: the session's requests go there, past the
        // load balancer.
        body["node_url"] = state.config.cluster.node_url.clone().into();
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn delete_session(
    State(state): State<SharedState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let secret = session_secret(&state, &headers)?;
    let removed = {
        let mut store = state.store();
        store
            .authorize(&sid, secret)
            .map_err(|e| session_error(&state, e))?;
        store.remove(&sid)
    };
    if let Some(session) = removed {
        state.end_session(session, EndReason::Deleted);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `after` and `timeout` from the query string (public for the fuzz
/// targets).
pub fn poll_query(raw: Option<&str>) -> Result<(u64, Duration), ApiError> {
    let mut after = 0;
    let mut timeout = DEFAULT_POLL_TIMEOUT_S;
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let parse = |what: &str| {
            value.parse::<u64>().map_err(|_| {
                ApiError::bad_request("bad_request", format!("{what} must be a whole number ≥ 0"))
            })
        };
        match name {
            "after" => after = parse("after")?,
            "timeout" => timeout = parse("timeout")?.min(MAX_POLL_TIMEOUT_S),
            _ => {}
        }
    }
    Ok((after, Duration::from_secs(timeout)))
}

/// Marks the end of a long-poll even when the client goes away mid-wait
/// (the handler's future is dropped then).
struct PollGuard {
    state: SharedState,
    sid: String,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.state.store().end_poll(&self.sid, Instant::now());
    }
}

fn events_body(events: Vec<EventRecord>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "events": events }))
}

async fn poll_events(
    State(state): State<SharedState>,
    Path(sid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let secret = session_secret(&state, &headers)?;
    let query = poll_query(query.as_deref());
    // Who is asking comes before what they asked for.
    state
        .store()
        .authorize(&sid, secret)
        .map_err(|e| session_error(&state, e))?;
    let (after, timeout) = query?;
    let start = state
        .store()
        .begin_poll(&sid, secret, after, Instant::now())
        .map_err(|e| session_error(&state, e))?;
    let _guard = PollGuard {
        state: state.clone(),
        sid: sid.clone(),
    };
    if !start.events.is_empty() {
        return Ok(events_body(start.events));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Register for the wake-up before looking, so a push in between is not missed.
        let woken = start.wake.notified();
        match state.store().events_after(&sid, after) {
            None => return Err(ApiError::session_not_found()),
            Some(events) if !events.is_empty() => return Ok(events_body(events)),
            Some(_) => {}
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return Ok(events_body(Vec::new()));
        }
    }
}

/// The admin router: health, readiness and metrics (internal port only).
pub fn admin_router(state: SharedState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/admin/drain", axum::routing::post(drain))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found() })
        .with_state(state)
}

/// `POST /admin/drain`: the same drain as SIGTERM; the process exits when
/// it is done. 202 with the calls still in progress.
async fn drain(State(state): State<SharedState>) -> Response {
    let started = state.admission.start_drain();
    if started {
        info!("drain asked for on the admin port");
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "draining": true,
            "already": !started,
            "calls": state.media.calls.len(),
            "sessions": state.store().len(),
        })),
    )
        .into_response()
}

async fn readyz(State(state): State<SharedState>) -> Response {
    use std::sync::atomic::Ordering;
    let api = state.readiness.api_listening.load(Ordering::Relaxed);
    // With no SIP server only the echo endpoint is served; with one, the
    // keepalive must have had an answer (or be switched off).
    let sip = state
        .sip
        .get()
        .map_or(ServerState::Unchecked, SipHandle::server_state);
    let keepalive_off = state.config.sip.keepalive_interval_s == 0;
    let sip_ok = match sip {
        ServerState::NotConfigured | ServerState::Reachable => true,
        ServerState::Unchecked => keepalive_off,
        ServerState::Unreachable => false,
    };
    // A new call needs one web port (unless all share one) and one SIP
    // port pair.
    let ports_free =
        state.media.web_ports_free() != Some(0) && state.media.sip_ports.free_count() > 0;
    let admission = state.admission_state();
    let ready = api && sip_ok && ports_free && admission == "ok";
    let sip = sip.as_str();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": ready,
            "checks": {
                "api": if api {"ok"} else {"not_listening"},
                "sip": sip,
                "ports": if ports_free {"ok"} else {"exhausted"},
                "admission": admission,
            },
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<SharedState>) -> Response {
    state.metrics.set_point_in_time(
        state.media.web_ports_free(),
        state.media.sip_ports.free_count(),
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    );
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
