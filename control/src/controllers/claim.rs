//! Controllers' claims on their children through ownerReferences, as
//! kube-controller-manager's ControllerRefManager makes them: a child
//! belongs to the owner its `controller: true` reference names; an owner
//! adopts matching children without a controller and releases children
//! whose labels its selector no longer matches.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::core::{NamespaceResourceScope, Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

/// An object of a namespaced built-in kind, as the API serves it.
pub(super) trait Namespaced:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
}

impl<T> Namespaced for T where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize
        + Send
        + Sync
        + 'static
{
}

/// The owner reference with `controller: true`, if any.
pub(super) fn controller_of<C: Resource>(child: &C) -> Option<&OwnerReference> {
    child
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// The reference a child created or adopted by `owner` carries.
pub(super) fn owner_reference<O: Namespaced>(owner: &O) -> OwnerReference {
    OwnerReference {
        api_version: O::api_version(&()).into_owned(),
        kind: O::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The owners in `store` a child's event concerns: its controller, if of
/// kind `O`, or — for a child without one — every owner of its namespace
/// whose selector matches it (one may adopt it).
pub(super) fn owners_to_wake<O: Namespaced, C: Resource>(
    store: &Store<O>,
    child: &C,
    selector: impl Fn(&O) -> Option<Selector>,
) -> Vec<ObjectRef<O>> {
    let namespace = child.meta().namespace.clone().unwrap_or_default();
    match controller_of(child) {
        Some(owner) if owner.kind == O::kind(&()) => {
            vec![ObjectRef::new(&owner.name).within(&namespace)]
        }
        Some(_) => Vec::new(),
        None => store
            .state()
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|o| selector(o).is_some_and(|s| s.matches(child.labels())))
            .map(|o| ObjectRef::from_obj(&**o))
            .collect(),
    }
}

/// The children of `listed` that `owner` controls, after adopting the
/// matching ones without a controller and releasing its own that no
/// longer match (children being deleted are neither adopted nor
/// released).
pub(super) async fn claim<O: Namespaced, C: Namespaced>(
    client: &kube::Client,
    owner: &O,
    selector: &Selector,
    listed: Vec<C>,
) -> Result<Vec<C>, kube::Error> {
    let namespace = owner.namespace().unwrap_or_default();
    let children = Api::<C>::namespaced(client.clone(), &namespace);
    let uid = owner.uid().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let mut owned = Vec::new();
    // Whether the owner is still the object the cache holds (checked once,
    // before the first adoption: a deleted owner must not adopt).
    let mut current: Option<bool> = None;
    for child in listed {
        let matches = selector.matches(child.labels());
        let child_deleting = child.meta().deletion_timestamp.is_some();
        match controller_of(&child).map(|o| o.uid == uid) {
            Some(true) if matches || child_deleting || deleting => owned.push(child),
            Some(true) => {
                let kept: Vec<OwnerReference> = child
                    .owner_references()
                    .iter()
                    .filter(|o| o.uid != uid)
                    .cloned()
                    .collect();
                set_owners(&children, &child, kept).await?;
            }
            Some(false) => {}
            None if matches && !child_deleting && !deleting => {
                if current.is_none() {
                    current = Some(still_current(client, owner).await?);
                }
                if current == Some(true) {
                    let mut owners = child.owner_references().to_vec();
                    owners.push(owner_reference(owner));
                    if let Some(adopted) = set_owners(&children, &child, owners).await? {
                        owned.push(adopted);
                    }
                }
            }
            None => {}
        }
    }
    Ok(owned)
}

/// Whether the owner still exists, with the same uid and not deleted.
async fn still_current<O: Namespaced>(
    client: &kube::Client,
    owner: &O,
) -> Result<bool, kube::Error> {
    let api = Api::<O>::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    Ok(api
        .get_opt(&owner.name_any())
        .await?
        .is_some_and(|o| o.uid() == owner.uid() && o.meta().deletion_timestamp.is_none()))
}

/// Replaces a child's owner references, if it is still the version read
/// (a newer one is looked at again on its own event). `None` if the child
/// is gone.
async fn set_owners<C: Namespaced>(
    children: &Api<C>,
    child: &C,
    owners: Vec<OwnerReference>,
) -> Result<Option<C>, kube::Error> {
    let patch = json!({"metadata": {
        "ownerReferences": owners,
        "resourceVersion": child.resource_version(),
    }});
    match children
        .patch(
            &child.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(c) => Ok(Some(c)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}
