//! A budget inside a running search: the evaluation network it applies to, its cost
//! table for the current stage, the penalty of the architecture step, the derivation of
//! each epoch's genotype and the figures `search.jsonl` records.

use super::derive::pair_score;
use super::sram::{fit, priced, ArenaModel, SramOracle};
use super::{derive, Budget, CostTerm, Infeasible, Resource};
use crate::error::TrainError;
use crate::supernet::{ArchParams, CellWeights, Supernet, SupernetConfig};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use splitnas_models::{zoo, CellPair, Cost, CostTable, LatencyTable, NetworkConfig};
use std::sync::{Arc, Mutex};

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
    /// Penalize only the excess over the limits; otherwise the penalty also pushes back
    /// below the lesser of each limit and the uniform architecture's expected cost,
    /// countering the drift to parameter-free ops ([`super::CostTerm::penalty`]).
    #[serde(default)]
    pub hinge: bool,
    /// The latency table the latency limit is priced with (`--latency-table`), kept
    /// here so that a resumed search prices as the first run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyTable>,
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

    /// The cost table when the stages before `frozen.len()` are fixed to `frozen` (its
    /// `sram` from the fitted arena model when the SRAM is limited, see
    /// [`super::sram`]); an error when no cell pair can meet the limits.
    pub fn table(
        &self,
        supernet: &SupernetConfig,
        frozen: &[CellPair],
        oracle: Option<&SramOracle>,
    ) -> Result<(CostTable, Option<ArenaModel>), TrainError> {
        let shape = self.network(supernet);
        let mut table = CostTable::new(&shape, frozen)?;
        match (&self.latency, self.limits.max_latency_ns) {
            (Some(lut), _) => table
                .apply_latency(&shape, frozen, lut)
                .map_err(|e| TrainError::Latency(e.to_string()))?,
            (None, Some(_)) => {
                return Err(TrainError::Latency(
                    "a latency budget needs a latency table (splitnas bench ops --out lut.json)"
                        .into(),
                ))
            }
            (None, None) => {}
        }
        let counted = Budget {
            max_sram: None,
            ..self.limits
        };
        super::check(&table, &counted)?;
        let Some(limit) = self.limits.max_sram else {
            return Ok((table, None));
        };
        let oracle = oracle.ok_or_else(|| {
            TrainError::Sram(
                "an SRAM budget needs the microcontroller plan (the splitnas CLI passes it)".into(),
            )
        })?;
        let mut model = fit(oracle, &shape, frozen).map_err(TrainError::Sram)?;
        model.apply(&mut table);
        let least = model.samples.iter().map(|s| s.1).min().unwrap_or(u64::MAX);
        if least > limit {
            // the modelled cheapest pair, priced by the plan itself
            let cheapest = super::derive::cheapest_pair(&table, Resource::Sram);
            let arena = oracle
                .arena(&shape, frozen, &cheapest)
                .map_err(TrainError::Sram)?;
            model.samples.push((cheapest, arena));
            if arena > limit {
                return Err(Infeasible {
                    resource: Resource::Sram.name(),
                    limit,
                    cheapest: arena.min(least),
                }
                .into());
            }
        }
        Ok((table, Some(model)))
    }
}

/// Expected cost (fractional) and the derived pair's cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochCost {
    /// Softmax-weighted parameters.
    pub expected_params: f64,
    /// Softmax-weighted MACs per image.
    pub expected_macs: f64,
    /// Expected arena bytes (the additive model's), when the SRAM is limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sram: Option<f64>,
    /// Expected nanoseconds per image, when the latency is limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_latency_ns: Option<f64>,
    /// The derived genotype's network.
    pub derived: Cost,
    /// The limits.
    pub budget: Budget,
    /// The temperature of the expected cost.
    pub temperature: f64,
}

impl EpochCost {
    /// The figures as the search prints them after `cost: `.
    pub fn line(&self) -> String {
        let mut s = format!(
            "expected params={:.0} macs={:.0} (temperature {:.3}), derived params={} macs={}",
            self.expected_params,
            self.expected_macs,
            self.temperature,
            self.derived.params,
            self.derived.macs
        );
        if let Some(e) = self.expected_sram {
            s += &format!("; sram_bytes expected={e:.0} derived={}", self.derived.sram);
        }
        if let Some(e) = self.expected_latency_ns {
            s += &format!(
                "; latency_ms expected={:.3} derived={:.3}",
                e / 1e6,
                self.derived.latency_ns as f64 / 1e6
            );
        }
        s
    }
}

/// A budget during a search stage.
#[derive(Clone, Debug)]
pub struct Guard<B: Backend> {
    spec: BudgetSpec,
    table: CostTable,
    term: CostTerm<B>,
    edge_norm: bool,
    tau: f64,
    /// The plan's arena when the SRAM is limited: oracle, network shape, frozen stages
    /// and the arenas already known.
    arena: Option<Arena>,
}

#[derive(Clone, Debug)]
struct Arena {
    oracle: SramOracle,
    shape: NetworkConfig,
    frozen: Vec<CellPair>,
    known: Arc<Mutex<Vec<(CellPair, u64)>>>,
    /// The plan's arena minus the model's at the last derived pair, bytes: the model's
    /// fixed part is moved by it (a correction anchored where the search now is).
    residual: Arc<Mutex<f64>>,
}

