//! The token choice on the device (`kernels/sample.cu`): `sampler::pick` from logits already in
//! device memory, so a decode step downloads 280 bytes instead of the vocabulary's logits and
//! the host does no per-token work over the vocabulary.
//!
//! The seen-token bitmap of the repetition penalty lives on the device and follows the history
//! the engine passes: each call marks only the ids added since the last one (the bitmap is
//! cleared when the history is not a continuation of what was marked).

use crate::backend::BackendError;
use crate::sampler::{exact, PickArgs, Picked};

use super::device::{dev_err, Arg, DevBuf, Gpu, PinnedBuf};

/// Alternatives the kernel reports at most (`PICK_TOPN`).
pub const TOPN_MAX: usize = 32;
/// Running sums of `exact::sum_exp` (`PICK_LANES`).
const LANES: usize = exact::LANES;
/// sizeof(PickOut): id, logit, max, n_top, sum, then TOPN_MAX ids and TOPN_MAX logits.
const OUT_BYTES: usize = 24 + 8 * TOPN_MAX;
/// Logits per pick_prepare block (`PICK_SPAN`), and the most blocks the vocabulary limit needs.
const SPAN: usize = 4096;
const PARTS_MAX: usize = exact::MAX_VOCAB / SPAN;
/// Bytes of one entry of the candidate list (`PickCand`: key, weight).
const CAND_BYTES: usize = 16;
/// The state buffer: PickState (16 bytes), then PARTS_MAX partial maxima (f32), keys (u64) and
/// top-n keys (TOPN_MAX u64 per span).
const PART_MAX_AT: usize = 16;
const PART_KEY_AT: usize = PART_MAX_AT + 4 * PARTS_MAX;
const PART_TOP_AT: usize = PART_KEY_AT + 8 * PARTS_MAX;
const STATE_BYTES: usize = PART_TOP_AT + 8 * TOPN_MAX * PARTS_MAX;

pub(crate) struct DevicePick {
    n_vocab: usize,
    seen: DevBuf,
    ids: DevBuf,
    ids_cap: usize,
    state: DevBuf,
    lanes: DevBuf,
    /// The candidate list of a sampled choice: its count (u32, padded to 16 bytes), then up to
    /// n_vocab entries (kernels/sample.cu's PickCand).
    cand: DevBuf,
    out: DevBuf,
    pin_ids: PinnedBuf,
    pin_out: PinnedBuf,
    /// The history the bitmap holds; `None` when its state is unknown (new, or after a failed
    /// launch), so that the next call clears it first.
    marked: Option<Vec<u32>>,
    /// The candidates pick_choose copies into shared memory (its dynamic shared memory holds
    /// that many entries); a longer list is searched in global memory.
    cap: usize,
}

impl DevicePick {
    pub fn new(gpu: &Gpu, n_vocab: usize, n_ctx: usize) -> Result<DevicePick, BackendError> {
        let words = n_vocab.div_ceil(32);
        let ids_cap = n_ctx.max(1);
        // Beside pick_choose's static shared memory (~14 KiB).
        let cap = (gpu.max_dynamic_smem.saturating_sub(16 << 10) / CAND_BYTES).min(n_vocab);
        Ok(DevicePick {
            n_vocab,
            seen: gpu.alloc(words * 4)?,
            ids: gpu.alloc(ids_cap * 4)?,
            ids_cap,
            state: gpu.alloc(STATE_BYTES)?,
            lanes: gpu.alloc(LANES * 8)?,
            cand: gpu.alloc(16 + CAND_BYTES * n_vocab.max(1))?,
            out: gpu.alloc(OUT_BYTES)?,
            pin_ids: gpu.pinned(ids_cap * 4)?,
            pin_out: gpu.pinned(OUT_BYTES)?,
            marked: None,
            cap,
        })
    }

    /// Whether the kernel computes `pick` for these arguments (else the host does).
    pub fn supports(&self, args: &PickArgs) -> bool {
        args.top_n <= TOPN_MAX && self.n_vocab <= exact::MAX_VOCAB && self.n_vocab > 0
    }

