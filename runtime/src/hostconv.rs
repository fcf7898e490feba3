//! Host-memory convolution and pooling kernels for the CPU backends (flex, ndarray).
//! Each picks its SIMD build at run time from what the CPU has (`#[target_feature]`
//! builds behind `is_x86_feature_detected!`), so the binary stays portable; other CPUs
//! (aarch64 edge boards) run portable loops the compiler vectorizes (NEON FMA on aarch64).
//!
//! - **Window** ([`window`]: depthwise convolution, max and summing pools): each input
//!   plane is copied once into a padded plane (ReLU applied there; a column stride `s`
//!   stores it as `s` column phases so a tap's loads stay contiguous), then tiles of
//!   outputs (8 AVX2 vectors: 2x32, 4x16 or 8x8) are accumulated in registers over all
//!   taps, the kernel size fixed at compile time for 3x3 and 5x5.
//! - **Pointwise** ([`pointwise`]: 1x1, no padding, group 1; a strided one reads a
//!   [`subsample`]d copy): with AVX-512, tiles of 12 output channels x 32 pixels kept in
//!   registers over all input channels, read straight from NCHW (no packing), the bias as
//!   starting value and a fused ReLU applied on load; else one `gemm` call per image.
//! - **Dense** ([`dense`]: group 1, any kernel, the stem): im2col, then [`pointwise`].
//!
//! No kernel zeroes its output first: every output is written once. Batches and planes
//! are spread over rayon's pool once there is enough work to pay for it (inside the
//! runtime's one-thread worker pools they stay on the worker).

use rayon::prelude::*;

/// Work (multiply-adds) below which a kernel stays on the calling thread. Measured on a
/// 2-core x86: a DARTS op on one 32x32 image (0.3-1.3 M multiply-adds) ran 1.3-2.9x
/// slower split over two rayon workers than on one thread; a batch of 32 ran 1.6-3x
/// faster split.
const PARALLEL_WORK: usize = 1 << 22;

/// Geometry of a depthwise convolution on `[N, C, H, W]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Leading padding (top, left); trailing padding only shows in `oh`, `ow`.
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Every `s`-th row and column of each of the `planes` planes `[h, w]` of `x`.
pub(crate) fn subsample(x: &[f32], planes: usize, [h, w]: [usize; 2], s: [usize; 2]) -> Vec<f32> {
    let (oh, ow) = ((h - 1) / s[0] + 1, (w - 1) / s[1] + 1);
    let mut out = Vec::with_capacity(planes * oh * ow);
    for plane in x.chunks_exact(h * w).take(planes) {
        for row in plane.chunks_exact(w).step_by(s[0]) {
            out.extend(row.iter().step_by(s[1]));
        }
    }
    out
}

#[inline(always)]
fn madd<const FMA: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if FMA {
        a.mul_add(b, acc)
    } else {
        acc + a * b
    }
}

/// What a window computes over its taps ([`window`]'s `MODE`).
pub(crate) const CONV: u8 = 0;
/// Maximum (the padding reads as minus infinity).
pub(crate) const MAX: u8 = 1;
/// Sum (the padding reads as zero); average pools divide afterwards.
pub(crate) const SUM: u8 = 2;

#[inline(always)]
fn tap<const MODE: u8, const FMA: bool>(acc: f32, x: f32, w: f32) -> f32 {
    match MODE {
        CONV => madd::<FMA>(acc, x, w),
        // `vmaxps`-shaped, not `f32::max` (no NaN fix-up in the inner loop)
        MAX => {
            if x > acc {
                x
            } else {
                acc
            }
        }
        _ => acc + x,
    }
}

type Out = std::mem::MaybeUninit<f32>;

