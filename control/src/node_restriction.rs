//! What a node's credentials may do beyond the resource-level rules of
//! [`crate::auth::authorize`], as Kubernetes' Node authorizer and
//! NodeRestriction admission plugin restrict kubelets: a node reads only
//! the ConfigMaps its own pods use, may not give itself labels that steer
//! workloads or mark it as the control plane, and changes only the status
//! of its pods through `pods/status`. Also here, for every writer: a Node
//! may not claim another Node's overlay identity (underlay address, VTEP
//! MAC), which would drop one of the two from every agent's overlay.

use serde_json::Value;

use crate::error::ApiError;

/// Label domains a node may not set on itself.
const RESTRICTED_LABEL_DOMAINS: &[&str] =
    &["node-role.kubernetes.io", "node-restriction.kubernetes.io"];

/// Node annotations that name a node's place in the overlay; no two Nodes
/// may share a value.
pub const OVERLAY_IDENTITY_ANNOTATIONS: &[&str] = &["berth.dev/underlay-ip", "berth.dev/vtep-mac"];

/// Whether a label key lies in a domain of [`RESTRICTED_LABEL_DOMAINS`]
/// (the domain itself or a subdomain of it).
fn restricted_label(key: &str) -> bool {
    let Some((domain, _)) = key.split_once('/') else {
        return false;
    };
    RESTRICTED_LABEL_DOMAINS
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
}

