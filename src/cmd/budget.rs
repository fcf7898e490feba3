//! The budget flags of `splitnas search` and `splitnas compare` (hardware-aware search)
//! and the evaluation network they apply to.

use anyhow::{bail, Context, Result};
use clap::Args;
use splitnas_models::LatencyTable;
use splitnas_search::budget::{Budget, BudgetSpec, SramOracle, DEFAULT_TEMPERATURE};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A latency table file, its problems named with the path.
pub fn read_latency_table(path: &Path) -> Result<LatencyTable> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--latency-table {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("--latency-table {}: not a latency table", path.display()))
}

/// The arena of a network's int8 microcontroller plan, for SRAM budgets: the plan
/// `splitnas compile` makes (from seeded weights; the arena depends on shapes alone).
/// Each network is planned once (the search's feasibility check and its first stage fit
/// the same 31 pairs).
pub fn sram_oracle() -> SramOracle {
    let known: Mutex<HashMap<String, u64>> = Mutex::default();
    SramOracle(Arc::new(move |cfg| {
        let key = format!(
            "{} C={} L={} {}x{} {} classes identity={}",
            cfg.genotype.to_darts(),
            cfg.channels,
            cfg.layers,
            cfg.in_channels,
            cfg.image_size,
            cfg.classes,
            cfg.identity
        );
        if let Some(&a) = known.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(a);
        }
        let a = splitnas_export::plan::network_plan(cfg)
            .map(|plan| plan.sram_peak as u64)
            .map_err(|e| e.to_string())?;
        known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, a);
        Ok(a)
    }))
}

/// Limits on the network `train` will build from the found genotype.
#[derive(Args, Clone, Debug)]
pub struct BudgetArgs {
    /// Most learnable parameters of the evaluation network (BatchNorm affine included,
    /// running statistics and the auxiliary head not).
    #[arg(long, value_name = "N")]
    pub max_params: Option<u64>,
    /// Most multiply-accumulates per image of the evaluation network.
    #[arg(long, value_name = "N")]
    pub max_macs: Option<u64>,
    /// Most bytes of SRAM: the arena of the evaluation network's int8 microcontroller
    /// plan (`splitnas compile`'s `sram_peak`).
    #[arg(long, value_name = "BYTES")]
    pub max_sram: Option<u64>,
    /// Most milliseconds per image on the device the latency table was measured on.
    #[arg(long, value_name = "MS", requires = "latency_table")]
    pub max_latency_ms: Option<f64>,
    /// Latency table of the evaluation network (`splitnas bench ops --out lut.json`, run
    /// on the target device).
    #[arg(long, value_name = "FILE")]
    pub latency_table: Option<PathBuf>,
    /// Initial channels C of the evaluation network the budget applies to (`train
    /// --channels`).
    #[arg(long, default_value_t = 36)]
    pub eval_channels: usize,
    /// Cells L of the evaluation network the budget applies to (`train --layers`).
    #[arg(long, default_value_t = 20)]
    pub eval_layers: usize,
    /// The evaluation network has the CSC-DARTS identity connection (`train --identity`).
    #[arg(long)]
    pub eval_identity: bool,
    /// Weight of the budget penalty in the architecture loss.
    #[arg(long, default_value_t = 1.0)]
    pub cost_weight: f64,
    /// Temperature of the expected cost at the last search epoch: it falls geometrically
    /// from 1, so the expected cost ends close to the derived genotype's.
    #[arg(long, default_value_t = DEFAULT_TEMPERATURE)]
    pub cost_temperature: f64,
    /// Penalize only an expected cost over the budget (by default the penalty also pushes
    /// back below the lesser of the budget and the uniform architecture's expected cost,
    /// countering the drift to parameter-free operations).
    #[arg(long)]
    pub cost_hinge: bool,
}

impl BudgetArgs {
    /// The limits given.
    pub fn limits(&self) -> Budget {
        Budget {
            max_params: self.max_params,
            max_macs: self.max_macs,
            max_sram: self.max_sram,
            max_latency_ns: self.max_latency_ms.map(|ms| (ms * 1e6).round() as u64),
        }
    }

    /// The budget of a search, `None` without limits; bad sizes named by their flags.
    pub fn spec(&self) -> Result<Option<BudgetSpec>> {
        if self.eval_channels == 0 {
            bail!("--eval-channels must be at least 1");
        }
        if self.eval_layers < 3 {
            bail!(
                "--eval-layers {}: the network needs at least 3 layers (reductions at L/3 and 2L/3)",
                self.eval_layers
            );
        }
        if !(self.cost_weight.is_finite() && self.cost_weight > 0.0) {
            bail!(
                "--cost-weight must be a positive number (got {})",
                self.cost_weight
            );
        }
        if !(self.cost_temperature.is_finite()
            && self.cost_temperature > 0.0
            && self.cost_temperature <= 1.0)
        {
            bail!(
                "--cost-temperature must be in (0, 1] (got {})",
                self.cost_temperature
            );
        }
        if let Some(ms) = self.max_latency_ms {
            if !(ms.is_finite() && ms > 0.0) {
                bail!("--max-latency-ms must be a positive number (got {ms})");
            }
        }
        let latency = match &self.latency_table {
            Some(path) => Some(read_latency_table(path)?),
            None => None,
        };
        let limits = self.limits();
        Ok((!limits.is_empty()).then(|| BudgetSpec {
            latency,
            limits,
            channels: self.eval_channels,
            layers: self.eval_layers,
            identity: self.eval_identity,
            weight: self.cost_weight,
            temperature: self.cost_temperature,
            hinge: self.cost_hinge,
        }))
    }
}
