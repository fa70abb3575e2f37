//! `berth-testbed`: brings the local cluster up on simulated nodes and
//! takes it down again. `cargo xtask up` and `cargo xtask down` call it.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use berth_ebpf::{MapSizes, SockLb, SockLbConfig};
use berth_tests::{leftovers, sweep, RunPrefix, Testbed, TestbedConfig};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth-testbed",
    about = "Berth's local cluster on simulated nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the nodes and start the datapath on each.
    Up {
        /// Cluster name; prefixes every namespace, cgroup and pin.
        #[arg(long, default_value = "berth-local")]
        name: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Remove everything the cluster made.
    Down {
        /// Cluster name given to `up`.
        #[arg(long, default_value = "berth-local")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("berth-testbed creates namespaces, cgroups and BPF objects: run it as root");
    }
    match cli.command {
        Cmd::Up { name, nodes } => up(&prefix(&name)?, nodes),
        Cmd::Down { name } => down(&prefix(&name)?),
    }
}

fn prefix(name: &str) -> anyhow::Result<RunPrefix> {
    RunPrefix::named(name).with_context(|| {
        format!("cluster name {name:?} must be 1-24 characters of a-z, 0-9 and '-'")
    })
}

fn up(prefix: &RunPrefix, nodes: usize) -> anyhow::Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let existing = leftovers(prefix)?;
    if !existing.is_empty() {
        bail!(
            "cluster {prefix} already exists ({} objects, e.g. {}); remove it with `cargo xtask down --name {prefix}`",
            existing.len(),
            existing[0]
        );
    }
    let testbed = Testbed::new(&TestbedConfig {
        prefix: prefix.clone(),
        nodes,
        underlay_net: Ipv4Addr::new(172, 30, 0, 0),
    })?;
    for node in testbed.nodes() {
        let config = SockLbConfig {
            pin_dir: node.pin_dir().to_path_buf(),
            map_sizes: MapSizes::default(),
        };
        SockLb::attach(&config, node.cgroup().path())
            .with_context(|| format!("starting the datapath on node {}", node.name()))?;
        tracing::info!(node = node.name(), "node ready");
    }

    println!("Berth local cluster \"{prefix}\" is up with {nodes} nodes:\n");
    println!(
        "  {:<5} {:<20} {:<12} {:<44} pins",
        "node", "netns", "underlay", "cgroup2"
    );
    for node in testbed.nodes() {
        println!(
            "  {:<5} {:<20} {:<12} {:<44} {}",
            node.name(),
            node.netns().name(),
            node.underlay_ip().to_string(),
            node.cgroup().path().display().to_string(),
            node.pin_dir().display()
        );
    }
    let first = &testbed.nodes()[0];
    println!("\nEach node runs the socket load balancer (cgroup/connect4) on its cgroup2 subtree.");
    println!("Try:");
    println!("  ip netns exec {} ip -br addr", first.netns().name());
    println!(
        "  bpftool map dump pinned {}/lb4_services",
        first.pin_dir().display()
    );
    println!("Remove it all: cargo xtask down --name {prefix}");
    testbed.persist();
    Ok(())
}

fn down(prefix: &RunPrefix) -> anyhow::Result<()> {
    let existing = leftovers(prefix)?;
    if existing.is_empty() {
        println!("cluster \"{prefix}\" is not up; nothing to remove");
        return Ok(());
    }
    sweep(prefix)?;
    let left = leftovers(prefix)?;
    if !left.is_empty() {
        bail!("could not remove: {}", left.join(", "));
    }
    println!("cluster \"{prefix}\" removed ({} objects)", existing.len());
    Ok(())
}
