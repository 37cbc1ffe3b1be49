//! What a trace keeps of a hidden state: the exact-bytes hash, summary statistics, the fixed
//! random projection and the byte shuffle, all pure functions over `&[f32]`.
//!
//! Knows nothing of files, threads or the forward pass. Writer and replay both call these, so
//! a value computed now and one computed by a replay years later are comparable; every
//! definition here is part of the recording format.

use super::format::{RowStats, Site, SiteTrace, TraceLevel, Values};

/// Dimensions of the summary projection.
pub const PROJECTION_DIMS: usize = 32;
/// Seed of the summary projection ("worker-o" as a little-endian u64).
pub const PROJECTION_SEED: u64 = u64::from_le_bytes(*b"worker-o");

/// xxh3-128 (seed 0) of the row's f32 values as little-endian bytes, as 16 little-endian
/// bytes of the 128-bit hash. Equal hashes mean bit-identical rows (xxh3 is not
/// cryptographic: recordings are a debugging aid, not a security boundary).
pub fn row_hash(row: &[f32]) -> [u8; 16] {
    let mut bytes = Vec::with_capacity(row.len() * 4);
    le_bytes(row, &mut bytes);
    hash_bytes(&bytes)
}

/// The hash of bytes already in [`le_bytes`] form.
pub fn hash_bytes(bytes: &[u8]) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(bytes).to_le_bytes()
}

/// Appends the values' little-endian bytes to `out`.
pub fn le_bytes(values: &[f32], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + values.len() * 4, 0);
    for (dst, v) in out[start..].chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// RMS (over every value, in f64), max |x| over finite values and the count of non-finite
/// values.
pub fn row_stats(row: &[f32]) -> RowStats {
    let mut sumsq = 0.0f64;
    let mut absmax = 0.0f32;
    let mut nonfinite = 0u32;
    for &v in row {
        if v.is_finite() {
            absmax = absmax.max(v.abs());
        } else {
            nonfinite += 1;
        }
        sumsq += v as f64 * v as f64;
    }
    let rms = if row.is_empty() { 0.0 } else { (sumsq / row.len() as f64).sqrt() as f32 };
    RowStats { rms, absmax, nonfinite }
}

/// SplitMix64's output function (Steele, Lea and Flood 2014), as in `java.util.SplittableRandom`.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where coordinate `i` goes in the projection: bucket `h mod dims` and sign `+1` if the top
/// bit of `h` is 0 (else `-1`), with `h = splitmix64(seed ^ i)`.
pub fn projection_bucket(seed: u64, dims: usize, i: usize) -> (usize, f32) {
    let h = splitmix64(seed ^ i as u64);
    ((h % dims as u64) as usize, if h >> 63 == 0 { 1.0 } else { -1.0 })
}

/// The summary projection: a count sketch (a sparse random projection). Each coordinate is
/// added, with its random sign, to one of `dims` buckets:
/// `p_j(x) = Σ_{i: bucket(i) = j} sign(i) · x_i`, accumulated in f64 in index order. It is
/// linear, and `|p(x) - p(y)|²` is an unbiased estimate of `|x - y|²` with relative standard
/// deviation at most `sqrt(2 / dims)` (25% for 32), like a dense Gaussian projection, at one
/// addition per value instead of `dims`. Bucket codes are cached per row width.
pub struct Projector {
    seed: u64,
    dims: usize,
    /// width -> per coordinate: bucket in the low 7 bits, sign in the top bit.
    cache: Vec<(usize, Vec<u8>)>,
}

impl Default for Projector {
    fn default() -> Self {
        Projector::new(PROJECTION_SEED, PROJECTION_DIMS)
    }
}

impl Projector {
    /// `dims` is at most 128.
    pub fn new(seed: u64, dims: usize) -> Projector {
        Projector { seed, dims: dims.clamp(1, 128), cache: Vec::new() }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    fn codes(&mut self, width: usize) -> &[u8] {
        let at = match self.cache.iter().position(|(w, _)| *w == width) {
            Some(at) => at,
            None => {
                let codes = (0..width)
                    .map(|i| {
                        let (b, s) = projection_bucket(self.seed, self.dims, i);
                        b as u8 | if s < 0.0 { 0x80 } else { 0 }
                    })
                    .collect();
                self.cache.push((width, codes));
                self.cache.len() - 1
            }
        };
        &self.cache[at].1
    }

    /// Appends the `dims` projections of `row` to `out`.
    pub fn project(&mut self, row: &[f32], out: &mut Vec<f32>) {
        let dims = self.dims;
        let codes = self.codes(row.len());
        let mut acc = [0.0f64; 128];
        for (&x, &c) in row.iter().zip(codes) {
            // Negation by flipping the sign bit: exact, and branchless (a branch on a random
            // sign is mispredicted half the time, which made this loop 7 times slower).
            let v = f64::from_bits((x as f64).to_bits() ^ (((c >> 7) as u64) << 63));
            acc[(c & 0x7f) as usize] += v;
        }
        out.extend(acc[..dims].iter().map(|&a| a as f32));
    }
}

/// Estimated squared L2 distance between two rows from their projections.
pub fn projected_sq_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum()
}

