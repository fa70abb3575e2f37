//! berth-control's controllers through a real server, the test playing
//! the node's part (writing pod status) as a kubelet would.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{Backend, Server};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

on_both_stores!(
    endpoint_slices_follow_the_pods_a_service_selects,
    the_scheduler_binds_pods_to_nodes_that_fit,
    a_silent_node_becomes_unreachable_and_recovers,
    a_replica_set_keeps_its_replicas,
    deletes_cascade_as_their_propagation_policy_says,
    a_deployment_rolls_out_back_and_pauses_with_kubectl,
    pods_of_a_lost_node_are_evicted_and_replaced,
    a_deployment_behind_a_service_spreads_and_gets_endpoints,
    a_deleted_namespace_terminates_until_its_content_is_gone,
);

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
    // The legacy Endpoints say the same, for `kubectl get endpoints`.
    let legacy: Api<Endpoints> = Api::namespaced(server.client().await, "default");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let subsets = legacy
            .get_opt("web")
            .await
            .expect("get endpoints")
            .and_then(|e| e.subsets)
            .unwrap_or_default();
        let addresses: Vec<(String, i32)> = subsets
            .iter()
            .flat_map(|s| {
                let port = s.ports.iter().flatten().map(|p| p.port).next().unwrap_or(0);
                s.addresses
                    .iter()
                    .flatten()
                    .map(move |a| (a.ip.clone(), port))
            })
            .collect();
        if addresses == [("10.244.1.5".to_string(), 8080)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Endpoints with the ready pod: {subsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = server.kubectl_ok(&["get", "endpoints", "web"]);
    assert!(listed.contains("10.244.1.5:8080"), "{listed}");

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
    let deadline = Instant::now() + Duration::from_secs(20);
    while legacy
        .get_opt("web")
        .await
        .expect("get endpoints")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the Endpoints go with the Service"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `check` holds for pod `name`; fails with the pod last seen.
async fn pod_until(api: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = api.get(name).await.expect("get pod");
        if check(&pod) {
            return pod;
        }
        assert!(Instant::now() < deadline, "{what}: {pod:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

async fn the_scheduler_binds_pods_to_nodes_that_fit(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client, "default");
    // n1 is tainted, n2 has fast disks, n3 is not ready.
    for (name, labels, taints, ready) in [
        (
            "n1",
            json!({}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
            true,
        ),
        ("n2", json!({"disk": "ssd"}), json!([]), true),
        ("n3", json!({}), json!([]), false),
    ] {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .expect("a Node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("node status");
    }
    let pod = |name: &str, extra: serde_json::Value| -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36",
            "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}}}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("a Pod")
    };
    for (name, extra) in [
        ("plain", json!({})),
        ("ssd", json!({"nodeSelector": {"disk": "ssd"}})),
        (
            "db",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/hostname": "n1"}}),
        ),
    ] {
        pods.create(&PostParams::default(), &pod(name, extra))
            .await
            .expect("create pod");
    }
    let plain = pod_until(&pods, "plain", "plain bound", |p| node_of(p).is_some()).await;
    assert_eq!(
        node_of(&plain).as_deref(),
        Some("n2"),
        "the only ready, untainted node"
    );
    let ssd = pod_until(&pods, "ssd", "ssd bound", |p| node_of(p).is_some()).await;
    assert_eq!(node_of(&ssd).as_deref(), Some("n2"));
    // n1 has no hostname label: the selector fits nowhere.
    let db = pod_until(&pods, "db", "db refused", |p| {
        p.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"))
    })
    .await;
    let message = db
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "PodScheduled")
                .and_then(|c| c.message.clone())
        });
    assert_eq!(
        message.as_deref(),
        Some("0/3 nodes are available: 1 node(s) were not ready, 2 node(s) didn't match Pod's node affinity/selector.")
    );
    // A node changing makes room: n1 gets the label the pod asks for.
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kubernetes.io/hostname": "n1"}}})),
        )
        .await
        .expect("label n1");
    let db = pod_until(&pods, "db", "db bound once n1 fits", |p| {
        node_of(p).is_some()
    })
    .await;
    assert_eq!(node_of(&db).as_deref(), Some("n1"), "tolerates n1's taint");

    // Requests: n2 has 2 cpus, 1 taken; a pod asking for 1.5 fits nowhere.
    let big = json!({"containers": [{"name": "c", "image": "busybox:1.36",
        "resources": {"requests": {"cpu": "1500m"}}}], "nodeSelector": {"disk": "ssd"}});
    pods.create(
        &PostParams::default(),
        &serde_json::from_value::<Pod>(json!({"metadata": {"name": "big"}, "spec": big}))
            .expect("a Pod"),
    )
    .await
    .expect("create big");
    pod_until(&pods, "big", "big refused for cpu", |p| {
        p.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| {
                c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("1 Insufficient cpu"))
            })
    })
    .await;

    let scheduled = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    assert!(
        scheduled
            .iter()
            .any(|e| e.reason.as_deref() == Some("Scheduled")
                && e.message.as_deref() == Some("Successfully assigned default/plain to n2")),
        "{scheduled:#?}"
    );
    assert!(scheduled
        .iter()
        .any(|e| e.reason.as_deref() == Some("FailedScheduling")));

    // What an operator reads at /metrics.
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    for line in [
        "scheduler_schedule_attempts_total{result=\"scheduled\"}",
        "scheduler_schedule_attempts_total{result=\"unschedulable\"}",
        "controller_runtime_reconcile_total{controller=\"scheduler\",result=\"success\"}",
        "controller_runtime_reconcile_time_seconds_count{controller=\"scheduler\"}",
        "leader_election_master_status 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// What the node controller left on `n1`: its Ready status and taint keys.
async fn node_state(nodes: &Api<Node>) -> (String, Vec<String>) {
    let node = nodes.get("n1").await.expect("get node");
    let ready = node
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
        .unwrap_or_default();
    let taints = node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    (ready, taints)
}

async fn node_until(nodes: &Api<Node>, what: &str, check: impl Fn(&(String, Vec<String>)) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = node_state(nodes).await;
        if check(&state) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {state:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn a_silent_node_becomes_unreachable_and_recovers(backend: Backend) {
    let server = Server::start_on(backend, &["--node-monitor-grace-period", "2s"]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).expect("a Node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let heartbeat = || {
        json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "lastHeartbeatTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}]}})
    };
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Strategic(heartbeat()),
        )
        .await
        .expect("ready");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "n1"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": micro_now()}}))
    .expect("a Lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");

    // Silent for longer than the grace period.
    node_until(
        &nodes,
        "unreachable after 2 s of silence",
        |(ready, taints)| {
            ready == "Unknown"
                && taints.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string())
                && taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
        },
    )
    .await;

    // The agent is back: it renews and reports Ready.
    leases
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"renewTime": micro_now()}})),
        )
        .await
        .expect("renew");
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Strategic(heartbeat()),
        )
        .await
        .expect("ready again");
    node_until(&nodes, "taints gone once Ready again", |(ready, taints)| {
        ready == "True" && taints.is_empty()
    })
    .await;
}

