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
//! [`crate::pool::supported`]: no dilation, padding at most half the kernel (every window
//! holds an image element).

use alloc::vec;
use alloc::vec::Vec;

use super::requant::rounding_div;
use super::{OutQ, Quant, Requant};
#[cfg(target_arch = "x86_64")]
use crate::arch::Level;
use crate::window::PARALLEL_WORK;
use crate::Geom;

fn check(x: usize, y: usize, n: usize, g: &Geom) {
    assert!(
        crate::pool::supported(g),
        "int8 pooling window {g:?} not covered"
    );
    assert_eq!(x, n * g.c * g.plane_in(), "int8 pool input length");
    assert_eq!(y, n * g.c * g.plane_out(), "int8 pool output length");
}

/// Runs `f(input plane, output plane)` over the planes, on the pool when large.
#[inline(always)]
fn planes(
    x: &[i8],
    g: &Geom,
    y: &mut [i8],
    f: impl Fn(&[i8], &mut [i8], &mut Vec<i32>) + Sync + Send,
) {
    let (plane_in, plane_out) = (g.plane_in(), g.plane_out());
    if plane_out == 0 {
        return;
    }
    let work = y.len() * g.kh * g.kw;
    let parallel = work >= PARALLEL_WORK && crate::par::threads() >= 2;
    crate::par::chunks_with(y, plane_out, parallel, 8, Vec::new, |s, p, o| {
        f(&x[p * plane_in..][..plane_in], o, s)
    });
}

/// `fold(acc[ow], x)` for every in-image tap of output row `oh`, in row-major order.
#[inline(always)]
fn row_taps<T: Copy>(
    g: &Geom,
    spans: &[(usize, usize, usize)],
    src: &[i8],
    oh: usize,
    acc: &mut [T],
    fold: impl Fn(T, i8) -> T,
) {
    let (r0, r1) = g.rows(oh);
    for r in r0..r1 {
        let srow = &src[r * g.w..][..g.w];
        for &(lo, hi, start) in spans {
            let (lo, hi) = (lo.min(g.ow), hi.min(g.ow));
            if lo >= hi {
                continue;
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
        }
    }
}

/// Max pooling of `x [n, C, H, W]` into `y [n, C, oh, ow]`, quantized as the input (the
/// maximum of the integers is the integer of the maximum; padding never wins).
///
/// # Panics
/// When `g` is not a supported window or a length does not fit.
pub fn max(x: &[i8], n: usize, g: &Geom, y: &mut [i8]) {
    check(x.len(), y.len(), n, g);
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::arch::level(), Level::Avx2 | Level::Avx512) {
        // SAFETY: the CPU has AVX2 (`arch::level`).
        return unsafe { max_avx2(x, g, y) };
    }
    max_loops(x, g, y)
}

/// [`max`]'s loops compiled for AVX2 (byte maxima 32 lanes a step; the baseline x86_64
/// target has no signed byte maximum): the same integers.
///
/// # Safety
/// AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_avx2(x: &[i8], g: &Geom, y: &mut [i8]) {
    max_loops(x, g, y)
}

#[inline(always)]
fn max_loops(x: &[i8], g: &Geom, y: &mut [i8]) {
    let spans = g.col_spans();
    planes(x, g, y, |src, o, _| {
        for (oh, orow) in o.chunks_exact_mut(g.ow).enumerate() {
            orow.fill(i8::MIN);
            row_taps(g, &spans, src, oh, orow, |a, v| a.max(v));
        }
    });
}

/// Taps of output `(oh, ow)`'s window inside the image.
fn inside(g: &Geom, oh: usize, ow: usize) -> i32 {
    let span = |o: usize, s: usize, k: usize, p: usize, len: usize| {
        let start = o * s;
        ((start + k).min(len + p) - start.max(p)) as i32
    };
    span(oh, g.sh, g.kh, g.pt, g.h) * span(ow, g.sw, g.kw, g.pl, g.w)
}

