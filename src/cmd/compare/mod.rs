//! `splitnas compare`: every channel-split method searched with the same budget, every
//! found genotype plus DARTS_V2, PC_DARTS and random cells trained with the same recipe,
//! one table (`compare.md`, `compare.json`).
//!
//! Each search and training is a child process of this binary (`splitnas search ...`,
//! `splitnas train ...`), so its wall time and peak memory (`wait4`'s maximum resident set
//! size, what `/usr/bin/time -v` reports) are its own. Work is never repeated or lost: a
//! finished child leaves `result.json` in its directory and is skipped next time; an
//! interrupted one is continued with `--resume` (its seconds add up, its peak is the
//! maximum over the pieces).

mod budget;
mod child;
mod table;

use super::args::{choice, Choice, Dataset, DeviceArg, Order};
use super::quickstart::{SMALL_CHANNELS, SMALL_LAYERS, SMALL_PARTIAL_K};
use anyhow::{bail, Context, Result};
use child::{read_json, read_train, run_once, write_json, ChildCost, TrainResult};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use splitnas_models::{zoo, Genotype, Primitive};
use splitnas_search::budget::Budget;
use splitnas_search::checkpoint::write_atomic;
use splitnas_search::data::DatasetKind;
use splitnas_search::search::SearchRecipe;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

#[derive(Args)]
pub struct CompareArgs {
    /// fashion-mnist, mnist, cifar10, cifar100 or synthetic.
    #[arg(
        long,
        default_value = "fashion-mnist",
        value_parser = choice::<Dataset>(),
        hide_possible_values = true
    )]
    dataset: Dataset,
    /// Directory with the data files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Methods to search, comma-separated: split, random, attention, slim, progressive.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "split,random,attention,slim,progressive",
        value_parser = choice::<Method>(),
        hide_possible_values = true
    )]
    methods: Vec<Method>,
    /// Search: supernet channels C.
    #[arg(long, default_value_t = SMALL_CHANNELS)]
    channels: usize,
    /// Search: supernet cells L.
    #[arg(long, default_value_t = SMALL_LAYERS)]
    layers: usize,
    /// Search: K of the fixed-K methods (slim learns its proportion).
    #[arg(long, default_value_t = SMALL_PARTIAL_K)]
    partial_k: usize,
    /// Search epochs of every method (progressive: split between its 3 stages).
    #[arg(long, default_value_t = SearchRecipe::SMALL.epochs)]
    epochs: usize,
    /// Search warm-up epochs (progressive: per stage).
    #[arg(long, default_value_t = SearchRecipe::SMALL.warmup_epochs)]
    warmup_epochs: usize,
    /// Search batch size.
    #[arg(long, default_value_t = SearchRecipe::SMALL.batch_size)]
    batch_size: usize,
    /// Search architecture learning rate (10x DARTS: the budget is a small fraction of a
    /// paper search).
    #[arg(long, default_value_t = SearchRecipe::SMALL.arch_lr)]
    arch_lr: f64,
    /// Search order: first or second.
    #[arg(
        long,
        default_value = "first",
        value_parser = choice::<Order>(),
        hide_possible_values = true
    )]
    order: Order,
    /// Training images each search uses (half weights, half architecture).
    #[arg(long, default_value_t = 2000)]
    search_limit: usize,
    /// Training: channels C of every evaluation network.
    #[arg(long, default_value_t = SMALL_CHANNELS)]
    train_channels: usize,
    /// Training: cells L.
    #[arg(long, default_value_t = SMALL_LAYERS)]
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
    /// Budget: most parameters of the trained network (--train-channels/--train-layers);
    /// searches get it, random cells are drawn among those that meet it, published cells
    /// over it are left out.
    #[arg(long, value_name = "N")]
    max_params: Option<u64>,
    /// Budget: most multiply-accumulates per image of the trained network.
    #[arg(long, value_name = "N")]
    max_macs: Option<u64>,
    /// Budget: most bytes of the trained network's int8 microcontroller plan arena
    /// (`splitnas compile`); random cells over it are drawn again.
    #[arg(long, value_name = "BYTES")]
    max_sram: Option<u64>,
    #[command(flatten)]
    device: DeviceArg,
    /// Output directory (a rerun with the same settings continues it).
    #[arg(long)]
    out: PathBuf,
}

/// A channel-split method `compare` searches with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Split,
    Random,
    Attention,
    Slim,
    Progressive,
}

impl Choice for Method {
    const NOUN: &'static str = "method";
}

