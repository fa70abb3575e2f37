//! Prometheus metrics of the API server, served at `/metrics` in the text
//! format, named as kube-apiserver names them.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    resource: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    result: String,
}

/// The controllers' metrics, named as controller-runtime,
/// kube-controller-manager and kube-scheduler name theirs.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_time: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    active: Family<ControllerLabels, Gauge>,
    retrying: Family<ControllerLabels, Gauge>,
    leader: Gauge,
    schedule_attempts: Family<ScheduleLabels, Counter>,
    scheduling_time: Histogram,
}

impl ControllerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ControllerMetrics {
            reconciles: Family::default(),
            reconcile_time: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            active: Family::default(),
            retrying: Family::default(),
            leader: Gauge::default(),
            schedule_attempts: Family::default(),
            scheduling_time: latency_histogram(),
        };
        registry.register(
            "controller_runtime_reconcile",
            "Reconciles by controller and result (success, error)",
            m.reconciles.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Time a reconcile took, by controller",
            m.reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Reconciles running now, by controller",
            m.active.clone(),
        );
        registry.register(
            "workqueue_retries_pending",
            "Objects waiting to be retried after a failed reconcile, by controller",
            m.retrying.clone(),
        );
        registry.register(
            "leader_election_master_status",
            "1 while this instance holds the controllers' leader Lease",
            m.leader.clone(),
        );
        registry.register(
            "scheduler_schedule_attempts",
            "Scheduling attempts by result (scheduled, unschedulable, error)",
            m.schedule_attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Time from a pending pod's reconcile start to its binding or verdict",
            m.scheduling_time.clone(),
        );
        m
    }

    /// Counts a reconcile of `controller` that took `elapsed`.
    pub fn reconciled(&self, controller: &str, ok: bool, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                controller: controller.into(),
                result: if ok { "success" } else { "error" }.into(),
            })
            .inc();
        self.reconcile_time
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The gauge of reconciles of `controller` running now.
    pub fn active(&self, controller: &str) -> Gauge {
        self.active
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .clone()
    }

    /// Sets how many objects of `controller` wait for a retry.
    pub fn retrying(&self, controller: &str, n: usize) {
        self.retrying
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Whether this instance leads (runs the controllers).
    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts a scheduling attempt (`scheduled`, `unschedulable`, `error`).
    pub fn scheduled(&self, result: &str, elapsed: Duration) {
        self.schedule_attempts
            .get_or_create(&ScheduleLabels {
                result: result.into(),
            })
            .inc();
        self.scheduling_time.observe(elapsed.as_secs_f64());
    }
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    controllers: ControllerMetrics,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    watches: Gauge,
    store_size: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let watches = Gauge::default();
        let store_size = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "apiserver_request",
            "Requests by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Request latency by verb and resource (watches: time to start)",
            latency.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Watches currently open",
            watches.clone(),
        );
        registry.register(
            "apiserver_storage_size_bytes",
            "Size of the store's data",
            store_size.clone(),
        );
        let controllers = ControllerMetrics::register(&mut registry);
        Metrics {
            registry,
            controllers,
            requests,
            latency,
            watches,
            store_size,
        }
    }
}

impl Metrics {
    /// Counts a finished request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The controllers' metrics (served with the server's).
    pub fn controllers(&self) -> ControllerMetrics {
        self.controllers.clone()
    }

    /// Counts an open watch until the guard is dropped.
    pub fn watch_opened(&self) -> WatchGuard {
        self.watches.inc();
        WatchGuard(self.watches.clone())
    }

    /// The text exposition, with the store's current size.
    pub fn render(&self, store_size: u64) -> String {
        self.store_size.set(store_size);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Decrements the open-watch gauge when dropped.
#[derive(Debug)]
pub struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.observe("list", "pods", 200, Duration::from_millis(3));
        let guard = m.watch_opened();
        let text = m.render(4096);
        assert!(
            text.contains(
                "apiserver_request_total{verb=\"list\",resource=\"pods\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("apiserver_registered_watchers 1"));
        assert!(text.contains("apiserver_storage_size_bytes 4096"));
        drop(guard);
        assert!(m.render(0).contains("apiserver_registered_watchers 0"));
    }
}
