//! The garbage collector (kube-controller-manager's): carries out what
//! ownerReferences and deletion propagation ask for. One loop per served
//! kind looks at each object in two roles:
//!
//! - as a **dependent**: an object whose owners are all gone (absent, or
//!   present under a new uid) is deleted; references to owners that are
//!   gone are removed while another owner remains;
//! - as an **owner** being deleted with a propagation finalizer: with
//!   `orphan`, its dependents' references to it are removed and then the
//!   finalizer; with `foregroundDeletion`, its dependents are deleted and
//!   the finalizer goes once none that blocks it (`blockOwnerDeletion`)
//!   is left.
//!
//! An owner's deletion wakes its dependents for the ownerships in
//! [`OWNERSHIPS`] (those Berth's controllers and agents create); a
//! dependent whose owners are of other kinds is looked at again when it
//! changes and every [`RESYNC`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller};
use kube::{Api, Resource as _, ResourceExt};
use serde_json::json;

use super::Backoff;
use crate::registry::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use crate::resources::{Resource, RESOURCES};

/// Which owners' deletions wake which dependents at once: dependent kind,
/// owner kinds.
const OWNERSHIPS: &[(&str, &[&str])] = &[
    ("Pod", &["ReplicaSet", "ReplicationController"]),
    ("ReplicaSet", &["Deployment"]),
    ("EndpointSlice", &["Service"]),
    ("Endpoints", &["Service"]),
    ("Lease", &["Node"]),
];

/// How often a dependent with owners outside [`OWNERSHIPS`] is looked at
/// again, and an owner waits between looks at its blocking dependents.
const RESYNC: Duration = Duration::from_secs(60);
/// How soon a foreground deletion looks again at the dependents it waits
/// for.
const FOREGROUND_POLL: Duration = Duration::from_secs(1);

/// What the reconciles need.
struct Context {
    client: kube::Client,
    /// The kind this loop collects.
    kind: &'static Resource,
}

/// What an owner reference points at.
#[derive(Debug, PartialEq)]
enum Owner {
    /// The owner exists with the referenced uid.
    Present,
    /// No such object, or another one (a new uid) under its name.
    Absent,
    /// A kind this server does not serve: kept, as Kubernetes keeps it.
    Unknown,
}

/// Runs a collector for every served kind until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let backoff = Arc::new(Backoff::default());
    let loops = RESOURCES
        .iter()
        // One backoff for all: the loops are one controller to an operator.
        .map(|kind| run_one(client.clone(), kind, Arc::clone(&backoff), shutdown.clone()));
    futures_util::future::join_all(loops).await;
}

/// The served kind an owner reference names.
fn resolve(reference: &OwnerReference) -> Option<&'static Resource> {
    let (group, version) = reference
        .api_version
        .split_once('/')
        .unwrap_or(("", &reference.api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == reference.kind)
}

async fn run_one(
    client: kube::Client,
    kind: &'static Resource,
    backoff: Arc<Backoff>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ar = kind.api_resource();
    let mut controller = Controller::new_with(
        Api::<DynamicObject>::all_with(client.clone(), &ar),
        watcher::Config::default(),
        ar.clone(),
    );
    let owners = OWNERSHIPS
        .iter()
        .filter(|(dependent, _)| *dependent == kind.kind)
        .flat_map(|(_, owners)| owners.iter());
    for owner_kind in owners {
        let Some(owner) = RESOURCES.iter().find(|r| r.kind == *owner_kind) else {
            continue;
        };
        let owner_ar = owner.api_resource();
        let store = controller.store();
        let dependent_ar = ar.clone();
        controller = controller.watches_with(
            Api::<DynamicObject>::all_with(client.clone(), &owner_ar),
            owner_ar,
            watcher::Config::default(),
            move |owner| dependents_in(&store, &dependent_ar, &owner),
        );
    }
    let controller = controller.graceful_shutdown_on(shutdown);
    super::run(
        "garbage-collector",
        controller,
        Arc::new(Context { client, kind }),
        backoff,
        reconcile,
    )
    .await;
}

