//! The pieces of a training step that training, search and the benchmarks share: loss,
//! global gradient clipping, the cosine schedule, batches, per-epoch seeds and the
//! progress bar.

use crate::data::{make_batch, Augment, ImageSet};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use std::io::IsTerminal;

/// Cosine annealing from `lr` to 0 over `epochs` (PyTorch `CosineAnnealingLR`, eta_min 0).
pub fn cosine_lr(lr: f64, epoch: usize, epochs: usize) -> f64 {
    lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos())
}

/// Mean cross-entropy of `logits` against class indices.
///
/// # Shapes
/// `logits: [N, K]`, `labels: [N]` -> `[1]`
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let n = labels.dims()[0];
    log_softmax(logits, 1)
        .gather(1, labels.reshape([n, 1]))
        .mean()
        .neg()
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (PyTorch `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    struct SumSq<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        acc: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSq<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.square().sum();
                self.acc = Some(match self.acc.take() {
                    Some(a) => a.add(s),
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut v = SumSq::<B> { grads, acc: None };
    module.visit(&mut v);
    let Some(acc) = v.acc else { return 0.0 };
    let norm = (acc.into_data().iter::<f64>().next().unwrap_or(0.0)).sqrt();
    if norm > max_norm && norm.is_finite() {
        let mut s = Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        module.visit(&mut s);
    }
    norm
}

pub(crate) fn batch_tensors<B: Backend>(
    set: &ImageSet,
    idx: &[usize],
    (mean, std): (&[f32], &[f32]),
    aug: Option<&Augment>,
    rng: &mut StdRng,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let (x, y) = make_batch(set, idx, mean, std, aug, rng);
    let (c, s) = (set.channels, set.side);
    let n = idx.len();
    (
        Tensor::from_data(TensorData::new(x, [n, c, s, s]), device),
        Tensor::from_data(TensorData::new(y, [n]), device),
    )
}

pub(crate) fn argmax_correct(logits: &[f32], labels: &[usize], classes: usize) -> usize {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, &l)| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
            best == l
        })
        .count()
}

pub(crate) fn scalar<B: Backend>(t: Tensor<B, 1>) -> f32 {
    t.into_data().iter::<f32>().next().unwrap_or(f32::NAN)
}

pub(crate) fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(epoch as u64 + 1)
}

/// A progress bar on stderr when `enabled` and stderr is a terminal, hidden otherwise.
pub fn progress_bar(enabled: bool, len: u64, prefix: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_starts_at_lr_and_halves_midway() {
        assert!((cosine_lr(0.1, 0, 10) - 0.1).abs() < 1e-12);
        assert!((cosine_lr(0.1, 5, 10) - 0.05).abs() < 1e-12);
        assert!(cosine_lr(0.1, 10, 10).abs() < 1e-12);
    }

    #[test]
    fn cross_entropy_matches_a_hand_computation() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let logits = Tensor::<B, 2>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 1.0, 3.0], [2, 2]),
            &device,
        );
        let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
        // Row 1: -log(1/2); row 2: -log(e^3 / (e + e^3)).
        let expect = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
        assert!((scalar(cross_entropy(logits, labels)) as f64 - expect).abs() < 1e-6);
    }

    #[test]
    fn global_norm_clipping_scales_every_gradient() {
        let _serial = crate::backward_lock();
        type A = burn::backend::Autodiff<burn::backend::Flex>;
        let device = Default::default();
        let lin = burn::nn::LinearConfig::new(2, 1).init::<A>(&device);
        let x = Tensor::<A, 2>::from_data(TensorData::new(vec![30.0f32, 40.0], [1, 2]), &device);
        let loss = lin.forward(x).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
        // d/dw = x = (30, 40), d/db = 1: global norm sqrt(2501).
        let norm = clip_grad_norm(&lin, &mut grads, 5.0);
        assert!((norm - 2501f64.sqrt()).abs() < 1e-3);
        let gw: Vec<f32> = grads
            .get::<burn::backend::Flex, 2>(lin.weight.id)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect();
        let gb: Vec<f32> = grads
            .get::<burn::backend::Flex, 1>(lin.bias.as_ref().unwrap().id)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect();
        let after = (gw.iter().map(|v| v * v).sum::<f32>() + gb[0] * gb[0]).sqrt();
        assert!((after - 5.0).abs() < 1e-3, "{after}");
    }
}
