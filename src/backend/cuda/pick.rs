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

pub(crate) struct DevicePick {
    n_vocab: usize,
    seen: DevBuf,
    ids: DevBuf,
    ids_cap: usize,
    state: DevBuf,
    lanes: DevBuf,
    weight: DevBuf,
    out: DevBuf,
    pin_ids: PinnedBuf,
    pin_out: PinnedBuf,
    /// The history the bitmap holds; `None` when its state is unknown (new, or after a failed
    /// launch), so that the next call clears it first.
    marked: Option<Vec<u32>>,
    /// pick_choose's dynamic shared memory: the seen bitmap, then the logits when `staged`;
    /// `None` when even the bitmap does not fit (then [`DevicePick::supports`] says no and the
    /// host chooses).
    smem: Option<(u32, bool)>,
}

impl DevicePick {
    pub fn new(gpu: &Gpu, n_vocab: usize, n_ctx: usize) -> Result<DevicePick, BackendError> {
        let words = n_vocab.div_ceil(32);
        let ids_cap = n_ctx.max(1);
        // The seen bitmap always, the logits too where they fit, beside pick_choose's static
        // shared memory (~14 KiB).
        let room = gpu.max_dynamic_smem.saturating_sub(16 << 10);
        let (bitmap, staged) = (words * 4, words * 4 + n_vocab * 4);
        let smem = if staged <= room {
            Some((staged as u32, true))
        } else if bitmap <= room {
            Some((bitmap as u32, false))
        } else {
            None
        };
        Ok(DevicePick {
            n_vocab,
            seen: gpu.alloc(words * 4)?,
            ids: gpu.alloc(ids_cap * 4)?,
            ids_cap,
            // PickState (16 bytes), then PARTS_MAX partial maxima (f32) and keys (u64).
            state: gpu.alloc(16 + 12 * PARTS_MAX)?,
            lanes: gpu.alloc(LANES * 8)?,
            weight: gpu.alloc(n_vocab * 8)?,
            out: gpu.alloc(OUT_BYTES)?,
            pin_ids: gpu.pinned(ids_cap * 4)?,
            pin_out: gpu.pinned(OUT_BYTES)?,
            marked: None,
            smem,
        })
    }

    /// Whether the kernel computes `pick` for these arguments (else the host does).
    pub fn supports(&self, args: &PickArgs) -> bool {
        args.top_n <= TOPN_MAX && self.n_vocab <= exact::MAX_VOCAB && self.n_vocab > 0 && self.smem.is_some()
    }

    /// Enqueues the choice from the logits at `logits` (one row) on the compute stream, then
    /// the download of its result; read it with [`DevicePick::result`] once the stream is
    /// synchronized. The pinned staging is reused: the caller synchronizes between calls.
    pub fn enqueue(&mut self, gpu: &Gpu, logits: u64, args: &PickArgs) -> Result<(), BackendError> {
        let stream = gpu.stream.cu_stream();
        let Some((smem, staged)) = self.smem else {
            return Err(BackendError::Device(format!("pick_choose: the seen bitmap of {} tokens exceeds shared memory", self.n_vocab)));
        };
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
        let (part_max, part_key) = (self.state.at(16), self.state.at(16 + 4 * PARTS_MAX));
        gpu.launch("pick_mark", (1, 1, 1), 256, 0, &[Arg::I32(n), Arg::Ptr(self.seen.ptr()), Arg::Ptr(self.ids.ptr()), Arg::I32(new.len() as i32)])?;
        // pick_prepare's arguments open pick_lanes' too.
        let head = [
            Arg::Ptr(logits),
            Arg::I32(n),
            Arg::Ptr(self.seen.ptr()),
            Arg::F32(p.temperature),
            Arg::F32(p.repetition_penalty),
            Arg::Ptr(part_max),
            Arg::Ptr(part_key),
        ];
        gpu.launch("pick_prepare", (n_part as u32, 1, 1), 1024, 0, &head)?;
        let lanes_args: Vec<Arg> = head
            .iter()
            .copied()
            .chain([Arg::I32(n_part as i32), Arg::Ptr(self.state.ptr()), Arg::Ptr(self.lanes.ptr()), Arg::Ptr(self.weight.ptr())])
            .collect();
        gpu.launch("pick_lanes", ((LANES / 256) as u32, 1, 1), 256, 0, &lanes_args)?;
        gpu.launch(
            "pick_choose",
            (1, 1, 1),
            1024,
            smem,
            &[
                Arg::Ptr(logits),
                Arg::I32(n),
                Arg::Ptr(self.seen.ptr()),
                Arg::F32(p.temperature),
                Arg::F32(p.repetition_penalty),
                Arg::I32(p.top_k.min(i32::MAX as usize) as i32),
                Arg::F32(p.top_p),
                Arg::F32(p.min_p),
                Arg::U64(args.coin),
                Arg::I32(args.top_n as i32),
                Arg::Ptr(self.state.ptr()),
                Arg::Ptr(self.lanes.ptr()),
                Arg::Ptr(self.weight.ptr()),
                Arg::Ptr(self.out.ptr()),
                Arg::I32(staged as i32),
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
