//! Budgets: the constrained derivation never returns an over-budget pair, an impossible
//! budget is named with the cheapest figure, and the expected cost equals a hand
//! computation from the table (uniform weights) and the derived pair's cost (one-hot).

use super::*;
use crate::supernet::{node_edges, ArchParams, CellWeights, EDGES, NODES, OPS};
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use splitnas_models::{zoo, CellGenotype, CellPair, NetworkConfig, Primitive};

type B = burn::backend::Flex;

/// DARTS_V2's evaluation network at C=8 L=5 on 1x28x28 (the genotype is ignored).
fn table() -> CostTable {
    let shape = NetworkConfig::new(zoo::by_name("DARTS_V2").unwrap())
        .with_channels(8)
        .with_layers(5)
        .with_in_channels(1)
        .with_image_size(28);
    CostTable::new(&shape, &[]).unwrap()
}

/// Softmaxed random weights; `sharp` scales the logits.
fn weights(rng: &mut StdRng, sharp: f32) -> CellWeights {
    let softmax = |v: Vec<f32>| {
        let m = v.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect::<Vec<f32>>()
    };
    CellWeights {
        alphas: (0..EDGES)
            .map(|_| softmax((0..OPS).map(|_| sharp * rng.random::<f32>()).collect()))
            .collect(),
        betas: (0..EDGES).map(|_| 0.2 + rng.random::<f32>()).collect(),
        proportions: None,
    }
}

#[test]
fn constrained_derivation_never_exceeds_the_budget() {
    let table = table();
    let least = cheapest(&table);
    let mut rng = StdRng::seed_from_u64(3);
    for case in 0..40 {
        let (n, r) = (weights(&mut rng, 3.0), weights(&mut rng, 3.0));
        let plain = CellPair {
            normal: n.genotype(),
            reduce: r.genotype(),
        };
        let plain_cost = table.pair_cost(&plain);
        // a limit between the cheapest pair and the plain derivation (or above it)
        let between = |r: Resource, f: f64| {
            let lo = least.iter().find(|x| x.0 == r).unwrap().1 as f64;
            (lo + f * (r.of(&plain_cost) as f64 - lo)).round() as u64
        };
        let f = rng.random::<f64>() * 1.2;
        let budget = Budget {
            max_params: (case % 3 != 1).then(|| between(Resource::Params, f)),
            max_macs: (case % 3 != 0).then(|| between(Resource::Macs, f)),
            ..Default::default()
        };
        let pair = derive([&n, &r], &table, &budget).unwrap();
        let cost = table.pair_cost(&pair);
        assert!(
            budget.admits(&cost),
            "case {case}: {cost:?} over {budget:?}"
        );
        if budget.admits(&plain_cost) {
            assert_eq!(pair, plain, "case {case}: the plain derivation fits");
        }
        // still a DARTS cell: 2 distinct inputs per node, no `none`
        for cell in [&pair.normal, &pair.reduce] {
            for node in 0..NODES {
                let (a, b) = (cell.edges[2 * node], cell.edges[2 * node + 1]);
                assert_ne!(a.1, b.1);
                assert!(a.1 < node + 2 && b.1 < node + 2);
                assert!(a.0 != Primitive::None && b.0 != Primitive::None);
            }
        }
    }
}

#[test]
fn a_budget_below_the_cheapest_cell_is_named_before_searching() {
    let table = table();
    // Hand check: max_pool_3x3 costs nothing at any stride, so the cheapest pair costs
    // the fixed part alone.
    let pools = CellGenotype {
        edges: (0..NODES)
            .flat_map(|_| [(Primitive::MaxPool3x3, 0), (Primitive::MaxPool3x3, 1)])
            .collect(),
        concat: vec![2, 3, 4, 5],
    };
    let floor = table.pair_cost(&CellPair {
        normal: pools.clone(),
        reduce: pools,
    });
    assert_eq!(floor, table.fixed);
    assert_eq!(
        cheapest(&table)[..2],
        [
            (Resource::Params, floor.params),
            (Resource::Macs, floor.macs)
        ]
    );
    let budget = Budget {
        max_params: Some(floor.params - 1),
        max_macs: None,
        ..Default::default()
    };
    let e = check(&table, &budget).unwrap_err();
    assert_eq!(e.cheapest, floor.params);
    assert_eq!(e.limit, floor.params - 1);
    assert!(e.to_string().contains("params budget"), "{e}");
    let mut rng = StdRng::seed_from_u64(1);
    let w = weights(&mut rng, 1.0);
    assert_eq!(derive([&w, &w], &table, &budget).unwrap_err(), e);
    // exactly the floor is feasible
    let at = Budget {
        max_params: Some(floor.params),
        max_macs: Some(floor.macs),
        ..Default::default()
    };
    assert!(table
        .pair_cost(&derive([&w, &w], &table, &at).unwrap())
        .params
        .le(&floor.params));
}

