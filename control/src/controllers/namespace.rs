//! The namespace controller (kube-controller-manager's): a namespace being
//! deleted (`Terminating`) has its content deleted as any client would
//! delete it — pods gracefully, owners with their dependents in the
//! background — and, once nothing is left, its `kubernetes` finalizer
//! removed from `spec.finalizers`, after which it goes. While content
//! remains, the `NamespaceContentRemaining` condition says what.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Backoff;
use crate::resources::RESOURCES;

/// The finalizer the namespace controller removes when the namespace is
/// empty.
const FINALIZER: &str = "kubernetes";
/// How soon a terminating namespace is looked at again while content
/// remains.
const POLL: Duration = Duration::from_secs(1);

/// What the reconciles need.
struct Context {
    client: kube::Client,
}

/// Runs the controller until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown);
    super::run(
        "namespace-controller",
        controller,
        Arc::new(Context { client }),
        Arc::new(Backoff::default()),
        reconcile,
    )
    .await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    // As Kubernetes words it: `<resource>.<group> has N resource instances`.
    let mut remaining: Vec<String> = Vec::new();
    for kind in RESOURCES.iter().filter(|r| r.namespaced) {
        let ar = kind.api_resource();
        let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &name, &ar);
        let objects = api.list(&ListParams::default()).await?.items;
        if objects.is_empty() {
            continue;
        }
        remaining.push(format!(
            "{}.{} has {} resource instances",
            kind.plural,
            kind.group,
            objects.len()
        ));
        for obj in objects
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
        {
            match api
                .delete(
                    &obj.name_any(),
                    &DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Background),
                        ..DeleteParams::default()
                    },
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    if remaining.is_empty() {
        let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({"metadata": {"resourceVersion": ns.resource_version()},
            "spec": {"finalizers": kept}});
        match namespaces
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
        tracing::info!(namespace = %name, "namespace emptied: finalized");
        return Ok(Action::await_change());
    }
    let message = format!("Some resources are remaining: {}", remaining.join(", "));
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "NamespaceContentRemaining"))
        .and_then(|c| c.message.clone());
    if current.as_deref() != Some(message.as_str()) {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let status = json!({"status": {"phase": "Terminating", "conditions": [{
            "type": "NamespaceContentRemaining", "status": "True",
            "reason": "SomeResourcesRemain", "message": message, "lastTransitionTime": now,
        }]}});
        match namespaces
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Action::requeue(POLL))
}
