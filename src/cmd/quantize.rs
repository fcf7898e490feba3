//! `splitnas quantize`: a float ONNX file -> an int8 QDQ file (`export::quantize`),
//! calibrated on a fixed seeded sample of the training split of the data set the file's
//! metadata names, normalized as the metadata says; `--eval` runs both files with the
//! runtime on the test split.

use super::args::{choice, OptionalDataArgs, QuantMethod, SeedArg};
use super::{errors, testset};
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use splitnas_export::quantize::{quantize, QuantizeOptions};
use splitnas_runtime::Model;
use splitnas_search::data::ImageSet;
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

/// Top-1 accuracy of `model` on `set`.
fn accuracy(model: &Model<Cpu>, set: &ImageSet, mean: &[f32], std: &[f32]) -> Result<f64> {
    let k = model.num_classes();
    let run = |x: &[f32], n| model.run_host(x, n).map_err(errors::runtime);
    Ok(testset::evaluate(set, (mean, std), k, run)?.0)
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
    let kind = testset::dataset_kind(&file, &a.data, float.metadata())?;
    let seed = a.seed.seed;
    let set = testset::load(kind, &a.data, a.eval_images, seed)?;
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
    let images = testset::normalized(&set.train, &indices, &mean, &std);
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
