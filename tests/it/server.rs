//! `worker-orcd serve` end to end over real HTTP (reqwest, loopback) on the real model: SSE
//! order and content, reproducibility, recordings, the OpenAI shapes, one-at-a-time serving,
//! cancellation, queue limits, auth, invalid input and recorder failures.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use worker_orcd::server::{self, BackendChoice, Gate, RunningServer, ServerConfig};
use worker_orcd::tokenizer::Tokenizer;
use worker_orcd::trace::{Recording, TraceLevel};

pub(crate) fn model_path() -> PathBuf {
    worker_orcd::fetch::default_model_path().expect("default model (cargo xtask fetch-model)")
}

pub(crate) fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = worker_orcd::gguf::GgufFile::open(&model_path()).expect("model opens");
        Arc::new(Tokenizer::from_gguf(&file).expect("tokenizer loads"))
    })
    .clone()
}

pub(crate) fn config() -> ServerConfig {
    ServerConfig { model_path: Some(model_path()), addr: "127.0.0.1:0".parse().unwrap(), threads: 2, ctx: 1024, ..ServerConfig::default() }
}

pub(crate) fn start(cfg: ServerConfig) -> RunningServer {
    server::spawn(cfg).expect("server starts")
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub(crate) event: String,
    pub(crate) data: String,
}

