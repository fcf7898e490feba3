//! NEON build of the 1x1 convolution: output tiles of `MR` rows (output channels) x 16
//! columns (four vectors) accumulated in registers over all `k` input channels, read
//! straight from the NCHW input (no packing), the bias as the starting value, the input's
//! ReLU applied as it is loaded. Columns past the last 16 go 4 at a time, then one by one.
//!
//! Each output sums `bias + wt[m, kk] x[kk, c]` over `kk` ascending with fused
//! multiply-adds (the portable loop rounds each product first): within the tolerance the
//! tests hold every SIMD path to.

use core::arch::aarch64::*;

use crate::window::madd;

/// Output rows per tile: 6 x 4 accumulators, 4 input vectors and a weight of the 32
/// vector registers.
pub(crate) const MR: usize = 6;

/// One tile: rows `[m0, m0 + R)`, columns `[c, c + 4 NV)`.
///
/// # Safety
/// NEON present; `x` holds `k` rows of `hw`, `out` `m` rows of `hw`, `wt` `m * k`, `bias`
/// `m` when given; `c + 4 NV <= hw`, `m0 + R <= m`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const NV: usize, const RELU: bool>(
    out: *mut f32,
    x: *const f32,
    wt: *const f32,
    bias: Option<&[f32]>,
    (k, hw): (usize, usize),
    m0: usize,
    c: usize,
) {
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[zero; NV]; R];
    if let Some(b) = bias {
        for (r, a) in acc.iter_mut().enumerate() {
            *a = [vdupq_n_f32(b[m0 + r]); NV];
        }
    }
    let w = wt.add(m0 * k);
    for kk in 0..k {
        let row = x.add(kk * hw + c);
        let xs: [float32x4_t; NV] = core::array::from_fn(|v| {
            let xv = vld1q_f32(row.add(4 * v));
            if RELU {
                vmaxnmq_f32(xv, zero)
            } else {
                xv
            }
        });
        for (r, a) in acc.iter_mut().enumerate() {
            let wv = vld1q_dup_f32(w.add(r * k + kk));
            for (av, &xv) in a.iter_mut().zip(&xs) {
                *av = vfmaq_f32(*av, xv, wv);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let o = out.add((m0 + r) * hw + c);
        for (v, av) in a.iter().enumerate() {
            vst1q_f32(o.add(4 * v), *av);
        }
    }
}

/// Rows `[0, m)` of columns `[c, c + 4 NV)`: tiles of `MR` rows, then single rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn columns<const NV: usize, const RELU: bool>(
    out: *mut f32,
    x: *const f32,
    wt: *const f32,
    bias: Option<&[f32]>,
    (m, k, hw): (usize, usize, usize),
    c: usize,
) {
    let mut m0 = 0;
    while m0 + MR <= m {
        tile::<MR, NV, RELU>(out, x, wt, bias, (k, hw), m0, c);
        m0 += MR;
    }
    while m0 < m {
        tile::<1, NV, RELU>(out, x, wt, bias, (k, hw), m0, c);
        m0 += 1;
    }
}

/// `out[m, c0..c1] = wt[m, k] relu?(x[k, c0..c1]) + bias` for one image.
///
/// # Safety
/// NEON present; `x` holds `k * hw` floats, `out` room for `m * hw`, `wt` `m * k`, `bias`
/// `m` when given; `c0 <= c1 <= hw`; no other thread writes those columns.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn image<const RELU: bool>(
    out: *mut f32,
    x: *const f32,
    wt: *const f32,
    bias: Option<&[f32]>,
    (m, k, hw): (usize, usize, usize),
    (c0, c1): (usize, usize),
) {
    let mut c = c0;
    while c + 16 <= c1 {
        columns::<4, RELU>(out, x, wt, bias, (m, k, hw), c);
        c += 16;
    }
    while c + 4 <= c1 {
        columns::<1, RELU>(out, x, wt, bias, (m, k, hw), c);
        c += 4;
    }
    for c in c..c1 {
        for mi in 0..m {
            let mut a = bias.map_or(0.0, |b| b[mi]);
            for kk in 0..k {
                let v = *x.add(kk * hw + c);
                let v = if RELU { v.max(0.0) } else { v };
                a = madd::<true>(a, *wt.add(mi * k + kk), v);
            }
            *out.add(mi * hw + c) = a;
        }
    }
}
