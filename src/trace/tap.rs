//! Taps that trace a forward pass: [`TraceTap`] copies values into pool buffers for the
//! recorder's writer thread; [`FrameTap`] summarizes synchronously into memory (for replay
//! and tests).
//!
//! Both trace the same sites (`embd`, every `l_out-N`, `result_norm`, logits) and treat each
//! `embd` tap as the start of a forward call, which is how every backend orders its taps, and
//! `TraceTap` hands a call's frame to the writer as soon as the engine says the call is done
//! (`Tap::forward_done`), before the token sampled from it. They
//! know nothing of files or HTTP. `TraceTap` never blocks and never allocates once the pool is
//! warm: when no buffer is free it drops that forward call's frame and counts it.

use std::sync::mpsc::Sender;

use crate::backend::{Tap, TapPoint};

use super::format::{ModelDims, Site, TraceFrame, TraceLevel};
use super::summary::{self, Projector, Scratch};
use super::writer::{ActiveRecording, Pool, Recorder, RecorderStatus, Slot, TraceBuf, WriterMsg};

/// The recorded site of a tap point, if it is one.
pub fn site_of(p: TapPoint) -> Option<Site> {
    match p {
        TapPoint::Embd => Some(Site::Embd),
        TapPoint::LOut(l) => Some(Site::LOut(l as u32)),
        TapPoint::ResultNorm => Some(Site::ResultNorm),
        TapPoint::Logits => Some(Site::Logits),
        _ => None,
    }
}

/// The recorder's tap for one request (see `Recorder::tap`).
pub struct TraceTap<'a> {
    pool: &'a mut Pool,
    tx: &'a Sender<WriterMsg>,
    id: u64,
    level: TraceLevel,
    dims: ModelDims,
    forward: u32,
    cur: Option<(u32, TraceBuf)>,
    dropped: u32,
    /// Time spent in `record` (reported to the recorder's status at `finish`).
    nanos: u64,
    status: &'a RecorderStatus,
}

impl Recorder {
    /// A tap that copies this recording's traced sites into pool buffers for the writer. (The
    /// writer knows nothing of taps: it only receives the buffers.)
    pub fn tap<'a>(&'a mut self, rec: &ActiveRecording) -> TraceTap<'a> {
        TraceTap {
            pool: &mut self.pool,
            tx: &self.tx,
            id: rec.id,
            level: self.level,
            dims: self.dims,
            forward: 0,
            cur: None,
            dropped: 0,
            nanos: 0,
            status: &self.status,
        }
    }
}

impl<'a> TraceTap<'a> {
    fn send_current(&mut self) {
        if let Some((forward, buf)) = self.cur.take() {
            if let Err(e) = self.tx.send(WriterMsg::Trace { id: self.id, forward, buf }) {
                if let WriterMsg::Trace { buf, .. } = e.0 {
                    self.pool.give_back(buf);
                }
                self.dropped += 1;
            }
        }
    }

    /// Hands the last forward call to the writer; returns how many trace frames were dropped.
    pub fn finish(mut self) -> u32 {
        let t0 = std::time::Instant::now();
        self.send_current();
        let ns = self.nanos + t0.elapsed().as_nanos() as u64;
        self.status.tap_ns.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        self.dropped
    }
}

impl Tap for TraceTap<'_> {
    fn wants(&self, p: TapPoint) -> bool {
        self.level != TraceLevel::Off && site_of(p).is_some()
    }

    fn record(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        let t0 = std::time::Instant::now();
        self.copy(p, pos0, n_tok, data);
        self.nanos += t0.elapsed().as_nanos() as u64;
    }

    /// The forward call is over: its frame goes to the writer now, before the token sampled
    /// from its logits, so a recording cut at any point holds every finished step's trace.
    fn forward_done(&mut self) {
        let t0 = std::time::Instant::now();
        self.send_current();
        self.nanos += t0.elapsed().as_nanos() as u64;
    }
}

impl TraceTap<'_> {
    fn copy(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        let Some(site) = site_of(p) else { return };
        if n_tok == 0 || data.is_empty() {
            return;
        }
        if site == Site::Embd {
            self.send_current();
            let forward = self.forward;
            self.forward += 1;
            let d = self.dims;
            // Every site of this call: n_tok rows of dim for embd, each layer and result_norm,
            // plus one logits row (the engine asks for the last row only).
            let floats = n_tok * d.dim as usize * (d.n_layers as usize + 2) + d.n_vocab as usize;
            match self.pool.acquire(floats) {
                Some(mut buf) => {
                    buf.pos0 = pos0 as u32;
                    buf.n_tok = n_tok as u32;
                    self.cur = Some((forward, buf));
                }
                None => self.dropped += 1,
            }
        }
        let Some((_, buf)) = self.cur.as_mut() else { return };
        if !self.pool.grow(buf, data.len()) {
            let (_, buf) = self.cur.take().expect("checked above");
            self.pool.give_back(buf);
            self.dropped += 1;
            return;
        }
        let width = data.len() / n_tok;
        buf.slots.push(Slot { site, row0: pos0 as u32, n_rows: n_tok as u32, width: width as u32, offset: buf.data.len() });
        buf.data.extend_from_slice(&data[..n_tok * width]);
    }
}

/// A tap that builds [`TraceFrame`]s in memory, synchronously, exactly as the recorder's
/// writer would (values unshuffled). For the replay harness: run a recorded request with a
/// `FrameTap` and compare its frames with the recording's.
pub struct FrameTap {
    level: TraceLevel,
    projector: Projector,
    scratch: Scratch,
    frames: Vec<TraceFrame>,
}

impl FrameTap {
    pub fn new(level: TraceLevel) -> FrameTap {
        FrameTap { level, projector: Projector::default(), scratch: Scratch::default(), frames: Vec::new() }
    }

    pub fn frames(&self) -> &[TraceFrame] {
        &self.frames
    }

    pub fn into_frames(self) -> Vec<TraceFrame> {
        self.frames
    }
}

impl Tap for FrameTap {
    fn wants(&self, p: TapPoint) -> bool {
        self.level != TraceLevel::Off && site_of(p).is_some()
    }

    fn record(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        let Some(site) = site_of(p) else { return };
        if n_tok == 0 || data.is_empty() {
            return;
        }
        if site == Site::Embd || self.frames.is_empty() {
            let forward = self.frames.len() as u32;
            self.frames.push(TraceFrame { forward, pos0: pos0 as u32, n_tok: n_tok as u32, sites: Vec::new() });
        }
        let width = data.len() / n_tok;
        let st = summary::summarize_site(self.level, site, pos0 as u32, n_tok, width, data, false, &mut self.projector, &mut self.scratch);
        if let Some(f) = self.frames.last_mut() {
            f.sites.push(st);
        }
    }
}
