//! berth-control's controllers through a real server, the test playing
//! the node's part (writing pod status) as a kubelet would.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{Backend, Server};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

on_both_stores!(endpoint_slices_follow_the_pods_a_service_selects);

/// Waits until `check` holds for the slices of Service `web`, and returns
/// them; fails with the last ones seen.
async fn slices_until(
    api: &Api<EndpointSlice>,
    what: &str,
    check: impl Fn(&[EndpointSlice]) -> bool,
) -> Vec<EndpointSlice> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let slices = api
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .expect("list slices")
            .items;
        if check(&slices) {
            return slices;
        }
        assert!(Instant::now() < deadline, "{what}: {slices:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn endpoints(slices: &[EndpointSlice]) -> Vec<(String, bool)> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
            )
        })
        .collect()
}

fn pod_status(ip: &str, ready: bool) -> serde_json::Value {
    let ready = if ready { "True" } else { "False" };
    json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": ready}]}})
}

async fn endpoint_slices_follow_the_pods_a_service_selects(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .expect("a Service");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    let empty = slices_until(&slices, "an empty slice for the service", |s| {
        s.len() == 1 && s[0].endpoints.is_empty()
    })
    .await;
    let owner = &empty[0]
        .metadata
        .owner_references
        .as_ref()
        .expect("an owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );

    for (name, app, ip) in [
        ("web-1", "web", "10.244.1.5"),
        ("other", "db", "10.244.1.6"),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
        }))
        .expect("a Pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(pod_status(ip, true)),
        )
        .await
        .expect("pod status");
    }
    let ready = slices_until(&slices, "the selected pod, ready", |s| {
        endpoints(s) == [("10.244.1.5".to_string(), true)]
    })
    .await;
    let port = &ready[0].ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), Some(8080)),
        "named target port resolved"
    );

    pods.patch_status(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(pod_status("10.244.1.5", false)),
    )
    .await
    .expect("pod not ready");
    slices_until(&slices, "the pod, not ready", |s| {
        endpoints(s) == [("10.244.1.5".to_string(), false)]
    })
    .await;

    // A pod whose labels stop matching leaves the slice.
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}})),
    )
    .await
    .expect("relabel");
    slices_until(&slices, "no endpoint after relabelling", |s| {
        endpoints(s).is_empty()
    })
    .await;

    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    slices_until(&slices, "no slice once the service is gone", |s| {
        s.is_empty()
    })
    .await;
}
