//! Benchmarks (figures come from here, never from timed tests).

use crate::data::{make_batch, synthetic};
use crate::device::{host_rss, memory, mib, seeded, DeviceKind};
use crate::error::Constraint::AtLeastOne;
use crate::error::{require, Setting, TrainError};
use crate::search::SearchRecipe;
use crate::steps::{clip_grad_norm, cross_entropy};
use crate::train::TrainRecipe;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::SeedableRng;
use splitnas_models::{Genotype, Network, NetworkConfig};
use std::time::Instant;

/// `splitnas bench train` options.
#[derive(Clone, Debug)]
pub struct TrainBench {
    /// Zoo name or file.
    pub genotype: String,
    /// Initial channels.
    pub channels: usize,
    /// Cells.
    pub layers: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Image side.
    pub image_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// Seed.
    pub seed: u64,
}

/// Result of a training-step benchmark.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Median seconds per step.
    pub step_s: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// Seconds of every timed step, in the order they ran.
    pub times: Vec<f64>,
    /// Peak resident memory of the process, MiB (Linux).
    pub host_peak_rss_mb: Option<f64>,
    /// What the device allocator reserved (its high-water mark), MiB; `None` on the CPU
    /// backends, which allocate from the process heap.
    pub device_reserved_mb: Option<f64>,
}

impl BenchResult {
    fn from_times(times: Vec<f64>, images: usize) -> Self {
        let mut sorted = times.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let step_s = sorted[sorted.len() / 2];
        BenchResult {
            step_s,
            images_per_s: images as f64 / step_s,
            times,
            host_peak_rss_mb: None,
            device_reserved_mb: None,
        }
    }
}

fn check_counts(steps: usize, batch_size: usize) -> Result<(), TrainError> {
    require(steps > 0, Setting::Steps, AtLeastOne, steps as f64)?;
    require(
        batch_size > 0,
        Setting::BatchSize,
        AtLeastOne,
        batch_size as f64,
    )
}

/// Times full training steps (forward, backward, clip, SGD) on synthetic data.
pub fn bench_train(device: DeviceKind, o: &TrainBench) -> Result<BenchResult, TrainError> {
    check_counts(o.steps, o.batch_size)?;
    let r = crate::with_autodiff_backend!(device, bench_train_on(o))?;
    Ok(with_memory(r, device))
}

fn bench_train_on<B: AutodiffBackend>(
    device: &B::Device,
    o: &TrainBench,
) -> Result<BenchResult, TrainError> {
    let _turn = crate::exclusive_run();
    let genotype = Genotype::resolve(&o.genotype)?;
    let cfg = NetworkConfig::new(genotype)
        .with_channels(o.channels)
        .with_layers(o.layers)
        .with_in_channels(o.in_channels)
        .with_image_size(o.image_size);
    let mut model: Network<B> = seeded(
        device,
        o.seed,
        |d| cfg.init::<burn::backend::Flex>(d),
        |d| cfg.init(d),
    )?;
    let r = TrainRecipe::DARTS;
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: r.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig::new(r.weight_decay as f32)))
        .init::<B, Network<B>>();
    let (set, _) = synthetic(o.batch_size, 0, o.in_channels, o.image_size, 10, o.seed);
    let idx: Vec<usize> = (0..o.batch_size).collect();
    let mut rng = StdRng::seed_from_u64(o.seed);
    let (mean, std) = set.mean_std();
    let (x, y) = make_batch(&set, &idx, &mean, &std, None, &mut rng);
    let n = o.batch_size;
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(x, [n, o.in_channels, o.image_size, o.image_size]),
        device,
    );
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [n]), device);
    let mut times = vec![];
    for step in 0..=o.steps {
        let t0 = Instant::now();
        let logits = model.forward(x.clone());
        let loss = cross_entropy(logits, y.clone());
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_grad_norm(&model, &mut grads, r.grad_clip); // reads the norm back: synchronizes the device
        model = optim.step(r.lr, model, grads);
        if step > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(BenchResult::from_times(times, n))
}

