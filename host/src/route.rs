//! The one decision "host kernel or Burn's generic op" for a backend, and the switch that
//! turns the host kernels off so that the CPU backends run exactly the generic code a GPU
//! backend runs: `SPLITNAS_HOST_KERNELS=0` in the environment, [`set_host_kernels`] for the
//! process, [`with_host_kernels`] for one thread (tests comparing the two paths).

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

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

/// Process-wide setting: 0 not read yet, 1 on, 2 off.
static PROCESS: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// This thread's override ([`with_host_kernels`]).
    static THREAD: Cell<Option<bool>> = const { Cell::new(None) };
}

/// The environment variable that turns the host kernels off when set to `0` (or `off`,
/// `false`, `no`).
pub const HOST_KERNELS_ENV: &str = "SPLITNAS_HOST_KERNELS";

/// Whether the host kernels serve the CPU backends on this thread: this thread's
/// [`with_host_kernels`] override, else the process's [`set_host_kernels`], else
/// [`HOST_KERNELS_ENV`] (on unless it says `0`, `off`, `false` or `no`).
pub fn host_kernels() -> bool {
    if let Some(on) = THREAD.with(Cell::get) {
        return on;
    }
    match PROCESS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let off = std::env::var(HOST_KERNELS_ENV).is_ok_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "off" | "false" | "no"
                )
            });
            // a concurrent set_host_kernels wins over the environment
            let _ = PROCESS.compare_exchange(
                0,
                if off { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            PROCESS.load(Ordering::Relaxed) == 1
        }
    }
}

/// Turns the host kernels on or off for the whole process (over [`HOST_KERNELS_ENV`]).
/// Off, `Flex` and `NdArray` run Burn's generic ops, as CUDA and wgpu do.
pub fn set_host_kernels(on: bool) {
    PROCESS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Runs `f` with the host kernels on or off on this thread only (other threads keep
/// theirs): how tests compare the host kernels with the generic path in one process.
/// Decisions are made on the thread that builds or runs a model, so a runtime model
/// loaded inside `f` keeps the setting it was loaded with.
pub fn with_host_kernels<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(THREAD.with(|t| t.replace(Some(on))));
    f()
}

/// How operations on backend `B` run: the one place that decides whether the host kernels
/// serve it ([`Route::Generic`] for every backend while [`host_kernels`] is off).
pub fn route<B: Backend>() -> Route {
    if !host_kernels() {
        return Route::Generic;
    }
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
        with_host_kernels(true, cpu_backends_on);
    }

    fn cpu_backends_on() {
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

    #[test]
    fn the_switch_sends_every_backend_to_burns_ops_on_this_thread_only() {
        let before = route::<Flex>();
        let inner = with_host_kernels(false, || {
            // nested settings restore the outer one
            let nested = with_host_kernels(true, route::<Flex>);
            let other = std::thread::spawn(route::<Flex>).join().unwrap();
            (route::<Flex>(), route::<Autodiff<NdArray>>(), nested, other)
        });
        assert_eq!(
            inner,
            (Route::Generic, Route::Generic, Route::Host, route::<Flex>())
        );
        assert_eq!(route::<Flex>(), before);
    }
}