impl Arena {
    fn of(&self, pair: &CellPair) -> Result<u64, TrainError> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = known.iter().find(|k| &k.0 == pair) {
            return Ok(k.1);
        }
        let a = self
            .oracle
            .arena(&self.shape, &self.frozen, pair)
            .map_err(TrainError::Sram)?;
        known.push((pair.clone(), a));
        Ok(a)
    }
}

impl<B: Backend> Guard<B> {
    /// The budget of `spec` for the stage after the `frozen` ones.
    pub fn new(
        spec: &BudgetSpec,
        supernet: &SupernetConfig,
        frozen: &[CellPair],
        oracle: Option<&SramOracle>,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let (table, model) = spec.table(supernet, frozen, oracle)?;
        let term = CostTerm::new(&table, &spec.limits, spec.weight, device).aiming(!spec.hinge);
        let arena = match (oracle, model) {
            (Some(o), Some(m)) => Some(Arena {
                oracle: o.clone(),
                shape: spec.network(supernet),
                frozen: frozen.to_vec(),
                known: Arc::new(Mutex::new(m.samples)),
                residual: Arc::new(Mutex::new(0.0)),
            }),
            _ => None,
        };
        Ok(Guard {
            spec: spec.clone(),
            table,
            term,
            edge_norm: supernet.edge_norm,
            tau: 1.0,
            arena,
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
        self.term
            .penalty_shifted(arch, self.edge_norm, self.tau, &self.shift())
    }

    /// The correction of the arena model at the last derived pair.
    fn shift(&self) -> Vec<(Resource, f64)> {
        self.arena.as_ref().map_or(vec![], |a| {
            vec![(
                Resource::Sram,
                *a.residual.lock().unwrap_or_else(|e| e.into_inner()),
            )]
        })
    }

    /// The best pair of `normal` and `reduce` that meets the budget. With an SRAM limit
    /// the pair's plan is made: when its arena exceeds the limit, the derivation is
    /// repeated with the modelled limit lowered by the overshoot (at most 8 times).
    pub fn derive(
        &self,
        normal: &CellWeights,
        reduce: &CellWeights,
    ) -> Result<CellPair, TrainError> {
        let weights = [normal, reduce];
        let Some((arena, limit)) = self.arena.as_ref().zip(self.spec.limits.max_sram) else {
            return Ok(derive(weights, &self.table, &self.spec.limits)?);
        };
        let pair = self.derive_within_arena(weights, arena, limit)?;
        let actual = arena.of(&pair)?;
        let modelled = self.table.pair_cost(&pair).sram;
        *arena.residual.lock().unwrap_or_else(|e| e.into_inner()) = actual as f64 - modelled as f64;
        Ok(pair)
    }

    fn derive_within_arena(
        &self,
        weights: [&CellWeights; 2],
        arena: &Arena,
        limit: u64,
    ) -> Result<CellPair, TrainError> {
        let mut budget = self.spec.limits;
        for _ in 0..8 {
            // the model can no longer meet the lowered limit: the known pairs decide
            let Ok(pair) = derive(weights, &self.table, &budget) else {
                break;
            };
            let a = arena.of(&pair)?;
            if a <= limit {
                return Ok(pair);
            }
            let lowered = budget.max_sram.unwrap_or(limit).saturating_sub(a - limit);
            budget.max_sram = Some(lowered);
        }
        // the best-scoring pair whose arena is known to meet every limit
        let known = arena.known.lock().unwrap_or_else(|e| e.into_inner());
        let within = known
            .iter()
            .filter(|(p, a)| self.spec.limits.admits(&priced(&self.table, p, *a)))
            .map(|(p, _)| (pair_score(weights, p), p))
            .max_by(|x, y| x.0.total_cmp(&y.0));
        match within {
            Some((_, p)) => Ok(p.clone()),
            None => Err(Infeasible {
                resource: Resource::Sram.name(),
                limit,
                cheapest: known.iter().map(|k| k.1).min().unwrap_or(u64::MAX),
            }
            .into()),
        }
    }

    /// The cost of `pair`'s network (its plan's arena when the SRAM is limited).
    pub fn price(&self, pair: &CellPair) -> Result<Cost, TrainError> {
        Ok(match &self.arena {
            Some(a) => priced(&self.table, pair, a.of(pair)?),
            None => self.table.pair_cost(pair),
        })
    }

    /// The figures of an epoch whose architecture is `arch` and derived pair `pair`.
    pub fn report(&self, arch: &ArchParams<B>, pair: &CellPair) -> Result<EpochCost, TrainError> {
        let e = self
            .term
            .expected_shifted(arch, self.edge_norm, self.tau, &self.shift());
        let get = |r| e.iter().find(|x| x.0 == r).map_or(0.0, |x| x.1);
        let limited = |r: Resource| self.spec.limits.limit(r).map(|_| get(r));
        Ok(EpochCost {
            expected_params: get(Resource::Params),
            expected_macs: get(Resource::Macs),
            expected_sram: limited(Resource::Sram),
            expected_latency_ns: limited(Resource::Latency),
            derived: self.price(pair)?,
            budget: self.spec.limits,
            temperature: self.tau,
        })
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
