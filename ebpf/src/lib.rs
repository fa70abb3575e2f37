//! Berth's eBPF datapath.
//!
//! This crate owns the C programs under `src/bpf/`, the layouts of the maps
//! they share with user space, and a typed API over both:
//!
//! - [`SockLb`] loads the socket-level load balancer (`cgroup/connect4`),
//!   pins its maps under a bpffs directory and attaches it to a cgroup2
//!   directory;
//! - [`LbMaps`] programs services into the pinned maps and reads them back;
//! - [`destroy_udp_connected_to`] closes UDP sockets still connected to
//!   backends that went away;
//! - [`attach_nodeport`] translates frontends reached from outside the
//!   node at tc ingress; [`ct_entries`] reads its connection table;
//! - [`model`] is the service model those maps encode. It knows nothing of
//!   Kubernetes.

pub mod bpffs;
mod encode;
mod error;
mod lb_maps;
pub mod maglev;
pub mod model;
mod nodeport;
mod skel;
mod slot_ranges;
mod sock_destroy;
mod sock_lb;

pub use error::Error;
pub use lb_maps::{AffinityEntry, LbMaps, MapSizes, ServiceEntry, SlotEntry};
pub use nodeport::{
    attach_nodeport, ct_entries, snat_ports_outside, CtEntry, NodePortConfig, NodePortDevices,
    CT_MAP,
};
pub use sock_destroy::destroy_udp_connected_to;
pub use sock_lb::{SockLb, SockLbConfig};
