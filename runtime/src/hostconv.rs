//! Host-memory convolution kernels for the CPU backends (flex, ndarray): the two kinds
//! a DARTS network is made of.
//!
//! - **Depthwise** (`group == C_in == C_out`): per plane, every output row is swept once
//!   per kernel tap over the output columns whose input column is inside the image, so
//!   the inner loop is a fused multiply-add over a slice without bounds tests. Built for
//!   AVX2 + FMA when the CPU has them (checked at run time; the binary stays portable),
//!   and for the baseline otherwise; on aarch64 NEON FMA is the baseline.
//! - **Pointwise** (1x1, no padding, group 1; a strided one reads a subsampled copy of
//!   its input, [`subsample`]): one `gemm` call per image,
//!   `out[M, HW] = W[M, K] x[K, HW] + b`, with the bias written first and accumulated
//!   into, so no separate bias pass. A single image splits its columns over the cores.
//!
//! Both may apply a ReLU to their input first (the ReLU -> conv pairs of DARTS ops are
//! fused at load time). Batches and planes are spread over rayon's pool, the pool Burn's
//! flex backend uses, once there is enough work to pay for it.

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

/// Output columns computed together in registers (one AVX2 vector).
const LANES: usize = 8;

/// One depthwise plane from its zero-padded input `xp` (`[ph, pw]`, ReLU already
/// applied) when the output does not tile into [`dw_block`]s of 32: blocks of one row x
/// [`LANES`] columns, the last partial block element by element. `S1`: column stride 1.
#[inline(always)]
fn dw_plane<const FMA: bool, const S1: bool>(
    xp: &[f32],
    pw: usize,
    out: &mut [f32],
    wt: &[f32],
    b: f32,
    g: &Geom,
) {
    let full = g.ow / LANES * LANES;
    let sw = if S1 { 1 } else { g.sw };
    for oh in 0..g.oh {
        for ow0 in (0..full).step_by(LANES) {
            dw_block::<FMA, S1, 1, LANES>(xp, pw, out, wt, b, g, oh, ow0);
        }
        for ow in full..g.ow {
            let mut a = b;
            for i in 0..g.kh {
                let row = &xp[(oh * g.sh + i * g.dh) * pw..][..pw];
                for j in 0..g.kw {
                    a = madd::<FMA>(a, row[ow * sw + j * g.dw], wt[i * g.kw + j]);
                }
            }
            out[oh * g.ow + ow] = a;
        }
    }
}

