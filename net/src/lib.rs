//! Network helpers shared by Berth's crates, each written once:
//!
//! - [`netns`]: running work on a thread inside a network namespace;
//! - [`netlink`] (feature `netlink`): rtnetlink handles, also bound to
//!   another namespace, and reading links;
//! - [`mac`]: MAC addresses as text, and the stable hash that derives
//!   names and addresses from identities.

pub mod mac;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod netns;