/// The objects in `store` that name `owner` as an owner.
fn dependents_in(
    store: &Store<DynamicObject>,
    ar: &ApiResource,
    owner: &DynamicObject,
) -> Vec<ObjectRef<DynamicObject>> {
    let Some(uid) = owner.uid() else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|d| d.owner_references().iter().any(|o| o.uid == uid))
        .map(|d| {
            let r = ObjectRef::new_with(&d.name_any(), ar.clone());
            match d.namespace() {
                Some(ns) => r.within(&ns),
                None => r,
            }
        })
        .collect()
}

/// Looks at one object as an owner being deleted, then as a dependent.
async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    if obj.meta().deletion_timestamp.is_some() {
        if obj.finalizers().iter().any(|f| f == ORPHAN_FINALIZER) {
            return orphan(&obj, &ctx).await;
        }
        if obj.finalizers().iter().any(|f| f == FOREGROUND_FINALIZER) {
            return delete_dependents(&obj, &ctx).await;
        }
        return Ok(Action::await_change());
    }
    if obj.owner_references().is_empty() {
        return Ok(Action::await_change());
    }
    let mut absent = Vec::new();
    let mut unwoken = false;
    for reference in obj.owner_references() {
        match owner_state(&obj, reference, &ctx).await? {
            Owner::Absent => absent.push(reference.uid.clone()),
            Owner::Present | Owner::Unknown => {}
        }
        let wakes = OWNERSHIPS
            .iter()
            .any(|(d, owners)| *d == ctx.kind.kind && owners.contains(&reference.kind.as_str()));
        unwoken |= !wakes;
    }
    let again = if unwoken {
        Action::requeue(RESYNC)
    } else {
        Action::await_change()
    };
    if absent.is_empty() {
        return Ok(again);
    }
    if absent.len() == obj.owner_references().len() {
        tracing::info!(kind = ctx.kind.kind, object = %key(&obj), "deleting: its owners are gone");
        delete(&ctx.client, ctx.kind, &obj, PropagationPolicy::Background).await?;
        return Ok(Action::await_change());
    }
    let kept: Vec<&OwnerReference> = obj
        .owner_references()
        .iter()
        .filter(|o| !absent.contains(&o.uid))
        .collect();
    set_owners(&ctx.client, ctx.kind, &obj, &kept).await?;
    Ok(again)
}

fn key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Whether the owner `reference` names exists (as the same object).
async fn owner_state(
    dependent: &DynamicObject,
    reference: &OwnerReference,
    ctx: &Context,
) -> Result<Owner, kube::Error> {
    let Some(kind) = resolve(reference) else {
        return Ok(Owner::Unknown);
    };
    let ar = kind.api_resource();
    let api = match dependent.namespace() {
        Some(ns) if kind.namespaced => {
            Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &ar)
        }
        // A namespaced owner of a cluster-scoped dependent cannot exist.
        None if kind.namespaced => return Ok(Owner::Absent),
        _ => Api::<DynamicObject>::all_with(ctx.client.clone(), &ar),
    };
    Ok(match api.get_opt(&reference.name).await? {
        Some(owner) if owner.uid().as_deref() == Some(reference.uid.as_str()) => Owner::Present,
        _ => Owner::Absent,
    })
}

/// Every object that names `owner` as an owner, with its kind.
async fn dependents_of(
    owner: &DynamicObject,
    ctx: &Context,
) -> Result<Vec<(&'static Resource, DynamicObject)>, kube::Error> {
    let uid = owner.uid().unwrap_or_default();
    let mut found = Vec::new();
    for kind in RESOURCES {
        let ar = kind.api_resource();
        let api = match owner.namespace() {
            Some(ns) if kind.namespaced => {
                Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &ar)
            }
            // A namespaced owner has no cluster-scoped dependents.
            Some(_) => continue,
            None => Api::<DynamicObject>::all_with(ctx.client.clone(), &ar),
        };
        for obj in api.list(&ListParams::default()).await?.items {
            if obj.owner_references().iter().any(|o| o.uid == uid) {
                found.push((kind, obj));
            }
        }
    }
    Ok(found)
}

