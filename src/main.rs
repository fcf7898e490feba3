//! The `splitnas` command line: flag parsing and calls into the library crates.

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use splitnas_export::{export, Metadata};
use splitnas_models::{Genotype, NetworkConfig};
use splitnas_runtime::{input, AnyModel, DeviceKind as RuntimeDevice};
use splitnas_search::architect::Order;
use splitnas_search::bench::{bench_search, bench_train, SearchBench, TrainBench};
use splitnas_search::data::{DataOptions, DatasetKind};
use splitnas_search::device::DeviceKind;
use splitnas_search::mixed_op::SelectorKind;
use splitnas_search::search::{search, SearchOptions, SearchRecipe};
use splitnas_search::supernet::SupernetConfig;

use splitnas_search::train::{load_run, train, TrainOptions, TrainRecipe};
use std::path::PathBuf;

mod compare;
mod quickstart;

/// mimalloc instead of the system allocator: Burn allocates a fresh buffer for
/// most tensor operations, and glibc returns large ones to the OS on every free
/// (page faults on every reuse); mimalloc keeps them, about 2x on element-wise
/// forward + backward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "splitnas",
    version,
    about = "Channel-split differentiable architecture search: search, train, export, run"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Search a cell with channel-split differentiable architecture search (CSC-DARTS).
    Search(SearchArgs),
    /// Train the network of a genotype from scratch on a data set.
    Train(TrainArgs),
    /// Export a trained run (or a genotype with seeded weights) to one ONNX file.
    Export(ExportArgs),
    /// Run an ONNX file with Burn on images or a .npy tensor and print the top classes.
    Run(RunArgs),
    /// Inspect genotypes.
    #[command(subcommand)]
    Genotype(GenotypeCmd),
    /// Benchmarks (print a final `key=value` line).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// The whole journey in one command: search -> train -> export -> runtime -> pictures.
    Quickstart(QuickstartArgs),
    /// Search with every channel-split method on the same budget, train every found cell
    /// plus DARTS_V2, PC_DARTS and random cells with the same recipe, write compare.md/json.
    Compare(CompareArgs),
    /// Render a run's curves (and a search run's op-weight evolution) as SVG and PNG.
    Plot {
        /// A run directory (the --out of `splitnas train` or `splitnas search`).
        run: PathBuf,
        /// Directory for the pictures.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct QuickstartArgs {
    /// Output directory (default: the first free of runs/quickstart, runs/quickstart-2, ...).
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu (flex, default), ndarray, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Replace a previous quickstart in --out (otherwise it is refused).
    #[arg(long)]
    force: bool,
    /// Search epochs (the first is warm-up).
    #[arg(long, default_value_t = 3)]
    search_epochs: usize,
    /// Training images the search uses: the first N, half for the weights, half for the
    /// architecture.
    #[arg(long, default_value_t = 1000)]
    search_images: usize,
    /// Training epochs of the found cell.
    #[arg(long, default_value_t = 4)]
    train_epochs: usize,
    /// Training images: the first N of Fashion-MNIST (the embedded subset holds 3000).
    #[arg(long, default_value_t = 2000)]
    train_limit: usize,
    /// Test images: the first N (the embedded subset holds 1000).
    #[arg(long, default_value_t = 1000)]
    test_limit: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct CompareArgs {
    /// fashion-mnist, mnist, cifar10, cifar100 or synthetic.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Directory with the data files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Methods to search, comma-separated: split, random, attention, slim, progressive.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "split,random,attention,slim,progressive"
    )]
    methods: Vec<String>,
    /// Search: supernet channels C.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Search: supernet cells L.
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// Search: K of the fixed-K methods (slim learns its proportion).
    #[arg(long, default_value_t = 4)]
    partial_k: usize,
    /// Search epochs of every method (progressive: split between its 3 stages).
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Search warm-up epochs (progressive: per stage).
    #[arg(long, default_value_t = 1)]
    warmup_epochs: usize,
    /// Search batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Search architecture learning rate (10x DARTS: the budget is a small fraction of a
    /// paper search).
    #[arg(long, default_value_t = 6e-3)]
    arch_lr: f64,
    /// Search order: first or second.
    #[arg(long, default_value = "first")]
    order: String,
    /// Training images each search uses (half weights, half architecture).
    #[arg(long, default_value_t = 2000)]
    search_limit: usize,
    /// Training: channels C of every evaluation network.
    #[arg(long, default_value_t = 8)]
    train_channels: usize,
    /// Training: cells L.
    #[arg(long, default_value_t = 5)]
    train_layers: usize,
    /// Training epochs.
    #[arg(long, default_value_t = 3)]
    train_epochs: usize,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    train_batch_size: usize,
    /// Training learning rate (cosine to 0).
    #[arg(long, default_value_t = 0.05)]
    train_lr: f64,
    /// Training images (the first N; default 5000).
    #[arg(long, default_value_t = 5000)]
    train_limit: usize,
    /// Test images (default: the whole test set).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Training seeds per genotype (mean and spread over them).
    #[arg(long, default_value_t = 2)]
    seeds: usize,
    /// Random genotypes to train as baselines (seeds 1..N).
    #[arg(long, default_value_t = 3)]
    random_genotypes: usize,
    /// Seed of the searches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu (flex, default), ndarray, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output directory (a rerun with the same settings continues it).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum GenotypeCmd {
    /// Print a genotype (zoo name, JSON file or DARTS-notation file).
    Show {
        /// DARTS_V1, DARTS_V2, PC_DARTS (case-insensitive) or a file.
        genotype: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// List the zoo.
    List,
    /// Draw the normal and reduction cells as an SVG diagram (DARTS-paper style).
    Draw {
        /// DARTS_V1, DARTS_V2, PC_DARTS (case-insensitive) or a file.
        genotype: String,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Darts,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time full search iterations (architecture + weight step) on synthetic data.
    SearchStep {
        #[arg(long, default_value_t = 4)]
        partial_k: usize,
        #[arg(long, default_value = "split")]
        selector: String,
        /// Slim-DARTS spatial reconstruction unit in every MixedOp.
        #[arg(long)]
        spatial_reconstruction: bool,
        /// Slim-DARTS learned proportion (branches with 1/2, 1/4, 1/8 of the channels).
        #[arg(long)]
        learn_proportion: bool,
        #[arg(long, default_value = "first")]
        order: String,
        #[arg(long, default_value_t = 16)]
        channels: usize,
        #[arg(long, default_value_t = 8)]
        layers: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        #[arg(long, default_value_t = 3)]
        in_channels: usize,
        /// Timed iterations after one warm-up iteration.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Inference latency of an ONNX file with the Burn runtime.
    Run {
        /// The ONNX file.
        file: PathBuf,
        /// Images per run.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed runs after two warm-up runs.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// cpu (flex, default), ndarray, cuda or wgpu.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Training throughput of an evaluation network on synthetic data.
    Train {
        #[arg(long, default_value = "DARTS_V2")]
        genotype: String,
        #[arg(long, default_value_t = 16)]
        channels: usize,
        #[arg(long, default_value_t = 8)]
        layers: usize,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        #[arg(long, default_value_t = 3)]
        in_channels: usize,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Args)]
struct SearchArgs {
    /// fashion-mnist, mnist, cifar10, cifar100 or synthetic.
    #[arg(long)]
    dataset: String,
    /// Directory with the data files (fashion-mnist default: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial channels C of the supernet.
    #[arg(long, default_value_t = 16)]
    channels: usize,
    /// Cells L of the supernet.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Batch size of each half (weights and architecture).
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Initial weight learning rate, cosine-annealed to 0. Default: 0.1 at batch 256,
    /// scaled linearly with --batch-size (0.025 at 64) when not given.
    #[arg(long)]
    lr: Option<f64>,
    /// Partial channel factor K: C/K channels of each edge enter the operations (1 = DARTS).
    /// Default 4.
    #[arg(long)]
    partial_k: Option<usize>,
    /// Channel selection: split (CSC-DARTS: fixed split + channel shuffle), random
    /// (PC-DARTS-style subset per step) or attention (ADARTS: top-scored channels of a
    /// channel-attention module, weighted by their scores).
    #[arg(long, default_value = "split")]
    selector: String,
    /// Slim-DARTS: a spatial reconstruction unit (group-norm gated, cross-reconstructed)
    /// on the channels entering every MixedOp.
    #[arg(long)]
    spatial_reconstruction: bool,
    /// Slim-DARTS: learn each edge's proportion of processed channels (a softmax mixture of
    /// 1/2, 1/4 and 1/8, trained with the architecture) instead of a fixed --partial-k.
    #[arg(long, conflicts_with = "partial_k")]
    learn_proportion: bool,
    /// LFR-DARTS: search the 3 stages (cells before, between and after the reductions) one
    /// after the other, shallow to deep, each on the derived cells of the earlier ones;
    /// the --epochs are split between the stages, each starting with --warmup-epochs.
    #[arg(long, value_name = "S")]
    progressive: Option<usize>,
    /// CSC-DARTS identity connection on every cell (default on).
    #[arg(long, overrides_with = "no_identity")]
    identity: bool,
    /// Ablate the identity connection.
    #[arg(long = "no-identity")]
    no_identity: bool,
    /// Architecture gradient: first or second (unrolled, finite-difference Hessian).
    #[arg(long, default_value = "first")]
    order: String,
    /// Adam learning rate of the architecture parameters.
    #[arg(long, default_value_t = 6e-4)]
    arch_lr: f64,
    /// Epochs with the architecture frozen.
    #[arg(long, default_value_t = 15)]
    warmup_epochs: usize,
    /// Fraction of the training images for the weights (the rest trains the architecture).
    #[arg(long, default_value_t = 0.5)]
    train_portion: f64,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu (flex, default), ndarray, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Continue the search in --out after its last checkpoint.
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The ONNX file (from `splitnas export` or PyTorch).
    file: PathBuf,
    /// Inputs: a float32 NCHW .npy tensor (used as is) or image files (PNG/JPEG, resized
    /// and normalized with the file's mean/std).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Write the logits [N, classes] to this .npy file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// cpu (flex, default), ndarray, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Classes to print per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
}

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["run", "genotype"])))]
struct ExportArgs {
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
}

