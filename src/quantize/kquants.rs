//! ggml's reference quantizers for the k-quant super-blocks of 256 elements:
//! Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (`quantize_row_q*_K_ref` in ggml-quants.c,
//! what `ggml_quantize_chunk` runs without an importance matrix), with their
//! scale searches (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`).
//!
//! Transcribed line by line and evaluated in the same f32 order: C's `a*b*c` is
//! `(a*b)*c`, integers are converted to f32 where C converts them, and nothing is
//! fused (ggml-base is built for the baseline x86-64 ISA). Block layouts are those
//! `gguf::quant` dequantizes. This file does not choose types or walk tensors.

use crate::gguf::quant::{f16_to_f32, f32_to_f16, BLOCK_Q2_K_BYTES, BLOCK_Q3_K_BYTES, BLOCK_Q4_K_BYTES, BLOCK_Q5_K_BYTES, BLOCK_Q6_K_BYTES, QK_K};

use super::round::nearest_int;

/// `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

#[inline]
fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// The f32 value of the f16 just stored at `at` (ggml re-reads `y[i].d`).
#[inline]
fn get_f16(y: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([y[at], y[at + 1]]))
}

/// `(amax, max)`: the largest magnitude and the (first) value that has it.
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL)`, the only variant
/// the reference Q6_K quantizer uses: weights `x*x`, a first guess and 18 more
/// scales `-(nmax + 0.1 * is) / max`, keeping the one with the best weighted fit.
/// Fills `l` with `q + nmax` and returns the scale.
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (xi, li) in x.iter().zip(l_out.iter_mut()) {
        let l = clamp(nearest_int(iscale * xi));
        *li = (l + nmax) as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = clamp(nearest_int(iscale * xi));
            let w = xi * xi;
            sumlx += w * xi * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (xi, li) in x.iter().zip(l_out.iter_mut()) {
                let l = nearest_int(iscale * xi);
                *li = (nmax + clamp(l)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants(n, nmax, x, L, do_rmse = true)`: a first guess refined by up
