//! A `berth-agent` process for one simulated node.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::Error;

/// A running agent, stopped when dropped unless persisted.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
}

/// How to start an agent.
#[derive(Debug)]
pub struct AgentConfig<'a> {
    /// The berth-agent binary.
    pub bin: &'a Path,
    /// The node's kubeconfig (from `berth-control node-credentials`).
    pub kubeconfig: &'a Path,
    /// Node name.
    pub node: &'a str,
    /// The node's underlay address.
    pub node_ip: IpAddr,
    /// Where the agent serves metrics.
    pub metrics: SocketAddr,
    /// The agent's log file (appended to, so restarts keep history).
    pub log: &'a Path,
    /// The node's network namespace (the agent itself stays in the
    /// machine's, where it reaches the API server).
    pub netns: &'a Path,
    /// Where the agent writes the node's CNI configuration (`net.d/`) and
    /// berth-cni keeps its leases (`networks/`).
    pub cni_dir: &'a Path,
    /// The node's bpffs directory (service load balancer's pins).
    pub pin_dir: &'a Path,
    /// The node's cgroup2 subtree (service load balancer's socket hooks).
    pub cgroup: &'a Path,
    /// More flags.
    pub extra_args: &'a [String],
}

impl Agent {
    /// Starts the agent (in its own process group, so a Ctrl-C in the
    /// terminal that started the cluster does not stop it).
    pub fn start(config: &AgentConfig<'_>) -> Result<Self, Error> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.log)
            .map_err(|e| Error::io("open", config.log, e))?;
        let child = Command::new(config.bin)
            .arg("--kubeconfig")
            .arg(config.kubeconfig)
            .args(["--node-name", config.node])
            .args(["--node-ip", &config.node_ip.to_string()])
            .args(["--metrics-listen", &config.metrics.to_string()])
            .arg("--netns")
            .arg(config.netns)
            .arg("--cni-conf-dir")
            .arg(config.cni_dir.join("net.d"))
            .arg("--cni-data-dir")
            .arg(config.cni_dir.join("networks"))
            .arg("--bpf-pin-dir")
            .arg(config.pin_dir)
            .arg("--cgroup")
            .arg(config.cgroup)
            .args(config.extra_args)
            // Simulated nodes resync often: repairs show within 2 s.
            .args(["--overlay-resync", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: config.bin.display().to_string(),
                source,
            })?;
        Ok(Agent { child: Some(child) })
    }

    /// Leaves the agent running and records its pid in `pid_file`, for
    /// [`crate::control::stop`].
    pub fn persist(mut self, pid_file: &Path) -> Result<(), Error> {
        if let Some(child) = self.child.take() {
            fs::write(pid_file, child.id().to_string())
                .map_err(|e| Error::io("write", pid_file, e))?;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
