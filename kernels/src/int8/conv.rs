//! Int8 convolution on `[N, C, H, W]` (ONNX `QLinearConv` with per-channel weight scales)
//! and the fully connected layer ([`gemm()`]).
//!
//! `y[n, m, oh, ow] = store(requant[m](bias[m] + sum w[m, c, i, j] (x[n, c, ih, iw] - zx)))`
//! with the sum over the taps of output channel `m`'s group; a tap outside the image reads
//! `zx` (real zero: it adds nothing). Weights are symmetric (zero point 0), the bias is in
//! accumulator units (scale `s_in s_w[m]`, zero point 0), `requant[m]` is
//! [`Requant::from_scales`]`(s_in, s_w[m], s_out)` and [`OutQ`] the output's zero point and
//! clamp (a fused ReLU).
//!
//! - **Depthwise** (`groups == C == M`): each plane copied once into a padded i16 plane
//!   of `x - zx` (column phases at a column stride, as the float window engine keeps
//!   them), then summed tap by tap (AVX2 16 and NEON 8 outputs a step): for short rows
//!   all padded rows in one run over the padded width (the rows and columns no output
//!   starts at dropped), else output row by output row.
//! - **Dense and grouped**: per image and group the input windows laid out as columns
//!   `[C/groups kh kw, oh ow]` (a 1x1 stride-1 unpadded convolution reads the input as
//!   they are), packed straight into the SIMD path's layout, then an int8 matrix product
//!   (see `gemm.rs`: AVX2, AVX-512 VNNI, NEON) in blocks of 256 pixels whose sums stay in
//!   cache, output channels split over rayon's pool when large.
//!
//! - **Without allocation** ([`conv_into`], [`gemm_into`]): the portable loops a
//!   microcontroller runs, output row by output row into one row of caller-owned sums
//!   ([`scratch_len`]), each tap's in-image span added as `w (x - zx)`. The sums are
//!   the same integers as the packed paths' (`bias + sum w x - zx sum w`, wrapping), so
//!   the outputs are identical; the tests compare them with `==`.
//!
//! # Preconditions
//! The int32 sum `bias + sum (x - zx) w` must not overflow: each term is at most
//! `255 * 128 = 32_640` in magnitude, so up to `32_000` taps per output channel
//! (`C/groups kh kw`) with `|bias| <= 2^30`, or `65_000` without bias, are always safe.
//! Past that the sums wrap (the same way on every path: the SIMD paths' intermediate
//! sums may wrap, their final value mod 2^32 is the same).

#[cfg(feature = "alloc")]
use alloc::{vec, vec::Vec};

#[cfg(feature = "alloc")]
use super::gemm::{dot, store_row, Cols, Epilogue, Path, Weights};
use super::requant::{check_channels, requant_of, store_row_portable};
use super::{OutQ, Requant};
#[cfg(feature = "alloc")]
use crate::window::PARALLEL_WORK;
use crate::Geom;

/// An int8 convolution's (or fully connected layer's) parameters.
#[derive(Clone, Copy, Debug)]
pub struct Filter<'a> {
    /// Weights `[M, C / groups, kh, kw]` (a fully connected layer: `[M, K]`), zero point 0.
    pub wt: &'a [i8],
    /// Bias `[M]` in accumulator units (scale `s_in s_w[m]`), or none.
    pub bias: Option<&'a [i32]>,
    /// Requantization per output channel (`[M]`), or one for all (`[1]`).
    pub requant: &'a [Requant],
    /// Groups: 1 dense, `C` depthwise. A fully connected layer has 1.
    pub groups: usize,
}

#[cfg(feature = "alloc")]
/// Convolution of `x [n, C, H, W]` (zero point `zx`) with `f` into `y [n, M, oh, ow]`,
/// `C = g.c` and `M = f.wt.len() / (C / groups kh kw)`.
///
/// # Panics
/// When `groups` does not divide `C` and `M`, or a slice length does not fit `g`, `n`
/// and `M` (see also the module's preconditions).
pub fn conv(x: &[i8], zx: i8, n: usize, g: &Geom, f: Filter, out: OutQ, y: &mut [i8]) {
    conv_with(Path::detect(), x, zx, n, g, f, out, y)
}

