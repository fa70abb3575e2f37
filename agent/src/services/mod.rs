//! Service load balancing (kube-proxy's job): Services and EndpointSlices
//! from the shared caches, turned into frontends and backends in the
//! node's pinned eBPF maps.
//!
//! At start the agent attaches the socket load balancer to the node's
//! cgroup2 directory, adopting pinned maps and links that are already
//! there (their backend ids and slots stay, so connections are not
//! disturbed). Each pass then writes only what differs between the maps
//! and the API: a frontend whose backends did not change is not touched.

pub mod desired;
pub mod nodeport;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_ebpf::model::{Backend, Frontend, Protocol};
use berth_ebpf::{LbMaps, MapSizes, ServiceEntry, SockLb, SockLbConfig};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::caches::Cached;
use crate::metrics::{MapLabel, Metrics};
use desired::ThisNode;

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Frontends wanted.
    pub frontends: usize,
    /// Backend slots wanted.
    pub backends: usize,
    /// Frontends written or removed.
    pub changes: usize,
    /// Frontends that could not be written, with why. The others were.
    pub failures: Vec<String>,
    /// Of those, how many because a map was full.
    pub map_full: usize,
    /// How full each preallocated map is: (map, entries, capacity).
    pub fill: Vec<(&'static str, u32, u32)>,
}

/// The node's service load balancer.
#[derive(Debug)]
pub struct ServiceLb {
    maps: LbMaps,
    node: ThisNode,
    /// The load-balanced cgroup: its processes' UDP sockets are closed
    /// when the backend they are connected to goes away.
    cgroup: PathBuf,
    /// The translator of frontends reached from outside the node.
    nodeport: Option<nodeport::NodePortKeeper>,
    // Holds the attachments open while the agent runs; the pins keep them
    // after it stops.
    _lb: SockLb,
}

/// Where the socket hooks go and where their objects are pinned.
#[derive(Debug, Clone)]
pub struct Placement {
    /// bpffs directory of the node's pins.
    pub pin_dir: PathBuf,
    /// cgroup2 directory whose processes are load-balanced.
    pub cgroup: PathBuf,
}

impl ServiceLb {
    /// Attaches (or adopts) the datapath and opens its maps.
    pub fn start(
        placement: &Placement,
        map_sizes: MapSizes,
        node: ThisNode,
        nodeport: Option<nodeport::NodePortKeeper>,
    ) -> Result<Self, berth_ebpf::Error> {
        if let Some(root) = bpffs_root(&placement.pin_dir) {
            berth_ebpf::bpffs::ensure_mounted(root)?;
        }
        let lb = SockLb::attach(
            &SockLbConfig {
                pin_dir: placement.pin_dir.clone(),
                map_sizes,
            },
            &placement.cgroup,
        )?;
        let maps = lb.maps()?;
        Ok(ServiceLb {
            maps,
            node,
            cgroup: placement.cgroup.clone(),
            nodeport,
            _lb: lb,
        })
    }