/// A ReplicaSet `name` of `replicas` pods labelled `app: <name>`.
fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}},
    }))
    .expect("a ReplicaSet")
}

/// The pods labelled `app: <app>` (being deleted or not) and the uids of
/// their controllers.
async fn pods_of(pods: &Api<Pod>, app: &str) -> Vec<(Pod, Option<String>)> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .map(|p| {
            let owner = p
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone());
            (p, owner)
        })
        .collect()
}

/// Waits until `check` holds for the pods labelled `app: <app>`.
async fn pods_until(
    pods: &Api<Pod>,
    app: &str,
    what: &str,
    check: impl Fn(&[(Pod, Option<String>)]) -> bool,
) -> Vec<(Pod, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = pods_of(pods, app).await;
        if check(&found) {
            return found;
        }
        let names: Vec<(String, Option<String>)> = found
            .iter()
            .map(|(p, o)| (p.name_any(), o.clone()))
            .collect();
        assert!(Instant::now() < deadline, "{what}: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `check` holds for ReplicaSet `name` (`None`: gone).
async fn replica_set_until(
    api: &Api<ReplicaSet>,
    name: &str,
    what: &str,
    check: impl Fn(Option<&ReplicaSet>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rs = api.get_opt(name).await.expect("get replicaset");
        if check(rs.as_ref()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {rs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_counts(rs: Option<&ReplicaSet>) -> (i32, i32, i32) {
    let status = rs.and_then(|r| r.status.clone()).unwrap_or_default();
    (
        status.replicas,
        status.ready_replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
    )
}

async fn a_replica_set_keeps_its_replicas(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client, "default");
    // An orphan the ReplicaSet will select: adopted, not duplicated.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    }))
    .expect("a Pod");
    pods.create(&PostParams::default(), &orphan)
        .await
        .expect("create orphan");
    let rs = sets
        .create(&PostParams::default(), &replica_set("web", 3))
        .await
        .expect("create replicaset");
    let uid = rs.uid();
    let found = pods_until(&pods, "web", "three pods owned by the ReplicaSet", |p| {
        p.len() == 3 && p.iter().all(|(_, o)| *o == uid)
    })
    .await;
    assert!(
        found.iter().any(|(p, _)| p.name_any() == "orphan"),
        "the orphan is adopted"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pods_of(&pods, "web").await.len(), 3, "no pod made twice");
    replica_set_until(&sets, "web", "status counts three pods", |r| {
        status_counts(r) == (3, 0, 0)
            && r.and_then(|r| r.status.as_ref()?.observed_generation) == Some(1)
    })
    .await;

    // Two become ready: the status follows; scaling to one deletes the
    // pod that is not ready first, then the more recently ready one.
    let names: Vec<String> = found.iter().map(|(p, _)| p.name_any()).collect();
    let now = jiff::Timestamp::now();
    for (name, ready_since) in [(&names[0], 60), (&names[1], 5)] {
        let since = now
            .checked_sub(jiff::SignedDuration::from_secs(ready_since))
            .expect("a time in range")
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": since}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("pod status");
    }
    replica_set_until(&sets, "web", "two ready and available", |r| {
        status_counts(r) == (3, 2, 2)
    })
    .await;
    sets.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale down");
    let left = pods_until(&pods, "web", "one pod left", |p| p.len() == 1).await;
    assert_eq!(
        left[0].0.name_any(),
        names[0],
        "the longest-ready pod stays"
    );

    // A pod relabelled out of the selector is released and replaced.
    pods.patch(
        &names[0],
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
    )
    .await
    .expect("relabel");
    pod_until(&pods, &names[0], "released", |p| {
        p.owner_references().is_empty()
    })
    .await;
    pods_until(&pods, "web", "a replacement", |p| {
        p.len() == 1 && p[0].1 == uid
    })
    .await;

    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("ReplicaSet"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "SuccessfulCreate"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "SuccessfulDelete"),
        "{reasons:?}"
    );

    // Deleting the ReplicaSet (background) deletes its pods, not the one
    // it released.
    sets.delete("web", &DeleteParams::background())
        .await
        .expect("delete replicaset");
    pods_until(&pods, "web", "the pods go with their ReplicaSet", |p| {
        p.is_empty()
    })
    .await;
    pods.get(&names[0]).await.expect("the released pod stays");
}

async fn deletes_cascade_as_their_propagation_policy_says(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    for name in ["orphaned", "foreground"] {
        sets.create(&PostParams::default(), &replica_set(name, 2))
            .await
            .expect("create replicaset");
        pods_until(&pods, name, "two pods", |p| {
            p.len() == 2 && p.iter().all(|(_, o)| o.is_some())
        })
        .await;
    }

    // Orphan: the ReplicaSet goes, its pods stay without an owner.
    sets.delete("orphaned", &DeleteParams::orphan())
        .await
        .expect("delete orphaning");
    replica_set_until(&sets, "orphaned", "gone", |r| r.is_none()).await;
    let kept = pods_of(&pods, "orphaned").await;
    assert_eq!(kept.len(), 2, "orphaned pods stay");
    assert!(
        kept.iter().all(|(p, _)| p.owner_references().is_empty()),
        "{kept:?}"
    );

    // Foreground: the ReplicaSet waits for its pods, held here by a
    // finalizer on one of them.
    let held = pods_of(&pods, "foreground").await[0].0.name_any();
    pods.patch(
        &held,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .expect("hold a pod");
    let deleted = sets
        .delete("foreground", &DeleteParams::foreground())
        .await
        .expect("delete in the foreground")
        .left()
        .expect("the ReplicaSet stays while its pods go");
    assert!(deleted
        .finalizers()
        .contains(&"foregroundDeletion".to_string()));
    pods_until(&pods, "foreground", "only the held pod, terminating", |p| {
        p.len() == 1 && p[0].0.metadata.deletion_timestamp.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sets.get_opt("foreground").await.expect("get").is_some(),
        "the ReplicaSet waits for its last pod"
    );
    pods.patch(
        &held,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the pod");
    replica_set_until(&sets, "foreground", "gone after its pods", |r| r.is_none()).await;

    // An object whose owner does not exist is collected.
    let dangling: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "dangling", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "ReplicaSet", "name": "never", "uid": "00000000-0000-0000-0000-000000000001"}]},
    }))
    .expect("a ConfigMap");
    maps.create(&PostParams::default(), &dangling)
        .await
        .expect("create configmap");
    let deadline = Instant::now() + Duration::from_secs(20);
    while maps.get_opt("dangling").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "an object without owners is collected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Plays the kubelets' part for the pods `selector` matches: each is
/// Running and Ready soon after it appears.
async fn fake_kubelet(pods: Api<Pod>, selector: &'static str) {
    loop {
        let listed = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for pod in listed {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let status = json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": micro_now()}]}});
            // A pod deleted meanwhile is no error here.
            let _ = pods
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (pods not being deleted, of which Ready, their distinct
/// pod-template-hash labels) after every pod event.
type Samples = Arc<Mutex<Vec<(usize, usize, usize)>>>;

/// Follows the pods `selector` matches through a watch, recording a
/// sample after every event.
async fn observe(pods: Api<Pod>, selector: &'static str, samples: Samples) {
    use kube::runtime::watcher::{self, Event as WatchEvent};
    let mut seen: BTreeMap<String, Pod> = BTreeMap::new();
    let mut events = std::pin::pin!(watcher::watcher(
        pods,
        watcher::Config::default().labels(selector)
    ));
    while let Some(event) = events.next().await {
        match event {
            Ok(WatchEvent::Apply(p) | WatchEvent::InitApply(p)) => {
                seen.insert(p.name_any(), p);
            }
            Ok(WatchEvent::Delete(p)) => {
                seen.remove(&p.name_any());
            }
            Ok(WatchEvent::Init) => seen.clear(),
            Ok(WatchEvent::InitDone) | Err(_) => continue,
        }
        let active: Vec<&Pod> = seen
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let ready = active
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        let versions: std::collections::BTreeSet<Option<&String>> = active
            .iter()
            .map(|p| p.labels().get("pod-template-hash"))
            .collect();
        samples
            .lock()
            .expect("samples")
            .push((active.len(), ready, versions.len()));
    }
}

/// kubectl without blocking the test's runtime (the fake kubelet and the
/// watch go on meanwhile).
async fn kubectl(server: &Server, args: &[&str]) -> String {
    let mut command = server.kubectl_command(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Deployment's ReplicaSets: (revision, image, replicas), by revision.
async fn revisions(sets: &Api<ReplicaSet>) -> Vec<(String, String, i32)> {
    let mut found: Vec<(String, String, i32)> = sets
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list replicasets")
        .items
        .into_iter()
        .map(|rs| {
            let revision = rs
                .annotations()
                .get("deployment.kubernetes.io/revision")
                .cloned()
                .unwrap_or_default();
            let spec = rs.spec.unwrap_or_default();
            let image = spec
                .template
                .and_then(|t| t.spec)
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default();
            (revision, image, spec.replicas.unwrap_or(1))
        })
        .collect();
    found.sort();
    found
}

async fn a_deployment_rolls_out_back_and_pauses_with_kubectl(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let kubelet = tokio::spawn(fake_kubelet(pods.clone(), "app=web"));
    let samples = Samples::default();
    let observer = tokio::spawn(observe(pods.clone(), "app=web", Arc::clone(&samples)));
    let manifest = server.data_dir().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n\
         \x20 replicas: 3\n  selector: {matchLabels: {app: web}}\n\
         \x20 strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n\
         \x20 template:\n    metadata: {labels: {app: web}}\n\
         \x20   spec: {containers: [{name: web, image: 'busybox:1.36'}]}\n",
    )
    .expect("write manifest");
    let manifest = manifest.display().to_string();
    kubectl(&server, &["apply", "-f", &manifest]).await;
    let status = ["rollout", "status", "deployment/web", "--timeout=60s"];
    let done = kubectl(&server, &status).await;
    assert!(done.contains("successfully rolled out"), "{done}");
    assert_eq!(
        revisions(&sets).await,
        [("1".into(), "busybox:1.36".into(), 3)]
    );

    // A rolling update: never more than 3 + 1 pods, never fewer than 3
    // ready (asserted after every pod event).
    samples.lock().expect("samples").clear();
    let updated = kubectl(
        &server,
        &["set", "image", "deployment/web", "web=busybox:1.37"],
    )
    .await;
    assert!(updated.contains("image updated"), "{updated}");
    let done = kubectl(&server, &status).await;
    assert!(done.contains("successfully rolled out"), "{done}");
    {
        let seen = samples.lock().expect("samples");
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|(pods, ..)| *pods <= 4),
            "maxSurge 1: {seen:?}"
        );
        assert!(
            seen.iter().all(|(_, ready, _)| *ready >= 3),
            "maxUnavailable 0: {seen:?}"
        );
    }
    assert_eq!(
        revisions(&sets).await,
        [
            ("1".into(), "busybox:1.36".into(), 0),
            ("2".into(), "busybox:1.37".into(), 3)
        ]
    );
    let history = kubectl(&server, &["rollout", "history", "deployment/web"]).await;
    assert!(history.contains("REVISION"), "{history}");

    // Undo: the first ReplicaSet comes back as revision 3; none is made.
    let undone = kubectl(&server, &["rollout", "undo", "deployment/web"]).await;
    assert!(undone.contains("rolled back"), "{undone}");
    let done = kubectl(&server, &status).await;
    assert!(done.contains("successfully rolled out"), "{done}");
    assert_eq!(
        revisions(&sets).await,
        [
            ("2".into(), "busybox:1.37".into(), 0),
            ("3".into(), "busybox:1.36".into(), 3)
        ]
    );

    // Paused, a template change waits; resumed, it rolls.
    kubectl(&server, &["rollout", "pause", "deployment/web"]).await;
    kubectl(
        &server,
        &["set", "image", "deployment/web", "web=busybox:1.38"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = deployments.get("web").await.expect("get deployment");
        let paused = d
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused"));
        if paused {
            break;
        }
        assert!(Instant::now() < deadline, "Progressing: DeploymentPaused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        revisions(&sets).await.len(),
        2,
        "nothing rolls while paused"
    );
    kubectl(&server, &["rollout", "resume", "deployment/web"]).await;
    let done = kubectl(&server, &status).await;
    assert!(done.contains("successfully rolled out"), "{done}");
    let after = revisions(&sets).await;
    assert_eq!(
        after.last(),
        Some(&("4".into(), "busybox:1.38".into(), 3)),
        "{after:?}"
    );

    // Restarted: a new revision of the same image.
    let restarted = kubectl(&server, &["rollout", "restart", "deployment/web"]).await;
    assert!(restarted.contains("restarted"), "{restarted}");
    let done = kubectl(&server, &status).await;
    assert!(done.contains("successfully rolled out"), "{done}");
    let after = revisions(&sets).await;
    assert_eq!(
        after.last(),
        Some(&("5".into(), "busybox:1.38".into(), 3)),
        "{after:?}"
    );

    // Recreate: the old pods are all gone before a new one starts.
    kubectl(
        &server,
        &[
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}"#,
        ],
    )
    .await;
    samples.lock().expect("samples").clear();
    kubectl(
        &server,
        &["set", "image", "deployment/web", "web=busybox:1.39"],
    )
    .await;
    let done = kubectl(&server, &status).await;
    assert!(done.contains("successfully rolled out"), "{done}");
    {
        let seen = samples.lock().expect("samples");
        assert!(
            seen.iter().any(|(pods, ..)| *pods == 0),
            "all old pods went: {seen:?}"
        );
        assert!(
            seen.iter().all(|(.., versions)| *versions <= 1),
            "never two versions: {seen:?}"
        );
    }

    // Scaled, then deleted in the foreground with everything it made.
    kubectl(&server, &["scale", "deployment", "web", "--replicas=5"]).await;
    let done = kubectl(&server, &status).await;
    assert!(done.contains("successfully rolled out"), "{done}");
    assert_eq!(pods_of(&pods, "web").await.len(), 5);
    kubectl(
        &server,
        &["delete", "deployment", "web", "--cascade=foreground"],
    )
    .await;
    pods_until(&pods, "web", "the pods go with their Deployment", |p| {
        p.is_empty()
    })
    .await;
    assert!(revisions(&sets).await.is_empty(), "the ReplicaSets go too");
    kubelet.abort();
    observer.abort();
}

/// Keeps node `name` alive as its agent would: Lease renewed and Ready
/// posted every 500 ms, while `alive` holds.
async fn keep_alive(
    client: kube::Client,
    name: &'static str,
    alive: Arc<std::sync::atomic::AtomicBool>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    while alive.load(std::sync::atomic::Ordering::SeqCst) {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "lastHeartbeatTime": now}]}});
        let _ = nodes
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(ready))
            .await;
        let renew = json!({"metadata": {"name": name}, "spec": {"holderIdentity": name,
            "leaseDurationSeconds": 40, "renewTime": micro_now()}});
        let _ = leases
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Merge(renew.clone()),
            )
            .await;
        if leases.get_opt(name).await.ok().flatten().is_none() {
            let lease: Lease = serde_json::from_value(renew).expect("a Lease");
            let _ = leases.create(&PostParams::default(), &lease).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pods_of_a_lost_node_are_evicted_and_replaced(backend: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = Server::start_on(backend, &["--node-monitor-grace-period", "2s"]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    // n2 is cordoned at first, so the pods land on n1.
    for (name, unschedulable) in [("n1", false), ("n2", true)] {
        let node: Node = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"unschedulable": unschedulable}}),
        )
        .expect("a Node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }
    let n1_alive = Arc::new(AtomicBool::new(true));
    let n2_alive = Arc::new(AtomicBool::new(true));
    tokio::spawn(keep_alive(client.clone(), "n1", Arc::clone(&n1_alive)));
    tokio::spawn(keep_alive(client, "n2", Arc::clone(&n2_alive)));
    let mut rs = replica_set("lost", 2);
    let spec = rs
        .spec
        .as_mut()
        .and_then(|s| s.template.as_mut())
        .and_then(|t| t.spec.as_mut())
        .expect("a pod spec");
    // Shortened from the default 300 s.
    spec.tolerations = Some(vec![serde_json::from_value(json!({
        "key": "node.kubernetes.io/unreachable", "operator": "Exists",
        "effect": "NoExecute", "tolerationSeconds": 2}))
    .expect("a toleration")]);
    sets.create(&PostParams::default(), &rs)
        .await
        .expect("create replicaset");
    let on_n1 = pods_until(&pods, "lost", "two pods on n1", |p| {
        p.len() == 2 && p.iter().all(|(p, _)| node_of(p).as_deref() == Some("n1"))
    })
    .await;
    for (pod, _) in &on_n1 {
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(pod_status("10.244.1.9", true)),
        )
        .await
        .expect("ready");
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")
                    && t.toleration_seconds == Some(300)),
            "DefaultTolerationSeconds: {tolerations:?}"
        );
    }
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await
        .expect("uncordon n2");

    // n1 goes silent: its pods turn not ready, are evicted after 2 s and
    // are replaced on n2.
    n1_alive.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let names: Vec<String> = on_n1.iter().map(|(p, _)| p.name_any()).collect();
    for name in &names {
        pod_until(&pods, name, "not ready once n1 is unreachable", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "False"))
        })
        .await;
    }
    for name in &names {
        let evicted = pod_until(&pods, name, "evicted", |p| {
            p.metadata.deletion_timestamp.is_some()
        })
        .await;
        let conditions = evicted
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        assert!(
            conditions.iter().any(|c| c.type_ == "DisruptionTarget"
                && c.reason.as_deref() == Some("DeletionByTaintManager")),
            "{conditions:?}"
        );
    }
    assert!(
        // Grace and toleration, less the last heartbeat's age (≤ 0.5 s) and
        // the taint's whole-second timestamp.
        started.elapsed() >= Duration::from_secs(2),
        "not before the grace (2 s) and the toleration (2 s): {:?}",
        started.elapsed()
    );
    pods_until(&pods, "lost", "two replacements on n2", |p| {
        p.iter()
            .filter(|(p, _)| p.metadata.deletion_timestamp.is_none())
            .filter(|(p, _)| node_of(p).as_deref() == Some("n2"))
            .count()
            == 2
    })
    .await;
    n2_alive.store(false, Ordering::SeqCst);
}