/// One plane's inputs. The padded input `xp` (ReLU already applied, border at the pad
/// value) is kept as `sw` column phases, `[sw][ph][pws]`: padded column `c` lies in
/// phase `c % sw` at `c / sw`, so the columns a tap reads for consecutive outputs are
/// contiguous at any column stride. `wt [kh, kw]` and `b` are read for `CONV` only.
struct Plane<'a> {
    xp: &'a [f32],
    /// Offset of tap column `j`'s phase and first column (`(j dw % sw) ph pws + j dw / sw`).
    cols: &'a [usize],
    pws: usize,
    wt: &'a [f32],
    b: f32,
    g: &'a Geom,
}

impl Plane<'_> {
    /// The kernel size: `KH` x `KW` when fixed at compile time (non-zero), else `g`'s.
    #[inline(always)]
    fn kernel<const KH: usize, const KW: usize>(&self) -> (usize, usize) {
        (
            if KH > 0 { KH } else { self.g.kh },
            if KW > 0 { KW } else { self.g.kw },
        )
    }

    /// An accumulator's starting value: the bias, minus infinity, or zero.
    #[inline(always)]
    fn start<const MODE: u8>(&self) -> f32 {
        match MODE {
            CONV => self.b,
            MAX => f32::NEG_INFINITY,
            _ => 0.0,
        }
    }

    /// Offset in `xp` of the input tap `(i, j)` reads for output `(oh, ow)`; the next
    /// output column's is the next float.
    #[inline(always)]
    fn at(&self, oh: usize, ow: usize, i: usize, j: usize) -> usize {
        self.cols[j] + (oh * self.g.sh + i * self.g.dh) * self.pws + ow
    }
}

/// One output computed tap by tap: the portable path, and the leftovers of the vector
/// tiles.
#[inline(always)]
fn one<const MODE: u8, const FMA: bool, const KH: usize, const KW: usize>(
    p: &Plane,
    out: &mut [Out],
    oh: usize,
    ow: usize,
) {
    let g = p.g;
    let (kh, kw) = p.kernel::<KH, KW>();
    let mut a = p.start::<MODE>();
    for i in 0..kh {
        for j in 0..kw {
            let wv = if MODE == CONV { p.wt[i * kw + j] } else { 0.0 };
            a = tap::<MODE, FMA>(a, p.xp[p.at(oh, ow, i, j)], wv);
        }
    }
    out[oh * g.ow + ow].write(a);
}

/// The portable plane: rows of `W` outputs accumulated together (the compiler
/// vectorizes the lanes), the rest one by one.
#[inline(always)]
fn plane_portable<const MODE: u8, const FMA: bool, const KH: usize, const KW: usize>(
    p: &Plane,
    out: &mut [Out],
) {
    const W: usize = 8;
    let g = p.g;
    let (kh, kw) = p.kernel::<KH, KW>();
    let full = g.ow / W * W;
    let start = p.start::<MODE>();
    for oh in 0..g.oh {
        for ow0 in (0..full).step_by(W) {
            let mut acc = [start; W];
            for i in 0..kh {
                for j in 0..kw {
                    let wv = if MODE == CONV { p.wt[i * kw + j] } else { 0.0 };
                    let src = &p.xp[p.at(oh, ow0, i, j)..][..W];
                    for (a, &x) in acc.iter_mut().zip(src) {
                        *a = tap::<MODE, FMA>(*a, x, wv);
                    }
                }
            }
            for (o, &a) in out[oh * g.ow + ow0..][..W].iter_mut().zip(&acc) {
                o.write(a);
            }
        }
        for ow in full..g.ow {
            one::<MODE, FMA, KH, KW>(p, out, oh, ow);
        }
    }
}

