//! The state machine: applies committed [`Command`]s to MVCC, builds and installs snapshots.
//!
//! Invariant: a run of entries is applied into one WriteBatch that also holds the last applied log id
//! and the membership, written (not synced: the synced log makes it redoable, see `apply`) before
//! openraft (and so the client) hears of the result. Only then are the events published to the
//! watch hub and lease deadlines updated.
//!
//! A snapshot is every record of the state-machine column families plus the revision metadata, read
//! from one RocksDB snapshot (so it matches the applied log id stored with it), streamed into
//! `snapshot.bin` in the data dir and from there to followers (`snapshot.rs`). Installing one
//! still gathers its records into one RocksDB write batch (one atomic write).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use eden_proto::etcdserverpb::RequestOp;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use prost::Message;
use rocksdb::WriteBatch;
use tokio::sync::Notify;

use super::{
    sto_err, Command, Entry, LogId, MemberAttrs, Reply, Response, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::engine::{decode, Engine, EngineError};
use crate::keys::*;
use crate::lease::LeaseKeeper;
use crate::mvcc::{ApplyBatch, Mvcc, MvccError};
use crate::watch::WatchHub;
use std::io::{Read, Seek, SeekFrom, Write};

use super::snapshot::{self, BodyWriter, SnapshotFile};

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

    /// The meta of the snapshot `snap` makes (the applied log id and membership it holds).
    fn snapshot_meta(&self, snap: &rocksdb::Snapshot) -> Result<SnapshotMeta, EngineError> {
        let e = &self.engine;
        let meta_get = |k: &[u8]| snap.get_cf(e.cf(CF_META), k);
        let applied: Option<LogId> = match meta_get(META_APPLIED)? {
            Some(raw) => decode(CF_META, &raw)?,
            None => None,
        };
        let membership: StoredMembership = match meta_get(META_MEMBERSHIP)? {
            Some(raw) => decode(CF_META, &raw)?,
            None => StoredMembership::default(),
        };
        let id = format!(
            "{}-{}-{}",
            applied.map_or(0, |l| l.leader_id.term),
            applied.map_or(0, |l| l.index),
            rand::random::<u32>()
        );
        Ok(SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: id,
        })
    }

    /// Streams the records of `snap` into `w` as a snapshot body.
    fn write_body<W: Write + Seek>(
        &self,
        snap: &rocksdb::Snapshot,
        w: W,
    ) -> Result<W, SnapshotError> {
        let e = &self.engine;
        let mut body = BodyWriter::new(w)?;
        for cf in SM_CFS {
            let mut it = e.scan_at(snap, cf);
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                body.record(cf, k, v)?;
                it.next();
            }
            it.status().map_err(EngineError::from)?;
        }
        for k in SM_META_KEYS {
            if let Some(v) = snap.get_cf(e.cf(CF_META), k).map_err(EngineError::from)? {
                body.record(CF_META, k, &v)?;
            }
        }
        Ok(body.finish()?)
    }

    /// Builds a snapshot into `snapshot.bin` (through a temporary file, synced, then renamed).
    fn build_file(&self) -> Result<SnapshotMeta, SnapshotError> {
        let snap = self.engine.db.snapshot();
        let meta = self.snapshot_meta(&snap)?;
        let tmp = self.snapshot_path.with_extension("build");
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        snapshot::write_header(&mut w, &meta)?;
        let w = self.write_body(&snap, w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.snapshot_path)?;
        Ok(meta)
    }

    /// The meta of the snapshot in `snapshot.bin`, if there is one.
    fn snapshot_file_meta(&self) -> std::io::Result<Option<SnapshotMeta>> {
        match std::fs::File::open(&self.snapshot_path) {
            Ok(f) => Ok(Some(
                snapshot::read_header(&mut std::io::BufReader::new(f))?.0,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Installs a snapshot body read from `body`: every state-machine record replaced in one
    /// synced write batch with the applied log id and membership of `meta`.
    fn install(&self, meta: &SnapshotMeta, body: &mut impl Read) -> Result<(), SnapshotError> {
        let e = &self.engine;
        let mut batch = WriteBatch::default();
        for cf in SM_CFS {
            let mut it = e.scan(cf);
            it.seek_to_first();
            while let Some(k) = it.key() {
                batch.delete_cf(e.cf(cf), k);
                it.next();
            }
            it.status().map_err(EngineError::from)?;
        }
        for k in SM_META_KEYS {
            batch.delete_cf(e.cf(CF_META), k);
        }
        snapshot::read_body(body, |cf, k, v| {
            let cf = ALL_CFS.iter().find(|c| **c == cf).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("snapshot names unknown column family {cf}"),
                )
            })?;
            batch.put_cf(e.cf(cf), k, v);
            Ok(())
        })?;
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

    /// Installs the snapshot body in `received` from byte `start` on and makes it `snapshot.bin`
    /// (the header, then the body copied; synced, then renamed).
    fn install_received(
        &self,
        meta: &SnapshotMeta,
        (mut received, start): (std::fs::File, u64),
    ) -> Result<(), SnapshotError> {
        received.seek(SeekFrom::Start(start))?;
        self.install(meta, &mut std::io::BufReader::new(&received))?;
        received.seek(SeekFrom::Start(start))?;
        let tmp = self.snapshot_path.with_extension("install");
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        snapshot::write_header(&mut w, meta)?;
        std::io::copy(&mut received, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.snapshot_path)?;
        Ok(())
    }
}

/// A snapshot could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
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
    pub fn backup(&self) -> Result<(Vec<u8>, i64), SnapshotError> {
        use sha2::Digest;
        let snap = self.engine.db.snapshot();
        let rev = match snap
            .get_cf(self.engine.cf(CF_META), META_REVISION)
            .map_err(EngineError::from)?
        {
            Some(raw) => decode::<i64>(CF_META, &raw)?,
            None => crate::mvcc::INITIAL_REVISION,
        };
        let mut w = std::io::Cursor::new(Vec::new());
        w.write_all(BACKUP_MAGIC)?;
        w.write_all(&0u64.to_be_bytes())?;
        let mut out = self.write_body(&snap, w)?.into_inner();
        let len = (out.len() - BACKUP_MAGIC.len() - 8) as u64;
        out[BACKUP_MAGIC.len()..BACKUP_MAGIC.len() + 8].copy_from_slice(&len.to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out.resize(out.len().div_ceil(BACKUP_PAGE) * BACKUP_PAGE, 0);
        let sha = sha2::Sha256::digest(&out);
        out.extend_from_slice(&sha);
        Ok((out, rev))
    }

    /// Checks a backup's SHA-256, magic and CRC; returns the snapshot body's bytes and the CRC32.
    fn checked_backup(backup: &[u8]) -> anyhow::Result<(&[u8], u32)> {
        use sha2::Digest;
        let head = BACKUP_MAGIC.len() + 8;
        if is_etcd_snapshot(backup) {
            anyhow::bail!(
                "this is an etcd snapshot (a bbolt database), not an eden backup: eden reads only \
                 the files `eden snapshot save` (or `etcdctl snapshot save` against eden) writes; \
                 copy keys out of etcd with a client instead"
            );
        }
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
        Ok((&content[head..end], crc))
    }

    /// What a backup holds (`eden snapshot status`, as `etcdctl snapshot status` for etcd's),
    /// after checking it whole.
    pub fn backup_status(backup: &[u8]) -> anyhow::Result<BackupStatus> {
        let (body, hash) = Self::checked_backup(backup)?;
        let mut st = BackupStatus {
            hash,
            size: backup.len() as u64,
            ..Default::default()
        };
        let mut last_key: Option<Vec<u8>> = None;
        snapshot::read_body(&mut &body[..], |cf, k, v| {
            let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            match cf {
                CF_KV => {
                    st.versions += 1;
                    // The escaped user key, then the revision (8 bytes).
                    let user = &k[..k.len().saturating_sub(8)];
                    if last_key.as_deref() != Some(user) {
                        st.keys += 1;
                        last_key = Some(user.to_vec());
                    }
                }
                CF_LEASE => st.leases += 1,
                CF_META if k == META_REVISION => {
                    st.revision = decode::<i64>(CF_META, v).map_err(|e| bad(e.to_string()))?
                }
                CF_META if k == META_COMPACT => {
                    st.compacted = decode::<i64>(CF_META, v).map_err(|e| bad(e.to_string()))?
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(st)
    }
}

/// What `eden snapshot status` says of a backup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// The CRC32 the backup carries (of everything before it).
    pub hash: u32,
    /// The store revision it holds, and the revision compacted up to.
    pub revision: i64,
    pub compacted: i64,
    /// Distinct keys with history kept, and every version of them (etcd's "total keys" counts
    /// every version too).
    pub keys: u64,
    pub versions: u64,
    pub leases: u64,
    /// The file's size in bytes.
    pub size: u64,
}

/// Whether `bytes` start like an etcd snapshot: a bbolt database, whose first page is a meta page
/// with bbolt's magic after the 16-byte page header.
pub fn is_etcd_snapshot(bytes: &[u8]) -> bool {
    bytes.len() >= 20 && bytes[16..20] == 0xED0C_DAEDu32.to_le_bytes()
}

impl StateMachine {
    /// Writes a backup into a new data dir, as the state of a new cluster: the keys, their history
    /// since the last compaction and the leases come along; the Raft log, the membership and the
    /// member list do not (the new members bootstrap a new cluster with `--initial-cluster`).
    /// Returns the store revision restored.
    pub fn restore_backup(backup: &[u8], data_dir: &std::path::Path) -> anyhow::Result<i64> {
        let (body, _) = Self::checked_backup(backup)?;
        if data_dir.join("db").exists() {
            anyhow::bail!(
                "{} already holds a data dir: restore into a new one",
                data_dir.display()
            );
        }
        std::fs::create_dir_all(data_dir)?;
        let engine = Engine::open(&data_dir.join("db"))?;
        let mut batch = WriteBatch::default();
        snapshot::read_body(&mut &body[..], |cf, k, v| {
            // The old cluster's members and their alarms don't carry over.
            if cf == CF_META && (k == META_MEMBERS || k == META_ALARMS) {
                return Ok(());
            }
            let cf = ALL_CFS.iter().find(|c| **c == cf).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the backup names an unknown column family {cf}"),
                )
            })?;
            batch.put_cf(engine.cf(cf), k, v);
            Ok(())
        })?;
        engine.write_sync(batch)?;
        Ok(engine
            .get_meta::<i64>(META_REVISION)?
            .unwrap_or(crate::mvcc::INITIAL_REVISION))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Arc<StateMachine> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let sm = self.clone();
        let meta = tokio::task::spawn_blocking(move || sm.build_file())
            .await
            .map_err(|e| sto_err(ErrorVerb::Write, ErrorSubject::Snapshot(None), e))?
            .map_err(|e| sto_err(ErrorVerb::Write, ErrorSubject::Snapshot(None), e))?;
        let snapshot = SnapshotFile::open_body(&self.snapshot_path)
            .await
            .map_err(|e| {
                sto_err(
                    ErrorVerb::Read,
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    e,
                )
            })?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(snapshot),
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let path = self.snapshot_path.with_extension("recv");
        Ok(Box::new(
            SnapshotFile::create(&path)
                .await
                .map_err(StateMachine::write_err)?,
        ))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let received = snapshot.finish().await.map_err(StateMachine::write_err)?;
        let sm = self.clone();
        let meta2 = meta.clone();
        tokio::task::spawn_blocking(move || sm.install_received(&meta2, received))
            .await
            .map_err(StateMachine::write_err)?
            .map_err(StateMachine::write_err)?;
        let _ = std::fs::remove_file(self.snapshot_path.with_extension("recv"));
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta) = self.snapshot_file_meta().map_err(StateMachine::read_err)? else {
            return Ok(None);
        };
        let snapshot = SnapshotFile::open_body(&self.snapshot_path)
            .await
            .map_err(StateMachine::read_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(snapshot),
        }))
    }
}
