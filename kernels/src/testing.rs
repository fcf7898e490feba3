//! Test helpers: seeded inputs, the SIMD levels this CPU runs, and the tolerance the SIMD
//! builds are held to against the portable code.

use std::vec::Vec;

use crate::arch::{self, Level};

/// The SIMD levels to check on this CPU; prints a note for each one it lacks (skipped, not
/// passed).
pub(crate) fn simd_levels(what: &str) -> Vec<Level> {
    let mut out = Vec::new();
    let this_arch: &[Level] = if cfg!(target_arch = "x86_64") {
        &[Level::Avx2, Level::Avx512]
    } else if cfg!(target_arch = "aarch64") {
        &[Level::Neon]
    } else {
        std::println!("note: {what}: no SIMD build on this target, the portable one runs");
        &[]
    };
    for &l in this_arch {
        if arch::available(l) {
            out.push(l);
        } else {
            std::println!("note: {what}: {l:?} skipped, this CPU does not have it");
        }
    }
    out
}

/// A small seeded generator (xorshift64*) for test inputs.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-1, 1)`.
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `len` values uniform in `[-1, 1)`.
    pub(crate) fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.unit()).collect()
    }
}

/// SIMD results against the portable ones: `|got - want| <= 1e-5 * mag` per element,
/// `mag` the same computation on the absolute values of the inputs (`sum |w| |x| + |b|`).
///
/// The SIMD builds use fused multiply-adds (one rounding per tap where the portable loop
/// rounds the product and the sum) and gemm sums in its own blocked order; either moves
/// each partial sum by at most about one f32 rounding (6e-8) of the running magnitude, so
/// a sum of up to a few hundred taps stays within 1e-5 of `sum |terms|`. Relative to the
/// result itself no bound holds where the terms cancel.
pub(crate) fn assert_close(got: &[f32], want: &[f32], mag: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * m.max(f32::MIN_POSITIVE),
            "{what}: element {i}: {g} against {w} (magnitude {m})"
        );
    }
}

/// The absolute values of `v`.
pub(crate) fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Half away from zero, in f64 (the integer kernels' rounding, for their references).
pub(crate) fn round_away(v: f64) -> f64 {
    v.signum() * (v.abs() + 0.5).floor()
}

/// Distance of `v` from the nearest half-integer (a reference near a tie may round either way).
pub(crate) fn tie_distance(v: f64) -> f64 {
    (v - v.floor() - 0.5).abs()
}
