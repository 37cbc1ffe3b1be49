//! The forward pass on the device, in the data-flow order of `backend::cpu::CpuBackend`: the
//! launch sequence for one chunk of positions, the decode-step CUDA graphs, and the trace taps.
//!
//! One chunk is: upload ids and pos0 (one host-to-device copy), then only kernels, then one
//! download of the requested logits rows (compute stream) and one of the trace slots (copy
//! stream, after an event), both into pinned memory. Nothing synchronizes in between, except in
//! the debug mode that serves taps other than Embd / LOut / ResultNorm / Logits.

use std::collections::BTreeMap;

use cudarc::driver::sys;

use super::decode::StepBuffers;
use super::device::{dev_err, Arg, Gpu};
use super::launch::{launch_embedding, launch_matvec, mma_fuses, mma_tokens, Epilogue, NormIn, MV_ROWS};
use super::ops::launch_attention;
use super::weights::{DevMatrix, Segment};
use super::{Act, CudaBackend, SendGraph, MAX_BATCH};
use crate::backend::cpu::kquant::QK_K;
use crate::backend::cpu::ops::RopeKind;
use crate::backend::cpu::quant::QK;
use crate::backend::{BackendError, LogitRows, Tap, TapPoint};
use crate::sampler::PickArgs;

const F32: usize = 4;

/// `m` applied to rows `row0..row0 + n_tok` of `act` (width m.n_in).
#[allow(clippy::too_many_arguments)]
fn matvec_act(gpu: &Gpu, m: &DevMatrix, act: &Act, row0: usize, n_tok: usize, out: u64, out_stride: usize, epi: Epilogue) -> Result<(), BackendError> {
    matvec_norm(gpu, m, act, row0, n_tok, out, out_stride, epi, None)
}

/// As `matvec_act`, optionally normalizing the input inside the kernel (`act` then unused).
#[allow(clippy::too_many_arguments)]
fn matvec_norm(
    gpu: &Gpu,
    m: &DevMatrix,
    act: &Act,
    row0: usize,
    n_tok: usize,
    out: u64,
    out_stride: usize,
    epi: Epilogue,
    norm: Option<NormIn>,
) -> Result<(), BackendError> {
    let n_in = m.n_in;
    if m.is_raw_quant() {
        assert!(norm.is_none(), "fused norms need repacked weights");
        return launch_matvec_raw(gpu, m, act, row0, n_tok, out, out_stride, epi);
    }
    launch_matvec(
        gpu,
        m,
        act.f32 + (row0 * n_in * F32) as u64,
        act.aq + (row0 * n_in) as u64,
        act.ads + (row0 * n_in / QK * 8) as u64,
        n_tok,
        out,
        out_stride,
        epi,
        norm,
    )
}

/// The product of a matrix kept in its GGUF layout (`kernels/kquant.cu`): rows
/// `row0..row0 + n_tok` of `act`, as the Q8_1 rows already there (Q5_0, Q5_1, IQ4_NL: their
/// `vec_dot_type` is Q8_0 or Q8_1, whose quants and d are the same) or quantized to Q8_K from its
/// f32 rows first (the k-quants); `Store` or `Add` only.
#[allow(clippy::too_many_arguments)]
fn launch_matvec_raw(gpu: &Gpu, m: &DevMatrix, act: &Act, row0: usize, n_tok: usize, out: u64, out_stride: usize, epi: Epilogue) -> Result<(), BackendError> {
    let (mode, tap) = epi.mode();
    assert!(mode <= 1, "{epi:?}: fused epilogues need repacked weights");
    let n_in = m.n_in;
    let mut args = vec![Arg::Ptr(m.qs), Arg::I32(m.row_bytes() as i32)];
    if m.ty.block_size() == QK_K {
        let k = act.k8;
        super::ops::quantize_q8_k_dev(gpu, act.f32 + (row0 * n_in * F32) as u64, k.aq, k.ad, k.bs, n_tok, n_in)?;
        args.extend([Arg::Ptr(k.aq), Arg::Ptr(k.ad), Arg::Ptr(k.bs)]);
    } else {
        args.extend([Arg::Ptr(act.aq + (row0 * n_in) as u64), Arg::Ptr(act.ads + (row0 * n_in / QK * 8) as u64)]);
    }
    args.extend([Arg::Ptr(out), Arg::I32(n_in as i32), Arg::I32(m.n_out as i32), Arg::Ptr(tap), Arg::I32(out_stride as i32), Arg::I32(mode)]);
    gpu.launch(m.kernel(), (m.n_out.div_ceil(16) as u32, n_tok as u32, 1), 128, 0, &args)
}

