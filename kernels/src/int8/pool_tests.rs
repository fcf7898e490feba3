//! Int8 pooling against references written here from the definitions: max over the
//! in-image taps (exact), averages in f64 (exact when the scales are equal, within one
//! step next to a rounding tie when they differ).

use super::*;
use crate::testing::{round_away, Rng};
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

fn i8s(rng: &mut Rng, len: usize) -> Vec<i8> {
    rng.vec(len).iter().map(|v| (v * 128.0) as i8).collect()
}

/// The in-image values of output `(oh, ow)`'s window in plane `p`.
fn window(x: &[i8], g: &Geom, p: usize, oh: usize, ow: usize) -> Vec<i8> {
    let mut v = Vec::new();
    for i in 0..g.kh {
        for j in 0..g.kw {
            let ih = (oh * g.sh + i) as isize - g.pt as isize;
            let iw = (ow * g.sw + j) as isize - g.pl as isize;
            if ih >= 0 && iw >= 0 && (ih as usize) < g.h && (iw as usize) < g.w {
                v.push(x[(p * g.h + ih as usize) * g.w + iw as usize]);
            }
        }
    }
    v
}

/// A supported pooling window: kernel 1..4, stride 1..3, padding up to half the kernel.
fn pool_case() -> impl Strategy<Value = (usize, Geom, u64)> {
    (
        1usize..3,
        1usize..5,
        1usize..14,
        1usize..14,
        1usize..5,
        1usize..4,
        any::<u64>(),
    )
        .prop_flat_map(|(n, c, h, w, k, s, seed)| (Just((n, c, h, w, k, s, seed)), 0..=k / 2))
        .prop_filter_map(
            "window larger than the plane",
            |((n, c, h, w, k, s, seed), p)| {
                Geom::try_square(c, [h, w], k, s, p, 1).map(|g| (n, g, seed))
            },
        )
}

/// `got` against the real output `real` (output units, relative to the zero point `zy`):
/// exact unless within `band` of a tie. Returns whether it was near one.
fn check(got: i8, real: f64, zy: i8, band: f64, what: &str) -> bool {
    let want = (round_away(real) + zy as f64).clamp(-128.0, 127.0);
    if (real - real.floor() - 0.5).abs() > band {
        assert_eq!(got as f64, want, "{what}: real {real}");
        false
    } else {
        assert!(
            (got as f64 - want).abs() <= 1.0,
            "{what}: real {real} near a tie"
        );
        true
    }
}

#[test]
fn max_pool_known_values() {
    // 3x3 stride 2 padding 1 over a 4x4 ramp: maxima of the windows' bottom-right taps
    let x: Vec<i8> = (0..16).map(|v: i32| (v * 16 - 128) as i8).collect();
    let g = Geom::square(1, [4, 4], 3, 2, 1, 1);
    let mut y = vec![0i8; 4];
    max(&x, 1, &g, &mut y);
    assert_eq!(y, [x[5], x[7], x[13], x[15]]);
    // padding never wins, even over -128
    let mut y1 = [0i8; 4];
    max(&[-128; 4], 1, &Geom::square(1, [2, 2], 3, 1, 1, 1), &mut y1);
    assert_eq!(y1, [-128; 4]);
}

