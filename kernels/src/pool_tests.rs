//! Pooling kernels against Burn's pooling (an independent implementation), hand-worked
//! windows, the summation order averages keep, and each SIMD level against the portable
//! build on random windows (property tests).

use super::*;
use crate::fresh_vec;
use crate::testing::{simd_levels, Rng};
use burn::backend::Flex;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};
use proptest::prelude::*;
use std::vec::Vec;

type B = Flex;

/// Kernel, stride and padding per axis over `c` planes of `[h, w]`.
fn rect(
    c: usize,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [ph, pw]: [usize; 2],
) -> Geom {
    Geom {
        c,
        h,
        w,
        kh,
        kw,
        sh,
        sw,
        dh: 1,
        dw: 1,
        pt: ph,
        pl: pw,
        oh: (h + 2 * ph - kh) / sh + 1,
        ow: (w + 2 * pw - kw) / sw + 1,
    }
}

/// Against Burn's own pooling, max and average (both divisors).
#[test]
fn kernels_match_burn() {
    let dev = Default::default();
    let tol = Tolerance::<f32>::absolute(1e-5);
    for &dims in &[
        [1, 3, 8, 8],
        [2, 5, 7, 9],
        [1, 2, 1, 1],
        [3, 40, 16, 16],
        [4, 64, 32, 32],
    ] {
        let x = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
        let xv: Vec<f32> = x.clone().into_data().to_vec().unwrap();
        let [n, c, h, w] = dims;
        for &(kh, kw, sh, sw, ph, pw) in &[
            (3, 3, 1, 1, 1, 1),
            (3, 3, 2, 2, 1, 1),
            (2, 2, 2, 2, 0, 0),
            (3, 1, 1, 2, 1, 0),
        ] {
            if h + 2 * ph < kh || w + 2 * pw < kw {
                continue;
            }
            let g = rect(c, [h, w], [kh, kw], [sh, sw], [ph, pw]);
            let shape = [n, c, g.oh, g.ow];
            let len = n * c * g.plane_out();
            let fast = fresh_vec(len, |o| max(&xv, n, &g, o));
            let slow = max_pool2d(x.clone(), [kh, kw], [sh, sw], [ph, pw], [1, 1], false);
            TensorData::new(fast, shape).assert_approx_eq(&slow.into_data(), tol);
            for include in [false, true] {
                let fast = fresh_vec(len, |o| avg(&xv, n, &g, include, o));
                let slow = avg_pool2d(x.clone(), [kh, kw], [sh, sw], [ph, pw], include, false);
                TensorData::new(fast, shape).assert_approx_eq(&slow.into_data(), tol);
            }
        }
    }
}

#[test]
fn hand_worked_values() {
    // 1..9 in a 3x3 plane, 3x3 window, stride 2, padding 1 -> 2x2 outputs
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let g = Geom::square(1, [3, 3], 3, 2, 1, 1);
    assert_eq!(fresh_vec(4, |o| max(&x, 1, &g, o)), [5.0, 6.0, 8.0, 9.0]);
    // windows {1,2,4,5}, {2,3,5,6}, {4,5,7,8}, {5,6,8,9}
    assert_eq!(
        fresh_vec(4, |o| avg(&x, 1, &g, false, o)),
        [3.0, 4.0, 6.0, 7.0]
    );
    assert_eq!(
        fresh_vec(4, |o| avg(&x, 1, &g, true, o)),
        [12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0]
    );
    let (mut out, mut arg) = (std::vec![0f32; 4], std::vec![0u32; 4]);
    max_with_argmax(&x, 1, &g, &mut out, &mut arg);
    assert_eq!(
        (out, arg),
        (std::vec![5.0, 6.0, 8.0, 9.0], std::vec![4, 5, 7, 8])
    );
    // gradients: max to the argmax, average shared over the 4 inside elements
    let mut gx = std::vec![0f32; 9];
    max_backward(&[1.0, 2.0, 3.0, 4.0], &[4, 5, 7, 8], 1, &g, &mut gx);
    assert_eq!(gx, [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0]);
    avg_backward(&[4.0, 4.0, 4.0, 4.0], 1, &g, &mut gx);
    assert_eq!(gx, [1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]);
}

