//! The generic path against the host kernels, on the CPU. With the host kernels off
//! (`splitnas_host::with_host_kernels(false, ..)`, what `SPLITNAS_HOST_KERNELS=0` does for
//! a process) flex runs Burn's generic operations, the code CUDA and wgpu run; with them on
//! it runs the hand-written kernels of `splitnas-kernels`. Both must compute the same
//! search step (first and second order, every selector, the Slim-DARTS options) and the
//! same training step of the evaluation network.
//!
//! Tolerance: the two paths add the same f32 products in different orders (the host
//! convolutions sum taps then channels, Burn's generic convolution goes through im2col and
//! a matrix product; the host BatchNorm accumulates statistics in f64), so results differ
//! by rounding, amplified a little through ~20 BatchNorms and the backward pass. Losses
//! must agree within 1e-5 relative; every gradient element within 1e-3 of the tensor's
//! largest magnitude (max-abs error over max-abs value), which is 1000x float32's
//! epsilon of headroom for rounding and still fails on any wrong index, missing term or
//! misplaced channel (those give errors of order 1). The second-order architecture
//! gradient gets 1e-2: its Hessian-vector term divides the difference of two gradients
//! by `2r` (`r = 0.01 / ||v||`) and multiplies it by the learning rate, which amplifies
//! their rounding by `lr ||v|| / 0.02`; usually the error stays at the first order's
//! (1e-5), but one run of the full suite on a loaded machine measured 7.3e-3 on split K=4.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use splitnas_host::with_host_kernels;
use splitnas_models::{zoo, NetworkConfig};
use splitnas_search::architect::{arch_grads_first, arch_grads_second, weight_grads, Batch, Order};
use splitnas_search::mixed_op::SelectorKind;
use splitnas_search::steps::cross_entropy;
use splitnas_search::supernet::{Supernet, SupernetConfig};

type A = Autodiff<Flex>;

/// Burn 0.21's `backward()` may sweep another thread's graph (see `search::backward_lock`):
/// one backward at a time in this test binary.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A batch of `n` seeded normal-ish images and labels, made on the host.
fn batch(seed: u64, n: usize, c: usize, side: usize, classes: usize) -> Batch<A> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * c * side * side)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    let y: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    let device = Default::default();
    (
        Tensor::from_data(TensorData::new(x, [n, c, side, side]), &device),
        Tensor::<A, 1, Int>::from_data(TensorData::new(y, [n]), &device),
    )
}

/// The gradient of every parameter of `m`, in visiting order (`None` where it has none).
fn grads<M: Module<A>>(m: &M, g: &GradientsParams) -> Vec<Option<Vec<f32>>> {
    struct Collect<'a>(&'a GradientsParams, Vec<Option<Vec<f32>>>);
    impl ModuleVisitor<A> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
            let g = self.0.get::<Flex, D>(p.id);
            self.1
                .push(g.map(|g| g.into_data().convert::<f32>().to_vec().unwrap()));
        }
    }
    let mut c = Collect(g, vec![]);
    m.visit(&mut c);
    c.1
}

fn scalar(t: Tensor<A, 1>) -> f32 {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()[0]
}

/// Losses and gradients of one computation.
#[derive(Debug)]
struct Step {
    losses: Vec<f32>,
    grads: Vec<Option<Vec<f32>>>,
}

/// Asserts `generic` equals `host` within the tolerance of the module documentation.
/// Returns the worst gradient error (relative to the tensor's largest magnitude).
fn assert_same(what: &str, host: &Step, generic: &Step, tolerance: f32) -> f32 {
    assert_eq!(host.losses.len(), generic.losses.len());
    for (i, (a, b)) in host.losses.iter().zip(&generic.losses).enumerate() {
        assert!(a.is_finite(), "{what}: loss {i} is {a}");
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{what}: loss {i}: host {a}, generic {b}"
        );
    }
    assert_eq!(host.grads.len(), generic.grads.len(), "{what}: parameters");
    let mut worst = 0f32;
    let mut compared = 0;
    for (i, (a, b)) in host.grads.iter().zip(&generic.grads).enumerate() {
        match (a, b) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                assert_eq!(a.len(), b.len(), "{what}: parameter {i}");
                // a gradient below 1e-6 is rounding noise of a zero (seen: 3.5e-10 on a
                // Slim-DARTS parameter): compare against 1e-6 then
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
                assert!(
                    err <= tolerance,
                    "{what}: gradient of parameter {i} differs by {err:.2e} of its largest value {scale:.3e}"
                );
                worst = worst.max(err);
                compared += 1;
            }
            _ => panic!("{what}: parameter {i} has a gradient on one path only"),
        }
    }
    assert!(compared > 0, "{what}: no gradient compared");
    worst
}

