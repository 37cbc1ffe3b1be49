//! The recorder's frame encoding: [`Encoder`] turns a trace buffer (or any frame value) into a
//! frame's bytes (summaries, postcard, zstd), and [`EncoderPool`] runs encoders on their own
//! threads for `--trace full`, the writer thread (the parent module) keeping the frames in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::{RecorderConfig, RecorderError, RecorderStatus, TraceBuf};
use crate::trace::format::{self, FrameKind, TraceFrame, TraceLevel};
use crate::trace::summary::{self, Projector, Scratch};

/// Turns a trace buffer (or any frame value) into a frame's bytes: the summaries, postcard and
/// zstd state of one thread. The writer thread has one; each encoder thread has its own.
pub(super) struct Encoder {
    pub(super) level: TraceLevel,
    pub(super) shuffle: bool,
    pub(super) compressor: Option<zstd::bulk::Compressor<'static>>,
    pub(super) projector: Projector,
    pub(super) scratch: Scratch,
    pub(super) payload: Vec<u8>,
    pub(super) zbuf: Vec<u8>,
    /// Bytes of full values held by the trace frame being encoded.
    pub(super) frame_values: usize,
}

/// One trace frame, encoded and ready to append.
pub(super) struct EncodedTrace {
    pub(super) head: [u8; format::FRAME_HEADER_LEN],
    pub(super) stored: Vec<u8>,
    pub(super) raw_len: u64,
    pub(super) value_bytes: u64,
}

impl Encoder {
    pub(super) fn new(cfg: &RecorderConfig) -> Result<Encoder, RecorderError> {
        let compressor = match cfg.zstd_level {
            Some(level) => Some(zstd::bulk::Compressor::new(level).map_err(|source| RecorderError::Zstd { level, source })?),
            None => None,
        };
        Ok(Encoder {
            level: cfg.level,
            shuffle: cfg.shuffle,
            compressor,
            projector: Projector::default(),
            scratch: Scratch::default(),
            payload: Vec::new(),
            zbuf: Vec::new(),
            frame_values: 0,
        })
    }

    fn summarize(&mut self, forward: u32, buf: &TraceBuf) -> TraceFrame {
        let sites = buf
            .slots
            .iter()
            .map(|s| {
                let n = s.n_rows as usize * s.width as usize;
                summary::summarize_site(
                    self.level,
                    s.site,
                    s.row0,
                    s.n_rows as usize,
                    s.width as usize,
                    &buf.data[s.offset..s.offset + n],
                    self.shuffle,
                    &mut self.projector,
                    &mut self.scratch,
                )
            })
            .collect();
        let frame = TraceFrame { forward, pos0: buf.pos0, n_tok: buf.n_tok, sites };
        self.frame_values = frame.sites.iter().filter_map(|s| s.values.as_ref()).map(|v| v.bytes.0.len()).sum();
        frame
    }

    /// The trace frame of `buf`, summarized, encoded and compressed.
    pub(super) fn trace(&mut self, forward: u32, buf: &TraceBuf) -> std::io::Result<EncodedTrace> {
        let frame = self.summarize(forward, buf);
        self.payload.clear();
        encode(&frame, &mut self.payload)?;
        let raw_len = self.payload.len() as u64;
        let value_bytes = buf.slots.iter().map(|s| s.n_rows as u64 * s.width as u64 * 4).sum();
        let (head, stored) = format::encode_frame(FrameKind::Trace, &self.payload, self.compressor.as_mut(), &mut self.zbuf)?;
        Ok(EncodedTrace { head, stored: stored.to_vec(), raw_len, value_bytes })
    }

    /// Peak scratch of this encoder: summaries, payload, compressed payload, the frame's values.
    pub(super) fn scratch_bytes(&self) -> u64 {
        (self.scratch.capacity_bytes() + self.payload.capacity() + self.zbuf.capacity() + self.frame_values) as u64
    }
}

/// One trace buffer for an encoder thread, and where its frame goes back to the writer.
pub(super) struct EncodeJob {
    pub(super) forward: u32,
    pub(super) buf: TraceBuf,
    pub(super) done: std::sync::mpsc::SyncSender<std::io::Result<EncodedTrace>>,
}

/// Encoder threads taking jobs from one queue. Each returns the trace buffer to the pool as
/// soon as it has summarized it, and its frame through the job's own channel; the writer
/// thread keeps the order.
pub(super) struct EncoderPool {
    pub(super) jobs: Option<Sender<EncodeJob>>,
    pub(super) threads: Vec<std::thread::JoinHandle<()>>,
    /// Each encoder thread's CPU time after its last job (ms; Linux).
    pub(super) cpu_ms: Vec<Arc<AtomicU64>>,
}

impl EncoderPool {
    pub(super) fn start(cfg: &RecorderConfig, n: usize, status: &Arc<RecorderStatus>, free_tx: &Sender<TraceBuf>) -> Result<EncoderPool, RecorderError> {
        let (jobs, rx) = channel::<EncodeJob>();
        let rx = Arc::new(Mutex::new(rx));
        let mut pool = EncoderPool { jobs: Some(jobs), threads: Vec::new(), cpu_ms: Vec::new() };
        for i in 0..n {
            let mut enc = Encoder::new(cfg)?;
            let rx = Arc::clone(&rx);
            let status = Arc::clone(status);
            let free_tx = free_tx.clone();
            let cpu = Arc::new(AtomicU64::new(0));
            pool.cpu_ms.push(Arc::clone(&cpu));
            let t = std::thread::Builder::new()
                .name(format!("recorder-encoder-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(EncodeJob { forward, buf, done }) = job else { break };
                    let t0 = Instant::now();
                    let r = enc.trace(forward, &buf);
                    let _ = free_tx.send(buf);
                    status.writer_busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    status.writer_scratch_peak_bytes.fetch_max(enc.scratch_bytes(), Ordering::Relaxed);
                    if let Some(ms) = thread_cpu_ms() {
                        cpu.store(ms, Ordering::Relaxed);
                    }
                    let _ = done.send(r);
                })
                .map_err(|source| RecorderError::Spawn { source })?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    pub(super) fn cpu_ms(&self) -> u64 {
        self.cpu_ms.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl Drop for EncoderPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// CPU time of the calling thread in ms (utime + stime from /proc, 10 ms resolution).
pub(super) fn thread_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10) // USER_HZ is 100 on Linux
}

/// Appends the postcard encoding of `value` to `out`.
pub(super) fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> std::io::Result<()> {
    postcard::to_io(value, &mut *out).map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()))
}
