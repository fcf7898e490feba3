//! BatchNorm folding: `BN(conv(x))` in inference mode as one convolution with bias.
//!
//! With per-channel scale `s = gamma / sqrt(running_var + eps)` (gamma = 1 and beta = 0
//! for affine-free BatchNorm), `BN(conv(x))[o] = s[o] * (conv(x)[o] + b[o] - mean[o]) +
//! beta[o]`, so the folded convolution has weight `W[o, ..] * s[o]` and bias
//! `(b[o] - mean[o]) * s[o] + beta[o]`. This holds for dense and depthwise kernels alike
//! (the scale is per output channel).

use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use splitnas_models::bn::BatchNorm2d;

/// A convolution's weights on the host: `weight` in `[out, in / groups, kh, kw]` order.
#[derive(Clone, Debug, PartialEq)]
pub struct HostConv {
    /// Weight values, row-major in `shape`.
    pub weight: Vec<f32>,
    /// `[out, in / groups, kh, kw]`.
    pub shape: [usize; 4],
    /// One value per output channel (zeros when the convolution had none).
    pub bias: Vec<f32>,
}

/// BatchNorm statistics and affine parameters on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatchNorm {
    /// Scale (None: affine-free, gamma = 1).
    pub gamma: Option<Vec<f32>>,
    /// Shift (None: affine-free, beta = 0).
    pub beta: Option<Vec<f32>>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
    /// Added to the variance.
    pub epsilon: f64,
}

/// A BatchNorm that does not fit the convolution before it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum FoldError {
    /// Channel counts differ.
    #[error(
        "{what}: BatchNorm has {found} channels but the convolution has {expected} output channels"
    )]
    Channels {
        /// Which statistic.
        what: &'static str,
        /// Convolution output channels.
        expected: usize,
        /// Length of the statistic.
        found: usize,
    },
    /// Negative variance or non-finite values.
    #[error("BatchNorm running variance {0} at channel {1} is negative or not finite")]
    Variance(f32, usize),
}

/// Folds `bn` into `conv` (see the module documentation).
pub fn fold_batch_norm(conv: &HostConv, bn: &HostBatchNorm) -> Result<HostConv, FoldError> {
    let out = conv.shape[0];
    let check = |what, len: usize| {
        if len == out {
            Ok(())
        } else {
            Err(FoldError::Channels {
                what,
                expected: out,
                found: len,
            })
        }
    };
    check("running_mean", bn.mean.len())?;
    check("running_var", bn.var.len())?;
    check("bias", conv.bias.len())?;
    if let Some(g) = &bn.gamma {
        check("gamma", g.len())?;
    }
    if let Some(b) = &bn.beta {
        check("beta", b.len())?;
    }
    let per_out = conv.weight.len() / out.max(1);
    let mut weight = conv.weight.clone();
    let mut bias = vec![0f32; out];
    for o in 0..out {
        let var = bn.var[o];
        if !(var.is_finite() && var >= 0.0) {
            return Err(FoldError::Variance(var, o));
        }
        let gamma = bn.gamma.as_ref().map_or(1.0, |g| g[o] as f64);
        let beta = bn.beta.as_ref().map_or(0.0, |b| b[o] as f64);
        let scale = gamma / (var as f64 + bn.epsilon).sqrt();
        for w in &mut weight[o * per_out..(o + 1) * per_out] {
            *w = (*w as f64 * scale) as f32;
        }
        bias[o] = ((conv.bias[o] as f64 - bn.mean[o] as f64) * scale + beta) as f32;
    }
    Ok(HostConv {
        weight,
        shape: conv.shape,
        bias,
    })
}

fn host<B: Backend, const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 data after convert")
}

/// The weights of a Burn convolution on the host.
pub fn host_conv<B: Backend>(conv: &Conv2d<B>) -> HostConv {
    let shape = conv.weight.shape().dims::<4>();
    HostConv {
        weight: host(conv.weight.val()),
        shape,
        bias: conv
            .bias
            .as_ref()
            .map_or_else(|| vec![0.0; shape[0]], |b| host(b.val())),
    }
}

