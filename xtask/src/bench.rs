//! `cargo xtask bench …`: benchmarks that print numbers (and ratios to
//! yardsticks where they exist) instead of asserting timings.

use clap::ValueEnum;

use crate::shell::{cargo, run};

/// What to measure.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Target {
    /// berth-control: writes per second and watch event latency.
    Control,
}

/// Builds in release mode and runs the benchmark.
pub(crate) fn run_bench(target: Target) -> anyhow::Result<()> {
    crate::deps::install()?;
    match target {
        Target::Control => {
            run(cargo().args(["bench", "-p", "berth-control", "--bench", "control"]))
        }
    }
}
