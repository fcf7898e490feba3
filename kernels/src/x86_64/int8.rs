//! x86_64 builds of the int8 inner products, exact like the portable loops (integer
//! sums; `crate::int8`'s tests compare them with `==`):
//! - [`dot_avx2`]: the matrix product on row pairs (`[K/2][P][2]` i8): 8 pixels' pairs
//!   sign-extended to i16 (`vpmovsxbw`), `vpmaddwd` with a broadcast weight pair gives
//!   each pixel's two products summed in i32 (no i16 saturation: `vpmaddubsw` would
//!   saturate, this cannot);
//! - [`dot_vnni`]: the matrix product on row quads shifted to u8 (`[K/4][P][4]`), one
//!   `vpdpbusd` per 16 pixels x 4 rows;
//! - [`taps_avx2`]: depthwise rows, `acc[o] = sum_t w[t] x[off[t] + o]` on i16 inputs,
//!   16 outputs per vector (`vpmullw` is exact: `|x w| <= 255 * 128 < 2^15`);
//! - [`store_row_avx2`]: the requantization of a row of sums, 8 lanes at a time
//!   (`vpmuldq` for the 64-bit products, rounded once as `Requant::apply` does).

use core::arch::x86_64::*;

use crate::int8::{OutQ, Requant};

/// One AVX2 tile: rows `[r0, r0 + R)` x pixels `[p0, p0 + 8 NV)`.
///
/// # Safety
/// AVX2 present; `w` holds `rows * kg` words, `x` `kg * pp * 2` bytes, `acc`
/// `rows * aw`; the tile lies inside them and `p0 >= c0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2<const R: usize, const NV: usize>(
    w: *const i32,
    kg: usize,
    x: *const i8,
    (pp, aw, c0): (usize, usize, usize),
    acc: *mut i32,
    r0: usize,
    p0: usize,
) {
    let mut a = [[_mm256_setzero_si256(); NV]; R];
    for q in 0..kg {
        let src = x.add((q * pp + p0) * 2);
        let xs: [__m256i; NV] = core::array::from_fn(|v| {
            _mm256_cvtepi8_epi16(_mm_loadu_si128(src.add(16 * v) as *const __m128i))
        });
        for (r, ar) in a.iter_mut().enumerate() {
            let wv = _mm256_set1_epi32(*w.add((r0 + r) * kg + q));
            for (av, &xv) in ar.iter_mut().zip(&xs) {
                *av = _mm256_add_epi32(*av, _mm256_madd_epi16(xv, wv));
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (v, av) in ar.iter().enumerate() {
            _mm256_storeu_si256(
                acc.add((r0 + r) * aw + p0 - c0 + 8 * v) as *mut __m256i,
                *av,
            );
        }
    }
}

/// `acc[r aw + p - c0] = sum_q w[r kg + q] . x[q][p]` for `r < rows`, `c0 <= p < c1`
/// (`aw = c1 - c0`).
///
/// # Safety
/// AVX2 present; `w.len() >= rows * kg`, `x.len() >= kg * pp * 2`,
/// `acc.len() == rows * (c1 - c0)`, `c0` and `c1` multiples of 8, `c0 <= c1 <= pp`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn dot_avx2(
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
                tile_avx2::<4, 2>(wp, kg, xp, dims, ap, r, p0);
            } else {
                tile_avx2::<4, 1>(wp, kg, xp, dims, ap, r, p0);
            }
            r += 4;
        }
        for r in r..rows {
            if wide {
                tile_avx2::<1, 2>(wp, kg, xp, dims, ap, r, p0);
            } else {
                tile_avx2::<1, 1>(wp, kg, xp, dims, ap, r, p0);
            }
        }
        p0 += if wide { 16 } else { 8 };
    }
}

