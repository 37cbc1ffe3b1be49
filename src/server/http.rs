//! Routes: `/execute` (SSE), `/cancel/{job_id}`, `/health`, `/metrics`, and the OpenAI
//! endpoints; the `Host`/`Origin` check (a loopback worker answers only to loopback names, so
//! a web page cannot use it, DNS rebinding included), `Content-Type: application/json` on
//! bodies (no CORS "simple request" can send one), bearer-token auth, body limits (a too
//! large `Content-Length` refused before reading, a body timeout), the cap on requests being
//! parsed and tokenized at once, and the bounded queue's admission (a job's SSE stream is
//! `sse`'s).
//!
//! Does not generate: it prepares a typed job (tokenizing on the blocking pool, so `/health`
//! stays responsive), queues it, and turns the inference thread's events into responses.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_core::Stream;
use serde_json::json;
use tokio::sync::mpsc::unbounded_channel;

use crate::engine::GenerateRequest;
use crate::sampler::{self, SamplingParams};
use crate::trace::{RecordedParams, ResolvedRequest};

use super::api::{self, json_response, ApiError, Endpoint, ParsedRequest, PromptInput};
use super::openai;
use super::sse::{self, JobStream};
use super::worker::Job;
use super::Shared;

/// Alternatives recorded with each token when recording (the client may ask for fewer).
const RECORD_TOP_LOGPROBS: usize = 5;
/// Prefill chunk: bounds a forward call's trace buffer and how long a cancel (or a client
/// that left) waits during prefill: 32 positions take well under a second on two CPU cores
/// for the default model. Results do not depend on it.
pub(crate) const PREFILL_CHUNK: usize = 32;
/// How much of a too-large body is read before answering 413.
const DRAIN_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub(crate) struct AppState {
    pub shared: Arc<Shared>,
    pub queue: std::sync::mpsc::SyncSender<Job>,
    /// Permits to parse and tokenize a request (`--max-preparing`).
    pub preparing: Arc<tokio::sync::Semaphore>,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/execute", post(execute))
        .route("/cancel/{job_id}", post(cancel))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route").into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let allowed = match uri.path() {
        "/health" | "/metrics" | "/v1/models" => "GET",
        _ => "POST",
    };
    let mut r =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", format!("method: {method} is not allowed on {} (use {allowed})", uri.path()))
            .into_response();
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    r
}

/// Every request: `Host` and `Origin` must name this worker, else 403 before anything else.
async fn guard(State(st): State<AppState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Err(e) = check_host(&st.shared, req.headers()) {
        st.shared.metrics.forbidden.fetch_add(1, Ordering::Relaxed);
        return e.into_response();
    }
    next.run(req).await
}

/// The host part of `Host` or of an origin's authority, lowercase, without the port.
fn host_name(authority: &str) -> &str {
    let a = authority.trim();
    if a.starts_with('[') {
        return a.find(']').map(|i| &a[..=i]).unwrap_or(a);
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}

fn check_host(sh: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    match &sh.allowed_hosts {
        Some(allowed) => check_host_in(allowed, headers),
        None => Ok(()),
    }
}

fn check_host_in(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |field: &str, msg: String| {
        let mut e = ApiError::invalid(field, msg);
        e.status = StatusCode::FORBIDDEN;
        e.code = "FORBIDDEN";
        e
    };
    let ok = |name: &str| allowed.iter().any(|a| a.eq_ignore_ascii_case(name.trim_end_matches('.')));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ok(host_name(host)) {
        return Err(forbidden("host", format!("{host:?} is not a name of this worker (allow it with --allow-host)")));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        let authority = o.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or("")).unwrap_or("");
        if authority.is_empty() || !ok(host_name(authority)) {
            return Err(forbidden("origin", format!("{o:?} is not a page of this worker: cross-origin requests are refused")));
        }
    }
    Ok(())
}

/// The header checks on one arbitrary header value (for the fuzz target).
pub(crate) fn fuzz_headers(value: &[u8]) {
    let Ok(v) = HeaderValue::from_bytes(value) else { return };
    let mut h = HeaderMap::new();
    for name in [header::HOST, header::ORIGIN, header::CONTENT_TYPE, header::AUTHORIZATION, header::CONTENT_LENGTH] {
        h.insert(name, v.clone());
    }
    let _ = check_content_type(&h);
    let _ = check_host_in(&["localhost".to_string(), "[::1]".to_string()], &h);
}

