//! Batch normalization over `[N, C, H, W]` maps with an optional learnable affine.
//!
//! The search supernet uses BatchNorm without affine (`affine = false`: gamma = 1 and
//! beta = 0 fixed, no parameters), the evaluation network with affine. Training or
//! inference mode follows the backend: batch statistics when autodiff is enabled,
//! running statistics otherwise. The running variance is updated with the unbiased
//! batch variance, as PyTorch does.

use burn::config::Config;
use burn::module::{Module, Param, RunningState};
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Configuration of [`BatchNorm2d`].
#[derive(Config, Debug)]
pub struct BatchNorm2dConfig {
    /// Number of channels.
    pub channels: usize,
    /// Learnable gamma and beta (false in the search supernet).
    #[config(default = true)]
    pub affine: bool,
    /// Added to the variance before the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the new batch statistics in the running averages.
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// 2-D batch normalization (see the module documentation).
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    /// Scale, when affine.
    pub gamma: Option<Param<Tensor<B, 1>>>,
    /// Shift, when affine.
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Running mean used in inference.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance used in inference.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Added to the variance before the square root.
    pub epsilon: f64,
    /// Weight of the new batch statistics in the running averages.
    pub momentum: f64,
}

impl BatchNorm2dConfig {
    /// Builds the layer with gamma = 1, beta = 0, running mean 0 and variance 1.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm2d<B> {
        let c = self.channels;
        let (gamma, beta) = if self.affine {
            (
                Some(Param::from_tensor(Tensor::ones([c], device))),
                Some(Param::from_tensor(Tensor::zeros([c], device))),
            )
        } else {
            (None, None)
        };
        BatchNorm2d {
            gamma,
            beta,
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            epsilon: self.epsilon,
            momentum: self.momentum,
        }
    }
}

impl<B: Backend> BatchNorm2d<B> {
    /// Normalizes each channel.
    ///
    /// # Shapes
    /// `[N, C, H, W] -> [N, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        if B::ad_enabled(&device) {
            self.forward_train(x)
        } else {
            let mean = self.running_mean.value().to_device(&device);
            let var = self.running_var.value().to_device(&device);
            let (scale, shift) = self.scale_shift(mean, var);
            let n = x.dims()[0];
            x.mul(per_sample(scale, n)).add(per_sample(shift, n))
        }
    }

    /// Per-channel `scale` and `shift` such that inference BN is `x * scale + shift`,
    /// both shaped `[1, C, 1, 1]`.
    fn scale_shift(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [c] = mean.dims();
        let inv_std = var.add_scalar(self.epsilon).sqrt().recip();
        let scale = match &self.gamma {
            Some(g) => g.val().mul(inv_std),
            None => inv_std,
        };
        let shift = mean.neg().mul(scale.clone());
        let shift = match &self.beta {
            Some(b) => shift.add(b.val()),
            None => shift,
        };
        (scale.reshape([1, c, 1, 1]), shift.reshape([1, c, 1, 1]))
    }

    fn forward_train(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let count = n * h * w;
        let device = x.device();
        let gamma = self.gamma.as_ref().map(|g| g.val());
        let beta = self.beta.as_ref().map(|b| b.val());
        // One autodiff step with host kernels on the CPU backends; the tensor formula
        // elsewhere.
        let (y, mean, var) = match crate::fastbn::batch_norm_train(
            x.clone(),
            gamma.clone(),
            beta.clone(),
            self.epsilon,
        ) {
            Some((y, mean, var)) => (
                y,
                Tensor::<B, 1>::from_data(TensorData::new(mean, [c]), &device),
                Tensor::<B, 1>::from_data(TensorData::new(var, [c]), &device),
            ),
            None => self.formula(x, gamma, beta),
        };
        let unbias = if count > 1 {
            count as f64 / (count as f64 - 1.0)
        } else {
            1.0
        };
        let m = self.momentum;
        let rm = self.running_mean.value_sync().to_device(&device);
        let rv = self.running_var.value_sync().to_device(&device);
        let new_mean = rm.mul_scalar(1.0 - m).add(mean.detach().mul_scalar(m));
        let new_var = rv
            .mul_scalar(1.0 - m)
            .add(var.detach().mul_scalar(m * unbias));
        self.running_mean.update(new_mean.detach());
        self.running_var.update(new_var.detach());
        // Burn keeps an update per thread until the next read from the same thread, and
        // then averages the threads' values; a layer the search runs on a pool thread
        // (a different one from step to step) would read stale statistics and have them
        // averaged with another thread's. Folding the update in at once keeps one value,
        // whichever thread runs the layer.
        let _ = self.running_mean.value_sync();
        let _ = self.running_var.value_sync();
        y
    }

    /// Training BN written with tensor operations: output, batch mean, biased variance.
    fn formula(
        &self,
        x: Tensor<B, 4>,
        gamma: Option<Tensor<B, 1>>,
        beta: Option<Tensor<B, 1>>,
    ) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
        let [n, c, h, w] = x.dims();
        let count = n * h * w;
        // Reductions over the innermost axis, then over the batch: both stay on the
        // CPU backends' contiguous fast paths (a swap_dims copy cost more than BN itself).
        let channel_mean = |t: Tensor<B, 4>| {
            t.reshape([n, c, h * w])
                .sum_dim(2)
                .sum_dim(0)
                .reshape([c])
                .div_scalar(count as f64)
        };
        let mean = channel_mean(x.clone()); // [c]
        let centered = x.sub(per_sample(mean.clone().reshape([1, c, 1, 1]), n));
        let var = channel_mean(centered.clone().square()); // biased, [c]
        let mut scale = var.clone().add_scalar(self.epsilon).sqrt().recip();
        if let Some(g) = gamma {
            scale = scale.mul(g);
        }
        let mut y = centered.mul(per_sample(scale.reshape([1, c, 1, 1]), n));
        if let Some(b) = beta {
            y = y.add(per_sample(b.reshape([1, c, 1, 1]), n));
        }
        (y, mean, var)
    }
}

