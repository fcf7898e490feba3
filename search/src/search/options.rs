//! What a search is asked to do: its recipe, options and `config.json`, and the checks
//! of the settings that need no data.

use crate::architect::Order;
use crate::budget::{BudgetSpec, SramOracle};
use crate::data::{DataOptions, DatasetKind};
use crate::error::Constraint::{AtLeastOne, OpenUnit, Positive};
use crate::error::{require, Setting, TrainError};
use crate::parallel::Workers;
use crate::supernet::SupernetConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The search recipe, saved in `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchRecipe {
    /// Epochs.
    pub epochs: usize,
    /// Batch size (of each half).
    pub batch_size: usize,
    /// Initial weight learning rate (cosine to 0).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay of the weights.
    pub weight_decay: f64,
    /// Global gradient-norm clip of the weight step.
    pub grad_clip: f64,
    /// Adam learning rate of the architecture.
    pub arch_lr: f64,
    /// Adam weight decay of the architecture.
    pub arch_weight_decay: f64,
    /// Adam betas.
    pub arch_betas: (f32, f32),
    /// Epochs with the architecture frozen.
    pub warmup_epochs: usize,
    /// Fraction of the training images used for the weights.
    pub train_portion: f64,
    /// First or second order.
    pub order: Order,
    /// Seed.
    pub seed: u64,
}

impl SearchRecipe {
    /// DARTS' search recipe (Liu et al., 2019): 50 epochs of batch 256 at learning rate
    /// 0.1 ([`SearchRecipe::darts_lr`] for other batch sizes), SGD momentum 0.9, weight
    /// decay 3e-4, clip 5; Adam on the architecture at 6e-4 (betas 0.5/0.999, weight
    /// decay 1e-3) after 15 warm-up epochs; half the images for each level; first order.
    pub const DARTS: SearchRecipe = SearchRecipe {
        epochs: 50,
        batch_size: 256,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 3e-4,
        grad_clip: 5.0,
        arch_lr: 6e-4,
        arch_weight_decay: 1e-3,
        arch_betas: (0.5, 0.999),
        warmup_epochs: 15,
        train_portion: 0.5,
        order: Order::First,
        seed: 0,
    };

    /// The small budget of `splitnas quickstart` and `splitnas compare`: 6 epochs (1
    /// warm-up) of batch 64 at 0.025. It is about 1/100 of a paper search, so the
    /// architecture learning rate is 10x DARTS': with 6e-4 the alphas move by about 0.01
    /// in the few dozen steps and the derived cell would be decided by the initialization
    /// noise.
    pub const SMALL: SearchRecipe = SearchRecipe {
        epochs: 6,
        batch_size: 64,
        lr: 0.025,
        arch_lr: 6e-3,
        warmup_epochs: 1,
        ..SearchRecipe::DARTS
    };

    /// DARTS' weight learning rate scaled linearly to `batch_size` (0.1 at 256, 0.025 at 64).
    pub fn darts_lr(batch_size: usize) -> f64 {
        0.1 * batch_size as f64 / 256.0
    }
}

impl Default for SearchRecipe {
    fn default() -> Self {
        SearchRecipe::DARTS
    }
}

/// What `splitnas search` was asked to do.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// Data set.
    pub dataset: DatasetKind,
    /// Data directory and limits (`test_limit` is ignored).
    pub data: DataOptions,
    /// Supernet (classes, input channels and size are set from the data).
    pub supernet: SupernetConfig,
    /// Recipe.
    pub recipe: SearchRecipe,
    /// Output directory.
    pub out: PathBuf,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Progress bar on a terminal.
    pub progress: bool,
    /// Limits on the evaluation network the genotype builds (hardware-aware search).
    pub budget: Option<BudgetSpec>,
    /// The microcontroller plan's arena, needed by an SRAM budget (also on resume).
    pub sram_oracle: Option<SramOracle>,
    /// Data-parallel steps (`None`: one worker, one shard).
    pub workers: Option<Workers>,
}

/// `config.json` of a search run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Supernet.
    pub supernet: SupernetConfig,
    /// Recipe.
    pub recipe: SearchRecipe,
    /// Per-channel mean of the training images.
    pub mean: Vec<f32>,
    /// Per-channel std.
    pub std: Vec<f32>,
    /// Class names.
    pub classes: Vec<String>,
    /// Data set name.
    pub dataset: String,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Training images used.
    pub train_limit: Option<usize>,
    /// Limits on the evaluation network (hardware-aware search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

/// The epochs of each stage of a search with `stages` stages: consecutive blocks, the
/// remainder going to the deepest stages (a plain search has one block of all epochs).
pub fn stage_epochs(epochs: usize, stages: usize) -> Vec<std::ops::Range<usize>> {
    let stages = stages.max(1);
    let (base, extra) = (epochs / stages, epochs % stages);
    let mut start = 0;
    (0..stages)
        .map(|s| {
            let len = base + usize::from(s >= stages - extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Checks the settings that need no data.
pub fn check_options(o: &SearchOptions) -> Result<(), TrainError> {
    let r = &o.recipe;
    require(r.epochs > 0, Setting::Epochs, AtLeastOne, r.epochs as f64)?;
    require(
        r.batch_size > 0,
        Setting::BatchSize,
        AtLeastOne,
        r.batch_size as f64,
    )?;
    require(r.lr.is_finite() && r.lr > 0.0, Setting::Lr, Positive, r.lr)?;
    require(
        r.arch_lr.is_finite() && r.arch_lr > 0.0,
        Setting::ArchLr,
        Positive,
        r.arch_lr,
    )?;
    // The supernet's own checks first: a stage count other than 3 is named as such, not as
    // an epoch split that leaves a stage without search epochs.
    o.supernet.validate()?;
    let stages = o.supernet.stages;
    if stages > 1 {
        let blocks = stage_epochs(r.epochs, stages);
        if let Some((s, b)) = blocks
            .iter()
            .enumerate()
            .find(|(_, b)| b.len() <= r.warmup_epochs)
        {
            return Err(TrainError::StageTooShort {
                stages,
                epochs: r.epochs,
                stage_epochs: blocks.iter().map(|b| b.len()).collect(),
                warmup_epochs: r.warmup_epochs,
                stage: s + 1,
                stage_len: b.len(),
            });
        }
    } else if r.warmup_epochs >= r.epochs {
        return Err(TrainError::WarmupTooLong {
            warmup_epochs: r.warmup_epochs,
            epochs: r.epochs,
        });
    }
    require(
        r.train_portion > 0.0 && r.train_portion < 1.0,
        Setting::TrainPortion,
        OpenUnit,
        r.train_portion,
    )?;
    if let Some(n) = o.data.train_limit {
        require(n > 0, Setting::TrainLimit, AtLeastOne, n as f64)?;
    }
    Ok(())
}

/// Reads `DIR/config.json` of a search run.
pub fn read_search_config(dir: &Path) -> Result<SearchConfig, TrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Corrupt {
        path,
        problem: format!("not a splitnas search config: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_split_the_epochs_deep_stages_first_for_the_remainder() {
        assert_eq!(stage_epochs(5, 3), vec![0..1, 1..3, 3..5]);
        assert_eq!(stage_epochs(6, 3), vec![0..2, 2..4, 4..6]);
        assert_eq!(stage_epochs(4, 1), vec![0..4]);
    }
}
