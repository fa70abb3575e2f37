//! The agent's Prometheus metrics, served at `/metrics` on the metrics
//! address (9962 by default).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label of a per-map metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    /// The map's name, e.g. `lb4_services`.
    pub map: String,
}

/// Counters and gauges of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Lease renewals that succeeded.
    pub heartbeats: Counter,
    /// Lease renewals or status updates that failed.
    pub heartbeat_failures: Counter,
    /// Unix time of the last successful renewal.
    pub last_heartbeat: Gauge<f64, AtomicU64>,
    /// Overlay reconciliations that completed.
    pub overlay_syncs: Counter,
    /// Overlay reconciliations that failed (retried).
    pub overlay_sync_failures: Counter,
    /// Kernel changes (FDB, neighbour, route) the overlay made.
    pub overlay_changes: Counter,
    /// Other nodes the overlay reaches.
    pub overlay_peers: Gauge,
    /// Duration of the last overlay reconciliation.
    pub overlay_sync_seconds: Gauge<f64, AtomicU64>,
    /// Times the masquerade rule was found missing and installed.
    pub masquerade_repairs: Counter,
    /// Service load-balancer passes that completed.
    pub lb_syncs: Counter,
    /// Service load-balancer passes that failed (retried).
    pub lb_sync_failures: Counter,
    /// Frontends written or removed.
    pub lb_changes: Counter,
    /// Frontends not written because a map was full.
    pub lb_map_full: Counter,
    /// Frontends programmed.
    pub lb_frontends: Gauge,
    /// Backend slots programmed.
    pub lb_backends: Gauge,
    /// Used fraction of each preallocated load-balancing map.
    pub lb_map_fill: Family<MapLabel, Gauge<f64, AtomicU64>>,
    /// Duration of the last load-balancer pass.
    pub lb_sync_seconds: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth_agent");
        let heartbeats = Counter::default();
        let heartbeat_failures = Counter::default();
        let last_heartbeat = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "heartbeats",
            "Lease renewals that succeeded",
            heartbeats.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Lease renewals or node status updates that failed",
            heartbeat_failures.clone(),
        );
        registry.register(
            "last_heartbeat_timestamp_seconds",
            "Unix time of the last successful lease renewal",
            last_heartbeat.clone(),
        );
        let overlay_syncs = Counter::default();
        let overlay_sync_failures = Counter::default();
        let overlay_changes = Counter::default();
        let overlay_peers = Gauge::default();
        let overlay_sync_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "overlay_syncs",
            "Overlay reconciliations that completed",
            overlay_syncs.clone(),
        );
        registry.register(
            "overlay_sync_failures",
            "Overlay reconciliations that failed and will be retried",
            overlay_sync_failures.clone(),
        );
        registry.register(
            "overlay_changes",
            "FDB, neighbour and route changes the overlay made",
            overlay_changes.clone(),
        );
        registry.register(
            "overlay_peers",
            "Other nodes the overlay reaches",
            overlay_peers.clone(),
        );
        registry.register(
            "overlay_sync_duration_seconds",
            "Duration of the last overlay reconciliation",
            overlay_sync_seconds.clone(),
        );
        let masquerade_repairs = Counter::default();
        registry.register(
            "masquerade_repairs",
            "Times the masquerade rule was found missing and installed",
            masquerade_repairs.clone(),
        );
        let lb_syncs = Counter::default();
        let lb_sync_failures = Counter::default();
        let lb_changes = Counter::default();
        let lb_map_full = Counter::default();
        registry.register(
            "lb_map_full",
            "Service frontends not programmed because a map was full (raise services.mapSizes)",
            lb_map_full.clone(),
        );
        let lb_frontends = Gauge::default();
        let lb_backends = Gauge::default();
        let lb_sync_seconds = Gauge::<f64, AtomicU64>::default();
        let lb_map_fill = Family::<MapLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "lb_map_fill_ratio",
            "Used fraction of each preallocated load-balancing map (entries / capacity)",
            lb_map_fill.clone(),
        );
        registry.register(
            "lb_syncs",
            "Service load-balancer passes that completed",
            lb_syncs.clone(),
        );
        registry.register(
            "lb_sync_failures",
            "Service load-balancer passes that failed and will be retried",
            lb_sync_failures.clone(),
        );
        registry.register(
            "lb_changes",
            "Service frontends written or removed",
            lb_changes.clone(),
        );
        registry.register(
            "lb_frontends",
            "Service frontends programmed in the datapath",
            lb_frontends.clone(),
        );
        registry.register(
            "lb_backends",
            "Backend slots programmed in the datapath",
            lb_backends.clone(),
        );
        registry.register(
            "lb_sync_duration_seconds",
            "Duration of the last service load-balancer pass",
            lb_sync_seconds.clone(),
        );
        Metrics {
            registry,
            masquerade_repairs,
            lb_syncs,
            lb_sync_failures,
            lb_changes,
            lb_map_full,
            lb_frontends,
            lb_backends,
            lb_map_fill,
            lb_sync_seconds,
            heartbeats,
            heartbeat_failures,
            last_heartbeat,
            overlay_syncs,
            overlay_sync_failures,
            overlay_changes,
            overlay_peers,
            overlay_sync_seconds,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.heartbeats.inc();
        let text = m.render();
        assert!(text.contains("berth_agent_heartbeats_total 1"), "{text}");
        assert!(
            text.contains("berth_agent_heartbeat_failures_total 0"),
            "{text}"
        );
    }
}
