//! The inference commands as one piece of code for two binaries: `splitnas run` /
//! `splitnas bench run` (the full toolkit) and `splitnas-run` / `splitnas-run bench` (this
//! crate's runtime-only binary): their flags ([`RunArgs`], [`BenchArgs`]), what they print
//! ([`run`], [`bench`]) and how a failure reads ([`report`]).
//!
//! ```no_run
//! use clap::Parser;
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     run: splitnas_runtime::cli::RunArgs,
//! }
//! splitnas_runtime::cli::run(&Cli::parse().run).unwrap();
//! ```
//!
//! Built with the `cli` feature (default on).

use crate::device::{self, DeviceError};
use crate::{input, micro_plan, AnyModel, DeviceKind, RuntimeError};
use clap::Args;
use std::path::{Path, PathBuf};

/// Why an inference command failed, in the command line's terms (the flag or file at
/// fault first).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A flag value the command cannot use.
    #[error("{flag}: {problem}")]
    Flag {
        /// The flag, e.g. `--top-k`.
        flag: &'static str,
        /// What is wrong with its value.
        problem: &'static str,
    },
    /// `--device NAME` cannot be opened: not compiled in, or no such device here.
    #[error("--device {device}")]
    Device {
        /// The device asked for.
        device: DeviceKind,
        /// Why it cannot be used.
        #[source]
        source: DeviceError,
    },
    /// `bench`'s `--batch` or `--iters` is zero.
    #[error("--batch and --iters must be at least 1")]
    BenchCounts,
    /// The model file could not be loaded.
    #[error("{}", file.display())]
    Load {
        /// The ONNX file.
        file: PathBuf,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// Image inputs need the file's mean and standard deviation.
    #[error("{}: no usable mean/std in the file's metadata to normalize images; give a normalized float32 .npy input instead", file.display())]
    NoNormalization {
        /// The ONNX file.
        file: PathBuf,
    },
    /// `--output` could not be written.
    #[error("--output")]
    Output(#[source] RuntimeError),
    /// `--steps-out` could not be written, or the file runs on no engine with steps.
    #[error("--steps-out")]
    StepsOut(#[source] RuntimeError),
    /// Reading an input or running the model failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Why a model file could not be loaded: the device this binary lacks (named as its
/// `--device` flag), or the runtime's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// `--device NAME` needs a backend this binary was built without.
    #[error("--device {flag}")]
    Device {
        /// The device as typed (`cuda`, `wgpu`).
        flag: &'static str,
        /// The runtime's [`RuntimeError::Device`].
        #[source]
        source: RuntimeError,
    },
    /// The runtime's error.
    #[error(transparent)]
    Runtime(RuntimeError),
    /// A microcontroller plan that does not check (`splitnas_micro::Plan::parse`).
    #[error("not a valid plan: {0}")]
    Plan(micro_plan::PlanError),
}

/// A `--device` value that names no device.
#[derive(Debug, thiserror::Error)]
#[error("--device: unknown device '{0}' (expected cpu, ndarray, cuda or wgpu)")]
pub struct UnknownDevice(pub String);

/// `--device`: the Burn backend.
#[derive(Args, Clone, Debug)]
pub struct DeviceArg {
    /// cpu (flex, default), ndarray, cuda or wgpu.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceKind,
}

/// Lets a closed stdout (`splitnas ... | head`) end the process quietly, as it ends every
/// other Unix tool, instead of a panic in `println!` (Rust's runtime ignores SIGPIPE, so
/// the write fails and `println!` panics). Call first thing in `main`.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal; no other thread runs yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `--device`'s parser: case-insensitive, `flex` and `gpu` accepted; anything else is an
/// [`UnknownDevice`] (the binaries print it as one line and exit with status 1).
pub fn parse_device(s: &str) -> Result<DeviceKind, UnknownDevice> {
    s.parse().map_err(|_| UnknownDevice(s.to_string()))
}

impl DeviceArg {
    /// The device, opened (once per process): a GPU names its adapter on stderr
    /// (`device: wgpu on ...`), so that a run never falls back to the CPU unnoticed.
    pub fn open(&self) -> Result<DeviceKind, CliError> {
        let what = device::open(self.device).map_err(|source| CliError::Device {
            device: self.device,
            source,
        })?;
        if self.device.is_gpu() {
            eprintln!("device: {what}");
        }
        Ok(self.device)
    }
}

/// Flags of `run`: an ONNX file on images or a .npy tensor.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// The ONNX file (from `splitnas export` or PyTorch), or a microcontroller plan
    /// (`splitnas compile`'s `model.plan`, run on the host).
    pub file: PathBuf,
    /// Inputs: a float32 NCHW .npy tensor (used as is) or image files (PNG/JPEG, resized
    /// and normalized with the file's mean/std).
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Write the logits [N, classes] to this .npy file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[allow(missing_docs)] // clap would show a doc comment here as the flag group's help
    #[command(flatten)]
    pub device: DeviceArg,
    /// Classes to print per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
}

/// Flags of `bench`: inference latency of an ONNX file.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// The ONNX file.
    pub file: PathBuf,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed runs after two warm-up runs.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Also write every step's time (one image, op after op, median of `--iters` runs)
    /// to this JSON file: what `splitnas bench ops --from DIR` builds a latency table
    /// from on a board.
    #[arg(long, value_name = "FILE")]
    pub steps_out: Option<PathBuf>,
    #[allow(missing_docs)] // clap would show a doc comment here as the flag group's help
    #[command(flatten)]
    pub device: DeviceArg,
}

