//! `berth-cni`: a CNI 1.1 plugin that attaches pods to the node's bridge
//! with a veth pair, leases their addresses from the node's pod CIDR, and
//! masquerades their traffic leaving the cluster.
//!
//! The modules are usable on their own: the agent writes the plugin's
//! configuration with [`config`]. Netlink and namespace helpers come from
//! `berth-net`.

pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod masq;
pub mod plugin;
pub mod result;
pub mod retire;
