//! The `kube` crate's watcher and reflector against berth-control: events
//! in order, a server restart survived, a 410 answered by a relist.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Backend, Server};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;

on_both_stores!(
    the_watcher_sees_adds_updates_and_deletes_in_order,
    streaming_lists_end_their_initial_events_with_a_bookmark,
);

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    }
}

/// The next watcher event, failing the test after a while.
async fn next<S: Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin>(
    stream: &mut S,
) -> watcher::Event<ConfigMap> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(event))) => return event,
            // Connection errors while the server restarts: the watcher retries.
            Ok(Some(Err(_))) => continue,
            Ok(None) => panic!("watch stream ended"),
            Err(_) => panic!("no watch event within 20 s"),
        }
    }
}

fn describe(event: &watcher::Event<ConfigMap>) -> String {
    let name = |cm: &ConfigMap| cm.metadata.name.clone().unwrap_or_default();
    let value = |cm: &ConfigMap| {
        cm.data
            .as_ref()
            .and_then(|d| d.get("v").cloned())
            .unwrap_or_default()
    };
    match event {
        watcher::Event::Apply(cm) => format!("apply {}={}", name(cm), value(cm)),
        watcher::Event::Delete(cm) => format!("delete {}", name(cm)),
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(cm) => format!("init-apply {}={}", name(cm), value(cm)),
        watcher::Event::InitDone => "init-done".into(),
    }
}

async fn the_watcher_sees_adds_updates_and_deletes_in_order(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &config_map("before", "0"))
        .await
        .expect("create");

    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(describe(&next(&mut events).await), "init");
    assert_eq!(describe(&next(&mut events).await), "init-apply before=0");
    assert_eq!(describe(&next(&mut events).await), "init-done");

    api.create(&PostParams::default(), &config_map("a", "1"))
        .await
        .expect("create a");
    let patch = serde_json::json!({"data": {"v": "2"}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch a");
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete a");
    api.delete("before", &DeleteParams::default())
        .await
        .expect("delete before");

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(describe(&next(&mut events).await));
    }
    assert_eq!(
        seen,
        ["apply a=1", "apply a=2", "delete a", "delete before"]
    );
}

#[tokio::test]
async fn the_reflector_survives_a_restart_and_relists_after_410() {
    // A history of one event: a watcher that missed two must relist.
    let mut server = Server::start(&["--watch-history", "1"]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    for name in ["one", "two"] {
        api.create(&PostParams::default(), &config_map(name, "1"))
            .await
            .expect("create");
    }
    let (reader, writer) = reflector::store();
    let mut stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    // Drive the stream until the store holds the list.
    let ready = reader.clone();
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            _ = ready.wait_until_ready() => {},
            _ = async { while stream.next().await.is_some() {} } => {},
        }
    })
    .await;
    assert!(waited.is_ok(), "the reflector never became ready");
    let names = |r: &reflector::Store<ConfigMap>| {
        let mut n: Vec<String> = r
            .state()
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&reader), ["one", "two"]);

    // While the reflector is not polled: restart the server, then make more
    // changes than the history keeps.
    server.restart();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    api.delete("one", &DeleteParams::default())
        .await
        .expect("delete one");
    api.create(&PostParams::default(), &config_map("three", "1"))
        .await
        .expect("create three");
    api.create(&PostParams::default(), &config_map("four", "1"))
        .await
        .expect("create four");

    // Resuming from its old resourceVersion gets 410; the relist repairs it.
    let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if names(&reader) == ["four", "three", "two"] {
                return;
            }
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

    // And live events flow again after the relist.
    api.create(&PostParams::default(), &config_map("five", "1"))
        .await
        .expect("create five");
    let live = tokio::time::timeout(Duration::from_secs(20), async {
        while !names(&reader).contains(&"five".to_string()) {
            tokio::select! {
                _ = stream.next() => {},
                () = tokio::time::sleep(Duration::from_millis(50)) => {},
            }
        }
    })
    .await;
    assert!(live.is_ok(), "reflector holds {:?}", names(&reader));
}

#[tokio::test]
async fn a_watch_from_a_forgotten_revision_gets_410_expired() {
    let server = Server::start(&["--watch-history", "2"]);
    let client = server.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..5 {
        api.create(&PostParams::default(), &config_map(&format!("c{i}"), "1"))
            .await
            .expect("create");
    }
    let params = kube::api::WatchParams::default();
    let mut stream = api
        .watch(&params, "1")
        .await
        .expect("the watch itself answers 200")
        .boxed();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event")
        .expect("not the end")
        .expect("a well-formed event");
    match event {
        kube::api::WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

async fn streaming_lists_end_their_initial_events_with_a_bookmark(backend: Backend) {
    let server = Server::start_on(backend, &[]);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    api.create(&PostParams::default(), &config_map("listed", "1"))
        .await
        .expect("create");
    // sendInitialEvents=true: ADDED events, then the initial-events-end
    // bookmark, which kube-rs turns into InitDone.
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("init-done") {
        seen.push(describe(&next(&mut events).await));
    }
    assert_eq!(seen, ["init", "init-apply listed=1", "init-done"]);
    api.create(&PostParams::default(), &config_map("live", "1"))
        .await
        .expect("create");
    assert_eq!(describe(&next(&mut events).await), "apply live=1");
}
