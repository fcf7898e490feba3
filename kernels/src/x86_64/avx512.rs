//! AVX-512F build of the 1x1 convolution: output tiles of `MR` rows (output channels) x
//! 32 columns (two vectors) accumulated in registers over all `k` input channels, read
//! straight from the NCHW input (no packing), the bias as the starting value, the
//! input's ReLU applied as it is loaded. Masked loads and stores cover any width.

use core::arch::x86_64::*;

/// Output rows per tile: 12 x 2 accumulators of the 32 vector registers.
pub(crate) const MR: usize = 12;

/// One tile: rows `[m0, m0 + R)`, columns `[c0, c0 + 32)` masked by `masks`.
///
/// # Safety
/// AVX-512F present; `x` holds `k` rows of `hw`, `out` `m` rows of `hw`, `wt` `m * k`;
/// the masks only select columns below `hw`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const RELU: bool>(
    out: *mut f32,
    x: *const f32,
    wt: *const f32,
    bias: Option<&[f32]>,
    (k, hw): (usize, usize),
    m0: usize,
    c0: usize,
    masks: [__mmask16; 2],
) {
    let zero = _mm512_setzero_ps();
    let mut acc = [[zero; 2]; R];
    if let Some(b) = bias {
        for (r, a) in acc.iter_mut().enumerate() {
            *a = [_mm512_set1_ps(b[m0 + r]); 2];
        }
    }
    let w = wt.add(m0 * k);
    for kk in 0..k {
        let row = x.add(kk * hw + c0);
        let mut v0 = _mm512_maskz_loadu_ps(masks[0], row);
        let mut v1 = _mm512_maskz_loadu_ps(masks[1], row.add(16));
        if RELU {
            v0 = _mm512_max_ps(v0, zero);
            v1 = _mm512_max_ps(v1, zero);
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let wv = _mm512_set1_ps(*w.add(r * k + kk));
            a[0] = _mm512_fmadd_ps(v0, wv, a[0]);
            a[1] = _mm512_fmadd_ps(v1, wv, a[1]);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let o = out.add((m0 + r) * hw + c0);
        _mm512_mask_storeu_ps(o, masks[0], a[0]);
        _mm512_mask_storeu_ps(o.add(16), masks[1], a[1]);
    }
}

/// `out[m, c0..c1] = wt[m, k] relu?(x[k, c0..c1]) + bias` for one image.
///
/// # Safety
/// AVX-512F present; `x` holds `k * hw` floats, `out` room for `m * hw`, `wt` `m * k`,
/// `bias` `m` when given; `c0 <= c1 <= hw`; no other thread writes those columns.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn image<const RELU: bool>(
    out: *mut f32,
    x: *const f32,
    wt: *const f32,
    bias: Option<&[f32]>,
    (m, k, hw): (usize, usize, usize),
    (c0, c1): (usize, usize),
) {
    let mask = |lanes: usize| -> __mmask16 {
        if lanes >= 16 {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as __mmask16
        }
    };
    for c in (c0..c1).step_by(32) {
        let left = c1 - c;
        let masks = [mask(left), mask(left.saturating_sub(16))];
        let mut m0 = 0;
        while m0 + MR <= m {
            tile::<MR, RELU>(out, x, wt, bias, (k, hw), m0, c, masks);
            m0 += MR;
        }
        while m0 + 4 <= m {
            tile::<4, RELU>(out, x, wt, bias, (k, hw), m0, c, masks);
            m0 += 4;
        }
        while m0 < m {
            tile::<1, RELU>(out, x, wt, bias, (k, hw), m0, c, masks);
            m0 += 1;
        }
    }
}
