//! The cost model against the built modules: parameters counted from the Burn modules
//! (`count_parameters`), MACs by hand here and from the compiled int8 plan's shapes in
//! `tests/compile.rs` (an independent count: ONNX -> runtime int8 ops -> plan).

use super::*;
use crate::genotype::{CellGenotype, Genotype};
use crate::ops::Op;
use crate::{count_parameters, zoo, TestBackend};

/// A deterministic pseudo-random generator (xorshift), enough to draw genotypes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// A 4-node cell: per node two distinct inputs, any operation but `none`.
    fn cell(&mut self) -> CellGenotype {
        let mut edges = vec![];
        for node in 0..NODES {
            let a = self.below(node + 2);
            let b = (a + 1 + self.below(node + 1)) % (node + 2);
            for input in [a, b] {
                edges.push((Primitive::ALL[1 + self.below(7)], input));
            }
        }
        CellGenotype {
            edges,
            concat: vec![2, 3, 4, 5],
        }
    }

    fn pair(&mut self) -> CellPair {
        CellPair {
            normal: self.cell(),
            reduce: self.cell(),
        }
    }
}

#[test]
fn every_op_costs_what_its_module_counts() {
    let dev = Default::default();
    for &p in &Primitive::ALL {
        for (c, stride) in [(4, 1), (6, 2), (16, 1), (16, 2)] {
            let op = Op::<TestBackend>::new(p, c, stride, true, &dev);
            assert_eq!(
                op_cost(p, c, stride, 8).params,
                count_parameters(&op) as u64,
                "{} c={c} stride={stride}",
                p.name()
            );
        }
    }
    // MACs by hand, C=8 on a 28x28 map: sep_conv_3x3 = 2 x (8*9 + 8*8) x 28*28, its first
    // depthwise at stride 2 makes both blocks 14x14; dil_conv_5x5 at stride 2 = (8*25 + 64)
    // x 14*14; FactorizedReduce = 2 x (8 * 4) x 14*14; pools none.
    assert_eq!(op_cost(Primitive::SepConv3x3, 8, 1, 28).macs, 2 * 136 * 784);
    assert_eq!(op_cost(Primitive::SepConv3x3, 8, 2, 28).macs, 2 * 136 * 196);
    assert_eq!(op_cost(Primitive::DilConv5x5, 8, 2, 28).macs, 264 * 196);
    assert_eq!(op_cost(Primitive::SkipConnect, 8, 2, 28).macs, 64 * 196);
    assert_eq!(op_cost(Primitive::SkipConnect, 8, 1, 28), Cost::default());
    assert_eq!(op_cost(Primitive::AvgPool3x3, 8, 2, 28), Cost::default());
}

fn built_params(cfg: &NetworkConfig) -> u64 {
    count_parameters(&cfg.init::<TestBackend>(&Default::default()).unwrap()) as u64
}

#[test]
fn network_cost_counts_the_built_network() {
    // The PyTorch reference's DARTS_V2 C=36 L=20 (CIFAR, no auxiliary head): 3,349,342.
    let v2 = NetworkConfig::new(zoo::by_name("DARTS_V2").unwrap());
    assert_eq!(v2.cost().unwrap().params, 3_349_342);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..12 {
        let genotype = if case < 3 {
            zoo::by_name(zoo::NAMES[case]).unwrap()
        } else if case % 4 == 0 {
            Genotype::new(vec![rng.pair(), rng.pair(), rng.pair()]).unwrap()
        } else {
            let p = rng.pair();
            Genotype::uniform(p.normal, p.reduce).unwrap()
        };
        let (in_c, side) = if case % 2 == 0 { (1, 28) } else { (3, 32) };
        let cfg = NetworkConfig::new(genotype)
            .with_channels(4 + 2 * (case % 3))
            .with_layers(3 + case % 4)
            .with_in_channels(in_c)
            .with_image_size(side)
            .with_classes(5 + case)
            .with_identity(case % 3 == 1);
        assert_eq!(
            cfg.cost().unwrap().params,
            built_params(&cfg),
            "case {case}"
        );
        // the auxiliary head is training only: not counted
        if side == 32 {
            let aux = cfg.clone().with_auxiliary(true);
            assert_eq!(aux.cost().unwrap(), cfg.cost().unwrap());
        }
    }
}

#[test]
fn the_table_gives_the_network_cost_of_every_pair() {
    let mut rng = Rng(7);
    let shape = NetworkConfig::new(zoo::by_name("DARTS_V2").unwrap())
        .with_channels(8)
        .with_layers(5)
        .with_in_channels(1)
        .with_image_size(28);
    let table = CostTable::new(&shape, &[]).unwrap();
    for _ in 0..20 {
        let p = rng.pair();
        let mut cfg = shape.clone();
        cfg.genotype = Genotype::uniform(p.normal.clone(), p.reduce.clone()).unwrap();
        assert_eq!(table.pair_cost(&p), cfg.cost().unwrap());
    }
    // LFR-DARTS: stage 0 frozen, the searched pair fills stages 1 and 2 (stage 0's
    // reduction cell is never built, so its reduce is stage 1's).
    let frozen = rng.pair();
    let table = CostTable::new(&shape.clone().with_layers(8), &[frozen.clone()]).unwrap();
    for _ in 0..10 {
        let p = rng.pair();
        let stage0 = CellPair {
            normal: frozen.normal.clone(),
            reduce: p.reduce.clone(),
        };
        let mut cfg = shape.clone().with_layers(8);
        cfg.genotype = Genotype::new(vec![stage0, p.clone(), p.clone()]).unwrap();
        assert_eq!(table.pair_cost(&p), cfg.cost().unwrap());
        assert_eq!(cfg.cost().unwrap().params, built_params(&cfg));
    }
}

#[test]
fn bad_shapes_are_rejected_before_counting() {
    let cfg = NetworkConfig::new(zoo::by_name("DARTS_V2").unwrap()).with_image_size(30);
    assert_eq!(cfg.cost().unwrap_err(), NetworkError::ImageSize(30));
    assert_eq!(
        CostTable::new(&cfg, &[]).unwrap_err(),
        NetworkError::ImageSize(30)
    );
}
