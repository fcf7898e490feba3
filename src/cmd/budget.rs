//! The budget flags of `splitnas search` and `splitnas compare` (hardware-aware search)
//! and the evaluation network they apply to.

use anyhow::{bail, Result};
use clap::Args;
use splitnas_search::budget::{Budget, BudgetSpec, DEFAULT_TEMPERATURE};

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
    /// Penalize only an expected cost over the budget (by default the penalty aims at the
    /// budget from both sides, countering the drift to parameter-free operations).
    #[arg(long)]
    pub cost_hinge: bool,
}

impl BudgetArgs {
    /// The limits given.
    pub fn limits(&self) -> Budget {
        Budget {
            max_params: self.max_params,
            max_macs: self.max_macs,
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
        let limits = self.limits();
        Ok((!limits.is_empty()).then(|| BudgetSpec {
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
