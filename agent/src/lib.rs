//! `berth-agent`: the node agent.
//!
//! - [`node`]: registers the Node object (addresses, capacity, node info,
//!   conditions) and keeps its status current;
//! - [`lease`]: renews the node's Lease in `kube-node-lease`, the heartbeat
//!   the control plane judges node health by;
//! - [`metrics`]: what the agent exposes to Prometheus.
//!
//! Pods, the overlay and service load balancing join as they land.

pub mod lease;
pub mod metrics;
pub mod node;

/// The agent's version as it reports itself in `nodeInfo`.
pub const VERSION: &str = concat!("v1.33.0-berth.", env!("CARGO_PKG_VERSION"));
