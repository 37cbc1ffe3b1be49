//! `worker-orcd serve`: HTTP on a tokio current-thread runtime, generation on one inference
//! thread fed by a bounded FIFO queue, and the recorder.
//!
//! Code map: `api` (request JSON shapes and validation), `conn` (the connection loop:
//! connection cap, read timeouts, bounded shutdown), `http` (routes, host/origin/content-type
//! checks, auth, health, metrics), `openai` (OpenAI response shapes), `sse` (a job's event
//! stream and `/execute`'s events), `worker` (the inference thread). This file
//! resolves the command line into a [`ServerConfig`], loads the model and wires the pieces.
//!
//! **Architecture Invariant:** only `server` knows HTTP and JSON request shapes; the engine and
//! the recorder get resolved, typed requests. **Architecture Invariant:** requests run strictly
//! one at a time in arrival order on the inference thread; HTTP never waits on it (`/health`
//! answers during a generation) and it never waits on HTTP (events go through unbounded
//! per-job channels holding at most `max_tokens` events). **Architecture Invariant:** recording
//! never disturbs serving: the recorder's failures are counted in `/health` and logged, never
//! turned into a failed request or a stalled stream (see `trace`).

mod api;
mod conn;
mod http;
mod openai;
mod sse;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::{Backend, BackendError};
use crate::engine::Engine;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::trace::{Fingerprint, ModelDims, Recorder, RecorderConfig, RecorderStatus, TraceLevel};

pub use api::{ApiError, MAX_EXECUTE_TOKENS, MAX_PROMPT_CHARS, MAX_STOP_SEQUENCES, MAX_STOP_TOKENS};

/// Arguments of `worker-orcd serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// GGUF model file, or the name of a named test model (`cargo xtask fetch-model --list`),
    /// fetched and verified on first use (default: SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on. Loopback by default; anything else should come with --api-token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// auto, cpu or cuda (auto: CUDA where a GPU and its libraries are usable, else the CPU).
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Write one recording per request into this directory.
    #[arg(long)]
    pub record_dir: Option<PathBuf>,
    /// Hidden-state traces in recordings: off, hashes, summary or full.
    #[arg(long, default_value = "summary")]
    pub trace: TraceLevel,
    /// Require `Authorization: Bearer TOKEN` on every route but /health.
    #[arg(long)]
    pub api_token: Option<String>,
    /// Requests that may wait while one runs; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Context size in tokens (prompt plus generated), at least 2.
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Largest request body in bytes; a larger `Content-Length` is refused before reading.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Longest prompt (or all chat messages together) in characters, on every endpoint.
    #[arg(long, default_value_t = api::MAX_PROMPT_CHARS)]
    pub max_prompt_chars: usize,
    /// Requests parsed and tokenized at once; more wait (bounds memory before the queue).
    #[arg(long, default_value_t = 2)]
    pub max_preparing: usize,
    /// Open connections; more are answered 503 and closed.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers, idle time included.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a client may take to send a request body.
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// On SIGTERM/SIGINT: seconds open responses get to finish (jobs are cancelled at once)
    /// before their connections are closed.
    #[arg(long, default_value_t = 5)]
    pub shutdown_grace_s: u64,
    /// Also accept requests whose `Host` (and `Origin`) is this name (repeatable). Loopback
    /// names and the listen address are always accepted.
    #[arg(long = "allow-host")]
    pub allow_hosts: Vec<String>,
    /// Accept any `Host` and `Origin` (a worker behind a proxy); requires --api-token.
    #[arg(long)]
    pub allow_any_host: bool,
    /// Threads that summarize and compress trace frames beside the recorder's writer (default:
    /// the cores beyond two, at most 8; 0 = the writer alone). Recordings are the same bytes.
    #[arg(long)]
    pub trace_encoders: Option<usize>,
}

