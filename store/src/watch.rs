//! The watch hub: where applied revisions become visible to watchers.
//!
//! Events are raised in exactly one place: the state machine publishes each durable batch of
//! revisions here. The hub keeps the most recent revisions in a ring and a `latest` counter that
//! streams subscribe to; it never pushes to anyone. Each watch stream pulls what it needs:
//!
//! ```text
//!   apply ──publish──▶ ring [first ..= latest] ──▶ stream A (synced: reads the ring)
//!                          │                    └▶ stream B (behind: ring moved past it)
//!   RocksDB "rev" cf ◀─────┴────────────────────────── B catches up from storage by revision
//! ```
//!
//! So a slow watcher never blocks writes or other watchers: it falls behind, then catches up from
//! storage, and can never miss or repeat a revision because it tracks the next revision it needs.
//! The ring always holds a contiguous run of revisions (every revision has at least one event).
//!
//! Watchers that fall behind together (a burst of writes longer than the ring, on a busy member)
//! share their reads from storage: [`HistoryCache`] reads each chunk of history once, however many
//! watchers need it, and at most [`HISTORY_READERS`] chunks at a time. Without it, 10,000 agents'
//! watches each read their own copy of the same 1,000 revisions, and a member grew past 12 GB
//! (issue 11).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{watch, OnceCell, Semaphore};

use crate::mvcc::RevEvents;

/// How many recent revisions the ring keeps by default.
pub const DEFAULT_RING_REVISIONS: usize = 4096;

pub struct WatchHub {
    ring: RwLock<VecDeque<Arc<RevEvents>>>,
    latest: watch::Sender<i64>,
    capacity: usize,
    /// Chunks of history read from storage for watchers behind the ring.
    pub history: HistoryCache,
}

/// At most this many chunks of history are read from storage at once.
pub const HISTORY_READERS: usize = 2;
/// How many chunks read from storage are kept for other watchers that need the same ones.
const HISTORY_CHUNKS_KEPT: usize = 16;

/// A chunk of history: consecutive revisions from the one it was asked from.
pub type HistoryChunk = Arc<Vec<Arc<RevEvents>>>;

type ChunkCell = Arc<OnceCell<Result<Option<HistoryChunk>, String>>>;

/// Single-flight reads of history from storage, shared by every watcher of the member: the first
/// watcher that needs the chunk starting at revision R reads it; the others wait for that read and
/// share its result. History below the store's revision never changes, so a chunk stays valid for
/// anyone who needs revision R next (they continue from its last revision + 1).
pub struct HistoryCache {
    /// Recent chunks by their first revision, oldest first.
    chunks: Mutex<VecDeque<(i64, ChunkCell)>>,
    readers: Semaphore,
}

impl Default for HistoryCache {
    fn default() -> Self {
        HistoryCache {
            chunks: Mutex::new(VecDeque::new()),
            readers: Semaphore::new(HISTORY_READERS),
        }
    }
}

