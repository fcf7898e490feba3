//! `splitnas bench ops`: the latency table of an evaluation network on this machine
//! (`search --latency-table`, see `splitnas_models::latency`).
//!
//! Every op other than `none` is timed where the search can place it: for each op, two
//! networks of the given sizes with that op on every edge (each node reading s0 and s1,
//! then nodes 1..3 reading the node before: the stride-1 edges of the reduction cells)
//! are exported with seeded weights and run by the runtime's float engine on one image,
//! op after op on one thread; each step's median over `--repeats` runs goes to the edge
//! its ONNX node belongs to (`cellC/nodeJ/edgeE/...`, the export's names), and the rest
//! (stem, preprocessing, additions, classifier) to `fixed_ns` (median over the networks).
//! `--checks N` random cells are then timed whole against the table's prediction.
//!
//! On a board with only `splitnas-run`: `--emit DIR` writes those networks as ONNX files
//! with a `manifest.json`; `splitnas-run bench F.onnx --steps-out F.steps.json` times each
//! one there; `--from DIR` builds the table from the step files.

use anyhow::{Context, Result};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use clap::Args;
use splitnas_export::{to_onnx_bytes, Metadata};
use splitnas_models::latency::{LatencyCheck, LatencyNetwork, OpLatency, LATENCY_FORMAT};
use splitnas_models::{zoo, CellGenotype, Genotype, LatencyTable, NetworkConfig, Primitive};
use splitnas_runtime::cli::StepTimes;
use splitnas_runtime::Model;
use splitnas_search::data::DatasetKind;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Args)]
pub struct OpsArgs {
    /// Initial channels C of the evaluation network (`train --channels`).
    #[arg(long, default_value_t = 36)]
    channels: usize,
    /// Cells L (`train --layers`).
    #[arg(long, default_value_t = 20)]
    layers: usize,
    /// Data set whose image size, channels and classes the network takes.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// The CSC-DARTS identity connection (`train --identity`).
    #[arg(long)]
    identity: bool,
    /// Timed runs per network (after one warm-up); each step's median is kept.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
    /// Random cells timed whole against the table's prediction.
    #[arg(long, default_value_t = 3)]
    checks: usize,
    /// The table to write (JSON, atomically).
    #[arg(long, required_unless_present = "emit")]
    out: Option<PathBuf>,
    /// Write the networks to time as ONNX files (and `manifest.json`) into DIR instead,
    /// to time them on a board with `splitnas-run bench F.onnx --steps-out F.steps.json`.
    #[arg(long, value_name = "DIR", conflicts_with = "from")]
    emit: Option<PathBuf>,
    /// Build the table from DIR's `manifest.json` and the `.steps.json` files timed on
    /// the board (written by `--emit DIR` and `splitnas-run bench --steps-out`).
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
}

/// What `--emit` writes: the sizes and, per file, its genotype.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    network: LatencyNetwork,
    files: Vec<(String, String)>,
}

/// Where step times come from.
enum Source {
    /// Timed here, `repeats` runs.
    Here(usize),
    /// Written into the directory.
    Emit(PathBuf, Vec<(String, String)>),
    /// Read from `.steps.json` files of the directory (device, repeats seen).
    From(PathBuf, Option<(String, usize)>),
}

impl Source {
    /// Step times of network `name` (`None` when only emitting).
    fn steps(&mut self, name: &str, cfg: &NetworkConfig) -> Result<Option<Vec<(String, f64)>>> {
        match self {
            Source::Here(repeats) => Ok(Some(time_steps(cfg, *repeats)?)),
            Source::Emit(dir, files) => {
                let file = format!("{name}.onnx");
                splitnas_export::write_atomic(&dir.join(&file), &onnx(cfg)?)
                    .with_context(|| format!("--emit {}", dir.display()))?;
                files.push((file, cfg.genotype.to_darts()));
                Ok(None)
            }
            Source::From(dir, seen) => {
                let path = dir.join(format!("{name}.steps.json"));
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "--from: {} (time {name}.onnx with splitnas-run bench --steps-out)",
                        path.display()
                    )
                })?;
                let t: StepTimes = serde_json::from_str(&text).with_context(|| {
                    format!("--from: {}: not a step-times file", path.display())
                })?;
                seen.get_or_insert((t.device, t.repeats));
                Ok(Some(t.steps))
            }
        }
    }
}

