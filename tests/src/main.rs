//! `berth-testbed`: brings the local cluster up on simulated nodes and
//! takes it down again. `cargo xtask up` and `cargo xtask down` call it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_tests::cluster::{Cluster, ClusterConfig};
use berth_tests::control;
use berth_tests::{leftovers, sweep, RunPrefix, Testbed, TestbedConfig};
use clap::{Parser, Subcommand};

mod probe_cmd;

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
        /// The berth-control binary to run as the control plane.
        #[arg(long)]
        control_bin: PathBuf,
        /// The berth-agent binary to run on each node.
        #[arg(long)]
        agent_bin: PathBuf,
        /// Metrics port of the first node's agent (node i serves on this + i).
        #[arg(long, default_value_t = 9962)]
        agent_metrics_port: u16,
        /// Address the control plane serves on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
    },
    /// A test client (run by tests inside a pod and a node's cgroup).
    #[command(subcommand, hide = true)]
    Probe(probe_cmd::Probe),
    /// Remove everything the cluster made.
    Down {
        /// Cluster name given to `up`.
        #[arg(long, default_value = "berth-local")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    berth_cli::init_logging("RUST_LOG", "info");
    let cli = Cli::parse();
    if let Cmd::Probe(probe) = cli.command {
        return probe_cmd::run(probe);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("berth-testbed creates namespaces, cgroups and BPF objects: run it as root");
    }
    match cli.command {
        Cmd::Up {
            name,
            nodes,
            control_bin,
            agent_bin,
            agent_metrics_port,
            listen,
        } => up(
            &prefix(&name)?,
            nodes,
            &Binaries {
                control: control_bin,
                agent: agent_bin,
            },
            agent_metrics_port,
            listen,
        ),
        Cmd::Down { name } => down(&prefix(&name)?),
        Cmd::Probe(_) => Ok(()),
    }
}

fn prefix(name: &str) -> anyhow::Result<RunPrefix> {
    RunPrefix::named(name).with_context(|| {
        format!("cluster name {name:?} must be 1-24 characters of a-z, 0-9 and '-'")
    })
}

/// Where the local cluster keeps its control plane's data.
fn data_dir(prefix: &RunPrefix) -> PathBuf {
    Path::new("/var/lib/berth").join(prefix.as_str())
}

/// Where the local cluster keeps pid files.
fn run_dir(prefix: &RunPrefix) -> PathBuf {
    Path::new("/run/berth").join(prefix.as_str())
}

/// The programs the local cluster runs.
struct Binaries {
    control: PathBuf,
    agent: PathBuf,
}

fn up(
    prefix: &RunPrefix,
    nodes: usize,
    bins: &Binaries,
    metrics_port: u16,
    listen: SocketAddr,
) -> anyhow::Result<()> {
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
    if run_dir(prefix).join("control.pid").exists() {
        bail!("cluster {prefix} already runs a control plane; remove it with `cargo xtask down --name {prefix}`");
    }
    // A fresh cluster: no state from an earlier one.
    remove_dir(&data_dir(prefix))?;
    std::fs::create_dir_all(run_dir(prefix))?;
    let testbed = Testbed::new(&TestbedConfig {
        prefix: prefix.clone(),
        nodes,
        underlay_net: Ipv4Addr::new(172, 30, 0, 0),
    })?;
    // The control plane, then one agent per node with the node's own
    // credentials; returns once every node is Ready.
    let cluster = Cluster::start(
        testbed,
        ClusterConfig {
            control_bin: bins.control.clone(),
            agent_bin: bins.agent.clone(),
            state_dir: data_dir(prefix),
            listen,
            metrics_port,
            agent_args: Vec::new(),
        },
    )
    .context("starting the cluster")?;
    let control = cluster.control();
    let testbed = cluster.testbed();

    println!("Berth local cluster \"{prefix}\" is up.\n");
    println!(
        "Control plane: berth-control at {} (embedded store)",
        control.url()
    );
    println!("  kubeconfig:  {}", control.kubeconfig().display());
    println!("  log:         {}\n", control.log().display());
    println!(
        "{nodes} nodes, each running berth-agent (log and kubeconfig in {}/<node>/):\n",
        data_dir(prefix).display()
    );
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
    println!(
        "\nEach node's agent load-balances Services at the socket (eBPF on its cgroup2 subtree),"
    );
    println!(
        "and a VXLAN overlay (device berth.1, VNI 1, UDP 8472) to every other node's pod CIDR."
    );
    println!(
        "Its CNI configuration (for berth-cni) is {}/<node>/cni/net.d/10-berth.conflist.",
        data_dir(prefix).display()
    );
    println!("Try:");
    println!("  ip netns exec {} ip -br addr", first.netns().name());
    println!("  ip netns exec {} ip route", first.netns().name());
    println!(
        "  ip netns exec {} bridge fdb show dev berth.1",
        first.netns().name()
    );
    println!(
        "  {} bpf lb list --pin-dir {}",
        bins.agent.display(),
        first.pin_dir().display()
    );
    println!(
        "  bpftool map dump pinned {}/lb4_services",
        first.pin_dir().display()
    );
    println!("Remove it all: cargo xtask down --name {prefix}\n");
    println!("Point kubectl at it, then try a first command:\n");
    println!("  export KUBECONFIG={}", control.kubeconfig().display());
    println!("  kubectl get nodes -o wide");
    cluster.persist(&run_dir(prefix))?;
    Ok(())
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn down(prefix: &RunPrefix) -> anyhow::Result<()> {
    // Agents first, so they do not report against a stopped control plane.
    if let Ok(entries) = std::fs::read_dir(run_dir(prefix)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("agent-") && name.ends_with(".pid") {
                control::stop(&entry.path()).with_context(|| format!("stopping {name}"))?;
            }
        }
    }
    let had_control = run_dir(prefix).join("control.pid").exists();
    control::stop(&run_dir(prefix).join("control.pid")).context("stopping berth-control")?;
    remove_dir(&run_dir(prefix))?;
    remove_dir(&data_dir(prefix))?;
    if had_control {
        println!("control plane of \"{prefix}\" stopped and its data removed");
    }
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
