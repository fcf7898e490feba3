//! Convolutions on `[N, C, H, W]` floats: depthwise (any kernel, stride, dilation,
//! padding), 1x1 pointwise, dense (group 1, any kernel: im2col, then pointwise), and the
//! depthwise weight gradient.
//!
//! - **Depthwise**: the window engine (padded plane, AVX2 + FMA or NEON register tiles;
//!   see `crate::window`).
//! - **Pointwise** (1x1, no padding, group 1; a strided one reads a
//!   [`crate::select::subsample`]d copy): with AVX-512, tiles of 12 output channels x 32
//!   pixels kept in registers over all input channels, read straight from NCHW (no
//!   packing), the bias as starting value and a fused ReLU applied on load; with NEON
//!   (aarch64) the same scheme in tiles of 6 channels x 16 pixels; else (`std`) one `gemm`
//!   call per image; else a portable loop, which defines the result.
//! - **Dense**: per image the input windows laid out as columns `[C kh kw, oh ow]`, then
//!   pointwise.
//!
//! No kernel zeroes its output first: every output is written once. Batches and planes are
//! spread over rayon's pool once there is enough work to pay for it.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use crate::arch::{self, Level};
use crate::out::{mark_written, slots, Output};
use crate::window::{window, CONV, PARALLEL_WORK};
use crate::Geom;

/// A convolution's parameters: its weights, an optional bias per output channel, and
/// whether the input goes through a ReLU first (a ReLU folded into the convolution).
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    /// Weights, `[M, C / groups, kh, kw]` flattened.
    pub wt: &'a [f32],
    /// Bias `[M]`.
    pub bias: Option<&'a [f32]>,
    /// ReLU on the input first.
    pub relu: bool,
}

/// Depthwise convolution of `x [n, C, H, W]` with `f.wt [C, 1, kh, kw]` into
/// `out [n, C, oh, ow]`.
///
/// # Panics
/// When a slice length does not fit `g` and `n`.
pub fn depthwise<O: Output + ?Sized>(x: &[f32], n: usize, g: &Geom, f: Filter, out: &mut O) {
    depthwise_at(arch::level(), x, n, g, f, out)
}

pub(crate) fn depthwise_at<O>(level: Level, x: &[f32], n: usize, g: &Geom, f: Filter, out: &mut O)
where
    O: Output + ?Sized,
{
    let s = slots(out, n * g.c * g.plane_out(), "depthwise");
    window::<CONV>(x, n, f, g, level, s);
    // SAFETY: `window` writes every output.
    unsafe { mark_written(out) };
}

/// How a 1x1 convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pointwise {
    /// Loops that define the result (run without `std`, and by the tests).
    #[cfg_attr(feature = "std", allow(dead_code))]
    Portable,
    /// gemm, one call per image or column block (`std`).
    #[cfg(feature = "std")]
    Gemm,
    /// AVX-512 register tiles.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// NEON register tiles.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Pointwise {
    /// The fastest path at `level`.
    pub(crate) fn at(level: Level) -> Self {
        #[cfg(target_arch = "x86_64")]
        if level == Level::Avx512 {
            return Pointwise::Avx512;
        }
        #[cfg(target_arch = "aarch64")]
        if level == Level::Neon {
            return Pointwise::Neon;
        }
        let _ = level;
        #[cfg(feature = "std")]
        return Pointwise::Gemm;
        #[cfg(not(feature = "std"))]
        Pointwise::Portable
    }
}

/// 1x1 convolution of `x [n, k, HW]` with `f.wt [m, k]` into `out [n, m, HW]`.
///
/// # Panics
/// When a slice length does not fit.
pub fn pointwise<O: Output + ?Sized>(
    x: &[f32],
    [n, hw]: [usize; 2],
    m: usize,
    f: Filter,
    out: &mut O,
) {
    let s = slots(out, n * m * hw, "pointwise");
    pointwise_with(Pointwise::at(arch::level()), x, [n, hw], m, f, s);
    // SAFETY: `pointwise_with` writes every output.
    unsafe { mark_written(out) };
}

/// A pointer that may cross to a rayon worker; the caller keeps the regions disjoint.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: used only for disjoint column blocks of one output, all joined before return.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// `self` moved `n` floats on.
    ///
    /// # Safety
    /// As for `pointer::add`.
    unsafe fn add(self, n: usize) -> Ptr {
        Ptr(self.0.add(n))
    }
}

