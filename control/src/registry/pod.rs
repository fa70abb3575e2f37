//! Pods: deleted gracefully when bound to a node (the node finishes the
//! delete), and a node's credentials change only their status.

use async_trait::async_trait;
use serde_json::Value;

use super::strategy::Strategy;
use super::Registry;
use crate::auth::User;
use crate::defaults;
use crate::error::ApiError;
use crate::node_restriction;

/// The Pod strategy.
pub(super) struct PodStrategy;

#[async_trait]
impl Strategy for PodStrategy {
    async fn admit(
        &self,
        _registry: &Registry,
        user: &User,
        sub: Option<&str>,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        match (user, sub, old) {
            (User::Node { node }, Some("status"), Some(old)) => {
                node_restriction::admit_pod_status(node, old, new)
            }
            _ => Ok(()),
        }
    }

    fn delete_waits(&self, obj: &Value, grace: Option<i64>) -> bool {
        grace != Some(0)
            && obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && !matches!(
                obj.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
    }

    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        let grace = requested
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(defaults::GRACE_SECONDS);
        Some(grace.max(1))
    }
}
