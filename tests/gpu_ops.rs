//! Burn's generic operations on wgpu against the same operations on flex with the host
//! kernels off (the CPU reference of the generic path): forward values and gradients of
//! every operation the search space uses. When a search or training run on wgpu drifts
//! from the CPU, this says which operation does it. Built with `--features wgpu`; skipped
//! without an adapter unless `SPLITNAS_REQUIRE_WGPU=1`.
//!
//! Tolerance: max-abs error over the tensor's max-abs value <= 1e-4 (float32 sums in
//! another order; a wrong window, index or padding rule gives errors of order 1).
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::{Autodiff, Flex, Wgpu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
        .collect()
}

fn tensor<B: Backend, const D: usize>(shape: [usize; D], seed: usize) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), &Default::default())
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// (output, gradient of the input, gradient of the weight) of `op` on backend `A`, the
/// loss being the sum of the output times fixed weights.
fn run<A: AutodiffBackend>(
    op: &dyn Fn(Tensor<A, 4>, Tensor<A, 4>) -> Tensor<A, 4>,
    x: [usize; 4],
    w: [usize; 4],
) -> [Vec<f32>; 3] {
    let xs = tensor::<A, 4>(x, 1).require_grad();
    let ws = tensor::<A, 4>(w, 2).require_grad();
    let y = op(xs.clone(), ws.clone());
    let r = tensor::<A, 4>(y.dims(), 3);
    let grads = (y.clone() * r).sum().backward();
    [
        host(y),
        host(xs.grad(&grads).unwrap()),
        ws.grad(&grads).map(host).unwrap_or_default(),
    ]
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

type Op<A> = Box<dyn Fn(Tensor<A, 4>, Tensor<A, 4>) -> Tensor<A, 4>>;

/// The operations, by name, with the input and weight shapes.
fn ops<A: AutodiffBackend>() -> Vec<(&'static str, [usize; 4], [usize; 4], Op<A>)> {
    let conv = |stride: usize, pad: usize, dil: usize, groups: usize| -> Op<A> {
        // the adapter every convolution of the search space goes through
        Box::new(move |x, w| {
            splitnas_models::fastconv::conv2d(
                x,
                w,
                ConvOptions::new([stride; 2], [pad; 2], [dil; 2], groups),
            )
        })
    };
    let x = [2, 8, 9, 9];
    let x8 = [2, 8, 8, 8];
    vec![
        (
            "conv 1x1 stride 2 on 8x8",
            x8,
            [8, 8, 1, 1],
            conv(2, 0, 1, 1),
        ),
        (
            "conv 3x3 stride 2 pad 1 on 8x8",
            x8,
            [8, 8, 3, 3],
            conv(2, 1, 1, 1),
        ),
        (
            "depthwise 3x3 stride 2 pad 1 on 8x8",
            x8,
            [8, 1, 3, 3],
            conv(2, 1, 1, 8),
        ),
        (
            "depthwise 5x5 dilation 2 stride 2 pad 4 on 8x8",
            x8,
            [8, 1, 5, 5],
            conv(2, 4, 2, 8),
        ),
        (
            "max pool 3x3 stride 2 pad 1 on 8x8",
            x8,
            [1, 1, 1, 1],
            Box::new(|x, w| max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false) * w),
        ),
        (
            "avg pool 3x3 stride 2 pad 1 on 8x8",
            x8,
            [1, 1, 1, 1],
            Box::new(|x, w| avg_pool2d(x, [3, 3], [2, 2], [1, 1], false, false) * w),
        ),
        ("conv 1x1", x, [8, 8, 1, 1], conv(1, 0, 1, 1)),
        ("conv 3x3 dense", x, [8, 8, 3, 3], conv(1, 1, 1, 1)),
        ("conv 3x3 stride 2", x, [8, 8, 3, 3], conv(2, 1, 1, 1)),
        ("depthwise 3x3", x, [8, 1, 3, 3], conv(1, 1, 1, 8)),
        ("depthwise 5x5 stride 2", x, [8, 1, 5, 5], conv(2, 2, 1, 8)),
        (
            "depthwise 3x3 dilation 2",
            x,
            [8, 1, 3, 3],
            conv(1, 2, 2, 8),
        ),
        (
            "depthwise 5x5 dilation 2 stride 2",
            x,
            [8, 1, 5, 5],
            conv(2, 4, 2, 8),
        ),
        (
            "max pool 3x3 pad 1",
            x,
            [1, 1, 1, 1],
            Box::new(|x, w| max_pool2d(x, [3, 3], [1, 1], [1, 1], [1, 1], false) * w),
        ),
        (
            "max pool 3x3 stride 2 pad 1",
            x,
            [1, 1, 1, 1],
            Box::new(|x, w| max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false) * w),
        ),
        (
            "avg pool 3x3 pad 1 (padding not counted)",
            x,
            [1, 1, 1, 1],
            Box::new(|x, w| avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false) * w),
        ),
        (
            "avg pool 3x3 stride 2 pad 1 (padding not counted)",
            x,
            [1, 1, 1, 1],
            Box::new(|x, w| avg_pool2d(x, [3, 3], [2, 2], [1, 1], false, false) * w),
        ),
        (
            "batch statistics (mean, variance, normalize)",
            x,
            [1, 8, 1, 1],
            Box::new(|x: Tensor<A, 4>, w| {
                let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
                let c = x - mean;
                let var = c.clone().powi_scalar(2).mean_dim(0).mean_dim(2).mean_dim(3);
                c / (var + 1e-5).sqrt() * w
            }),
        ),
        (
            "spatial shift (slice 1..) then 1x1 stride 2",
            x,
            [8, 8, 1, 1],
            Box::new(|x: Tensor<A, 4>, w| {
                let [n, c, h, wd] = x.dims();
                let s = x.slice([0..n, 0..c, 1..h, 1..wd]);
                splitnas_models::fastconv::conv2d(s, w, ConvOptions::new([2, 2], [0, 0], [1, 1], 1))
            }),
        ),
        (
            "depthwise then pointwise (separable)",
            x,
            [8, 1, 3, 3],
            Box::new(|x: Tensor<A, 4>, w: Tensor<A, 4>| {
                let d = conv2d(
                    x,
                    w.clone(),
                    None,
                    ConvOptions::new([1, 1], [1, 1], [1, 1], 8),
                );
                let pw = w.reshape([8, 9, 1, 1]).narrow(1, 0, 8);
                conv2d(d, pw, None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
            }),
        ),
        (
            "one tensor read by three operations, summed",
            x,
            [8, 1, 3, 3],
            Box::new(|x: Tensor<A, 4>, w| {
                let a = conv2d(
                    x.clone(),
                    w,
                    None,
                    ConvOptions::new([1, 1], [1, 1], [1, 1], 8),
                );
                let b = max_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], [1, 1], false);
                a + b + burn::tensor::activation::relu(x)
            }),
        ),
        (
            "avg pool 5x5 stride 3, conv 2x2",
            x,
            [8, 8, 2, 2],
            Box::new(|x, w| {
                let p = avg_pool2d(x, [5, 5], [3, 3], [0, 0], false, false);
                conv2d(p, w, None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
            }),
        ),
        (
            "global mean, linear, log_softmax, gather",
            x,
            [1, 1, 8, 10],
            Box::new(|x: Tensor<A, 4>, w: Tensor<A, 4>| {
                let g = x.mean_dim(2).mean_dim(3).reshape([2, 8]);
                let logits = g.matmul(w.reshape([8, 10]));
                let idx = Tensor::<A, 2, burn::tensor::Int>::from_data(
                    TensorData::new(vec![3i64, 7], [2, 1]),
                    &Default::default(),
                );
                burn::tensor::activation::log_softmax(logits, 1)
                    .gather(1, idx)
                    .reshape([1, 1, 1, 2])
            }),
        ),
        (
            "relu, narrow, concat",
            x,
            [1, 1, 1, 1],
            Box::new(|x: Tensor<A, 4>, w| {
                let r = burn::tensor::activation::relu(x);
                let (a, b) = (r.clone().narrow(1, 0, 2), r.narrow(1, 2, 6));
                Tensor::cat(vec![b, a], 1) * w
            }),
        ),
    ]
}

