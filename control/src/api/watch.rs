//! Watches: a stream of JSON lines, one event each, strictly after the
//! requested resourceVersion.
//!
//! - No resourceVersion (or "0"): the current objects come first as ADDED
//!   events, then the changes after that list.
//! - `sendInitialEvents=true`: the same, closed by a BOOKMARK annotated
//!   `k8s.io/initial-events-end` (kube-rs' and client-go's streaming lists).
//! - A resourceVersion older than the kept history: HTTP 200 and one ERROR
//!   event with a 410 `Expired` Status, which makes clients relist.
//! - With selectors, an object that stops matching arrives as DELETED and
//!   one that starts matching as ADDED.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{table, Api};
use crate::error::ApiError;
use crate::object;
use crate::registry::Target;
use crate::resources::Resource;
use crate::selector::Selector;
use crate::store::{Event, EventKind, StoreError};

/// Watches without `timeoutSeconds` end after this long; clients re-watch.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Lines buffered for a slow client before the watch waits.
const LINE_BUFFER: usize = 64;

/// What a watch filters on and how it encodes.
struct Filter {
    labels: Selector,
    fields: Selector,
    table: bool,
    resource: &'static Resource,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_labels(obj) && self.fields.matches_fields(obj)
    }

    fn line(&self, kind: &str, obj: &Value) -> Bytes {
        let object = if self.table {
            json!({
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))},
                "columnDefinitions": table::column_definitions(self.resource.kind),
                "rows": [table::row(self.resource.kind, obj)],
            })
        } else {
            obj.clone()
        };
        encode(&json!({"type": kind, "object": object}))
    }

    fn bookmark(&self, revision: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        encode(&json!({
            "type": "BOOKMARK",
            "object": {"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": metadata},
        }))
    }
}

fn encode(value: &Value) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn expired_line(message: &str) -> Bytes {
    encode(&json!({"type": "ERROR", "object": ApiError::expired(message).status()}))
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    matches!(query.get(name).map(String::as_str), Some("true" | "1"))
}

/// Starts a watch and returns the streaming response.
pub(super) async fn serve(
    api: &Api,
    target: &Target,
    query: &HashMap<String, String>,
    table: bool,
) -> Result<Response, ApiError> {
    let mut fields = query.get("fieldSelector").cloned().unwrap_or_default();
    if let Some(name) = &target.name {
        // The old per-object watch path: same as a name field selector.
        if !fields.is_empty() {
            fields.push(',');
        }
        fields.push_str(&format!("metadata.name={name}"));
    }
    let filter = Filter {
        labels: Selector::labels(query.get("labelSelector").map_or("", String::as_str))?,
        fields: Selector::fields(&fields)?,
        table,
        resource: target.resource,
    };
    let bookmarks = flag(query, "allowWatchBookmarks");
    let send_initial = flag(query, "sendInitialEvents");
    if send_initial && !bookmarks {
        return Err(ApiError::invalid(
            "ListOptions",
            "",
            &[(
                "sendInitialEvents".into(),
                "Forbidden: sendInitialEvents requires allowWatchBookmarks=true".into(),
            )],
        ));
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request("timeoutSeconds must be a whole number"))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let requested = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .map(|rv| object::parse_resource_version(rv))
        .transpose()?;

    let prefix = target.prefix();
    let store = api.0.registry.store();
    let mut initial = Vec::new();
    let start = match requested {
        Some(rv) if !send_initial => rv,
        _ => {
            let (records, revision) = store
                .list(&prefix)
                .await
                .map_err(|e| ApiError::from_store(target.resource.plural, "", e))?;
            for record in &records {
                let obj = object::from_record(record)?;
                if filter.matches(&obj) {
                    initial.push(filter.line("ADDED", &obj));
                }
            }
            if send_initial {
                initial.push(filter.bookmark(revision, true));
            }
            revision
        }
    };

    let (tx, rx) = mpsc::channel::<Bytes>(LINE_BUFFER);
    // A resourceVersion the store has not reached yet cannot be honoured
    // either: the client must relist.
    let current = store
        .revision()
        .await
        .map_err(|e| ApiError::from_store(target.resource.plural, "", e))?;
    if start > current {
        let _ = tx.try_send(expired_line(&format!(
            "too large resource version: {start}, current: {current}"
        )));
        return Ok(stream_response(rx));
    }
    match store.watch(&prefix, start).await {
        Ok(events) => {
            let guard = api.0.metrics.watch_opened();
            let interval = api.0.config.bookmark_interval;
            tokio::spawn(async move {
                let _guard = guard;
                run(
                    filter,
                    initial,
                    events,
                    tx,
                    start,
                    timeout,
                    bookmarks.then_some(interval),
                )
                .await;
            });
        }
        Err(StoreError::Compacted { requested, oldest }) => {
            let message = format!("too old resource version: {requested} ({oldest})");
            // The line fits the fresh channel's buffer.
            let _ = tx.try_send(expired_line(&message));
        }
        Err(e) => return Err(ApiError::from_store(target.resource.plural, "", e)),
    }
    Ok(stream_response(rx))
}

/// The 200 response streaming the lines of `rx`.
fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Feeds one watch until its client leaves, it times out, or the store
/// drops it.
async fn run(
    filter: Filter,
    initial: Vec<Bytes>,
    mut events: crate::store::WatchStream,
    tx: mpsc::Sender<Bytes>,
    start: u64,
    timeout: Duration,
    bookmark_every: Option<Duration>,
) {
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    let mut last = start;
    loop {
        let line = tokio::select! {
            () = &mut deadline => return,
            () = tx.closed() => return,
            _ = ticker.tick(), if bookmark_every.is_some() => Some(filter.bookmark(last, false)),
            event = events.recv() => match event {
                Some(Ok(event)) => {
                    last = event.revision();
                    translate(&filter, &event)
                }
                // History is gone: the client must relist.
                Some(Err(e @ (StoreError::Compacted { .. } | StoreError::WatchLagged { .. }))) => {
                    let _ = tx.send(expired_line(&e.to_string())).await;
                    return;
                }
                // The store went away: end the stream; the client
                // re-watches from its last resourceVersion.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch ended by the store");
                    return;
                }
                None => return,
            },
        };
        if let Some(line) = line {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
}

/// The watch event a store event becomes for this filter, if any.
fn translate(filter: &Filter, event: &Event) -> Option<Bytes> {
    let obj = object::from_record(&event.record).ok()?;
    let was = event
        .prev
        .as_ref()
        .and_then(|p| object::from_record(p).ok())
        .is_some_and(|p| filter.matches(&p));
    match event.kind {
        EventKind::Delete => filter.matches(&obj).then(|| filter.line("DELETED", &obj)),
        EventKind::Put => match (was, filter.matches(&obj)) {
            (true, true) => Some(filter.line("MODIFIED", &obj)),
            (false, true) => Some(filter.line("ADDED", &obj)),
            (true, false) => Some(filter.line("DELETED", &obj)),
            (false, false) => None,
        },
    }
}
