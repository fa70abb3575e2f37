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

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
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
        Metrics {
            registry,
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
