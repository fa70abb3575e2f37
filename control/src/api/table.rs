//! `meta.k8s.io/v1` Table responses: the columns `kubectl get` prints
//! (priority 1 columns only with `-o wide`).

use serde_json::{json, Value};

/// A column: name, type, priority (0 always shown, 1 with `-o wide`).
type Column = (&'static str, &'static str, u8);

fn columns(kind: &str) -> &'static [Column] {
    match kind {
        "Pod" => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        "Service" => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "Node" => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        "Deployment" => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "ReplicaSet" | "ReplicationController" => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "EndpointSlice" => &[
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        "Endpoints" => &[
            ("Name", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        "Namespace" => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        "ConfigMap" => &[
            ("Name", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        "Lease" => &[
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ],
        "Event" => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        _ => &[("Name", "string", 0), ("Age", "string", 0)],
    }
}

/// The column definitions of `kind`'s table.
pub(super) fn column_definitions(kind: &str) -> Value {
    Value::Array(
        columns(kind)
            .iter()
            .map(|(name, ty, priority)| {
                json!({
                    "name": name,
                    "type": ty,
                    "format": if *name == "Name" { "name" } else { "" },
                    "description": "",
                    "priority": priority,
                })
            })
            .collect(),
    )
}

/// A table of `objects` (all of `kind`) at `resource_version`.
pub(super) fn table(kind: &str, objects: &[Value], resource_version: &str) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions(kind),
        "rows": objects.iter().map(|o| row(kind, o)).collect::<Vec<_>>(),
    })
}

/// One table row: the cells and the object's metadata.
pub(super) fn row(kind: &str, obj: &Value) -> Value {
    json!({
        "cells": cells(kind, obj),
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        },
    })
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.into()
    }
}

fn array<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn selector_text(map: Option<&Value>) -> String {
    let pairs: Vec<String> = map
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    or_none(&pairs.join(","))
}

