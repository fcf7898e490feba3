//! Which SIMD build the kernels run: chosen once per process from what the CPU has
//! (`is_x86_feature_detected!` with the `std` feature, the compile-time target features
//! without it) and cached.
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
        _ => {
            let l = detect();
            LEVEL.store(l as u8, Ordering::Relaxed);
            l
        }
    }
}

/// Whether this CPU can run the kernels' `level` builds.
pub fn available(level: Level) -> bool {
    level <= self::level()
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

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Portable
}
