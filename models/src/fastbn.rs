//! Training-mode batch normalization as one step, with its backward, on the CPU backends.
//!
//! Written with tensor operations, a training BatchNorm is about fifteen autodiff nodes
//! (two channel means, centring, square, square root, reciprocal, scale, shift), each
//! with its own buffer and backward step. The search supernet runs seven or eight of
//! them per edge, so at `--partial-k 4` their fixed costs weigh as much as the
//! arithmetic. [`batch_norm_train`] computes the batch statistics and the output in two
//! sweeps over host memory and registers a single backward step:
//!
//! `x_hat = (x - mean) / sqrt(var + eps)` (biased variance over N, H, W),
//! `y = gamma * x_hat + beta`,
//! `dx = gamma / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))`,
//! `dgamma = sum(g * x_hat)`, `dbeta = sum(g)` (means and sums per channel).
//!
//! The arithmetic is `splitnas_kernels::affine`'s; this module is its Burn side. It serves
//! the backends `splitnas_host::route` sends to the host kernels; other backends get `None`
//! and keep the tensor formula of [`crate::bn`]. The tests compare outputs and all three
//! gradients with that formula run through Burn's autodiff.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use splitnas_host::kernels::affine::{self, Stats};
use splitnas_host::{dispatch, from_float, into_float, same, tensor, HostFloats};

/// Training-mode BatchNorm of `x` (`[N, C, H, W]`) with optional per-channel `gamma` and
/// `beta`: the output, and the batch mean and biased batch variance per channel (for the
/// running statistics). `None` on backends without host kernels.
pub fn batch_norm_train<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Option<Tensor<B, 1>>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Option<(Tensor<B, 4>, Vec<f32>, Vec<f32>)> {
    dispatch!(B {
        autodiff I => {
            let (y, m, v) = bn_autodiff::<I>(same(x), gamma.map(same), beta.map(same), epsilon);
            Some((same(y), m, v))
        },
        host => {
            let device = x.device();
            let dims = x.dims();
            let xs = HostFloats::new(x);
            let floats = |t: Tensor<B, 1>| HostFloats::new(t).to_vec();
            let (gamma, beta) = (gamma.map(floats), beta.map(floats));
            let (out, stats) = forward(&xs, dims, gamma.as_deref(), beta.as_deref(), epsilon);
            Some((tensor(out, dims, &device), stats.mean, stats.var))
        },
        generic => None,
    })
}

/// The normalized (and, with `gamma`/`beta`, scaled and shifted) output, and the stats.
fn forward(
    xs: &[f32],
    dims: [usize; 4],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    epsilon: f64,
) -> (Vec<f32>, Stats) {
    let s = affine::batch_stats(xs, dims, epsilon);
    let mut out = vec![0f32; xs.len()];
    affine::normalize(xs, dims, &s, gamma, beta, &mut out);
    (out, s)
}

/// What the backward step keeps: the input on the host, its statistics and gamma.
#[derive(Debug)]
struct BnState<I: Backend> {
    dims: [usize; 4],
    xs: Arc<HostFloats<I>>,
    stats: Arc<Stats>,
    gamma: Option<Arc<Vec<f32>>>,
}

#[derive(Debug)]
struct BnBackward;

impl<I: Backend> Clone for BnState<I> {
    fn clone(&self) -> Self {
        Self {
            dims: self.dims,
            xs: self.xs.clone(),
            stats: self.stats.clone(),
            gamma: self.gamma.clone(),
        }
    }
}

