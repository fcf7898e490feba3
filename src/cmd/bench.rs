//! `splitnas bench`: search-step, training-step and inference benchmarks, each ending
//! with a `key=value` line.

use super::args::{BenchSizeArgs, DeviceArg, MethodArgs, SeedArg};
use super::errors;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use splitnas_runtime::cli::BenchArgs;
use splitnas_search::bench::{bench_search, bench_train, BenchResult, SearchBench, TrainBench};
use splitnas_search::supernet::SupernetConfig;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Time full search iterations (architecture + weight step) on synthetic data.
    SearchStep(SearchStepArgs),
    /// Inference latency of an ONNX file with the Burn runtime (`splitnas-run bench` runs
    /// the same code).
    Run(BenchArgs),
    /// Training throughput of an evaluation network on synthetic data.
    Train(TrainArgs),
    /// The latency table of an evaluation network: every op on every cell, timed with
    /// the runtime on this machine (`search --latency-table`).
    Ops(super::latency::OpsArgs),
}

#[derive(Args)]
pub struct SearchStepArgs {
    #[command(flatten)]
    method: MethodArgs,
    #[command(flatten)]
    size: BenchSizeArgs,
    /// Timed iterations after one warm-up iteration.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[command(flatten)]
    seed: SeedArg,
    #[command(flatten)]
    device: DeviceArg,
    /// Data-parallel iterations: `--devices N` worker processes each time their shard of
    /// every batch, the gradient all-reduce included (docs/parallel.md).
    #[command(flatten)]
    workers: super::workers::WorkerArgs,
}

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long, default_value = "DARTS_V2")]
    genotype: String,
    #[command(flatten)]
    size: BenchSizeArgs,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[command(flatten)]
    seed: SeedArg,
    #[command(flatten)]
    device: DeviceArg,
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::SearchStep(a) => search_step(a),
        BenchCmd::Run(a) => Ok(splitnas_runtime::cli::bench(&a)?),
        BenchCmd::Train(a) => train(a),
        BenchCmd::Ops(a) => super::latency::ops(a),
    }
}

fn search_step(a: SearchStepArgs) -> Result<()> {
    if a.workers.launches() {
        return a.workers.launch(a.device.device);
    }
    let workers = a.workers.workers()?;
    let s = a.size;
    let o = SearchBench {
        supernet: a.method.apply(
            SupernetConfig::new()
                .with_channels(s.channels)
                .with_layers(s.layers)
                .with_in_channels(s.in_channels)
                .with_image_size(s.image_size),
        ),
        order: a.method.order.into(),
        batch_size: s.batch_size,
        steps: a.steps,
        seed: a.seed.seed,
        workers,
    };
    print_bench(&bench_search(a.device.open()?, &o).map_err(errors::train)?);
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let s = a.size;
    let o = TrainBench {
        genotype: a.genotype,
        channels: s.channels,
        layers: s.layers,
        batch_size: s.batch_size,
        image_size: s.image_size,
        in_channels: s.in_channels,
        steps: a.steps,
        seed: a.seed.seed,
    };
    let r = bench_train(a.device.open()?, &o).map_err(errors::train)?;
    if r.step_s <= 0.0 {
        bail!("benchmark measured no time");
    }
    print_bench(&r);
    Ok(())
}

/// Every timed step (the spread shows a noisy machine), then the contract line.
fn print_bench(r: &BenchResult) {
    let each: Vec<String> = r.times.iter().map(|t| format!("{t:.4}")).collect();
    println!("steps_s={}", each.join(","));
    let mb = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
    println!(
        "host_peak_rss_mb={} device_reserved_mb={}{}",
        mb(r.host_peak_rss_mb),
        mb(r.device_reserved_mb),
        if r.device_reserved_mb.is_none() {
            " (the CPU backends allocate from the process heap: see host_peak_rss_mb)"
        } else {
            ""
        }
    );
    println!("step_s={:.4} images_per_s={:.1}", r.step_s, r.images_per_s);
}
