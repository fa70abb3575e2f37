//! Berth's testbed: simulated cluster nodes on one kernel.
//!
//! A [`Testbed`] is N nodes, each a network namespace with an `eth0` on an
//! underlay bridge that lives in a namespace of its own, plus the node's own
//! cgroup2 subtree (for socket-level eBPF hooks and the node's processes)
//! and bpffs directory (for its pinned maps). Pods are further namespaces
//! on a node. Nothing is addressed or routed in the machine's own network
//! namespace.
//!
//! Every name carries a [`RunPrefix`]; guards remove what they made when
//! dropped, also while a test unwinds from a panic, and [`sweep`] removes
//! whatever a killed run left behind.
//!
//! All of this needs root: [`require_root`] fails a test early with a clear
//! message instead of skipping it.

pub mod agent;
pub mod bench;
mod cgroup;
pub mod cluster;
mod cmd;
pub mod cni;
pub mod control;
mod error;
mod exec_hooks;
mod netns;
mod pin_dir;
mod prefix;
pub mod sockopt;
mod sweep;
mod testbed;
pub mod traffic;

pub use cgroup::{Cgroup, CGROUP2_ROOT};
pub use cmd::run;
pub use error::Error;
pub use netns::Netns;
pub use pin_dir::PinDir;
pub use prefix::RunPrefix;
pub use sweep::{leftovers, sweep};
pub use testbed::{Node, Testbed, TestbedConfig};

/// Panics with a clear message unless running as root: privileged tests
/// must fail, not silently pass, when they cannot do their work.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates namespaces, cgroups and BPF objects and must run as root \
         (run `cargo xtask test` as root)"
    );
}
