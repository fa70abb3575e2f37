//! `cargo xtask …`: Berth's developer tasks, one module each.

mod bench;
mod cluster;
mod deps;
mod fresh;
mod fuzz;
mod image;
mod shell;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Berth's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the Debian packages Berth needs to build and test (when missing).
    Deps,
    /// Check formatting and lints, then run every test (unit, privileged and end-to-end; needs root).
    Test,
    /// Bring up a local cluster: simulated nodes as network namespaces on this machine.
    Up(cluster::UpArgs),
    /// Remove the local cluster and everything it made.
    Down(cluster::DownArgs),
    /// Build the busybox test image as an OCI layout (target/images/busybox).
    Image(image::ImageArgs),
    /// Build the workspace on a bare Debian 12 (debootstrap) with only the
    /// packages `deps` installs; records a fingerprint that `test` checks.
    FreshCheck,
    /// Soak berth-control: mixed writes, watches, bad requests and idle
    /// connections on loopback, then check answers, data and memory.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Fuzz the parsers of untrusted input (coverage-guided; `--random` for
    /// bolero's random engine) and print the executions reached.
    Fuzz(fuzz::FuzzArgs),
    /// Run a benchmark (release build) and print its numbers.
    Bench {
        /// What to measure.
        target: bench::Target,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Deps => deps::install(),
        Task::Test => test::all(),
        Task::Up(args) => cluster::up(&args),
        Task::Down(args) => cluster::down(&args),
        Task::FreshCheck => fresh::check(),
        Task::Soak { seconds } => test::soak(seconds),
        Task::Image(args) => image::build(&args),
        Task::Fuzz(args) => fuzz::fuzz(&args),
        Task::Bench { target } => bench::run_bench(target),
    }
}
