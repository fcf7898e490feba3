//! `compare --max-params/--max-macs/--max-sram`: every cell measured against one budget on the
//! evaluation network that `compare` trains. Random baselines meet it: `zoo::random(seed)`
//! (seeds 1..N), then, while it is over the budget, one of its edges with a parametric op
//! (drawn at random) gets a random pooling op instead; published cells over it are left
//! out, and every row reports its cost. (Drawing random cells until one fits would
//! almost never end at tight budgets: 3 of the first 100,000 cells meet 20k parameters at
//! C=8 L=5, and those few are the all-pooling ones.) The SRAM is different: the arena is
//! not monotone in the ops (all-pooling cells have the largest), so a random cell within
//! the other budgets but over the SRAM one is drawn again from seed + 1000 k.

use super::Compare;
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use splitnas_models::{zoo, Cost, Genotype, NetworkConfig, Primitive};
use splitnas_search::budget::Budget;

/// The evaluation network `compare` trains, with genotype `g`, for the data's sizes.
fn network(c: &Compare, g: Genotype, data: (usize, usize, usize)) -> NetworkConfig {
    let (classes, in_channels, side) = data;
    NetworkConfig::new(g)
        .with_channels(c.train_channels)
        .with_layers(c.train_layers)
        .with_classes(classes)
        .with_in_channels(in_channels)
        .with_image_size(side)
}

/// The cost of `g` in `compare`'s evaluation network (with its int8 plan's arena under
/// an SRAM budget).
pub fn cost(c: &Compare, g: &Genotype, data: (usize, usize, usize)) -> Result<Cost> {
    let net = network(c, g.clone(), data);
    let mut cost = net.cost()?;
    if c.budget.max_sram.is_some() {
        cost.sram = (crate::cmd::budget::sram_oracle().0)(&net)
            .map_err(|e| anyhow::anyhow!("planning the int8 network of {}: {e}", g.to_darts()))?;
    }
    Ok(cost)
}

/// Draws of a random cell before `compare` gives up on an SRAM budget.
const SRAM_DRAWS: u64 = 200;

/// `n` random genotypes that meet the budget: `(seed, genotype)`, seeds 1..=n (see the
/// module notes).
pub fn random_within(
    c: &Compare,
    n: usize,
    data: (usize, usize, usize),
) -> Result<Vec<(u64, Genotype)>> {
    let floor = [Primitive::MaxPool3x3, Primitive::AvgPool3x3];
    let mut least_arena = u64::MAX;
    (1..=n as u64)
        .map(|first| {
          for draw in 0..SRAM_DRAWS {
            let seed = first + 1000 * draw;
            let g = zoo::random(seed);
            let mut cells = [g.normal().clone(), g.reduce().clone()];
            let mut rng = StdRng::seed_from_u64(seed ^ 0xb0d9e7);
            loop {
                let g = Genotype::uniform(cells[0].clone(), cells[1].clone())?;
                let cost = cost(c, &g, data)?;
                if c.budget.admits(&cost) {
                    return Ok((seed, g));
                }
                let counted = Budget { max_sram: None, ..c.budget };
                if counted.admits(&cost) {
                    // within parameters and MACs, over the SRAM: draw again
                    least_arena = least_arena.min(cost.sram);
                    break;
                }
                // the edges whose op has parameters: convolutions, FactorizedReduce
                let paid: Vec<(usize, usize)> = (0..2)
                    .flat_map(|t| (0..cells[t].edges.len()).map(move |j| (t, j)))
                    .filter(|&(t, j)| {
                        let (op, input) = cells[t].edges[j];
                        let strided = t == 1 && input < 2;
                        !(floor.contains(&op) || (op == Primitive::SkipConnect && !strided))
                    })
                    .collect();
                let Some(&(t, j)) = paid.get(rng.random_range(0..paid.len().max(1))) else {
                    bail!(
                        "no cell meets --max-params/--max-macs at --train-channels {} --train-layers {}: the all-pooling cell costs {} parameters, {} MACs",
                        c.train_channels,
                        c.train_layers,
                        cost.params,
                        cost.macs
                    );
                };
                cells[t].edges[j].0 = floor[rng.random_range(0..2)];
            }
          }
          bail!(
              "no random cell of {SRAM_DRAWS} draws meets --max-sram {} at --train-channels {} --train-layers {} (the smallest arena drawn: {least_arena} bytes)",
              c.budget.max_sram.unwrap_or(0),
              c.train_channels,
              c.train_layers
          )
        })
        .collect()
}

/// The search flags that carry the budget to a child search.
pub fn search_flags(c: &Compare) -> Vec<String> {
    let mut v = vec![];
    if let Some(n) = c.budget.max_params {
        v.extend(["--max-params".to_string(), n.to_string()]);
    }
    if let Some(n) = c.budget.max_macs {
        v.extend(["--max-macs".to_string(), n.to_string()]);
    }
    if let Some(n) = c.budget.max_sram {
        v.extend(["--max-sram".to_string(), n.to_string()]);
    }
    if !v.is_empty() {
        v.extend([
            "--eval-channels".to_string(),
            c.train_channels.to_string(),
            "--eval-layers".to_string(),
            c.train_layers.to_string(),
        ]);
    }
    v
}
