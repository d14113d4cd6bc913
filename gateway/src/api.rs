//! The HTTP API on 5723 (see `docs/protocol.md`).
//!
//! Every route but enrolment and health is bound to the appliance behind the verified client
//! certificate ([`Appliance`] extractor): no certificate → 401; a certificate the store does
//! not know, or whose appliance is pending or revoked → 403, before the body is read. An
//! approved owner may come from the [`CertCache`], which honours a revocation within
//! [`crate::cert_cache::REVOCATION_BOUND`] (see there).
//! Bodies are read with a cap; every refusal is a JSON [`ErrorBody`] naming what was wrong.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_proto::update::{UpdateState, AGENT_COLLECTOR, AGENT_UPDATER};
use outpost_proto::{
    paths, ApplianceState, CollectorConfigDoc, Command, CommandList, CommandResult, EnrollRequest,
    EnrollResponse, ErrorBody, IngestAck, IngestBatch, MAX_LONG_POLL_SECS, MAX_RECORDS_PER_BATCH,
};
use serde::Deserialize;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::ca::{self, Ca};
use crate::cert_cache::CertCache;
use crate::config::GatewayConfig;
use crate::error::{CsrError, StoreError};
use crate::last_seen::LastSeen;
use crate::store::{now_ms, IngestOutcome, NewCert, Store};
use crate::tls::PeerCert;
use crate::wakeups::Wakeups;

/// Cap on enrolment and command-result bodies.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// Cap on stored command output.
pub const MAX_COMMAND_OUTPUT: usize = 64 * 1024;
/// Seconds a pending appliance is told to wait before polling again.
pub const ENROLL_RETRY_SECS: u64 = 3;
/// A delivered command unanswered for this long is handed out again.
pub const REDELIVER_AFTER: Duration = Duration::from_secs(120);
/// `Retry-After` of a 503 for a store failure, seconds.
pub const STORE_RETRY_AFTER_SECS: u32 = 5;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The CA (auto-approved enrolments are signed at once).
    pub ca: Arc<Ca>,
    /// Resolved config.
    pub cfg: Arc<GatewayConfig>,
    /// Long-polls waiting, woken per appliance when it has queued commands.
    pub wakeups: Arc<Wakeups>,
    /// Long-polls' `last_seen`, written in bulk.
    pub last_seen: Arc<LastSeen>,
    /// Approved certificates' owners, verified against revocations.
    pub cert_cache: Arc<CertCache>,
    /// Flips to true when the gateway shuts down (ends long-polls early).
    pub shutdown: watch::Receiver<bool>,
    /// One permit per ingest request being handled (`max_ingest_in_flight`).
    pub ingest_permits: Arc<Semaphore>,
}

/// A refusal: status, code and message, sent as [`ErrorBody`] JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    expected_seq: Option<u64>,
    retry_after_secs: Option<u32>,
}

impl ApiError {
    /// A refusal with a status, a short code and a message.
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            expected_seq: None,
            retry_after_secs: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {what} {id}"),
            ),
            other => {
                tracing::error!(error = %other, "store failure while handling a request");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the gateway's store failed; retry later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::to_value(ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        })
        .unwrap_or_default();
        if let Some(seq) = self.expected_seq {
            body["expected_seq"] = seq.into();
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let secs = self.retry_after_secs.unwrap_or(STORE_RETRY_AFTER_SECS);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A place among the ingest requests being handled (`max_ingest_in_flight`), taken before
/// anything else (certificate lookup, body) so an overloaded gateway refuses at once and
/// cheaply: 503 `overloaded` with `Retry-After`, nothing read, nothing stored.
#[derive(Debug)]
pub struct IngestSlot {
    _permit: OwnedSemaphorePermit,
}

impl FromRequestParts<AppState> for IngestSlot {
    type Rejection = ApiError;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Arc::clone(&state.ingest_permits).try_acquire_owned() {
            Ok(p) => Ok(Self { _permit: p }),
            Err(_) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "the gateway is handling {} batches already; retry after the delay",
                        state.cfg.max_ingest_in_flight
                    ),
                );
                e.retry_after_secs = Some(state.cfg.overload_retry_after_secs);
                Err(e)
            }
        }
    }
}