#[derive(Args)]
struct TrainArgs {
    /// Zoo name (DARTS_V1, DARTS_V2, PC_DARTS) or a genotype file (JSON or DARTS notation).
    #[arg(long)]
    genotype: String,
    /// fashion-mnist, mnist, cifar10, cifar100 or synthetic.
    #[arg(long)]
    dataset: String,
    /// Directory with the data files (fashion-mnist default: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial channels C.
    #[arg(long, default_value_t = 36)]
    channels: usize,
    /// Number of cells L.
    #[arg(long, default_value_t = 20)]
    layers: usize,
    #[arg(long, default_value_t = 600)]
    epochs: usize,
    #[arg(long, default_value_t = 96)]
    batch_size: usize,
    /// Initial learning rate, cosine-annealed to 0.
    #[arg(long, default_value_t = 0.025)]
    lr: f64,
    /// Use only the first N training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_limit: Option<usize>,
    /// Auxiliary head after cell 2L/3, loss weight 0.4.
    #[arg(long)]
    auxiliary: bool,
    /// Cutout square side in pixels (0 = off).
    #[arg(long, default_value_t = 0)]
    cutout: usize,
    /// Final drop-path probability, ramped linearly from 0.
    #[arg(long, default_value_t = 0.0)]
    drop_path: f64,
    /// CSC-DARTS identity connection in every cell.
    #[arg(long)]
    identity: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu (flex, default), ndarray, cuda or wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out after its last checkpoint.
    #[arg(long)]
    resume: bool,
}

