//! `berth-agent`: the node agent.
//!
//! - [`node`]: registers the Node object (addresses, capacity, node info,
//!   conditions) and keeps its status current;
//! - [`lease`]: renews the node's Lease in `kube-node-lease`, the heartbeat
//!   the control plane judges node health by;
//! - [`overlay`]: the VXLAN overlay to the other nodes' pod CIDRs;
//! - [`services`]: Service load balancing in eBPF (kube-proxy's job);
//! - [`cni_conf`]: the CNI configuration for the node's runtime;
//! - [`masquerade`]: keeps pod traffic leaving the cluster masqueraded;
//! - [`caches`]: the API watches every subsystem reads;
//! - [`config`]: the configuration file and its defaults;
//! - [`metrics`]: what the agent exposes to Prometheus.
//!
//! Pods join when the runtime lands.

pub mod caches;
pub mod cni_conf;
pub mod config;
pub mod lease;
pub mod masquerade;
pub mod metrics;
pub mod node;
pub mod overlay;
pub mod services;

/// The agent's version as it reports itself in `nodeInfo`.
pub const VERSION: &str = concat!("v1.33.0-berth.", env!("CARGO_PKG_VERSION"));
