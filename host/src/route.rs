//! The one decision "host kernel or Burn's generic op" for a backend.

use std::any::{Any, TypeId};

use burn::backend::autodiff::Autodiff;
use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;

/// How operations on a backend run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A CPU backend (`Flex`, `NdArray`): host kernels on the tensors' floats.
    Host,
    /// `Autodiff` over a CPU backend: host kernels with a custom backward step.
    Autodiff(Inner),
    /// Any other backend (CUDA, wgpu, ...): Burn's generic op.
    Generic,
}

/// The CPU backend under an `Autodiff` wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inner {
    /// `burn::backend::Flex`.
    Flex,
    /// `burn::backend::NdArray`.
    NdArray,
}

/// How operations on backend `B` run: the one place that decides whether the host kernels
/// serve it.
pub fn route<B: Backend>() -> Route {
    let b = TypeId::of::<B>();
    if b == TypeId::of::<Flex>() || b == TypeId::of::<NdArray>() {
        Route::Host
    } else if b == TypeId::of::<Autodiff<Flex>>() {
        Route::Autodiff(Inner::Flex)
    } else if b == TypeId::of::<Autodiff<NdArray>>() {
        Route::Autodiff(Inner::NdArray)
    } else {
        Route::Generic
    }
}

/// Whether backend `B` runs the host kernels (plain or under `Autodiff`).
pub fn on_host<B: Backend>() -> bool {
    route::<B>() != Route::Generic
}

/// Moves a value between two types that [`route`] (a `TypeId` comparison) has shown to be
/// the same.
///
/// # Panics
/// When the types differ: a bug of the caller.
pub fn same<T: 'static, U: 'static>(value: T) -> U {
    let boxed: Box<dyn Any> = Box::new(value);
    *boxed
        .downcast::<U>()
        .expect("caller checked the TypeIds are equal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backends_and_their_autodiff_run_on_the_host() {
        assert_eq!(route::<Flex>(), Route::Host);
        assert_eq!(route::<NdArray>(), Route::Host);
        assert_eq!(route::<Autodiff<Flex>>(), Route::Autodiff(Inner::Flex));
        assert_eq!(
            route::<Autodiff<NdArray>>(),
            Route::Autodiff(Inner::NdArray)
        );
        // another element type is another backend: Burn's ops
        assert_eq!(route::<NdArray<f32, i32>>(), Route::Generic);
        assert!(!on_host::<Autodiff<NdArray<f32, i32>>>());
        let x: u32 = same(5u32);
        assert_eq!(x, 5);
    }
}