/// The appliance behind the request's client certificate, checked against the store.
#[derive(Debug, Clone)]
pub struct Appliance {
    /// Its id.
    pub id: String,
}

impl FromRequestParts<AppState> for Appliance {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<PeerCert>()
            .cloned()
            .unwrap_or_default();
        let Some(der) = peer.0 else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "client_certificate_required",
                format!(
                    "{} needs a client certificate issued by the Outpost CA",
                    parts.uri.path()
                ),
            ));
        };
        let fp = ca::fingerprint(&der);
        if let Some(id) = state.cert_cache.get(&fp, std::time::Instant::now()) {
            return Ok(Self { id });
        }
        let generation = state.cert_cache.generation();
        let owner = state.store.cert_owner(&fp).await?;
        if let Some(o) = owner
            .as_ref()
            .filter(|o| o.state == ApplianceState::Approved)
        {
            state.cert_cache.insert(&fp, &o.appliance_id, generation);
        }
        match owner {
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "appliance_unknown",
                "this certificate belongs to no enrolled appliance",
            )),
            Some(o) => match o.state {
                ApplianceState::Approved => Ok(Self { id: o.appliance_id }),
                ApplianceState::Pending => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "appliance_pending",
                    format!("appliance {} is not approved", o.appliance_id),
                )),
                ApplianceState::Revoked => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "appliance_revoked",
                    format!("appliance {} is revoked", o.appliance_id),
                )),
            },
        }
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(paths::HEALTH, get(health))
        .route(paths::ENROLL, post(enroll))
        .route(paths::ENROLL_STATUS, get(enroll_status))
        .route(paths::INGEST, post(ingest))
        .route(paths::COMMANDS, get(commands))
        .route(paths::COMMAND_RESULT, post(command_result))
        .route(paths::CONFIG, get(config))
        .route(
            &format!("{}/{{*path}}", paths::FEED),
            get(crate::feed::get_feed),
        )
        .route(paths::UPDATE_STATE, post(update_state))
        .fallback(fallback)
        .with_state(state)
}

async fn fallback(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn health() -> &'static str {
    "ok\n"
}

/// Reads a body up to `cap` bytes; over the cap is 413 naming the cap.
async fn read_body(body: Body, headers: &HeaderMap, cap: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds the cap of {cap} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > cap {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, cap).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit")
        {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("could not read the request body: {e}"),
            )
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("{what} is not valid: {e}"),
        )
    })
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let v = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    v.strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_missing",
                "enrolment needs a bootstrap token in \"Authorization: Bearer <token>\"",
            )
        })
}

fn token_unknown() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "token_unknown",
        "the bootstrap token is not known to this gateway",
    )
}

async fn enroll(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let bytes = read_body(body, &headers, SMALL_BODY_BYTES).await?;
    let req: EnrollRequest = parse_json(&bytes, "enrolment request")?;
    let hostname: String = req
        .hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(253)
        .collect();
    let csr = ca::check_csr(&req.csr_pem).map_err(|e| match e {
        CsrError::WeakKey(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "csr_weak_key", e.to_string())
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "csr_invalid", e.to_string()),
    })?;
    let tok = st
        .store
        .find_token(&token)
        .await?
        .ok_or_else(token_unknown)?;
    // The same key enrolling again (a retry after a lost answer) gets its enrolment back.
    if let Some((id, token_id)) = st.store.appliance_by_key(&csr.key_fingerprint).await? {
        if token_id != tok.id {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "key_already_enrolled",
                format!("this key is already enrolled as {id} with another token"),
            ));
        }
        return status_response(&st, &id).await;
    }
    let now = now_ms();
    if now >= tok.expires_at {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "token_expired",
            format!("bootstrap token {} has expired", tok.id),
        ));
    }
    if tok.uses >= tok.max_uses {
        return Err(token_used_up(&tok.id, tok.max_uses));
    }
    let id = crate::store::new_id("ap");
    if !st
        .store
        .enroll_pending(
            &tok,
            &id,
            &hostname,
            &csr.key_fingerprint,
            &req.csr_pem,
            now,
        )
        .await?
    {
        return Err(token_used_up(&tok.id, tok.max_uses));
    }
    info!(appliance = %id, customer = %tok.customer, hostname = %hostname, "enrolment received");
    if tok.auto_approve {
        approve_with(&st.store, &st.ca, &st.cfg, &id, &req.csr_pem)
            .await
            .map_err(|e| {
                tracing::error!(appliance = %id, error = %e, "auto-approval failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "approval_failed",
                    "auto-approval failed; retry",
                )
            })?;
        info!(appliance = %id, "approved by auto-approve token");
    }
    status_response(&st, &id).await
}

