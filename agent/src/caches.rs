//! Reflector caches shared by the agent's subsystems: one watch per kind,
//! however many subsystems read it. A subsystem reads the store whenever
//! the kind's change signal fires, and reconciles the kernel toward it.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::watch;

/// One kind's cache and its change signal.
#[derive(Debug, Clone)]
pub struct Cached<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    /// The objects, as the last list and watch events left them.
    pub store: Store<K>,
    /// Bumped after every event that reached the store.
    pub changed: watch::Receiver<u64>,
}

/// The caches of the agent.
#[derive(Debug, Clone)]
pub struct Caches {
    /// Every Node of the cluster (the overlay's peers).
    pub nodes: Cached<Node>,
    /// Every Service (the load balancer's frontends).
    pub services: Cached<Service>,
    /// Every EndpointSlice (the load balancer's backends).
    pub endpoint_slices: Cached<EndpointSlice>,
}

impl Caches {
    /// Starts the watches; they run (and reconnect with backoff) for as
    /// long as the runtime does.
    pub fn start(client: kube::Client) -> Self {
        Caches {
            nodes: cache(Api::<Node>::all(client.clone()), "nodes"),
            services: cache(Api::<Service>::all(client.clone()), "services"),
            endpoint_slices: cache(Api::<EndpointSlice>::all(client), "endpointslices"),
        }
    }
}

fn cache<K>(api: Api<K>, kind: &'static str) -> Cached<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let (tx, changed) = watch::channel(0u64);
    let events = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut count = 0u64;
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => {
                    count += 1;
                    tx.send_replace(count);
                }
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    Cached { store, changed }
}
