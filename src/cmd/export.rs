//! `splitnas export`: a trained run (or a genotype with seeded weights) to one ONNX file.

use super::args::DeviceArg;
use super::errors;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::{ArgGroup, Args};
use splitnas_export::{export, Metadata};
use splitnas_models::{Genotype, NetworkConfig};
use splitnas_search::train::{load_run, RunConfig};
use std::path::PathBuf;

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["run", "genotype"])))]
pub struct ExportArgs {
    /// Training run directory (the --out of `splitnas train`): its config.json and model.mpk.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Instead of --run: a genotype (zoo name or file) with seeded initial weights, an
    /// untrained template (metadata: mean 0, std 1, classes class0..).
    #[arg(long)]
    genotype: Option<String>,
    /// Seed of the template's initial weights.
    #[arg(long, default_value_t = 0, conflicts_with = "run")]
    init_seed: u64,
    /// Template: initial channels C.
    #[arg(long, default_value_t = 16, conflicts_with = "run")]
    channels: usize,
    /// Template: cells L.
    #[arg(long, default_value_t = 8, conflicts_with = "run")]
    layers: usize,
    /// Template: input channels (1 gray, 3 RGB).
    #[arg(long, default_value_t = 3, conflicts_with = "run")]
    in_channels: usize,
    /// Template: input image side.
    #[arg(long, default_value_t = 32, conflicts_with = "run")]
    image_size: usize,
    /// Template: classes.
    #[arg(long, default_value_t = 10, conflicts_with = "run")]
    classes: usize,
    /// Template: CSC-DARTS identity connection in every cell.
    #[arg(long, conflicts_with = "run")]
    identity: bool,
    /// The ONNX file to write (written to a temporary name, then renamed).
    #[arg(long)]
    out: PathBuf,
    // where the network is loaded and folded (the file is the same on every device)
    #[command(flatten)]
    device: DeviceArg,
}

/// The ONNX metadata of a training run: its genotype, normalization, classes, data set.
pub fn metadata(run: &RunConfig) -> Metadata {
    Metadata {
        genotype: run.genotype_darts.clone(),
        mean: run.mean.clone(),
        std: run.std.clone(),
        classes: run.classes.clone(),
        dataset: run.dataset.clone(),
    }
}

pub fn run(a: ExportArgs) -> Result<()> {
    let kind = a.device.open()?;
    splitnas_search::with_backend!(kind, export_on(&a))
}

fn export_on<B: Backend>(device: &B::Device, a: &ExportArgs) -> Result<()> {
    let device = device.clone();
    let (cfg, net, meta) = match (&a.run, &a.genotype) {
        (Some(dir), _) => {
            let (run, net) = load_run::<B>(dir, &device)
                .map_err(errors::train)
                .with_context(|| format!("--run {}", dir.display()))?;
            let meta = metadata(&run);
            (run.network, net, meta)
        }
        (None, Some(g)) => {
            let cfg = NetworkConfig::new(Genotype::resolve(g).context("--genotype")?)
                .with_channels(a.channels)
                .with_layers(a.layers)
                .with_in_channels(a.in_channels)
                .with_image_size(a.image_size)
                .with_classes(a.classes)
                .with_identity(a.identity);
            B::seed(&device, a.init_seed);
            let net = cfg
                .init::<B>(&device)
                .map_err(|e| errors::network(&e).unwrap_or_else(|| e.into()))?;
            let meta = Metadata::untrained(&cfg);
            (cfg, net, meta)
        }
        (None, None) => bail!("give --run DIR or --genotype NAME|FILE"),
    };
    let r =
        export(&net, &cfg, &meta, &a.out).with_context(|| format!("--out {}", a.out.display()))?;
    println!("wrote {} (genotype {})", r.path.display(), meta.genotype);
    println!(
        "parameters: {} ({} before BatchNorm folding; auxiliary head dropped)",
        r.parameters, r.parameters_before
    );
    println!("MACs per image: {} ({:.1} M)", r.macs, r.macs as f64 / 1e6);
    println!("file size: {} bytes", r.file_bytes);
    println!("nodes: {}", r.nodes);
    println!(
        "parameters={} macs={} file_bytes={} nodes={} seconds={:.3}",
        r.parameters, r.macs, r.file_bytes, r.nodes, r.seconds
    );
    Ok(())
}
