//! Int8 convolution and fully connected layer against a reference written here from the
//! definition (i64 sums over the taps, f64 rescale), and every SIMD path against the
//! portable one with `==` on random shapes (property tests).
//!
//! The reference's real output `acc * M` (`M` the f64 multiplier the [`Requant`] was made
//! from) rounded half away from zero must equal the kernel's output exactly unless it
//! lies within the [`Requant`] band of a tie (`2^-(r + 1) + |acc M| 2^-30`, `r` the right
//! shift), where one step of difference is allowed; the tests count those.

use super::*;
use crate::testing::Rng;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

fn i8s(rng: &mut Rng, len: usize) -> Vec<i8> {
    rng.vec(len).iter().map(|v| (v * 128.0) as i8).collect()
}

/// Output-side quantization of a case: per channel f64 multipliers, their `Requant`s,
/// bias, zero points.
struct Case {
    real: Vec<f64>,
    requant: Vec<Requant>,
    bias: Vec<i32>,
    zx: i8,
    out: OutQ,
}

impl Case {
    /// Multipliers that put a typical sum of `k` products near 40 output steps.
    fn new(rng: &mut Rng, m: usize, k: usize, relu: bool) -> Self {
        let typical = 128.0 * 74.0 * (k as f64).sqrt();
        let real: Vec<f64> = (0..m)
            .map(|_| 40.0 / typical * libm::exp2(rng.unit() as f64))
            .collect();
        let requant = real.iter().map(|&r| Requant::new(r)).collect();
        let bias = (0..m).map(|_| (rng.unit() * 3000.0) as i32).collect();
        let z = i8s(rng, 2);
        Self {
            real,
            requant,
            bias,
            zx: z[0],
            out: OutQ::with_relu(z[1] / 2, relu),
        }
    }

    /// Checks `got` against accumulators `acc [.., m, p]`; returns the outputs next to a
    /// tie (allowed one step off).
    fn check(&self, got: &[i8], acc: &[i64], m: usize, p: usize, what: &str) -> usize {
        assert_eq!(got.len(), acc.len(), "{what}: lengths");
        let mut near = 0;
        for (i, (&g, &a)) in got.iter().zip(acc).enumerate() {
            let ch = i / p % m;
            let r = a as f64 * self.real[ch];
            let right = (-self.requant[ch].shift).max(0) as f64;
            let band = libm::exp2(-right - 1.0) + r.abs() * libm::exp2(-30.0) + 1e-12;
            let rounded = r.signum() * (r.abs() + 0.5).floor();
            let o = self.out;
            let want = (rounded + o.zero as f64).clamp(o.min as f64, o.max as f64);
            if (r - r.floor() - 0.5).abs() > band {
                assert_eq!(g as f64, want, "{what}: output {i}, real {r}");
            } else {
                near += 1;
                assert!(
                    (g as f64 - want).abs() <= 1.0,
                    "{what}: output {i} near a tie"
                );
            }
        }
        near
    }

    fn filter<'a>(&'a self, wt: &'a [i8], bias: bool, groups: usize) -> Filter<'a> {
        Filter {
            wt,
            bias: bias.then_some(&self.bias[..]),
            requant: &self.requant,
            groups,
        }
    }
}

/// The accumulators by definition: `bias[m] + sum (x - zx) w` over the taps inside the
/// image, in i64.
fn reference(x: &[i8], zx: i8, n: usize, g: &Geom, f: &Filter) -> Vec<i64> {
    let (cg, taps) = (g.c / f.groups, g.kh * g.kw);
    let m = f.wt.len() / (cg * taps);
    let mg = m / f.groups;
    let mut out = Vec::with_capacity(n * m * g.plane_out());
    for ni in 0..n {
        for mi in 0..m {
            let c0 = mi / mg * cg;
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let mut a = f.bias.map_or(0, |b| b[mi] as i64);
                    for ci in 0..cg {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let ih = (oh * g.sh + i * g.dh) as isize - g.pt as isize;
                                let iw = (ow * g.sw + j * g.dw) as isize - g.pl as isize;
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xv = x
                                    [((ni * g.c + c0 + ci) * g.h + ih as usize) * g.w + iw as usize]
                                    as i64;
                                let wv = f.wt[(mi * cg + ci) * taps + i * g.kw + j] as i64;
                                a += (xv - zx as i64) * wv;
                            }
                        }
                    }
                    out.push(a);
                }
            }
        }
    }
    out
}

