//! Errors of searches, trainings and benchmarks, in the library's terms: the setting, its
//! value and the constraint it breaks. A front end names its own flags for them.

use crate::data::DataError;
use crate::device::DeviceError;
use crate::supernet::SupernetError;
use splitnas_models::{GenotypeError, NetworkError};
use std::path::PathBuf;

/// A number a caller chooses for a search, a training or a benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Setting {
    /// Epochs of the run.
    Epochs,
    /// Images per batch.
    BatchSize,
    /// Initial learning rate of the weights.
    Lr,
    /// Learning rate of the architecture.
    ArchLr,
    /// Fraction of the training images that trains the weights.
    TrainPortion,
    /// Number of training images used.
    TrainLimit,
    /// Number of test images used.
    TestLimit,
    /// Final drop-path probability.
    DropPath,
    /// Timed steps of a benchmark.
    Steps,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Setting::Epochs => "the epoch count",
            Setting::BatchSize => "the batch size",
            Setting::Lr => "the learning rate",
            Setting::ArchLr => "the architecture learning rate",
            Setting::TrainPortion => "the weights' portion of the training images",
            Setting::TrainLimit => "the training image limit",
            Setting::TestLimit => "the test image limit",
            Setting::DropPath => "the drop-path probability",
            Setting::Steps => "the step count",
        })
    }
}

/// What a [`Setting`]'s value must satisfy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Constraint {
    /// A count of at least 1.
    AtLeastOne,
    /// A finite number above 0.
    Positive,
    /// Strictly between 0 and 1.
    OpenUnit,
    /// In `[0, 1)`.
    HalfOpenUnit,
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Constraint::AtLeastOne => "must be at least 1",
            Constraint::Positive => "must be a positive number",
            Constraint::OpenUnit => "must be strictly between 0 and 1",
            Constraint::HalfOpenUnit => "must be in [0, 1)",
        })
    }
}

/// Everything that can stop a search, a training run or a benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Data set problem.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The genotype could not be resolved.
    #[error("genotype: {0}")]
    Genotype(#[from] GenotypeError),
    /// Network configuration problem.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// No cell pair meets a budget.
    #[error(transparent)]
    Budget(#[from] crate::budget::Infeasible),
    /// Supernet configuration problem.
    #[error(transparent)]
    Supernet(#[from] SupernetError),
    /// Device problem.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A setting with a value that cannot work.
    #[error("{setting} {constraint} (got {value})")]
    Invalid {
        /// The setting.
        setting: Setting,
        /// What it must satisfy.
        constraint: Constraint,
        /// The value given.
        value: f64,
    },
    /// A search whose warm-up takes every epoch.
    #[error("{warmup_epochs} warm-up epochs leave no epoch of a {epochs}-epoch run to search the architecture")]
    WarmupTooLong {
        /// Warm-up epochs.
        warmup_epochs: usize,
        /// Epochs.
        epochs: usize,
    },
    /// A progressive search with a stage whose warm-up takes all its epochs.
    #[error(
        "{stages} stages split the {epochs} epochs into stages of {} epochs; with {warmup_epochs} warm-up epochs per stage, stage {stage} ({stage_len} epochs) has no epoch left to search the architecture",
        join(.stage_epochs)
    )]
    StageTooShort {
        /// Stages of the search.
        stages: usize,
        /// Epochs of the whole search.
        epochs: usize,
        /// Epochs of each stage.
        stage_epochs: Vec<usize>,
        /// Warm-up epochs of each stage.
        warmup_epochs: usize,
        /// The first stage too short (1-based).
        stage: usize,
        /// Its epochs.
        stage_len: usize,
    },
    /// A search with fewer than two training images (one per half).
    #[error("the search needs at least 2 training images (got {0})")]
    TooFewImages(usize),
    /// A cutout square larger than the images.
    #[error("the cutout side {cutout} is larger than the {side}-pixel images")]
    CutoutTooLarge {
        /// The cutout side.
        cutout: usize,
        /// The image side.
        side: usize,
    },
    /// File system problem.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file with bad content.
    #[error("{path}: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The output directory already holds a run.
    #[error("{dir} already holds a training run (finished {epoch} of {epochs} epochs)")]
    Exists {
        /// The directory.
        dir: PathBuf,
        /// Epochs done.
        epoch: usize,
        /// Epochs planned.
        epochs: usize,
    },
    /// Resuming a directory without a checkpoint.
    #[error("{0} has no checkpoint.json to resume from")]
    NothingToResume(PathBuf),
    /// A data-parallel worker could not join, reduce or leave.
    #[error("data-parallel: {0}")]
    Parallel(String),
    /// The microcontroller plan an SRAM budget is priced with could not be made.
    #[error("--max-sram: {0}")]
    Sram(String),
    /// A latency table that does not price the evaluation network.
    #[error("--latency-table: {0}")]
    Latency(String),
    /// Loss became NaN or infinite.
    #[error("training loss became {value} at epoch {epoch}, batch {batch}; stopped. The last good checkpoint (epoch {last_good}) is kept in {dir}; lower the learning rate and resume or restart")]
    NonFinite {
        /// The bad value.
        value: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Batch within the epoch (1-based).
        batch: usize,
        /// Last finished epoch.
        last_good: usize,
        /// Output directory.
        dir: PathBuf,
    },
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Err(Invalid)` unless `ok`.
pub(crate) fn require(
    ok: bool,
    setting: Setting,
    constraint: Constraint,
    value: f64,
) -> Result<(), TrainError> {
    if ok {
        Ok(())
    } else {
        Err(TrainError::Invalid {
            setting,
            constraint,
            value,
        })
    }
}

/// A name (of a channel selector, a gradient order) that is none of the known values.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("unknown {what} '{value}' (expected {expected})")]
pub struct UnknownName {
    /// What was named: "selector", "order".
    pub what: &'static str,
    /// The name given.
    pub value: String,
    /// The known names.
    pub expected: &'static str,
}
