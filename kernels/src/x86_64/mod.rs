//! x86_64 builds of the kernels: AVX2 + FMA ([`avx2`]) and AVX-512F ([`avx512`]), each a
//! `#[target_feature]` function the portable entry points call when [`crate::arch::level`]
//! says the CPU has the feature.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod int8;
