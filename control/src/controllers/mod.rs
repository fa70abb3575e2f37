//! The control loops of berth-control, one file each, all of one shape:
//! `kube::runtime::Controller` watches the objects a loop is about (and
//! those that should wake it), caches them, and queues keys — one entry
//! per object however many events arrive — for a reconcile function that
//! drives the cluster toward what the object asks and answers "requeue
//! after" or "wait for a change". A failed reconcile is retried for its
//! key alone, after a delay doubling from 1 s to 5 min (reset by the next
//! success), so one bad object never slows the others.
//!
//! Controllers talk to the API as any client does (a `kube::Client`),
//! through this server's own router in process: their writes pass the
//! same validation, admission and watches as kubectl's, and each could run
//! out of process unchanged.

mod claim;
mod deployment;
mod endpoints;
mod endpointslice;
mod garbage_collector;
mod kubernetes_endpoint;
pub mod leader;
mod namespace;
mod node_lifecycle;
mod replicaset;
mod scheduler;
mod taint_eviction;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use kube::runtime::controller::Action;
use kube::runtime::Controller;
use kube::Resource;

use crate::metrics::ControllerMetrics;

/// What the controllers need to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address and port clients reach this server at (the
    /// `kubernetes` Service's endpoint).
    pub server_address: String,
    /// How long a node's agent may stay silent before the node is
    /// marked unreachable.
    pub node_monitor_grace: std::time::Duration,
    /// Where the controllers count their work.
    pub metrics: ControllerMetrics,
}

/// The controllers' metrics, once [`start`] has set them.
static METRICS: OnceLock<ControllerMetrics> = OnceLock::new();

/// Records into the controllers' metrics, if they are set.
fn metrics(record: impl FnOnce(&ControllerMetrics)) {
    if let Some(m) = METRICS.get() {
        record(m);
    }
}

/// Contends for leadership on `client` and, while this instance leads,
/// runs every controller, until `shutdown`; the task ends once the
/// controllers have stopped and the Lease is released.
pub fn start(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    // One set per process: a second start (tests) keeps the first.
    let _ = METRICS.set(config.metrics.clone());
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    // Stable across restarts (the address is this instance's own), so a
    // restarted leader takes its Lease back at once.
    let identity = format!(
        "{}_{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
        config.server_address,
    );
    let stop = shutdown.clone();
    tokio::spawn(leader::run(
        client.clone(),
        identity,
        move |tasks| {
            // Each controller ends with the task (when leadership is lost)
            // or at shutdown.
            tasks.spawn(kubernetes_endpoint::run(
                client.clone(),
                config.clone(),
                stop.clone(),
            ));
            tasks.spawn(endpointslice::run(client.clone(), stop.clone()));
            tasks.spawn(scheduler::run(client.clone(), stop.clone()));
            tasks.spawn(replicaset::run(client.clone(), stop.clone()));
            tasks.spawn(deployment::run(client.clone(), stop.clone()));
            tasks.spawn(taint_eviction::run(client.clone(), stop.clone()));
            tasks.spawn(namespace::run(client.clone(), stop.clone()));
            tasks.spawn(garbage_collector::run(client.clone(), stop.clone()));
            tasks.spawn(node_lifecycle::run(
                client.clone(),
                config.node_monitor_grace,
                stop.clone(),
            ));
        },
        shutdown,
    ))
}

/// Records an event about `object` from `component` (best effort: a lost
/// event is logged), as `kubectl describe` and `kubectl get events` show.
async fn record_event<K>(
    client: &kube::Client,
    object: &K,
    component: &str,
    type_: &str,
    reason: &str,
    message: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let namespace = object
        .meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = object.meta().name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let event = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": namespace},
        "involvedObject": {
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": name,
            "namespace": object.meta().namespace, "uid": object.meta().uid,
        },
        "reason": reason, "message": message, "type": type_,
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let api =
        kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &namespace);
    let posted = match serde_json::from_value(event) {
        Ok(event) => api
            .create(&kube::api::PostParams::default(), &event)
            .await
            .map(drop),
        Err(e) => Err(kube::Error::SerdeError(e)),
    };
    if let Err(e) = posted {
        tracing::warn!(error = %e, reason, "cannot record event");
    }
}

/// Per-key delays of failed reconciles.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

/// The first retry delay.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest retry delay.
const MAX_RETRY: Duration = Duration::from_secs(300);

impl Backoff {
    /// Records a failure of `key`; returns how long to wait before the
    /// next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_default();
        let delay = FIRST_RETRY
            .checked_mul(2u32.saturating_pow(*n))
            .map_or(MAX_RETRY, |d| d.min(MAX_RETRY));
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How many keys wait for a retry.
    pub fn pending(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Runs `controller` with `reconcile` until its shutdown: successes reset
/// a key's backoff, failures are logged and retried after it.
async fn run<K, C, E, F>(
    name: &'static str,
    controller: Controller<K>,
    context: Arc<C>,
    backoff: Arc<Backoff>,
    reconcile: impl Fn(Arc<K>, Arc<C>) -> F + Send + 'static,
) where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Debug + Clone + Eq + std::hash::Hash + Unpin,
    C: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    F: Future<Output = Result<Action, E>> + Send + 'static,
{
    let key = |obj: &K| {
        let meta = obj.meta();
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("")
        )
    };
    let done = Arc::clone(&backoff);
    let results = controller.run(
        move |obj, ctx| {
            let key = key(&obj);
            let backoff = Arc::clone(&done);
            let reconciled = reconcile(obj, ctx);
            async move {
                let started = std::time::Instant::now();
                let active = METRICS.get().map(|m| m.active(name));
                if let Some(a) = &active {
                    a.inc();
                }
                let result = reconciled.await;
                if let Some(a) = &active {
                    a.dec();
                }
                metrics(|m| m.reconciled(name, result.is_ok(), started.elapsed()));
                let action = result?;
                backoff.succeeded(&key);
                metrics(|m| m.retrying(name, backoff.pending()));
                Ok::<_, E>(action)
            }
        },
        move |obj, error, _ctx| {
            let delay = backoff.failed(&key(&obj));
            metrics(|m| m.retrying(name, backoff.pending()));
            tracing::warn!(controller = name, object = %key(&obj), %error, retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        },
        context,
    );
    results
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(controller = name, error = %e, "controller event");
            }
        })
        .await;
    tracing::info!(controller = name, "stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_per_key_up_to_the_cap_and_reset_on_success() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..12).map(|_| b.failed("a").as_secs()).collect();
        assert_eq!(delays[..4], [1, 2, 4, 8]);
        assert_eq!(*delays.last().unwrap(), 300);
        assert_eq!(b.failed("b").as_secs(), 1, "keys are independent");
        b.succeeded("a");
        assert_eq!(b.failed("a").as_secs(), 1);
    }
}