/// Repeats a `[1, C, 1, 1]` per-channel tensor to `[N, C, 1, 1]`.
///
/// Broadcasting `[1, C, 1, 1]` against `[N, C, H, W]` walks a strided iterator on
/// Burn's CPU backends (an order of magnitude slower); `[N, C, 1, 1]` hits their SIMD
/// "one scalar per row" path. The copy is N * C values.
pub fn per_sample<B: Backend>(t: Tensor<B, 4>, n: usize) -> Tensor<B, 4> {
    t.repeat_dim(0, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use burn::tensor::TensorData;

    #[test]
    fn train_mode_normalizes_and_updates_running_stats() {
        let device = Default::default();
        let bn = BatchNorm2dConfig::new(1).init::<Autodiff<TestBackend>>(&device);
        // Values 1..=4 in one channel: mean 2.5, biased var 1.25, unbiased 5/3.
        let x = Tensor::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let y: Vec<f32> = bn.forward(x).into_data().to_vec().unwrap();
        let s = (1.25f32 + 1e-5).sqrt();
        for (v, raw) in y.iter().zip([1.0f32, 2.0, 3.0, 4.0]) {
            assert!((v - (raw - 2.5) / s).abs() < 1e-5);
        }
        let valid = bn.valid();
        let rm: Vec<f32> = valid.running_mean.value().into_data().to_vec().unwrap();
        let rv: Vec<f32> = valid.running_var.value().into_data().to_vec().unwrap();
        assert!((rm[0] - 0.25).abs() < 1e-6);
        assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
    }

    /// Two training batches run on two different threads: the running mean is the
    /// written-out momentum recursion, not an average of per-thread values.
    #[test]
    fn running_stats_do_not_depend_on_the_thread() {
        let device = Default::default();
        let bn = BatchNorm2dConfig::new(1).init::<TestBackend>(&device);
        let batch = |v: f32| Tensor::from_data(TensorData::new(vec![v; 4], [1, 1, 2, 2]), &device);
        let train = |v: f32| {
            let bn = bn.clone();
            let x = batch(v);
            std::thread::spawn(move || drop(bn.forward_train(x)))
                .join()
                .unwrap()
        };
        train(1.0);
        train(3.0);
        // 0 -> 0.9 * 0 + 0.1 * 1 = 0.1 -> 0.9 * 0.1 + 0.1 * 3 = 0.39
        let rm: Vec<f32> = bn.running_mean.value().into_data().to_vec().unwrap();
        assert!((rm[0] - 0.39).abs() < 1e-6, "running mean {}", rm[0]);
    }

    #[test]
    fn non_affine_has_no_parameters() {
        let bn = BatchNorm2dConfig::new(8)
            .with_affine(false)
            .init::<TestBackend>(&Default::default());
        assert_eq!(crate::count_parameters(&bn), 0);
        let bn = BatchNorm2dConfig::new(8).init::<TestBackend>(&Default::default());
        assert_eq!(crate::count_parameters(&bn), 16);
    }
}
