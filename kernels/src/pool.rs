//! Max and average pooling of `[N, C, H, W]` floats (floor mode, no dilation, every window
//! holding at least one image element: padding at most half the kernel) and their
//! backward passes.
//!
//! [`max`], [`sum`] and [`avg`] run the window engine (padded plane, AVX2 register tiles);
//! [`max_with_argmax`] also keeps the index of each maximum for [`max_backward`]: it sweeps
//! whole output rows per kernel offset with a branch-free select, so its loops vectorize.
//! An average sums a window's taps in row-major order from zero (the padding adds zeros,
//! which change no sum) and divides by the taps inside the image (or by the whole kernel).

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use crate::arch::{self, Level};
use crate::conv::Filter;
use crate::out::{mark_written, slots, Output};
use crate::window::{window, MAX, SUM};
use crate::Geom;

/// Whether the pooling kernels cover window `g`: a non-empty undilated kernel with a
/// non-zero stride, padding at most half the kernel, and at least one output.
pub fn supported(g: &Geom) -> bool {
    g.pool_supported()
}

fn check(g: &Geom) {
    assert!(supported(g), "pooling window {g:?} not covered");
}

/// Max pooling of `x [n, C, H, W]` into `out [n, C, oh, ow]` (the padding counts as minus
/// infinity; NaN never replaces a maximum).
pub fn max<O: Output + ?Sized>(x: &[f32], n: usize, g: &Geom, out: &mut O) {
    window_pool::<MAX, O>(arch::level(), x, n, g, out)
}

/// Summing pool (the padding counts as zero) of `x [n, C, H, W]` into `out [n, C, oh, ow]`.
pub fn sum<O: Output + ?Sized>(x: &[f32], n: usize, g: &Geom, out: &mut O) {
    window_pool::<SUM, O>(arch::level(), x, n, g, out)
}

pub(crate) fn window_pool<const MODE: u8, O: Output + ?Sized>(
    level: Level,
    x: &[f32],
    n: usize,
    g: &Geom,
    out: &mut O,
) {
    check(g);
    let s = slots(out, n * g.c * g.plane_out(), "pool");
    window::<MODE>(x, n, Filter::default(), g, level, s);
    // SAFETY: `window` writes every output.
    unsafe { mark_written(out) };
}

/// Average pooling of `x [n, C, H, W]` into `out [n, C, oh, ow]`: each window's sum divided
/// by the whole kernel when `count_pad`, else by its taps inside the image.
pub fn avg<O: Output + ?Sized>(x: &[f32], n: usize, g: &Geom, count_pad: bool, out: &mut O) {
    avg_at(arch::level(), x, n, g, count_pad, out)
}

pub(crate) fn avg_at<O: Output + ?Sized>(
    level: Level,
    x: &[f32],
    n: usize,
    g: &Geom,
    count_pad: bool,
    out: &mut O,
) {
    check(g);
    let s = slots(out, n * g.c * g.plane_out(), "pool");
    window::<SUM>(x, n, Filter::default(), g, level, s);
    // SAFETY: `window` wrote every output.
    let out_f = unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) };
    if count_pad {
        let taps = (g.kh * g.kw) as f32;
        out_f.iter_mut().for_each(|o| *o /= taps);
    } else {
        let inside = |o: usize, s: usize, k: usize, p: usize, len: usize| {
            (0..k)
                .filter(|t| {
                    let i = o * s + t;
                    i >= p && i - p < len
                })
                .count()
        };
        let per: Vec<f32> = (0..g.oh)
            .flat_map(|oh| (0..g.ow).map(move |ow| (oh, ow)))
            .map(|(oh, ow)| {
                (inside(oh, g.sh, g.kh, g.pt, g.h) * inside(ow, g.sw, g.kw, g.pl, g.w)) as f32
            })
            .collect();
        for plane in out_f.chunks_exact_mut(g.plane_out()) {
            for (o, d) in plane.iter_mut().zip(&per) {
                *o /= d;
            }
        }
    }
    // SAFETY: every output was written by `window` (and divided in place above).
    unsafe { mark_written(out) };
}

/// The running maximum and its index after seeing value `v` at index `i`: `(v, i)` when
/// `v > o`, else `(o, a)` (the earlier index wins ties; NaN never replaces). Written as
/// bit masks with unconditional results so the row loops vectorize: as `if`s the
/// compiler emitted one conditional store per lane, and max pooling took five times as
/// long as average pooling on the same windows.
#[inline(always)]
fn keep_max(o: f32, a: u32, v: f32, i: u32) -> (f32, u32) {
    let m = 0u32.wrapping_sub((v > o) as u32);
    (
        f32::from_bits((o.to_bits() & !m) | (v.to_bits() & m)),
        (a & !m) | (i & m),
    )
}

