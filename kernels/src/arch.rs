//! Which SIMD build the kernels run: chosen once per process from what the CPU has
//! (`is_x86_feature_detected!` / `is_aarch64_feature_detected!` with the `std` feature,
//! the compile-time target features without it) and cached. Other targets (armv7, whose
//! NEON intrinsics are unstable in Rust; wasm32) run the portable code.
//!
//! The kernels call [`level`] on entry and branch to their per-architecture module; the
//! portable code defines the result, and the SIMD builds are property-tested against it.

use core::sync::atomic::{AtomicU8, Ordering};

/// A SIMD level of the kernels, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust loops (the compiler vectorizes them for the target's baseline).
    Portable,
    /// x86_64 AVX2 + FMA.
    Avx2,
    /// x86_64 AVX-512F (with AVX2 + FMA).
    Avx512,
    /// aarch64 NEON (Advanced SIMD).
    Neon,
}

const UNKNOWN: u8 = u8::MAX;
static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The highest level this CPU runs, detected on the first call.
#[inline]
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        0 => Level::Portable,
        1 => Level::Avx2,
        2 => Level::Avx512,
        3 => Level::Neon,
        _ => {
            let l = detect();
            LEVEL.store(l as u8, Ordering::Relaxed);
            l
        }
    }
}

/// Whether this CPU can run the kernels' `level` builds: the portable one, and the levels
/// of its own architecture up to the detected one.
pub fn available(level: Level) -> bool {
    let have = self::level();
    let x86 = |l: Level| matches!(l, Level::Avx2 | Level::Avx512);
    match level {
        Level::Portable => true,
        Level::Neon => have == Level::Neon,
        l => x86(have) && l <= have,
    }
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma")) {
        Level::Portable
    } else if has!("avx512f") {
        Level::Avx512
    } else {
        Level::Avx2
    }
}

#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
fn detect() -> Level {
    if !(cfg!(target_feature = "avx2") && cfg!(target_feature = "fma")) {
        Level::Portable
    } else if cfg!(target_feature = "avx512f") {
        Level::Avx512
    } else {
        Level::Avx2
    }
}

#[cfg(all(target_arch = "aarch64", feature = "std"))]
fn detect() -> Level {
    if std::arch::is_aarch64_feature_detected!("neon") {
        Level::Neon
    } else {
        Level::Portable
    }
}

#[cfg(all(target_arch = "aarch64", not(feature = "std")))]
fn detect() -> Level {
    if cfg!(target_feature = "neon") {
        Level::Neon
    } else {
        Level::Portable
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Level {
    Level::Portable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detected level is one of this target's, and no other architecture's level
    /// counts as available.
    #[test]
    fn levels_belong_to_this_architecture() {
        let have = level();
        assert!(available(Level::Portable) && available(have));
        if cfg!(target_arch = "x86_64") {
            assert!(!available(Level::Neon));
            assert!(have != Level::Neon);
        } else if cfg!(target_arch = "aarch64") {
            // every aarch64 Linux CPU has NEON (Advanced SIMD is part of ARMv8-A)
            assert_eq!(have, Level::Neon);
            assert!(!available(Level::Avx2) && !available(Level::Avx512));
        } else {
            assert_eq!(have, Level::Portable);
        }
    }
}
