//! Int8 pooling of `[N, C, H, W]`: max (exact on the integers, output quantized as the
//! input), average and global average (ONNX `QLinearAveragePool` /
//! `QLinearGlobalAveragePool`, TFLite's `AveragePool`).
//!
//! An average sums `q - zx` over the window's taps inside the image in i32 (padding is
//! real zero), then divides by the taps counted (all of the kernel's with `count_pad`,
//! else those inside the image):
//! - input and output scales equal: `round(sum / count)`, rounded half away from zero as
//!   the TFLite reference does (integer division, exact);
//! - scales differ: `sum` times the fixed-point [`Requant`] of `s_in / (s_out count)`,
//!   within one step of the real result next to a rounding tie (see [`Requant`]).
//!
//! The output zero point is then added and the result saturated to i8. Two references
//! differ from this only on exact ties, by one step: TFLite averages the raw `q` (its
//! input and output share scale and zero point), which rounds a tie the other way when
//! `sum / count` and `sum / count + zx` have opposite signs; and a float
//! `DequantizeLinear -> AveragePool -> QuantizeLinear` rounds ties to even. Windows as
//! [`Geom::pool_supported`]: no dilation, padding at most half the kernel (every window
//! holds an image element).
//!
//! Every pool has an entry point without allocation (`*_into`: caller-owned output and
//! scratch, one thread); the allocating ones spread planes over rayon's pool and compile
//! the same loops for AVX2, so all give the same integers.

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use super::requant::rounding_div;
use super::{OutQ, Quant, Requant};
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
use crate::arch::Level;
#[cfg(feature = "alloc")]
use crate::window::PARALLEL_WORK;
use crate::Geom;

fn check(x: usize, y: usize, n: usize, g: &Geom) {
    assert!(g.pool_supported(), "int8 pooling window {g:?} not covered");
    assert_eq!(x, n * g.c * g.plane_in(), "int8 pool input length");
    assert_eq!(y, n * g.c * g.plane_out(), "int8 pool output length");
}

/// Runs `f(input plane, output plane, scratch)` over the planes, on the pool when large;
/// each worker's scratch starts as `scratch()`.
#[cfg(feature = "alloc")]
#[inline(always)]
fn planes(
    x: &[i8],
    g: &Geom,
    y: &mut [i8],
    scratch: impl Fn() -> Vec<i32> + Sync + Send,
    f: impl Fn(&[i8], &mut [i8], &mut Vec<i32>) + Sync + Send,
) {
    let (plane_in, plane_out) = (g.plane_in(), g.plane_out());
    if plane_out == 0 {
        return;
    }
    let work = y.len() * g.kh * g.kw;
    let parallel = work >= PARALLEL_WORK && crate::par::threads() >= 2;
    crate::par::chunks_with(y, plane_out, parallel, 8, scratch, |s, p, o| {
        f(&x[p * plane_in..][..plane_in], o, s)
    });
}

/// The same planes one after the other on this thread (no allocation).
#[inline(always)]
fn planes_into(x: &[i8], g: &Geom, y: &mut [i8], mut f: impl FnMut(&[i8], &mut [i8])) {
    let (plane_in, plane_out) = (g.plane_in(), g.plane_out());
    if plane_out == 0 || plane_in == 0 {
        return;
    }
    for (src, o) in x.chunks_exact(plane_in).zip(y.chunks_exact_mut(plane_out)) {
        f(src, o)
    }
}

/// The column spans of a window's kernel columns ([`Geom::col_span`]): a table computed
/// once per call by the allocating kernels (recomputing them per row cost more than
/// small planes' pooling), or computed per row without allocation.
#[derive(Clone, Copy)]
enum Spans<'a> {
    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    Table(&'a [(usize, usize, usize)]),
    Computed,
}

/// `fold(acc[ow], x)` for every in-image tap of output row `oh`, in row-major order.
#[inline(always)]
fn row_taps<T: Copy>(
    g: &Geom,
    spans: Spans,
    src: &[i8],
    oh: usize,
    acc: &mut [T],
    fold: impl Fn(T, i8) -> T,
) {
    let (r0, r1) = g.rows(oh);
    for r in r0..r1 {
        let srow = &src[r * g.w..][..g.w];
        let mut tap = |(lo, hi, start): (usize, usize, usize)| {
            let (lo, hi) = (lo.min(g.ow), hi.min(g.ow));
            if lo >= hi {
                return;
            }
            if g.sw == 1 {
                for (a, &v) in acc[lo..hi].iter_mut().zip(&srow[start..]) {
                    *a = fold(*a, v);
                }
            } else {
                for (a, &v) in acc[lo..hi]
                    .iter_mut()
                    .zip(srow[start..].iter().step_by(g.sw))
                {
                    *a = fold(*a, v);
                }
            }
        };
        match spans {
            Spans::Table(t) => t.iter().for_each(|&s| tap(s)),
            Spans::Computed => (0..g.kw).for_each(|j| tap(g.col_span(j))),
        }
    }
}

