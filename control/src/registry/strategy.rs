//! What differs between kinds, one strategy per kind (kube-apiserver's
//! `rest.RESTCreateStrategy` and friends): everything else the registry
//! does the same way for every kind.

use async_trait::async_trait;
use serde_json::Value;

use super::{namespace, node, pod, scalable, service, Registry};
use crate::alloc::Claims;
use crate::auth::User;
use crate::error::ApiError;

/// Per-kind behaviour. Every hook has the behaviour of a kind without any
/// as its default.
#[async_trait]
pub trait Strategy: Sync {
    /// Admission after defaults and before the write (`old` is `None` on
    /// create): what `user` may change through subresource `sub`.
    async fn admit(
        &self,
        _registry: &Registry,
        _user: &User,
        _sub: Option<&str>,
        _old: Option<&Value>,
        _new: &Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Allocates what the API server owns for the object (ClusterIPs,
    /// NodePorts, pod CIDRs) on create and update of the object itself;
    /// `owner` names it.
    async fn allocate(
        &self,
        _registry: &Registry,
        _obj: &mut Value,
        _old: Option<&Value>,
        _owner: &str,
    ) -> Result<Claims, ApiError> {
        Ok(Claims::default())
    }

    /// Gives back what was allocated for a removed object.
    async fn release(&self, _registry: &Registry, _obj: &Value) {}

    /// Gives back what `old` held and `new`, now stored, no longer does.
    async fn release_replaced(&self, _registry: &Registry, _old: &Value, _new: &Value) {}

    /// Whether deleting the object waits for another party to finish it
    /// (a pod bound to a node, not yet confirmed gone, unless `grace` is
    /// 0; a namespace whose content is not yet deleted).
    fn delete_waits(&self, _obj: &Value, _grace: Option<i64>) -> bool {
        false
    }

    /// What marking the object deleted changes besides deletionTimestamp.
    fn mark_deleted(&self, _obj: &mut Value) {}

    /// The grace period a graceful delete records, from the one the
    /// client asked for; `None` for kinds without one.
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Refuses deleting objects that must always exist.
    fn check_delete(&self, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// Runs before the object named `name` is removed from the store.
    async fn before_remove(&self, _registry: &Registry, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// The autoscaling/v1 Scale of the object, for kinds with a `scale`
    /// subresource.
    fn scale(&self, _obj: &Value) -> Option<Value> {
        None
    }
}

/// A kind with no behaviour of its own.
struct Plain;

impl Strategy for Plain {}

/// The strategy of `kind`.
pub fn for_kind(kind: &str) -> &'static dyn Strategy {
    match kind {
        "Pod" => &pod::PodStrategy,
        "Service" => &service::ServiceStrategy,
        "Node" => &node::NodeStrategy,
        "Namespace" => &namespace::NamespaceStrategy,
        "Deployment" | "ReplicaSet" | "ReplicationController" => &scalable::ScalableStrategy,
        _ => &Plain,
    }
}
