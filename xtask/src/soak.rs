//! `cargo xtask soak --duration 60m`: the soak and load benchmark. Starts a real release
//! `worker-orcd serve` on loopback (CPU backend, default model, `--trace full`, an API token,
//! a record directory on a small tmpfs that fills up and is freed), drives it for the whole
//! duration with a mix of clients (normal `/execute` SSE and OpenAI requests, malformed and
//! hostile ones, slow ones, cancelling ones, bursts past the queue), samples the server's
//! memory, verifies every recording with `worker-orcd replay`, and writes `summary.json` and
//! `summary.txt`. Exits non-zero when anything was lost: a request that should have succeeded
//! failed, a 5xx, a recording that fails replay or that an answer named but does not exist, a
//! server crash or unclean exit, or memory growth beyond `--max-rss-growth-mb`.
//!
//! Knows the worker only as a process and an HTTP server: the client is plain `std::net`
//! (HTTP/1.1 written out by hand), because slow, torn and hostile requests are exactly what a
//! client library would refuse to send.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const USAGE: &str = "usage: cargo xtask soak [--duration 60m] [--clients N] [--out DIR] [--bin PATH] [--model PATH] [--disk-mb N] [--sweep-s N] [--max-rss-growth-mb N] [--threads N] [--seed N] [--keep]";

const TOKEN: &str = "soak-token-7f3a";

/// Header and body timeouts given to the server: short, so slow clients are cut often.
const HEADER_TIMEOUT_S: u64 = 4;
const BODY_TIMEOUT_S: u64 = 4;
/// The queue given to the server, small enough that bursts are refused in part.
const QUEUE: usize = 4;