/// `splitnas bench search-step` options.
#[derive(Clone, Debug)]
pub struct SearchBench {
    /// Supernet (size, K, selector, identity).
    pub supernet: crate::supernet::SupernetConfig,
    /// First or second order.
    pub order: crate::architect::Order,
    /// Batch size of each half.
    pub batch_size: usize,
    /// Timed iterations (after one warm-up iteration).
    pub steps: usize,
    /// Seed.
    pub seed: u64,
    /// Data-parallel steps (`None`: one process, one shard): each worker times the
    /// iterations on its shard of every batch, the all-reduce included.
    pub workers: Option<crate::parallel::Workers>,
}

/// Times full search iterations (architecture step, then weight step) on synthetic data.
/// `images_per_s` counts the weight-step batch.
pub fn bench_search(device: DeviceKind, o: &SearchBench) -> Result<BenchResult, TrainError> {
    check_counts(o.steps, o.batch_size)?;
    o.supernet.validate()?;
    let r = crate::with_autodiff_backend!(device, bench_search_on(o))?;
    Ok(with_memory(r, device))
}

/// `r` with the memory figures of the run that gave it.
fn with_memory(r: BenchResult, device: DeviceKind) -> BenchResult {
    BenchResult {
        host_peak_rss_mb: host_rss().map(|(_, peak)| mib(peak)),
        device_reserved_mb: memory(device).map(|m| mib(m.reserved)),
        ..r
    }
}

fn bench_search_on<B: AutodiffBackend>(
    device: &B::Device,
    o: &SearchBench,
) -> Result<BenchResult, TrainError> {
    use crate::parallel::Parallel;
    use crate::search::step::{iteration, Settings};
    use crate::supernet::Supernet;
    use burn::optim::AdamConfig;
    let _turn = crate::exclusive_run();
    let s = &o.supernet;
    let par = match &o.workers {
        Some(w) => w.start::<B>(device)?,
        None => Parallel::single(),
    };
    let mut net: Supernet<B> = seeded(
        device,
        o.seed,
        |d| s.init::<burn::backend::Flex>(d),
        |d| s.init(d),
    )?;
    let r = SearchRecipe::DARTS;
    let mut w_optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: r.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig::new(r.weight_decay as f32)))
        .init::<B, Supernet<B>>();
    let mut a_optim = AdamConfig::new()
        .with_beta_1(r.arch_betas.0)
        .with_beta_2(r.arch_betas.1)
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(r.arch_weight_decay as f32)))
        .init::<B, Supernet<B>>();
    let n = o.batch_size;
    let (set, _) = synthetic(2 * n, 0, s.in_channels, s.image_size, s.classes, o.seed);
    let mut rng = StdRng::seed_from_u64(o.seed);
    let (mean, std) = set.mean_std();
    let mut batch = |range: std::ops::Range<usize>| {
        let idx: Vec<usize> = range.collect();
        let (x, y) = make_batch(&set, &idx, &mean, &std, None, &mut rng);
        (
            Tensor::<B, 4>::from_data(
                TensorData::new(x, [n, s.in_channels, s.image_size, s.image_size]),
                device,
            ),
            Tensor::<B, 1, Int>::from_data(TensorData::new(y, [n]), device),
        )
    };
    let train = batch(0..n);
    let valid = batch(n..2 * n);
    let labels: Vec<usize> = set.labels[..n].to_vec();
    let mut sel_rng = StdRng::seed_from_u64(o.seed);
    let r = SearchRecipe {
        order: o.order,
        ..r
    };
    let settings = Settings {
        recipe: &r,
        lr: SearchRecipe::darts_lr(n),
        search_arch: true,
        guard: &None,
        classes: s.classes,
    };
    let mut times = vec![];
    for step in 0..=o.steps {
        let t0 = Instant::now();
        // the step reads the loss sums back (and clips on the norm): synchronizes
        let (stepped, _) = iteration(
            &par,
            &settings,
            net,
            &mut w_optim,
            &mut a_optim,
            train.clone(),
            Some(valid.clone()),
            &labels,
            &mut sel_rng,
            o.seed ^ step as u64,
        )?;
        net = stepped;
        if step > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    par.finish::<B>()?;
    Ok(BenchResult::from_times(times, n))
}
