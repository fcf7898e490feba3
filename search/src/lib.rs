//! Data sets, the channel-split supernet and its bilevel search, the training loop,
//! benchmarks and run pictures.
//!
//! ```no_run
//! use splitnas_search::{data::{DataOptions, DatasetKind}, device::DeviceKind, train};
//! # fn opts() -> train::TrainOptions { unimplemented!() }
//! let summary = train::train(DeviceKind::Cpu, &opts()).unwrap();
//! println!("{:?}", summary.metrics.last());
//! ```
#![warn(missing_docs)]

pub mod architect;
pub mod bench;
pub mod budget;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod mixed_op;
pub mod parallel;
pub mod plot;
pub mod search;
pub mod sru;
pub mod steps;
pub mod supernet;
pub mod train;

/// Makes the trainings, searches and benchmarks of one process take turns. Burn 0.21 keeps
/// the random seed and the autodiff graph registry process-wide: two runs on two threads
/// would draw from each other's seeded stream, and one run's `backward()` can free the steps
/// of a graph the other is building, silently dropping a gradient (tracel-ai/burn#5573).
pub(crate) fn exclusive_run() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serializes the unit tests that call `backward()` (and those that seed Burn's global RNG).
/// Burn 0.21's autodiff ends every `backward()` by sweeping every graph in the process,
/// including one another thread is still building, and can free its steps: that thread's
/// backward then silently misses a gradient (tracel-ai/burn#5573; CI saw an alpha without a
/// gradient). The library calls `backward()` from one thread at a time; the test harness
/// does not.
/// Not [`exclusive_run`]'s lock: a test holding this one may still start a run.
#[cfg(test)]
pub(crate) fn backward_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
