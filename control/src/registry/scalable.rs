//! Deployments and ReplicaSets: the `scale` subresource.

use serde_json::{json, Value};

use super::strategy::Strategy;

/// The strategy of Deployments and ReplicaSets.
pub(super) struct ScalableStrategy;

impl Strategy for ScalableStrategy {
    fn scale(&self, obj: &Value) -> Option<Value> {
        let selector: Vec<String> = obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        let meta = &obj["metadata"];
        Some(json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
            "status": {
                "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
                "selector": selector.join(","),
            },
        }))
    }
}
