//! Library errors retold with the command line's flag names: the libraries name a setting
//! ("the batch size", "the partial factor K"), the commands name the flag that sets it.

use anyhow::anyhow;
use splitnas_export::quantize::QuantizeError;
use splitnas_models::{NetworkError, NetworkSize};
use splitnas_search::data::DataError;
use splitnas_search::device::DeviceError;
use splitnas_search::error::{Setting, TrainError};
use splitnas_search::supernet::SupernetError;

/// The flag of a search, training or benchmark setting.
fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Epochs => "--epochs",
        Setting::BatchSize => "--batch-size",
        Setting::Lr => "--lr",
        Setting::ArchLr => "--arch-lr",
        Setting::TrainPortion => "--train-portion",
        Setting::TrainLimit => "--train-limit",
        Setting::TestLimit => "--test-limit",
        Setting::DropPath => "--drop-path",
        Setting::Steps => "--steps",
        _ => "a setting",
    }
}

/// A search, training or benchmark error under the flags of `splitnas search`, `train`
/// and `bench`.
pub fn train(e: TrainError) -> anyhow::Error {
    let message = match &e {
        TrainError::Invalid {
            setting,
            constraint,
            value,
        } => format!("{}: {constraint} (got {value})", flag(*setting)),
        TrainError::Supernet(s) => return supernet(s).unwrap_or_else(|| e.into()),
        TrainError::Network(n) => return network(n).unwrap_or_else(|| e.into()),
        TrainError::WarmupTooLong {
            warmup_epochs,
            epochs,
        } => format!(
            "--warmup-epochs: {warmup_epochs} warm-up epochs leave no epoch of a {epochs}-epoch run to search the architecture; use fewer than --epochs"
        ),
        TrainError::StageTooShort {
            stages,
            epochs,
            stage_epochs,
            warmup_epochs,
            stage,
            stage_len,
        } => {
            let lens: Vec<String> = stage_epochs.iter().map(|n| n.to_string()).collect();
            format!(
                "--progressive: {stages} stages split the {epochs} epochs into stages of {} epochs; with --warmup-epochs {warmup_epochs} (per stage), stage {stage} ({stage_len} epochs) has no epoch left to search the architecture: use more --epochs or fewer warm-up epochs",
                lens.join(", ")
            )
        }
        TrainError::Budget(b) => {
            let ms = |ns: u64| format!("{:.3}", ns as f64 / 1e6);
            let (flag, limit, cheapest, unit) = match b.resource {
                "sram_bytes" => (
                    "--max-sram".to_string(),
                    b.limit.to_string(),
                    b.cheapest.to_string(),
                    "bytes of int8 plan arena (the least found)",
                ),
                "latency_ns" => (
                    "--max-latency-ms".to_string(),
                    ms(b.limit),
                    ms(b.cheapest),
                    "ms by --latency-table",
                ),
                r => (
                    format!("--max-{r}"),
                    b.limit.to_string(),
                    b.cheapest.to_string(),
                    r,
                ),
            };
            format!(
                "{flag} {limit}: no cell meets it: the cheapest cell pair gives {cheapest} {unit} for the evaluation network of --eval-channels and --eval-layers"
            )
        }
        TrainError::TooFewImages(n) => {
            format!("--train-limit: the search needs at least 2 training images (got {n})")
        }
        TrainError::CutoutTooLarge { cutout, side } => {
            format!("--cutout: {cutout} is larger than the {side}-pixel images")
        }
        TrainError::Data(DataError::Missing { path, dataset }) => format!(
            "{}: file not found ({})",
            path.display(),
            dataset.missing_hint("--data-dir")
        ),
        TrainError::Exists { .. } => {
            format!("{e}; pass --resume to continue it or choose another --out")
        }
        TrainError::NothingToResume(_) => format!("--resume: {e}"),
        TrainError::NonFinite {
            value,
            epoch,
            batch,
            last_good,
            dir,
        } => format!(
            "training loss became {value} at epoch {epoch}, batch {batch}; stopped. The last good checkpoint (epoch {last_good}) is kept in {}; lower --lr and resume or restart",
            dir.display()
        ),
        _ => {
            return match e {
                TrainError::Genotype(g) => anyhow::Error::new(g).context("--genotype"),
                TrainError::Device(d) => device(d),
                e => e.into(),
            }
        }
    };
    anyhow!(message)
}

