//! Bilevel optimization: the architecture step (first or second order) and the weight
//! step of channel-split DARTS.
//!
//! Each step takes from the backward pass the gradients of its own half of the supernet
//! only (`GradientsParams::from_module` on `net.arch` or `net.weights`), so the
//! optimizer of that step can change nothing else.
//!
//! The other half is untracked (`no_grad` on a clone) in every pass that does not need
//! its gradients, so the backward pass skips them: the architecture step computes no
//! convolution-weight gradients (and keeps none of their inputs alive), the weight step
//! no alpha/beta gradients (a K=4 batch-16 step: 3.07 -> 2.34 s). The gradients equal
//! those of one pass with everything tracked (tested). The copies share the original's
//! parameter values because `SupernetConfig::init` materializes every parameter (a
//! clone of a not yet initialised Burn parameter draws its own random values).
//!
//! Second order (DARTS, unrolled): with `w'` the weights after one step of the weight
//! optimizer on the training batch (its momentum buffer and weight decay included),
//! `dalpha = grad_alpha L_val(w', alpha)`, `v = grad_w' L_val(w', alpha)`,
//! `r = 0.01 / ||v||` and
//! `implicit = (grad_alpha L_train(w + r v) - grad_alpha L_train(w - r v)) / (2 r)`,
//! the architecture gradient is `dalpha - eta * implicit`. Burn has no double backward,
//! hence the finite-difference Hessian-vector product.

use crate::steps::cross_entropy;
use crate::supernet::Supernet;
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// First- or second-order architecture gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// grad_alpha L_val(w, alpha).
    #[default]
    First,
    /// Unrolled one step (see the module documentation).
    Second,
}

impl std::str::FromStr for Order {
    type Err = crate::error::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "first" | "1" => Ok(Order::First),
            "second" | "2" => Ok(Order::Second),
            _ => Err(crate::error::UnknownName {
                what: "order",
                value: s.to_string(),
                expected: "first or second",
            }),
        }
    }
}

/// A labelled batch.
pub type Batch<B> = (Tensor<B, 4>, Tensor<B, 1, Int>);

/// Gradients of the weight step: cross-entropy of `batch`, weight gradients only.
/// Returns the gradients (weights only), the loss and the logits.
pub fn weight_grads<B: AutodiffBackend>(
    net: &Supernet<B>,
    batch: Batch<B>,
    rng: &mut StdRng,
) -> (GradientsParams, Tensor<B, 1>, Tensor<B, 2>) {
    let net = net.with_untracked_arch();
    let logits = net.forward(batch.0, rng);
    let loss = cross_entropy(logits.clone(), batch.1);
    let grads = GradientsParams::from_module(&mut loss.backward(), &net.weights);
    (grads, loss, logits)
}

/// grad_alpha of the loss on `batch` (architecture gradients only).
pub fn arch_grads_first<B: AutodiffBackend>(
    net: &Supernet<B>,
    batch: Batch<B>,
    rng: &mut StdRng,
) -> (GradientsParams, Tensor<B, 1>) {
    let net = net.with_untracked_weights();
    let loss = cross_entropy(net.forward(batch.0, rng), batch.1);
    let grads = GradientsParams::from_module(&mut loss.backward(), &net.arch);
    (grads, loss)
}

/// The unrolled (second-order) architecture gradient. `weight_optim` is the weight
/// optimizer (cloned, not advanced) and `eta` its current learning rate; `train` is the
/// weight-half batch, `valid` the architecture-half batch. `rng` must replay the same
/// channel selection for the four passes, so it is cloned per pass.
pub fn arch_grads_second<B: AutodiffBackend, O: Optimizer<Supernet<B>, B> + Clone>(
    net: &Supernet<B>,
    weight_optim: &O,
    eta: f64,
    train: Batch<B>,
    valid: Batch<B>,
    rng: &mut StdRng,
) -> (GradientsParams, Tensor<B, 1>) {
    arch_grads_second_with(net, weight_optim, eta, train, valid, rng, HVP_STEP)
}

