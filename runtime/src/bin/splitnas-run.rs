//! `splitnas-run`: the runtime alone, for boards that only run inference (a Raspberry Pi,
//! a Jetson's CPU cores). The same flags, output lines and errors as `splitnas run` and
//! `splitnas bench run`: both binaries call [`splitnas_runtime::cli`].

use clap::error::ErrorKind;
use clap::Parser;
use splitnas_runtime::cli::{self, BenchArgs, RunArgs, UnknownDevice};

/// mimalloc, as in `splitnas`: Burn allocates a fresh buffer for most tensor operations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: freed pages stay with the process (as `splitnas` sets it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `splitnas-run FILE --input ...`.
#[derive(Parser)]
#[command(
    name = "splitnas-run",
    version,
    about = "Run an ONNX file with Burn on images or a .npy tensor and print the top classes",
    after_help = "Latency: splitnas-run bench FILE [--batch B] [--iters N] [--device D]"
)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

/// `splitnas-run bench FILE ...`.
#[derive(Parser)]
#[command(
    name = "splitnas-run bench",
    version,
    about = "Inference latency of an ONNX file (prints a final `p50_ms=.. p90_ms=..` line)"
)]
struct BenchCli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn main() {
    splitnas_runtime::cli::default_sigpipe();
    // SAFETY: sets a process-wide allocator option; no allocation is in flight.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = if args.get(1).is_some_and(|a| a == "bench") {
        args.remove(1);
        let cli = BenchCli::try_parse_from(args).unwrap_or_else(|e| fail_parse(e));
        cli::bench(&cli.bench)
    } else {
        let cli = RunCli::try_parse_from(args).unwrap_or_else(|e| fail_parse(e));
        cli::run(&cli.run)
    };
    if let Err(e) = result {
        eprintln!("error: {}", cli::report(&e));
        splitnas_runtime::device::exit(1);
    }
    splitnas_runtime::device::exit(0);
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
