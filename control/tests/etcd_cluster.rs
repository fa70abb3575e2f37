//! berth-control on etcd: several API servers on one etcd, an etcd member
//! lost, etcd unreachable, and history compacted under a watcher.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::Server;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn two_api_servers_share_one_etcd() {
    let etcd = Arc::new(EtcdCluster::start(1));
    let a = Server::with_etcd(Arc::clone(&etcd), &[]);
    let b = Server::with_etcd(Arc::clone(&etcd), &[]);
    let api_a: Api<ConfigMap> = Api::namespaced(a.client().await, "default");
    let api_b: Api<ConfigMap> = Api::namespaced(b.client().await, "default");

    // A watch through B sees a kubectl write through A.
    let rv = api_b
        .list(&ListParams::default())
        .await
        .expect("list through b")
        .metadata
        .resource_version
        .expect("resourceVersion");
    let mut watch = api_b
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch b")
        .boxed();
    let manifest = a.data_dir().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: via-a}\ndata: {k: v}\n",
    )
    .expect("write");
    a.kubectl_ok(&["create", "-f", &manifest.display().to_string()]);
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event through b")
        .expect("open")
        .expect("event");
    match event {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("via-a")),
        other => panic!("expected ADDED via-a, got {other:?}"),
    }
    assert!(api_b.get("via-a").await.is_ok());
    let _ = api_a;

    // Concurrent Service creates through both servers get distinct ClusterIPs.
    let svcs_a: Api<Service> = Api::namespaced(a.client().await, "default");
    let svcs_b: Api<Service> = Api::namespaced(b.client().await, "default");
    let create = |api: Api<Service>, prefix: &'static str| {
        tokio::spawn(async move {
            let mut ips = Vec::new();
            for i in 0..25 {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("{prefix}-{i}")},
                    "spec": {"ports": [{"port": 80}]}
                }))
                .expect("service");
                let created = api
                    .create(&PostParams::default(), &svc)
                    .await
                    .expect("create service");
                ips.push(created.spec.and_then(|s| s.cluster_ip).expect("clusterIP"));
            }
            ips
        })
    };
    let (ips_a, ips_b) = tokio::join!(create(svcs_a, "a"), create(svcs_b, "b"));
    let all: Vec<String> = ips_a
        .expect("a")
        .into_iter()
        .chain(ips_b.expect("b"))
        .collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "ClusterIPs are unique across API servers: {all:?}"
    );
}