impl Ev {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// Reads server-sent events from a streaming response.
pub(crate) struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl SseReader {
    pub(crate) fn new(resp: reqwest::Response) -> SseReader {
        assert_eq!(resp.status(), 200, "SSE response status");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        SseReader { resp, buf: Vec::new() }
    }

    pub(crate) async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..i + 2).collect();
                let block = String::from_utf8(block).expect("SSE block is UTF-8");
                let mut ev = Ev { event: "message".into(), data: String::new() };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(ev);
                }
                continue; // a keep-alive comment
            }
            match self.resp.chunk().await {
                Ok(Some(b)) => self.buf.extend_from_slice(&b),
                _ => return None,
            }
        }
    }

    pub(crate) async fn all(mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

pub(crate) async fn post(c: &reqwest::Client, url: String, body: &Value) -> reqwest::Response {
    c.post(url).json(body).send().await.expect("request sent")
}

pub(crate) async fn health(c: &reqwest::Client, s: &RunningServer) -> Value {
    c.get(format!("{}/health", s.url())).send().await.unwrap().json().await.unwrap()
}

/// Polls /health until `pred` holds (10 s at most).
pub(crate) async fn wait_health(c: &reqwest::Client, s: &RunningServer, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let h = health(c, s).await;
        if pred(&h) {
            return h;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn wait_file(p: &Path) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "recording {} never appeared", p.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The checked outcome of an `/execute` stream.
pub(crate) struct Execute {
    pub(crate) started: Value,
    pub(crate) ids: Vec<u32>,
    pub(crate) text: String,
    pub(crate) terminal: Ev,
}

/// Reads an `/execute` stream and checks the old API's contract: `started`, then `token`
/// events with indices 0, 1, ..., then exactly one terminal event, `type` matching the name
/// (or only an `error`, for a job that never started).
pub(crate) async fn read_execute(resp: reqwest::Response) -> Execute {
    let events = SseReader::new(resp).all().await;
    assert!(!events.is_empty(), "no events");
    for e in &events {
        assert_eq!(e.json()["type"], e.event.as_str(), "type field matches the SSE event name: {e:?}");
    }
    let last = events.last().unwrap().clone();
    if events.len() == 1 && last.event == "error" {
        // A job cancelled while it waited never starts: its stream is just the error.
        return Execute { started: Value::Null, ids: Vec::new(), text: String::new(), terminal: last };
    }
    assert_eq!(events[0].event, "started", "{events:?}");
    assert!(last.event == "end" || last.event == "error", "terminal event last: {events:?}");
    let middle = &events[1..events.len() - 1];
    let mut ids = Vec::new();
    let mut text = String::new();
    for (i, e) in middle.iter().enumerate() {
        assert_eq!(e.event, "token", "only tokens between started and the terminal event: {events:?}");
        let d = e.json();
        assert_eq!(d["i"], i, "token indices are consecutive");
        ids.push(d["id"].as_u64().unwrap() as u32);
        text.push_str(d["t"].as_str().unwrap());
    }
    Execute { started: events[0].json(), ids, text, terminal: last }
}

#[tokio::test]
async fn execute_streams_tokens_as_produced_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("rec");
    // Two encoder threads beside the recorder's writer (none by default on a 2-core machine).
    let s = start(ServerConfig { record_dir: Some(rec_dir.clone()), trace: TraceLevel::Summary, trace_encoders: Some(2), ..config() });
    let c = client();
    let body = json!({"job_id": "haiku-1", "prompt": "Write a haiku about the sea.\n", "max_tokens": 16, "temperature": 0.7, "seed": 42, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1});
    let resp = post(&c, format!("{}/execute", s.url()), &body).await;
    assert_eq!(resp.headers()["x-job-id"], "haiku-1");
    let first = read_execute(resp).await;
    assert_eq!(first.terminal.event, "end", "{:?}", first.terminal);
    let end = first.terminal.json();
    assert_eq!(first.started["job_id"], "haiku-1");
    assert_eq!(first.started["seed"], 42);
    assert!(first.started["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(end["tokens_out"], first.ids.len());
    assert!(["MAX_TOKENS", "EOS"].contains(&end["stop_reason"].as_str().unwrap()), "{end}");
    assert!(!first.ids.is_empty());
    assert_eq!(first.text, tokenizer().decode(&first.ids), "streamed text equals the decoded tokens");

    // The same request again gives the same tokens.
    let body2 = json!({"job_id": "haiku-2", "prompt": "Write a haiku about the sea.\n", "max_tokens": 16, "temperature": 0.7, "seed": 42, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1});
    let second = read_execute(post(&c, format!("{}/execute", s.url()), &body2).await).await;
    assert_eq!(second.ids, first.ids, "same request, same tokens");

    // The recording decodes to exactly what was streamed, with the resolved parameters.
    let path = PathBuf::from(end["recording"].as_str().expect("end names the recording"));
    assert!(path.starts_with(&rec_dir));
    wait_file(&path).await;
    let r = Recording::open(&path).unwrap();
    assert!(r.complete, "{:?}", r.problems());
    let h = r.header.as_ref().unwrap();
    assert_eq!(h.job_id, "haiku-1");
    assert_eq!(h.endpoint, "/execute");
    assert_eq!(serde_json::from_str::<Value>(&h.request_json).unwrap(), body, "the request as received");
    assert_eq!(h.resolved.seed, 42);
    assert!(!h.resolved.seed_generated);
    assert_eq!(h.resolved.params.temperature, 0.7);
    assert_eq!(h.resolved.params.top_k, 40);
    assert_eq!(h.resolved.max_tokens, 16);
    assert_eq!(h.fingerprint.model_sha256, worker_orcd::fetch::DEFAULT_MODEL.sha256);
    assert_eq!(h.fingerprint.backend, "cpu");
    assert_eq!(h.trace, TraceLevel::Summary);
    assert_eq!(r.token_ids(), first.ids);
    let pieces: String = r.tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(pieces, first.text);
    assert!(r.tokens.iter().all(|t| t.logprob <= 0.0 && t.top.len() == 5));
    let f = r.footer.as_ref().unwrap();
    assert_eq!(f.stop_reason, end["stop_reason"].as_str().unwrap());
    assert_eq!(f.dropped_trace_frames, 0);
    // Traces: every prompt and generated position, every layer, hashes and summaries.
    let n_prompt = h.resolved.prompt_ids.len() as u32;
    let n_layers = h.dims.n_layers;
    for pos in [0, n_prompt - 1, n_prompt + first.ids.len() as u32 - 2] {
        for l in 0..n_layers {
            let row = r.row(pos, worker_orcd::trace::Site::LOut(l)).unwrap_or_else(|| panic!("row {pos} layer {l}"));
            assert!(row.stats.is_some() && row.projection.map(|p| p.len()) == Some(32));
            assert!(row.values().is_none(), "summary keeps no values");
        }
    }
    assert!(r.row(n_prompt - 1, worker_orcd::trace::Site::Logits).is_some());
    let h = health(&c, &s).await;
    assert_eq!(h["recorder_errors"], 0, "{h}");
    assert_eq!(h["requests_served"], 2);
}

/// A chat-completions SSE stream, parsed and checked against OpenAI's chunk contract.
struct ChatStream {
    text: String,
    token_bytes: Vec<u8>,
    logprobs: Vec<f64>,
    finish_reason: String,
    usage: Value,
    recording: Option<PathBuf>,
}

async fn chat_stream(c: &reqwest::Client, s: &RunningServer, body: &Value) -> ChatStream {
    let resp = post(c, format!("{}/v1/chat/completions", s.url()), body).await;
    let recording = resp.headers().get("x-worker-orcd-recording").map(|v| PathBuf::from(v.to_str().unwrap()));
    let events = SseReader::new(resp).all().await;
    assert_eq!(events.last().unwrap().data, "[DONE]", "stream ends with [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Ev::json).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c.get("id").is_some() && c["created"].is_u64()));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "first chunk carries the role");
    let finishing: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i]["choices"].get(0).is_some_and(|c| !c["finish_reason"].is_null())).collect();
    assert_eq!(finishing.len(), 1, "exactly one chunk has a finish_reason");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0, "usage chunk last, with no choices");
    assert_eq!(finishing[0], chunks.len() - 2, "the finish chunk comes right before the usage chunk");
    let mut text = String::new();
    let mut token_bytes = Vec::new();
    let mut logprobs = Vec::new();
    for ch in &chunks[..chunks.len() - 1] {
        let choice = &ch["choices"][0];
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(entries) = choice["logprobs"]["content"].as_array() {
            for e in entries {
                token_bytes.extend(e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8));
                logprobs.push(e["logprob"].as_f64().unwrap());
                assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
            }
        }
    }
    ChatStream {
        text,
        token_bytes,
        logprobs,
        finish_reason: chunks[finishing[0]]["choices"][0]["finish_reason"].as_str().unwrap().to_string(),
        usage: usage_chunk["usage"].clone(),
        recording,
    }
}

#[tokio::test]
async fn chat_haiku_streams_reproducibly_and_its_recording_decodes_to_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(ServerConfig { record_dir: Some(dir.path().to_path_buf()), trace: TraceLevel::Hashes, ..config() });
    let c = client();
    let minute = 42;
    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": format!("Write a haiku that contains the word {minute}.")}],
        "max_tokens": 48, "temperature": 0.7, "seed": 2026, "stream": true,
        "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 2,
    });
    let a = chat_stream(&c, &s, &body).await;
    assert!(!a.text.is_empty());
    assert_eq!(a.text, String::from_utf8_lossy(&a.token_bytes), "text equals the concatenated tokens");
    assert!(a.finish_reason == "stop" || a.finish_reason == "length");
    assert_eq!(a.usage["completion_tokens"], a.logprobs.len());
    assert_eq!(a.usage["total_tokens"], a.usage["prompt_tokens"].as_u64().unwrap() + a.logprobs.len() as u64);

    let b = chat_stream(&c, &s, &body).await;
    assert_eq!((&b.text, &b.token_bytes, &b.logprobs), (&a.text, &a.token_bytes, &a.logprobs), "same request, same tokens");

    let path = a.recording.expect("recording header");
    wait_file(&path).await;
    let r = Recording::open(&path).unwrap();
    assert!(r.complete, "{:?}", r.problems());
    assert_eq!(tokenizer().decode(&r.token_ids()), a.text, "the recording decodes to the streamed text");
    assert_eq!(r.footer.as_ref().unwrap().text, a.text);
    // JSON carries each f32 in its shortest form, which parses back to the same f32.
    let streamed: Vec<f32> = a.logprobs.iter().map(|&x| x as f32).collect();
    let recorded: Vec<f32> = r.tokens.iter().map(|t| t.logprob).collect();
    assert_eq!(recorded, streamed);
    let h = r.header.as_ref().unwrap();
    assert_eq!(h.endpoint, "/v1/chat/completions");
    assert_eq!(h.resolved.seed, 2026);
    assert!(h.resolved.prompt_text.contains("<|im_start|>user\nWrite a haiku that contains the word 42."));
    assert!(h.resolved.parse_special);
    let req = r.generate_request().unwrap();
    assert_eq!(req.params.temperature, 0.7);
    assert_eq!(req.max_tokens, 48);
    let rows = r.rows();
    assert!(!rows.is_empty() && rows.iter().all(|row| row.stats.is_none()), "hashes level keeps hashes only");
}

