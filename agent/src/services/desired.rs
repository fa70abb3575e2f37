//! What the datapath should hold, computed from Services and
//! EndpointSlices as kube-proxy computes it. Pure: no maps here.
//!
//! - Frontends: every IPv4 cluster IP × port (not headless), and for
//!   NodePort and LoadBalancer Services the node's address × node port, plus
//!   external IPs and load-balancer ingress IPs × port. TCP and UDP.
//! - Backends: the Service's EndpointSlices (IPv4), port matched by name.
//!   Ready endpoints serve; when none is ready, endpoints that are serving
//!   and terminating do; with none at all the frontend stays, empty, and
//!   refuses connections at once.
//! - `internalTrafficPolicy: Local` limits cluster-IP frontends, and
//!   `externalTrafficPolicy: Local` the node-port and external ones, to
//!   endpoints on this node.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use berth_ebpf::model::{Backend, Frontend, Protocol};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What one frontend should hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Want {
    /// Its backends.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP`: the timeout in seconds.
    pub affinity: Option<u32>,
    /// The Service asks for Maglev (annotation [`LB_ALGORITHM`] = `maglev`).
    pub maglev: bool,
}

/// The Service annotation choosing how flows from outside the node pick a
/// backend: `maglev` (consistent hashing, the same backend for a flow on
/// every node) or `random` (the default).
pub const LB_ALGORITHM: &str = "berth.dev/lb-algorithm";

/// Every frontend with what it should hold.
pub type Desired = BTreeMap<Frontend, Want>;

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// The node the datapath runs on.
#[derive(Debug, Clone)]
pub struct ThisNode {
    /// Node name (for `Local` traffic policies).
    pub name: String,
    /// Its address (NodePort frontends).
    pub ip: Ipv4Addr,
}

fn protocol(port: &ServicePort) -> Option<Protocol> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// One endpoint address with the facts selection needs.
#[derive(Debug, Clone)]
struct Endpoint {
    ip: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
}

/// The endpoints of `port` among a Service's slices.
fn endpoints(slices: &[&EndpointSlice], port: &ServicePort) -> Vec<Endpoint> {
    let name = port.name.clone().unwrap_or_default();
    let proto = port.protocol.as_deref().unwrap_or("TCP");
    let mut found = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.clone().unwrap_or_default() == name
                && p.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            continue;
        };
        let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    found.push(Endpoint {
                        ip,
                        port: target_port,
                        ready,
                        serving,
                        terminating,
                        node: endpoint.node_name.clone(),
                    });
                }
            }
        }
    }
    found
}

/// Ready endpoints; else serving-and-terminating ones; limited to this
/// node when `local`.
fn select(endpoints: &[Endpoint], local: Option<&str>, proto: Protocol) -> Vec<Backend> {
    let candidates: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| local.is_none_or(|node| e.node.as_deref() == Some(node)))
        .collect();
    let ready: Vec<&&Endpoint> = candidates.iter().filter(|e| e.ready).collect();
    let chosen: Vec<&&Endpoint> = if ready.is_empty() {
        candidates
            .iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    } else {
        ready
    };
    let mut backends: Vec<Backend> = chosen
        .into_iter()
        .map(|e| Backend {
            addr: SocketAddrV4::new(e.ip, e.port),
            proto,
        })
        .collect();
    backends.sort();
    backends.dedup();
    backends
}

