//! MVCC: etcd's revisioned key-value model on RocksDB.
//!
//! One cluster-wide revision counts every write request that changes something (a txn is one
//! revision; its ops share it and are told apart by a sub index). Each key keeps every version it had
//! since the last compaction, as its own RocksDB record `kv: enc(key) ++ rev -> Record`; a delete
//! writes a tombstone version. Each revision's changes are also listed in `rev: rev ++ sub -> key`,
//! which is what watchers replay from storage.
//!
//! ```text
//!   read at R:   for each key in range, the newest version with rev <= R (a tombstone hides the key)
//!   compact C:   reads below C are refused at once; a background pass then drops every version that
//!                no read at >= C can see (all but the newest <= C, and that one too if a tombstone)
//! ```
//!
//! Writes only happen in [`ApplyBatch`], which the state machine drives for a run of committed log
//! entries: reads inside it see its own earlier writes through an overlay, and everything (data,
//! events, metadata, the applied log id) lands in one RocksDB WriteBatch. This module knows nothing
//! of openraft: the seam is `raft/state_machine.rs`.
//!
//! Reads outside the apply path take a RocksDB snapshot, so a concurrent apply or compaction never
//! shows them a half-written state. Shortcut: a range walks every key in it (as etcd's index does
//! to count), so `count` costs as much as reading the keys.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use eden_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest,
    TxnResponse,
};
use eden_proto::mvccpb::{self, event::EventType, KeyValue};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::engine::{decode, encode, Engine, EngineError, RawIter};
use crate::keys::*;

/// One version of a key as stored in `kv`. The mod revision is part of the record's RocksDB key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub value: Vec<u8>,
    pub create_rev: i64,
    pub version: i64,
    pub lease: i64,
    pub tombstone: bool,
}

impl Record {
    fn tombstone() -> Record {
        Record {
            value: Vec::new(),
            create_rev: 0,
            version: 0,
            lease: 0,
            tombstone: true,
        }
    }

    pub fn to_kv(&self, key: &[u8], mod_rev: i64) -> KeyValue {
        self.clone().into_kv(key, mod_rev)
    }

    /// [`Record::to_kv`], taking the value instead of copying it.
    pub fn into_kv(self, key: &[u8], mod_rev: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_rev,
            mod_revision: mod_rev,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }
}

/// A lease as the state machine keeps it: its granted TTL. Deadlines live on the leader only
/// (see [`crate::lease`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl: i64,
}

/// The events of one revision, in op order, each with its previous version (for prev_kv).
///
/// A revision is shared (in an `Arc`) by every stream that watches one of its keys; each finds
/// its watchers' events with [`RevEvents::positions_in`]. A big revision (a task's 10,000
/// assignments) gets an index of its events by key the first time it is asked, so 3,000 streams
/// each looking for their one key do a binary search each instead of 3,000 scans of 10,000 keys.
#[derive(Debug, Clone)]
pub struct RevEvents {
    pub rev: i64,
    /// Not changed once a watcher has read them (the index below would be stale).
    pub events: Vec<mvccpb::Event>,
    /// Positions of `events` sorted by key (stable), built on first use when there are more
    /// than [`INDEXED_EVENTS`].
    by_key: OnceLock<Vec<u32>>,
}

/// Revisions with more events than this are searched through an index by key.
pub const INDEXED_EVENTS: usize = 32;

impl PartialEq for RevEvents {
    fn eq(&self, other: &Self) -> bool {
        self.rev == other.rev && self.events == other.events
    }
}

fn event_key(e: &mvccpb::Event) -> &[u8] {
    e.kv.as_ref()
        .map(|kv| kv.key.as_slice())
        .unwrap_or_default()
}

impl RevEvents {
    pub fn new(rev: i64, events: Vec<mvccpb::Event>) -> Self {
        RevEvents {
            rev,
            events,
            by_key: OnceLock::new(),
        }
    }

    /// The positions, ascending, of the events whose key is in `range`.
    pub fn positions_in(&self, range: &KeyRange) -> Vec<usize> {
        if self.events.len() <= INDEXED_EVENTS {
            return (0..self.events.len())
                .filter(|&i| range.contains(event_key(&self.events[i])))
                .collect();
        }
        let (idx, lo, hi) = self.bounds(range);
        let mut found: Vec<usize> = idx[lo..hi].iter().map(|&i| i as usize).collect();
        found.sort_unstable();
        found
    }

    /// Whether any event's key is in `range`.
    pub fn any_in(&self, range: &KeyRange) -> bool {
        if self.events.len() <= INDEXED_EVENTS {
            return self.events.iter().any(|e| range.contains(event_key(e)));
        }
        let (_, lo, hi) = self.bounds(range);
        lo < hi
    }