/// [`pointwise`] on the given path into `out`, which it writes completely.
pub(crate) fn pointwise_with(
    path: Pointwise,
    x: &[f32],
    [n, hw]: [usize; 2],
    m: usize,
    f: Filter,
    out: &mut [MaybeUninit<f32>],
) {
    let Filter { wt, bias, relu } = f;
    let k = wt.len().checked_div(m).unwrap_or(0);
    assert_eq!(wt.len(), m * k, "pointwise weight length");
    assert_eq!(x.len(), n * k * hw, "pointwise input length");
    if let Some(b) = bias {
        assert_eq!(b.len(), m, "pointwise bias length");
    }
    let len = n * m * hw;
    assert_eq!(out.len(), len, "pointwise output length");
    if len == 0 {
        return;
    }
    #[cfg(feature = "std")]
    let gemm = path == Pointwise::Gemm;
    #[cfg(not(feature = "std"))]
    let gemm = false;
    // gemm reads the ReLU'd input from a copy; the other paths apply it on load
    let relued: Vec<f32>;
    let x = if relu && gemm {
        relued = x.iter().map(|v| v.max(0.0)).collect();
        &relued[..]
    } else {
        x
    };
    // gemm's bias is written first and accumulated into; the other paths start from it
    if gemm {
        if let Some(b) = bias {
            for (o, &v) in out.chunks_exact_mut(hw).zip(b.iter().cycle()) {
                o.fill(MaybeUninit::new(v));
            }
        }
    }
    let base = Ptr(out.as_mut_ptr() as *mut f32);
    let dims = (m, k, hw);
    let work = m * k * hw;
    let threads = crate::par::threads();
    // one image (or little work): split its columns into blocks of whole SIMD widths
    let parts = if n == 1 && work >= PARALLEL_WORK {
        threads.min(hw / 32).max(1)
    } else {
        1
    };
    let per = hw.div_ceil(parts).next_multiple_of(32).min(hw);
    let (px, pw) = (x.as_ptr() as usize, wt.as_ptr() as usize);
    let run = |i: usize, p: usize| {
        let (c0, c1) = (p * per, ((p + 1) * per).min(hw));
        if c0 >= c1 {
            return;
        }
        // SAFETY: lengths asserted above; each (image, column block) writes its own
        // region, all joined before return; `Avx512` / `Neon` only when the CPU has
        // AVX-512F / NEON.
        unsafe {
            let (o, xi, w) = (
                base.add(i * m * hw),
                (px as *const f32).add(i * k * hw),
                pw as *const f32,
            );
            match path {
                #[cfg(target_arch = "x86_64")]
                Pointwise::Avx512 => {
                    if relu {
                        crate::x86_64::avx512::image::<true>(o.0, xi, w, bias, dims, (c0, c1))
                    } else {
                        crate::x86_64::avx512::image::<false>(o.0, xi, w, bias, dims, (c0, c1))
                    }
                }
                #[cfg(target_arch = "aarch64")]
                Pointwise::Neon => {
                    if relu {
                        crate::aarch64::pointwise::image::<true>(o.0, xi, w, bias, dims, (c0, c1))
                    } else {
                        crate::aarch64::pointwise::image::<false>(o.0, xi, w, bias, dims, (c0, c1))
                    }
                }
                #[cfg(feature = "std")]
                Pointwise::Gemm => gemm_block(o, xi, w, dims, (c0, c1), bias.is_some()),
                Pointwise::Portable => portable_block(o, xi, w, bias, dims, (c0, c1), relu),
            }
        }
    };
    if n > 1 && work * n >= PARALLEL_WORK && threads > 1 {
        crate::par::each(n, true, |i| run(i, 0));
    } else if parts > 1 {
        crate::par::each(parts, true, |p| run(0, p));
    } else {
        (0..n).for_each(|i| run(i, 0));
    }
}