fn labels(obj: Option<&Value>) -> serde_json::Map<String, Value> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Checks a write by node `node` of its own Node (`old` is `None` for a
/// create): restricted labels may not be added, changed or removed.
pub fn admit_node_object(node: &str, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let (before, after) = (labels(old), labels(Some(new)));
    let mut changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| restricted_label(k) && before.get(*k) != after.get(*k))
        .collect();
    changed.sort();
    changed.dedup();
    if changed.is_empty() {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "node \"{node}\" is not allowed to modify labels: {}",
        changed
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Checks a `pods/status` write by node `node`: only the status may change.
pub fn admit_pod_status(node: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    for field in ["labels", "annotations"] {
        let path = format!("/metadata/{field}");
        if old.pointer(&path) != new.pointer(&path) {
            return Err(ApiError::forbidden(format!(
                "node \"{node}\" cannot update {field} through pod status"
            )));
        }
    }
    Ok(())
}

/// Whether `pod` uses the ConfigMap `name` (volumes, projected volumes,
/// `env` and `envFrom` of any container).
pub fn pod_uses_config_map(pod: &Value, name: &str) -> bool {
    let named =
        |v: Option<&Value>| v.and_then(|r| r.get("name")).and_then(Value::as_str) == Some(name);
    let spec = pod.get("spec");
    let list = |v: Option<&Value>, field: &str| {
        v.and_then(|v| v.get(field))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let volumes = list(spec, "volumes");
    let in_volumes = volumes.iter().any(|v| {
        named(v.get("configMap"))
            || list(v.get("projected"), "sources")
                .iter()
                .any(|s| named(s.get("configMap")))
    });
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| list(spec, f));
    in_volumes
        || containers.into_iter().any(|c| {
            list(Some(&c), "env")
                .iter()
                .any(|e| named(e.pointer("/valueFrom/configMapKeyRef")))
                || list(Some(&c), "envFrom")
                    .iter()
                    .any(|e| named(e.get("configMapRef")))
        })
}

/// The name a `fieldSelector` pins to one object (`metadata.name=X`), the
/// only way a node may list or watch ConfigMaps.
pub fn selected_name(field_selector: &str) -> Option<&str> {
    let rest = field_selector.trim().strip_prefix("metadata.name")?;
    let name = rest.strip_prefix("==").or_else(|| rest.strip_prefix('='))?;
    (!name.is_empty() && !name.contains(',')).then_some(name)
}

/// The overlay identity `node` claims that another of `others` (name, Node)
/// already holds: the annotation and the other node's name.
pub fn overlay_identity_clash<'a>(
    node: &Value,
    others: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Option<(&'static str, String, &'a str)> {
    let name = node.pointer("/metadata/name").and_then(Value::as_str);
    let value = |n: &Value, key: &str| {
        n.pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase)
    };
    let claims: Vec<(&'static str, String)> = OVERLAY_IDENTITY_ANNOTATIONS
        .iter()
        .filter_map(|k| value(node, k).map(|v| (*k, v)))
        .collect();
    if claims.is_empty() {
        return None;
    }
    others
        .into_iter()
        .filter(|(other, _)| Some(*other) != name)
        .find_map(|(other, obj)| {
            claims
                .iter()
                .find(|(k, v)| value(obj, k).as_deref() == Some(v.as_str()))
                .map(|(k, v)| (*k, v.clone(), other))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restricted_labels_cannot_be_added_changed_or_removed() {
        let plain = json!({"metadata": {"labels": {"kubernetes.io/hostname": "n0"}}});
        let role = json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}});
        let sub = json!({"metadata": {"labels": {"x.node-restriction.kubernetes.io/pool": "a"}}});
        assert!(admit_node_object("n0", None, &plain).is_ok());
        let e = admit_node_object("n0", Some(&plain), &role).expect_err("role label");
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("node-role.kubernetes.io/control-plane"),
            "{}",
            e.message
        );
        assert!(admit_node_object("n0", None, &sub).is_err());
        assert!(admit_node_object("n0", Some(&role), &plain).is_err());
        // Unchanged, a restricted label set by an admin may stay.
        assert!(admit_node_object("n0", Some(&role), &role).is_ok());
        assert!(!restricted_label("node-role.kubernetes.io.evil.com/x"));
    }

    #[test]
    fn pod_status_writes_keep_labels_and_annotations() {
        let old = json!({"metadata": {"labels": {"app": "web"}}, "status": {}});
        let status =
            json!({"metadata": {"labels": {"app": "web"}}, "status": {"phase": "Running"}});
        let relabelled = json!({"metadata": {"labels": {"app": "db"}}, "status": {}});
        assert!(admit_pod_status("n0", &old, &status).is_ok());
        assert_eq!(
            admit_pod_status("n0", &old, &relabelled)
                .expect_err("labels")
                .code,
            403
        );
    }

    #[test]
    fn config_map_uses_are_found_wherever_a_pod_names_one() {
        let pod = json!({"spec": {
            "volumes": [{"name": "v", "projected": {"sources": [{"configMap": {"name": "proj"}}]}},
                        {"name": "w", "configMap": {"name": "vol"}}],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "from"}}]}],
            "containers": [{"name": "c", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "key", "key": "k"}}}]}]}});
        for name in ["proj", "vol", "from", "key"] {
            assert!(pod_uses_config_map(&pod, name), "{name}");
        }
        assert!(!pod_uses_config_map(&pod, "other"));
    }

    #[test]
    fn only_a_single_name_selector_pins_an_object() {
        assert_eq!(selected_name("metadata.name=cfg"), Some("cfg"));
        assert_eq!(selected_name("metadata.name==cfg"), Some("cfg"));
        assert_eq!(selected_name(""), None);
        assert_eq!(selected_name("metadata.name!=cfg"), None);
        assert_eq!(selected_name("metadata.name=a,metadata.namespace=b"), None);
    }

    #[test]
    fn a_node_cannot_claim_another_nodes_overlay_identity() {
        let node = |name: &str, ip: &str, mac: &str| {
            json!({"metadata": {"name": name, "annotations": {
                "berth.dev/underlay-ip": ip, "berth.dev/vtep-mac": mac}}})
        };
        let n1 = node("n1", "172.30.0.2", "0a:00:00:00:00:01");
        let n0 = node("n0", "172.30.0.2", "0a:00:00:00:00:00");
        let clash = overlay_identity_clash(&n0, [("n1", &n1)]).expect("clash");
        assert_eq!(clash.0, "berth.dev/underlay-ip");
        assert_eq!(clash.2, "n1");
        let mac = node("n0", "172.30.0.9", "0A:00:00:00:00:01");
        assert_eq!(
            overlay_identity_clash(&mac, [("n1", &n1)]).expect("mac").0,
            "berth.dev/vtep-mac"
        );
        // Its own earlier values are no clash.
        assert!(overlay_identity_clash(&n1, [("n1", &n1)]).is_none());
        let own = node("n0", "172.30.0.1", "0a:00:00:00:00:00");
        assert!(overlay_identity_clash(&own, [("n1", &n1)]).is_none());
    }
}