    /// Enqueues the choice from the logits at `logits` (one row) on the compute stream, then
    /// the download of its result; read it with [`DevicePick::result`] once the stream is
    /// synchronized. The pinned staging is reused: the caller synchronizes between calls.
    pub fn enqueue(&mut self, gpu: &Gpu, logits: u64, args: &PickArgs) -> Result<(), BackendError> {
        let stream = gpu.stream.cu_stream();
        // Should anything below fail, the bitmap's state is unknown: cleared next time.
        let mut marked = match self.marked.take() {
            Some(m) if args.history.starts_with(&m) => m,
            _ => {
                // SAFETY: `seen` holds words * 4 bytes; stream-ordered before the kernels below.
                unsafe { cudarc::driver::result::memset_d8_async(self.seen.ptr(), 0, self.seen.bytes(), stream) }
                    .map_err(|e| dev_err("clearing the seen bitmap", e))?;
                Vec::new()
            }
        };
        let new = &args.history[marked.len()..];
        if new.len() > self.ids_cap {
            self.ids_cap = new.len();
            self.ids = gpu.alloc(self.ids_cap * 4)?;
            self.pin_ids = gpu.pinned(self.ids_cap * 4)?;
        }
        if !new.is_empty() {
            let dst = self.pin_ids.u32s_mut(new.len());
            dst.copy_from_slice(new);
            let src: &[u32] = dst;
            // SAFETY: pinned source untouched until the caller synchronizes the stream.
            unsafe { cudarc::driver::result::memcpy_htod_async(self.ids.ptr(), src, stream) }.map_err(|e| dev_err("uploading history ids", e))?;
        }
        let p = args.params;
        let n = self.n_vocab as i32;
        gpu.set_overlap(false);
        let n_part = self.n_vocab.div_ceil(SPAN);
        let (part_max, part_key, part_top) = (self.state.at(PART_MAX_AT), self.state.at(PART_KEY_AT), self.state.at(PART_TOP_AT));
        let (cand_n, cand) = (self.cand.ptr(), self.cand.at(16));
        let top_n = args.top_n.min(self.n_vocab) as i32;
        gpu.launch("pick_mark", (1, 1, 1), 256, 0, &[Arg::I32(n), Arg::Ptr(self.seen.ptr()), Arg::Ptr(self.ids.ptr()), Arg::I32(new.len() as i32)])?;
        // pick_prepare's first arguments open pick_lanes' too.
        let head = [
            Arg::Ptr(logits),
            Arg::I32(n),
            Arg::Ptr(self.seen.ptr()),
            Arg::F32(p.temperature),
            Arg::F32(p.repetition_penalty),
            Arg::Ptr(part_max),
            Arg::Ptr(part_key),
        ];
        let prepare_args: Vec<Arg> = head.iter().copied().chain([Arg::I32(top_n), Arg::Ptr(part_top), Arg::Ptr(cand_n)]).collect();
        gpu.launch("pick_prepare", (n_part as u32, 1, 1), 1024, 0, &prepare_args)?;
        let lanes_args: Vec<Arg> = head
            .iter()
            .copied()
            .chain([Arg::I32(n_part as i32), Arg::Ptr(self.state.ptr()), Arg::Ptr(self.lanes.ptr()), Arg::Ptr(cand), Arg::Ptr(cand_n)])
            .collect();
        gpu.launch("pick_lanes", ((LANES / 256) as u32, 1, 1), 256, 0, &lanes_args)?;
        // The list is copied into shared memory only when sampling.
        let cap = if p.temperature > 0.0 { self.cap } else { 0 };
        gpu.launch(
            "pick_choose",
            (1, 1, 1),
            1024,
            (cap * CAND_BYTES) as u32,
            &[
                Arg::Ptr(logits),
                Arg::I32(n),
                Arg::F32(p.temperature),
                Arg::I32(p.top_k.min(i32::MAX as usize) as i32),
                Arg::F32(p.top_p),
                Arg::F32(p.min_p),
                Arg::U64(args.coin),
                Arg::I32(top_n),
                Arg::Ptr(self.state.ptr()),
                Arg::Ptr(self.lanes.ptr()),
                Arg::Ptr(part_top),
                Arg::I32(n_part as i32),
                Arg::Ptr(cand),
                Arg::Ptr(cand_n),
                Arg::I32(cap as i32),
                Arg::Ptr(self.out.ptr()),
            ],
        )?;
        marked.extend_from_slice(new);
        self.marked = Some(marked);
        let dst: &mut [u8] = pinned_bytes_mut(&mut self.pin_out);
        // SAFETY: written by pick_choose above (stream order); the caller synchronizes.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, self.out.ptr(), stream) }.map_err(|e| dev_err("downloading the choice", e))?;
        Ok(())
    }