pub use crate::backend::BackendChoice;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error("cannot load model {path}: {source}")]
    Model { path: PathBuf, source: crate::model::ModelError },
    #[error("tokenizer of {path}: {source}")]
    Tokenizer { path: PathBuf, source: crate::tokenizer::TokenizerError },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("--record-dir: {0}")]
    Recorder(#[from] crate::trace::RecorderError),
    #[error("--addr {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the {what}: {source}")]
    Start { what: &'static str, source: std::io::Error },
    #[error("--api-token: must not be empty")]
    EmptyToken,
    #[error("--api-token: {0}")]
    BadToken(&'static str),
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
}

/// Largest `--queue`: the queue's slots are allocated when the server starts.
pub const MAX_QUEUE: usize = 4096;

/// A validated server configuration (everything `serve` needs, nothing from the CLI).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `None`: the default model.
    pub model_path: Option<PathBuf>,
    pub addr: SocketAddr,
    pub backend: BackendChoice,
    pub record_dir: Option<PathBuf>,
    pub trace: TraceLevel,
    pub api_token: Option<String>,
    pub queue: usize,
    pub threads: usize,
    pub ctx: usize,
    /// Larger bodies are answered 413 (a larger `Content-Length` before any byte is read).
    pub max_body_bytes: usize,
    /// Longest prompt in characters (all chat messages together), every endpoint.
    pub max_prompt_chars: usize,
    /// Requests parsed and tokenized at once.
    pub max_preparing: usize,
    /// Open connections at once; beyond that a connection is answered 503 and closed.
    pub max_connections: usize,
    /// Time to send a request's headers, including idle time on a kept-alive connection.
    pub header_timeout: Duration,
    /// Time to send a request's body.
    pub body_timeout: Duration,
    /// Time open responses get at shutdown before their connections are dropped.
    pub shutdown_grace: Duration,
    /// Extra names accepted in `Host` and `Origin` (loopback names and the listen address
    /// always are).
    pub allow_hosts: Vec<String>,
    /// No `Host`/`Origin` check at all (needs `api_token`).
    pub allow_any_host: bool,
    /// Trace buffer memory the recorder may hold.
    pub recorder_budget_bytes: usize,
    /// The recorder's encoder threads (`None`: `trace::default_encoders()`).
    pub trace_encoders: Option<usize>,
    /// Test hook: the inference thread waits at this gate before each job.
    #[doc(hidden)]
    pub gate: Option<Arc<Gate>>,
    /// Test hook: the recorder sleeps this many ms before every write (a slow disk).
    #[doc(hidden)]
    pub record_write_delay_ms: Option<Arc<AtomicU64>>,
    /// Test hook: the bytes the record disk has left (a full disk when they run out).
    #[doc(hidden)]
    pub record_disk_bytes_left: Option<Arc<AtomicU64>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model_path: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backend: BackendChoice::Auto,
            record_dir: None,
            trace: TraceLevel::Summary,
            api_token: None,
            queue: 16,
            threads: 0,
            ctx: 4096,
            max_body_bytes: 1 << 20,
            max_prompt_chars: api::MAX_PROMPT_CHARS,
            max_preparing: 2,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            allow_hosts: Vec::new(),
            allow_any_host: false,
            recorder_budget_bytes: 64 << 20,
            trace_encoders: None,
            gate: None,
            record_write_delay_ms: None,
            record_disk_bytes_left: None,
        }
    }
}

