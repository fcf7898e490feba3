//! Atomic files and per-epoch checkpoints.
//!
//! A checkpoint is `checkpoint/epoch-NNNN-model.mpk` + `checkpoint/epoch-NNNN-optim.mpk`
//! (Burn records, full precision) and `checkpoint.json` naming them. Each file is written
//! under a temporary name and renamed; `checkpoint.json` is renamed last and older epoch
//! files are deleted only after it, so a kill at any moment leaves a complete checkpoint.

use crate::train::TrainError;
use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// `checkpoint.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState<M> {
    /// Last finished epoch (1-based count).
    pub epoch: usize,
    /// Model record, relative to the run directory.
    pub model: String,
    /// Optimizer record, relative to the run directory.
    pub optim: String,
    /// Architecture optimizer record (search runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch_optim: Option<String>,
    /// Per-epoch metrics so far.
    pub metrics: Vec<M>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
/// A failure names `path` (not the temporary file) and leaves no temporary file behind
/// (`splitnas_host::fs`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    splitnas_host::fs::write_atomic(path, bytes).map_err(|e| io(&e.path)(e.source))
}

/// Saves a Burn record atomically to `path` (which must end in `.mpk`).
pub fn save_record<B: Backend, R: burn::record::Record<B>>(
    record: R,
    path: &Path,
) -> Result<(), TrainError> {
    let stem = path.with_extension("");
    let tmp_stem = splitnas_host::fs::temp_path(&stem).with_extension(""); // recorder adds `.mpk`
    Rec::new()
        .record(record, tmp_stem.clone())
        .map_err(|e| TrainError::Corrupt {
            path: path.to_path_buf(),
            problem: format!("cannot write record: {e}"),
        })?;
    let written = tmp_stem.with_extension("mpk");
    std::fs::rename(&written, path).map_err(io(path))
}

fn load_rec<B: Backend, R: burn::record::Record<B>>(
    path: &Path,
    device: &B::Device,
) -> Result<R, TrainError> {
    if !path.exists() {
        return Err(TrainError::Corrupt {
            path: path.to_path_buf(),
            problem: "file missing".into(),
        });
    }
    Rec::new()
        .load(path.to_path_buf(), device)
        .map_err(|e| TrainError::Corrupt {
            path: path.to_path_buf(),
            problem: format!("cannot load record (corrupt, or written for another network): {e}"),
        })
}

/// The first difference between the structure of two decoded records: map keys (field and
/// enum variant names), list lengths, value kinds and every `shape` entry. Tensor bytes and
/// other values are not compared.
fn structure_diff(expected: &rmpv::Value, found: &rmpv::Value, path: &str) -> Option<String> {
    use rmpv::Value as V;
    let at = |p: &str| {
        if p.is_empty() {
            "the top level".to_string()
        } else {
            p.to_string()
        }
    };
    match (expected, found) {
        (V::Map(e), V::Map(f)) => {
            let key = |k: &V| {
                k.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string())
            };
            let ek: Vec<String> = e.iter().map(|(k, _)| key(k)).collect();
            let fk: Vec<String> = f.iter().map(|(k, _)| key(k)).collect();
            let mut es = ek.clone();
            let mut fs = fk.clone();
            es.sort();
            fs.sort();
            if es != fs {
                return Some(format!("{} has {fs:?}, the network needs {es:?}", at(path)));
            }
            for (k, ev) in e {
                let name = key(k);
                let fv = f.iter().find(|(k2, _)| key(k2) == name).map(|(_, v)| v)?;
                let sub = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                if name == "shape" && ev != fv {
                    return Some(format!("{sub} is {fv}, the network needs {ev}"));
                }
                if name != "id" {
                    if let Some(d) = structure_diff(ev, fv, &sub) {
                        return Some(d);
                    }
                }
            }
            None
        }
        (V::Array(e), V::Array(f)) => {
            if e.len() != f.len() {
                return Some(format!(
                    "{} has {} entries, the network needs {}",
                    at(path),
                    f.len(),
                    e.len()
                ));
            }
            e.iter()
                .zip(f)
                .enumerate()
                .find_map(|(i, (a, b))| structure_diff(a, b, &format!("{path}.{i}")))
        }
        (V::Nil, V::Nil) => None,
        (V::Nil, _) => Some(format!("{} is in the file, the network has none", at(path))),
        (_, V::Nil) => Some(format!(
            "{} is missing from the file, the network needs it",
            at(path)
        )),
        (V::Map(_) | V::Array(_), _) | (_, V::Map(_) | V::Array(_)) => Some(format!(
            "{} has another kind of value than the network needs",
            at(path)
        )),
        _ => None,
    }
}

