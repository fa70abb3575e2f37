//! `berth-testbed`: brings the local cluster up on simulated nodes and
//! takes it down again. `cargo xtask up` and `cargo xtask down` call it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_ebpf::{MapSizes, SockLb, SockLbConfig};
use berth_tests::agent::{Agent, AgentConfig};
use berth_tests::control::{self, ControlPlane};
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
    let control_bin = bins.control.as_path();
    let agent_bin = bins.agent.as_path();
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
    let control = ControlPlane::start(control_bin, &data_dir(prefix).join("control"), listen)
        .context("starting berth-control")?;
    tracing::info!(url = %control.url(), "control plane ready");
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
        tracing::info!(node = node.name(), "datapath ready");
    }

    // One agent per node, with the node's own credentials.
    let mut agents = Vec::new();
    for (i, node) in testbed.nodes().iter().enumerate() {
        let dir = data_dir(prefix).join(node.name());
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        let made = std::process::Command::new(control_bin)
            .arg("node-credentials")
            .arg("--data-dir")
            .arg(data_dir(prefix).join("control"))
            .args(["--node", node.name(), "--server", &control.url(), "--out"])
            .arg(&kubeconfig)
            .output()
            .context("running berth-control node-credentials")?;
        if !made.status.success() {
            bail!(
                "node-credentials for {}: {}",
                node.name(),
                String::from_utf8_lossy(&made.stderr)
            );
        }
        let port = u16::try_from(i)
            .ok()
            .and_then(|i| metrics_port.checked_add(i))
            .context("agent metrics ports run past 65535")?;
        let agent = Agent::start(&AgentConfig {
            bin: agent_bin,
            kubeconfig: &kubeconfig,
            node: node.name(),
            node_ip: node.underlay_ip().into(),
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            log: &dir.join("agent.log"),
        })?;
        agents.push((node.name().to_string(), agent));
    }
    wait_nodes_ready(&control.kubeconfig(), nodes)?;

    println!("Berth local cluster \"{prefix}\" is up.\n");
    println!(
        "Control plane: berth-control at {} (embedded store)",
        control.url()
    );
    println!("  kubeconfig:  {}", control.kubeconfig().display());
    println!("  log:         {}", control.log().display());
    println!(
        "  try:         KUBECONFIG={} kubectl get nodes,namespaces,services\n",
        control.kubeconfig().display()
    );
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
    println!("\nEach node runs the socket load balancer (cgroup/connect4) on its cgroup2 subtree.");
    println!("Try:");
    println!("  ip netns exec {} ip -br addr", first.netns().name());
    println!(
        "  bpftool map dump pinned {}/lb4_services",
        first.pin_dir().display()
    );
    println!("Remove it all: cargo xtask down --name {prefix}");
    for (node, agent) in agents {
        agent.persist(&run_dir(prefix).join(format!("agent-{node}.pid")))?;
    }
    control.persist(&run_dir(prefix).join("control.pid"))?;
    testbed.persist();
    Ok(())
}

/// Waits until `count` nodes report Ready.
fn wait_nodes_ready(kubeconfig: &Path, count: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let query =
        "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}";
    loop {
        let out = std::process::Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .args(["get", "nodes", "-o", query])
            .output()
            .context("running kubectl")?;
        let ready = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| *l == "True")
            .count();
        if ready >= count {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("only {ready} of {count} nodes became Ready within 60 s (see the agents' logs)");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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
