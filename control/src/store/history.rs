//! A bounded in-memory history of writes, and watches served from it.
//!
//! A watch first replays the kept events after its revision, then follows
//! new writes. Both are taken under the writer's lock, so no write falls
//! between them.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::{Event, Revision, StoreError, WatchStream};

/// How many events a watcher's channel buffers before it waits.
const WATCH_BUFFER: usize = 256;

/// How many new events the live feed holds for a watcher that has not
/// taken them yet; one further behind is dropped (its client relists). The
/// feed keeps its last events alive, so this also bounds what it holds.
const LIVE_BUFFER: usize = 1024;

/// How long a history may be, by count and by bytes.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Events kept.
    pub events: usize,
    /// Bytes of keys and values (new and previous) kept.
    pub bytes: usize,
}

/// The last events within [`HistoryLimits`], and the live feed of new ones.
#[derive(Debug)]
pub(crate) struct History {
    events: VecDeque<Arc<Event>>,
    limits: HistoryLimits,
    /// Bytes of the kept events (see [`event_bytes`]).
    bytes: usize,
    /// A watch may start after any revision from this one on.
    floor: Revision,
    feed: broadcast::Sender<Arc<Event>>,
}

/// What an event holds: its key and its new and previous values.
fn event_bytes(event: &Event) -> usize {
    event.record.key.len()
        + event.record.value.len()
        + event
            .prev
            .as_ref()
            .map_or(0, |p| p.key.len() + p.value.len())
}

impl History {
    /// An empty history whose watches may start after `current` (the
    /// store's revision when it opened: earlier events are not kept).
    pub(crate) fn new(current: Revision, limits: HistoryLimits) -> Self {
        let limits = HistoryLimits {
            events: limits.events.max(1),
            bytes: limits.bytes,
        };
        let (feed, _) = broadcast::channel(limits.events.min(LIVE_BUFFER));
        History {
            events: VecDeque::new(),
            limits,
            bytes: 0,
            floor: current,
            feed,
        }
    }

    /// Records a committed write and hands it to live watches. The oldest
    /// events go while the history is over its limits (the newest event is
    /// always kept).
    pub(crate) fn push(&mut self, event: Event) {
        let event = Arc::new(event);
        self.bytes += event_bytes(&event);
        self.events.push_back(Arc::clone(&event));
        while self.events.len() > 1
            && (self.events.len() > self.limits.events || self.bytes > self.limits.bytes)
        {
            if let Some(oldest) = self.events.pop_front() {
                self.bytes -= event_bytes(&oldest);
                self.floor = oldest.revision();
            }
        }
        // No receiver is fine: nobody is watching.
        let _ = self.feed.send(event);
    }

    /// Starts a watch of keys under `prefix` after revision `after`.
    pub(crate) fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        if after < self.floor {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: self.floor,
            });
        }
        let live = self.feed.subscribe();
        let backlog: Vec<Arc<Event>> = self
            .events
            .iter()
            .filter(|e| e.revision() > after && e.record.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(forward(prefix.to_string(), after, backlog, live, tx));
        Ok(rx)
    }
}

/// Sends the backlog, then live events, until the watcher goes away or
/// falls behind.
async fn forward(
    prefix: String,
    mut last: Revision,
    backlog: Vec<Arc<Event>>,
    mut live: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Result<Event, StoreError>>,
) {
    for event in backlog {
        last = event.revision();
        if tx.send(Ok(Event::clone(&event))).await.is_err() {
            return;
        }
    }
    loop {
        let received = tokio::select! {
            received = live.recv() => received,
            () = tx.closed() => return,
        };
        match received {
            Ok(event) if event.revision() > last && event.record.key.starts_with(&prefix) => {
                last = event.revision();
                if tx.send(Ok(Event::clone(&event))).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let _ = tx.send(Err(StoreError::WatchLagged { missed })).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, Record};

    fn limits(events: usize, bytes: usize) -> HistoryLimits {
        HistoryLimits { events, bytes }
    }

    fn put(key: &str, rev: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            record: Record {
                key: key.to_string(),
                value: Arc::from(&b"{}"[..]),
                create_revision: rev,
                mod_revision: rev,
            },
            prev: None,
        }
    }

    #[tokio::test]
    async fn replays_then_follows_only_matching_keys() {
        let mut history = History::new(0, limits(10, usize::MAX));
        history.push(put("/a/1", 1));
        history.push(put("/b/1", 2));
        history.push(put("/a/2", 3));
        let mut watch = history.watch("/a/", 1).unwrap();
        history.push(put("/a/3", 4));
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(watch.recv().await.unwrap().unwrap().record.key);
        }
        assert_eq!(seen, ["/a/2", "/a/3"]);
    }

    #[tokio::test]
    async fn too_old_revisions_are_refused() {
        let mut history = History::new(5, limits(2, usize::MAX));
        assert!(matches!(
            history.watch("/", 4),
            Err(StoreError::Compacted {
                requested: 4,
                oldest: 5
            })
        ));
        for rev in 6..=9 {
            history.push(put("/a", rev));
        }
        // Events 8 and 9 are kept: a watch may start after 7.
        assert!(history.watch("/", 7).is_ok());
        assert!(matches!(
            history.watch("/", 6),
            Err(StoreError::Compacted { .. })
        ));
    }

    #[tokio::test]
    async fn large_events_are_dropped_by_bytes_before_count() {
        let big = |key: &str, rev: Revision| {
            let mut event = put(key, rev);
            event.record.value = Arc::from(vec![b'x'; 1000]);
            event
        };
        let mut history = History::new(0, limits(100, 2500));
        for rev in 1..=5 {
            history.push(big("/a", rev));
        }
        // Two events of 1002 bytes fit in 2500; the third would not.
        assert_eq!(history.events.len(), 2);
        assert!(history.bytes <= 2500);
        assert!(history.watch("/", 3).is_ok());
        assert!(matches!(
            history.watch("/", 2),
            Err(StoreError::Compacted { oldest: 3, .. })
        ));
        // One event larger than the whole limit is still kept alone.
        let mut history = History::new(0, limits(100, 10));
        history.push(big("/a", 1));
        assert_eq!(history.events.len(), 1);
    }
}
