//! Error metrics for comparing a replay with a reference: NMSE, max abs error, cosine, KL.
//! Pure functions over slices, all accumulated in f64; no knowledge of models or files.

/// Normalized mean squared error `Σ(a-b)² / Σb²` of `a` against reference `b`.
/// Both zero gives 0; a nonzero error against a zero reference gives infinity; any NaN gives
/// NaN, which every bound check treats as a failure.
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    }
}

/// Largest `|a - b|`.
pub fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).fold(0.0, |m, e| if e.is_nan() || m.is_nan() { f64::NAN } else { m.max(e) })
}

/// Cosine similarity (1 for two zero vectors).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += (x as f64).powi(2);
        bb += (y as f64).powi(2);
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// `log Σ exp(x)`, in f64.
pub fn logsumexp(x: &[f32]) -> f64 {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// KL(p_ref ‖ p_ours) over full logit rows.
pub fn kl_full(ours: &[f32], reference: &[f32]) -> f64 {
    let (lo, lr) = (logsumexp(ours), logsumexp(reference));
    reference
        .iter()
        .zip(ours)
        .map(|(&r, &o)| {
            let lp = r as f64 - lr;
            lp.exp() * (lp - (o as f64 - lo))
        })
        .sum::<f64>()
        .max(0.0)
}

/// KL(p_ref ‖ p_ours) restricted to the reference's top-k tokens (the recordings keep the top
/// 32 ids and values plus the exact log-sum-exp at every position). The omitted tail holds
/// little mass for this model, so this is a close lower-side estimate of the full KL.
pub fn kl_topk(ours: &[f32], ref_ids: &[i32], ref_vals: &[f32], ref_lse: f64) -> f64 {
    let lo = logsumexp(ours);
    ref_ids
        .iter()
        .zip(ref_vals)
        .map(|(&id, &v)| {
            let lp = v as f64 - ref_lse;
            lp.exp() * (lp - (ours[id as usize] as f64 - lo))
        })
        .sum::<f64>()
        .max(0.0)
}

/// Every metric of one (position, tensor) comparison.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RowError {
    pub nmse: f64,
    pub max_abs: f64,
    pub cosine: f64,
}

pub fn row_error(ours: &[f32], reference: &[f32]) -> RowError {
    RowError { nmse: nmse(ours, reference), max_abs: max_abs(ours, reference), cosine: cosine(ours, reference) }
}

/// True when `e` is within `bound` (NaN never is).
pub fn within(e: f64, bound: f64) -> bool {
    e <= bound
}

/// A stable, readable rendering of an error for snapshots: one significant digit in
/// scientific notation, so float noise in the low bits never churns a snapshot; exact zero
/// stays `0`.
pub fn bucket(e: f64) -> String {
    if e == 0.0 {
        "0".into()
    } else if !e.is_finite() {
        format!("{e}")
    } else {
        format!("{e:.0e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_identical_rows() {
        let a = [1.0f32, -2.0, 3.0];
        assert_eq!(nmse(&a, &a), 0.0);
        assert_eq!(max_abs(&a, &a), 0.0);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-12);
        assert!(kl_full(&a, &a).abs() < 1e-12);
    }

    #[test]
    fn nan_fails_every_bound() {
        assert!(!within(nmse(&[f32::NAN], &[1.0]), 1.0));
        assert_eq!(bucket(1.26e-5), "1e-5");
        assert_eq!(bucket(0.0), "0");
    }
}
