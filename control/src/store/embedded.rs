//! The embedded store: a redb database file under the data directory.
//!
//! Every write is one redb transaction that bumps the revision counter and
//! is committed with `Durability::Immediate` (fsync) before it is
//! acknowledged, so a `kill -9` loses no acknowledged write. Writes are
//! serialised by one lock, which also orders the watch history.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::history::{History, HistoryLimits};
use super::{Event, EventKind, Record, Revision, Store, StoreError, WatchStream};

/// key -> create revision (8 bytes LE) ‖ mod revision (8 bytes LE) ‖ value.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// "revision" -> the last revision written.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Size of the revision header before each value.
const HEADER: usize = 16;

/// The embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    path: PathBuf,
    /// Held for every write; guards the history with it.
    writer: Mutex<History>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database `store.redb` in `data_dir`, keeping
    /// the last events within `history` for watches.
    pub fn open(data_dir: &Path, history: HistoryLimits) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| backend("create data directory", e))?;
        let path = data_dir.join("store.redb");
        let db = Database::create(&path).map_err(|e| backend("open database", e))?;
        // Make sure both tables exist, so reads never meet a missing table.
        let txn = db.begin_write().map_err(|e| backend("begin", e))?;
        txn.open_table(OBJECTS)
            .map_err(|e| backend("open table", e))?;
        let current = {
            let meta = txn.open_table(META).map_err(|e| backend("open table", e))?;
            stored_revision(&meta)?
        };
        txn.commit().map_err(|e| backend("commit", e))?;
        tracing::info!(path = %path.display(), revision = current, "embedded store open");
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path,
                writer: Mutex::new(History::new(current, history)),
            }),
        })
    }

    /// Runs a write: `change` gets the key's current record (if any) and
    /// the new revision, and returns what to write (`None` deletes) and the
    /// record to return.
    async fn write<F>(&self, key: &str, change: F) -> Result<Record, StoreError>
    where
        F: FnOnce(Option<&Record>, Revision) -> Result<(Option<Vec<u8>>, Record), StoreError>
            + Send
            + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        blocking(move || {
            let mut history = inner.lock_writer();
            let txn = inner.db.begin_write().map_err(|e| backend("begin", e))?;
            let (event, result) = {
                let mut objects = txn
                    .open_table(OBJECTS)
                    .map_err(|e| backend("open table", e))?;
                let mut meta = txn.open_table(META).map_err(|e| backend("open table", e))?;
                let current = stored_revision(&meta)?;
                let revision = current + 1;
                let prev = objects
                    .get(key.as_str())
                    .map_err(|e| backend("read", e))?
                    .map(|v| decode(&key, v.value()))
                    .transpose()?;
                let (value, result) = change(prev.as_ref(), revision)?;
                let kind = match &value {
                    Some(value) => {
                        objects
                            .insert(key.as_str(), encode(&result, value).as_slice())
                            .map_err(|e| backend("write", e))?;
                        EventKind::Put
                    }
                    None => {
                        objects
                            .remove(key.as_str())
                            .map_err(|e| backend("delete", e))?;
                        EventKind::Delete
                    }
                };
                meta.insert(REVISION_KEY, revision)
                    .map_err(|e| backend("write revision", e))?;
                let event = Event {
                    kind,
                    record: result.clone(),
                    prev,
                };
                (event, result)
            };
            txn.commit().map_err(|e| backend("commit", e))?;
            history.push(event);
            Ok(result)
        })
        .await
    }
}

