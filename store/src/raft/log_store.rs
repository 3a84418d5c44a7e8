//! The Raft log and vote in RocksDB (`log` and `meta` column families).
//!
//! The vote is written with a synced WriteBatch. Appended entries are written at once (visible to
//! reads, so the leader replicates them while its own disk syncs) and openraft is told they are
//! stored only once the WAL is synced: one syncer thread per store syncs for every append that
//! waits, in order (one sync covers all writes before it). A follower answers its leader only
//! after that, and the leader counts itself in a quorum only after it (the patched openraft,
//! third_party/openraft/PATCHED.md), so a member killed with kill -9 or a power loss never forgets
//! a vote or an entry it acknowledged.
//!
//! Invariant: the stored log is one contiguous run of indexes, `purged + 1 ..= last`. openraft
//! 0.9.25 checks only the first and last index of what it reads, and its apply path panics on a
//! run with a hole in it (`handle_apply_result`, raft_core.rs:779), so the store enforces the
//! invariant itself: [`LogStore::append`] refuses entries that would start past the next index
//! (an error stops the Raft core cleanly; see `node.rs` for what a member does then),
//! and [`LogStore::try_get_log_entries`] returns an error rather than a run with a hole. A read that
//! starts below the purged index returns the run from the first stored index, as openraft's
//! contract allows (see design/decisions/0009 for who asks for purged entries, and why a peer
//! refuses the append that results).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogId, Vote};
use rocksdb::WriteBatch;

use super::{sto_err, Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::engine::{decode, encode, Engine};
use crate::keys::{dec_log_key, log_key, CF_LOG, META_PURGED, META_VOTE};

const META_COMMITTED: &[u8] = b"committed";

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<Engine>,
    syncer: Arc<Syncer>,
    /// Shared with the readers replication uses (clones of this store).
    tail: Arc<std::sync::Mutex<Tail>>,
}

/// The newest appended entries in memory, as etcd keeps its unstable log: replication sends what
/// was just appended, and reading it back from RocksDB (an iterator, a seek, decoding the entry)
/// was about 4% of a leader's CPU under one writing client, finding the next index for each
/// append (another iterator, decoding the last entry whole) 2%. The entries are a consecutive
/// run that is always a copy of stored entries: an append adds what it wrote once it is written,
/// a truncation drops entries before it deletes them, a purge drops what it purges.
#[derive(Default)]
struct Tail {
    /// The index the next append must have, once known (`None`: ask the store).
    next: Option<Option<u64>>,
    /// Consecutive entries, each with its encoded size; at most [`TAIL_BYTES`] of them, about.
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
}

/// Bytes of entries [`Tail`] keeps, about: several append requests' worth
/// ([`MAX_APPEND_BYTES`]), so a follower a little behind is still sent entries from memory.
const TAIL_BYTES: usize = 8 << 20;

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.get_log_id().index)
    }

    /// Drops the entries from `index` on.
    fn drop_from(&mut self, index: u64) {
        while let Some((e, size)) = self.entries.back() {
            if e.get_log_id().index < index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
    }

    /// Drops the entries up to `index`, inclusive.
    fn drop_to(&mut self, index: u64) {
        while let Some((e, size)) = self.entries.front() {
            if e.get_log_id().index > index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_front();
        }
    }

    /// Adds consecutive entries just written, replacing any kept from their first index on;
    /// `next` is the stored log's next index now.
    fn add(&mut self, written: Vec<(Entry, usize)>, next: Option<u64>) {
        self.next = Some(next);
        let Some(first) = written.first().map(|(e, _)| e.get_log_id().index) else {
            return;
        };
        self.drop_from(first);
        let follows = match self.entries.back() {
            Some((e, _)) => e.get_log_id().index + 1 == first,
            None => true,
        };
        if !follows {
            self.entries.clear();
            self.bytes = 0;
        }
        for (e, size) in written {
            self.bytes += size;
            self.entries.push_back((e, size));
        }
        while self.bytes > TAIL_BYTES && self.entries.len() > 1 {
            let (_, size) = self.entries.pop_front().expect("an entry");
            self.bytes -= size;
        }
    }

    /// The entries in `start..end`, stopping after the one that takes the run past `max_bytes`
    /// (as [`LogStore::read_run_limited`] does), when they are all kept; `None` otherwise (the
    /// store answers).
    fn read(&self, start: u64, end: Bound<u64>, max_bytes: usize) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = first + self.entries.len() as u64 - 1;
        let end = match end {
            Bound::Included(end) => end,
            Bound::Excluded(end) => end.checked_sub(1)?,
            Bound::Unbounded => return None,
        };
        if start < first || start > end {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = start;
        while index <= end {
            if bytes >= max_bytes {
                return Some(out);
            }
            if index > last {
                return None;
            }
            let (e, size) = &self.entries[(index - first) as usize];
            bytes += size;
            out.push(e.clone());
            index += 1;
        }
        Some(out)
    }
}