fn matvec_group(gpu: &Gpu, segs: &[Segment], act: &Act, n_tok: usize, out: u64, out_stride: usize) -> Result<(), BackendError> {
    for s in segs {
        matvec_act(gpu, &s.m, act, 0, n_tok, out + (s.out_offset * F32) as u64, out_stride, Epilogue::Store)?;
    }
    Ok(())
}

fn debug_points(l: usize) -> [TapPoint; 14] {
    use TapPoint::*;
    [AttnNorm(l), Q(l), K(l), V(l), QRope(l), KRope(l), KqvOut(l), AttnOut(l), FfnInp(l), FfnNorm(l), FfnGate(l), FfnUp(l), FfnSwiglu(l), FfnOut(l)]
}

/// Collects a chunked call's taps so each point is recorded once, as the CPU backend does.
struct Buffered<'a> {
    inner: &'a mut dyn Tap,
    data: BTreeMap<TapPoint, (usize, usize, Vec<f32>)>,
}

impl Tap for Buffered<'_> {
    fn wants(&self, p: TapPoint) -> bool {
        self.inner.wants(p)
    }
    fn record(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        let e = self.data.entry(p).or_insert((pos0, 0, Vec::new()));
        e.1 += n_tok;
        e.2.extend_from_slice(data);
    }
}

impl CudaBackend {
    /// The pass over `tokens` in chunks of at most MAX_BATCH positions; with `pick`, the last
    /// row's token is chosen on the device (into `self.picked`) and the logits are downloaded
    /// only when the tap wants them (else the returned rows are empty).
    pub(super) fn forward_chunks(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        rows: LogitRows,
        tap: &mut dyn Tap,
        pick: Option<&PickArgs>,
    ) -> Result<Vec<f32>, BackendError> {
        if tokens.len() <= MAX_BATCH {
            return self.run_chunk(tokens, pos0, rows, tap, pick);
        }
        let mut buffered = Buffered { inner: tap, data: BTreeMap::new() };
        let mut logits = Vec::new();
        let n_chunks = tokens.len().div_ceil(MAX_BATCH);
        for (i, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let r = match rows {
                LogitRows::Last if i + 1 < n_chunks => LogitRows::None,
                other => other,
            };
            let last = i + 1 == n_chunks;
            logits.extend(self.run_chunk(chunk, pos0 + i * MAX_BATCH, r, &mut buffered, if last { pick } else { None })?);
        }
        for (p, (p0, n, data)) in std::mem::take(&mut buffered.data) {
            buffered.inner.record(p, p0, n, &data);
        }
        Ok(logits)
    }

