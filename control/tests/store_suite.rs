//! One suite of store behaviour, run against the embedded store and
//! against a real etcd.

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_control::store::{EmbeddedStore, EtcdConfig, EtcdStore, EventKind, Store, StoreError};
use common::etcd::EtcdCluster;

async fn etcd_store(etcd: &EtcdCluster) -> Arc<dyn Store> {
    let config = EtcdConfig {
        endpoints: etcd.endpoints().split(',').map(String::from).collect(),
        prefix: "/registry".into(),
        tls: None,
        request_timeout: Duration::from_secs(5),
        compaction_interval: None,
    };
    Arc::new(EtcdStore::connect(&config).await.expect("connect to etcd"))
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = std::sync::Arc::new(super::EmbeddedStore::open(
                        dir.path(),
                        berth_control::store::HistoryLimits { events: 1000, bytes: 64 << 20 },
                    ).expect("open"));
                    super::$name(store).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $name() {
                    let etcd = super::EtcdCluster::start(1);
                    super::$name(super::etcd_store(&etcd).await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    writes_respect_preconditions,
    lists_are_per_prefix_and_sorted,
    watches_deliver_every_change_in_order
);

async fn writes_respect_preconditions(store: Arc<dyn Store>) {
    let a = store
        .create("/registry/pods/default/a", b"1".to_vec())
        .await
        .expect("create");
    assert_eq!(a.create_revision, a.mod_revision);
    assert!(matches!(
        store
            .create("/registry/pods/default/a", b"x".to_vec())
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let a2 = store
        .update(
            "/registry/pods/default/a",
            b"2".to_vec(),
            Some(a.mod_revision),
        )
        .await
        .expect("update");
    assert!(a2.mod_revision > a.mod_revision);
    assert_eq!(a2.create_revision, a.create_revision);
    match store
        .update(
            "/registry/pods/default/a",
            b"3".to_vec(),
            Some(a.mod_revision),
        )
        .await
    {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (a.mod_revision, a2.mod_revision));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        store
            .update("/registry/pods/default/none", b"3".to_vec(), None)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let got = store
        .get("/registry/pods/default/a")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (&*got.value, got.mod_revision),
        (&b"2"[..], a2.mod_revision)
    );
    assert!(matches!(
        store
            .delete("/registry/pods/default/a", Some(a.mod_revision))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let gone = store
        .delete("/registry/pods/default/a", None)
        .await
        .expect("delete");
    assert_eq!(&*gone.value, b"2");
    assert!(gone.mod_revision > a2.mod_revision);
    assert_eq!(
        store.get("/registry/pods/default/a").await.expect("get"),
        None
    );
    assert!(matches!(
        store.delete("/registry/pods/default/a", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.revision().await.expect("revision"), gone.mod_revision);
}

async fn lists_are_per_prefix_and_sorted(store: Arc<dyn Store>) {
    for key in [
        "/registry/pods/b/2",
        "/registry/pods/a/1",
        "/registry/podsx/a/1",
        "/registry/services/a/1",
    ] {
        store
            .create(key, key.as_bytes().to_vec())
            .await
            .expect("create");
    }
    let (pods, revision) = store.list("/registry/pods/").await.expect("list");
    let keys: Vec<&str> = pods.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["/registry/pods/a/1", "/registry/pods/b/2"]);
    assert_eq!(revision, store.revision().await.expect("revision"));
    let (in_a, _) = store.list("/registry/pods/a/").await.expect("list");
    assert_eq!(in_a.len(), 1);
}

async fn watches_deliver_every_change_in_order(store: Arc<dyn Store>) {
    let start = store
        .create("/registry/cm/d/a", b"a1".to_vec())
        .await
        .expect("create")
        .mod_revision;
    let mut watch = store.watch("/registry/cm/", start).await.expect("watch");
    store
        .update("/registry/cm/d/a", b"a2".to_vec(), None)
        .await
        .expect("update");
    store
        .create("/registry/other/x", b"x".to_vec())
        .await
        .expect("create");
    store
        .create("/registry/cm/d/b", b"b1".to_vec())
        .await
        .expect("create");
    store
        .delete("/registry/cm/d/a", None)
        .await
        .expect("delete");
    let mut seen = Vec::new();
    let mut last = start;
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("no error");
        assert!(event.revision() > last, "revisions increase");
        last = event.revision();
        let value = String::from_utf8_lossy(&event.record.value).into_owned();
        let prev = event
            .prev
            .map(|p| String::from_utf8_lossy(&p.value).into_owned());
        seen.push((event.kind, event.record.key, value, prev));
    }
    assert_eq!(
        seen,
        [
            (
                EventKind::Put,
                "/registry/cm/d/a".into(),
                "a2".into(),
                Some("a1".into())
            ),
            (EventKind::Put, "/registry/cm/d/b".into(), "b1".into(), None),
            (
                EventKind::Delete,
                "/registry/cm/d/a".into(),
                "a2".into(),
                Some("a2".into())
            ),
        ]
    );
}

#[tokio::test]
async fn etcd_reports_a_compacted_revision() {
    let etcd = EtcdCluster::start(1);
    let store = etcd_store(&etcd).await;
    let first = store
        .create("/registry/cm/d/a", b"1".to_vec())
        .await
        .expect("create")
        .mod_revision;
    let last = store
        .update("/registry/cm/d/a", b"2".to_vec(), None)
        .await
        .expect("update")
        .mod_revision;
    let mut client =
        etcd_client::Client::connect(etcd.endpoints().split(',').collect::<Vec<_>>(), None)
            .await
            .expect("etcd client");
    client
        .compact(i64::try_from(last).expect("revision"), None)
        .await
        .expect("compact");
    assert!(matches!(
        store.watch("/registry/cm/", first).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(store.watch("/registry/cm/", last).await.is_ok());
}

#[tokio::test]
async fn etcd_unreachable_is_unavailable_not_a_hang() {
    let etcd = EtcdCluster::start(1);
    let store = etcd_store(&etcd).await;
    store
        .create("/registry/cm/d/a", b"1".to_vec())
        .await
        .expect("create");
    etcd.kill(0);
    let started = std::time::Instant::now();
    let result = store.get("/registry/cm/d/a").await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed within its deadline"
    );
    etcd.restart(0);
    // The client reconnects by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.get("/registry/cm/d/a").await {
            Ok(Some(r)) => {
                assert_eq!(&*r.value, b"1");
                break;
            }
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never recovered: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