fn device(s: &str) -> Result<DeviceKind> {
    s.parse().context("--device")
}

fn run_search(a: SearchArgs) -> Result<()> {
    let dataset: DatasetKind = a.dataset.parse().context("--dataset")?;
    let selector: SelectorKind = a
        .selector
        .parse()
        .map_err(anyhow::Error::msg)
        .context("--selector")?;
    let order: Order = a
        .order
        .parse()
        .map_err(anyhow::Error::msg)
        .context("--order")?;
    let lr = a.lr.unwrap_or(0.1 * a.batch_size as f64 / 256.0);
    let opts = SearchOptions {
        dataset,
        data: DataOptions {
            dir: a.data_dir,
            train_limit: a.train_limit,
            test_limit: Some(1),
            seed: a.seed,
        },
        supernet: SupernetConfig::new()
            .with_channels(a.channels)
            .with_layers(a.layers)
            .with_partial_k(a.partial_k.unwrap_or(4))
            .with_selector(selector)
            .with_identity(a.identity || !a.no_identity)
            .with_spatial_reconstruction(a.spatial_reconstruction)
            .with_learn_proportion(a.learn_proportion)
            .with_stages(a.progressive.unwrap_or(1)),
        recipe: SearchRecipe {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr,
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: 5.0,
            arch_lr: a.arch_lr,
            arch_weight_decay: 1e-3,
            arch_betas: (0.5, 0.999),
            warmup_epochs: a.warmup_epochs,
            train_portion: a.train_portion,
            order,
            seed: a.seed,
        },
        out: a.out,
        resume: a.resume,
        progress: true,
    };
    let s = search(device(&a.device)?, &opts)?;
    println!(
        "final genotype = {}\nwrote {}",
        s.genotype.to_darts(),
        s.out.join("genotype.json").display()
    );
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let dataset: DatasetKind = a.dataset.parse().context("--dataset")?;
    let opts = TrainOptions {
        genotype: a.genotype,
        dataset,
        data: DataOptions {
            dir: a.data_dir,
            train_limit: a.train_limit,
            test_limit: a.test_limit,
            seed: a.seed,
        },
        channels: a.channels,
        layers: a.layers,
        auxiliary: a.auxiliary,
        identity: a.identity,
        recipe: TrainRecipe {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: 5.0,
            auxiliary_weight: 0.4,
            cutout: a.cutout,
            drop_path: a.drop_path,
            seed: a.seed,
        },
        out: a.out,
        resume: a.resume,
        progress: true,
    };
    let s = train(device(&a.device)?, &opts)?;
    if let Some(m) = s.metrics.last() {
        println!(
            "final test_acc={:.4} test_loss={:.4} parameters={} out={}",
            m.test_acc,
            m.test_loss,
            s.parameters,
            s.out.display()
        );
    }
    Ok(())
}