/// A body must be declared JSON: web pages can send `text/plain` or forms to any address
/// without a CORS preflight, but not `application/json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    let mut e = ApiError::invalid("content-type", format!("{ct:?}: the body must be sent as application/json"));
    e.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    e.code = "UNSUPPORTED_MEDIA_TYPE";
    Err(e)
}

impl AppState {
    /// Whether the request carries the token (always true without `--api-token`).
    fn authenticated(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.shared.api_token else { return true };
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    }

    fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self.authenticated(headers) {
            true => Ok(()),
            false => {
                self.shared.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authorization: a valid bearer token is required"))
            }
        }
    }

    /// Registers and queues a job without waiting: 409 for a duplicate id, 503 when full.
    fn enqueue(&self, job: Job) -> Result<(), ApiError> {
        let sh = &self.shared;
        if sh.shutting_down.load(Ordering::Acquire) {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN", "the worker is shutting down");
            e.retry_after_s = Some(1);
            return Err(e);
        }
        if !sh.register(&job.job_id, &job.cancel) {
            return Err(ApiError::invalid("job_id", format!("job {} is already queued or running", job.job_id))).map_err(|mut e| {
                e.status = StatusCode::CONFLICT;
                e.code = "CONFLICT";
                e
            });
        }
        let (id, cancel) = (job.job_id.clone(), Arc::clone(&job.cancel));
        sh.queue_depth.fetch_add(1, Ordering::AcqRel);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                sh.queue_depth.fetch_sub(1, Ordering::AcqRel);
                sh.finish_job(&id, &cancel);
                let full = matches!(e, std::sync::mpsc::TrySendError::Full(_));
                sh.metrics.queue_full.fetch_add(1, Ordering::Relaxed);
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "QUEUE_FULL",
                    if full { format!("the queue is full ({} waiting); retry later", sh.queue_capacity) } else { "the worker is shutting down".into() },
                );
                err.retry_after_s = Some(retry_after_s(sh.job_ms.load(Ordering::Relaxed), sh.current_elapsed_ms()));
                Err(err)
            }
        }
    }

    async fn handle(&self, ep: Endpoint, headers: HeaderMap, body: Body) -> Response {
        match self.handle_inner(ep, headers, body).await {
            Ok(r) => r,
            Err(e) => {
                if e.status.is_client_error() && e.status != StatusCode::UNAUTHORIZED {
                    self.shared.metrics.invalid.fetch_add(1, Ordering::Relaxed);
                }
                e.into_response()
            }
        }
    }

    async fn handle_inner(&self, ep: Endpoint, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
        self.check_auth(&headers)?;
        check_content_type(&headers)?;
        let limit = self.shared.max_body_bytes;
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > limit as u64) {
            // Refused before a byte of the body is read; the connection is closed after.
            return Err(too_large(limit, format!("content-length {n} is larger than {limit} bytes")));
        }
        let timeout = self.shared.body_timeout;
        let bytes = match tokio::time::timeout(timeout, read_body(body, limit)).await {
            Ok(r) => r?,
            Err(_) => {
                let mut e = ApiError::invalid("body", format!("not received within {} s", timeout.as_secs()));
                e.status = StatusCode::REQUEST_TIMEOUT;
                e.code = "REQUEST_TIMEOUT";
                return Err(e);
            }
        };
        // Parsing and tokenizing hold memory proportional to the body: at most
        // `--max-preparing` requests do it at once, the rest wait here holding only their body.
        let permit = Arc::clone(&self.preparing)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN", "the worker is shutting down"))?;
        let m = &self.shared.metrics;
        let now = m.preparing.fetch_add(1, Ordering::AcqRel) + 1;
        m.preparing_peak.fetch_max(now, Ordering::AcqRel);
        let shared = Arc::clone(&self.shared);
        let prepared = tokio::task::spawn_blocking(move || {
            let max = shared.max_prompt_chars;
            let parsed = match ep {
                Endpoint::Execute => api::parse_execute(&bytes, max),
                Endpoint::Completions => api::parse_completions(&bytes, max),
                Endpoint::Chat => api::parse_chat(&bytes, max),
            }?;
            let prepared = prepare(&shared, &parsed)?;
            Ok::<_, ApiError>((parsed, prepared, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .await;
        m.preparing.fetch_sub(1, Ordering::AcqRel);
        drop(permit);
        let (parsed, prepared, request_json) =
            prepared.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", format!("request preparation failed: {e}")))??;

        let sh = &self.shared;
        let seq = sh.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let created = Shared::unix_now();
        let job_id = match &parsed.job_id {
            Some(id) => id.clone(),
            None => {
                let prefix = if ep == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
                format!("{prefix}-{:016x}", crate::trace::splitmix64(sampler::fresh_seed() ^ seq))
            }
        };
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let record_stem = format!("{unix_ms}-{seq:06}-{job_id}");
        // A stream's headers leave before the job runs: they name where the finished recording
        // will be, and its `end` event what exists.
        let mut recording = sh.record_dir.as_ref().map(|d| d.join(format!("{record_stem}.{}", crate::trace::RECORDING_EXT)));
        let mut recording_state: Option<HeaderValue> = None;
        let (tx, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let prompt_tokens = prepared.req.prompt_ids.len();
        let job = Job {
            job_id: job_id.clone(),
            endpoint: ep.path(),
            request_json,
            req: prepared.req,
            resolved: prepared.resolved,
            stop_labels: prepared.stop_labels,
            stop_strings: prepared.stop_strings,
            client_top_logprobs: parsed.top_logprobs,
            record_stem,
            cancel: Arc::clone(&cancel),
            events: tx,
            enqueued: Instant::now(),
        };
        self.enqueue(job)?;

        let mut resp = match ep {
            Endpoint::Execute => sse::response(JobStream::new(rx, Arc::clone(&cancel), sse::execute_formatter(job_id.clone(), sh.model_name.clone()))),
            _ => {
                let ctx = openai::Ctx {
                    id: job_id.clone(),
                    created,
                    model: sh.model_name.clone(),
                    system_fingerprint: sh.system_fingerprint.clone(),
                    chat: ep == Endpoint::Chat,
                    logprobs: parsed.logprobs,
                    include_usage: parsed.include_usage,
                    prompt_tokens,
                    tokenizer: Arc::clone(&sh.tokenizer),
                };
                if parsed.stream {
                    sse::response(JobStream::new(rx, Arc::clone(&cancel), openai::stream_formatter(ctx)))
                } else {
                    let (body, rec) = openai::collect(rx, Arc::clone(&cancel), ctx).await?;
                    // Answered after the job: the headers name what exists, not what was planned.
                    recording = rec.and_then(|r| {
                        if let Ok(v) = HeaderValue::from_str(r.state) {
                            recording_state = Some(v);
                        }
                        r.path.map(std::path::PathBuf::from)
                    });
                    json_response(StatusCode::OK, &body)
                }
            }
        };
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&job_id) {
            h.insert("x-job-id", v);
        }
        if let Some(v) = recording.and_then(|p| HeaderValue::from_str(&p.display().to_string()).ok()) {
            h.insert("x-worker-orcd-recording", v);
        }
        if let Some(v) = recording_state {
            h.insert("x-worker-orcd-recording-state", v);
        }
        Ok(resp)
    }
}

/// Seconds until a queue slot is likely to free: what is left of the running job, from the
/// mean job duration (1 when nothing is known), at most 60.
pub(crate) fn retry_after_s(mean_job_ms: u64, current_elapsed_ms: Option<u64>) -> u64 {
    let left = mean_job_ms.saturating_sub(current_elapsed_ms.unwrap_or(0));
    left.div_ceil(1000).clamp(1, 60)
}

fn too_large(limit: usize, why: String) -> ApiError {
    let _ = limit;
    let mut e = ApiError::invalid("body", why);
    e.status = StatusCode::PAYLOAD_TOO_LARGE;
    e.code = "PAYLOAD_TOO_LARGE";
    e.close = true;
    e
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a body of at most `limit` bytes. A larger one is answered 413, after reading (and
/// discarding) up to [`DRAIN_BYTES`] of it, so that an ordinary client, still sending, gets
/// the answer instead of a reset connection; beyond that the connection is dropped.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
        let Ok(chunk) = chunk else { break };
        seen += chunk.len();
        if seen <= limit {
            out.extend_from_slice(&chunk);
        } else if seen > DRAIN_BYTES {
            break;
        }
    }
    if seen > limit {
        return Err(too_large(limit, format!("larger than {limit} bytes")));
    }
    Ok(out)
}

/// What `prepare` resolves a request into.
struct Prepared {
    req: GenerateRequest,
    resolved: ResolvedRequest,
    stop_labels: Vec<String>,
    stop_strings: Vec<String>,
}

/// Tokenizes and checks a request against the model: context room, stop sequences, params.
fn prepare(sh: &Shared, p: &ParsedRequest) -> Result<Prepared, ApiError> {
    let tok = &sh.tokenizer;
    let text_of = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    let (prompt_field, prompt_text, parse_special, mut ids) = match &p.prompt {
        PromptInput::Text(s) => ("prompt", s.clone(), true, tok.encode(s, true)),
        PromptInput::Ids(ids) => {
            if let Some(i) = ids.iter().position(|&id| id as usize >= tok.n_vocab()) {
                return Err(ApiError::invalid(format!("prompt[{i}]"), format!("token id {} is outside the vocabulary of {}", ids[i], tok.n_vocab())));
            }
            ("prompt", String::new(), false, ids.clone())
        }
        PromptInput::Chat(msgs) => {
            let template = sh.chat_template.as_ref().ok_or_else(|| ApiError::invalid("messages", "the model has no chat template"))?;
            let text = template.render(msgs, true, &text_of(tok.bos_id()), &text_of(tok.eos_id())).map_err(|e| ApiError::invalid("messages", e))?;
            let ids = tok.encode(&text, true);
            ("messages", text, true, ids)
        }
    };
    if tok.add_bos() && !matches!(p.prompt, PromptInput::Ids(_)) {
        if let Some(bos) = tok.bos_id() {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
    }
    if ids.is_empty() {
        return Err(ApiError::invalid(prompt_field, "encodes to no tokens"));
    }
    let n_ctx = sh.n_ctx;
    if ids.len() >= n_ctx {
        return Err(ApiError::invalid(prompt_field, format!("{} tokens leave no room in the context of {n_ctx}", ids.len())));
    }
    let room = (n_ctx - ids.len()) as u64;
    let max_tokens = p.max_tokens.unwrap_or(room.min(u32::MAX as u64));
    if max_tokens > room {
        return Err(ApiError::invalid("max_tokens", format!("{} prompt tokens + {max_tokens} new tokens exceed the context of {n_ctx}", ids.len())));
    }
    let (mut stop_ids, mut stop_labels, mut stop_strings) = (Vec::new(), Vec::new(), Vec::new());
    if p.endpoint == Endpoint::Execute {
        for (i, s) in p.stop.iter().enumerate() {
            let seq = tok.encode(s, true);
            if seq.is_empty() || seq.len() > api::MAX_STOP_TOKENS {
                return Err(ApiError::invalid(format!("stop[{i}]"), format!("is {} tokens, 1 to {} are allowed", seq.len(), api::MAX_STOP_TOKENS)));
            }
            stop_ids.push(seq);
            stop_labels.push(s.clone());
        }
    } else {
        stop_strings = p.stop.clone();
    }
    let s = &p.sampling;
    let params = SamplingParams { temperature: s.temperature, top_k: s.top_k, top_p: s.top_p, min_p: s.min_p, repetition_penalty: s.repetition_penalty };
    params.validate().map_err(|e| ApiError::invalid(e.field, e.reason))?;
    let seed = s.seed.unwrap_or_else(sampler::fresh_seed);
    let top_logprobs = if sh.recorder.is_some() { p.top_logprobs.max(RECORD_TOP_LOGPROBS) } else { p.top_logprobs };
    let req = GenerateRequest {
        prompt_ids: ids.clone(),
        params: params.clone(),
        seed,
        max_tokens: max_tokens as usize,
        stop: stop_ids.clone(),
        top_logprobs,
        prefill_chunk: PREFILL_CHUNK,
    };
    let resolved = ResolvedRequest {
        prompt_text,
        parse_special,
        prompt_ids: ids,
        params: RecordedParams::from(&params),
        seed,
        seed_generated: s.seed.is_none(),
        max_tokens: max_tokens as u32,
        stop_ids,
        stop_strings: stop_strings.clone(),
        top_logprobs: top_logprobs as u32,
        prefill_chunk: PREFILL_CHUNK as u32,
    };
    Ok(Prepared { req, resolved, stop_labels, stop_strings })
}

async fn execute(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    st.handle(Endpoint::Execute, headers, body).await
}

async fn completions(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    st.handle(Endpoint::Completions, headers, body).await
}

async fn chat_completions(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    st.handle(Endpoint::Chat, headers, body).await
}

async fn cancel(State(st): State<AppState>, headers: HeaderMap, Path(job_id): Path<String>) -> Response {
    if let Err(e) = st.check_auth(&headers) {
        return e.into_response();
    }
    if st.shared.cancel(&job_id) {
        json_response(StatusCode::OK, &json!({"job_id": job_id, "cancelled": true}))
    } else {
        let mut e = ApiError::invalid("job_id", format!("no queued or running job {job_id}"));
        e.status = StatusCode::NOT_FOUND;
        e.code = "NOT_FOUND";
        e.into_response()
    }
}

async fn models(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = st.check_auth(&headers) {
        return e.into_response();
    }
    let created = st.shared.started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": st.shared.model_name, "object": "model", "created": created, "owned_by": "worker-orcd"}]}),
    )
}

async fn health(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let sh = &st.shared;
    let m = &sh.metrics;
    let current = sh.current_job();
    if !st.authenticated(&headers) {
        // Without the token: liveness and load only, no job ids, paths or error texts.
        return json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "model": sh.model_name,
                "backend": sh.backend,
                "busy": current.is_some(),
                "queue_depth": sh.queue_depth.load(Ordering::Relaxed),
                "queue_capacity": sh.queue_capacity,
                "authenticated": false,
            }),
        );
    }
    let rec = sh.recorder.as_ref().map(|r| r.snapshot());
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "model": sh.model_name,
            "model_sha256": sh.model_sha256,
            "backend": sh.backend,
            "device": sh.device,
            "backend_fallback": sh.backend_fallback,
            "worker_version": sh.fingerprint.worker_version,
            "git_commit": sh.fingerprint.git_commit,
            "n_ctx": sh.n_ctx,
            "queue_depth": sh.queue_depth.load(Ordering::Relaxed),
            "queue_capacity": sh.queue_capacity,
            "busy": current.is_some(),
            "current_job": current,
            "tokens_served": m.tokens_generated.load(Ordering::Relaxed),
            "requests_served": m.ok.load(Ordering::Relaxed),
            "recorder_state": rec.as_ref().map(|r| r.state).unwrap_or("off"),
            "recorder_errors": rec.as_ref().map(|r| r.errors).unwrap_or(0),
            "last_recorder_error": rec.as_ref().and_then(|r| r.last_error.clone()),
            "recorder": rec,
            "uptime_s": sh.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        }),
    )
}

