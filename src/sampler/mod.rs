//! Token sampling as a pure function of (logits, parameters, history, random draw).
//!
//! Order, as the earlier worker's API defines it: temperature → repetition penalty → top-k →
//! top-p → min-p → draw. Temperature 0 is greedy: argmax of the penalized logits, ties to the
//! lowest id. The sampler never owns a random generator: [`draw_bits`] derives the coin for
//! generated token `i` from `(seed, i)` with ChaCha20, so no result depends on earlier
//! requests, timing or threads.
//!
//! [`pick`] is what the engine calls: the token plus the statistics of its log-probability.
//! Its arithmetic ([`exact`]) is integer where order could matter and IEEE-only elsewhere, so
//! that `kernels/sample.cu` computes the same token and the same bits on the GPU without
//! sorting the vocabulary or reducing in index order.

pub mod exact;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// Sampling parameters, validated by [`SamplingParams::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy; at most 2.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 disables. In (0, 1].
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's; 0 disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of tokens already in the context; 1 disables.
    pub repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ParamError {
    pub field: &'static str,
    pub reason: String,
}

/// The smallest temperature above 0 (greedy): below it, logits divided by the temperature
/// overflow f32.
pub const MIN_TEMPERATURE: f32 = 1e-4;

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// Checks every field; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), ParamError> {
        let err = |field, reason: String| Err(ParamError { field, reason });
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return err("temperature", format!("{} is outside [0, 2]", self.temperature));
        }
        if self.temperature > 0.0 && self.temperature < MIN_TEMPERATURE {
            // logits / 1e-39 overflow to infinity, and the softmax of infinities is NaN.
            return err("temperature", format!("{} is between 0 and {MIN_TEMPERATURE}: use 0 for greedy sampling", self.temperature));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return err("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !(self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p)) {
            return err("min_p", format!("{} is outside [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return err("repetition_penalty", format!("{} is outside (0, 10]", self.repetition_penalty));
        }
        Ok(())
    }
}

/// The random draw for generated token `index` of a request seeded with `seed`: 53 random
/// bits (an integer below 2^53, read as the fraction `bits / 2^53` in [0, 1)), from the
/// ChaCha20 stream keyed by the seed with the token index as stream id. A documented, stable
/// algorithm: recordings replay for years.
pub fn draw_bits(seed: u64, index: u64) -> u64 {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(b"worker-o");
    let mut rng = ChaCha20Rng::from_seed(key);
    rng.set_stream(index);
    rng.next_u64() >> 11
}

/// [`draw_bits`] as the fraction in [0, 1) it stands for.
pub fn draw(seed: u64, index: u64) -> f64 {
    draw_bits(seed, index) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A fresh seed for a request that gave none (reported back so the run can be replayed).
pub fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() >> 11 // keep it exactly representable in JSON numbers (< 2^53)
}

#[cfg(feature = "fault-injection")]
thread_local! {
    // Planted fault for the replay harness's tests: top-p summing logits instead of
    // probabilities. Per thread, so it never leaks into tests running beside it.
    static TOP_P_ON_LOGITS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Plants (or clears) the top-p-on-logits fault for `sample` calls on the calling thread.
#[cfg(feature = "fault-injection")]
pub fn set_top_p_on_logits(on: bool) {
    TOP_P_ON_LOGITS.with(|c| c.set(on));
}

/// The logits after temperature and repetition penalty, in f32 (IEEE division and product).
pub fn tempered(logits: &[f32], params: &SamplingParams, history: &[u32]) -> Vec<f32> {
    let mut l: Vec<f32> = logits.to_vec();
    let t = params.temperature;
    if t > 0.0 {
        for v in &mut l {
            *v /= t;
        }
    }
    if params.repetition_penalty != 1.0 {
        let mut seen = vec![false; l.len()];
        for &id in history {
            if let Some(s) = seen.get_mut(id as usize) {
                if !*s {
                    *s = true;
                    let v = &mut l[id as usize];
                    *v = if *v > 0.0 { *v / params.repetition_penalty } else { *v * params.repetition_penalty };
                }
            }
        }
    }
    l
}

/// Samples one token. `history` is every token already in the context (prompt and generated),
/// for the repetition penalty; `coin` is [`draw_bits`]`(seed, index)`.
///
/// Candidates are ordered by tempered logit descending, ties by id ascending (`exact::key`).
/// Probabilities are integers (`exact::fixed_exp` of the logit minus the first candidate's),
/// so every total and running sum is exact: top-p keeps the shortest prefix whose running sum
/// reaches ⌈top_p · total⌉, min-p the prefix whose weights reach ⌈min_p · 2^44⌉, and the draw
/// takes the first kept candidate whose running sum exceeds `coin / 2^53` of the kept total.
pub fn sample(logits: &[f32], params: &SamplingParams, history: &[u32], coin: u64) -> u32 {
    let l = tempered(logits, params, history);
    if params.temperature == 0.0 {
        return argmax(&l);
    }
    #[cfg(feature = "fault-injection")]
    let on_logits = TOP_P_ON_LOGITS.with(|c| c.get());
    #[cfg(not(feature = "fault-injection"))]
    let on_logits = false;
    if params.top_k > 0 && params.top_k < l.len() {
        // The same first top_k of the order, without sorting the rest.
        return choose(&top_n(&l, params.top_k), params, coin, None, on_logits).expect("a whole candidate list decides");
    }
    // Every token is a candidate, but the rules read only a prefix of the order: sort the
    // largest 256, then 2,048, ..., until `choose` can decide on the prefix (the token sorting
    // them all gives; the planted fault always sorts all).
    let m = l[argmax(&l) as usize] as f64;
    let total: u64 = l.iter().map(|&v| exact::fixed_exp(v as f64 - m)).sum();
    let mut keys: Vec<u64> = l.iter().enumerate().map(|(i, &v)| exact::key(v, i as u32)).collect();
    let mut size = if on_logits { keys.len() } else { 256 };
    loop {
        let size_c = size.min(keys.len());
        if size_c < keys.len() {
            keys.select_nth_unstable_by(size_c - 1, |a, b| b.cmp(a));
        }
        let mut top = keys[..size_c].to_vec();
        top.sort_unstable_by(|a, b| b.cmp(a));
        let cand: Vec<(u32, f32)> = top.iter().map(|&k| (exact::key_id(k), l[exact::key_id(k) as usize])).collect();
        let prefix_of = (size_c < keys.len()).then_some(total);
        if let Some(id) = choose(&cand, params, coin, prefix_of, on_logits) {
            return id;
        }
        size = size_c * 8;
    }
}

/// The rules after top-k over candidates in order: top-p, min-p, the draw. `prefix_of`: when
/// `cand` is only the first part of the candidates, the total weight of all of them; then `None`
/// means the prefix does not decide (a rule reaches past it).
fn choose(cand: &[(u32, f32)], params: &SamplingParams, coin: u64, prefix_of: Option<u64>, on_logits: bool) -> Option<u32> {
    let m = cand[0].1 as f64;
    let weights: Vec<u64> = cand.iter().map(|c| exact::fixed_exp(c.1 as f64 - m)).collect();
    let total: u64 = prefix_of.unwrap_or_else(|| weights.iter().sum());
    if total == 0 {
        // Only when the first candidate is not finite (NaN or infinite logits).
        return Some(cand[0].0);
    }
    let partial = prefix_of.is_some();
    // How many candidates each rule keeps; `None`: the rule is off; `Some(usize::MAX)`: it
    // keeps more than the prefix holds (not yet known how many).
    let beyond = usize::MAX;
    let mut by_p = None;
    if params.top_p < 1.0 {
        if on_logits {
            // The planted fault sums raw logits instead of probabilities.
            let mut cum = 0.0f64;
            by_p = Some(cand.len());
            for (i, c) in cand.iter().enumerate() {
                cum += c.1 as f64;
                if cum >= params.top_p as f64 {
                    by_p = Some(i + 1);
                    break;
                }
            }
        } else {
            let thr = exact::ceil_mul(params.top_p, total);
            by_p = Some(first_reaching(&weights, thr).map_or(if partial { beyond } else { cand.len() }, |i| i + 1));
        }
    }
    let mut by_min = None;
    if params.min_p > 0.0 {
        let thr = exact::min_p_threshold(params.min_p);
        let run = weights.iter().take_while(|&&w| w >= thr).count();
        by_min = Some(if run == cand.len() && partial { beyond } else { run.max(1) });
    }
    let keep = match (by_p, by_min) {
        (None, None) => None,
        (Some(a), None) | (None, Some(a)) => Some(a),
        (Some(a), Some(b)) => Some(a.min(b)),
    };
    let (keep, kept_total) = match keep {
        Some(k) if k <= cand.len() => (k, weights[..k].iter().sum()),
        Some(_) => return None,
        None => (cand.len(), total),
    };
    // Without a cut the draw may land past a prefix; with one it lands inside the kept part.
    let uncut_prefix = partial && by_p.is_none() && by_min.is_none();
    let thr = exact::draw_threshold(coin, kept_total);
    match first_reaching(&weights[..keep], thr) {
        Some(i) => Some(cand[i].0),
        None if uncut_prefix => None,
        None => Some(cand[keep - 1].0),
    }
}

/// The first index whose running sum of `w` reaches `thr`.
fn first_reaching(w: &[u64], thr: u64) -> Option<usize> {
    let mut cum = 0u64;
    w.iter().position(|&x| {
        cum += x;
        cum >= thr
    })
}

/// The id of the first candidate in sampling order: the largest value by `total_cmp`, the
/// lowest id on ties.
pub fn argmax(v: &[f32]) -> u32 {
    let Some(best) = v.iter().map(|&x| exact::ord(x)).max() else { return 0 };
    v.iter().position(|&x| exact::ord(x) == best).unwrap_or(0) as u32
}

/// Everything the engine needs from the logits of one position, beyond them.
#[derive(Debug, Clone, Copy)]
pub struct PickArgs<'a> {
    pub params: &'a SamplingParams,
    /// Every token in the context (prompt and generated), for the repetition penalty.
    pub history: &'a [u32],
    /// [`draw_bits`] for the token being chosen.
    pub coin: u64,
    /// How many most likely alternatives to report.
    pub top_n: usize,
}

/// The chosen token and the statistics its log-probability and the reported alternatives
/// come from. What a backend that chooses on its device returns instead of the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    pub id: u32,
    /// The chosen token's raw logit.
    pub logit: f32,
    /// [`exact::max_logit`] of the raw logits.
    pub max: f32,
    /// [`exact::sum_exp`] of the raw logits.
    pub sum: f64,
    /// The `top_n` most likely tokens (raw logits, `exact::key` order): (id, logit).
    pub top: Vec<(u32, f32)>,
}

