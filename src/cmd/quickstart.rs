//! `splitnas quickstart`: the whole journey in one command. Search a cell (channel split)
//! -> train the network of the found cell -> export ONNX -> run the ONNX file with the
//! Burn runtime on the test images and measure its accuracy -> draw the cell and the
//! run's curves -> print a summary table. Glue only: every stage is a library call.

use super::args::{DeviceArg, SeedArg};
use super::{errors, export::metadata};
use anyhow::{bail, Context, Result};
use clap::Args;
use splitnas_export::export;
use splitnas_models::draw::genotype_svg;
use splitnas_runtime::{input, AnyModel};
use splitnas_search::checkpoint::write_atomic;
use splitnas_search::data::{self, DataOptions, DatasetKind};
use splitnas_search::mixed_op::SelectorKind;
use splitnas_search::plot::plot_run;
use splitnas_search::search::{search, SearchOptions, SearchRecipe};
use splitnas_search::steps::progress_bar;
use splitnas_search::supernet::SupernetConfig;
use splitnas_search::train::{load_run, train, TrainOptions, TrainRecipe};
use std::path::PathBuf;
use std::time::Instant;

/// Channels C of the small networks of quickstart and compare (search and training).
pub const SMALL_CHANNELS: usize = 8;
/// Cells L of the small networks.
pub const SMALL_LAYERS: usize = 5;
/// Partial channel factor K of their searches.
pub const SMALL_PARTIAL_K: usize = 4;

// What the quickstart does; the defaults fit in 10 minutes on 2 CPU cores.
#[derive(Args)]
pub struct QuickstartArgs {
    /// Output directory (default: the first free of runs/quickstart, runs/quickstart-2, ...).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
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
    #[command(flatten)]
    seed: SeedArg,
}

/// What the quickstart writes into its directory (and removes with `--force`).
const OUTPUTS: [&str; 8] = [
    "search",
    "train",
    "model.onnx",
    "cell.svg",
    "pictures",
    "runtime_logits.npy",
    "summary.md",
    "summary.json",
];

struct Row {
    stage: &'static str,
    seconds: f64,
    figure: String,
    file: String,
}

fn pick_out(q: &QuickstartArgs) -> Result<PathBuf> {
    match &q.out {
        Some(dir) => {
            let taken: Vec<&str> = OUTPUTS
                .iter()
                .copied()
                .filter(|f| dir.join(f).exists())
                .collect();
            if !taken.is_empty() {
                if !q.force {
                    bail!(
                        "--out {}: already holds a quickstart ({}); pass --force to replace it or choose another --out",
                        dir.display(),
                        taken.join(", ")
                    );
                }
                for f in taken {
                    let p = dir.join(f);
                    let r = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    r.with_context(|| format!("--force: removing {}", p.display()))?;
                }
            }
            Ok(dir.clone())
        }
        None => {
            let free = (1..)
                .map(|i| {
                    PathBuf::from(if i == 1 {
                        "runs/quickstart".to_string()
                    } else {
                        format!("runs/quickstart-{i}")
                    })
                })
                .find(|p| !p.exists())
                .unwrap_or_else(|| PathBuf::from("runs/quickstart"));
            Ok(free)
        }
    }
}

