//! `splitnas bench`: search-step, training-step and inference benchmarks, each ending
//! with a `key=value` line.

use super::args::{BenchSizeArgs, DeviceArg, MethodArgs, SeedArg};
use super::errors;
use super::run::load_model;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use splitnas_search::bench::{bench_search, bench_train, BenchResult, SearchBench, TrainBench};
use splitnas_search::device::DeviceKind;
use splitnas_search::supernet::SupernetConfig;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Time full search iterations (architecture + weight step) on synthetic data.
    SearchStep(SearchStepArgs),
    /// Inference latency of an ONNX file with the Burn runtime.
    Run(RunArgs),
    /// Training throughput of an evaluation network on synthetic data.
    Train(TrainArgs),
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
}

#[derive(Args)]
pub struct RunArgs {
    /// The ONNX file.
    file: PathBuf,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs after two warm-up runs.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    #[command(flatten)]
    device: DeviceArg,
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
        BenchCmd::Run(a) => inference(&a.file, a.batch, a.iters, a.device.open()?),
        BenchCmd::Train(a) => train(a),
    }
}

fn search_step(a: SearchStepArgs) -> Result<()> {
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

/// `bench run`: p50/p90 latency of `iters` runs of a `batch`-image input.
fn inference(file: &Path, batch: usize, iters: usize, device: DeviceKind) -> Result<()> {
    if batch == 0 || iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let model = load_model(file, device)?;
    let [c, h, w] = model.input_shape();
    let x: Vec<f32> = (0..batch * c * h * w)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    for _ in 0..2 {
        model.run_host(&x, batch)?;
    }
    let mut ms = vec![];
    for _ in 0..iters {
        let t0 = std::time::Instant::now();
        model.run_host(&x, batch)?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let (p50, p90) = (pick(0.5), pick(0.9));
    println!(
        "{}: batch {batch}, {iters} runs on {}, {} steps",
        file.display(),
        device,
        model.steps()
    );
    println!(
        "p50_ms={p50:.3} p90_ms={p90:.3} images_per_s={:.1}",
        batch as f64 / (p50 / 1e3)
    );
    Ok(())
}