    /// The index, and where the keys of `range` are in it.
    fn bounds(&self, range: &KeyRange) -> (&[u32], usize, usize) {
        let idx = self.by_key.get_or_init(|| {
            let mut idx: Vec<u32> = (0..self.events.len() as u32).collect();
            idx.sort_by(|&a, &b| {
                event_key(&self.events[a as usize]).cmp(event_key(&self.events[b as usize]))
            });
            idx
        });
        let key = |i: u32| event_key(&self.events[i as usize]);
        let start = range.start.as_slice();
        let lo = idx.partition_point(|&i| key(i) < start);
        let hi = if range.single {
            lo + idx[lo..].partition_point(|&i| key(i) == start)
        } else if range.is_empty() {
            lo
        } else {
            match &range.end {
                Some(end) => idx.partition_point(|&i| key(i) < end.as_slice()),
                None => idx.len(),
            }
        };
        (idx, lo, hi.max(lo))
    }
}

/// A deterministic refusal of a request (the same on every member); mapped to a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("{}", eden_proto::errors::COMPACTED)]
    Compacted,
    #[error("{}", eden_proto::errors::FUTURE_REV)]
    FutureRev,
    #[error("{}", eden_proto::errors::LEASE_NOT_FOUND)]
    LeaseNotFound,
    #[error("{}", eden_proto::errors::LEASE_EXIST)]
    LeaseExists,
    #[error("{}", eden_proto::errors::KEY_NOT_FOUND)]
    KeyNotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Shared MVCC state: the engine plus the current and compacted revisions, which readers consult.
pub struct Mvcc {
    pub engine: Arc<Engine>,
    rev: AtomicI64,
    compact_rev: AtomicI64,
}

/// The revision a fresh store starts at (etcd's first write gets revision 2).
pub const INITIAL_REVISION: i64 = 1;

impl Mvcc {
    pub fn open(engine: Arc<Engine>) -> Result<Mvcc, EngineError> {
        let rev = engine
            .get_meta::<i64>(META_REVISION)?
            .unwrap_or(INITIAL_REVISION);
        let compact = engine.get_meta::<i64>(META_COMPACT)?.unwrap_or(0);
        Ok(Mvcc {
            engine,
            rev: AtomicI64::new(rev),
            compact_rev: AtomicI64::new(compact),
        })
    }

    /// Re-reads the revisions from the database (after a snapshot was installed).
    pub fn reload(&self) -> Result<(), EngineError> {
        let rev = self
            .engine
            .get_meta::<i64>(META_REVISION)?
            .unwrap_or(INITIAL_REVISION);
        let compact = self.engine.get_meta::<i64>(META_COMPACT)?.unwrap_or(0);
        self.rev.store(rev, Ordering::SeqCst);
        self.compact_rev.store(compact, Ordering::SeqCst);
        Ok(())
    }

    pub fn current_rev(&self) -> i64 {
        self.rev.load(Ordering::SeqCst)
    }

    pub fn compact_rev(&self) -> i64 {
        self.compact_rev.load(Ordering::SeqCst)
    }

