//! What every cluster has from the start: the system namespaces and the
//! `kubernetes` Service (a controller keeps its EndpointSlice).

use serde_json::{json, Value};

use super::namespace::SYSTEM_NAMESPACES;
use super::Registry;
use crate::defaults;
use crate::error::ApiError;
use crate::object;
use crate::resources;
use crate::store::StoreError;

/// Creates the namespaces and the `kubernetes` Service every cluster has;
/// the Service's target port is `server_address`'s (this server's
/// advertised address).
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
                    "targetPort": advertised_endpoint(server_address).map_or(6443, |(_, port)| port)}]}});
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
    Ok(())
}

/// The IPv4 address and port clients reach this server at, if the
/// advertised address is an IPv4 address.
pub fn advertised_endpoint(server_address: &str) -> Option<(std::net::Ipv4Addr, u16)> {
    let addr: std::net::SocketAddrV4 = server_address.parse().ok()?;
    Some((*addr.ip(), addr.port()))
}

async fn create_if_missing(registry: &Registry, key: &str, obj: &Value) -> Result<(), ApiError> {
    match registry.store.create(key, object::to_stored(obj)?).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(ApiError::from_store("bootstrap", key, e)),
    }
}
