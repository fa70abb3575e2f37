//! Allocation done by the API server, as Kubernetes does it: ClusterIPs
//! and NodePorts for Services, pod CIDRs for Nodes.
//!
//! Every allocated value is a key in the store (created only if absent),
//! so allocations stay unique however many API servers share the store.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::store::{Store, StoreError};

const SERVICE_IPS: &str = "/registry/ranges/serviceips/";
const NODE_PORTS: &str = "/registry/ranges/servicenodeports/";
const POD_CIDRS: &str = "/registry/ranges/podcidrs/";

/// The ranges to allocate from.
#[derive(Debug, Clone)]
pub struct Ranges {
    /// Service ClusterIPs.
    pub service_cidr: Ipv4Network,
    /// Pod addresses, cut into one subnet per node.
    pub cluster_cidr: Ipv4Network,
    /// Prefix length of each node's subnet.
    pub node_cidr_prefix: u8,
    /// NodePorts.
    pub node_ports: RangeInclusive<u16>,
}

impl Ranges {
    /// The first address of the service CIDR: the `kubernetes` Service's.
    pub fn api_service_ip(&self) -> Ipv4Addr {
        nth(self.service_cidr, 1)
    }
}

/// Keys claimed by one request: released again if the request fails.
#[derive(Debug, Default)]
#[must_use = "release the claims if the object is not stored"]
pub struct Claims(Vec<String>);

/// Allocates from the store.
#[derive(Clone)]
pub struct Allocator {
    store: Arc<dyn Store>,
    ranges: Ranges,
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator")
            .field("ranges", &self.ranges)
            .finish()
    }
}

impl Allocator {
    /// An allocator over `ranges` in `store`.
    pub fn new(store: Arc<dyn Store>, ranges: Ranges) -> Self {
        Allocator { store, ranges }
    }

    /// The ranges.
    pub fn ranges(&self) -> &Ranges {
        &self.ranges
    }

    /// Gives a Service its ClusterIP and NodePorts: requested values are
    /// claimed or refused with 422, missing ones allocated (or, on update,
    /// carried over from `old`).
    pub async fn service(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        owner: &str,
    ) -> Result<Claims, ApiError> {
        let mut claims = Claims::default();
        match self.service_inner(svc, old, owner, &mut claims).await {
            Ok(()) => Ok(claims),
            Err(e) => {
                self.release(claims).await;
                Err(e)
            }
        }
    }

