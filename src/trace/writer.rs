//! The recorder: the inference-side handle ([`Recorder`]) and the writer thread that turns
//! trace buffers, tokens and footers into one recording file per request.
//!
//! Does not know HTTP or request shapes (the caller hands it a finished [`Header`]) and never
//! blocks the caller. **Architecture Invariant:** recording never blocks the forward pass.
//! Every message goes through one FIFO channel to the writer thread, with admission bounded on
//! the sending side: trace buffers come from a pool limited to `budget_bytes` (when the writer
//! lags, the pool is empty and the forward call's trace frame is dropped and counted), and at
//! most [`MAX_OPEN_RECORDINGS`] recordings may be queued or open (beyond that a request is not
//! recorded, and that is counted). Token, begin and end messages are small and always
//! admitted, so a recording that is written at all keeps every token. A failed write becomes
//! a counted error, a log line and `last_error`, never a failed request; the file is cut back
//! to its last whole frame and kept as `NAME.wrec.partial`, which replays as incomplete. Each
//! recording's [`RecordingOutcome`] (written, cut, lost) is published when the writer is done
//! with it, so the caller can name what exists instead of what was planned.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

mod encoder;

use super::format::{self, Footer, FrameKind, Header, ModelDims, Site, TokenFrame, TraceLevel};
use encoder::{encode, thread_cpu_ms, EncodeJob, EncodedTrace, Encoder, EncoderPool};

/// At most this many recordings may be queued or open in the writer at once.
pub const MAX_OPEN_RECORDINGS: usize = 64;

/// Extension of finished recordings; unfinished ones add [`PARTIAL_SUFFIX`].
pub const RECORDING_EXT: &str = "wrec";
pub const PARTIAL_SUFFIX: &str = ".partial";

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("cannot create record dir {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("record dir {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot start the recorder's writer thread: {source}")]
    Spawn { source: std::io::Error },
    #[error("invalid zstd level {level}: {source}")]
    Zstd { level: i32, source: std::io::Error },
}

/// How the recorder writes.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    pub level: TraceLevel,
    /// Bytes of trace buffers (in flight and idle) the inference side may hold.
    pub budget_bytes: usize,
    /// zstd level for frame payloads (`None` stores them raw).
    pub zstd_level: Option<i32>,
    /// Byte-shuffle full values before compression.
    pub shuffle: bool,
    /// Threads that summarize and compress trace frames beside the writer thread (0: the
    /// writer does it itself). Frames are still written one at a time in the order they were
    /// sent, and their bytes do not depend on this number.
    pub encoders: usize,
    /// Test hook: sleep this many milliseconds before every frame write (a slow disk); the
    /// test may change it while the recorder runs.
    #[doc(hidden)]
    pub write_delay_ms: Option<Arc<AtomicU64>>,
    /// Test hook: the bytes the disk has left. A write that does not fit writes what fits and
    /// fails with `StorageFull`, as on a full disk; the test may free space while it runs.
    #[doc(hidden)]
    pub disk_bytes_left: Option<Arc<AtomicU64>>,
}

impl RecorderConfig {
    pub fn new(dir: impl Into<PathBuf>, level: TraceLevel) -> RecorderConfig {
        RecorderConfig {
            dir: dir.into(),
            level,
            budget_bytes: 64 << 20,
            zstd_level: Some(1),
            shuffle: true,
            encoders: default_encoders(),
            write_delay_ms: None,
            disk_bytes_left: None,
        }
    }
}

/// Encoder threads by default: the cores beyond two (the inference thread and the writer),
/// at most [`MAX_ENCODERS`]; none on a machine of two cores or fewer.
pub fn default_encoders() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get().saturating_sub(2)).min(MAX_ENCODERS)
}

/// At most this many encoder threads.
pub const MAX_ENCODERS: usize = 8;