/// `orphan`: the dependents stop naming the owner; then its finalizer
/// goes (and with the last finalizer, the owner).
async fn orphan(owner: &DynamicObject, ctx: &Context) -> Result<Action, kube::Error> {
    let uid = owner.uid().unwrap_or_default();
    for (kind, dependent) in dependents_of(owner, ctx).await? {
        let kept: Vec<&OwnerReference> = dependent
            .owner_references()
            .iter()
            .filter(|o| o.uid != uid)
            .collect();
        set_owners(&ctx.client, kind, &dependent, &kept).await?;
    }
    tracing::info!(kind = ctx.kind.kind, object = %key(owner), "dependents orphaned");
    remove_finalizer(ctx, owner, ORPHAN_FINALIZER).await?;
    Ok(Action::await_change())
}

/// `foregroundDeletion`: every dependent is deleted (in the foreground
/// too when it may own objects itself); the finalizer goes once no
/// dependent that blocks the owner's deletion is left.
async fn delete_dependents(owner: &DynamicObject, ctx: &Context) -> Result<Action, kube::Error> {
    let uid = owner.uid().unwrap_or_default();
    let mut blocking = 0;
    for (kind, dependent) in dependents_of(owner, ctx).await? {
        let blocks = dependent
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.block_owner_deletion == Some(true));
        if blocks {
            blocking += 1;
        }
        if dependent.meta().deletion_timestamp.is_none() {
            let owns = OWNERSHIPS
                .iter()
                .any(|(_, owners)| owners.contains(&kind.kind));
            let policy = if owns {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            delete(&ctx.client, kind, &dependent, policy).await?;
        }
    }
    if blocking > 0 {
        return Ok(Action::requeue(FOREGROUND_POLL));
    }
    tracing::info!(kind = ctx.kind.kind, object = %key(owner), "dependents deleted");
    remove_finalizer(ctx, owner, FOREGROUND_FINALIZER).await?;
    Ok(Action::await_change())
}

/// Deletes `obj` (only that object: a uid precondition), ignoring that it
/// is already gone.
async fn delete(
    client: &kube::Client,
    kind: &Resource,
    obj: &DynamicObject,
    policy: PropagationPolicy,
) -> Result<(), kube::Error> {
    let params = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api_for(client, kind, obj)
        .delete(&obj.name_any(), &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The API of `obj`'s kind, in its namespace.
fn api_for(client: &kube::Client, kind: &Resource, obj: &DynamicObject) -> Api<DynamicObject> {
    let ar = kind.api_resource();
    match obj.namespace() {
        Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), &ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

/// Replaces `obj`'s owner references, if it is still the version read.
async fn set_owners(
    client: &kube::Client,
    kind: &Resource,
    obj: &DynamicObject,
    owners: &[&OwnerReference],
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {
        "ownerReferences": if owners.is_empty() { json!(null) } else { json!(owners) },
        "resourceVersion": obj.resource_version(),
    }});
    patch_ignoring_gone(client, kind, obj, patch).await
}

/// Removes one finalizer of `obj`, if it is still the version read.
async fn remove_finalizer(
    ctx: &Context,
    obj: &DynamicObject,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let kept: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": if kept.is_empty() { json!(null) } else { json!(kept) },
        "resourceVersion": obj.resource_version(),
    }});
    patch_ignoring_gone(&ctx.client, ctx.kind, obj, patch).await
}

async fn patch_ignoring_gone(
    client: &kube::Client,
    kind: &Resource,
    obj: &DynamicObject,
    patch: serde_json::Value,
) -> Result<(), kube::Error> {
    match api_for(client, kind, obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_references_resolve_to_served_kinds() {
        let reference = |api_version: &str, kind: &str| OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            ..OwnerReference::default()
        };
        assert_eq!(
            resolve(&reference("apps/v1", "ReplicaSet")).map(|r| r.plural),
            Some("replicasets")
        );
        assert_eq!(
            resolve(&reference("v1", "ReplicationController")).map(|r| r.plural),
            Some("replicationcontrollers")
        );
        assert!(resolve(&reference("apps/v1beta1", "ReplicaSet")).is_none());
        assert!(resolve(&reference("example.com/v1", "Widget")).is_none());
        for (dependent, owners) in OWNERSHIPS {
            for kind in std::iter::once(dependent).chain(owners.iter()) {
                assert!(
                    RESOURCES.iter().any(|r| r.kind == *kind),
                    "{kind} is served"
                );
            }
        }
    }
}
