//! NEON builds of the int8 inner products (baseline Advanced SIMD, no dot-product
//! extension), exact like the portable loops (`crate::int8`'s tests compare them with
//! `==`):
//! - [`dot_neon`]: the matrix product on row pairs (`[K/2][P][2]` i8): `vmull_s8` of 8
//!   pixels' pairs with a broadcast weight pair gives 16 i16 products (`|x w| <= 2^14`),
//!   `vpadalq_s16` adds each pixel's two into its i32 lane;
//! - [`taps_neon`]: depthwise rows on i16 inputs, `vmlal_s16` (widening multiply-add
//!   into i32), 8 outputs per step;
//! - [`store_row_neon`]: the requantization of a row of sums, 8 lanes a step:
//!   `vmull_s32` 64-bit products, `vrshlq_s64` their one rounding right shift (half up,
//!   exact), `vqmovn_s64` the saturation to i32: `Requant::apply`'s arithmetic.

use core::arch::aarch64::*;

use crate::int8::{OutQ, Requant};

/// One tile: rows `[r0, r0 + R)` x pixels `[p0, p0 + 8 NV)`.
///
/// # Safety
/// NEON present; `w` holds `rows * kg` words, `x` `kg * pp * 2` bytes, `acc`
/// `rows * aw`; the tile lies inside them and `p0 >= c0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const NV: usize>(
    w: *const i32,
    kg: usize,
    x: *const i8,
    (pp, aw, c0): (usize, usize, usize),
    acc: *mut i32,
    r0: usize,
    p0: usize,
) {
    let mut a = [[[vdupq_n_s32(0); 2]; NV]; R];
    for q in 0..kg {
        let src = x.add((q * pp + p0) * 2);
        let xs: [int8x16_t; NV] = core::array::from_fn(|v| vld1q_s8(src.add(16 * v)));
        for (r, ar) in a.iter_mut().enumerate() {
            // the pair's two bytes repeated: [w0, w1, w0, w1, ..]
            let wv = vreinterpretq_s8_s16(vdupq_n_s16(*w.add((r0 + r) * kg + q) as i16));
            let wl = vget_low_s8(wv);
            for (av, &xv) in ar.iter_mut().zip(&xs) {
                av[0] = vpadalq_s16(av[0], vmull_s8(vget_low_s8(xv), wl));
                av[1] = vpadalq_s16(av[1], vmull_high_s8(xv, wv));
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (v, av) in ar.iter().enumerate() {
            let d = acc.add((r0 + r) * aw + p0 - c0 + 8 * v);
            vst1q_s32(d, av[0]);
            vst1q_s32(d.add(4), av[1]);
        }
    }
}

/// `acc[r aw + p - c0] = sum_q w[r kg + q] . x[q][p]` for `r < rows`, `c0 <= p < c1`
/// (`aw = c1 - c0`).
///
/// # Safety
/// NEON present; `w.len() >= rows * kg`, `x.len() >= kg * pp * 2`,
/// `acc.len() == rows * (c1 - c0)`, `c0` and `c1` multiples of 8, `c0 <= c1 <= pp`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_neon(
    w: &[i32],
    kg: usize,
    rows: usize,
    x: &[i8],
    (pp, c0, c1): (usize, usize, usize),
    acc: &mut [i32],
) {
    let aw = c1 - c0;
    debug_assert!(c0.is_multiple_of(8) && aw.is_multiple_of(8) && c1 <= pp);
    debug_assert!(acc.len() == rows * aw);
    let (wp, xp, ap) = (w.as_ptr(), x.as_ptr(), acc.as_mut_ptr());
    let dims = (pp, aw, c0);
    let mut p0 = c0;
    while p0 < c1 {
        let wide = c1 - p0 >= 16;
        let mut r = 0;
        while r + 4 <= rows {
            if wide {
                tile::<4, 2>(wp, kg, xp, dims, ap, r, p0);
            } else {
                tile::<4, 1>(wp, kg, xp, dims, ap, r, p0);
            }
            r += 4;
        }
        for r in r..rows {
            if wide {
                tile::<1, 2>(wp, kg, xp, dims, ap, r, p0);
            } else {
                tile::<1, 1>(wp, kg, xp, dims, ap, r, p0);
            }
        }
        p0 += if wide { 16 } else { 8 };
    }
}

/// `acc[o] = sum_t w[t] x[off[t] + o]` for every `o < acc.len()`.
///
/// # Safety
/// NEON present; `off[t] + acc.len() <= x.len()` for every tap (checked by the caller),
/// `off.len() == w.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn taps_neon(x: &[i16], off: &[usize], w: &[i16], acc: &mut [i32]) {
    let n = acc.len();
    let (xp, ap) = (x.as_ptr(), acc.as_mut_ptr());
    let mut o = 0;
    while o + 16 <= n {
        let mut a = [vdupq_n_s32(0); 4];
        for (&t, &wv) in off.iter().zip(w) {
            let src = xp.add(t + o);
            let (x0, x1) = (vld1q_s16(src), vld1q_s16(src.add(8)));
            a[0] = vmlal_n_s16(a[0], vget_low_s16(x0), wv);
            a[1] = vmlal_high_n_s16(a[1], x0, wv);
            a[2] = vmlal_n_s16(a[2], vget_low_s16(x1), wv);
            a[3] = vmlal_high_n_s16(a[3], x1, wv);
        }
        for (i, av) in a.iter().enumerate() {
            vst1q_s32(ap.add(o + 4 * i), *av);
        }
        o += 16;
    }
    while o + 8 <= n {
        let mut a = [vdupq_n_s32(0); 2];
        for (&t, &wv) in off.iter().zip(w) {
            let x0 = vld1q_s16(xp.add(t + o));
            a[0] = vmlal_n_s16(a[0], vget_low_s16(x0), wv);
            a[1] = vmlal_high_n_s16(a[1], x0, wv);
        }
        vst1q_s32(ap.add(o), a[0]);
        vst1q_s32(ap.add(o + 4), a[1]);
        o += 8;
    }
    crate::int8::conv::taps_portable(x, off, w, &mut acc[o..], o);
}

