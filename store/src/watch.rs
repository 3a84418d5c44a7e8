//! The watch hub: where applied revisions become visible to watchers.
//!
//! Events are raised in exactly one place: the state machine publishes each durable batch of
//! revisions here. The hub keeps the most recent revisions in a ring and the latest revision, and
//! hands each revision to the streams that watch one of its keys (below). A stream that falls
//! behind pulls what it needs:
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
//!
//! Streams are woken only by revisions they care about: each stream tells the hub which key ranges
//! it watches ([`WatchHub::watch_range`]), and [`WatchHub::publish`] hands each revision to the
//! [`Signal`] of every stream with a range that holds one of its keys. A stream with no matching
//! revision is never woken, so 10,000 agents each watching their own assignments cost the member
//! nothing while other agents' keys change (issue 15). Exact keys and prefixes are found by hash
//! lookups (one per distinct prefix length in use); other ranges are checked one by one.
//!
//! The index only vouches for revisions published after a range was added (the revision
//! `watch_range` returns): a watcher that starts earlier reads the revisions before that whole, from
//! the ring or storage, as before. So does a stream whose signal overflowed
//! ([`MAX_PENDING_REVISIONS`] unread revisions: a stream that does not keep up) or a member that
//! installed a snapshot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, OnceCell, Semaphore};

use crate::keys::{prefix_end, KeyRange};
use crate::mvcc::RevEvents;

/// A stream's signal holds at most this many unread revisions; past it, the stream reads what it
/// missed from the ring or storage.
pub const MAX_PENDING_REVISIONS: usize = 4096;

/// How many recent revisions the ring keeps by default.
pub const DEFAULT_RING_REVISIONS: usize = 4096;

