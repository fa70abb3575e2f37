//! Services: ClusterIPs and NodePorts allocated on write, released when
//! no longer held.

use async_trait::async_trait;
use serde_json::Value;

use super::strategy::Strategy;
use super::Registry;
use crate::alloc::Claims;
use crate::error::ApiError;

/// The Service strategy.
pub(super) struct ServiceStrategy;

#[async_trait]
impl Strategy for ServiceStrategy {
    async fn allocate(
        &self,
        registry: &Registry,
        obj: &mut Value,
        old: Option<&Value>,
        owner: &str,
    ) -> Result<Claims, ApiError> {
        registry.alloc.service(obj, old, owner).await
    }

    async fn release(&self, registry: &Registry, obj: &Value) {
        registry.alloc.release_service(obj).await;
    }

    async fn release_replaced(&self, registry: &Registry, old: &Value, new: &Value) {
        registry.alloc.release_replaced(old, new).await;
    }
}
