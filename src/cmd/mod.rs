//! One module per `splitnas` command: its flags (`Args`) and its `run`, glue between the
//! flags and the library crates.

pub mod args;
pub mod bench;
pub mod budget;
pub mod compare;
pub mod compile;
pub mod errors;
pub mod export;
pub mod genotype;
pub mod latency;
pub mod plot;
pub mod quantize;
pub mod quickstart;
pub mod run;
pub mod search;
pub mod testset;
pub mod train;
pub mod workers;
