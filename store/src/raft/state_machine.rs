//! The state machine: applies committed [`Command`]s to MVCC, builds and installs snapshots.
//!
//! Invariant: a run of entries is applied into one WriteBatch that also holds the last applied log id
//! and the membership, written (not synced: the synced log makes it redoable, see `apply`) before
//! openraft (and so the client) hears of the result. Only then are the events published to the
//! watch hub and lease deadlines updated.
//!
//! A snapshot is every record of the state-machine column families plus the revision metadata, read
//! from one RocksDB snapshot (so it matches the applied log id stored with it). It is kept whole in
//! memory (`Cursor<Vec<u8>>`, openraft 0.9's default): fine for a configuration store of megabytes,
//! a known limit for gigabytes. The latest one is also written to `snapshot.bin` in the data dir.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use eden_proto::etcdserverpb::RequestOp;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use prost::Message;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::Notify;

use super::{
    sto_err, Command, Entry, LogId, MemberAttrs, Reply, Response, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::engine::{decode, encode, Engine, EngineError};
use crate::keys::*;
use crate::lease::LeaseKeeper;
use crate::mvcc::{ApplyBatch, Mvcc, MvccError};
use crate::watch::WatchHub;

/// Everything the state machine touches; shared with the gRPC services.
pub struct StateMachine {
    pub engine: Arc<Engine>,
    pub mvcc: Arc<Mvcc>,
    pub hub: Arc<WatchHub>,
    pub leases: Arc<LeaseKeeper>,
    /// Woken when a compaction was applied; the compactor removes the old versions.
    pub compactor: Arc<Notify>,
    pub snapshot_path: PathBuf,
}

/// What a run of entries changes besides its WriteBatch: the member list and alarms (loaded on
/// first use, stored once at the end) and the lease deadlines to update once it is written.
#[derive(Default)]
struct RunChanges {
    members: Option<BTreeMap<u64, MemberAttrs>>,
    alarms: Option<BTreeSet<(u64, i32)>>,
    lease_changes: Vec<(i64, Option<i64>)>,
}

/// The snapshot's format: a version tag and the raw records.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    format: u32,
    /// (column family, key, value); the meta column family carries only [`SM_META_KEYS`].
    /// (Keys and values as `ByteBuf`: the same bytes in the file as `Vec<u8>`, read and written
    /// at once instead of one by one.)
    records: Vec<(String, ByteBuf, ByteBuf)>,
}

const SNAPSHOT_FORMAT: u32 = 1;

impl StateMachine {
    /// Opens the state machine of a data dir: the RocksDB database under `db/` and the latest
    /// snapshot in `snapshot.bin`.
    pub fn open(
        data_dir: &std::path::Path,
        ring_revisions: usize,
    ) -> Result<Arc<StateMachine>, EngineError> {
        Self::open_with(data_dir, ring_revisions, crate::engine::DEFAULT_MEMORY_MB)
    }

    /// [`StateMachine::open`] with RocksDB's memory bounded by `memory_mb`
    /// ([`Engine::open_with`]).
    pub fn open_with(
        data_dir: &std::path::Path,
        ring_revisions: usize,
        memory_mb: usize,
    ) -> Result<Arc<StateMachine>, EngineError> {
        let engine = Arc::new(Engine::open_with(&data_dir.join("db"), memory_mb)?);
        let mvcc = Arc::new(Mvcc::open(engine.clone())?);
        let hub = Arc::new(WatchHub::new(mvcc.current_rev(), ring_revisions));
        let leases = Arc::new(LeaseKeeper::new());
        leases.load(mvcc.leases()?.into_iter().map(|(id, l)| (id, l.ttl)));
        Ok(Arc::new(StateMachine {
            engine,
            mvcc,
            hub,
            leases,
            compactor: Arc::new(Notify::new()),
            snapshot_path: data_dir.join("snapshot.bin"),
        }))
    }

    fn read_err(e: impl std::error::Error + 'static) -> StorageError {
        sto_err(ErrorVerb::Read, ErrorSubject::StateMachine, e)
    }