async fn a_deployment_behind_a_service_spreads_and_gets_endpoints(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let legacy: Api<Endpoints> = Api::namespaced(client, "default");
    for name in ["n1", "n2", "n3"] {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("a Node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "lastHeartbeatTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}]}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(ready))
            .await
            .expect("node ready");
    }
    let manifest = server.data_dir().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n\
         \x20 replicas: 3\n  selector: {matchLabels: {app: web}}\n\
         \x20 template:\n    metadata: {labels: {app: web}}\n\
         \x20   spec: {containers: [{name: web, image: 'busybox:1.36', ports: [{containerPort: 8080}]}]}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .expect("write manifest");
    kubectl(&server, &["apply", "-f", &manifest.display().to_string()]).await;
    let placed = pods_until(&pods, "web", "three pods on three nodes", |p| {
        let nodes: std::collections::BTreeSet<Option<String>> =
            p.iter().map(|(p, _)| node_of(p)).collect();
        p.len() == 3 && nodes.len() == 3 && !nodes.contains(&None)
    })
    .await;
    // The kubelets' part: an IP and Ready.
    for (i, (pod, _)) in placed.iter().enumerate() {
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(pod_status(&format!("10.244.{i}.2"), true)),
        )
        .await
        .expect("pod status");
    }
    slices_until(&slices, "three ready endpoints", |s| {
        let e = endpoints(s);
        e.len() == 3 && e.iter().all(|(_, ready)| *ready)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let addresses = legacy
            .get_opt("web")
            .await
            .expect("get endpoints")
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .iter()
            .map(|s| s.addresses.iter().flatten().count())
            .sum::<usize>();
        if addresses == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "three addresses in the Endpoints"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
    )
    .await;
    assert!(done.contains("successfully rolled out"), "{done}");
}

