//! Slim-DARTS spatial reconstruction unit (the SRU of SCConv), applied to the channels that
//! enter a MixedOp's operations (`--spatial-reconstruction`).
//!
//! With X the selected channels `[N, C, H, W]` (C even):
//! 1. group normalization with per-channel scale gamma and shift beta:
//!    `G = GN(X) * gamma + beta` (groups: [`sru_groups`]);
//! 2. the scale factors measure how informative each channel is: `w_c = gamma_c / sum(gamma)`;
//!    `W = sigmoid(G * w)` per element;
//! 3. gate at [`SRU_THRESHOLD`]: informative weights `W1 = 1 where W >= 0.5, else W`,
//!    non-informative weights `W2 = 0 where W >= 0.5, else W`; `X1 = W1 * X`, `X2 = W2 * X`;
//! 4. cross-reconstruction: with `a`/`b` the first/second half of the channels,
//!    `out = concat(X1a + X2b, X1b + X2a)`, i.e. `out_j = X1_j + X2_{(j + ceil(C/2)) mod C}`;
//!    the second form is what runs, so odd C works too (C = 1: `out = X1 + X2`).
//!
//! Choices where the paper leaves room (documented in docs/recipes.md too): the gates multiply
//! the *input* X (not its normalized form), the soft part of the gate keeps W below the
//! threshold (so gamma gets gradients through the gate as well as through GN), threshold
//! 0.5, at most 4 groups (the selected channels are few: C/K), eps 1e-5. gamma starts at 1
//! and beta at 0; both are weights (trained in the weight step).

use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Gate threshold on `sigmoid(GN(X) * w)`.
pub const SRU_THRESHOLD: f32 = 0.5;
/// Group-norm epsilon.
pub const SRU_EPS: f32 = 1e-5;

/// Groups of the SRU's group normalization on `channels` channels: the largest of 4, 3,
/// 2, 1 that divides `channels`.
pub fn sru_groups(channels: usize) -> usize {
    (1..=4.min(channels.max(1)))
        .rev()
        .find(|g| channels % g == 0)
        .unwrap_or(1)
}

/// The spatial reconstruction of `x` with group-norm scale `gamma` and shift `beta`
/// (one per channel) and `groups` groups. See the module documentation.
///
/// # Shapes
/// `x: [N, C, H, W]` (`groups` divides C), `gamma`, `beta`: `[C]` -> `[N, C, H, W]`
pub fn spatial_reconstruction<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    groups: usize,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let grouped = x.clone().reshape([n, groups, (c / groups) * h * w]);
    let mean = grouped.clone().mean_dim(2);
    let centered = grouped.sub(mean);
    let var = centered.clone().powi_scalar(2).mean_dim(2);
    let normed = centered
        .div(var.add_scalar(SRU_EPS).sqrt())
        .reshape([n, c, h, w]);
    let g = normed
        .mul(gamma.clone().reshape([1, c, 1, 1]))
        .add(beta.reshape([1, c, 1, 1]));
    let w_gamma = gamma.clone().div(gamma.sum()).reshape([1, c, 1, 1]);
    let weights = sigmoid(g.mul(w_gamma));
    let informative = weights.clone().greater_equal_elem(SRU_THRESHOLD);
    let w1 = weights.clone().mask_fill(informative.clone(), 1.0);
    let w2 = weights.mask_fill(informative, 0.0);
    let x1 = x.clone().mul(w1);
    let x2 = x.mul(w2);
    // X2 rotated by ceil(C/2) channels: channel j reads X2[(j + shift) mod C].
    let shift = c.div_ceil(2) % c;
    let rotated = if shift == 0 {
        x2
    } else {
        Tensor::cat(
            vec![
                x2.clone().slice([0..n, shift..c, 0..h, 0..w]),
                x2.slice([0..n, 0..shift, 0..h, 0..w]),
            ],
            1,
        )
    };
    x1.add(rotated)
}

/// The SRU's parameters on one MixedOp's selected channels.
#[derive(Module, Debug)]
pub struct SpatialReconstruction<B: Backend> {
    /// Group-norm scale, one per channel (starts at 1).
    pub gamma: Param<Tensor<B, 1>>,
    /// Group-norm shift (starts at 0).
    pub beta: Param<Tensor<B, 1>>,
    /// Group-norm groups.
    pub groups: usize,
}