fn token_used_up(id: &str, max: i64) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "token_used_up",
        format!("bootstrap token {id} has been used {max} time(s), its limit"),
    )
}

/// Issues a certificate for a pending appliance's stored CSR and marks it approved.
///
/// # Errors
/// A description of what failed (CSR, signing or store).
pub async fn approve_with(
    store: &Store,
    ca: &Ca,
    cfg: &GatewayConfig,
    id: &str,
    csr_pem: &str,
) -> Result<(), ApproveError> {
    let csr = ca::check_csr(csr_pem).map_err(|e| ApproveError::Csr(e.to_string()))?;
    let issued = ca
        .issue(&csr, id, cfg.cert_lifetime, SystemTime::now())
        .map_err(|e| ApproveError::Sign(e.to_string()))?;
    store
        .approve(
            id,
            &NewCert {
                serial: &issued.serial_hex,
                fingerprint: &issued.fingerprint,
                pem: &issued.pem,
                not_before: issued.not_before * 1000,
                not_after: issued.not_after * 1000,
            },
            now_ms(),
        )
        .await
        .map_err(ApproveError::Store)?;
    // The maintenance window of its customer (or its own) reaches it on its first poll.
    store
        .queue_window_on_approval(id, now_ms())
        .await
        .map_err(ApproveError::Store)?;
    Ok(())
}

/// Why an approval failed.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// The stored CSR no longer passes the checks.
    #[error("stored CSR is unusable: {0}")]
    Csr(String),
    /// Signing failed.
    #[error("{0}")]
    Sign(String),
    /// The store refused.
    #[error(transparent)]
    Store(StoreError),
}

async fn status_response(st: &AppState, id: &str) -> Result<Response, ApiError> {
    let d = st.store.appliance(id).await?;
    match d.summary.state {
        ApplianceState::Pending => Ok((
            StatusCode::ACCEPTED,
            Json(EnrollResponse {
                id: id.to_string(),
                state: ApplianceState::Pending,
                certificate_pem: None,
                ca_pem: None,
                retry_after_secs: ENROLL_RETRY_SECS,
            }),
        )
            .into_response()),
        ApplianceState::Approved => {
            let cert = st.store.latest_cert_pem(id).await?;
            Ok(Json(EnrollResponse {
                id: id.to_string(),
                state: ApplianceState::Approved,
                certificate_pem: cert,
                ca_pem: Some(st.ca.cert_pem.clone()),
                retry_after_secs: 0,
            })
            .into_response())
        }
        ApplianceState::Revoked => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "appliance_revoked",
            format!("appliance {id} is revoked"),
        )),
    }
}

async fn enroll_status(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let tok = st
        .store
        .find_token(&token)
        .await?
        .ok_or_else(token_unknown)?;
    let d = st.store.appliance(&id).await?;
    if d.token_id != tok.id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "token_mismatch",
            format!("appliance {id} did not enrol with this token"),
        ));
    }
    status_response(&st, &id).await
}

