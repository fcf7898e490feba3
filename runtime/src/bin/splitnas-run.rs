//! `splitnas-run`: the runtime alone, for boards that only run inference (a Raspberry Pi,
//! a Jetson's CPU cores). The same flags, output lines and errors as `splitnas run` and
//! `splitnas bench run`: both binaries call [`splitnas_runtime::cli`].

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use splitnas_runtime::cli::{self, BenchArgs, RunArgs, UnknownDevice};

/// mimalloc, as in `splitnas`: Burn allocates a fresh buffer for most tensor operations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: freed pages stay with the process (as `splitnas` sets it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[derive(Parser)]
#[command(
    name = "splitnas-run",
    version,
    about = "Run an ONNX file with Burn on images or a .npy tensor and print the top classes",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Option<RunArgs>,
}

#[derive(Subcommand)]
enum Command {
    /// Inference latency of an ONNX file (prints a final `p50_ms=.. p90_ms=..` line).
    Bench(BenchArgs),
}

fn main() {
    // SAFETY: sets a process-wide allocator option; no allocation is in flight.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let parsed = Cli::try_parse().unwrap_or_else(|e| fail_parse(e));
    let result = match (parsed.command, parsed.run) {
        (Some(Command::Bench(a)), _) => cli::bench(&a),
        (None, Some(a)) => cli::run(&a),
        (None, None) => Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "give an ONNX file and --input PATH..., or `bench FILE`",
            )
            .exit(),
    };
    if let Err(e) = result {
        eprintln!("error: {}", cli::report(&e));
        std::process::exit(1);
    }
}

/// An unknown `--device` is one line and exit status 1, as in `splitnas`; clap reports the
/// rest (usage, exit status 2).
fn fail_parse(e: clap::Error) -> ! {
    if e.kind() == ErrorKind::ValueValidation {
        let source = std::error::Error::source(&e);
        if let Some(bad) = source.and_then(|s| s.downcast_ref::<UnknownDevice>()) {
            eprintln!("error: {bad}");
            std::process::exit(1);
        }
    }
    e.exit()
}
