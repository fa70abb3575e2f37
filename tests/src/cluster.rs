//! A whole cluster on a testbed: `berth-control` on loopback and a
//! `berth-agent` per node with the node's own credentials. The local
//! cluster (`berth-testbed up`) keeps it running; tests drop it, which
//! stops every process and removes its state.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{Agent, AgentConfig};
use crate::cni::{self, plugin_configs, workspace_bin};
use crate::control::ControlPlane;
use crate::{run, Error, Netns, RunPrefix, Testbed};

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The berth-control binary.
    pub control_bin: PathBuf,
    /// The berth-agent binary.
    pub agent_bin: PathBuf,
    /// Control plane data, node credentials, logs, CNI files: one
    /// directory per node and `control/`.
    pub state_dir: PathBuf,
    /// Where the control plane listens.
    pub listen: SocketAddr,
    /// Metrics port of node 0's agent; node i uses this + i.
    pub metrics_port: u16,
    /// More flags for every agent.
    pub agent_args: Vec<String>,
}

impl ClusterConfig {
    /// For tests and benchmarks: the binaries built beside the running
    /// executable, state in a temporary directory named after `prefix`,
    /// free loopback ports.
    pub fn beside_current_exe(prefix: &RunPrefix) -> Self {
        ClusterConfig {
            control_bin: workspace_bin("berth-control"),
            agent_bin: workspace_bin("berth-agent"),
            state_dir: std::env::temp_dir().join(format!("{prefix}-state")),
            listen: SocketAddr::from(([127, 0, 0, 1], free_ports(1))),
            metrics_port: free_ports(MAX_AGENTS),
            agent_args: Vec::new(),
        }
    }
}

/// Agents one test cluster may run (metrics ports reserved for each).
const MAX_AGENTS: u16 = 8;

