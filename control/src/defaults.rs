//! Defaults kube-apiserver fills in on create, which clients (kubectl
//! among them) rely on finding.

use serde_json::{json, Value};

/// Grace period of a pod that sets none.
pub const GRACE_SECONDS: i64 = 30;

/// Sets the fields Kubernetes defaults on create that clients rely on.
pub fn apply(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Pending"});
            }
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec_defaults(spec);
                default_toleration_seconds(spec);
            }
        }
        "Deployment" | "ReplicaSet" => {
            let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
                return;
            };
            default(spec, "replicas", json!(1));
            if kind == "Deployment" {
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
            }
            if let Some(pod_spec) = spec.pointer_mut("/template/spec") {
                pod_spec_defaults(pod_spec);
            }
        }
        "ReplicationController" => {
            // The selector and the object's labels default to the
            // template's labels, as Kubernetes sets them.
            let template_labels = obj
                .pointer("/spec/template/metadata/labels")
                .filter(|l| l.as_object().is_some_and(|l| !l.is_empty()))
                .cloned();
            if let Some(labels) = template_labels {
                let meta = &mut obj["metadata"];
                if meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|l| l.is_empty())
                {
                    meta["labels"] = labels.clone();
                }
                if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                    if spec
                        .get("selector")
                        .and_then(Value::as_object)
                        .is_none_or(|s| s.is_empty())
                    {
                        spec["selector"] = labels;
                    }
                }
            }
            let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
                return;
            };
            default(spec, "replicas", json!(1));
            if let Some(pod_spec) = spec.pointer_mut("/template/spec") {
                pod_spec_defaults(pod_spec);
            }
        }
        "Namespace" => {
            obj["status"] = json!({"phase": "Active"});
            // The namespace controller's: it deletes the content first.
            if obj.get("spec").is_none_or(|s| !s.is_object()) {
                obj["spec"] = json!({});
            }
            default(&mut obj["spec"], "finalizers", json!(["kubernetes"]));
        }
        "EndpointSlice" => {
            for port in obj
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                default(port, "name", json!(""));
                default(port, "protocol", json!("TCP"));
            }
        }
        "Service" => {
            if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                default(spec, "sessionAffinity", json!("None"));
                default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
        }
        _ => {}
    }
}

/// How long a pod stays on a node that is not ready or unreachable
/// before it is evicted, unless it says otherwise (kube-apiserver's
/// `--default-not-ready-toleration-seconds` and
/// `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// Kubernetes' DefaultTolerationSeconds admission: a pod that does not
/// tolerate the `not-ready` and `unreachable` NoExecute taints tolerates
/// each for [`DEFAULT_TOLERATION_SECONDS`].
fn default_toleration_seconds(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    if !spec.get("tolerations").is_some_and(Value::is_array) {
        spec["tolerations"] = json!([]);
    }
    let Some(tolerations) = spec.get_mut("tolerations").and_then(Value::as_array_mut) else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = tolerations.iter().any(|t| {
            let t_key = t.get("key").and_then(Value::as_str).unwrap_or("");
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (t_key == key || (t_key.is_empty() && exists))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            tolerations.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}),
            );
        }
    }
}

/// Sets `field` of an object if it is absent.
fn default(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        map.entry(field).or_insert(value);
    }
}

fn pod_spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(GRACE_SECONDS));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let untagged =
                !image.rsplit('/').next().unwrap_or("").contains(':') && !image.contains('@');
            let policy = if untagged || image.ends_with(":latest") {
                "Always"
            } else {
                "IfNotPresent"
            };
            default(c, "imagePullPolicy", json!(policy));
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            for port in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                default(port, "protocol", json!("TCP"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_tolerate_unreachable_nodes_for_five_minutes_unless_they_say() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        apply("Pod", &mut pod);
        let keys: Vec<(&str, i64)> = pod["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap(),
                    t["tolerationSeconds"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("node.kubernetes.io/not-ready", 300),
                ("node.kubernetes.io/unreachable", 300)
            ]
        );
        let mut own = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable",
            "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]}});
        apply("Pod", &mut own);
        let tolerations = own["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), 2, "{tolerations:?}");
        assert_eq!(tolerations[0]["tolerationSeconds"], 2);
        let mut everything = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        apply("Pod", &mut everything);
        assert_eq!(
            everything["spec"]["tolerations"].as_array().unwrap().len(),
            1
        );
        let mut rs = json!({"spec": {"template": {"spec": {}}}});
        apply("ReplicaSet", &mut rs);
        assert!(
            rs.pointer("/spec/template/spec/tolerations").is_none(),
            "pods only"
        );
    }
}
