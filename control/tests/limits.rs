//! What one request can make berth-control spend: bodies past the limit get
//! 413, a JSON patch that copies a document into itself is refused before
//! it grows, and objects larger than etcd takes are refused on both stores.
//! Real kubectl against a real server on loopback.

#[macro_use]
mod common;

use std::time::Instant;

use common::{Backend, Server};

/// The server's memory may grow this much over a test (KiB).
const RSS_GROWTH_LIMIT_KIB: u64 = 300 * 1024;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_json_patch_bomb_is_refused_and_the_server_keeps_answering() {
    let server = Server::start(&[]);
    let manifest = server.data_dir().join("../cm.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "target", "namespace": "default", "annotations": {"seed": "x"}}}"#,
    )
    .expect("write manifest");
    server.kubectl_ok(&["create", "-f", &manifest.display().to_string()]);
    let before = server.rss_kib();
    // One add of 2 KB, then 40 copies of the annotations into themselves:
    // 2 KB of request, 2^40 times that if applied.
    let mut ops = vec![format!(
        r#"{{"op": "add", "path": "/metadata/annotations/big", "value": "{}"}}"#,
        "y".repeat(2048)
    )];
    for i in 0..40 {
        ops.push(format!(
            r#"{{"op": "copy", "from": "/metadata/annotations", "path": "/metadata/annotations/c{i}"}}"#
        ));
    }
    let patch = format!("[{}]", ops.join(","));
    let started = Instant::now();
    let out = server.kubectl(&["patch", "configmap", "target", "--type=json", "-p", &patch]);
    assert!(!out.status.success(), "the patch bomb was applied");
    assert!(
        stderr(&out).contains("copy operations add up to more than"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < RSS_GROWTH_LIMIT_KIB, "RSS grew by {grown} KiB");
    // Nothing of it was stored, and the server answers as before.
    let annotations = server.kubectl_ok(&[
        "get",
        "configmap",
        "target",
        "-o",
        "jsonpath={.metadata.annotations}",
    ]);
    assert_eq!(annotations.trim(), r#"{"seed":"x"}"#);
    assert_eq!(server.kubectl_ok(&["get", "--raw", "/readyz"]).trim(), "ok");
}

/// `kubectl create` (validation off) of ConfigMap `name` holding `bytes`
/// bytes of data; returns kubectl's stderr after checking it failed.
fn create_refused(server: &Server, name: &str, bytes: usize) -> String {
    let manifest = server.data_dir().join(format!("../{name}.json"));
    std::fs::write(
        &manifest,
        format!(
            r#"{{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "{name}", "namespace": "default"}}, "data": {{"blob": "{}"}}}}"#,
            "z".repeat(bytes)
        ),
    )
    .expect("write manifest");
    let out = server.kubectl(&[
        "create",
        "--validate=false",
        "-f",
        &manifest.display().to_string(),
    ]);
    assert!(!out.status.success(), "{name} was created");
    stderr(&out)
}

#[test]
fn a_request_body_past_the_limit_gets_413() {
    let server = Server::start(&[]);
    // 10 MB of data in one ConfigMap: kubectl sends it, the server answers
    // 413 rather than cutting the connection.
    let err = create_refused(&server, "big", 10 * 1024 * 1024);
    assert!(
        err.contains("Request entity too large: limit is 3145728"),
        "{err}"
    );
    assert_eq!(server.kubectl_ok(&["get", "--raw", "/readyz"]).trim(), "ok");
}

/// An object under the body limit but over etcd's 1.5 MiB is refused with
/// the same 413 on both stores.
fn an_object_past_the_store_limit_is_refused(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let err = create_refused(&server, "large", 2 * 1024 * 1024);
    assert!(err.contains("limit is 1572864"), "{err}");
    let out = server.kubectl(&["get", "configmap", "large"]);
    assert!(!out.status.success(), "the object was stored");
}

on_both_stores_blocking!(an_object_past_the_store_limit_is_refused);

#[tokio::test]
async fn the_watch_history_is_bounded_by_bytes() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams, PostParams};

    let server = Server::start(&["--watch-history-bytes", "32000000"]);
    let client = server.client().await;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("fat".into());
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let before = server.rss_kib();
    // 200 writes of a 1 MB annotation: 400 MB of new and previous values if
    // the history kept them all (its count limit is 10 000).
    for i in 0..200u32 {
        let value = format!("{i:04}{}", "a".repeat(1_000_000));
        let patch = serde_json::json!({"metadata": {"annotations": {"blob": value}}});
        api.patch("fat", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
    }
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown < RSS_GROWTH_LIMIT_KIB,
        "RSS grew by {grown} KiB over 200 writes of 1 MB"
    );
}
