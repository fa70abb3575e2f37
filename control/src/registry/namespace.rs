//! Namespaces: the system ones may not be deleted; deleting one makes it
//! `Terminating` until the namespace controller has deleted its content
//! and removed the `kubernetes` finalizer from `spec.finalizers`; whatever
//! is still in it when it goes is deleted with it.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::strategy::{for_kind, Strategy};
use super::Registry;
use crate::error::ApiError;
use crate::object;
use crate::resources;
use crate::store::StoreError;

/// Namespaces that exist in every cluster and may not be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The Namespace strategy.
pub(super) struct NamespaceStrategy;

#[async_trait]
impl Strategy for NamespaceStrategy {
    /// A namespace goes once its `spec.finalizers` (`kubernetes`: the
    /// namespace controller, deleting its content) are done.
    fn delete_waits(&self, obj: &Value, _grace: Option<i64>) -> bool {
        obj.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    }

    fn mark_deleted(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }

    fn check_delete(&self, name: &str) -> Result<(), ApiError> {
        if SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespace \"{name}\" is a system namespace and may not be deleted"
            )));
        }
        Ok(())
    }

    /// Deletes every namespaced object in the namespace.
    async fn before_remove(&self, registry: &Registry, ns: &str) -> Result<(), ApiError> {
        for resource in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let (records, _) = registry
                .store
                .list(&resource.scope_prefix(Some(ns)))
                .await
                .map_err(|e| ApiError::from_store(resource.plural, ns, e))?;
            for record in records {
                let obj = object::from_record(&record)?;
                match registry.store.delete(&record.key, None).await {
                    Ok(_) | Err(StoreError::NotFound { .. }) => {
                        for_kind(resource.kind).release(registry, &obj).await;
                    }
                    Err(e) => return Err(ApiError::from_store(resource.plural, ns, e)),
                }
            }
        }
        Ok(())
    }
}
