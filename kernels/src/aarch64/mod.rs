//! aarch64 NEON builds of the kernels: the window engine ([`window`]: depthwise, dilated,
//! max and summing pools), the 1x1 convolution ([`pointwise`], and through it the dense
//! one) and the element-wise loops of batch normalization and the weighted sum
//! ([`lanes`]), each a `#[target_feature(enable = "neon")]` function the portable entry
//! points call when [`crate::arch::level`] is [`crate::arch::Level::Neon`].
//!
//! 32-bit ARM (armv7) has no build here: its NEON intrinsics (`core::arch::arm`), the
//! `neon` target feature and `is_arm_feature_detected!` are unstable in Rust, so armv7
//! runs the portable code.

pub(crate) mod int8;
pub(crate) mod lanes;
pub(crate) mod pointwise;
pub(crate) mod window;
