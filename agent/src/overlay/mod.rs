//! The VXLAN overlay: one device per node, and for every other node an
//! FDB entry, a neighbour entry and an on-link route to its pod CIDR
//! (flannel's vxlan backend, without its stale entries).
//!
//! The reconciler compares the kernel with the Node cache on every change
//! and every resync, and applies only the difference: entries of nodes that
//! vanished while the agent was down are removed at start, entries that
//! already match are never touched (established connections do not notice
//! a restart), and a deleted device is recreated with its entries.

pub mod kernel;
pub mod peers;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::Handle;

use crate::caches::Cached;
use crate::config::OverlayConfig;
use crate::metrics::Metrics;
use kernel::{DeviceSpec, KernelError};
use peers::{Mac, Me, Peer};

/// The node's VTEP MAC: derived from its name, so it is the same after a
/// restart or a reboot and peers' entries stay valid (locally administered
/// unicast, `0e:` + 5 bytes of a stable hash).
pub fn vtep_mac(node: &str) -> Mac {
    let h = berth_net::mac::stable_hash(node.as_bytes()).to_be_bytes();
    [0x0e, h[0], h[1], h[2], h[3], h[4]]
}

/// The overlay of one node.
#[derive(Debug)]
pub struct Overlay {
    handle: Handle,
    config: OverlayConfig,
    spec: DeviceSpec,
    me: Me,
    last_good: BTreeMap<String, Peer>,
}

/// What one reconciliation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Peers reached.
    pub peers: usize,
    /// Kernel changes made.
    pub changes: usize,
}

impl Overlay {
    /// Finds the underlay and brings the device up; entries follow in
    /// [`Overlay::sync`].
    pub async fn start(
        handle: Handle,
        config: &OverlayConfig,
        node: &str,
        node_ip: Ipv4Addr,
        pod_cidr: Ipv4Network,
    ) -> Result<Self, KernelError> {
        let underlay =
            kernel::underlay(&handle, config.underlay_interface.as_deref(), node_ip).await?;
        let spec = DeviceSpec {
            name: config.device.clone(),
            vni: config.vni,
            port: config.port,
            local: node_ip,
            underlay,
            mac: vtep_mac(node),
            vtep_ip: pod_cidr.network(),
        };
        kernel::ensure_device(&handle, &spec).await?;
        Ok(Overlay {
            handle,
            config: config.clone(),
            spec,
            me: Me {
                name: node.to_string(),
                pod_cidr,
                underlay: node_ip,
            },
            last_good: BTreeMap::new(),
        })
    }

    /// The MTU of the device, which pods get too.
    pub fn mtu(&self) -> u32 {
        self.spec.mtu()
    }

    /// The node's VTEP MAC.
    pub fn mac(&self) -> Mac {
        self.spec.mac
    }

    /// Takes the kernel to what `nodes` need. Every change is tried even
    /// when one fails (the failures are returned together), so one bad
    /// entry never holds up the others.
    pub async fn sync(&mut self, nodes: &[Arc<Node>]) -> Result<SyncReport, KernelError> {
        // The underlay may have been recreated (new index) or changed MTU.
        let underlay = kernel::underlay(
            &self.handle,
            self.config.underlay_interface.as_deref(),
            self.me.underlay,
        )
        .await?;
        if underlay != self.spec.underlay {
            if underlay.mtu != self.spec.underlay.mtu {
                tracing::warn!(
                    old = self.spec.underlay.mtu,
                    new = underlay.mtu,
                    "underlay MTU changed; pods keep the MTU they were given until they are recreated"
                );
            }
            self.spec.underlay = underlay;
        }
        let (index, created) = kernel::ensure_device(&self.handle, &self.spec).await?;
        if created {
            tracing::warn!(device = %self.spec.name, "VXLAN device was missing or wrong; recreated");
        }
        let installed = kernel::installed(&self.handle, index).await?;
        let peers = peers::peers(
            nodes.iter().map(AsRef::as_ref),
            &self.me,
            &mut self.last_good,
            &installed,
        );
        let changes = peers::plan(&peers, &installed);
        let mut failures = Vec::new();
        for change in &changes {
            tracing::info!(device = %self.spec.name, %change, "overlay");
            if let Err(e) = kernel::apply(&self.handle, index, change).await {
                tracing::warn!(device = %self.spec.name, %change, error = %e, "overlay change failed");
                failures.push(e.to_string());
            }
        }
        if !failures.is_empty() {
            return Err(KernelError::Changes(failures));
        }
        Ok(SyncReport {
            peers: peers.len(),
            changes: changes.len(),
        })
    }

    /// Reconciles on every change of the Node cache and every `resync`,
    /// forever. Waits for the cache's first full list before the first
    /// pass, so entries of live nodes are never taken for stale ones.
    pub async fn run(mut self, mut nodes: Cached<Node>, resync: Duration, metrics: Arc<Metrics>) {
        if nodes.store.wait_until_ready().await.is_err() {
            tracing::error!("node cache closed before its first list; overlay stopped");
            return;
        }
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let started = Instant::now();
            let state = nodes.store.state();
            match self.sync(&state).await {
                Ok(report) => {
                    metrics.overlay_syncs.inc();
                    metrics.overlay_changes.inc_by(report.changes as u64);
                    metrics.overlay_peers.set(report.peers as i64);
                    metrics
                        .overlay_sync_seconds
                        .set(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    metrics.overlay_sync_failures.inc();
                    tracing::warn!(error = %e, "overlay sync failed; retrying");
                }
            }
            tokio::select! {
                changed = nodes.changed.changed() => if changed.is_err() {
                    tracing::error!("node cache closed; overlay stopped");
                    return;
                },
                _ = tick.tick() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_stable_local_unicast_and_distinct() {
        let mac = vtep_mac("n0");
        assert_eq!(mac, vtep_mac("n0"));
        assert_ne!(mac, vtep_mac("n1"));
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered, unicast");
    }
}