/// The step times `bench --steps-out` writes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StepTimes {
    /// Where they were measured.
    pub device: String,
    /// Runs per step (the median kept).
    pub repeats: usize,
    /// `(ONNX node, seconds)` in plan order.
    pub steps: Vec<(String, f64)>,
}

/// Loads `file` on `device`.
pub fn load(file: &Path, device: DeviceKind) -> Result<AnyModel, CliError> {
    AnyModel::load(file, device).map_err(|e| CliError::Load {
        file: file.to_path_buf(),
        source: match e {
            RuntimeError::Device(DeviceError::NotCompiled(flag)) => {
                LoadError::Device { flag, source: e }
            }
            e => LoadError::Runtime(e),
        },
    })
}

/// `run`: prints each image's top `--top-k` classes with their probabilities
/// (`NAME: class (p), ...`), and `wrote logits [N, K] to OUT` when `--output` is given.
pub fn run(a: &RunArgs) -> Result<(), CliError> {
    if a.top_k == 0 {
        return Err(CliError::Flag {
            flag: "--top-k",
            problem: "must be at least 1",
        });
    }
    if is_plan_file(&a.file) {
        return run_plan(a);
    }
    let model = load(&a.file, a.device.open()?)?;
    if let Some(line) = model.engine_line() {
        eprintln!("{line}");
    }
    let (x, names) = read_inputs(a, model.input_shape(), || model.mean().zip(model.std()))?;
    let logits = model.run_host(&x, names.len())?;
    let k = model.num_classes();
    let classes = model
        .classes()
        .unwrap_or_else(|| (0..k).map(|i| format!("class{i}")).collect());
    print_results(a, &names, &logits, &classes)
}

/// Whether `file` begins with a plan's magic (`SNPL`); unreadable files are left to the
/// ONNX loader's error.
fn is_plan_file(file: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|_| micro_plan::is_plan(&head))
}

/// `run` on a microcontroller plan (`splitnas compile`), on the host through
/// `splitnas-micro`: `engine: micro plan` on stderr; images are normalized with the mean
/// and std of the `.json` beside the plan (written by `compile`), classes named by it.
fn run_plan(a: &RunArgs) -> Result<(), CliError> {
    let bytes = std::fs::read(&a.file).map_err(|source| CliError::Load {
        file: a.file.clone(),
        source: LoadError::Runtime(RuntimeError::Io {
            path: a.file.clone(),
            source,
        }),
    })?;
    let plan = micro_plan::PlanModel::new(bytes).map_err(|e| CliError::Load {
        file: a.file.clone(),
        source: LoadError::Plan(e),
    })?;
    eprintln!("engine: micro plan (arena {} bytes)", plan.arena_len());
    let meta = micro_plan::PlanMeta::beside(&a.file);
    let (x, names) = read_inputs(a, plan.input_shape(), || {
        meta.mean_std(plan.input_shape()[0])
    })?;
    let logits = plan
        .run_host(&x, names.len())
        .map_err(|e| CliError::Runtime(RuntimeError::Input(e.to_string())))?;
    let k = plan.num_classes();
    let classes = meta
        .classes(k)
        .unwrap_or_else(|| (0..k).map(|i| format!("class{i}")).collect());
    print_results(a, &names, &logits, &classes)
}