/// Syncs the WAL for appends that wait for it, on its own thread, in the order they were
/// submitted; appends that arrive while a sync runs share the next one (group commit).
struct Syncer {
    tx: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
    #[cfg(test)]
    hold: Arc<tests::Hold>,
}

impl Syncer {
    fn start(engine: &Arc<Engine>) -> Syncer {
        let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        // A weak reference: the database closes when the store is dropped, whatever this thread
        // is doing.
        let engine = Arc::downgrade(engine);
        #[cfg(test)]
        let hold = Arc::new(tests::Hold::default());
        #[cfg(test)]
        let held = hold.clone();
        std::thread::Builder::new()
            .name("eden-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    #[cfg(test)]
                    held.wait_released();
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let res = match engine.upgrade() {
                        Some(engine) => engine.sync_wal().map_err(|e| e.to_string()),
                        None => Err("the store was closed".to_string()),
                    };
                    for callback in waiting {
                        callback.log_io_completed(res.clone().map_err(std::io::Error::other));
                    }
                }
            })
            .expect("spawn the log sync thread");
        Syncer {
            tx,
            #[cfg(test)]
            hold,
        }
    }

    fn submit(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(std::sync::mpsc::SendError(callback)) = self.tx.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("the log sync thread stopped")));
        }
    }
}

impl LogStore {
    pub fn new(engine: Arc<Engine>) -> LogStore {
        let syncer = Arc::new(Syncer::start(&engine));
        LogStore {
            engine,
            syncer,
            tail: Default::default(),
        }
    }

    /// Tests: while held, appends are written but never reported stored (a disk that does not
    /// sync).
    #[cfg(test)]
    pub(crate) fn hold_syncs(&self, held: bool) {
        self.syncer.hold.set(held);
    }

    fn read_err(e: impl std::error::Error + 'static) -> StorageError {
        sto_err(ErrorVerb::Read, ErrorSubject::Logs, e)
    }

    fn write_err(e: impl std::error::Error + 'static) -> StorageError {
        sto_err(ErrorVerb::Write, ErrorSubject::Logs, e)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self.engine.db.raw_iterator_cf(self.engine.cf(CF_LOG));
        it.seek_to_last();
        match it.value() {
            Some(v) => {
                let e: Entry = decode(CF_LOG, v).map_err(Self::read_err)?;
                Ok(Some(*e.get_log_id()))
            }
            None => {
                it.status().map_err(Self::read_err)?;
                Ok(None)
            }
        }
    }
}

/// A log that would break the contiguity invariant (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum LogGap {
    #[error("refusing to append log entries from index {first}: the next index is {expected_next} (a hole in the Raft log)")]
    Append { first: u64, expected_next: u64 },
    #[error("log entries to append are not consecutive: {prev} is followed by {next}")]
    Batch { prev: u64, next: u64 },
    #[error("the Raft log has a hole: index {prev} is followed by {next}")]
    Read { prev: u64, next: u64 },
    #[error("log entry stored under index {key} says it is index {entry}")]
    Mismatch { key: u64, entry: u64 },
}