impl<I: Backend> Backward<I, 3> for BnBackward {
    type State = BnState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad: Tensor<I, 4> = from_float(grads.consume::<I>(&ops.node));
        if node_x.is_none() && node_gamma.is_none() && node_beta.is_none() {
            return;
        }
        let BnState {
            dims,
            xs,
            stats: s,
            gamma,
        } = ops.state;
        let device = grad.device();
        let c = dims[1];
        let gs = HostFloats::new(grad);
        let sums = affine::grad_sums(&gs, &xs, dims, &s);
        if let Some(node) = node_x {
            let mut gx = vec![0f32; gs.len()];
            affine::input_grad(
                &gs,
                &xs,
                dims,
                &s,
                gamma.as_deref().map(|g| &g[..]),
                &sums,
                &mut gx,
            );
            grads.register::<I>(node.id, into_float(tensor::<I, 4>(gx, dims, &device)));
        }
        let channel = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<f32> = sums.iter().map(|p| f(p) as f32).collect();
            into_float(tensor::<I, 1>(v, [c], &device))
        };
        if let Some(node) = node_gamma {
            grads.register::<I>(node.id, channel(|p| p.1));
        }
        if let Some(node) = node_beta {
            grads.register::<I>(node.id, channel(|p| p.0));
        }
    }
}

