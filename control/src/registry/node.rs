//! Nodes: a pod CIDR allocated on write; a node's own credentials may not
//! set protected labels; no Node claims another's overlay identity.

use async_trait::async_trait;
use serde_json::Value;

use super::strategy::Strategy;
use super::Registry;
use crate::alloc::Claims;
use crate::auth::User;
use crate::error::ApiError;
use crate::node_restriction;
use crate::object;

/// The Node strategy.
pub(super) struct NodeStrategy;

#[async_trait]
impl Strategy for NodeStrategy {
    async fn admit(
        &self,
        registry: &Registry,
        user: &User,
        _sub: Option<&str>,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        // Status writes carry labels too: every write is checked.
        if let User::Node { node } = user {
            node_restriction::admit_node_object(node, old, new)?;
        }
        let identity_changed = node_restriction::OVERLAY_IDENTITY_ANNOTATIONS
            .iter()
            .any(|k| {
                let path = format!("/metadata/annotations/{}", k.replace('/', "~1"));
                old.and_then(|o| o.pointer(&path)) != new.pointer(&path)
            });
        if !identity_changed {
            return Ok(());
        }
        let (records, _) = registry
            .store
            .list("/registry/nodes/")
            .await
            .map_err(|e| ApiError::from_store("nodes", object::name(new).unwrap_or(""), e))?;
        let nodes: Vec<(String, Value)> = records
            .iter()
            .map(|r| {
                let obj = object::from_record(r)?;
                Ok((object::name(&obj).unwrap_or_default().to_string(), obj))
            })
            .collect::<Result<_, ApiError>>()?;
        match node_restriction::overlay_identity_clash(
            new,
            nodes.iter().map(|(n, o)| (n.as_str(), o)),
        ) {
            Some((annotation, value, other)) => Err(ApiError::invalid(
                "Node",
                object::name(new).unwrap_or_default(),
                &[(
                    format!("metadata.annotations[{annotation}]"),
                    format!("Duplicate value: \"{value}\": already claimed by node \"{other}\""),
                )],
            )),
            None => Ok(()),
        }
    }

    async fn allocate(
        &self,
        registry: &Registry,
        obj: &mut Value,
        old: Option<&Value>,
        owner: &str,
    ) -> Result<Claims, ApiError> {
        registry.alloc.node(obj, old, owner).await
    }

    async fn release(&self, registry: &Registry, obj: &Value) {
        registry.alloc.release_node(obj).await;
    }
}
