//! Training the evaluation network of a genotype from scratch (`splitnas train`).
//!
//! Recipe (DARTS): SGD momentum 0.9, weight decay 3e-4, cosine learning rate from `lr` to 0
//! over the epochs, global gradient-norm clip 5, auxiliary loss weight 0.4, drop path
//! ramped linearly (`drop_path * epoch / epochs`), cross-entropy. The test set is
//! evaluated after every epoch.
//!
//! Output directory: `config.json`, `model.mpk` (Burn record of the latest weights),
//! `metrics.jsonl`, `checkpoint.json` + `checkpoint/` (weights and optimizer state of the
//! last finished epoch). Every file is written to a temporary name and renamed, and
//! `checkpoint.json` is renamed last, so a run killed at any point resumes from its last
//! finished epoch when resumed and ends with the same metrics (CPU, same seed).

use crate::checkpoint::{self, write_atomic};
use crate::data::{self, Augment, DataOptions, Dataset, DatasetKind, ImageSet};
use crate::device::{seeded, DeviceKind};
use crate::error::Constraint::{AtLeastOne, HalfOpenUnit, Positive};
pub use crate::error::TrainError;
use crate::error::{require, Setting};
use crate::parallel::{Parallel, Workers};
use crate::steps::{
    argmax_correct, batch_tensors, clip_grad_norm, cosine_lr, cross_entropy, epoch_seed,
    progress_bar, scalar,
};
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use splitnas_models::{Genotype, Network, NetworkConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The training recipe, saved in `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainRecipe {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate (cosine-annealed to 0).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Auxiliary loss weight (used when the network has an auxiliary head).
    pub auxiliary_weight: f64,
    /// Cutout side (0 = off).
    pub cutout: usize,
    /// Final drop-path probability.
    pub drop_path: f64,
    /// Seed of weights, shuffling and augmentation.
    pub seed: u64,
}

impl TrainRecipe {
    /// DARTS' evaluation recipe (Liu et al., 2019): 600 epochs of batch 96 at learning rate
    /// 0.025, SGD momentum 0.9, weight decay 3e-4, clip 5, auxiliary weight 0.4; cutout
    /// and drop path off (DARTS trains CIFAR-10 with 16 and 0.2).
    pub const DARTS: TrainRecipe = TrainRecipe {
        epochs: 600,
        batch_size: 96,
        lr: 0.025,
        momentum: 0.9,
        weight_decay: 3e-4,
        grad_clip: 5.0,
        auxiliary_weight: 0.4,
        cutout: 0,
        drop_path: 0.0,
        seed: 0,
    };
}

impl Default for TrainRecipe {
    fn default() -> Self {
        TrainRecipe::DARTS
    }
}

/// What `splitnas train` was asked to do.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Zoo name or file.
    pub genotype: String,
    /// Data set.
    pub dataset: DatasetKind,
    /// Data directory and limits.
    pub data: DataOptions,
    /// Initial channels C.
    pub channels: usize,
    /// Cells L.
    pub layers: usize,
    /// Auxiliary head.
    pub auxiliary: bool,
    /// CSC-DARTS identity connection.
    pub identity: bool,
    /// The recipe.
    pub recipe: TrainRecipe,
    /// Output directory.
    pub out: PathBuf,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Data-parallel steps (`None`: one worker, one shard).
    pub workers: Option<Workers>,
}

/// `config.json`: everything needed to rebuild and use the trained network.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// The genotype (JSON, as `genotype show` prints it).
    pub genotype: Genotype,
    /// The genotype in DARTS notation, for people.
    pub genotype_darts: String,
    /// Network configuration.
    pub network: NetworkConfig,
    /// Per-channel mean of the training images (pixels in [0, 1]).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
    /// Class names.
    pub classes: Vec<String>,
    /// Data set name.
    pub dataset: String,
    /// Data directory used.
    pub data_dir: Option<PathBuf>,
    /// Training images used (first N).
    pub train_limit: Option<usize>,
    /// Test images used (first N).
    pub test_limit: Option<usize>,
    /// The recipe.
    pub recipe: TrainRecipe,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Mean training loss (main head).
    pub train_loss: f64,
    /// Training accuracy (augmented images, drop path on).
    pub train_acc: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Test accuracy.
    pub test_acc: f64,
    /// Learning rate used in this epoch.
    pub lr: f64,
    /// Wall time of the epoch (training + evaluation).
    pub seconds: f64,
}

/// Result of a finished run.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// All epochs.
    pub metrics: Vec<EpochMetrics>,
    /// Parameters of the network (auxiliary head included when present).
    pub parameters: usize,
    /// Output directory.
    pub out: PathBuf,
}

/// Test loss and accuracy of `model` (inference mode) on `set`.
pub fn evaluate<B: Backend>(
    model: &Network<B>,
    set: &ImageSet,
    cfg: &RunConfig,
    device: &B::Device,
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(0);
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    let indices: Vec<usize> = (0..set.len()).collect();
    for idx in indices.chunks(256) {
        let (x, y) = batch_tensors::<B>(set, idx, (&cfg.mean, &cfg.std), None, &mut rng, device);
        let logits = model.forward(x);
        let loss = cross_entropy(logits.clone(), y);
        loss_sum += scalar(loss) as f64 * idx.len() as f64;
        let l: Vec<f32> = logits.into_data().iter::<f32>().collect();
        let labels: Vec<usize> = idx.iter().map(|&i| set.labels[i]).collect();
        correct += argmax_correct(&l, &labels, cfg.network.classes);
    }
    let n = set.len().max(1) as f64;
    (loss_sum / n, correct as f64 / n)
}

fn check_options(o: &TrainOptions) -> Result<(), TrainError> {
    let r = &o.recipe;
    require(r.epochs > 0, Setting::Epochs, AtLeastOne, r.epochs as f64)?;
    require(
        r.batch_size > 0,
        Setting::BatchSize,
        AtLeastOne,
        r.batch_size as f64,
    )?;
    require(r.lr.is_finite() && r.lr > 0.0, Setting::Lr, Positive, r.lr)?;
    require(
        (0.0..1.0).contains(&r.drop_path),
        Setting::DropPath,
        HalfOpenUnit,
        r.drop_path,
    )?;
    for (limit, setting) in [
        (o.data.train_limit, Setting::TrainLimit),
        (o.data.test_limit, Setting::TestLimit),
    ] {
        if let Some(n) = limit {
            require(n > 0, setting, AtLeastOne, n as f64)?;
        }
    }
    Ok(())
}

/// Builds `config.json` for a fresh run (loads the data to compute mean/std).
fn fresh_config(o: &TrainOptions, data: &Dataset) -> Result<RunConfig, TrainError> {
    let genotype = Genotype::resolve(&o.genotype)?;
    let network = NetworkConfig::new(genotype.clone())
        .with_channels(o.channels)
        .with_layers(o.layers)
        .with_classes(data.classes.len())
        .with_in_channels(data.train.channels)
        .with_image_size(data.train.side)
        .with_auxiliary(o.auxiliary)
        .with_identity(o.identity);
    network.validate()?;
    if o.recipe.cutout > data.train.side {
        return Err(TrainError::CutoutTooLarge {
            cutout: o.recipe.cutout,
            side: data.train.side,
        });
    }
    let (mean, std) = data.train.mean_std();
    Ok(RunConfig {
        genotype_darts: genotype.to_darts(),
        genotype,
        network,
        mean,
        std,
        classes: data.classes.clone(),
        dataset: data.kind.name().to_string(),
        data_dir: o.data.dir.clone(),
        train_limit: o.data.train_limit,
        test_limit: o.data.test_limit,
        recipe: o.recipe.clone(),
    })
}

/// Runs `splitnas train` on `device`.
pub fn train(device: DeviceKind, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    check_options(opts)?;
    crate::with_autodiff_backend!(device, train_on(opts))
}

/// Runs `splitnas train` on the autodiff backend `B`.
/// Runs of one process (trainings, searches, benchmarks) take turns: Burn's seed and
/// autodiff graphs are process-wide.
pub fn train_on<B: AutodiffBackend>(
    device: &B::Device,
    opts: &TrainOptions,
) -> Result<TrainSummary, TrainError> {
    let _turn = crate::exclusive_run();
    let out = &opts.out;
    // with several workers, rank 0 writes the run's files; the others only compute
    let writer = match &opts.workers {
        Some(Workers::Join { rank, .. }) => *rank == 0,
        _ => true,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io {
            path: path.clone(),
            source,
        }
    };
    let state = checkpoint::read_state(out)?;
    let (cfg, dataset) = match (&state, opts.resume) {
        (Some(s), false) => {
            let epochs = read_config(out).map(|c| c.recipe.epochs).unwrap_or(0);
            return Err(TrainError::Exists {
                dir: out.clone(),
                epoch: s.epoch,
                epochs,
            });
        }
        (None, true) => return Err(TrainError::NothingToResume(out.clone())),
        (Some(_), true) => {
            let cfg = read_config(out)?;
            let kind: DatasetKind = cfg.dataset.parse()?;
            let data = data::load(
                kind,
                &DataOptions {
                    dir: cfg.data_dir.clone(),
                    train_limit: cfg.train_limit,
                    test_limit: cfg.test_limit,
                    seed: cfg.recipe.seed,
                },
            )?;
            (cfg, data)
        }
        (None, false) => {
            let data = data::load(opts.dataset, &opts.data)?;
            let cfg = fresh_config(opts, &data)?;
            if writer {
                std::fs::create_dir_all(out).map_err(io(out))?;
                let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
                write_atomic(&out.join("config.json"), text.as_bytes())?;
            }
            (cfg, data)
        }
    };
    let r = cfg.recipe.clone();

    // every worker joins before the first step (and starts from the same seeded weights)
    let par = match &opts.workers {
        Some(w) => w.start::<B>(device)?,
        None => Parallel::single(),
    };
    let mut model: Network<B> = seeded(
        device,
        r.seed,
        |d| cfg.network.init::<burn::backend::Flex>(d),
        |d| cfg.network.init(d),
    )?;
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: r.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig::new(r.weight_decay as f32)))
        .init::<B, Network<B>>();
    let mut metrics = vec![];
    let mut start_epoch = 0;
    if let Some(s) = &state {
        model = checkpoint::load_module(model, &out.join(&s.model), device)?;
        optim = checkpoint::load_optimizer::<B, Network<B>, _>(optim, &out.join(&s.optim), device)?;
        metrics = s.metrics.clone();
        start_epoch = s.epoch;
        println!(
            "resuming {} after epoch {}/{} (settings from config.json)",
            out.display(),
            s.epoch,
            r.epochs
        );
    }
    let parameters = splitnas_models::count_parameters(&model);
    println!(
        "training {} on {} ({} train / {} test images, {}x{}x{}), {} parameters, {} epochs",
        cfg.genotype_darts,
        cfg.dataset,
        dataset.train.len(),
        dataset.test.len(),
        dataset.train.channels,
        dataset.train.side,
        dataset.train.side,
        parameters,
        r.epochs
    );

    let augment = Augment::standard(dataset.kind, dataset.train.side, r.cutout);
    let steps = dataset.train.len().div_ceil(r.batch_size);
    let env = |name: &str| -> Option<usize> { std::env::var(name).ok()?.parse().ok() };
    // test hooks: a kill after an epoch's checkpoint (of one worker when a rank is given)
    let (abort_after, abort_rank) = (
        env("SPLITNAS_ABORT_AFTER_EPOCH"),
        env("SPLITNAS_ABORT_WORKER"),
    );
    for epoch in start_epoch..r.epochs {
        let t0 = Instant::now();
        let lr = cosine_lr(r.lr, epoch, r.epochs);
        let drop_prob = r.drop_path * epoch as f64 / r.epochs as f64;
        B::seed(device, epoch_seed(r.seed, epoch));
        let mut rng = StdRng::seed_from_u64(epoch_seed(r.seed, epoch));
        let mut order: Vec<usize> = (0..dataset.train.len()).collect();
        order.shuffle(&mut rng);
        let bar = progress_bar(
            opts.progress,
            steps as u64,
            &format!("epoch {}/{}", epoch + 1, r.epochs),
        );
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for (b, idx) in order.chunks(r.batch_size).enumerate() {
            let batch = batch_tensors::<B>(
                &dataset.train,
                idx,
                (&cfg.mean, &cfg.std),
                Some(&augment),
                &mut rng,
                device,
            );
            let labels: Vec<usize> = idx.iter().map(|&i| dataset.train.labels[i]).collect();
            let Some(now) = train_step(
                &par,
                &mut model,
                &mut optim,
                (lr, drop_prob, &r),
                &batch,
                &labels,
                epoch_seed(epoch_seed(r.seed, epoch), b),
                (cfg.network.classes, device),
            )?
            else {
                continue;
            };
            if !now.0.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    value: (now.0 / now.2.max(1) as f64) as f32,
                    epoch: epoch + 1,
                    batch: b + 1,
                    last_good: epoch,
                    dir: out.clone(),
                });
            }
            loss_sum += now.0;
            correct += now.1;
            seen += now.2;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.3}",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
        }
        bar.finish_and_clear();
        let (test_loss, test_acc) = if writer {
            evaluate(&model.valid(), &dataset.test, &cfg, device)
        } else {
            (f64::NAN, f64::NAN)
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_loss,
            test_acc,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {}/{} train_loss={:.4} train_acc={:.4} test_loss={:.4} test_acc={:.4} lr={:.5} seconds={:.1}",
            m.epoch, r.epochs, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.lr, m.seconds
        );
        metrics.push(m);
        if writer {
            checkpoint::save_epoch::<B, _, _, _>(out, epoch + 1, &model, &optim, &metrics)?;
        }
        par.barrier::<B>(device)?;
        if abort_after == Some(epoch + 1) && abort_rank.is_none_or(|k| k == par.rank()) {
            // Test hook: simulate a kill right after a checkpoint.
            std::process::abort();
        }
    }
    par.finish::<B>()?;
    Ok(TrainSummary {
        metrics,
        parameters,
        out: out.clone(),
    })
}

/// One training step over the shards of `par` (see [`crate::parallel`]): each local
/// shard's loss (with the auxiliary head's) and gradient, their mean over every shard,
/// clipped, one SGD step. Returns the summed cross-entropy, correct count and images of
/// every shard, `None` when the batch has fewer images than shards; a non-finite loss
/// returns without stepping. With several shards, Burn's random draws (drop-path) are
/// seeded per shard from `step_seed`, as in [`Parallel::accumulating`].
#[allow(clippy::too_many_arguments)]
fn train_step<B: AutodiffBackend, O: Optimizer<Network<B>, B>>(
    par: &Parallel,
    model: &mut Network<B>,
    optim: &mut O,
    (lr, drop_prob, r): (f64, f64, &TrainRecipe),
    batch: &(Tensor<B, 4>, Tensor<B, 1, Int>),
    labels: &[usize],
    step_seed: u64,
    (classes, device): (usize, &B::Device),
) -> Result<Option<(f64, usize, usize)>, TrainError> {
    let Some(rows): Option<Vec<_>> = par.local().map(|s| par.rows(labels.len(), s)).collect()
    else {
        return Ok(None);
    };
    let mut per = Vec::with_capacity(rows.len());
    let mut extras = Vec::with_capacity(rows.len());
    for (s, rows) in par.local().zip(&rows) {
        if par.count() > 1 {
            B::seed(device, Parallel::shard_seed(step_seed, s));
        }
        let (x, y) = Parallel::shard(batch, rows);
        let (logits, aux) = model.forward_train(x, drop_prob);
        let main = cross_entropy(logits.clone(), y.clone());
        let loss = match aux {
            Some(a) => main
                .clone()
                .add(cross_entropy(a, y).mul_scalar(r.auxiliary_weight)),
            None => main.clone(),
        };
        per.push(GradientsParams::from_grads(loss.backward(), model));
        let l: Vec<f32> = logits.inner().into_data().iter::<f32>().collect();
        let correct = argmax_correct(&l, &labels[rows.clone()], classes);
        let main_v = scalar(main.inner()) as f64;
        extras.push(vec![
            main_v * rows.len() as f64,
            correct as f64,
            rows.len() as f64,
        ]);
    }
    let (mut grads, sums) = par.mean_with(&*model, per, &extras)?;
    let seen = (sums[0], sums[1].round() as usize, sums[2].round() as usize);
    if !seen.0.is_finite() {
        return Ok(Some(seen));
    }
    clip_grad_norm(&*model, &mut grads, r.grad_clip);
    *model = optim.step(lr, model.clone(), grads);
    Ok(Some(seen))
}

/// Reads `DIR/config.json`.
pub fn read_config(dir: &Path) -> Result<RunConfig, TrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Corrupt {
        path,
        problem: format!("not a splitnas run config: {e}"),
    })
}

/// Loads the trained network of the run in `dir` for inference: `config.json` and
/// `model.mpk` (the weights of the last finished epoch). Checks that every weight has the
/// structure and shape the run's genotype and sizes need.
pub fn load_run<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(RunConfig, Network<B>), TrainError> {
    if !dir.is_dir() {
        return Err(TrainError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such run directory (expected the output directory of a training run)",
            ),
        });
    }
    let cfg = read_config(dir)?;
    let path = dir.join("config.json");
    cfg.network.validate().map_err(|e| TrainError::Corrupt {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    if cfg.mean.len() != cfg.network.in_channels
        || cfg.std.len() != cfg.network.in_channels
        || cfg.classes.len() != cfg.network.classes
    {
        return Err(TrainError::Corrupt {
            path,
            problem: format!(
                "mean/std ({}/{} values) or class names ({}) do not fit the network ({} input channels, {} classes)",
                cfg.mean.len(),
                cfg.std.len(),
                cfg.classes.len(),
                cfg.network.in_channels,
                cfg.network.classes
            ),
        });
    }
    let fresh: Network<B> = cfg.network.init(device)?;
    let net = checkpoint::load_module(fresh, &dir.join("model.mpk"), device)?;
    Ok((cfg, net))
}
