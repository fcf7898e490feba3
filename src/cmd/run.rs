//! `splitnas run`: an ONNX file with the Burn runtime on images or a .npy tensor; prints
//! the top classes. The flags, output and errors are `splitnas_runtime::cli`'s, which the
//! runtime-only `splitnas-run` binary shares.

use anyhow::Result;
pub use splitnas_runtime::cli::RunArgs;

pub fn run(a: RunArgs) -> Result<()> {
    Ok(splitnas_runtime::cli::run(&a)?)
}
