//! The test split as `quantize --eval` and `compile --eval` read it: the data set the
//! flags or the file's metadata name, normalized with the file's mean/std, run 100 images
//! a call.

use super::args::OptionalDataArgs;
use super::errors;
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use splitnas_search::data::{self, DataOptions, Dataset, DatasetKind, ImageSet};
use std::collections::HashMap;

/// Normalized NCHW floats of `set`'s images `indices`.
pub fn normalized(set: &ImageSet, indices: &[usize], mean: &[f32], std: &[f32]) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(0); // unused without augmentation
    data::make_batch(set, indices, mean, std, None, &mut rng).0
}

/// The data set: `--dataset`, else the one `metadata` (of `file`) names.
pub fn dataset_kind(
    file: &str,
    data: &OptionalDataArgs,
    metadata: &HashMap<String, String>,
) -> Result<DatasetKind> {
    if let Some(d) = data.dataset {
        return Ok(d.into());
    }
    let named = metadata.get("dataset").map(String::as_str);
    match named.map(str::parse::<DatasetKind>) {
        Some(Ok(kind)) => Ok(kind),
        _ => bail!(
            "{file}: the file's metadata names no data set ({}); pass --dataset",
            named.map_or("no 'dataset' key".into(), |n| format!("dataset = '{n}'"))
        ),
    }
}

/// The data set `kind` with at most `test_limit` test images.
pub fn load(
    kind: DatasetKind,
    data: &OptionalDataArgs,
    test_limit: Option<usize>,
    seed: u64,
) -> Result<Dataset> {
    data::load(
        kind,
        &DataOptions {
            dir: data.data_dir.clone(),
            train_limit: None,
            test_limit,
            seed,
        },
    )
    .map_err(|e| errors::data(e, "--data-dir"))
}

/// Top-1 accuracy of `run` (normalized images, count -> logits `[count, k]`) on `set`,
/// and all its logits.
pub fn evaluate(
    set: &ImageSet,
    (mean, std): (&[f32], &[f32]),
    k: usize,
    mut run: impl FnMut(&[f32], usize) -> Result<Vec<f32>>,
) -> Result<(f64, Vec<f32>)> {
    let mut correct = 0;
    let mut all_logits = Vec::with_capacity(set.len() * k);
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(100) {
        let x = normalized(set, chunk, mean, std);
        let logits = run(&x, chunk.len())?;
        for (row, &i) in logits.chunks(k.max(1)).zip(chunk) {
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            correct += usize::from(best == set.labels[i]);
        }
        all_logits.extend(logits);
    }
    Ok((correct as f64 / set.len().max(1) as f64, all_logits))
}