impl LogStore {
    /// The index the next appended entry must have: one past the last stored entry, or past the
    /// purged index when the log is empty; None for a log that never had an entry (it may start
    /// anywhere: openraft's storage suite starts logs at 1).
    fn next_index(&self) -> Result<Option<u64>, StorageError> {
        if let Some(next) = self.tail.lock().expect("log tail lock").next {
            return Ok(next);
        }
        if let Some(last) = self.last_entry_log_id()? {
            return Ok(Some(last.index + 1));
        }
        let purged: Option<LogId> = self.engine.get_meta(META_PURGED).map_err(Self::read_err)?;
        Ok(purged.map(|p| p.index + 1))
    }

    /// Writes entries (unsynced: [`RaftLogStorage::append`] has the syncer sync them before
    /// openraft's callback) that must follow each other and start at most one past the last
    /// stored entry; anything else would leave a hole and is refused with [`LogGap`], and nothing
    /// is written.
    pub fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let cf = self.engine.cf(CF_LOG);
        let mut expected = self.next_index()?;
        let stored_next = expected;
        let mut first = true;
        let mut written = Vec::new();
        for e in entries {
            let index = e.get_log_id().index;
            let mut expected_index = *expected.get_or_insert(index);
            if first && index < expected_index {
                // Overwriting stored entries leaves no hole (openraft truncates before it
                // overwrites; its storage suite overwrites directly).
                expected_index = index;
            }
            if index != expected_index {
                let gap = if first {
                    LogGap::Append {
                        first: index,
                        expected_next: expected_index,
                    }
                } else {
                    LogGap::Batch {
                        prev: expected_index - 1,
                        next: index,
                    }
                };
                tracing::error!(error = %gap, "refused a log append");
                return Err(Self::write_err(gap));
            }
            first = false;
            expected = Some(index + 1);
            let bytes = encode(&e);
            batch.put_cf(cf, log_key(index), &bytes);
            written.push((e, bytes.len()));
        }
        // Only the Raft core appends, truncates and purges, one at a time; readers that find
        // the entries stored and not yet kept read them from the store.
        let written_ok = self.engine.write_nosync(batch);
        let mut tail = self.tail.lock().expect("log tail lock");
        match written_ok {
            Ok(()) => {
                // Overwriting leaves any stored entries past the written ones in place.
                let next = expected.max(stored_next);
                tail.add(written, next);
                Ok(())
            }
            Err(e) => {
                // What is stored is unknown now: ask the store again.
                *tail = Tail::default();
                Err(Self::write_err(e))
            }
        }
    }

    /// The stored entries in `range`, as one contiguous run. Entries below the purged index are
    /// gone: a range that starts there gets the run from the first stored index. A hole inside the
    /// stored log is corruption and an error.
    fn read_run<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StorageError> {
        self.read_run_limited(range, usize::MAX)
    }

    /// [`LogStore::read_run`], stopping after the entry that takes the run past `max_bytes` (at
    /// least one entry).
    fn read_run_limited<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        if range.start_bound() != Bound::Unbounded {
            let kept = self.tail.lock().expect("log tail lock").read(
                start,
                range.end_bound().cloned(),
                max_bytes,
            );
            if let Some(kept) = kept {
                return Ok(kept);
            }
        }
        let mut it = self.engine.db.raw_iterator_cf(self.engine.cf(CF_LOG));
        it.seek(log_key(start));
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if bytes >= max_bytes {
                break;
            }
            bytes += v.len();
            let key = dec_log_key(k);
            if !range.contains(&key) {
                break;
            }
            if out.is_empty() && key != start && range.start_bound() != Bound::Unbounded {
                // The start was purged. openraft's contract allows returning what is stored
                // from later on; its replication then sends entries that do not follow the
                // request's prev_log_id, which the receiving peer refuses (grpc/peer.rs).
                tracing::warn!(
                    start,
                    first_stored = key,
                    "asked for log entries from an index that is no longer stored"
                );
            }
            let e: Entry = decode(CF_LOG, v).map_err(Self::read_err)?;
            if e.get_log_id().index != key {
                return Err(Self::read_err(LogGap::Mismatch {
                    key,
                    entry: e.get_log_id().index,
                }));
            }
            if let Some(prev) = out.last() {
                let prev = prev.get_log_id().index;
                if key != prev + 1 {
                    return Err(Self::read_err(LogGap::Read { prev, next: key }));
                }
            }
            out.push(e);
            it.next();
        }
        it.status().map_err(Self::read_err)?;
        Ok(out)
    }
}