struct Opts {
    duration: Duration,
    clients: usize,
    out: PathBuf,
    bin: PathBuf,
    model: Option<PathBuf>,
    disk_mb: u64,
    sweep: Duration,
    max_rss_growth_mb: f64,
    threads: usize,
    seed: u64,
    keep: bool,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().with_context(|| format!("--duration {s}: not a number"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("--duration {s}: the unit is s, m or h"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_opts(args: &[String], root: &Path) -> Result<Opts> {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut o = Opts {
        duration: Duration::from_secs(600),
        clients: 2,
        out: root.join(format!("target/soak/{unix}")),
        bin: root.join("target/release/worker-orcd"),
        model: None,
        disk_mb: 32,
        sweep: Duration::from_secs(20),
        max_rss_growth_mb: 64.0,
        threads: 2,
        seed: 1,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--keep" {
            o.keep = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{a} needs a value\n{USAGE}"))?;
        let num = |what: &str| -> Result<u64> { v.parse().with_context(|| format!("{what} {v}: not a whole number")) };
        match a.as_str() {
            "--duration" => o.duration = parse_duration(v)?,
            "--clients" => o.clients = num("--clients")?.max(1) as usize,
            "--out" => o.out = PathBuf::from(v),
            "--bin" => o.bin = PathBuf::from(v),
            "--model" => o.model = Some(PathBuf::from(v)),
            "--disk-mb" => o.disk_mb = num("--disk-mb")?.max(1),
            "--sweep-s" => o.sweep = Duration::from_secs(num("--sweep-s")?.max(1)),
            "--max-rss-growth-mb" => o.max_rss_growth_mb = v.parse().with_context(|| format!("--max-rss-growth-mb {v}: not a number"))?,
            "--threads" => o.threads = num("--threads")? as usize,
            "--seed" => o.seed = num("--seed")?,
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Statistics shared by the client threads

#[derive(Default, serde::Serialize)]
struct KindStats {
    sent: u64,
    /// Answered as a good request should be (200 and a whole answer).
    served: u64,
    /// Refused on purpose, by status (a 4xx for a bad request, 503 when busy).
    refused: BTreeMap<String, u64>,
    /// Ended on purpose by the client (cancelled, disconnected) or by the server's timeouts
    /// (a slow client closed or answered 408), by how.
    cut: BTreeMap<String, u64>,
    /// Lost: what should have worked did not (5xx, transport error, wrong answer).
    failed: u64,
}

/// What an answer said about a recording.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
enum Named {
    /// `recording` of an `end` event or a non-streamed answer's header, state `written`.
    Written,
    /// State `incomplete`: a `.partial` file that must replay as INCOMPLETE.
    Incomplete,
    /// State `writing`, or a stream's header (planned before the job ran): either outcome.
    Planned,
}

#[derive(Default)]
struct Stats {
    kinds: BTreeMap<&'static str, KindStats>,
    failures: Vec<String>,
    failure_count: u64,
    /// Recording file names (not paths: the janitor moves them) an answer named.
    named: HashMap<String, Named>,
    /// `recording_state` values seen in `end` events and headers.
    recording_states: BTreeMap<String, u64>,
    latency_ms: Vec<f64>,
}

struct Ctx {
    addr: SocketAddr,
    host: String,
    stats: Mutex<Stats>,
    deadline: Instant,
    t0: Instant,
    seq: AtomicU64,
}

impl Ctx {
    fn with<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn sent(&self, kind: &'static str) {
        self.with(|s| s.kinds.entry(kind).or_default().sent += 1);
    }
    fn served(&self, kind: &'static str, ms: f64) {
        self.with(|s| {
            s.kinds.entry(kind).or_default().served += 1;
            s.latency_ms.push(ms);
        });
    }
    fn refused(&self, kind: &'static str, label: impl Into<String>) {
        self.with(|s| *s.kinds.entry(kind).or_default().refused.entry(label.into()).or_default() += 1);
    }
    fn cut(&self, kind: &'static str, label: impl Into<String>) {
        self.with(|s| *s.kinds.entry(kind).or_default().cut.entry(label.into()).or_default() += 1);
    }
    fn failed(&self, kind: &'static str, why: impl Into<String>) {
        let why = format!("[{:.0}s] {kind}: {}", self.t0.elapsed().as_secs_f64(), why.into());
        eprintln!("soak: FAILED {why}");
        self.with(|s| {
            s.kinds.entry(kind).or_default().failed += 1;
            s.failure_count += 1;
            if s.failures.len() < 200 {
                s.failures.push(why);
            }
        });
    }
    fn named(&self, path: &str, state: &str) {
        let named = match state {
            "written" => Named::Written,
            "incomplete" => Named::Incomplete,
            _ => Named::Planned,
        };
        let file = Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        // A stream's header names the planned `.wrec`; its cut twin is `.wrec.partial`.
        let file = if named == Named::Planned { file.trim_end_matches(".partial").to_string() } else { file };
        self.with(|s| {
            s.named.insert(file, named);
        });
    }
    fn state(&self, state: &str) {
        self.with(|s| *s.recording_states.entry(state.to_string()).or_default() += 1);
    }
    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------------
// A hand-written HTTP/1.1 client

fn connect(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The request head, `Connection: close`, with `headers` as given (nothing added but Host
/// unless `host` is empty).
fn head(method: &str, path: &str, host: &str, headers: &[(&str, String)], content_length: Option<usize>) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\n");
    if !host.is_empty() {
        h.push_str(&format!("Host: {host}\r\n"));
    }
    h.push_str("Connection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn auth_json() -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {TOKEN}")), ("Content-Type", "application/json".into())]
}

enum BodyMode {
    Chunked { left: usize, done: bool },
    Length(usize),
    Eof,
}

/// A response body: chunked, sized or to the end of the connection.
struct Body {
    inner: BufReader<TcpStream>,
    mode: BodyMode,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed inside the body");
        match &mut self.mode {
            BodyMode::Eof => self.inner.read(buf),
            BodyMode::Length(left) => {
                if *left == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let take = buf.len().min(*left);
                let n = self.inner.read(&mut buf[..take])?;
                if n == 0 {
                    return Err(eof());
                }
                *left -= n;
                Ok(n)
            }
            BodyMode::Chunked { left, done } => {
                if *done || buf.is_empty() {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    if self.inner.read_line(&mut line)? == 0 {
                        return Err(eof());
                    }
                    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
                    if size == 0 {
                        loop {
                            line.clear();
                            if self.inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let take = buf.len().min(*left);
                let n = self.inner.read(&mut buf[..take])?;
                if n == 0 {
                    return Err(eof());
                }
                *left -= n;
                if *left == 0 {
                    let mut crlf = String::new();
                    self.inner.read_line(&mut crlf)?;
                }
                Ok(n)
            }
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: BufReader<Body>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn text(mut self) -> std::io::Result<String> {
        let mut s = String::new();
        self.body.read_to_string(&mut s)?;
        Ok(s)
    }
}

fn read_response(stream: TcpStream) -> std::io::Result<Response> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a status line"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed inside the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let mode = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        BodyMode::Chunked { left: 0, done: false }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse().ok()) {
        BodyMode::Length(n)
    } else {
        BodyMode::Eof
    };
    Ok(Response { status, headers, body: BufReader::new(Body { inner: r, mode }) })
}

/// Sends a whole request and reads the response head.
fn request(ctx: &Ctx, method: &str, path: &str, headers: &[(&str, String)], body: &[u8], timeout: Duration) -> std::io::Result<Response> {
    let mut s = connect(ctx.addr, timeout)?;
    let mut req = head(method, path, &ctx.host, headers, Some(body.len()));
    req.extend_from_slice(body);
    s.write_all(&req)?;
    read_response(s)
}

/// One Server-Sent Event: its `event:` name (empty for OpenAI's unnamed ones) and `data:`.
struct Sse {
    event: String,
    data: String,
}

fn next_sse(r: &mut impl BufRead) -> std::io::Result<Option<Sse>> {
    let (mut event, mut data) = (String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if event.is_empty() && data.is_empty() {
                continue; // keep-alive padding
            }
            return Ok(Some(Sse { event, data }));
        }
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client mix

/// splitmix64: each client thread's own reproducible choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time",
    "Write a haiku about the sea.",
    "The three primary colours are",
    "def fibonacci(n):",
    "Explain why the sky is blue in one sentence.",
    "List three fruits:",
    "The lighthouse keeper opened the door and",
];

/// About 250 tokens: its prefill takes several 32-position chunks.
fn long_prompt() -> String {
    "The lighthouse keeper wrote in his log that the storm had passed. ".repeat(20)
}

/// The weighted mix each client thread draws from.
const MIX: &[(&str, u64)] =
    &[("execute", 26), ("completion", 14), ("chat_stream", 10), ("chat", 6), ("malformed", 22), ("slow", 5), ("cancel", 12), ("burst", 3), ("health", 2)];

fn client_loop(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = Rng(seed);
    let total: u64 = MIX.iter().map(|(_, w)| w).sum();
    while Instant::now() < ctx.deadline {
        let mut r = rng.below(total);
        let kind = MIX
            .iter()
            .find(|(_, w)| {
                if r < *w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .unwrap_or("execute");
        match kind {
            "execute" => execute(&ctx, &mut rng),
            "completion" => completion(&ctx, &mut rng, false),
            "chat_stream" => completion(&ctx, &mut rng, true),
            "chat" => chat(&ctx, &mut rng),
            "malformed" => malformed(&ctx, &mut rng),
            "slow" => slow(&ctx, &mut rng),
            "cancel" => cancel(&ctx, &mut rng),
            "burst" => burst(&ctx, &mut rng),
            _ => health(&ctx),
        }
        // Think time, so the mix rather than raw load is what the hour measures (and the
        // verifier, replaying every recording on the same two cores, keeps up).
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
    }
}

/// A 503 when the queue is full is a refusal, not a loss, if it says when to come back.
fn busy(ctx: &Ctx, kind: &'static str, r: &Response) -> bool {
    if r.status != 503 {
        return false;
    }
    if r.header("retry-after").is_some() {
        ctx.refused(kind, "503 busy");
    } else {
        ctx.failed(kind, "503 without Retry-After");
    }
    true
}

fn sampling(rng: &mut Rng, body: &mut Value) {
    if rng.below(2) == 0 {
        body["temperature"] = json!(0);
    } else {
        body["temperature"] = json!(0.8);
        body["seed"] = json!(rng.below(1 << 40));
    }
}

/// `/execute`, read to its `end` event.
fn execute(ctx: &Ctx, rng: &mut Rng) {
    let kind = "execute";
    ctx.sent(kind);
    let max = 4 + rng.below(13);
    let mut body = json!({"job_id": ctx.next_id("soak"), "prompt": rng.pick(PROMPTS), "max_tokens": max});
    sampling(rng, &mut body);
    let t0 = Instant::now();
    let r = match request(ctx, "POST", "/execute", &auth_json(), body.to_string().as_bytes(), Duration::from_secs(300)) {
        Ok(r) => r,
        Err(e) => return ctx.failed(kind, format!("transport: {e}")),
    };
    if busy(ctx, kind, &r) {
        return;
    }
    if r.status != 200 {
        let s = r.status;
        return ctx.failed(kind, format!("status {s}: {}", r.text().unwrap_or_default()));
    }
    let mut rd = r.body;
    let mut tokens = 0u64;
    let mut started = false;
    loop {
        match next_sse(&mut rd) {
            Ok(Some(ev)) => match ev.event.as_str() {
                "started" => started = true,
                "token" => tokens += 1,
                "end" => {
                    let d: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    if !started || d["tokens_out"].as_u64() != Some(tokens) || tokens > max {
                        return ctx.failed(kind, format!("started {started}, {tokens} token events, end {d}"));
                    }
                    let state = d["recording_state"].as_str().unwrap_or("none");
                    ctx.state(state);
                    if let Some(p) = d["recording"].as_str() {
                        ctx.named(p, state);
                    } else if let Some(p) = d["recording_pending"].as_str() {
                        ctx.named(p, "writing");
                    }
                    return ctx.served(kind, t0.elapsed().as_secs_f64() * 1000.0);
                }
                other => return ctx.failed(kind, format!("event {other}: {}", ev.data)),
            },
            Ok(None) => return ctx.failed(kind, format!("stream ended without an end event after {tokens} tokens")),
            Err(e) => return ctx.failed(kind, format!("reading the stream: {e}")),
        }
    }
}

/// `/v1/completions` (not streamed) or `/v1/chat/completions` streamed.
fn completion(ctx: &Ctx, rng: &mut Rng, chat_stream: bool) {
    let kind = if chat_stream { "chat_stream" } else { "completion" };
    ctx.sent(kind);
    let max = 4 + rng.below(13);
    let (path, mut body) = if chat_stream {
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": rng.pick(PROMPTS)}], "max_tokens": max, "stream": true}))
    } else {
        ("/v1/completions", json!({"prompt": rng.pick(PROMPTS), "max_tokens": max}))
    };
    sampling(rng, &mut body);
    let t0 = Instant::now();
    let r = match request(ctx, "POST", path, &auth_json(), body.to_string().as_bytes(), Duration::from_secs(300)) {
        Ok(r) => r,
        Err(e) => return ctx.failed(kind, format!("transport: {e}")),
    };
    if busy(ctx, kind, &r) {
        return;
    }
    if r.status != 200 {
        let s = r.status;
        return ctx.failed(kind, format!("status {s}: {}", r.text().unwrap_or_default()));
    }
    let rec = r.header("x-worker-orcd-recording").map(str::to_string);
    let state = r.header("x-worker-orcd-recording-state").map(str::to_string);
    if chat_stream {
        let mut rd = r.body;
        let mut finished = false;
        loop {
            match next_sse(&mut rd) {
                Ok(Some(ev)) if ev.data == "[DONE]" => break,
                Ok(Some(ev)) => {
                    let d: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                    if d.get("error").is_some() || d["choices"].is_null() {
                        return ctx.failed(kind, format!("chunk {}", ev.data));
                    }
                    finished |= d["choices"][0]["finish_reason"].is_string();
                }
                Ok(None) => return ctx.failed(kind, "stream ended without [DONE]"),
                Err(e) => return ctx.failed(kind, format!("reading the stream: {e}")),
            }
        }
        if !finished {
            return ctx.failed(kind, "no chunk with a finish_reason");
        }
        if let Some(p) = rec {
            ctx.named(&p, "planned");
        }
    } else {
        let text = match r.text() {
            Ok(t) => t,
            Err(e) => return ctx.failed(kind, format!("reading the body: {e}")),
        };
        let d: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let n = d["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        // Zero tokens is a right answer too: the model may end at once.
        if !d["choices"][0]["text"].is_string() || n > max {
            return ctx.failed(kind, format!("answer {text}"));
        }
        let state = state.unwrap_or_else(|| "none".into());
        ctx.state(&state);
        if let Some(p) = rec {
            ctx.named(&p, &state);
        }
    }
    ctx.served(kind, t0.elapsed().as_secs_f64() * 1000.0);
}

/// `/v1/chat/completions`, not streamed.
fn chat(ctx: &Ctx, rng: &mut Rng) {
    let kind = "chat";
    ctx.sent(kind);
    let max = 4 + rng.below(13);
    let mut body = json!({"messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": rng.pick(PROMPTS)}], "max_tokens": max});
    sampling(rng, &mut body);
    let t0 = Instant::now();
    let r = match request(ctx, "POST", "/v1/chat/completions", &auth_json(), body.to_string().as_bytes(), Duration::from_secs(300)) {
        Ok(r) => r,
        Err(e) => return ctx.failed(kind, format!("transport: {e}")),
    };
    if busy(ctx, kind, &r) {
        return;
    }
    let (status, rec, state) =
        (r.status, r.header("x-worker-orcd-recording").map(str::to_string), r.header("x-worker-orcd-recording-state").map(str::to_string));
    let text = r.text().unwrap_or_default();
    let d: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status != 200 || !d["choices"][0]["message"]["content"].is_string() {
        return ctx.failed(kind, format!("status {status}: {text}"));
    }
    let state = state.unwrap_or_else(|| "none".into());
    ctx.state(&state);
    if let Some(p) = rec {
        ctx.named(&p, &state);
    }
    ctx.served(kind, t0.elapsed().as_secs_f64() * 1000.0);
}

/// One hostile or broken request, and the statuses that are a correct refusal of it.
fn malformed(ctx: &Ctx, rng: &mut Rng) {
    let kind = "malformed";
    let json_h = auth_json();
    let cases: &[&str] = &[
        "bad_json",
        "wrong_type",
        "unknown_field",
        "missing_field",
        "too_many_tokens",
        "oversized_body",
        "huge_content_length",
        "huge_prompt",
        "no_auth",
        "bad_auth",
        "lowercase_bearer_wrong",
        "text_plain",
        "bad_host",
        "bad_origin",
        "not_found",
        "wrong_method",
        "garbage",
        "bad_chat",
        "cancel_unknown",
    ];
    let case = *rng.pick(cases);
    ctx.sent(kind);
    let exec = |extra: Value| {
        let mut b = json!({"job_id": ctx.next_id("bad"), "prompt": "Hi", "max_tokens": 2});
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        b.to_string().into_bytes()
    };
    let bearer = |t: &str| vec![("Authorization", t.to_string()), ("Content-Type", "application/json".into())];
    // (method, path, headers, body, acceptable statuses, may the server close before answering)
    let (method, path, headers, body, ok, may_close): (&str, String, Vec<(&str, String)>, Vec<u8>, &[u16], bool) = match case {
        "bad_json" => ("POST", "/execute".into(), json_h, br#"{"job_id": "x", "prompt": "#.to_vec(), &[400], false),
        "wrong_type" => ("POST", "/execute".into(), json_h, exec(json!({"max_tokens": "ten"})), &[400], false),
        "unknown_field" => ("POST", "/v1/completions".into(), json_h, br#"{"prompt":"Hi","max_tokens":2,"frobnicate":true}"#.to_vec(), &[400], false),
        "missing_field" => ("POST", "/execute".into(), json_h, br#"{"prompt":"Hi","max_tokens":2}"#.to_vec(), &[400], false),
        "too_many_tokens" => ("POST", "/execute".into(), json_h, exec(json!({"max_tokens": 100000})), &[400], false),
        "oversized_body" => ("POST", "/execute".into(), json_h, exec(json!({"prompt": "x".repeat(1_200_000)})), &[413], true),
        "huge_prompt" => {
            ("POST", "/v1/completions".into(), json_h, json!({"prompt": "y".repeat(40_000), "max_tokens": 2}).to_string().into_bytes(), &[400, 413], false)
        }
        "no_auth" => ("POST", "/execute".into(), vec![("Content-Type", "application/json".into())], exec(json!({})), &[401], false),
        "bad_auth" => ("POST", "/v1/completions".into(), bearer("Bearer not-the-token"), br#"{"prompt":"Hi","max_tokens":2}"#.to_vec(), &[401], false),
        "lowercase_bearer_wrong" => ("GET", "/metrics".into(), vec![("Authorization", "bearer nope".into())], Vec::new(), &[401], false),
        "text_plain" => (
            "POST",
            "/execute".into(),
            vec![("Authorization", format!("Bearer {TOKEN}")), ("Content-Type", "text/plain".into())],
            exec(json!({})),
            &[415],
            false,
        ),
        "bad_origin" => {
            let mut h = json_h;
            h.push(("Origin", "http://evil.example".into()));
            ("POST", "/execute".into(), h, exec(json!({})), &[403], false)
        }
        "not_found" => ("GET", "/nowhere".into(), json_h, Vec::new(), &[404], false),
        "wrong_method" => ("GET", "/execute".into(), json_h, Vec::new(), &[405], false),
        "bad_chat" => ("POST", "/v1/chat/completions".into(), json_h, br#"{"messages":[{"role":"wizard","content":"Hi"}]}"#.to_vec(), &[400], false),
        "cancel_unknown" => ("POST", "/cancel/no-such-job".into(), json_h, Vec::new(), &[404], false),
        // Sent by hand below.
        "bad_host" => ("", String::new(), Vec::new(), Vec::new(), &[403], false),
        "huge_content_length" => ("", String::new(), Vec::new(), Vec::new(), &[413], true),
        _ => ("", String::new(), Vec::new(), Vec::new(), &[400], true),
    };
    let t0 = Instant::now();
    let result: std::io::Result<u16> = match case {
        "bad_host" => (|| {
            let mut s = connect(ctx.addr, Duration::from_secs(30))?;
            let b = exec(json!({}));
            let mut req = head("POST", "/execute", "evil.example:80", &auth_json(), Some(b.len()));
            req.extend_from_slice(&b);
            s.write_all(&req)?;
            Ok(read_response(s)?.status)
        })(),
        "huge_content_length" => (|| {
            let mut s = connect(ctx.addr, Duration::from_secs(30))?;
            let mut req = head("POST", "/execute", &ctx.host, &auth_json(), None);
            req.truncate(req.len() - 2);
            req.extend_from_slice(b"Content-Length: 9223372036854775808\r\n\r\n{\"job_id\":");
            s.write_all(&req)?;
            Ok(read_response(s)?.status)
        })(),
        "garbage" => (|| {
            let mut s = connect(ctx.addr, Duration::from_secs(30))?;
            s.write_all(b"\x16\x03\x01\x02\x00GARBAGE / NOT-HTTP\r\n\r\n")?;
            Ok(read_response(s)?.status)
        })(),
        _ => request(ctx, method, &path, &headers, &body, Duration::from_secs(60)).map(|r| r.status),
    };
    let label = |st: u16| format!("{st} {case}");
    match result {
        Ok(st) if ok.contains(&st) => ctx.refused(kind, label(st)),
        Ok(503) => ctx.refused(kind, "503 busy"),
        Ok(st) => ctx.failed(kind, format!("{case}: status {st} (expected {ok:?})")),
        // A refused upload may be closed while it is still being sent, and a request that is
        // not HTTP may be dropped without an answer.
        Err(_) if may_close => ctx.refused(kind, format!("closed {case}")),
        Err(e) => ctx.failed(kind, format!("{case}: transport: {e} after {:?}", t0.elapsed())),
    }
}

/// Reads until the server closes the connection (or answers); `None` if it is still open
/// after `limit`.
fn wait_closed(s: &mut TcpStream, limit: Duration, mut trickle: impl FnMut(&mut TcpStream) -> bool) -> Option<(Duration, String)> {
    let t0 = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some((t0.elapsed(), String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_string())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if !trickle(s) {
                    return Some((t0.elapsed(), "write refused".into()));
                }
            }
            Err(_) => return Some((t0.elapsed(), "reset".into())),
        }
    }
    None
}

/// A slow client: half-sent headers (slowloris), a half-sent body, or an idle connection.
/// The server must close it within its timeouts, answering 408 to a stalled body.
fn slow(ctx: &Ctx, rng: &mut Rng) {
    let kind = "slow";
    ctx.sent(kind);
    let case = *rng.pick(&["slowloris", "half_body", "idle"]);
    let mut s = match connect(ctx.addr, Duration::from_secs(30)) {
        Ok(s) => s,
        Err(e) => return ctx.failed(kind, format!("{case}: connect: {e}")),
    };
    let limit = Duration::from_secs(HEADER_TIMEOUT_S.max(BODY_TIMEOUT_S) + 8);
    let closed = match case {
        "slowloris" => {
            let _ = s.write_all(format!("POST /execute HTTP/1.1\r\nHost: {}\r\n", ctx.host).as_bytes());
            let mut n = 0;
            // One header line a second, never the blank line that ends them.
            wait_closed(&mut s, limit, |s| {
                n += 1;
                s.write_all(format!("X-Slow-{n}: {}\r\n", "a".repeat(8)).as_bytes()).is_ok()
            })
        }
        "half_body" => {
            let mut req = head("POST", "/execute", &ctx.host, &auth_json(), Some(400));
            req.extend_from_slice(br#"{"job_id":"slow","prompt":"#);
            let _ = s.write_all(&req);
            wait_closed(&mut s, limit, |_| true)
        }
        _ => wait_closed(&mut s, limit, |_| true),
    };
    match closed {
        Some((_, first)) if case == "half_body" && !(first.contains(" 408 ") || first == "reset" || first.is_empty()) => {
            ctx.failed(kind, format!("{case}: answered {first:?}, expected 408 or a close"))
        }
        Some((_, first)) => ctx.cut(kind, format!("{case} closed{}", if first.contains(" 408 ") { " with 408" } else { "" })),
        None => ctx.failed(kind, format!("{case}: still open after {limit:?} (header timeout {HEADER_TIMEOUT_S}s, body timeout {BODY_TIMEOUT_S}s)")),
    }
}

/// A client that leaves mid-prefill or mid-generation, or cancels through `/cancel`.
fn cancel(ctx: &Ctx, rng: &mut Rng) {
    let kind = "cancel";
    ctx.sent(kind);
    let case = *rng.pick(&["leave_in_prefill", "leave_in_generation", "cancel_endpoint"]);
    let id = ctx.next_id("cancel");
    let body = match case {
        "leave_in_prefill" => json!({"job_id": id, "prompt": long_prompt(), "max_tokens": 4, "temperature": 0}),
        _ => json!({"job_id": id, "prompt": "Count from 1 to 500: 1, 2, 3,", "max_tokens": 300, "temperature": 0}),
    };
    let r = match request(ctx, "POST", "/execute", &auth_json(), body.to_string().as_bytes(), Duration::from_secs(300)) {
        Ok(r) => r,
        Err(e) => return ctx.failed(kind, format!("{case}: transport: {e}")),
    };
    if busy(ctx, kind, &r) {
        return;
    }
    if r.status != 200 {
        return ctx.failed(kind, format!("{case}: status {}", r.status));
    }
    let mut rd = r.body;
    let want_tokens = if case == "leave_in_prefill" { 0 } else { 2 + rng.below(6) };
    let mut tokens = 0;
    loop {
        match next_sse(&mut rd) {
            Ok(Some(ev)) if ev.event == "started" && want_tokens == 0 => {
                // Leave a moment into the prefill.
                std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
                drop(rd);
                return ctx.cut(kind, case);
            }
            Ok(Some(ev)) if ev.event == "token" => {
                tokens += 1;
                if tokens >= want_tokens {
                    break;
                }
            }
            Ok(Some(ev)) if ev.event == "end" || ev.event == "error" => return ctx.cut(kind, format!("{case}: ended first ({})", ev.event)),
            Ok(Some(_)) => {}
            Ok(None) => return ctx.failed(kind, format!("{case}: stream ended after {tokens} tokens")),
            Err(e) => return ctx.failed(kind, format!("{case}: reading: {e}")),
        }
    }
    if case == "leave_in_generation" {
        drop(rd);
        return ctx.cut(kind, case);
    }
    match request(ctx, "POST", &format!("/cancel/{id}"), &auth_json(), b"", Duration::from_secs(30)) {
        Ok(c) if c.status == 200 || c.status == 404 => {}
        Ok(c) => return ctx.failed(kind, format!("{case}: /cancel answered {}", c.status)),
        Err(e) => return ctx.failed(kind, format!("{case}: /cancel: {e}")),
    }
    loop {
        match next_sse(&mut rd) {
            Ok(Some(ev)) if ev.event == "error" => {
                let d: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                return if d["code"] == "CANCELLED" { ctx.cut(kind, case) } else { ctx.failed(kind, format!("{case}: error {}", ev.data)) };
            }
            Ok(Some(ev)) if ev.event == "end" => return ctx.cut(kind, format!("{case}: ended first (end)")),
            Ok(Some(_)) => {}
            Ok(None) => return ctx.failed(kind, format!("{case}: stream ended without an error event")),
            Err(e) => return ctx.failed(kind, format!("{case}: reading after cancel: {e}")),
        }
    }
}

/// Eight short requests at once against a queue of four: the excess is answered 503.
fn burst(ctx: &Ctx, rng: &mut Rng) {
    let seeds: Vec<u64> = (0..8).map(|_| rng.next()).collect();
    std::thread::scope(|s| {
        for seed in seeds {
            s.spawn(move || {
                let kind = "burst";
                ctx.sent(kind);
                let body = json!({"prompt": PROMPTS[(seed % PROMPTS.len() as u64) as usize], "max_tokens": 2, "temperature": 0});
                let t0 = Instant::now();
                match request(ctx, "POST", "/v1/completions", &auth_json(), body.to_string().as_bytes(), Duration::from_secs(300)) {
                    Ok(r) if busy(ctx, kind, &r) => {}
                    Ok(r) if r.status == 200 => {
                        let (rec, state) =
                            (r.header("x-worker-orcd-recording").map(str::to_string), r.header("x-worker-orcd-recording-state").map(str::to_string));
                        let d: Value = serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or(Value::Null);
                        if d["choices"][0]["text"].is_string() {
                            let state = state.unwrap_or_else(|| "none".into());
                            ctx.state(&state);
                            if let Some(p) = rec {
                                ctx.named(&p, &state);
                            }
                            ctx.served(kind, t0.elapsed().as_secs_f64() * 1000.0);
                        } else {
                            ctx.failed(kind, format!("answer {d}"));
                        }
                    }
                    Ok(r) => ctx.failed(kind, format!("status {}", r.status)),
                    Err(e) => ctx.failed(kind, format!("transport: {e}")),
                }
            });
        }
    });
}

fn get_json(ctx: &Ctx, path: &str) -> Result<Value> {
    let r = request(ctx, "GET", path, &[("Authorization", format!("Bearer {TOKEN}"))], b"", Duration::from_secs(30))?;
    let st = r.status;
    let t = r.text()?;
    if st != 200 {
        bail!("GET {path}: status {st}: {t}");
    }
    Ok(serde_json::from_str(&t)?)
}

fn health(ctx: &Ctx) {
    let kind = "health";
    ctx.sent(kind);
    let t0 = Instant::now();
    match get_json(ctx, "/health") {
        Ok(h) if h["status"].is_string() => ctx.served(kind, t0.elapsed().as_secs_f64() * 1000.0),
        Ok(h) => ctx.failed(kind, format!("health {h}")),
        Err(e) => ctx.failed(kind, format!("{e:#}")),
    }
    ctx.sent(kind);
    match request(ctx, "GET", "/metrics", &[("Authorization", format!("Bearer {TOKEN}"))], b"", Duration::from_secs(30)) {
        Ok(r) if r.status == 200 => ctx.served(kind, 0.0),
        Ok(r) => ctx.failed(kind, format!("/metrics status {}", r.status)),
        Err(e) => ctx.failed(kind, format!("/metrics: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory, the record disk, verification

#[derive(Clone, Copy, serde::Serialize)]
struct Sample {
    t_s: f64,
    rss_kb: u64,
    anon_kb: u64,
}

fn proc_status(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    Some((field("VmRSS:")?, field("RssAnon:").unwrap_or(0)))
}

/// The record directory: a tmpfs of `mb` where mounting works (root in a container), else a
/// plain directory (then the disk never fills, and the summary says so).
fn mount_record_dir(dir: &Path, mb: u64) -> String {
    let ok =
        Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"]).arg(dir).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        format!("tmpfs of {mb} MiB")
    } else {
        "plain directory (mount -t tmpfs failed: the disk never fills)".into()
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// Moves `from` to `to` (across file systems: copy, then remove).
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)?;
    std::fs::remove_file(from)
}

/// One sweep of the janitor: finished recordings (`.wrec`) and cut ones no longer written
/// (`.wrec.partial` untouched for `idle`) move from the record disk into a new batch
/// directory, freeing the disk. Returns the batch and how many files it holds.
fn sweep(rec: &Path, archive: &Path, batch: usize, idle: Duration) -> std::io::Result<(PathBuf, usize)> {
    let dir = archive.join(format!("batch-{batch:05}"));
    std::fs::create_dir_all(&dir)?;
    let mut n = 0;
    for e in std::fs::read_dir(rec)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a >= idle);
        if name.ends_with(".wrec") || (name.ends_with(".wrec.partial") && old) {
            move_file(&e.path(), &dir.join(&name))?;
            n += 1;
        }
    }
    Ok((dir, n))
}

#[derive(Default, serde::Serialize)]
struct Verified {
    batches: u64,
    files: u64,
    pass: u64,
    incomplete: u64,
    fail: u64,
    /// `.wrec` files that replayed INCOMPLETE (a finished name must hold a whole recording).
    whole_but_incomplete: u64,
    /// `.partial` files that replayed PASS as if whole.
    partial_but_pass: u64,
    replay_seconds: f64,
    positions_replayed: u64,
    problems: Vec<String>,
    /// File name → verdict, for the named-recording check.
    #[serde(skip)]
    seen: HashMap<String, &'static str>,
}

/// Replays one batch with `worker-orcd replay --report`, and judges each case by its name:
/// `.wrec` must PASS, `.wrec.partial` must be INCOMPLETE. Verified files are deleted unless
/// `keep`; failing ones are always kept.
fn verify_batch(bin: &Path, model: Option<&Path>, dir: &Path, reports: &Path, keep: bool, v: &mut Verified) -> Result<()> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    if files.is_empty() {
        let _ = std::fs::remove_dir(dir);
        return Ok(());
    }
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let report_dir = reports.join(&name);
    std::fs::create_dir_all(&report_dir)?;
    let report = report_dir.join("replay.json");
    let mut cmd = Command::new(bin);
    cmd.arg("replay").arg(dir).args(["--backend", "cpu", "--threads", "1", "--report"]).arg(&report);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    let out = cmd.output().with_context(|| format!("running {} replay", bin.display()))?;
    std::fs::write(report_dir.join("replay.log"), [&out.stdout[..], &out.stderr[..]].concat())?;
    let doc: Value = match std::fs::read(&report).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(d) => d,
        None => {
            v.fail += files.len() as u64;
            v.problems.push(format!("{name}: replay wrote no report (exit {:?}); see {}", out.status.code(), report_dir.join("replay.log").display()));
            return Ok(());
        }
    };
    v.batches += 1;
    v.replay_seconds += doc["seconds"].as_f64().unwrap_or(0.0);
    v.positions_replayed += doc["tokens_replayed"].as_u64().unwrap_or(0);
    let mut bad = false;
    for c in doc["cases"].as_array().into_iter().flatten() {
        let src = c["source"].as_str().unwrap_or("");
        let file = Path::new(src).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let passed = c["passed"].as_bool().unwrap_or(false);
        let incomplete = !c["incomplete"].is_null();
        v.files += 1;
        let verdict = match (passed, incomplete) {
            (true, false) => "PASS",
            (true, true) => "INCOMPLETE",
            _ => "FAIL",
        };
        match verdict {
            "PASS" => v.pass += 1,
            "INCOMPLETE" => v.incomplete += 1,
            _ => v.fail += 1,
        }
        let partial = file.ends_with(".partial");
        let wrong = match verdict {
            "FAIL" => true,
            "INCOMPLETE" if !partial => {
                v.whole_but_incomplete += 1;
                true
            }
            "PASS" if partial => {
                v.partial_but_pass += 1;
                true
            }
            _ => false,
        };
        if wrong {
            bad = true;
            let checks: Vec<String> =
                c["checks"].as_array().into_iter().flatten().filter(|k| k["passed"] == false).map(|k| format!("{}: {}", k["name"], k["detail"])).collect();
            v.problems.push(format!("{name}/{file}: {verdict} {}; first divergence {}", checks.join("; "), c["first_divergence"]));
        }
        v.seen.insert(file, verdict);
    }
    if !keep && !bad {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(&report_dir);
    } else if !keep {
        // Keep only what failed, with its report.
        for f in &files {
            let n = f.file_name().unwrap().to_string_lossy().into_owned();
            if v.problems.iter().all(|p| !p.contains(&n)) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    Ok(())
}

fn mean(xs: &[u64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<u64>() as f64 / xs.len() as f64
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_healthy(ctx: &Ctx, server: &mut Child, limit: Duration) -> Result<Value> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = server.try_wait()? {
            bail!("the server exited at start-up ({st})");
        }
        if let Ok(h) = get_json(ctx, "/health") {
            return Ok(h);
        }
        if t0.elapsed() > limit {
            bail!("the server did not answer /health within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------

pub fn soak(args: &[String]) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has a parent directory")?.to_path_buf();
    let o = parse_opts(args, &root)?;
    if !o.bin.exists() {
        bail!("{} not found: build it first (cargo build --release)", o.bin.display());
    }
    let rec = o.out.join("rec");
    let archive = o.out.join("archive");
    let reports = o.out.join("replay");
    for d in [&rec, &archive, &reports] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let disk_mode = mount_record_dir(&rec, o.disk_mb);
    let mounted = disk_mode.starts_with("tmpfs");
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let log = std::fs::File::create(o.out.join("server.log"))?;
    let mut cmd = Command::new(&o.bin);
    cmd.arg("serve").arg("--addr").arg(addr.to_string()).args(["--backend", "cpu", "--trace", "full", "--api-token", TOKEN]).arg("--record-dir").arg(&rec);
    cmd.args(["--queue", &QUEUE.to_string(), "--threads", &o.threads.to_string(), "--ctx", "2048"]);
    cmd.args(["--header-timeout-s", &HEADER_TIMEOUT_S.to_string(), "--body-timeout-s", &BODY_TIMEOUT_S.to_string()]);
    if let Some(m) = &o.model {
        cmd.arg("--model").arg(m);
    }
    let server_cmd = format!("{cmd:?}");
    let mut server = cmd.stdout(log.try_clone()?).stderr(log).spawn().with_context(|| format!("starting {}", o.bin.display()))?;
    let pid = server.id();
    eprintln!(
        "soak: server pid {pid} on {addr}, record dir {} ({disk_mode}), for {:?} with {} clients; out {}",
        rec.display(),
        o.duration,
        o.clients,
        o.out.display()
    );

    let t0 = Instant::now();
    let ctx = Arc::new(Ctx { addr, host: addr.to_string(), stats: Mutex::new(Stats::default()), deadline: t0 + o.duration, t0, seq: AtomicU64::new(0) });
    let start_health = match wait_healthy(&ctx, &mut server, Duration::from_secs(180)) {
        Ok(h) => h,
        Err(e) => {
            let _ = server.kill();
            if mounted {
                let _ = Command::new("umount").arg(&rec).status();
            }
            return Err(e);
        }
    };
    let startup_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let ctx = Arc::new(Ctx { addr, host: addr.to_string(), stats: Mutex::new(Stats::default()), deadline: t0 + o.duration, t0, seq: AtomicU64::new(0) });

    let stop = Arc::new(AtomicBool::new(false));
    let crashed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let server = Arc::new(Mutex::new(server));

    // Memory and liveness, every two seconds; /health every thirty.
    let sampler = {
        let (stop, crashed, server, ctx) = (Arc::clone(&stop), Arc::clone(&crashed), Arc::clone(&server), Arc::clone(&ctx));
        let rec = rec.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut healths = Vec::new();
            let mut disk_max = 0u64;
            let mut last_health = Instant::now() - Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(st)) = server.lock().unwrap().try_wait() {
                    *crashed.lock().unwrap() = Some(format!("the server exited during the run: {st}"));
                    break;
                }
                if let Some((rss, anon)) = proc_status(pid) {
                    samples.push(Sample { t_s: ctx.t0.elapsed().as_secs_f64(), rss_kb: rss, anon_kb: anon });
                }
                disk_max = disk_max.max(dir_bytes(&rec));
                if last_health.elapsed() >= Duration::from_secs(30) {
                    last_health = Instant::now();
                    if let Ok(h) = get_json(&ctx, "/health") {
                        healths.push(json!({"t_s": ctx.t0.elapsed().as_secs_f64().round(), "recorder_state": h["recorder_state"], "recorder_errors": h["recorder_errors"], "requests_served": h["requests_served"], "queue": h["queue_depth"], "recorder": h["recorder"]}));
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            (samples, healths, disk_max)
        })
    };

    // The janitor frees the record disk every sweep; the verifier replays what it moved.
    let (batch_tx, batch_rx) = std::sync::mpsc::channel::<PathBuf>();
    let janitor = {
        let (stop, rec, archive) = (Arc::clone(&stop), rec.clone(), archive.clone());
        let sweep_every = o.sweep;
        std::thread::spawn(move || {
            let (mut batch, mut moved, mut sweeps) = (0usize, 0u64, 0u64);
            let mut next = Instant::now() + sweep_every;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + sweep_every;
                match sweep(&rec, &archive, batch, Duration::from_secs(15)) {
                    Ok((dir, n)) => {
                        sweeps += 1;
                        moved += n as u64;
                        batch += 1;
                        let _ = batch_tx.send(dir);
                    }
                    Err(e) => eprintln!("soak: sweep failed: {e}"),
                }
            }
            (batch, moved, sweeps, batch_tx)
        })
    };
    let verifier = {
        let (bin, model, reports, keep) = (o.bin.clone(), o.model.clone(), reports.clone(), o.keep);
        std::thread::spawn(move || {
            let mut v = Verified::default();
            while let Ok(dir) = batch_rx.recv() {
                if let Err(e) = verify_batch(&bin, model.as_deref(), &dir, &reports, keep, &mut v) {
                    v.problems.push(format!("{}: {e:#}", dir.display()));
                    v.fail += 1;
                }
            }
            v
        })
    };

    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            let ctx = Arc::clone(&ctx);
            let seed = o.seed.wrapping_mul(1000).wrapping_add(i as u64);
            std::thread::spawn(move || client_loop(ctx, seed))
        })
        .collect();
    let mut last_report = Instant::now();
    while clients.iter().any(|c| !c.is_finished()) {
        std::thread::sleep(Duration::from_secs(1));
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            let (served, failed) = ctx.with(|s| (s.kinds.values().map(|k| k.served).sum::<u64>(), s.failure_count));
            let rss = proc_status(pid).map(|r| r.0 / 1024).unwrap_or(0);
            eprintln!("soak: {:.0}s: {served} served, {failed} failed, RSS {rss} MiB", t0.elapsed().as_secs_f64());
        }
        if crashed.lock().unwrap().is_some() {
            break;
        }
    }
    for c in clients {
        let _ = c.join();
    }
    let run_s = t0.elapsed().as_secs_f64();

    // The end: final health and metrics, then SIGTERM, which must end the server cleanly.
    let end_health = get_json(&ctx, "/health").unwrap_or(Value::Null);
    let metrics = request(&ctx, "GET", "/metrics", &[("Authorization", format!("Bearer {TOKEN}"))], b"", Duration::from_secs(30))
        .and_then(|r| r.text())
        .unwrap_or_default();
    let end_rss = proc_status(pid);
    stop.store(true, Ordering::Relaxed);
    let (samples, healths, disk_max) = sampler.join().expect("sampler");
    let crash = crashed.lock().unwrap().clone();
    let t_term = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let exit = loop {
        if let Ok(Some(st)) = server.lock().unwrap().try_wait() {
            break Some(st);
        }
        if t_term.elapsed() > Duration::from_secs(60) {
            let _ = server.lock().unwrap().kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let shutdown_s = t_term.elapsed().as_secs_f64();
    let (batches, moved, sweeps, batch_tx) = janitor.join().expect("janitor");
    // What is left on the record disk after shutdown is the last batch.
    match sweep(&rec, &archive, batches, Duration::ZERO) {
        Ok((dir, n)) => {
            let _ = batch_tx.send(dir);
            eprintln!("soak: {n} recordings left at shutdown; verifying the last batches");
        }
        Err(e) => eprintln!("soak: last sweep failed: {e}"),
    }
    drop(batch_tx);
    let verified = verifier.join().expect("verifier");
    if mounted {
        let _ = Command::new("umount").arg(&rec).status();
    }

    // Judge.
    let stats = ctx.stats.lock().unwrap();
    let mut reasons: Vec<String> = Vec::new();
    if let Some(c) = &crash {
        reasons.push(c.clone());
    }
    match exit {
        Some(st) if st.success() => {}
        Some(st) => reasons.push(format!("the server did not exit cleanly on SIGTERM: {st}")),
        None => reasons.push("the server did not exit within 60 s of SIGTERM (killed)".into()),
    }
    if stats.failure_count > 0 {
        reasons.push(format!("{} requests lost (see failures)", stats.failure_count));
    }
    if verified.fail + verified.whole_but_incomplete + verified.partial_but_pass > 0 {
        reasons.push(format!(
            "recordings failed verification: {} FAIL, {} finished recordings INCOMPLETE, {} partial files PASS",
            verified.fail, verified.whole_but_incomplete, verified.partial_but_pass
        ));
    }
    // Every recording an answer named exists, as what it was said to be.
    let mut missing = Vec::new();
    for (file, named) in &stats.named {
        let got = verified.seen.get(file).copied();
        let partial = verified.seen.get(&format!("{file}.partial")).copied();
        let ok = match named {
            Named::Written => got == Some("PASS"),
            Named::Incomplete => got == Some("INCOMPLETE"),
            // A stream's header names the plan: a cut one is `.partial`; a lost one (the
            // disk was full before its first frame) is gone, which its headers could not say.
            Named::Planned => got == Some("PASS") || partial == Some("INCOMPLETE") || (got.is_none() && partial.is_none()),
        };
        if !ok {
            missing.push(format!("{file} (named {named:?}): found {got:?}, partial {partial:?}"));
        }
    }
    let planned_absent = stats
        .named
        .iter()
        .filter(|(f, n)| **n == Named::Planned && !verified.seen.contains_key(*f) && !verified.seen.contains_key(&format!("{f}.partial")))
        .count();
    if !missing.is_empty() {
        reasons.push(format!("{} named recordings missing or not as named", missing.len()));
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kb).collect();
    let anon: Vec<u64> = samples.iter().map(|s| s.anon_kb).collect();
    // Flatness: the mean of the first tenth after a warm-up (the model's pages faulted in, the
    // recorder's pools and the allocator's arenas grown: 60 s, or a tenth of a short run)
    // against the mean of the last tenth.
    let warm_s = (run_s / 10.0).min(60.0);
    let skip = samples.iter().take_while(|s| s.t_s < warm_s).count().min(samples.len().saturating_sub(2));
    let tenth = ((samples.len() - skip) / 10).max(1);
    let window = |xs: &[u64], first: bool| {
        if xs.len() < 2 {
            mean(xs)
        } else if first {
            mean(&xs[skip..(skip + tenth).min(xs.len())])
        } else {
            mean(&xs[xs.len() - tenth.min(xs.len())..])
        }
    };
    let growth_mb = (window(&rss, false) - window(&rss, true)) / 1024.0;
    let anon_growth_mb = (window(&anon, false) - window(&anon, true)) / 1024.0;
    if growth_mb > o.max_rss_growth_mb {
        reasons.push(format!("RSS grew {growth_mb:.1} MiB between the first and last tenth of the run (limit {} MiB)", o.max_rss_growth_mb));
    }
    let mut totals = KindStats::default();
    for k in stats.kinds.values() {
        totals.sent += k.sent;
        totals.served += k.served;
        totals.failed += k.failed;
        for (l, n) in &k.refused {
            let status = l.split(' ').next().unwrap_or(l).to_string();
            *totals.refused.entry(status).or_default() += n;
        }
        for (l, n) in &k.cut {
            let how = l.split(':').next().unwrap_or(l).to_string();
            *totals.cut.entry(how).or_default() += n;
        }
    }
    let mut lat = stats.latency_ms.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    let metric = |name: &str| metrics.lines().filter(|l| l.starts_with(name)).map(|l| l.to_string()).collect::<Vec<_>>();
    let ok = reasons.is_empty();
    let summary = json!({
        "ok": ok,
        "reasons": reasons,
        "duration_s": run_s.round(),
        "startup_s": startup_s,
        "clients": o.clients,
        "server": {"command": server_cmd, "pid": pid, "exit": exit.map(|s| s.to_string()), "shutdown_s": shutdown_s, "crash": crash, "start_health": start_health},
        "record_disk": {"mode": disk_mode, "max_bytes_seen": disk_max, "sweep_s": o.sweep.as_secs(), "sweeps": sweeps, "files_moved": moved},
        "totals": totals,
        "kinds": stats.kinds,
        "latency_ms_served": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0.0)},
        "recording_states": stats.recording_states,
        "named_recordings": stats.named.len(),
        "named_planned_absent": planned_absent,
        "named_missing": missing,
        "verified": verified,
        "memory": {
            "samples": samples.len(),
            "rss_kb": {"start": rss.first(), "max": rss.iter().max(), "end": end_rss.map(|r| r.0), "warm_up_s": warm_s, "first_tenth_mean": window(&rss, true).round(), "last_tenth_mean": window(&rss, false).round(), "growth_mb": (growth_mb * 10.0).round() / 10.0},
            "rss_anon_kb": {"start": anon.first(), "max": anon.iter().max(), "end": end_rss.map(|r| r.1), "growth_mb": (anon_growth_mb * 10.0).round() / 10.0},
            "limit_growth_mb": o.max_rss_growth_mb,
        },
        "end_health": end_health,
        "health_over_time": healths,
        "metrics": {"requests": metric("worker_orcd_requests_total"), "recorder": metric("worker_orcd_recorder"), "recordings": metric("worker_orcd_recordings_total")},
        "failures": stats.failures,
    });
    std::fs::write(o.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    let mut csv = String::from("t_s,rss_kb,rss_anon_kb\n");
    for s in &samples {
        csv.push_str(&format!("{:.1},{},{}\n", s.t_s, s.rss_kb, s.anon_kb));
    }
    std::fs::write(o.out.join("rss.csv"), csv)?;
    let text = human(&summary);
    std::fs::write(o.out.join("summary.txt"), &text)?;
    println!("{text}");
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// The summary in a few lines.
fn human(s: &Value) -> String {
    let mut t = String::new();
    let kb = |v: &Value| v.as_f64().map(|k| format!("{:.1} MiB", k / 1024.0)).unwrap_or_else(|| "-".into());
    t.push_str(&format!(
        "soak: {} in {} s with {} clients ({})\n",
        if s["ok"] == true { "OK" } else { "FAILED" },
        s["duration_s"],
        s["clients"],
        s["record_disk"]["mode"].as_str().unwrap_or("")
    ));
    let tot = &s["totals"];
    t.push_str(&format!(
        "requests: {} sent, {} served, refused {}, cut on purpose {}, failed {}\n",
        tot["sent"], tot["served"], tot["refused"], tot["cut"], tot["failed"]
    ));
    for (k, v) in s["kinds"].as_object().into_iter().flatten() {
        t.push_str(&format!("  {k:<12} sent {:>6} served {:>6} failed {:>3} refused {} cut {}\n", v["sent"], v["served"], v["failed"], v["refused"], v["cut"]));
    }
    let l = &s["latency_ms_served"];
    t.push_str(&format!(
        "latency of served requests (ms): p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0}\n",
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0)
    ));
    let m = &s["memory"];
    t.push_str(&format!(
        "RSS: start {}, max {}, end {}; first tenth after warm-up {}, last tenth {}, growth {} MiB (anon growth {} MiB, limit {} MiB)\n",
        kb(&m["rss_kb"]["start"]),
        kb(&m["rss_kb"]["max"]),
        kb(&m["rss_kb"]["end"]),
        kb(&m["rss_kb"]["first_tenth_mean"]),
        kb(&m["rss_kb"]["last_tenth_mean"]),
        m["rss_kb"]["growth_mb"],
        m["rss_anon_kb"]["growth_mb"],
        m["limit_growth_mb"]
    ));
    let v = &s["verified"];
    t.push_str(&format!(
        "recordings: {} replayed ({} PASS, {} INCOMPLETE, {} FAIL) in {:.0} s; answers' states {}; {} named, {} missing\n",
        v["files"],
        v["pass"],
        v["incomplete"],
        v["fail"],
        v["replay_seconds"].as_f64().unwrap_or(0.0),
        s["recording_states"],
        s["named_recordings"],
        s["named_missing"].as_array().map_or(0, |a| a.len())
    ));
    let h = &s["end_health"];
    t.push_str(&format!(
        "recorder at the end: written {}, cut {}, errors {}, state {}; disk max {} bytes, {} sweeps\n",
        h["recorder"]["recordings_written"],
        h["recorder"]["recordings_cut"],
        h["recorder_errors"],
        h["recorder_state"],
        s["record_disk"]["max_bytes_seen"],
        s["record_disk"]["sweeps"]
    ));
    t.push_str(&format!("server: exit {} after SIGTERM in {:.1} s\n", s["server"]["exit"], s["server"]["shutdown_s"].as_f64().unwrap_or(0.0)));
    for r in s["reasons"].as_array().into_iter().flatten() {
        t.push_str(&format!("FAILED: {}\n", r.as_str().unwrap_or("")));
    }
    for f in s["failures"].as_array().into_iter().flatten().take(20) {
        t.push_str(&format!("  {}\n", f.as_str().unwrap_or("")));
    }
    t
}
