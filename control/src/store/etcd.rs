//! The etcd backend: the store of clusters with several control-plane
//! machines, on etcd's v3 API.
//!
//! - Keys: the store's `/registry/...` keys with `/registry` replaced by the
//!   configured prefix (by default unchanged, as Kubernetes lays them out).
//! - Revisions are etcd's: resourceVersion = mod_revision.
//! - create is a transaction on `mod_revision == 0`; update and delete
//!   compare mod_revision with the caller's resourceVersion (or only that
//!   the key exists), so concurrent API servers never overwrite each other.
//! - Watches are etcd watches from a revision, with the previous value of
//!   each key; a compacted revision is reported as `Compacted` (the API's
//!   410). A compaction task keeps history for one interval.
//! - Every call has a deadline: an unreachable etcd makes requests fail
//!   fast with `Unavailable` (the API's 503), and the client reconnects by
//!   itself when etcd returns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, TlsOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{Event, EventKind, Record, Revision, Store, StoreError, WatchStream};

/// The prefix the store's keys are written with.
const STORE_PREFIX: &str = "/registry";
/// Events a watcher's channel buffers.
const WATCH_BUFFER: usize = 256;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix replacing `/registry`.
    pub prefix: String,
    /// TLS: CA certificate (PEM) to trust, and an optional client
    /// certificate and key (PEM).
    pub tls: Option<EtcdTls>,
    /// Deadline of every request.
    pub request_timeout: Duration,
    /// How often history older than the previous run is compacted (None:
    /// never).
    pub compaction_interval: Option<Duration>,
}