    fn write_err(e: impl std::error::Error + 'static) -> StorageError {
        sto_err(ErrorVerb::Write, ErrorSubject::StateMachine, e)
    }

    /// The member attributes published through the log.
    pub fn members(&self) -> Result<BTreeMap<u64, MemberAttrs>, EngineError> {
        Ok(self.engine.get_meta(META_MEMBERS)?.unwrap_or_default())
    }

    /// Applies one entry's command; a batch's commands one after the other, each answered with
    /// the revision after it, as consecutive entries would be.
    fn apply_command(
        b: &mut ApplyBatch<'_>,
        cmd: &Command,
        engine: &Engine,
        run: &mut RunChanges,
    ) -> Result<Reply, EngineError> {
        let Command::Batch(cmds) = cmd else {
            return Self::apply_one(b, cmd, engine, run);
        };
        let mut answers = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let result = Self::apply_one(b, cmd, engine, run)?;
            answers.push(Response {
                revision: b.revision(),
                result,
            });
        }
        Ok(Reply::Batch(answers))
    }

    fn apply_one(
        b: &mut ApplyBatch<'_>,
        cmd: &Command,
        engine: &Engine,
        run: &mut RunChanges,
    ) -> Result<Reply, EngineError> {
        let outcome: Result<Reply, MvccError> = match cmd {
            Command::Batch(_) => {
                return Err(EngineError::Corrupt {
                    cf: CF_LOG,
                    msg: "a batch entry inside a batch entry".into(),
                })
            }
            Command::Kv { op } => match RequestOp::decode(op.as_slice()) {
                Ok(op) => b.apply_op(&op).map(|r| Reply::Kv(r.encode_to_vec())),
                Err(e) => {
                    return Err(EngineError::Corrupt {
                        cf: CF_LOG,
                        msg: format!("bad request in log: {e}"),
                    })
                }
            },
            Command::Compact { revision } => b
                .compact(*revision)
                .map(|_| Reply::Done)
                .map_err(Into::into),
            Command::LeaseGrant { id, ttl } => b.lease_grant(*id, *ttl).map(|_| {
                run.lease_changes.push((*id, Some(*ttl)));
                Reply::LeaseGranted { id: *id, ttl: *ttl }
            }),
            Command::LeaseRevoke { id } => b.lease_revoke(*id).map(|_| {
                run.lease_changes.push((*id, None));
                Reply::Done
            }),
            Command::Alarm {
                activate,
                member,
                alarm,
            } => {
                if run.alarms.is_none() {
                    run.alarms = Some(engine.get_meta(META_ALARMS)?.unwrap_or_default());
                }
                let set = run.alarms.as_mut().expect("loaded above");
                let changed: Vec<(u64, i32)> = if *activate {
                    set.insert((*member, *alarm))
                        .then_some((*member, *alarm))
                        .into_iter()
                        .collect()
                } else {
                    let gone: Vec<(u64, i32)> = set
                        .iter()
                        .filter(|(m, a)| (*member == 0 || m == member) && a == alarm)
                        .copied()
                        .collect();
                    for g in &gone {
                        set.remove(g);
                    }
                    gone
                };
                Ok(Reply::Alarms(changed))
            }
            Command::PublishMember {
                id,
                name,
                client_urls,
            } => {
                if run.members.is_none() {
                    run.members = Some(engine.get_meta(META_MEMBERS)?.unwrap_or_default());
                }
                let m = run.members.as_mut().expect("loaded above");
                m.insert(
                    *id,
                    MemberAttrs {
                        name: name.clone(),
                        client_urls: client_urls.clone(),
                    },
                );
                Ok(Reply::Done)
            }
        };
        match outcome {
            Ok(r) => Ok(r),
            Err(MvccError::Apply(e)) => Ok(Reply::Refused(e)),
            Err(MvccError::Engine(e)) => Err(e),
        }
    }

    fn build(&self) -> Result<(SnapshotMeta, Vec<u8>), EngineError> {
        let e = &self.engine;
        let snap = e.db.snapshot();
        let meta_get = |k: &[u8]| snap.get_cf(e.cf(CF_META), k);
        let applied: Option<LogId> = match meta_get(META_APPLIED)? {
            Some(raw) => decode(CF_META, &raw)?,
            None => None,
        };
        let membership: StoredMembership = match meta_get(META_MEMBERSHIP)? {
            Some(raw) => decode(CF_META, &raw)?,
            None => StoredMembership::default(),
        };
        let mut records = Vec::new();
        for cf in SM_CFS {
            let mut it = snap.raw_iterator_cf(e.cf(cf));
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                records.push((cf.to_string(), ByteBuf::from(k), ByteBuf::from(v)));
                it.next();
            }
            it.status()?;
        }
        for k in SM_META_KEYS {
            if let Some(v) = meta_get(k)? {
                records.push((
                    CF_META.to_string(),
                    ByteBuf::from(k.to_vec()),
                    ByteBuf::from(v),
                ));
            }
        }
        let data = encode(&SnapshotBody {
            format: SNAPSHOT_FORMAT,
            records,
        });
        let id = format!(
            "{}-{}-{}",
            applied.map_or(0, |l| l.leader_id.term),
            applied.map_or(0, |l| l.index),
            rand::random::<u32>()
        );
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: id,
        };
        Ok((meta, data))
    }

    fn save_snapshot_file(&self, meta: &SnapshotMeta, data: &[u8]) -> std::io::Result<()> {
        let meta_raw = encode(meta);
        let mut buf = Vec::with_capacity(8 + meta_raw.len() + data.len());
        buf.extend_from_slice(&(meta_raw.len() as u64).to_be_bytes());
        buf.extend_from_slice(&meta_raw);
        buf.extend_from_slice(data);
        let tmp = self.snapshot_path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.snapshot_path)
    }

    fn load_snapshot_file(&self) -> std::io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let buf = match std::fs::read(&self.snapshot_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt snapshot.bin");
        if buf.len() < 8 {
            return Err(bad());
        }
        let n = u64::from_be_bytes(buf[..8].try_into().map_err(|_| bad())?) as usize;
        let meta: SnapshotMeta =
            bincode::deserialize(buf.get(8..8 + n).ok_or_else(bad)?).map_err(|_| bad())?;
        Ok(Some((meta, buf[8 + n..].to_vec())))
    }

    fn install(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), EngineError> {
        let body: SnapshotBody = decode(CF_META, data)?;
        if body.format != SNAPSHOT_FORMAT {
            return Err(EngineError::Corrupt {
                cf: CF_META,
                msg: format!("unknown snapshot format {}", body.format),
            });
        }
        let e = &self.engine;
        let mut batch = WriteBatch::default();
        for cf in SM_CFS {
            let mut it = e.db.raw_iterator_cf(e.cf(cf));
            it.seek_to_first();
            while let Some(k) = it.key() {
                batch.delete_cf(e.cf(cf), k);
                it.next();
            }
            it.status()?;
        }
        for k in SM_META_KEYS {
            batch.delete_cf(e.cf(CF_META), k);
        }
        for (cf, k, v) in &body.records {
            let cf = ALL_CFS
                .iter()
                .find(|c| **c == cf.as_str())
                .ok_or(EngineError::Corrupt {
                    cf: CF_META,
                    msg: format!("snapshot names unknown column family {cf}"),
                })?;
            batch.put_cf(e.cf(cf), k, v);
        }
        e.put_meta(&mut batch, META_APPLIED, &meta.last_log_id);
        e.put_meta(&mut batch, META_MEMBERSHIP, &meta.last_membership);
        e.write_sync(batch)?;
        self.mvcc.reload()?;
        self.hub.reset(self.mvcc.current_rev());
        self.leases
            .load(self.mvcc.leases()?.into_iter().map(|(id, l)| (id, l.ttl)));
        self.compactor.notify_one();
        Ok(())
    }
}