#[tokio::test]
async fn openai_non_streaming_shapes_stop_strings_and_models() {
    let s = start(config());
    let c = client();
    let models: Value = c.get(format!("{}/v1/models", s.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    let model_id = models["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(models["data"][0]["object"], "model");

    let body = json!({"model": model_id, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "logprobs": 2});
    let r: Value = post(&c, format!("{}/v1/completions", s.url()), &body).await.json().await.unwrap();
    assert_eq!(r["object"], "text_completion", "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = &r["choices"][0];
    assert_eq!(choice["index"], 0);
    let text = choice["text"].as_str().unwrap().to_string();
    assert_eq!(choice["logprobs"]["tokens"].as_array().unwrap().len(), r["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    assert_eq!(choice["logprobs"]["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<String>(), text);
    assert_eq!(choice["logprobs"]["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let u = &r["usage"];
    assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());

    // A stop string taken from the greedy text: the answer ends right before it.
    let cut = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap();
    let stop: String = text[cut..].chars().take(2).collect();
    let expect = &text[..text.find(&stop).unwrap()];
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "stop": [stop]});
    let r: Value = post(&c, format!("{}/v1/completions", s.url()), &body).await.json().await.unwrap();
    assert_eq!(r["choices"][0]["text"], expect, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    // Streamed completions: the same text, chunk by chunk, then [DONE].
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "stream": true});
    let events = SseReader::new(post(&c, format!("{}/v1/completions", s.url()), &body).await).all().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let streamed: String = events[..events.len() - 1].iter().map(|e| e.json()["choices"][0]["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(streamed, text);

    let body = json!({"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What color is the sky?"}], "max_completion_tokens": 6, "temperature": 0});
    let r: Value = post(&c, format!("{}/v1/chat/completions", s.url()), &body).await.json().await.unwrap();
    assert_eq!(r["object"], "chat.completion", "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(r["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert!(r["choices"][0]["message"]["content"].is_string());
    assert!(r["choices"][0]["logprobs"].is_null());
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
}

#[tokio::test]
async fn twenty_concurrent_clients_are_all_served_one_at_a_time() {
    let s = start(ServerConfig { queue: 32, ..config() });
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, url) = (c.clone(), s.url());
        tasks.push(tokio::spawn(async move {
            let body = json!({"job_id": format!("client-{i}"), "prompt": format!("Client {i} says"), "max_tokens": 4, "temperature": 0.5, "seed": i});
            read_execute(post(&c, format!("{url}/execute"), &body).await).await
        }));
    }
    let mut spans = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.terminal.event, "end", "{:?}", r.terminal);
        let end = r.terminal.json();
        spans.push((r.started["started_at"].as_str().unwrap().to_string(), end["ended_at"].as_str().unwrap().to_string()));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "jobs overlapped: {w:?}");
    }
    let h = health(&c, &s).await;
    assert_eq!(h["requests_served"], 20, "{h}");
    assert_eq!(h["queue_depth"], 0);
}

