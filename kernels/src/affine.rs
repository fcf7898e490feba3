//! Training-mode batch normalization of `[N, C, H, W]` floats, per channel:
//!
//! `x_hat = (x - mean) / sqrt(var + eps)` (biased variance over N, H, W),
//! `y = gamma * x_hat + beta`,
//! `dx = gamma / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))`,
//! `dgamma = sum(g * x_hat)`, `dbeta = sum(g)`.
//!
//! Sums run in eight f32 lanes per plane, totalled in f64 ([`crate::elementwise::pair_sum`]);
//! channels (statistics) and planes (outputs) spread over the pool from 2^15 elements.

use alloc::vec::Vec;

use crate::arch::{self, Level};
use crate::elementwise::{pair_sum, sum};

/// Below this many elements one thread does the whole layer (the pool's hand-off costs
/// more than it saves).
const PARALLEL_FROM: usize = 1 << 15;

/// Per-channel batch statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Mean.
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    pub inv_std: Vec<f32>,
}

fn sqrt(v: f64) -> f64 {
    #[cfg(feature = "std")]
    return v.sqrt();
    #[cfg(not(feature = "std"))]
    return libm::sqrt(v);
}

fn check(len: usize, [n, c, h, w]: [usize; 4], what: &str) {
    assert_eq!(len, n * c * h * w, "batch norm {what} length");
}

/// Mean, biased variance and `1 / sqrt(var + epsilon)` of each channel of `xs [N, C, H, W]`.
pub fn batch_stats(xs: &[f32], dims: [usize; 4], epsilon: f64) -> Stats {
    check(xs.len(), dims, "input");
    let [n, c, h, w] = dims;
    let hw = h * w;
    let count = (n * hw) as f64;
    let plane = |ni: usize, ci: usize| &xs[(ni * c + ci) * hw..][..hw];
    let mv: Vec<(f32, f32)> = crate::par::map(c, xs.len() >= PARALLEL_FROM, |ci| {
        let mean = (0..n).map(|ni| sum(plane(ni, ci), |v| v)).sum::<f64>() / count;
        let m = mean as f32;
        let var = (0..n)
            .map(|ni| sum(plane(ni, ci), |v| (v - m) * (v - m)))
            .sum::<f64>()
            / count;
        (m, var as f32)
    });
    let mean: Vec<f32> = mv.iter().map(|p| p.0).collect();
    let var: Vec<f32> = mv.iter().map(|p| p.1).collect();
    let inv_std = var
        .iter()
        .map(|&v| (1.0 / sqrt(v as f64 + epsilon)) as f32)
        .collect();
    Stats { mean, var, inv_std }
}

/// `out = x * scale + shift` per channel, `scale = inv_std * gamma`, `shift = beta - mean *
/// scale` (`gamma` 1 and `beta` 0 when absent): the normalized, scaled and shifted input.
pub fn normalize(
    xs: &[f32],
    dims: [usize; 4],
    s: &Stats,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    out: &mut [f32],
) {
    normalize_at(arch::level(), xs, dims, s, [gamma, beta], out)
}

pub(crate) fn normalize_at(
    level: Level,
    xs: &[f32],
    dims: [usize; 4],
    s: &Stats,
    [gamma, beta]: [Option<&[f32]>; 2],
    out: &mut [f32],
) {
    check(xs.len(), dims, "input");
    check(out.len(), dims, "output");
    let [_, c, h, w] = dims;
    let hw = h * w;
    if hw == 0 {
        return;
    }
    crate::par::chunks(out, hw, out.len() >= PARALLEL_FROM, |p, o| {
        let ci = p % c;
        let scale = s.inv_std[ci] * gamma.map_or(1.0, |g| g[ci]);
        let shift = beta.map_or(0.0, |b| b[ci]) - s.mean[ci] * scale;
        let x = &xs[p * hw..][..hw];
        #[cfg(target_arch = "aarch64")]
        if level == Level::Neon {
            // SAFETY: callers pass a level the CPU has; `x` is as long as `o`.
            return unsafe { crate::aarch64::lanes::scale_shift(x, scale, shift, o) };
        }
        let _ = level;
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v * scale + shift;
        }
    });
}

/// Per channel `(sum(g), sum(g * x_hat))` of the output gradient `gs` and the input `xs`
/// (both `[N, C, H, W]`): `dbeta` and `dgamma`, and the two means of the input gradient.
pub fn grad_sums(gs: &[f32], xs: &[f32], dims: [usize; 4], s: &Stats) -> Vec<(f64, f64)> {
    check(gs.len(), dims, "gradient");
    check(xs.len(), dims, "input");
    let [n, c, h, w] = dims;
    let hw = h * w;
    let at = |ni: usize, ci: usize| (ni * c + ci) * hw..(ni * c + ci) * hw + hw;
    crate::par::map(c, gs.len() >= PARALLEL_FROM, |ci| {
        let (m, is) = (s.mean[ci], s.inv_std[ci]);
        let mut sg = 0f64;
        let mut sgx = 0f64;
        for ni in 0..n {
            let r = at(ni, ci);
            let (g, x) = (&gs[r.clone()], &xs[r]);
            sg += sum(g, |v| v);
            sgx += pair_sum(g, x, |gv, xv| gv * (xv - m) * is);
        }
        (sg, sgx)
    })
}

