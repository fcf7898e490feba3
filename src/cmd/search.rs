//! `splitnas search`: search a cell with channel-split differentiable architecture search.

use super::args::{DataArgs, DeviceArg, MethodArgs, RunDirArgs, SeedArg};
use super::budget::BudgetArgs;
use super::errors;
use super::workers::WorkerArgs;
use anyhow::Result;
use clap::Args;
use splitnas_search::data::DataOptions;
use splitnas_search::search::{search, SearchOptions, SearchRecipe};
use splitnas_search::supernet::SupernetConfig;

#[derive(Args)]
#[command(mut_arg("resume", |a| a.help("Continue the search in --out after its last checkpoint")))]
pub struct SearchArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Initial channels C of the supernet.
    #[arg(long, default_value_t = 16)]
    channels: usize,
    /// Cells L of the supernet.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    #[arg(long, default_value_t = SearchRecipe::DARTS.epochs)]
    epochs: usize,
    /// Batch size of each half (weights and architecture).
    #[arg(long, default_value_t = SearchRecipe::DARTS.batch_size)]
    batch_size: usize,
    /// Initial weight learning rate, cosine-annealed to 0. Default: 0.1 at batch 256,
    /// scaled linearly with --batch-size (0.025 at 64) when not given.
    #[arg(long)]
    lr: Option<f64>,
    #[command(flatten)]
    method: MethodArgs,
    /// LFR-DARTS: search the 3 stages (cells before, between and after the reductions) one
    /// after the other, shallow to deep, each on the derived cells of the earlier ones;
    /// the --epochs are split between the stages, each starting with --warmup-epochs.
    #[arg(long, value_name = "S")]
    progressive: Option<usize>,
    /// CSC-DARTS identity connection on every cell (default on).
    #[arg(long, overrides_with = "no_identity")]
    identity: bool,
    /// Ablate the identity connection.
    #[arg(long = "no-identity")]
    no_identity: bool,
    /// Adam learning rate of the architecture parameters.
    #[arg(long, default_value_t = SearchRecipe::DARTS.arch_lr)]
    arch_lr: f64,
    /// Epochs with the architecture frozen.
    #[arg(long, default_value_t = SearchRecipe::DARTS.warmup_epochs)]
    warmup_epochs: usize,
    /// Fraction of the training images for the weights (the rest trains the architecture).
    #[arg(long, default_value_t = SearchRecipe::DARTS.train_portion)]
    train_portion: f64,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    #[command(flatten)]
    seed: SeedArg,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    run_dir: RunDirArgs,
    #[command(flatten)]
    budget: BudgetArgs,
    #[command(flatten)]
    workers: WorkerArgs,
}

pub fn run(a: SearchArgs) -> Result<()> {
    if a.workers.launches() {
        return a.workers.launch(a.device.device);
    }
    let workers = a.workers.workers()?;
    let seed = a.seed.seed;
    let supernet = SupernetConfig::new()
        .with_channels(a.channels)
        .with_layers(a.layers)
        .with_identity(a.identity || !a.no_identity)
        .with_stages(a.progressive.unwrap_or(1));
    let supernet = a.method.apply(supernet);
    let opts = SearchOptions {
        dataset: a.data.dataset.into(),
        data: DataOptions {
            dir: a.data.data_dir,
            train_limit: a.train_limit,
            test_limit: Some(1),
            seed,
        },
        supernet,
        recipe: SearchRecipe {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr.unwrap_or(SearchRecipe::darts_lr(a.batch_size)),
            arch_lr: a.arch_lr,
            warmup_epochs: a.warmup_epochs,
            train_portion: a.train_portion,
            order: a.method.order.into(),
            seed,
            ..SearchRecipe::DARTS
        },
        out: a.run_dir.out,
        resume: a.run_dir.resume,
        progress: true,
        budget: a.budget.spec()?,
        sram_oracle: Some(super::budget::sram_oracle()),
        workers,
    };
    let s = search(a.device.open()?, &opts).map_err(errors::train)?;
    println!("final genotype = {}", s.genotype.to_darts());
    if let Some(c) = s.metrics.last().and_then(|m| m.cost.as_ref()) {
        let mut measured = String::new();
        if c.expected_sram.is_some() {
            measured += &format!(" sram_bytes={}", c.derived.sram);
        }
        if c.expected_latency_ns.is_some() {
            measured += &format!(" latency_ms={:.3}", c.derived.latency_ns as f64 / 1e6);
        }
        println!(
            "final cost: params={} macs={}{measured} (expected params={:.0} macs={:.0}{}{})",
            c.derived.params,
            c.derived.macs,
            c.expected_params,
            c.expected_macs,
            c.expected_sram
                .map_or(String::new(), |e| format!(" sram_bytes={e:.0}")),
            c.expected_latency_ns
                .map_or(String::new(), |e| format!(" latency_ms={:.3}", e / 1e6)),
        );
    }
    println!("wrote {}", s.out.join("genotype.json").display());
    Ok(())
}
