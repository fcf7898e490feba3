//! Convolution kernels against Burn's conv2d (an independent implementation), and each SIMD
//! path against the portable one on random shapes (property tests).

use super::*;
use crate::fresh_vec;
use crate::testing::{abs, assert_close, simd_levels, Rng};
use burn::backend::Flex;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};
use proptest::prelude::*;
use std::vec::Vec;

type B = Flex;

fn vec_of(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn vec_of1(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn filter<'a>(wt: &'a [f32], bias: Option<&'a [f32]>, relu: bool) -> Filter<'a> {
    Filter { wt, bias, relu }
}

/// The pointwise paths this build and CPU have.
fn pointwise_paths() -> Vec<Pointwise> {
    let mut paths = std::vec![Pointwise::Portable];
    #[cfg(feature = "std")]
    paths.push(Pointwise::Gemm);
    for l in simd_levels("pointwise") {
        if matches!(l, Level::Avx512 | Level::Neon) {
            paths.push(Pointwise::at(l));
        }
    }
    paths
}

/// Against Burn's conv2d, with and without bias, at strides 1 and 2, dilations 1 and 2,
/// symmetric padding, batch 1 and 3; portable and SIMD builds.
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
            let g = Geom::square(c, [h, w], k, s, p, d);
            assert_eq!((g.oh, g.ow), (oh, ow));
            let bv = vec_of1(b);
            let (xv, wv) = (vec_of(x), vec_of(wt));
            for level in [Level::Portable, arch::level()] {
                let got = fresh_vec(n * c * oh * ow, |o| {
                    depthwise_at(level, &xv, n, &g, filter(&wv, Some(&bv), false), o)
                });
                TensorData::new(got, [n, c, oh, ow])
                    .assert_approx_eq::<f32>(&want.clone().into_data(), Tolerance::absolute(1e-5));
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
    let got = fresh_vec(n * c * oh * ow, |o| {
        depthwise(&vec_of(x), n, &g, filter(&vec_of(wt), None, false), o)
    });
    TensorData::new(got, [n, c, oh, ow])
        .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
}

/// Against Burn's conv2d (of the ReLU'd input when `relu`) for batch 1 (column split) and
/// batches (image split), with and without bias and ReLU, small and large enough to go
/// parallel, widths and channel counts that leave partial tiles; every pointwise path.
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
        for path in pointwise_paths() {
            for (bias, relu) in [(false, false), (true, false), (true, true), (false, true)] {
                let xin = if relu {
                    x.clone().clamp_min(0.0)
                } else {
                    x.clone()
                };
                let want = conv2d(xin, wt.clone(), bias.then(|| b.clone()), opts.clone());
                let (xv, wv) = (vec_of(x.clone()), vec_of(wt.clone()));
                let got = fresh_vec(n * m * h * w, |o| {
                    let s = crate::out::slots(o, n * m * h * w, "test");
                    let f = filter(&wv, bias.then_some(&bv[..]), relu);
                    pointwise_with(path, &xv, [n, h * w], m, f, s);
                    // SAFETY: pointwise_with writes every output
                    unsafe { crate::out::mark_written(o) };
                });
                TensorData::new(got, [n, m, h, w])
                    .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
            }
        }
    }
}

/// Dense convolutions (the stem's 3x3, strided, dilated, 5x5, ReLU'd input) against Burn's
/// conv2d, batch 1 and 3.
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
        let g = Geom::square(c, [h, w], k, s, p, d);
        let (xv, wv, bv) = (vec_of(x), vec_of(wt), vec_of1(b));
        let got = fresh_vec(n * m * oh * ow, |o| {
            dense(&xv, n, m, &g, filter(&wv, Some(&bv), relu), o)
        });
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
        let xv = vec_of(x);
        let sub = fresh_vec(n * k * oh * ow, |o| {
            crate::select::subsample(&xv, n * k, [h, w], 0, [s, s], o)
        });
        let wv = vec_of(wt);
        let got = fresh_vec(n * m * oh * ow, |o| {
            pointwise(&sub, [n, oh * ow], m, filter(&wv, None, false), o)
        });
        TensorData::new(got, [n, m, oh, ow])
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
    }
}