/// The first bytes of a backup file made by `eden snapshot save`.
pub const BACKUP_MAGIC: &[u8] = b"EDEN-BACKUP-1\n";

/// Backups are padded to whole pages of this size and end with a SHA-256 of what comes before,
/// the layout etcd's snapshot stream has (etcdctl checks for it when it saves one).
const BACKUP_PAGE: usize = 512;

impl StateMachine {
    /// A consistent copy of the store for `eden snapshot save`. Returns the bytes and the store
    /// revision they hold. Layout:
    ///
    /// ```text
    /// magic | body length (u64 BE) | body (the Raft snapshot body) | CRC32 of all before |
    /// zero padding to a multiple of 512 bytes | SHA-256 of all before
    /// ```
    pub fn backup(&self) -> Result<(Vec<u8>, i64), EngineError> {
        use sha2::Digest;
        let (_meta, data) = self.build()?;
        let body: SnapshotBody = decode(CF_META, &data)?;
        let rev = body
            .records
            .iter()
            .find(|(cf, k, _)| cf == CF_META && k.as_slice() == META_REVISION)
            .map(|(_, _, v)| decode::<i64>(CF_META, v))
            .transpose()?
            .unwrap_or(crate::mvcc::INITIAL_REVISION);
        let mut out =
            Vec::with_capacity(BACKUP_MAGIC.len() + 8 + data.len() + 4 + BACKUP_PAGE + 32);
        out.extend_from_slice(BACKUP_MAGIC);
        out.extend_from_slice(&(data.len() as u64).to_be_bytes());
        out.extend_from_slice(&data);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out.resize(out.len().div_ceil(BACKUP_PAGE) * BACKUP_PAGE, 0);
        let sha = sha2::Sha256::digest(&out);
        out.extend_from_slice(&sha);
        Ok((out, rev))
    }

