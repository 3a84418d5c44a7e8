//! The agent places files: the sync rules that select this node (`/eden/files/sync/`) name files
//! by glob and say where they go. The agent watches the rules, every file's metadata and its own
//! labels, and after any change (and once a minute) brings every selected file to its place:
//! read with the node's own identity (the server refuses what the file's readers do not allow),
//! opened if sealed, compared with what is on disk (by SHA-256 and mode), written whole
//! ([`crate::place`]), then the rule's `then` command runs. Each outcome is recorded at
//! `/eden/nodes/NODE/files/NAME`, which is the event `file/placed/...` or `file/failed/...`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eden_proto::client::Client;
use eden_proto::model::files::{self, FileMeta, Placement, SyncRule};
use eden_proto::model::objects::now_ms;
use eden_proto::model::watcher::Watcher;
use eden_proto::model::{keys, kv, Error};

use crate::place;

/// How long a rule's `then` command may run.
const THEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often every file is checked again though nothing changed (a file edited on disk).
const RECHECK: Duration = Duration::from_secs(60);

pub struct Placer {
    client: Arc<Client>,
    node: String,
    /// The node's key for sealed files (see [`crate::sealing`]).
    sealing: Option<Arc<crate::sealing::SealKey>>,
    /// What was last recorded per file name: not written again while it holds.
    recorded: Mutex<HashMap<String, Placement>>,
}

impl Placer {
    pub fn new(
        client: Arc<Client>,
        node: &str,
        sealing: Option<Arc<crate::sealing::SealKey>>,
    ) -> Placer {
        Placer {
            client,
            node: node.to_string(),
            sealing,
            recorded: Mutex::default(),
        }
    }