/// Bytes of log entries in one append request to a follower, about: openraft 0.9 gives each
/// request `heartbeat_interval` (100 ms by default) and counts entries, not bytes, and one entry
/// can be a batch of many writes (decision 0015); past the timeout, replication retries the same
/// request forever.
pub const MAX_APPEND_BYTES: usize = 2 << 20;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_run(range)
    }

    /// What replication sends: entries from `start`, up to [`MAX_APPEND_BYTES`].
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_run_limited(start..end, MAX_APPEND_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.engine.get_meta(META_PURGED).map_err(Self::read_err)?;
        let last = self.last_entry_log_id()?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        self.engine.put_meta(&mut batch, META_VOTE, vote);
        self.engine
            .write_sync(batch)
            .map_err(|e| sto_err(ErrorVerb::Write, ErrorSubject::Vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.engine
            .get_meta(META_VOTE)
            .map_err(|e| sto_err(ErrorVerb::Read, ErrorSubject::Vote, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: a stale committed index after a crash only delays re-applying.
        let mut batch = WriteBatch::default();
        self.engine.put_meta(&mut batch, META_COMMITTED, &committed);
        self.engine.write_nosync(batch).map_err(Self::write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .engine
            .get_meta::<Option<LogId>>(META_COMMITTED)
            .map_err(Self::read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Written now, so replication (on the leader) reads the entries at once; stored, as far
        // as openraft is concerned, once the syncer calls back.
        match self.append_entries(entries) {
            Ok(()) => {
                self.syncer.submit(callback);
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Dropped from memory before they are deleted: no reader gets them from there after.
        let mut tail = self.tail.lock().expect("log tail lock");
        tail.drop_from(log_id.index);
        tail.next = None;
        drop(tail);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.engine.cf(CF_LOG),
            log_key(log_id.index),
            log_key(u64::MAX),
        );
        batch.delete_cf(self.engine.cf(CF_LOG), log_key(u64::MAX));
        self.engine.write_sync(batch).map_err(Self::write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut tail = self.tail.lock().expect("log tail lock");
        tail.drop_to(log_id.index);
        tail.next = None;
        drop(tail);
        let mut batch = WriteBatch::default();
        self.engine.put_meta(&mut batch, META_PURGED, &log_id);
        batch.delete_range_cf(
            self.engine.cf(CF_LOG),
            log_key(0),
            log_key(log_id.index + 1),
        );
        self.engine.write_sync(batch).map_err(Self::write_err)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::raft::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// Holds a store's syncs while set.
    #[derive(Default)]
    pub(crate) struct Hold {
        held: std::sync::Mutex<bool>,
        released: std::sync::Condvar,
    }

    impl Hold {
        pub(crate) fn set(&self, held: bool) {
            *self.held.lock().unwrap() = held;
            self.released.notify_all();
        }

        pub(crate) fn wait_released(&self) {
            let mut held = self.held.lock().unwrap();
            while *held {
                held = self.released.wait(held).unwrap();
            }
        }
    }

    fn entry(index: u64, bytes: usize) -> Entry {
        termed(1, index, bytes)
    }

    fn termed(term: u64, index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Normal(Command::Kv { op: vec![7; bytes] }),
        }
    }

    fn terms(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    /// Replication reads what was just appended from memory; a truncation, an overwrite and a
    /// purge leave nothing there that the stored log no longer has.
    #[tokio::test]
    async fn replication_reads_new_entries_from_memory_and_never_dropped_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::new(Arc::new(Engine::open(dir.path()).unwrap()));
        log.append_entries((1..=9).map(|i| entry(i, 100))).unwrap();
        // Gone from the store behind the log's back: still sent, so it came from memory.
        let e = log.engine.clone();
        e.db.delete_cf(e.cf(CF_LOG), log_key(3)).unwrap();
        assert_eq!(
            terms(&log.limited_get_log_entries(3, 5).await.unwrap()),
            vec![(1, 3), (1, 4)]
        );
        // A range past what was appended is the store's to answer (here: the hole at 3).
        assert!(log.try_get_log_entries(1..12).await.is_err());
        e.db.put_cf(e.cf(CF_LOG), log_key(3), encode(&entry(3, 100)))
            .unwrap();
        // Truncated, then new entries of a later term.
        log.truncate(openraft::LogId::new(CommittedLeaderId::new(1, 0), 6))
            .await
            .unwrap();
        assert_eq!(log.limited_get_log_entries(6, 7).await.unwrap(), vec![]);
        log.append_entries([termed(2, 6, 100), termed(2, 7, 100)])
            .unwrap();
        assert_eq!(
            terms(&log.limited_get_log_entries(5, 8).await.unwrap()),
            vec![(1, 5), (2, 6), (2, 7)]
        );
        // Overwritten without a truncation (openraft's storage suite does this).
        log.append_entries([termed(3, 7, 100)]).unwrap();
        assert_eq!(
            terms(&log.limited_get_log_entries(6, 8).await.unwrap()),
            vec![(2, 6), (3, 7)]
        );
        log.append_entries([termed(3, 8, 100)]).unwrap();
        // Overwriting 7 again leaves 8 stored: the next append is 9.
        log.append_entries([termed(3, 7, 100)]).unwrap();
        log.append_entries([termed(3, 9, 100)]).unwrap();
        assert_eq!(
            terms(&log.limited_get_log_entries(7, 10).await.unwrap()),
            vec![(3, 7), (3, 8), (3, 9)]
        );
        // Purged: what is left, as the store has it.
        log.purge(openraft::LogId::new(CommittedLeaderId::new(2, 0), 6))
            .await
            .unwrap();
        assert_eq!(
            terms(&log.limited_get_log_entries(7, 9).await.unwrap()),
            vec![(3, 7), (3, 8)]
        );
        assert_eq!(
            terms(&log.try_get_log_entries(0..9).await.unwrap()),
            vec![(3, 7), (3, 8)]
        );
        // A new store on the same data (a restart) reads the same from disk.
        let mut again = LogStore::new(log.engine.clone());
        assert_eq!(
            terms(&again.limited_get_log_entries(7, 10).await.unwrap()),
            vec![(3, 7), (3, 8), (3, 9)]
        );
        again.append_entries([termed(3, 10, 100)]).unwrap();
        assert!(again.append_entries([termed(3, 12, 100)]).is_err());
    }

    /// Replication reads about MAX_APPEND_BYTES of entries at a time, never none; other reads get
    /// the whole range.
    #[tokio::test]
    async fn replication_reads_a_bounded_run_of_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::new(Arc::new(Engine::open(dir.path()).unwrap()));
        log.append_entries((1..=10).map(|i| entry(i, 1 << 20)))
            .unwrap();
        let some = log.limited_get_log_entries(1, 11).await.unwrap();
        let n = some.len() as u64;
        assert!((2..=3).contains(&n), "{n} entries of 1 MiB");
        assert_eq!(some[0].log_id.index, 1);
        let rest = log.limited_get_log_entries(1 + n, 11).await.unwrap();
        assert_eq!(rest[0].log_id.index, 1 + n);
        let big = log.limited_get_log_entries(10, 11).await.unwrap();
        assert_eq!(big.len(), 1, "one entry larger than the limit still goes");
        assert_eq!(log.try_get_log_entries(1..11).await.unwrap().len(), 10);
        log.append_entries((11..=20).map(|i| entry(i, 100)))
            .unwrap();
        assert_eq!(log.limited_get_log_entries(11, 21).await.unwrap().len(), 10);
    }
}