#[test]
fn avg_rounds_half_away_from_zero() {
    let q = Quant::new(0.1, 0);
    // windows of 2: sums 3, -3, 1, -1 -> 1.5, -1.5, 0.5, -0.5
    let x = [1i8, 2, -1, -2, 0, 1, 0, -1];
    let g = Geom {
        c: 1,
        h: 1,
        w: 8,
        kh: 1,
        kw: 2,
        sh: 1,
        sw: 2,
        dh: 1,
        dw: 1,
        pt: 0,
        pl: 0,
        oh: 1,
        ow: 4,
    };
    let mut y = [0i8; 4];
    avg(&x, 1, &g, false, [q, q], &mut y);
    assert_eq!(y, [2, -2, 1, -1]);
    // zero points: the same reals, shifted by 10 in and -3 out
    let x10: Vec<i8> = x.iter().map(|v| v + 10).collect();
    avg(
        &x10,
        1,
        &g,
        false,
        [Quant::new(0.1, 10), Quant::new(0.1, -3)],
        &mut y,
    );
    assert_eq!(y, [-1, -5, -2, -4]);
    let mut yg = [0i8; 2];
    global_avg(&[1, 2, -1, -2], [1, 2, 2], [q, q], &mut yg);
    assert_eq!(yg, [2, -2]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn max_matches_reference((n, g, seed) in pool_case()) {
        let mut rng = Rng::new(seed);
        let x = i8s(&mut rng, n * g.c * g.plane_in());
        let mut y = vec![0i8; n * g.c * g.plane_out()];
        max(&x, n, &g, &mut y);
        // The dispatched path (AVX2 here when the CPU has it) equals the portable loops.
        let mut portable = vec![0i8; y.len()];
        max_loops(&x, &g, &mut portable);
        prop_assert_eq!(&y, &portable);
        max_into(&x, n, &g, &mut portable);
        prop_assert_eq!(&y, &portable, "max_into");
        for (i, &got) in y.iter().enumerate() {
            let (p, o) = (i / g.plane_out(), i % g.plane_out());
            let want = *window(&x, &g, p, o / g.ow, o % g.ow).iter().max().unwrap();
            prop_assert_eq!(got, want, "output {}", i);
        }
    }

    /// Equal scales (exact division) and different ones (fixed-point multipliers), with
    /// and without the padding counted.
    #[test]
    fn avg_matches_reference((n, g, seed) in pool_case(), count_pad: bool, rescale: bool) {
        let mut rng = Rng::new(seed);
        let x = i8s(&mut rng, n * g.c * g.plane_in());
        let z = i8s(&mut rng, 2);
        let xq = Quant::new(0.02, z[0]);
        let yq = Quant::new(if rescale { 0.02 * libm::exp2f(rng.unit()) } else { 0.02 }, z[1] / 2);
        let mut y = vec![0i8; n * g.c * g.plane_out()];
        avg(&x, n, &g, count_pad, [xq, yq], &mut y);
        let mut portable = vec![0i8; y.len()];
        avg_loops(&x, &g, count_pad, [xq, yq], &mut portable);
        prop_assert_eq!(&y, &portable, "dispatched vs portable");
        let mut scratch = vec![99i32; avg_scratch_len(&g)];
        avg_into(&x, n, &g, count_pad, [xq, yq], &mut portable, &mut scratch);
        prop_assert_eq!(&y, &portable, "avg_into");
        for (i, &got) in y.iter().enumerate() {
            let (p, o) = (i / g.plane_out(), i % g.plane_out());
            let win = window(&x, &g, p, o / g.ow, o % g.ow);
            let count = if count_pad { g.kh * g.kw } else { win.len() };
            let sum: i64 = win.iter().map(|&v| v as i64 - xq.zero as i64).sum();
            let ratio = xq.scale as f64 / yq.scale as f64;
            let real = sum as f64 / count as f64 * ratio;
            let band = if rescale {
                let r = Requant::new(ratio / count as f64);
                libm::exp2(-((-r.shift).max(0) as f64) - 1.0) + real.abs() * 1e-8
            } else {
                0.0
            };
            check(got, real, yq.zero, band, &std::format!("output {i}"));
        }
    }

    #[test]
    fn global_avg_matches_reference(n in 1usize..3, c in 1usize..5, hw in 1usize..70, seed: u64, rescale: bool) {
        let mut rng = Rng::new(seed);
        let x = i8s(&mut rng, n * c * hw);
        let z = i8s(&mut rng, 2);
        let xq = Quant::new(0.05, z[0]);
        let yq = Quant::new(if rescale { 0.05 * libm::exp2f(rng.unit()) } else { 0.05 }, z[1]);
        let mut y = vec![0i8; n * c];
        global_avg(&x, [n, c, hw], [xq, yq], &mut y);
        let ratio = xq.scale as f64 / yq.scale as f64;
        for (i, &got) in y.iter().enumerate() {
            let sum: i64 = x[i * hw..][..hw].iter().map(|&v| v as i64 - xq.zero as i64).sum();
            let real = sum as f64 / hw as f64 * ratio;
            let band = if rescale {
                let r = Requant::new(ratio / hw as f64);
                libm::exp2(-((-r.shift).max(0) as f64) - 1.0) + real.abs() * 1e-8
            } else {
                0.0
            };
            check(got, real, yq.zero, band, &std::format!("output {i}"));
        }
    }
}