impl Method {
    /// The name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Method::Split => "split",
            Method::Random => "random",
            Method::Attention => "attention",
            Method::Slim => "slim",
            Method::Progressive => "progressive",
        }
    }

    /// What it is.
    pub fn description(self) -> &'static str {
        match self {
            Method::Split => "CSC-DARTS: fixed split + channel shuffle",
            Method::Random => "PC-DARTS-style random channel subset",
            Method::Attention => "ADARTS: attention-selected channels",
            Method::Slim => "Slim-DARTS: random subset, spatial reconstruction, learned proportion",
            Method::Progressive => "LFR-DARTS: 3 stages shallow to deep (split selector)",
        }
    }

    /// The `splitnas search` flags that select it.
    pub fn search_flags(self) -> &'static [&'static str] {
        match self {
            Method::Split => &["--selector", "split"],
            Method::Random => &["--selector", "random"],
            Method::Attention => &["--selector", "attention"],
            Method::Slim => &[
                "--selector",
                "random",
                "--spatial-reconstruction",
                "--learn-proportion",
            ],
            Method::Progressive => &["--selector", "split", "--progressive", "3"],
        }
    }
}

impl From<CompareArgs> for Compare {
    fn from(a: CompareArgs) -> Self {
        Compare {
            dataset: DatasetKind::from(a.dataset).name().to_string(),
            data_dir: a.data_dir,
            methods: a.methods,
            channels: a.channels,
            layers: a.layers,
            partial_k: a.partial_k,
            epochs: a.epochs,
            warmup_epochs: a.warmup_epochs,
            batch_size: a.batch_size,
            arch_lr: a.arch_lr,
            order: a.order.name().to_string(),
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
            device: a.device.device.to_string(),
            out: a.out,
            budget: Budget {
                max_params: a.max_params,
                max_macs: a.max_macs,
                max_sram: a.max_sram,
                max_latency_ns: None,
            },
        }
    }
}

/// What `splitnas compare` was asked to do.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Compare {
    /// Data set name.
    pub dataset: String,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Methods to search.
    pub methods: Vec<Method>,
    /// Search: supernet channels.
    pub channels: usize,
    /// Search: supernet cells.
    pub layers: usize,
    /// Search: partial factor K of the fixed-K methods.
    pub partial_k: usize,
    /// Search epochs (a progressive search splits them between its stages).
    pub epochs: usize,
    /// Search warm-up epochs (per stage for the progressive search).
    pub warmup_epochs: usize,
    /// Search batch size.
    pub batch_size: usize,
    /// Search architecture learning rate.
    pub arch_lr: f64,
    /// first or second.
    pub order: String,
    /// Training images the search uses (half weights, half architecture).
    pub search_limit: usize,
    /// Training: channels of the evaluation network.
    pub train_channels: usize,
    /// Training: cells.
    pub train_layers: usize,
    /// Training epochs.
    pub train_epochs: usize,
    /// Training batch size.
    pub train_batch_size: usize,
    /// Training learning rate.
    pub train_lr: f64,
    /// Training images.
    pub train_limit: Option<usize>,
    /// Test images.
    pub test_limit: Option<usize>,
    /// Training seeds per genotype.
    pub seeds: usize,
    /// Random genotypes (seeds 1..=N).
    pub random_genotypes: usize,
    /// Seed of the searches.
    pub seed: u64,
    /// Device of every child.
    pub device: String,
    /// Output directory.
    pub out: PathBuf,
    /// Limits on the trained network (none: an empty budget).
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Method or baseline name.
    pub method: String,
    /// What it is.
    pub description: String,
    /// Search wall time (None for baselines).
    pub search_seconds: Option<f64>,
    /// Search CPU time, user + system (None for baselines).
    pub search_cpu_seconds: Option<f64>,
    /// Search peak resident memory (MB).
    pub search_peak_mb: Option<f64>,
    /// Genotype, DARTS notation.
    pub genotype: String,
    /// skip_connect edges in the normal cell(s) (summed over stages for per-stage genotypes).
    pub normal_skips: usize,
    /// Parameters of the trained network.
    pub parameters: usize,
    /// Multiply-accumulates per image of the trained network (cost model).
    #[serde(default)]
    pub macs: u64,
    /// Arena bytes of the trained network's int8 plan, under an SRAM budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sram: Option<u64>,
    /// Test accuracy per training seed.
    pub test_acc: Vec<f64>,
    /// Mean test accuracy.
    pub test_acc_mean: f64,
    /// max - min over the seeds.
    pub test_acc_spread: f64,
}

/// `compare.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareFile {
    /// The budget and recipe.
    pub settings: Compare,
    /// The table.
    pub rows: Vec<Row>,
}