/// The finite-difference step of the Hessian-vector product, `r = HVP_STEP / ||v||`
/// (DARTS uses 0.01).
pub const HVP_STEP: f64 = 0.01;

/// [`arch_grads_second`] with the Hessian-vector step `r = hvp_step / ||v||`.
pub fn arch_grads_second_with<B: AutodiffBackend, O: Optimizer<Supernet<B>, B> + Clone>(
    net: &Supernet<B>,
    weight_optim: &O,
    eta: f64,
    train: Batch<B>,
    valid: Batch<B>,
    rng: &mut StdRng,
    hvp_step: f64,
) -> (GradientsParams, Tensor<B, 1>) {
    let seed_rng = rng.clone();
    // w' = one weight-optimizer step on the training batch.
    let (g_train, _, _) = weight_grads(net, train.clone(), &mut seed_rng.clone());
    let unrolled = weight_optim.clone().step(eta, net.clone(), g_train);
    // dalpha and v at (w', alpha); this pass advances the caller's rng.
    let loss_val = cross_entropy(unrolled.forward(valid.0, rng), valid.1);
    let mut g = loss_val.backward();
    let dalpha = GradientsParams::from_module(&mut g, &unrolled.arch);
    let v = GradientsParams::from_module(&mut g, &unrolled.weights);
    let norm = grad_norm(&unrolled.weights, &v);
    let r = hvp_step / norm.max(1e-12);
    // grad_alpha L_train at w +- r v.
    let g_at = |sign: f64| {
        let mut mapper = Perturb {
            v: &v,
            scale: sign * r,
        };
        let perturbed = Supernet {
            weights: net.weights.clone().map(&mut mapper).no_grad(),
            arch: net.arch.clone(),
        };
        let loss = cross_entropy(
            perturbed.forward(train.0.clone(), &mut seed_rng.clone()),
            train.1.clone(),
        );
        GradientsParams::from_module(&mut loss.backward(), &perturbed.arch)
    };
    let g_plus = g_at(1.0);
    let g_minus = g_at(-1.0);
    let mut combine = Combine {
        dalpha,
        g_plus,
        g_minus,
        factor: eta / (2.0 * r),
        out: GradientsParams::new(),
    };
    net.arch.visit(&mut combine);
    (combine.out, loss_val)
}

/// Global L2 norm of the gradients of `module`'s parameters.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SumSq<'a> {
        grads: &'a GradientsParams,
        acc: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSq<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.acc += g.square().sum().into_scalar().elem::<f64>();
            }
        }
    }
    let mut v = SumSq { grads, acc: 0.0 };
    module.visit(&mut v);
    v.acc.sqrt()
}

