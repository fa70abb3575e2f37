//! Keeps the node's masquerade rule in place: pod traffic leaving the
//! cluster CIDR takes the node's address. berth-cni states the rule when it
//! sets up the node; the agent checks it every interval and restores it if
//! something removed it (a ruleset flush, a firewall reload).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_cni::masq;
use ipnetwork::Ipv4Network;

use crate::metrics::Metrics;

/// What to keep.
#[derive(Debug, Clone)]
pub struct Masquerade {
    /// The node's network namespace (`None`: the agent's own).
    pub netns: Option<PathBuf>,
    /// The CNI network's name (names the chain).
    pub network: String,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Network,
    /// The cluster CIDR, never masqueraded.
    pub cluster_cidr: Ipv4Network,
}

impl Masquerade {
    /// Checks once; restores the rule when it is missing or different.
    /// Returns whether it had to.
    pub fn reconcile(&self) -> Result<bool, masq::MasqError> {
        let netns = self.netns.as_deref();
        if masq::present(netns, &self.network, self.pod_cidr, self.cluster_cidr)? {
            return Ok(false);
        }
        masq::apply(netns, &self.network, self.pod_cidr, self.cluster_cidr)?;
        Ok(true)
    }

    /// Reconciles every `interval`, forever.
    pub async fn run(self, interval: Duration, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reconcile()).await {
                Ok(Ok(true)) => {
                    metrics.masquerade_repairs.inc();
                    tracing::info!(pod_cidr = %self.pod_cidr, "masquerade rule (re)installed");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot check the masquerade rule"),
                Err(e) => tracing::warn!(error = %e, "masquerade check panicked"),
            }
        }
    }
}