/// How an average's `sum` (of `q - zx`) over `count` taps becomes output units.
#[derive(Clone)]
enum Divide {
    /// Same scale: rounding division.
    Exact,
    /// `Requant` of `s_in / (s_out count)`, indexed by `count - 1`.
    Scaled(Vec<Requant>),
}

impl Divide {
    fn new(xq: Quant, yq: Quant, max_count: usize) -> Self {
        if xq.scale == yq.scale {
            return Divide::Exact;
        }
        let ratio = xq.scale as f64 / yq.scale as f64;
        Divide::Scaled(
            (1..=max_count)
                .map(|d| Requant::new(ratio / d as f64))
                .collect(),
        )
    }

    #[inline(always)]
    fn apply(&self, sum: i32, count: i32) -> i32 {
        match self {
            Divide::Exact => rounding_div(sum, count),
            Divide::Scaled(r) => r[count as usize - 1].apply(sum),
        }
    }
}

/// Average pooling of `x [n, C, H, W]` (quantized by `xq`) into `y [n, C, oh, ow]`
/// (by `yq`), dividing by the whole kernel when `count_pad`, else by the taps inside the
/// image; rounding as in the module doc.
///
/// # Panics
/// When `g` is not a supported window or a length does not fit.
pub fn avg(x: &[i8], n: usize, g: &Geom, count_pad: bool, q: [Quant; 2], y: &mut [i8]) {
    check(x.len(), y.len(), n, g);
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::arch::level(), Level::Avx2 | Level::Avx512) {
        // SAFETY: the CPU has AVX2 (`arch::level`).
        return unsafe { avg_avx2(x, g, count_pad, q, y) };
    }
    avg_loops(x, g, count_pad, q, y)
}

/// [`avg`]'s loops compiled for AVX2: the same integers.
///
/// # Safety
/// AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avg_avx2(x: &[i8], g: &Geom, count_pad: bool, q: [Quant; 2], y: &mut [i8]) {
    avg_loops(x, g, count_pad, q, y)
}

#[inline(always)]
fn avg_loops(x: &[i8], g: &Geom, count_pad: bool, [xq, yq]: [Quant; 2], y: &mut [i8]) {
    let spans = g.col_spans();
    let div = Divide::new(xq, yq, g.kh * g.kw);
    let counts: Vec<i32> = (0..g.plane_out())
        .map(|i| {
            if count_pad {
                (g.kh * g.kw) as i32
            } else {
                inside(g, i / g.ow, i % g.ow)
            }
        })
        .collect();
    let (zx, out) = (xq.zero as i32, OutQ::new(yq.zero));
    planes(x, g, y, |src, o, acc| {
        acc.clear();
        acc.resize(g.ow, 0);
        for (oh, orow) in o.chunks_exact_mut(g.ow).enumerate() {
            acc.fill(0);
            row_taps(g, &spans, src, oh, acc, |a, v| a + (v as i32 - zx));
            let cnt = &counts[oh * g.ow..][..g.ow];
            for ((d, &s), &c) in orow.iter_mut().zip(acc.iter()).zip(cnt) {
                *d = out.store(div.apply(s, c));
            }
        }
    });
}

/// Global average pooling of `x [n, C, hw]` (quantized by `xq`) into `y [n, C]` (by
/// `yq`): each plane's mean, rounded as in the module doc.
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
    let div = match Divide::new(xq, yq, 0) {
        Divide::Exact => Divide::Exact,
        Divide::Scaled(_) => Divide::Scaled(vec![Requant::new(
            xq.scale as f64 / yq.scale as f64 / hw as f64,
        )]),
    };
    let (zx, out) = (xq.zero as i32, OutQ::new(yq.zero));
    for (d, plane) in y.iter_mut().zip(x.chunks_exact(hw)) {
        // at most 255 * 2^23 in magnitude: fits i32
        let s = (plane.iter().map(|&v| v as i64).sum::<i64>() - zx as i64 * hw as i64) as i32;
        *d = out.store(match &div {
            Divide::Exact => rounding_div(s, hw as i32),
            Divide::Scaled(r) => r[0].apply(s),
        });
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