impl Inner {
    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(|e| backend("begin read", e))
    }

    fn lock_writer(&self) -> MutexGuard<'_, History> {
        // A panic while holding the lock leaves no half-made state behind
        // (the transaction was not committed), so the lock stays usable.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let key = key.to_string();
        blocking(move || {
            let txn = inner.begin_read()?;
            let objects = txn
                .open_table(OBJECTS)
                .map_err(|e| backend("open table", e))?;
            let value = objects.get(key.as_str()).map_err(|e| backend("read", e))?;
            value.map(|v| decode(&key, v.value())).transpose()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Record>, Revision), StoreError> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_string();
        blocking(move || {
            let txn = inner.begin_read()?;
            let objects = txn
                .open_table(OBJECTS)
                .map_err(|e| backend("open table", e))?;
            let meta = txn.open_table(META).map_err(|e| backend("open table", e))?;
            let revision = stored_revision(&meta)?;
            let mut records = Vec::new();
            for entry in objects
                .range(prefix.as_str()..)
                .map_err(|e| backend("list", e))?
            {
                let (key, value) = entry.map_err(|e| backend("list", e))?;
                let key = key.value();
                if !key.starts_with(&prefix) {
                    break;
                }
                records.push(decode(key, value.value())?);
            }
            Ok((records, revision))
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Record, StoreError> {
        let name = key.to_string();
        self.write(key, move |prev, revision| {
            if prev.is_some() {
                return Err(StoreError::AlreadyExists { key: name });
            }
            let record = Record {
                key: name,
                value: Arc::from(value.as_slice()),
                create_revision: revision,
                mod_revision: revision,
            };
            Ok((Some(value), record))
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Record, StoreError> {
        let name = key.to_string();
        self.write(key, move |prev, revision| {
            let prev = check(&name, prev, expected)?;
            let record = Record {
                key: name,
                value: Arc::from(value.as_slice()),
                create_revision: prev.create_revision,
                mod_revision: revision,
            };
            Ok((Some(value), record))
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Record, StoreError> {
        let name = key.to_string();
        self.write(key, move |prev, revision| {
            let prev = check(&name, prev, expected)?;
            let record = Record {
                mod_revision: revision,
                ..prev.clone()
            };
            Ok((None, record))
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // The lock is held by writers across their fsync: wait for it off
        // the async threads.
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_string();
        blocking(move || inner.lock_writer().watch(&prefix, after)).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let txn = inner.begin_read()?;
            let meta = txn.open_table(META).map_err(|e| backend("open table", e))?;
            stored_revision(&meta)
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let path = self.inner.path.clone();
        blocking(move || {
            std::fs::metadata(&path)
                .map(|m| m.len())
                .map_err(|e| backend("stat database", e))
        })
        .await
    }
}

/// The last revision written, as the meta table holds it (0 when empty).
fn stored_revision(meta: &impl ReadableTable<&'static str, u64>) -> Result<Revision, StoreError> {
    let revision = meta
        .get(REVISION_KEY)
        .map_err(|e| backend("read revision", e))?;
    Ok(revision.map_or(0, |v| v.value()))
}

/// The existing record, if it is at the expected revision.
fn check<'a>(
    key: &str,
    prev: Option<&'a Record>,
    expected: Option<Revision>,
) -> Result<&'a Record, StoreError> {
    let prev = prev.ok_or_else(|| StoreError::NotFound {
        key: key.to_string(),
    })?;
    match expected {
        Some(expected) if expected != prev.mod_revision => Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            actual: prev.mod_revision,
        }),
        _ => Ok(prev),
    }
}

fn encode(record: &Record, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&record.create_revision.to_le_bytes());
    out.extend_from_slice(&record.mod_revision.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    let corrupt = || StoreError::Backend {
        op: "decode",
        message: format!("{key}: entry shorter than its header"),
    };
    let create = bytes.get(0..8).ok_or_else(corrupt)?;
    let modified = bytes.get(8..HEADER).ok_or_else(corrupt)?;
    let revision = |b: &[u8]| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        u64::from_le_bytes(raw)
    };
    Ok(Record {
        key: key.to_string(),
        value: Arc::from(&bytes[HEADER..]),
        create_revision: revision(create),
        mod_revision: revision(modified),
    })
}

fn backend(op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        op,
        message: e.to_string(),
    }
}

/// Runs blocking database work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| backend("run", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(
            dir,
            HistoryLimits {
                events: 100,
                bytes: usize::MAX,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn writes_take_increasing_revisions_and_respect_preconditions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let a = store
            .create("/r/pods/default/a", b"1".to_vec())
            .await
            .unwrap();
        assert_eq!((a.create_revision, a.mod_revision), (1, 1));
        assert!(matches!(
            store.create("/r/pods/default/a", b"x".to_vec()).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let a2 = store
            .update("/r/pods/default/a", b"2".to_vec(), Some(1))
            .await
            .unwrap();
        assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
        assert!(matches!(
            store
                .update("/r/pods/default/a", b"3".to_vec(), Some(1))
                .await,
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        assert!(matches!(
            store
                .update("/r/pods/default/zz", b"3".to_vec(), None)
                .await,
            Err(StoreError::NotFound { .. })
        ));
        store.create("/r/pods/kube/b", b"b".to_vec()).await.unwrap();
        store
            .create("/r/services/default/a", b"s".to_vec())
            .await
            .unwrap();

        let (pods, rev) = store.list("/r/pods/").await.unwrap();
        assert_eq!(rev, 4);
        let keys: Vec<_> = pods.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["/r/pods/default/a", "/r/pods/kube/b"]);
        assert_eq!(&*pods[0].value, b"2");

        let gone = store.delete("/r/pods/default/a", None).await.unwrap();
        assert_eq!((gone.mod_revision, &*gone.value), (5, &b"2"[..]));
        assert_eq!(store.get("/r/pods/default/a").await.unwrap(), None);
        assert!(matches!(
            store.delete("/r/pods/default/a", None).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn reopening_keeps_values_and_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            store.create("/k/1", b"one".to_vec()).await.unwrap();
            store.create("/k/2", b"two".to_vec()).await.unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.revision().await.unwrap(), 2);
        let one = store.get("/k/1").await.unwrap().unwrap();
        assert_eq!(&*one.value, b"one");
        let three = store.create("/k/3", b"three".to_vec()).await.unwrap();
        assert_eq!(three.mod_revision, 3, "revisions never go back");
        // History from before the restart is gone: such a watch is refused.
        assert!(matches!(
            store.watch("/k/", 1).await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(store.watch("/k/", 2).await.is_ok());
    }

    #[tokio::test]
    async fn watches_see_puts_and_deletes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.create("/w/a", b"a".to_vec()).await.unwrap();
        let mut watch = store.watch("/w/", 1).await.unwrap();
        store.update("/w/a", b"a2".to_vec(), None).await.unwrap();
        store.create("/x/other", b"x".to_vec()).await.unwrap();
        store.delete("/w/a", None).await.unwrap();
        let first = watch.recv().await.unwrap().unwrap();
        assert_eq!((first.kind, first.revision()), (EventKind::Put, 2));
        assert_eq!(first.prev.map(|p| p.mod_revision), Some(1));
        let second = watch.recv().await.unwrap().unwrap();
        assert_eq!((second.kind, second.revision()), (EventKind::Delete, 4));
        assert_eq!(&*second.record.value, b"a2");
    }
}
