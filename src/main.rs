//! The `splitnas` command line: the commands and their dispatch; each command's flags and
//! glue live in `cmd/`.

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod cmd;

use cmd::args::UnknownValue;
use cmd::{
    bench, compare, compile, export, genotype, plot, quantize, quickstart, run, search, train,
    workers,
};
use splitnas_runtime::cli::{report, UnknownDevice};

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
    Search(search::SearchArgs),
    /// Train the network of a genotype from scratch on a data set.
    Train(train::TrainArgs),
    /// Export a trained run (or a genotype with seeded weights) to one ONNX file.
    Export(export::ExportArgs),
    /// Quantize a float ONNX file to int8 (QDQ), calibrated on training images.
    Quantize(quantize::QuantizeArgs),
    /// Compile an int8 QDQ file into a microcontroller plan (DIR/model.plan) within a
    /// target's SRAM and flash budgets.
    Compile(compile::CompileArgs),
    /// Run an ONNX file (or a compiled plan) on images or a .npy tensor and print the top classes.
    Run(run::RunArgs),
    /// Inspect genotypes.
    #[command(subcommand)]
    Genotype(genotype::GenotypeCmd),
    /// Benchmarks (print a final `key=value` line).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// The whole journey in one command: search -> train -> export -> runtime -> pictures.
    Quickstart(quickstart::QuickstartArgs),
    /// Search with every channel-split method on the same budget, train every found cell
    /// plus DARTS_V2, PC_DARTS and random cells with the same recipe, write compare.md/json.
    Compare(compare::CompareArgs),
    /// Render a run's curves (and a search run's op-weight evolution) as SVG and PNG.
    Plot(plot::PlotArgs),
    /// Run the coordinator of a search on several machines (`search --nodes M
    /// --coordinator HOST:PORT`).
    Coordinator(workers::CoordinatorArgs),
}

/// `mi_option_purge_delay` (the same index in mimalloc v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Never hand freed pages back to the OS: training reuses the same buffer
    // sizes every step, and re-faulting them cost about 10% of a search step.
    splitnas_runtime::cli::default_sigpipe();
    // SAFETY: sets a process-wide allocator option; no allocation is in flight.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => fail_parse(e),
    };
    if let Err(e) = dispatch(cli.command) {
        // The chain, leaving out causes a message already quotes (as `splitnas-run` does).
        eprintln!("error: {}", report(e.as_ref()));
        splitnas_runtime::device::exit(1);
    }
    splitnas_runtime::device::exit(0);
}

/// A named flag value that is none of its choices is reported like every other bad value
/// a command finds (one line, exit code 1); clap reports the rest (usage, exit code 2).
fn fail_parse(e: clap::Error) -> ! {
    if e.kind() == ErrorKind::ValueValidation {
        let source = std::error::Error::source(&e);
        if let Some(bad) = source.and_then(|s| s.downcast_ref::<UnknownValue>()) {
            eprintln!("error: {bad}");
            std::process::exit(1);
        }
        // `run` and `bench run` take their `--device` from the runtime's shared flags
        if let Some(bad) = source.and_then(|s| s.downcast_ref::<UnknownDevice>()) {
            eprintln!("error: {bad}");
            std::process::exit(1);
        }
    }
    e.exit()
}

fn dispatch(command: Option<Command>) -> anyhow::Result<()> {
    match command {
        None => {
            println!("splitnas with no arguments runs `splitnas quickstart` (see `splitnas --help` for every command)");
            match Cli::parse_from(["splitnas", "quickstart"]).command {
                Some(Command::Quickstart(defaults)) => quickstart::run(defaults),
                _ => anyhow::bail!("internal: the quickstart defaults did not parse"),
            }
        }
        Some(Command::Search(a)) => search::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Export(a)) => export::run(a),
        Some(Command::Quantize(a)) => quantize::run(a),
        Some(Command::Compile(a)) => compile::run(a),
        Some(Command::Run(a)) => run::run(a),
        Some(Command::Genotype(c)) => genotype::run(c),
        Some(Command::Bench(c)) => bench::run(c),
        Some(Command::Quickstart(a)) => quickstart::run(a),
        Some(Command::Compare(a)) => compare::run(a),
        Some(Command::Plot(a)) => plot::run(a),
        Some(Command::Coordinator(a)) => workers::coordinator(a),
    }
}