    /// The result of the last [`DevicePick::enqueue`], after the stream was synchronized.
    pub fn result(&self) -> Picked {
        parse_out(self.pin_out.bytes_of(OUT_BYTES))
    }

    /// Forgets the bitmap (after an error, or when the cache is cleared by another path).
    pub fn invalidate(&mut self) {
        self.marked = None;
    }
}

fn pinned_bytes_mut(p: &mut PinnedBuf) -> &mut [u8] {
    let words = p.u32s_mut(OUT_BYTES / 4);
    // SAFETY: the same allocation viewed as bytes (u8 has no alignment or validity needs).
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, OUT_BYTES) }
}

/// Decodes `PickOut` (kernels/sample.cu).
fn parse_out(b: &[u8]) -> Picked {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let f32_at = |o: usize| f32::from_bits(u32_at(o));
    let n_top = (u32_at(12) as usize).min(TOPN_MAX);
    let top = (0..n_top).map(|i| (u32_at(24 + 4 * i), f32_at(24 + 4 * TOPN_MAX + 4 * i))).collect();
    Picked { id: u32_at(0), logit: f32_at(4), max: f32_at(8), sum: f64::from_bits(u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"))), top }
}

/// The device's sampled choice as plain Rust, step for step: pick_lanes' candidate list
/// (kernels/sample.cu's `PickCand`) and pick_choose's searches over it only, checked against
/// `sampler::sample` (the CPU's choice over the whole vocabulary) on rows that put the
/// candidate argument's edges to work: NaNs of both signs, infinities, ties, flat and peaked
/// rows, top-k past and below the list's length. The list is searched in an arbitrary order,
/// as the device's atomics leave it: reversed and rotated here, with the same answers.
#[cfg(test)]
mod tests {
    use crate::sampler::{draw_bits, exact, sample, tempered, SamplingParams};

    /// select_reaching: the key at which the running weight of `set`, largest key first, first
    /// reaches `thr`.
    fn reaching(set: impl Iterator<Item = (u64, u64)>, thr: u64) -> u64 {
        let mut v: Vec<(u64, u64)> = set.collect();
        v.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let mut cum = 0u64;
        v.iter()
            .find(|&&(_, w)| {
                cum += w;
                cum >= thr
            })
            .map(|&(k, _)| k)
            .expect("thr is at most the set's weight")
    }

    fn device_model(logits: &[f32], p: &SamplingParams, history: &[u32], coin: u64, order: usize) -> u32 {
        let l = tempered(logits, p, history);
        let n = l.len();
        let first_key = (0..n).map(|i| exact::key(l[i], i as u32)).max().expect("a row");
        if p.temperature == 0.0 {
            return exact::key_id(first_key);
        }
        let f = l[exact::key_id(first_key) as usize] as f64;
        let mut cand: Vec<(u64, u64)> = (0..n)
            .filter_map(|i| {
                let x = l[i] as f64 - f;
                (x >= -32.0).then(|| (exact::key(l[i], i as u32), exact::fixed_exp(x)))
            })
            .collect();
        match order {
            1 => cand.reverse(),
            2 if !cand.is_empty() => {
                let r = cand.len() / 3;
                cand.rotate_left(r)
            }
            _ => {}
        }
        let m = cand.len();
        let c = &cand;
        let floor = if p.top_k > 0 && p.top_k < n && m >= p.top_k { reaching(c.iter().map(|&(k, _)| (k, 1)), p.top_k as u64) } else { 0 };
        let total: u64 = c.iter().filter(|e| e.0 >= floor).map(|e| e.1).sum();
        if total == 0 {
            return exact::key_id(first_key);
        }
        let mut keep = floor;
        if p.top_p < 1.0 {
            let thr = exact::ceil_mul(p.top_p, total);
            keep = keep.max(reaching(c.iter().copied().filter(|&(k, w)| w > 0 && k >= floor), thr));
        }
        if p.min_p > 0.0 {
            let thr = exact::min_p_threshold(p.min_p);
            let b = c.iter().filter(|&&(k, w)| k >= floor && w < thr).map(|e| e.0).max().unwrap_or(0);
            if b > 0 {
                keep = keep.max(b + 1);
            }
        }
        let kept: u64 = c.iter().filter(|e| e.0 >= keep).map(|e| e.1).sum();
        let thr = exact::draw_threshold(coin, kept);
        exact::key_id(reaching(c.iter().copied().filter(|&(k, w)| w > 0 && k >= keep), thr))
    }

    struct Rng(u64);
    impl Rng {
        fn u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
        fn f32(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * (self.u32() as f32 / u32::MAX as f32)
        }
    }

    fn rows(rng: &mut Rng, n: usize) -> Vec<(&'static str, Vec<f32>)> {
        let normal: Vec<f32> = (0..n).map(|_| (rng.f32(-1.0, 1.0) + rng.f32(-1.0, 1.0) + rng.f32(-1.0, 1.0)) * 4.0).collect();
        let mut peaked: Vec<f32> = (0..n).map(|_| rng.f32(-12.0, 2.0)).collect();
        for _ in 0..3 {
            let i = rng.u32() as usize % n;
            peaked[i] = rng.f32(14.0, 18.0);
        }
        let tied: Vec<f32> = (0..n).map(|_| (rng.f32(-4.0, 4.0) * 2.0).round() / 2.0).collect();
        let flat: Vec<f32> = (0..n).map(|_| rng.f32(-0.5, 0.5)).collect();
        // Wide: most tokens fall below the list's bound (x < -32), a few straddle it.
        let wide: Vec<f32> = (0..n).map(|_| rng.f32(-80.0, 10.0)).collect();
        let mut odd: Vec<f32> = (0..n).map(|_| rng.f32(-40.0, 40.0)).collect();
        let specials = [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x7fc0_0001), f32::from_bits(0xffc0_0001)];
        for (j, &v) in specials.iter().enumerate() {
            if j < n {
                let i = rng.u32() as usize % n;
                odd[i] = v;
            }
        }
        let mut neg_nan: Vec<f32> = (0..n).map(|_| rng.f32(-5.0, 5.0)).collect();
        neg_nan[rng.u32() as usize % n] = -f32::NAN;
        let mut pos_inf: Vec<f32> = (0..n).map(|_| rng.f32(-5.0, 5.0)).collect();
        pos_inf[rng.u32() as usize % n] = f32::INFINITY;
        let mut zeros = vec![0.0f32; n];
        if n > 2 {
            zeros[1] = -0.0;
        }
        vec![
            ("model-like", normal),
            ("peaked", peaked),
            ("tied", tied),
            ("flat", flat),
            ("wide", wide),
            ("nan-inf", odd),
            ("neg-nan", neg_nan),
            ("pos-inf", pos_inf),
            ("all-equal", zeros),
        ]
    }

    #[test]
    fn the_candidate_list_decides_as_the_whole_vocabulary() {
        // Parameters drawn per case from each rule's edges and usual values.
        let temps = [0.0f32, 1e-4, 0.25, 0.7, 1.0, 2.0, 4.0];
        let top_ks = [0usize, 1, 7, 40, 200, 5000, 100_000_000];
        let top_ps = [1.0f32, 0.999, 0.95, 0.5, f32::from_bits(1)];
        let min_ps = [0.0f32, 0.01, 0.1, 0.3, 1.0];
        let penalties = [1.0f32, 0.8, 1.1, 2.0];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let pick_of = |len: usize, rng: &mut Rng| rng.u32() as usize % len;
        let mut cases = 0;
        for n in [1usize, 7, 300, 5000] {
            for (what, row) in rows(&mut rng, n) {
                let history: Vec<u32> = (0..12).map(|_| rng.u32() % (n as u32 + 2)).collect();
                for case in 0..24u64 {
                    let mut p = SamplingParams {
                        temperature: temps[pick_of(temps.len(), &mut rng)],
                        top_k: top_ks[pick_of(top_ks.len(), &mut rng)],
                        top_p: top_ps[pick_of(top_ps.len(), &mut rng)],
                        min_p: min_ps[pick_of(min_ps.len(), &mut rng)],
                        repetition_penalty: penalties[pick_of(penalties.len(), &mut rng)],
                    };
                    if case < 2 {
                        // No cut: the draw reaches the smallest weights of the whole list.
                        p = SamplingParams { temperature: [1.0, 0.7][case as usize], ..SamplingParams::default() };
                    }
                    // The last coin draws the kept list's end, where the smallest weights decide.
                    for coin in [draw_bits(case, n as u64), 0, (1 << 53) - 1] {
                        let want = sample(&row, &p, &history, coin);
                        for order in 0..3 {
                            assert_eq!(device_model(&row, &p, &history, coin, order), want, "n={n} {what} {p:?} coin {coin} order {order}");
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 9 * 24 * 3);
    }
}
