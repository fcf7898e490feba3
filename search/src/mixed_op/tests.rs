use super::*;
use burn::tensor::Distribution;
use rand::SeedableRng;

type B = burn::backend::Flex;

fn weights() -> Tensor<B, 1> {
    burn::tensor::activation::softmax(
        Tensor::<B, 1>::random([8], Distribution::Normal(0.0, 1.0), &Default::default()),
        0,
    )
}

/// Edges leaving one state through a shared [`EdgeInput`] give the outputs and input
/// gradients of edges that each select and pool on their own, and compute the split
/// once per (K, stride).
#[test]
fn shared_edge_input_matches_separate_edges() {
    let _serial = crate::backward_lock();
    type A = burn::backend::Autodiff<B>;
    let device = Default::default();
    let x0 = Tensor::<A, 4>::random([2, 16, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    for stride in [1, 2] {
        let ops: Vec<MixedOp<A>> = (0..3)
            .map(|_| MixedOp::new(16, stride, 4, SelectorKind::Split, &device))
            .collect();
        let w: Vec<Tensor<A, 1>> = (0..3)
            .map(|_| Tensor::from_inner(weights()).require_grad())
            .collect();
        let run = |shared: bool| {
            let x = x0.clone().detach().require_grad();
            let mut input = EdgeInput::new(x.clone());
            let mut rng = StdRng::seed_from_u64(3);
            let ys: Vec<Tensor<A, 4>> = ops
                .iter()
                .zip(&w)
                .map(|(op, w)| {
                    if shared {
                        op.forward_shared(&mut input, w.clone(), None, &mut rng)
                    } else {
                        op.forward_mixed(x.clone(), w.clone(), None, &mut rng)
                    }
                })
                .collect();
            let splits = input.split.len();
            let y = Tensor::cat(ys, 1);
            let r = Tensor::<A, 4>::ones(y.dims(), &device).mul(
                Tensor::arange(0..y.dims()[1] as i64, &device)
                    .float()
                    .reshape([1, y.dims()[1], 1, 1]),
            );
            let grads = (y.clone() * r).sum().backward();
            let gw: Vec<f32> = w
                .iter()
                .flat_map(|w| w.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap())
                .collect();
            (y.inner(), x.grad(&grads).unwrap(), gw, splits)
        };
        let (y1, gx1, gw1, splits1) = run(true);
        let (y0, gx0, gw0, splits0) = run(false);
        assert_eq!((splits1, splits0), (1, 0), "stride {stride}");
        let tol = burn::tensor::Tolerance::<f32>::absolute(1e-4);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        gx1.into_data().assert_approx_eq(&gx0.into_data(), tol);
        for (a, b) in gw1.iter().zip(&gw0) {
            assert!(
                (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                "alpha grads {a} vs {b}"
            );
        }
    }
}

#[test]
fn output_shapes_for_every_k_and_stride() {
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(1);
    let x = Tensor::<B, 4>::random([2, 16, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    for selector in [
        SelectorKind::Split,
        SelectorKind::Random,
        SelectorKind::Attention,
    ] {
        for k in [1, 2, 4, 8] {
            for (stride, side) in [(1, 8), (2, 4)] {
                let op = MixedOp::<B>::new(16, stride, k, selector, &device);
                assert_eq!(
                    op.branches[0].ops[0]
                        .op
                        .forward(x.clone().slice([0..2, 0..16 / k, 0..8, 0..8]))
                        .dims()[1],
                    16 / k
                );
                let y = op.forward(x.clone(), weights(), &mut rng);
                assert_eq!(
                    y.dims(),
                    [2, 16, side, side],
                    "{selector:?} k={k} s={stride}"
                );
            }
        }
    }
    // Odd side at stride 2: the bypass pools in ceil mode like the strided ops
    // (values 0..49 row-major: window maxima are the bottom-right of each window,
    // clamped to the last row/column).
    let x = Tensor::<B, 4>::from_data(
        TensorData::new((0..49).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 7, 7]),
        &device,
    );
    let op = MixedOp::<B>::new(8, 2, 4, SelectorKind::Split, &device);
    let y: Vec<f32> = op.bypass(x).into_data().iter::<f32>().collect();
    let expect: Vec<f32> = [1usize, 3, 5, 6]
        .iter()
        .flat_map(|&r| [1usize, 3, 5, 6].map(|c| (r * 7 + c) as f32))
        .collect();
    assert_eq!(y, expect);
}

#[test]
fn shuffle_is_a_permutation_interleaving_the_groups() {
    let device = Default::default();
    // Channel c holds the value c everywhere.
    let data: Vec<f32> = (0..8)
        .flat_map(|c| std::iter::repeat_n(c as f32, 4))
        .collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(data, [1, 8, 2, 2]), &device);
    let y = channel_shuffle(x, 4);
    let v: Vec<f32> = y.into_data().iter::<f32>().collect();
    let order: Vec<f32> = v.chunks(4).map(|c| c[0]).collect();
    // [N, 4, 2] -> swap -> [N, 2, 4]: output j*4+g = input g*2+j (hand-derived).
    assert_eq!(order, vec![0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
    let mut sorted = order.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, (0..8).map(|c| c as f32).collect::<Vec<_>>());
}

#[test]
fn bypassed_channels_pass_unchanged() {
    // Stride 1, K = 4 on 8 channels: channels 2..8 bypass. After the shuffle,
    // output channel j*4+g holds merged channel g*2+j; merged channels >= 2 are the
    // input channels unchanged.
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(3);
    let x = Tensor::<B, 4>::random([2, 8, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    let op = MixedOp::<B>::new(8, 1, 4, SelectorKind::Split, &device);
    let y = op.forward(x.clone(), weights(), &mut rng);
    for out_c in 0..8 {
        let (j, g) = (out_c / 4, out_c % 4);
        let merged = g * 2 + j;
        if merged >= 2 {
            let a = y.clone().slice([0..2, out_c..out_c + 1, 0..4, 0..4]);
            let b = x.clone().slice([0..2, merged..merged + 1, 0..4, 0..4]);
            let d: f32 = a.sub(b).abs().max().into_scalar();
            assert!(d == 0.0, "channel {out_c}");
        }
    }
    // Random selector: exactly C - C/K channels are unchanged, in place.
    let op = MixedOp::<B>::new(8, 1, 4, SelectorKind::Random, &device);
    let y = op.forward(x.clone(), weights(), &mut rng);
    let same = (0..8)
        .filter(|&ch| {
            let a = y.clone().slice([0..2, ch..ch + 1, 0..4, 0..4]);
            let b = x.clone().slice([0..2, ch..ch + 1, 0..4, 0..4]);
            a.sub(b).abs().max().into_scalar() == 0.0
        })
        .count();
    assert_eq!(same, 6);
}

/// The split selector's fused select/merge (`fastselect`) against the written-out
/// definition with Burn's own slice, `cat` and reshape/swap shuffle: values and
/// input gradients, both strides.
#[test]
fn split_path_matches_the_written_out_definition() {
    let _serial = crate::backward_lock();
    type A = burn::backend::Autodiff<B>;
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(5);
    let w = burn::tensor::activation::softmax(
        Tensor::<A, 1>::random([8], Distribution::Normal(0.0, 1.0), &device),
        0,
    );
    let x = Tensor::<A, 4>::random([2, 8, 6, 6], Distribution::Normal(0.0, 1.0), &device);
    let r = Tensor::<A, 4>::random([2, 8, 3, 3], Distribution::Normal(0.0, 1.0), &device);
    for stride in [1, 2] {
        let op = MixedOp::<A>::new(8, stride, 4, SelectorKind::Split, &device);
        let mut run = |fast: bool| {
            let x = x.clone().detach().require_grad();
            let y = if fast {
                op.forward(x.clone(), w.clone(), &mut rng)
            } else {
                let summed =
                    op.branches[0].op_sum(x.clone().slice([0..2, 0..2, 0..6, 0..6]), w.clone());
                let bypass = op.bypass(x.clone().slice([0..2, 2..8, 0..6, 0..6]));
                let merged = Tensor::cat(vec![summed, bypass], 1);
                let [n, c, h, wd] = merged.dims();
                merged
                    .reshape([n, 4, c / 4, h, wd])
                    .swap_dims(1, 2)
                    .reshape([n, c, h, wd])
            };
            let side = 6 / stride;
            let r = r
                .clone()
                .slice([0..2, 0..8, 0..side.min(3), 0..side.min(3)]);
            let y_part = y
                .clone()
                .slice([0..2, 0..8, 0..side.min(3), 0..side.min(3)]);
            let grads = (y_part * r).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let (y1, g1) = run(true);
        let (y0, g0) = run(false);
        assert_eq!(y1.dims(), [2, 8, 6 / stride, 6 / stride]);
        let tol = burn::tensor::Tolerance::<f32>::absolute(1e-5);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        g1.into_data().assert_approx_eq(&g0.into_data(), tol);
    }
}

/// The operations run side by side on the thread pool (Autodiff<Flex>): the sum,
/// its input gradient and its weight gradient equal the operations applied one after
/// the other, and repeated runs agree bit for bit (scheduling does not leak in).
#[test]
fn parallel_operations_match_the_sequential_sum() {
    let _serial = crate::backward_lock();
    type A = burn::backend::Autodiff<B>;
    let device = Default::default();
    let x = Tensor::<A, 4>::random([2, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let w0 = Tensor::<A, 1>::random([8], Distribution::Normal(0.0, 1.0), &device);
    for stride in [1, 2] {
        let branch = Branch::<A>::new(4, stride, 1, false, &device);
        let r = Tensor::<A, 4>::random(
            [2, 4, 8 / stride, 8 / stride],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let run = |parallel: bool| {
            let x = x.clone().detach().require_grad();
            let w0 = w0.clone().detach().require_grad();
            let w = burn::tensor::activation::softmax(w0.clone(), 0);
            let y = if parallel {
                branch.op_sum(x.clone(), w)
            } else {
                let mut sum = None;
                for (i, op) in branch.ops.iter().enumerate() {
                    let wi = w.clone().slice([i + 1..i + 2]).reshape([1, 1, 1, 1]);
                    let y = op.forward(x.clone()).mul(wi);
                    sum = Some(match sum {
                        Some(s) => y.add(s),
                        None => y,
                    });
                }
                sum.unwrap()
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let gw: Vec<f32> = w0.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let y: Vec<f32> = y.inner().into_data().to_vec().unwrap();
            (y, gx, gw)
        };
        let sequential = run(false);
        let first = run(true);
        for (a, b) in [
            (&first.0, &sequential.0),
            (&first.1, &sequential.1),
            (&first.2, &sequential.2),
        ] {
            let diff = a
                .iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "stride {stride}: max abs difference {diff}");
        }
        for _ in 0..3 {
            assert_eq!(run(true), first, "stride {stride}: runs differ");
        }
    }
}

/// Learned proportions and the SRU: every selector, both strides, output shape kept;
/// branches hold 7 ops on C/2, C/4, C/8 channels.
#[test]
fn proportion_branches_and_sru_keep_the_shape() {
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(2);
    let x = Tensor::<B, 4>::random([2, 16, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let p = burn::tensor::activation::softmax(
        Tensor::<B, 1>::from_floats([0.3, -0.1, 0.5], &device),
        0,
    );
    for selector in [
        SelectorKind::Split,
        SelectorKind::Random,
        SelectorKind::Attention,
    ] {
        for sru in [false, true] {
            for (stride, side) in [(1, 8), (2, 4)] {
                let op =
                    MixedOp::<B>::with_branches(16, stride, &PROPORTION_KS, selector, sru, &device);
                let widths: Vec<usize> = op
                    .branches
                    .iter()
                    .map(|b| match &b.sru {
                        Some(s) => s.gamma.val().dims()[0],
                        None => 16 / b.partial_k,
                    })
                    .collect();
                assert_eq!(widths, vec![8, 4, 2]);
                assert!(op
                    .branches
                    .iter()
                    .all(|b| b.ops.len() == 7 && b.sru.is_some() == sru));
                let y = op.forward_mixed(x.clone(), weights(), Some(p.clone()), &mut rng);
                assert_eq!(
                    y.dims(),
                    [2, 16, side, side],
                    "{selector:?} sru={sru} s={stride}"
                );
            }
        }
    }
}

/// The edge output is the proportion-weighted sum of its branches, each branch being
/// exactly the fixed-K edge made of that branch alone (split selector: deterministic).
#[test]
fn proportions_mix_the_fixed_k_edges_linearly() {
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(4);
    let x = Tensor::<B, 4>::random([2, 16, 6, 6], Distribution::Normal(0.0, 1.0), &device);
    let w = weights();
    let op = MixedOp::<B>::with_branches(16, 1, &PROPORTION_KS, SelectorKind::Split, true, &device);
    // Parameters are initialized lazily, and a clone of an uninitialized parameter
    // initializes on its own: run the edge once so the branch clones share its values.
    let _ = op.forward_mixed(x.clone(), w.clone(), None, &mut rng);
    let alone: Vec<Vec<f32>> = op
        .branches
        .iter()
        .map(|b| {
            let single = MixedOp {
                branches: vec![b.clone()],
                stride: 1,
                selector: SelectorKind::Split,
                attention: None,
            };
            single
                .forward(x.clone(), w.clone(), &mut rng)
                .into_data()
                .iter::<f32>()
                .collect()
        })
        .collect();
    let pv = [0.5f32, 0.3, 0.2];
    let y: Vec<f32> = op
        .forward_mixed(
            x.clone(),
            w.clone(),
            Some(Tensor::from_floats(pv, &device)),
            &mut rng,
        )
        .into_data()
        .iter::<f32>()
        .collect();
    let mut worst = 0f32;
    for (i, v) in y.iter().enumerate() {
        let expect: f32 = (0..3).map(|b| pv[b] * alone[b][i]).sum();
        worst = worst.max((v - expect).abs());
    }
    assert!(worst < 1e-5, "{worst}");
    // One-hot on K = 8: exactly the K = 8 edge.
    let y: Vec<f32> = op
        .forward_mixed(
            x.clone(),
            w,
            Some(Tensor::from_floats([0.0, 0.0, 1.0], &device)),
            &mut rng,
        )
        .into_data()
        .iter::<f32>()
        .collect();
    assert_eq!(y, alone[2]);
}

/// The attention selector's choice, recomputed here by hand from the module's
/// weights (plain loops: mean over H, W; x W1 + b1; ReLU; x W2 + b2; sigmoid; mean over
/// the batch; top C/K): exactly those channels change, the others pass in place.
#[test]
fn attention_selects_the_top_scored_channels() {
    let device = Default::default();
    let mut rng = StdRng::seed_from_u64(5);
    let (n, c, side, k) = (3usize, 8usize, 4usize, 4usize);
    let x = Tensor::<B, 4>::random([n, c, side, side], Distribution::Normal(0.0, 1.0), &device);
    let op = MixedOp::<B>::new(c, 1, k, SelectorKind::Attention, &device);
    let att = op.attention.as_ref().unwrap();
    let host = |t: Tensor<B, 2>| -> Vec<f32> { t.into_data().iter::<f32>().collect() };
    let host1 = |t: Tensor<B, 1>| -> Vec<f32> { t.into_data().iter::<f32>().collect() };
    let (w1, b1) = (
        host(att.squeeze.weight.val()),
        host1(att.squeeze.bias.as_ref().unwrap().val()),
    );
    let (w2, b2) = (
        host(att.excite.weight.val()),
        host1(att.excite.bias.as_ref().unwrap().val()),
    );
    let hidden = b1.len();
    assert_eq!(hidden, c / ATTENTION_REDUCTION);
    let xv: Vec<f32> = x.clone().into_data().iter::<f32>().collect();
    let mut mean = vec![0f32; c];
    for i in 0..n {
        let pooled: Vec<f32> = (0..c)
            .map(|ch| {
                let start = (i * c + ch) * side * side;
                xv[start..start + side * side].iter().sum::<f32>() / (side * side) as f32
            })
            .collect();
        // Burn's Linear weight is [in, out].
        let h: Vec<f32> = (0..hidden)
            .map(|j| {
                (b1[j]
                    + (0..c)
                        .map(|ch| pooled[ch] * w1[ch * hidden + j])
                        .sum::<f32>())
                .max(0.0)
            })
            .collect();
        for ch in 0..c {
            let z = b2[ch] + (0..hidden).map(|j| h[j] * w2[j * c + ch]).sum::<f32>();
            mean[ch] += 1.0 / (1.0 + (-z).exp()) / n as f32;
        }
    }
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]));
    let mut top = order[..c / k].to_vec();
    top.sort_unstable();
    assert_eq!(attention_order(&mean, c / k)[..c / k], top[..]);
    let y = op.forward(x.clone(), weights(), &mut rng);
    let changed: Vec<usize> = (0..c)
        .filter(|&ch| {
            let a = y.clone().slice([0..n, ch..ch + 1, 0..side, 0..side]);
            let b = x.clone().slice([0..n, ch..ch + 1, 0..side, 0..side]);
            a.sub(b).abs().max().into_scalar() != 0.0
        })
        .collect();
    assert_eq!(changed, top);
}