/// One VNNI tile: rows `[r0, r0 + R)` x pixels `[p0, p0 + 16 NV)`.
///
/// # Safety
/// AVX-512F, BW and VNNI present; `w` holds `rows * kg` words, `x` `kg * pp * 4` bytes,
/// `acc` `rows * aw`; the tile lies inside them and `p0 >= c0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_vnni<const R: usize, const NV: usize>(
    w: *const i32,
    kg: usize,
    x: *const i8,
    (pp, aw, c0): (usize, usize, usize),
    acc: *mut i32,
    r0: usize,
    p0: usize,
) {
    let mut a = [[_mm512_setzero_si512(); NV]; R];
    for q in 0..kg {
        let src = x.add((q * pp + p0) * 4);
        let xs: [__m512i; NV] =
            core::array::from_fn(|v| _mm512_loadu_si512(src.add(64 * v) as *const _));
        for (r, ar) in a.iter_mut().enumerate() {
            let wv = _mm512_set1_epi32(*w.add((r0 + r) * kg + q));
            for (av, &xv) in ar.iter_mut().zip(&xs) {
                // u8 activations (first operand) times i8 weights, four per lane
                *av = _mm512_dpbusd_epi32(*av, xv, wv);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (v, av) in ar.iter().enumerate() {
            _mm512_storeu_si512(acc.add((r0 + r) * aw + p0 - c0 + 16 * v) as *mut _, *av);
        }
    }
}

/// `acc[r aw + p - c0] = sum_q w[r kg + q] . x[q][p]` for `r < rows`, `c0 <= p < c1`
/// (`aw = c1 - c0`).
///
/// # Safety
/// AVX-512F, BW and VNNI present; `w.len() >= rows * kg`, `x.len() >= kg * pp * 4`,
/// `acc.len() == rows * (c1 - c0)`, `c0` and `c1` multiples of 16, `c0 <= c1 <= pp`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn dot_vnni(
    w: &[i32],
    kg: usize,
    rows: usize,
    x: &[i8],
    (pp, c0, c1): (usize, usize, usize),
    acc: &mut [i32],
) {
    let aw = c1 - c0;
    debug_assert!(c0.is_multiple_of(16) && aw.is_multiple_of(16) && c1 <= pp);
    debug_assert!(acc.len() == rows * aw);
    let (wp, xp, ap) = (w.as_ptr(), x.as_ptr(), acc.as_mut_ptr());
    let dims = (pp, aw, c0);
    let mut p0 = c0;
    while p0 < c1 {
        let wide = c1 - p0 >= 64;
        let mut r = 0;
        while r + 4 <= rows {
            if wide {
                tile_vnni::<4, 4>(wp, kg, xp, dims, ap, r, p0);
            } else {
                tile_vnni::<4, 1>(wp, kg, xp, dims, ap, r, p0);
            }
            r += 4;
        }
        for r in r..rows {
            if wide {
                tile_vnni::<1, 4>(wp, kg, xp, dims, ap, r, p0);
            } else {
                tile_vnni::<1, 1>(wp, kg, xp, dims, ap, r, p0);
            }
        }
        p0 += if wide { 64 } else { 16 };
    }
}

/// `NV` vectors of 16 outputs from `o0`.
///
/// # Safety
/// AVX2 present; `x` holds `off[t] + o0 + 16 NV` values for every tap, `acc`
/// `o0 + 16 NV`.
#[inline(always)]
unsafe fn taps_block<const NV: usize>(
    x: *const i16,
    off: &[usize],
    w: &[i16],
    acc: *mut i32,
    o0: usize,
) {
    let mut a = [[_mm256_setzero_si256(); 2]; NV];
    for (&o, &wv) in off.iter().zip(w) {
        let wv = _mm256_set1_epi16(wv);
        let src = x.add(o + o0);
        for (v, av) in a.iter_mut().enumerate() {
            let p = _mm256_mullo_epi16(_mm256_loadu_si256(src.add(16 * v) as *const __m256i), wv);
            let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(p));
            let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(p));
            av[0] = _mm256_add_epi32(av[0], lo);
            av[1] = _mm256_add_epi32(av[1], hi);
        }
    }
    for (v, av) in a.iter().enumerate() {
        let d = acc.add(o0 + 16 * v);
        _mm256_storeu_si256(d as *mut __m256i, av[0]);
        _mm256_storeu_si256(d.add(8) as *mut __m256i, av[1]);
    }
}

/// `acc[o] = sum_t w[t] x[off[t] + o]` for every `o < acc.len()`.
///
/// # Safety
/// AVX2 present; `off[t] + acc.len() <= x.len()` for every tap (checked by the caller),
/// `off.len() == w.len()`, every `|x w| < 2^15`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn taps_avx2(x: &[i16], off: &[usize], w: &[i16], acc: &mut [i32]) {
    let n = acc.len();
    let (xp, ap) = (x.as_ptr(), acc.as_mut_ptr());
    let mut o = 0;
    while o + 32 <= n {
        taps_block::<2>(xp, off, w, ap, o);
        o += 32;
    }
    while o + 16 <= n {
        taps_block::<1>(xp, off, w, ap, o);
        o += 16;
    }
    crate::int8::conv::taps_portable(x, off, w, &mut acc[o..], o);
}