/// TLS material for etcd.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA certificate, PEM.
    pub ca: Vec<u8>,
    /// Client certificate and key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The etcd store.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connects (lazily: an unreachable etcd is reported by each request,
    /// not here) and starts the compaction task if configured.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoint given".into()));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(config.request_timeout)
            .with_connect_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            let mut options_tls =
                TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                options_tls = options_tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(options_tls);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("connecting to etcd {:?}: {e}", config.endpoints))
            })?;
        let store = EtcdStore {
            client,
            prefix: Arc::from(config.prefix.trim_end_matches('/')),
            timeout: config.request_timeout,
        };
        if let Some(interval) = config.compaction_interval {
            tokio::spawn(compact_periodically(store.client.clone(), interval));
        }
        Ok(store)
    }

    /// Runs one etcd call under the request deadline. (The client's own
    /// timeout does not cover waiting for a connection, which is what an
    /// unreachable etcd makes it do.)
    async fn call<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| map_err(op, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd {op}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// The etcd key of a store key.
    fn etcd_key(&self, key: &str) -> String {
        match key.strip_prefix(STORE_PREFIX) {
            Some(rest) => format!("{}{rest}", self.prefix),
            None => format!("{}{key}", self.prefix),
        }
    }

    /// The store key of an etcd key.
    fn store_key(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        match key.strip_prefix(&*self.prefix) {
            Some(rest) => format!("{STORE_PREFIX}{rest}"),
            None => key.into_owned(),
        }
    }

    fn record(&self, kv: &KeyValue) -> Record {
        Record {
            key: self.store_key(kv.key()),
            value: Arc::from(kv.value()),
            create_revision: revision(kv.create_revision()),
            mod_revision: revision(kv.mod_revision()),
        }
    }

    /// Runs a transaction that writes when `compare` holds; otherwise reads
    /// the key to tell why not.
    async fn guarded(
        &self,
        key: &str,
        compare: Compare,
        write: TxnOp,
    ) -> Result<(bool, Revision, Option<Record>, Option<Record>), StoreError> {
        let etcd_key = self.etcd_key(key);
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::get(etcd_key.clone(), None), write])
            .or_else([TxnOp::get(etcd_key, None)]);
        let response = self
            .call("transaction", self.client.clone().txn(txn))
            .await?;
        let header_revision = revision(response.header().map_or(0, |h| h.revision()));
        let mut before = None;
        let mut prev_of_delete = None;
        for op in response.op_responses() {
            match op {
                TxnOpResponse::Get(get) => before = get.kvs().first().map(|kv| self.record(kv)),
                TxnOpResponse::Delete(delete) => {
                    prev_of_delete = delete.prev_kvs().first().map(|kv| self.record(kv));
                }
                _ => {}
            }
        }
        Ok((
            response.succeeded(),
            header_revision,
            before,
            prev_of_delete,
        ))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let response = self
            .call("get", self.client.clone().get(self.etcd_key(key), None))
            .await?;
        Ok(response.kvs().first().map(|kv| self.record(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Record>, Revision), StoreError> {
        let options = GetOptions::new().with_prefix();
        let response = self
            .call(
                "list",
                self.client
                    .clone()
                    .get(self.etcd_key(prefix), Some(options)),
            )
            .await?;
        let revision = revision(response.header().map_or(0, |h| h.revision()));
        let mut records: Vec<Record> = response.kvs().iter().map(|kv| self.record(kv)).collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((records, revision))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Record, StoreError> {
        let etcd_key = self.etcd_key(key);
        let (ok, rev, _, _) = self
            .guarded(
                key,
                Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, 0),
                TxnOp::put(etcd_key, value.clone(), None),
            )
            .await?;
        if !ok {
            return Err(StoreError::AlreadyExists { key: key.into() });
        }
        Ok(Record {
            key: key.into(),
            value: Arc::from(value.as_slice()),
            create_revision: rev,
            mod_revision: rev,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Record, StoreError> {
        let etcd_key = self.etcd_key(key);
        let compare = match expected {
            Some(rev) => Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, signed(rev)),
            None => Compare::create_revision(etcd_key.clone(), CompareOp::Greater, 0),
        };
        let (ok, rev, before, _) = self
            .guarded(key, compare, TxnOp::put(etcd_key, value.clone(), None))
            .await?;
        if !ok {
            return Err(refusal(key, before, expected));
        }
        let create_revision = before.map_or(rev, |b| b.create_revision);
        Ok(Record {
            key: key.into(),
            value: Arc::from(value.as_slice()),
            create_revision,
            mod_revision: rev,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Record, StoreError> {
        let etcd_key = self.etcd_key(key);
        let compare = match expected {
            Some(rev) => Compare::mod_revision(etcd_key.clone(), CompareOp::Equal, signed(rev)),
            None => Compare::create_revision(etcd_key.clone(), CompareOp::Greater, 0),
        };
        let delete = TxnOp::delete(
            etcd_key,
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        );
        let (ok, rev, before, prev) = self.guarded(key, compare, delete).await?;
        if !ok {
            return Err(refusal(key, before, expected));
        }
        let last = prev
            .or(before)
            .ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        Ok(Record {
            mod_revision: rev,
            ..last
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // etcd reports a compacted start revision only after confirming the
        // watch; a read at that revision tells at once.
        if after > 0 {
            let at = GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_revision(signed(after));
            match self
                .call(
                    "watch",
                    self.client.clone().get(self.etcd_key(prefix), Some(at)),
                )
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    return Err(match e {
                        StoreError::Compacted { oldest, .. } => StoreError::Compacted {
                            requested: after,
                            oldest,
                        },
                        other => other,
                    })
                }
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(signed(after + 1));
        let mut stream = self
            .call(
                "watch",
                self.client
                    .clone()
                    .watch(self.etcd_key(prefix), Some(options)),
            )
            .await?;
        // The first response confirms the watch or reports a compaction.
        let first = self.call("watch", stream.message()).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        if let Some(first) = &first {
            if first.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    requested: after,
                    oldest: revision(first.compact_revision()),
                });
            }
        }
        tokio::spawn(async move {
            let mut pending = first;
            loop {
                let response = match pending.take() {
                    Some(r) => r,
                    None => {
                        let next = tokio::select! {
                            next = stream.message() => next,
                            () = tx.closed() => return,
                        };
                        match next {
                            Ok(Some(r)) => r,
                            Ok(None) => return,
                            Err(e) => {
                                let _ = tx.send(Err(map_err("watch", e))).await;
                                return;
                            }
                        }
                    }
                };
                if response.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: after,
                            oldest: revision(response.compact_revision()),
                        }))
                        .await;
                    return;
                }
                if response.canceled() {
                    let reason = response.cancel_reason().to_string();
                    let _ = tx
                        .send(Err(StoreError::Unavailable(format!(
                            "etcd cancelled the watch: {reason}"
                        ))))
                        .await;
                    return;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let prev = event.prev_kv().map(|p| store.record(p));
                    let (kind, record) = match event.event_type() {
                        EventType::Put => (EventKind::Put, store.record(kv)),
                        EventType::Delete => {
                            // etcd's delete event has the key only: carry
                            // the last value, at the deletion's revision.
                            // Without it (compacted away) the watcher cannot
                            // be told what was deleted: make it relist.
                            let Some(mut last) = prev.clone() else {
                                let _ = tx
                                    .send(Err(StoreError::Compacted {
                                        requested: after,
                                        oldest: revision(kv.mod_revision()),
                                    }))
                                    .await;
                                return;
                            };
                            last.mod_revision = revision(kv.mod_revision());
                            (EventKind::Delete, last)
                        }
                    };
                    if tx.send(Ok(Event { kind, record, prev })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let key = self.etcd_key(&format!("{STORE_PREFIX}/"));
        let response = self
            .call("read revision", self.client.clone().get(key, Some(options)))
            .await?;
        Ok(revision(response.header().map_or(0, |h| h.revision())))
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let status = self.call("status", self.client.clone().status()).await?;
        Ok(u64::try_from(status.db_size()).unwrap_or(0))
    }
}

/// Why a guarded write was refused: the key is gone, or at another revision.
fn refusal(key: &str, current: Option<Record>, expected: Option<Revision>) -> StoreError {
    match (current, expected) {
        (None, _) => StoreError::NotFound { key: key.into() },
        (Some(current), Some(expected)) => StoreError::Conflict {
            key: key.into(),
            expected,
            actual: current.mod_revision,
        },
        (Some(_), None) => StoreError::Backend {
            op: "write",
            message: format!("{key}: refused although it exists"),
        },
    }
}

/// Every `interval`, compacts history up to the revision seen one interval
/// before (as kube-apiserver does), so watches can resume across a short
/// disconnect but history does not grow without bound. Several API
/// servers doing this is harmless: compacting twice is refused and ignored.
async fn compact_periodically(client: Client, interval: Duration) {
    let mut previous: Option<i64> = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let current = match client.clone().status().await {
            Ok(status) => status.header().map_or(0, |h| h.revision()),
            Err(e) => {
                tracing::debug!(error = %e, "etcd status for compaction");
                continue;
            }
        };
        if let Some(target) = previous.filter(|p| *p > 0) {
            match client.clone().compact(target, None).await {
                Ok(_) => tracing::debug!(revision = target, "compacted etcd history"),
                Err(e) => tracing::debug!(revision = target, error = %e, "etcd compaction skipped"),
            }
        }
        previous = Some(current);
    }
}

fn revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn signed(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// An etcd error as a store error: transport trouble and deadlines are
/// `Unavailable` (retry later), the rest backend failures.
fn map_err(op: &'static str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match &e {
        E::TransportError(_) | E::IoError(_) => StoreError::Unavailable(format!("etcd {op}: {e}")),
        E::GRpcStatus(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) || is_transport_failure(status) =>
        {
            StoreError::Unavailable(format!("etcd {op}: {}", status.message()))
        }
        E::GRpcStatus(status) if status.code() == tonic::Code::OutOfRange => {
            StoreError::Compacted {
                requested: 0,
                oldest: 0,
            }
        }
        _ => StoreError::Backend {
            op,
            message: e.to_string(),
        },
    }
}

/// Whether a gRPC status stands for a broken connection (tonic reports
/// those as `Unknown` with the transport error as its source).
fn is_transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}