    /// Takes the maps to what `services` and `slices` need. A frontend that
    /// cannot be written (a full map) is reported and the others still
    /// are; only failing to read the maps fails the pass.
    pub fn sync(
        &mut self,
        services: &[&Service],
        slices: &[&EndpointSlice],
    ) -> Result<SyncReport, berth_ebpf::Error> {
        if let Some(keeper) = self.nodeport.as_mut() {
            if let Err(e) = keeper.ensure() {
                tracing::warn!(error = %e, "NodePort translator not attached; retrying");
            }
        }
        let want = desired::desired(services, slices, &self.node);
        let have = self.maps.services()?;
        let mut report = SyncReport::default();
        let fail = |report: &mut SyncReport, frontend: &Frontend, e: berth_ebpf::Error| {
            if matches!(e, berth_ebpf::Error::MapFull { .. }) {
                report.map_full += 1;
            }
            report.failures.push(format!("{frontend}: {e}"));
        };
        for entry in &have {
            if !want.contains_key(&entry.frontend) {
                match self.maps.remove_service(&entry.frontend) {
                    Ok(_) => {
                        tracing::info!(frontend = %entry.frontend, "service removed");
                        report.changes += 1;
                    }
                    Err(e) => fail(&mut report, &entry.frontend, e),
                }
            }
        }
        let held: HashMap<Frontend, &ServiceEntry> = have.iter().map(|e| (e.frontend, e)).collect();
        // Backends of every changed frontend in one batch per map.
        let mut upserts = Vec::new();
        for (frontend, wanted) in &want {
            if let Some(ordered) = changed(held.get(frontend).copied(), &wanted.backends) {
                upserts.push((*frontend, ordered));
            }
        }
        let mut written: HashSet<Frontend> = HashSet::new();
        let mut refused: HashSet<Frontend> = HashSet::new();
        for ((frontend, backends), outcome) in
            upserts.iter().zip(self.maps.upsert_services(&upserts)?)
        {
            match outcome {
                Ok(()) => {
                    tracing::info!(%frontend, backends = backends.len(), "service programmed");
                    written.insert(*frontend);
                }
                Err(e) => {
                    refused.insert(*frontend);
                    fail(&mut report, frontend, e);
                }
            }
        }
        // Affinity and Maglev are properties of the master entry: set where
        // they differ on frontends that now exist.
        for (frontend, wanted) in &want {
            if refused.contains(frontend) {
                continue;
            }
            let current = held.get(frontend);
            let affinity = current.and_then(|e| e.affinity_timeout);
            let maglev = current.is_some_and(|e| e.maglev);
            let outcomes = [
                (affinity != wanted.affinity)
                    .then(|| self.maps.set_affinity(frontend, wanted.affinity)),
                (maglev != wanted.maglev).then(|| self.maps.set_maglev(frontend, wanted.maglev)),
            ];
            for outcome in outcomes.into_iter().flatten() {
                match outcome {
                    Ok(true) => {
                        written.insert(*frontend);
                    }
                    Ok(false) => {}
                    Err(e) => fail(&mut report, frontend, e),
                }
            }
        }
        report.changes += written.len();
        report.fill = self.maps.fill();
        report.frontends = want.len();
        report.backends = want.values().map(|w| w.backends.len()).sum();
        self.close_stale_udp(&have, &want);
        Ok(report)
    }

    /// Closes the UDP sockets of the cgroup's processes that are connected
    /// to a backend no UDP frontend has any more.
    fn close_stale_udp(&self, had: &[ServiceEntry], want: &desired::Desired) {
        let udp = |f: &Frontend| f.proto == Protocol::Udp;
        let kept: HashSet<SocketAddrV4> = want
            .iter()
            .filter(|(f, _)| udp(f))
            .flat_map(|(_, w)| w.backends.iter().map(|b| b.addr))
            .collect();
        let gone: Vec<SocketAddrV4> = had
            .iter()
            .filter(|e| udp(&e.frontend))
            .flat_map(|e| e.slots.iter().filter_map(|s| s.backend.map(|b| b.addr)))
            .filter(|addr| !kept.contains(addr))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if gone.is_empty() {
            return;
        }
        let netns = netns_of_cgroup(&self.cgroup);
        match berth_ebpf::destroy_udp_connected_to(&gone, &netns) {
            Ok(visited) => {
                tracing::info!(backends = ?gone, namespaces = visited, "closed UDP sockets connected to removed backends")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot close UDP sockets connected to removed backends")
            }
        }
    }