/// Max pooling of `x [n, C, H, W]` into `y [n, C, oh, ow]`, quantized as the input (the
/// maximum of the integers is the integer of the maximum; padding never wins).
///
/// # Panics
/// When `g` is not a supported window or a length does not fit.
#[cfg(feature = "alloc")]
pub fn max(x: &[i8], n: usize, g: &Geom, y: &mut [i8]) {
    check(x.len(), y.len(), n, g);
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::arch::level(), Level::Avx2 | Level::Avx512) {
        // SAFETY: the CPU has AVX2 (`arch::level`).
        return unsafe { max_avx2(x, g, y) };
    }
    max_loops(x, g, y)
}

/// [`max`] without allocation: the same integers, one thread.
///
/// # Panics
/// As [`max`].
pub fn max_into(x: &[i8], n: usize, g: &Geom, y: &mut [i8]) {
    check(x.len(), y.len(), n, g);
    planes_into(x, g, y, |src, o| max_plane(g, Spans::Computed, src, o));
}

/// [`max`]'s loops compiled for AVX2 (byte maxima 32 lanes a step; the baseline x86_64
/// target has no signed byte maximum): the same integers.
///
/// # Safety
/// AVX2 present.
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
#[target_feature(enable = "avx2")]
unsafe fn max_avx2(x: &[i8], g: &Geom, y: &mut [i8]) {
    max_loops(x, g, y)
}

#[cfg(feature = "alloc")]
#[inline(always)]
fn max_loops(x: &[i8], g: &Geom, y: &mut [i8]) {
    let spans = g.col_spans();
    planes(x, g, y, Vec::new, |src, o, _| {
        max_plane(g, Spans::Table(&spans), src, o)
    });
}

/// One plane's maxima.
#[inline(always)]
fn max_plane(g: &Geom, spans: Spans, src: &[i8], o: &mut [i8]) {
    for (oh, orow) in o.chunks_exact_mut(g.ow).enumerate() {
        orow.fill(i8::MIN);
        row_taps(g, spans, src, oh, orow, |a, v| a.max(v));
    }
}

/// The `i32`s of scratch [`avg_into`] needs for window `g`: one output row of sums and a
/// multiplier (two values) per tap count.
pub fn avg_scratch_len(g: &Geom) -> usize {
    g.ow + 2 * g.kh * g.kw
}

/// How an average's `sum` (of `q - zx`) over `count` taps becomes output units: same
/// scales a rounding division, else the fixed-point [`Requant`] of `s_in / (s_out count)`
/// (`Requant::new` of the f64 quotient), kept in `table` as `(multiplier, shift)` at
/// `2 (count - 1)`.
#[derive(Clone, Copy)]
struct Divide<'a> {
    table: Option<&'a [i32]>,
}

impl<'a> Divide<'a> {
    /// Fills `table` (`2 max_count` values) when the scales differ.
    fn new(xq: Quant, yq: Quant, max_count: usize, table: &'a mut [i32]) -> Self {
        if xq.scale == yq.scale {
            return Self { table: None };
        }
        let ratio = xq.scale as f64 / yq.scale as f64;
        let table = &mut table[..2 * max_count];
        for (d, t) in table.chunks_exact_mut(2).enumerate() {
            let r = Requant::new(ratio / (d + 1) as f64);
            t.copy_from_slice(&[r.multiplier, r.shift]);
        }
        Self { table: Some(table) }
    }

    #[inline(always)]
    fn apply(&self, sum: i32, count: i32) -> i32 {
        match self.table {
            None => rounding_div(sum, count),
            Some(t) => {
                let at = 2 * (count as usize - 1);
                let (multiplier, shift) = (t[at], t[at + 1]);
                Requant { multiplier, shift }.apply(sum)
            }
        }
    }
}

/// Average pooling of `x [n, C, H, W]` (quantized by `xq`) into `y [n, C, oh, ow]`
/// (by `yq`), dividing by the whole kernel when `count_pad`, else by the taps inside the
/// image; rounding as in the module doc.
///
/// # Panics
/// When `g` is not a supported window or a length does not fit.
#[cfg(feature = "alloc")]
pub fn avg(x: &[i8], n: usize, g: &Geom, count_pad: bool, q: [Quant; 2], y: &mut [i8]) {
    check(x.len(), y.len(), n, g);
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::arch::level(), Level::Avx2 | Level::Avx512) {
        // SAFETY: the CPU has AVX2 (`arch::level`).
        return unsafe { avg_avx2(x, g, count_pad, q, y) };
    }
    avg_loops(x, g, count_pad, q, y)
}