/// The `--input` files as NCHW floats of images `chw`, and a name per image; images are
/// normalized with `mean_std()` (an error when it has none).
fn read_inputs(
    a: &RunArgs,
    chw: [usize; 3],
    mean_std: impl Fn() -> Option<(Vec<f32>, Vec<f32>)>,
) -> Result<(Vec<f32>, Vec<String>), CliError> {
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
            let Some((mean, std)) = mean_std() else {
                return Err(CliError::NoNormalization {
                    file: a.file.clone(),
                });
            };
            x.extend(input::read_image(path, chw, &mean, &std)?);
            names.push(path.display().to_string());
        }
    }
    Ok((x, names))
}

/// Each image's top `--top-k` classes, and `--output`'s logits.
fn print_results(
    a: &RunArgs,
    names: &[String],
    logits: &[f32],
    classes: &[String],
) -> Result<(), CliError> {
    let (n, k) = (names.len(), classes.len());
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
        input::write_npy(out, logits, &[n as u64, k as u64]).map_err(CliError::Output)?;
        println!("wrote logits [{n}, {k}] to {}", out.display());
    }
    Ok(())
}

/// `bench`: p50/p90 latency of `--iters` runs of a `--batch`-image input after two
/// warm-up runs; prints `FILE: batch B, N runs on DEVICE, S steps` and
/// `p50_ms=.. p90_ms=.. images_per_s=..`.
pub fn bench(a: &BenchArgs) -> Result<(), CliError> {
    let (file, batch, iters) = (&a.file, a.batch, a.iters);
    if batch == 0 || iters == 0 {
        return Err(CliError::BenchCounts);
    }
    let device = a.device.open()?;
    let model = load(file, device)?;
    if let Some(line) = model.engine_line() {
        eprintln!("{line}");
    }
    let [c, h, w] = model.input_shape();
    let x: Vec<f32> = (0..batch * c * h * w)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    for _ in 0..2 {
        model.run_host(&x, batch)?;
    }
    let mut ms = vec![];
    for _ in 0..iters {
        let t0 = std::time::Instant::now();
        model.run_host(&x, batch)?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let (p50, p90) = (pick(0.5), pick(0.9));
    println!(
        "{}: batch {batch}, {iters} runs on {}, {} steps",
        file.display(),
        device,
        model.steps()
    );
    println!(
        "p50_ms={p50:.3} p90_ms={p90:.3} images_per_s={:.1}",
        batch as f64 / (p50 / 1e3)
    );
    if let Some(out) = &a.steps_out {
        let times = StepTimes {
            device: format!(
                "splitnas runtime, {} engine, {device}, one image, op after op on 1 thread, {} {}",
                model.engine(),
                std::env::consts::ARCH,
                std::env::consts::OS
            ),
            repeats: iters,
            steps: model.step_times(iters).map_err(CliError::StepsOut)?,
        };
        let json = serde_json::to_string(&times).unwrap_or_default();
        splitnas_host::fs::write_atomic(out, json.as_bytes()).map_err(|e| {
            CliError::StepsOut(RuntimeError::Write {
                path: e.path,
                source: e.source,
            })
        })?;
        println!(
            "wrote {} step times to {}",
            times.steps.len(),
            out.display()
        );
    }
    Ok(())
}

/// The one line a failed command prints after `error: `: the error and each cause that
/// the message does not already quote.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_one_line_naming_the_flag_or_file() {
        let e = load(Path::new("/nonexistent/m.onnx"), DeviceKind::Cpu).unwrap_err();
        let line = report(&e);
        assert!(
            line.starts_with("/nonexistent/m.onnx: cannot read /nonexistent/m.onnx"),
            "{line}"
        );
        assert_eq!(
            parse_device("tpu").unwrap_err().to_string(),
            "--device: unknown device 'tpu' (expected cpu, ndarray, cuda or wgpu)"
        );
        assert_eq!(parse_device("FLEX").unwrap(), DeviceKind::Cpu);
        assert_eq!(parse_device("gpu").unwrap(), DeviceKind::Cuda);
        let e = CliError::Output(RuntimeError::Input("x".into()));
        assert_eq!(report(&e), "--output: x");
        // the device is checked before the bytes are decoded
        #[cfg(not(feature = "cuda"))]
        {
            let file = std::env::temp_dir().join(format!("cli-test-{}.onnx", std::process::id()));
            std::fs::write(&file, b"not read").unwrap();
            let e = load(&file, DeviceKind::Cuda).unwrap_err();
            std::fs::remove_file(&file).unwrap();
            let want = format!("{}: --device cuda: this binary", file.display());
            assert!(report(&e).starts_with(&want), "{}", report(&e));
        }
    }
}
