//! `ehrchain-bench`: benchmarks of a fresh local network. Each subcommand starts its own
//! validators (the `ehrchain` binary built beside this one, or `EHRCHAIN_BIN`), drives them
//! over HTTP as clients would, and prints medians and percentiles. None of this ships in the
//! production binary.

mod chain;
mod fhir;
mod records;

/// The same allocator as the `ehrchain` binary, so the load generator's own cost on the
/// shared cores is what it was when the benchmarks lived there (docs/DEPENDENCIES.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ehrchain-bench",
    about = "Benchmarks of a local ehrchain network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive signed transactions into a local network and report throughput and latency.
    ///
    /// Example: ehrchain-bench chain --validators 4 --transactions 100000
    Chain(chain::Args),
    /// Write encrypted FHIR records through the whole path on a local network and report
    /// records/s, MB/s and commit latency.
    ///
    /// Example: ehrchain-bench records --records 20000 --rate 2000 --size 4096
    Records(records::Args),
    /// FHIR creates and consented reads through /fhir on a local network; reports requests/s
    /// and latency.
    ///
    /// Example: ehrchain-bench fhir --creates 4000 --reads 20000 --clients 64
    Fhir(fhir::Args),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Chain(args) => chain::run(args),
        Command::Records(args) => records::run(args),
        Command::Fhir(args) => fhir::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}
