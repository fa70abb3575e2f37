//! What the overlay should hold for the other nodes, and the changes that
//! take the kernel there. Pure: no netlink here.
//!
//! Each peer needs, on this node's VXLAN device:
//! - an FDB entry: the peer's VTEP MAC → its underlay address;
//! - a neighbour entry: the peer's VTEP address (its pod CIDR's network
//!   address) → its VTEP MAC;
//! - a route: its pod CIDR via its VTEP address, on-link.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use berth_net::mac::{format_mac, parse_mac};
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;

/// Annotation with a node's VTEP MAC address.
pub const VTEP_MAC_ANNOTATION: &str = "berth.dev/vtep-mac";
/// Annotation with a node's underlay address (where its VTEP listens).
pub const UNDERLAY_IP_ANNOTATION: &str = "berth.dev/underlay-ip";

/// A MAC address.
pub type Mac = [u8; 6];

/// Another node, as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node name (for logs).
    pub node: String,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Network,
    /// Its VTEP MAC.
    pub mac: Mac,
    /// Its underlay address.
    pub underlay: Ipv4Addr,
}

impl Peer {
    /// The peer's VTEP address: its pod CIDR's network address.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }

    /// Reads a Node; `None` (with the reason) when it cannot be a peer yet.
    pub fn from_node(node: &Node) -> Result<Self, String> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let annotations = node.metadata.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .ok_or("no pod CIDR yet")?;
        let pod_cidr: Ipv4Network = cidr
            .parse()
            .map_err(|e| format!("pod CIDR {cidr:?}: {e}"))?;
        let mac_text = annotation(VTEP_MAC_ANNOTATION).ok_or("no VTEP MAC annotation yet")?;
        let mac =
            parse_mac(mac_text).ok_or_else(|| format!("bad {VTEP_MAC_ANNOTATION} {mac_text:?}"))?;
        let ip_text = annotation(UNDERLAY_IP_ANNOTATION).ok_or("no underlay IP annotation yet")?;
        let underlay = ip_text
            .parse()
            .map_err(|e| format!("bad {UNDERLAY_IP_ANNOTATION} {ip_text:?}: {e}"))?;
        Ok(Peer {
            node: name,
            pod_cidr: Ipv4Network::new(pod_cidr.network(), pod_cidr.prefix()).unwrap_or(pod_cidr),
            mac,
            underlay,
        })
    }
}

/// This node, as the overlay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    /// Node name.
    pub name: String,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Network,
    /// Its underlay address.
    pub underlay: Ipv4Addr,
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The peers among `nodes`. `last_good` carries each node's last complete
/// view between calls: a Node that is briefly incomplete (re-registered,
/// an annotation edited away) keeps its entries; only a Node that is gone
/// loses them. After a restart `last_good` is empty, so an incomplete Node
/// whose pod CIDR the kernel (`installed`) already routes keeps the
/// entries found there. A peer that would clash with this node or with an
/// earlier peer (overlapping pod CIDR, same underlay address or VTEP MAC)
/// is left out with a warning: its route would replace ours, or another's.
pub fn peers<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &Me,
    last_good: &mut BTreeMap<String, Peer>,
    installed: &Installed,
) -> Vec<Peer> {
    let mut present = BTreeSet::new();
    for node in nodes {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        if name == me.name {
            continue;
        }
        match Peer::from_node(node) {
            Ok(peer) => {
                last_good.insert(name.clone(), peer);
            }
            Err(why) if last_good.contains_key(&name) => {
                tracing::debug!(node = %name, %why, "incomplete Node; keeping its last complete view");
            }
            Err(why) => match installed.peer_for(&name, pod_cidr_of(node)) {
                Some(peer) => {
                    tracing::info!(node = %name, %why, "incomplete Node; keeping the entries the kernel has for it");
                    last_good.insert(name.clone(), peer);
                }
                None => tracing::debug!(node = %name, %why, "not a peer yet"),
            },
        }
        present.insert(name);
    }
    last_good.retain(|name, _| present.contains(name));
    let mut accepted: Vec<Peer> = Vec::new();
    for peer in last_good.values() {
        let clash = if overlaps(peer.pod_cidr, me.pod_cidr) {
            Some(format!(
                "its pod CIDR {} overlaps this node's {}",
                peer.pod_cidr, me.pod_cidr
            ))
        } else if peer.underlay == me.underlay {
            Some(format!(
                "it claims this node's underlay address {}",
                me.underlay
            ))
        } else {
            accepted.iter().find_map(|other| {
                if overlaps(peer.pod_cidr, other.pod_cidr) {
                    Some(format!(
                        "its pod CIDR {} overlaps {}'s",
                        peer.pod_cidr, other.node
                    ))
                } else if peer.underlay == other.underlay || peer.mac == other.mac {
                    Some(format!(
                        "it shares underlay address or VTEP MAC with {}",
                        other.node
                    ))
                } else {
                    None
                }
            })
        };
        match clash {
            Some(why) => {
                tracing::warn!(node = %peer.node, %why, "not reaching this node over the overlay")
            }
            None => accepted.push(peer.clone()),
        }
    }
    accepted
}

