//! `cargo xtask up` / `down`: the local cluster on this machine.
//!
//! The cluster is built and removed by the `berth-testbed` binary (it links
//! the eBPF crate, which xtask must not, so that `deps` builds on a bare
//! machine).

use clap::Args;

use crate::shell::{cargo, run};

/// Options of `cargo xtask up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Cluster name; prefixes every namespace, cgroup and pin.
    #[arg(long, default_value = "berth-local")]
    name: String,
}

/// Options of `cargo xtask down`.
#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    /// Cluster name given to `up`.
    #[arg(long, default_value = "berth-local")]
    name: String,
}

/// Installs dependencies, builds, and brings the cluster up.
pub(crate) fn up(args: &UpArgs) -> anyhow::Result<()> {
    crate::deps::install()?;
    let nodes = args.nodes.to_string();
    testbed(&["up", "--name", &args.name, "--nodes", &nodes])
}

/// Removes the cluster.
pub(crate) fn down(args: &DownArgs) -> anyhow::Result<()> {
    testbed(&["down", "--name", &args.name])
}

/// Builds and runs `berth-testbed ARGS...`.
fn testbed(args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "berth-tests",
        "--bin",
        "berth-testbed",
        "--",
    ]);
    run(cmd.args(args))
}
