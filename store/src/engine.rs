//! The RocksDB engine: one database per member holding the Raft log, the vote and the state
//! machine in separate column families (see [`crate::keys`]). Everything that must survive a crash
//! is written with a synced WriteBatch; the state machine's data and its last applied log id always
//! go in the same batch.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBRawIteratorWithThreadMode, Options, ReadOptions, SliceTransform, Snapshot, WriteBatch,
    WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::keys::{kv_key_has_prefix, kv_key_prefix, ALL_CFS, CF_KV, CF_LOG, CF_META, CF_REV};

/// A raw RocksDB iterator over one column family.
pub type RawIter<'a> = DBRawIteratorWithThreadMode<'a, DB>;

/// A storage failure: the member itself is broken (disk, corruption), not the request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record in {cf}: {msg}")]
    Corrupt { cf: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, EngineError>;

pub struct Engine {
    pub db: DB,
    dir: std::path::PathBuf,
    /// [`Engine::size_bytes`] as last measured, and when: [`Engine::recent_size_bytes`].
    measured: std::sync::Mutex<Option<(std::time::Instant, i64)>>,
}

/// How old a size [`Engine::recent_size_bytes`] answers may be.
pub const SIZE_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(200);

/// RocksDB memory a member uses by default, in MiB (`eden server --storage-memory-mb`). 64 was
/// tried first: after etcd's `check perf --load=l` (half a gigabyte of data) memtables that small
/// flushed faster than two cores could compact, writes stalled, appends outlived the 100 ms
/// openraft gives them and a 100,000-key load never finished (design/benchmarks.md).
pub const DEFAULT_MEMORY_MB: usize = 256;

impl Engine {
    /// Opens (or creates) the database under `dir` with the default memory budget.
    pub fn open(dir: &Path) -> Result<Engine> {
        Engine::open_with(dir, DEFAULT_MEMORY_MB)
    }

    /// Opens (or creates) the database under `dir`, its memory bounded by `memory_mb`: half for
    /// memtables (all column families together: RocksDB's write buffer manager flushes the
    /// largest when they reach it), half for one block cache shared by every column family (index
    /// and filter blocks counted in it). RocksDB's defaults (64 MiB of memtable per column family,
    /// up to two each, and a cache per family) let six families take close to a gigabyte.
    pub fn open_with(dir: &Path, memory_mb: usize) -> Result<Engine> {
        let budget = memory_mb.max(8) << 20;
        let cache = rocksdb::Cache::new_lru_cache(budget / 2);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        opts.set_db_write_buffer_size(budget / 2);
        // A write-ahead log file is deleted once every column family with data in it flushed.
        // A family written rarely (leases, members) would keep every log since its last write:
        // RocksDB's default bound is four times all write buffers (about 1 GiB at 256 MiB), and
        // after etcd's `check perf --load=l` a member held 725 MiB of log for 36 MiB of tables.
        // Past this many bytes of log, the families holding the oldest one are flushed.
        opts.set_max_total_wal_size((budget / 2) as u64);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(DBCompressionType::Lz4);
            // The data families take most writes; the log, meta and lease families are small
            // or short-lived. Each memtable is flushed at this size (or earlier, by the manager).
            let big = *name == CF_KV || *name == CF_REV || *name == CF_LOG;
            cf_opts.set_write_buffer_size(if big { budget / 8 } else { budget / 32 });
            cf_opts.set_max_write_buffer_number(2);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index blocks stay with their table, outside the block cache (RocksDB's default).
            // In the cache, the index of a large table could be bigger than a cache shard and was
            // read and decompressed again for every write's seek: after etcd's check perf
            // (values of zeros that compress 20 to 1, so 4 KiB blocks were 200 bytes on disk and
            // one table's index 5 MB), LZ4 took 70% of every member's CPU and a 100,000-key load
            // ran at 600 writes/s. (16 KiB blocks, tried with it, made indexes smaller but a
            // task on 10,000 agents slower: 5.2-5.4 s to the last result against 4.5-4.6.)
            table.set_cache_index_and_filter_blocks(false);
            if *name == CF_KV {
                // Bloom filters on each record's user key (not the whole key: a lookup does not
                // know the revision it wants): finding a key's newest version seeks every table
                // whose range covers it, and without filters that read and searched a block in
                // each, for every write (22% of a leader's CPU under etcd's check perf, whose
                // keys are all new). Read with [`Engine::versions`]; scans go through
                // [`Engine::scan`], in total order, as a prefix seek may skip other keys' tables.
                cf_opts.set_prefix_extractor(SliceTransform::create(
                    "eden.kv.user_key",
                    kv_key_prefix,
                    Some(kv_key_has_prefix),
                ));
                table.set_bloom_filter(10.0, false);
                table.set_whole_key_filtering(false);
            }
            cf_opts.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Engine {
            db,
            dir: dir.to_path_buf(),
            measured: std::sync::Mutex::new(None),
        })
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// An iterator over all of `cf` in key order: what every scan uses. (Iterators with default
    /// options on the kv family are prefix seeks, which may skip the tables of other keys.)
    pub fn scan(&self, cf: &str) -> RawIter<'_> {
        self.db.raw_iterator_cf_opt(self.cf(cf), total_order())
    }

    /// [`Engine::scan`] on a snapshot.
    pub fn scan_at<'a>(&'a self, snap: &'a Snapshot<'a>, cf: &str) -> RawIter<'a> {
        snap.raw_iterator_cf_opt(self.cf(cf), total_order())
    }

    /// An iterator over the versions of one key in the kv family: it stays within the key of its
    /// last seek, and skips the tables whose bloom filters do not hold that key.
    pub fn versions(&self) -> RawIter<'_> {
        self.db.raw_iterator_cf_opt(self.cf(CF_KV), one_key())
    }

    /// [`Engine::versions`] on a snapshot.
    pub fn versions_at<'a>(&'a self, snap: &'a Snapshot<'a>) -> RawIter<'a> {
        snap.raw_iterator_cf_opt(self.cf(CF_KV), one_key())
    }

    /// Writes a batch and syncs the WAL before returning.
    pub fn write_sync(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let start = std::time::Instant::now();
        self.db.write_opt(batch, &wo)?;
        crate::metrics::metrics()
            .fsync
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Syncs the WAL: every write that returned before this call is on disk when it returns.
    pub fn sync_wal(&self) -> Result<()> {
        let start = std::time::Instant::now();
        self.db.flush_wal(true)?;
        crate::metrics::metrics()
            .fsync
            .observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Writes a batch without waiting for fsync (for work that is safe to redo after a crash).
    pub fn write_nosync(&self, batch: WriteBatch) -> Result<()> {
        self.db.write(batch)?;
        Ok(())
    }

    pub fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(raw) => decode(CF_META, &raw).map(Some),
        }
    }

    pub fn put_meta<T: Serialize>(&self, batch: &mut WriteBatch, key: &[u8], value: &T) {
        batch.put_cf(self.cf(CF_META), key, encode(value));
    }

    /// Compacts every column family's files (Defragment): reclaims the space of deleted records.
    pub fn defragment(&self) {
        for cf in ALL_CFS {
            let _ = self.db.flush_cf(self.cf(cf));
        }
        for cf in ALL_CFS {
            self.db
                .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// [`Engine::size_bytes`] measured at most [`SIZE_MAX_AGE`] ago: what the quota check on
    /// every write asks (measuring reads the directory and stats each file: 6% of a leader's CPU
    /// under one writing client when every write measured).
    pub fn recent_size_bytes(&self) -> i64 {
        let kept = *self.measured.lock().expect("size lock");
        match kept {
            Some((at, size)) if at.elapsed() < SIZE_MAX_AGE => size,
            _ => self.measure_size_bytes(),
        }
    }

    /// [`Engine::size_bytes`] measured now, and kept for [`Engine::recent_size_bytes`].
    pub fn measure_size_bytes(&self) -> i64 {
        let size = self.size_bytes();
        *self.measured.lock().expect("size lock") = Some((std::time::Instant::now(), size));
        size
    }

    /// The database's size on disk: every column family's SST files plus the write-ahead log
    /// files (which hold what memtables have not flushed yet). For Status.dbSize and the quota.
    pub fn size_bytes(&self) -> i64 {
        let sst: u64 = ALL_CFS
            .iter()
            .map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum();
        let wal: u64 = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        (sst + wal) as i64
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("bincode serialization of an in-memory value cannot fail")
}

fn total_order() -> ReadOptions {
    let mut o = ReadOptions::default();
    o.set_total_order_seek(true);
    o
}

fn one_key() -> ReadOptions {
    let mut o = ReadOptions::default();
    o.set_prefix_same_as_start(true);
    o
}

pub fn decode<T: DeserializeOwned>(cf: &'static str, raw: &[u8]) -> Result<T> {
    bincode::deserialize(raw).map_err(|e| EngineError::Corrupt {
        cf,
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 40 MiB into the key-value family, unsynced, 1 MiB per batch.
    fn write_40_mib(engine: &Engine) {
        let value = vec![7u8; 1024];
        for chunk in 0..40 {
            let mut batch = WriteBatch::default();
            for i in 0..1024u32 {
                let key = [chunk as u32, i].map(u32::to_be_bytes).concat();
                batch.put_cf(engine.cf(CF_KV), key, &value);
            }
            engine.write_nosync(batch).unwrap();
        }
    }

    /// The size the quota check reads is measured again only when it is older than
    /// SIZE_MAX_AGE, or when asked to (the check does when the old size is over the quota).
    #[test]
    fn a_recent_size_is_reused_until_it_is_old_or_measured_again() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_with(dir.path(), 16).unwrap();
        let before = engine.recent_size_bytes();
        let at = std::time::Instant::now();
        write_40_mib(&engine);
        engine.db.flush_cf(engine.cf(CF_KV)).unwrap();
        assert!(engine.size_bytes() > before);
        if at.elapsed() < SIZE_MAX_AGE {
            assert_eq!(
                engine.recent_size_bytes(),
                before,
                "measured again too soon"
            );
        }
        let now = engine.measure_size_bytes();
        assert!(now > before);
        assert_eq!(engine.recent_size_bytes(), now);
        std::thread::sleep(SIZE_MAX_AGE);
        write_40_mib(&engine);
        engine.db.flush_cf(engine.cf(CF_KV)).unwrap();
        assert!(engine.recent_size_bytes() > now, "an old size was reused");
    }

    /// Memtables stay within half the budget however much is written (RocksDB's defaults would
    /// hold 64 MiB per column family before flushing).
    #[test]
    fn memtables_stay_within_the_memory_budget() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_with(dir.path(), 16).unwrap();
        write_40_mib(&engine);
        let memtables: u64 = ALL_CFS
            .iter()
            .map(|cf| {
                engine
                    .db
                    .property_int_value_cf(engine.cf(cf), "rocksdb.cur-size-all-mem-tables")
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum();
        // 40 MiB written; half of 16 MiB for memtables, plus one being flushed.
        assert!(
            memtables <= 12 << 20,
            "memtables hold {memtables} bytes after 40 MiB of writes"
        );
    }

    /// The write-ahead log stays within half the budget when a column family is written once and
    /// then never again while others take many writes (it would pin every log file since).
    #[test]
    fn the_write_ahead_log_stays_bounded_when_a_family_is_rarely_written() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open_with(dir.path(), 16).unwrap();
        let mut batch = WriteBatch::default();
        batch.put_cf(engine.cf(crate::keys::CF_LEASE), b"lease", b"1");
        engine.write_nosync(batch).unwrap();
        write_40_mib(&engine);
        let wal: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        // 40 MiB written; the bound is 8 MiB, plus the log being written and one being flushed.
        assert!(
            wal <= 20 << 20,
            "{wal} bytes of write-ahead log after 40 MiB of writes"
        );
    }
}
