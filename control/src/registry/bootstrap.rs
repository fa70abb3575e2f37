//! What every cluster has from the start: the system namespaces and the
//! `kubernetes` Service, whose EndpointSlice points at this server.

use serde_json::{json, Value};

use super::namespace::SYSTEM_NAMESPACES;
use super::Registry;
use crate::defaults;
use crate::error::ApiError;
use crate::object;
use crate::resources;
use crate::store::StoreError;

/// Creates the namespaces and the `kubernetes` Service every cluster has,
/// and keeps the Service's EndpointSlice pointing at `server_address`
/// (this server's advertised address).
pub async fn bootstrap(registry: &Registry, server_address: &str) -> Result<(), ApiError> {
    let namespaces = resources::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    for ns in SYSTEM_NAMESPACES {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        object::prepare_create(namespaces, &mut obj)?;
        defaults::apply("Namespace", &mut obj);
        create_if_missing(registry, &namespaces.key(None, ns), &obj).await?;
    }
    let services =
        resources::find("", "v1", "services").ok_or_else(|| ApiError::internal("no services"))?;
    let key = services.key(Some("default"), "kubernetes");
    if registry
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store("services", "kubernetes", e))?
        .is_none()
    {
        let ip = registry.alloc.ranges().api_service_ip().to_string();
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip,
                "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                    "targetPort": own_endpoint(server_address).map_or(6443, |(_, port)| port)}]}});
        object::prepare_create(services, &mut svc)?;
        defaults::apply("Service", &mut svc);
        let claims = registry
            .alloc
            .service(&mut svc, None, "services/default/kubernetes")
            .await?;
        if let Err(e) = create_if_missing(registry, &key, &svc).await {
            registry.alloc.release(claims).await;
            return Err(e);
        }
    }
    publish_own_endpoint(registry, server_address).await
}

/// The IPv4 address and port clients reach this server at, if the
/// advertised address is an IPv4 address.
fn own_endpoint(server_address: &str) -> Option<(std::net::Ipv4Addr, u16)> {
    let addr: std::net::SocketAddrV4 = server_address.parse().ok()?;
    Some((*addr.ip(), addr.port()))
}

/// Writes the `kubernetes` Service's EndpointSlice with this server's
/// advertised address (as the API server's endpoint reconciler does), so
/// service proxies route the Service to it. Rewritten when the address or
/// port changed since the last start.
async fn publish_own_endpoint(registry: &Registry, server_address: &str) -> Result<(), ApiError> {
    let Some((ip, port)) = own_endpoint(server_address) else {
        tracing::warn!(address = %server_address, "advertised address is not IPv4: no EndpointSlice for the kubernetes Service");
        return Ok(());
    };
    let slices = resources::find("discovery.k8s.io", "v1", "endpointslices")
        .ok_or_else(|| ApiError::internal("no endpointslices"))?;
    let key = slices.key(Some("default"), "kubernetes");
    let endpoints = json!([{"addresses": [ip.to_string()], "conditions": {"ready": true}}]);
    let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let existing = registry
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store("endpointslices", "kubernetes", e))?;
    match existing {
        None => {
            let mut slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4", "endpoints": endpoints, "ports": ports});
            object::prepare_create(slices, &mut slice)?;
            create_if_missing(registry, &key, &slice).await
        }
        Some(record) => {
            let mut slice: Value = serde_json::from_slice(&record.value)
                .map_err(|e| ApiError::internal(format!("stored kubernetes EndpointSlice: {e}")))?;
            if slice["endpoints"] == endpoints && slice["ports"] == ports {
                return Ok(());
            }
            slice["endpoints"] = endpoints;
            slice["ports"] = ports;
            registry
                .store
                .update(&key, object::to_stored(&slice)?, Some(record.mod_revision))
                .await
                .map(drop)
                .map_err(|e| ApiError::from_store("endpointslices", "kubernetes", e))
        }
    }
}

async fn create_if_missing(registry: &Registry, key: &str, obj: &Value) -> Result<(), ApiError> {
    match registry.store.create(key, object::to_stored(obj)?).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(ApiError::from_store("bootstrap", key, e)),
    }
}