/// Max pooling of one plane; `arg` receives the flat input index of each output's maximum
/// (the first one in row-major window order, as Burn and PyTorch pick).
fn max_plane(
    g: &Geom,
    spans: &[(usize, usize, usize)],
    x: &[f32],
    out: &mut [f32],
    arg: &mut [u32],
) {
    let (w, wo, s) = (g.w, g.ow, g.sw);
    for (oh, (orow, arow)) in out.chunks_mut(wo).zip(arg.chunks_mut(wo)).enumerate() {
        orow.fill(f32::NEG_INFINITY);
        let (r0, r1) = g.rows(oh);
        // every output starts at its window's first element inside the image
        for (ow, a) in arow.iter_mut().enumerate() {
            let c0 = (ow * s).saturating_sub(g.pl);
            *a = (r0 * w + c0) as u32;
        }
        for r in r0..r1 {
            let xrow = &x[r * w..][..w];
            for &(lo, hi, start) in spans.iter() {
                if lo >= hi {
                    continue;
                }
                let first = (r * w + start) as u32;
                let outs = orow[lo..hi].iter_mut().zip(arow[lo..hi].iter_mut());
                if s == 1 {
                    // branch-free select so the loop vectorizes (stride-1 rows are
                    // contiguous; the flat index grows by one per output)
                    for ((o, a), (&v, i)) in outs.zip(xrow[start..].iter().zip(first..)) {
                        (*o, *a) = keep_max(*o, *a, v, i);
                    }
                } else {
                    let ins = xrow[start..].iter().step_by(s);
                    let idx = (first..).step_by(s);
                    for ((o, a), (&v, i)) in outs.zip(ins.zip(idx)) {
                        (*o, *a) = keep_max(*o, *a, v, i);
                    }
                }
            }
        }
    }
}

/// Max pooling of `x [n, C, H, W]` into `out [n, C, oh, ow]`, and into `arg` the index
/// within its input plane of each output's maximum (for [`max_backward`]). The values are
/// those of [`max`].
pub fn max_with_argmax(x: &[f32], n: usize, g: &Geom, out: &mut [f32], arg: &mut [u32]) {
    check(g);
    let (planes, in_len, out_len) = (n * g.c, g.plane_in(), g.plane_out());
    assert_eq!(x.len(), planes * in_len, "pool input length");
    assert_eq!(out.len(), planes * out_len, "pool output length");
    assert_eq!(arg.len(), planes * out_len, "pool argmax length");
    let spans = g.col_spans();
    crate::par::for_planes(planes, x, in_len, out, out_len, arg, out_len, |x, o, a| {
        max_plane(g, &spans, x, o, a)
    });
}

/// Max-pooling gradient: `gx[plane, arg[i]] += grad[i]` for every output `i` of each plane
/// (`grad [n, C, oh, ow]`, `gx [n, C, H, W]`, added to).
pub fn max_backward(grad: &[f32], arg: &[u32], n: usize, g: &Geom, gx: &mut [f32]) {
    let (planes, in_len, out_len) = (n * g.c, g.plane_in(), g.plane_out());
    assert_eq!(grad.len(), planes * out_len, "pool gradient length");
    assert_eq!(arg.len(), planes * out_len, "pool argmax length");
    assert_eq!(gx.len(), planes * in_len, "pool input-gradient length");
    if in_len == 0 || out_len == 0 {
        return;
    }
    for (p, plane) in gx.chunks_mut(in_len).enumerate() {
        let (gp, ap) = (
            &grad[p * out_len..][..out_len],
            &arg[p * out_len..][..out_len],
        );
        for (gv, &a) in gp.iter().zip(ap) {
            plane[a as usize] += gv;
        }
    }
}

/// Average-pooling gradient (windows averaged over their taps inside the image): each
/// output's gradient, divided by its window's element count, added to every element of
/// the window. Writes all of `gx [n, C, H, W]` from `grad [n, C, oh, ow]`.
pub fn avg_backward(grad: &[f32], n: usize, g: &Geom, gx: &mut [f32]) {
    check(g);
    let (planes, in_len, out_len) = (n * g.c, g.plane_in(), g.plane_out());
    assert_eq!(grad.len(), planes * out_len, "pool gradient length");
    assert_eq!(gx.len(), planes * in_len, "pool input-gradient length");
    let spans = g.col_spans();
    crate::par::for_planes::<u32>(
        planes,
        grad,
        out_len,
        gx,
        in_len,
        &mut [],
        0,
        |gp, xp, _| avg_grad_plane(g, &spans, gp, xp),
    );
}

fn avg_grad_plane(g: &Geom, spans: &[(usize, usize, usize)], grad: &[f32], gx: &mut [f32]) {
    let (w, wo) = (g.w, g.ow);
    gx.fill(0.0);
    let mut share = vec![0f32; wo];
    for (oh, grow) in grad.chunks(wo).enumerate() {
        let (r0, r1) = g.rows(oh);
        let rows = (r1 - r0) as f32;
        for (ow, s) in share.iter_mut().enumerate() {
            *s = grow[ow] / (rows * g.cols(ow) as f32);
        }
        for r in r0..r1 {
            let xrow = &mut gx[r * w..][..w];
            for &(lo, hi, start) in spans.iter() {
                for ow in lo..hi {
                    xrow[start + (ow - lo) * g.sw] += share[ow];
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