impl ServerConfig {
    pub fn from_args(a: ServeArgs) -> Result<ServerConfig, ServerError> {
        let cfg = ServerConfig {
            model_path: a.model,
            addr: a.addr,
            backend: a.backend,
            record_dir: a.record_dir,
            trace: a.trace,
            api_token: a.api_token,
            queue: a.queue,
            threads: a.threads,
            ctx: a.ctx,
            max_body_bytes: a.max_body_bytes,
            max_prompt_chars: a.max_prompt_chars,
            max_preparing: a.max_preparing,
            max_connections: a.max_connections,
            header_timeout: Duration::from_secs(a.header_timeout_s),
            body_timeout: Duration::from_secs(a.body_timeout_s),
            shutdown_grace: Duration::from_secs(a.shutdown_grace_s),
            allow_hosts: a.allow_hosts,
            allow_any_host: a.allow_any_host,
            trace_encoders: a.trace_encoders,
            ..ServerConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every setting before anything is loaded or allocated; the error names the flag.
    pub fn validate(&self) -> Result<(), ServerError> {
        if let Some(t) = &self.api_token {
            check_token(t)?;
        }
        let flag = |flag: &'static str, reason: String| Err(ServerError::Flag { flag, reason });
        if self.queue > MAX_QUEUE {
            return flag("queue", format!("{} is more than {MAX_QUEUE} waiting requests", self.queue));
        }
        if self.ctx < 2 {
            return flag("ctx", format!("{} leaves no room for a prompt token and a generated one (at least 2)", self.ctx));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 1 << 30 {
            return flag("max-body-bytes", format!("{} is outside 1 to {}", self.max_body_bytes, 1u64 << 30));
        }
        if self.max_prompt_chars == 0 {
            return flag("max-prompt-chars", "must be at least 1".into());
        }
        if self.max_preparing == 0 || self.max_preparing > 1024 {
            return flag("max-preparing", format!("{} is outside 1 to 1024", self.max_preparing));
        }
        if let Some(n) = self.trace_encoders.filter(|&n| n > crate::trace::MAX_ENCODERS) {
            return flag("trace-encoders", format!("{n} is more than {} threads", crate::trace::MAX_ENCODERS));
        }
        if self.max_connections == 0 || self.max_connections > 1 << 20 {
            return flag("max-connections", format!("{} is outside 1 to {}", self.max_connections, 1 << 20));
        }
        for (name, d) in [("header-timeout-s", self.header_timeout), ("body-timeout-s", self.body_timeout)] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return flag(name, format!("{} is outside 1 to 3600 seconds", d.as_secs()));
            }
        }
        if self.shutdown_grace > Duration::from_secs(3600) {
            return flag("shutdown-grace-s", format!("{} is more than 3600 seconds", self.shutdown_grace.as_secs()));
        }
        if self.allow_any_host && self.api_token.is_none() {
            return flag("allow-any-host", "requires --api-token (any web page could use the worker otherwise)".into());
        }
        if let Some(h) = self.allow_hosts.iter().find(|h| h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/')) {
            return flag("allow-host", format!("{h:?} is not a host name"));
        }
        Ok(())
    }
}

/// A bearer token must be something a client can send back unchanged: visible ASCII, no
/// spaces (RFC 6750's b64token is stricter still).
fn check_token(t: &str) -> Result<(), ServerError> {
    if t.is_empty() {
        return Err(ServerError::EmptyToken);
    }
    if t.trim() != t {
        return Err(ServerError::BadToken("must not start or end with whitespace"));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServerError::BadToken("must be visible ASCII characters without spaces"));
    }
    Ok(())
}

/// Test hook: a gate the inference thread waits at before starting each job.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn closed() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.cv.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Request counters for `/metrics` and `/health`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub ok: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub invalid: AtomicU64,
    pub queue_full: AtomicU64,
    pub unauthorized: AtomicU64,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Requests being parsed and tokenized now, and the most there ever were at once.
    pub preparing: AtomicU64,
    pub preparing_peak: AtomicU64,
    pub forbidden: AtomicU64,
    decode_tps_bits: AtomicU64,
}

impl Metrics {
    pub fn set_decode_tps(&self, v: f64) {
        self.decode_tps_bits.store(v.to_bits(), Ordering::Relaxed);
    }

    pub fn decode_tps(&self) -> f64 {
        f64::from_bits(self.decode_tps_bits.load(Ordering::Relaxed))
    }
}

