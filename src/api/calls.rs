//! The call endpoints (`docs/api.md`, "Calls"): start, inspect, hang up,
//! hold, resume, send DTMF, transfer and take the browser's new offer (ICE restart). Each handler takes an [`AuthorizedSession`]
//! (the secret checked before the body is read) and refuses bad input
//! before anything is set up.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::warn;

use super::{ApiBody, ApiError, ApiJson, AuthorizedSession, SharedState};
use crate::call::driver::{CallLimit, Command, CommandError, SipCaller, StartError};
use crate::call::CallError;
use crate::ops::admission::Refusal;
use crate::session::SessionEvent;

/// Longest `to` accepted (a SIP URI with parameters fits easily).
const MAX_TO_LEN: usize = 256;
const MAX_DTMF_DIGITS: usize = 64;
const DEFAULT_DTMF_MS: u64 = 100;

fn call_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "call_not_found", "no such call")
}

fn command_error(e: CommandError) -> ApiError {
    match e {
        CommandError::State(s @ CallError::EarlyMediaDisabled) => {
            ApiError::new(StatusCode::CONFLICT, "early_media_disabled", s.to_string())
        }
        CommandError::State(s @ CallError::EarlyMediaNeedsOffer) => ApiError::new(
            StatusCode::CONFLICT,
            "early_media_needs_offer",
            s.to_string(),
        ),
        CommandError::State(s @ CallError::AnswerMissing) => {
            ApiError::bad_request("bad_sdp", s.to_string())
        }
        CommandError::State(s @ CallError::TransferInProgress) => {
            ApiError::new(StatusCode::CONFLICT, "transfer_in_progress", s.to_string())
        }
        CommandError::State(s) => {
            ApiError::new(StatusCode::CONFLICT, "invalid_call_state", s.to_string())
        }
        CommandError::Dtmf(m) => ApiError::bad_request("invalid_dtmf", m),
        CommandError::BadSdp(e) => ApiError::bad_request("bad_sdp", e.to_string()),
        CommandError::Media(m) => {
            tracing::warn!(error = %m, "a call's media could not be set up");
            ApiError::internal()
        }
        e @ CommandError::NoTelephoneEvent => {
            ApiError::new(StatusCode::CONFLICT, "dtmf_not_negotiated", e.to_string())
        }
    }
}

/// Whether `to` can stand in a Request-URI: a user part or a SIP URI.
fn valid_destination(to: &str) -> bool {
    !to.is_empty()
        && to.len() <= MAX_TO_LEN
        && to
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>\"\\".contains(&b))
}

