//! The client mix: normal, OpenAI, malformed, slow, cancelling and bursting clients.

use super::*;

/// splitmix64: each client thread's own reproducible choices.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

pub(super) const PROMPTS: &[&str] = &[
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
pub(super) fn long_prompt() -> String {
    "The lighthouse keeper wrote in his log that the storm had passed. ".repeat(20)
}

/// The weighted mix each client thread draws from.
pub(super) const MIX: &[(&str, u64)] =
    &[("execute", 26), ("completion", 14), ("chat_stream", 10), ("chat", 6), ("malformed", 22), ("slow", 5), ("cancel", 12), ("burst", 3), ("health", 2)];

pub(super) fn client_loop(ctx: Arc<Ctx>, seed: u64) {
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
pub(super) fn busy(ctx: &Ctx, kind: &'static str, r: &Response) -> bool {
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

pub(super) fn sampling(rng: &mut Rng, body: &mut Value) {
    if rng.below(2) == 0 {
        body["temperature"] = json!(0);
    } else {
        body["temperature"] = json!(0.8);
        body["seed"] = json!(rng.below(1 << 40));
    }
}

/// `/execute`, read to its `end` event.
pub(super) fn execute(ctx: &Ctx, rng: &mut Rng) {
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
pub(super) fn completion(ctx: &Ctx, rng: &mut Rng, chat_stream: bool) {
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
pub(super) fn chat(ctx: &Ctx, rng: &mut Rng) {
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
pub(super) fn malformed(ctx: &Ctx, rng: &mut Rng) {
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
pub(super) fn wait_closed(s: &mut TcpStream, limit: Duration, mut trickle: impl FnMut(&mut TcpStream) -> bool) -> Option<(Duration, String)> {
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
pub(super) fn slow(ctx: &Ctx, rng: &mut Rng) {
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
pub(super) fn cancel(ctx: &Ctx, rng: &mut Rng) {
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
pub(super) fn burst(ctx: &Ctx, rng: &mut Rng) {
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

pub(super) fn get_json(ctx: &Ctx, path: &str) -> Result<Value> {
    let r = request(ctx, "GET", path, &[("Authorization", format!("Bearer {TOKEN}"))], b"", Duration::from_secs(30))?;
    let st = r.status;
    let t = r.text()?;
    if st != 200 {
        bail!("GET {path}: status {st}: {t}");
    }
    Ok(serde_json::from_str(&t)?)
}

pub(super) fn health(ctx: &Ctx) {
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