pub struct WatchHub {
    ring: RwLock<VecDeque<Arc<RevEvents>>>,
    latest: AtomicI64,
    /// Which streams watch which keys. Held while a batch is published (and `latest` moves), so a
    /// range added at revision R is signaled every matching revision after R.
    index: Mutex<Index>,
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
        WatchHub {
            ring: RwLock::new(VecDeque::new()),
            latest: AtomicI64::new(current_rev),
            capacity: capacity.max(1),
            history: HistoryCache::default(),
            index: Mutex::new(Index::default()),
        }
    }

    /// Publishes durable revisions (in order) and wakes the streams that watch one of their keys.
    pub fn publish(&self, revs: Vec<RevEvents>) {
        let Some(last) = revs.last().map(|r| r.rev) else {
            return;
        };
        let revs: Vec<Arc<RevEvents>> = revs.into_iter().map(Arc::new).collect();
        {
            let mut ring = self.ring.write().expect("ring lock");
            ring.extend(revs.iter().cloned());
            while ring.len() > self.capacity {
                ring.pop_front();
            }
        }
        let mut woken: HashMap<StreamId, Arc<Signal>> = HashMap::new();
        let index = self.index.lock().expect("watch index lock");
        let mut hits = Vec::new();
        for r in &revs {
            hits.clear();
            for e in &r.events {
                if let Some(kv) = &e.kv {
                    index.matches(&kv.key, &mut hits);
                }
            }
            hits.sort_unstable();
            hits.dedup();
            for id in &hits {
                if let Some(s) = index.streams.get(id) {
                    s.signal.push(r);
                    woken.entry(*id).or_insert_with(|| s.signal.clone());
                }
            }
        }
        self.latest.store(last, Ordering::SeqCst);
        drop(index);
        for s in woken.values() {
            s.notify.notify_one();
        }
    }

    /// After a snapshot was installed: history jumped, so the ring is dropped and every stream
    /// reads what it missed from storage.
    pub fn reset(&self, rev: i64) {
        self.ring.write().expect("ring lock").clear();
        self.history.clear();
        let index = self.index.lock().expect("watch index lock");
        let signals: Vec<Arc<Signal>> = index.streams.values().map(|s| s.signal.clone()).collect();
        for s in &signals {
            s.overflow(rev);
        }
        self.latest.store(rev, Ordering::SeqCst);
        drop(index);
        for s in signals {
            s.notify.notify_one();
        }
    }

    /// A new stream: its id and the signal that wakes it.
    pub fn open_stream(&self) -> (StreamId, Arc<Signal>) {
        let mut index = self.index.lock().expect("watch index lock");
        index.next += 1;
        let id = index.next;
        let signal = Arc::new(Signal::default());
        index.streams.insert(
            id,
            StreamEntry {
                signal: signal.clone(),
                shapes: Vec::new(),
            },
        );
        (id, signal)
    }

    /// Forgets a stream and every range it watched.
    pub fn close_stream(&self, id: StreamId) {
        let mut index = self.index.lock().expect("watch index lock");
        if let Some(entry) = index.streams.remove(&id) {
            for shape in entry.shapes {
                index.unplace(id, &shape);
            }
        }
    }

    /// Signals `stream` every revision after the one returned that has a key in `range`.
    pub fn watch_range(&self, stream: StreamId, range: &KeyRange) -> i64 {
        let mut index = self.index.lock().expect("watch index lock");
        if !index.streams.contains_key(&stream) {
            return self.latest();
        }
        let shape = Shape::of(range);
        index.place(stream, &shape);
        if let Some(entry) = index.streams.get_mut(&stream) {
            entry.shapes.push(shape);
        }
        self.latest()
    }

    /// Stops signaling `stream` for `range` (added before with [`WatchHub::watch_range`]).
    pub fn unwatch_range(&self, stream: StreamId, range: &KeyRange) {
        let mut index = self.index.lock().expect("watch index lock");
        let shape = Shape::of(range);
        let Some(entry) = index.streams.get_mut(&stream) else {
            return;
        };
        let Some(at) = entry.shapes.iter().position(|s| *s == shape) else {
            return;
        };
        entry.shapes.swap_remove(at);
        index.unplace(stream, &shape);
    }

    pub fn latest(&self) -> i64 {
        self.latest.load(Ordering::SeqCst)
    }

    /// What `stream`'s signal holds, and the revision up to which it holds everything the
    /// stream's ranges match (unless it overflowed).
    pub fn take(&self, signal: &Signal) -> Taken {
        let mut p = signal.state.lock().expect("signal lock");
        // Read under the signal's lock: a revision published later than this is pushed after the
        // take; one pushed before it is in `revs` (or was dropped) and counted in `last`.
        let latest = self.latest();
        let revs = std::mem::take(&mut p.revs);
        let overflowed = std::mem::replace(&mut p.overflowed, false);
        let upto = latest.max(p.last);
        Taken {
            revs,
            overflowed,
            upto,
        }
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

/// A watch stream's id in the hub.
pub type StreamId = u64;

/// What wakes one watch stream: the revisions published since it last looked that have a key it
/// watches.
#[derive(Default)]
pub struct Signal {
    state: Mutex<Pending>,
    notify: Notify,
}

#[derive(Default)]
struct Pending {
    revs: Vec<Arc<RevEvents>>,
    /// More than [`MAX_PENDING_REVISIONS`] went unread: `revs` was dropped.
    overflowed: bool,
    /// The highest revision pushed or dropped: `latest` may not show it yet when the stream takes.
    last: i64,
}

impl Signal {
    /// Waits until a revision for this stream was published (returns at once if one was since the
    /// last wait).
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    fn push(&self, r: &Arc<RevEvents>) {
        let mut p = self.state.lock().expect("signal lock");
        p.last = p.last.max(r.rev);
        if p.overflowed {
            return;
        }
        if p.revs.len() >= MAX_PENDING_REVISIONS {
            p.revs = Vec::new();
            p.overflowed = true;
            return;
        }
        p.revs.push(r.clone());
    }

    fn overflow(&self, rev: i64) {
        let mut p = self.state.lock().expect("signal lock");
        p.revs = Vec::new();
        p.overflowed = true;
        p.last = p.last.max(rev);
    }
}

/// What a stream took from its signal.
pub struct Taken {
    /// The revisions (ascending) with a key in one of the stream's ranges.
    pub revs: Vec<Arc<RevEvents>>,
    /// Revisions were dropped: everything up to `upto` must be read from the ring or storage.
    pub overflowed: bool,
    /// Every revision up to this one that matched a range of the stream is in `revs`.
    pub upto: i64,
}

/// How a watched range is indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Range(KeyRange),
}

impl Shape {
    fn of(r: &KeyRange) -> Shape {
        if r.single {
            Shape::Exact(r.start.clone())
        } else if !r.start.is_empty() && r.end.as_deref() == Some(prefix_end(&r.start).as_slice()) {
            Shape::Prefix(r.start.clone())
        } else {
            Shape::Range(r.clone())
        }
    }
}

struct StreamEntry {
    signal: Arc<Signal>,
    shapes: Vec<Shape>,
}

/// How many of a stream's ranges have one shape.
type Counts = HashMap<StreamId, usize>;

#[derive(Default)]
struct Index {
    next: StreamId,
    streams: HashMap<StreamId, StreamEntry>,
    exact: HashMap<Vec<u8>, Counts>,
    prefixes: HashMap<Vec<u8>, Counts>,
    /// The lengths of the prefixes in `prefixes`, each with how many prefixes have it.
    prefix_lens: BTreeMap<usize, usize>,
    ranges: Vec<(KeyRange, StreamId)>,
}

impl Index {
    /// Appends the streams with a range holding `key`.
    fn matches(&self, key: &[u8], out: &mut Vec<StreamId>) {
        if let Some(c) = self.exact.get(key) {
            out.extend(c.keys());
        }
        for &len in self.prefix_lens.range(..=key.len()).map(|(l, _)| l) {
            if let Some(c) = self.prefixes.get(&key[..len]) {
                out.extend(c.keys());
            }
        }
        out.extend(
            self.ranges
                .iter()
                .filter(|(r, _)| r.contains(key))
                .map(|(_, s)| *s),
        );
    }