/// A supernet configuration error under the flags of `splitnas search` and
/// `bench search-step`.
fn supernet(e: &SupernetError) -> Option<anyhow::Error> {
    let message = match e {
        SupernetError::Size { channels, layers } => format!(
            "--channels must be at least 1 and --layers at least 3 (got C={channels}, L={layers})"
        ),
        SupernetError::PartialKZero => "--partial-k must be at least 1 (got 0)".to_string(),
        SupernetError::ProportionChannels(c) => format!(
            "--learn-proportion: needs --channels divisible by 8 (got {c}): its candidate proportions are 1/2, 1/4 and 1/8 of every edge's channels"
        ),
        SupernetError::Stages(s) => format!(
            "--progressive: takes 3 (got {s}): the network has 3 stages (the cells before, between and after its two reductions)"
        ),
        SupernetError::PartialK { k, channels } => format!(
            "--partial-k {k} does not divide --channels {channels}: every edge must split its {channels} channels into {k} equal groups"
        ),
        SupernetError::ImageTooSmall(s) => format!(
            "--image-size: must be at least 8 (got {s}): the supernet's two reductions halve the side twice"
        ),
        SupernetError::ImageSide(s) => format!(
            "--image-size: must be divisible by 4 (got {s}): the supernet's two reductions halve the side twice"
        ),
        _ => return None,
    };
    Some(anyhow!(message))
}

/// A network configuration error under the flags of `splitnas train`, `export` and
/// `bench train` (the sizes they all have).
pub fn network(e: &NetworkError) -> Option<anyhow::Error> {
    Some(match e {
        NetworkError::Zero(NetworkSize::Channels) => anyhow!("--channels must be at least 1"),
        NetworkError::ImageSize(s) => {
            anyhow!("--image-size {s}: not divisible by 4 (the network halves it twice)")
        }
        NetworkError::Zero(NetworkSize::ImageSize) => anyhow!("--image-size must be at least 1"),
        NetworkError::Zero(NetworkSize::Classes) => anyhow!("--classes must be at least 1"),
        NetworkError::Zero(NetworkSize::InChannels) => {
            anyhow!("--in-channels must be at least 1")
        }
        NetworkError::Layers(l) => anyhow!(
            "--layers {l}: the network needs at least 3 layers (reductions at L/3 and 2L/3)"
        ),
        _ => return None,
    })
}

/// A runtime error under the flags of `splitnas run` and `bench run`.
pub fn runtime(e: splitnas_runtime::RuntimeError) -> anyhow::Error {
    match e {
        splitnas_runtime::RuntimeError::Device(d) => device(d),
        e => e.into(),
    }
}

/// A device error under `--device`.
pub fn device(e: DeviceError) -> anyhow::Error {
    let flag = match &e {
        DeviceError::NotCompiled(name) => format!("--device {name}"),
        DeviceError::Unavailable { device, .. } => format!("--device {device}"),
        _ => "--device".into(),
    };
    anyhow::Error::new(e).context(flag)
}

/// A data set that cannot be read, its directory named by `dir_flag`.
pub fn data(e: DataError, dir_flag: &str) -> anyhow::Error {
    match e {
        DataError::Missing { path, dataset } => anyhow!(
            "{}: file not found ({})",
            path.display(),
            dataset.missing_hint(dir_flag)
        ),
        e => e.into(),
    }
}

/// A quantization error under the flags of `splitnas quantize`.
pub fn quantize(e: QuantizeError) -> anyhow::Error {
    match e {
        QuantizeError::NoCalibration => {
            anyhow!("--calibration-images: must be at least 1 (got 0)")
        }
        QuantizeError::NonFinite { tensor, value } => anyhow!(
            "tensor '{tensor}' is {value} on the calibration images (--dataset, --data-dir, --seed draw them): its range is not finite"
        ),
        e => e.into(),
    }
}