/// to 5 passes that move single quants while the weighted fit improves. Fills `l`
/// with `q + nmax` and returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (xi, li) in x.iter().zip(l_out.iter_mut()) {
        let l = clamp(nearest_int(iscale * xi));
        *li = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (i, &xi) in x.iter().enumerate() {
            let w = xi * xi;
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp(nearest_int(xi * sl2 / slx));
                if new_l != l_out[i] as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for li in l_out.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of one `make_qkx2_quants` search.
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// `make_qkx2_quants`: an affine fit `x ~ scale * q - min` (min <= 0 folded
/// into the grid), trying `nstep + 1` grid stretches and keeping the one with the
/// smallest weighted error. Fills `l` with q in `0..=nmax`; returns `(scale, the_min)`.
fn make_qkx2_quants(p: &Qkx2, x: &[f32], weights: &[f32], l_out: &mut [u8], laux: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let sum_w_0 = weights[0];
    let mut sum_w = sum_w_0;
    let mut sum_x = sum_w_0 * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let nmax_f = p.nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, p.nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if p.use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if p.use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `get_scale_min_k4`: 6-bit scale and min number `j` of the 8 packed in
/// the 12 scale bytes of Q4_K / Q5_K.
#[inline]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Packs 256 2-bit values the way Q2_K and Q3_K store them: byte `j/4 + l` of
/// each 128-half holds elements `l`, `l+32`, `l+64`, `l+96` in bit pairs.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] = l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// `quantize_row_q2_K_ref` for one super-block.
/// Layout: `u8 scales[16]` (low nibble scale, high nibble min), `u8 qs[64]`,
/// `f16 d` at 80, `f16 dmin` at 82.
pub fn quantize_block_q2_k(x: &[f32; QK_K], y: &mut [u8; BLOCK_Q2_K_BYTES]) {
    const Q4SCALE: f32 = 15.0;
    let search = Qkx2 { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 16 {
        let xs = &x[16 * j..16 * j + 16];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(&search, xs, &weights, &mut l[16 * j..16 * j + 16], &mut laux);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let (sc, rest) = y.split_at_mut(16);
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..QK_K / 16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        put_f16(rest, 64, max_scale / Q4SCALE);
    } else {
        sc.fill(0);
        put_f16(rest, 64, 0.0);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..QK_K / 16 {
            let lm = nearest_int(iscale * mins[j]);
            sc[j] |= (lm << 4) as u8;
        }
        put_f16(rest, 66, max_min / Q4SCALE);
    } else {
        put_f16(rest, 66, 0.0);
    }
    let d_all = get_f16(rest, 64);
    let dmin_all = get_f16(rest, 66);
    for j in 0..QK_K / 16 {
        let d = d_all * (sc[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + dm) / d);
            l[16 * j + ii] = q.clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut rest[..64]);
}

/// `quantize_row_q3_K_ref` for one super-block.
/// Layout: `u8 hmask[32]`, `u8 qs[64]` (low 2 bits), `u8 scales[12]` (16 6-bit
/// scales), `f16 d` at 108.
pub fn quantize_block_q3_k(x: &[f32; QK_K], y: &mut [u8; BLOCK_Q3_K_BYTES]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (ysc, dbytes) = rest.split_at_mut(12);
    ysc.fill(0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..QK_K / 16 {
            let li = nearest_int(iscale * scales[j]) as i8;
            let li = ((li as i32).clamp(-32, 31) + 32) as i8;
            if j < 8 {
                ysc[j] = (li & 0xf) as u8;
            } else {
                ysc[j - 8] |= ((li & 0xf) << 4) as u8;
            }
            let hi = li >> 4;
            ysc[j % 4 + 8] |= (hi << (2 * (j / 4))) as u8;
        }
        put_f16(dbytes, 0, 1.0 / iscale);
    } else {
        put_f16(dbytes, 0, 0.0);
    }
    let d_all = get_f16(dbytes, 0);
    for j in 0..QK_K / 16 {
        let low = if j < 8 { ysc[j] & 0xf } else { ysc[j - 8] >> 4 } as i8;
        let sc = ((low as i32) | ((((ysc[8 + j % 4] >> (2 * (j / 4))) & 3) as i32) << 4)) - 32;
        let sc = sc as i8;
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    hmask.fill(0);
    let mut lu = [0u8; QK_K];
    let (mut m, mut hm) = (0usize, 1u8);
    for j in 0..QK_K {
        let mut v = l[j];
        if v > 3 {
            hmask[m] |= hm;
            v -= 4;
        }
        lu[j] = v as u8;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm = hm.wrapping_shl(1);
        }
    }
    pack_2bit(&lu, qs);
}

/// The Q4_K / Q5_K scale search, shared: per 32-group weights
/// `sqrt(mean(x^2)) + |x|`, then `make_qkx2_quants`. Returns the 6-bit packed
/// scales, `d`, `dmin` (already stored as f16 into `head[0..4]`) and fills `l`.
fn k4_k5_scales(x: &[f32; QK_K], search: &Qkx2, head: &mut [u8], l: &mut [u8; QK_K]) {
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(search, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut head[4..16];
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(head, 0, max_scale / 63.0);
    put_f16(head, 2, max_min / 63.0);
}

/// The final pass of Q4_K / Q5_K: re-quantize each group against the stored
/// (rounded) scales, leaving a group with a zero scale as the search left it.
fn k4_k5_requant(x: &[f32; QK_K], head: &[u8], nmax: i32, l: &mut [u8; QK_K]) {
    let d_all = get_f16(head, 0);
    let dmin_all = get_f16(head, 2);
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &head[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
}

/// `quantize_row_q4_K_ref` for one super-block.
/// Layout: `f16 d`, `f16 dmin`, `u8 scales[12]` (8 6-bit scale/min pairs),
/// `u8 qs[128]` (element `l` and `l+32` of each 64-chunk in one byte).
pub fn quantize_block_q4_k(x: &[f32; QK_K], y: &mut [u8; BLOCK_Q4_K_BYTES]) {
    let search = Qkx2 { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };
    let mut l = [0u8; QK_K];
    k4_k5_scales(x, &search, &mut y[..16], &mut l);
    k4_k5_requant(x, &y[..16], 15, &mut l);
    let q = &mut y[16..];
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            q[32 * c + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

/// `quantize_row_q5_K_ref` for one super-block.
/// Layout: `f16 d`, `f16 dmin`, `u8 scales[12]`, `u8 qh[32]` (fifth bits),
/// `u8 qs[128]` (low nibbles, as Q4_K).
pub fn quantize_block_q5_k(x: &[f32; QK_K], y: &mut [u8; BLOCK_Q5_K_BYTES]) {
    let search = Qkx2 { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false };
    let mut l = [0u8; QK_K];
    k4_k5_scales(x, &search, &mut y[..16], &mut l);
    k4_k5_requant(x, &y[..16], 31, &mut l);
    let (qh, ql) = y[16..].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * c + j] = l1 | (l2 << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
}

/// `quantize_row_q6_K_ref` for one super-block.
/// Layout: `u8 ql[128]` (low nibbles), `u8 qh[64]` (high bit pairs), `i8
/// scales[16]`, `f16 d` at 208.
pub fn quantize_block_q6_k(x: &[f32; QK_K], y: &mut [u8; BLOCK_Q6_K_BYTES]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let scale = make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(y, 208, 1.0 / iscale);
    for ib in 0..QK_K / 16 {
        y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let d_all = get_f16(y, 208);
    for j in 0..QK_K / 16 {
        let d = d_all * (y[192 + j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let lu: [u8; QK_K] = std::array::from_fn(|i| l[i] as u8);
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    for (c, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * c..64 * c + 64], &mut qh[32 * c..32 * c + 32]);
        for k in 0..32 {
            let q1 = lu[j + k] & 0xf;
            let q2 = lu[j + k + 32] & 0xf;
            let q3 = lu[j + k + 64] & 0xf;
            let q4 = lu[j + k + 96] & 0xf;
            ql[k] = q1 | (q3 << 4);
            ql[k + 32] = q2 | (q4 << 4);
            qh[k] = (lu[j + k] >> 4) | ((lu[j + k + 32] >> 4) << 2) | ((lu[j + k + 64] >> 4) << 4) | ((lu[j + k + 96] >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quant::dequantize;
    use crate::gguf::GgmlType;

    fn wave() -> [f32; QK_K] {
        std::array::from_fn(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
    }

    fn rms_error(ty: GgmlType, bytes: &[u8], x: &[f32; QK_K]) -> f32 {
        let mut back = [0f32; QK_K];
        dequantize(ty, bytes, &mut back).unwrap();
        let se: f32 = back.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        (se / QK_K as f32).sqrt()
    }

    #[test]
    fn every_k_quant_round_trips_within_its_precision() {
        let x = wave();
        let mut b2 = [0u8; BLOCK_Q2_K_BYTES];
        quantize_block_q2_k(&x, &mut b2);
        let mut b3 = [0u8; BLOCK_Q3_K_BYTES];
        quantize_block_q3_k(&x, &mut b3);
        let mut b4 = [0u8; BLOCK_Q4_K_BYTES];
        quantize_block_q4_k(&x, &mut b4);
        let mut b5 = [0u8; BLOCK_Q5_K_BYTES];
        quantize_block_q5_k(&x, &mut b5);
        let mut b6 = [0u8; BLOCK_Q6_K_BYTES];
        quantize_block_q6_k(&x, &mut b6);
        // Values span [-1.25, 1.25]; each extra bit should roughly halve the error.
        let e = [
            rms_error(GgmlType::Q2_K, &b2, &x),
            rms_error(GgmlType::Q3_K, &b3, &x),
            rms_error(GgmlType::Q4_K, &b4, &x),
            rms_error(GgmlType::Q5_K, &b5, &x),
            rms_error(GgmlType::Q6_K, &b6, &x),
        ];
        assert!(e[0] < 0.25 && e[4] < 0.02, "{e:?}");
        assert!(e.windows(2).all(|w| w[1] < w[0]), "errors must shrink with bits: {e:?}");
    }

    #[test]
    fn zero_super_blocks_are_all_zero_bytes_or_zero_scales() {
        let x = [0f32; QK_K];
        let mut b6 = [0xffu8; BLOCK_Q6_K_BYTES];
        quantize_block_q6_k(&x, &mut b6);
        assert!(b6.iter().all(|&b| b == 0));
        let mut b4 = [0xffu8; BLOCK_Q4_K_BYTES];
        quantize_block_q4_k(&x, &mut b4);
        assert!(b4.iter().all(|&b| b == 0));
        let mut b3 = [0xffu8; BLOCK_Q3_K_BYTES];
        quantize_block_q3_k(&x, &mut b3);
        let mut back = [1f32; QK_K];
        dequantize(GgmlType::Q3_K, &b3, &mut back).unwrap();
        assert!(back.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn scale_min_packing_round_trips() {
        // k4_k5_scales packs 6-bit pairs; get_scale_min_k4 must read them back.
        let x: [f32; QK_K] = std::array::from_fn(|i| (i / 32) as f32 * 0.1 + (i % 32) as f32 * 0.01 - 0.2);
        let mut b = [0u8; BLOCK_Q4_K_BYTES];
        quantize_block_q4_k(&x, &mut b);
        let scales: Vec<(u8, u8)> = (0..8).map(|j| get_scale_min_k4(j, &b[4..16])).collect();
        assert!(scales.iter().all(|&(s, m)| s <= 63 && m <= 63));
        assert!(scales.iter().any(|&(s, _)| s == 63), "the largest scale maps to 63: {scales:?}");
    }
}
