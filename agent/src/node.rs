//! The Node object: created if missing, its status (addresses, capacity,
//! node info, the Ready condition) patched through the `status`
//! subresource.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

/// What the agent reports about its node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// The node's address on the underlay network.
    pub internal_ip: IpAddr,
    /// Pods the node accepts.
    pub max_pods: u32,
}

/// Errors talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The API refused or failed a request.
    #[error("{op} node {node}: {source}")]
    Api {
        /// What was being done.
        op: &'static str,
        /// The node.
        node: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

impl NodeError {
    /// The Node does not exist (it was deleted from the API).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NodeError::Api { source: kube::Error::Api(e), .. } if e.code == 404)
    }
}

/// The time now in RFC 3339 (seconds), as Kubernetes writes `Time`.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Kernel release, from uname(2).
fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The PRETTY_NAME of /etc/os-release.
fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Logical CPUs and memory of the machine.
fn capacity(max_pods: u32) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "cpu": cpus.to_string(),
        "memory": format!("{memory_kib}Ki"),
        "pods": max_pods.to_string(),
    })
}

/// The status the agent owns: addresses, capacity, node info and the
/// Ready condition (true while the agent runs).
pub fn status(info: &NodeInfo, ready_since: &str) -> Value {
    let capacity = capacity(info.max_pods);
    let now = now();
    json!({
        "addresses": [
            {"type": "InternalIP", "address": info.internal_ip.to_string()},
            {"type": "Hostname", "address": info.name},
        ],
        "capacity": capacity,
        "allocatable": capacity,
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": kernel_version(),
            "osImage": os_image(),
            "containerRuntimeVersion": format!("berth://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": crate::VERSION,
            "kubeProxyVersion": crate::VERSION,
            "operatingSystem": "linux",
            "architecture": arch(),
        },
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "BerthAgentReady",
            "message": "berth-agent is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": ready_since,
        }],
        "phase": "Running",
    })
}

/// Creates the Node if it does not exist (the API server gives it a pod
/// CIDR), then patches its status. Returns the Node as stored.
pub async fn register(
    api: &Api<Node>,
    info: &NodeInfo,
    ready_since: &str,
) -> Result<Node, NodeError> {
    let err = |op: &'static str| {
        let node = info.name.clone();
        move |source| NodeError::Api { op, node, source }
    };
    let existing = api.get_opt(&info.name).await.map_err(err("read"))?;
    if existing.is_none() {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": info.name,
                "labels": {
                    "kubernetes.io/hostname": info.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch(),
                },
            },
        }))
        .map_err(|e| NodeError::Api {
            op: "build",
            node: info.name.clone(),
            source: kube::Error::SerdeError(e),
        })?;
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %info.name, "registered node"),
            // Created meanwhile (another agent start): fine.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(err("create")(e)),
        }
    }
    update_status(api, info, ready_since).await
}

/// Sets `annotations` on the node's metadata (a merge patch: other
/// annotations stay).
pub async fn annotate(
    api: &Api<Node>,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Node, NodeError> {
    let patch = json!({"metadata": {"annotations": annotations}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeError::Api {
            op: "annotate",
            node: name.to_string(),
            source,
        })
}

/// Patches the node's status (heartbeat time, addresses, capacity).
pub async fn update_status(
    api: &Api<Node>,
    info: &NodeInfo,
    ready_since: &str,
) -> Result<Node, NodeError> {
    let patch = json!({"status": status(info, ready_since)});
    api.patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeError::Api {
            op: "update status of",
            node: info.name.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_addresses_capacity_and_readiness() {
        let info = NodeInfo {
            name: "n0".into(),
            internal_ip: "172.30.0.1".parse().unwrap(),
            max_pods: 110,
        };
        let s = status(&info, "2026-01-01T00:00:00Z");
        assert_eq!(
            s["addresses"][0],
            json!({"type": "InternalIP", "address": "172.30.0.1"})
        );
        assert_eq!(s["capacity"]["pods"], "110");
        assert!(s["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
        assert_eq!(s["conditions"][0]["type"], "Ready");
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(
            s["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        // It must decode as a NodeStatus.
        let _: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(s).unwrap();
    }
}
