//! The DARTS search space: the 8 operations, genotypes (JSON and DARTS notation), cells,
//! the evaluation network and the genotype zoo.
//!
//! ```no_run
//! use splitnas_models::{Genotype, NetworkConfig};
//! let genotype = Genotype::resolve("DARTS_V2").unwrap();
//! let net = NetworkConfig::new(genotype).with_channels(16).with_layers(8)
//!     .init::<burn::backend::Flex>(&Default::default()).unwrap();
//! ```
#![warn(missing_docs)]

pub mod bn;
pub mod cell;
pub mod cost;
pub mod draw;
pub mod fastbn;
pub mod fastconv;
pub mod fastpool;
pub mod fastselect;
pub mod fastsum;
pub mod genotype;
pub mod graph;
pub mod latency;
pub mod network;
mod notation;
pub mod ops;
pub mod params;
pub mod zoo;

pub use cost::{Cost, CostTable, NODES};
pub use genotype::{CellGenotype, CellPair, Genotype, GenotypeError, Primitive};
pub use latency::{LatencyError, LatencyTable};
pub use network::{Network, NetworkConfig, NetworkError, NetworkSize};
pub use params::{count_parameters, materialize};

/// CPU backend used by the unit tests.
#[cfg(test)]
pub(crate) type TestBackend = burn::backend::Flex;

/// Serializes the unit tests that call `backward()`. Burn 0.21's autodiff ends every
/// `backward()` by sweeping every graph in the process, including one another thread is
/// still building, and can free its steps: that thread's backward then silently misses a
/// gradient (tracel-ai/burn#5573). The library calls `backward()` from one thread at a time;
/// the test harness does not.
#[cfg(test)]
pub(crate) fn backward_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