    /// Reconciles on every change of the Service or EndpointSlice cache,
    /// and every `resync`, forever. Waits for both caches' first lists, so
    /// frontends of existing services are never removed at start.
    pub async fn run(
        mut self,
        mut services: Cached<Service>,
        mut slices: Cached<EndpointSlice>,
        resync: Duration,
        metrics: Arc<Metrics>,
    ) {
        if services.store.wait_until_ready().await.is_err()
            || slices.store.wait_until_ready().await.is_err()
        {
            tracing::error!(
                "service caches closed before their first list; load balancing stopped"
            );
            return;
        }
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let started = Instant::now();
            let all_services = services.store.state();
            let all_slices = slices.store.state();
            let svc: Vec<&Service> = all_services.iter().map(AsRef::as_ref).collect();
            let eps: Vec<&EndpointSlice> = all_slices.iter().map(AsRef::as_ref).collect();
            match self.sync(&svc, &eps) {
                Ok(report) => {
                    if let Some(first) = report.failures.first() {
                        metrics.lb_sync_failures.inc();
                        metrics.lb_map_full.inc_by(report.map_full as u64);
                        tracing::error!(
                            failed = report.failures.len(),
                            %first,
                            "some services could not be programmed; retrying"
                        );
                    }
                    metrics.lb_syncs.inc();
                    metrics.lb_changes.inc_by(report.changes as u64);
                    metrics.lb_frontends.set(report.frontends as i64);
                    metrics.lb_backends.set(report.backends as i64);
                    metrics.lb_sync_seconds.set(started.elapsed().as_secs_f64());
                    for (map, used, capacity) in &report.fill {
                        metrics
                            .lb_map_fill
                            .get_or_create(&MapLabel {
                                map: (*map).to_string(),
                            })
                            .set(f64::from(*used) / f64::from((*capacity).max(1)));
                    }
                }
                Err(e) => {
                    metrics.lb_sync_failures.inc();
                    tracing::warn!(error = %e, "service sync failed; retrying");
                }
            }
            tokio::select! {
                changed = services.changed.changed() => if changed.is_err() { return },
                changed = slices.changed.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }
}

/// The backends to write for a frontend, or `None` when the maps already
/// hold exactly `wanted`. Backends already in a slot keep their order, so
/// an update moves as few slots as possible.
fn changed(current: Option<&ServiceEntry>, wanted: &[Backend]) -> Option<Vec<Backend>> {
    let held: Vec<Backend> = current
        .map(|e| e.slots.iter().filter_map(|s| s.backend).collect())
        .unwrap_or_default();
    let wanted_set: HashSet<&Backend> = wanted.iter().collect();
    let held_set: HashSet<&Backend> = held.iter().collect();
    let complete = current.is_some_and(|e| e.slots.iter().all(|s| s.backend.is_some()));
    if current.is_some() && complete && wanted_set == held_set && held.len() == wanted.len() {
        return None;
    }
    let mut ordered: Vec<Backend> = held
        .iter()
        .filter(|b| wanted_set.contains(b))
        .copied()
        .collect();
    ordered.extend(wanted.iter().filter(|b| !held_set.contains(b)).copied());
    Some(ordered)
}

/// The bpffs mount point a pin directory lives under, when it is below
/// the usual one (mounted there if missing).
fn bpffs_root(pin_dir: &Path) -> Option<&Path> {
    let root = Path::new(berth_ebpf::bpffs::DEFAULT_ROOT);
    pin_dir.starts_with(root).then_some(root)
}

/// The network namespaces of the processes in `cgroup` and below, one path
/// (`/proc/<pid>/ns/net`) per namespace.
fn netns_of_cgroup(cgroup: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                if let Ok(meta) = std::fs::metadata(&path) {
                    if seen.insert((meta.dev(), meta.ino())) {
                        found.push(path);
                    }
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// What `berth-agent bpf lb list` prints: every frontend in the maps.
pub fn list(pin_dir: &Path) -> Result<Vec<ServiceEntry>, berth_ebpf::Error> {
    LbMaps::open_pinned(pin_dir)?.services()
}

/// `entries` as a table, one line per backend slot (like
/// `cilium-dbg bpf lb list`).
pub fn table(entries: &[ServiceEntry]) -> String {
    let mut out = format!(
        "{:<28} {:<12} {:<34} {:<10} {}\n",
        "FRONTEND", "AFFINITY", "BACKEND (SLOT)", "SLOT KEY", "BACKEND ID"
    );
    for entry in entries {
        let frontend = entry.frontend.to_string();
        let affinity = entry
            .affinity_timeout
            .map_or_else(|| "-".to_string(), |t| format!("ClientIP {t}s"));
        if entry.slots.is_empty() {
            out += &format!(
                "{frontend:<28} {affinity:<12} {:<34} {:<10} -\n",
                "(no backend: refused)", "-"
            );
        }
        for (i, slot) in entry.slots.iter().enumerate() {
            let backend = slot
                .backend
                .map_or_else(|| "(missing)".to_string(), |b| b.to_string());
            let (first, aff) = if i == 0 {
                (frontend.as_str(), affinity.as_str())
            } else {
                ("", "")
            };
            out += &format!(
                "{first:<28} {aff:<12} {:<34} {:<10} {}\n",
                format!("{backend} ({})", slot.slot),
                slot.index,
                slot.backend_id
            );
        }
    }
    out
}

/// A client named on the command line: an address, with a port or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Its address.
    pub ip: std::net::Ipv4Addr,
    /// Its source port, if known.
    pub port: Option<u16>,
}

impl std::str::FromStr for Client {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddrV4>() {
            return Ok(Client {
                ip: *addr.ip(),
                port: Some(addr.port()),
            });
        }
        s.parse()
            .map(|ip| Client { ip, port: None })
            .map_err(|_| format!("{s:?} is not an IPv4 address or IPv4:PORT"))
    }
}

/// Which backend the datapath would pick for a connection to `frontend`
/// (from `from`, outside the node, when given), and why, as text for people.
pub fn explain(
    pin_dir: &Path,
    frontend: &Frontend,
    from: Option<Client>,
) -> Result<String, berth_ebpf::Error> {
    let maps = LbMaps::open_pinned(pin_dir)?;
    let Some(entry) = maps
        .services()?
        .into_iter()
        .find(|e| e.frontend == *frontend)
    else {
        return Ok(format!(
            "{frontend} is not a service frontend on this node: a connection to it is not translated.\n"
        ));
    };
    if entry.slots.is_empty() {
        return Ok(format!(
            "{frontend} has no backend: connect() and sendmsg() to it are refused at once (EPERM).\n"
        ));
    }
    let n = entry.slots.len();
    let mut out = format!(
        "{frontend}: each new socket (or unconnected UDP datagram) gets one of {n} backends at random, \
         each with probability 1/{n}; replies and getpeername() show {frontend} again.\n"
    );
    if entry.maglev {
        out += &format!(
            "Maglev ({} entries): a flow from outside the node (client address and port) goes to the \
             backend its hash selects, the same on every node; from inside, the socket hooks still pick at random.\n",
            berth_ebpf::maglev::SIZE
        );
    }
    for slot in &entry.slots {
        let backend = slot
            .backend
            .map_or_else(|| "(missing: refused)".to_string(), |b| b.to_string());
        out += &format!(
            "  slot {:>3}  backend id {:>6}  {backend}\n",
            slot.slot, slot.backend_id
        );
    }
    if let Some(client) = from {
        out += &explain_from(pin_dir, &maps, &entry, client)?;
    }
    if let Some(timeout) = entry.affinity_timeout {
        out += &format!(
            "sessionAffinity ClientIP ({timeout} s): a client (a pod: its network namespace) that connected \
             within {timeout} s of its last connection keeps its backend:\n"
        );
        let pinned: Vec<_> = maps
            .affinities()?
            .into_iter()
            .filter(|a| a.frontend == *frontend)
            .collect();
        if pinned.is_empty() {
            out += "  (no client pinned yet)\n";
        }
        for a in pinned {
            let backend = a
                .backend
                .map_or_else(|| format!("(id {})", a.backend_id), |b| b.to_string());
            out += &format!("  client netns {:<20} -> {backend}\n", a.client);
        }
    }
    Ok(out)
}

/// What the tc path does with flows from `client` (outside the node).
fn explain_from(
    pin_dir: &Path,
    maps: &LbMaps,
    entry: &ServiceEntry,
    client: Client,
) -> Result<String, berth_ebpf::Error> {
    let frontend = entry.frontend;
    let mut out = String::new();
    match (entry.maglev, client.port) {
        (true, Some(port)) => {
            let addr = SocketAddrV4::new(client.ip, port);
            match maps.maglev_choice(&frontend, addr)? {
                Some((index, id, backend)) => {
                    let backend =
                        backend.map_or_else(|| "(missing: dropped)".to_string(), |b| b.to_string());
                    out += &format!(
                        "from {addr}: a new flow hashes to Maglev entry {index}: backend id {id} {backend} (on every node)\n"
                    );
                }
                None => out += &format!("from {addr}: no Maglev table yet: dropped\n"),
            }
        }
        (true, None) => {
            out += &format!(
                "from {}: each flow goes where its hash (with its source port) points; give IP:PORT to see which\n",
                client.ip
            );
        }
        (false, _) => {
            out += &format!(
                "from {}: a new flow gets one of {} backends at random\n",
                client.ip,
                entry.slots.len()
            );
        }
    }
    // No connection table yet: the tc path has not run on this node.
    let tracked = berth_ebpf::ct_entries(pin_dir).unwrap_or_default();
    for ct in tracked.iter().filter(|c| {
        c.direction == "original"
            && *c.from.ip() == client.ip
            && client.port.is_none_or(|p| c.from.port() == p)
            && c.to == frontend.addr
            && c.proto == frontend.proto
    }) {
        out += &format!(
            "  tracked: {} -> {} (backend id {})\n",
            ct.from, ct.new_to, ct.backend_id
        );
    }
    Ok(out)
}

/// What `berth-agent bpf affinity list` prints: every client pinned to a
/// backend.
pub fn affinities(pin_dir: &Path) -> Result<Vec<berth_ebpf::AffinityEntry>, berth_ebpf::Error> {
    LbMaps::open_pinned(pin_dir)?.affinities()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_ebpf::SlotEntry;
    use std::net::Ipv4Addr;

    fn backend(last: u8) -> Backend {
        Backend {
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, last), 80),
            proto: Protocol::Tcp,
        }
    }

    fn entry(backends: &[Backend]) -> ServiceEntry {
        ServiceEntry {
            frontend: Frontend::new(Ipv4Addr::new(10, 96, 0, 1), 80, Protocol::Tcp),
            flags: 0,
            maglev: false,
            affinity_timeout: None,
            slots: backends
                .iter()
                .enumerate()
                .map(|(i, b)| SlotEntry {
                    slot: i as u16 + 1,
                    index: i as u32,
                    backend_id: i as u32 + 1,
                    backend: Some(*b),
                })
                .collect(),
        }
    }

    #[test]
    fn unchanged_frontends_are_not_written_and_kept_slots_keep_their_order() {
        let held = entry(&[backend(3), backend(1)]);
        assert_eq!(changed(Some(&held), &[backend(1), backend(3)]), None);
        assert_eq!(
            changed(Some(&held), &[backend(1), backend(2)]),
            Some(vec![backend(1), backend(2)])
        );
        assert_eq!(
            changed(Some(&held), &[backend(1), backend(2), backend(3)]),
            Some(vec![backend(3), backend(1), backend(2)])
        );
        assert_eq!(
            changed(None, &[]),
            Some(vec![]),
            "an empty frontend is written"
        );
        assert_eq!(changed(Some(&entry(&[])), &[]), None);
    }
}
