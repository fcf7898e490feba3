//! SRAM budgets (`--max-sram`): the arena of the evaluation network's int8
//! microcontroller plan, as `splitnas compile` makes it.
//!
//! The arena is a peak over the plan, not a sum over edges (measured at C=8 L=5: 62,720
//! to 68,992 bytes, all-pooling cells the largest), and only the export crate can make
//! the plan, so a search is given the plan as an oracle ([`SramOracle`]; the CLI passes
//! `export::plan::network_plan`) and uses it in two ways:
//! - an **additive model** for the expected cost and the derivation: per (cell type, op)
//!   a share of the arena, fitted by least squares on the arenas of the 7 uniform pairs
//!   (one op on every edge) and [`RANDOM_SAMPLES`] seeded random pairs, then shifted so
//!   that every share is >= 0 (each cell type has exactly 8 edges, so the shift moves into
//!   the fixed part without changing any pair's modelled arena);
//! - the **arena itself** for every derived pair: when the model underestimates it and
//!   the plan exceeds the budget, the derivation is repeated with the modelled limit
//!   lowered by the overshoot; a pair is returned only when its plan meets the budget.

use splitnas_models::{zoo, CellGenotype, CellPair, Cost, CostTable, Genotype, NetworkConfig};
use splitnas_models::{Primitive, NODES};
use std::sync::Arc;

/// Random pairs the arena model is fitted on, besides the 7 uniform ones.
pub const RANDOM_SAMPLES: usize = 24;

/// The arena in bytes of the int8 plan of a network (an error as text).
pub type ArenaFn = dyn Fn(&NetworkConfig) -> Result<u64, String> + Send + Sync;

/// The microcontroller plan's arena of an evaluation network, given to a search.
#[derive(Clone)]
pub struct SramOracle(pub Arc<ArenaFn>);

impl std::fmt::Debug for SramOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SramOracle")
    }
}

impl SramOracle {
    /// The arena of `shape`'s network with the stages before `frozen.len()` fixed to
    /// `frozen` and `pair` in every later stage.
    pub fn arena(
        &self,
        shape: &NetworkConfig,
        frozen: &[CellPair],
        pair: &CellPair,
    ) -> Result<u64, String> {
        let stages = frozen.iter().cloned().chain([pair.clone()]).collect();
        let genotype = Genotype::new(stages).map_err(|e| e.to_string())?;
        let mut cfg = shape.clone();
        cfg.genotype = genotype;
        (self.0)(&cfg)
    }
}

/// The fitted additive model of the arena.
#[derive(Clone, Debug)]
pub struct ArenaModel {
    /// Arena of no searched edge, bytes.
    pub fixed: u64,
    /// `[cell type][op]`: the share of one edge with that op (>= 0; `none` 0).
    pub share: [[u64; 8]; 2],
    /// Root mean square error of the fit over its samples, bytes.
    pub rms: f64,
    /// The pairs the model was fitted on, with their arenas.
    pub samples: Vec<(CellPair, u64)>,
}

impl ArenaModel {
    /// The modelled arena of `pair`.
    pub fn of(&self, pair: &CellPair) -> u64 {
        let mut total = self.fixed;
        for (t, g) in [&pair.normal, &pair.reduce].into_iter().enumerate() {
            for &(op, _) in &g.edges {
                total += self.share[t][op.index()];
            }
        }
        total
    }

    /// `table` with every entry's `sram` set from the model.
    pub fn apply(&self, table: &mut CostTable) {
        table.fixed.sram = self.fixed;
        for (t, cell) in table.edges.iter_mut().enumerate() {
            for inputs in cell.iter_mut() {
                for ops in inputs.iter_mut() {
                    for (k, c) in ops.iter_mut().enumerate() {
                        c.sram = self.share[t][k];
                    }
                }
            }
        }
    }
}

/// One op on every edge of both cells, each node reading s0 and s1.
fn uniform(op: Primitive) -> CellPair {
    let cell = CellGenotype {
        edges: (0..NODES).flat_map(|_| [(op, 0), (op, 1)]).collect(),
        concat: (2..2 + NODES).collect(),
    };
    CellPair {
        normal: cell.clone(),
        reduce: cell,
    }
}

