//! Kubernetes semantics a client relies on, through the `kube` crate:
//! optimistic concurrency, generateName, graceful pod deletion, finalizers,
//! selectors on watches, deletecollection, allocation and node rights.

#[macro_use]
mod common;

use std::time::Duration;

use common::{client_from, Backend, Server};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::Api;
use serde_json::json;

on_both_stores!(
    stale_updates_conflict_and_generate_name_makes_names,
    bound_pods_are_deleted_gracefully_unbound_ones_at_once,
    node_credentials_write_only_their_own_objects,
    node_credentials_are_restricted_as_kubelets_are,
    finalizers_hold_deletion_until_removed,
    watches_with_selectors_see_objects_leave_and_collections_delete,
    services_get_unique_cluster_ips_and_requested_ones_are_checked,
);

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

async fn stale_updates_conflict_and_generate_name_makes_names(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let created = api
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"generateName": "cfg-"}, "data": {"a": "1"}})),
        )
        .await
        .expect("create");
    let name = created.metadata.name.clone().expect("generated name");
    assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");

    let mut first = created.clone();
    first.data = Some([("a".to_string(), "2".to_string())].into());
    api.replace(&name, &PostParams::default(), &first)
        .await
        .expect("first update");
    let mut stale = created;
    stale.data = Some([("a".to_string(), "3".to_string())].into());
    let err = api
        .replace(&name, &PostParams::default(), &stale)
        .await
        .expect_err("stale update");
    match err {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"))
        }
        other => panic!("expected 409, got {other}"),
    }
    let err = api.get("missing").await.expect_err("missing");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
}

async fn bound_pods_are_deleted_gracefully_unbound_ones_at_once(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let api: Api<Pod> = Api::namespaced(server.client().await, "default");
    let pod = |name: &str, node: Option<&str>| -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        from_json(json!({"metadata": {"name": name}, "spec": spec}))
    };
    api.create(&PostParams::default(), &pod("loose", None))
        .await
        .expect("create");
    api.create(&PostParams::default(), &pod("bound", Some("n0")))
        .await
        .expect("create");

    api.delete("loose", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(api.get_opt("loose").await.expect("get").is_none());

    api.delete("bound", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = api.get("bound").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));

    // The node confirms with a final delete.
    let as_node: Api<Pod> = Api::namespaced(node_client(&server, "n0").await, "default");
    as_node
        .delete("bound", &DeleteParams::default().grace_period(0))
        .await
        .expect("final delete");
    assert!(api.get_opt("bound").await.expect("get").is_none());
}