impl Picked {
    fn lse(&self) -> f64 {
        self.max as f64 + self.sum.ln()
    }

    /// The chosen token's log-probability (temperature 1, no penalty).
    pub fn logprob(&self) -> f32 {
        (self.logit as f64 - self.lse()) as f32
    }

    /// The alternatives with their log-probabilities, most likely first.
    pub fn top_logprobs(&self) -> Vec<(u32, f32)> {
        let lse = self.lse();
        self.top.iter().map(|&(id, l)| (id, (l as f64 - lse) as f32)).collect()
    }
}

/// Chooses the token and gathers its [`Picked`] statistics: the readable definition that
/// `kernels/sample.cu` computes on the GPU.
pub fn pick(logits: &[f32], args: &PickArgs) -> Picked {
    let id = sample(logits, args.params, args.history, args.coin);
    let max = exact::max_logit(logits);
    Picked { id, logit: logits[id as usize], max, sum: exact::sum_exp(logits, max), top: top_n(logits, args.top_n) }
}

/// The `k` largest logits in `exact::key` order (ties to the lowest id), as (id, logit).
pub fn top_n(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    // The best k keys so far, descending; a run of 64 logits whose largest is below the k-th
    // best cannot enter (the max over a run is a cheap pass), so most runs are skipped.
    let mut best: Vec<u64> = Vec::with_capacity(k + 1);
    for (r, run) in logits.chunks(64).enumerate() {
        if best.len() == k {
            let run_max = run.iter().map(|&x| exact::ord(x)).max().unwrap_or(0);
            if run_max < (best[k - 1] >> 32) as u32 {
                continue;
            }
        }
        for (j, &x) in run.iter().enumerate() {
            let key = exact::key(x, (r * 64 + j) as u32);
            if best.len() == k && key <= best[k - 1] {
                continue;
            }
            let at = best.partition_point(|&b| b > key);
            best.insert(at, key);
            best.truncate(k);
        }
    }
    best.into_iter().map(|kk| (exact::key_id(kk), logits[exact::key_id(kk) as usize])).collect()
}