#[cfg(feature = "alloc")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_with(
    path: Path,
    x: &[i8],
    zx: i8,
    n: usize,
    g: &Geom,
    f: Filter,
    out: OutQ,
    y: &mut [i8],
) {
    let groups = f.groups;
    let (cg, k, m) = shape(g, &f);
    assert_eq!(x.len(), n * g.c * g.plane_in(), "int8 conv input length");
    assert_eq!(y.len(), n * m * g.plane_out(), "int8 conv output length");
    check_channels(m, f.bias, f.requant);
    if y.is_empty() {
        return;
    }
    if groups == g.c && m == g.c {
        return depthwise(path, x, zx, n, g, f, out, y);
    }
    let (mg, p) = (m / groups, g.plane_out());
    let w = Weights::pack(path, f.wt, m, k);
    let epi = Epilogue::new(path, &w, f.bias, zx, f.requant, out);
    let direct = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0;
    let direct = direct && g.oh == g.h && g.ow == g.w;
    let spans = g.col_spans();
    let parallel = mg * k * p >= PARALLEL_WORK && crate::par::threads() >= 2;
    for (img, yi) in x
        .chunks_exact(g.c * g.plane_in())
        .zip(y.chunks_exact_mut(m * p))
    {
        for (gi, yg) in yi.chunks_exact_mut(mg * p).enumerate() {
            let src = &img[gi * cg * g.plane_in()..][..cg * g.plane_in()];
            let packed = if direct {
                Cols::pack(path, src, [k, p], [p, 1])
            } else {
                Cols::build(path, [k, p], |r, row| {
                    window_row(src, g, &spans, r, zx, row)
                })
            };
            product(path, &w, &epi, gi * mg, &packed, p, yg, parallel);
        }
    }
}

#[cfg(feature = "alloc")]
/// Pixels per block of the product: the block's sums (`rows x 256` i32) and columns stay
/// in cache while every row of the block is computed.
const BLOCK: usize = 256;

#[cfg(feature = "alloc")]
/// Output channels `[m0, m0 + yg.len() / p)` of one image (and group) from its packed
/// columns, in blocks of [`BLOCK`] pixels, channels split over the pool when `parallel`.
#[allow(clippy::too_many_arguments)]
fn product(
    path: Path,
    w: &Weights,
    epi: &Epilogue,
    m0: usize,
    cols: &Cols,
    p: usize,
    yg: &mut [i8],
    parallel: bool,
) {
    let rows = yg.len() / p;
    let per = if parallel {
        rows.div_ceil(crate::par::threads()).next_multiple_of(4)
    } else {
        rows
    };
    let pp = cols.pp;
    crate::par::chunks(yg, per * p, parallel, |bi, yo| {
        let (r0, rows) = (m0 + bi * per, yo.len() / p);
        let mut acc = vec![0i32; rows * BLOCK.min(pp)];
        for c0 in (0..pp).step_by(BLOCK) {
            let c1 = (c0 + BLOCK).min(pp);
            let acc = &mut acc[..rows * (c1 - c0)];
            dot(path, w, r0, rows, cols, [c0, c1], acc);
            // `c0 < p`: blocks start at multiples of the lanes, `pp` rounds `p` up to one
            let valid = c1.min(p) - c0;
            for (r, (a, o)) in acc
                .chunks_exact(c1 - c0)
                .zip(yo.chunks_exact_mut(p))
                .enumerate()
            {
                epi.row(path, r0 + r, &a[..valid], &mut o[c0..c0 + valid]);
            }
        }
    });
}

#[cfg(feature = "alloc")]
/// Row `r = (ci, i, j)` of the window columns `[cg kh kw, oh ow]` of planes
/// `img [cg, H, W]`: input `(ci, oh sh + i dh - pt, ow sw + j dw - pl)` for every output,
/// `zx` outside the image. `spans` is [`Geom::col_spans`].
fn window_row(
    img: &[i8],
    g: &Geom,
    spans: &[(usize, usize, usize)],
    r: usize,
    zx: i8,
    dst: &mut [i8],
) {
    let taps = g.kh * g.kw;
    let (ci, i, j) = (r / taps, r % taps / g.kw, r % g.kw);
    let src = &img[ci * g.plane_in()..][..g.plane_in()];
    let (lo, hi, start) = spans[j];
    let (lo, hi) = (lo.min(g.ow), hi.min(g.ow));
    for (oh, drow) in dst.chunks_exact_mut(g.ow).enumerate() {
        let ih = (oh * g.sh + i * g.dh)
            .checked_sub(g.pt)
            .filter(|&ih| ih < g.h);
        let Some(ih) = ih else {
            drow.fill(zx);
            continue;
        };
        let srow = &src[ih * g.w..][..g.w];
        drow[..lo].fill(zx);
        drow[hi..].fill(zx);
        if lo >= hi {
            continue;
        }
        if g.sw == 1 {
            drow[lo..hi].copy_from_slice(&srow[start..start + (hi - lo)]);
        } else {
            for (d, s) in drow[lo..hi]
                .iter_mut()
                .zip(srow[start..].iter().step_by(g.sw))
            {
                *d = *s;
            }
        }
    }
}

