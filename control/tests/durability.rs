//! kill -9 of berth-control in the middle of a stream of creates loses no
//! write it acknowledged.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Server;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::Api;

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start(&[]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let writer = tokio::spawn(async move {
        let mut acknowledged = BTreeSet::new();
        for i in 0.. {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(format!("cm-{i:05}")),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(created) => {
                    acknowledged.insert(created.metadata.name.unwrap_or_default());
                }
                // The server died: everything before this was acknowledged.
                Err(_) => return acknowledged,
            }
        }
        acknowledged
    });
    // Let a stream of creates run, then kill the server without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    let acknowledged = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer stops once the server is gone")
        .expect("writer task");
    assert!(
        acknowledged.len() > 10,
        "only {} creates before the kill",
        acknowledged.len()
    );

    server.restart();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let stored: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .expect("list after restart")
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name)
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}
