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

mod clients;
mod http;
mod verify;

use clients::*;
use http::*;
use verify::*;

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