    async fn service_inner(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        owner: &str,
        claims: &mut Claims,
    ) -> Result<(), ApiError> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let invalid = |field: &str, message: String| {
            ApiError::invalid("Service", &name, &[(field.to_string(), message)])
        };
        if !svc.get("spec").is_some_and(Value::is_object) {
            svc["spec"] = json!({});
        }
        let kind = svc["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        svc["spec"]["type"] = json!(kind);

        // ClusterIP.
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
            .map(String::from);
        let requested = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .map(String::from);
        if kind == "ExternalName" {
            if let Some(map) = svc["spec"].as_object_mut() {
                map.remove("clusterIP");
                map.remove("clusterIPs");
            }
        } else {
            let ip = match (requested, old_ip) {
                (Some(ip), _) if ip == "None" => ip,
                (Some(ip), Some(old)) if ip == old => ip,
                (Some(ip), _) => {
                    let addr: Ipv4Addr = ip.parse().map_err(|_| {
                        invalid(
                            "spec.clusterIP",
                            format!("Invalid value: \"{ip}\": must be a valid IPv4 address"),
                        )
                    })?;
                    if !usable(self.ranges.service_cidr, addr) {
                        return Err(invalid(
                            "spec.clusterIPs",
                            format!(
                                "Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                self.ranges.service_cidr
                            ),
                        ));
                    }
                    if !self.claim(SERVICE_IPS, &ip, owner, claims).await? {
                        return Err(invalid(
                            "spec.clusterIPs",
                            format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"),
                        ));
                    }
                    ip
                }
                (None, Some(old)) => old,
                (None, None) => self.allocate_ip(owner, claims).await?,
            };
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
            if ip != "None" {
                svc["spec"]["ipFamilies"] = json!(["IPv4"]);
                svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            }
        }

        // NodePorts.
        let wants_node_ports = kind == "NodePort" || kind == "LoadBalancer";
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ports = svc["spec"]["ports"]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ports.len());
        for (i, mut port) in ports.into_iter().enumerate() {
            if port.get("protocol").is_none() {
                port["protocol"] = json!("TCP");
            }
            if port.get("targetPort").is_none() {
                port["targetPort"] = port["port"].clone();
            }
            let requested = match port.get("nodePort") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64().filter(|p| *p <= u64::from(u16::MAX)) {
                    Some(p) => Some(p).filter(|p| *p != 0),
                    None => {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {v}: must be between 0 and 65535, inclusive"),
                        ))
                    }
                },
            };
            if !wants_node_ports {
                if requested.is_some() {
                    return Err(invalid(
                        &format!("spec.ports[{i}].nodePort"),
                        format!("Forbidden: may not be used when `type` is '{kind}'"),
                    ));
                }
                out.push(port);
                continue;
            }
            let previous = old_ports
                .iter()
                .find(|o| {
                    o.get("port") == port.get("port") && o.get("protocol") == port.get("protocol")
                })
                .and_then(|o| o.get("nodePort"))
                .and_then(Value::as_u64);
            let node_port = match requested {
                Some(p) if Some(p) == previous => p,
                Some(p) => {
                    let in_range =
                        u16::try_from(p).is_ok_and(|p| self.ranges.node_ports.contains(&p));
                    if !in_range {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            format!(
                                "Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                self.ranges.node_ports.start(),
                                self.ranges.node_ports.end()
                            ),
                        ));
                    }
                    if !self
                        .claim(NODE_PORTS, &p.to_string(), owner, claims)
                        .await?
                    {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {p}: provided port is already allocated"),
                        ));
                    }
                    p
                }
                None => match previous {
                    Some(p) => p,
                    None => self.allocate_node_port(owner, claims).await?,
                },
            };
            port["nodePort"] = json!(node_port);
            out.push(port);
        }
        svc["spec"]["ports"] = Value::Array(out);

        Ok(())
    }

    /// Releases what the stored `old` Service held and its stored
    /// replacement `new` no longer holds (a NodePort Service turned
    /// ClusterIP). Call only once `new` is stored.
    pub async fn release_replaced(&self, old: &Value, new: &Value) {
        let kept = held_by_service(new);
        let stale: Vec<String> = held_by_service(old)
            .into_iter()
            .filter(|k| !kept.contains(k))
            .collect();
        self.release(Claims(stale)).await;
    }

    /// Releases a deleted Service's ClusterIP and NodePorts.
    pub async fn release_service(&self, svc: &Value) {
        self.release(Claims(held_by_service(svc))).await;
    }

    /// Gives a Node its pod CIDR (requested, kept from `old`, or the lowest
    /// free subnet).
    pub async fn node(
        &self,
        node: &mut Value,
        old: Option<&Value>,
        owner: &str,
    ) -> Result<Claims, ApiError> {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut claims = Claims::default();
        let requested = node
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(String::from);
        let previous = old
            .and_then(|o| o.pointer("/spec/podCIDR"))
            .and_then(Value::as_str)
            .map(String::from);
        let cidr = match (requested, previous) {
            (Some(c), Some(p)) if c == p => c,
            (Some(c), Some(p)) => {
                return Err(ApiError::invalid(
                    "Node",
                    &name,
                    &[(
                        "spec.podCIDR".into(),
                        format!("Forbidden: podCIDR may not change once set (from {p} to {c})"),
                    )],
                ))
            }
            (Some(c), None) => {
                let net: Ipv4Network = c.parse().map_err(|_| {
                    ApiError::invalid(
                        "Node",
                        &name,
                        &[(
                            "spec.podCIDR".into(),
                            format!("Invalid value: \"{c}\": not an IPv4 CIDR"),
                        )],
                    )
                })?;
                if net.prefix() != self.ranges.node_cidr_prefix
                    || !self.ranges.cluster_cidr.contains(net.network())
                    || net.network() != net.ip()
                {
                    return Err(ApiError::invalid(
                        "Node",
                        &name,
                        &[(
                            "spec.podCIDR".into(),
                            format!(
                                "Invalid value: \"{c}\": must be a /{} subnet of {}",
                                self.ranges.node_cidr_prefix, self.ranges.cluster_cidr
                            ),
                        )],
                    ));
                }
                if !self
                    .claim(POD_CIDRS, &cidr_key(net), owner, &mut claims)
                    .await?
                {
                    return Err(ApiError::invalid(
                        "Node",
                        &name,
                        &[(
                            "spec.podCIDR".into(),
                            format!("Invalid value: \"{c}\": already allocated"),
                        )],
                    ));
                }
                c
            }
            (None, Some(p)) => p,
            (None, None) => self.allocate_pod_cidr(owner, &mut claims).await?,
        };
        if !node.get("spec").is_some_and(Value::is_object) {
            node["spec"] = json!({});
        }
        node["spec"]["podCIDR"] = json!(cidr);
        node["spec"]["podCIDRs"] = json!([cidr]);
        Ok(claims)
    }

    /// Releases a deleted Node's pod CIDR.
    pub async fn release_node(&self, node: &Value) {
        if let Some(net) = node
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .and_then(|c| c.parse::<Ipv4Network>().ok())
        {
            self.release(Claims(vec![format!("{POD_CIDRS}{}", cidr_key(net))]))
                .await;
        }
    }

    /// Gives back keys claimed by a request that failed. Failures are
    /// logged: a leaked key only makes one value unavailable.
    pub async fn release(&self, claims: Claims) {
        for key in claims.0 {
            match self.store.delete(&key, None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(%key, error = %e, "cannot release allocation"),
            }
        }
    }

    /// Claims `value` under `prefix` for `owner`; false if another owner
    /// holds it.
    async fn claim(
        &self,
        prefix: &str,
        value: &str,
        owner: &str,
        claims: &mut Claims,
    ) -> Result<bool, ApiError> {
        let key = format!("{prefix}{value}");
        match self.store.create(&key, owner.as_bytes().to_vec()).await {
            Ok(_) => {
                claims.0.push(key);
                Ok(true)
            }
            Err(StoreError::AlreadyExists { .. }) => {
                let holder = self
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| ApiError::from_store("allocations", value, e))?;
                Ok(holder.is_some_and(|h| &*h.value == owner.as_bytes()))
            }
            Err(e) => Err(ApiError::from_store("allocations", value, e)),
        }
    }

    async fn allocate_ip(&self, owner: &str, claims: &mut Claims) -> Result<String, ApiError> {
        let size = self.ranges.service_cidr.size();
        // Skip the network address, the kubernetes Service's and the broadcast.
        let first = 2u32;
        let count = size.saturating_sub(3);
        let start = random_below(count);
        for i in 0..count {
            let ip = nth(self.ranges.service_cidr, first + (start + i) % count).to_string();
            if self.claim(SERVICE_IPS, &ip, owner, claims).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "no ClusterIP left in {}",
            self.ranges.service_cidr
        )))
    }

    async fn allocate_node_port(&self, owner: &str, claims: &mut Claims) -> Result<u64, ApiError> {
        let lo = u32::from(*self.ranges.node_ports.start());
        let count = u32::from(*self.ranges.node_ports.end()) - lo + 1;
        let start = random_below(count);
        for i in 0..count {
            let port = lo + (start + i) % count;
            if self
                .claim(NODE_PORTS, &port.to_string(), owner, claims)
                .await?
            {
                return Ok(u64::from(port));
            }
        }
        Err(ApiError::internal("no NodePort left"))
    }

    async fn allocate_pod_cidr(
        &self,
        owner: &str,
        claims: &mut Claims,
    ) -> Result<String, ApiError> {
        let cluster = self.ranges.cluster_cidr;
        let step = 1u32 << (32 - u32::from(self.ranges.node_cidr_prefix));
        let subnets = cluster.size() / step;
        for i in 0..subnets {
            let ip = Ipv4Addr::from(u32::from(cluster.network()) + i * step);
            let net = Ipv4Network::new(ip, self.ranges.node_cidr_prefix)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if self.claim(POD_CIDRS, &cidr_key(net), owner, claims).await? {
                return Ok(net.to_string());
            }
        }
        Err(ApiError::internal(format!("no pod CIDR left in {cluster}")))
    }
}