async fn a_deleted_namespace_terminates_until_its_content_is_gone(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "scratch");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "scratch");
    let maps: Api<ConfigMap> = Api::namespaced(client, "scratch");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).expect("a Node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "lastHeartbeatTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}]}});
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Strategic(ready))
        .await
        .expect("node ready");
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "scratch"}})).expect("a Namespace");
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    assert_eq!(
        created.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_string()])
    );
    sets.create(&PostParams::default(), &replica_set("app", 2))
        .await
        .expect("create replicaset");
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}})).expect("a ConfigMap");
    maps.create(&PostParams::default(), &map)
        .await
        .expect("create configmap");
    // Bound to n1, the pods go only when their node says so.
    pods_until(&pods, "app", "two pods on n1", |p| {
        p.len() == 2 && p.iter().all(|(p, _)| node_of(p).as_deref() == Some("n1"))
    })
    .await;

    let deleted = server.kubectl_ok(&["delete", "namespace", "scratch", "--wait=false"]);
    assert!(
        deleted.contains("namespace \"scratch\" deleted"),
        "{deleted}"
    );
    let listed = server.kubectl_ok(&["get", "namespace", "scratch"]);
    assert!(listed.contains("Terminating"), "{listed}");
    pods_until(&pods, "app", "the pods terminating", |p| {
        p.len() == 2
            && p.iter()
                .all(|(p, _)| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ns = namespaces.get("scratch").await.expect("still there");
        let remaining = ns
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .and_then(|c| c.message);
        let others_gone = maps.get_opt("settings").await.expect("get").is_none()
            && sets.get_opt("app").await.expect("get").is_none();
        if others_gone
            && remaining.as_deref()
                == Some("Some resources are remaining: pods. has 2 resource instances")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only the pods remain: {remaining:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = maps
        .create(&PostParams::default(), &map)
        .await
        .expect_err("no new content in a terminating namespace");
    assert!(
        refused.to_string().contains("being terminated"),
        "{refused}"
    );

    // The node confirms its pods gone: the namespace follows.
    for (pod, _) in pods_of(&pods, "app").await {
        pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
            .expect("the node deletes its pod");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while namespaces.get_opt("scratch").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "the namespace goes once empty");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