async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = st.check_auth(&headers) {
        return e.into_response();
    }
    let sh = &st.shared;
    let m = &sh.metrics;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            s.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "worker_orcd_requests_total",
        "counter",
        "Requests by outcome.",
        &[
            ("{outcome=\"ok\"}", g(&m.ok) as f64),
            ("{outcome=\"cancelled\"}", g(&m.cancelled) as f64),
            ("{outcome=\"error\"}", g(&m.failed) as f64),
            ("{outcome=\"invalid\"}", g(&m.invalid) as f64),
            ("{outcome=\"queue_full\"}", g(&m.queue_full) as f64),
            ("{outcome=\"unauthorized\"}", g(&m.unauthorized) as f64),
            ("{outcome=\"forbidden\"}", g(&m.forbidden) as f64),
        ],
    );
    metric("worker_orcd_preparing", "gauge", "Requests being parsed and tokenized.", &[("", g(&m.preparing) as f64)]);
    metric("worker_orcd_preparing_peak", "gauge", "Most requests parsed and tokenized at once.", &[("", g(&m.preparing_peak) as f64)]);
    metric("worker_orcd_generated_tokens_total", "counter", "Tokens generated.", &[("", g(&m.tokens_generated) as f64)]);
    metric("worker_orcd_prompt_tokens_total", "counter", "Prompt tokens processed.", &[("", g(&m.prompt_tokens) as f64)]);
    metric("worker_orcd_queue_depth", "gauge", "Requests waiting in the queue.", &[("", sh.queue_depth.load(Ordering::Relaxed) as f64)]);
    metric("worker_orcd_queue_capacity", "gauge", "Requests that may wait.", &[("", sh.queue_capacity as f64)]);
    metric("worker_orcd_busy", "gauge", "1 while a request runs.", &[("", if sh.current_job().is_some() { 1.0 } else { 0.0 })]);
    metric("worker_orcd_decode_tokens_per_second", "gauge", "Decode speed of the last request.", &[("", m.decode_tps())]);
    if let Some(r) = sh.recorder.as_ref().map(|r| r.snapshot()) {
        metric("worker_orcd_recorder_bytes_total", "counter", "Bytes written to recordings.", &[("", r.bytes_written as f64)]);
        metric("worker_orcd_recorder_errors_total", "counter", "Recorder errors (failed writes, dropped frames).", &[("", r.errors as f64)]);
        metric("worker_orcd_recorder_dropped_frames_total", "counter", "Trace frames dropped because the writer lagged.", &[("", r.dropped_frames as f64)]);
        metric("worker_orcd_recordings_total", "counter", "Recordings finished.", &[("", r.recordings_written as f64)]);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s).into_response()
}
