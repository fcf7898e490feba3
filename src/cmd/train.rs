//! `splitnas train`: train the network of a genotype from scratch on a data set.

use super::args::{DataArgs, DeviceArg, RunDirArgs, SeedArg};
use super::errors;
use super::workers::WorkerArgs;
use anyhow::Result;
use clap::Args;
use splitnas_search::data::DataOptions;
use splitnas_search::train::{train, TrainOptions, TrainRecipe};

#[derive(Args)]
pub struct TrainArgs {
    /// Zoo name (DARTS_V1, DARTS_V2, PC_DARTS) or a genotype file (JSON or DARTS notation).
    #[arg(long)]
    genotype: String,
    #[command(flatten)]
    data: DataArgs,
    /// Initial channels C.
    #[arg(long, default_value_t = 36)]
    channels: usize,
    /// Number of cells L.
    #[arg(long, default_value_t = 20)]
    layers: usize,
    #[arg(long, default_value_t = TrainRecipe::DARTS.epochs)]
    epochs: usize,
    #[arg(long, default_value_t = TrainRecipe::DARTS.batch_size)]
    batch_size: usize,
    /// Initial learning rate, cosine-annealed to 0.
    #[arg(long, default_value_t = TrainRecipe::DARTS.lr)]
    lr: f64,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Auxiliary head after cell 2L/3, loss weight 0.4.
    #[arg(long)]
    auxiliary: bool,
    /// Cutout square side in pixels (0 = off).
    #[arg(long, default_value_t = TrainRecipe::DARTS.cutout)]
    cutout: usize,
    /// Final drop-path probability, ramped linearly from 0.
    #[arg(long, default_value_t = TrainRecipe::DARTS.drop_path)]
    drop_path: f64,
    /// CSC-DARTS identity connection in every cell.
    #[arg(long)]
    identity: bool,
    #[command(flatten)]
    seed: SeedArg,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    run_dir: RunDirArgs,
    #[command(flatten)]
    workers: WorkerArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.workers.launches() {
        return a.workers.launch(a.device.device);
    }
    let workers = a.workers.workers()?;
    let seed = a.seed.seed;
    let opts = TrainOptions {
        genotype: a.genotype,
        dataset: a.data.dataset.into(),
        data: DataOptions {
            dir: a.data.data_dir,
            train_limit: a.train_limit,
            test_limit: a.test_limit,
            seed,
        },
        channels: a.channels,
        layers: a.layers,
        auxiliary: a.auxiliary,
        identity: a.identity,
        recipe: TrainRecipe {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            cutout: a.cutout,
            drop_path: a.drop_path,
            seed,
            ..TrainRecipe::DARTS
        },
        out: a.run_dir.out,
        resume: a.run_dir.resume,
        progress: true,
        workers,
    };
    let s = train(a.device.open()?, &opts).map_err(errors::train)?;
    if let Some(m) = s.metrics.last() {
        println!(
            "final test_acc={:.4} test_loss={:.4} parameters={} out={}",
            m.test_acc,
            m.test_loss,
            s.parameters,
            s.out.display()
        );
    }
    Ok(())
}
