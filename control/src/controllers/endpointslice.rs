//! The EndpointSlice controller (kube-controller-manager's): for every
//! Service with a selector, EndpointSlices listing the pods it selects —
//! their IPs, readiness (`ready`, `serving`, `terminating`), node and the
//! ports the Service's target ports name in each pod — labelled
//! `kubernetes.io/service-name` and owned by the Service. Service proxies
//! (berth-agent's datapath) route from them. Slices of a deleted Service
//! go with it: the garbage collector follows their owner reference. The
//! same pass writes the Service's legacy Endpoints object (see
//! [`super::endpoints`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use super::Backoff;

/// The label naming a slice's Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY`], as Kubernetes' is.
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Most endpoints in one slice (kube-controller-manager's default).
const MAX_ENDPOINTS: usize = 100;

/// What the reconciles need.
struct Context {
    client: kube::Client,
}

/// Runs the controller until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let services = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = services.store();
    let services = services
        // A pod event may change what any Service of its namespace selects
        // (also one it no longer matches): each is looked at again.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod| {
                let namespace = pod.namespace().unwrap_or_default();
                store
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
                    .filter(|s| selector(s).is_some())
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY}={CONTROLLER}")),
        )
        .owns(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(shutdown);
    super::run(
        "endpointslice",
        services,
        Arc::new(Context { client }),
        Arc::new(Backoff::default()),
        reconcile,
    )
    .await;
}

/// The Service's selector, if it has a non-empty one (Services without
/// are given endpoints by hand).
fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// Writes the slices of one Service.
async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let (Some(namespace), Some(selector)) = (service.namespace(), selector(&service)) else {
        return Ok(Action::await_change());
    };
    if service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = service.name_any();
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&labels.join(",")))
        .await?;
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    // Pods grouped by the ports the Service's target ports resolve to in
    // them: one slice (or more, past MAX_ENDPOINTS) per group.
    let mut groups: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    let mut pods: Vec<&Pod> = pods.items.iter().collect();
    pods.sort_by_key(|p| p.name_any());
    for pod in pods {
        let Some(endpoint) = endpoint(pod, publish_not_ready) else {
            continue;
        };
        let resolved = slice_ports(&ports, pod);
        let key = resolved.to_string();
        groups
            .entry(key)
            .or_insert_with(|| (resolved, Vec::new()))
            .1
            .push(endpoint);
    }
    let groups: Vec<(Value, Vec<Value>)> = groups.into_values().collect();
    super::endpoints::write(&ctx.client, &service, &groups).await?;
    let mut desired: Vec<(Value, Vec<Value>)> = Vec::new();
    for (ports, endpoints) in groups {
        for chunk in endpoints.chunks(MAX_ENDPOINTS) {
            desired.push((ports.clone(), chunk.to_vec()));
        }
    }
    if desired.is_empty() {
        // A Service selecting nothing still has one (empty) slice.
        desired.push((slice_ports(&ports, &Pod::default()), Vec::new()));
    }
    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &namespace);
    let mut existing = slices
        .list(
            &ListParams::default()
                .labels(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={CONTROLLER}")),
        )
        .await?
        .items;
    existing.sort_by_key(|s| s.name_any());
    let mut existing = existing.into_iter();
    for (ports, endpoints) in desired {
        let body = json!({"addressType": "IPv4", "endpoints": endpoints, "ports": ports});
        match existing.next() {
            Some(current) => {
                let current_value =
                    serde_json::to_value(&current).map_err(kube::Error::SerdeError)?;
                let same = ["addressType", "endpoints", "ports"]
                    .iter()
                    .all(|k| normalized(&current_value[k]) == normalized(&body[k]));
                if !same {
                    let mut updated = current_value;
                    for k in ["addressType", "endpoints", "ports"] {
                        updated[k] = body[k].clone();
                    }
                    let updated: EndpointSlice =
                        serde_json::from_value(updated).map_err(kube::Error::SerdeError)?;
                    slices
                        .replace(&current.name_any(), &PostParams::default(), &updated)
                        .await?;
                }
            }
            None => {
                let mut slice = body;
                slice["apiVersion"] = json!("discovery.k8s.io/v1");
                slice["kind"] = json!("EndpointSlice");
                slice["metadata"] = json!({
                    "generateName": format!("{name}-"),
                    "namespace": namespace,
                    "labels": {SERVICE_NAME: name, MANAGED_BY: CONTROLLER},
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Service", "name": name,
                        "uid": service.uid().unwrap_or_default(),
                        "controller": true, "blockOwnerDeletion": true,
                    }],
                });
                let slice: EndpointSlice =
                    serde_json::from_value(slice).map_err(kube::Error::SerdeError)?;
                slices.create(&PostParams::default(), &slice).await?;
            }
        }
    }
    for surplus in existing {
        slices
            .delete(&surplus.name_any(), &DeleteParams::default())
            .await?;
    }
    Ok(Action::await_change())
}

/// A JSON value with `null` for absent, so that a field the server
/// omits compares equal to one written as empty.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// The endpoint of a pod with an IP that is not finished, if it has one.
fn endpoint(pod: &Pod, publish_not_ready: bool) -> Option<Value> {
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let pod_ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let mut endpoint = json!({
        "addresses": [ip],
        "conditions": {
            "ready": (pod_ready || publish_not_ready) && !terminating,
            "serving": pod_ready || publish_not_ready,
            "terminating": terminating,
        },
        "targetRef": {
            "kind": "Pod", "namespace": pod.namespace(), "name": pod.name_any(),
            "uid": pod.uid(),
        },
    });
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        endpoint["nodeName"] = json!(node);
    }
    Some(endpoint)
}

/// The slice ports of the Service's ports in `pod`: a numeric target port
/// as it is, a named one as the pod's container port of that name (ports
/// the pod does not name are left out, as Kubernetes does).
fn slice_ports(ports: &[ServicePort], pod: &Pod) -> Value {
    let named = |name: &str| {
        pod.spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    let resolved: Vec<Value> = ports
        .iter()
        .filter_map(|p| {
            let port = match &p.target_port {
                None => p.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => named(name)?,
            };
            Some(json!({
                "name": p.name.clone().unwrap_or_default(),
                "port": port,
                "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            }))
        })
        .collect();
    Value::Array(resolved)
}