/// `R` output rows x `W` output columns from `(oh0, ow0)`, accumulated in registers
/// over all taps (at `R * W` = 32 floats: four AVX2 vectors, independent FMA chains).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dw_block<const FMA: bool, const S1: bool, const R: usize, const W: usize>(
    xp: &[f32],
    pw: usize,
    out: &mut [f32],
    wt: &[f32],
    b: f32,
    g: &Geom,
    oh0: usize,
    ow0: usize,
) {
    let sw = if S1 { 1 } else { g.sw };
    let mut acc = [[b; W]; R];
    for i in 0..g.kh {
        for j in 0..g.kw {
            let wv = wt[i * g.kw + j];
            for (r, a) in acc.iter_mut().enumerate() {
                let row = &xp[((oh0 + r) * g.sh + i * g.dh) * pw..][..pw];
                let base = ow0 * sw + j * g.dw;
                let src: [f32; W] = if S1 {
                    row[base..base + W].try_into().expect("W floats")
                } else {
                    std::array::from_fn(|l| row[base + l * sw])
                };
                *a = std::array::from_fn(|l| madd::<FMA>(a[l], src[l], wv));
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        out[(oh0 + r) * g.ow + ow0..][..W].copy_from_slice(a);
    }
}

/// One plane in [`dw_block`]s when the output tiles exactly, else [`dw_plane`].
#[inline(always)]
fn dw_plane_tiled<const FMA: bool, const S1: bool>(
    xp: &[f32],
    pw: usize,
    out: &mut [f32],
    wt: &[f32],
    b: f32,
    g: &Geom,
) {
    macro_rules! tiles {
        ($r:literal, $w:literal) => {
            for oh0 in (0..g.oh).step_by($r) {
                for ow0 in (0..g.ow).step_by($w) {
                    dw_block::<FMA, S1, $r, $w>(xp, pw, out, wt, b, g, oh0, ow0);
                }
            }
        };
    }
    if g.ow % 32 == 0 {
        tiles!(1, 32)
    } else if g.ow % 16 == 0 && g.oh % 2 == 0 {
        tiles!(2, 16)
    } else if g.ow % 8 == 0 && g.oh % 4 == 0 {
        tiles!(4, 8)
    } else {
        dw_plane::<FMA, S1>(xp, pw, out, wt, b, g)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dw_plane_fma(xp: &[f32], pw: usize, out: &mut [f32], wt: &[f32], b: f32, g: &Geom) {
    if g.sw == 1 {
        dw_plane_tiled::<true, true>(xp, pw, out, wt, b, g)
    } else {
        dw_plane_tiled::<true, false>(xp, pw, out, wt, b, g)
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

fn dw_plane_best(xp: &[f32], pw: usize, out: &mut [f32], wt: &[f32], b: f32, g: &Geom) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has the features the function is built for (checked above).
        return unsafe { dw_plane_fma(xp, pw, out, wt, b, g) };
    }
    const FMA: bool = cfg!(target_arch = "aarch64");
    if g.sw == 1 {
        dw_plane_tiled::<FMA, true>(xp, pw, out, wt, b, g)
    } else {
        dw_plane_tiled::<FMA, false>(xp, pw, out, wt, b, g)
    }
}

/// Copies plane `x [h, w]` into the middle of `xp` (zero borders), applying ReLU when
/// asked. `xp` is `[ph, pw]` with the image at row `pt`, column `pl`.
fn pad_plane(x: &[f32], xp: &mut [f32], g: &Geom, pw: usize, relu: bool) {
    xp.fill(0.0);
    for (r, src) in x.chunks_exact(g.w).enumerate() {
        let dst = &mut xp[(r + g.pt) * pw + g.pl..][..g.w];
        if relu {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v.max(0.0);
            }
        } else {
            dst.copy_from_slice(src);
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
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert_eq!(x.len(), n * g.c * plane_in, "depthwise input length");
    assert_eq!(wt.len(), g.c * taps, "depthwise weight length");
    // the padded plane holds every input position any output reads
    let ph = ((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1).max(g.pt + g.h);
    let pw = ((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1).max(g.pl + g.w);
    let mut out = vec![0f32; n * g.c * plane_out];
    let job = |xp: &mut Vec<f32>, p: usize, o: &mut [f32]| {
        let ch = p % g.c;
        xp.resize(ph * pw, 0.0);
        pad_plane(&x[p * plane_in..][..plane_in], xp, g, pw, relu);
        let b = bias.map_or(0.0, |b| b[ch]);
        dw_plane_best(xp, pw, o, &wt[ch * taps..][..taps], b, g);
    };
    if out.len() * taps < PARALLEL_WORK || rayon::current_num_threads() < 2 {
        let mut xp = Vec::new();
        out.chunks_exact_mut(plane_out)
            .enumerate()
            .for_each(|(p, o)| job(&mut xp, p, o));
    } else {
        out.par_chunks_exact_mut(plane_out)
            .enumerate()
            .with_min_len(8)
            .for_each_init(Vec::new, |xp, (p, o)| job(xp, p, o));
    }
    out
}

/// A pointer that may cross to a rayon worker; the caller keeps the regions disjoint.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: used only for disjoint column blocks of one output, all joined before return.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

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

/// 1x1 convolution of `x [n, k, HW]` with `wt [m, k]` and optional bias `[m]`; returns
/// `[n, m, HW]`.
pub(crate) fn pointwise(
    x: &[f32],
    n: usize,
    hw: usize,
    wt: &[f32],
    m: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let k = wt.len() / m;
    assert_eq!(wt.len(), m * k, "pointwise weight length");
    assert_eq!(x.len(), n * k * hw, "pointwise input length");
    let mut out = vec![0f32; n * m * hw];
    if let Some(b) = bias {
        for img in out.chunks_exact_mut(m * hw) {
            for (row, &v) in img.chunks_exact_mut(hw).zip(b) {
                row.fill(v);
            }
        }
    }
    let dims = (m, k, hw);
    let acc = bias.is_some();
    let work = m * k * hw;
    let threads = rayon::current_num_threads();
    if n > 1 && work * n >= PARALLEL_WORK && threads > 1 {
        out.par_chunks_exact_mut(m * hw)
            .zip(x.par_chunks_exact(k * hw))
            .for_each(|(o, xi)| {
                // SAFETY: lengths asserted above; each image writes its own chunk.
                unsafe {
                    gemm_block(
                        Ptr(o.as_mut_ptr()),
                        xi.as_ptr(),
                        wt.as_ptr(),
                        dims,
                        (0, hw),
                        acc,
                    )
                }
            });
        return out;
    }
    // one image (or little work): split the columns into blocks of whole SIMD widths
    let parts = if work >= PARALLEL_WORK {
        threads.min(hw / 16).max(1)
    } else {
        1
    };
    for (o, xi) in out.chunks_exact_mut(m * hw).zip(x.chunks_exact(k * hw)) {
        let (po, px, pw) = (
            Ptr(o.as_mut_ptr()),
            xi.as_ptr() as usize,
            wt.as_ptr() as usize,
        );
        let per = hw.div_ceil(parts).next_multiple_of(16).min(hw);
        let block = |p: usize| {
            let (c0, c1) = (p * per, ((p + 1) * per).min(hw));
            if c0 < c1 {
                // SAFETY: lengths asserted above; blocks [c0, c1) are disjoint.
                unsafe { gemm_block(po, px as *const f32, pw as *const f32, dims, (c0, c1), acc) }
            }
        };
        if parts == 1 {
            block(0);
        } else {
            (0..parts).into_par_iter().for_each(block);
        }
    }
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

    /// Against Burn's conv2d (an independent implementation), with and without bias, at
    /// strides 1 and 2, dilations 1 and 2, symmetric padding, batch 1 and 3.
    #[test]
    fn depthwise_matches_burn() {
        let dev = Default::default();
        for &(n, c, h, w) in &[(1, 4, 9, 7), (3, 6, 16, 16), (2, 40, 32, 32), (1, 3, 2, 3)] {
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
                let g = Geom {
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
                };
                let bv = b.into_data().to_vec::<f32>().unwrap();
                let got = depthwise(&vec_of(x), n, &vec_of(wt), Some(&bv), &g, false);
                TensorData::new(got, [n, c, oh, ow])
                    .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
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

    /// Against Burn's conv2d for batch 1 (column split) and batches (image split), with
    /// and without bias, small and large enough to go parallel.
    #[test]
    fn pointwise_matches_burn() {
        let dev = Default::default();
        for &(n, k, m, h, w) in &[
            (1, 3, 5, 4, 4),
            (1, 36, 36, 32, 32),
            (4, 72, 36, 16, 16),
            (2, 8, 144, 3, 5),
        ] {
            let x = Tensor::<B, 4>::random([n, k, h, w], Distribution::Normal(0.0, 1.0), &dev);
            let wt = Tensor::<B, 4>::random([m, k, 1, 1], Distribution::Normal(0.0, 1.0), &dev);
            let b = Tensor::<B, 1>::random([m], Distribution::Normal(0.0, 1.0), &dev);
            let opts = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
            for bias in [false, true] {
                let want = conv2d(x.clone(), wt.clone(), bias.then(|| b.clone()), opts.clone());
                let bv = b.clone().into_data().to_vec::<f32>().unwrap();
                let got = pointwise(
                    &vec_of(x.clone()),
                    n,
                    h * w,
                    &vec_of(wt.clone()),
                    m,
                    bias.then_some(&bv[..]),
                );
                TensorData::new(got, [n, m, h, w])
                    .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
            }
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
            let got = pointwise(&sub, n, oh * ow, &vec_of(wt), m, None);
            TensorData::new(got, [n, m, oh, ow])
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
        }
    }
}
