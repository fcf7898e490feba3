//! Data sets, the training loop and (next) the channel-split supernet and bilevel search.
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
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod mixed_op;
pub mod plot;
pub mod search;
pub mod sru;
pub mod supernet;
pub mod train;
