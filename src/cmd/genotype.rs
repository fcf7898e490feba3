//! `splitnas genotype`: print, list and draw genotypes.

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use splitnas_models::{draw, zoo, Genotype};
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

/// `genotype show --format`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Darts,
}

pub fn run(cmd: GenotypeCmd) -> Result<()> {
    match cmd {
        GenotypeCmd::Show { genotype, format } => {
            let g = Genotype::resolve(&genotype)?;
            match format {
                Format::Json => println!("{}", g.to_json()),
                Format::Darts => println!("{}", g.to_darts()),
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
