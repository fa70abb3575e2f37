//! `cargo xtask up` / `down`: the local cluster on this machine.
//!
//! The cluster is built and removed by the `berth-testbed` binary (it links
//! the eBPF crate, which xtask must not, so that `deps` builds on a bare
//! machine).

use clap::Args;

use std::path::PathBuf;
use std::process::Command;

use crate::shell::{cargo, run, target_dir};

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

/// Installs dependencies, builds, and brings the cluster up, saying which
/// phase it is in (the first build takes minutes).
pub(crate) fn up(args: &UpArgs) -> anyhow::Result<()> {
    eprintln!("==> [1/3] packages: checking what `cargo xtask deps` installs");
    crate::deps::install()?;
    eprintln!(
        "==> [2/3] build: every binary the cluster runs (the first build takes 10-20 minutes)"
    );
    build()?;
    eprintln!(
        "==> [3/3] cluster \"{}\": control plane, then {} nodes",
        args.name, args.nodes
    );
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

/// Builds every binary of the workspace: the control plane, the testbed,
/// and what each node runs (agent, CNI plugin, runtime, pause).
fn build() -> anyhow::Result<()> {
    run(cargo().args(["build", "--workspace", "--bins"]))
}

/// A binary of the workspace's debug build.
fn bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

/// Runs `berth-testbed ARGS...`.
fn testbed(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(bin("berth-testbed")).args(args))
}
