//! Keeps the `kubernetes` Service's EndpointSlice pointing at this server,
//! as kube-apiserver's endpoint reconciler does: created when missing,
//! rewritten when someone changes it or the advertised address changed,
//! so service proxies route the Service to the API server.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::Api;
use serde_json::json;

use super::{Backoff, Config};
use crate::registry::advertised_endpoint;

const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";

/// What the reconcile needs.
struct Context {
    slices: Api<EndpointSlice>,
    /// The endpoint's address and port.
    ip: std::net::Ipv4Addr,
    port: u16,
}

/// Runs the controller until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Some((ip, port)) = advertised_endpoint(&config.server_address) else {
        tracing::warn!(address = %config.server_address, "advertised address is not IPv4: no EndpointSlice for the kubernetes Service");
        return;
    };
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
    let controller = Controller::new(
        services,
        watcher::Config::default().fields(&format!("metadata.name={NAME}")),
    )
    .watches(
        slices.clone(),
        watcher::Config::default().fields(&format!("metadata.name={NAME}")),
        |_| Some(ObjectRef::new(NAME).within(NAMESPACE)),
    )
    .graceful_shutdown_on(shutdown);
    let context = Arc::new(Context { slices, ip, port });
    super::run(
        "kubernetes-endpoint",
        controller,
        context,
        Arc::new(Backoff::default()),
        reconcile,
    )
    .await;
}

/// Makes the EndpointSlice hold this server's endpoint.
async fn reconcile(_service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let endpoints = json!([{"addresses": [ctx.ip.to_string()], "conditions": {"ready": true}}]);
    let ports = json!([{"name": "https", "port": ctx.port, "protocol": "TCP"}]);
    match ctx.slices.get_opt(NAME).await? {
        None => {
            let slice: EndpointSlice = serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": NAME, "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": NAME}},
                "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
            }))
            .map_err(kube::Error::SerdeError)?;
            ctx.slices.create(&PostParams::default(), &slice).await?;
            tracing::info!(ip = %ctx.ip, port = ctx.port, "kubernetes EndpointSlice created");
        }
        Some(current) => {
            let current = serde_json::to_value(&current).map_err(kube::Error::SerdeError)?;
            if current["endpoints"] != endpoints || current["ports"] != ports {
                let patch = json!({"endpoints": endpoints, "ports": ports});
                ctx.slices
                    .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                tracing::info!(ip = %ctx.ip, port = ctx.port, "kubernetes EndpointSlice rewritten");
            }
        }
    }
    Ok(Action::await_change())
}
