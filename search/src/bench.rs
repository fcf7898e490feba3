//! Benchmarks (figures come from here, never from timed tests).

use crate::data::{make_batch, synthetic};
use crate::device::DeviceKind;
use crate::train::{clip_grad_norm, cross_entropy, TrainError};
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
}

/// Times full training steps (forward, backward, clip, SGD) on synthetic data.
pub fn bench_train(device: DeviceKind, o: &TrainBench) -> Result<BenchResult, TrainError> {
    if o.steps == 0 || o.batch_size == 0 {
        return Err(TrainError::Flag {
            flag: "--steps/--batch-size",
            problem: "must be at least 1".into(),
        });
    }
    crate::with_autodiff_backend!(device, bench_train_on(o))
}

fn bench_train_on<B: AutodiffBackend>(
    device: &B::Device,
    o: &TrainBench,
) -> Result<BenchResult, TrainError> {
    let genotype = Genotype::resolve(&o.genotype)?;
    let cfg = NetworkConfig::new(genotype)
        .with_channels(o.channels)
        .with_layers(o.layers)
        .with_in_channels(o.in_channels)
        .with_image_size(o.image_size);
    B::seed(device, o.seed);
    let mut model: Network<B> = cfg.init(device)?;
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig::new(3e-4)))
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
        clip_grad_norm(&model, &mut grads, 5.0); // reads the norm back: synchronizes the device
        model = optim.step(0.025, model, grads);
        if step > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let step_s = times[times.len() / 2];
    Ok(BenchResult {
        step_s,
        images_per_s: n as f64 / step_s,
    })
}