#[cfg(feature = "alloc")]
/// Fully connected layer: `y [n, M] = x [n, K] (zero point zx) times f.wt [M, K]^T`,
/// bias, requantized per output channel (ONNX `Gemm` with `transB = 1` between
/// `DequantizeLinear` and `QuantizeLinear`, or `QGemm`). `M = f.wt.len() / k`.
///
/// # Panics
/// When `k` is 0, `f.groups` is not 1, or a slice length does not fit.
pub fn gemm(x: &[i8], zx: i8, [n, k]: [usize; 2], f: Filter, out: OutQ, y: &mut [i8]) {
    gemm_with(Path::detect(), x, zx, [n, k], f, out, y)
}

#[cfg(feature = "alloc")]
pub(crate) fn gemm_with(
    path: Path,
    x: &[i8],
    zx: i8,
    [n, k]: [usize; 2],
    f: Filter,
    out: OutQ,
    y: &mut [i8],
) {
    assert!(
        k > 0 && f.wt.len().is_multiple_of(k),
        "gemm weight length {}",
        f.wt.len()
    );
    assert_eq!(f.groups, 1, "a fully connected layer has one group");
    let m = f.wt.len() / k;
    assert_eq!(x.len(), n * k, "gemm input length");
    assert_eq!(y.len(), n * m, "gemm output length");
    check_channels(m, f.bias, f.requant);
    if y.is_empty() {
        return;
    }
    let w = Weights::pack(path, f.wt, m, k);
    let epi = Epilogue::new(path, &w, f.bias, zx, f.requant, out);
    let cols = Cols::pack(path, x, [k, n], [1, k]);
    let mut acc = vec![0i32; m * cols.pp];
    dot(path, &w, 0, m, &cols, [0, cols.pp], &mut acc);
    for (mi, a) in acc.chunks_exact(cols.pp).enumerate() {
        epi.row_strided(mi, &a[..n], &mut y[mi..], m);
    }
}

#[cfg(feature = "alloc")]
/// `acc[i] = sum_t w[t] x[off[t] + o0 + i]`: the portable depthwise row (and the SIMD
/// rows' tails).
#[inline]
pub(crate) fn taps_portable(x: &[i16], off: &[usize], w: &[i16], acc: &mut [i32], o0: usize) {
    acc.fill(0);
    for (&t, &wv) in off.iter().zip(w) {
        let src = &x[t + o0..][..acc.len()];
        for (a, &v) in acc.iter_mut().zip(src) {
            *a = a.wrapping_add(wv as i32 * v as i32);
        }
    }
}