fn kubeconfig_server(server: &Server) -> String {
    let text = std::fs::read_to_string(server.kubeconfig()).expect("kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("server line")
        .to_string()
}

/// A client with node `node`'s credentials, made by `berth-control
/// node-credentials` as the local cluster makes them.
async fn node_client(server: &Server, node: &str) -> kube::Client {
    let path = server.data_dir().join(format!("{node}.kubeconfig"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-control"))
        .args(["node-credentials", "--node", node, "--server"])
        .arg(format!("https://{}", kubeconfig_server(server)))
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--out")
        .arg(&path)
        .output()
        .expect("node-credentials");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    client_from(&path).await
}

/// The status code of a refused request.
fn code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn node_credentials_are_restricted_as_kubelets_are(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let admin = server.client().await;
    let n1 = node_client(&server, "n1").await;
    let n2 = node_client(&server, "n2").await;
    let node = |name: &str, ip: &str, mac: &str| -> Node {
        from_json(json!({"metadata": {"name": name, "annotations": {
            "berth.dev/underlay-ip": ip, "berth.dev/vtep-mac": mac}}}))
    };
    let n1_nodes: Api<Node> = Api::all(n1.clone());
    n1_nodes
        .create(
            &PostParams::default(),
            &node("n1", "172.30.0.2", "0a:00:00:00:00:01"),
        )
        .await
        .expect("n1 registers");
    // Another node may not claim n1's underlay address or VTEP MAC.
    let n2_nodes: Api<Node> = Api::all(n2.clone());
    let clash = n2_nodes
        .create(
            &PostParams::default(),
            &node("n2", "172.30.0.2", "0a:00:00:00:00:02"),
        )
        .await;
    assert_eq!(code(clash), 422);
    n2_nodes
        .create(
            &PostParams::default(),
            &node("n2", "172.30.0.3", "0a:00:00:00:00:02"),
        )
        .await
        .expect("n2 registers with its own identity");
    let stolen_mac =
        json!({"metadata": {"annotations": {"berth.dev/vtep-mac": "0A:00:00:00:00:01"}}});
    let clash = n2_nodes
        .patch("n2", &PatchParams::default(), &Patch::Merge(&stolen_mac))
        .await;
    assert_eq!(code(clash), 422);

    // No control-plane role or restricted labels on itself, through the
    // object or its status.
    let role = json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}});
    assert_eq!(
        code(
            n1_nodes
                .patch("n1", &PatchParams::default(), &Patch::Merge(&role))
                .await
        ),
        403
    );
    assert_eq!(
        code(
            n1_nodes
                .patch_status("n1", &PatchParams::default(), &Patch::Merge(&role))
                .await
        ),
        403
    );
    let plain = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "a"}}});
    n1_nodes
        .patch("n1", &PatchParams::default(), &Patch::Merge(&plain))
        .await
        .expect("other labels are the node's to set");

    // Pods' labels do not change through pods/status.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    pods.create(
        &PostParams::default(),
        &from_json(
            json!({"metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                "envFrom": [{"configMapRef": {"name": "used"}}]}]}}),
        ),
    )
    .await
    .expect("create pod");
    let n1_pods: Api<Pod> = Api::namespaced(n1.clone(), "default");
    let relabel = json!({"metadata": {"labels": {"app": "db"}}, "status": {"phase": "Running"}});
    assert_eq!(
        code(
            n1_pods
                .patch_status("web", &PatchParams::default(), &Patch::Merge(&relabel))
                .await
        ),
        403
    );
    let status = json!({"status": {"phase": "Running"}});
    n1_pods
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status only");

    // ConfigMaps: only those its pods use, by name.
    let maps: Api<ConfigMap> = Api::namespaced(admin, "default");
    for name in ["used", "unused"] {
        maps.create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": name}, "data": {"k": "v"}})),
        )
        .await
        .expect("create config map");
    }
    let n1_maps: Api<ConfigMap> = Api::namespaced(n1, "default");
    n1_maps
        .get("used")
        .await
        .expect("a config map its pod uses");
    assert_eq!(code(n1_maps.get("unused").await), 403);
    assert_eq!(code(n1_maps.list(&ListParams::default()).await), 403);
    let one = ListParams::default().fields("metadata.name=used");
    assert_eq!(n1_maps.list(&one).await.expect("by name").items.len(), 1);
    let n2_maps: Api<ConfigMap> = Api::namespaced(n2, "default");
    assert_eq!(
        code(n2_maps.get("used").await),
        403,
        "another node's pod's map"
    );
}

async fn node_credentials_write_only_their_own_objects(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let admin = server.client().await;
    let node_client = node_client(&server, "n1").await;
    let nodes: Api<Node> = Api::all(node_client.clone());
    let own = nodes
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "n1"}})),
        )
        .await
        .expect("a node registers itself");
    assert_eq!(
        own.spec.and_then(|s| s.pod_cidr).as_deref(),
        Some("10.244.0.0/24")
    );
    let impostor = nodes
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "n9"}})),
        )
        .await;
    assert!(
        matches!(impostor, Err(kube::Error::Api(s)) if s.code == 403),
        "a node registers only itself"
    );
    let other = nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect_err("another node's object");
    assert!(matches!(other, kube::Error::Api(s) if s.code == 403));
    let services: Api<Service> = Api::namespaced(node_client.clone(), "default");
    assert!(
        services.list(&ListParams::default()).await.is_ok(),
        "nodes read services"
    );
    let created = services
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})),
        )
        .await;
    assert!(matches!(created, Err(kube::Error::Api(s)) if s.code == 403));

    // Pod status: only for pods bound to this node.
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    for (name, node) in [("mine", "n1"), ("theirs", "n2")] {
        pods.create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})),
        )
        .await
        .expect("create pod");
    }
    let node_pods: Api<Pod> = Api::namespaced(node_client, "default");
    let status = json!({"status": {"phase": "Running", "podIP": "10.244.0.7"}});
    node_pods
        .patch_status("mine", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("own pod's status");
    let err = node_pods
        .patch_status("theirs", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect_err("another node's pod");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 403));
    let mine = pods.get("mine").await.expect("get");
    assert_eq!(
        mine.status.and_then(|s| s.pod_ip).as_deref(),
        Some("10.244.0.7")
    );
}