/// `out[m, c0..c1] = bias + sum_kk wt[m, kk] relu?(x[kk, c0..c1])`, `kk` ascending, each
/// product rounded before it is added.
///
/// # Safety
/// `x` holds `k * hw` and `out` `m * hw` floats, `wt` `m * k`, `bias` `m`; no other
/// thread writes the block.
unsafe fn portable_block(
    out: Ptr,
    x: *const f32,
    wt: *const f32,
    bias: Option<&[f32]>,
    (m, k, hw): (usize, usize, usize),
    (c0, c1): (usize, usize),
    relu: bool,
) {
    let x = core::slice::from_raw_parts(x, k * hw);
    let wt = core::slice::from_raw_parts(wt, m * k);
    for mi in 0..m {
        let row = core::slice::from_raw_parts_mut(
            out.0.add(mi * hw + c0) as *mut MaybeUninit<f32>,
            c1 - c0,
        );
        row.fill(MaybeUninit::new(bias.map_or(0.0, |b| b[mi])));
        // SAFETY: every float of the row was written on the line above.
        let row = &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]);
        for (kk, &w) in wt[mi * k..][..k].iter().enumerate() {
            let src = &x[kk * hw + c0..kk * hw + c1];
            if relu {
                for (o, &v) in row.iter_mut().zip(src) {
                    *o += w * v.max(0.0);
                }
            } else {
                for (o, &v) in row.iter_mut().zip(src) {
                    *o += w * v;
                }
            }
        }
    }
}