async fn ingest(
    _slot: IngestSlot,
    State(st): State<AppState>,
    who: Appliance,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestAck>, ApiError> {
    let cap = usize::try_from(st.cfg.max_body_bytes).unwrap_or(usize::MAX);
    let bytes = read_body(body, &headers, cap).await?;
    let zstd = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => false,
        Some("zstd") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_encoding",
                format!("Content-Encoding {other:?} is not supported; use zstd"),
            ))
        }
    };
    let max_plain = usize::try_from(st.cfg.max_decompressed_bytes).unwrap_or(usize::MAX);
    let batch = tokio::task::spawn_blocking(move || decode_batch(&bytes, zstd, max_plain))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    if batch.seq == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_seq",
            "seq starts at 1",
        ));
    }
    match st
        .store
        .ingest(&who.id, batch.seq, &batch.records, now_ms())
        .await?
    {
        IngestOutcome::Stored {
            seq,
            last_rid,
            skipped,
        } => {
            if skipped > 0 {
                warn!(appliance = %who.id, seq, skipped, "batch {seq} carried {skipped} record(s) whose ids were stored before; skipped them");
            }
            Ok(Json(IngestAck {
                acked_seq: seq,
                duplicate: false,
                last_rid,
            }))
        }
        IngestOutcome::Duplicate { last_seq, last_rid } => Ok(Json(IngestAck {
            acked_seq: last_seq,
            duplicate: true,
            last_rid,
        })),
        IngestOutcome::Gap { expected } => {
            warn!(appliance = %who.id, seq = batch.seq, expected, "batch from the future refused");
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "sequence_gap",
                format!(
                    "batch seq {} is ahead of the store; expected {expected}",
                    batch.seq
                ),
            );
            e.expected_seq = Some(expected);
            Err(e)
        }
    }
}

/// Decompresses (with a cap on the output) and parses one batch.
fn decode_batch(bytes: &[u8], zstd: bool, max_plain: usize) -> Result<IngestBatch, ApiError> {
    let plain = if zstd {
        let dec = zstd::stream::read::Decoder::new(bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_encoding",
                format!("zstd: {e}"),
            )
        })?;
        let mut out = Vec::new();
        dec.take(max_plain as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_encoding",
                    format!("body is not valid zstd: {e}"),
                )
            })?;
        if out.len() > max_plain {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("decompressed batch exceeds the cap of {max_plain} bytes"),
            ));
        }
        out
    } else {
        bytes.to_vec()
    };
    let batch: IngestBatch = parse_json(&plain, "ingest batch")?;
    if batch.records.len() > MAX_RECORDS_PER_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_records",
            format!(
                "batch holds {} records; the limit is {MAX_RECORDS_PER_BATCH}",
                batch.records.len()
            ),
        ));
    }
    check_record_ids(&batch)?;
    Ok(batch)
}

/// Record ids start at 1, fit the store's BIGINT, and increase within a batch.
fn check_record_ids(batch: &IngestBatch) -> Result<(), ApiError> {
    let mut prev = 0u64;
    for (i, e) in batch.records.iter().enumerate() {
        if e.rid == 0 || i64::try_from(e.rid).is_err() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_rid",
                format!(
                    "record {i} has rid {}; record ids run from 1 to {}",
                    e.rid,
                    i64::MAX
                ),
            ));
        }
        if e.rid <= prev {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_rid",
                format!(
                    "record {i} has rid {} after rid {prev}; record ids must increase within a batch",
                    e.rid
                ),
            ));
        }
        prev = e.rid;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait: Option<String>,
    /// `collector` (default) or `updater`: whose queue to poll.
    agent: Option<String>,
}