fn bn_autodiff<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    gamma: Option<Tensor<Autodiff<I>, 1>>,
    beta: Option<Tensor<Autodiff<I>, 1>>,
    epsilon: f64,
) -> (Tensor<Autodiff<I>, 4>, Vec<f32>, Vec<f32>) {
    let dims = x.dims();
    let device = x.device();
    let xp = x.into_primitive().tensor();
    // Absent gamma / beta take part as untracked constants (one and zero), so the step
    // always has the same three parents.
    let c = dims[1];
    let gamma_host = gamma.clone().map(|g| HostFloats::new(g.inner()).to_vec());
    let beta_host = beta.clone().map(|b| HostFloats::new(b.inner()).to_vec());
    let gp = gamma
        .unwrap_or_else(|| Tensor::ones([c], &device))
        .into_primitive()
        .tensor();
    let bp = beta
        .unwrap_or_else(|| Tensor::zeros([c], &device))
        .into_primitive()
        .tensor();
    let inner = from_float::<I, 4>(xp.primitive.clone());
    let xs = HostFloats::new(inner);
    let (out, s) = forward(
        &xs,
        dims,
        gamma_host.as_deref(),
        beta_host.as_deref(),
        epsilon,
    );
    let inner_device = I::float_device(&xp.primitive);
    let y = into_float(tensor::<I, 4>(out, dims, &inner_device));
    let (mean, var) = (s.mean.clone(), s.var.clone());
    let out = match BnBackward
        .prepare::<NoCheckpointing>([xp.node.clone(), gp.node.clone(), bp.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            BnState {
                dims,
                xs: Arc::new(xs),
                stats: Arc::new(s),
                gamma: gamma_host.map(Arc::new),
            },
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (from_float(out), mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::{Distribution, TensorData};

    /// The tensor formula (what `crate::bn` runs on other backends), through Burn's autodiff.
    fn reference<B: Backend>(
        x: Tensor<B, 4>,
        gamma: Option<Tensor<B, 1>>,
        beta: Option<Tensor<B, 1>>,
        eps: f64,
    ) -> Tensor<B, 4> {
        let [_, c, _, _] = x.dims();
        let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
        let centered = x.sub(mean);
        let var = centered
            .clone()
            .square()
            .mean_dim(0)
            .mean_dim(2)
            .mean_dim(3);
        let mut y = centered.div(var.add_scalar(eps).sqrt());
        if let Some(g) = gamma {
            y = y.mul(g.reshape([1, c, 1, 1]));
        }
        if let Some(b) = beta {
            y = y.add(b.reshape([1, c, 1, 1]));
        }
        y
    }

    fn max_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
        a.sub(b).abs().max().into_scalar().elem::<f32>()
    }

    use burn::tensor::ElementConversion;

    /// Output, batch statistics and the gradients of sum(y * r) for x, gamma and beta,
    /// against the reference formula (f32; tolerance 1e-4 on values of order 1).
    fn compare<I: Backend>(dims: [usize; 4], affine: bool) {
        type T<I, const D: usize> = Tensor<Autodiff<I>, D>;
        let device = Default::default();
        let [_, c, _, _] = dims;
        let x0 = Tensor::<I, 4>::random(dims, Distribution::Normal(0.7, 2.0), &device);
        let r = Tensor::<I, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let g0 = Tensor::<I, 1>::random([c], Distribution::Normal(1.0, 0.5), &device);
        let b0 = Tensor::<I, 1>::random([c], Distribution::Normal(0.0, 0.5), &device);
        let run = |fast: bool| {
            let x = T::<I, 4>::from_inner(x0.clone()).require_grad();
            let g = T::<I, 1>::from_inner(g0.clone()).require_grad();
            let b = T::<I, 1>::from_inner(b0.clone()).require_grad();
            let (gamma, beta) = if affine {
                (Some(g.clone()), Some(b.clone()))
            } else {
                (None, None)
            };
            let y = if fast {
                let (y, mean, var) = batch_norm_train(x.clone(), gamma, beta, 1e-5).unwrap();
                // Statistics against the tensor ones.
                let m = x0.clone().mean_dim(0).mean_dim(2).mean_dim(3).reshape([c]);
                let v = x0
                    .clone()
                    .sub(m.clone().reshape([1, c, 1, 1]))
                    .square()
                    .mean_dim(0)
                    .mean_dim(2)
                    .mean_dim(3)
                    .reshape([c]);
                let m = m.into_data().to_vec::<f32>().unwrap();
                let v = v.into_data().to_vec::<f32>().unwrap();
                for ci in 0..c {
                    assert!((mean[ci] - m[ci]).abs() < 1e-4, "mean {ci}");
                    assert!((var[ci] - v[ci]).abs() < 1e-3 * v[ci].max(1.0), "var {ci}");
                }
                y
            } else {
                reference(x.clone(), gamma, beta, 1e-5)
            };
            let grads = y
                .clone()
                .mul(T::<I, 4>::from_inner(r.clone()))
                .sum()
                .backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                g.grad(&grads),
                b.grad(&grads),
            )
        };
        let (y1, gx1, gg1, gb1) = run(true);
        let (y2, gx2, gg2, gb2) = run(false);
        assert!(max_diff(y1, y2) < 1e-4, "output {dims:?}");
        assert!(max_diff(gx1, gx2) < 1e-4, "x gradient {dims:?}");
        if affine {
            assert!(
                max_diff(gg1.unwrap(), gg2.unwrap()) < 1e-3,
                "gamma gradient"
            );
            assert!(max_diff(gb1.unwrap(), gb2.unwrap()) < 1e-3, "beta gradient");
        } else {
            assert!(gg1.is_none() && gb1.is_none(), "no affine, no gradients");
        }
    }

    #[test]
    fn matches_the_tensor_formula_and_its_gradients() {
        let _serial = crate::backward_lock();
        // Small (one thread) and large (split over the pool) layers, odd plane sizes.
        for dims in [[2, 3, 5, 7], [16, 4, 32, 32], [3, 8, 9, 9]] {
            compare::<Flex>(dims, false);
            compare::<Flex>(dims, true);
        }
        compare::<NdArray>([4, 2, 6, 6], true);
    }

    #[test]
    fn hand_worked_channel() {
        // One channel holding 1, 2, 3, 4: mean 2.5, biased variance 1.25.
        let device = Default::default();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let (y, mean, var) = batch_norm_train(x, None, None, 0.0).unwrap();
        assert_eq!(mean, vec![2.5]);
        assert_eq!(var, vec![1.25]);
        let y: Vec<f32> = y.into_data().to_vec().unwrap();
        let s = 1.25f32.sqrt();
        for (v, want) in y.iter().zip([-1.5f32, -0.5, 0.5, 1.5]) {
            assert!((v - want / s).abs() < 1e-6);
        }
    }

    #[test]
    fn other_backends_get_none() {
        // Same float type as the tests' other backends (a process may hold one float type
        // per device kind), another integer type: not one of the host backends.
        type Plain = burn::backend::Autodiff<burn::backend::NdArray<f32, i32>>;
        let x = Tensor::<Plain, 4>::zeros([1, 1, 2, 2], &Default::default());
        assert!(batch_norm_train(x, None, None, 1e-5).is_none());
    }
}