/// `out[m, cols] (+)= wt[m, k] x[k, cols]` for the column block `[c0, c1)` of rows of
/// length `hw`.
///
/// # Safety
/// `x` holds `k * hw` and `out` `m * hw` floats, `wt` `m * k`, and no other thread
/// writes the block.
#[cfg(feature = "std")]
unsafe fn gemm_block(
    out: Ptr,
    x: *const f32,
    wt: *const f32,
    (m, k, hw): (usize, usize, usize),
    (c0, c1): (usize, usize),
    accumulate: bool,
) {
    gemm::gemm(
        m,
        c1 - c0,
        k,
        out.0.add(c0),
        1,
        hw as isize,
        accumulate,
        wt,
        1,
        k as isize,
        x.add(c0),
        1,
        hw as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Dense convolution (group 1, any kernel) of `x [n, C, H, W]` with `f.wt [m, C kh kw]`
/// into `out [n, m, oh, ow]`: per image, the input windows are laid out as columns
/// `[C kh kw, oh ow]` (zero outside the image), then multiplied by the weights with
/// [`pointwise`].
///
/// # Panics
/// When a slice length does not fit `g`, `m` and `n`.
pub fn dense<O: Output + ?Sized>(x: &[f32], n: usize, m: usize, g: &Geom, f: Filter, out: &mut O) {
    dense_with(Pointwise::at(arch::level()), x, n, m, g, f, out)
}

pub(crate) fn dense_with<O: Output + ?Sized>(
    path: Pointwise,
    x: &[f32],
    n: usize,
    m: usize,
    g: &Geom,
    f: Filter,
    out: &mut O,
) {
    let Filter { wt, relu, .. } = f;
    let (plane_in, plane_out, taps) = (g.plane_in(), g.plane_out(), g.kh * g.kw);
    assert_eq!(x.len(), n * g.c * plane_in, "dense input length");
    assert_eq!(wt.len(), m * g.c * taps, "dense weight length");
    let s = slots(out, n * m * plane_out, "dense");
    if s.is_empty() {
        return;
    }
    let mut cols = vec![0f32; g.c * taps * plane_out];
    for (i, o) in s.chunks_exact_mut(m * plane_out).enumerate() {
        let img = &x[i * g.c * plane_in..][..g.c * plane_in];
        for (r, dst) in cols.chunks_exact_mut(plane_out).enumerate() {
            let (ci, i, j) = (r / taps, r % taps / g.kw, r % g.kw);
            let src = &img[ci * plane_in..][..plane_in];
            for (oh, drow) in dst.chunks_exact_mut(g.ow).enumerate() {
                let ih = (oh * g.sh + i * g.dh)
                    .checked_sub(g.pt)
                    .filter(|&ih| ih < g.h);
                let Some(ih) = ih else {
                    drow.fill(0.0);
                    continue;
                };
                let srow = &src[ih * g.w..][..g.w];
                for (ow, d) in drow.iter_mut().enumerate() {
                    let iw = (ow * g.sw + j * g.dw)
                        .checked_sub(g.pl)
                        .filter(|&iw| iw < g.w);
                    let v = iw.map_or(0.0, |iw| srow[iw]);
                    *d = if relu { v.max(0.0) } else { v };
                }
            }
        }
        pointwise_with(
            path,
            &cols,
            [1, plane_out],
            m,
            Filter { relu: false, ..f },
            o,
        );
    }
    // SAFETY: every image's output block was written by `pointwise_with`.
    unsafe { mark_written(out) };
}

/// Depthwise weight gradient, `out[c, i, j] += sum_{n, oh, ow} x[n, c, oh sh + i dh - pt,
/// ow sw + j dw - pl] * grad[n, c, oh, ow]` (`x [n, C, H, W]`, `grad [n, C, oh, ow]`,
/// `out [C, kh, kw]`), channels split over rayon's pool. As a convolution it would have the
/// whole output map as kernel, which Burn's flex backend runs 5x slower than this loop.
///
/// # Panics
/// When a slice length does not fit `g` and `n`.
pub fn depthwise_weight_grad(x: &[f32], grad: &[f32], n: usize, g: &Geom, out: &mut [f32]) {
    depthwise_weight_grad_at(arch::level(), x, grad, n, g, out)
}

pub(crate) fn depthwise_weight_grad_at(
    level: Level,
    x: &[f32],
    grad: &[f32],
    n: usize,
    g: &Geom,
    out: &mut [f32],
) {
    let taps = g.kh * g.kw;
    assert_eq!(
        x.len(),
        n * g.c * g.plane_in(),
        "weight gradient input length"
    );
    assert_eq!(
        grad.len(),
        n * g.c * g.plane_out(),
        "weight gradient output-gradient length"
    );
    assert_eq!(out.len(), g.c * taps, "weight gradient length");
    if taps == 0 {
        return;
    }
    let job = WeightGrad {
        g,
        spans: g.col_spans(),
        n,
        xs: x,
        gs: grad,
    };
    // always on the pool: this runs inside a backward pass, often beside the input gradient
    crate::par::chunks(out, taps, true, |ci, acc| {
        #[cfg(target_arch = "x86_64")]
        if matches!(level, Level::Avx2 | Level::Avx512) {
            // SAFETY: callers pass a level the CPU has.
            unsafe { crate::x86_64::avx2::weight_grad_channel(&job, ci, acc) };
            return;
        }
        let _ = level;
        job.channel(ci, acc);
    });
}

/// The inputs of one depthwise weight gradient.
pub(crate) struct WeightGrad<'a> {
    g: &'a Geom,
    /// [`Geom::col_spans`], once per call: per row they were two integer divisions per
    /// tap, as costly as the products.
    spans: Vec<(usize, usize, usize)>,
    n: usize,
    xs: &'a [f32],
    gs: &'a [f32],
}

impl WeightGrad<'_> {
    /// Accumulates the `kh * kw` weight gradient of channel `ci` into `acc` (the portable
    /// build; `x86_64::avx2` compiles the same code for AVX2, whose 8-wide vectors hold
    /// the 8 lanes: the same sums in the same order).
    #[inline(always)]
    pub(crate) fn channel(&self, ci: usize, acc: &mut [f32]) {
        let WeightGrad {
            g,
            ref spans,
            n,
            xs,
            gs,
        } = *self;
        let Geom {
            c,
            h,
            w,
            kh,
            kw,
            oh: ho,
            ow: wo,
            sh,
            sw,
            dh,
            dw,
            pt,
            pl,
        } = *g;
        let mut lanes = vec![[0f32; 8]; kh * kw];
        for ni in 0..n {
            let xp = &xs[(ni * c + ci) * h * w..][..h * w];
            let gp = &gs[(ni * c + ci) * ho * wo..][..ho * wo];
            for i in 0..kh {
                for oh in 0..ho {
                    let r = (oh * sh + i * dh) as isize - pt as isize;
                    if r < 0 || r >= h as isize {
                        continue;
                    }
                    let xrow = &xp[r as usize * w..][..w];
                    let grow = &gp[oh * wo..][..wo];
                    for (j, &(lo, hi, start)) in spans.iter().enumerate() {
                        if lo >= hi {
                            continue;
                        }
                        let t = i * kw + j;
                        if sw == 1 {
                            crate::elementwise::dot_lanes(
                                &mut lanes[t],
                                &xrow[start..start + (hi - lo)],
                                &grow[lo..hi],
                            );
                        } else {
                            let shift = j * dw;
                            lanes[t][0] += (lo..hi)
                                .map(|ow| xrow[ow * sw + shift - pl] * grow[ow])
                                .sum::<f32>();
                        }
                    }
                }
            }
        }
        for (a, l) in acc.iter_mut().zip(&lanes) {
            *a += l.iter().sum::<f32>();
        }
    }
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
