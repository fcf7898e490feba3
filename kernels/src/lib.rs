//! Hand-written CPU tensor kernels on plain slices: the one home of splitnas's convolution,
//! pooling, batch-norm, weighted-sum and channel-selection kernels, in f32 and (module
//! [`int8`], for quantized inference) in int8 with int32 sums and fixed-point
//! requantization.
//!
//! ```
//! # use splitnas_kernels::{conv, fresh_vec, Geom};
//! let g = Geom::square(1, [4, 4], 3, 1, 1, 1); // 1 channel, 4x4, 3x3 kernel, padding 1
//! let f = conv::Filter { wt: &[1.0; 9], bias: None, relu: false };
//! let y = fresh_vec(16, |out| conv::depthwise(&[1.0; 16], 1, &g, f, out));
//! ```
//!
//! The int8 kernels follow the ONNX `QLinearConv` / TFLite reference arithmetic:
//!
//! ```
//! # use splitnas_kernels::{int8, Geom};
//! let g = Geom::square(1, [4, 4], 3, 1, 1, 1);
//! let requant = [int8::Requant::from_scales(0.02, 0.01, 0.05)]; // s_in s_w / s_out
//! let f = int8::conv::Filter { wt: &[1; 9], bias: None, requant: &requant, groups: 1 };
//! let mut y = [0i8; 16];
//! int8::conv::conv(&[20; 16], -3, 1, &g, f, int8::OutQ::relu(-5), &mut y);
//! // 9 taps of (20 + 3) x 1 = 207 accumulator steps x 0.004 = 0.83 -> 1, plus -5
//! assert_eq!((y[0], y[5]), (-5, -4));
//! ```
//!
//! Every float kernel takes `&[f32]` inputs and a small shape struct and writes into
//! memory the caller owns: a `&mut [f32]`, or (for the kernels that write every element of
//! their output, through [`Output`]) a fresh vector's spare capacity via [`fresh_vec`], so
//! no zero pass runs first; the int8 kernels write a `&mut [i8]`. No Burn, no types of the
//! search space.
//!
//! Each family has a portable implementation that defines the result; SIMD builds live in
//! per-architecture modules (`x86_64`: AVX2 + FMA, AVX-512, AVX-512 VNNI for int8;
//! `aarch64`: NEON; a `wasm32` simd128 module would go beside them) and are chosen once at
//! run time ([`arch::level`]).
//! 32-bit ARM runs the portable code (Rust's `core::arch::arm` NEON is unstable).
//! The crate is `no_std` + `alloc`; the default `std` feature adds run-time CPU feature
//! detection, rayon threads (where a layer is large enough to pay for them) and gemm's
//! matrix product for 1x1 convolutions on CPUs without AVX-512. Without the `alloc`
//! feature (`default-features = false`) only [`int8`]'s allocation-free entry points
//! remain (`conv::conv_into`, `pool::max_into`, `elementwise`, ...): outputs and scratch
//! in slices the caller owns, for a microcontroller without a heap.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(all(target_arch = "aarch64", feature = "alloc"))]
mod aarch64;
#[cfg(feature = "alloc")]
pub mod affine;
pub mod arch;
#[cfg(feature = "alloc")]
pub mod conv;
#[cfg(feature = "alloc")]
pub mod elementwise;
mod geom;
pub mod int8;
#[cfg(feature = "alloc")]
mod out;
#[cfg(feature = "alloc")]
mod par;
#[cfg(feature = "alloc")]
pub mod pool;
#[cfg(feature = "alloc")]
pub mod select;
#[cfg(feature = "alloc")]
mod window;
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
mod x86_64;

#[cfg(test)]
mod testing;

pub use geom::Geom;
#[cfg(feature = "alloc")]
pub use out::{fresh_vec, Fresh, Output};