/// The first of `n` consecutive loopback ports that were all free, below
/// the ephemeral range (32768 and up), so outgoing connections of kubectl
/// and the agents never take them.
fn free_ports(n: u16) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    for attempt in 0..1000u32 {
        let base = 20_000 + ((seed.wrapping_add(attempt.wrapping_mul(7919))) % 12_000) as u16;
        let all_free = (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    0
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    // Drop order: agents, then the control plane, then the nodes.
    // Behind a lock so tests can stop and start agents while they hold
    // references to the nodes.
    agents: Mutex<Vec<Option<Agent>>>,
    control: ControlPlane,
    testbed: Testbed,
    state: StateDir,
}

/// The state directory, removed when dropped unless kept.
#[derive(Debug)]
struct StateDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Cluster {
    /// Starts the control plane and one agent per node of `testbed`, and
    /// waits until every node is Ready.
    pub fn start(testbed: Testbed, config: ClusterConfig) -> Result<Self, Error> {
        let state = StateDir {
            path: config.state_dir.clone(),
            keep: false,
        };
        let control = ControlPlane::start(
            &config.control_bin,
            &config.state_dir.join("control"),
            config.listen,
        )?;
        tracing::info!(url = %control.url(), "control plane serving");
        let cluster = Cluster {
            agents: Mutex::new(Vec::new()),
            control,
            testbed,
            config,
            state,
        };
        for i in 0..cluster.testbed.nodes().len() {
            cluster.credentials(i)?;
            cluster.agents().push(None);
            let ip = cluster.testbed.nodes()[i].underlay_ip();
            cluster.start_agent(i, ip)?;
            tracing::info!(node = cluster.testbed.nodes()[i].name(), underlay = %ip, "agent started");
        }
        cluster.wait_ready(cluster.testbed.nodes().len())?;
        Ok(cluster)
    }

    /// The nodes.
    pub fn testbed(&self) -> &Testbed {
        &self.testbed
    }

    /// The control plane.
    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// Node `i`'s directory: kubeconfig, agent log, CNI files.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.config.state_dir.join(self.testbed.nodes()[i].name())
    }

    /// Node `i`'s CNI configuration list, as its agent wrote it.
    pub fn cni_conflist(&self, i: usize) -> Result<Value, Error> {
        let path = self.node_dir(i).join("cni/net.d/10-berth.conflist");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::io("parse", &path, std::io::Error::other(e)))
    }

    /// A pod on node `i`: a namespace wired by berth-cni (`cni_plugin`)
    /// with the configuration the node's agent wrote, called exactly as a
    /// runtime calls it. Returns the namespace and the pod's address.
    pub fn add_pod(
        &self,
        cni_plugin: &Path,
        i: usize,
        name: &str,
    ) -> Result<(Netns, Ipv4Addr), Error> {
        let node = &self.testbed.nodes()[i];
        let pod = node.add_pod(name)?;
        let conflist = self.cni_conflist(i)?;
        let plugin = plugin_configs(&conflist)
            .into_iter()
            .next()
            .unwrap_or_default();
        let netns = pod.path().display().to_string();
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", name),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let stdin = plugin.to_string();
        let reply = cni::call(cni_plugin, node.netns(), &vars, stdin.as_bytes())?;
        let failed = |why: String| {
            Error::io(
                "CNI ADD of pod",
                Path::new(name),
                std::io::Error::other(why),
            )
        };
        if !reply.success {
            return Err(failed(format!("{} {}", reply.json, reply.stderr)));
        }
        let ip = reply.json["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| failed(format!("no IPv4 address in {}", reply.json)))?;
        Ok((pod, ip))
    }

    /// A `berth-testbed probe ARGS` command that runs in `pod`'s network
    /// namespace and node `i`'s cgroup, where the node's socket load
    /// balancer acts (as for a pod's processes).
    pub fn probe_command(&self, i: usize, pod: &Netns, args: &[&str]) -> Result<Command, Error> {
        let mut cmd = pod.command(workspace_bin("berth-testbed"))?;
        cmd.arg("probe").args(args);
        self.testbed.nodes()[i].cgroup().add_on_spawn(&mut cmd)?;
        Ok(cmd)
    }

    /// Runs a probe to completion; returns its lines.
    pub fn probe(&self, i: usize, pod: &Netns, args: &[&str]) -> Result<Vec<String>, Error> {
        let out = run(&mut self.probe_command(i, pod, args)?)?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Waits until node `i` routes over the overlay to the pod CIDRs of
    /// the nodes `peers`.
    pub fn wait_overlay(&self, i: usize, peers: &[usize]) -> Result<(), Error> {
        let node = &self.testbed.nodes()[i];
        let mut cidrs = Vec::new();
        for &p in peers {
            let name = self.testbed.nodes()[p].name();
            let cidr = self.kubectl(&["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"])?;
            if cidr.is_empty() {
                return Err(Error::io(
                    "read the pod CIDR of",
                    Path::new(name),
                    std::io::Error::other("none assigned"),
                ));
            }
            cidrs.push(cidr);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let routes = node
                .netns()
                .ip(&["route", "show", "dev", "berth.1"])
                .unwrap_or_default();
            let routed = |c: &String| routes.lines().any(|l| l.starts_with(&format!("{c} via ")));
            if cidrs.iter().all(routed) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::io(
                    "wait for overlay routes on",
                    Path::new(node.name()),
                    std::io::Error::other(format!(
                        "no routes to {cidrs:?} within 30 s\n{}",
                        self.agent_logs()
                    )),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn credentials(&self, i: usize) -> Result<(), Error> {
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        run(Command::new(&self.config.control_bin)
            .arg("node-credentials")
            .arg("--data-dir")
            .arg(self.config.state_dir.join("control"))
            .args([
                "--node",
                self.testbed.nodes()[i].name(),
                "--server",
                &self.control.url(),
                "--out",
            ])
            .arg(dir.join("kubeconfig")))
        .map(drop)
    }

    /// Starts node `i`'s agent (again), reporting `node_ip` as its address.
    pub fn start_agent(&self, i: usize, node_ip: Ipv4Addr) -> Result<(), Error> {
        let node = &self.testbed.nodes()[i];
        let dir = self.node_dir(i);
        let port = self.metrics_port(i);
        let agent = Agent::start(&AgentConfig {
            bin: &self.config.agent_bin,
            kubeconfig: &dir.join("kubeconfig"),
            node: node.name(),
            node_ip: node_ip.into(),
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            log: &dir.join("agent.log"),
            netns: &node.netns().path(),
            cni_dir: &dir.join("cni"),
            pin_dir: node.pin_dir(),
            cgroup: node.cgroup().path(),
            extra_args: &self.config.agent_args,
        })?;
        self.agents()[i] = Some(agent);
        Ok(())
    }

    fn metrics_port(&self, i: usize) -> u16 {
        self.config
            .metrics_port
            .saturating_add(u16::try_from(i).unwrap_or(u16::MAX))
    }

    /// Node `i`'s agent metrics (Prometheus text), empty when unreachable.
    pub fn agent_metrics(&self, i: usize) -> String {
        use std::io::{Read, Write};
        std::net::TcpStream::connect(("127.0.0.1", self.metrics_port(i)))
            .and_then(|mut conn| {
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                conn.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                )?;
                let mut body = String::new();
                conn.read_to_string(&mut body)?;
                Ok(body)
            })
            .unwrap_or_default()
    }

    /// Kills node `i`'s agent (SIGKILL: no goodbye); its kernel state stays.
    pub fn kill_agent(&self, i: usize) {
        let agent = self.agents()[i].take();
        drop(agent);
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, Vec<Option<Agent>>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last lines of every agent's log, for a failing test to show.
    pub fn agent_logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.testbed.nodes().iter().enumerate() {
            let log =
                std::fs::read_to_string(self.node_dir(i).join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out += &format!("--- agent {} (last 40 lines)\n", node.name());
            for line in &lines[lines.len().saturating_sub(40)..] {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    /// `kubectl apply` of `manifest` (JSON), as the cluster admin.
    pub fn apply(&self, manifest: &Value) -> Result<String, Error> {
        let dir = self.config.state_dir.join("manifests");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let path = dir.join("apply.json");
        std::fs::write(&path, manifest.to_string()).map_err(|e| Error::io("write", &path, e))?;
        self.kubectl(&["apply", "-f", &path.display().to_string()])
    }

    /// Runs kubectl as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, Error> {
        run(Command::new("kubectl")
            .env("KUBECONFIG", self.control.kubeconfig())
            .args(args))
    }

    /// Waits until `count` nodes report Ready, logging each node as it
    /// turns Ready.
    pub fn wait_ready(&self, count: usize) -> Result<(), Error> {
        let query = "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}";
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let out = self
                .kubectl(&["get", "nodes", "-o", query])
                .unwrap_or_default();
            for line in out.lines() {
                if let Some(name) = line.strip_suffix(" True") {
                    if seen.insert(name.to_string()) {
                        tracing::info!(node = name, "node Ready");
                    }
                }
            }
            if seen.len() >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::io(
                    "wait for Ready nodes in",
                    &self.config.state_dir,
                    std::io::Error::other(format!(
                        "only {} of {count} nodes became Ready within 60 s",
                        seen.len()
                    )),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Leaves everything running; pid files go to `run_dir` for
    /// [`crate::control::stop`].
    pub fn persist(self, run_dir: &Path) -> Result<(), Error> {
        let Cluster {
            agents,
            control,
            testbed,
            mut state,
            ..
        } = self;
        state.keep = true;
        let agents = agents.into_inner().unwrap_or_else(|e| e.into_inner());
        for (node, agent) in testbed.nodes().iter().zip(agents) {
            if let Some(agent) = agent {
                agent.persist(&run_dir.join(format!("agent-{}.pid", node.name())))?;
            }
        }
        control.persist(&run_dir.join("control.pid"))?;
        testbed.persist();
        Ok(())
    }
}
