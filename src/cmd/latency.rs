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

use anyhow::{Context, Result};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use clap::Args;
use splitnas_export::{to_onnx_bytes, Metadata};
use splitnas_models::latency::{LatencyCheck, LatencyNetwork, OpLatency, LATENCY_FORMAT};
use splitnas_models::{zoo, CellGenotype, Genotype, LatencyTable, NetworkConfig, Primitive};
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
    #[arg(long)]
    out: PathBuf,
}

/// Step name -> (cell, node, edge) of a searched edge.
fn edge_of(name: &str) -> Option<(usize, usize, usize)> {
    let mut parts = name.split('/');
    let mut num = |prefix: &str| parts.next()?.strip_prefix(prefix)?.parse().ok();
    Some((num("cell")?, num("node")?, num("edge")?))
}

/// Per-step seconds of `cfg`'s network (seeded weights) on the float engine.
fn time_steps(cfg: &NetworkConfig, repeats: usize) -> Result<Vec<(String, f64)>> {
    let device = Default::default();
    Flex::seed(&device, 0);
    let net = cfg.init::<Flex>(&device)?;
    let (_, bytes) = to_onnx_bytes(&net, cfg, &Metadata::untrained(cfg))?;
    let model = Model::<Flex>::from_bytes(&bytes, &device)?;
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
    let sites = shape.cell_sites();
    // per cell, per op: stride-1 and stride-2 edge times (seconds)
    let mut edges: Vec<BTreeMap<&str, [Vec<f64>; 2]>> = vec![BTreeMap::new(); a.layers];
    let mut fixed = vec![];
    for &op in &Primitive::ALL[1..] {
        for cell in placements(op) {
            let mut cfg = shape.clone();
            cfg.genotype = Genotype::uniform(cell.clone(), cell.clone())?;
            let steps = time_steps(&cfg, a.repeats)?;
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
    fixed.sort_by(f64::total_cmp);
    let ns = |v: &[f64]| -> Option<u64> {
        (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64 * 1e9).round() as u64)
    };
    let mut table = LatencyTable {
        format: LATENCY_FORMAT.into(),
        device: format!(
            "splitnas runtime, float engine, flex CPU backend, one image, op after op on 1 thread, {} {}",
            std::env::consts::ARCH,
            std::env::consts::OS
        ),
        network: LatencyNetwork::of(&shape),
        repeats: a.repeats,
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
    for seed in 1..=a.checks as u64 {
        let mut cfg = shape.clone();
        cfg.genotype = zoo::random(seed);
        let measured: f64 = time_steps(&cfg, a.repeats)?.iter().map(|s| s.1).sum();
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
    let json = serde_json::to_string_pretty(&table)?;
    splitnas_export::write_atomic(&a.out, json.as_bytes())
        .with_context(|| format!("--out {}", a.out.display()))?;
    println!(
        "wrote {}: C={} L={} {}x{}x{}, {} ops x {} cells, fixed {:.3} ms",
        a.out.display(),
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
        a.out.display(),
        table.fixed_ns as f64 / 1e6,
        table.checks.len(),
        100.0 * worst
    );
    Ok(())
}