#[test]
fn every_search_space_operation_on_wgpu_equals_flex() {
    if !common::wgpu_here() {
        return;
    }
    let cpu = ops::<Autodiff<Flex>>();
    let gpu = ops::<Autodiff<Wgpu>>();
    let mut failed = vec![];
    for ((name, x, w, f), (_, _, _, g)) in cpu.iter().zip(&gpu) {
        let a = run(f.as_ref(), *x, *w);
        let b = run(g.as_ref(), *x, *w);
        let errs = [rel(&a[0], &b[0]), rel(&a[1], &b[1]), rel(&a[2], &b[2])];
        eprintln!(
            "{name}: output {:.1e}, input gradient {:.1e}, weight gradient {:.1e}",
            errs[0], errs[1], errs[2]
        );
        if errs.iter().any(|e| !(*e <= 1e-4)) {
            failed.push(format!("{name}: {errs:?}"));
        }
    }
    assert!(failed.is_empty(), "wgpu differs from flex: {failed:#?}");
}

/// Gradients of every parameter of `m` in visiting order, with their shapes.
fn param_grads<A: AutodiffBackend, M: burn::module::Module<A>>(
    m: &M,
    g: &burn::optim::GradientsParams,
) -> Vec<(Vec<usize>, Vec<f32>)> {
    use burn::module::{ModuleVisitor, Param};
    struct V<'a, A: AutodiffBackend>(
        &'a burn::optim::GradientsParams,
        Vec<(Vec<usize>, Vec<f32>)>,
        std::marker::PhantomData<A>,
    );
    impl<A: AutodiffBackend> ModuleVisitor<A> for V<'_, A> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
            let shape = p.val().dims().to_vec();
            let g = self
                .0
                .get::<A::InnerBackend, D>(p.id)
                .map(host)
                .unwrap_or_default();
            self.1.push((shape, g));
        }
    }
    let mut v = V(g, vec![], std::marker::PhantomData);
    m.visit(&mut v);
    v.1
}