/// The ONNX metadata of a training run: its genotype, normalization, classes, data set.
fn run_metadata(run: &splitnas_search::train::RunConfig) -> Metadata {
    Metadata {
        genotype: run.genotype_darts.clone(),
        mean: run.mean.clone(),
        std: run.std.clone(),
        classes: run.classes.clone(),
        dataset: run.dataset.clone(),
    }
}

fn run_export(a: ExportArgs) -> Result<()> {
    type B = burn::backend::Flex;
    let device = Default::default();
    let (cfg, net, meta) = match (&a.run, &a.genotype) {
        (Some(dir), _) => {
            let (run, net) =
                load_run::<B>(dir, &device).with_context(|| format!("--run {}", dir.display()))?;
            let meta = run_metadata(&run);
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
            <B as burn::tensor::backend::Backend>::seed(&device, a.init_seed);
            let net = cfg.init::<B>(&device)?;
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

fn load_model(file: &std::path::Path, device: &str) -> Result<AnyModel> {
    let kind: RuntimeDevice = device.parse().context("--device")?;
    AnyModel::load(file, kind).with_context(|| format!("{}", file.display()))
}

fn run_model(a: RunArgs) -> Result<()> {
    if a.top_k == 0 {
        bail!("--top-k: must be at least 1");
    }
    let model = load_model(&a.file, &a.device)?;
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

fn bench_run(file: &std::path::Path, batch: usize, iters: usize, device: &str) -> Result<()> {
    if batch == 0 || iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    let model = load_model(file, device)?;
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
        "{}: batch {batch}, {iters} runs on {device}, {} steps",
        file.display(),
        model.steps()
    );
    println!(
        "p50_ms={p50:.3} p90_ms={p90:.3} images_per_s={:.1}",
        batch as f64 / (p50 / 1e3)
    );
    Ok(())
}

fn run_quickstart(a: QuickstartArgs) -> Result<()> {
    quickstart::run(&quickstart::Quickstart {
        out: a.out,
        device: a.device,
        force: a.force,
        search_epochs: a.search_epochs,
        search_images: a.search_images,
        train_epochs: a.train_epochs,
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        seed: a.seed,
    })?;
    Ok(())
}

/// Every timed step (the spread shows a noisy machine), then the contract line.
fn print_bench(r: &splitnas_search::bench::BenchResult) {
    let each: Vec<String> = r.times.iter().map(|t| format!("{t:.4}")).collect();
    println!("steps_s={}", each.join(","));
    println!("step_s={:.4} images_per_s={:.1}", r.step_s, r.images_per_s);
}

/// `mi_option_purge_delay` (the same index in mimalloc v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Never hand freed pages back to the OS: training reuses the same buffer
    // sizes every step, and re-faulting them cost about 10% of a search step.
    // SAFETY: sets a process-wide allocator option; no allocation is in flight.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    if let Err(e) = real_main() {
        // The chain, leaving out causes a message already quotes.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg = format!("{msg}: {c}");
            }
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => {
            println!("splitnas with no arguments runs `splitnas quickstart` (see `splitnas --help` for every command)");
            match Cli::parse_from(["splitnas", "quickstart"]).command {
                Some(Command::Quickstart(defaults)) => run_quickstart(defaults),
                _ => bail!("internal: the quickstart defaults did not parse"),
            }
        }
        Some(Command::Quickstart(a)) => run_quickstart(a),
        Some(Command::Compare(a)) => {
            compare::run(&compare::Compare {
                dataset: a.dataset,
                data_dir: a.data_dir,
                methods: a.methods,
                channels: a.channels,
                layers: a.layers,
                partial_k: a.partial_k,
                epochs: a.epochs,
                warmup_epochs: a.warmup_epochs,
                batch_size: a.batch_size,
                arch_lr: a.arch_lr,
                order: a.order,
                search_limit: a.search_limit,
                train_channels: a.train_channels,
                train_layers: a.train_layers,
                train_epochs: a.train_epochs,
                train_batch_size: a.train_batch_size,
                train_lr: a.train_lr,
                train_limit: Some(a.train_limit),
                test_limit: a.test_limit,
                seeds: a.seeds,
                random_genotypes: a.random_genotypes,
                seed: a.seed,
                device: a.device,
                out: a.out,
            })?;
            Ok(())
        }
        Some(Command::Plot { run, out }) => {
            for f in splitnas_search::plot::plot_run(&run, &out)? {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Some(Command::Genotype(GenotypeCmd::Draw { genotype, out })) => {
            let g = Genotype::resolve(&genotype)?;
            let svg = splitnas_models::draw::genotype_svg(&g);
            splitnas_search::checkpoint::write_atomic(&out, svg.as_bytes())
                .with_context(|| format!("--out {}", out.display()))?;
            println!("wrote {} ({})", out.display(), g.to_darts());
            Ok(())
        }
        Some(Command::Search(a)) => run_search(a),
        Some(Command::Train(a)) => run_train(a),
        Some(Command::Export(a)) => run_export(a),
        Some(Command::Run(a)) => run_model(a),
        Some(Command::Bench(BenchCmd::Run {
            file,
            batch,
            iters,
            device,
        })) => bench_run(&file, batch, iters, &device),
        Some(Command::Genotype(GenotypeCmd::Show { genotype, format })) => {
            let g = Genotype::resolve(&genotype)?;
            match format {
                Format::Json => println!("{}", g.to_json()),
                Format::Darts => println!("{}", g.to_darts()),
            }
            Ok(())
        }
        Some(Command::Genotype(GenotypeCmd::List)) => {
            for name in splitnas_models::zoo::NAMES {
                if let Some(g) = splitnas_models::zoo::by_name(name) {
                    println!("{name} = {}", g.to_darts());
                }
            }
            Ok(())
        }
        Some(Command::Bench(BenchCmd::SearchStep {
            partial_k,
            selector,
            spatial_reconstruction,
            learn_proportion,
            order,
            channels,
            layers,
            batch_size,
            image_size,
            in_channels,
            steps,
            seed,
            device: d,
        })) => {
            let selector: SelectorKind = selector
                .parse()
                .map_err(anyhow::Error::msg)
                .context("--selector")?;
            let order: Order = order
                .parse()
                .map_err(anyhow::Error::msg)
                .context("--order")?;
            let o = SearchBench {
                supernet: SupernetConfig::new()
                    .with_channels(channels)
                    .with_layers(layers)
                    .with_partial_k(partial_k)
                    .with_selector(selector)
                    .with_spatial_reconstruction(spatial_reconstruction)
                    .with_learn_proportion(learn_proportion)
                    .with_in_channels(in_channels)
                    .with_image_size(image_size),
                order,
                batch_size,
                steps,
                seed,
            };
            print_bench(&bench_search(device(&d)?, &o)?);
            Ok(())
        }
        Some(Command::Bench(BenchCmd::Train {
            genotype,
            channels,
            layers,
            batch_size,
            image_size,
            in_channels,
            steps,
            seed,
            device: d,
        })) => {
            let o = TrainBench {
                genotype,
                channels,
                layers,
                batch_size,
                image_size,
                in_channels,
                steps,
                seed,
            };
            let r = bench_train(device(&d)?, &o)?;
            if r.step_s <= 0.0 {
                bail!("benchmark measured no time");
            }
            print_bench(&r);
            Ok(())
        }
    }
}