/// Counters shared between the recorder, its writer and whoever reports health.
#[derive(Debug)]
pub struct RecorderStatus {
    pub dir: PathBuf,
    pub level: TraceLevel,
    recordings_started: AtomicU64,
    recordings_written: AtomicU64,
    recordings_skipped: AtomicU64,
    recordings_cut: AtomicU64,
    errors: AtomicU64,
    dropped_frames: AtomicU64,
    bytes_written: AtomicU64,
    trace_frames: AtomicU64,
    trace_raw_bytes: AtomicU64,
    trace_stored_bytes: AtomicU64,
    trace_value_bytes: AtomicU64,
    pool_bytes: AtomicU64,
    pool_peak_bytes: AtomicU64,
    writer_scratch_peak_bytes: AtomicU64,
    /// Time the taps spent on the inference thread (copying, buffer hand-over).
    pub(crate) tap_ns: AtomicU64,
    /// Wall time the writer spent handling messages.
    writer_busy_ns: AtomicU64,
    /// The writer thread's CPU time, as of the last flush (Linux; 0 elsewhere).
    writer_cpu_ms: AtomicU64,
    /// `errors` when the last recording without dropped frames was finished: more errors
    /// since then mean state `error`.
    errors_at_last_success: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A point-in-time copy of [`RecorderStatus`], as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecorderSnapshot {
    pub dir: String,
    pub trace: TraceLevel,
    /// `error` when an error was counted since the last recording was finished whole (no
    /// dropped frames), else `ok`: the state recovers, `errors` keeps counting.
    pub state: &'static str,
    pub recordings_started: u64,
    pub recordings_written: u64,
    pub recordings_skipped: u64,
    /// Recordings cut by a failed write and kept as `.partial` (they replay as incomplete).
    pub recordings_cut: u64,
    pub errors: u64,
    pub dropped_frames: u64,
    pub bytes_written: u64,
    pub trace_frames: u64,
    /// Postcard bytes of trace frames before compression.
    pub trace_raw_bytes: u64,
    /// Bytes of trace frames on disk (payloads, after compression).
    pub trace_stored_bytes: u64,
    /// Raw f32 bytes of the traced values (what `full` stores losslessly).
    pub trace_value_bytes: u64,
    pub pool_bytes: u64,
    pub pool_peak_bytes: u64,
    pub writer_scratch_peak_bytes: u64,
    pub tap_ns: u64,
    pub writer_busy_ns: u64,
    pub writer_cpu_ms: u64,
    pub last_error: Option<String>,
}

impl RecorderStatus {
    fn new(dir: PathBuf, level: TraceLevel) -> RecorderStatus {
        RecorderStatus {
            dir,
            level,
            recordings_started: AtomicU64::new(0),
            recordings_written: AtomicU64::new(0),
            recordings_skipped: AtomicU64::new(0),
            recordings_cut: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped_frames: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            trace_frames: AtomicU64::new(0),
            trace_raw_bytes: AtomicU64::new(0),
            trace_stored_bytes: AtomicU64::new(0),
            trace_value_bytes: AtomicU64::new(0),
            pool_bytes: AtomicU64::new(0),
            pool_peak_bytes: AtomicU64::new(0),
            writer_scratch_peak_bytes: AtomicU64::new(0),
            tap_ns: AtomicU64::new(0),
            writer_busy_ns: AtomicU64::new(0),
            writer_cpu_ms: AtomicU64::new(0),
            errors_at_last_success: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Counts an error, keeps it as `last_error` and logs it.
    pub fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("worker-orcd: recorder error: {message}");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> RecorderSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let errors = g(&self.errors);
        RecorderSnapshot {
            dir: self.dir.display().to_string(),
            trace: self.level,
            state: if errors > g(&self.errors_at_last_success) { "error" } else { "ok" },
            recordings_started: g(&self.recordings_started),
            recordings_written: g(&self.recordings_written),
            recordings_skipped: g(&self.recordings_skipped),
            recordings_cut: g(&self.recordings_cut),
            errors,
            dropped_frames: g(&self.dropped_frames),
            bytes_written: g(&self.bytes_written),
            trace_frames: g(&self.trace_frames),
            trace_raw_bytes: g(&self.trace_raw_bytes),
            trace_stored_bytes: g(&self.trace_stored_bytes),
            trace_value_bytes: g(&self.trace_value_bytes),
            pool_bytes: g(&self.pool_bytes),
            pool_peak_bytes: g(&self.pool_peak_bytes),
            writer_scratch_peak_bytes: g(&self.writer_scratch_peak_bytes),
            tap_ns: g(&self.tap_ns),
            writer_busy_ns: g(&self.writer_busy_ns),
            writer_cpu_ms: g(&self.writer_cpu_ms),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// Where one traced site's rows lie in a [`TraceBuf`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub site: Site,
    pub row0: u32,
    pub n_rows: u32,
    pub width: u32,
    pub offset: usize,
}

/// The values of one forward call's traced sites, copied during the forward pass.
#[derive(Debug, Default)]
pub(crate) struct TraceBuf {
    pub data: Vec<f32>,
    pub slots: Vec<Slot>,
    pub pos0: u32,
    pub n_tok: u32,
}

impl TraceBuf {
    fn bytes(&self) -> usize {
        self.data.capacity() * 4
    }
}

/// Trace buffers: reused, allocated only while the budget allows. Owned by the inference
/// side; the writer hands buffers back through `free_rx`.
pub(crate) struct Pool {
    free_rx: Receiver<TraceBuf>,
    idle: Vec<TraceBuf>,
    allocated: usize,
    budget: usize,
    status: Arc<RecorderStatus>,
}

impl Pool {
    fn account(&self) {
        let a = self.allocated as u64;
        self.status.pool_bytes.store(a, Ordering::Relaxed);
        self.status.pool_peak_bytes.fetch_max(a, Ordering::Relaxed);
    }

    fn reclaim(&mut self) {
        while let Ok(b) = self.free_rx.try_recv() {
            self.idle.push(b);
        }
    }

    /// A cleared buffer with room for `floats` values, or `None` when the budget is spent
    /// (the writer is behind). Never blocks.
    pub fn acquire(&mut self, floats: usize) -> Option<TraceBuf> {
        self.reclaim();
        if let Some(i) = self.idle.iter().position(|b| b.data.capacity() >= floats) {
            let mut b = self.idle.swap_remove(i);
            b.data.clear();
            b.slots.clear();
            return Some(b);
        }
        let bytes = floats.checked_mul(4)?;
        while self.allocated + bytes > self.budget {
            let b = self.idle.pop()?;
            self.allocated -= b.bytes();
        }
        let b = TraceBuf { data: Vec::with_capacity(floats), slots: Vec::with_capacity(64), pos0: 0, n_tok: 0 };
        self.allocated += b.bytes();
        self.account();
        Some(b)
    }

    /// Grows `buf` to hold `extra` more values if the budget allows.
    pub fn grow(&mut self, buf: &mut TraceBuf, extra: usize) -> bool {
        let need = buf.data.len() + extra;
        if need <= buf.data.capacity() {
            return true;
        }
        let before = buf.bytes();
        if self.allocated - before + need * 4 > self.budget {
            return false;
        }
        buf.data.reserve_exact(need - buf.data.len());
        self.allocated = self.allocated - before + buf.bytes();
        self.account();
        true
    }

    pub fn give_back(&mut self, buf: TraceBuf) {
        self.idle.push(buf);
    }
}

pub(crate) enum WriterMsg {
    Begin { id: u64, temp: PathBuf, path: PathBuf, header: Box<Header>, verdict: Arc<Verdict> },
    Trace { id: u64, forward: u32, buf: TraceBuf },
    Token { id: u64, frame: TokenFrame },
    End { id: u64, footer: Box<Footer> },
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// What the writer made of one recording, once it is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingOutcome {
    /// Finished whole: fsynced and renamed to its final name.
    Written(PathBuf),
    /// Cut by a failed write (a full disk): every whole frame is kept in this `.partial` file,
    /// which replays as incomplete.
    Cut { partial: PathBuf, error: String },
    /// Nothing was kept: the file could not be created (or not even its header written).
    Lost { error: String },
}

/// A recording's fate, published by the writer: `failed` as soon as a write fails, the
/// outcome when the writer is done with it.
#[derive(Debug, Default)]
pub struct Verdict {
    failed: AtomicBool,
    outcome: Mutex<Option<RecordingOutcome>>,
    done: Condvar,
}

impl Verdict {
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    fn publish(&self, outcome: RecordingOutcome) {
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        o.get_or_insert(outcome);
        self.done.notify_all();
    }

    /// The outcome, waiting at most `timeout` for the writer; `None` while it is still writing.
    pub fn wait(&self, timeout: Duration) -> Option<RecordingOutcome> {
        let deadline = Instant::now() + timeout;
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        while o.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            o = self.done.wait_timeout(o, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        o.clone()
    }
}

/// A recording in progress: where it will be, and how to add tokens to it.
pub struct ActiveRecording {
    pub(crate) id: u64,
    path: PathBuf,
    job_id: String,
    tx: Sender<WriterMsg>,
    verdict: Arc<Verdict>,
}

impl ActiveRecording {
    /// Where the finished recording will be (written under a `.partial` name until the end).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it is while being written, and where a cut one stays.
    pub fn partial_path(&self) -> PathBuf {
        partial_of(&self.path)
    }

    /// Whether a create or write of this recording has already failed (then it ends cut or
    /// lost, never written). `false` says only that no failure has happened yet.
    pub fn failed(&self) -> bool {
        self.verdict.failed.load(Ordering::Acquire)
    }

    /// The writer's verdict on this recording, to wait for after [`Recorder::end`].
    pub fn verdict(&self) -> Arc<Verdict> {
        Arc::clone(&self.verdict)
    }

    /// Queues a token frame; never blocks.
    pub fn token(&self, frame: TokenFrame) {
        let _ = self.tx.send(WriterMsg::Token { id: self.id, frame });
    }
}

/// The inference side of the recorder. Owned by the thread that runs the engine.
pub struct Recorder {
    pub(super) tx: Sender<WriterMsg>,
    pub(crate) pool: Pool,
    pub(super) status: Arc<RecorderStatus>,
    open: Arc<AtomicUsize>,
    next_id: u64,
    pub(super) level: TraceLevel,
    pub(super) dims: ModelDims,
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Creates the directory if needed and starts the writer thread. Buffers for a few decode
    /// steps are allocated now, so steady-state decoding allocates nothing.
    pub fn start(cfg: RecorderConfig, dims: ModelDims) -> Result<Recorder, RecorderError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| RecorderError::CreateDir { path: cfg.dir.clone(), source })?;
        if !cfg.dir.is_dir() {
            return Err(RecorderError::NotADirectory { path: cfg.dir.clone() });
        }
        let status = Arc::new(RecorderStatus::new(cfg.dir.clone(), cfg.level));
        let (tx, rx) = channel();
        let (free_tx, free_rx) = channel();
        let open = Arc::new(AtomicUsize::new(0));
        let encoders = if cfg.level == TraceLevel::Off { 0 } else { cfg.encoders.min(MAX_ENCODERS) };
        let pool_of_encoders = if encoders > 0 { Some(EncoderPool::start(&cfg, encoders, &status, &free_tx)?) } else { None };
        let writer = Writer {
            enc: Encoder::new(&cfg)?,
            encoders: pool_of_encoders,
            files: HashMap::new(),
            status: Arc::clone(&status),
            free_tx,
            open: Arc::clone(&open),
            write_delay_ms: cfg.write_delay_ms,
            disk_bytes_left: cfg.disk_bytes_left,
        };
        let thread =
            std::thread::Builder::new().name("recorder-writer".into()).spawn(move || writer.run(rx)).map_err(|source| RecorderError::Spawn { source })?;
        let mut pool = Pool { free_rx, idle: Vec::new(), allocated: 0, budget: cfg.budget_bytes, status: Arc::clone(&status) };
        if cfg.level != TraceLevel::Off {
            let step = decode_step_floats(dims);
            let bufs: Vec<TraceBuf> = (0..8).filter_map(|_| pool.acquire(step)).collect();
            for b in bufs {
                pool.give_back(b);
            }
        }
        Ok(Recorder { tx, pool, status, open, next_id: 1, level: cfg.level, dims, dir: cfg.dir, thread: Some(thread) })
    }

    pub fn level(&self) -> TraceLevel {
        self.level
    }

    pub fn dims(&self) -> ModelDims {
        self.dims
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn status(&self) -> &Arc<RecorderStatus> {
        &self.status
    }

    /// Starts a recording named `{file_stem}.wrec`. `None` (counted as an error) when too many
    /// recordings are already waiting for the writer.
    pub fn begin(&mut self, file_stem: &str, header: Header) -> Option<ActiveRecording> {
        if self.open.load(Ordering::Acquire) >= MAX_OPEN_RECORDINGS {
            self.status.recordings_skipped.fetch_add(1, Ordering::Relaxed);
            self.status.error(format!("job {}: not recorded, {MAX_OPEN_RECORDINGS} recordings are waiting for a slow disk", header.job_id));
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let path = self.dir.join(format!("{file_stem}.{RECORDING_EXT}"));
        let temp = partial_of(&path);
        let job_id = header.job_id.clone();
        self.open.fetch_add(1, Ordering::AcqRel);
        self.status.recordings_started.fetch_add(1, Ordering::Relaxed);
        let verdict = Arc::new(Verdict::default());
        if self.tx.send(WriterMsg::Begin { id, temp, path: path.clone(), header: Box::new(header), verdict: Arc::clone(&verdict) }).is_err() {
            self.status.error(format!("job {job_id}: the recorder's writer thread is gone"));
            return None;
        }
        Some(ActiveRecording { id, path, job_id, tx: self.tx.clone(), verdict })
    }

    /// Ends a recording; the writer adds the footer, fsyncs and renames it. A recording whose
    /// trace frames were dropped counts one error.
    pub fn end(&mut self, rec: ActiveRecording, footer: Footer) {
        if footer.dropped_trace_frames > 0 {
            self.status.dropped_frames.fetch_add(footer.dropped_trace_frames as u64, Ordering::Relaxed);
            self.status.error(format!("job {}: writer lagging, dropped {} trace frames", rec.job_id, footer.dropped_trace_frames));
        }
        let _ = self.tx.send(WriterMsg::End { id: rec.id, footer: Box::new(footer) });
    }

    /// Waits until the writer has handled everything sent so far. For tests, benchmarks and
    /// shutdown only: this one blocks.
    pub fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(WriterMsg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Lets the writer finish every queued message, then stops it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let (dead_tx, _) = channel();
        drop(std::mem::replace(&mut self.tx, dead_tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Values in one decode step's trace buffer.
pub fn decode_step_floats(d: ModelDims) -> usize {
    (d.n_layers as usize + 2) * d.dim as usize + d.n_vocab as usize
}

struct OpenFile {
    /// `None` once a write failed: the rest of this recording is discarded.
    file: Option<File>,
    /// Bytes of whole frames written so far: a failed write cuts the file back to this.
    good_len: u64,
    /// Set when a write failed and the `.partial` file was kept.
    cut: Option<String>,
    /// Set when nothing was kept.
    lost: Option<String>,
    temp: PathBuf,
    path: PathBuf,
    job_id: String,
    verdict: Arc<Verdict>,
}

/// A message in the writer's order: handled as it comes, or a trace frame still being encoded.
enum Pending {
    Msg(WriterMsg),
    Trace { id: u64, frame: Receiver<std::io::Result<EncodedTrace>> },
}

struct Writer {
    /// The writer thread's own encoder: every frame without encoder threads, and the header,
    /// token and footer frames always.
    enc: Encoder,
    encoders: Option<EncoderPool>,
    files: HashMap<u64, OpenFile>,
    status: Arc<RecorderStatus>,
    free_tx: Sender<TraceBuf>,
    open: Arc<AtomicUsize>,
    write_delay_ms: Option<Arc<AtomicU64>>,
    disk_bytes_left: Option<Arc<AtomicU64>>,
}

impl Writer {
    fn run(mut self, rx: Receiver<WriterMsg>) {
        if self.encoders.is_some() {
            self.run_with_encoders(&rx);
        } else {
            while let Ok(msg) = rx.recv() {
                self.handle(msg);
            }
        }
        self.encoders = None; // joins the encoder threads
                              // The channel closed with recordings unfinished: they stay `.partial`, as after a crash.
        for (_, f) in self.files.drain() {
            if f.file.is_some() {
                eprintln!("worker-orcd: recorder: job {} left unfinished at {}", f.job_id, f.temp.display());
            }
            let error = f.cut.unwrap_or_else(|| "the recorder stopped before the recording ended".into());
            f.verdict.publish(match f.lost {
                Some(error) => RecordingOutcome::Lost { error },
                None => RecordingOutcome::Cut { partial: f.temp, error },
            });
        }
    }

    /// The writer loop with encoder threads: every trace buffer that arrives goes to an
    /// encoder at once (at most `2 * encoders` in flight, which bounds the encoded frames held
    /// here), and the queue is worked off strictly in arrival order, so each recording's frames
    /// are written as they were sent.
    fn run_with_encoders(&mut self, rx: &Receiver<WriterMsg>) {
        let max_in_flight = 2 * self.encoders.as_ref().map_or(1, |p| p.threads.len());
        let mut queue: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
        let mut in_flight = 0usize;
        let mut open = true;
        loop {
            // Take every message that is already there (submitting trace buffers) while there
            // is room, then wait: for the next message when nothing is queued, else for the
            // oldest queued frame.
            while open && in_flight < max_in_flight {
                match rx.try_recv() {
                    Ok(msg) => {
                        if matches!(msg, WriterMsg::Trace { .. }) {
                            in_flight += 1;
                        }
                        queue.push_back(self.submit(msg));
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            match queue.pop_front() {
                Some(Pending::Msg(msg)) => self.handle(msg),
                Some(Pending::Trace { id, frame }) => {
                    in_flight -= 1;
                    let r = frame.recv().unwrap_or_else(|_| Err(std::io::Error::other("a recorder encoder thread stopped")));
                    let t0 = Instant::now();
                    self.write_trace(id, r);
                    self.status.writer_busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                None if open => match rx.recv() {
                    Ok(msg) => {
                        if matches!(msg, WriterMsg::Trace { .. }) {
                            in_flight += 1;
                        }
                        queue.push_back(self.submit(msg));
                    }
                    Err(_) => open = false,
                },
                None => return,
            }
        }
    }

    /// Hands a trace buffer to the encoder threads (or back to the pool when its recording
    /// is no longer written); any other message waits in the queue as it is.
    fn submit(&mut self, msg: WriterMsg) -> Pending {
        match msg {
            WriterMsg::Trace { id, forward, buf } => {
                let (done, frame) = std::sync::mpsc::sync_channel(1);
                // A recording whose writes already failed gets no more frames. One not in the
                // table yet has its Begin still queued ahead of this buffer: encoded all the same.
                if self.files.get(&id).is_some_and(|f| f.file.is_none()) {
                    let _ = self.free_tx.send(buf);
                    let _ = done.send(Err(std::io::Error::other("not written")));
                    return Pending::Trace { id, frame };
                }
                let jobs = self.encoders.as_ref().and_then(|p| p.jobs.as_ref());
                if let Some(Err(e)) = jobs.map(|j| j.send(EncodeJob { forward, buf, done })) {
                    let EncodeJob { buf, done, .. } = e.0;
                    let _ = self.free_tx.send(buf);
                    let _ = done.send(Err(std::io::Error::other("the recorder's encoder threads are gone")));
                }
                Pending::Trace { id, frame }
            }
            other => Pending::Msg(other),
        }
    }

    /// Appends an encoded trace frame to recording `id` and counts it.
    fn write_trace(&mut self, id: u64, r: std::io::Result<EncodedTrace>) {
        if self.files.get(&id).is_none_or(|f| f.file.is_none()) {
            return;
        }
        match r.and_then(|e| self.append(id, &e.head, &e.stored).map(|stored| (e, stored))) {
            Ok((e, stored)) => {
                self.status.trace_frames.fetch_add(1, Ordering::Relaxed);
                self.status.trace_raw_bytes.fetch_add(e.raw_len, Ordering::Relaxed);
                self.status.trace_stored_bytes.fetch_add(stored, Ordering::Relaxed);
                self.status.trace_value_bytes.fetch_add(e.value_bytes, Ordering::Relaxed);
            }
            Err(e) => self.fail(id, e),
        }
    }

    fn handle(&mut self, msg: WriterMsg) {
        let t0 = std::time::Instant::now();
        match msg {
            WriterMsg::Begin { id, temp, path, header, verdict } => {
                let job_id = header.job_id.clone();
                let (file, good_len, lost) = match self.create(&temp, &header) {
                    Ok((f, len)) => (Some(f), len, None),
                    Err(e) => {
                        // Without its header frame a recording is nothing to replay: removed.
                        verdict.fail();
                        let _ = std::fs::remove_file(&temp);
                        let error = format!("job {job_id}: cannot create {}: {e}", temp.display());
                        self.status.error(error.clone());
                        (None, 0, Some(error))
                    }
                };
                self.files.insert(id, OpenFile { file, good_len, cut: None, lost, temp, path, job_id, verdict });
            }
            WriterMsg::Trace { id, forward, buf } => {
                if self.files.get(&id).is_some_and(|f| f.file.is_some()) {
                    let r = self.enc.trace(forward, &buf);
                    self.write_trace(id, r);
                }
                let _ = self.free_tx.send(buf);
            }
            WriterMsg::Token { id, frame } => self.write_value(id, FrameKind::Token, &frame),
            WriterMsg::End { id, footer } => {
                self.write_value(id, FrameKind::Footer, &*footer);
                let clean = footer.dropped_trace_frames == 0;
                if let Some(f) = self.files.remove(&id) {
                    let outcome = match (f.file, f.lost, f.cut) {
                        (Some(file), _, _) => match finish(file, &f.temp, &f.path) {
                            Err(e) => {
                                // Every frame, footer included, is in the `.partial` file.
                                f.verdict.fail();
                                let error = format!("job {}: cannot finish {}: {e}", f.job_id, f.path.display());
                                self.status.error(error.clone());
                                self.status.recordings_cut.fetch_add(1, Ordering::Relaxed);
                                RecordingOutcome::Cut { partial: f.temp, error }
                            }
                            Ok(()) => {
                                self.status.recordings_written.fetch_add(1, Ordering::Relaxed);
                                if clean {
                                    // A whole recording written since the last error: recovered.
                                    self.status.errors_at_last_success.store(self.status.errors(), Ordering::Relaxed);
                                }
                                RecordingOutcome::Written(f.path)
                            }
                        },
                        (None, Some(error), _) => RecordingOutcome::Lost { error },
                        (None, None, error) => RecordingOutcome::Cut { partial: f.temp, error: error.unwrap_or_default() },
                    };
                    f.verdict.publish(outcome);
                }
                self.open.fetch_sub(1, Ordering::AcqRel);
            }
            WriterMsg::Flush(done) => {
                if let Some(ms) = thread_cpu_ms() {
                    let encoders = self.encoders.as_ref().map_or(0, |p| p.cpu_ms());
                    self.status.writer_cpu_ms.store(ms + encoders, Ordering::Relaxed);
                }
                let _ = done.send(());
            }
        }
        self.status.writer_busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.status.writer_scratch_peak_bytes.fetch_max(self.enc.scratch_bytes(), Ordering::Relaxed);
        self.enc.frame_values = 0;
    }

    /// Creates the `.partial` file with the file header and the header frame; returns it and
    /// its length.
    fn create(&mut self, temp: &Path, header: &Header) -> std::io::Result<(File, u64)> {
        if let Some(dir) = temp.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut file = File::create(temp)?;
        let e = &mut self.enc;
        e.payload.clear();
        encode(header, &mut e.payload)?;
        let (head, stored) = format::encode_frame(FrameKind::Header, &e.payload, e.compressor.as_mut(), &mut e.zbuf)?;
        delay(&self.write_delay_ms);
        let disk = &self.disk_bytes_left;
        write_all(&mut file, &format::file_header(), disk)?;
        write_all(&mut file, &head, disk)?;
        write_all(&mut file, stored, disk)?;
        let n = format::FILE_HEADER_LEN + format::FRAME_HEADER_LEN + stored.len();
        self.status.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        Ok((file, n as u64))
    }

    fn write_value<T: Serialize>(&mut self, id: u64, kind: FrameKind, value: &T) {
        if self.files.get(&id).is_none_or(|f| f.file.is_none()) {
            return;
        }
        self.enc.payload.clear();
        let r = encode(value, &mut self.enc.payload);
        if let Err(e) = r.and_then(|_| self.write_payload(id, kind)) {
            self.fail(id, e);
        }
    }

    /// Frames the writer encoder's payload and appends it to recording `id`; returns the
    /// stored length.
    fn write_payload(&mut self, id: u64, kind: FrameKind) -> std::io::Result<u64> {
        let e = &mut self.enc;
        let (head, stored) = format::encode_frame(kind, &e.payload, e.compressor.as_mut(), &mut e.zbuf)?;
        Self::append_to(&mut self.files, &self.status, &self.write_delay_ms, &self.disk_bytes_left, id, &head, stored)
    }

    /// Appends one frame's header and stored payload to recording `id`.
    fn append(&mut self, id: u64, head: &[u8], stored: &[u8]) -> std::io::Result<u64> {
        Self::append_to(&mut self.files, &self.status, &self.write_delay_ms, &self.disk_bytes_left, id, head, stored)
    }

    fn append_to(
        files: &mut HashMap<u64, OpenFile>,
        status: &RecorderStatus,
        write_delay_ms: &Option<Arc<AtomicU64>>,
        disk_bytes_left: &Option<Arc<AtomicU64>>,
        id: u64,
        head: &[u8],
        stored: &[u8],
    ) -> std::io::Result<u64> {
        delay(write_delay_ms);
        let Some(f) = files.get_mut(&id).filter(|f| f.file.is_some()) else {
            return Ok(0);
        };
        let file = f.file.as_mut().expect("checked above");
        write_all(file, head, disk_bytes_left)?;
        write_all(file, stored, disk_bytes_left)?;
        let n = (format::FRAME_HEADER_LEN + stored.len()) as u64;
        f.good_len += n;
        status.bytes_written.fetch_add(n, Ordering::Relaxed);
        Ok(stored.len() as u64)
    }

    /// A write failed: count it and stop writing this recording. The file is cut back to its
    /// last whole frame (which also returns the torn frame's space to a full disk) and kept
    /// as `.partial`: it replays as incomplete, like a recording cut by a crash.
    fn fail(&mut self, id: u64, e: std::io::Error) {
        if let Some(f) = self.files.get_mut(&id) {
            if let Some(file) = f.file.take() {
                f.verdict.fail();
                let _ = file.set_len(f.good_len);
                drop(file);
                let error = format!("job {}: writing {} failed: {e}", f.job_id, f.temp.display());
                self.status.error(format!("{error}; kept {} bytes of whole frames", f.good_len));
                self.status.recordings_cut.fetch_add(1, Ordering::Relaxed);
                f.cut = Some(error);
            }
        }
    }
}

/// `NAME.wrec` → `NAME.wrec.partial`.
pub fn partial_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

/// `write_all`, through the full-disk test hook when it is set: a write that does not fit
/// writes what fits, then fails as a full disk does.
fn write_all(file: &mut File, bytes: &[u8], disk_bytes_left: &Option<Arc<AtomicU64>>) -> std::io::Result<()> {
    if let Some(left) = disk_bytes_left {
        let fits = left.load(Ordering::Relaxed).min(bytes.len() as u64) as usize;
        left.fetch_sub(fits as u64, Ordering::Relaxed);
        if fits < bytes.len() {
            file.write_all(&bytes[..fits])?;
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (test hook)"));
        }
    }
    file.write_all(bytes)
}

/// The slow-disk test hook.
fn delay(ms: &Option<Arc<AtomicU64>>) {
    if let Some(ms) = ms {
        std::thread::sleep(Duration::from_millis(ms.load(Ordering::Relaxed)));
    }
}

/// fsync, rename to the final name, fsync the directory.
fn finish(file: File, temp: &Path, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(temp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
