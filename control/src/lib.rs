//! `berth-control`: a small Kubernetes-compatible API server.
//!
//! - [`store`]: the key-value store with revisions and watches (embedded
//!   database by default);
//! - [`resources`]: what the API serves;
//! - [`object`], [`validate`], [`defaults`], [`patch`], [`selector`]:
//!   object handling, and [`prepare`], their order for a request body;
//! - [`registry`]: what each request does to the store, one strategy per
//!   kind, free of HTTP ([`api`] is the HTTP layer over it);
//! - [`controllers`]: the control loops;
//! - [`alloc`]: ClusterIPs, NodePorts and pod CIDRs;
//! - [`pki`] and [`auth`]: certificates, tokens, who may do what;
//!   [`node_restriction`]: what a node's own credentials may change.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod controllers;
pub mod defaults;
pub mod error;
pub mod metrics;
pub mod node_restriction;
pub mod object;
pub mod patch;
pub mod pki;
pub mod prepare;
pub mod registry;
pub mod resources;
pub mod selector;
pub mod store;
pub mod validate;
