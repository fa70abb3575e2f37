//! The legacy `Endpoints` object of a Service with a selector (what
//! `kubectl get endpoints` and older clients read), written by the
//! EndpointSlice controller from the same pods in the same pass: one
//! subset per set of resolved ports, ready pods under `addresses`, pods
//! not ready under `notReadyAddresses`, terminating pods left out (unless
//! the Service publishes not-ready addresses). Owned by the Service, so it
//! goes with it.

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::{json, Map, Value};

use super::claim;

/// Writes the Endpoints of `service` from its pods' EndpointSlice
/// endpoints, grouped by their ports.
pub(super) async fn write(
    client: &kube::Client,
    service: &Service,
    groups: &[(Value, Vec<Value>)],
) -> Result<(), kube::Error> {
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let subsets = subsets(groups);
    let api = Api::<Endpoints>::namespaced(client.clone(), &namespace);
    let mut labels: Map<String, Value> = service
        .labels()
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let headless = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    if headless {
        labels.insert("service.kubernetes.io/headless".into(), json!(""));
    }
    let current = api.get_opt(&name).await?;
    let mut desired: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "subsets": subsets,
    }))
    .map_err(kube::Error::SerdeError)?;
    match current {
        Some(current) => {
            if current.subsets.clone().unwrap_or_default()
                == desired.subsets.clone().unwrap_or_default()
                && current.metadata.labels.clone().unwrap_or_default()
                    == desired.metadata.labels.clone().unwrap_or_default()
            {
                return Ok(());
            }
            // Replaced at the version read: a race fails and is retried.
            let mut replaced = current;
            replaced.metadata.labels = desired.metadata.labels;
            replaced.subsets = desired.subsets;
            api.replace(&name, &PostParams::default(), &replaced)
                .await?;
        }
        None => {
            desired.metadata.owner_references = Some(vec![claim::owner_reference(service)]);
            api.create(&PostParams::default(), &desired).await?;
        }
    }
    Ok(())
}

/// The subsets of the groups of EndpointSlice endpoints (empty groups and
/// terminating endpoints left out).
fn subsets(groups: &[(Value, Vec<Value>)]) -> Value {
    let subsets: Vec<Value> = groups
        .iter()
        .filter_map(|(ports, endpoints)| {
            let mut ready = Vec::new();
            let mut not_ready = Vec::new();
            for e in endpoints {
                let conditions = &e["conditions"];
                if conditions["terminating"] == json!(true) && conditions["serving"] != json!(true)
                {
                    continue;
                }
                let mut address = json!({"ip": e["addresses"][0], "targetRef": e["targetRef"]});
                if let Some(node) = e.get("nodeName") {
                    address["nodeName"] = node.clone();
                }
                if conditions["ready"] == json!(true) {
                    ready.push(address);
                } else if conditions["terminating"] != json!(true) {
                    not_ready.push(address);
                }
            }
            if ready.is_empty() && not_ready.is_empty() {
                return None;
            }
            let mut subset = json!({"ports": ports});
            if !ready.is_empty() {
                subset["addresses"] = Value::Array(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = Value::Array(not_ready);
            }
            Some(subset)
        })
        .collect();
    Value::Array(subsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ip: &str, ready: bool, terminating: bool) -> Value {
        json!({"addresses": [ip], "nodeName": "n1",
            "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
            "targetRef": {"kind": "Pod", "name": ip}})
    }

    #[test]
    fn ready_pods_are_addresses_and_terminating_ones_go() {
        let ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
        let groups = vec![
            (
                ports.clone(),
                vec![
                    endpoint("10.0.0.1", true, false),
                    endpoint("10.0.0.2", false, false),
                    endpoint("10.0.0.3", false, true),
                ],
            ),
            (json!([]), vec![endpoint("10.0.0.4", false, true)]),
        ];
        let s = subsets(&groups);
        assert_eq!(s.as_array().unwrap().len(), 1, "{s}");
        assert_eq!(s[0]["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(s[0]["addresses"][0]["nodeName"], "n1");
        assert_eq!(s[0]["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(s[0]["notReadyAddresses"].as_array().unwrap().len(), 1);
        assert_eq!(s[0]["ports"], ports);
    }
}
