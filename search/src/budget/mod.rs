//! Hardware-aware search: budgets on the evaluation network a search's genotype builds
//! (parameters, MACs), the differentiable expected cost the architecture step pays for
//! exceeding them, and the derivation of the best cell pair that meets them.
//!
//! Costs come from [`splitnas_models::CostTable`]: the evaluation network (`--channels`,
//! `--layers` of `train`, not the supernet) counted per (cell type, node, input, op).
//!
//! **Expected cost.** A smooth stand-in for the cost of the genotype the derivation
//! will pick, at a temperature `tau`: per edge `e`, the ops other than `none` (derivation
//! never picks it) weighted `q_e = softmax(alpha_e[1..] / tau)`, so the edge's cost is
//! `sum_k q_ek cost_ek`; per node, edge `e` counts with its share of the 2 kept edges,
//! `sigmoid((ln s_e - theta) / tau)` scaled to sum to 2 over the node, where
//! `s_e = beta_e max_k softmax(alpha_e)_k` is the strength the derivation ranks edges by
//! and `theta` lies halfway between the node's 2nd and 3rd strongest. The network's
//! expected cost is the fixed part plus every edge's share times its cost. At `tau = 1`
//! it is the softmax-weighted mean over the ops (uniform weights: the mean op); as `tau`
//! falls it tends to the derived genotype's cost (tested at 1e-3). A search lowers `tau`
//! geometrically from 1 to `temperature` (default 0.05) over its architecture epochs, so
//! the term's gradient, broad at first, ends on the choices the derivation is about to
//! make. It depends on alphas and betas alone.
//!
//! **Penalty.** The architecture loss gains `weight * sum_r relu(E_r / B_r - 1)` over the
//! budgets `r`: a push towards cheaper choices for every budget exceeded (a hinge, like
//! ProxylessNAS's and FBNet's resource losses, as a soft constraint). Unless the hinge
//! alone is asked for, plus `relu(min(1, U_r / B_r) - E_r / B_r)`, `U_r` the uniform
//! architecture's expected cost: a tight budget is aimed at from both sides (the pressure
//! down would carry on to parameter-free ops), a loose one only keeps the cell from
//! drifting below the uniform mixture.
//!
//! **Constrained derivation.** DARTS' derivation (per node the 2 strongest edges, each
//! with its best op) is kept when it meets every budget. Otherwise each node's choice
//! (2 distinct inputs, an op each) is changed greedily: the change that removes the most
//! excess per unit of lost score (score = `sum ln(alpha_ek beta_e)` of the kept edges)
//! until none is left; then every node is raised again to its best choice that keeps the
//! pair within budget. A pair is returned only when it meets every budget.

use serde::{Deserialize, Serialize};
use splitnas_models::{Cost, CostTable};

mod derive;
mod expected;
mod guard;
pub mod sram;
#[cfg(test)]
mod tests;

pub use derive::derive;
pub use expected::CostTerm;
pub use guard::{BudgetSpec, EpochCost, Guard, DEFAULT_TEMPERATURE};
pub use sram::SramOracle;

/// A resource a budget limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Learnable parameters.
    Params,
    /// Multiply-accumulates per image.
    Macs,
    /// Bytes of the int8 microcontroller plan's arena.
    Sram,
    /// Nanoseconds per image, from a latency table.
    Latency,
}

impl Resource {
    /// Every resource, in report order.
    pub const ALL: [Resource; 4] = [
        Resource::Params,
        Resource::Macs,
        Resource::Sram,
        Resource::Latency,
    ];

    /// The amount of this resource in `c`.
    pub fn of(self, c: &Cost) -> u64 {
        match self {
            Resource::Params => c.params,
            Resource::Macs => c.macs,
            Resource::Sram => c.sram,
            Resource::Latency => c.latency_ns,
        }
    }

    /// The resources counted from shapes, always reported.
    pub const COUNTED: [Resource; 2] = [Resource::Params, Resource::Macs];

    /// Its name in reports (`params`, `macs`, `sram_bytes`, `latency_ns`).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Params => "params",
            Resource::Macs => "macs",
            Resource::Sram => "sram_bytes",
            Resource::Latency => "latency_ns",
        }
    }
}

/// Limits on the evaluation network (`None`: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Most parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_params: Option<u64>,
    /// Most MACs per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_macs: Option<u64>,
    /// Most bytes of the microcontroller plan's arena.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sram: Option<u64>,
    /// Most nanoseconds per image (by the latency table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ns: Option<u64>,
}

impl Budget {
    /// The limit on `r`.
    pub fn limit(&self, r: Resource) -> Option<u64> {
        match r {
            Resource::Params => self.max_params,
            Resource::Macs => self.max_macs,
            Resource::Sram => self.max_sram,
            Resource::Latency => self.max_latency_ns,
        }
    }

    /// The limited resources and their limits.
    pub fn limits(&self) -> Vec<(Resource, u64)> {
        Resource::ALL
            .iter()
            .filter_map(|&r| self.limit(r).map(|l| (r, l)))
            .collect()
    }

    /// No limit set.
    pub fn is_empty(&self) -> bool {
        self.limits().is_empty()
    }

    /// Whether `c` meets every limit.
    pub fn admits(&self, c: &Cost) -> bool {
        self.limits().iter().all(|&(r, l)| r.of(c) <= l)
    }

    /// Sum over the limits of the relative excess `max(0, cost / limit - 1)`.
    pub(crate) fn excess(&self, c: &Cost) -> f64 {
        self.limits()
            .iter()
            .map(|&(r, l)| (r.of(c) as f64 / l.max(1) as f64 - 1.0).max(0.0))
            .sum()
    }
}

/// No cell pair can meet a budget.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no cell meets the {resource} budget of {limit}: the cheapest cell pair gives {cheapest} {resource} at these sizes")]
pub struct Infeasible {
    /// The resource.
    pub resource: &'static str,
    /// Its limit.
    pub limit: u64,
    /// The least any cell pair gives.
    pub cheapest: u64,
}

/// The least of each resource any pair of 4-node cells gives (each resource on its own:
/// per node the two cheapest distinct inputs with their cheapest ops other than `none`).
pub fn cheapest(table: &CostTable) -> Vec<(Resource, u64)> {
    Resource::ALL
        .iter()
        .map(|&r| {
            let mut total = r.of(&table.fixed);
            for cell in &table.edges {
                for inputs in cell {
                    let mut per_input: Vec<u64> = inputs
                        .iter()
                        .map(|ops| ops[1..].iter().map(|c| r.of(c)).min().unwrap_or(0))
                        .collect();
                    per_input.sort_unstable();
                    total += per_input.iter().take(2).sum::<u64>();
                }
            }
            (r, total)
        })
        .collect()
}

/// Checks before a search that some cell pair meets every limit of `budget` on its own.
pub fn check(table: &CostTable, budget: &Budget) -> Result<(), Infeasible> {
    for (r, least) in cheapest(table) {
        if let Some(limit) = budget.limit(r).filter(|&l| least > l) {
            return Err(Infeasible {
                resource: r.name(),
                limit,
                cheapest: least,
            });
        }
    }
    Ok(())
}
