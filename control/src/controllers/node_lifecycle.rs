//! The node lifecycle controller (kube-controller-manager's): a node whose
//! agent has neither renewed its Lease in `kube-node-lease` nor posted
//! status for the grace period (`--node-monitor-grace-period`) gets its
//! conditions set to `Unknown` (reason `NodeStatusUnknown`, "Kubelet
//! stopped posting node status.") and the `node.kubernetes.io/unreachable`
//! taints (NoSchedule, NoExecute), so nothing new is scheduled there, and
//! its pods' Ready condition turns False, so their endpoints stop serving;
//! the taint eviction controller evicts them after their toleration. The
//! taints go once the agent reports the node Ready again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use super::Backoff;

/// The taint of an unreachable node.
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The namespace of the nodes' Leases.
const LEASES: &str = "kube-node-lease";

/// What the reconciles need.
struct Context {
    client: kube::Client,
    grace: Duration,
}

/// Runs the controller until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(Api::<Node>::all(client.clone()), watcher::Config::default())
        .watches(
            Api::<Lease>::namespaced(client.clone(), LEASES),
            watcher::Config::default(),
            |lease| Some(ObjectRef::new(&lease.name_any())),
        )
        .graceful_shutdown_on(shutdown);
    super::run(
        "node-lifecycle",
        controller,
        Arc::new(Context { client, grace }),
        Arc::new(Backoff::default()),
        reconcile,
    )
    .await;
}

/// The last time the node's agent was heard from: its Lease's renewal or
/// its Ready condition's heartbeat, whichever is later.
async fn last_heard(node: &Node, ctx: &Context) -> Result<Option<jiff::Timestamp>, kube::Error> {
    let lease = Api::<Lease>::namespaced(ctx.client.clone(), LEASES)
        .get_opt(&node.name_any())
        .await?;
    let renewed = lease.and_then(|l| l.spec?.renew_time).map(|t| t.0);
    let heartbeat = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "Ready")
        .find_map(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    Ok(renewed.max(heartbeat))
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let name = node.name_any();
    let now = jiff::Timestamp::now();
    // A node never heard from counts from its creation.
    let since = last_heard(&node, &ctx)
        .await?
        .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let silent = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let ready = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone());
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tainted = taints.iter().any(|t| t.key == UNREACHABLE);
    let nodes = Api::<Node>::all(ctx.client.clone());
    if silent > ctx.grace {
        if ready.as_deref() != Some("Unknown") {
            let stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            let unknown: Vec<Value> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
                .iter()
                .map(|t| {
                    json!({"type": t, "status": "Unknown", "reason": "NodeStatusUnknown",
                        "message": "Kubelet stopped posting node status.",
                        "lastTransitionTime": stamp})
                })
                .collect();
            nodes
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"status": {"conditions": unknown}})),
                )
                .await?;
            tracing::warn!(node = %name, silent_for = ?silent, "node unreachable: conditions Unknown");
        }
        if !tainted {
            let added = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            let unreachable = ["NoSchedule", "NoExecute"]
                .map(|effect| json!({"key": UNREACHABLE, "effect": effect, "timeAdded": added}));
            set_taints(&nodes, &name, &taints, true, &unreachable).await?;
        }
        mark_pods_not_ready(&ctx, &name).await?;
        return Ok(Action::await_change());
    }
    if tainted && ready.as_deref() == Some("True") {
        set_taints(&nodes, &name, &taints, false, &[]).await?;
        tracing::info!(node = %name, "node reachable again: taints removed");
    }
    // Look again when the grace runs out without news.
    Ok(Action::requeue(
        ctx.grace.saturating_sub(silent) + Duration::from_secs(1),
    ))
}

/// Sets the Ready condition of the node's pods to False (their endpoints
/// stop serving at once; the taint eviction controller removes them after
/// their toleration).
async fn mark_pods_not_ready(ctx: &Context, node: &str) -> Result<(), kube::Error> {
    let pods = Api::<Pod>::all(ctx.client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    for pod in pods.items {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready");
        if ready.is_some_and(|c| c.status == "False") {
            continue;
        }
        let condition = json!({"status": {"conditions": [{
            "type": "Ready", "status": "False", "reason": "NodeNotReady",
            "message": format!("node {node} is unreachable"), "lastTransitionTime": stamp,
        }]}});
        let api = Api::<Pod>::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(condition),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the node's taints: those it has (without the unreachable ones
/// unless `keep_unreachable`), then `added`.
async fn set_taints(
    nodes: &Api<Node>,
    name: &str,
    taints: &[Taint],
    keep_unreachable: bool,
    added: &[Value],
) -> Result<(), kube::Error> {
    let next: Vec<Value> = taints
        .iter()
        .filter(|t| keep_unreachable || t.key != UNREACHABLE)
        .filter_map(|t| serde_json::to_value(t).ok())
        .chain(added.iter().cloned())
        .collect();
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": next}})),
        )
        .await
        .map(drop)
}