/// `w + scale * v` for every parameter with a gradient in `v`.
struct Perturb<'a> {
    v: &'a GradientsParams,
    scale: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Perturb<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.v.get::<B::InnerBackend, D>(id) {
            Some(g) => {
                Tensor::from_inner(tensor.inner().add(g.mul_scalar(self.scale))).require_grad()
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `dalpha - factor * (g_plus - g_minus)` per architecture parameter.
struct Combine {
    dalpha: GradientsParams,
    g_plus: GradientsParams,
    g_minus: GradientsParams,
    factor: f64,
    out: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Combine {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id = param.id;
        let Some(d) = self.dalpha.remove::<B::InnerBackend, D>(id) else {
            return;
        };
        let g = match (
            self.g_plus.remove::<B::InnerBackend, D>(id),
            self.g_minus.remove::<B::InnerBackend, D>(id),
        ) {
            (Some(p), Some(m)) => d.sub(p.sub(m).mul_scalar(self.factor)),
            _ => d,
        };
        self.out.register(id, g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supernet::SupernetConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::SgdConfig;
    use burn::tensor::{Distribution, TensorData};
    use rand::SeedableRng;

    type A = burn::backend::Autodiff<burn::backend::NdArray<f64>>;

    fn tiny(k: usize) -> Supernet<A> {
        tiny_with(k, crate::mixed_op::SelectorKind::Split)
    }

    fn tiny_with(k: usize, selector: crate::mixed_op::SelectorKind) -> Supernet<A> {
        let device = Default::default();
        <A as burn::tensor::backend::Backend>::seed(&device, 7);
        SupernetConfig::new()
            .with_channels(4)
            .with_layers(3)
            .with_in_channels(1)
            .with_image_size(8)
            .with_classes(3)
            .with_partial_k(k)
            .with_selector(selector)
            .init::<A>(&device)
            .unwrap()
    }

    fn batch(seed: u64) -> Batch<A> {
        let device = Default::default();
        <A as burn::tensor::backend::Backend>::seed(&device, seed);
        let x = Tensor::random([4, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &device);
        (x, y)
    }

    fn ids<M: Module<A>>(m: &M) -> Vec<burn::module::ParamId> {
        struct Ids(Vec<burn::module::ParamId>);
        impl ModuleVisitor<A> for Ids {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
                self.0.push(p.id);
            }
        }
        let mut v = Ids(vec![]);
        m.visit(&mut v);
        v.0
    }

    fn present(g: &GradientsParams, ids: &[burn::module::ParamId]) -> usize {
        // Every parameter here is 1-, 2- or 4-D.
        ids.iter()
            .filter(|&&id| {
                g.get::<burn::backend::NdArray<f64>, 1>(id).is_some()
                    || g.get::<burn::backend::NdArray<f64>, 2>(id).is_some()
                    || g.get::<burn::backend::NdArray<f64>, 4>(id).is_some()
            })
            .count()
    }

    #[test]
    fn each_step_gets_gradients_for_its_own_half_only() {
        let _serial = crate::backward_lock(); // also serializes Burn's global seed
        let net = tiny(2);
        let (arch_ids, weight_ids) = (ids(&net.arch), ids(&net.weights));
        let mut rng = StdRng::seed_from_u64(0);
        let (g, _) = arch_grads_first(&net, batch(1), &mut rng);
        assert_eq!(present(&g, &arch_ids), 4);
        assert_eq!(present(&g, &weight_ids), 0);
        let (g, _, _) = weight_grads(&net, batch(1), &mut rng);
        assert_eq!(present(&g, &arch_ids), 0);
        assert!(present(&g, &weight_ids) > 10);
        let optim = SgdConfig::new().init::<A, Supernet<A>>();
        let (g, _) = arch_grads_second(&net, &optim, 0.1, batch(1), batch(2), &mut rng);
        assert_eq!(present(&g, &arch_ids), 4);
        assert_eq!(present(&g, &weight_ids), 0);
    }

    /// The attention selector's modules are weights: every one of their parameters gets
    /// a gradient in the weight step, none in either architecture step.
    #[test]
    fn attention_parameters_train_with_the_weights() {
        let _serial = crate::backward_lock(); // also serializes Burn's global seed
        let net = tiny_with(2, crate::mixed_op::SelectorKind::Attention);
        let mut att_ids = vec![];
        for cell in &net.weights.cells {
            for edge in &cell.edges {
                let att = edge
                    .attention
                    .as_ref()
                    .expect("attention module on every edge");
                att_ids.extend(ids(att));
            }
        }
        // 14 edges x 3 cells x (2 weights + 2 biases).
        assert_eq!(att_ids.len(), 14 * 3 * 4);
        let arch_ids = ids(&net.arch);
        let mut rng = StdRng::seed_from_u64(0);
        let (g, _, _) = weight_grads(&net, batch(1), &mut rng);
        assert_eq!(present(&g, &att_ids), att_ids.len());
        assert_eq!(present(&g, &arch_ids), 0);
        let (g, _) = arch_grads_first(&net, batch(1), &mut rng);
        assert_eq!(present(&g, &att_ids), 0);
        assert_eq!(present(&g, &arch_ids), 4);
        let optim = SgdConfig::new().init::<A, Supernet<A>>();
        let (g, _) = arch_grads_second(&net, &optim, 0.1, batch(1), batch(2), &mut rng);
        assert_eq!(present(&g, &att_ids), 0);
        assert_eq!(present(&g, &arch_ids), 4);
    }

    /// Slim-DARTS: the proportion parameters are architecture parameters (gradients in
    /// both architecture steps, none in the weight step); the SRU's gamma/beta are weights.
    #[test]
    fn proportion_and_sru_parameters_train_in_their_own_steps() {
        let _serial = crate::backward_lock(); // also serializes Burn's global seed
        let device = Default::default();
        <A as burn::tensor::backend::Backend>::seed(&device, 7);
        let net = SupernetConfig::new()
            .with_channels(16)
            .with_layers(3)
            .with_in_channels(1)
            .with_image_size(8)
            .with_classes(3)
            .with_learn_proportion(true)
            .with_spatial_reconstruction(true)
            .init::<A>(&device)
            .unwrap();
        let prop_ids: Vec<_> = [&net.arch.proportions_normal, &net.arch.proportions_reduce]
            .iter()
            .map(|p| p.as_ref().expect("proportion parameters").id)
            .collect();
        let mut sru_ids = vec![];
        for cell in &net.weights.cells {
            for edge in &cell.edges {
                for branch in &edge.branches {
                    sru_ids.extend(ids(branch.sru.as_ref().expect("SRU on every branch")));
                }
            }
        }
        // 3 cells x 14 edges x 3 branches x (gamma, beta).
        assert_eq!(sru_ids.len(), 3 * 14 * 3 * 2);
        let arch_ids = ids(&net.arch);
        assert_eq!(arch_ids.len(), 6);
        let mut rng = StdRng::seed_from_u64(0);
        let (g, _, _) = weight_grads(&net, batch(1), &mut rng);
        assert_eq!(present(&g, &sru_ids), sru_ids.len());
        assert_eq!(present(&g, &arch_ids), 0);
        let (g, _) = arch_grads_first(&net, batch(1), &mut rng);
        assert_eq!(present(&g, &prop_ids), 2);
        assert_eq!(present(&g, &arch_ids), 6);
        assert_eq!(present(&g, &sru_ids), 0);
        let optim = SgdConfig::new().init::<A, Supernet<A>>();
        let (g, _) = arch_grads_second(&net, &optim, 0.1, batch(1), batch(2), &mut rng);
        assert_eq!(present(&g, &prop_ids), 2);
        assert_eq!(present(&g, &sru_ids), 0);
        // The proportion gradient is not zero (the branches differ).
        let gp = g
            .get::<burn::backend::NdArray<f64>, 2>(prop_ids[0])
            .expect("gradient");
        let v: Vec<f64> = gp.into_data().iter::<f64>().collect();
        assert!(v.iter().any(|x| x.abs() > 1e-12), "{v:?}");
    }

    fn flat(t: Tensor<A, 2>) -> Vec<f64> {
        t.into_data().iter::<f64>().collect()
    }

    /// Max abs difference of two gradient sets over `module`'s trainable parameters (each
    /// must have a gradient in both sets; running BatchNorm statistics have none).
    fn max_diff<M: Module<A>>(m: &M, a: &GradientsParams, b: &GradientsParams) -> f64 {
        struct Diff<'a>(&'a GradientsParams, &'a GradientsParams, f64, usize);
        impl ModuleVisitor<A> for Diff<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
                type I = burn::backend::NdArray<f64>;
                match (self.0.get::<I, D>(p.id), self.1.get::<I, D>(p.id)) {
                    (Some(a), Some(b)) => {
                        let d: f64 = (a - b).abs().max().into_scalar().elem();
                        self.2 = self.2.max(d);
                        self.3 += 1;
                    }
                    (None, None) => assert!(!p.val().is_require_grad(), "{} has no gradient", p.id),
                    (a, b) => panic!("{}: gradient {} vs {}", p.id, a.is_some(), b.is_some()),
                }
            }
        }
        let mut v = Diff(a, b, 0.0, 0);
        m.visit(&mut v);
        assert!(v.3 > 0);
        v.2
    }

    /// Each step untracks the other half; its gradients must equal those of one pass with
    /// every parameter tracked (same batch, same channel selection).
    #[test]
    fn untracking_the_other_half_leaves_the_gradients_unchanged() {
        let _serial = crate::backward_lock(); // also serializes Burn's global seed
        for selector in [
            crate::mixed_op::SelectorKind::Split,
            crate::mixed_op::SelectorKind::Random,
            crate::mixed_op::SelectorKind::Attention,
        ] {
            let net = tiny_with(2, selector);
            let (x, y) = batch(3);
            let loss = cross_entropy(
                net.forward(x.clone(), &mut StdRng::seed_from_u64(5)),
                y.clone(),
            );
            let mut all = loss.backward();
            let arch_all = GradientsParams::from_module(&mut all, &net.arch);
            let weights_all = GradientsParams::from_module(&mut all, &net.weights);
            let (arch, _) =
                arch_grads_first(&net, (x.clone(), y.clone()), &mut StdRng::seed_from_u64(5));
            let (weights, _, _) = weight_grads(&net, (x, y), &mut StdRng::seed_from_u64(5));
            let d_arch = max_diff(&net.arch, &arch_all, &arch);
            let d_weights = max_diff(&net.weights, &weights_all, &weights);
            assert!(
                d_arch < 1e-12,
                "{selector:?}: alpha/beta gradients differ by {d_arch}"
            );
            assert!(
                d_weights < 1e-12,
                "{selector:?}: weight gradients differ by {d_weights}"
            );
        }
    }

    #[test]
    fn second_order_gradient_matches_direct_finite_differences() {
        // Direct estimate of d/dalpha L_val(w - eta * grad_w L_train(w, alpha), alpha)
        // by central differences on single alpha entries, against the architect's
        // unrolled gradient (its Hessian-vector product is itself a finite difference).
        // f64 backend. The architect runs with a Hessian-vector step of 1e-5 / ||v||
        // (DARTS' 0.01 crosses ReLU kinks on a net this small and is off by tens of
        // percent here); the two then agree to 1e-3 of the largest entry + 1e-7.
        let _serial = crate::backward_lock(); // also serializes Burn's global seed
        let eta = 0.5;
        let net = tiny(2);
        let (train, valid) = (batch(11), batch(12));
        let rng = StdRng::seed_from_u64(0);
        let fresh_sgd = || {
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .init::<A, Supernet<A>>()
        };
        let (g, _) = arch_grads_second_with(
            &net,
            &fresh_sgd(),
            eta,
            train.clone(),
            valid.clone(),
            &mut rng.clone(),
            1e-5,
        );
        let analytic = flat(
            g.get::<burn::backend::NdArray<f64>, 2>(net.arch.alphas_normal.id)
                .map(Tensor::from_inner)
                .unwrap(),
        );
        let objective = |alphas: Tensor<A, 2>| -> f64 {
            let mut n = net.clone();
            n.arch.alphas_normal = Param::initialized(
                n.arch.alphas_normal.id,
                Tensor::from_inner(alphas.inner()).require_grad(),
            );
            let (gw, _, _) = weight_grads(&n, train.clone(), &mut rng.clone());
            let unrolled = fresh_sgd().step(eta, n, gw);
            let loss = cross_entropy(
                unrolled.forward(valid.0.clone(), &mut rng.clone()),
                valid.1.clone(),
            );
            loss.into_scalar()
        };
        let base = net.arch.alphas_normal.val();
        let max = analytic.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(max > 1e-6, "gradient is zero: {analytic:?}");
        let h = 1e-6;
        for &entry in &[0usize, 5, 12, 20, 33, 47, 60, 77, 90, 111] {
            let delta = |s: f64| {
                let mut d = vec![0f64; 14 * 8];
                d[entry] = s;
                base.clone().add(Tensor::from_data(
                    TensorData::new(d, [14, 8]),
                    &Default::default(),
                ))
            };
            let numeric = (objective(delta(h)) - objective(delta(-h))) / (2.0 * h);
            let a = analytic[entry];
            assert!(
                (a - numeric).abs() <= 1e-3 * max + 1e-7,
                "alpha[{entry}]: unrolled {a} vs finite difference {numeric} (max {max})"
            );
        }
    }
}