/// The window average sums in the order the row-sweep kernel it replaced did: from zero,
/// rows of the window top to bottom, columns left to right, the taps inside the image
/// only, then one division by rows x columns. Bit-for-bit, on every level.
#[test]
fn average_keeps_the_row_major_summation_order() {
    let mut rng = Rng::new(11);
    for &(c, h, w, k, s, p) in &[
        (3, 9, 7, 3, 1, 1),
        (2, 32, 32, 3, 2, 1),
        (4, 13, 44, 3, 2, 1),
        (1, 10, 17, 5, 3, 2),
        (2, 8, 8, 2, 2, 0),
    ] {
        let g = Geom::square(c, [h, w], k, s, p, 1);
        // values of mixed scale, so a different order would round differently
        let x: Vec<f32> = rng
            .vec(2 * c * h * w)
            .iter()
            .map(|v| v * 1e3f32.powf(v.abs()))
            .collect();
        let mut want = Vec::new();
        for plane in x.chunks_exact(h * w) {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let (r0, r1) = g.rows(oh);
                    let c0 = (ow * s).saturating_sub(p);
                    let c1 = (ow * s + k - p).min(w);
                    let mut acc = 0f32;
                    for r in r0..r1 {
                        for col in c0..c1 {
                            acc += plane[r * w + col];
                        }
                    }
                    want.push(acc / ((r1 - r0) as f32 * (c1 - c0) as f32));
                }
            }
        }
        for level in [Level::Portable, arch::level()] {
            let got = fresh_vec(want.len(), |o| avg_at(level, &x, 2, &g, false, o));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{level:?} {g:?}");
        }
    }
}

/// The portable window path against the SIMD ones for max and sum pools: strides 1-3, odd
/// sizes. Both are exact (no products; the same taps in the same order).
#[test]
fn portable_pools_match_simd() {
    let mut rng = Rng::new(3);
    for &(c, h, w, k, s, p) in &[
        (3, 9, 7, 3, 1, 1),
        (2, 32, 32, 3, 2, 1),
        (4, 13, 44, 3, 2, 1),
        (2, 11, 20, 2, 2, 0),
        (1, 10, 17, 5, 3, 2),
    ] {
        let x = rng.vec(2 * c * h * w);
        let g = Geom::square(c, [h, w], k, s, p, 1);
        let len = 2 * c * g.plane_out();
        let run = |level| {
            (
                fresh_vec(len, |o| window_pool::<MAX, _>(level, &x, 2, &g, o)),
                fresh_vec(len, |o| window_pool::<SUM, _>(level, &x, 2, &g, o)),
            )
        };
        let want = run(Level::Portable);
        for level in simd_levels("pools") {
            assert_eq!(run(level), want, "{level:?} {g:?}");
        }
    }
}

/// A random pooling window: kernel 1-5 per axis, stride 1-2 per axis, padding up to half
/// the kernel, odd and even sizes; values with ties (few distinct values).
fn pool_case() -> impl Strategy<Value = (usize, Geom, u64)> {
    (
        1usize..3,
        1usize..5,
        1usize..20,
        1usize..20,
        1usize..6,
        1usize..6,
        1usize..3,
        1usize..3,
        any::<u64>(),
    )
        .prop_flat_map(|(n, c, h, w, kh, kw, sh, sw, seed)| {
            (
                Just((n, c, h, w, kh, kw, sh, sw, seed)),
                0..=kh / 2,
                0..=kw / 2,
            )
        })
        .prop_filter_map(
            "window larger than the padded plane",
            |((n, c, h, w, kh, kw, sh, sw, seed), ph, pw)| {
                (h + 2 * ph >= kh && w + 2 * pw >= kw)
                    .then(|| (n, rect(c, [h, w], [kh, kw], [sh, sw], [ph, pw]), seed))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Max, sum and both averages: every SIMD level equals the portable build exactly
    /// (comparisons and additions in the same order; no products to fuse). The argmax
    /// kernel gives the same maxima, at an input holding that maximum.
    #[test]
    fn pools_simd_equal_portable((n, g, seed) in pool_case(), ties: bool) {
        let mut rng = Rng::new(seed);
        let mut x = rng.vec(n * g.c * g.plane_in());
        if ties {
            x.iter_mut().for_each(|v| *v = (*v * 2.0).round());
        }
        let len = n * g.c * g.plane_out();
        let run = |level| {
            std::vec![
                fresh_vec(len, |o| window_pool::<MAX, _>(level, &x, n, &g, o)),
                fresh_vec(len, |o| window_pool::<SUM, _>(level, &x, n, &g, o)),
                fresh_vec(len, |o| avg_at(level, &x, n, &g, false, o)),
                fresh_vec(len, |o| avg_at(level, &x, n, &g, true, o)),
            ]
        };
        let want = run(Level::Portable);
        for level in simd_levels("pools") {
            prop_assert_eq!(&run(level), &want);
        }
        let (mut out, mut arg) = (std::vec![0f32; len], std::vec![0u32; len]);
        max_with_argmax(&x, n, &g, &mut out, &mut arg);
        prop_assert_eq!(&out, &want[0]);
        for (i, (&a, &v)) in arg.iter().zip(&out).enumerate() {
            prop_assert_eq!(x[i / g.plane_out() * g.plane_in() + a as usize], v);
        }
    }
}