impl HistoryCache {
    /// The chunk of history that starts at `from`, read with `load` (on a blocking thread) unless
    /// another watcher read it or is reading it. `Ok(None)`: `from` was compacted. A chunk that is
    /// empty, compacted or failed is not kept.
    pub async fn read<F, E>(&self, from: i64, load: F) -> Result<Option<HistoryChunk>, String>
    where
        F: FnOnce() -> Result<Option<Vec<RevEvents>>, E> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let cell = {
            let mut chunks = self.chunks.lock().expect("history lock");
            match chunks.iter().find(|(f, _)| *f == from) {
                Some((_, c)) => c.clone(),
                None => {
                    let c: ChunkCell = Arc::default();
                    chunks.push_back((from, c.clone()));
                    while chunks.len() > HISTORY_CHUNKS_KEPT {
                        chunks.pop_front();
                    }
                    c
                }
            }
        };
        let r = cell
            .get_or_init(|| async {
                let _permit = self.readers.acquire().await.expect("never closed");
                match tokio::task::spawn_blocking(load).await {
                    Ok(Ok(Some(revs))) => {
                        Ok(Some(Arc::new(revs.into_iter().map(Arc::new).collect())))
                    }
                    Ok(Ok(None)) => Ok(None),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .clone();
        if !matches!(&r, Ok(Some(c)) if !c.is_empty()) {
            self.forget(from, &cell);
        }
        r
    }

    fn forget(&self, from: i64, cell: &ChunkCell) {
        self.chunks
            .lock()
            .expect("history lock")
            .retain(|(f, c)| !(*f == from && Arc::ptr_eq(c, cell)));
    }

    fn clear(&self) {
        self.chunks.lock().expect("history lock").clear();
    }
}

impl WatchHub {
    pub fn new(current_rev: i64, capacity: usize) -> WatchHub {
        let (latest, _) = watch::channel(current_rev);
        WatchHub {
            ring: RwLock::new(VecDeque::new()),
            latest,
            capacity: capacity.max(1),
            history: HistoryCache::default(),
        }
    }

    /// Publishes durable revisions (in order) and wakes the streams.
    pub fn publish(&self, revs: Vec<RevEvents>) {
        let Some(last) = revs.last().map(|r| r.rev) else {
            return;
        };
        {
            let mut ring = self.ring.write().expect("ring lock");
            for r in revs {
                ring.push_back(Arc::new(r));
            }
            while ring.len() > self.capacity {
                ring.pop_front();
            }
        }
        self.latest.send_replace(last);
    }

    /// After a snapshot was installed: history jumped, so the ring is dropped and streams catch up
    /// from storage.
    pub fn reset(&self, rev: i64) {
        self.ring.write().expect("ring lock").clear();
        self.history.clear();
        self.latest.send_replace(rev);
    }

    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// The revisions `[from, to]` if the ring still holds `from`; None if the caller must read them
    /// from storage.
    pub fn recent(&self, from: i64, to: i64) -> Option<Vec<Arc<RevEvents>>> {
        let ring = self.ring.read().expect("ring lock");
        let first = ring.front()?.rev;
        if from < first {
            return None;
        }
        let skip = (from - first) as usize;
        Some(
            ring.iter()
                .skip(skip)
                .take_while(|r| r.rev <= to)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn revs(from: i64, n: i64) -> Vec<RevEvents> {
        (from..from + n)
            .map(|rev| RevEvents {
                rev,
                events: Vec::new(),
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_behind_the_ring_share_one_read_of_each_chunk() {
        let cache = Arc::new(HistoryCache::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        for _ in 0..100 {
            let (cache, loads) = (cache.clone(), loads.clone());
            readers.push(tokio::spawn(async move {
                cache
                    .read(10, move || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok::<_, String>(Some(revs(10, 5)))
                    })
                    .await
            }));
        }
        for r in readers {
            let chunk = r.await.unwrap().unwrap().unwrap();
            assert_eq!(
                chunk.iter().map(|r| r.rev).collect::<Vec<_>>(),
                vec![10, 11, 12, 13, 14]
            );
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one read for 100 watchers");
        // Another chunk is another read.
        let other = cache
            .read(15, || Ok::<_, String>(Some(revs(15, 2))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other[0].rev, 15);
    }

    #[tokio::test]
    async fn empty_compacted_or_failed_reads_are_not_kept() {
        let cache = HistoryCache::default();
        assert!(cache
            .read(5, || Ok::<_, String>(Some(Vec::new())))
            .await
            .unwrap()
            .unwrap()
            .is_empty());
        assert!(cache
            .read(5, || Ok::<_, String>(None))
            .await
            .unwrap()
            .is_none());
        assert!(cache
            .read(5, || Err::<Option<Vec<RevEvents>>, _>("disk"))
            .await
            .is_err());
        // Each of those was read again, and a good read now is what the next reader gets.
        let chunk = cache
            .read(5, || Ok::<_, String>(Some(revs(5, 1))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(chunk[0].rev, 5);
        let again = cache
            .read(5, || -> Result<Option<Vec<RevEvents>>, String> {
                panic!("a kept chunk is not read again")
            })
            .await
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&chunk, &again));
    }
}