/// What the kernel holds on the VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Routes: destination → on-link gateway.
    pub routes: BTreeMap<Ipv4Network, Option<Ipv4Addr>>,
    /// Permanent neighbours: address → MAC.
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// FDB entries: MAC → remote underlay addresses.
    pub fdb: BTreeMap<Mac, BTreeSet<Ipv4Addr>>,
}

impl Installed {
    /// The peer whose complete set of entries (route to `pod_cidr` via its
    /// VTEP address, that address's neighbour, one FDB remote for the MAC)
    /// is installed, named `node`.
    pub fn peer_for(&self, node: &str, pod_cidr: Option<Ipv4Network>) -> Option<Peer> {
        let pod_cidr = pod_cidr?;
        let vtep = pod_cidr.network();
        if self.routes.get(&pod_cidr)? != &Some(vtep) {
            return None;
        }
        let mac = *self.neighbours.get(&vtep)?;
        let remotes = self.fdb.get(&mac)?;
        let [underlay] = remotes.iter().copied().collect::<Vec<_>>()[..] else {
            return None;
        };
        Some(Peer {
            node: node.to_string(),
            pod_cidr,
            mac,
            underlay,
        })
    }
}

/// A Node's pod CIDR, when it has a valid one.
fn pod_cidr_of(node: &Node) -> Option<Ipv4Network> {
    let cidr: Ipv4Network = node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
    Ipv4Network::new(cidr.network(), cidr.prefix()).ok()
}

/// One kernel change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Remove the route to a CIDR.
    DelRoute(Ipv4Network),
    /// Remove a neighbour entry.
    DelNeighbour(Ipv4Addr),
    /// Remove one remote of an FDB entry.
    DelFdb(Mac, Ipv4Addr),
    /// Add (or replace) an FDB entry.
    SetFdb(Mac, Ipv4Addr),
    /// Add (or replace) a permanent neighbour.
    SetNeighbour(Ipv4Addr, Mac),
    /// Add (or replace) an on-link route.
    SetRoute(Ipv4Network, Ipv4Addr),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::DelRoute(cidr) => write!(f, "del route {cidr}"),
            Change::DelNeighbour(ip) => write!(f, "del neigh {ip}"),
            Change::DelFdb(mac, dst) => write!(f, "del fdb {} dst {dst}", format_mac(mac)),
            Change::SetFdb(mac, dst) => write!(f, "fdb {} dst {dst}", format_mac(mac)),
            Change::SetNeighbour(ip, mac) => write!(f, "neigh {ip} lladdr {}", format_mac(mac)),
            Change::SetRoute(cidr, via) => write!(f, "route {cidr} via {via} onlink"),
        }
    }
}

/// The changes from `installed` to what `peers` need, in a safe order:
/// removals first (route, neighbour, FDB), then additions (FDB, neighbour,
/// route), so a route never points at a missing neighbour. Entries that
/// already match are left alone.
pub fn plan(peers: &[Peer], installed: &Installed) -> Vec<Change> {
    let want_routes: BTreeMap<Ipv4Network, Ipv4Addr> =
        peers.iter().map(|p| (p.pod_cidr, p.vtep_ip())).collect();
    let want_neigh: BTreeMap<Ipv4Addr, Mac> = peers.iter().map(|p| (p.vtep_ip(), p.mac)).collect();
    let want_fdb: BTreeMap<Mac, Ipv4Addr> = peers.iter().map(|p| (p.mac, p.underlay)).collect();

    let mut changes = Vec::new();
    for cidr in installed.routes.keys() {
        if !want_routes.contains_key(cidr) {
            changes.push(Change::DelRoute(*cidr));
        }
    }
    for ip in installed.neighbours.keys() {
        if !want_neigh.contains_key(ip) {
            changes.push(Change::DelNeighbour(*ip));
        }
    }
    for (mac, dsts) in &installed.fdb {
        for dst in dsts {
            if want_fdb.get(mac) != Some(dst) {
                changes.push(Change::DelFdb(*mac, *dst));
            }
        }
    }
    for (mac, dst) in &want_fdb {
        if !installed.fdb.get(mac).is_some_and(|d| d.contains(dst)) {
            changes.push(Change::SetFdb(*mac, *dst));
        }
    }
    for (ip, mac) in &want_neigh {
        if installed.neighbours.get(ip) != Some(mac) {
            changes.push(Change::SetNeighbour(*ip, *mac));
        }
    }
    for (cidr, via) in &want_routes {
        if installed.routes.get(cidr) != Some(&Some(*via)) {
            changes.push(Change::SetRoute(*cidr, *via));
        }
    }
    changes
}