fn arch(logits: [Vec<f32>; 2], betas: [Vec<f32>; 2]) -> ArchParams<B> {
    let dev = Default::default();
    let a = |v: &Vec<f32>| {
        Param::from_tensor(Tensor::<B, 2>::from_data(
            TensorData::new(v.clone(), [EDGES, OPS]),
            &dev,
        ))
    };
    let b = |v: &Vec<f32>| {
        Param::from_tensor(Tensor::<B, 1>::from_data(
            TensorData::new(v.clone(), [EDGES]),
            &dev,
        ))
    };
    ArchParams {
        alphas_normal: a(&logits[0]),
        alphas_reduce: a(&logits[1]),
        betas_normal: b(&betas[0]),
        betas_reduce: b(&betas[1]),
        proportions_normal: None,
        proportions_reduce: None,
    }
}

fn expected_of<Q: burn::tensor::backend::Backend>(
    term: &CostTerm<Q>,
    arch: &ArchParams<Q>,
    r: Resource,
) -> f64 {
    term.expected(arch, true, 1.0)
        .into_iter()
        .find(|x| x.0 == r)
        .unwrap()
        .1
}

#[test]
fn expected_cost_with_uniform_weights_is_the_mean_op_cost() {
    let table = table();
    let term = CostTerm::<B>::new(&table, &Budget::default(), 1.0, &Default::default());
    let zeros = vec![0.0; EDGES * OPS];
    let a = arch([zeros.clone(), zeros], [vec![0.0; EDGES], vec![0.0; EDGES]]);
    for r in Resource::COUNTED {
        // hand formula: each node keeps 2 of its n inputs, each equally likely, with
        // each of the 7 ops equally likely
        let mut want = r.of(&table.fixed) as f64;
        for cell in &table.edges {
            for inputs in cell {
                let n = inputs.len() as f64;
                for ops in inputs {
                    let mean: f64 = ops[1..].iter().map(|c| r.of(c) as f64).sum::<f64>() / 7.0;
                    want += 2.0 / n * mean;
                }
            }
        }
        let got = expected_of(&term, &a, r);
        // f32 sums of f32 costs: relative 1e-5
        assert!(
            (got - want).abs() <= 1e-5 * want,
            "{}: {got} vs {want}",
            r.name()
        );
    }
}

#[test]
fn expected_cost_of_a_decided_architecture_is_the_derived_cost() {
    let table = table();
    let term = CostTerm::<B>::new(&table, &Budget::default(), 1.0, &Default::default());
    let g = zoo::by_name("DARTS_V2").unwrap();
    let cells = [&g.normal().clone(), &g.reduce().clone()];
    // logits 30 on the genotype's ops, betas 30 on its edges: softmax within e^-30
    let mut logits = [vec![0.0; EDGES * OPS], vec![0.0; EDGES * OPS]];
    let mut betas = [vec![0.0; EDGES], vec![0.0; EDGES]];
    for t in 0..2 {
        for (j, &(op, input)) in cells[t].edges.iter().enumerate() {
            let e = node_edges(j / 2).start + input;
            logits[t][e * OPS + op.index()] = 30.0;
            betas[t][e] = 30.0;
        }
    }
    let a = arch(logits, betas);
    let pair = CellPair {
        normal: cells[0].clone(),
        reduce: cells[1].clone(),
    };
    let derived = table.pair_cost(&pair);
    for r in Resource::COUNTED {
        let (got, want) = (expected_of(&term, &a, r), r.of(&derived) as f64);
        assert!(
            (got - want).abs() <= 1e-4 * want,
            "{}: {got} vs {want}",
            r.name()
        );
    }
}

#[test]
fn the_penalty_is_zero_within_budget_and_pushes_the_cost_down_over_it() {
    use burn::backend::Autodiff;
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    type AD = Autodiff<B>;
    let _lock = crate::backward_lock();
    let table = table();
    let dev = Default::default();
    let mut rng = StdRng::seed_from_u64(5);
    let rand = |rng: &mut StdRng, n: usize| (0..n).map(|_| rng.random::<f32>()).collect();
    let logits = [rand(&mut rng, EDGES * OPS), rand(&mut rng, EDGES * OPS)];
    let betas = [rand(&mut rng, EDGES), rand(&mut rng, EDGES)];
    let plain = arch(logits.clone(), betas.clone());
    let free = CostTerm::<B>::new(&table, &Budget::default(), 1.0, &dev);
    let e = expected_of(&free, &plain, Resource::Params);
    let over = Budget {
        max_params: Some((0.8 * e) as u64),
        max_macs: None,
        ..Default::default()
    };
    let within = Budget {
        max_params: Some((1.2 * e) as u64),
        max_macs: None,
        ..Default::default()
    };
    let p = CostTerm::<B>::new(&table, &within, 1.0, &dev).penalty(&plain, true, 1.0);
    assert_eq!(p.into_scalar(), 0.0);
    let p = CostTerm::<B>::new(&table, &over, 1.0, &dev).penalty(&plain, true, 1.0);
    let rel = e / (0.8 * e).floor();
    assert!((p.into_scalar() as f64 - (rel - 1.0)).abs() < 1e-4);
    // a few gradient steps on the penalty alone lower the expected cost
    let term = CostTerm::<AD>::new(&table, &over, 1.0, &dev);
    let to_ad = |a: ArchParams<B>| ArchParams::<AD> {
        alphas_normal: Param::from_tensor(Tensor::from_inner(a.alphas_normal.val()).require_grad()),
        alphas_reduce: Param::from_tensor(Tensor::from_inner(a.alphas_reduce.val()).require_grad()),
        betas_normal: Param::from_tensor(Tensor::from_inner(a.betas_normal.val()).require_grad()),
        betas_reduce: Param::from_tensor(Tensor::from_inner(a.betas_reduce.val()).require_grad()),
        proportions_normal: None,
        proportions_reduce: None,
    };
    let mut a = to_ad(plain);
    let mut optim = SgdConfig::new().init::<AD, ArchParams<AD>>();
    let mut last = e;
    for step in 0..5 {
        let loss = term.penalty(&a, true, 1.0);
        let grads = GradientsParams::from_grads(loss.backward(), &a);
        a = optim.step(10.0, a, grads);
        let now = expected_of(&term, &a, Resource::Params);
        assert!(now < last, "step {step}: {now} after {last}");
        last = now;
    }
    assert!(last < 0.9 * e, "{last} vs {e}");
}

