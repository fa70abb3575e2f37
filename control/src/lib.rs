//! `berth-control`: a small Kubernetes-compatible API server.

pub mod store;