    /// Serves a Range at its revision (0 = latest) from a consistent snapshot.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        // Order matters: the revision first (everything up to it is written), then the snapshot,
        // then the compacted revision (a compaction that starts after the snapshot can't hurt it).
        let current = self.current_rev();
        let snap = self.engine.db.snapshot();
        let compact = self.compact_rev();
        let rev = check_read_rev(req.revision, current, compact)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut it = if range.single {
            self.engine.versions_at(&snap)
        } else {
            self.engine.scan_at(&snap, CF_KV)
        };
        let found = scan_range(&mut it, &range, rev)?;
        Ok(shape_range(req, found, current))
    }

    /// Reads the events of revisions `[from, to]` from storage (for watchers that fell behind).
    /// Returns at most about `max_revs` revisions; the caller continues from the last one + 1.
    /// None when `from` was compacted away (checked against the same snapshot the events come from).
    pub fn events_between(
        &self,
        from: i64,
        to: i64,
        max_revs: usize,
    ) -> Result<Option<Vec<RevEvents>>, EngineError> {
        let snap = self.engine.db.snapshot();
        if from < self.compact_rev() {
            return Ok(None);
        }
        let mut rev_it = self.engine.scan_at(&snap, CF_REV);
        let mut kv_it = self.engine.versions_at(&snap);
        let mut out: Vec<RevEvents> = Vec::new();
        rev_it.seek(rev_key(from, 0));
        while rev_it.valid() {
            let (rev, _sub) =
                dec_rev_key(rev_it.key().unwrap_or_default()).ok_or(EngineError::Corrupt {
                    cf: CF_REV,
                    msg: "bad key".into(),
                })?;
            if rev > to {
                break;
            }
            if out.last().map(|r| r.rev) != Some(rev) {
                if out.len() >= max_revs {
                    break;
                }
                out.push(RevEvents::new(rev, Vec::new()));
            }
            let key = rev_it.value().unwrap_or_default().to_vec();
            kv_it.seek(kv_key(&key, rev));
            let rec: Record = match (kv_it.key(), kv_it.value()) {
                (Some(k), Some(v)) if k == kv_key(&key, rev).as_slice() => decode(CF_KV, v)?,
                _ => {
                    return Err(EngineError::Corrupt {
                        cf: CF_KV,
                        msg: format!("missing version {rev} of a key"),
                    })
                }
            };
            let prev = latest_at(&mut kv_it, &key, rev - 1)?
                .and_then(|(r, p)| (!p.tombstone).then(|| p.to_kv(&key, r)));
            out.last_mut()
                .unwrap()
                .events
                .push(make_event(&key, rev, &rec, prev));
            rev_it.next();
        }
        rev_it.status()?;
        Ok(Some(out))
    }

    /// Physically removes what compaction at `compact` made unreachable, in bounded batches.
    /// Idempotent: safe to run again after a crash.
    pub fn physical_compact(&self, compact: i64) -> Result<(), EngineError> {
        let e = &self.engine;
        let kv = e.cf(CF_KV);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(e.cf(CF_REV), rev_key(0, 0), rev_key(compact, 0));
        let mut it = e.scan(CF_KV);
        it.seek_to_first();
        // Versions of the current key with rev <= compact, newest last.
        let mut pending: Vec<(Vec<u8>, bool, i64)> = Vec::new();
        let mut current_prefix: Vec<u8> = Vec::new();
        let flush = |pending: &mut Vec<(Vec<u8>, bool, i64)>, batch: &mut WriteBatch| {
            if let Some((_, tomb, rev)) = pending.last() {
                let drop_newest = *tomb && *rev < compact;
                let keep = if drop_newest {
                    pending.len()
                } else {
                    pending.len() - 1
                };
                for (raw, _, _) in pending.iter().take(keep) {
                    batch.delete_cf(kv, raw);
                }
            }
            pending.clear();
        };
        while it.valid() {
            let raw = it.key().unwrap_or_default().to_vec();
            let plen = kv_key_prefix_len(&raw);
            let rev = u64::from_be_bytes(raw[plen..].try_into().unwrap_or([0; 8])) as i64;
            if raw[..plen] != current_prefix[..] {
                flush(&mut pending, &mut batch);
                current_prefix = raw[..plen].to_vec();
            }
            if rev <= compact {
                let rec: Record = decode(CF_KV, it.value().unwrap_or_default())?;
                pending.push((raw, rec.tombstone, rev));
            }
            if batch.len() > 10_000 {
                e.write_nosync(std::mem::take(&mut batch))?;
            }
            it.next();
        }
        flush(&mut pending, &mut batch);
        it.status()?;
        e.put_meta(&mut batch, META_COMPACT_DONE, &compact);
        e.write_nosync(batch)?;
        Ok(())
    }

    /// A hash of the key-value history from the compacted revision to `rev` (0 = current), for
    /// comparing members (etcd's HashKV). Versions a compaction made unreachable are left out even
    /// when they are not physically removed yet, so members agree whatever their compactor did.
    /// Returns (hash, compact revision, hashed revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let current = self.current_rev();
        let snap = self.engine.db.snapshot();
        let compact = self.compact_rev();
        let rev = check_read_rev(rev, current, compact)?;
        let mut it = self.engine.scan_at(&snap, CF_KV);
        it.seek_to_first();
        let mut hasher = crc32fast::Hasher::new();
        // The versions of one key with revision <= rev: (raw key, revision, record bytes, tombstone).
        let mut versions: Vec<(Vec<u8>, i64, Vec<u8>, bool)> = Vec::new();
        let mut prefix: Vec<u8> = Vec::new();
        let flush = |versions: &mut Vec<(Vec<u8>, i64, Vec<u8>, bool)>,
                     hasher: &mut crc32fast::Hasher| {
            // The newest version at or below the compacted revision survives compaction, unless it
            // is a tombstone below it.
            let keep_from = versions.iter().rposition(|(_, r, _, _)| *r <= compact);
            for (i, (k, r, v, tomb)) in versions.iter().enumerate() {
                let visible = match keep_from {
                    Some(p) if i < p => false,
                    Some(p) if i == p => !(*tomb && *r < compact),
                    _ => true,
                };
                if visible {
                    hasher.update(k);
                    hasher.update(v);
                }
            }
            versions.clear();
        };
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let plen = kv_key_prefix_len(k);
            let r = u64::from_be_bytes(k[plen..].try_into().unwrap_or([0; 8])) as i64;
            if k[..plen] != prefix[..] {
                flush(&mut versions, &mut hasher);
                prefix = k[..plen].to_vec();
            }
            if r <= rev {
                let rec: Record = decode(CF_KV, v)?;
                versions.push((k.to_vec(), r, v.to_vec(), rec.tombstone));
            }
            it.next();
        }
        it.status().map_err(EngineError::from)?;
        flush(&mut versions, &mut hasher);
        Ok((hasher.finalize(), compact, rev))
    }

    /// A hash of what the store holds (etcd's Maintenance.Hash, which etcd documents as for
    /// testing only): the key-value history as [`Mvcc::hash_kv`] sees it at the current revision,
    /// then the leases and the keys attached to them. Members that applied the same entries agree,
    /// whatever their compactors did.
    pub fn hash(&self) -> Result<u32, MvccError> {
        let (kv, _, _) = self.hash_kv(0)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&kv.to_be_bytes());
        let snap = self.engine.db.snapshot();
        for cf in [CF_LEASE, CF_LEASE_KEYS] {
            let mut it = self.engine.scan_at(&snap, cf);
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                h.update(k);
                h.update(v);
                it.next();
            }
            it.status().map_err(EngineError::from)?;
        }
        Ok(h.finalize())
    }

    /// Every lease in the store with its granted TTL.
    pub fn leases(&self) -> Result<Vec<(i64, LeaseRecord)>, EngineError> {
        let mut it = self.engine.scan(CF_LEASE);
        it.seek_to_first();
        let mut out = Vec::new();
        while it.valid() {
            let id = u64::from_be_bytes(it.key().unwrap_or_default().try_into().unwrap_or([0; 8]))
                as i64;
            out.push((id, decode(CF_LEASE, it.value().unwrap_or_default())?));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, EngineError> {
        match self
            .engine
            .db
            .get_cf(self.engine.cf(CF_LEASE), lease_key(id))?
        {
            Some(raw) => Ok(Some(decode(CF_LEASE, &raw)?)),
            None => Ok(None),
        }
    }

    /// The keys attached to a lease.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, EngineError> {
        let mut it = self.engine.scan(CF_LEASE_KEYS);
        let prefix = lease_key(id);
        it.seek(prefix);
        let mut out = Vec::new();
        while it.valid() {
            let k = it.key().unwrap_or_default();
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(k[8..].to_vec());
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Starts a batch of writes on top of the current state.
    pub fn batch(&self) -> ApplyBatch<'_> {
        let rev = self.current_rev();
        ApplyBatch {
            mvcc: self,
            batch: WriteBatch::default(),
            db_rev: rev,
            rev,
            compact_rev: self.compact_rev(),
            overlay: BTreeMap::new(),
            leases: BTreeMap::new(),
            lease_keys: BTreeMap::new(),
            events: Vec::new(),
            compacted_to: None,
        }
    }
}

/// Checks a read revision against the store's; 0 or less means the current one.
pub fn check_read_rev(rev: i64, current: i64, compact: i64) -> Result<i64, ApplyError> {
    if rev <= 0 {
        Ok(current)
    } else if rev > current {
        Err(ApplyError::FutureRev)
    } else if rev < compact {
        Err(ApplyError::Compacted)
    } else {
        Ok(rev)
    }
}

/// The newest version of `key` with revision <= `rev`, tombstones included.
fn latest_at(
    it: &mut RawIter<'_>,
    key: &[u8],
    rev: i64,
) -> Result<Option<(i64, Record)>, EngineError> {
    match latest_raw_at(it, key, rev)? {
        Some((r, v)) => Ok(Some((r, decode(CF_KV, &v)?))),
        None => Ok(None),
    }
}

/// [`latest_at`], with the record still encoded.
fn latest_raw_at(
    it: &mut RawIter<'_>,
    key: &[u8],
    rev: i64,
) -> Result<Option<(i64, Vec<u8>)>, EngineError> {
    if rev <= 0 {
        return Ok(None);
    }
    let prefix = enc_key(key);
    let mut probe = prefix.clone();
    probe.extend_from_slice(&(rev as u64).to_be_bytes());
    it.seek_for_prev(&probe);
    if let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k.len() == prefix.len() + 8 && k.starts_with(&prefix) {
            let r = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or([0; 8])) as i64;
            return Ok(Some((r, v.to_vec())));
        }
    }
    it.status()?;
    Ok(None)
}