/// Fits the arena model of `shape`'s network (stages before `frozen.len()` fixed).
pub fn fit(
    oracle: &SramOracle,
    shape: &NetworkConfig,
    frozen: &[CellPair],
) -> Result<ArenaModel, String> {
    let mut pairs: Vec<CellPair> = Primitive::ALL[1..].iter().map(|&p| uniform(p)).collect();
    pairs.extend((0..RANDOM_SAMPLES as u64).map(|s| zoo::random(0x5a4a + s).stage(0).clone()));
    let mut samples = Vec::with_capacity(pairs.len());
    for p in pairs {
        let a = oracle.arena(shape, frozen, &p)?;
        samples.push((p, a));
    }
    // features: per (type, op 1..8) the number of edges with that op (14 columns)
    const F: usize = 14;
    let features = |p: &CellPair| {
        let mut x = [0.0f64; F];
        for (t, g) in [&p.normal, &p.reduce].into_iter().enumerate() {
            for &(op, _) in &g.edges {
                x[t * 7 + op.index() - 1] += 1.0;
            }
        }
        x
    };
    // normal equations with a tiny ridge (the design has full rank with the random pairs)
    let mut a = [[0.0f64; F]; F];
    let mut b = [0.0f64; F];
    for (p, y) in &samples {
        let x = features(p);
        for i in 0..F {
            b[i] += x[i] * *y as f64;
            for j in 0..F {
                a[i][j] += x[i] * x[j];
            }
        }
    }
    let trace: f64 = (0..F).map(|i| a[i][i]).sum();
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += 1e-9 * trace;
    }
    let coef = solve(a, b).ok_or("the arena model's fit is singular")?;
    let rms = (samples
        .iter()
        .map(|(p, y)| {
            let x = features(p);
            let m: f64 = (0..F).map(|i| x[i] * coef[i]).sum();
            (m - *y as f64).powi(2)
        })
        .sum::<f64>()
        / samples.len() as f64)
        .sqrt();
    let mut share = [[0u64; 8]; 2];
    let mut fixed = 0.0;
    for t in 0..2 {
        let c = &coef[t * 7..t * 7 + 7];
        let min = c.iter().copied().fold(f64::INFINITY, f64::min);
        fixed += 2.0 * NODES as f64 * min;
        for k in 0..7 {
            share[t][k + 1] = (c[k] - min).round() as u64;
        }
    }
    Ok(ArenaModel {
        fixed: fixed.round().max(0.0) as u64,
        share,
        rms,
        samples,
    })
}