    fn place(&mut self, stream: StreamId, shape: &Shape) {
        match shape {
            Shape::Exact(k) => {
                *self
                    .exact
                    .entry(k.clone())
                    .or_default()
                    .entry(stream)
                    .or_default() += 1
            }
            Shape::Prefix(p) => {
                let counts = self.prefixes.entry(p.clone()).or_default();
                if counts.is_empty() {
                    *self.prefix_lens.entry(p.len()).or_default() += 1;
                }
                *counts.entry(stream).or_default() += 1;
            }
            Shape::Range(r) => self.ranges.push((r.clone(), stream)),
        }
    }

    fn unplace(&mut self, stream: StreamId, shape: &Shape) {
        fn dec(map: &mut HashMap<Vec<u8>, Counts>, k: &[u8], stream: StreamId) -> bool {
            let Some(counts) = map.get_mut(k) else {
                return false;
            };
            if let Some(n) = counts.get_mut(&stream) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&stream);
                }
            }
            let gone = counts.is_empty();
            if gone {
                map.remove(k);
            }
            gone
        }
        match shape {
            Shape::Exact(k) => {
                dec(&mut self.exact, k, stream);
            }
            Shape::Prefix(p) => {
                if dec(&mut self.prefixes, p, stream) {
                    if let Some(n) = self.prefix_lens.get_mut(&p.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lens.remove(&p.len());
                        }
                    }
                }
            }
            Shape::Range(r) => {
                if let Some(at) = self.ranges.iter().position(|(x, s)| *s == stream && x == r) {
                    self.ranges.swap_remove(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn revs(from: i64, n: i64) -> Vec<RevEvents> {
        (from..from + n)
            .map(|rev| RevEvents::new(rev, Vec::new()))
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

    fn put(rev: i64, key: &str) -> RevEvents {
        use eden_proto::mvccpb::{Event, KeyValue};
        RevEvents::new(
            rev,
            vec![Event {
                kv: Some(KeyValue {
                    key: key.as_bytes().to_vec(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        )
    }

    fn taken_revs(t: &Taken) -> Vec<i64> {
        t.revs.iter().map(|r| r.rev).collect()
    }

    #[test]
    fn a_stream_is_handed_only_the_revisions_of_its_ranges() {
        let hub = WatchHub::new(0, 16);
        let (a, sa) = hub.open_stream();
        let (b, sb) = hub.open_stream();
        let prefix = |p: &str| KeyRange::new(p.as_bytes(), &prefix_end(p.as_bytes()));
        assert_eq!(hub.watch_range(a, &KeyRange::new(b"k", b"")), 0);
        hub.watch_range(a, &prefix("p/"));
        hub.watch_range(b, &KeyRange::new(b"m", b"n"));
        hub.watch_range(b, &prefix("p/"));
        hub.publish(vec![
            put(1, "k"),
            put(2, "kk"),
            put(3, "p/x"),
            put(4, "mm"),
            put(5, "p"),
        ]);
        let ta = hub.take(&sa);
        assert_eq!(
            (taken_revs(&ta), ta.upto, ta.overflowed),
            (vec![1, 3], 5, false)
        );
        assert_eq!(taken_revs(&hub.take(&sb)), vec![3, 4]);
        // Removing one of two equal ranges keeps the other; closing a stream forgets it.
        hub.watch_range(a, &prefix("p/"));
        hub.unwatch_range(a, &prefix("p/"));
        hub.unwatch_range(b, &KeyRange::new(b"m", b"n"));
        hub.publish(vec![put(6, "p/y"), put(7, "ma")]);
        assert_eq!(taken_revs(&hub.take(&sa)), vec![6]);
        assert_eq!(taken_revs(&hub.take(&sb)), vec![6]);
        hub.unwatch_range(a, &prefix("p/"));
        hub.close_stream(b);
        hub.publish(vec![put(8, "p/z"), put(9, "k")]);
        assert_eq!(taken_revs(&hub.take(&sa)), vec![9]);
        assert!(hub.index.lock().unwrap().prefixes.is_empty());
        assert!(hub.index.lock().unwrap().prefix_lens.is_empty());
    }

    #[test]
    fn a_stream_that_does_not_keep_up_reads_whole_history_instead() {
        let hub = WatchHub::new(0, 16);
        let (a, sa) = hub.open_stream();
        hub.watch_range(a, &KeyRange::new(b"k", b""));
        let n = MAX_PENDING_REVISIONS as i64 + 10;
        hub.publish((1..=n).map(|r| put(r, "k")).collect());
        let t = hub.take(&sa);
        assert!(t.overflowed && t.revs.is_empty() && t.upto == n);
        // Then it is handed revisions again.
        hub.publish(vec![put(n + 1, "k")]);
        let t = hub.take(&sa);
        assert_eq!((taken_revs(&t), t.overflowed), (vec![n + 1], false));
        // A snapshot install makes every stream read history whole.
        hub.reset(n + 100);
        let t = hub.take(&sa);
        assert!(t.overflowed && t.upto == n + 100);
    }
}
