//! `splitnas genotype`: print, list and draw genotypes.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use splitnas_export::plan::{network_plan, NetworkPlanError};
use splitnas_models::{draw, zoo, Genotype, NetworkConfig, NetworkError};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum GenotypeCmd {
    /// Print a genotype (zoo name, JSON file or DARTS-notation file).
    Show {
        /// DARTS_V1, DARTS_V2, PC_DARTS (case-insensitive) or a file.
        genotype: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Also print the evaluation network's cost (`cost: params=N macs=M sram_bytes=S
        /// flash_bytes=F ...`): learnable parameters (BatchNorm affine included, running
        /// statistics and the auxiliary head not), multiply-accumulates per image, and the
        /// arena and length of its int8 microcontroller plan (`splitnas compile`), at the
        /// sizes below.
        #[arg(long)]
        cost: bool,
        #[command(flatten)]
        sizes: CostSizes,
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

/// The evaluation network `genotype show --cost` prices (`train`'s defaults).
#[derive(Args)]
pub struct CostSizes {
    /// Initial channels C.
    #[arg(long, default_value_t = 36)]
    channels: usize,
    /// Cells L.
    #[arg(long, default_value_t = 20)]
    layers: usize,
    /// Input image side.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// CSC-DARTS identity connection in every cell.
    #[arg(long)]
    identity: bool,
}

/// `genotype show --format`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Darts,
}

pub fn run(cmd: GenotypeCmd) -> Result<()> {
    match cmd {
        GenotypeCmd::Show {
            genotype,
            format,
            cost,
            sizes: z,
        } => {
            let g = Genotype::resolve(&genotype)?;
            // priced first: a bad size prints nothing but the error
            let priced = cost.then(|| price(&g, &z)).transpose()?;
            match format {
                Format::Json => println!("{}", g.to_json()),
                Format::Darts => println!("{}", g.to_darts()),
            }
            if let Some(line) = priced {
                println!("{line}");
            }
        }
        GenotypeCmd::List => {
            for name in zoo::NAMES {
                if let Some(g) = zoo::by_name(name) {
                    println!("{name} = {}", g.to_darts());
                }
            }
        }
        GenotypeCmd::Draw { genotype, out } => {
            let g = Genotype::resolve(&genotype)?;
            let svg = draw::genotype_svg(&g);
            splitnas_search::checkpoint::write_atomic(&out, svg.as_bytes())
                .with_context(|| format!("--out {}", out.display()))?;
            println!("wrote {} ({})", out.display(), g.to_darts());
        }
    }
    Ok(())
}

/// The `cost: ...` line of `genotype show --cost`: the cost model's parameters and MACs,
/// and the int8 microcontroller plan's arena and length (`splitnas compile`'s, made
/// from seeded weights: they depend on the shapes alone).
fn price(g: &Genotype, z: &CostSizes) -> Result<String> {
    let net = NetworkConfig::new(g.clone())
        .with_channels(z.channels)
        .with_layers(z.layers)
        .with_image_size(z.image_size)
        .with_in_channels(z.in_channels)
        .with_classes(z.classes)
        .with_identity(z.identity);
    let flagged = |e: NetworkError| super::errors::network(&e).unwrap_or_else(|| e.into());
    let c = net.cost().map_err(flagged)?;
    let plan = network_plan(&net).map_err(|e| match e {
        NetworkPlanError::Network(n) => flagged(n),
        e => anyhow::Error::new(e).context("planning the int8 network"),
    })?;
    Ok(format!(
        "cost: params={} macs={} sram_bytes={} flash_bytes={} (C={} L={} {}x{}x{}, {} classes, identity={})",
        c.params,
        c.macs,
        plan.sram_peak,
        plan.flash_bytes,
        z.channels,
        z.layers,
        z.in_channels,
        z.image_size,
        z.image_size,
        z.classes,
        z.identity
    ))
}