/// Versions of one key a range scan steps through one by one; past that it seeks to the newest
/// version it wants and then past the key (a key written many times costs two seeks, as a lone
/// lookup does).
const MAX_STEPS_PER_KEY: usize = 4;

/// Every live key in `range` at `rev`, in key order, with its newest version <= rev.
///
/// One forward pass: a key's versions lie together, oldest first, so the scan steps through them
/// keeping the newest one <= rev and decodes only that one. Two seeks per key (to its newest
/// version, then past it) made a range over many keys, such as check perf's final delete of
/// hundreds of thousands, spend most of its time seeking.
fn scan_range(
    it: &mut RawIter<'_>,
    range: &KeyRange,
    rev: i64,
) -> Result<Vec<(Vec<u8>, i64, Record)>, EngineError> {
    let mut out = Vec::new();
    if range.is_empty() || rev <= 0 {
        return Ok(out);
    }
    if range.single {
        if let Some((r, rec)) = latest_at(it, &range.start, rev)? {
            if !rec.tombstone {
                out.push((range.start.clone(), r, rec));
            }
        }
        return Ok(out);
    }
    let bad = || EngineError::Corrupt {
        cf: CF_KV,
        msg: "bad key".into(),
    };
    // The key being stepped through: its encoded prefix, the key, the versions seen, and its
    // newest version <= rev so far (still encoded).
    let mut prefix: Vec<u8> = Vec::new();
    let mut key: Vec<u8> = Vec::new();
    let mut steps = 0;
    let mut best: Option<(i64, Vec<u8>)> = None;
    let mut keep = |key: &[u8], best: Option<(i64, Vec<u8>)>| -> Result<(), EngineError> {
        if let Some((r, v)) = best {
            let rec: Record = decode(CF_KV, &v)?;
            if !rec.tombstone {
                out.push((key.to_vec(), r, rec));
            }
        }
        Ok(())
    };
    it.seek(enc_key(&range.start));
    while it.valid() {
        let raw = it.key().unwrap_or_default();
        if raw.len() < 10 {
            return Err(bad());
        }
        let split = kv_key_prefix_len(raw);
        if raw[..split] != prefix[..] {
            keep(&key, best.take())?;
            let (k, _) = dec_kv_key(raw).ok_or_else(bad)?;
            if !range.contains(&k) {
                break;
            }
            prefix.clear();
            prefix.extend_from_slice(&raw[..split]);
            key = k;
            steps = 0;
        }
        let r = u64::from_be_bytes(raw[split..].try_into().map_err(|_| bad())?) as i64;
        steps += 1;
        if r > rev || steps > MAX_STEPS_PER_KEY {
            // The rest of this key's versions are newer than rev, or there are many: take the
            // newest <= rev with one seek, then go past the key.
            if r <= rev {
                best = latest_raw_at(it, &key, rev)?;
            }
            let mut next = prefix.clone();
            next.extend_from_slice(&[0xff; 8]);
            it.seek(&next);
            continue;
        }
        best = Some((r, it.value().unwrap_or_default().to_vec()));
        it.next();
    }
    it.status()?;
    // The last key stepped through (a no-op when the scan stopped at a key out of range: that
    // key's predecessor was kept then).
    keep(&key, best.take())?;
    Ok(out)
}