fn containers_and_images(obj: &Value, pointer: &str) -> (String, String) {
    let containers = array(obj, pointer);
    let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn cells(kind: &str, obj: &Value) -> Vec<Value> {
    let name = s(obj, "/metadata/name");
    let age = age(s(obj, "/metadata/creationTimestamp"));
    match kind {
        "Pod" => {
            let containers = array(obj, "/spec/containers").len();
            let statuses = array(obj, "/status/containerStatuses");
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
            let waiting = statuses
                .iter()
                .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str));
            let status = if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else if let Some(reason) = waiting {
                reason.to_string()
            } else {
                let phase = s(obj, "/status/phase");
                if phase.is_empty() {
                    "Pending".into()
                } else {
                    phase.into()
                }
            };
            vec![
                json!(name),
                json!(format!("{ready}/{containers}")),
                json!(status),
                json!(restarts.to_string()),
                json!(age),
                json!(or_none(s(obj, "/status/podIP"))),
                json!(or_none(s(obj, "/spec/nodeName"))),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Service" => {
            let ports: Vec<String> = array(obj, "/spec/ports")
                .iter()
                .map(|p| {
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                        None => format!("{}/{proto}", n(p, "/port")),
                    }
                })
                .collect();
            let mut external: Vec<String> = array(obj, "/spec/externalIPs")
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            external.extend(
                array(obj, "/status/loadBalancer/ingress")
                    .iter()
                    .map(|i| s(i, "/ip").to_string()),
            );
            let ty = s(obj, "/spec/type");
            let external = if external.is_empty() && ty == "LoadBalancer" {
                "<pending>".to_string()
            } else {
                or_none(&external.join(","))
            };
            vec![
                json!(name),
                json!(ty),
                json!(or_none(s(obj, "/spec/clusterIP"))),
                json!(external),
                json!(or_none(&ports.join(","))),
                json!(age),
                json!(selector_text(obj.pointer("/spec/selector"))),
            ]
        }
        "Node" => {
            let ready = array(obj, "/status/conditions")
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| s(c, "/status") == "True");
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if obj.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let address = |ty: &str| {
                or_none(
                    array(obj, "/status/addresses")
                        .iter()
                        .find(|a| s(a, "/type") == ty)
                        .map_or("", |a| s(a, "/address")),
                )
            };
            vec![
                json!(name),
                json!(status),
                json!("<none>"),
                json!(age),
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(or_none(s(obj, "/status/nodeInfo/osImage"))),
                json!(or_none(s(obj, "/status/nodeInfo/kernelVersion"))),
                json!(or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion"))),
            ]
        }
        "Deployment" => {
            let (containers, images) = containers_and_images(obj, "/spec/template/spec/containers");
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    n(obj, "/spec/replicas")
                )),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age),
                json!(containers),
                json!(images),
                json!(selector_text(obj.pointer("/spec/selector/matchLabels"))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (containers, images) = containers_and_images(obj, "/spec/template/spec/containers");
            // A ReplicationController's selector is a plain map.
            let selector = obj.pointer("/spec/selector/matchLabels").or_else(|| {
                obj.pointer("/spec/selector")
                    .filter(|_| kind == "ReplicationController")
            });
            vec![
                json!(name),
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                json!(age),
                json!(containers),
                json!(images),
                json!(selector_text(selector)),
            ]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = array(obj, "/ports")
                .iter()
                .map(|p| n(p, "/port").to_string())
                .collect();
            let addresses: Vec<&str> = array(obj, "/endpoints")
                .iter()
                .flat_map(|e| array(e, "/addresses"))
                .filter_map(Value::as_str)
                .collect();
            vec![
                json!(name),
                json!(s(obj, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(if addresses.is_empty() {
                    "<unset>".to_string()
                } else {
                    addresses.join(",")
                }),
                json!(age),
            ]
        }
        "Endpoints" => {
            let mut endpoints = Vec::new();
            for subset in array(obj, "/subsets") {
                for address in array(subset, "/addresses") {
                    for port in array(subset, "/ports") {
                        endpoints.push(format!("{}:{}", s(address, "/ip"), n(port, "/port")));
                    }
                }
            }
            vec![
                json!(name),
                json!(or_none(&endpoints.join(","))),
                json!(age),
            ]
        }
        "Namespace" => {
            let phase = s(obj, "/status/phase");
            vec![
                json!(name),
                json!(if phase.is_empty() { "Active" } else { phase }),
                json!(age),
            ]
        }
        "ConfigMap" => {
            let data = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![json!(name), json!(data), json!(age)]
        }
        "Lease" => vec![
            json!(name),
            json!(or_none(s(obj, "/spec/holderIdentity"))),
            json!(age),
        ],
        "Event" => {
            let last = [
                s(obj, "/lastTimestamp"),
                s(obj, "/eventTime"),
                s(obj, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("");
            vec![
                json!(self::age(last)),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(obj, "/involvedObject/kind").to_lowercase(),
                    s(obj, "/involvedObject/name")
                )),
                json!(s(obj, "/message")),
            ]
        }
        _ => vec![json!(name), json!(age)],
    }
}

/// Time since an RFC 3339 timestamp, as kubectl prints it ("45s", "3m",
/// "5h2m", "4d").
pub(super) fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now()
        .as_second()
        .saturating_sub(then.as_second())
        .max(0);
    human_duration(secs)
}

fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 && secs % 60 != 0 => format!("{m}m{}s", secs % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(4 * 86400), "4d");
    }

    #[test]
    fn pod_rows_have_the_wide_columns() {
        let pod = json!({"metadata": {"name": "web-0", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let t = table("Pod", &[pod], "7");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-0");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.244.1.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn service_ports_show_node_ports() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.9",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let cells = &table("Service", &[svc], "1")["rows"][0]["cells"];
        assert_eq!(cells[2], "10.96.0.9");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
    }
}
