//! `splitnas plot`: a run's curves (and a search run's op-weight evolution) as SVG and PNG.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PlotArgs {
    /// A run directory (the --out of `splitnas train` or `splitnas search`).
    run: PathBuf,
    /// Directory for the pictures.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: PlotArgs) -> Result<()> {
    for f in splitnas_search::plot::plot_run(&a.run, &a.out)? {
        println!("wrote {}", f.display());
    }
    Ok(())
}