impl<B: Backend> SpatialReconstruction<B> {
    /// An SRU on `channels` channels.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            groups: sru_groups(channels),
        }
    }

    /// # Shapes
    /// `[N, C, H, W] -> [N, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        spatial_reconstruction(x, self.gamma.val(), self.beta.val(), self.groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    fn tensor(v: &[f32], shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }
    fn t1(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }
    fn host(t: Tensor<B, 4>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    // One image, 4 channels of 2 pixels.
    const X: [f32; 8] = [1.0, 3.0, 2.0, 2.0, 0.0, 4.0, -1.0, 1.0];

    /// Odd channel counts: the rotation pairs channel j with (j + ceil(C/2)) mod C; with
    /// one channel the unit returns X1 + X2 = (W1 + W2) X: X where the gate opened, 2 W X
    /// elsewhere.
    #[test]
    fn one_channel_adds_both_parts() {
        // GN over 1 channel x 2 pixels {1, 3}: -1, +1; gamma 1, beta 0, w = 1:
        // W = sigmoid(-1) (below 0.5) and sigmoid(1) (above).
        let y = host(spatial_reconstruction(
            tensor(&[1.0, 3.0], [1, 1, 1, 2]),
            t1(&[1.0]),
            t1(&[0.0]),
            1,
        ));
        let s = 1.0 / (1.0 + 1f32.exp());
        let expect = [2.0 * s * 1.0, 3.0];
        assert!(
            (y[0] - expect[0]).abs() < 1e-5 && (y[1] - expect[1]).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn groups_divide_the_channels() {
        assert_eq!(
            [1, 2, 3, 4, 6, 8, 10].map(sru_groups),
            [1, 2, 3, 4, 3, 4, 2]
        );
    }

    /// beta = +10 makes every G positive (|GN| <= sqrt(3) for 4 values per group), so every
    /// weight passes the gate: W1 = 1, W2 = 0 and the reconstruction is the identity.
    #[test]
    fn all_informative_is_the_identity() {
        let y = spatial_reconstruction(tensor(&X, [1, 4, 1, 2]), t1(&[1.0; 4]), t1(&[10.0; 4]), 2);
        assert_eq!(host(y), X.to_vec());
    }

    /// beta = -10: nothing passes, W1 = W2 = W, so both output halves equal
    /// `W_a X_a + W_b X_b`.
    #[test]
    fn nothing_informative_makes_the_halves_equal() {
        let y = host(spatial_reconstruction(
            tensor(&X, [1, 4, 1, 2]),
            t1(&[1.0; 4]),
            t1(&[-10.0; 4]),
            2,
        ));
        assert_eq!(y[..4], y[4..]);
        // G = GN * 1 - 10 with |GN| < 2, w = 1/4: W = sigmoid(G / 4) < sigmoid(-2).
        for (o, (a, b)) in y[..4].iter().zip(X[..4].iter().zip(&X[4..])) {
            assert!(
                o.abs() <= 0.12 * (a.abs() + b.abs()) + 1e-6,
                "{o} vs {a}, {b}"
            );
        }
    }

    /// A mixed case against the definition, computed here with plain f64 arithmetic.
    /// Groups {c0, c1} = {1, 3, 2, 2.5}: mean 2.125, var 0.546875; {c2, c3} =
    /// {0, 4, -1, 1.5}: mean 1.125, var 3.546875. gamma = [2, 1, 1, 0.5] (sum 4.5), beta = 0,
    /// so z = G * w = gamma_c^2 * GN / 4.5 and W = sigmoid(z); no z is 0 (no tie at the gate).
    #[test]
    fn hand_computed_mixed_gate() {
        let x: [f32; 8] = [1.0, 3.0, 2.0, 2.5, 0.0, 4.0, -1.0, 1.5];
        let gamma = [2.0f64, 1.0, 1.0, 0.5];
        let (m, v) = ([2.125f64, 1.125], [0.546875f64, 3.546875]);
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let w = |c: usize, p: usize| {
            let g = c / 2;
            let n = (x[c * 2 + p] as f64 - m[g]) / (v[g] + 1e-5).sqrt();
            sig(gamma[c] * gamma[c] * n / 4.5)
        };
        let xv = |c: usize, p: usize| x[c * 2 + p] as f64;
        let x1 = |c: usize, p: usize| {
            if w(c, p) >= 0.5 {
                xv(c, p)
            } else {
                w(c, p) * xv(c, p)
            }
        };
        let x2 = |c: usize, p: usize| {
            if w(c, p) >= 0.5 {
                0.0
            } else {
                w(c, p) * xv(c, p)
            }
        };
        let mut expect = vec![];
        for (c, other) in [(0, 2), (1, 3), (2, 0), (3, 1)] {
            for p in 0..2 {
                expect.push(x1(c, p) + x2(other, p));
            }
        }
        // Spelled out for output 0: GN(c0p0) = -1.125 / 0.7395 = -1.5213, z = 4 * -1.5213 /
        // 4.5 = -1.3522, W = 0.2055 < 0.5 so x1 = 0.2055 * 1; c2p0 is 0 so x2 adds 0.
        assert!((expect[0] - 0.205505).abs() < 1e-5, "{}", expect[0]);
        let y = host(spatial_reconstruction(
            tensor(&x, [1, 4, 1, 2]),
            t1(&[2.0, 1.0, 1.0, 0.5]),
            t1(&[0.0; 4]),
            2,
        ));
        for (i, (a, b)) in y.iter().zip(&expect).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-5, "element {i}: {a} vs {b}");
        }
        // Not the identity and not symmetric: the gate did something.
        assert!(y[..4] != y[4..] && y != x.to_vec());
    }

    /// gamma and beta get gradients through the unit.
    #[test]
    fn parameters_get_gradients() {
        let _serial = crate::backward_lock();
        type A = burn::backend::Autodiff<B>;
        let device = Default::default();
        let sru = SpatialReconstruction::<A>::new(4, &device);
        let x = Tensor::<A, 4>::random(
            [2, 4, 3, 3],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let y = sru.forward(x).powi_scalar(2).sum();
        let grads = y.backward();
        for p in [&sru.gamma, &sru.beta] {
            let g = p.grad(&grads).expect("gradient");
            let g: Vec<f32> = g.into_data().iter::<f32>().collect();
            assert!(g.iter().any(|v| v.abs() > 0.0), "{g:?}");
        }
    }
}
