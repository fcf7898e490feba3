//! A budget inside a running search: the evaluation network it applies to, its cost
//! table for the current stage, the penalty of the architecture step, the derivation of
//! each epoch's genotype and the figures `search.jsonl` records.

use super::{derive, Budget, CostTerm, Infeasible};
use crate::error::TrainError;
use crate::supernet::{ArchParams, CellWeights, Supernet, SupernetConfig};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use splitnas_models::{zoo, CellPair, Cost, CostTable, NetworkConfig};

/// What a budgeted search must meet, saved in its `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BudgetSpec {
    /// The limits.
    pub limits: Budget,
    /// Initial channels C of the evaluation network (`train --channels`).
    pub channels: usize,
    /// Cells L of the evaluation network (`train --layers`).
    pub layers: usize,
    /// The evaluation network has the CSC-DARTS identity connection (`train --identity`).
    pub identity: bool,
    /// Weight of the penalty in the architecture loss.
    pub weight: f64,
    /// Temperature of the expected cost at the last search epoch (from 1, geometric).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Penalize only the excess over the limits; otherwise the penalty aims at them
    /// (`|expected / limit - 1|`), countering the drift to parameter-free ops.
    #[serde(default)]
    pub hinge: bool,
}

/// The final temperature when none is given.
pub const DEFAULT_TEMPERATURE: f64 = 0.05;

fn default_temperature() -> f64 {
    DEFAULT_TEMPERATURE
}

impl BudgetSpec {
    /// The evaluation network's sizes for the supernet's data (classes, input channels
    /// and side); its genotype is a placeholder.
    pub fn network(&self, supernet: &SupernetConfig) -> NetworkConfig {
        let placeholder = zoo::by_name("DARTS_V2").unwrap_or_else(|| unreachable!("in the zoo"));
        NetworkConfig::new(placeholder)
            .with_channels(self.channels)
            .with_layers(self.layers)
            .with_classes(supernet.classes)
            .with_in_channels(supernet.in_channels)
            .with_image_size(supernet.image_size)
            .with_identity(self.identity)
    }

    /// The cost table when the stages before `frozen.len()` are fixed to `frozen`; an
    /// error when no cell pair can meet the limits.
    pub fn table(
        &self,
        supernet: &SupernetConfig,
        frozen: &[CellPair],
    ) -> Result<CostTable, TrainError> {
        let table = CostTable::new(&self.network(supernet), frozen)?;
        super::check(&table, &self.limits)?;
        Ok(table)
    }
}

/// Expected cost (fractional) and the derived pair's cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochCost {
    /// Softmax-weighted parameters.
    pub expected_params: f64,
    /// Softmax-weighted MACs per image.
    pub expected_macs: f64,
    /// The derived genotype's network.
    pub derived: Cost,
    /// The limits.
    pub budget: Budget,
    /// The temperature of the expected cost.
    pub temperature: f64,
}

/// A budget during a search stage.
#[derive(Clone, Debug)]
pub struct Guard<B: Backend> {
    spec: BudgetSpec,
    table: CostTable,
    term: CostTerm<B>,
    edge_norm: bool,
    tau: f64,
}

impl<B: Backend> Guard<B> {
    /// The budget of `spec` for the stage after the `frozen` ones.
    pub fn new(
        spec: &BudgetSpec,
        supernet: &SupernetConfig,
        frozen: &[CellPair],
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let table = spec.table(supernet, frozen)?;
        let term = CostTerm::new(&table, &spec.limits, spec.weight, device).aiming(!spec.hinge);
        Ok(Guard {
            spec: spec.clone(),
            table,
            term,
            edge_norm: supernet.edge_norm,
            tau: 1.0,
        })
    }

    /// Sets the temperature for architecture epoch `done` of `total` (0-based; before
    /// the first, `done = None`): `temperature^((done + 1) / total)`, 1 during warm-up.
    pub fn set_progress(&mut self, done: Option<usize>, total: usize) {
        self.tau = match done {
            None => 1.0,
            Some(j) => self
                .spec
                .temperature
                .powf((j + 1) as f64 / total.max(1) as f64),
        };
    }

    /// The current temperature.
    pub fn temperature(&self) -> f64 {
        self.tau
    }

    /// The penalty added to the architecture loss, `[1]`.
    pub fn penalty(&self, arch: &ArchParams<B>) -> Tensor<B, 1> {
        self.term.penalty(arch, self.edge_norm, self.tau)
    }

    /// The best pair of `normal` and `reduce` that meets the budget.
    pub fn derive(
        &self,
        normal: &CellWeights,
        reduce: &CellWeights,
    ) -> Result<CellPair, Infeasible> {
        derive([normal, reduce], &self.table, &self.spec.limits)
    }

    /// The figures of an epoch whose architecture is `arch` and derived pair `pair`.
    pub fn report(&self, arch: &ArchParams<B>, pair: &CellPair) -> EpochCost {
        let e = self.term.expected(arch, self.edge_norm, self.tau);
        let get = |r| e.iter().find(|x| x.0 == r).map_or(0.0, |x| x.1);
        EpochCost {
            expected_params: get(super::Resource::Params),
            expected_macs: get(super::Resource::Macs),
            derived: self.table.pair_cost(pair),
            budget: self.spec.limits,
            temperature: self.tau,
        }
    }
}

impl<B: AutodiffBackend> Guard<B> {
    /// `grads` (the architecture gradients of the loss) plus the penalty's gradients.
    pub fn add_penalty(&self, net: &Supernet<B>, grads: GradientsParams) -> GradientsParams {
        let arch = net.arch.clone();
        let mut g = self.penalty(&arch).backward();
        let mut add = AddGrads {
            a: grads,
            b: GradientsParams::from_module(&mut g, &arch),
            out: GradientsParams::new(),
        };
        arch.visit(&mut add);
        add.out
    }
}

/// The sum of two gradient sets, per parameter.
struct AddGrads {
    a: GradientsParams,
    b: GradientsParams,
    out: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for AddGrads {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id = param.id;
        let sum = match (
            self.a.remove::<B::InnerBackend, D>(id),
            self.b.remove::<B::InnerBackend, D>(id),
        ) {
            (Some(a), Some(b)) => a.add(b),
            (Some(g), None) | (None, Some(g)) => g,
            (None, None) => return,
        };
        self.out.register(id, sum);
    }
}