#[cfg(feature = "alloc")]
/// `acc[o] = sum_t w[t] x[off[t] + o]` on `path`.
fn taps(path: Path, x: &[i16], off: &[usize], w: &[i16], acc: &mut [i32]) {
    assert!(
        off.iter().all(|&o| o + acc.len() <= x.len()) && off.len() == w.len(),
        "depthwise taps outside the padded plane"
    );
    match path {
        // SAFETY: the CPU has the path's features (`Path::at`); bounds asserted above;
        // `|x| <= 255`, `|w| <= 128` (i8 values and differences of two i8).
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 | Path::Vnni => unsafe { crate::x86_64::int8::taps_avx2(x, off, w, acc) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe { crate::aarch64::int8::taps_neon(x, off, w, acc) },
        Path::Portable => taps_portable(x, off, w, acc, 0),
    }
}

#[cfg(feature = "alloc")]
/// Scratch of one depthwise worker: the padded plane, a plane of sums, the taps' offsets.
struct Scratch {
    xp: Vec<i16>,
    acc: Vec<i32>,
    off: Vec<usize>,
    /// The sums over the padded width of every padded row an output row starts at or
    /// passes, `[(oh - 1) sh + 1, pws]` (see `wide` in [`depthwise`]).
    wide: Vec<i32>,
}

#[cfg(feature = "alloc")]
/// Depthwise convolution (`groups == C == M`), see the module doc.
#[allow(clippy::too_many_arguments)]
fn depthwise(path: Path, x: &[i8], zx: i8, n: usize, g: &Geom, f: Filter, out: OutQ, y: &mut [i8]) {
    let (plane_in, plane_out, taps_n) = (g.plane_in(), g.plane_out(), g.kh * g.kw);
    let wt: Vec<i16> = f.wt.iter().map(|&v| v as i16).collect();
    // the padded plane holds every input position any output reads
    let ph = ((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1).max(g.pt + g.h);
    let pw = ((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1).max(g.pl + g.w);
    let pws = pw.div_ceil(g.sw);
    let cols: Vec<usize> = (0..g.kw)
        .map(|j| (j * g.dw % g.sw) * ph * pws + j * g.dw / g.sw)
        .collect();
    // tap (i, j)'s offset for output row 0
    let tap: Vec<usize> = (0..taps_n)
        .map(|t| cols[t % g.kw] + t / g.kw * g.dh * pws)
        .collect();
    let parallel = n * g.c * plane_out * taps_n >= PARALLEL_WORK && crate::par::threads() >= 2;
    // the padded width's run sums `sh pws / ow` times the row by row outputs: worth it
    // at row strides 1 and 2, or for rows of less than one AVX2 block
    let wide = g.sh <= 2 || g.ow < 16;
    let init = || Scratch {
        xp: vec![0; g.sw * ph * pws],
        acc: vec![0; plane_out],
        off: vec![0; taps_n],
        wide: vec![
            0;
            if wide {
                ((g.oh - 1) * g.sh + 1) * pws
            } else {
                0
            }
        ],
    };
    crate::par::chunks_with(y, plane_out, parallel, 8, init, |s, pi, yo| {
        let ch = pi % g.c;
        // the interior: `x - zx` at padded (row + pt, column + pl), in column phases;
        // the border stays 0 (it was zeroed once, planes rewrite the same interior)
        let src = &x[pi * plane_in..][..plane_in];
        let z = zx as i16;
        for (r, row) in src.chunks_exact(g.w).enumerate() {
            let base = (r + g.pt) * pws;
            if g.sw == 1 {
                for (d, &v) in s.xp[base + g.pl..][..g.w].iter_mut().zip(row) {
                    *d = v as i16 - z;
                }
                continue;
            }
            // padded column `c = col + pl` lies in phase `c % sw` at `c / sw`
            for phase in 0..g.sw {
                let col0 = (phase + g.sw - g.pl % g.sw) % g.sw;
                let at = phase * ph * pws + base + (col0 + g.pl) / g.sw;
                let cols = row.iter().skip(col0).step_by(g.sw);
                for (d, &v) in s.xp[at..].iter_mut().zip(cols) {
                    *d = v as i16 - z;
                }
            }
        }
        let w = &wt[ch * taps_n..][..taps_n];
        let (b, rq) = (f.bias.map_or(0, |b| b[ch]), requant_of(f.requant, ch));
        if wide {
            // output row `oh` reads the padded rows from `oh sh` on: every padded row's
            // sums in one run over the padded width, then rows `0, sh, 2 sh, ...` and
            // their first `ow` columns kept (short rows of 7 or 14 outputs would run the
            // SIMD paths' scalar tails)
            let len = (g.oh - 1) * g.sh * pws + g.ow;
            taps(path, &s.xp, &tap, w, &mut s.wide[..len]);
            let rows = s.wide.chunks(g.sh * pws);
            for (arow, wrow) in s.acc.chunks_exact_mut(g.ow).zip(rows) {
                arow.copy_from_slice(&wrow[..g.ow]);
            }
        } else {
            for (oh, arow) in s.acc.chunks_exact_mut(g.ow).enumerate() {
                let row = oh * g.sh * pws;
                for (o, &t) in s.off.iter_mut().zip(&tap) {
                    *o = t + row;
                }
                taps(path, &s.xp, &s.off, w, arow);
            }
        }
        store_row(path, &s.acc, b, rq, out, yo);
    });
}

/// The `i32`s of scratch [`conv_into`] needs for window `g`: one output row of sums.
pub fn scratch_len(g: &Geom) -> usize {
    g.ow
}

/// Output channels per input of a convolution with filter `f` over `g`: `(C / groups,
/// taps per output channel K, M)`.
///
/// # Panics
/// As [`conv_into`].
fn shape(g: &Geom, f: &Filter) -> (usize, usize, usize) {
    let groups = f.groups;
    assert!(
        groups > 0 && g.c.is_multiple_of(groups),
        "{groups} groups of {} channels",
        g.c
    );
    let cg = g.c / groups;
    let k = cg * g.kh * g.kw;
    assert!(
        k > 0 && f.wt.len().is_multiple_of(k),
        "int8 weight length {} for {k} taps per output channel",
        f.wt.len()
    );
    let m = f.wt.len() / k;
    assert_eq!(m % groups, 0, "{groups} groups of {m} output channels");
    (cg, k, m)
}

/// [`conv`] without allocation: the same integers written into `y`, with `scratch`
/// (at least [`scratch_len`]`(g)` values, contents ignored) for one row of sums; one
/// thread, the portable loops (see the module doc).
///
/// # Panics
/// As [`conv`], and when `scratch` is shorter than [`scratch_len`].
#[allow(clippy::too_many_arguments)]
pub fn conv_into(
    x: &[i8],
    zx: i8,
    n: usize,
    g: &Geom,
    f: Filter,
    out: OutQ,
    y: &mut [i8],
    scratch: &mut [i32],
) {
    let (cg, k, m) = shape(g, &f);
    assert_eq!(x.len(), n * g.c * g.plane_in(), "int8 conv input length");
    assert_eq!(y.len(), n * m * g.plane_out(), "int8 conv output length");
    check_channels(m, f.bias, f.requant);
    if y.is_empty() {
        return;
    }
    let acc = &mut scratch[..scratch_len(g)];
    let (mg, zx) = (m / f.groups, zx as i32);
    let (plane_in, taps) = (g.plane_in(), g.kh * g.kw);
    for (img, yi) in x
        .chunks_exact(g.c * plane_in)
        .zip(y.chunks_exact_mut(m * g.plane_out()))
    {
        for (mi, ym) in yi.chunks_exact_mut(g.plane_out()).enumerate() {
            let src = &img[mi / mg * cg * plane_in..][..cg * plane_in];
            let w = &f.wt[mi * k..][..k];
            let (b, rq) = (f.bias.map_or(0, |b| b[mi]), requant_of(f.requant, mi));
            for (oh, yrow) in ym.chunks_exact_mut(g.ow).enumerate() {
                acc.fill(0);
                for (plane, wc) in src.chunks_exact(plane_in).zip(w.chunks_exact(taps)) {
                    for (i, wr) in wc.chunks_exact(g.kw).enumerate() {
                        let ih = (oh * g.sh + i * g.dh).checked_sub(g.pt);
                        let Some(ih) = ih.filter(|&ih| ih < g.h) else {
                            continue;
                        };
                        let row = &plane[ih * g.w..][..g.w];
                        for (j, &wv) in wr.iter().enumerate() {
                            let (lo, hi, start) = g.col_span(j * g.dw);
                            if lo >= hi.min(g.ow) {
                                continue;
                            }
                            let (wv, acc) = (wv as i32, &mut acc[lo..hi]);
                            if g.sw == 1 {
                                // contiguous: the loop vectorizes
                                for (a, &v) in acc.iter_mut().zip(&row[start..]) {
                                    *a = a.wrapping_add(wv * (v as i32 - zx));
                                }
                            } else {
                                let src = row[start..].iter().step_by(g.sw);
                                for (a, &v) in acc.iter_mut().zip(src) {
                                    *a = a.wrapping_add(wv * (v as i32 - zx));
                                }
                            }
                        }
                    }
                }
                store_row_portable(acc, b, rq, out, yrow);
            }
        }
    }
}

/// [`gemm`] without allocation (no scratch either): the same integers, one thread.
///
/// # Panics
/// As [`gemm`].
pub fn gemm_into(x: &[i8], zx: i8, [n, k]: [usize; 2], f: Filter, out: OutQ, y: &mut [i8]) {
    assert!(
        k > 0 && f.wt.len().is_multiple_of(k),
        "gemm weight length {}",
        f.wt.len()
    );
    assert_eq!(f.groups, 1, "a fully connected layer has one group");
    let m = f.wt.len() / k;
    assert_eq!(x.len(), n * k, "gemm input length");
    assert_eq!(y.len(), n * m, "gemm output length");
    check_channels(m, f.bias, f.requant);
    let zx = zx as i32;
    for (xi, yi) in x.chunks_exact(k).zip(y.chunks_exact_mut(m.max(1))) {
        for (mi, (d, w)) in yi.iter_mut().zip(f.wt.chunks_exact(k)).enumerate() {
            let mut a = f.bias.map_or(0, |b| b[mi]);
            for (&wv, &v) in w.iter().zip(xi) {
                a = a.wrapping_add(wv as i32 * (v as i32 - zx));
            }
            *d = out.store(requant_of(f.requant, mi).apply(a));
        }
    }
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