/// State shared by the HTTP tasks and the inference thread.
pub(crate) struct Shared {
    pub model_name: String,
    pub model_sha256: String,
    pub backend: String,
    pub device: String,
    /// Why `--backend auto` fell back to the CPU, if it did.
    pub backend_fallback: Option<String>,
    pub fingerprint: Fingerprint,
    /// OpenAI's `system_fingerprint`: `fp_` and 10 hex digits of the environment fingerprint.
    pub system_fingerprint: String,
    pub n_ctx: usize,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<crate::chat::ChatTemplate>,
    pub queue_capacity: usize,
    pub queue_depth: AtomicUsize,
    current_job: Mutex<Option<(String, std::time::Instant)>>,
    /// Cancel flags of queued and running jobs, by job id.
    jobs: Mutex<HashMap<String, Arc<AtomicBool>>>,
    pub metrics: Metrics,
    pub recorder: Option<Arc<RecorderStatus>>,
    pub record_dir: Option<PathBuf>,
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    pub max_prompt_chars: usize,
    pub body_timeout: std::time::Duration,
    /// Lowercase names accepted in `Host`/`Origin`; `None`: any.
    pub allowed_hosts: Option<Vec<String>>,
    /// Set at shutdown: nothing more is queued.
    pub shutting_down: AtomicBool,
    pub started: SystemTime,
    pub seq: AtomicU64,
    /// Mean job duration in ms (exponentially weighted), for Retry-After.
    pub job_ms: AtomicU64,
}

impl Shared {
    pub fn current_job(&self) -> Option<String> {
        self.current_job.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.0.clone())
    }

    /// How long the running job has run, in ms.
    pub fn current_elapsed_ms(&self) -> Option<u64> {
        self.current_job.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.1.elapsed().as_millis() as u64)
    }

    pub fn set_current(&self, id: Option<String>) {
        *self.current_job.lock().unwrap_or_else(|e| e.into_inner()) = id.map(|id| (id, std::time::Instant::now()));
    }

    /// Registers a job id; `false` if one with that id is already queued or running.
    pub fn register(&self, id: &str, cancel: &Arc<AtomicBool>) -> bool {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.contains_key(id) {
            return false;
        }
        jobs.insert(id.to_string(), Arc::clone(cancel));
        true
    }

    pub fn finish_job(&self, id: &str, cancel: &Arc<AtomicBool>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.get(id).is_some_and(|c| Arc::ptr_eq(c, cancel)) {
            jobs.remove(id);
        }
    }

    /// Sets a job's cancel flag; `false` if no such job is queued or running.
    pub fn cancel(&self, id: &str) -> bool {
        match self.jobs.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            Some(c) => {
                c.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    pub fn cancel_all(&self) {
        for c in self.jobs.lock().unwrap_or_else(|e| e.into_inner()).values() {
            c.store(true, Ordering::Release);
        }
    }

    pub fn note_job_ms(&self, ms: f64) {
        let old = self.job_ms.load(Ordering::Relaxed) as f64;
        let new = if old == 0.0 { ms } else { 0.8 * old + 0.2 * ms };
        self.job_ms.store(new as u64, Ordering::Relaxed);
    }

    pub fn unix_now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// The fuzz target's entry (`crate::fuzz::http_request`): the body parsers of every endpoint
/// and the `Host`/`Origin` parsing on arbitrary bytes.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    for max in [api::MAX_PROMPT_CHARS, 16] {
        let _ = api::parse_execute(data, max);
        let _ = api::parse_completions(data, max);
        let _ = api::parse_chat(data, max);
    }
    let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    http::fuzz_headers(line);
}

/// The loaded pieces, before the HTTP side starts.
struct Core {
    shared: Arc<Shared>,
    queue: std::sync::mpsc::SyncSender<worker::Job>,
    inference: std::thread::JoinHandle<()>,
    preparing: Arc<tokio::sync::Semaphore>,
}