/// The depthwise weight gradient against the sum written out, on a strided, dilated,
/// padded window.
#[test]
fn depthwise_weight_grad_matches_the_definition() {
    let mut rng = Rng::new(7);
    for &(n, c, h, w, k, s, p, d) in &[
        (2, 3, 9, 7, 3, 1, 1, 1),
        (1, 2, 11, 10, 3, 2, 2, 2),
        (2, 1, 8, 8, 5, 1, 2, 1),
    ] {
        let g = Geom::square(c, [h, w], k, s, p, d);
        let x = rng.vec(n * c * h * w);
        let gr = rng.vec(n * c * g.oh * g.ow);
        let mut want = std::vec![0f32; c * k * k];
        for ci in 0..c {
            for i in 0..k {
                for j in 0..k {
                    let mut acc = 0f64;
                    for ni in 0..n {
                        for oh in 0..g.oh {
                            for ow in 0..g.ow {
                                let (r, col) = (
                                    (oh * s + i * d) as isize - p as isize,
                                    (ow * s + j * d) as isize - p as isize,
                                );
                                if (0..h as isize).contains(&r) && (0..w as isize).contains(&col) {
                                    let xv = x[((ni * c + ci) * h + r as usize) * w + col as usize];
                                    acc +=
                                        (xv * gr[((ni * c + ci) * g.oh + oh) * g.ow + ow]) as f64;
                                }
                            }
                        }
                    }
                    want[(ci * k + i) * k + j] = acc as f32;
                }
            }
        }
        let mut got = std::vec![0f32; c * k * k];
        depthwise_weight_grad(&x, &gr, n, &g, &mut got);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} against {b}");
        }
    }
}

/// A random window: kernel 1, 2, 3 or 5, stride 1 or 2, dilation 1 or 2, padding up to
/// what keeps every output's window overlapping the image, odd and even sizes.
fn window_case() -> impl Strategy<Value = (usize, Geom, u64)> {
    (
        1usize..3,
        1usize..6,
        1usize..20,
        1usize..20,
        prop::sample::select(std::vec![1usize, 2, 3, 5]),
        1usize..3,
        1usize..3,
        any::<u64>(),
    )
        .prop_flat_map(|(n, c, h, w, k, s, d, seed)| {
            (Just((n, c, h, w, k, s, d, seed)), 0..=d * (k - 1) / 2)
        })
        .prop_filter_map(
            "window larger than the padded plane",
            |((n, c, h, w, k, s, d, seed), p)| {
                Geom::try_square(c, [h, w], k, s, p, d).map(|g| (n, g, seed))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Depthwise (groups = channels): every SIMD level against the portable build.
    #[test]
    fn depthwise_simd_matches_portable((n, g, seed) in window_case(), relu: bool, bias: bool) {
        let mut rng = Rng::new(seed);
        let x = rng.vec(n * g.c * g.plane_in());
        let wt = rng.vec(g.c * g.kh * g.kw);
        let b = rng.vec(g.c);
        let b = bias.then_some(&b[..]);
        let len = n * g.c * g.plane_out();
        let want = fresh_vec(len, |o| depthwise_at(Level::Portable, &x, n, &g, filter(&wt, b, relu), o));
        let babs = b.map(abs);
        let mag = fresh_vec(len, |o| {
            depthwise_at(Level::Portable, &abs(&x), n, &g, filter(&abs(&wt), babs.as_deref(), false), o)
        });
        for level in simd_levels("depthwise") {
            let got = fresh_vec(len, |o| depthwise_at(level, &x, n, &g, filter(&wt, b, relu), o));
            assert_close(&got, &want, &mag, &std::format!("depthwise {level:?} {g:?}"));
        }
    }

    /// Dense (group 1) and pointwise: every matrix-product path against the portable one.
    #[test]
    fn dense_paths_match_portable((n, g, seed) in window_case(), m in 1usize..20, relu: bool, bias: bool) {
        let mut rng = Rng::new(seed);
        let x = rng.vec(n * g.c * g.plane_in());
        let wt = rng.vec(m * g.c * g.kh * g.kw);
        let b = rng.vec(m);
        let b = bias.then_some(&b[..]);
        let babs = b.map(abs);
        let len = n * m * g.plane_out();
        let run = |path, x: &[f32], wt: &[f32], b: Option<&[f32]>, relu| {
            fresh_vec(len, |o| dense_with(path, x, n, m, &g, filter(wt, b, relu), o))
        };
        let want = run(Pointwise::Portable, &x, &wt, b, relu);
        let mag = run(Pointwise::Portable, &abs(&x), &abs(&wt), babs.as_deref(), false);
        for path in pointwise_paths().into_iter().skip(1) {
            let got = run(path, &x, &wt, b, relu);
            assert_close(&got, &want, &mag, &std::format!("dense {path:?} m {m} {g:?}"));
        }
    }

    /// The depthwise weight gradient: the AVX2 build sums exactly as the portable one.
    #[test]
    fn weight_grad_simd_equals_portable((n, g, seed) in window_case()) {
        let mut rng = Rng::new(seed);
        let x = rng.vec(n * g.c * g.plane_in());
        let gr = rng.vec(n * g.c * g.plane_out());
        let mut want = std::vec![0f32; g.c * g.kh * g.kw];
        depthwise_weight_grad_at(Level::Portable, &x, &gr, n, &g, &mut want);
        for level in simd_levels("depthwise weight gradient") {
            let mut got = std::vec![0f32; want.len()];
            depthwise_weight_grad_at(level, &x, &gr, n, &g, &mut got);
            prop_assert_eq!(&got, &want);
        }
    }
}