/// Loads module weights from a record file, after checking that the file's structure
/// (fields, enum variants, list lengths, tensor shapes) is the module's.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let corrupt = |problem: String| TrainError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let expected = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(module.clone().into_record(), ())
        .map_err(|e| corrupt(format!("cannot encode the network's record: {e}")))?;
    if path.exists() {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let decode = |b: &[u8]| rmpv::decode::read_value(&mut &*b);
        let found = decode(&bytes)
            .map_err(|e| corrupt(format!("not a Burn record (corrupt or truncated): {e}")))?;
        let expected = decode(&expected).map_err(|e| corrupt(format!("{e}")))?;
        if let Some(d) = structure_diff(&expected, &found, "") {
            return Err(corrupt(format!(
                "the weights belong to another network (genotype or sizes differ from config.json): {d}"
            )));
        }
    }
    Ok(module.load_record(load_rec::<B, M::Record>(path, device)?))
}

/// Loads optimizer state from a record file.
pub fn load_optimizer<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    optim: O,
    path: &Path,
    device: &B::Device,
) -> Result<O, TrainError> {
    Ok(optim.load_record(load_rec::<B, O::Record>(path, device)?))
}

/// Reads `DIR/checkpoint.json` if present.
pub fn read_state<M: DeserializeOwned>(
    dir: &Path,
) -> Result<Option<CheckpointState<M>>, TrainError> {
    let path = dir.join("checkpoint.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::Corrupt {
                path,
                problem: format!("not a splitnas checkpoint: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TrainError::Io { path, source }),
    }
}

/// Writes the checkpoint of finished `epoch`, `model.mpk` and `metrics.jsonl`.
pub fn save_epoch<
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
    T: Serialize + Clone,
>(
    dir: &Path,
    epoch: usize,
    model: &M,
    optim: &O,
    metrics: &[T],
) -> Result<(), TrainError> {
    let ck = dir.join("checkpoint");
    std::fs::create_dir_all(&ck).map_err(io(&ck))?;
    let model_rel = format!("checkpoint/epoch-{epoch:04}-model.mpk");
    let optim_rel = format!("checkpoint/epoch-{epoch:04}-optim.mpk");
    let record = model.clone().into_record();
    save_record::<B, _>(record, &dir.join(&model_rel))?;
    save_record::<B, _>(optim.to_record(), &dir.join(&optim_rel))?;
    save_record::<B::InnerBackend, _>(model.valid().into_record(), &dir.join("model.mpk"))?;
    commit(
        dir,
        "metrics.jsonl",
        CheckpointState {
            epoch,
            model: model_rel,
            optim: optim_rel,
            arch_optim: None,
            metrics: metrics.to_vec(),
        },
    )
}

/// Writes the checkpoint of a finished search `epoch`: supernet (weights + alphas/betas),
/// weight optimizer, architecture optimizer, and `search.jsonl`.
pub fn save_search_epoch<
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
    P: Optimizer<M, B>,
    T: Serialize + Clone,
>(
    dir: &Path,
    epoch: usize,
    model: &M,
    optim: &O,
    arch_optim: &P,
    metrics: &[T],
) -> Result<(), TrainError> {
    let ck = dir.join("checkpoint");
    std::fs::create_dir_all(&ck).map_err(io(&ck))?;
    let model_rel = format!("checkpoint/epoch-{epoch:04}-model.mpk");
    let optim_rel = format!("checkpoint/epoch-{epoch:04}-optim.mpk");
    let arch_rel = format!("checkpoint/epoch-{epoch:04}-arch-optim.mpk");
    save_record::<B, _>(model.clone().into_record(), &dir.join(&model_rel))?;
    save_record::<B, _>(optim.to_record(), &dir.join(&optim_rel))?;
    save_record::<B, _>(arch_optim.to_record(), &dir.join(&arch_rel))?;
    commit(
        dir,
        "search.jsonl",
        CheckpointState {
            epoch,
            model: model_rel,
            optim: optim_rel,
            arch_optim: Some(arch_rel),
            metrics: metrics.to_vec(),
        },
    )
}

/// Writes the metrics file and then `checkpoint.json` (atomically, last), then deletes
/// checkpoint files the new state does not name.
fn commit<T: Serialize>(
    dir: &Path,
    metrics_file: &str,
    state: CheckpointState<T>,
) -> Result<(), TrainError> {
    let mut lines = String::new();
    for m in &state.metrics {
        lines.push_str(&serde_json::to_string(m).unwrap_or_default());
        lines.push('\n');
    }
    write_atomic(&dir.join(metrics_file), lines.as_bytes())?;
    write_atomic(
        &dir.join("checkpoint.json"),
        serde_json::to_string_pretty(&state)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    // Only now drop older checkpoints.
    let keep = [
        Some(state.model.as_str()),
        Some(state.optim.as_str()),
        state.arch_optim.as_deref(),
    ];
    if let Ok(entries) = std::fs::read_dir(dir.join("checkpoint")) {
        for e in entries.flatten() {
            let rel = format!("checkpoint/{}", e.file_name().to_string_lossy());
            if !keep.contains(&Some(rel.as_str())) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}