/// `to` as a call or transfer may take it: a number or SIP URI
/// (`400 invalid_destination`) and, when `routed` (not the echo), one
/// whose host `[sip]` allows (`403 destination_not_allowed`).
fn check_destination(state: &SharedState, to: &str, routed: bool) -> Result<(), ApiError> {
    if !valid_destination(to) {
        return Err(ApiError::bad_request(
            "invalid_destination",
            "to must be a number or a sip: URI of at most 256 printable characters",
        ));
    }
    let sip = &state.config.sip;
    if routed
        && !crate::call::routing::outgoing_allowed(
            to,
            &sip.effective_domain(),
            &sip.allowed_destination_domains,
        )
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "destination_not_allowed",
            "calls go to numbers or to SIP URIs in the SIP domain \
             (sip.allowed-destination-domains names any others)",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct NewCall {
    to: String,
    sdp: String,
    #[serde(default)]
    headers: CallHeaders,
}

/// Call-data headers a page gives: name → one value or a list of them.
pub type CallHeaders = std::collections::BTreeMap<String, HeaderValues>;

#[derive(Deserialize)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

/// The page's `headers` as header lines to add, each checked against
/// `[sip]`'s rules (`400 bad_header` naming what is wrong).
fn checked_headers(
    state: &SharedState,
    headers: CallHeaders,
) -> Result<Vec<(String, String)>, ApiError> {
    let lines: Vec<(String, String)> = headers
        .into_iter()
        .flat_map(|(name, values)| {
            let values = match values {
                HeaderValues::One(v) => vec![v],
                HeaderValues::Many(vs) => vs,
            };
            values.into_iter().map(move |v| (name.clone(), v))
        })
        .collect();
    crate::sip::call_data::CallDataRules::from(&state.config.sip)
        .check_outgoing(&lines)
        .map_err(|e| ApiError::bad_request("bad_header", e))?;
    Ok(lines)
}

pub async fn create(
    State(state): State<SharedState>,
    session: AuthorizedSession,
    ApiJson(body): ApiJson<NewCall>,
) -> Result<Response, ApiError> {
    let AuthorizedSession {
        sid,
        user,
        sip_password: password,
        display_name,
    } = session;
    let echo = state.media.is_echo(&body.to);
    check_destination(&state, &body.to, !echo)?;
    let headers = checked_headers(&state, body.headers)?;
    if let Err(refusal) = state.admission.check_call() {
        state.metrics.count_call_refused(refusal.as_str());
        let code = match refusal {
            Refusal::Draining => "draining",
            Refusal::CpuBusy { .. } => "overloaded",
        };
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, refusal.to_string())
                .with_retry_after(5),
        );
    }
    let reservation = state
        .media
        .calls
        .reserve(&sid, &user, false, &state.media.settings.limits)
        .map_err(|limit| match limit {
            // The node is full: another node (or a later try) may take it.
            CallLimit::Total(_) => {
                state.metrics.count_call_refused("max_calls");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    limit.to_string(),
                )
                .with_retry_after(5)
            }
            CallLimit::RingingOutPerSession(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_ringing_calls",
                limit.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_calls",
                limit.to_string(),
            ),
        })?;
    let plan = state
        .media
        .plan_outbound(&body.sdp)
        .map_err(|e| ApiError::bad_request("bad_sdp", e.to_string()))?;
    let sip = state
        .sip
        .get()
        .filter(|_| !state.config.sip.server.is_empty());
    if !echo && sip.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_destination",
            format!(
                "no SIP server is configured, so only the echo number {:?} can be called",
                state.config.echo.number
            ),
        ));
    }
    let events = state.clone();
    let notify = move |session: &str, event: SessionEvent| {
        if let SessionEvent::CallEnded { reason, .. } = &event {
            events.metrics.call_ended(reason);
        }
        events.store().push(session, event);
    };
    let started = match sip {
        Some(sip) if !echo => {
            state
                .media
                .start_sip_call(
                    sip,
                    SipCaller {
                        session: &sid,
                        user: &user,
                        password: password.map(|p| p.expose().to_string()),
                        display_name: display_name.as_deref(),
                        headers,
                    },
                    reservation,
                    &body.to,
                    plan,
                    notify,
                )
                .await
        }
        _ => {
            state
                .media
                .start_echo_call(&sid, reservation, &body.to, plan, notify)
                .await
        }
    };
    let cid = started.map_err(|e| match e {
        StartError::Sdp(e) => ApiError::bad_request("bad_sdp", e.to_string()),
        StartError::Ports(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_media_ports",
            e.to_string(),
        )
        .with_retry_after(5),
        StartError::Media(e) => {
            warn!(error = %e, "call setup failed");
            ApiError::internal()
        }
        StartError::Limit(limit) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_calls",
            limit.to_string(),
        ),
    })?;
    state.metrics.call_started();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "call": cid })),
    )
        .into_response())
}

pub async fn show(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
) -> Result<Response, ApiError> {
    let view = state
        .media
        .calls
        .view(&session.sid, &cid)
        .ok_or_else(call_not_found)?;
    Ok(Json(view).into_response())
}

/// Hands `command` to call `cid` of the (authorized) session `sid`.
async fn run(state: &SharedState, sid: &str, cid: &str, command: Command) -> Result<(), ApiError> {
    state
        .media
        .calls
        .command(sid, cid, command)
        .await
        .ok_or_else(call_not_found)?
        .map_err(command_error)
}

pub async fn hang_up(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
) -> Result<StatusCode, ApiError> {
    run(&state, &session.sid, &cid, Command::Hangup).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn ok() -> Response {
    Json(serde_json::json!({})).into_response()
}

pub async fn hold(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
) -> Result<Response, ApiError> {
    run(&state, &session.sid, &cid, Command::Hold).await?;
    Ok(ok())
}

pub async fn resume(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
) -> Result<Response, ApiError> {
    run(&state, &session.sid, &cid, Command::Resume).await?;
    Ok(ok())
}

#[derive(Deserialize)]
pub struct Dtmf {
    digits: String,
    #[serde(default)]
    duration_ms: Option<u64>,
}

pub async fn dtmf(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
    ApiJson(body): ApiJson<Dtmf>,
) -> Result<Response, ApiError> {
    if body.digits.is_empty() || body.digits.chars().count() > MAX_DTMF_DIGITS {
        return Err(ApiError::bad_request(
            "invalid_dtmf",
            format!("digits must be 1 to {MAX_DTMF_DIGITS} of 0-9, *, #, A-D"),
        ));
    }
    let duration = Duration::from_millis(body.duration_ms.unwrap_or(DEFAULT_DTMF_MS));
    run(
        &state,
        &session.sid,
        &cid,
        Command::Dtmf {
            digits: body.digits,
            duration,
        },
    )
    .await?;
    Ok(ok())
}

/// A JSON body that may be left out: empty (or blank) is `T::default()`;
/// one that does not parse is `400 bad_json` saying `expected`.
fn optional_json<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    expected: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|_| ApiError::bad_request("bad_json", expected))
}