/// log-softmax of `logits` (temperature 1) at `id`, and the `k` most likely tokens with their
/// log-probabilities (ties to the lowest id): [`Picked::logprob`] and
/// [`Picked::top_logprobs`] for logits already at hand.
pub fn log_probs(logits: &[f32], id: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = exact::max_logit(logits);
    let p = Picked { id, logit: logits[id as usize], max, sum: exact::sum_exp(logits, max), top: top_n(logits, k) };
    (p.logprob(), p.top_logprobs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_breaks_ties_to_lowest_id() {
        assert_eq!(sample(&[1.0, 3.0, 3.0, 2.0], &SamplingParams::greedy(), &[], 0), 1);
    }

    #[test]
    fn draw_is_a_pure_function_of_seed_and_index() {
        assert_eq!(draw(42, 7), draw(42, 7));
        assert_ne!(draw(42, 7), draw(42, 8));
        assert_ne!(draw(42, 7), draw(43, 7));
        assert!((0.0..1.0).contains(&draw(0, 0)));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams { top_k: 1, ..Default::default() };
        for i in 0..20 {
            assert_eq!(sample(&[0.1, 2.0, 1.9, -1.0], &p, &[], draw_bits(5, i)), 1);
        }
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_p() {
        // probs ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps two tokens.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let p = SamplingParams { top_p: 0.7, ..Default::default() };
        let picked: std::collections::BTreeSet<u32> = (0..500).map(|i| sample(&logits, &p, &[], draw_bits(1, i))).collect();
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [3.0, 2.0, 1.0, 0.0];
        let p = SamplingParams { min_p: 0.3, ..Default::default() };
        let picked: std::collections::BTreeSet<u32> = (0..500).map(|i| sample(&logits, &p, &[], draw_bits(2, i))).collect();
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn repetition_penalty_applies_to_seen_tokens_once() {
        let p = SamplingParams { temperature: 0.0, repetition_penalty: 2.0, ..Default::default() };
        // token 0 (logit 3) penalized to 1.5 < 2.0: argmax moves to token 1.
        assert_eq!(sample(&[3.0, 2.0], &p, &[0, 0, 0], 0), 1);
        // negative logits are multiplied: -1 -> -2 keeps token 1 ahead.
        assert_eq!(sample(&[-1.0, -1.5], &p, &[0], 0), 1);
    }

    #[test]
    fn validate_names_the_field() {
        let bad = SamplingParams { top_p: 0.0, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "top_p");
        let bad = SamplingParams { temperature: -0.1, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "temperature");
        for t in [1e-39f32, f32::MIN_POSITIVE, 1e-5] {
            let tiny = SamplingParams { temperature: t, ..Default::default() };
            assert_eq!(tiny.validate().unwrap_err().field, "temperature", "{t}");
        }
        assert!(SamplingParams { temperature: MIN_TEMPERATURE, ..Default::default() }.validate().is_ok());
    }

    #[test]
    fn log_probs_sum_to_one() {
        let logits = [1.0f32, 2.0, 3.0];
        let (lp, top) = log_probs(&logits, 2, 3);
        let total: f64 = top.iter().map(|t| (t.1 as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(top[0].0, 2);
        assert_eq!(lp, top[0].1);
    }

    /// The sampler before its arithmetic became integer (f64 softmax over the sorted
    /// candidates): the same token except where a coin lands within ~1e-13 of a boundary.
    fn sample_f64(logits: &[f32], params: &SamplingParams, history: &[u32], coin: f64) -> u32 {
        let l = tempered(logits, params, history);
        if params.temperature == 0.0 {
            return argmax(&l);
        }
        let mut cand: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if params.top_k > 0 && params.top_k < cand.len() {
            cand.truncate(params.top_k);
        }
        let max = cand[0].1 as f64;
        let e: Vec<f64> = cand.iter().map(|c| (c.1 as f64 - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let probs: Vec<f64> = e.into_iter().map(|x| x / sum).collect();
        let mut keep = cand.len();
        if params.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if params.min_p > 0.0 {
            let thr = probs[0] * params.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= thr).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let target = coin * total;
        let mut cum = 0.0;
        for (i, p) in probs[..keep].iter().enumerate() {
            cum += p;
            if target < cum {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }

    #[test]
    fn integer_probabilities_choose_what_the_f64_softmax_chose() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut f = |lo: f32, hi: f32| lo + (hi - lo) * (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        let mut same = 0;
        for case in 0..3000u64 {
            let n = 2 + (f(0.0, 200.0) as usize);
            let logits: Vec<f32> = (0..n).map(|_| f(-8.0, 8.0)).collect();
            let p = SamplingParams {
                temperature: f(0.05, 2.0),
                top_k: [0, 1, 5, 40][case as usize % 4],
                top_p: [1.0, 0.9, 0.5, 0.99][(case / 4) as usize % 4],
                min_p: [0.0, 0.05, 0.2][(case / 16) as usize % 3],
                repetition_penalty: [1.0, 1.3][(case / 48) as usize % 2],
            };
            let history: Vec<u32> = (0..10).map(|i| (i * 7 % n) as u32).collect();
            let bits = draw_bits(case, 0);
            let coin = bits as f64 / (1u64 << 53) as f64;
            assert_eq!(sample(&logits, &p, &history, bits), sample_f64(&logits, &p, &history, coin), "case {case}: {p:?}");
            same += 1;
        }
        assert_eq!(same, 3000);
    }

    #[test]
    fn picked_log_probs_match_a_plain_log_softmax() {
        let logits: Vec<f32> = (0..5000).map(|i| ((i * 37 % 101) as f32) * 0.1 - 3.0).collect();
        let p = pick(&logits, &PickArgs { params: &SamplingParams::greedy(), history: &[], coin: 0, top_n: 3 });
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        assert_eq!(p.id, argmax(&logits));
        assert!((p.logprob() as f64 - (logits[p.id as usize] as f64 - lse)).abs() < 1e-6);
        let top = p.top_logprobs();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].0, p.id);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    #[test]
    fn top_n_and_argmax_follow_the_key_order() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for case in 0..60 {
            let n = 1 + (rng.next_u32() % 3000) as usize;
            let mut v: Vec<f32> = (0..n).map(|_| ((rng.next_u32() % 64) as f32 - 32.0) * 0.25).collect();
            if case % 3 == 0 {
                v[rng.next_u32() as usize % n] = f32::NAN;
                v[rng.next_u32() as usize % n] = f32::NEG_INFINITY;
                v[rng.next_u32() as usize % n] = -0.0;
            }
            let mut keys: Vec<u64> = v.iter().enumerate().map(|(i, &x)| exact::key(x, i as u32)).collect();
            keys.sort_unstable_by(|a, b| b.cmp(a));
            for k in [1usize, 5, 32, 100] {
                let want: Vec<u32> = keys.iter().take(k).map(|&kk| exact::key_id(kk)).collect();
                let got: Vec<u32> = top_n(&v, k).into_iter().map(|t| t.0).collect();
                assert_eq!(got, want, "case {case} n {n} k {k}");
            }
            assert_eq!(argmax(&v), exact::key_id(keys[0]), "case {case}");
        }
    }

    #[test]
    fn sampling_a_sorted_prefix_chooses_what_sorting_all_chooses() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let mut f = |lo: f32, hi: f32| lo + (hi - lo) * (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        for case in 0..400u64 {
            let n = [300usize, 3000, 20_000][case as usize % 3];
            let spread = [2.0f32, 10.0, 40.0][(case / 3) as usize % 3];
            let logits: Vec<f32> = (0..n).map(|_| (f(-1.0, 1.0) * spread * 4.0).round() / 4.0).collect();
            let p = SamplingParams {
                temperature: [0.3f32, 1.0, 2.0][(case / 9) as usize % 3],
                top_k: 0,
                top_p: [1.0f32, 0.9, 0.5, 0.999][(case / 27) as usize % 4],
                min_p: [0.0f32, 0.01, 0.3][(case / 108) as usize % 3],
                repetition_penalty: 1.0,
            };
            let coin = [draw_bits(case, 3), 0, (1 << 53) - 1][case as usize % 3];
            // The reference: every candidate sorted, the rules over the whole list.
            let l = tempered(&logits, &p, &[]);
            let mut all: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
            all.sort_by_key(|&(i, v)| std::cmp::Reverse(exact::key(v, i)));
            let want = choose(&all, &p, coin, None, false).unwrap();
            assert_eq!(sample(&logits, &p, &[], coin), want, "case {case}: n {n} spread {spread} {p:?} coin {coin}");
        }
    }
}