    fn run_chunk(&mut self, tokens: &[u32], pos0: usize, rows: LogitRows, tap: &mut dyn Tap, pick: Option<&PickArgs>) -> Result<Vec<f32>, BackendError> {
        let c = self.model.config.clone();
        let n = tokens.len();
        let (first, count) = match rows {
            LogitRows::All => (0, n),
            LogitRows::Last => (n - 1, 1),
            LogitRows::None => (n, 0),
        };
        let debug = (0..c.n_layers).any(|l| debug_points(l).iter().any(|&p| tap.wants(p)));
        let trace = !debug && (tap.wants(TapPoint::Embd) || tap.wants(TapPoint::ResultNorm) || (0..c.n_layers).any(|l| tap.wants(TapPoint::LOut(l))));
        // gemma3 runs per op and serves every tap by downloading it after its kernel.
        let gemma = c.arch == crate::model::Arch::Gemma3;
        let gemma_taps = gemma
            && (tap.wants(TapPoint::InpScaled)
                || (0..c.n_layers).any(|l| {
                    [TapPoint::QNorm(l), TapPoint::KNorm(l), TapPoint::AttnPostNorm(l), TapPoint::FfnGeglu(l), TapPoint::FfnPostNorm(l)]
                        .iter()
                        .any(|&p| tap.wants(p))
                }));
        let (debug, trace) = if gemma && (debug || trace || gemma_taps) { (true, false) } else { (debug, trace) };

        // Upload pos0 and the ids (the only host-to-device copy of a step).
        {
            let io = self.pinned.io.i32s_mut(4 + n);
            io[..4].copy_from_slice(&[pos0 as i32, self.barrier_base as i32, self.ll_epoch as i32, 0]);
            for (d, &t) in io[4..].iter_mut().zip(tokens) {
                *d = t as i32;
            }
            let io: &[i32] = io;
            // SAFETY: pinned source stays untouched until the stream is synchronized below.
            unsafe { cudarc::driver::result::memcpy_htod_async(self.scratch.io, io, self.gpu.stream.cu_stream()) }.map_err(|e| dev_err("uploading ids", e))?;
        }

        if let (true, Ok(p)) = (n == 1 && !debug && self.use_persistent, &self.persistent) {
            // Moved whether or not the launch succeeds: a failed launch poisons the context.
            self.barrier_base = self.barrier_base.wrapping_add(p.counter_advance());
            self.ll_epoch = self.ll_epoch.wrapping_add(p.epoch_advance());
        }
        if debug {
            self.encode(n, first, count, false, Some(&mut *tap))?;
            self.n_cached = pos0 + n;
        } else if self.use_graphs && self.graph_for(n, first, count, trace)? {
            self.graphs[&(n, first, count, trace)].0.launch().map_err(|e| dev_err("graph launch", e))?;
        } else {
            self.encode(n, first, count, trace, None)?;
        }

        let n_vocab = c.n_vocab;
        let slots = c.n_layers + 2;
        let stream = self.gpu.stream.cu_stream();
        let picking = match pick {
            Some(args) if count == 1 => {
                self.pick.enqueue(&self.gpu, self.scratch.logits, args)?;
                true
            }
            _ => false,
        };
        let download = count > 0 && (!picking || tap.wants(TapPoint::Logits));
        if download {
            let need = count * n_vocab * F32;
            if self.pinned.logits.as_ref().is_none_or(|p| p.bytes() < need) {
                self.pinned.logits = Some(self.gpu.pinned(need)?);
            }
            let dst = self.pinned.logits.as_mut().expect("allocated above").f32s_mut(count * n_vocab);
            // SAFETY: device range written by the logits matvec above; synchronized below.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, self.scratch.logits, stream) }.map_err(|e| dev_err("downloading logits", e))?;
        }
        if trace {
            let need = slots * n * c.dim * F32;
            if self.pinned.tap.as_ref().is_none_or(|p| p.bytes() < need) {
                self.pinned.tap = Some(self.gpu.pinned(need)?);
            }
            self.event.record(&self.gpu.stream).map_err(|e| dev_err("event record", e))?;
            self.gpu.copy_stream.wait(&self.event).map_err(|e| dev_err("stream wait", e))?;
            let dst = self.pinned.tap.as_mut().expect("allocated above").f32s_mut(slots * n * c.dim);
            // SAFETY: ordered after the pass by the event; synchronized below.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, self.scratch.tap, self.gpu.copy_stream.cu_stream()) }
                .map_err(|e| dev_err("downloading trace", e))?;
        }
        self.gpu.sync()?;
        self.gpu.copy_stream.synchronize().map_err(|e| dev_err("copy stream synchronize", e))?;
        self.n_cached = pos0 + n;

        if trace {
            let data = self.pinned.tap.as_ref().expect("allocated above").f32s(slots * n * c.dim);
            let slot = |s: usize| &data[s * n * c.dim..(s + 1) * n * c.dim];
            if tap.wants(TapPoint::Embd) {
                tap.record(TapPoint::Embd, pos0, n, slot(0));
            }
            for l in 0..c.n_layers {
                if tap.wants(TapPoint::LOut(l)) {
                    tap.record(TapPoint::LOut(l), pos0, n, slot(1 + l));
                }
            }
            if tap.wants(TapPoint::ResultNorm) {
                tap.record(TapPoint::ResultNorm, pos0, n, slot(slots - 1));
            }
        }
        if picking {
            self.picked = Some(self.pick.result());
        }
        if !download {
            return Ok(Vec::new());
        }
        let logits = self.pinned.logits.as_ref().expect("allocated above").f32s(count * n_vocab).to_vec();
        if tap.wants(TapPoint::Logits) {
            tap.record(TapPoint::Logits, pos0 + first, count, &logits);
        }
        Ok(logits)
    }