/// Splits f32 bytes into 4 planes: `out[p * n + i] = bytes[i * 4 + p]`.
pub fn shuffle4(bytes: &[u8], out: &mut Vec<u8>) {
    let n = bytes.len() / 4;
    out.clear();
    out.resize(bytes.len(), 0);
    for (i, v) in bytes.chunks_exact(4).enumerate() {
        out[i] = v[0];
        out[n + i] = v[1];
        out[2 * n + i] = v[2];
        out[3 * n + i] = v[3];
    }
}

/// Inverse of [`shuffle4`].
pub fn unshuffle4(planes: &[u8]) -> Vec<u8> {
    let n = planes.len() / 4;
    let mut out = vec![0u8; n * 4];
    for i in 0..n {
        out[i * 4] = planes[i];
        out[i * 4 + 1] = planes[n + i];
        out[i * 4 + 2] = planes[2 * n + i];
        out[i * 4 + 3] = planes[3 * n + i];
    }
    out
}

/// f32 values from little-endian bytes (a trailing partial value is ignored).
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Reusable buffers for [`summarize_site`].
#[derive(Default)]
pub struct Scratch {
    bytes: Vec<u8>,
}

impl Scratch {
    /// Bytes held by the scratch buffer (for the writer's memory accounting).
    pub fn capacity_bytes(&self) -> usize {
        self.bytes.capacity()
    }
}

/// Builds the trace of `n_rows` rows of `width` values at `level` (not `Off`).
#[allow(clippy::too_many_arguments)]
pub fn summarize_site(
    level: TraceLevel,
    site: Site,
    row0: u32,
    n_rows: usize,
    width: usize,
    data: &[f32],
    shuffle: bool,
    projector: &mut Projector,
    scratch: &mut Scratch,
) -> SiteTrace {
    scratch.bytes.clear();
    le_bytes(&data[..n_rows * width], &mut scratch.bytes);
    let hashes = scratch.bytes.chunks_exact(width * 4).take(n_rows).map(hash_bytes).collect();
    let (mut stats, mut projection) = (Vec::new(), Vec::new());
    if level >= TraceLevel::Summary {
        stats.reserve(n_rows);
        projection.reserve(n_rows * projector.dims());
        for row in data.chunks_exact(width).take(n_rows) {
            stats.push(row_stats(row));
            projector.project(row, &mut projection);
        }
    }
    let values = (level >= TraceLevel::Full).then(|| {
        if shuffle {
            let mut planes = Vec::new();
            shuffle4(&scratch.bytes, &mut planes);
            Values { shuffled: true, bytes: super::format::ByteBuf(planes) }
        } else {
            Values { shuffled: false, bytes: super::format::ByteBuf(scratch.bytes.clone()) }
        }
    });
    SiteTrace { site, row0, n_rows: n_rows as u32, width: width as u32, hashes, stats, projection, values }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_round_trips() {
        let bytes: Vec<u8> = (0..64u8).collect();
        let mut s = Vec::new();
        shuffle4(&bytes, &mut s);
        assert_eq!(&s[..4], &[0, 4, 8, 12]);
        assert_eq!(unshuffle4(&s), bytes);
    }

    #[test]
    fn hash_sees_every_bit() {
        let a = [1.0f32, -0.0, 3.5];
        let b = [1.0f32, 0.0, 3.5];
        assert_ne!(row_hash(&a), row_hash(&b));
        assert_eq!(row_hash(&a), row_hash(&a.clone()));
    }

    #[test]
    fn projection_estimates_distance() {
        let mut p = Projector::default();
        let x: Vec<f32> = (0..576).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let y: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + if i % 3 == 0 { 0.01 } else { -0.02 }).collect();
        let (mut px, mut py) = (Vec::new(), Vec::new());
        p.project(&x, &mut px);
        p.project(&y, &mut py);
        let true_d: f64 = x.iter().zip(&y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let est = projected_sq_distance(&px, &py);
        assert!(est > true_d * 0.3 && est < true_d * 3.0, "estimate {est} vs {true_d}");
    }

    #[test]
    fn stats_count_nonfinite() {
        let s = row_stats(&[3.0, -4.0, f32::NAN]);
        assert_eq!(s.absmax, 4.0);
        assert_eq!(s.nonfinite, 1);
    }
}