/// A prompt the model keeps answering for a long time (greedy counting).
pub(crate) fn long_job(id: &str) -> Value {
    json!({"job_id": id, "prompt": "Count from 1 to 1000: 1, 2, 3, 4, 5, 6,", "max_tokens": 900, "temperature": 0})
}

#[tokio::test]
async fn cancel_endpoint_and_client_disconnect_cancel_jobs() {
    let gate = Gate::closed();
    let s = start(ServerConfig { gate: Some(Arc::clone(&gate)), ..config() });
    let c = client();

    // Cancelled while queued: the job ends with CANCELLED and never runs.
    let running = post(&c, format!("{}/execute", s.url()), &json!({"job_id": "first", "prompt": "Hi", "max_tokens": 2})).await;
    wait_health(&c, &s, "first job running", |h| h["current_job"] == "first").await;
    let queued = post(&c, format!("{}/execute", s.url()), &json!({"job_id": "queued", "prompt": "Hi", "max_tokens": 2})).await;
    let r = c.post(format!("{}/cancel/queued", s.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.post(format!("{}/cancel/nope", s.url())).send().await.unwrap().status(), 404);
    gate.open();
    assert_eq!(read_execute(running).await.terminal.event, "end");
    let q = read_execute(queued).await;
    assert_eq!(q.terminal.json()["code"], "CANCELLED", "{:?}", q.terminal);

    // Cancelled while running: an error event with code CANCELLED ends the stream.
    let resp = post(&c, format!("{}/execute", s.url()), &long_job("long-1")).await;
    let mut sse = SseReader::new(resp);
    assert_eq!(sse.next().await.unwrap().event, "started");
    for _ in 0..3 {
        assert_eq!(sse.next().await.unwrap().event, "token");
    }
    assert_eq!(c.post(format!("{}/cancel/long-1", s.url())).send().await.unwrap().status(), 200);
    let mut rest = Vec::new();
    while let Some(e) = sse.next().await {
        rest.push(e);
    }
    let last = rest.last().unwrap();
    assert_eq!(last.event, "error", "{rest:?}");
    assert_eq!(last.json()["code"], "CANCELLED");
    assert!(rest.len() < 100, "cancelled promptly: {} more events", rest.len());

    // A client that goes away cancels its job.
    let before = health(&c, &s).await["tokens_served"].as_u64().unwrap();
    let resp = post(&c, format!("{}/execute", s.url()), &long_job("long-2")).await;
    let mut sse = SseReader::new(resp);
    assert_eq!(sse.next().await.unwrap().event, "started");
    assert_eq!(sse.next().await.unwrap().event, "token");
    drop(sse);
    let t0 = Instant::now();
    let h = wait_health(&c, &s, "the abandoned job to stop", |h| h["busy"] == false).await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    let generated = h["tokens_served"].as_u64().unwrap() - before;
    assert!(generated < 300, "the abandoned job stopped early ({generated} tokens)");
    let metrics = c.get(format!("{}/metrics", s.url())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("worker_orcd_requests_total{outcome=\"cancelled\"} 3"), "{metrics}");
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let gate = Gate::closed();
    let s = start(ServerConfig { gate: Some(Arc::clone(&gate)), queue: 1, ..config() });
    let c = client();
    let job = |id: &str| json!({"job_id": id, "prompt": "Hello", "max_tokens": 2, "temperature": 0});
    let a = post(&c, format!("{}/execute", s.url()), &job("a")).await;
    wait_health(&c, &s, "job a running", |h| h["current_job"] == "a").await;
    let b = post(&c, format!("{}/execute", s.url()), &job("b")).await;
    assert_eq!(b.status(), 200);
    assert_eq!(health(&c, &s).await["queue_depth"], 1);
    let full = post(&c, format!("{}/execute", s.url()), &job("c")).await;
    assert_eq!(full.status(), 503);
    let retry: u64 = full.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let e: Value = full.json().await.unwrap();
    assert_eq!(e["error"]["code"], "QUEUE_FULL");
    // OpenAI endpoints share the queue.
    let full = post(&c, format!("{}/v1/completions", s.url()), &json!({"prompt": "Hi", "max_tokens": 1})).await;
    assert_eq!(full.status(), 503);
    gate.open();
    assert_eq!(read_execute(a).await.terminal.event, "end");
    assert_eq!(read_execute(b).await.terminal.event, "end");
    let metrics = c.get(format!("{}/metrics", s.url())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("worker_orcd_requests_total{outcome=\"queue_full\"} 2"), "{metrics}");
}

#[tokio::test]
async fn every_route_but_health_needs_the_bearer_token() {
    let s = start(ServerConfig { api_token: Some("s3cret".into()), ..config() });
    let c = client();
    let url = s.url();
    assert_eq!(c.get(format!("{url}/health")).send().await.unwrap().status(), 200);
    let body = json!({"job_id": "x", "prompt": "Hi", "max_tokens": 1});
    let attempts: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::GET, format!("{url}/metrics")),
        (reqwest::Method::GET, format!("{url}/v1/models")),
        (reqwest::Method::POST, format!("{url}/execute")),
        (reqwest::Method::POST, format!("{url}/cancel/x")),
        (reqwest::Method::POST, format!("{url}/v1/completions")),
        (reqwest::Method::POST, format!("{url}/v1/chat/completions")),
    ];
    for (m, u) in &attempts {
        for auth in [None, Some("Bearer wrong"), Some("s3cret"), Some("Basic s3cret")] {
            let mut rb = c.request(m.clone(), u).json(&body);
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 401, "{m} {u} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    let ok = c.get(format!("{url}/v1/models")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let r = c.post(format!("{url}/execute")).bearer_auth("s3cret").json(&body).send().await.unwrap();
    assert_eq!(read_execute(r).await.terminal.event, "end");
}

#[tokio::test]
async fn invalid_requests_are_400_naming_the_field_and_the_worker_stays_up() {
    let gate = Gate::closed();
    let s = start(ServerConfig { gate: Some(Arc::clone(&gate)), ..config() });
    let c = client();
    let url = s.url();
    let ok = json!({"job_id": "j", "prompt": "Hi", "max_tokens": 4});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let long_stop = "word ".repeat(40);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/execute", json!({"prompt": "Hi", "max_tokens": 4}), "job_id"),
        ("/execute", with("job_id", json!("has space")), "job_id"),
        ("/execute", with("job_id", json!(7)), "job_id"),
        ("/execute", with("prompt", json!("")), "prompt"),
        ("/execute", with("prompt", json!("x".repeat(32_769))), "prompt"),
        ("/execute", with("prompt", json!(["a"])), "prompt"),
        ("/execute", with("max_tokens", json!(0)), "max_tokens"),
        ("/execute", with("max_tokens", json!(2049)), "max_tokens"),
        ("/execute", with("max_tokens", json!(1e300)), "max_tokens"),
        ("/execute", with("max_tokens", json!(18446744073709551615u64)), "max_tokens"),
        ("/execute", with("max_tokens", json!(-5)), "max_tokens"),
        ("/execute", with("max_tokens", json!(2.5)), "max_tokens"),
        ("/execute", with("max_tokens", json!(null)), "max_tokens"),
        ("/execute", with("temperature", json!(-0.1)), "temperature"),
        ("/execute", with("temperature", json!(2.01)), "temperature"),
        ("/execute", with("temperature", json!("hot")), "temperature"),
        ("/execute", with("seed", json!(-1)), "seed"),
        ("/execute", with("seed", json!("42")), "seed"),
        ("/execute", with("top_p", json!(0)), "top_p"),
        ("/execute", with("top_p", json!(1.5)), "top_p"),
        ("/execute", with("top_k", json!(-1)), "top_k"),
        ("/execute", with("min_p", json!(1.5)), "min_p"),
        ("/execute", with("repetition_penalty", json!(0)), "repetition_penalty"),
        ("/execute", with("repetition_penalty", json!(11)), "repetition_penalty"),
        ("/execute", with("stop", json!(["a", "b", "c", "d", "e"])), "stop"),
        ("/execute", with("stop", json!("a")), "stop"),
        ("/execute", with("stop", json!([""])), "stop[0]"),
        ("/execute", with("stop", json!([long_stop])), "stop[0]"),
        ("/execute", with("surprise", json!(true)), "surprise"),
        ("/execute", json!([1, 2, 3]), "body"),
        ("/execute", json!("just a string"), "body"),
        ("/v1/completions", json!({"max_tokens": 4}), "prompt"),
        ("/v1/completions", json!({"prompt": "Hi", "n": 2}), "n"),
        ("/v1/completions", json!({"prompt": "Hi", "logprobs": 6}), "logprobs"),
        ("/v1/completions", json!({"prompt": "Hi", "echo": true}), "echo"),
        ("/v1/completions", json!({"prompt": "Hi", "max_tokens": 5000}), "max_tokens"),
        ("/v1/completions", json!({"prompt": [999999999]}), "prompt[0]"),
        ("/v1/completions", json!({"prompt": "Hi", "stream_options": {"include_usage": true}}), "stream_options"),
        ("/v1/completions", json!({"prompt": "Hi", "presence_penalty": 0.5}), "presence_penalty"),
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        ("/v1/chat/completions", json!({"messages": "hi"}), "messages"),
        ("/v1/chat/completions", json!({"messages": [{"role": "robot", "content": "hi"}]}), "messages[0].role"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user"}]}), "messages[0].content"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "messages[0].content[0].type"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}), "top_logprobs"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}), "tools"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}), "temperature"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "hi"}], "bogus": 1}), "bogus"),
    ];
    for (path, body, field) in &cases {
        let r = post(&c, format!("{url}{path}"), body).await;
        assert_eq!(r.status(), 400, "{path} {body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["field"], *field, "{path} {body} -> {e}");
        assert_eq!(e["error"]["param"], *field);
        assert_eq!(e["error"]["code"], "INVALID_REQUEST");
        assert!(e["error"]["message"].as_str().unwrap().starts_with(field), "{e}");
    }
    // Not JSON, deeply nested, not UTF-8, too large.
    for raw in [b"{\"job_id\": ".to_vec(), "[".repeat(100_000).into_bytes(), vec![0xff, 0xfe, b'{', b'}']] {
        let r = c.post(format!("{url}/execute")).header("content-type", "application/json").body(raw).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "body");
    }
    // A body over the limit is refused from its Content-Length, before it is read, and the
    // connection closed: a client still writing the body may see the close first (reqwest
    // then reports a broken pipe, not the answer), so this one goes by hand.
    let addr = url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let len = (2 << 20) + 64;
        write!(
            s,
            "POST /execute HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{\"job_id\":\"j\",\"prompt\":\"xxxx"
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(c.get(format!("{url}/execute")).send().await.unwrap().status(), 405);
    assert_eq!(c.get(format!("{url}/nowhere")).send().await.unwrap().status(), 404);
    // A prompt that does not fit the context with max_tokens.
    let r = post(&c, format!("{url}/execute"), &with("max_tokens", json!(2000))).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "max_tokens");
    // A job id already queued or running.
    let first = post(&c, format!("{url}/execute"), &ok).await;
    let dup = post(&c, format!("{url}/execute"), &ok).await;
    assert_eq!(dup.status(), 409);
    gate.open();
    assert_eq!(read_execute(first).await.terminal.event, "end");
    let h = health(&c, &s).await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["requests_served"], 1);
}