fn start_core(cfg: &ServerConfig) -> Result<Core, ServerError> {
    cfg.validate()?;
    let path = match &cfg.model_path {
        Some(p) => crate::fetch::model_arg(p)?,
        None => crate::fetch::default_model_path()?,
    };
    let model = Arc::new(Model::open(&path).map_err(|source| ServerError::Model { path: path.clone(), source })?);
    let tokenizer = Arc::new(Tokenizer::from_gguf(&model.file).map_err(|source| ServerError::Tokenizer { path: path.clone(), source })?);
    let opened = crate::backend::open(cfg.backend, Arc::clone(&model), cfg.ctx, cfg.threads)?;
    if let Some(why) = &opened.fallback {
        // `auto` without a usable GPU: said here, and in /health and recordings through the
        // backend's kind and device.
        eprintln!("worker-orcd: {why}");
    }
    let backend: Box<dyn Backend> = opened.backend;
    let model_sha256 = model_sha256(&path)?;
    let c = &model.config;
    let dims = ModelDims { n_layers: c.n_layers as u32, dim: c.dim as u32, n_vocab: c.n_vocab as u32 };
    let fingerprint = crate::trace::fingerprint::fingerprint_of(&model.name, &model_sha256, backend.as_ref(), cfg.threads);
    let system_fingerprint = {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(serde_json::to_vec(&fingerprint).unwrap_or_default());
        format!("fp_{}", h.iter().take(5).map(|b| format!("{b:02x}")).collect::<String>())
    };
    let recorder = match &cfg.record_dir {
        Some(dir) => {
            let mut rc = RecorderConfig::new(dir, cfg.trace);
            rc.budget_bytes = cfg.recorder_budget_bytes;
            if let Some(n) = cfg.trace_encoders {
                rc.encoders = n;
            }
            rc.write_delay_ms = cfg.record_write_delay_ms.clone();
            rc.disk_bytes_left = cfg.record_disk_bytes_left.clone();
            Some(Recorder::start(rc, dims)?)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        model_name: model.name.clone(),
        model_sha256,
        backend: backend.kind().to_string(),
        device: backend.device(),
        backend_fallback: opened.fallback,
        fingerprint,
        system_fingerprint,
        n_ctx: backend.n_ctx(),
        tokenizer: Arc::clone(&tokenizer),
        chat_template: crate::chat::ChatTemplate::of_model(&model.file).ok(),
        queue_capacity: cfg.queue,
        queue_depth: AtomicUsize::new(0),
        current_job: Mutex::new(None),
        jobs: Mutex::new(HashMap::new()),
        metrics: Metrics::default(),
        recorder: recorder.as_ref().map(|r| Arc::clone(r.status())),
        record_dir: cfg.record_dir.clone(),
        api_token: cfg.api_token.clone(),
        max_body_bytes: cfg.max_body_bytes,
        max_prompt_chars: cfg.max_prompt_chars,
        body_timeout: cfg.body_timeout,
        allowed_hosts: (!cfg.allow_any_host).then(|| allowed_hosts(cfg)),
        shutting_down: AtomicBool::new(false),
        started: SystemTime::now(),
        seq: AtomicU64::new(0),
        job_ms: AtomicU64::new(0),
    });
    let preparing = Arc::new(tokio::sync::Semaphore::new(cfg.max_preparing));
    let engine = Engine::new(backend, tokenizer);
    let (queue, rx) = std::sync::mpsc::sync_channel(cfg.queue);
    let sh = Arc::clone(&shared);
    let gate = cfg.gate.clone();
    let inference = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || worker::inference_loop(rx, engine, recorder, sh, gate))
        .map_err(|source| ServerError::Start { what: "inference thread", source })?;
    Ok(Core { shared, queue, inference, preparing })
}

