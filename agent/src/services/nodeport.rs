//! Keeps the NodePort translator attached to the node's interfaces: the
//! underlay (clients' packets) and the bridge and VXLAN device (backends'
//! replies). The bridge appears with the first pod and either device can
//! be recreated, so every pass compares the interfaces' indexes with those
//! last attached to and attaches again when they differ.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use berth_ebpf::{attach_nodeport, NodePortConfig, NodePortDevices};
use berth_net::netns::run_in;

/// The translator's attachment, kept up to date.
#[derive(Debug)]
pub struct NodePortKeeper {
    config: NodePortConfig,
    /// The node's network namespace (`None`: the agent's own).
    netns: Option<PathBuf>,
    /// The node's address: the underlay interface is the one holding it.
    node_ip: Ipv4Addr,
    /// Names of the devices replies arrive on.
    reply_devices: Vec<String>,
    attached: Option<NodePortDevices>,
}

impl NodePortKeeper {
    /// A keeper for a node whose pod network address (its bridge's) is
    /// `config.snat`.
    pub fn new(
        config: NodePortConfig,
        netns: Option<PathBuf>,
        node_ip: Ipv4Addr,
        reply_devices: Vec<String>,
    ) -> Self {
        Self {
            config,
            netns,
            node_ip,
            reply_devices,
            attached: None,
        }
    }

    /// Attaches where the devices are now, unless already attached there.
    /// Returns whether it attached.
    pub fn ensure(&mut self) -> Result<bool, String> {
        let config = self.config.clone();
        let node_ip = self.node_ip;
        let names = self.reply_devices.clone();
        let attached = self.attached.clone();
        let result = run_in(self.netns.as_deref(), move || -> Result<_, String> {
            let devices = NodePortDevices {
                underlay: interface_with(node_ip)
                    .ok_or_else(|| format!("no interface holds the node address {node_ip}"))?,
                replies: names.iter().filter_map(|n| index_of(n)).collect(),
            };
            if attached.as_ref() == Some(&devices) {
                return Ok(None);
            }
            attach_nodeport(&config, &devices).map_err(|e| e.to_string())?;
            Ok(Some(devices))
        })
        .map_err(|e| e.to_string())??;
        match result {
            Some(devices) => {
                tracing::info!(?devices, snat = %self.config.snat, "NodePort translator attached");
                self.attached = Some(devices);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The index of the interface holding `ip`.
fn interface_with(ip: Ipv4Addr) -> Option<i32> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let holds = a
            .address
            .and_then(|s| s.as_sockaddr_in().map(|s| s.ip() == ip))
            .unwrap_or(false);
        if holds {
            return index_of(&a.interface_name);
        }
    }
    None
}

fn index_of(name: &str) -> Option<i32> {
    nix::net::if_::if_nametoindex(name)
        .ok()
        .and_then(|i| i32::try_from(i).ok())
}