/// Allocation keys a Service holds.
fn held_by_service(svc: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if ip.parse::<Ipv4Addr>().is_ok() {
            keys.push(format!("{SERVICE_IPS}{ip}"));
        }
    }
    for port in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.get("nodePort").and_then(Value::as_u64) {
            keys.push(format!("{NODE_PORTS}{p}"));
        }
    }
    keys
}

fn cidr_key(net: Ipv4Network) -> String {
    format!("{}-{}", net.network(), net.prefix())
}

fn nth(net: Ipv4Network, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(n))
}

/// Whether `ip` may be a ClusterIP: inside the CIDR, not its network or
/// broadcast address.
fn usable(net: Ipv4Network, ip: Ipv4Addr) -> bool {
    net.contains(ip) && ip != net.network() && ip != net.broadcast()
}

fn random_below(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn allocator(dir: &std::path::Path) -> Allocator {
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(
                dir,
                crate::store::HistoryLimits {
                    events: 100,
                    bytes: usize::MAX,
                },
            )
            .unwrap(),
        );
        Allocator::new(
            store,
            Ranges {
                service_cidr: "10.96.0.0/29".parse().unwrap(),
                cluster_cidr: "10.244.0.0/23".parse().unwrap(),
                node_cidr_prefix: 24,
                node_ports: 30000..=30001,
            },
        )
    }

    #[tokio::test]
    async fn cluster_ips_are_unique_requested_ones_honoured_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocator(dir.path());
        let mut wanted = json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}});
        let _ = a
            .service(&mut wanted, None, "services/default/a")
            .await
            .unwrap();
        assert_eq!(wanted["spec"]["clusterIP"], "10.96.0.5");
        assert_eq!(wanted["spec"]["ports"][0]["targetPort"], 80);

        let mut clash = json!({"metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}});
        let err = a
            .service(&mut clash, None, "services/default/b")
            .await
            .unwrap_err();
        assert!(err.message.contains("already allocated"), "{}", err.message);
        let mut outside = json!({"metadata": {"name": "c"}, "spec": {"clusterIP": "10.97.0.5", "ports": [{"port": 80}]}});
        assert_eq!(
            a.service(&mut outside, None, "services/default/c")
                .await
                .unwrap_err()
                .code,
            422
        );

        // /29: .2 to .6 are allocatable; .5 is taken, so four more fit.
        let mut ips = std::collections::HashSet::new();
        for i in 0..4 {
            let mut svc = json!({"metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}]}});
            let _ = a
                .service(&mut svc, None, &format!("services/default/x{i}"))
                .await
                .unwrap();
            ips.insert(svc["spec"]["clusterIP"].as_str().unwrap().to_string());
        }
        assert_eq!(ips.len(), 4);
        assert!(!ips.contains("10.96.0.5") && !ips.contains("10.96.0.1"));
        let mut full = json!({"metadata": {"name": "y"}, "spec": {"ports": [{"port": 80}]}});
        assert!(a
            .service(&mut full, None, "services/default/y")
            .await
            .is_err());

        a.release_service(&wanted).await;
        let _ = a
            .service(&mut clash, None, "services/default/b")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn node_ports_are_allocated_kept_on_update_and_freed_on_type_change() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocator(dir.path());
        let mut svc = json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let _ = a
            .service(&mut svc, None, "services/default/np")
            .await
            .unwrap();
        let port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=30001).contains(&port));

        let mut again = json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let _ = a
            .service(&mut again, Some(&svc), "services/default/np")
            .await
            .unwrap();
        assert_eq!(again["spec"]["ports"][0]["nodePort"].as_u64(), Some(port));
        assert_eq!(again["spec"]["clusterIP"], svc["spec"]["clusterIP"]);

        let mut plain = json!({"metadata": {"name": "np"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        let _ = a
            .service(&mut plain, Some(&again), "services/default/np")
            .await
            .unwrap();
        a.release_replaced(&again, &plain).await;
        // Both NodePorts are free again: two more NodePort services fit.
        for i in 0..2 {
            let mut s = json!({"metadata": {"name": "o"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
            let _ = a
                .service(&mut s, None, &format!("services/default/o{i}"))
                .await
                .unwrap();
        }
        for wrong in [json!(-5), json!(70000), json!("30000")] {
            let mut bad = json!({"metadata": {"name": "o"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": wrong}]}});
            let err = a
                .service(&mut bad, None, "services/default/w")
                .await
                .unwrap_err();
            assert_eq!(err.code, 422, "{wrong}");
            assert!(
                err.message.contains("between 0 and 65535"),
                "{}",
                err.message
            );
        }
        let mut bad = json!({"metadata": {"name": "o"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30000}]}});
        assert_eq!(
            a.service(&mut bad, None, "services/default/z")
                .await
                .unwrap_err()
                .code,
            422
        );
    }

    #[tokio::test]
    async fn nodes_get_distinct_pod_cidrs() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocator(dir.path());
        let mut n0 = json!({"metadata": {"name": "n0"}});
        let mut n1 = json!({"metadata": {"name": "n1"}});
        let mut n2 = json!({"metadata": {"name": "n2"}});
        let _ = a.node(&mut n0, None, "nodes/n0").await.unwrap();
        let _ = a.node(&mut n1, None, "nodes/n1").await.unwrap();
        assert_eq!(n0["spec"]["podCIDR"], "10.244.0.0/24");
        assert_eq!(n1["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
        assert!(
            a.node(&mut n2, None, "nodes/n2").await.is_err(),
            "a /23 holds two /24s"
        );
        a.release_node(&n0).await;
        let _ = a.node(&mut n2, None, "nodes/n2").await.unwrap();
        assert_eq!(n2["spec"]["podCIDR"], "10.244.0.0/24");
    }
}