/// The statistics and affine parameters of a BatchNorm on the host.
pub fn host_batch_norm<B: Backend>(bn: &BatchNorm2d<B>) -> HostBatchNorm {
    HostBatchNorm {
        gamma: bn.gamma.as_ref().map(|g| host(g.val())),
        beta: bn.beta.as_ref().map(|b| host(b.val())),
        mean: host(bn.running_mean.value()),
        var: host(bn.running_var.value()),
        epsilon: bn.epsilon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::{Param, RunningState};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::{Distribution, Tensor, TensorData};
    use splitnas_models::bn::BatchNorm2dConfig;

    type B = Flex;

    fn random(shape: [usize; 1], lo: f64, hi: f64) -> Tensor<B, 1> {
        Tensor::random(shape, Distribution::Uniform(lo, hi), &Default::default())
    }

    /// Burn's conv + BN (inference, non-trivial running statistics) against the folded
    /// convolution run by Burn: within 1e-5.
    fn check(groups: usize, c_in: usize, c_out: usize, affine: bool) {
        let dev = Default::default();
        let conv = Conv2dConfig::new([c_in, c_out], [3, 3])
            .with_groups(groups)
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init::<B>(&dev);
        let mut bn = BatchNorm2dConfig::new(c_out)
            .with_affine(affine)
            .init::<B>(&dev);
        bn.running_mean = RunningState::new(random([c_out], -1.0, 1.0));
        bn.running_var = RunningState::new(random([c_out], 0.2, 3.0));
        if affine {
            bn.gamma = Some(Param::from_tensor(random([c_out], 0.5, 2.0)));
            bn.beta = Some(Param::from_tensor(random([c_out], -1.0, 1.0)));
        }
        let x = Tensor::<B, 4>::random([2, c_in, 6, 6], Distribution::Normal(0.0, 1.0), &dev);
        let reference = bn.forward(conv.forward(x.clone()));

        let folded = fold_batch_norm(&host_conv(&conv), &host_batch_norm(&bn)).unwrap();
        let mut fused = Conv2dConfig::new([c_in, c_out], [3, 3])
            .with_groups(groups)
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&dev);
        fused.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(folded.weight, folded.shape),
            &dev,
        ));
        fused.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(folded.bias, [c_out]),
            &dev,
        )));
        let ours = fused.forward(x.clone());
        let diff = (ours - reference.clone()).abs().max().into_scalar();
        assert!(diff < 1e-5, "max abs diff {diff}");
        // the BatchNorm is far from the identity, so the comparison means something
        let unnormalized = (conv.forward(x) - reference).abs().max().into_scalar();
        assert!(
            unnormalized > 0.1,
            "BatchNorm changed little: {unnormalized}"
        );
    }

    #[test]
    fn folded_convolution_matches_conv_then_batch_norm() {
        check(1, 3, 5, true);
        check(1, 4, 4, false);
        check(4, 4, 4, true); // depthwise
    }

    #[test]
    fn mismatched_statistics_are_rejected() {
        let conv = HostConv {
            weight: vec![1.0; 2 * 9],
            shape: [2, 1, 3, 3],
            bias: vec![0.0; 2],
        };
        let bn = HostBatchNorm {
            gamma: None,
            beta: None,
            mean: vec![0.0; 3],
            var: vec![1.0; 3],
            epsilon: 1e-5,
        };
        assert_eq!(
            fold_batch_norm(&conv, &bn),
            Err(FoldError::Channels {
                what: "running_mean",
                expected: 2,
                found: 3
            })
        );
        let bn = HostBatchNorm {
            gamma: None,
            beta: None,
            mean: vec![0.0; 2],
            var: vec![1.0, -1.0],
            epsilon: 1e-5,
        };
        assert_eq!(
            fold_batch_norm(&conv, &bn),
            Err(FoldError::Variance(-1.0, 1))
        );
    }
}