#[test]
fn at_a_low_temperature_the_expected_cost_is_the_derived_cost() {
    let table = table();
    let dev = Default::default();
    let term = CostTerm::<B>::new(&table, &Budget::default(), 1.0, &dev);
    let mut rng = StdRng::seed_from_u64(11);
    for case in 0..5 {
        let rand = |rng: &mut StdRng, n: usize, k: f32| -> Vec<f32> {
            (0..n).map(|_| k * rng.random::<f32>()).collect()
        };
        let logits = [
            rand(&mut rng, EDGES * OPS, 3.0),
            rand(&mut rng, EDGES * OPS, 3.0),
        ];
        let betas = [rand(&mut rng, EDGES, 2.0), rand(&mut rng, EDGES, 2.0)];
        let a = arch(logits, betas);
        let plain = CellPair {
            normal: a.cell_weights(false, true).genotype(),
            reduce: a.cell_weights(true, true).genotype(),
        };
        let derived = table.pair_cost(&plain);
        let hot = term.expected(&a, true, 1.0);
        let cold = term.expected(&a, true, 1e-3);
        for (i, r) in Resource::COUNTED.into_iter().enumerate() {
            let want = r.of(&derived) as f64;
            // ties closer than ~1e-3 in the logits would mix two choices: 1%
            assert!(
                (cold[i].1 - want).abs() <= 0.01 * want,
                "case {case} {}: {} at 1e-3 vs derived {want} (at 1: {})",
                r.name(),
                cold[i].1,
                hot[i].1
            );
        }
    }
}

#[test]
fn aiming_pushes_back_below_the_lesser_of_the_limit_and_the_uniform_cost() {
    let table = table();
    let dev = Default::default();
    let r = Resource::Params;
    let zeros = vec![0.0; EDGES * OPS];
    let uniform = arch([zeros.clone(), zeros], [vec![0.0; EDGES], vec![0.0; EDGES]]);
    // every edge max_pool_3x3 (no parameters), logits 30: softmax within e^-30
    let mut pool = vec![0.0; EDGES * OPS];
    for e in 0..EDGES {
        pool[e * OPS + splitnas_models::Primitive::MaxPool3x3.index()] = 30.0;
    }
    let cheap = arch([pool.clone(), pool], [vec![0.0; EDGES], vec![0.0; EDGES]]);
    let free = CostTerm::<B>::new(&table, &Budget::default(), 1.0, &dev);
    let (u, c) = (
        expected_of(&free, &uniform, r),
        expected_of(&free, &cheap, r),
    );
    // the uniform architecture's cost from the table (f64 sums) is its expected cost
    let from_table = free.uniform().into_iter().find(|x| x.0 == r).unwrap().1;
    assert!((from_table - u).abs() <= 1e-5 * u, "{from_table} vs {u}");
    assert!(c < 0.8 * u, "pooling everywhere {c} vs uniform {u}");
    let penalty = |limit: f64, aim: bool, a: &ArchParams<B>| {
        let budget = Budget {
            max_params: Some(limit as u64),
            ..Default::default()
        };
        let t = CostTerm::<B>::new(&table, &budget, 2.0, &dev).aiming(aim);
        t.penalty(a, true, 1.0).into_scalar() as f64
    };
    // hand values, weight 2; f32 sums: 1e-4
    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    // a tight limit (below the uniform cost): aims at the limit from both sides
    let tight = ((u + c) / 2.0).floor();
    close(penalty(tight, true, &uniform), 2.0 * (u / tight - 1.0));
    close(penalty(tight, true, &cheap), 2.0 * (1.0 - c / tight));
    close(penalty(tight, false, &cheap), 0.0);
    // a loose limit: no push towards it, only back up to the uniform cost
    let loose = (2.0 * u).floor();
    close(penalty(loose, true, &uniform), 0.0);
    close(penalty(loose, true, &cheap), 2.0 * (u - c) / loose);
    close(penalty(loose, false, &cheap), 0.0);
}
