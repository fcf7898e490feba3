//! `compare --max-params/--max-macs`: every cell measured against one budget on the
//! evaluation network that `compare` trains. Random baselines are drawn among the cells
//! that meet it (`zoo::random` seeds in order, the first N that fit), published cells
//! over it are left out, and every row reports its cost.

use super::Compare;
use anyhow::{bail, Result};
use splitnas_models::{zoo, Cost, Genotype, NetworkConfig};

/// Random seeds tried before giving up on a budget.
const MAX_DRAWS: u64 = 100_000;

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

/// The cost of `g` in `compare`'s evaluation network.
pub fn cost(c: &Compare, g: &Genotype, data: (usize, usize, usize)) -> Result<Cost> {
    Ok(network(c, g.clone(), data).cost()?)
}

/// `n` random genotypes that meet the budget: `(seed, genotype)`, seeds from 1 up.
pub fn random_within(
    c: &Compare,
    n: usize,
    data: (usize, usize, usize),
) -> Result<Vec<(u64, Genotype)>> {
    let mut found = vec![];
    for seed in 1..=MAX_DRAWS {
        if found.len() == n {
            break;
        }
        let g = zoo::random(seed);
        if c.budget.admits(&cost(c, &g, data)?) {
            found.push((seed, g));
        }
    }
    if found.len() < n {
        bail!(
            "only {} of the first {MAX_DRAWS} random cells meet --max-params/--max-macs at --train-channels {} --train-layers {}; raise the budget or ask for fewer --random-genotypes",
            found.len(),
            c.train_channels,
            c.train_layers
        );
    }
    Ok(found)
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