async fn commands(
    State(st): State<AppState>,
    who: Appliance,
    Query(q): Query<WaitQuery>,
) -> Result<Json<CommandList>, ApiError> {
    let wait = match q.wait.as_deref() {
        None | Some("0") => Duration::ZERO,
        Some(w) => outpost_proto::parse_duration(w)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_wait", e.to_string()))?
            .min(Duration::from_secs(MAX_LONG_POLL_SECS)),
    };
    let agent = match q.agent.as_deref() {
        None | Some(AGENT_COLLECTOR) => AGENT_COLLECTOR,
        Some(AGENT_UPDATER) => AGENT_UPDATER,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_agent",
                format!("agent {other:?} is not one of {AGENT_COLLECTOR}, {AGENT_UPDATER}"),
            ))
        }
    };
    st.last_seen.note(&who.id, now_ms());
    let deadline = tokio::time::Instant::now() + wait;
    let waiter = st.wakeups.wait_for(&who.id);
    let mut shutdown = st.shutdown.clone();
    loop {
        // Enabled before the store is asked, so a wake-up in between is not lost.
        let woken = waiter.notify().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let rows = st
            .store
            .take_agent_commands(&who.id, agent, now_ms(), REDELIVER_AFTER)
            .await?;
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            let commands = rows
                .into_iter()
                .map(|r| Command {
                    id: r.id,
                    kind: r.kind,
                    args: r.args,
                    created_at_ms: r.created_at,
                })
                .collect();
            return Ok(Json(CommandList { commands }));
        }
        tokio::select! {
            () = &mut woken => {}
            _ = shutdown.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn command_result(
    State(st): State<AppState>,
    who: Appliance,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let bytes = read_body(body, &headers, SMALL_BODY_BYTES).await?;
    let res: CommandResult = parse_json(&bytes, "command result")?;
    let mut output = res.output;
    if output.len() > MAX_COMMAND_OUTPUT {
        let mut cut = MAX_COMMAND_OUTPUT;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
    }
    st.store
        .complete_command(&who.id, &id, res.ok, &output, now_ms())
        .await?;
    info!(appliance = %who.id, command = %id, ok = res.ok, "command result stored");
    Ok(StatusCode::NO_CONTENT)
}

/// The updater's state report; the latest per appliance is kept for `appliances show`.
async fn update_state(
    State(st): State<AppState>,
    who: Appliance,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let bytes = read_body(body, &headers, SMALL_BODY_BYTES).await?;
    let state: UpdateState = parse_json(&bytes, "update state")?;
    st.store
        .store_update_state(&who.id, &state, now_ms())
        .await?;
    info!(appliance = %who.id, current = ?state.current_version, staged = ?state.staged_version, "update state stored");
    Ok(StatusCode::NO_CONTENT)
}

/// The collector's config: the health packs assigned to the appliance or its customer.
/// The ETag is a hash of the document, so it changes only when the packs do.
async fn config(
    State(st): State<AppState>,
    who: Appliance,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let doc = CollectorConfigDoc {
        interval: None,
        packs: st.store.packs_for(&who.id).await?,
    };
    Ok(config_response(&doc, &headers))
}

fn config_response(doc: &CollectorConfigDoc, headers: &HeaderMap) -> Response {
    let body = serde_json::to_vec(doc).unwrap_or_default();
    let etag = format!("\"{}\"", &outpost_proto::content_hash(doc)[..32]);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    (
        StatusCode::OK,
        [
            (header::ETAG, etag_value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_refuses_bad_zstd_and_bombs() {
        let e = decode_batch(b"not zstd at all", true, 1024).unwrap_err();
        assert_eq!(e.code, "bad_encoding");
        let big = zstd::encode_all(&vec![b' '; 10_000][..], 3).unwrap();
        let e = decode_batch(&big, true, 1024).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = decode_batch(b"{not json", false, 1024).unwrap_err();
        assert_eq!(e.code, "bad_json");
        let ok = zstd::encode_all(&br#"{"seq":3,"records":[]}"#[..], 3).unwrap();
        assert_eq!(decode_batch(&ok, true, 1024).unwrap().seq, 3);
    }

    fn batch_with_rids(rids: &[u64]) -> Vec<u8> {
        let records: Vec<String> = rids
            .iter()
            .map(|r| format!(r#"{{"rid":{r},"kind":"metrics","collected_at_ms":1,"metrics":{{"uptime_secs":1,"load_avg":[0,0,0],"cpu_usage_percent":0,"memory_used_bytes":0,"memory_available_bytes":0,"swap_used_bytes":0,"process_count":0,"filesystems":[],"nics":[]}}}}"#))
            .collect();
        format!(r#"{{"seq":1,"records":[{}]}}"#, records.join(",")).into_bytes()
    }

    #[test]
    fn record_ids_must_start_at_one_and_increase() {
        assert_eq!(
            decode_batch(&batch_with_rids(&[1, 2, 7]), false, 1 << 20)
                .unwrap()
                .records
                .len(),
            3
        );
        for (rids, needle) in [
            (&[0u64][..], "rid 0"),
            (&[3, 3][..], "after rid 3"),
            (&[5, 4][..], "after rid 5"),
            (&[u64::MAX][..], "record ids run from 1"),
        ] {
            let e = decode_batch(&batch_with_rids(rids), false, 1 << 20).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_rid"));
            assert!(e.message.contains(needle), "{rids:?}: {}", e.message);
        }
        // A record without an id is not a batch at all.
        let e = decode_batch(
            br#"{"seq":1,"records":[{"kind":"metrics","collected_at_ms":1,"metrics":{}}]}"#,
            false,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(e.code, "bad_json");
    }
}