fn check(c: &Compare) -> Result<()> {
    if c.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if c.epochs == 0 || c.train_epochs == 0 {
        bail!("--epochs and --train-epochs must be at least 1");
    }
    if c.methods.contains(&Method::Progressive) && c.epochs < 3 * (c.warmup_epochs + 1) {
        bail!(
            "--epochs {}: the progressive search splits them into 3 stages that each need more than --warmup-epochs {} epochs; use at least {}",
            c.epochs,
            c.warmup_epochs,
            3 * (c.warmup_epochs + 1)
        );
    }
    Ok(())
}

fn normal_skips(g: &Genotype) -> usize {
    g.stages()
        .iter()
        .map(|p| {
            p.normal
                .edges
                .iter()
                .filter(|e| e.0 == Primitive::SkipConnect)
                .count()
        })
        .sum()
}

fn data_args(c: &Compare) -> Vec<String> {
    let mut v = vec!["--dataset".to_string(), c.dataset.clone()];
    if let Some(d) = &c.data_dir {
        v.extend(["--data-dir".to_string(), d.display().to_string()]);
    }
    v
}

/// Runs `splitnas compare`.
pub fn run(a: CompareArgs) -> Result<()> {
    compare(&a.into())?;
    Ok(())
}

/// Runs the comparison; returns the rows (also written to compare.md / compare.json).
pub fn compare(c: &Compare) -> Result<Vec<Row>> {
    check(c)?;
    let exe = std::env::current_exe().context("locating the splitnas binary")?;
    std::fs::create_dir_all(c.out.join("logs"))
        .with_context(|| format!("--out {}", c.out.display()))?;
    let settings_file = c.out.join("settings.json");
    if let Some(previous) = read_json::<Compare>(&settings_file) {
        if &previous != c {
            bail!(
                "--out {} holds a comparison with other settings ({}); use another --out to compare with a different budget",
                c.out.display(),
                settings_file.display()
            );
        }
    }
    write_json(&settings_file, c)?;
    // Baselines: the published cells within the budget, random cells meeting it.
    let mut baselines: Vec<(String, String, Genotype, Option<ChildCost>)> = vec![];
    let data = DatasetKind::from_str(&c.dataset)
        .map(DatasetKind::shape)
        .map_err(anyhow::Error::new)?;
    for name in ["DARTS_V2", "PC_DARTS"] {
        let g = zoo::by_name(name).context("zoo")?;
        let cost = budget::cost(c, &g, data)?;
        if !c.budget.admits(&cost) {
            println!(
                "{name}: {} parameters, {} MACs{}: over the budget, left out",
                cost.params,
                cost.macs,
                c.budget
                    .max_sram
                    .map_or(String::new(), |_| format!(", {} SRAM bytes", cost.sram))
            );
            continue;
        }
        baselines.push((name.into(), "published cell".into(), g, None));
    }
    for (i, (seed, g)) in budget::random_within(c, c.random_genotypes, data)?
        .into_iter()
        .enumerate()
    {
        baselines.push((
            format!("random_{}", i + 1),
            format!("random cell (seed {seed})"),
            g,
            None,
        ));
    }
    let total = c.methods.len() + (c.methods.len() + baselines.len()) * c.seeds;
    if !c.budget.is_empty() {
        println!(
            "budget on the trained network (C={} L={}):{}{}",
            c.train_channels,
            c.train_layers,
            c.budget
                .max_params
                .map_or(String::new(), |n| format!(" params <= {n}")),
            c.budget
                .max_macs
                .map_or(String::new(), |n| format!(" MACs <= {n}")),
        );
        if let Some(n) = c.budget.max_sram {
            println!("  SRAM (int8 plan arena) <= {n} bytes");
        }
    }
    let mut step = 0;
    let t_all = Instant::now();

    // 1. Searches.
    let mut candidates: Vec<(String, String, Genotype, Option<ChildCost>)> = vec![];
    for &m in &c.methods {
        let (name, description) = (m.name(), m.description());
        step += 1;
        let dir = c.out.join("search").join(name);
        let done = dir.join("result.json");
        let cost = match read_json::<ChildCost>(&done) {
            Some(cost) => {
                println!(
                    "[{step}/{total}] search {name}: done before ({:.0} s)",
                    cost.seconds
                );
                cost
            }
            None => {
                println!("[{step}/{total}] search {name} ({description})");
                let mut args: Vec<String> = vec!["search".into()];
                args.extend(data_args(c));
                for (f, v) in [
                    ("--channels", c.channels.to_string()),
                    ("--layers", c.layers.to_string()),
                    ("--epochs", c.epochs.to_string()),
                    ("--warmup-epochs", c.warmup_epochs.to_string()),
                    ("--batch-size", c.batch_size.to_string()),
                    ("--arch-lr", c.arch_lr.to_string()),
                    ("--order", c.order.clone()),
                    ("--train-limit", c.search_limit.to_string()),
                    ("--seed", c.seed.to_string()),
                    ("--device", c.device.clone()),
                    ("--out", dir.display().to_string()),
                ] {
                    args.extend([f.to_string(), v]);
                }
                if m != Method::Slim {
                    args.extend(["--partial-k".to_string(), c.partial_k.to_string()]);
                }
                args.extend(m.search_flags().iter().map(|s| s.to_string()));
                args.extend(budget::search_flags(c));
                let log = c.out.join("logs").join(format!("search-{name}.log"));
                let cost = run_once(&exe, args, &dir, &log)?;
                write_json(&done, &cost)?;
                println!(
                    "    {:.0} s ({:.0} s CPU), peak {:.0} MB",
                    cost.seconds, cost.cpu_seconds, cost.peak_rss_mb
                );
                cost
            }
        };
        let gfile = dir.join("genotype.json");
        let g = Genotype::resolve(&gfile.display().to_string())
            .with_context(|| format!("reading {}", gfile.display()))?;
        candidates.push((name.to_string(), description.to_string(), g, Some(cost)));
    }
    candidates.extend(baselines);

    // 2. Training, same recipe for every genotype.
    let mut rows = vec![];
    for (name, description, g, search_cost) in candidates {
        let gdir = c.out.join("genotypes");
        std::fs::create_dir_all(&gdir)?;
        let gfile = gdir.join(format!("{name}.json"));
        write_atomic(&gfile, g.to_json().as_bytes())?;
        let mut accs = vec![];
        let mut parameters = 0;
        for seed in 0..c.seeds as u64 {
            step += 1;
            let dir = c.out.join("train").join(format!("{name}-seed{seed}"));
            let done = dir.join("result.json");
            let r = match read_json::<TrainResult>(&done) {
                Some(r) => {
                    println!(
                        "[{step}/{total}] train {name} seed {seed}: done before (test_acc {:.4})",
                        r.test_acc
                    );
                    r
                }
                None => {
                    println!("[{step}/{total}] train {name} seed {seed}");
                    let mut args: Vec<String> = vec!["train".into()];
                    args.extend(data_args(c));
                    for (f, v) in [
                        ("--genotype", gfile.display().to_string()),
                        ("--channels", c.train_channels.to_string()),
                        ("--layers", c.train_layers.to_string()),
                        ("--epochs", c.train_epochs.to_string()),
                        ("--batch-size", c.train_batch_size.to_string()),
                        ("--lr", c.train_lr.to_string()),
                        ("--seed", seed.to_string()),
                        ("--device", c.device.clone()),
                        ("--out", dir.display().to_string()),
                    ] {
                        args.extend([f.to_string(), v]);
                    }
                    if let Some(n) = c.train_limit {
                        args.extend(["--train-limit".to_string(), n.to_string()]);
                    }
                    if let Some(n) = c.test_limit {
                        args.extend(["--test-limit".to_string(), n.to_string()]);
                    }
                    let log = c
                        .out
                        .join("logs")
                        .join(format!("train-{name}-seed{seed}.log"));
                    let cost = run_once(&exe, args, &dir, &log)?;
                    let r = read_train(&dir, &log, cost)?;
                    write_json(&done, &r)?;
                    println!(
                        "    test_acc {:.4}, {} parameters, {:.0} s",
                        r.test_acc, r.parameters, r.cost.seconds
                    );
                    r
                }
            };
            accs.push(r.test_acc);
            parameters = r.parameters;
        }
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let spread = accs.iter().copied().fold(f64::MIN, f64::max)
            - accs.iter().copied().fold(f64::MAX, f64::min);
        let cost = budget::cost(c, &g, data)?;
        rows.push(Row {
            method: name,
            description,
            search_seconds: search_cost.as_ref().map(|c| c.seconds),
            search_cpu_seconds: search_cost.as_ref().map(|c| c.cpu_seconds),
            search_peak_mb: search_cost.as_ref().map(|c| c.peak_rss_mb),
            normal_skips: normal_skips(&g),
            macs: cost.macs,
            sram: c.budget.max_sram.map(|_| cost.sram),
            genotype: g.to_darts(),
            parameters,
            test_acc: accs,
            test_acc_mean: mean,
            test_acc_spread: spread,
        });
    }
    write_json(
        &c.out.join("compare.json"),
        &CompareFile {
            settings: c.clone(),
            rows: rows.clone(),
        },
    )?;
    let md = table::markdown(c, &rows);
    write_atomic(&c.out.join("compare.md"), md.as_bytes())?;
    println!("\n{md}");
    println!(
        "compare: {} rows, {:.0} s, wrote {} and {}",
        rows.len(),
        t_all.elapsed().as_secs_f64(),
        c.out.join("compare.md").display(),
        c.out.join("compare.json").display()
    );
    Ok(rows)
}
