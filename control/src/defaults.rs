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
        "Namespace" => obj["status"] = json!({"phase": "Active"}),
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