#[derive(Deserialize)]
pub struct Answer {
    sdp: String,
}

#[derive(Deserialize, Default)]
pub struct AnswerAfterProgress {
    #[serde(default)]
    sdp: Option<String>,
    #[serde(default)]
    headers: CallHeaders,
}

/// The browser answers an incoming call: `{"sdp": answer}`, or after
/// early media of its own (`…/progress`) an empty body or `{}`.
pub async fn answer(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let body: AnswerAfterProgress = optional_json(
        &body,
        "the body must be {\"sdp\": <SDP answer>}, or empty after progress",
    )?;
    run(
        &state,
        &session.sid,
        &cid,
        Command::Answer {
            sdp: body.sdp,
            headers: checked_headers(&state, body.headers)?,
        },
    )
    .await?;
    Ok(ok())
}

/// The browser answers an incoming call for early media (`{"sdp":
/// answer}`): the caller gets our 183 and media flows both ways; the call
/// is answered later by `…/answer` (or rejected, or cancelled).
pub async fn progress(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
    ApiJson(body): ApiJson<Answer>,
) -> Result<Response, ApiError> {
    run(
        &state,
        &session.sid,
        &cid,
        Command::Progress { sdp: body.sdp },
    )
    .await?;
    Ok(ok())
}

/// The browser's new offer for a call in progress (an ICE restart after a
/// network change): our answer is this request's body, `{"sdp": …}`.
pub async fn renegotiate(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
    ApiJson(body): ApiJson<Answer>,
) -> Result<Response, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    run(
        &state,
        &session.sid,
        &cid,
        Command::Renegotiate {
            sdp: body.sdp,
            reply,
        },
    )
    .await?;
    let sdp = answer.await.map_err(|_| ApiError::internal())?;
    Ok((StatusCode::OK, Json(serde_json::json!({ "sdp": sdp }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    replaces: Option<String>,
}

fn invalid_transfer(message: &str) -> ApiError {
    ApiError::bad_request("invalid_transfer", message)
}

/// The browser transfers an answered call: `{"to": "5001"}` (blind: the
/// far end is asked to call 5001 in our place) or `{"replaces": "<cid>"}`
/// (attended: the far end is joined with the far end of the session's
/// other call `cid`). The outcome comes as `call.transfer` events; success
/// ends the call with reason `transferred`.
pub async fn transfer(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
    ApiJson(body): ApiJson<TransferRequest>,
) -> Result<Response, ApiError> {
    use crate::sip::transfer::TransferTarget;
    let target = match (body.to, body.replaces) {
        (Some(to), None) => {
            check_destination(&state, &to, true)?;
            TransferTarget::To(to)
        }
        (None, Some(other)) => {
            if other == cid {
                return Err(invalid_transfer("a call cannot replace itself"));
            }
            if !state.media.calls.has_call(&session.sid, &other) {
                return Err(invalid_transfer(
                    "replaces must name another call of this session",
                ));
            }
            TransferTarget::Replacing(other)
        }
        _ => {
            return Err(invalid_transfer(
                "the body must be {\"to\": <number or SIP URI>} or {\"replaces\": <call id>}",
            ))
        }
    };
    run(&state, &session.sid, &cid, Command::Transfer(target)).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({}))).into_response())
}

#[derive(Deserialize, Default)]
pub struct Reject {
    #[serde(default)]
    status: Option<u16>,
}

/// Statuses a browser may refuse a call with.
const REJECT_STATUSES: [u16; 6] = [403, 480, 486, 488, 600, 603];

pub async fn reject(
    State(state): State<SharedState>,
    Path((_, cid)): Path<(String, String)>,
    session: AuthorizedSession,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    // The body is optional: none, `{}` or `{"status": 603}`.
    let body: Reject = optional_json(
        &body,
        "the body must be {\"status\": <SIP status>} or empty",
    )?;
    let status = body.status.unwrap_or(486);
    if !REJECT_STATUSES.contains(&status) {
        return Err(ApiError::bad_request(
            "invalid_status",
            format!("status must be one of {REJECT_STATUSES:?}"),
        ));
    }
    run(&state, &session.sid, &cid, Command::Reject { status }).await?;
    Ok(ok())
}
