//! `splitnas quantize`: a float ONNX file -> an int8 QDQ file (`export::quantize`),
//! calibrated on a fixed seeded sample of the training split of the data set the file's
//! metadata names, normalized as the metadata says; `--eval` runs both files with the
//! runtime on the test split.

use super::args::{choice, OptionalDataArgs, QuantMethod, SeedArg};
use super::errors;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use splitnas_export::quantize::{quantize, QuantizeOptions};
use splitnas_runtime::Model;
use splitnas_search::data::{self, DataOptions, DatasetKind, ImageSet};
use std::path::{Path, PathBuf};

type Cpu = burn::backend::Flex;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The float ONNX file (`splitnas export`'s, or a PyTorch-style file the runtime runs).
    file: PathBuf,
    /// The int8 QDQ ONNX file to write (written to a temporary name, then renamed).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    data: OptionalDataArgs,
    /// Calibration images: a fixed sample of the training split drawn with --seed.
    #[arg(long, default_value_t = 512)]
    calibration_images: usize,
    /// Activation ranges: minmax, percentile (99.99%, two-sided) or entropy (KL divergence,
    /// as TensorRT). percentile measured best (docs/int8.md).
    #[arg(
        long,
        default_value = "percentile",
        value_parser = choice::<QuantMethod>(),
        hide_possible_values = true
    )]
    method: QuantMethod,
    #[command(flatten)]
    seed: SeedArg,
    /// Run the float and the int8 file with the runtime (CPU) on the test split and print
    /// `float_acc=... int8_acc=... size_float=... size_int8=...`.
    #[arg(long)]
    eval: bool,
    /// With --eval: only the first N test images (default: the whole test split).
    #[arg(long, requires = "eval")]
    eval_images: Option<usize>,
    /// Also write the normalized calibration images as a float32 NCHW .npy (to give other
    /// quantizers the same images).
    #[arg(long)]
    save_calibration: Option<PathBuf>,
}

/// Normalized NCHW floats of `set`'s images `indices`.
fn normalized(set: &ImageSet, indices: &[usize], mean: &[f32], std: &[f32]) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(0); // unused without augmentation
    data::make_batch(set, indices, mean, std, None, &mut rng).0
}

/// Top-1 accuracy of `model` on `set` (normalized with `mean`, `std`), 100 images a run.
fn accuracy(model: &Model<Cpu>, set: &ImageSet, mean: &[f32], std: &[f32]) -> Result<f64> {
    let k = model.num_classes();
    let mut correct = 0;
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(100) {
        let x = normalized(set, chunk, mean, std);
        let logits = model.run_host(&x, chunk.len()).map_err(errors::runtime)?;
        for (row, &i) in logits.chunks(k).zip(chunk) {
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            correct += usize::from(best == set.labels[i]);
        }
    }
    Ok(correct as f64 / set.len().max(1) as f64)
}

/// The data set: `--dataset`, else the one the file's metadata names.
fn dataset_kind(a: &QuantizeArgs, model: &Model<Cpu>) -> Result<DatasetKind> {
    if let Some(d) = a.data.dataset {
        return Ok(d.into());
    }
    let named = model.metadata().get("dataset").map(String::as_str);
    match named.map(str::parse::<DatasetKind>) {
        Some(Ok(kind)) => Ok(kind),
        _ => bail!(
            "{}: the file's metadata names no data set to calibrate on ({}); pass --dataset",
            a.file.display(),
            named.map_or("no 'dataset' key".into(), |n| format!("dataset = '{n}'"))
        ),
    }
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    if a.calibration_images == 0 {
        bail!("--calibration-images: must be at least 1 (got 0)");
    }
    if a.eval_images == Some(0) {
        bail!("--eval-images: must be at least 1 (got 0)");
    }
    let file = a.file.display().to_string();
    let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read {file}"))?;
    let float = Model::<Cpu>::from_bytes(&bytes, &Default::default())
        .map_err(errors::runtime)
        .with_context(|| file.clone())?;
    let kind = dataset_kind(&a, &float)?;
    let seed = a.seed.seed;
    let set = data::load(
        kind,
        &DataOptions {
            dir: a.data.data_dir.clone(),
            train_limit: None,
            test_limit: a.eval_images,
            seed,
        },
    )
    .map_err(|e| errors::data(e, "--data-dir"))?;
    let [c, h, w] = float.input_shape();
    if set.train.channels != c || set.train.side != h || h != w {
        bail!(
            "{file} takes {c}x{h}x{w} images, {} has {}x{s}x{s}: pass the --dataset it was trained on",
            kind.name(),
            set.train.channels,
            s = set.train.side
        );
    }
    let (mean, std) = match float.mean().zip(float.std()) {
        Some(ms) => ms,
        None => {
            eprintln!(
                "note: {file} has no usable mean/std metadata; normalizing with the {} training split's",
                kind.name()
            );
            set.train.mean_std()
        }
    };
    let n = a.calibration_images;
    if n > set.train.len() {
        bail!(
            "--calibration-images {n}: the {} training split has {} images",
            kind.name(),
            set.train.len()
        );
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let indices = rand::seq::index::sample(&mut rng, set.train.len(), n).into_vec();
    let images = normalized(&set.train, &indices, &mean, &std);
    if let Some(path) = &a.save_calibration {
        let shape = [n, c, h, w].map(|d| d as u64);
        splitnas_runtime::input::write_npy(path, &images, &shape)
            .with_context(|| format!("--save-calibration {}", path.display()))?;
    }
    let mut opts = QuantizeOptions::new(a.method.into());
    opts.dataset = Some(kind.name().to_string());
    opts.seed = Some(seed);
    let (int8, report) = quantize(&bytes, &images, n, &opts)
        .map_err(errors::quantize)
        .with_context(|| file.clone())?;
    splitnas_export::write_atomic(&a.out, &int8)
        .with_context(|| format!("--out {}", a.out.display()))?;
    println!(
        "wrote {}: {} tensors quantized (method {}, {n} calibration images)",
        a.out.display(),
        report.tensors(),
        report.method
    );
    println!(
        "activations={} scales={} weights={} biases={} batchnorms_folded={} biases_clamped={} nodes={} size_float={} size_int8={}",
        report.activations,
        report.scales,
        report.weights,
        report.biases,
        report.batchnorms_folded,
        report.biases_clamped,
        report.nodes,
        bytes.len(),
        int8.len()
    );
    if a.eval {
        evaluate(&float, &int8, &a.out, &set.test, (&mean, &std), bytes.len())?;
    }
    Ok(())
}

/// Prints `float_acc=... int8_acc=... size_float=... size_int8=...`.
fn evaluate(
    float: &Model<Cpu>,
    int8: &[u8],
    out: &Path,
    test: &ImageSet,
    (mean, std): (&[f32], &[f32]),
    size_float: usize,
) -> Result<()> {
    let quantized = Model::<Cpu>::from_bytes(int8, &Default::default())
        .map_err(errors::runtime)
        .with_context(|| format!("--eval: the runtime cannot load {}", out.display()))?;
    let float_acc = accuracy(float, test, mean, std)?;
    let int8_acc = accuracy(&quantized, test, mean, std)?;
    println!(
        "float_acc={float_acc:.4} int8_acc={int8_acc:.4} size_float={size_float} size_int8={}",
        int8.len()
    );
    Ok(())
}
