//! Element-wise sums: a weighted sum of equal-length terms, its scaled gradient copies, and
//! the 8-lane dot products / pair sums the batch-norm, weighted-sum and depthwise
//! weight-gradient kernels reduce with.
//!
//! The lane helpers keep each caller's summation order: [`dot_lanes`] leaves the sums in
//! eight f32 lanes across calls (the tail goes into lane 0) for the caller to total once,
//! [`pair_sum`] totals a fresh set of lanes and the tail in f64. Both share
//! [`accumulate_lanes`], the loop that adds `f(a[i], b[i])` lane by lane.

use alloc::vec::Vec;

/// Elements per block of [`add_weighted`]: every term is added into one block of the
/// output while the block stays in the L1 cache.
const BLOCK: usize = 2048;

/// From this many elements [`add_weighted`] and [`scaled_copies`] spread over the pool.
const PARALLEL_FROM: usize = 1 << 16;

/// Adds `f(a[i], b[i])` of the whole 8-wide chunks into `lanes`, lane `i % 8` for element
/// `i`; returns the tails of `a` and `b` (the elements after the last whole chunk).
#[inline(always)]
pub fn accumulate_lanes<'a>(
    lanes: &mut [f32; 8],
    a: &'a [f32],
    b: &'a [f32],
    f: impl Fn(f32, f32) -> f32,
) -> (&'a [f32], &'a [f32]) {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += f(x[l], y[l]);
        }
    }
    tails
}

/// Adds `a[i] * b[i]` into 8 running lane sums (the tail, summed on its own, into lane 0):
/// many short dot products (one per row) stay in the lanes and are totalled once, not per
/// row (a horizontal sum per 32-wide row cost as much as its products).
#[inline(always)]
pub fn dot_lanes(lanes: &mut [f32; 8], a: &[f32], b: &[f32]) {
    let (ta, tb) = accumulate_lanes(lanes, a, b, |x, y| x * y);
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    lanes[0] += tail;
}

/// `sum(f(a[i], b[i]))` in eight f32 lanes, the lanes and the tail totalled in f64.
#[inline]
pub fn pair_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let (ta, tb) = accumulate_lanes(&mut acc, a, b, &f);
    let mut total: f64 = ta.iter().zip(tb).map(|(&x, &y)| f(x, y) as f64).sum();
    for a in acc {
        total += a as f64;
    }
    total
}

/// `sum(f(a[i]))` as [`pair_sum`] does it.
#[inline]
pub fn sum(a: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    pair_sum(a, a, |v, _| f(v))
}

/// `sum(a[i] * b[i])` as [`pair_sum`] does it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    pair_sum(a, b, |x, y| x * y)
}

/// `out[i] += sum_t weights[t] * terms[t][i]`, the terms added one after another per block
/// of the output (so every element sums in term order).
///
/// # Panics
/// When `weights` and `terms` differ in length or a term is shorter than `out`.
pub fn add_weighted<T: AsRef<[f32]> + Sync>(terms: &[T], weights: &[f32], out: &mut [f32]) {
    add_weighted_at(crate::arch::level(), terms, weights, out)
}

pub(crate) fn add_weighted_at<T: AsRef<[f32]> + Sync>(
    level: crate::arch::Level,
    terms: &[T],
    weights: &[f32],
    out: &mut [f32],
) {
    assert_eq!(terms.len(), weights.len(), "one weight per term");
    assert!(
        terms.iter().all(|t| t.as_ref().len() >= out.len()),
        "a term shorter than the output"
    );
    crate::par::chunks(out, BLOCK, out.len() >= PARALLEL_FROM, |i, block| {
        let start = i * BLOCK;
        for (y, &wi) in terms.iter().zip(weights) {
            let y = &y.as_ref()[start..];
            #[cfg(target_arch = "aarch64")]
            if level == crate::arch::Level::Neon {
                // SAFETY: callers pass a level the CPU has; every term is at least as
                // long as the output (asserted above).
                unsafe { crate::aarch64::lanes::add_scaled(block, wi, y) };
                continue;
            }
            let _ = level;
            for (o, &v) in block.iter_mut().zip(y) {
                *o += wi * v;
            }
        }
    });
}

/// `weights[t] * g` for each `t` with `wanted[t]` (`None` for the others): the gradients
/// of the terms of a weighted sum whose output gradient is `g`.
pub fn scaled_copies(g: &[f32], weights: &[f32], wanted: &[bool]) -> Vec<Option<Vec<f32>>> {
    assert_eq!(weights.len(), wanted.len(), "one flag per weight");
    crate::par::map(weights.len(), g.len() >= PARALLEL_FROM, |t| {
        wanted[t].then(|| g.iter().map(|&v| weights[t] * v).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn weighted_sum_of_known_values() {
        // 0.5 * [1, 2] + 2 * [3, -1] = [6.5, -1]
        let mut out = vec![0.0; 2];
        add_weighted(&[vec![1f32, 2.0], vec![3.0, -1.0]], &[0.5, 2.0], &mut out);
        assert_eq!(out, [6.5, -1.0]);
        let g = scaled_copies(&[1.0, -2.0], &[3.0, 0.5], &[true, false]);
        assert_eq!(g, [Some(vec![3.0, -6.0]), None]);
    }

    /// Lane layout: element i in lane i % 8, the tail (elements 16..19) summed apart.
    #[test]
    fn lane_sums_keep_their_order() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![1f32; 19];
        let mut lanes = [0f32; 8];
        dot_lanes(&mut lanes, &a, &b);
        assert_eq!(
            lanes,
            [
                8.0 + 16.0 + 17.0 + 18.0,
                10.0,
                12.0,
                14.0,
                16.0,
                18.0,
                20.0,
                22.0
            ]
        );
        assert_eq!(dot(&a, &b), 171.0);
        assert_eq!(sum(&a, |v| 2.0 * v), 342.0);
        // large values that cancel: the tail (-1e8 + 1) and the lanes (1e8, 1) meet in f64
        let big = [1e8f32, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1e8, 1.0];
        assert_eq!(sum(&big, |v| v), 2.0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The weighted sum: every SIMD level equals the portable build exactly (each
        /// product rounded, then added, terms in order), any length.
        #[test]
        fn weighted_sum_simd_equals_portable(len in 0usize..5000, terms in 1usize..8, seed: u64) {
            let mut rng = crate::testing::Rng::new(seed);
            let ys: Vec<Vec<f32>> = (0..terms).map(|_| rng.vec(len)).collect();
            let (ws, start) = (rng.vec(terms), rng.vec(len));
            let run = |level| {
                let mut out = start.clone();
                add_weighted_at(level, &ys, &ws, &mut out);
                out
            };
            let want = run(crate::arch::Level::Portable);
            for level in crate::testing::simd_levels("weighted sum") {
                proptest::prop_assert_eq!(&run(level), &want, "{:?}", level);
            }
        }
    }
}