/// Runs the quickstart.
pub fn run(q: QuickstartArgs) -> Result<()> {
    let device = q.device.open()?;
    if q.search_epochs < 2 {
        bail!("--search-epochs must be at least 2 (one warm-up epoch, then search)");
    }
    if q.train_epochs == 0 || q.train_limit == 0 || q.test_limit == 0 {
        bail!("--train-epochs, --train-limit and --test-limit must be at least 1");
    }
    if q.search_images < 4 {
        bail!("--search-images must be at least 4 (two per half)");
    }
    let out = pick_out(&q)?;
    std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    let t_all = Instant::now();
    println!(
        "splitnas quickstart into {}: search -> train -> export -> runtime -> pictures",
        out.display()
    );
    let data_opts = DataOptions {
        dir: None,
        train_limit: Some(q.train_limit),
        test_limit: Some(q.test_limit),
        seed: q.seed.seed,
    };
    let mut rows = vec![];

    // 1. Search: channel-split supernet on the small budget (warm-up, then architecture
    // steps), batch 32.
    let recipe = SearchRecipe {
        epochs: q.search_epochs,
        batch_size: 32,
        seed: q.seed.seed,
        ..SearchRecipe::SMALL
    };
    println!(
        "\n[1/5] search: CSC-DARTS (K={SMALL_PARTIAL_K}, split selector), C={SMALL_CHANNELS}, L={SMALL_LAYERS}, {} epochs ({} warm-up), first {} Fashion-MNIST training images",
        q.search_epochs, recipe.warmup_epochs, q.search_images
    );
    let t = Instant::now();
    let s = search(
        device.into(),
        &SearchOptions {
            budget: None,
            sram_oracle: None,
            workers: None,
            dataset: DatasetKind::FashionMnist,
            data: DataOptions {
                train_limit: Some(q.search_images),
                ..data_opts.clone()
            },
            supernet: SupernetConfig::new()
                .with_channels(SMALL_CHANNELS)
                .with_layers(SMALL_LAYERS)
                .with_partial_k(SMALL_PARTIAL_K)
                .with_selector(SelectorKind::Split)
                .with_identity(true),
            recipe,
            out: out.join("search"),
            resume: false,
            progress: true,
        },
    )
    .map_err(errors::train)
    .context("search stage")?;
    let last = s.metrics.last().context("search ran no epoch")?;
    rows.push(Row {
        stage: "search",
        seconds: t.elapsed().as_secs_f64(),
        figure: format!(
            "valid acc {:.3} (architecture half); cell in cell.svg",
            last.valid_acc
        ),
        file: out.join("search/genotype.json").display().to_string(),
    });

    // 2. Train the found cell from scratch.
    let genotype_file = out.join("search/genotype.json");
    println!(
        "\n[2/5] train: the found cell, C={SMALL_CHANNELS}, L={SMALL_LAYERS}, {} epochs on {} images, tested on {}",
        q.train_epochs, q.train_limit, q.test_limit
    );
    let t = Instant::now();
    let tr = train(
        device.into(),
        &TrainOptions {
            genotype: genotype_file.display().to_string(),
            dataset: DatasetKind::FashionMnist,
            data: data_opts.clone(),
            channels: SMALL_CHANNELS,
            layers: SMALL_LAYERS,
            auxiliary: false,
            identity: true,
            recipe: TrainRecipe {
                epochs: q.train_epochs,
                batch_size: 64,
                seed: q.seed.seed,
                ..TrainRecipe::DARTS
            },
            out: out.join("train"),
            resume: false,
            progress: true,
            workers: None,
        },
    )
    .map_err(errors::train)
    .context("train stage")?;
    let train_acc = tr.metrics.last().context("training ran no epoch")?.test_acc;
    rows.push(Row {
        stage: "train",
        seconds: t.elapsed().as_secs_f64(),
        figure: format!("test acc {train_acc:.4}, {} parameters", tr.parameters),
        file: out.join("train/model.mpk").display().to_string(),
    });

    // 3. Export the trained run.
    println!("\n[3/5] export: BatchNorm folded, one ONNX file");
    let t = Instant::now();
    let onnx = out.join("model.onnx");
    {
        type B = burn::backend::Flex;
        let dev = Default::default();
        let (run, net) = load_run::<B>(&out.join("train"), &dev).context("export stage")?;
        let meta = metadata(&run);
        let r = export(&net, &run.network, &meta, &onnx).context("export stage")?;
        rows.push(Row {
            stage: "export",
            seconds: t.elapsed().as_secs_f64(),
            figure: format!(
                "{} parameters, {:.1} M MACs/image, {} nodes, {} bytes",
                r.parameters,
                r.macs as f64 / 1e6,
                r.nodes,
                r.file_bytes
            ),
            file: onnx.display().to_string(),
        });
    }

    // 4. The runtime on the test images, normalized with the file's own metadata.
    println!(
        "\n[4/5] runtime: {} on {} test images with Burn ({})",
        onnx.display(),
        q.test_limit,
        device
    );
    let t = Instant::now();
    let model = AnyModel::load(&onnx, device)
        .map_err(errors::runtime)
        .with_context(|| onnx.display().to_string())?;
    let dataset = data::load(DatasetKind::FashionMnist, &data_opts)?;
    let (mean, std) = model
        .mean()
        .zip(model.std())
        .context("the exported file has no mean/std metadata")?;
    let [c, h, w] = model.input_shape();
    let test = &dataset.test;
    if test.channels != c || test.side != h || h != w {
        bail!(
            "{}: expects {c}x{h}x{w} images, the test set has {}x{}x{}",
            onnx.display(),
            test.channels,
            test.side,
            test.side
        );
    }
    let k = model.num_classes();
    let n = test.len();
    let hw = h * w;
    let mut logits = Vec::with_capacity(n * k);
    let bar = progress_bar(true, n as u64, "runtime");
    for start in (0..n).step_by(100) {
        let end = (start + 100).min(n);
        let x: Vec<f32> = test.pixels[start * c * hw..end * c * hw]
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let ch = (i / hw) % c;
                (p as f32 / 255.0 - mean[ch]) / std[ch]
            })
            .collect();
        logits.extend(model.run_host(&x, end - start)?);
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    let correct = logits
        .chunks(k)
        .zip(&test.labels)
        .filter(|(row, &label)| {
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best == label
        })
        .count();
    let runtime_acc = correct as f64 / n as f64;
    input::write_npy(
        &out.join("runtime_logits.npy"),
        &logits,
        &[n as u64, k as u64],
    )?;
    rows.push(Row {
        stage: "runtime",
        seconds: t.elapsed().as_secs_f64(),
        figure: format!("test acc {runtime_acc:.4} (training run: {train_acc:.4})"),
        file: out.join("runtime_logits.npy").display().to_string(),
    });

    // 5. Pictures: the cell and the curves.
    println!("\n[5/5] pictures: cell diagram, training curves, op weights");
    let t = Instant::now();
    let cell_svg = out.join("cell.svg");
    write_atomic(&cell_svg, genotype_svg(&s.genotype).as_bytes())?;
    let pictures = out.join("pictures");
    let mut files = plot_run(&out.join("search"), &pictures.join("search"))?;
    files.extend(plot_run(&out.join("train"), &pictures.join("train"))?);
    rows.push(Row {
        stage: "pictures",
        seconds: t.elapsed().as_secs_f64(),
        figure: format!("{} files", files.len() + 1),
        file: format!("{} and {}/", cell_svg.display(), pictures.display()),
    });

    let total = t_all.elapsed().as_secs_f64();
    let table = summary_table(&rows, total);
    println!("\n{table}");
    println!("genotype = {}", s.genotype.to_darts());
    println!(
        "runtime_acc={runtime_acc:.4} train_acc={train_acc:.4} seconds={total:.1} out={}",
        out.display()
    );
    println!("next: splitnas run {} --input IMAGE.png", onnx.display());
    write_atomic(&out.join("summary.md"), table.as_bytes())?;
    let json = serde_json::json!({
        "data": dataset.source,
        "genotype": s.genotype.to_darts(),
        "train_acc": train_acc,
        "runtime_acc": runtime_acc,
        "test_images": n,
        "seconds": total,
        "stages": rows.iter().map(|r| serde_json::json!({
            "stage": r.stage, "seconds": r.seconds, "figure": r.figure, "file": r.file,
        })).collect::<Vec<_>>(),
    });
    write_atomic(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(())
}

fn summary_table(rows: &[Row], total: f64) -> String {
    let mut s = String::from("| stage | time | key figure | file |\n|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.2} s | {} | {} |\n",
            r.stage, r.seconds, r.figure, r.file
        ));
    }
    s.push_str(&format!("| total | {total:.1} s | | |\n"));
    s
}