/// The datapath for `services` and `slices` on `node`. Linear in the
/// number of objects: slices are grouped by their Service first.
pub fn desired(services: &[&Service], slices: &[&EndpointSlice], node: &ThisNode) -> Desired {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service
                .entry((namespace, name.as_str()))
                .or_default()
                .push(slice);
        }
    }
    let mut out = Desired::new();
    for service in services {
        let (Some(namespace), Some(name)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            continue;
        }
        let own: &[&EndpointSlice] = by_service
            .get(&(namespace, name))
            .map_or(&[], Vec::as_slice);
        let cluster_ips: Vec<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let internal_local = (spec.internal_traffic_policy.as_deref() == Some("Local"))
            .then_some(node.name.as_str());
        let external_local = (spec.external_traffic_policy.as_deref() == Some("Local"))
            .then_some(node.name.as_str());
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let maglev = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LB_ALGORITHM))
            .is_some_and(|v| v == "maglev");
        let want = |backends: Vec<Backend>| Want {
            backends,
            affinity,
            maglev,
        };
        let external_ips: Vec<Ipv4Addr> = spec
            .external_ips
            .iter()
            .flatten()
            .chain(
                service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_ref()),
            )
            .filter_map(|ip| ip.parse().ok())
            .collect();
        for port in spec.ports.iter().flatten() {
            let Some(proto) = protocol(port) else {
                continue;
            };
            let Ok(service_port) = u16::try_from(port.port) else {
                continue;
            };
            let eps = endpoints(own, port);
            for ip in &cluster_ips {
                out.insert(
                    Frontend::new(*ip, service_port, proto),
                    want(select(&eps, internal_local, proto)),
                );
            }
            for ip in &external_ips {
                out.insert(
                    Frontend::new(*ip, service_port, proto),
                    want(select(&eps, external_local, proto)),
                );
            }
            let node_port = port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            if let (Some(node_port), "NodePort" | "LoadBalancer") = (node_port, kind) {
                out.insert(
                    Frontend::new(node.ip, node_port, proto),
                    want(select(&eps, external_local, proto)),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> ThisNode {
        ThisNode {
            name: "n0".into(),
            ip: Ipv4Addr::new(172, 30, 0, 1),
        }
    }

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn slice(endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn web() -> Service {
        service(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }))
    }

    fn ips(backends: &[Backend]) -> Vec<String> {
        backends.iter().map(|b| b.addr.to_string()).collect()
    }

    #[test]
    fn ready_endpoints_serve_each_port_with_its_target() {
        let eps = slice(json!([
            {"addresses": ["10.244.1.2"], "conditions": {"ready": true}, "nodeName": "n1"},
            {"addresses": ["10.244.2.2"], "nodeName": "n2"},
            {"addresses": ["10.244.2.3"], "conditions": {"ready": false}, "nodeName": "n2"},
        ]));
        let d = desired(&[&web()], &[&eps], &node());
        let http = &d[&Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp)];
        assert_eq!(
            ips(&http.backends),
            vec!["10.244.1.2:8080", "10.244.2.2:8080"]
        );
        let dns = &d[&Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 53, Protocol::Udp)];
        assert_eq!(
            ips(&dns.backends),
            vec!["10.244.1.2:5353", "10.244.2.2:5353"]
        );
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let eps = slice(json!([
            {"addresses": ["10.244.1.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": false, "terminating": true}},
        ]));
        let d = desired(&[&web()], &[&eps], &node());
        let http = &d[&Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp)];
        assert_eq!(ips(&http.backends), vec!["10.244.1.2:8080"]);
        let none = desired(&[&web()], &[], &node());
        assert!(
            none[&Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp)]
                .backends
                .is_empty()
        );
    }

    #[test]
    fn node_ports_external_ips_and_local_policies() {
        let svc = service(json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.11",
            "externalIPs": ["192.0.2.7"],
            "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}],
        }));
        let eps = slice(json!([
            {"addresses": ["10.244.0.5"], "nodeName": "n0"},
            {"addresses": ["10.244.1.5"], "nodeName": "n1"},
        ]));
        let d = desired(&[&svc], &[&eps], &node());
        for frontend in [
            Frontend::new(Ipv4Addr::new(10, 96, 0, 11), 80, Protocol::Tcp),
            Frontend::new(Ipv4Addr::new(192, 0, 2, 7), 80, Protocol::Tcp),
            Frontend::new(Ipv4Addr::new(172, 30, 0, 1), 30080, Protocol::Tcp),
        ] {
            assert_eq!(
                ips(&d[&frontend].backends),
                vec!["10.244.0.5:8080"],
                "{frontend}"
            );
        }
    }

    #[test]
    fn client_ip_affinity_carries_its_timeout_or_the_default() {
        let mut svc = web();
        let spec = svc.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        let d = desired(&[&svc], &[], &node());
        let http = Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp);
        assert_eq!(d[&http].affinity, Some(DEFAULT_AFFINITY_SECONDS));
        svc.spec.as_mut().unwrap().session_affinity_config =
            serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 60}})).unwrap();
        assert_eq!(desired(&[&svc], &[], &node())[&http].affinity, Some(60));
        assert_eq!(desired(&[&web()], &[], &node())[&http].affinity, None);
    }

    #[test]
    fn headless_and_external_name_services_have_no_frontend() {
        let headless = service(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        let external = service(json!({"type": "ExternalName", "externalName": "example.invalid"}));
        assert!(desired(&[&headless, &external], &[], &node()).is_empty());
    }
}
