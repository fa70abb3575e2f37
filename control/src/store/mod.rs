//! The object store behind the API: a key-value store with one revision
//! counter (the resourceVersion of every object), optimistic concurrency on
//! that revision, and watches from a revision.
//!
//! Two backends implement [`Store`]: the embedded database (the default, no
//! other process needed) and etcd.

mod embedded;
mod etcd;
mod history;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use history::HistoryLimits;

/// A position in the store's history; every write takes the next one.
pub type Revision = u64;

/// A stored value and the revisions that created and last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The value (an object's JSON).
    pub value: Arc<[u8]>,
    /// The revision that created the key.
    pub create_revision: Revision,
    /// The revision of the last write (for a deleted key: the deletion).
    pub mod_revision: Revision,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted.
    Delete,
}

/// One write, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new value; for a delete, the last value, with `mod_revision` set
    /// to the deletion's revision.
    pub record: Record,
    /// The value before the write, if the key existed.
    pub prev: Option<Record>,
}

impl Event {
    /// The revision of the write.
    pub fn revision(&self) -> Revision {
        self.record.mod_revision
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists.
    #[error("{key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// Update or delete of a key that does not exist.
    #[error("{key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The key's revision is not the one the caller based its write on.
    #[error("{key} was modified (at revision {actual}, expected {expected})")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key's revision.
        actual: Revision,
    },
    /// A watch asked for history the store no longer keeps.
    #[error("revision {requested} is too old (oldest kept: {oldest})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision a watch can start after.
        oldest: Revision,
    },
    /// A watcher fell too far behind the writes and was dropped.
    #[error("watch fell behind by {missed} events")]
    WatchLagged {
        /// Events it missed.
        missed: u64,
    },
    /// The backend cannot serve now (e.g. unreachable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed.
    #[error("store {op}: {message}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The backend's error.
        message: String,
    },
}

/// The stream of a watch: events in revision order, ended by an error (or
/// by the store going away).
pub type WatchStream = mpsc::Receiver<Result<Event, StoreError>>;

/// A key-value store with revisions and watches.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value at `key`.
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;

    /// Every value under `prefix`, in key order, and the store's revision
    /// at the time of the read.
    async fn list(&self, prefix: &str) -> Result<(Vec<Record>, Revision), StoreError>;

    /// Creates `key`; fails if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Record, StoreError>;

    /// Replaces `key`'s value; with `expected`, only if the key's revision
    /// is still that one.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Record, StoreError>;

    /// Deletes `key` (with `expected`, only at that revision); returns the
    /// last value with the deletion's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Record, StoreError>;

    /// Events under `prefix` strictly after revision `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Size of the stored data, in bytes (for metrics).
    async fn size_bytes(&self) -> Result<u64, StoreError>;
}
