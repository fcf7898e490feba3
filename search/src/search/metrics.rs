//! The records of a search: one `search.jsonl` line per epoch and `alphas.json`.

use crate::budget::EpochCost;
use crate::supernet::CellWeights;
use serde::{Deserialize, Serialize};

/// One number per cell type: the mean alpha entropy, or (`proportion`) the mean learned
/// proportion of channels.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entropy {
    /// Normal cell.
    pub normal: f64,
    /// Reduction cell.
    pub reduce: f64,
}

/// One line of `search.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchMetrics {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Weight-step loss.
    pub train_loss: f64,
    /// Weight-step accuracy.
    pub train_acc: f64,
    /// Loss on the architecture half (inference mode).
    pub valid_loss: f64,
    /// Accuracy on the architecture half.
    pub valid_acc: f64,
    /// Learning rate of the weights.
    pub lr: f64,
    /// Whether the architecture was updated (false during warm-up).
    pub arch_updated: bool,
    /// Genotype after the epoch, DARTS notation.
    pub genotype: String,
    /// Mean entropy (nats) of softmax(alpha) per edge.
    pub alpha_entropy: Entropy,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// softmax(alpha) per edge and softmax(beta) after the epoch, both cell types
    /// (what `splitnas plot` draws as the evolution of each edge's op weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<EpochWeights>,
    /// Progressive search: the stage (1-based) this epoch searched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<usize>,
    /// `--learn-proportion`: mean learned proportion of channels over the edges
    /// (per-edge values are in `weights`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proportion: Option<Entropy>,
    /// Peak resident memory of the process so far, MiB (Linux's `VmHWM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_peak_rss_mb: Option<f64>,
    /// Memory the device allocator has reserved so far (its high-water mark), MiB: CUDA
    /// and wgpu only; the CPU backends allocate from the heap (in `host_peak_rss_mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_reserved_mb: Option<f64>,
    /// Budgeted search: the architecture's expected cost and the derived genotype's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<EpochCost>,
}

/// Architecture weights of both cell types after one epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochWeights {
    /// Normal cell.
    pub normal: CellWeights,
    /// Reduction cell.
    pub reduce: CellWeights,
}

/// `alphas.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlphasFile {
    /// Epoch they belong to.
    pub epoch: usize,
    /// Primitive names, column order.
    pub primitives: Vec<String>,
    /// Normal cell weights.
    pub normal: CellWeights,
    /// Reduction cell weights.
    pub reduce: CellWeights,
    /// Progressive search: the stage (1-based) these weights belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<usize>,
}
