//! Simulated nodes: network namespaces on an underlay bridge that lives in
//! a namespace of its own.
//!
//! ```text
//!   <prefix>-ul:  bridge ul0 ── n0 ── n1 ── …     (veth ends, no address)
//!                                │     │
//!   <prefix>-n0:           eth0 172.30.0.1/24
//!   <prefix>-n1:                 eth0 172.30.0.2/24
//! ```
//! Each node also gets `CGROUP2_ROOT/<prefix>/<node>` and
//! `/sys/fs/bpf/<prefix>/<node>/`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cgroup::{Cgroup, CGROUP2_ROOT};
use crate::pin_dir::PinDir;
use crate::{Error, Netns, RunPrefix};

/// Name of the bridge inside the underlay namespace.
const UNDERLAY_BRIDGE: &str = "ul0";
/// Prefix length of the underlay network.
const UNDERLAY_PREFIX_LEN: u8 = 24;
/// Most nodes one /24 underlay holds (addresses .1 to .250; the rest is
/// left for test hosts that are not nodes).
const MAX_NODES: usize = 250;

/// What to build.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// Names every object of the run.
    pub prefix: RunPrefix,
    /// Number of nodes.
    pub nodes: usize,
    /// The underlay /24; node i gets its host address i + 1.
    pub underlay_net: Ipv4Addr,
}

impl TestbedConfig {
    /// `nodes` nodes under a fresh random prefix on 172.30.0.0/24.
    pub fn new(nodes: usize) -> Self {
        TestbedConfig {
            prefix: RunPrefix::random(),
            nodes,
            underlay_net: Ipv4Addr::new(172, 30, 0, 0),
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct Node {
    name: String,
    underlay_ip: Ipv4Addr,
    prefix: RunPrefix,
    netns: Netns,
    cgroup: Cgroup,
    pin_dir: PathBuf,
}

impl Node {
    /// The node's name within the testbed, `n0`, `n1`, ….
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's address on the underlay (its `eth0`).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// The node's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The node's cgroup2 subtree: socket hooks attach here, and the node's
    /// processes live below it.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The node's bpffs directory for pinned maps and links.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Creates a pod network namespace `<prefix>-<node>-<pod>`, with only
    /// its loopback up; wiring it is the CNI plugin's job. The caller owns
    /// the guard.
    pub fn add_pod(&self, pod: &str) -> Result<Netns, Error> {
        Netns::create(&format!("{}-{}-{pod}", self.prefix, self.name))
    }

    fn keep(&mut self) {
        self.netns.keep();
        self.cgroup.keep();
    }
}

/// A set of simulated nodes and the underlay joining them. Dropping it
/// removes every namespace, cgroup and pin it made.
#[derive(Debug)]
pub struct Testbed {
    prefix: RunPrefix,
    // Fields drop in order: nodes (their cgroups are below `cgroup_root`)
    // before the roots.
    nodes: Vec<Node>,
    underlay: Netns,
    cgroup_root: Cgroup,
    pin_root: PinDir,
}

impl Testbed {
    /// Builds the testbed. On failure, whatever was already made is removed.
    pub fn new(config: &TestbedConfig) -> Result<Self, Error> {
        let prefix = config.prefix.clone();
        if config.nodes > MAX_NODES {
            return Err(Error::io(
                "too many nodes for the underlay",
                format!("{} nodes > {MAX_NODES}", config.nodes),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        let pin_root =
            PinDir::create(Path::new(berth_ebpf::bpffs::DEFAULT_ROOT).join(prefix.as_str()))?;
        let cgroup_root = Cgroup::create(Path::new(CGROUP2_ROOT).join(prefix.as_str()))?;
        let underlay = Netns::create(&format!("{prefix}-ul"))?;
        underlay.ip(&["link", "add", UNDERLAY_BRIDGE, "type", "bridge"])?;
        underlay.ip(&["link", "set", UNDERLAY_BRIDGE, "up"])?;
        underlay.run(switch_without_netfilter)??;

        let mut testbed = Testbed {
            prefix,
            nodes: Vec::with_capacity(config.nodes),
            underlay,
            cgroup_root,
            pin_root,
        };
        for i in 0..config.nodes {
            let node = testbed.add_node(i, config.underlay_net)?;
            testbed.nodes.push(node);
        }
        tracing::info!(prefix = %testbed.prefix, nodes = config.nodes, "testbed up");
        Ok(testbed)
    }

    fn add_node(&self, index: usize, underlay_net: Ipv4Addr) -> Result<Node, Error> {
        let name = format!("n{index}");
        let host = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let underlay_ip = Ipv4Addr::from(u32::from(underlay_net) + host);
        let netns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let cgroup = Cgroup::create(self.cgroup_root.path().join(&name))?;
        let pin_dir = self.pin_root.path().join(&name);
        std::fs::create_dir_all(&pin_dir)
            .map_err(|e| Error::io("create pin directory", &pin_dir, e))?;

        // The veth is made inside the node, its peer moved straight into the
        // underlay namespace: no link ever exists in the root namespace.
        netns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &name,
            "netns",
            self.underlay.name(),
        ])?;
        self.underlay
            .ip(&["link", "set", &name, "master", UNDERLAY_BRIDGE, "up"])?;
        let cidr = format!("{underlay_ip}/{UNDERLAY_PREFIX_LEN}");
        netns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        Ok(Node {
            name,
            underlay_ip,
            prefix: self.prefix.clone(),
            netns,
            cgroup,
            pin_dir,
        })
    }

    /// The run prefix.
    pub fn prefix(&self) -> &RunPrefix {
        &self.prefix
    }

    /// The nodes, in index order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The namespace holding the underlay bridge.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// Keeps everything in place after this value is gone (the local
    /// cluster of `cargo xtask up`); [`crate::sweep`] removes it later.
    pub fn persist(mut self) {
        for node in &mut self.nodes {
            node.keep();
        }
        self.underlay.keep();
        self.cgroup_root.keep();
        self.pin_root.keep();
    }
}

/// The underlay stands for the network between machines, which runs none of
/// the nodes' firewalls: where `br_netfilter` is loaded, a new namespace's
/// bridges pass every frame through iptables and connection tracking
/// (`net.bridge.bridge-nf-call-*` = 1); turn that off for the underlay's.
/// Runs inside the underlay namespace.
fn switch_without_netfilter() -> Result<(), Error> {
    for table in ["iptables", "ip6tables", "arptables"] {
        let path = format!("/proc/sys/net/bridge/bridge-nf-call-{table}");
        match std::fs::write(&path, "0") {
            // Without br_netfilter there is nothing to turn off.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            result => result.map_err(|e| Error::io("write sysctl", &path, e))?,
        }
    }
    Ok(())
}
