//! The real kubectl against a real berth-control: what an operator types.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Backend, Server};

on_both_stores_blocking!(
    create_apply_get_describe_scale_delete,
    get_watch_receives_a_change_made_by_another_command,
    bad_manifests_are_refused_with_readable_errors,
    the_kubernetes_service_has_this_servers_endpoint,
    replication_controllers_are_listed_and_scaled,
);

const APP: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
";

fn write_manifest(server: &Server, name: &str, text: &str) -> String {
    let path = server.data_dir().join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn create_apply_get_describe_scale_delete(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let manifest = write_manifest(&server, "app.yaml", APP);

    let created = server.kubectl_ok(&["create", "-f", &manifest]);
    assert!(created.contains("deployment.apps/web created"), "{created}");
    assert!(created.contains("service/web created"), "{created}");
    let again = server.kubectl(&["create", "-f", &manifest]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // apply twice: a change, then nothing to change.
    let changed = write_manifest(
        &server,
        "app2.yaml",
        &APP.replace("replicas: 2", "replicas: 4"),
    );
    let applied = server.kubectl_ok(&["apply", "-f", &changed]);
    assert!(
        applied.contains("deployment.apps/web configured"),
        "{applied}"
    );
    let replicas = server.kubectl_ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "4");
    let unchanged = server.kubectl_ok(&["apply", "-f", &changed]);
    assert!(
        unchanged.contains("deployment.apps/web unchanged"),
        "{unchanged}"
    );
    assert!(unchanged.contains("service/web unchanged"), "{unchanged}");

    // A fresh apply of a new object creates it.
    let other = write_manifest(
        &server,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: \"1\"}\n",
    );
    assert!(server
        .kubectl_ok(&["apply", "-f", &other])
        .contains("configmap/settings created"));
    // A ReplicaSet, which kubectl sends with strict field validation (the
    // defaults once added a Deployment-only field to it and were refused).
    let rs = write_manifest(
        &server,
        "rs.yaml",
        &APP.split_once("---")
            .map_or(APP, |(deployment, _)| deployment)
            .replace("kind: Deployment", "kind: ReplicaSet"),
    );
    let created = server.kubectl_ok(&["create", "-f", &rs]);
    assert!(created.contains("replicaset.apps/web created"), "{created}");

    // Tables with the columns users know.
    let deployments = server.kubectl_ok(&["get", "deployments"]);
    assert_eq!(
        header(&deployments),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert!(
        deployments.contains("web") && deployments.contains("0/4"),
        "{deployments}"
    );
    let services = server.kubectl_ok(&["get", "services"]);
    assert_eq!(
        header(&services),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let web_line = services
        .lines()
        .find(|l| l.starts_with("web "))
        .expect("web service row");
    assert!(
        web_line.contains("NodePort") && web_line.contains("80:3"),
        "{web_line}"
    );
    assert!(
        services.contains("kubernetes") && services.contains("10.96.0.1"),
        "{services}"
    );

    // A pod bound to a node shows IP and NODE with -o wide.
    let pod = write_manifest(
        &server,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, labels: {app: web}}\nspec:\n  nodeName: node-a\n  containers: [{name: web, image: busybox}]\n",
    );
    server.kubectl_ok(&["create", "-f", &pod]);
    let pods = server.kubectl_ok(&["get", "pods", "-o", "wide"]);
    assert_eq!(
        header(&pods),
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ]
    );
    assert!(
        pods.contains("node-a") && pods.contains("Pending"),
        "{pods}"
    );
    let narrow = server.kubectl_ok(&["get", "pods"]);
    assert_eq!(
        header(&narrow),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );

    let slice = write_manifest(
        &server,
        "slice.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 8080, protocol: TCP}]\nendpoints: [{addresses: [10.244.1.5]}]\n",
    );
    server.kubectl_ok(&["create", "-f", &slice]);
    let slices = server.kubectl_ok(&["get", "endpointslices"]);
    assert_eq!(
        header(&slices),
        ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    );
    assert!(
        slices.contains("10.244.1.5") && slices.contains("8080"),
        "{slices}"
    );
    let nodes = server.kubectl_ok(&["get", "nodes"]);
    assert!(
        nodes.contains("No resources found") || nodes.is_empty(),
        "{nodes}"
    );

    // -o yaml carries what the server owns.
    let yaml = server.kubectl_ok(&["get", "deployment", "web", "-o", "yaml"]);
    for field in [
        "uid:",
        "resourceVersion:",
        "creationTimestamp:",
        "generation: 2",
        "replicas: 4",
    ] {
        assert!(yaml.contains(field), "{field} missing from:\n{yaml}");
    }

    let described = server.kubectl_ok(&["describe", "service", "web"]);
    assert!(
        described.contains("Type:") && described.contains("NodePort"),
        "{described}"
    );
    assert!(described.contains("IP:"), "{described}");
    let described = server.kubectl_ok(&["describe", "deployment", "web"]);
    assert!(
        described.contains("Replicas:") && described.contains("4 desired"),
        "{described}"
    );

    assert!(server
        .kubectl_ok(&["scale", "deployment", "web", "--replicas=7"])
        .contains("scaled"));
    let replicas = server.kubectl_ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "7");

    // Health and metrics where an operator looks for them.
    assert_eq!(server.kubectl_ok(&["get", "--raw", "/readyz"]), "ok");
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains(
            "apiserver_request_total{verb=\"patch\",resource=\"deployments/scale\",code=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("apiserver_storage_size_bytes"),
        "{metrics}"
    );

    // delete waits until the objects are gone.
    let deleted = server.kubectl_ok(&["delete", "-f", &manifest]);
    assert!(
        deleted.contains("deployment.apps \"web\" deleted"),
        "{deleted}"
    );
    let missing = server.kubectl(&["get", "deployment", "web"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
}

fn get_watch_receives_a_change_made_by_another_command(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let manifest = write_manifest(&server, "app.yaml", APP);
    server.kubectl_ok(&["create", "-f", &manifest]);

    let mut watch = server
        .kubectl_command(&["get", "deployments", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("header");
    assert!(first.starts_with("NAME"), "{first}");
    let row = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("initial row");
    assert!(row.contains("0/2"), "{row}");

    server.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
            if seen.last().is_some_and(|l| l.contains("0/3")) {
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("web") && l.contains("0/3")),
        "{seen:?}"
    );
}

fn bad_manifests_are_refused_with_readable_errors(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let unknown = write_manifest(
        &server,
        "unknown.yaml",
        &APP.replace("replicas: 2", "replicaz: 2"),
    );
    let out = server.kubectl(&["create", "-f", &unknown]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"spec.replicaz\""), "{err}");

    let mismatch = write_manifest(
        &server,
        "mismatch.yaml",
        &APP.replace(
            "labels: {app: web}\n    spec",
            "labels: {app: other}\n    spec",
        ),
    );
    let out = server.kubectl(&["create", "-f", &mismatch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is invalid") && err.contains("selector"),
        "{err}"
    );

    let mut broken = server
        .kubectl_command(&["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    broken
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"kind: [")
        .expect("write");
    let out = broken.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error"));

    // A NodePort out of range, negative included.
    let negative = write_manifest(
        &server,
        "negative.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: neg}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: -5}]\n",
    );
    let out = server.kubectl(&["create", "-f", &negative]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.ports[0].nodePort"), "{err}");

    // Nothing of the refused objects was stored.
    let all = server.kubectl_ok(&["get", "deployments", "-o", "name"]);
    assert_eq!(all.trim(), "");
    let services = server.kubectl_ok(&["get", "services", "-o", "name"]);
    assert!(!services.contains("neg"), "{services}");

    // With validation at warn, an unknown field is reported and dropped,
    // as kube-apiserver drops it.
    let deployment_only = APP.split("---").next().expect("deployment");
    let unknown = write_manifest(
        &server,
        "unknown-deployment.yaml",
        &deployment_only.replace("replicas: 2", "replicaz: 2"),
    );
    let out = server.kubectl(&["create", "--validate=warn", "-f", &unknown]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("unknown field 'spec.replicaz'"), "{err}");
    let stored = server.kubectl_ok(&["get", "deployment", "web", "-o", "json"]);
    assert!(!stored.contains("replicaz"), "{stored}");
}

fn the_kubernetes_service_has_this_servers_endpoint(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let port = server.addr().port().to_string();
    let expected = format!("127.0.0.1 {port} kubernetes");
    // The controller writes it, and writes it again when it is changed or
    // deleted.
    let slice = || {
        server
            .kubectl(&[
                "get", "endpointslice", "kubernetes", "-n", "default", "-o",
                "jsonpath={.endpoints[0].addresses[0]} {.ports[0].port} {.metadata.labels.kubernetes\\.io/service-name}",
            ])
            .stdout
    };
    let eventually = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = String::from_utf8_lossy(&slice()).trim().to_string();
            if out == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {out:?}, not {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    eventually("at start");
    server.kubectl_ok(&[
        "patch",
        "endpointslice",
        "kubernetes",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"endpoints":[{"addresses":["10.9.9.9"]}]}"#,
    ]);
    eventually("after a change");
    server.kubectl_ok(&["delete", "endpointslice", "kubernetes", "-n", "default"]);
    eventually("after a delete");
    let target = server.kubectl_ok(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.ports[0].targetPort}",
    ]);
    assert_eq!(target.trim(), port);
}

/// Waits until `kubectl get pods -l <selector> -o name` lists `n` pods.
fn pods_become(server: &Server, selector: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = server.kubectl_ok(&["get", "pods", "-l", selector, "-o", "name"]);
        if listed.lines().count() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} pods for {selector}: {listed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn replication_controllers_are_listed_and_scaled(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    // As the seed documents write one: no selector (it defaults to the
    // template's labels).
    let rc = write_manifest(
        &server,
        "rc.yaml",
        "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: webapp}\n\
         spec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: webapp}}\n\
         \x20   spec:\n      containers:\n      - {name: web, image: busybox:1.36}\n",
    );
    let created = server.kubectl_ok(&["create", "-f", &rc]);
    assert!(
        created.contains("replicationcontroller/webapp created"),
        "{created}"
    );
    pods_become(&server, "app=webapp", 2);
    let listed = server.kubectl_ok(&["get", "rc"]);
    assert_eq!(
        header(&listed),
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    );
    let wide = server.kubectl_ok(&["get", "rc", "webapp", "-o", "wide"]);
    assert!(
        wide.contains("app=webapp"),
        "the defaulted selector: {wide}"
    );
    let scaled = server.kubectl_ok(&["scale", "rc", "webapp", "--replicas=3"]);
    assert!(
        scaled.contains("replicationcontroller/webapp scaled"),
        "{scaled}"
    );
    pods_become(&server, "app=webapp", 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = server.kubectl_ok(&["get", "rc", "webapp", "--no-headers"]);
        let cells: Vec<&str> = row.split_whitespace().collect();
        if cells.get(1..3) == Some(&["3", "3"][..]) {
            break;
        }
        assert!(Instant::now() < deadline, "desired and current 3: {row}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deleted = server.kubectl_ok(&["delete", "rc", "webapp"]);
    assert!(deleted.contains("\"webapp\" deleted"), "{deleted}");
    pods_become(&server, "app=webapp", 0);
}
