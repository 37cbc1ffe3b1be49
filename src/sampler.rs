//! Token sampling as a pure function of (logits, parameters, history, random draw).
//!
//! Order, as the earlier worker's API defines it: temperature → repetition penalty → top-k →
//! top-p → min-p → draw. Temperature 0 is greedy: argmax of the penalized logits, ties to the
//! lowest id. The sampler never owns a random generator: [`draw`] derives the coin for
//! generated token `i` from `(seed, i)` with ChaCha20, so no result depends on earlier
//! requests, timing or threads.

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

/// The random draw for generated token `index` of a request seeded with `seed`: a uniform
/// value in [0, 1) with 53 random bits, from the ChaCha20 stream keyed by the seed with the
/// token index as stream id. A documented, stable algorithm: recordings replay for years.
pub fn draw(seed: u64, index: u64) -> f64 {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(b"worker-o");
    let mut rng = ChaCha20Rng::from_seed(key);
    rng.set_stream(index);
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
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

/// Samples one token. `history` is every token already in the context (prompt and generated),
/// for the repetition penalty; `coin` is [`draw`]`(seed, index)`.
pub fn sample(logits: &[f32], params: &SamplingParams, history: &[u32], coin: f64) -> u32 {
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
    if t == 0.0 {
        return argmax(&l);
    }
    // Candidates sorted by logit descending, ties by id ascending: a total, reproducible order.
    let mut cand: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 && params.top_k < cand.len() {
        cand.truncate(params.top_k);
    }
    let probs = softmax_f64(&cand);
    let mut keep = cand.len();
    #[cfg(feature = "fault-injection")]
    let on_logits = TOP_P_ON_LOGITS.with(|c| c.get());
    #[cfg(not(feature = "fault-injection"))]
    let on_logits = false;
    if params.top_p < 1.0 {
        let mut cum = 0.0f64;
        for (i, p) in probs.iter().enumerate() {
            // The planted fault sums raw logits instead of probabilities.
            cum += if on_logits { cand[i].1 as f64 } else { *p };
            if cum >= params.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    if params.min_p > 0.0 {
        let threshold = probs[0] * params.min_p as f64;
        keep = keep.min(probs.iter().take_while(|&&p| p >= threshold).count().max(1));
    }
    let kept = &probs[..keep];
    let total: f64 = kept.iter().sum();
    let target = coin * total;
    let mut cum = 0.0f64;
    for (i, p) in kept.iter().enumerate() {
        cum += p;
        if target < cum {
            return cand[i].0;
        }
    }
    cand[keep - 1].0
}

/// Index of the largest value, the lowest index on ties.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax_f64(cand: &[(u32, f32)]) -> Vec<f64> {
    let max = cand.first().map(|c| c.1 as f64).unwrap_or(0.0);
    let e: Vec<f64> = cand.iter().map(|c| (c.1 as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// log-softmax of `logits` (temperature 1) at `ids`, and the `k` most likely tokens with
/// their log-probabilities (ties to the lowest id). For `logprobs` reporting.
pub fn log_probs(logits: &[f32], id: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    let lp = |i: u32| (logits[i as usize] as f64 - lse) as f32;
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        idx.truncate(k);
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        top = idx.into_iter().map(|i| (i, lp(i))).collect();
    }
    (lp(id), top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_breaks_ties_to_lowest_id() {
        assert_eq!(sample(&[1.0, 3.0, 3.0, 2.0], &SamplingParams::greedy(), &[], 0.99), 1);
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
            assert_eq!(sample(&[0.1, 2.0, 1.9, -1.0], &p, &[], draw(5, i)), 1);
        }
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_p() {
        // probs ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps two tokens.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let p = SamplingParams { top_p: 0.7, ..Default::default() };
        let picked: std::collections::BTreeSet<u32> = (0..500).map(|i| sample(&logits, &p, &[], draw(1, i))).collect();
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [3.0, 2.0, 1.0, 0.0];
        let p = SamplingParams { min_p: 0.3, ..Default::default() };
        let picked: std::collections::BTreeSet<u32> = (0..500).map(|i| sample(&logits, &p, &[], draw(2, i))).collect();
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn repetition_penalty_applies_to_seen_tokens_once() {
        let p = SamplingParams { temperature: 0.0, repetition_penalty: 2.0, ..Default::default() };
        // token 0 (logit 3) penalized to 1.5 < 2.0: argmax moves to token 1.
        assert_eq!(sample(&[3.0, 2.0], &p, &[0, 0, 0], 0.5), 1);
        // negative logits are multiplied: -1 -> -2 keeps token 1 ahead.
        assert_eq!(sample(&[-1.0, -1.5], &p, &[0], 0.5), 1);
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
}