/// Applies etcd's Range options (filters, sort, limit, keys_only, count_only) to the found keys.
fn shape_range(
    req: &RangeRequest,
    found: Vec<(Vec<u8>, i64, Record)>,
    header_rev: i64,
) -> RangeResponse {
    use eden_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
    let count = found.len() as i64;
    let mut kvs: Vec<KeyValue> = found
        .into_iter()
        .map(|(k, r, rec)| rec.to_kv(&k, r))
        .filter(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        })
        .collect();
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        match target {
            SortTarget::Key => {} // already in key order
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.count_only {
        kvs.clear();
    } else if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse {
        header: Some(header(header_rev)),
        kvs,
        more,
        count,
    }
}

fn header(rev: i64) -> ResponseHeader {
    ResponseHeader {
        revision: rev,
        ..Default::default()
    }
}

fn make_event(key: &[u8], rev: i64, rec: &Record, prev: Option<KeyValue>) -> mvccpb::Event {
    if rec.tombstone {
        mvccpb::Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: prev,
        }
    } else {
        mvccpb::Event {
            r#type: EventType::Put as i32,
            kv: Some(rec.to_kv(key, rev)),
            prev_kv: prev,
        }
    }
}

/// A run of writes applied together: reads see the batch's own writes, and nothing reaches the
/// database until [`ApplyBatch::finish`] hands back the WriteBatch to commit.
pub struct ApplyBatch<'a> {
    mvcc: &'a Mvcc,
    pub batch: WriteBatch,
    /// The revision the database holds (everything newer is in the overlay).
    db_rev: i64,
    rev: i64,
    compact_rev: i64,
    /// Versions written in this batch, per key, oldest first.
    overlay: BTreeMap<Vec<u8>, Vec<(i64, Record)>>,
    leases: BTreeMap<i64, Option<LeaseRecord>>,
    lease_keys: BTreeMap<(i64, Vec<u8>), bool>,
    pub events: Vec<RevEvents>,
    pub compacted_to: Option<i64>,
}

/// What one revision being written accumulates before it is committed or dropped.
struct RevWrite {
    rev: i64,
    sub: u32,
    events: Vec<mvccpb::Event>,
}

impl<'a> ApplyBatch<'a> {
    pub fn revision(&self) -> i64 {
        self.rev
    }

    fn latest(&self, key: &[u8], rev: i64) -> Result<Option<(i64, Record)>, EngineError> {
        if let Some(versions) = self.overlay.get(key) {
            if let Some((r, rec)) = versions.iter().rev().find(|(r, _)| *r <= rev) {
                return Ok(Some((*r, rec.clone())));
            }
        }
        let mut it = self.mvcc.engine.versions();
        latest_at(&mut it, key, rev.min(self.db_rev))
    }