/// Step name -> (cell, node, edge) of a searched edge.
fn edge_of(name: &str) -> Option<(usize, usize, usize)> {
    let mut parts = name.split('/');
    let mut num = |prefix: &str| parts.next()?.strip_prefix(prefix)?.parse().ok();
    Some((num("cell")?, num("node")?, num("edge")?))
}

/// The float ONNX file of `cfg`'s network with seeded weights.
fn onnx(cfg: &NetworkConfig) -> Result<Vec<u8>> {
    let device = Default::default();
    Flex::seed(&device, 0);
    let net = cfg.init::<Flex>(&device)?;
    Ok(to_onnx_bytes(&net, cfg, &Metadata::untrained(cfg))?.1)
}

/// Per-step seconds of `cfg`'s network (seeded weights) on the float engine.
fn time_steps(cfg: &NetworkConfig, repeats: usize) -> Result<Vec<(String, f64)>> {
    let model = Model::<Flex>::from_bytes(&onnx(cfg)?, &Default::default())?;
    Ok(model.step_times(repeats)?)
}

/// The two cells that place `op` on every kind of edge (see the module notes).
fn placements(op: Primitive) -> [CellGenotype; 2] {
    let cell = |inputs: [(usize, usize); 4]| CellGenotype {
        edges: inputs
            .iter()
            .flat_map(|&(a, b)| [(op, a), (op, b)])
            .collect(),
        concat: vec![2, 3, 4, 5],
    };
    [
        cell([(0, 1), (0, 1), (0, 1), (0, 1)]),
        cell([(0, 1), (1, 2), (2, 3), (3, 4)]),
    ]
}