/// Dense, pointwise (direct and strided), depthwise (strides, dilations, 7x7), grouped and
/// channel-multiplier convolutions against the reference, on every path.
#[test]
fn conv_matches_reference() {
    let mut rng = Rng::new(1);
    let mut near = 0;
    let mut total = 0;
    // (n, c, [h, w], k, s, p, d, groups, m)
    let cases = [
        (2, 5, [9, 7], 3, 1, 1, 1, 1, 7),
        (1, 16, [8, 8], 1, 1, 0, 1, 1, 24),
        (1, 9, [7, 6], 1, 2, 0, 1, 1, 5),
        (2, 6, [11, 13], 3, 2, 1, 1, 6, 6),
        (1, 5, [12, 9], 5, 1, 4, 2, 5, 5),
        (1, 3, [10, 10], 7, 1, 3, 1, 3, 3),
        (1, 3, [10, 10], 7, 2, 3, 1, 1, 4),
        (1, 6, [8, 9], 3, 1, 2, 2, 3, 9),
        (2, 4, [5, 5], 3, 1, 1, 1, 4, 8),
        (1, 2, [1, 1], 3, 1, 1, 1, 1, 3),
        (1, 4, [6, 37], 3, 1, 1, 1, 4, 4),
        (2, 3, [5, 70], 5, 2, 2, 1, 3, 3),
        (1, 2, [4, 50], 3, 1, 2, 2, 2, 2),
        (1, 3, [20, 30], 3, 1, 1, 1, 1, 6),
        (2, 4, [17, 19], 1, 1, 0, 1, 2, 6),
        // depthwise, row stride 3 over 17 outputs a row: summed output row by row
        (1, 3, [7, 50], 3, 3, 1, 1, 3, 3),
    ];
    for (i, &(n, c, hw, k, s, p, d, groups, m)) in cases.iter().enumerate() {
        let g = Geom::square(c, hw, k, s, p, d);
        let kk = c / groups * k * k;
        let x = i8s(&mut rng, n * c * g.plane_in());
        let wt = i8s(&mut rng, m * kk);
        for relu in [false, true] {
            let case = Case::new(&mut rng, m, kk, relu);
            let f = case.filter(&wt, true, groups);
            let acc = reference(&x, case.zx, n, &g, &f);
            for path in Path::all() {
                let mut y = vec![0i8; n * m * g.plane_out()];
                conv_with(path, &x, case.zx, n, &g, f, case.out, &mut y);
                let what = std::format!("case {i} {path:?} relu {relu}");
                near += case.check(&y, &acc, m, g.plane_out(), &what);
                total += y.len();
            }
        }
    }
    std::println!("{near} of {total} outputs next to a rounding tie");
    assert!(near * 100 < total, "{near} of {total} near a tie");
}

/// Extreme values: inputs at -128 with zero point 127 (every `x - zx = -255`), weights at
/// -128 and 127, large biases; 7x7 kernels over 32 channels (1568 taps). The i32 sums
/// stay exact and equal on every path.
#[test]
fn saturated_inputs_and_weights() {
    let (n, c, m) = (1, 32, 5);
    let g = Geom::square(c, [9, 9], 7, 1, 3, 1);
    let kk = c * 49;
    for (xv, zx, wv) in [(-128i8, 127i8, -128i8), (127, -128, -128), (127, -128, 127)] {
        let x = vec![xv; n * c * g.plane_in()];
        let wt = vec![wv; m * kk];
        let bias = [1 << 30, -(1 << 30), 0, 12345, -1];
        let requant = [Requant::new(1e-6), Requant::new(1e-9), Requant::new(0.5)];
        for r in requant {
            let f = Filter {
                wt: &wt,
                bias: Some(&bias),
                requant: &[r],
                groups: 1,
            };
            let acc = reference(&x, zx, n, &g, &f);
            let mut want = vec![0i8; acc.len()];
            conv_with(Path::Portable, &x, zx, n, &g, f, OutQ::new(-5), &mut want);
            for (i, (&a, &got)) in acc.iter().zip(&want).enumerate() {
                let a = i32::try_from(a).expect("reference sum fits i32");
                assert_eq!(got, OutQ::new(-5).store(r.apply(a)), "output {i}");
            }
            for path in Path::all() {
                let mut y = vec![0i8; acc.len()];
                conv_with(path, &x, zx, n, &g, f, OutQ::new(-5), &mut y);
                assert_eq!(y, want, "{path:?} x {xv} zx {zx} w {wv}");
            }
            let mut y = vec![0i8; acc.len()];
            let mut scratch = vec![0; scratch_len(&g)];
            conv_into(&x, zx, n, &g, f, OutQ::new(-5), &mut y, &mut scratch);
            assert_eq!(y, want, "conv_into x {xv} zx {zx} w {wv}");
        }
    }
}

