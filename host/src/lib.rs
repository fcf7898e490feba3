//! The one adapter between Burn tensors and `splitnas-kernels`, shared by `models` (training
//! fast paths with their autodiff steps) and `runtime` (inference plan): which backends run
//! the host kernels ([`route`]), a tensor's floats read in place ([`HostFloats`]), tensors
//! built from host vectors ([`tensor`], [`fresh_tensor`]), an autodiff step around a kernel
//! ([`step`]), and atomic file writes ([`fs`]).
//!
//! ```
//! use burn::tensor::Tensor;
//! let x = Tensor::<burn::backend::Flex, 4>::ones([1, 2, 3, 3], &Default::default());
//! let sum: f64 = splitnas_host::kernels::elementwise::sum(&splitnas_host::HostFloats::new(x), |v| v);
//! ```
#![warn(missing_docs)]

pub mod device;
mod floats;
pub mod fs;
mod route;
pub mod step;

pub use floats::HostFloats;
pub use route::{
    host_kernels, on_host, route, same, set_host_kernels, with_host_kernels, Inner, Route,
    HOST_KERNELS_ENV,
};
/// The kernels this crate adapts, for the crates that call them through it.
pub use splitnas_kernels as kernels;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use splitnas_kernels::Fresh;

/// A tensor of `shape` holding `data` (row-major).
///
/// # Panics
/// When `data` does not hold `shape`'s element count.
pub fn tensor<B: Backend, const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// A tensor of `shape` written by `kernel` (a closure calling one kernel on the fresh
/// output; see [`kernels::fresh_vec`]).
pub fn fresh_tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
    kernel: impl FnOnce(&mut Fresh<'_>),
) -> Tensor<B, D> {
    tensor(
        kernels::fresh_vec(shape.iter().product(), kernel),
        shape,
        device,
    )
}

/// A float tensor from its backend primitive.
pub fn from_float<B: Backend, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// The backend primitive of a float tensor.
pub fn into_float<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// Branches on [`route`] for backend `$B`: the autodiff arm runs with `$I` the inner CPU
/// backend (`Flex` or `NdArray`), the host arm on a plain CPU backend, the generic arm on
/// every other backend (Burn's own op).
///
/// ```text
/// splitnas_host::dispatch!(B {
///     autodiff I => same(pool_autodiff::<I>(same(x))),
///     host => pool_forward(x),
///     generic => burn_pool(x),
/// })
/// ```
#[macro_export]
macro_rules! dispatch {
    ($B:ty { autodiff $I:ident => $ad:expr, host => $host:expr, generic => $generic:expr $(,)? }) => {
        match $crate::route::<$B>() {
            $crate::Route::Autodiff($crate::Inner::Flex) => {
                #[allow(dead_code)]
                type $I = $crate::__private::Flex;
                $ad
            }
            $crate::Route::Autodiff($crate::Inner::NdArray) => {
                #[allow(dead_code)]
                type $I = $crate::__private::NdArray;
                $ad
            }
            $crate::Route::Host => $host,
            $crate::Route::Generic => $generic,
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use burn::backend::{Flex, NdArray};
}