struct Case {
    name: &'static str,
    selector: SelectorKind,
    partial_k: usize,
    spatial_reconstruction: bool,
    learn_proportion: bool,
}

const CASES: [Case; 5] = [
    Case {
        name: "split K=4",
        selector: SelectorKind::Split,
        partial_k: 4,
        spatial_reconstruction: false,
        learn_proportion: false,
    },
    Case {
        name: "DARTS (K=1)",
        selector: SelectorKind::Split,
        partial_k: 1,
        spatial_reconstruction: false,
        learn_proportion: false,
    },
    Case {
        name: "random K=4",
        selector: SelectorKind::Random,
        partial_k: 4,
        spatial_reconstruction: false,
        learn_proportion: false,
    },
    Case {
        name: "attention K=4",
        selector: SelectorKind::Attention,
        partial_k: 4,
        spatial_reconstruction: false,
        learn_proportion: false,
    },
    Case {
        name: "Slim (random, spatial reconstruction, learned proportion)",
        selector: SelectorKind::Random,
        partial_k: 4,
        spatial_reconstruction: true,
        learn_proportion: true,
    },
];

fn supernet(case: &Case) -> Supernet<A> {
    let device = Default::default();
    A::seed(&device, 11);
    SupernetConfig::new()
        .with_channels(8)
        .with_layers(3)
        .with_in_channels(3)
        .with_image_size(16)
        .with_classes(4)
        .with_partial_k(case.partial_k)
        .with_selector(case.selector)
        .with_spatial_reconstruction(case.spatial_reconstruction)
        .with_learn_proportion(case.learn_proportion)
        .init::<A>(&device)
        .unwrap()
}

/// One search iteration's gradients: the architecture step (`order`) on the validation
/// batch, then the weight step on the training batch, with the same channel selections.
fn search_step(net: &Supernet<A>, order: Order, on: bool) -> Step {
    with_host_kernels(on, || {
        let (train, valid) = (batch(1, 6, 3, 16, 4), batch(2, 6, 3, 16, 4));
        let mut rng = StdRng::seed_from_u64(5);
        let (ga, la) = match order {
            Order::First => arch_grads_first(net, valid, &mut rng),
            Order::Second => {
                let optim = SgdConfig::new().init::<A, Supernet<A>>();
                arch_grads_second(net, &optim, 0.025, train.clone(), valid, &mut rng)
            }
        };
        let (gw, lw, _) = weight_grads(net, train, &mut rng);
        let mut grads = grads(&net.arch, &ga);
        grads.extend(self::grads(&net.weights, &gw));
        Step {
            losses: vec![scalar(la), scalar(lw)],
            grads,
        }
    })
}

#[test]
fn search_steps_agree_with_the_host_kernels_off_for_every_selector_and_order() {
    let _serial = serial();
    for case in &CASES {
        for order in [Order::First, Order::Second] {
            let net = supernet(case);
            let host = search_step(&net, order, true);
            let generic = search_step(&net, order, false);
            let what = format!("{} {order:?} order", case.name);
            let tolerance = if order == Order::Second { 1e-2 } else { 1e-3 };
            let worst = assert_same(&what, &host, &generic, tolerance);
            eprintln!("{what}: worst gradient error {worst:.2e} (relative to each tensor's max)");
        }
    }
}

/// The evaluation network's training step: the DARTS_V2 and PC_DARTS cells (separable,
/// dilated, pooling, skip and factorized-reduce edges), the identity connection and the
/// auxiliary head, forward and backward.
#[test]
fn training_steps_agree_with_the_host_kernels_off() {
    let _serial = serial();
    let device = Default::default();
    for name in ["DARTS_V2", "PC_DARTS"] {
        A::seed(&device, 3);
        let net = NetworkConfig::new(zoo::by_name(name).unwrap())
            .with_channels(4)
            .with_layers(5)
            .with_classes(4)
            .with_image_size(32)
            .with_auxiliary(true)
            .with_identity(true)
            .init::<A>(&device)
            .unwrap();
        let step = |on: bool| {
            with_host_kernels(on, || {
                let (x, y) = batch(4, 4, 3, 32, 4);
                let (logits, aux) = net.forward_train(x, 0.0);
                let main = cross_entropy(logits, y.clone());
                let loss = main.clone() + cross_entropy(aux.expect("auxiliary head"), y) * 0.4;
                let g = GradientsParams::from_grads(loss.backward(), &net);
                Step {
                    losses: vec![scalar(main)],
                    grads: grads(&net, &g),
                }
            })
        };
        let (host, generic) = (step(true), step(false));
        let worst = assert_same(name, &host, &generic, 1e-3);
        eprintln!("{name} training step: worst gradient error {worst:.2e}");
    }
}