/// The fully connected layer against the reference (a 1x1 convolution over `[K, 1, 1]`
/// planes), on every path, K up to 300 and odd sizes.
#[test]
fn gemm_matches_reference() {
    let mut rng = Rng::new(2);
    for &(n, k, m) in &[
        (1, 10, 3),
        (3, 37, 10),
        (5, 300, 17),
        (2, 1, 1),
        (17, 64, 4),
    ] {
        let x = i8s(&mut rng, n * k);
        let wt = i8s(&mut rng, m * k);
        let case = Case::new(&mut rng, m, k, false);
        let f = case.filter(&wt, true, 1);
        // the same sums as a 1x1 convolution of n images of k 1x1 planes
        let g = Geom::square(k, [1, 1], 1, 1, 0, 1);
        let acc = reference(&x, case.zx, n, &g, &f);
        for path in Path::all() {
            let mut y = vec![0i8; n * m];
            gemm_with(path, &x, case.zx, [n, k], f, case.out, &mut y);
            // y is [n, m]: the reference's [n, m, 1, 1]
            case.check(
                &y,
                &acc,
                m,
                1,
                &std::format!("gemm {path:?} n {n} k {k} m {m}"),
            );
        }
    }
}

/// A random convolution: kernel 1, 3, 5 or 7, stride 1 or 2, dilation 1 or 2, padding up
/// to the dilated half kernel, dense / depthwise / grouped (with channel multipliers),
/// odd channel counts and sizes.
fn conv_case() -> impl Strategy<Value = (usize, Geom, usize, usize, u64)> {
    (
        1usize..3,
        1usize..7,
        1usize..4,
        1usize..12,
        1usize..48,
        prop::sample::select(vec![1usize, 3, 5, 7]),
        1usize..3,
        1usize..3,
        (0usize..3, 1usize..4),
        any::<u64>(),
    )
        .prop_flat_map(|(n, a, b, h, w, k, s, d, mode, seed)| {
            (
                Just((n, a, b, h, w, k, s, d, mode, seed)),
                0..=d * (k - 1) / 2,
            )
        })
        .prop_filter_map(
            "window larger than the padded plane",
            |((n, a, b, h, w, k, s, d, (mode, mult), seed), p)| {
                // dense: c = a b, any m; depthwise: c = m = a b; grouped: a groups of b
                let c = a * b;
                let (groups, m) = match mode {
                    0 => (1, a + 2 * b + mult),
                    1 => (c, c),
                    _ => (a, a * mult),
                };
                Geom::try_square(c, [h, w], k, s, p, d).map(|g| (n, g, groups, m, seed))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Every SIMD path gives exactly the portable result.
    #[test]
    fn conv_paths_equal_portable((n, g, groups, m, seed) in conv_case(), relu: bool, bias: bool) {
        let mut rng = Rng::new(seed);
        let kk = g.c / groups * g.kh * g.kw;
        let x = i8s(&mut rng, n * g.c * g.plane_in());
        let wt = i8s(&mut rng, m * kk);
        let case = Case::new(&mut rng, m, kk, relu);
        let f = case.filter(&wt, bias, groups);
        let len = n * m * g.plane_out();
        let mut want = vec![0i8; len];
        conv_with(Path::Portable, &x, case.zx, n, &g, f, case.out, &mut want);
        for path in Path::all().into_iter().skip(1) {
            let mut got = vec![0i8; len];
            conv_with(path, &x, case.zx, n, &g, f, case.out, &mut got);
            prop_assert_eq!(&got, &want, "{:?} groups {} m {} {:?}", path, groups, m, g);
        }
        // without allocation: caller scratch (dirty, and longer than needed)
        let mut got = vec![0i8; len];
        let mut scratch = vec![-7i32; scratch_len(&g) + 3];
        conv_into(&x, case.zx, n, &g, f, case.out, &mut got, &mut scratch);
        prop_assert_eq!(&got, &want, "conv_into groups {} m {} {:?}", groups, m, g);
    }

    /// The portable path against the reference on the same random shapes.
    #[test]
    fn conv_portable_matches_reference((n, g, groups, m, seed) in conv_case(), relu: bool) {
        let mut rng = Rng::new(seed);
        let kk = g.c / groups * g.kh * g.kw;
        let x = i8s(&mut rng, n * g.c * g.plane_in());
        let wt = i8s(&mut rng, m * kk);
        let case = Case::new(&mut rng, m, kk, relu);
        let f = case.filter(&wt, true, groups);
        let mut y = vec![0i8; n * m * g.plane_out()];
        conv_with(Path::Portable, &x, case.zx, n, &g, f, case.out, &mut y);
        let acc = reference(&x, case.zx, n, &g, &f);
        case.check(&y, &acc, m, g.plane_out(), &std::format!("groups {groups} m {m} {g:?}"));
    }

    /// The fully connected layer: every path equal to the portable one.
    #[test]
    fn gemm_paths_equal_portable(n in 1usize..9, k in 1usize..200, m in 1usize..23, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = i8s(&mut rng, n * k);
        let wt = i8s(&mut rng, m * k);
        let case = Case::new(&mut rng, m, k, false);
        let f = case.filter(&wt, true, 1);
        let mut want = vec![0i8; n * m];
        gemm_with(Path::Portable, &x, case.zx, [n, k], f, case.out, &mut want);
        for path in Path::all().into_iter().skip(1) {
            let mut got = vec![0i8; n * m];
            gemm_with(path, &x, case.zx, [n, k], f, case.out, &mut got);
            prop_assert_eq!(&got, &want, "{:?}", path);
        }
        let mut got = vec![0i8; n * m];
        gemm_into(&x, case.zx, [n, k], f, case.out, &mut got);
        prop_assert_eq!(&got, &want, "gemm_into");
    }
}

/// Pointwise (1x1) convolutions of odd channel counts (not multiples of the 4-row tiles
/// or the VNNI 4-row groups), planes not multiples of the 16-pixel vectors or across the
/// 256-pixel blocks, non-zero zero points, with and without ReLU and bias, 1 and 3
/// images: every SIMD path equal to the portable one, and `conv_into` too.
#[test]
fn pointwise_paths_equal_portable() {
    let mut rng = Rng::new(27);
    for &(c, m) in &[(1, 1), (3, 5), (5, 3), (36, 36), (37, 38), (7, 144)] {
        for &hw in &[[1, 1], [7, 9], [17, 19], [32, 32]] {
            for n in [1, 3] {
                let g = Geom::square(c, hw, 1, 1, 0, 1);
                let x = i8s(&mut rng, n * c * g.plane_in());
                let wt = i8s(&mut rng, m * c);
                for (relu, bias) in [(false, true), (true, false), (true, true)] {
                    let case = Case::new(&mut rng, m, c, relu);
                    assert!(case.zx != 0 || case.out.zero != 0 || c == 1);
                    let f = case.filter(&wt, bias, 1);
                    let len = n * m * g.plane_out();
                    let mut want = vec![0i8; len];
                    conv_with(Path::Portable, &x, case.zx, n, &g, f, case.out, &mut want);
                    for path in Path::all().into_iter().skip(1) {
                        let mut got = vec![0i8; len];
                        conv_with(path, &x, case.zx, n, &g, f, case.out, &mut got);
                        assert_eq!(got, want, "{path:?} c {c} m {m} {hw:?} n {n} relu {relu}");
                    }
                    let mut got = vec![0i8; len];
                    let mut scratch = vec![0i32; scratch_len(&g)];
                    conv_into(&x, case.zx, n, &g, f, case.out, &mut got, &mut scratch);
                    assert_eq!(got, want, "conv_into c {c} m {m} {hw:?} n {n}");
                }
            }
        }
    }
}