async fn finalizers_hold_deletion_until_removed(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    api.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})),
    )
    .await
    .expect("create");
    api.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let held = api.get("held").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    let release = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("remove finalizer");
    assert!(api.get_opt("held").await.expect("get").is_none());
}

async fn watches_with_selectors_see_objects_leave_and_collections_delete(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    for (name, tier) in [("a", "web"), ("b", "web"), ("c", "db")] {
        api.create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": name, "labels": {"tier": tier}}})),
        )
        .await
        .expect("create");
    }
    let list = api
        .list(&ListParams::default().labels("tier=web"))
        .await
        .expect("list");
    let rv = list
        .metadata
        .resource_version
        .clone()
        .expect("list resourceVersion");
    assert_eq!(list.items.len(), 2);
    assert_eq!(
        api.list(&ListParams::default().labels("tier notin (web)"))
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    assert_eq!(
        api.list(&ListParams::default().fields("metadata.name=c"))
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    let mut watch = api
        .watch(&WatchParams::default().labels("tier=web"), &rv)
        .await
        .expect("watch")
        .boxed();
    // b stops matching: the watch sees it leave.
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "db"}}})),
    )
    .await
    .expect("relabel");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("event")
        .expect("stream")
        .expect("event");
    match event {
        WatchEvent::Deleted(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("b")),
        other => panic!("expected b DELETED, got {other:?}"),
    }

    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=db"),
    )
    .await
    .expect("deletecollection");
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, ["a"]);
}

async fn services_get_unique_cluster_ips_and_requested_ones_are_checked(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let api: Api<Service> = Api::namespaced(server.client().await, "default");
    let svc = |name: &str, ip: Option<&str>| -> Service {
        let mut spec = json!({"ports": [{"port": 80}]});
        if let Some(ip) = ip {
            spec["clusterIP"] = json!(ip);
        }
        from_json(json!({"metadata": {"name": name}, "spec": spec}))
    };
    let mut ips = std::collections::HashSet::new();
    for i in 0..20 {
        let created = api
            .create(&PostParams::default(), &svc(&format!("s{i}"), None))
            .await
            .expect("create");
        let ip = created.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
        assert!(ip.starts_with("10."), "{ip}");
        assert!(ips.insert(ip), "ClusterIPs are unique");
    }
    let asked = api
        .create(&PostParams::default(), &svc("fixed", Some("10.96.100.100")))
        .await
        .expect("create");
    assert_eq!(
        asked.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.96.100.100")
    );
    let taken = api
        .create(&PostParams::default(), &svc("clash", Some("10.96.100.100")))
        .await;
    assert!(matches!(taken, Err(kube::Error::Api(s)) if s.code == 422));
    let outside = api
        .create(&PostParams::default(), &svc("outside", Some("192.168.0.1")))
        .await;
    assert!(matches!(outside, Err(kube::Error::Api(s)) if s.code == 422));
    // Deleting frees the address.
    api.delete("fixed", &DeleteParams::default())
        .await
        .expect("delete");
    api.create(&PostParams::default(), &svc("clash", Some("10.96.100.100")))
        .await
        .expect("reuse");
}

#[tokio::test]
async fn dry_runs_and_subresources_leave_allocations_and_objects_alone() {
    let server = Server::start(&[]);
    let api: Api<Service> = Api::namespaced(server.client().await, "default");
    let created = api
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}})),
        )
        .await
        .expect("create");
    let port = created
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p[0].node_port)
        .expect("nodePort");
    // A dry-run change to ClusterIP must not give the NodePort back.
    let to_cluster_ip =
        json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": null}]}});
    api.patch(
        "np",
        &PatchParams::default().dry_run(),
        &Patch::Merge(&to_cluster_ip),
    )
    .await
    .expect("dry run");
    let clash = api
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "other"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}})),
        )
        .await;
    assert!(
        matches!(clash, Err(kube::Error::Api(s)) if s.code == 422),
        "the port is still taken"
    );
    // DELETE on a subresource is not a delete of the object.
    let out = server.kubectl(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/services/np/status",
    ]);
    assert!(!out.status.success());
    assert!(api.get("np").await.is_ok(), "the Service survives");
}
