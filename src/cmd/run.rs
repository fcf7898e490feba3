//! `splitnas run`: an ONNX file with the Burn runtime on images or a .npy tensor; prints
//! the top classes.

use super::args::DeviceArg;
use super::errors;
use anyhow::{bail, Context, Result};
use clap::Args;
use splitnas_runtime::{input, AnyModel, DeviceKind};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct RunArgs {
    /// The ONNX file (from `splitnas export` or PyTorch).
    file: PathBuf,
    /// Inputs: a float32 NCHW .npy tensor (used as is) or image files (PNG/JPEG, resized
    /// and normalized with the file's mean/std).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Write the logits [N, classes] to this .npy file.
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
    /// Classes to print per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
}

/// Loads `file` on `device`; errors name the file (and `--device` for a backend this
/// binary lacks).
pub fn load_model(file: &Path, device: DeviceKind) -> Result<AnyModel> {
    AnyModel::load(file, device)
        .map_err(errors::runtime)
        .with_context(|| format!("{}", file.display()))
}

pub fn run(a: RunArgs) -> Result<()> {
    if a.top_k == 0 {
        bail!("--top-k: must be at least 1");
    }
    let model = load_model(&a.file, a.device.open()?)?;
    let chw = model.input_shape();
    let (mut x, mut names) = (vec![], vec![]);
    for path in &a.input {
        let is_npy = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if is_npy {
            let (data, n) = input::read_npy(path, chw)?;
            x.extend(data);
            names.extend((0..n).map(|i| format!("{}[{i}]", path.display())));
        } else {
            let (Some(mean), Some(std)) = (model.mean(), model.std()) else {
                bail!(
                    "{}: no usable mean/std in the file's metadata to normalize images; give a normalized float32 .npy input instead",
                    a.file.display()
                );
            };
            x.extend(input::read_image(path, chw, &mean, &std)?);
            names.push(path.display().to_string());
        }
    }
    let n = names.len();
    let logits = model.run_host(&x, n)?;
    let k = model.num_classes();
    let classes = model
        .classes()
        .unwrap_or_else(|| (0..k).map(|i| format!("class{i}")).collect());
    for (name, row) in names.iter().zip(logits.chunks(k)) {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
        let top: Vec<String> = order
            .iter()
            .take(a.top_k)
            .map(|&i| format!("{} ({:.3})", classes[i], (row[i] - max).exp() / sum))
            .collect();
        println!("{name}: {}", top.join(", "));
    }
    if let Some(out) = &a.output {
        input::write_npy(out, &logits, &[n as u64, k as u64]).context("--output")?;
        println!("wrote logits [{n}, {k}] to {}", out.display());
    }
    Ok(())
}