    fn range_at(
        &self,
        range: &KeyRange,
        rev: i64,
    ) -> Result<Vec<(Vec<u8>, i64, Record)>, EngineError> {
        let e = &self.mvcc.engine;
        let mut it = if range.single {
            e.versions()
        } else {
            e.scan(CF_KV)
        };
        let base = scan_range(&mut it, range, rev.min(self.db_rev))?;
        if rev <= self.db_rev {
            return Ok(base);
        }
        let mut merged: BTreeMap<Vec<u8>, (i64, Record)> =
            base.into_iter().map(|(k, r, rec)| (k, (r, rec))).collect();
        for (k, versions) in self.overlay.range(range.start.clone()..) {
            if !range.contains(k) {
                if range.single || range.end.as_deref().is_some_and(|e| k.as_slice() >= e) {
                    break;
                }
                continue;
            }
            if let Some((r, rec)) = versions.iter().rev().find(|(r, _)| *r <= rev) {
                if rec.tombstone {
                    merged.remove(k);
                } else {
                    merged.insert(k.clone(), (*r, rec.clone()));
                }
            }
        }
        Ok(merged
            .into_iter()
            .map(|(k, (r, rec))| (k, r, rec))
            .collect())
    }

    fn lease_exists(&self, id: i64) -> Result<bool, EngineError> {
        if let Some(l) = self.leases.get(&id) {
            return Ok(l.is_some());
        }
        Ok(self.mvcc.lease(id)?.is_some())
    }

