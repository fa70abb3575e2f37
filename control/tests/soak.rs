//! A soak test of berth-control (ignored by default; `cargo xtask soak`
//! runs it): for `BERTH_SOAK_SECONDS` (600) on loopback, writers create,
//! update and delete ConfigMaps, watchers follow them, bad requests (invalid
//! objects, patch bombs, oversized bodies) and idle connections arrive all
//! the while. Afterwards: no answer was a 5xx, every acknowledged write is
//! readable, and the server's RSS after warm-up stayed within a bound.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::Api;
use serde_json::json;

/// RSS may grow this much past its level at the end of warm-up (KiB).
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;
/// Writers, each with its own ConfigMaps.
const WRITERS: usize = 4;
/// ConfigMaps per writer.
const NAMES_PER_WRITER: usize = 20;

/// What the soak saw.
#[derive(Default)]
struct Tally {
    writes: AtomicU64,
    refused: AtomicU64,
    server_errors: AtomicU64,
    watch_events: AtomicU64,
}

impl Tally {
    fn count<T>(&self, result: &Result<T, kube::Error>) {
        match result {
            Ok(_) => self.writes.fetch_add(1, Ordering::Relaxed),
            Err(kube::Error::Api(s)) if s.code >= 500 => {
                self.server_errors.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => self.refused.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": value}}))
        .expect("config map")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs for BERTH_SOAK_SECONDS (600); `cargo xtask soak` runs it"]
async fn the_server_holds_up_under_mixed_load() {
    let seconds: u64 = std::env::var("BERTH_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let total = Duration::from_secs(seconds);
    let server = Arc::new(Server::start(&[
        "--tls-handshake-timeout",
        "2s",
        "--idle-connection-timeout",
        "5s",
    ]));
    let client = server.client().await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    // What each acknowledged write left: name -> value (None: deleted).
    let acked: Arc<Mutex<BTreeMap<String, Option<String>>>> = Arc::default();
    let mut tasks = Vec::new();

    for w in 0..WRITERS {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let (tally, stop, acked) = (tally.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let name = format!("w{w}-{}", round as usize % NAMES_PER_WRITER);
                let value = format!("{round}");
                let result = match round % 3 {
                    0 => api
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| None),
                    _ => {
                        let cm = config_map(&name, &value);
                        match api.create(&PostParams::default(), &cm).await {
                            Err(kube::Error::Api(s)) if s.code == 409 => {
                                let patch = json!({"data": {"v": value}});
                                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                                    .await
                                    .map(|_| Some(value.clone()))
                            }
                            other => other.map(|_| Some(value.clone())),
                        }
                    }
                };
                if let Ok(left) = &result {
                    acked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name, left.clone());
                }
                tally.count(&result);
            }
        }));
    }

    for _ in 0..3 {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(stream) = api.watch(&WatchParams::default().timeout(20), "0").await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut stream = stream.boxed();
                while let Some(event) = stream.next().await {
                    if matches!(
                        event,
                        Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_))
                    ) {
                        tally.watch_events.fetch_add(1, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }));
    }

    {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let bomb: Vec<serde_json::Value> = std::iter::once(
                json!({"op": "add", "path": "/metadata/annotations", "value": {"a": "y".repeat(2000)}}),
            )
            .chain((0..40).map(|i| {
                json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}")})
            }))
            .collect();
            let huge = config_map("huge", &"h".repeat(4 * 1024 * 1024));
            let invalid = config_map("Not A Name", "x");
            while !stop.load(Ordering::Relaxed) {
                let r = api.create(&PostParams::default(), &invalid).await;
                tally.count(&r);
                let r = api.create(&PostParams::default(), &huge).await;
                tally.count(&r);
                let r = api
                    .patch("w0-1", &PatchParams::default(), &Patch::<()>::Json(serde_json::from_value::<json_patch::Patch>(json!(bomb)).expect("patch")))
                    .await;
                tally.count(&r);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    {
        let (server, stop) = (server.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let idle: Vec<_> = (0..100)
                    .filter_map(|_| std::net::TcpStream::connect(server.addr()).ok())
                    .collect();
                tokio::time::sleep(Duration::from_secs(3)).await;
                drop(idle);
            }
        }));
    }

    let started = Instant::now();
    let warm_up = total / 5;
    tokio::time::sleep(warm_up).await;
    let baseline = server.rss_kib();
    let mut peak = baseline;
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(server.rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }

    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (name, value) in &acked {
        let found = api.get_opt(name).await.expect("read back");
        let found = found
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("v").cloned());
        assert_eq!(
            &found, value,
            "{name}: the last acknowledged write is not what is stored"
        );
    }
    let writes = tally.writes.load(Ordering::Relaxed);
    eprintln!(
        "soak {seconds} s: {writes} writes, {} refused, {} watch events, {} names checked, RSS {baseline} KiB after warm-up, peak {peak} KiB",
        tally.refused.load(Ordering::Relaxed),
        tally.watch_events.load(Ordering::Relaxed),
        acked.len()
    );
    assert_eq!(
        tally.server_errors.load(Ordering::Relaxed),
        0,
        "5xx answers"
    );
    assert!(writes > 0 && tally.watch_events.load(Ordering::Relaxed) > 0);
    assert!(
        peak <= baseline + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {baseline} to {peak} KiB after warm-up"
    );
    assert!(server.rss_kib() > 0, "the server is still running");
}