/// [`avg`] without allocation: the same integers, one thread; `scratch` holds at least
/// [`avg_scratch_len`]`(g)` values (contents ignored).
///
/// # Panics
/// As [`avg`], and when `scratch` is shorter.
pub fn avg_into(
    x: &[i8],
    n: usize,
    g: &Geom,
    count_pad: bool,
    [xq, yq]: [Quant; 2],
    y: &mut [i8],
    scratch: &mut [i32],
) {
    check(x.len(), y.len(), n, g);
    let (acc, table) = scratch[..avg_scratch_len(g)].split_at_mut(g.ow);
    let div = Divide::new(xq, yq, g.kh * g.kw, table);
    planes_into(x, g, y, |src, o| {
        avg_plane(
            g,
            Spans::Computed,
            src,
            None,
            count_pad,
            [xq, yq],
            div,
            acc,
            o,
        )
    });
}

/// [`avg`]'s loops compiled for AVX2: the same integers.
///
/// # Safety
/// AVX2 present.
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
#[target_feature(enable = "avx2")]
unsafe fn avg_avx2(x: &[i8], g: &Geom, count_pad: bool, q: [Quant; 2], y: &mut [i8]) {
    avg_loops(x, g, count_pad, q, y)
}

#[cfg(feature = "alloc")]
#[inline(always)]
fn avg_loops(x: &[i8], g: &Geom, count_pad: bool, [xq, yq]: [Quant; 2], y: &mut [i8]) {
    let spans = g.col_spans();
    let mut table = alloc::vec![0; 2 * g.kh * g.kw];
    let div = Divide::new(xq, yq, g.kh * g.kw, &mut table);
    // the counts of every output, once per call
    let counts: Vec<i32> = (0..g.plane_out())
        .map(|i| count(g, count_pad, i / g.ow, i % g.ow))
        .collect();
    let row = || alloc::vec![0; g.ow];
    planes(x, g, y, row, |src, o, acc| {
        let counts = Some(&counts[..]);
        avg_plane(
            g,
            Spans::Table(&spans),
            src,
            counts,
            count_pad,
            [xq, yq],
            div,
            acc,
            o,
        )
    });
}

/// One plane's averages, output row by output row into `acc` (`ow` sums); `counts`
/// the divisor of every output of the plane (computed per output when none).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn avg_plane(
    g: &Geom,
    spans: Spans,
    src: &[i8],
    counts: Option<&[i32]>,
    count_pad: bool,
    [xq, yq]: [Quant; 2],
    div: Divide,
    acc: &mut [i32],
    o: &mut [i8],
) {
    let (zx, out) = (xq.zero as i32, OutQ::new(yq.zero));
    for (oh, orow) in o.chunks_exact_mut(g.ow).enumerate() {
        acc.fill(0);
        row_taps(g, spans, src, oh, acc, |a, v| a + (v as i32 - zx));
        match counts {
            Some(c) => {
                let c = &c[oh * g.ow..][..g.ow];
                for ((d, &s), &c) in orow.iter_mut().zip(acc.iter()).zip(c) {
                    *d = out.store(div.apply(s, c));
                }
            }
            None => {
                for (ow, (d, &s)) in orow.iter_mut().zip(acc.iter()).enumerate() {
                    *d = out.store(div.apply(s, count(g, count_pad, oh, ow)));
                }
            }
        }
    }
}

/// Taps output `(oh, ow)`'s average divides by: the whole kernel with `count_pad`, else
/// those inside the image.
#[inline(always)]
fn count(g: &Geom, count_pad: bool, oh: usize, ow: usize) -> i32 {
    if count_pad {
        return (g.kh * g.kw) as i32;
    }
    let (r0, r1) = g.rows(oh);
    ((r1 - r0) * g.cols(ow)) as i32
}

/// Global average pooling of `x [n, C, hw]` (quantized by `xq`) into `y [n, C]` (by
/// `yq`): each plane's mean, rounded as in the module doc. Allocates nothing.
///
/// # Panics
/// When `hw` is 0, a length does not fit, or a plane has more than `2^23` elements (its
/// sum could overflow i32).
pub fn global_avg(x: &[i8], [n, c, hw]: [usize; 3], [xq, yq]: [Quant; 2], y: &mut [i8]) {
    assert!(
        hw > 0 && hw <= 1 << 23,
        "global average pool of {hw} elements"
    );
    assert_eq!(x.len(), n * c * hw, "global average pool input length");
    assert_eq!(y.len(), n * c, "global average pool output length");
    let scaled =
        (xq.scale != yq.scale).then(|| Requant::new(xq.scale as f64 / yq.scale as f64 / hw as f64));
    let (zx, out) = (xq.zero as i32, OutQ::new(yq.zero));
    for (d, plane) in y.iter_mut().zip(x.chunks_exact(hw)) {
        // at most 255 * 2^23 in magnitude: fits i32
        let s = (plane.iter().map(|&v| v as i64).sum::<i64>() - zx as i64 * hw as i64) as i32;
        *d = out.store(match scaled {
            None => rounding_div(s, hw as i32),
            Some(r) => r.apply(s),
        });
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