#[tokio::test]
async fn an_unwritable_record_dir_is_a_counted_error_not_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let s = start(ServerConfig { record_dir: Some(rec.clone()), ..config() });
    let c = client();
    let job = |id: &str| json!({"job_id": id, "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0});
    let first = read_execute(post(&c, format!("{}/execute", s.url()), &job("one")).await).await;
    let path = PathBuf::from(first.terminal.json()["recording"].as_str().unwrap());
    wait_file(&path).await;
    // The directory goes away (moved, with the first recording) and a file takes its name.
    let moved = dir.path().join("moved");
    std::fs::rename(&rec, &moved).unwrap();
    std::fs::write(&rec, b"not a directory").unwrap();
    let second = read_execute(post(&c, format!("{}/execute", s.url()), &job("two")).await).await;
    assert_eq!(second.terminal.event, "end", "the request still succeeds");
    assert_eq!(second.ids, first.ids);
    let h = wait_health(&c, &s, "the recorder error", |h| h["recorder_errors"].as_u64() >= Some(1)).await;
    assert_eq!(h["recorder_state"], "error");
    assert!(h["last_recorder_error"].as_str().unwrap().contains("two"), "{h}");
    let earlier = Recording::open(&moved.join(path.file_name().unwrap())).unwrap();
    assert!(earlier.complete, "the earlier recording is intact: {:?}", earlier.problems());
    assert_eq!(earlier.token_ids(), first.ids);
    // And the worker keeps serving.
    assert_eq!(read_execute(post(&c, format!("{}/execute", s.url()), &job("three")).await).await.terminal.event, "end");
}

#[tokio::test]
async fn a_slow_disk_drops_trace_frames_but_never_stalls_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let delay_ms = Arc::new(AtomicU64::new(1000));
    let budget = 600 << 10; // two decode steps' buffers; a prefill buffer does not fit
    let s = start(ServerConfig {
        record_dir: Some(dir.path().to_path_buf()),
        trace: TraceLevel::Full,
        recorder_budget_bytes: budget,
        record_write_delay_ms: Some(Arc::clone(&delay_ms)),
        ..config()
    });
    let c = client();
    let body = json!({"job_id": "slow", "prompt": "The history of lighthouses begins with", "max_tokens": 24, "temperature": 0});
    let t0 = Instant::now();
    let r = read_execute(post(&c, format!("{}/execute", s.url()), &body).await).await;
    let took = t0.elapsed();
    assert_eq!(r.terminal.event, "end");
    assert_eq!(r.ids.len(), 24);
    // The end waited for the writer only a bounded time: it names where the recording will
    // be, as pending, not as a file that exists.
    let end = r.terminal.json();
    assert_eq!(end["recording_state"], "writing", "{end}");
    assert!(end.get("recording").is_none(), "{end}");
    let path = PathBuf::from(end["recording_pending"].as_str().unwrap());
    // The writer needs a second per frame (at least 26 frames: header, tokens, footer), so a
    // stream that waited for it could not have ended before the recording exists.
    assert!(!path.exists(), "the stream ended only after the slow writer finished ({took:?})");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let h = health(&c, &s).await;
    assert!(h["recorder"]["dropped_frames"].as_u64().unwrap() > 0, "{h}");
    assert!(h["recorder_errors"].as_u64().unwrap() >= 1);
    assert!(h["last_recorder_error"].as_str().unwrap().contains("dropped"), "{h}");
    assert!(h["recorder"]["pool_peak_bytes"].as_u64().unwrap() <= budget as u64, "memory stays bounded: {h}");
    // The disk recovers: the recording is finished, with every token.
    delay_ms.store(0, Ordering::Relaxed);
    wait_file(&path).await;
    let rec = Recording::open(&path).unwrap();
    assert!(rec.complete, "{:?}", rec.problems());
    assert_eq!(rec.token_ids(), r.ids, "every token is kept even when traces are dropped");
    assert!(rec.footer.as_ref().unwrap().dropped_trace_frames > 0);
}

#[test]
fn cuda_backend_fails_with_one_clear_line() {
    if worker_orcd::backend::cuda::probe().is_ok() {
        eprintln!("skipped: CUDA is usable here, so --backend cuda does not fail");
        return;
    }
    let err = match server::spawn(ServerConfig { backend: BackendChoice::Cuda, ..config() }) {
        Ok(_) => panic!("cuda must be unavailable in this build"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("cuda backend is unavailable: "), "{err}");
    assert!(!err.contains('\n'));
}