/// The names a loopback worker answers to (any port): what a browser sends for a page on
/// this machine. A DNS-rebinding page sends its own name and is refused.
fn allowed_hosts(cfg: &ServerConfig) -> Vec<String> {
    let mut h: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].iter().map(|s| s.to_string()).collect();
    let ip = cfg.addr.ip();
    if !ip.is_unspecified() {
        h.push(match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    h.extend(cfg.allow_hosts.iter().map(|s| s.to_ascii_lowercase()));
    h
}

/// A server running on its own threads (for tests and embedding). Dropping it shuts it down.
pub struct RunningServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cancels every job, stops accepting, waits for open responses and the inference thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.cancel_all();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Loads the model, binds `cfg.addr` (port 0 picks one) and serves on background threads.
pub fn spawn(cfg: ServerConfig) -> Result<RunningServer, ServerError> {
    cfg.validate()?;
    let listener = std::net::TcpListener::bind(cfg.addr).map_err(|source| ServerError::Bind { addr: cfg.addr, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: cfg.addr, source })?;
    listener.set_nonblocking(true).map_err(|source| ServerError::Bind { addr, source })?;
    let core = start_core(&cfg)?;
    let shared = Arc::clone(&core.shared);
    let limits = conn::ConnLimits { max_connections: cfg.max_connections, header_timeout: cfg.header_timeout, shutdown_grace: cfg.shutdown_grace };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return eprintln!("worker-orcd: cannot start the http runtime: {e}"),
            };
            let Core { shared, queue, inference, preparing } = core;
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return eprintln!("worker-orcd: {e}"),
                };
                let sh = Arc::clone(&shared);
                let app = http::router(http::AppState { shared, queue, preparing });
                let stop = async move {
                    let _ = rx.await;
                    // Nothing new is queued; queued and running jobs end as cancelled, and
                    // their recordings are finished by the writer.
                    sh.shutting_down.store(true, Ordering::Release);
                    sh.cancel_all();
                };
                conn::serve(listener, app, limits, stop).await;
            });
            // Every connection (and with it every queue sender) is gone: the inference thread
            // finishes its cancelled job, closes the recorder and ends.
            drop(rt);
            let _ = inference.join();
        })
        .map_err(|source| ServerError::Start { what: "http thread", source })?;
    Ok(RunningServer { addr, shared, shutdown: Some(tx), thread: Some(thread) })
}

/// `worker-orcd serve`: serves until SIGINT or SIGTERM, then finishes open responses and
/// recordings.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = ServerConfig::from_args(args)?;
    if !cfg.addr.ip().is_loopback() && cfg.api_token.is_none() {
        eprintln!("worker-orcd: warning: listening on {} without --api-token", cfg.addr);
    }
    let grace = cfg.shutdown_grace;
    let server = spawn(cfg)?;
    let s = &server.shared;
    eprintln!(
        "worker-orcd: serving {} ({}, {}) on http://{}{}",
        s.model_name,
        s.backend,
        s.device,
        server.addr,
        s.record_dir.as_ref().map(|d| format!(", recording to {}", d.display())).unwrap_or_default()
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    });
    eprintln!("worker-orcd: shutting down");
    // The HTTP side drops open connections after the grace period and the running job stops
    // at its next prefill chunk or token; a second signal, or a backend stuck for a whole
    // minute more, ends the process without waiting (recordings left `.partial`, as on a crash).
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = tokio::time::sleep(grace + std::time::Duration::from_secs(60)) => {}
                }
            });
        }
        eprintln!("worker-orcd: shutdown did not finish; exiting");
        std::process::exit(1);
    });
    server.shutdown();
    eprintln!("worker-orcd: stopped");
    Ok(())
}

/// sha256 of the model file, computed once per (path, size, mtime) in this process.
fn model_sha256(path: &std::path::Path) -> Result<String, ServerError> {
    type Entry = (PathBuf, u64, Option<SystemTime>, String);
    static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let meta = std::fs::metadata(path).ok();
    let (len, mtime) = (meta.as_ref().map(|m| m.len()).unwrap_or(0), meta.and_then(|m| m.modified().ok()));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hit) = cache.iter().find(|c| c.0 == path && c.1 == len && c.2 == mtime) {
        return Ok(hit.3.clone());
    }
    let h = crate::fetch::sha256_file(path)?;
    cache.push((path.to_path_buf(), len, mtime, h.clone()));
    Ok(h)
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-27T10:11:12.123456Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_micros())
}

pub(crate) fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_780_272_123_456);
        assert_eq!(rfc3339(t), "2026-11-27T11:51:12.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }
}
