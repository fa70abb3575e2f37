//! Deployments, ReplicaSets and ReplicationControllers: the `scale`
//! subresource.

use serde_json::{json, Value};

use super::strategy::Strategy;

/// The strategy of Deployments, ReplicaSets and ReplicationControllers.
pub(super) struct ScalableStrategy;

impl Strategy for ScalableStrategy {
    fn scale(&self, obj: &Value) -> Option<Value> {
        let selector = selector_text(obj.pointer("/spec/selector"));
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
                "selector": selector,
            },
        }))
    }
}

/// A selector as label-selector text (`a=b,c in (d,e),!f`): a
/// LabelSelector (`matchLabels`, `matchExpressions`) or, as a
/// ReplicationController has, a plain map of labels.
fn selector_text(selector: Option<&Value>) -> String {
    let Some(selector) = selector.and_then(Value::as_object) else {
        return String::new();
    };
    let is_label_selector =
        selector.contains_key("matchLabels") || selector.contains_key("matchExpressions");
    let labels = if is_label_selector {
        selector.get("matchLabels").and_then(Value::as_object)
    } else {
        Some(selector)
    };
    let mut parts: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .filter(|_| is_label_selector);
    for e in expressions.into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_read_as_kubernetes_prints_them() {
        assert_eq!(
            selector_text(Some(&json!({
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["a", "b"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            }))),
            "app=web,tier in (a,b),!canary"
        );
        assert_eq!(
            selector_text(Some(&json!({"app": "web", "tier": "fe"}))),
            "app=web,tier=fe"
        );
        assert_eq!(selector_text(None), "");
    }
}