pub fn ops(a: OpsArgs) -> Result<()> {
    if a.repeats == 0 {
        anyhow::bail!("--repeats must be at least 1");
    }
    let (classes, in_channels, side) = DatasetKind::from_str(&a.dataset)
        .map(DatasetKind::shape)
        .map_err(anyhow::Error::new)
        .context("--dataset")?;
    let shape = NetworkConfig::new(zoo::by_name("DARTS_V2").context("zoo")?)
        .with_channels(a.channels)
        .with_layers(a.layers)
        .with_classes(classes)
        .with_in_channels(in_channels)
        .with_image_size(side)
        .with_identity(a.identity);
    shape
        .validate()
        .map_err(|e| super::errors::network(&e).unwrap_or_else(|| e.into()))?;
    let mut checks = a.checks;
    let mut source = match (&a.emit, &a.from) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir).with_context(|| format!("--emit {}", dir.display()))?;
            Source::Emit(dir.clone(), vec![])
        }
        (None, Some(dir)) => {
            let path = dir.join("manifest.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--from: {}", path.display()))?;
            let m: Manifest = serde_json::from_str(&text)
                .with_context(|| format!("--from: {}: not a manifest", path.display()))?;
            if m.network != LatencyNetwork::of(&shape) {
                anyhow::bail!(
                    "--from {}: the networks were emitted at {:?}, these flags give {:?}",
                    dir.display(),
                    m.network,
                    LatencyNetwork::of(&shape)
                );
            }
            // the checks that were emitted
            checks = m.files.iter().filter(|f| f.0.starts_with("check-")).count();
            Source::From(dir.clone(), None)
        }
        (None, None) => Source::Here(a.repeats),
    };
    let sites = shape.cell_sites();
    // per cell, per op: stride-1 and stride-2 edge times (seconds)
    let mut edges: Vec<BTreeMap<&str, [Vec<f64>; 2]>> = vec![BTreeMap::new(); a.layers];
    let mut fixed = vec![];
    for &op in &Primitive::ALL[1..] {
        for (v, cell) in placements(op).into_iter().enumerate() {
            let mut cfg = shape.clone();
            cfg.genotype = Genotype::uniform(cell.clone(), cell.clone())?;
            let Some(steps) =
                source.steps(&format!("{}-{}", op.name(), ["s0s1", "chain"][v]), &cfg)?
            else {
                continue;
            };
            let mut per_edge: BTreeMap<(usize, usize, usize), f64> = BTreeMap::new();
            let mut rest = 0.0;
            for (name, s) in steps {
                match edge_of(&name) {
                    Some(e) => *per_edge.entry(e).or_default() += s,
                    None => rest += s,
                }
            }
            fixed.push(rest);
            for (i, site) in sites.iter().enumerate() {
                for (j, &(_, input)) in cell.edges.iter().enumerate() {
                    let t = per_edge.get(&(i, j / 2, j % 2)).copied().unwrap_or(0.0);
                    let class = usize::from(site.stride(input) == 2);
                    edges[i].entry(op.name()).or_default()[class].push(t);
                }
            }
        }
    }
    if matches!(source, Source::Emit(..)) {
        for seed in 1..=a.checks as u64 {
            let mut cfg = shape.clone();
            cfg.genotype = zoo::random(seed);
            source.steps(&format!("check-{seed}"), &cfg)?;
        }
        let Source::Emit(dir, files) = source else {
            unreachable!()
        };
        let m = Manifest {
            network: LatencyNetwork::of(&shape),
            files,
        };
        let json = serde_json::to_string_pretty(&m)?;
        splitnas_export::write_atomic(&dir.join("manifest.json"), json.as_bytes())?;
        println!(
            "wrote {} networks and manifest.json to {}; on the device: for f in {}/*.onnx; do splitnas-run bench \"$f\" --iters {} --steps-out \"${{f%.onnx}}.steps.json\"; done; then: splitnas bench ops --channels {} --layers {} --dataset {} --from {} --out lut.json",
            m.files.len(),
            dir.display(),
            dir.display(),
            a.repeats,
            a.channels,
            a.layers,
            a.dataset,
            dir.display()
        );
        return Ok(());
    }
    fixed.sort_by(f64::total_cmp);
    let ns = |v: &[f64]| -> Option<u64> {
        (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64 * 1e9).round() as u64)
    };
    let (device, repeats) = match &source {
        Source::From(_, Some(seen)) => seen.clone(),
        _ => (
            format!(
                "splitnas runtime, float engine, flex CPU backend, one image, op after op on 1 thread, {} {}",
                std::env::consts::ARCH,
                std::env::consts::OS
            ),
            a.repeats,
        ),
    };
    let mut table = LatencyTable {
        format: LATENCY_FORMAT.into(),
        device,
        network: LatencyNetwork::of(&shape),
        repeats,
        fixed_ns: ns(&fixed[fixed.len() / 2..=fixed.len() / 2]).unwrap_or(0),
        cells: edges
            .iter()
            .map(|cell| {
                cell.iter()
                    .map(|(op, [s1, s2])| {
                        let t = OpLatency {
                            stride1_ns: ns(s1),
                            stride2_ns: ns(s2),
                        };
                        (op.to_string(), t)
                    })
                    .collect()
            })
            .collect(),
        checks: vec![],
    };
    let mut worst: f64 = 0.0;
    for seed in 1..=checks as u64 {
        let mut cfg = shape.clone();
        cfg.genotype = zoo::random(seed);
        let Some(steps) = source.steps(&format!("check-{seed}"), &cfg)? else {
            continue;
        };
        let measured: f64 = steps.iter().map(|s| s.1).sum();
        let predicted = table.network_ns(&cfg)?;
        let measured = (measured * 1e9).round() as u64;
        let err = predicted as f64 / measured.max(1) as f64 - 1.0;
        worst = worst.max(err.abs());
        println!(
            "lut check: random cell seed {seed}: predicted {:.3} ms, measured {:.3} ms ({:+.1}%)",
            predicted as f64 / 1e6,
            measured as f64 / 1e6,
            100.0 * err
        );
        table.checks.push(LatencyCheck {
            genotype: cfg.genotype.to_darts(),
            predicted_ns: predicted,
            measured_ns: measured,
        });
    }
    let out = a.out.as_deref().context("--out is needed")?;
    let json = serde_json::to_string_pretty(&table)?;
    splitnas_export::write_atomic(out, json.as_bytes())
        .with_context(|| format!("--out {}", out.display()))?;
    println!(
        "wrote {}: C={} L={} {}x{}x{}, {} ops x {} cells, fixed {:.3} ms",
        out.display(),
        a.channels,
        a.layers,
        in_channels,
        side,
        side,
        Primitive::ALL.len() - 1,
        a.layers,
        table.fixed_ns as f64 / 1e6
    );
    println!(
        "latency_table={} fixed_ms={:.3} checks={} max_check_error_pct={:.1}",
        out.display(),
        table.fixed_ns as f64 / 1e6,
        table.checks.len(),
        100.0 * worst
    );
    Ok(())
}