/// [`Requant::apply`] of 8 lanes with a right shift (`t = 31 - shift` in `31..=62`):
/// even and odd lanes as 64-bit products by `q` (`vpmuldq`), plus `2^(t - 1)`, shifted
/// right by `t` (a logical shift, with the sign's ones put back above bit `63 - t`:
/// AVX2 has no 64-bit arithmetic shift). The results fit i32.
///
/// # Safety
/// AVX2 present.
#[inline(always)]
unsafe fn mul_round_shift(a: __m256i, q: __m256i, t: i32) -> __m256i {
    let zero = _mm256_setzero_si256();
    let round = _mm256_set1_epi64x(1i64 << (t - 1));
    let (right, back) = (_mm_cvtsi32_si128(t), _mm_cvtsi32_si128(64 - t));
    let one = |p: __m256i| {
        let v = _mm256_add_epi64(p, round);
        let sign = _mm256_cmpgt_epi64(zero, v);
        _mm256_or_si256(_mm256_srl_epi64(v, right), _mm256_sll_epi64(sign, back))
    };
    let even = one(_mm256_mul_epi32(a, q));
    let odd = one(_mm256_mul_epi32(_mm256_srli_epi64::<32>(a), q));
    _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd))
}

/// `dst[i] = out.store(r.apply(acc[i] + base))`, 8 lanes at a time: the same integers
/// as `crate::int8::gemm::store_row_portable`, which this calls for multipliers of 1 and
/// above (a left shift, rare) and the tail.
///
/// # Safety
/// AVX2 present.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn store_row_avx2(acc: &[i32], base: i32, r: Requant, out: OutQ, dst: &mut [i8]) {
    use crate::int8::gemm::store_row_portable;
    assert_eq!(acc.len(), dst.len(), "int8 row lengths");
    let n = acc.len() / 8 * 8;
    if r.shift > 0 || n == 0 {
        return store_row_portable(acc, base, r, out, dst);
    }
    let t = 31 - r.shift;
    let (q, b) = (_mm256_set1_epi32(r.multiplier), _mm256_set1_epi32(base));
    let z = out.zero as i32;
    let lo = _mm256_set1_epi32(out.min as i32 - z);
    let hi = _mm256_set1_epi32(out.max as i32 - z);
    let zv = _mm256_set1_epi32(z);
    for i in (0..n).step_by(8) {
        let x = _mm256_add_epi32(_mm256_loadu_si256(acc.as_ptr().add(i) as *const __m256i), b);
        let v = mul_round_shift(x, q, t);
        let v = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(v, lo), hi), zv);
        // every lane is in i8 range: the saturating packs are exact
        let v16 = _mm256_packs_epi32(v, v);
        let v8 = _mm256_packs_epi16(v16, v16);
        let d = dst.as_mut_ptr().add(i) as *mut i32;
        d.write_unaligned(_mm256_cvtsi256_si32(v8));
        d.add(1)
            .write_unaligned(_mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(v8)));
    }
    store_row_portable(&acc[n..], base, r, out, &mut dst[n..]);
}

/// [`store_row_avx2`] 16 lanes at a time with AVX-512 (its 64-bit arithmetic shift
/// `vpsraq` needs no sign fix-up): the same integers as
/// `crate::int8::gemm::store_row_portable`; multipliers of 1 and above (a left shift)
/// and the tail go to [`store_row_avx2`].
///
/// # Safety
/// AVX-512F and AVX2 present.
#[target_feature(enable = "avx512f,avx2")]
pub(crate) unsafe fn store_row_avx512(
    acc: &[i32],
    base: i32,
    r: Requant,
    out: OutQ,
    dst: &mut [i8],
) {
    assert_eq!(acc.len(), dst.len(), "int8 row lengths");
    let n = acc.len() / 16 * 16;
    if r.shift > 0 || n == 0 {
        return store_row_avx2(acc, base, r, out, dst);
    }
    let t = 31 - r.shift;
    let (q, b) = (_mm512_set1_epi32(r.multiplier), _mm512_set1_epi32(base));
    let round = _mm512_set1_epi64(1i64 << (t - 1));
    let right = _mm_cvtsi32_si128(t);
    let z = out.zero as i32;
    let lo = _mm512_set1_epi32(out.min as i32 - z);
    let hi = _mm512_set1_epi32(out.max as i32 - z);
    let zv = _mm512_set1_epi32(z);
    for i in (0..n).step_by(16) {
        let x = _mm512_add_epi32(_mm512_loadu_si512(acc.as_ptr().add(i) as *const _), b);
        // (x q + 2^(t - 1)) >> t on the even and the odd lanes as 64-bit products
        let even = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, q), round), right);
        let odd = _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), q);
        let odd = _mm512_sra_epi64(_mm512_add_epi64(odd, round), right);
        let v = _mm512_mask_blend_epi32(0b1010_1010_1010_1010, even, _mm512_slli_epi64::<32>(odd));
        let v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, lo), hi), zv);
        // every lane is in i8 range: the truncation is exact
        let v8 = _mm512_cvtepi32_epi8(v);
        _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, v8);
    }
    store_row_avx2(&acc[n..], base, r, out, &mut dst[n..]);
}