#[tokio::test]
async fn losing_one_of_three_etcd_members_loses_nothing() {
    let etcd = Arc::new(EtcdCluster::start(3));
    let server = Server::with_etcd(Arc::clone(&etcd), &[]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let mut acknowledged = BTreeSet::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        api.create(&PostParams::default(), &config_map(&name))
            .await
            .expect("create");
        acknowledged.insert(name);
    }
    etcd.kill(1);
    // Writes and reads go on with two of three members.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while i < 20 {
        let name = format!("after-{i}");
        match api.create(&PostParams::default(), &config_map(&name)).await {
            Ok(_) => {
                acknowledged.insert(name);
                i += 1;
            }
            // A leader election may be under way: retry briefly.
            Err(e) => {
                assert!(Instant::now() < deadline, "writes never resumed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let stored: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// `/readyz` as kubectl reads it: (ready, body).
fn readyz(server: &Server) -> (bool, String) {
    let out = server.kubectl(&["get", "--raw", "/readyz", "--request-timeout=10s"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn unreachable_etcd_means_not_ready_and_503_then_recovery() {
    let etcd = Arc::new(EtcdCluster::start(1));
    // Down before berth-control starts.
    etcd.kill(0);
    let server = Server::with_etcd(Arc::clone(&etcd), &[]);
    let (ready, text) = readyz(&server);
    assert!(!ready, "not ready without etcd: {text}");
    let started = Instant::now();
    let out = server.kubectl(&["get", "configmaps", "--request-timeout=30s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage is unavailable"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered instead of hanging"
    );

    // etcd comes back: ready again, bootstrap done, writes work.
    etcd.restart(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readyz(&server).0 {
        assert!(
            Instant::now() < deadline,
            "never became ready:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    while api
        .create(&PostParams::default(), &config_map("after"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the default namespace never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Down mid-run: 503 at once again (kubectl does not retry it; kube-rs
    // clients would, by their own policy), then recovery by itself.
    etcd.kill(0);
    let started = Instant::now();
    let out = server.kubectl(&["get", "configmap", "after", "--request-timeout=30s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("storage is unavailable"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered instead of hanging"
    );
    assert!(!readyz(&server).0);
    etcd.restart(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .kubectl(&["get", "configmap", "after"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "never recovered:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn compaction_under_a_resting_watcher_makes_it_relist() {
    let etcd = Arc::new(EtcdCluster::start(1));
    let mut server = Server::with_etcd(Arc::clone(&etcd), &["--etcd-compaction-interval", "1s"]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    api.create(&PostParams::default(), &config_map("one"))
        .await
        .expect("create");
    let (reader, writer) = reflector::store();
    let mut stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let ready = reader.clone();
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            _ = ready.wait_until_ready() => {},
            _ = async { while stream.next().await.is_some() {} } => {},
        }
    })
    .await
    .expect("reflector ready");

    // While the reflector rests: restart the API server, change things, and
    // let two compactions pass the watcher's revision.
    server.restart();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    api.delete("one", &Default::default())
        .await
        .expect("delete");
    api.create(&PostParams::default(), &config_map("two"))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let names = |r: &reflector::Store<ConfigMap>| {
        let mut n: Vec<String> = r
            .state()
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        n.sort();
        n
    };
    let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
        while names(&reader) != ["two"] {
            tokio::select! {
                _ = stream.next() => {},
                () = tokio::time::sleep(Duration::from_millis(50)) => {},
            }
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "reflector holds {:?}\n{}",
        names(&reader),
        server.log()
    );
}

#[tokio::test]
async fn etcd_over_tls_with_client_certificates() {
    let etcd = Arc::new(EtcdCluster::start_tls());
    let tls = etcd.tls().expect("TLS files");
    let args = [
        "--etcd-cafile".to_string(),
        tls.ca.display().to_string(),
        "--etcd-certfile".to_string(),
        tls.client_cert.display().to_string(),
        "--etcd-keyfile".to_string(),
        tls.client_key.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::with_etcd(Arc::clone(&etcd), &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readyz(&server).0 {
        if Instant::now() > deadline {
            let dump = |p: &std::path::Path| {
                let out = std::process::Command::new("openssl")
                    .args(["x509", "-noout", "-text", "-in"])
                    .arg(p)
                    .output();
                out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            panic!(
                "never ready over TLS:\n{}\netcd:\n{}\nCA:\n{}\nclient:\n{}",
                server.log(),
                etcd.log(0),
                dump(&tls.ca),
                dump(&tls.client_cert)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    api.create(&PostParams::default(), &config_map("secure"))
        .await
        .expect("stored over TLS");
    assert!(api.get("secure").await.is_ok());

    // Without the client certificate etcd refuses the connection.
    let bare = Server::with_etcd(
        Arc::clone(&etcd),
        &["--etcd-cafile", &tls.ca.display().to_string()],
    );
    let (ready, text) = readyz(&bare);
    assert!(!ready, "ready without a client certificate: {text}");
}

/// The holder of the controllers' Lease once it has one.
async fn leader(leases: &Api<Lease>, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let holder = leases
            .get_opt("berth-controllers")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty() && Some(h.as_str()) != not);
        if let Some(holder) = holder {
            return holder;
        }
        assert!(Instant::now() < deadline, "no new leader within 40 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The managed EndpointSlices of Service `name`, once there are `n`.
async fn managed_slices(api: &Api<EndpointSlice>, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let slices = api
            .list(&ListParams::default().labels(&format!(
                "kubernetes.io/service-name={name},endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
            )))
            .await
            .expect("list slices")
            .items;
        if slices.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} slices for {name}, not {n}",
            slices.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn one_instance_leads_the_controllers_and_another_takes_over() {
    let etcd = Arc::new(EtcdCluster::start(1));
    let mut servers = vec![
        Server::with_etcd(Arc::clone(&etcd), &[]),
        Server::with_etcd(Arc::clone(&etcd), &[]),
    ];
    let client = servers[1].client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let first = leader(&leases, None).await;
    let at = servers
        .iter()
        .position(|s| first.ends_with(&format!("_{}", s.addr())))
        .unwrap_or_else(|| panic!("leader {first} is neither server"));

    // Two instances, one set of controllers: a Service gets one slice,
    // not one per instance.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let service = |name: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}))
        .expect("a Service")
    };
    services
        .create(&PostParams::default(), &service("one"))
        .await
        .expect("create");
    managed_slices(&slices, "one", 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    managed_slices(&slices, "one", 1).await;

    // The leader dies: the other takes the Lease once it expires, and
    // runs the controllers.
    servers.remove(at);
    let survivor = servers.pop().expect("the other server");
    let client = survivor.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let second = leader(&leases, Some(&first)).await;
    assert!(
        second.ends_with(&format!("_{}", survivor.addr())),
        "{second}"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("two"))
        .await
        .expect("create");
    managed_slices(&Api::namespaced(client, "default"), "two", 1).await;

    // A leader that shuts down cleanly gives the Lease up: a third
    // instance takes it well before it would have expired.
    let third = Server::with_etcd(Arc::clone(&etcd), &[]);
    let leases: Api<Lease> = Api::namespaced(third.client().await, "kube-system");
    let mut survivor = survivor;
    let stopped = Instant::now();
    survivor.terminate();
    let next = leader(&leases, Some(&second)).await;
    assert!(next.ends_with(&format!("_{}", third.addr())), "{next}");
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "took over after {:?}: the Lease was not released",
        stopped.elapsed()
    );
}

/// The pods labelled `app=frozen` not being deleted, once there are `n`
/// (fails on more).
async fn frozen_pods(pods: &Api<Pod>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let active = pods
            .list(&ListParams::default().labels("app=frozen"))
            .await
            .expect("list pods")
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        assert!(
            active <= n,
            "{active} pods, more than {n}: one was made twice"
        );
        if active == n {
            return;
        }
        assert!(Instant::now() < deadline, "{active} pods, not {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_frozen_leader_is_replaced_and_no_pod_is_made_twice() {
    let etcd = Arc::new(EtcdCluster::start(1));
    let servers = [
        Server::with_etcd(Arc::clone(&etcd), &[]),
        Server::with_etcd(Arc::clone(&etcd), &[]),
    ];
    let first = leader(
        &Api::namespaced(servers[0].client().await, "kube-system"),
        None,
    )
    .await;
    let at = servers
        .iter()
        .position(|s| first.ends_with(&format!("_{}", s.addr())))
        .unwrap_or_else(|| panic!("leader {first} is neither server"));
    let other = &servers[1 - at];
    let client = other.client().await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "frozen"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "frozen"}},
            "template": {"metadata": {"labels": {"app": "frozen"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}},
    }))
    .expect("a ReplicaSet");
    sets.create(&PostParams::default(), &rs)
        .await
        .expect("create replicaset");
    frozen_pods(&pods, 4).await;

    // The leader freezes (SIGSTOP): the other takes over within the
    // lease and its retry, and carries out the scaling.
    servers[at].signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    sets.patch_scale(
        "frozen",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 6}})),
    )
    .await
    .expect("scale");
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let second = leader(&leases, Some(&first)).await;
    assert!(second.ends_with(&format!("_{}", other.addr())), "{second}");
    assert!(
        frozen_at.elapsed() < Duration::from_secs(15 + 2 + 3),
        "took over after {:?}",
        frozen_at.elapsed()
    );
    frozen_pods(&pods, 6).await;

    // Thawed, the old leader finds the Lease taken and stands down: the
    // count stays exact.
    servers[at].signal(libc::SIGCONT);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        frozen_pods(&pods, 6).await;
    }
    assert_eq!(leader(&leases, None).await, second, "one leader");
}