    /// Whether a captured graph runs this step, capturing it first where that pays: a decode
    /// step (one position) always, a prefill chunk when its shape is seen the second time (a
    /// capture costs more than the launches it saves once, so a prompt length met once is
    /// launched kernel by kernel), keeping the newest `PREFILL_GRAPHS` of them.
    fn graph_for(&mut self, n: usize, first: usize, count: usize, trace: bool) -> Result<bool, BackendError> {
        let key = (n, first, count, trace);
        if self.graphs.contains_key(&key) {
            return Ok(true);
        }
        if n > 1 {
            if self.prefill_seen.insert(key) {
                if self.prefill_seen.len() > 4 * super::PREFILL_GRAPHS {
                    self.prefill_seen.clear();
                }
                return Ok(false);
            }
            while self.prefill_order.len() >= super::PREFILL_GRAPHS {
                if let Some(old) = self.prefill_order.pop_front() {
                    self.graphs.remove(&old);
                }
            }
            self.prefill_order.push_back(key);
        }
        let g = self.capture(n, first, count, trace)?;
        self.graphs.insert(key, g);
        Ok(true)
    }

    /// Captures the launch sequence of one step of `n` positions into a CUDA graph.
    fn capture(&mut self, n: usize, first: usize, count: usize, trace: bool) -> Result<SendGraph, BackendError> {
        let stream = self.gpu.stream.clone();
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| dev_err("begin capture", e))?;
        let encoded = self.encode(n, first, count, trace, None);
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        encoded?;
        let graph = graph.map_err(|e| dev_err("end capture", e))?.ok_or_else(|| BackendError::Device("empty CUDA graph".into()))?;
        Ok(SendGraph(graph))
    }

    /// Issues every kernel of one chunk of `n` positions. With `dbg`, downloads and records
    /// each intermediate the tap wants right after the kernel that produced it (slow).
    fn encode(&self, n: usize, first: usize, count: usize, trace: bool, mut dbg: Option<&mut dyn Tap>) -> Result<(), BackendError> {
        let c = &self.model.config;
        let g = &self.gpu;
        let s = &self.scratch;
        let dim = c.dim;
        let tokens = s.io + 16;
        let tap_slot = |slot: usize| if trace { s.tap + (slot * n * dim * F32) as u64 } else { 0 };
        let pos0 = self.n_cached;
        let emit = |dbg: &mut Option<&mut dyn Tap>, p: TapPoint, ptr: u64, width: usize, bias: u64| -> Result<(), BackendError> {
            if let Some(tap) = dbg.as_deref_mut() {
                if tap.wants(p) {
                    let mut v: Vec<f32> = g.read(ptr, n * width)?;
                    if bias != 0 {
                        let b: Vec<f32> = g.read(bias, width)?;
                        for row in v.chunks_exact_mut(width) {
                            crate::backend::cpu::ops::add(row, &b);
                        }
                    }
                    tap.record(p, pos0, n, &v);
                }
            }
            Ok(())
        };
        let strided = |ptr: u64, stride: usize, offset: usize, width: usize| -> Result<Vec<f32>, BackendError> {
            let all: Vec<f32> = g.read(ptr, n * stride)?;
            Ok(all.chunks_exact(stride).flat_map(|r| r[offset..offset + width].iter().copied()).collect())
        };

        launch_embedding(g, &self.embd, tokens, s.x, tap_slot(0), n)?;
        emit(&mut dbg, TapPoint::Embd, s.x, dim, 0)?;
        if c.arch == crate::model::Arch::Gemma3 {
            super::ops::launch_scale(g, s.x, (dim as f32).sqrt(), n * dim)?;
            emit(&mut dbg, TapPoint::InpScaled, s.x, dim, 0)?;
            g.set_overlap(dbg.is_none());
            let r = self.encode_gemma3_layers(n, first, count, dbg, pos0, emit, strided);
            g.set_overlap(false);
            return r;
        }
        if let (true, true, Ok(p)) = (n == 1 && dbg.is_none(), self.use_persistent, &self.persistent) {
            let c = &self.model.config;
            let bufs = StepBuffers {
                x: s.x,
                q: s.q,
                attn: (s.attn.f32, s.attn.aq, s.attn.ads),
                sw: (s.sw.f32, s.sw.aq, s.sw.ads),
                xn: (s.xn.f32, s.xn.aq, s.xn.ads),
                tap: tap_slot(0),
                params: s.io,
            };
            p.launch(g, c, c.n_layers, self.output_norm, self.rope_table, &bufs)?;
            if count > 0 {
                g.set_overlap(true);
                let r = matvec_act(g, &self.output, &s.xn, first, count, s.logits, c.n_vocab, Epilogue::Store);
                g.set_overlap(false);
                r?;
            }
            return Ok(());
        }
        // From here on only kernels follow kernels: let each overlap its predecessor's tail.
        g.set_overlap(dbg.is_none());
        let r = self.encode_layers(n, first, count, trace, dbg, tap_slot, pos0, emit, strided);
        g.set_overlap(false);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_layers(
        &self,
        n: usize,
        first: usize,
        count: usize,
        trace: bool,
        mut dbg: Option<&mut dyn Tap>,
        tap_slot: impl Fn(usize) -> u64,
        pos0: usize,
        emit: impl Fn(&mut Option<&mut dyn Tap>, TapPoint, u64, usize, u64) -> Result<(), BackendError>,
        strided: impl Fn(u64, usize, usize, usize) -> Result<Vec<f32>, BackendError>,
    ) -> Result<(), BackendError> {
        let _ = trace; // the trace slots are already resolved in `tap_slot`
        let c = &self.model.config;
        let g = &self.gpu;
        let s = &self.scratch;
        let (dim, kv_dim, hd, ffn) = (c.dim, c.kv_dim(), c.head_dim, c.ffn_dim);
        let qkv_w = dim + 2 * kv_dim;
        let params = s.io;
        let layer_kv = self.n_ctx * kv_dim * F32;
        for (l, lw) in self.layers.iter().enumerate() {
            let kc = self.k_cache.ptr() + (l * layer_kv) as u64;
            let vc = self.v_cache.ptr() + (l * layer_kv) as u64;
            // Attention block.
            // The fused epilogue rotates adjacent output rows: NORM pairs only (a NEOX pair's rows
            // lie head_dim/2 apart, in another block); NEOX models take rope_store_kv. The
            // tensor-core products (many positions) fuse it only with WORKER_ORCD_CUDA_MMA_EPI=1.
            let fuse_qkv = dbg.is_none()
                && c.rope_kind == RopeKind::Norm
                && lw.qkv.len() == 1
                && (!mma_tokens(n) || mma_fuses(&lw.qkv[0].m, n))
                && lw.qkv[0].m.is_quantized()
                && dim % MV_ROWS == 0
                && kv_dim % MV_ROWS == 0;
            // The norm is folded into the product only for one position: every block redoes it,
            // which is cheaper than a launch when decoding and dearer when prefilling.
            let fuse_norm = fuse_qkv && n == 1;
            if !fuse_norm {
                self.rmsnorm_q8(s.x, lw.attn_norm, &s.xn, 0, n)?;
                emit(&mut dbg, TapPoint::AttnNorm(l), s.xn.f32, dim, 0)?;
            }
            if fuse_qkv {
                let epi = Epilogue::Qkv {
                    q_out: s.q,
                    k_cache: kc,
                    v_cache: vc,
                    table: self.rope_table,
                    params,
                    bq: lw.bq,
                    bk: lw.bk,
                    bv: lw.bv,
                    dim,
                    kv_dim,
                    head_dim: hd,
                };
                let norm = fuse_norm.then_some(NormIn { x: s.x, w: lw.attn_norm, eps: c.rms_eps });
                matvec_norm(g, &lw.qkv[0].m, &s.xn, 0, n, s.qkv, qkv_w, epi, norm)?;
            } else {
                matvec_group(g, &lw.qkv, &s.xn, n, s.qkv, qkv_w)?;
                if let Some(tap) = dbg.as_deref_mut() {
                    for (p, off, w, b) in [(TapPoint::Q(l), 0, dim, lw.bq), (TapPoint::K(l), dim, kv_dim, lw.bk), (TapPoint::V(l), dim + kv_dim, kv_dim, lw.bv)]
                    {
                        if tap.wants(p) {
                            let mut v = strided(s.qkv, qkv_w, off, w)?;
                            if b != 0 {
                                let bias: Vec<f32> = g.read(b, w)?;
                                for row in v.chunks_exact_mut(w) {
                                    crate::backend::cpu::ops::add(row, &bias);
                                }
                            }
                            tap.record(p, pos0, n, &v);
                        }
                    }
                }
                g.launch(
                    "rope_store_kv",
                    (n as u32, 1, 1),
                    256,
                    0,
                    &[
                        Arg::Ptr(s.qkv),
                        Arg::Ptr(lw.bq),
                        Arg::Ptr(lw.bk),
                        Arg::Ptr(lw.bv),
                        Arg::Ptr(s.q),
                        Arg::Ptr(kc),
                        Arg::Ptr(vc),
                        Arg::Ptr(self.rope_table),
                        Arg::Ptr(params),
                        Arg::I32(dim as i32),
                        Arg::I32(kv_dim as i32),
                        Arg::I32(hd as i32),
                        Arg::I32((c.rope_kind == RopeKind::Neox) as i32),
                    ],
                )?;
            }
            emit(&mut dbg, TapPoint::QRope(l), s.q, dim, 0)?;
            emit(&mut dbg, TapPoint::KRope(l), kc + (pos0 * kv_dim * F32) as u64, kv_dim, 0)?;
            launch_attention(g, s.q, kc, vc, s.attn.f32, s.attn.aq, s.attn.ads, params, n, self.n_ctx, c.n_heads, c.n_kv_heads, hd)?;
            emit(&mut dbg, TapPoint::KqvOut(l), s.attn.f32, dim, 0)?;
            if dbg.is_some() {
                matvec_act(g, &lw.wo, &s.attn, 0, n, s.tmp, dim, Epilogue::Store)?;
                emit(&mut dbg, TapPoint::AttnOut(l), s.tmp, dim, 0)?;
                super::ops::launch_add(g, s.x, s.tmp, n * dim)?;
            } else {
                matvec_act(g, &lw.wo, &s.attn, 0, n, s.x, dim, Epilogue::Add { tap: 0 })?;
            }
            emit(&mut dbg, TapPoint::FfnInp(l), s.x, dim, 0)?;

            // Feed-forward block (SwiGLU).
            let fuse_swiglu =
                dbg.is_none() && lw.gate_up.len() == 1 && (!mma_tokens(n) || mma_fuses(&lw.gate_up[0].m, n)) && lw.gate_up[0].m.is_quantized() && ffn % QK == 0;
            let fuse_norm = fuse_swiglu && n == 1;
            if !fuse_norm {
                self.rmsnorm_q8(s.x, lw.ffn_norm, &s.xn, 0, n)?;
                emit(&mut dbg, TapPoint::FfnNorm(l), s.xn.f32, dim, 0)?;
            }
            if fuse_swiglu {
                // A k-quant `down` quantizes its input to Q8_K from the f32 rows: keep them.
                let f32_rows = if lw.down.is_raw_quant() && lw.down.ty.block_size() == QK_K { s.sw.f32 } else { 0 };
                let epi = Epilogue::Swiglu { out: f32_rows, aq: s.sw.aq, ads: s.sw.ads, ffn };
                let norm = fuse_norm.then_some(NormIn { x: s.x, w: lw.ffn_norm, eps: c.rms_eps });
                matvec_norm(g, &lw.gate_up[0].m, &s.xn, 0, n, s.gu, 2 * ffn, epi, norm)?;
            } else {
                matvec_group(g, &lw.gate_up, &s.xn, n, s.gu, 2 * ffn)?;
                if let Some(tap) = dbg.as_deref_mut() {
                    for (p, off) in [(TapPoint::FfnGate(l), 0), (TapPoint::FfnUp(l), ffn)] {
                        if tap.wants(p) {
                            let v = strided(s.gu, 2 * ffn, off, ffn)?;
                            tap.record(p, pos0, n, &v);
                        }
                    }
                }
                g.launch(
                    "swiglu_f32",
                    ((ffn / QK).div_ceil(4) as u32, n as u32, 1),
                    128,
                    0,
                    &[
                        Arg::Ptr(s.gu),
                        Arg::I32(2 * ffn as i32),
                        Arg::I32(ffn as i32),
                        Arg::Ptr(s.sw.f32),
                        Arg::Ptr(s.sw.aq),
                        Arg::Ptr(s.sw.ads),
                        Arg::I32(ffn as i32),
                    ],
                )?;
            }
            emit(&mut dbg, TapPoint::FfnSwiglu(l), s.sw.f32, ffn, 0)?;
            if dbg.is_some() {
                matvec_act(g, &lw.down, &s.sw, 0, n, s.tmp, dim, Epilogue::Store)?;
                emit(&mut dbg, TapPoint::FfnOut(l), s.tmp, dim, 0)?;
                super::ops::launch_add(g, s.x, s.tmp, n * dim)?;
            } else {
                matvec_act(g, &lw.down, &s.sw, 0, n, s.x, dim, Epilogue::Add { tap: tap_slot(1 + l) })?;
            }
            emit(&mut dbg, TapPoint::LOut(l), s.x, dim, 0)?;
        }
        self.rmsnorm_q8(s.x, self.output_norm, &s.xn, tap_slot(c.n_layers + 1), n)?;
        emit(&mut dbg, TapPoint::ResultNorm, s.xn.f32, dim, 0)?;
        if count > 0 {
            matvec_act(g, &self.output, &s.xn, first, count, s.logits, c.n_vocab, Epilogue::Store)?;
        }
        Ok(())
    }

    /// The gemma3 layers on the scaled embeddings in `s.x`, per op, in the order of
    /// `backend::cpu::gemma3` (its reference), then the final norm and the logits rows.
    #[allow(clippy::too_many_arguments)]
    fn encode_gemma3_layers(
        &self,
        n: usize,
        first: usize,
        count: usize,
        mut dbg: Option<&mut dyn Tap>,
        pos0: usize,
        emit: impl Fn(&mut Option<&mut dyn Tap>, TapPoint, u64, usize, u64) -> Result<(), BackendError>,
        strided: impl Fn(u64, usize, usize, usize) -> Result<Vec<f32>, BackendError>,
    ) -> Result<(), BackendError> {
        use super::ops::{launch_add, launch_attention_window, launch_geglu, launch_head_rmsnorm, launch_scale};
        let c = &self.model.config;
        let g = &self.gpu;
        let s = &self.scratch;
        let (dim, kv_dim, hd, ffn, qd) = (c.dim, c.kv_dim(), c.head_dim, c.ffn_dim, c.q_dim());
        let attn_scale = c.attn_scale.expect("gemma3 configs carry their attention scale");
        let qkv_w = qd + 2 * kv_dim;
        let layer_kv = self.n_ctx * kv_dim * F32;
        for (l, lw) in self.layers.iter().enumerate() {
            let gd = lw.gemma.expect("gemma3 layers carry their device norms");
            let kc = self.k_cache.ptr() + (l * layer_kv) as u64;
            let vc = self.v_cache.ptr() + (l * layer_kv) as u64;
            self.rmsnorm_q8(s.x, lw.attn_norm, &s.xn, 0, n)?;
            emit(&mut dbg, TapPoint::AttnNorm(l), s.xn.f32, dim, 0)?;
            matvec_group(g, &lw.qkv, &s.xn, n, s.qkv, qkv_w)?;
            let points = [
                (TapPoint::Q(l), TapPoint::QNorm(l), 0, qd),
                (TapPoint::K(l), TapPoint::KNorm(l), qd, kv_dim),
                (TapPoint::V(l), TapPoint::V(l), qd + kv_dim, kv_dim),
            ];
            let record = |dbg: &mut Option<&mut dyn Tap>, p: TapPoint, off: usize, w: usize| -> Result<(), BackendError> {
                if let Some(tap) = dbg.as_deref_mut() {
                    if tap.wants(p) {
                        let v = strided(s.qkv, qkv_w, off, w)?;
                        tap.record(p, pos0, n, &v);
                    }
                }
                Ok(())
            };
            for &(p, _, off, w) in &points {
                record(&mut dbg, p, off, w)?;
            }
            launch_head_rmsnorm(g, s.qkv, qkv_w, 0, n, c.n_heads, hd, gd.q_norm, c.rms_eps)?;
            launch_head_rmsnorm(g, s.qkv, qkv_w, qd, n, c.n_kv_heads, hd, gd.k_norm, c.rms_eps)?;
            for &(_, p, off, w) in &points[..2] {
                record(&mut dbg, p, off, w)?;
            }
            g.launch(
                "rope_store_kv",
                (n as u32, 1, 1),
                256,
                0,
                &[
                    Arg::Ptr(s.qkv),
                    Arg::Ptr(0),
                    Arg::Ptr(0),
                    Arg::Ptr(0),
                    Arg::Ptr(s.q),
                    Arg::Ptr(kc),
                    Arg::Ptr(vc),
                    Arg::Ptr(gd.rope_table),
                    Arg::Ptr(s.io),
                    Arg::I32(qd as i32),
                    Arg::I32(kv_dim as i32),
                    Arg::I32(hd as i32),
                    Arg::I32((c.rope_kind == RopeKind::Neox) as i32),
                ],
            )?;
            emit(&mut dbg, TapPoint::QRope(l), s.q, qd, 0)?;
            emit(&mut dbg, TapPoint::KRope(l), kc + (pos0 * kv_dim * F32) as u64, kv_dim, 0)?;
            // Q times f_attention_scale (llama.cpp's ggml_scale), then the softmax at scale 1.
            launch_scale(g, s.q, attn_scale, n * qd)?;
            launch_attention_window(g, s.q, (kc, vc), (s.attn.f32, s.attn.aq, s.attn.ads), s.io, n, self.n_ctx, (c.n_heads, c.n_kv_heads, hd), 1.0, gd.n_swa)?;
            emit(&mut dbg, TapPoint::KqvOut(l), s.attn.f32, qd, 0)?;
            matvec_act(g, &lw.wo, &s.attn, 0, n, s.tmp, dim, Epilogue::Store)?;
            emit(&mut dbg, TapPoint::AttnOut(l), s.tmp, dim, 0)?;
            self.rmsnorm_f32(s.tmp, gd.attn_post_norm, s.xn.f32, n)?;
            emit(&mut dbg, TapPoint::AttnPostNorm(l), s.xn.f32, dim, 0)?;
            launch_add(g, s.x, s.xn.f32, n * dim)?;
            emit(&mut dbg, TapPoint::FfnInp(l), s.x, dim, 0)?;

            self.rmsnorm_q8(s.x, lw.ffn_norm, &s.xn, 0, n)?;
            emit(&mut dbg, TapPoint::FfnNorm(l), s.xn.f32, dim, 0)?;
            matvec_group(g, &lw.gate_up, &s.xn, n, s.gu, 2 * ffn)?;
            if let Some(tap) = dbg.as_deref_mut() {
                for (p, off) in [(TapPoint::FfnGate(l), 0), (TapPoint::FfnUp(l), ffn)] {
                    if tap.wants(p) {
                        let v = strided(s.gu, 2 * ffn, off, ffn)?;
                        tap.record(p, pos0, n, &v);
                    }
                }
            }
            launch_geglu(g, s.gu, n, ffn, s.sw.f32, s.sw.aq, s.sw.ads, self.gelu_table)?;
            emit(&mut dbg, TapPoint::FfnGeglu(l), s.sw.f32, ffn, 0)?;
            matvec_act(g, &lw.down, &s.sw, 0, n, s.tmp, dim, Epilogue::Store)?;
            emit(&mut dbg, TapPoint::FfnOut(l), s.tmp, dim, 0)?;
            self.rmsnorm_f32(s.tmp, gd.ffn_post_norm, s.xn.f32, n)?;
            emit(&mut dbg, TapPoint::FfnPostNorm(l), s.xn.f32, dim, 0)?;
            launch_add(g, s.x, s.xn.f32, n * dim)?;
            emit(&mut dbg, TapPoint::LOut(l), s.x, dim, 0)?;
        }
        self.rmsnorm_q8(s.x, self.output_norm, &s.xn, 0, n)?;
        emit(&mut dbg, TapPoint::ResultNorm, s.xn.f32, dim, 0)?;
        if count > 0 {
            matvec_act(g, &self.output, &s.xn, first, count, s.logits, c.n_vocab, Epilogue::Store)?;
        }
        Ok(())
    }

    fn rmsnorm_f32(&self, x: u64, w: u64, out: u64, n: usize) -> Result<(), BackendError> {
        let c = &self.model.config;
        self.gpu.launch("rmsnorm_f32", (n as u32, 1, 1), 128, 0, &[Arg::Ptr(x), Arg::Ptr(w), Arg::Ptr(out), Arg::I32(c.dim as i32), Arg::F32(c.rms_eps)])
    }

    fn rmsnorm_q8(&self, x: u64, w: u64, out: &Act, tap: u64, n: usize) -> Result<(), BackendError> {
        let c = &self.model.config;
        self.gpu.launch(
            "rmsnorm_q8",
            (n as u32, 1, 1),
            128,
            0,
            &[Arg::Ptr(x), Arg::Ptr(w), Arg::Ptr(out.f32), Arg::Ptr(tap), Arg::Ptr(out.aq), Arg::Ptr(out.ads), Arg::I32(c.dim as i32), Arg::F32(c.rms_eps)],
        )
    }
}