/// `dst[i] = out.store(r.apply(acc[i] + base))`, 8 lanes a step (see the module doc); the
/// tail through `crate::int8::gemm::store_row_portable`.
///
/// # Safety
/// NEON present.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn store_row_neon(acc: &[i32], base: i32, r: Requant, out: OutQ, dst: &mut [i8]) {
    assert_eq!(acc.len(), dst.len(), "int8 row lengths");
    let n = acc.len() / 8 * 8;
    // `vrshlq_s64` by `-t` adds `2^(t - 1)` and shifts right arithmetically, exactly
    let shift = vdupq_n_s64(-(31 - r.shift) as i64);
    let (q, b) = (vdupq_n_s32(r.multiplier), vdupq_n_s32(base));
    let z = out.zero as i32;
    let (lo, hi, zv) = (
        vdupq_n_s32(out.min as i32 - z),
        vdupq_n_s32(out.max as i32 - z),
        vdupq_n_s32(z),
    );
    let one = |x: int32x4_t| {
        let x = vaddq_s32(x, b);
        let l = vrshlq_s64(vmull_s32(vget_low_s32(x), vget_low_s32(q)), shift);
        let h = vrshlq_s64(vmull_high_s32(x, q), shift);
        // saturating narrows: `Requant::apply`'s clamp to i32
        let x = vcombine_s32(vqmovn_s64(l), vqmovn_s64(h));
        vaddq_s32(vminq_s32(vmaxq_s32(x, lo), hi), zv)
    };
    for i in (0..n).step_by(8) {
        let a = one(vld1q_s32(acc.as_ptr().add(i)));
        let c = one(vld1q_s32(acc.as_ptr().add(i + 4)));
        // in i8 range: the saturating narrows are exact
        let v = vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(c)));
        vst1_s8(dst.as_mut_ptr().add(i), v);
    }
    crate::int8::gemm::store_row_portable(&acc[n..], base, r, out, &mut dst[n..]);
}