    fn keys_of_lease(&self, id: i64) -> Result<Vec<Vec<u8>>, EngineError> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> =
            self.mvcc.lease_keys(id)?.into_iter().collect();
        for ((lid, k), attached) in self.lease_keys.range((id, Vec::new())..) {
            if *lid != id {
                break;
            }
            if *attached {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn begin(&self) -> RevWrite {
        RevWrite {
            rev: self.rev + 1,
            sub: 0,
            events: Vec::new(),
        }
    }

    /// Commits a revision if it wrote anything (a request that changes nothing keeps the revision).
    fn commit(&mut self, w: RevWrite) {
        if !w.events.is_empty() {
            self.rev = w.rev;
            self.events.push(RevEvents::new(w.rev, w.events));
        }
    }

    fn write_version(
        &mut self,
        w: &mut RevWrite,
        key: &[u8],
        rec: Record,
        prev: Option<(i64, Record)>,
    ) {
        let e = &self.mvcc.engine;
        self.batch
            .put_cf(e.cf(CF_KV), kv_key(key, w.rev), encode(&rec));
        self.batch.put_cf(e.cf(CF_REV), rev_key(w.rev, w.sub), key);
        w.sub += 1;
        let prev_lease = prev
            .as_ref()
            .filter(|(_, p)| !p.tombstone)
            .map_or(0, |(_, p)| p.lease);
        if prev_lease != 0 && prev_lease != rec.lease {
            self.batch
                .delete_cf(e.cf(CF_LEASE_KEYS), lease_keys_key(prev_lease, key));
            self.lease_keys.insert((prev_lease, key.to_vec()), false);
        }
        if rec.lease != 0 && prev_lease != rec.lease {
            self.batch
                .put_cf(e.cf(CF_LEASE_KEYS), lease_keys_key(rec.lease, key), []);
            self.lease_keys.insert((rec.lease, key.to_vec()), true);
        }
        let prev_kv = prev
            .filter(|(_, p)| !p.tombstone)
            .map(|(r, p)| p.into_kv(key, r));
        w.events.push(make_event(key, w.rev, &rec, prev_kv));
        self.overlay
            .entry(key.to_vec())
            .or_default()
            .push((w.rev, rec));
    }

    /// Refuses an op that would fail (a missing lease or key) before anything is written. A
    /// txn's compares are evaluated here, once: what each txn on the path decided goes to
    /// `decided` in the order [`ApplyBatch::exec_op`] meets them.
    fn check_op(&self, op: &RequestOp, decided: &mut VecDeque<bool>) -> Result<(), MvccError> {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if p.lease != 0 && !p.ignore_lease && !self.lease_exists(p.lease)? {
                    return Err(ApplyError::LeaseNotFound.into());
                }
                if (p.ignore_value || p.ignore_lease) && self.live(&p.key)?.is_none() {
                    return Err(ApplyError::KeyNotFound.into());
                }
            }
            Some(request_op::Request::RequestRange(r)) => {
                check_read_rev(r.revision, self.rev, self.compact_rev)?;
            }
            Some(request_op::Request::RequestTxn(t)) => {
                // Only the branch the compares select is checked (as etcd does): compares read the
                // store as it was before the txn, so they can be evaluated first.
                let succeeded = self.compares_hold(t)?;
                decided.push_back(succeeded);
                for op in if succeeded { &t.success } else { &t.failure } {
                    self.check_op(op, decided)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn live(&self, key: &[u8]) -> Result<Option<(i64, Record)>, EngineError> {
        Ok(self.latest(key, self.rev)?.filter(|(_, r)| !r.tombstone))
    }

    /// Applies one KV request (put, delete range or txn) as one revision.
    pub fn apply_op(&mut self, op: &RequestOp) -> Result<ResponseOp, MvccError> {
        let mut decided = VecDeque::new();
        self.check_op(op, &mut decided)?;
        let mut w = self.begin();
        let resp = self.exec_op(&mut w, op, &mut decided)?;
        self.commit(w);
        Ok(resp)
    }

    fn exec_op(
        &mut self,
        w: &mut RevWrite,
        op: &RequestOp,
        decided: &mut VecDeque<bool>,
    ) -> Result<ResponseOp, MvccError> {
        let response = match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(self.exec_put(w, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(self.exec_delete(w, d)?)
            }
            Some(request_op::Request::RequestRange(r)) => {
                // Reads inside a txn see the txn's own earlier writes.
                let visible = if w.events.is_empty() { self.rev } else { w.rev };
                let rev = if r.revision > 0 { r.revision } else { visible };
                let found = self.range_at(&KeyRange::new(&r.key, &r.range_end), rev)?;
                response_op::Response::ResponseRange(shape_range(r, found, visible))
            }
            Some(request_op::Request::RequestTxn(t)) => {
                response_op::Response::ResponseTxn(self.exec_txn(w, t, decided)?)
            }
            None => response_op::Response::ResponseRange(RangeResponse::default()),
        };
        Ok(ResponseOp {
            response: Some(response),
        })
    }

    fn exec_put(&mut self, w: &mut RevWrite, p: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = self.latest(&p.key, w.rev)?;
        let live_prev = prev.clone().filter(|(_, r)| !r.tombstone);
        let (create_rev, version) = match &live_prev {
            Some((_, r)) => (r.create_rev, r.version + 1),
            None => (w.rev, 1),
        };
        let value = match (&live_prev, p.ignore_value) {
            (Some((_, r)), true) => r.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&live_prev, p.ignore_lease) {
            (Some((_, r)), true) => r.lease,
            _ => p.lease,
        };
        let rec = Record {
            value,
            create_rev,
            version,
            lease,
            tombstone: false,
        };
        self.write_version(w, &p.key, rec, prev);
        let prev_kv = if p.prev_kv {
            live_prev.map(|(r, rec)| rec.to_kv(&p.key, r))
        } else {
            None
        };
        Ok(PutResponse {
            header: Some(header(w.rev)),
            prev_kv,
        })
    }

    fn exec_delete(
        &mut self,
        w: &mut RevWrite,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let found = self.range_at(&KeyRange::new(&d.key, &d.range_end), w.rev)?;
        let deleted = found.len() as i64;
        let mut prev_kvs = Vec::new();
        for (key, r, rec) in found {
            if d.prev_kv {
                prev_kvs.push(rec.to_kv(&key, r));
            }
            self.write_version(w, &key, Record::tombstone(), Some((r, rec)));
        }
        let rev = if deleted == 0 { self.rev } else { w.rev };
        Ok(DeleteRangeResponse {
            header: Some(header(rev)),
            deleted,
            prev_kvs,
        })
    }

    /// Runs the branch [`ApplyBatch::check_op`] chose (its compares read the store as it was
    /// before the txn, so evaluating them there or here gives the same answer).
    fn exec_txn(
        &mut self,
        w: &mut RevWrite,
        t: &TxnRequest,
        decided: &mut VecDeque<bool>,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = match decided.pop_front() {
            Some(d) => d,
            // Not reached: apply_op checks before it executes. Evaluated here if it ever is.
            None => self.compares_hold(t)?,
        };
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.exec_op(w, op, decided)?);
        }
        let rev = if w.events.is_empty() { self.rev } else { w.rev };
        Ok(TxnResponse {
            header: Some(header(rev)),
            succeeded,
            responses,
        })
    }

    /// Whether every compare of `t` holds (against the store before the txn).
    fn compares_hold(&self, t: &TxnRequest) -> Result<bool, EngineError> {
        for c in &t.compare {
            if !self.compare(c)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn compare(&self, c: &Compare) -> Result<bool, EngineError> {
        use eden_proto::etcdserverpb::compare::{CompareResult, CompareTarget};
        let found = self.range_at(&KeyRange::new(&c.key, &c.range_end), self.rev)?;
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
        let one = |kv: &KeyValue| -> bool {
            let ord = match (&c.target_union, target) {
                (Some(compare::TargetUnion::Value(v)), CompareTarget::Value) => {
                    kv.value.as_slice().cmp(v.as_slice())
                }
                (Some(compare::TargetUnion::Version(v)), CompareTarget::Version) => {
                    kv.version.cmp(v)
                }
                (Some(compare::TargetUnion::CreateRevision(v)), CompareTarget::Create) => {
                    kv.create_revision.cmp(v)
                }
                (Some(compare::TargetUnion::ModRevision(v)), CompareTarget::Mod) => {
                    kv.mod_revision.cmp(v)
                }
                (Some(compare::TargetUnion::Lease(v)), CompareTarget::Lease) => kv.lease.cmp(v),
                // A missing target value compares against the zero value of the target.
                (None, CompareTarget::Value) => kv.value.as_slice().cmp(&[][..]),
                (None, CompareTarget::Version) => kv.version.cmp(&0),
                (None, CompareTarget::Create) => kv.create_revision.cmp(&0),
                (None, CompareTarget::Mod) => kv.mod_revision.cmp(&0),
                (None, CompareTarget::Lease) => kv.lease.cmp(&0),
                _ => return false, // target and value of different kinds
            };
            match result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::NotEqual => ord.is_ne(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
            }
        };
        if found.is_empty() {
            // etcd: a value compare on a missing key fails; other targets compare against zero.
            if target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(one(&KeyValue::default()));
        }
        Ok(found.iter().all(|(k, r, rec)| one(&rec.to_kv(k, *r))))
    }

    /// Records a compaction at `rev`; the data goes away later in [`Mvcc::physical_compact`].
    pub fn compact(&mut self, rev: i64) -> Result<(), ApplyError> {
        if rev <= self.compact_rev {
            return Err(ApplyError::Compacted);
        }
        if rev > self.rev {
            return Err(ApplyError::FutureRev);
        }
        self.compact_rev = rev;
        self.compacted_to = Some(rev);
        Ok(())
    }

    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        if self.lease_exists(id)? {
            return Err(ApplyError::LeaseExists.into());
        }
        let rec = LeaseRecord { ttl };
        self.batch
            .put_cf(self.mvcc.engine.cf(CF_LEASE), lease_key(id), encode(&rec));
        self.leases.insert(id, Some(rec));
        Ok(())
    }

    /// Revokes a lease: its keys are deleted in one revision (each a DELETE event).
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), MvccError> {
        if !self.lease_exists(id)? {
            return Err(ApplyError::LeaseNotFound.into());
        }
        let keys = self.keys_of_lease(id)?;
        let mut w = self.begin();
        // Index entries the deletions below do not remove themselves (a live key detaches from
        // its own lease as it is deleted). One delete each, not a range deletion: every range
        // tombstone in a memtable is fragmented again by every new iterator on it, so 10,000
        // revocations (agents going away together) made each later read of the index slower.
        let mut left = Vec::new();
        for key in keys {
            match self.live(&key)? {
                Some((r, rec)) => {
                    let detaches = rec.lease == id;
                    self.write_version(&mut w, &key, Record::tombstone(), Some((r, rec)));
                    if !detaches {
                        left.push(key);
                    }
                }
                None => left.push(key),
            }
        }
        self.commit(w);
        let e = &self.mvcc.engine;
        self.batch.delete_cf(e.cf(CF_LEASE), lease_key(id));
        for key in left {
            self.batch
                .delete_cf(e.cf(CF_LEASE_KEYS), lease_keys_key(id, &key));
        }
        self.leases.insert(id, None);
        Ok(())
    }

    /// Adds the revision metadata to the WriteBatch and hands it over, with the events to publish.
    pub fn finish(mut self) -> (WriteBatch, Vec<RevEvents>, Option<i64>, i64) {
        let e = &self.mvcc.engine;
        e.put_meta(&mut self.batch, META_REVISION, &self.rev);
        e.put_meta(&mut self.batch, META_COMPACT, &self.compact_rev);
        (self.batch, self.events, self.compacted_to, self.rev)
    }
}

impl Mvcc {
    /// Called once the batch from [`ApplyBatch::finish`] is durable: readers may now see it.
    pub fn committed(&self, rev: i64, compacted_to: Option<i64>) {
        self.rev.store(rev, Ordering::SeqCst);
        if let Some(c) = compacted_to {
            self.compact_rev.store(c, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A revision of `n` events on keys drawn from a small alphabet (so ranges hold several and
    /// keys repeat), against every kind of range a watcher or a right may be: the index must find
    /// exactly the events a scan finds, in the revision's order.
    #[test]
    fn a_big_revision_finds_the_same_events_through_its_index_as_a_scan() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let key = |rng: &mut rand::rngs::StdRng| -> Vec<u8> {
            let len = rng.gen_range(0..4);
            (0..len).map(|_| b"ab\0z"[rng.gen_range(0..4)]).collect()
        };
        for n in [0, 1, 5, INDEXED_EVENTS, INDEXED_EVENTS + 1, 200, 1000] {
            let events: Vec<mvccpb::Event> = (0..n)
                .map(|i| mvccpb::Event {
                    kv: Some(KeyValue {
                        key: key(&mut rng),
                        version: i as i64,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect();
            let rev = RevEvents::new(7, events);
            for _ in 0..300 {
                let start = key(&mut rng);
                let end = match rng.gen_range(0..4) {
                    0 => vec![],
                    1 => vec![0],
                    2 => prefix_end(&start),
                    _ => key(&mut rng),
                };
                let range = KeyRange::new(&start, &end);
                let scan: Vec<usize> = (0..n)
                    .filter(|&i| range.contains(event_key(&rev.events[i])))
                    .collect();
                assert_eq!(rev.positions_in(&range), scan, "n {n}, range {range:?}");
                assert_eq!(
                    rev.any_in(&range),
                    !scan.is_empty(),
                    "n {n}, range {range:?}"
                );
            }
        }
    }
}