/// What the kernel holds after `changes` are applied to `before`: used to
/// check that a plan converges.
#[cfg(test)]
fn simulate(before: &Installed, changes: &[Change]) -> Installed {
    let mut installed = before.clone();
    for change in changes {
        match *change {
            Change::DelRoute(cidr) => drop(installed.routes.remove(&cidr)),
            Change::DelNeighbour(ip) => drop(installed.neighbours.remove(&ip)),
            Change::DelFdb(mac, dst) => {
                if let Some(d) = installed.fdb.get_mut(&mac) {
                    d.remove(&dst);
                    if d.is_empty() {
                        installed.fdb.remove(&mac);
                    }
                }
            }
            Change::SetFdb(mac, dst) => drop(installed.fdb.insert(mac, BTreeSet::from([dst]))),
            Change::SetNeighbour(ip, mac) => drop(installed.neighbours.insert(ip, mac)),
            Change::SetRoute(cidr, via) => drop(installed.routes.insert(cidr, Some(via))),
        }
    }
    installed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, mac: Option<&str>, ip: Option<&str>) -> Node {
        let mut annotations = serde_json::Map::new();
        if let Some(mac) = mac {
            annotations.insert(VTEP_MAC_ANNOTATION.into(), json!(mac));
        }
        if let Some(ip) = ip {
            annotations.insert(UNDERLAY_IP_ANNOTATION.into(), json!(ip));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"podCIDR": cidr},
        }))
        .unwrap()
    }

    fn peer(name: &str, third: u8, last_mac: u8, underlay: u8) -> Peer {
        Peer {
            node: name.into(),
            pod_cidr: Ipv4Network::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap(),
            mac: [0x0e, 0, 0, 0, 0, last_mac],
            underlay: Ipv4Addr::new(172, 30, 0, underlay),
        }
    }

    #[test]
    fn peers_skip_self_and_incomplete_nodes() {
        let nodes = [
            node(
                "n0",
                Some("10.244.0.0/24"),
                Some("0e:00:00:00:00:01"),
                Some("172.30.0.1"),
            ),
            node(
                "n1",
                Some("10.244.1.0/24"),
                Some("0e:00:00:00:00:02"),
                Some("172.30.0.2"),
            ),
            node("n2", None, Some("0e:00:00:00:00:03"), Some("172.30.0.3")),
            node("n3", Some("10.244.3.0/24"), None, Some("172.30.0.4")),
            node("n4", Some("10.244.4.0/24"), Some("zz"), Some("172.30.0.5")),
        ];
        let mut last_good = BTreeMap::new();
        let found = peers(&nodes, &me(), &mut last_good, &Installed::default());
        assert_eq!(found, vec![peer("n1", 1, 2, 2)]);
        assert_eq!(found[0].vtep_ip(), Ipv4Addr::new(10, 244, 1, 0));
    }

    fn me() -> Me {
        Me {
            name: "n0".into(),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            underlay: Ipv4Addr::new(172, 30, 0, 1),
        }
    }

    #[test]
    fn an_incomplete_node_keeps_its_entries_until_it_is_gone() {
        let complete = node(
            "n1",
            Some("10.244.1.0/24"),
            Some("0e:00:00:00:00:02"),
            Some("172.30.0.2"),
        );
        let bare = node("n1", Some("10.244.1.0/24"), None, None);
        let mut last_good = BTreeMap::new();
        assert_eq!(
            peers([&complete], &me(), &mut last_good, &Installed::default()).len(),
            1
        );
        assert_eq!(
            peers([&bare], &me(), &mut last_good, &Installed::default()),
            vec![peer("n1", 1, 2, 2)]
        );
        assert!(
            peers([], &me(), &mut last_good, &Installed::default()).is_empty(),
            "a deleted Node goes"
        );
        assert!(
            peers([&bare], &me(), &mut last_good, &Installed::default()).is_empty(),
            "and is forgotten"
        );
    }

    #[test]
    fn after_a_restart_an_incomplete_node_keeps_the_entries_the_kernel_has() {
        let complete = node(
            "n1",
            Some("10.244.1.0/24"),
            Some("0e:00:00:00:00:02"),
            Some("172.30.0.2"),
        );
        // What the agent had installed before it restarted.
        let mut last_good = BTreeMap::new();
        let before = peers([&complete], &me(), &mut last_good, &Installed::default());
        let mut kernel = Installed::default();
        for change in plan(&before, &kernel) {
            match change {
                Change::SetRoute(net, via) => {
                    kernel.routes.insert(net, Some(via));
                }
                Change::SetNeighbour(ip, mac) => {
                    kernel.neighbours.insert(ip, mac);
                }
                Change::SetFdb(mac, ip) => {
                    kernel.fdb.entry(mac).or_default().insert(ip);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Restarted (nothing in memory) while n1 lacks its annotations.
        let bare = node("n1", Some("10.244.1.0/24"), None, None);
        let mut restarted = BTreeMap::new();
        let found = peers([&bare], &me(), &mut restarted, &kernel);
        assert_eq!(found, vec![peer("n1", 1, 2, 2)]);
        assert!(plan(&found, &kernel).is_empty(), "nothing is removed");
        // A bare Node the kernel knows nothing of is still no peer.
        let other = node("n5", Some("10.244.5.0/24"), None, None);
        assert!(peers([&other], &me(), &mut BTreeMap::new(), &kernel).is_empty());
    }

    #[test]
    fn clashing_peers_are_left_out() {
        let nodes = [
            // Overlaps this node's pod CIDR: its route would replace ours.
            node(
                "a",
                Some("10.244.0.0/16"),
                Some("0e:00:00:00:00:0a"),
                Some("172.30.0.10"),
            ),
            node(
                "b",
                Some("10.244.2.0/24"),
                Some("0e:00:00:00:00:0b"),
                Some("172.30.0.11"),
            ),
            // Same CIDR as b.
            node(
                "c",
                Some("10.244.2.0/24"),
                Some("0e:00:00:00:00:0c"),
                Some("172.30.0.12"),
            ),
            // Same MAC as b.
            node(
                "d",
                Some("10.244.4.0/24"),
                Some("0e:00:00:00:00:0b"),
                Some("172.30.0.13"),
            ),
            // This node's underlay address.
            node(
                "e",
                Some("10.244.5.0/24"),
                Some("0e:00:00:00:00:0e"),
                Some("172.30.0.1"),
            ),
        ];
        let found = peers(&nodes, &me(), &mut BTreeMap::new(), &Installed::default());
        let names: Vec<&str> = found.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(names, vec!["b"]);
    }

    #[test]
    fn plan_adds_in_order_and_converges() {
        let want = [peer("n1", 1, 2, 2), peer("n2", 2, 3, 3)];
        let kernel = Installed::default();
        let changes = plan(&want, &kernel);
        assert_eq!(changes.len(), 6);
        assert!(matches!(changes[0], Change::SetFdb(..)));
        assert!(matches!(changes[5], Change::SetRoute(..)));
        let kernel = simulate(&kernel, &changes);
        assert!(
            plan(&want, &kernel).is_empty(),
            "a second pass changes nothing"
        );
    }

    #[test]
    fn a_vanished_node_is_removed_and_nothing_else_touched() {
        let kernel = Installed::default();
        let kernel = simulate(
            &kernel,
            &plan(&[peer("n1", 1, 2, 2), peer("n2", 2, 3, 3)], &kernel),
        );
        let changes = plan(&[peer("n1", 1, 2, 2)], &kernel);
        assert_eq!(
            changes,
            vec![
                Change::DelRoute("10.244.2.0/24".parse().unwrap()),
                Change::DelNeighbour(Ipv4Addr::new(10, 244, 2, 0)),
                Change::DelFdb([0x0e, 0, 0, 0, 0, 3], Ipv4Addr::new(172, 30, 0, 3)),
            ]
        );
    }

    #[test]
    fn a_moved_node_gets_only_its_fdb_entry_changed() {
        let kernel = Installed::default();
        let kernel = simulate(&kernel, &plan(&[peer("n1", 1, 2, 2)], &kernel));
        let moved = [peer("n1", 1, 2, 9)];
        let changes = plan(&moved, &kernel);
        assert_eq!(
            changes,
            vec![
                Change::DelFdb([0x0e, 0, 0, 0, 0, 2], Ipv4Addr::new(172, 30, 0, 2)),
                Change::SetFdb([0x0e, 0, 0, 0, 0, 2], Ipv4Addr::new(172, 30, 0, 9)),
            ]
        );
        let kernel = simulate(&kernel, &changes);
        assert!(plan(&moved, &kernel).is_empty());
    }
}
