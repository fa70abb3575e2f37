//! `cargo xtask bench …`: benchmarks that print numbers (and ratios to
//! yardsticks where they exist) instead of asserting timings.

use clap::ValueEnum;

use crate::shell::{cargo, run};

/// What to measure.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Target {
    /// berth-control: writes per second and watch event latency.
    Control,
    /// The pod network: overlay throughput and latency against the
    /// same-node path, berth-cni against the reference CNI plugins.
    Overlay,
    /// The service datapath: latency against direct and iptables DNAT at
    /// 10, 1 000 and 10 000 services; programming time against
    /// iptables-restore; writes target/bench-lb.svg.
    Lb,
    /// The OCI runtime: create + start + delete against runc (and crun
    /// where it runs).
    Runtime,
}

/// Builds in release mode and runs the benchmark.
pub(crate) fn run_bench(target: Target) -> anyhow::Result<()> {
    crate::deps::install()?;
    match target {
        Target::Control => {
            run(cargo().args(["bench", "-p", "berth-control", "--bench", "control"]))
        }
        Target::Overlay => {
            // The benchmark runs these binaries from target/release.
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "berth-agent",
                "-p",
                "berth-control",
                "-p",
                "berth-cni",
            ]))?;
            run(cargo().args(["bench", "-p", "berth-tests", "--bench", "overlay"]))
        }
        Target::Lb => {
            // The benchmark runs berth-cni and berth-testbed (its probe)
            // from target/release.
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "berth-cni",
                "-p",
                "berth-tests",
                "--bins",
            ]))?;
            run(cargo().args(["bench", "-p", "berth-tests", "--bench", "lb"]))
        }
        Target::Runtime => {
            crate::image::build_runtime()?;
            run(cargo().args(["bench", "-p", "berth-runtime", "--bench", "runtime"]))
        }
    }
}
