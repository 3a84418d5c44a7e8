//! The Raft log and vote in RocksDB (`log` and `meta` column families).
//!
//! Appended entries and the vote are written with a synced WriteBatch before openraft is told they
//! are stored, so a member killed with kill -9 never forgets a vote or an entry it acknowledged.

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
}

impl LogStore {
    pub fn new(engine: Arc<Engine>) -> LogStore {
        LogStore { engine }
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut it = self.engine.db.raw_iterator_cf(self.engine.cf(CF_LOG));
        it.seek(log_key(start));
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !range.contains(&dec_log_key(k)) {
                break;
            }
            out.push(decode(CF_LOG, v).map_err(Self::read_err)?);
            it.next();
        }
        it.status().map_err(Self::read_err)?;
        Ok(out)
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
        let mut batch = WriteBatch::default();
        let cf = self.engine.cf(CF_LOG);
        for e in entries {
            batch.put_cf(cf, log_key(e.get_log_id().index), encode(&e));
        }
        let res = self.engine.write_sync(batch);
        let io = res
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        res.map_err(Self::write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
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