/// One training step of a DARTS_V2 network (the same weights on both devices): loss and
/// every parameter's gradient.
fn network_step<A: AutodiffBackend>() -> (f32, Vec<(Vec<usize>, Vec<f32>)>) {
    use splitnas_models::{zoo, NetworkConfig};
    let device = Default::default();
    let cfg = NetworkConfig::new(zoo::by_name("DARTS_V2").unwrap())
        .with_channels(4)
        .with_layers(3)
        .with_in_channels(1)
        .with_image_size(28)
        .with_auxiliary(true);
    let net =
        splitnas_search::device::seeded(&device, 7, |d| cfg.init::<Flex>(d), |d| cfg.init::<A>(d))
            .unwrap();
    let x = tensor::<A, 4>([4, 1, 28, 28], 5);
    let y = Tensor::<A, 1, burn::tensor::Int>::from_data(
        TensorData::new(vec![0i64, 3, 7, 9], [4]),
        &device,
    );
    let (logits, aux) = net.forward_train(x, 0.0);
    let loss = splitnas_search::steps::cross_entropy(logits, y.clone())
        + splitnas_search::steps::cross_entropy(aux.unwrap(), y) * 0.4;
    let l = host(loss.clone())[0];
    let g = burn::optim::GradientsParams::from_grads(loss.backward(), &net);
    (l, param_grads(&net, &g))
}

#[test]
fn a_network_training_step_on_wgpu_equals_flex() {
    if !common::wgpu_here() {
        return;
    }
    let (la, ga) = splitnas_runtime::with_host_kernels(false, network_step::<Autodiff<Flex>>);
    let (lb, gb) = network_step::<Autodiff<Wgpu>>();
    eprintln!("loss flex {la} wgpu {lb}");
    let mut worst = vec![];
    for (i, ((sa, a), (_, b))) in ga.iter().zip(&gb).enumerate() {
        if a.is_empty() && b.is_empty() {
            continue;
        }
        worst.push((rel(a, b), i, sa.clone()));
    }
    worst.sort_by(|x, y| y.0.total_cmp(&x.0));
    for (e, i, s) in worst.iter().take(8) {
        eprintln!("parameter {i} {s:?}: gradient differs by {e:.2e}");
    }
    assert!(
        (la - lb).abs() <= 1e-5 * la.abs(),
        "loss flex {la} wgpu {lb}"
    );
    assert!(worst[0].0 <= 1e-3, "{:?}", &worst[..4]);
}