    /// A file's bytes as this node may read them (opened, if sealed); None if there is no such
    /// file.
    pub async fn read(&self, name: &str) -> Result<Option<(Vec<u8>, FileMeta, i64)>, Error> {
        let f = match files::get(&self.client, name, 0).await {
            Ok(f) => f,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bytes = if f.meta.sealed {
            let key = self.sealing.as_ref().ok_or_else(|| {
                Error::Refused(format!("file {name} is sealed and this agent has no key"))
            })?;
            key.open(name, &f.bytes).map_err(Error::Refused)?
        } else {
            f.bytes
        };
        Ok(Some((bytes, f.meta, f.revision)))
    }

    /// Places files for as long as the agent runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            let rev = match self.reconcile().await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!("placing files: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            let watch = |prefix: &str| {
                Watcher::from_revision(self.client.clone(), prefix, rev + 1).relist_on_compaction()
            };
            let mut rules = watch(keys::FILE_SYNC);
            let mut metas = watch(keys::FILES_META);
            let mut labels = watch(&keys::labels(&self.node)).single_key();
            loop {
                let failed = tokio::select! {
                    c = rules.next() => matches!(c, Some(Err(_)) | None),
                    c = metas.next() => matches!(c, Some(Err(_)) | None),
                    c = labels.next() => matches!(c, Some(Err(_)) | None),
                    _ = tokio::time::sleep(RECHECK) => false,
                };
                if failed {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
                if let Err(e) = self.reconcile().await {
                    tracing::warn!("placing files: {e}");
                }
            }
        }
    }

    /// Brings every file the rules select for this node to its place; returns the revision the
    /// rules were read at.
    pub async fn reconcile(&self) -> Result<i64, Error> {
        let (rules, rev) = files::list_sync(&self.client).await?;
        let labels: BTreeMap<String, String> =
            match kv::get_one(&self.client, &keys::labels(&self.node)).await? {
                Some(kv) => kv::decode(&kv).map_err(Error::Corrupt)?,
                None => BTreeMap::new(),
            };
        let mine: Vec<&SyncRule> = rules.iter().filter(|r| r.selects(&labels)).collect();
        if mine.is_empty() {
            return Ok(rev);
        }
        for (name, meta, _) in files::list(&self.client, "").await? {
            if let Some(rule) = mine.iter().find(|r| r.takes(&name)) {
                let outcome = self.place(rule, &name, &meta).await;
                self.record(&name, outcome).await;
            }
        }
        Ok(rev)
    }

    async fn place(&self, rule: &SyncRule, name: &str, meta: &FileMeta) -> Placement {
        let path = rule.dest(name, &self.node);
        let failed = |revision: i64, error: String| Placement {
            status: "failed".into(),
            path: path.clone(),
            revision,
            error,
            time: now_ms(),
        };
        let dest = match place::check_path(&path) {
            Ok(p) => p,
            Err(e) => return failed(0, e),
        };
        let (bytes, revision) = match self.read(name).await {
            Ok(Some((bytes, _, revision))) => (bytes, revision),
            Ok(None) => return failed(0, format!("no file {name}")),
            Err(Error::Client(e)) if e.is_permission_denied() => {
                return failed(
                    0,
                    format!("this node may not read {name} (its readers do not include it)"),
                )
            }
            Err(e) => return failed(0, e.to_string()),
        };
        let mode = match rule.mode.as_deref().map(files::parse_mode) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return failed(revision, e.to_string()),
            None => meta.mode,
        };
        let ids = (|| {
            let uid = rule
                .owner
                .as_ref()
                .or(meta.owner.as_ref())
                .map(|u| place::uid_of(u));
            let gid = rule
                .group
                .as_ref()
                .or(meta.group.as_ref())
                .map(|g| place::gid_of(g));
            Ok::<_, String>((uid.transpose()?, gid.transpose()?))
        })();
        let (uid, gid) = match ids {
            Ok(x) => x,
            Err(e) => return failed(revision, e),
        };
        let placed = Placement {
            status: "placed".into(),
            path: path.clone(),
            revision,
            error: String::new(),
            time: now_ms(),
        };
        if same_on_disk(&dest, &bytes, mode) {
            return placed;
        }
        if let Err(e) = place::write_atomically(&dest, &bytes, mode, uid, gid) {
            return failed(revision, format!("writing {path}: {e}"));
        }
        tracing::info!(file = %name, %path, revision, "placed a file");
        if let Err(e) = run_then(&rule.then).await {
            return failed(revision, e);
        }
        placed
    }

    /// Records an outcome unless it is the one recorded last (same status, path, revision and
    /// error).
    async fn record(&self, name: &str, p: Placement) {
        let same = |a: &Placement, b: &Placement| {
            (&a.status, &a.path, a.revision, &a.error) == (&b.status, &b.path, b.revision, &b.error)
        };
        if self
            .recorded
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|r| same(r, &p))
        {
            return;
        }
        let key = keys::placement(&self.node, name);
        match kv::txn(&self.client, vec![], vec![kv::put(&key, &p, 0)], vec![]).await {
            Ok(_) => {
                self.recorded.lock().unwrap().insert(name.to_string(), p);
            }
            Err(e) => tracing::warn!(file = %name, "recording a placement: {e}"),
        }
    }
}

fn same_on_disk(dest: &PathBuf, bytes: &[u8], mode: u32) -> bool {
    let Ok(meta) = std::fs::metadata(dest) else {
        return false;
    };
    meta.permissions().mode() & 0o7777 == mode
        && std::fs::read(dest)
            .is_ok_and(|on_disk| files::sha256_hex(&on_disk) == files::sha256_hex(bytes))
}

/// Runs a rule's `then` command (if any) to its end, at most [`THEN_TIMEOUT`].
async fn run_then(then: &[String]) -> Result<(), String> {
    let Some((program, args)) = then.split_first() else {
        return Ok(());
    };
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(THEN_TIMEOUT, run).await {
        Err(_) => Err(format!("{program}: still running after {THEN_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(format!(
            "{program}: {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
}