    /// Checks a backup's SHA-256, magic and CRC; returns the snapshot body's bytes.
    fn backup_body(backup: &[u8]) -> anyhow::Result<&[u8]> {
        use sha2::Digest;
        let head = BACKUP_MAGIC.len() + 8;
        if backup.len() < head + 4 + 32 || !backup.starts_with(BACKUP_MAGIC) {
            anyhow::bail!("not an eden backup file");
        }
        let (content, sha) = backup.split_at(backup.len() - 32);
        if sha2::Sha256::digest(content).as_slice() != sha {
            anyhow::bail!("the backup file is corrupt (SHA-256 mismatch)");
        }
        let len = u64::from_be_bytes(content[BACKUP_MAGIC.len()..head].try_into()?) as usize;
        let end = head
            .checked_add(len)
            .filter(|e| e + 4 <= content.len())
            .ok_or_else(|| anyhow::anyhow!("the backup file is truncated"))?;
        let crc = u32::from_be_bytes(content[end..end + 4].try_into()?);
        if crc32fast::hash(&content[..end]) != crc {
            anyhow::bail!("the backup file is corrupt (checksum mismatch)");
        }
        Ok(&content[head..end])
    }

    /// Writes a backup into a new data dir, as the state of a new cluster: the keys, their history
    /// since the last compaction and the leases come along; the Raft log, the membership and the
    /// member list do not (the new members bootstrap a new cluster with `--initial-cluster`).
    /// Returns the store revision restored.
    pub fn restore_backup(backup: &[u8], data_dir: &std::path::Path) -> anyhow::Result<i64> {
        let body = Self::backup_body(backup)?;
        if data_dir.join("db").exists() {
            anyhow::bail!(
                "{} already holds a data dir: restore into a new one",
                data_dir.display()
            );
        }
        let body: SnapshotBody = decode(CF_META, body)?;
        std::fs::create_dir_all(data_dir)?;
        let engine = Engine::open(&data_dir.join("db"))?;
        let mut batch = WriteBatch::default();
        for (cf, k, v) in &body.records {
            // The old cluster's members and their alarms don't carry over.
            if cf == CF_META && (k.as_slice() == META_MEMBERS || k.as_slice() == META_ALARMS) {
                continue;
            }
            let cf = ALL_CFS
                .iter()
                .find(|c| **c == cf.as_str())
                .ok_or_else(|| anyhow::anyhow!("the backup names an unknown column family {cf}"))?;
            batch.put_cf(engine.cf(cf), k, v);
        }
        engine.write_sync(batch)?;
        Ok(engine
            .get_meta::<i64>(META_REVISION)?
            .unwrap_or(crate::mvcc::INITIAL_REVISION))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Arc<StateMachine> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sm = self.clone();
        let (meta, data) = tokio::task::spawn_blocking(
            move || -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
                let (meta, data) = sm.build().map_err(StateMachine::read_err)?;
                sm.save_snapshot_file(&meta, &data).map_err(|e| {
                    sto_err(
                        ErrorVerb::Write,
                        ErrorSubject::Snapshot(Some(meta.signature())),
                        e,
                    )
                })?;
                Ok((meta, data))
            },
        )
        .await
        .map_err(|e| sto_err(ErrorVerb::Write, ErrorSubject::Snapshot(None), e))??;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Arc<StateMachine> {
    type SnapshotBuilder = Arc<StateMachine>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied: Option<LogId> = self
            .engine
            .get_meta::<Option<LogId>>(META_APPLIED)
            .map_err(StateMachine::read_err)?
            .flatten();
        let membership: StoredMembership = self
            .engine
            .get_meta(META_MEMBERSHIP)
            .map_err(StateMachine::read_err)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut b = self.mvcc.batch();
        let mut responses = Vec::new();
        let mut last_applied = None;
        let mut membership: Option<StoredMembership> = None;
        let mut run = RunChanges::default();
        for entry in entries {
            last_applied = Some(entry.log_id);
            let reply = match &entry.payload {
                EntryPayload::Blank => Reply::Done,
                EntryPayload::Normal(cmd) => {
                    crate::metrics::metrics().proposals_applied.inc();
                    StateMachine::apply_command(&mut b, cmd, &self.engine, &mut run)
                        .map_err(StateMachine::write_err)?
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    Reply::Done
                }
            };
            responses.push(Response {
                revision: b.revision(),
                result: reply,
            });
        }
        let (mut batch, events, compacted_to, rev) = b.finish();
        self.engine
            .put_meta(&mut batch, META_APPLIED, &last_applied);
        if let Some(m) = &membership {
            self.engine.put_meta(&mut batch, META_MEMBERSHIP, m);
        }
        if let Some(m) = &run.members {
            self.engine.put_meta(&mut batch, META_MEMBERS, m);
        }
        if let Some(a) = &run.alarms {
            self.engine.put_meta(&mut batch, META_ALARMS, a);
        }
        // Not synced: the log entries are (log_store.rs), in the same RocksDB write-ahead log, so
        // any later synced write (the next append, a vote, a purge) makes this batch durable too,
        // and after a power loss before that the applied id stored with it is older and openraft
        // applies the entries again from the log. A process crash (kill -9) loses nothing: RocksDB
        // hands every write to the kernel before it returns.
        self.engine
            .write_nosync(batch)
            .map_err(StateMachine::write_err)?;
        self.mvcc.committed(rev, compacted_to);
        self.hub.publish(events);
        for (id, change) in run.lease_changes {
            match change {
                Some(ttl) => self.leases.granted(id, ttl),
                None => self.leases.revoked(id),
            }
        }
        if compacted_to.is_some() {
            self.compactor.notify_one();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let sm = self.clone();
        let meta2 = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            sm.install(&meta2, &data).map_err(StateMachine::write_err)?;
            sm.save_snapshot_file(&meta2, &data)
                .map_err(StateMachine::write_err)?;
            Ok(())
        })
        .await
        .map_err(StateMachine::write_err)??;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match self.load_snapshot_file().map_err(StateMachine::read_err)? {
            Some((meta, data)) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })),
            None => Ok(None),
        }
    }
}
