//! Published genotypes (DARTS notation taken from `shared/reference/darts.md`).

use crate::genotype::{CellGenotype, Genotype, Primitive};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// Canonical zoo names.
pub const NAMES: [&str; 3] = ["DARTS_V1", "DARTS_V2", "PC_DARTS"];

const DARTS_V1: &str = "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])";

const DARTS_V2: &str = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";

const PC_DARTS: &str = "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))";

/// Looks a genotype up by name, case-insensitive (`PC_DARTS_cifar` is an alias of `PC_DARTS`).
pub fn by_name(name: &str) -> Option<Genotype> {
    let text = match name.to_ascii_uppercase().as_str() {
        "DARTS_V1" => DARTS_V1,
        "DARTS_V2" | "DARTS" => DARTS_V2,
        "PC_DARTS" | "PC_DARTS_CIFAR" => PC_DARTS,
        _ => return None,
    };
    Genotype::from_darts(text).ok()
}

/// A random cell pair (the random-search baseline of the DARTS papers): every node of
/// both cells takes 2 distinct inputs among its predecessors, each with an op drawn
/// uniformly from the 7 non-`none` primitives. Deterministic per `seed`.
pub fn random(seed: u64) -> Genotype {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cell = || {
        let mut edges = Vec::with_capacity(8);
        for node in 0..4 {
            let inputs: Vec<usize> = (0..node + 2).collect();
            let mut chosen: Vec<usize> = inputs.choose_multiple(&mut rng, 2).copied().collect();
            chosen.sort_unstable();
            for input in chosen {
                let op = Primitive::ALL[rng.random_range(1..Primitive::ALL.len())];
                edges.push((op, input));
            }
        }
        CellGenotype {
            edges,
            concat: vec![2, 3, 4, 5],
        }
    };
    let normal = cell();
    let reduce = cell();
    Genotype::uniform(normal, reduce).unwrap_or_else(|_| unreachable!("random cells are valid"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_genotypes_are_valid_seeded_and_varied() {
        let a = super::random(1);
        assert_eq!(a, super::random(1));
        assert_ne!(a, super::random(2));
        for g in (0..20).map(super::random) {
            for cell in [g.normal(), g.reduce()] {
                assert_eq!(cell.edges.len(), 8);
                for (node, pair) in cell.edges.chunks(2).enumerate() {
                    assert_ne!(pair[0].1, pair[1].1, "distinct inputs");
                    assert!(pair
                        .iter()
                        .all(|e| e.1 < node + 2 && e.0 != crate::Primitive::None));
                }
            }
            // Round trip through DARTS notation: a valid genotype.
            assert_eq!(crate::Genotype::from_darts(&g.to_darts()).unwrap(), g);
        }
    }

    #[test]
    fn names_are_case_insensitive_and_aliased() {
        assert_eq!(super::by_name("pc_darts_cifar"), super::by_name("PC_DARTS"));
        assert!(super::by_name("darts_v1").is_some());
        assert!(super::by_name("nope").is_none());
    }
}