/// Gaussian elimination with partial pivoting; `None` when singular.
fn solve<const N: usize>(mut a: [[f64; N]; N], mut b: [f64; N]) -> Option<[f64; N]> {
    for col in 0..N {
        let piv = (col..N).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..N {
            let f = a[row][col] / a[col][col];
            for k in col..N {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; N];
    for i in (0..N).rev() {
        let s: f64 = (i + 1..N).map(|k| a[i][k] * x[k]).sum();
        x[i] = (b[i] - s) / a[i][i];
    }
    Some(x)
}

/// The cost of `pair` with its real arena.
pub fn priced(table: &CostTable, pair: &CellPair, arena: u64) -> Cost {
    Cost {
        sram: arena,
        ..table.pair_cost(pair)
    }
}

#[cfg(test)]
mod tests {
    //! The fit against hand-made arenas (an additive one it must recover exactly, a
    //! non-additive one it can only approximate), and the derivation against the arena
    //! itself: never a pair whose arena exceeds the budget.
    use super::*;
    use crate::budget::{Budget, BudgetSpec, Guard};
    use crate::error::TrainError;
    use crate::supernet::{CellWeights, SupernetConfig, EDGES, OPS};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type B = burn::backend::Flex;

    fn shape() -> NetworkConfig {
        NetworkConfig::new(zoo::by_name("DARTS_V2").unwrap())
            .with_channels(8)
            .with_layers(5)
            .with_in_channels(1)
            .with_image_size(28)
    }

    /// An arena that is a sum over edges: 50,000 + per (type, op) bytes.
    fn additive(cfg: &NetworkConfig) -> Result<u64, String> {
        let p = cfg.genotype.stage(0);
        let mut a = 50_000;
        for (t, g) in [&p.normal, &p.reduce].into_iter().enumerate() {
            for &(op, _) in &g.edges {
                a += (op.index() as u64 * 37 + 11) * (t as u64 + 1);
            }
        }
        Ok(a)
    }

    /// An arena that is a peak, not a sum: 60,000 + the largest (op, input) term of the
    /// normal cell + 3 bytes per pooling edge of the reduction cell.
    fn peaked(cfg: &NetworkConfig) -> Result<u64, String> {
        let p = cfg.genotype.stage(0);
        let peak = p
            .normal
            .edges
            .iter()
            .map(|&(op, input)| (8 - op.index() as u64) * 300 + input as u64 * 97)
            .max()
            .unwrap_or(0);
        let pools = p
            .reduce
            .edges
            .iter()
            .filter(|e| matches!(e.0, Primitive::MaxPool3x3 | Primitive::AvgPool3x3))
            .count() as u64;
        Ok(60_000 + peak + 3 * pools)
    }

    fn oracle(f: fn(&NetworkConfig) -> Result<u64, String>) -> SramOracle {
        SramOracle(Arc::new(f))
    }

    #[test]
    fn fit_recovers_an_additive_arena() {
        let o = oracle(additive);
        let m = fit(&o, &shape(), &[]).unwrap();
        assert!(m.rms < 1.0, "rms {}", m.rms);
        assert_eq!(m.samples.len(), 7 + RANDOM_SAMPLES);
        for seed in 1000..1020 {
            let pair = zoo::random(seed).stage(0).clone();
            let want = o.arena(&shape(), &[], &pair).unwrap();
            assert!(m.of(&pair).abs_diff(want) <= 1, "{} vs {want}", m.of(&pair));
        }
        // the shares are shifted to >= 0 with `none` at 0, the rest kept in `fixed`
        for t in 0..2 {
            assert_eq!(m.share[t][0], 0);
            assert_eq!(m.share[t][1..].iter().min(), Some(&0));
        }
    }

    #[test]
    fn solve_matches_a_hand_solution() {
        // 2x + y = 5, x + 3y = 10: x = 1, y = 3
        let x = solve([[2.0, 1.0], [1.0, 3.0]], [5.0, 10.0]).unwrap();
        assert!((x[0] - 1.0).abs() < 1e-12 && (x[1] - 3.0).abs() < 1e-12);
        assert!(solve([[1.0, 2.0], [2.0, 4.0]], [1.0, 2.0]).is_none());
    }

    fn weights(rng: &mut StdRng) -> CellWeights {
        let softmax = |v: Vec<f32>| {
            let e: Vec<f32> = v.iter().map(|x| x.exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect::<Vec<f32>>()
        };
        CellWeights {
            alphas: (0..EDGES)
                .map(|_| softmax((0..OPS).map(|_| 3.0 * rng.random::<f32>()).collect()))
                .collect(),
            betas: (0..EDGES).map(|_| 0.2 + rng.random::<f32>()).collect(),
            proportions: None,
        }
    }

    fn spec(max_sram: u64) -> BudgetSpec {
        BudgetSpec {
            limits: Budget {
                max_sram: Some(max_sram),
                ..Default::default()
            },
            channels: 8,
            layers: 5,
            identity: false,
            weight: 1.0,
            temperature: 0.05,
            hinge: false,
            latency: None,
        }
    }

    fn supernet() -> SupernetConfig {
        SupernetConfig::new()
            .with_channels(4)
            .with_layers(5)
            .with_in_channels(1)
            .with_image_size(28)
    }

    #[test]
    fn derivation_never_exceeds_the_arena_budget() {
        let o = oracle(peaked);
        let dev = Default::default();
        let mut rng = StdRng::seed_from_u64(7);
        // limits from just above the least possible arena (60,397: dil_conv_5x5 on s0
        // and s1 everywhere, no pooling in the reduction cell) to above the largest
        for limit in [60_400, 60_700, 61_000, 61_500, 62_000, 63_000] {
            let guard = Guard::<B>::new(&spec(limit), &supernet(), &[], Some(&o), &dev).unwrap();
            for _ in 0..6 {
                let (n, r) = (weights(&mut rng), weights(&mut rng));
                let pair = guard.derive(&n, &r).unwrap();
                let a = o.arena(&shape(), &[], &pair).unwrap();
                assert!(a <= limit, "{a} > {limit}: {pair:?}");
                assert_eq!(guard.price(&pair).unwrap().sram, a);
            }
        }
    }

    #[test]
    fn an_impossible_or_unpriced_arena_budget_is_refused_before_searching() {
        let dev = Default::default();
        let e = Guard::<B>::new(&spec(59_000), &supernet(), &[], Some(&oracle(peaked)), &dev)
            .unwrap_err();
        assert!(
            matches!(&e, TrainError::Budget(i) if i.resource == "sram_bytes" && i.cheapest >= 60_000),
            "{e}"
        );
        let e = Guard::<B>::new(&spec(70_000), &supernet(), &[], None, &dev).unwrap_err();
        assert!(e.to_string().starts_with("--max-sram"), "{e}");
    }
}