/// AVX2 + FMA tiles: `R` output rows x `NV` vectors of 8 columns, `R * NV` = 8
/// independent accumulator chains (enough to cover the FMA latency), every tap a
/// broadcast weight times one unaligned load per vector.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Out, Plane, CONV, MAX};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA present; the tile lies inside the plane's output, and `p.xp` holds
    /// every input it reads (the padded plane's extent, checked by the caller).
    #[inline(always)]
    unsafe fn tile<
        const MODE: u8,
        const KH: usize,
        const KW: usize,
        const R: usize,
        const NV: usize,
    >(
        p: &Plane,
        out: &mut [Out],
        oh0: usize,
        ow0: usize,
    ) {
        let g = p.g;
        let (kh, kw) = p.kernel::<KH, KW>();
        let start = _mm256_set1_ps(p.start::<MODE>());
        let mut acc = [[start; NV]; R];
        let (xp, wt, cols) = (p.xp.as_ptr(), p.wt.as_ptr(), p.cols.as_ptr());
        for i in 0..kh {
            let rows: [*const f32; R] =
                std::array::from_fn(|r| xp.add(((oh0 + r) * g.sh + i * g.dh) * p.pws + ow0));
            for j in 0..kw {
                let wv = _mm256_set1_ps(if MODE == CONV {
                    *wt.add(i * kw + j)
                } else {
                    0.0
                });
                let cj = *cols.add(j);
                for (a, row) in acc.iter_mut().zip(rows) {
                    let src = row.add(cj);
                    for (v, av) in a.iter_mut().enumerate() {
                        let x = _mm256_loadu_ps(src.add(8 * v));
                        *av = match MODE {
                            CONV => _mm256_fmadd_ps(x, wv, *av),
                            MAX => _mm256_max_ps(x, *av),
                            _ => _mm256_add_ps(x, *av),
                        };
                    }
                }
            }
        }
        let o = out.as_mut_ptr() as *mut f32;
        for (r, a) in acc.iter().enumerate() {
            for (v, av) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add((oh0 + r) * g.ow + ow0 + 8 * v), *av);
            }
        }
    }

    /// Rows in tiles of `R` (the last ones one at a time), full vectors of each row in
    /// tiles of `NV`, then `1`, the columns left over one by one.
    #[inline(always)]
    unsafe fn plane_with<
        const MODE: u8,
        const KH: usize,
        const KW: usize,
        const R: usize,
        const NV: usize,
    >(
        p: &Plane,
        out: &mut [Out],
    ) {
        let g = p.g;
        let vecs = g.ow / 8;
        let rows_full = g.oh / R * R;
        for oh0 in (0..g.oh).step_by(R) {
            let mut v = 0;
            while v + NV <= vecs {
                if oh0 < rows_full {
                    tile::<MODE, KH, KW, R, NV>(p, out, oh0, 8 * v);
                } else {
                    for oh in oh0..g.oh {
                        tile::<MODE, KH, KW, 1, NV>(p, out, oh, 8 * v);
                    }
                }
                v += NV;
            }
            for oh in oh0..(oh0 + R).min(g.oh) {
                for vv in v..vecs {
                    tile::<MODE, KH, KW, 1, 1>(p, out, oh, 8 * vv);
                }
                for ow in vecs * 8..g.ow {
                    super::one::<MODE, true, KH, KW>(p, out, oh, ow);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn plane_sized<const MODE: u8, const KH: usize, const KW: usize>(
        p: &Plane,
        out: &mut [Out],
    ) {
        let vecs = p.g.ow / 8;
        if vecs >= 4 {
            plane_with::<MODE, KH, KW, 2, 4>(p, out)
        } else if vecs >= 2 {
            plane_with::<MODE, KH, KW, 4, 2>(p, out)
        } else {
            plane_with::<MODE, KH, KW, 8, 1>(p, out)
        }
    }

    /// # Safety
    /// AVX2 and FMA present; `p.xp` is the whole padded plane of `p.g`, `out` the whole
    /// output plane.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn plane<const MODE: u8>(p: &Plane, out: &mut [Out]) {
        match (p.g.kh, p.g.kw) {
            (3, 3) => plane_sized::<MODE, 3, 3>(p, out),
            (5, 5) => plane_sized::<MODE, 5, 5>(p, out),
            _ => plane_sized::<MODE, 0, 0>(p, out),
        }
    }
}

/// Whether the AVX2 + FMA builds may run (x86_64 only).
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn plane_best<const MODE: u8>(p: &Plane, out: &mut [Out], simd: bool) {
    assert_eq!(out.len(), p.g.oh * p.g.ow, "window output plane");
    #[cfg(target_arch = "x86_64")]
    if simd && has_fma() {
        // SAFETY: the CPU has the features (checked above); `window` sized `xp` to the
        // padded plane and `out` to the output plane (asserted above).
        return unsafe { avx2::plane::<MODE>(p, out) };
    }
    let _ = simd;
    const FMA: bool = cfg!(target_arch = "aarch64");
    match (p.g.kh, p.g.kw) {
        (3, 3) => plane_portable::<MODE, FMA, 3, 3>(p, out),
        (5, 5) => plane_portable::<MODE, FMA, 5, 5>(p, out),
        _ => plane_portable::<MODE, FMA, 0, 0>(p, out),
    }
}

/// Writes plane `x [h, w]` into the phases of `xp` (see [`Plane`]) at padded row `pt`,
/// column `pl`, ReLU'd when asked. The border is not touched: `xp` is filled with the
/// pad value once per call, and every plane writes the same interior positions.
fn pad_plane(x: &[f32], xp: &mut [f32], g: &Geom, (ph, pws): (usize, usize), relu: bool) {
    for (r, src) in x.chunks_exact(g.w).enumerate() {
        if g.sw == 1 {
            let dst = &mut xp[(r + g.pt) * pws + g.pl..][..g.w];
            if relu {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v.max(0.0);
                }
            } else {
                dst.copy_from_slice(src);
            }
        } else {
            for (col, &v) in src.iter().enumerate() {
                let c = col + g.pl;
                xp[((c % g.sw) * ph + r + g.pt) * pws + c / g.sw] =
                    if relu { v.max(0.0) } else { v };
            }
        }
    }
}

/// Depthwise convolution of `x [n, C, H, W]` with `wt [C, 1, kh, kw]` and optional bias
/// `[C]`, ReLU on the input first when `relu`; returns `[n, C, oh, ow]`.
pub(crate) fn depthwise(
    x: &[f32],
    n: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Geom,
    relu: bool,
) -> Vec<f32> {
    assert_eq!(wt.len(), g.c * g.kh * g.kw, "depthwise weight length");
    window::<CONV>(x, n, wt, bias, g, relu, true)
}

/// Max (`MAX`) or summing (`SUM`) pool of `x [n, C, H, W]` over windows `g` (floor
/// mode; every window must hold an image element); returns `[n, C, oh, ow]`.
pub(crate) fn pool<const MODE: u8>(x: &[f32], n: usize, g: &Geom) -> Vec<f32> {
    window::<MODE>(x, n, &[], None, g, false, true)
}

/// Runs `MODE` over every window of every plane of `x [n, C, H, W]`: each input plane
/// is copied once into a padded plane, then the outputs are accumulated in registers
/// over all taps. `wt [C, kh, kw]` and `bias [C]` are read for `CONV` only.
fn window<const MODE: u8>(
    x: &[f32],
    n: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Geom,
    relu: bool,
    simd: bool,
) -> Vec<f32> {
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert_eq!(x.len(), n * g.c * plane_in, "window input length");
    // the padded plane holds every input position any output reads
    let ph = ((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1).max(g.pt + g.h);
    let pw = ((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1).max(g.pl + g.w);
    let pws = pw.div_ceil(g.sw);
    let pad = if MODE == MAX { f32::NEG_INFINITY } else { 0.0 };
    let len = n * g.c * plane_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let cols: Vec<usize> = (0..g.kw)
        .map(|j| {
            let c = j * g.dw;
            (c % g.sw) * ph * pws + c / g.sw
        })
        .collect();
    let job = |xp: &mut Vec<f32>, p: usize, o: &mut [Out]| {
        let ch = p % g.c;
        if xp.is_empty() {
            // the border, once per buffer: planes only overwrite the interior
            xp.resize(g.sw * ph * pws, pad);
        }
        pad_plane(&x[p * plane_in..][..plane_in], xp, g, (ph, pws), relu);
        let wt = if MODE == CONV {
            &wt[ch * taps..][..taps]
        } else {
            &[]
        };
        let b = bias.map_or(0.0, |b| b[ch]);
        let plane = Plane {
            xp,
            cols: &cols,
            pws,
            wt,
            b,
            g,
        };
        plane_best::<MODE>(&plane, o, simd);
    };
    let spare = &mut out.spare_capacity_mut()[..len];
    if len * taps < PARALLEL_WORK || rayon::current_num_threads() < 2 {
        let mut xp = Vec::new();
        spare
            .chunks_exact_mut(plane_out)
            .enumerate()
            .for_each(|(p, o)| job(&mut xp, p, o));
    } else {
        spare
            .par_chunks_exact_mut(plane_out)
            .enumerate()
            .with_min_len(8)
            .for_each_init(Vec::new, |xp, (p, o)| job(xp, p, o));
    }
    // SAFETY: every plane's every output was written above (`plane` covers all of
    // `[oh, ow]`: whole tiles, or row blocks plus the rest one by one).
    unsafe { out.set_len(len) };
    out
}

/// Dense convolution (group 1, any kernel) of `x [n, C, H, W]` with `wt [m, C kh kw]`
/// and optional bias `[m]`, ReLU on the input first when `relu`: per image, the input
/// windows are laid out as columns `[C kh kw, oh ow]` (zero outside the image), then
/// multiplied by the weights with [`pointwise`]. Returns `[n, m, oh, ow]`.
pub(crate) fn dense(
    x: &[f32],
    n: usize,
    wt: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    g: &Geom,
    relu: bool,
) -> Vec<f32> {
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert_eq!(x.len(), n * g.c * plane_in, "dense input length");
    assert_eq!(wt.len(), m * g.c * taps, "dense weight length");
    let mut cols = vec![0f32; g.c * taps * plane_out];
    let mut out = Vec::with_capacity(n * m * plane_out);
    for img in x.chunks_exact(g.c * plane_in) {
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
        let y = pointwise(&cols, 1, plane_out, wt, m, bias, false);
        if n == 1 {
            return y;
        }
        out.extend_from_slice(&y);
    }
    out
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

/// `out[m, cols] (+)= wt[m, k] x[k, cols]` for the column block `[c0, c1)` of rows of
/// length `hw`.
///
/// # Safety
/// `x` holds `k * hw` and `out` `m * hw` floats, `wt` `m * k`, and no other thread
/// writes the block.
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

/// The AVX-512 pointwise kernel: output tiles of `MR` rows (output channels) x 32
/// columns (two vectors) accumulated in registers over all `k` input channels, read
/// straight from the NCHW input (no packing), the bias as the starting value, the
/// input's ReLU applied as it is loaded. Masked loads and stores cover any width.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Output rows per tile: 12 x 2 accumulators of the 32 vector registers.
    pub(super) const MR: usize = 12;

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
    pub(super) unsafe fn image<const RELU: bool>(
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
}

/// Whether the AVX-512 pointwise kernel may run (x86_64 only).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// 1x1 convolution of `x [n, k, HW]` with `wt [m, k]` and optional bias `[m]`, ReLU on
/// the input first when `relu`; returns `[n, m, HW]`. Uses the AVX-512 kernel where the
/// CPU has it, else `gemm`.
pub(crate) fn pointwise(
    x: &[f32],
    n: usize,
    hw: usize,
    wt: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    pointwise_with(x, n, hw, wt, m, bias, relu, has_avx512())
}

#[allow(clippy::too_many_arguments)]
fn pointwise_with(
    x: &[f32],
    n: usize,
    hw: usize,
    wt: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    relu: bool,
    simd: bool,
) -> Vec<f32> {
    let k = wt.len() / m;
    assert_eq!(wt.len(), m * k, "pointwise weight length");
    assert_eq!(x.len(), n * k * hw, "pointwise input length");
    if let Some(b) = bias {
        assert_eq!(b.len(), m, "pointwise bias length");
    }
    let relued: Vec<f32>;
    let x = if relu && !simd {
        relued = x.iter().map(|v| v.max(0.0)).collect();
        &relued[..]
    } else {
        x
    };
    let len = n * m * hw;
    // no zero pass: the AVX-512 kernel and gemm (`read_dst = false`) write every output
    // without reading it; gemm's bias is written first and accumulated into
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if bias.is_some() && !simd {
        for _ in 0..n {
            for &v in bias.into_iter().flatten() {
                out.extend(std::iter::repeat_n(v, hw));
            }
        }
    }
    let base = Ptr(out.as_mut_ptr());
    let dims = (m, k, hw);
    let acc = bias.is_some();
    let work = m * k * hw;
    let threads = rayon::current_num_threads();
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
        // SAFETY: lengths asserted above, the capacity reserved; each (image, column
        // block) writes its own region, all joined before `set_len`; `simd` only when
        // the CPU has AVX-512F.
        unsafe {
            let (o, xi, w) = (
                base.add(i * m * hw),
                (px as *const f32).add(i * k * hw),
                pw as *const f32,
            );
            #[cfg(target_arch = "x86_64")]
            if simd {
                return if relu {
                    avx512::image::<true>(o.0, xi, w, bias, dims, (c0, c1))
                } else {
                    avx512::image::<false>(o.0, xi, w, bias, dims, (c0, c1))
                };
            }
            gemm_block(o, xi, w, dims, (c0, c1), acc)
        }
    };
    if n > 1 && work * n >= PARALLEL_WORK && threads > 1 {
        (0..n).into_par_iter().for_each(|i| run(i, 0));
    } else if parts > 1 {
        (0..parts).into_par_iter().for_each(|p| run(0, p));
    } else {
        (0..n).for_each(|i| run(i, 0));
    }
    // SAFETY: every output of every image was written above.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    type B = Flex;

    fn vec_of(t: Tensor<B, 4>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// A square window: kernel `k`, stride `s`, dilation `d`, padding `p` on both axes.
    fn square(
        c: usize,
        [h, w]: [usize; 2],
        k: usize,
        s: usize,
        d: usize,
        p: usize,
        [oh, ow]: [usize; 2],
    ) -> Geom {
        Geom {
            c,
            h,
            w,
            kh: k,
            kw: k,
            sh: s,
            sw: s,
            dh: d,
            dw: d,
            pt: p,
            pl: p,
            oh,
            ow,
        }
    }

    fn vec_of1(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// Against Burn's conv2d (an independent implementation), with and without bias, at
    /// strides 1 and 2, dilations 1 and 2, symmetric padding, batch 1 and 3.
    #[test]
    fn depthwise_matches_burn() {
        let dev = Default::default();
        for &(n, c, h, w) in &[
            (1, 4, 9, 7),
            (3, 6, 16, 16),
            (2, 40, 32, 32),
            (1, 3, 2, 3),
            (1, 2, 13, 44),
            (2, 3, 11, 20),
        ] {
            for &(k, s, d) in &[
                (3, 1, 1),
                (5, 1, 1),
                (3, 2, 1),
                (3, 1, 2),
                (5, 1, 2),
                (5, 2, 2),
            ] {
                let p = d * (k - 1) / 2;
                if h + 2 * p < d * (k - 1) + 1 || w + 2 * p < d * (k - 1) + 1 {
                    continue;
                }
                let x = Tensor::<B, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &dev);
                let wt = Tensor::<B, 4>::random([c, 1, k, k], Distribution::Normal(0.0, 1.0), &dev);
                let b = Tensor::<B, 1>::random([c], Distribution::Normal(0.0, 1.0), &dev);
                let opts = ConvOptions::new([s, s], [p, p], [d, d], c);
                let want = conv2d(x.clone(), wt.clone(), Some(b.clone()), opts);
                let [_, _, oh, ow] = want.dims();
                let g = square(c, [h, w], k, s, d, p, [oh, ow]);
                let bv = b.into_data().to_vec::<f32>().unwrap();
                let (xv, wv) = (vec_of(x), vec_of(wt));
                for simd in [false, true] {
                    let got = window::<CONV>(&xv, n, &wv, Some(&bv), &g, false, simd);
                    TensorData::new(got, [n, c, oh, ow]).assert_approx_eq::<f32>(
                        &want.clone().into_data(),
                        Tolerance::absolute(1e-5),
                    );
                }
            }
        }
    }

    /// Asymmetric padding (one extra column on the right) against Burn's conv2d of the
    /// explicitly padded input.
    #[test]
    fn depthwise_asymmetric_padding() {
        let dev = Default::default();
        let (n, c, h, w) = (2, 3, 6, 5);
        let x = Tensor::<B, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &dev);
        let wt = Tensor::<B, 4>::random([c, 1, 3, 3], Distribution::Normal(0.0, 1.0), &dev);
        let padded = x
            .clone()
            .pad((0, 1, 1, 1), burn::tensor::ops::PadMode::Constant(0.0));
        let want = conv2d(
            padded,
            wt.clone(),
            None,
            ConvOptions::new([1, 1], [0, 0], [1, 1], c),
        );
        let [_, _, oh, ow] = want.dims();
        let g = Geom {
            c,
            h,
            w,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pt: 1,
            pl: 0,
            oh,
            ow,
        };
        let got = depthwise(&vec_of(x), n, &vec_of(wt), None, &g, false);
        TensorData::new(got, [n, c, oh, ow])
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
    }

    /// Against Burn's conv2d (of the ReLU'd input when `relu`) for batch 1 (column
    /// split) and batches (image split), with and without bias and ReLU, small and large
    /// enough to go parallel, widths and channel counts that leave partial tiles; both
    /// the AVX-512 kernel (where the CPU has it) and the gemm path.
    #[test]
    fn pointwise_matches_burn() {
        let dev = Default::default();
        for &(n, k, m, h, w) in &[
            (1, 3, 5, 4, 4),
            (1, 36, 36, 32, 32),
            (4, 72, 36, 16, 16),
            (2, 8, 144, 3, 5),
            (1, 576, 144, 8, 8),
            (3, 17, 29, 7, 9),
        ] {
            let x = Tensor::<B, 4>::random([n, k, h, w], Distribution::Normal(0.0, 1.0), &dev);
            // weights of a trained layer's scale (outputs of unit scale), so 1e-4 is a
            // bound on the difference two summation orders make
            let wt = Tensor::<B, 4>::random([m, k, 1, 1], Distribution::Normal(0.0, 1.0), &dev)
                .div_scalar((k as f32).sqrt());
            let b = Tensor::<B, 1>::random([m], Distribution::Normal(0.0, 1.0), &dev);
            let opts = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
            let bv = vec_of1(b.clone());
            for simd in [false, has_avx512()] {
                for (bias, relu) in [(false, false), (true, false), (true, true), (false, true)] {
                    let xin = if relu {
                        x.clone().clamp_min(0.0)
                    } else {
                        x.clone()
                    };
                    let want = conv2d(xin, wt.clone(), bias.then(|| b.clone()), opts.clone());
                    let got = pointwise_with(
                        &vec_of(x.clone()),
                        n,
                        h * w,
                        &vec_of(wt.clone()),
                        m,
                        bias.then_some(&bv[..]),
                        relu,
                        simd,
                    );
                    TensorData::new(got, [n, m, h, w])
                        .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
                }
            }
        }
    }

    /// Dense convolutions (the stem's 3x3, strided, dilated, 5x5, ReLU'd input) against
    /// Burn's conv2d, batch 1 and 3.
    #[test]
    fn dense_matches_burn() {
        let dev = Default::default();
        for &(n, c, m, h, w, k, s, p, d, relu) in &[
            (1, 3, 108, 32, 32, 3, 1, 1, 1, false),
            (3, 3, 8, 9, 7, 3, 2, 1, 1, true),
            (1, 4, 5, 10, 11, 5, 1, 2, 1, false),
            (2, 2, 3, 12, 12, 3, 1, 2, 2, true),
            (1, 5, 6, 6, 8, 2, 2, 0, 1, false),
        ] {
            let x = Tensor::<B, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let wt = Tensor::<B, 4>::random([m, c, k, k], Distribution::Normal(0.0, 1.0), &dev)
                .div_scalar(((c * k * k) as f32).sqrt());
            let b = Tensor::<B, 1>::random([m], Distribution::Normal(0.0, 1.0), &dev);
            let xin = if relu {
                x.clone().clamp_min(0.0)
            } else {
                x.clone()
            };
            let opts = ConvOptions::new([s, s], [p, p], [d, d], 1);
            let want = conv2d(xin, wt.clone(), Some(b.clone()), opts);
            let [_, _, oh, ow] = want.dims();
            let g = square(c, [h, w], k, s, d, p, [oh, ow]);
            let got = dense(&vec_of(x), n, &vec_of(wt), m, Some(&vec_of1(b)), &g, relu);
            TensorData::new(got, [n, m, oh, ow])
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
        }
    }

    /// A strided 1x1 convolution as subsample + pointwise, against Burn's conv2d.
    #[test]
    fn strided_pointwise_matches_burn() {
        let dev = Default::default();
        for &(n, k, m, h, w, s) in &[(1, 8, 6, 8, 8, 2), (2, 5, 7, 9, 7, 2), (1, 4, 4, 7, 10, 3)] {
            let x = Tensor::<B, 4>::random([n, k, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let wt = Tensor::<B, 4>::random([m, k, 1, 1], Distribution::Normal(0.0, 1.0), &dev);
            let opts = ConvOptions::new([s, s], [0, 0], [1, 1], 1);
            let want = conv2d(x.clone(), wt.clone(), None, opts);
            let [_, _, oh, ow] = want.dims();
            let sub = subsample(&vec_of(x), n * k, [h, w], [s, s]);
            let got = pointwise(&sub, n, oh * ow, &vec_of(wt), m, None, false);
            TensorData::new(got, [n, m, oh, ow])
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
        }
    }

    /// The portable window path against the AVX2 one (itself checked against Burn's
    /// pools in `host`'s tests) for max and sum pools: strides 1-3, odd sizes.
    #[test]
    fn portable_pools_match_simd() {
        let dev = Default::default();
        for &(c, h, w, k, s, p) in &[
            (3, 9, 7, 3, 1, 1),
            (2, 32, 32, 3, 2, 1),
            (4, 13, 44, 3, 2, 1),
            (2, 11, 20, 2, 2, 0),
            (1, 10, 17, 5, 3, 2),
        ] {
            let x = vec_of(Tensor::<B, 4>::random(
                [2, c, h, w],
                Distribution::Normal(0.0, 1.0),
                &dev,
            ));
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let g = square(c, [h, w], k, s, 1, p, [oh, ow]);
            assert_eq!(
                window::<MAX>(&x, 2, &[], None, &g, false, false),
                window::<MAX>(&x, 2, &[], None, &g, false, true)
            );
            let (a, b) = (
                window::<SUM>(&x, 2, &[], None, &g, false, false),
                window::<SUM>(&x, 2, &[], None, &g, false, true),
            );
            TensorData::new(a, [2, c, oh, ow]).assert_approx_eq::<f32>(
                &TensorData::new(b, [2, c, oh, ow]),
                Tolerance::absolute(1e-5),
            );
        }
    }
}
