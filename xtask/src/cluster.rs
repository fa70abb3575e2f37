//! `cargo xtask up` / `down`: the local cluster on this machine.
//!
//! The cluster is built and removed by the `berth-testbed` binary (it links
//! the eBPF crate, which xtask must not, so that `deps` builds on a bare
//! machine).

use clap::Args;

use std::path::PathBuf;
use std::process::Command;

use crate::shell::{cargo, run, workspace_root};

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
    build()?;
    let nodes = args.nodes.to_string();
    let control = bin("berth-control");
    let agent = bin("berth-agent");
    testbed(&[
        "up",
        "--name",
        &args.name,
        "--nodes",
        &nodes,
        "--control-bin",
        &control.to_string_lossy(),
        "--agent-bin",
        &agent.to_string_lossy(),
    ])
}

/// Removes the cluster.
pub(crate) fn down(args: &DownArgs) -> anyhow::Result<()> {
    build()?;
    testbed(&["down", "--name", &args.name])
}

/// Builds the binaries the local cluster runs.
fn build() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--quiet",
        "-p",
        "berth-control",
        "-p",
        "berth-tests",
        "--bins",
    ]))
}

/// A binary of the workspace's debug build.
fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join("debug").join(name)
}

/// Runs `berth-testbed ARGS...`.
fn testbed(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(bin("berth-testbed")).args(args))
}