/// The input gradient `dx` (see the module docs) into `out`, from the output gradient
/// `gs`, the input `xs`, the statistics and the per-channel [`grad_sums`].
pub fn input_grad(
    gs: &[f32],
    xs: &[f32],
    dims: [usize; 4],
    s: &Stats,
    gamma: Option<&[f32]>,
    sums: &[(f64, f64)],
    out: &mut [f32],
) {
    input_grad_at(arch::level(), [gs, xs], dims, s, gamma, sums, out)
}

pub(crate) fn input_grad_at(
    level: Level,
    [gs, xs]: [&[f32]; 2],
    dims: [usize; 4],
    s: &Stats,
    gamma: Option<&[f32]>,
    sums: &[(f64, f64)],
    out: &mut [f32],
) {
    check(gs.len(), dims, "gradient");
    check(xs.len(), dims, "input");
    check(out.len(), dims, "input gradient");
    let [n, c, h, w] = dims;
    let hw = h * w;
    if hw == 0 {
        return;
    }
    let count = (n * hw) as f64;
    crate::par::chunks(out, hw, out.len() >= PARALLEL_FROM, |p, o| {
        let ci = p % c;
        let (m, is) = (s.mean[ci], s.inv_std[ci]);
        let k = is * gamma.map_or(1.0, |g| g[ci]);
        let mg = (sums[ci].0 / count) as f32;
        let mgx = (sums[ci].1 / count) as f32;
        let (g, x) = (&gs[p * hw..][..hw], &xs[p * hw..][..hw]);
        #[cfg(target_arch = "aarch64")]
        if level == Level::Neon {
            // SAFETY: callers pass a level the CPU has; `g` and `x` are as long as `o`.
            return unsafe { crate::aarch64::lanes::bn_input_grad(o, g, x, [k, mg, m, is, mgx]) };
        }
        let _ = level;
        for ((o, &gv), &xv) in o.iter_mut().zip(g).zip(x) {
            *o = k * (gv - mg - (xv - m) * is * mgx);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn hand_worked_channel() {
        // One channel holding 1, 2, 3, 4: mean 2.5, biased variance 1.25.
        let dims = [1, 1, 2, 2];
        let xs = [1.0f32, 2.0, 3.0, 4.0];
        let s = batch_stats(&xs, dims, 0.0);
        assert_eq!(s.mean, vec![2.5]);
        assert_eq!(s.var, vec![1.25]);
        let mut y = vec![0f32; 4];
        normalize(&xs, dims, &s, None, None, &mut y);
        let sd = 1.25f32.sqrt();
        for (v, want) in y.iter().zip([-1.5f32, -0.5, 0.5, 1.5]) {
            assert!((v - want / sd).abs() < 1e-6);
        }
        // g = 1 everywhere: dbeta = 4, dgamma = sum(x_hat) = 0, dx = 0
        let g = [1f32; 4];
        let sums = grad_sums(&g, &xs, dims, &s);
        assert_eq!(sums[0].0, 4.0);
        assert!(sums[0].1.abs() < 1e-6);
        let mut dx = vec![1f32; 4];
        input_grad(&g, &xs, dims, &s, None, &sums, &mut dx);
        assert!(dx.iter().all(|v| v.abs() < 1e-6), "{dx:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Normalization and its input gradient: every SIMD level equals the portable
        /// build exactly (the same products and sums in the same order, no fused
        /// multiply-add), planes of any length (vector tails included).
        #[test]
        fn simd_equals_portable(n in 1usize..3, c in 1usize..5, h in 1usize..9, w in 1usize..11, seed: u64, affine: bool) {
            let mut rng = crate::testing::Rng::new(seed);
            let dims = [n, c, h, w];
            let len = n * c * h * w;
            let (xs, gs) = (rng.vec(len), rng.vec(len));
            let (gamma, beta) = (rng.vec(c), rng.vec(c));
            let (gamma, beta) = (affine.then_some(&gamma[..]), affine.then_some(&beta[..]));
            let s = batch_stats(&xs, dims, 1e-5);
            let sums = grad_sums(&gs, &xs, dims, &s);
            let run = |level| {
                let mut y = vec![0f32; len];
                normalize_at(level, &xs, dims, &s, [gamma, beta], &mut y);
                let mut dx = vec![0f32; len];
                input_grad_at(level, [&gs, &xs], dims, &s, gamma, &sums, &mut dx);
                (y, dx)
            };
            let want = run(Level::Portable);
            for level in crate::testing::simd_levels("batch norm") {
                proptest::prop_assert_eq!(&run(level), &want, "{:?}", level);
            }
        }
    }
}
