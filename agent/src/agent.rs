//! `eden agent`: registers its node, keeps its lease alive, and runs the tasks assigned to it.
//!
//! ```text
//!  start ─▶ lock data dir ─▶ register (txn: alive absent, or owner is this instance)
//!                              │
//!        ┌─────────────────────┼───────────────────────────┐
//!   keep-alive loop       facts loop            assignments: reconcile (list), then watch
//!   (re-register if       (seen_at)             /eden/nodes/NODE/tasks/ from the saved cursor
//!    the lease expired)                          │ per assignment: claim txn ─▶ run ─▶ result txn
//! ```
//!
//! At most once: an assignment runs only after this agent's claim txn succeeded (claim and result
//! both absent). A new assignment seen in the watch is claimed straight from the event (its value
//! is the spec): one txn that also requires it not canceled and unchanged since the event; when
//! that fails, the agent reads the four keys and decides, as for a listed one. A claim found without a result and made by another run of the agent (one that
//! was killed) is reported as `lost`, never run again. The result and a registered variable are
//! written in one txn, only if no result exists yet.
//!
//! The cursor (the last assignment revision handled) is saved in the data dir; on start the agent
//! also lists its assignments to settle claims its previous run left, and when the watch history
//! was compacted it lists them again.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eden_proto::client::Client;
use eden_proto::etcdserverpb::{RangeRequest, WatchCreateRequest};
use eden_proto::mvccpb::event::EventType;
use eden_proto::mvccpb::KeyValue;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use eden_proto::model::objects::{
    now_ms, show_time, Alive, Claim, Facts, Status, TaskResult, TaskSpec,
};
use eden_proto::model::template::{self, Context, NodeContext};
use eden_proto::model::watcher::{Change, Watcher};
use eden_proto::model::{keys, kv, vars, Error};

use crate::decide::{decide, Decision, Seen};
use crate::exec::{self, Ending, Job};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Tasks run at the same time at most.
    pub concurrency: usize,
    pub lease_ttl: Duration,
    /// How often the facts (and "last seen") are refreshed.
    pub facts_interval: Duration,
    /// Stored output per stream, at most.
    pub max_output_bytes: usize,
    /// What a task's `eden` commands act as: this node (`EDEN_ENDPOINTS`, `EDEN_CACERT`,
    /// `EDEN_CERT`, `EDEN_KEY` and `EDEN_SEAL_KEY` in its environment).
    pub task_env: BTreeMap<String, String>,
    /// Where plugins are (`eden-plugin-NAME`) [default: DATA_DIR/plugins].
    pub plugin_dir: Option<PathBuf>,
    /// The program that serves the built-in plugins (`PROGRAM plugin serve NAME`): the eden
    /// binary. None: no built-ins.
    pub builtin_plugins: Option<PathBuf>,
    /// The names of the built-in plugins.
    pub builtins: Vec<String>,
}

impl AgentConfig {
    pub fn new(name: &str, data_dir: PathBuf) -> AgentConfig {
        AgentConfig {
            name: name.to_string(),
            data_dir,
            concurrency: 4,
            lease_ttl: Duration::from_secs(10),
            facts_interval: Duration::from_secs(60),
            max_output_bytes: 64 * 1024,
            task_env: BTreeMap::new(),
            plugin_dir: None,
            builtin_plugins: None,
            builtins: vec![],
        }
    }
}

/// What the data dir keeps.
#[derive(Serialize, Deserialize)]
struct Identity {
    instance: String,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// Holds an exclusive lock on the data dir for the agent's life (the lock goes with the file).
struct DirLock(#[allow(dead_code)] std::fs::File);

fn lock_dir(dir: &Path) -> Result<DirLock, Error> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| Error::Invalid(format!("data dir {}: {e}", dir.display())))?;
    // SAFETY: flock on a file descriptor we own.
    let r = unsafe {
        use std::os::fd::AsRawFd;
        libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB)
    };
    if r != 0 {
        return Err(Error::Refused(format!(
            "another agent is running on the data dir {}",
            dir.display()
        )));
    }
    Ok(DirLock(f))
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Resolves once the flag is true (never, if its sender is gone while false).
async fn until_true(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

pub struct Agent {
    pub(crate) cfg: AgentConfig,
    pub(crate) client: Arc<Client>,
    instance: String,
    /// This process's run: tells its claims from those of a previous (killed) run.
    run: String,
    lease: AtomicI64,
    facts: Mutex<Facts>,
    permits: Arc<Semaphore>,
    /// Assignments handled (or being handled) by this run.
    handled: Mutex<HashSet<String>>,
    /// Tasks this run started executing.
    started: Mutex<HashSet<String>>,
    running: Mutex<usize>,
    shutdown: watch::Sender<bool>,
    /// Places the files the sync rules select for this node, and reads files for templates.
    pub(crate) placer: Arc<crate::placing::Placer>,
    /// The resource plugins (desired state).
    pub(crate) plugins: Arc<crate::plugins::Host>,
    /// What the states worker keeps between rounds (see [`crate::states`]).
    pub(crate) states: tokio::sync::Mutex<crate::states::Kept>,
    _lock: DirLock,
}

impl Agent {
    /// Opens the data dir and registers the node. Refused when a live agent of another instance
    /// holds the name.
    pub async fn start(cfg: AgentConfig, client: Arc<Client>) -> Result<Arc<Agent>, Error> {
        keys::check_node_name(&cfg.name).map_err(Error::Invalid)?;
        std::fs::create_dir_all(cfg.data_dir.join("scripts"))
            .map_err(|e| Error::Invalid(format!("data dir {}: {e}", cfg.data_dir.display())))?;
        let lock = lock_dir(&cfg.data_dir)?;
        let id_path = cfg.data_dir.join("agent.json");
        let identity: Identity = match std::fs::read(&id_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", id_path.display())))?,
            Err(_) => {
                let id = Identity {
                    instance: random_hex(8),
                };
                write_atomic(&id_path, &serde_json::to_vec(&id).expect("JSON"))
                    .map_err(|e| Error::Invalid(format!("{}: {e}", id_path.display())))?;
                id
            }
        };
        let started_at = now_ms();
        let sealing = match crate::sealing::SealKey::load_or_make(&cfg.data_dir) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                tracing::warn!("no key for sealed files: {e}");
                None
            }
        };
        let placer = Arc::new(crate::placing::Placer::new(
            client.clone(),
            &cfg.name,
            sealing.clone(),
        ));
        let plugins = crate::plugins::Host::new(
            Some(
                cfg.plugin_dir
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join("plugins")),
            ),
            cfg.builtin_plugins.clone(),
            &cfg.builtins.iter().map(String::as_str).collect::<Vec<_>>(),
            cfg.data_dir.join("plugin-sockets"),
        )
        .map_err(Error::Invalid)?;
        let kept = crate::states::Kept::load(&cfg.data_dir);
        let agent = Arc::new(Agent {
            plugins: Arc::new(plugins),
            states: tokio::sync::Mutex::new(kept),
            instance: identity.instance,
            run: random_hex(6),
            lease: AtomicI64::new(0),
            facts: Mutex::new(crate::facts::gather(started_at)),
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            handled: Mutex::new(HashSet::new()),
            started: Mutex::new(HashSet::new()),
            running: Mutex::new(0),
            shutdown: watch::channel(false).0,
            placer,
            client,
            cfg,
            _lock: lock,
        });
        // An unreachable cluster is waited for (the agent usually starts with the machine).
        loop {
            match agent.register().await {
                Err(Error::Client(e)) => {
                    tracing::warn!("registering: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => break other?,
            }
        }
        if let Some(k) = &sealing {
            if let Err(e) =
                eden_proto::model::sealing::register(&agent.client, &agent.cfg.name, k.public())
                    .await
            {
                tracing::warn!("registering the key for sealed files: {e}");
            }
        }
        tracing::info!(node = %agent.cfg.name, instance = %agent.instance, run = %agent.run, "registered");
        Ok(agent)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Takes the node's name: as new (no live agent holds it), or back (this instance owns it).
    async fn register(&self) -> Result<(), Error> {
        let name = &self.cfg.name;
        let lease = self
            .client
            .lease_grant(self.cfg.lease_ttl.as_secs().max(1) as i64, 0)
            .await?
            .id;
        let alive = Alive {
            instance: self.instance.clone(),
            run: self.run.clone(),
            lease,
            since: now_ms(),
        };
        let facts = {
            let mut f = self.facts.lock().unwrap();
            f.seen_at = now_ms();
            f.clone()
        };
        let owner = serde_json::to_vec(&self.instance).expect("JSON");
        let r = kv::txn(
            &self.client,
            vec![kv::absent(&keys::alive(name))],
            vec![
                kv::put_raw(&keys::owner(name), owner.clone(), 0),
                kv::put(&keys::alive(name), &alive, lease),
                kv::put(&keys::facts(name), &facts, 0),
            ],
            vec![kv::get(&keys::alive(name))],
        )
        .await?;
        if !r.succeeded {
            let holder: Option<Alive> = kv::txn_kvs(&r, 0)
                .first()
                .and_then(|kv| kv::decode(kv).ok());
            let back = kv::txn(
                &self.client,
                vec![kv::value_is(&keys::owner(name), &owner)],
                vec![
                    kv::put(&keys::alive(name), &alive, lease),
                    kv::put(&keys::facts(name), &facts, 0),
                ],
                vec![],
            )
            .await?;
            if !back.succeeded {
                let _ = self.client.lease_revoke(lease).await;
                let who = holder.map_or(String::new(), |h| {
                    format!(
                        " (instance {}, up since {})",
                        h.instance,
                        show_time(h.since)
                    )
                });
                return Err(Error::Refused(format!(
                    "node {name} is already registered by a live agent{who}; give this agent another --name, or stop the other one (its registration expires {} s after it stops)",
                    self.cfg.lease_ttl.as_secs()
                )));
            }
            // Our previous run's lease would expire by itself; let it go now.
            if let Some(old) = holder.filter(|h| h.lease != lease) {
                let _ = self.client.lease_revoke(old.lease).await;
            }
        }
        self.lease.store(lease, Ordering::SeqCst);
        Ok(())
    }

    /// Runs until `stop` resolves (then stops cleanly) or the node's name is lost to another
    /// agent (Err).
    pub async fn run(
        self: Arc<Self>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let keepalive = tokio::spawn(self.clone().keepalive_loop());
        let facts = tokio::spawn(self.clone().facts_loop());
        let tasks = tokio::spawn(self.clone().assignments_loop());
        let placing = tokio::spawn(self.placer.clone().run());
        let states = tokio::spawn(self.clone().states_loop());
        let outcome = tokio::select! {
            _ = stop => Ok(()),
            r = keepalive => r.unwrap_or_else(|e| Err(Error::Refused(format!("keep-alive: {e}")))),
            r = tasks => r.unwrap_or_else(|e| Err(Error::Refused(format!("tasks: {e}")))),
        };
        facts.abort();
        placing.abort();
        states.abort();
        self.plugins.stop_all().await;
        self.stop_cleanly().await;
        outcome
    }

    async fn stop_cleanly(&self) {
        let _ = self.shutdown.send(true);
        // Running tasks are killed and report "canceled"; give them a moment to write it.
        for _ in 0..50 {
            if *self.running.lock().unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let name = &self.cfg.name;
        let facts = {
            let mut f = self.facts.lock().unwrap();
            f.seen_at = now_ms();
            f.stopped_at = Some(now_ms());
            f.clone()
        };
        let alive_of_this_run = serde_json::to_vec(&self.instance).expect("JSON");
        let _ = kv::txn(
            &self.client,
            vec![kv::value_is(&keys::owner(name), &alive_of_this_run)],
            vec![
                kv::put(&keys::facts(name), &facts, 0),
                kv::delete(&keys::alive(name)),
            ],
            vec![],
        )
        .await;
        let _ = self
            .client
            .lease_revoke(self.lease.load(Ordering::SeqCst))
            .await;
        tracing::info!(node = %name, "stopped");
    }

    async fn keepalive_loop(self: Arc<Self>) -> Result<(), Error> {
        let mut pace = KeepAlivePace::new(self.cfg.lease_ttl);
        let mut wait = pace.after_success();
        loop {
            tokio::time::sleep(wait).await;
            let lease = self.lease.load(Ordering::SeqCst);
            wait = match self.client.lease_keep_alive_once(lease).await {
                Ok(r) if r.ttl > 0 => pace.after_success(),
                Ok(_) => {
                    tracing::warn!("the node's lease expired (the cluster did not hear from this agent in time): registering again");
                    match self.register().await {
                        Ok(()) => pace.after_success(),
                        Err(Error::Client(e)) => {
                            tracing::warn!("registering again: {e}");
                            pace.after_failure()
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => {
                    tracing::warn!("keep-alive failed: {e}");
                    pace.after_failure()
                }
            }
        }
    }

    async fn facts_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.cfg.facts_interval).await;
            let facts = {
                let mut f = self.facts.lock().unwrap();
                f.seen_at = now_ms();
                f.clone()
            };
            let put = kv::put(&keys::facts(&self.cfg.name), &facts, 0);
            if let Err(e) = kv::txn(&self.client, vec![], vec![put], vec![]).await {
                tracing::warn!("refreshing facts failed: {e}");
            }
        }
    }

    fn cursor_path(&self) -> PathBuf {
        self.cfg.data_dir.join("cursor")
    }

    fn load_cursor(&self) -> Option<i64> {
        std::fs::read_to_string(self.cursor_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn save_cursor(&self, rev: i64) {
        if let Err(e) = write_atomic(&self.cursor_path(), rev.to_string().as_bytes()) {
            tracing::warn!("saving the cursor: {e}");
        }
    }

    /// Lists this node's assignments and handles each; returns the revision read.
    async fn reconcile(self: &Arc<Self>) -> Result<i64, Error> {
        let prefix = keys::assignments(&self.cfg.name);
        let (kvs, rev) = kv::get_prefix(&self.client, &prefix, 0, true).await?;
        for kv in kvs {
            if let Some(id) = keys::rest(&kv.key, &prefix) {
                self.handle(id.to_string()).await;
            }
        }
        Ok(rev)
    }

    async fn assignments_loop(self: Arc<Self>) -> Result<(), Error> {
        let prefix = keys::assignments(&self.cfg.name);
        // Settle what a previous run left (claims without results), then resume the watch.
        let listed = loop {
            match self.reconcile().await {
                Ok(rev) => break rev,
                Err(e) => {
                    tracing::warn!("listing assignments: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut cursor = self.load_cursor().unwrap_or(listed).min(listed);
        self.save_cursor(cursor.max(listed));
        let mut w = Watcher::from_revision(self.client.clone(), &prefix, cursor + 1)
            .relist_on_compaction()
            .give_up_after(Duration::from_secs(24 * 3600));
        loop {
            match w.next().await {
                Some(Ok(Change::Listed { kvs, revision, .. })) => {
                    tracing::warn!(
                        "the assignment history was compacted past the cursor: listed again"
                    );
                    for kv in kvs {
                        if let Some(id) = keys::rest(&kv.key, &prefix) {
                            self.handle(id.to_string()).await;
                        }
                    }
                    cursor = revision;
                    self.save_cursor(cursor);
                }
                Some(Ok(Change::Events(events))) => {
                    for e in &events {
                        let Some(kv) = &e.kv else { continue };
                        if e.r#type == EventType::Put as i32 {
                            if let Some(id) = keys::rest(&kv.key, &prefix) {
                                self.handle_new(id.to_string(), kv).await;
                            }
                        }
                        cursor = cursor.max(kv.mod_revision);
                    }
                    self.save_cursor(cursor);
                }
                // A relisting watcher does not stop at a compaction.
                Some(Ok(Change::Compacted { .. })) | None => {}
                Some(Err(e)) => {
                    tracing::warn!("watching assignments: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Decides what to do with one assignment; starts the run after a successful claim.
    async fn handle(self: &Arc<Self>, id: String) {
        if !self.handled.lock().unwrap().insert(id.clone()) {
            return;
        }
        self.settle(id).await
    }

    /// Reads what the store holds for an assignment and acts on it, retrying until that works.
    async fn settle(self: &Arc<Self>, id: String) {
        if let Err(e) = self.try_handle(&id).await {
            tracing::warn!(task = %id, "handling the assignment failed, will retry: {e}");
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match me.try_handle(&id).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(task = %id, "handling the assignment failed, will retry: {e}")
                        }
                    }
                }
            });
        }
    }

    /// An assignment as a watch event brought it: claimed in one txn when nothing happened to it
    /// since (the common case: two round trips to run it rather than three); otherwise handled
    /// as any other.
    async fn handle_new(self: &Arc<Self>, id: String, assignment: &KeyValue) {
        if !self.handled.lock().unwrap().insert(id.clone()) {
            return;
        }
        match self.claim_as_seen(&id, assignment).await {
            Ok(true) => {}
            Ok(false) => self.settle(id).await,
            Err(e) => {
                tracing::warn!(task = %id, "claiming the assignment failed, reading it again: {e}");
                self.settle(id).await
            }
        }
    }

    /// Claims an assignment on condition that its claim, result and cancel keys are absent and
    /// it is unchanged since `assignment` was read: what [`decide`] would conclude from reading
    /// them. False when a condition fails (or the spec says not to claim): nothing was written.
    async fn claim_as_seen(
        self: &Arc<Self>,
        id: &str,
        assignment: &KeyValue,
    ) -> Result<bool, Error> {
        let node = self.cfg.name.as_str();
        let spec: TaskSpec = kv::decode(assignment).map_err(Error::Corrupt)?;
        let seen = Seen {
            spec: Some(spec),
            ..Default::default()
        };
        if decide(&seen, &self.run, now_ms()) != Decision::Claim {
            return Ok(false);
        }
        let spec = seen.spec.expect("set above");
        let claim = Claim {
            instance: self.instance.clone(),
            run: self.run.clone(),
            started_at: now_ms(),
        };
        let c = kv::txn(
            &self.client,
            vec![
                kv::absent(&keys::claim(id, node)),
                kv::absent(&keys::result(id, node)),
                kv::absent(&keys::cancel(id)),
                kv::unchanged_since(&keys::assignment(node, id), assignment.mod_revision),
            ],
            vec![kv::put(&keys::claim(id, node), &claim, spec.lease)],
            vec![],
        )
        .await?;
        if c.succeeded {
            self.start_execution(spec);
        }
        Ok(c.succeeded)
    }

    async fn try_handle(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let node = self.cfg.name.as_str();
        let r = kv::txn(
            &self.client,
            vec![],
            vec![
                kv::get(&keys::assignment(node, id)),
                kv::get(&keys::claim(id, node)),
                kv::get(&keys::result(id, node)),
                kv::get(&keys::cancel(id)),
            ],
            vec![],
        )
        .await?;
        // The assignment carries the spec (without the targets).
        let spec = match kv::txn_kvs(&r, 0).first() {
            Some(kv) => Some(kv::decode::<TaskSpec>(kv).map_err(Error::Corrupt)?),
            None => None,
        };
        let claim = match kv::txn_kvs(&r, 1).first() {
            Some(kv) => Some(kv::decode::<Claim>(kv).map_err(Error::Corrupt)?),
            None => None,
        };
        let seen = Seen {
            spec,
            claim,
            has_result: !kv::txn_kvs(&r, 2).is_empty(),
            canceled: !kv::txn_kvs(&r, 3).is_empty(),
        };
        let decision = decide(&seen, &self.run, now_ms());
        let Some(spec) = seen.spec else {
            return Ok(());
        };
        let status = match decision {
            Decision::Nothing => return Ok(()),
            Decision::Resume => {
                self.start_execution(spec);
                return Ok(());
            }
            Decision::Lost(why) => Some(TaskResult::without_run(Status::Lost, why)),
            Decision::Canceled => Some(TaskResult::without_run(
                Status::Canceled,
                "canceled before it started",
            )),
            Decision::Unreachable(why) => Some(TaskResult::without_run(Status::Unreachable, why)),
            Decision::Claim => None,
        };
        if let Some(r) = status {
            return self.write_result(&spec, r, None).await;
        }
        let claim = Claim {
            instance: self.instance.clone(),
            run: self.run.clone(),
            started_at: now_ms(),
        };
        let c = kv::txn(
            &self.client,
            vec![
                kv::absent(&keys::claim(id, node)),
                kv::absent(&keys::result(id, node)),
            ],
            vec![kv::put(&keys::claim(id, node), &claim, spec.lease)],
            vec![],
        )
        .await?;
        if c.succeeded {
            self.start_execution(spec);
        }
        Ok(())
    }

    /// Starts the run of a task this run claimed, once.
    fn start_execution(self: &Arc<Self>, spec: TaskSpec) {
        if !self.started.lock().unwrap().insert(spec.id.clone()) {
            return;
        }
        *self.running.lock().unwrap() += 1;
        tokio::spawn(self.clone().execute(spec));
    }

    /// Writes a result (and the registered variable) unless a result exists.
    async fn write_result(
        &self,
        spec: &TaskSpec,
        mut result: TaskResult,
        register: Option<serde_json::Value>,
    ) -> Result<(), Error> {
        let node = self.cfg.name.as_str();
        result.for_ = spec.for_.clone();
        let mut ops = vec![kv::put(&keys::result(&spec.id, node), &result, spec.lease)];
        if let (Some(name), Some(value)) = (&spec.register, register) {
            ops.extend(vars::writes(node, name, &value, &spec.readers));
        }
        kv::txn(
            &self.client,
            vec![kv::absent(&keys::result(&spec.id, node))],
            ops,
            vec![],
        )
        .await?;
        Ok(())
    }

    /// The template context for this node, without variables (loaded by name when rendering).
    async fn context(&self) -> Result<Context, Error> {
        let labels = match kv::get_one(&self.client, &keys::labels(&self.cfg.name)).await? {
            Some(kv) => kv::decode(&kv).map_err(Error::Corrupt)?,
            None => BTreeMap::new(),
        };
        Ok(Context {
            node: NodeContext {
                name: self.cfg.name.clone(),
                labels,
                facts: self.facts.lock().unwrap().clone(),
            },
            vars: Default::default(),
            files: Default::default(),
        })
    }

    /// Renders the task's templates, loading each variable they name (a variable this node may
    /// not read fails the task here, before anything runs).
    async fn render(&self, spec: &TaskSpec) -> Result<TaskSpec, String> {
        self.render_with(|ctx| template::render(spec, ctx)).await
    }

    /// Renders with `f` over this node's context, loading each variable and file the templates
    /// name (one this node may not read is the error).
    pub(crate) async fn render_with<T>(
        &self,
        f: impl Fn(&Context) -> Result<T, String>,
    ) -> Result<T, String> {
        let ctx = self.context().await.map_err(|e| e.to_string())?;
        loop {
            let failed = match f(&ctx) {
                Ok(x) => return Ok(x),
                Err(e) => e,
            };
            let missing = ctx.vars.missing();
            let missing_files = ctx.files.missing();
            if missing.is_empty() && missing_files.is_empty() {
                return Err(failed);
            }
            for name in missing_files {
                match self.read_file(&name).await {
                    Ok(Some(bytes)) => match String::from_utf8(bytes) {
                        Ok(text) => ctx.files.insert(&name, text),
                        Err(_) => {
                            return Err(format!(
                                "the template names file {name}, which is not text"
                            ))
                        }
                    },
                    Ok(None) => ctx.files.absent(&name),
                    Err(Error::Client(e)) if e.is_permission_denied() => {
                        return Err(format!(
                            "the template names file {name}, which this node may not read (its \
                             readers do not include it)"
                        ))
                    }
                    Err(e) => return Err(format!("reading file {name}: {e}")),
                }
            }
            for (scope, name) in missing {
                match vars::get(&self.client, &scope, &name, 0).await {
                    Ok(v) => ctx.vars.insert(&scope, &name, v.value),
                    Err(Error::NotFound(_) | Error::Invalid(_)) => ctx.vars.absent(&scope, &name),
                    Err(Error::Client(e)) if e.is_permission_denied() => {
                        return Err(format!(
                            "the template names variable {name} of {scope}, which this node may \
                             not read (its readers do not include it)"
                        ))
                    }
                    Err(e) => return Err(format!("reading variable {name} of {scope}: {e}")),
                }
            }
        }
    }

    /// A file's bytes for a template (opened if sealed); None if there is none.
    async fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.placer.read(name).await?.map(|(bytes, _, _)| bytes))
    }

    /// Renders the task and turns it into a job; Err is why it cannot run.
    async fn prepare(&self, spec: &TaskSpec) -> Result<Job, String> {
        let spec = self.render(spec).await?;
        let (program, args) = if let Some(script) = &spec.script {
            let path = self.cfg.data_dir.join("scripts").join(&spec.id);
            std::fs::write(&path, script)
                .and_then(|_| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(|e| format!("writing the script to {}: {e}", path.display()))?;
            let path = path.display().to_string();
            if script.starts_with("#!") {
                (path, spec.command.clone())
            } else {
                let mut a = vec![path];
                a.extend(spec.command.iter().cloned());
                ("sh".to_string(), a)
            }
        } else if spec.shell {
            (
                "sh".to_string(),
                vec!["-c".to_string(), spec.command.join(" ")],
            )
        } else {
            let (p, a) = spec.command.split_first().ok_or("no command")?;
            (p.clone(), a.to_vec())
        };
        Ok(Job {
            program,
            args,
            env: {
                let mut env = self.cfg.task_env.clone();
                env.extend(spec.env.clone());
                env
            },
            cwd: spec.cwd.clone(),
            timeout: Duration::from_millis(spec.timeout_ms),
            max_output_bytes: self.cfg.max_output_bytes,
        })
    }

    /// Resolves when the task is canceled or the agent stops.
    async fn canceled(&self, id: &str) {
        let shutdown = self.shutdown.subscribe();
        let key = keys::cancel(id);
        // One key (a node may read its task's cancel mark, not a range around it).
        let from = match self
            .client
            .range(RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) if !r.kvs.is_empty() => return,
            Ok(r) => r.header.map_or(0, |h| h.revision) + 1,
            Err(_) => 0,
        };
        let mut w = self.client.watch(
            WatchCreateRequest {
                key: key.into(),
                start_revision: from,
                ..Default::default()
            },
            Duration::from_secs(24 * 3600),
        );
        loop {
            tokio::select! {
                m = w.recv() => match m {
                    Some(Ok(m)) if m.events.iter().any(|e| e.r#type == EventType::Put as i32) => return,
                    Some(_) => {}
                    None => std::future::pending::<()>().await,
                },
                _ = until_true(shutdown.clone()) => return,
            }
        }
    }

    async fn execute(self: Arc<Self>, spec: TaskSpec) {
        let permit = self.permits.clone().acquire_owned().await;
        let started = now_ms();
        let (result, register) = match self.prepare(&spec).await {
            Err(why) => (TaskResult::without_run(Status::Error, why), None),
            Ok(job) => match exec::run(&job, self.canceled(&spec.id)).await {
                Err(why) => (TaskResult::without_run(Status::Error, why), None),
                Ok(o) => {
                    let stopping = *self.shutdown.borrow();
                    let (status, exit_code, error) = match o.ending {
                        Ending::Exited(Some(0)) => (Status::Ok, Some(0), None),
                        Ending::Exited(Some(c)) => (Status::Failed, Some(c), None),
                        Ending::Exited(None) => {
                            (Status::Failed, None, Some("killed by a signal".to_string()))
                        }
                        Ending::TimedOut => (
                            Status::Timeout,
                            None,
                            Some(format!(
                                "killed after its timeout of {}",
                                humantime::format_duration(job.timeout)
                            )),
                        ),
                        Ending::Canceled if stopping => (
                            Status::Canceled,
                            None,
                            Some("the agent stopped".to_string()),
                        ),
                        Ending::Canceled => (Status::Canceled, None, Some("canceled".to_string())),
                    };
                    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
                    let register = (status == Status::Ok && spec.register.is_some())
                        .then(|| vars::value_of_text(&stdout));
                    let r = TaskResult {
                        status,
                        exit_code,
                        stdout,
                        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                        stdout_truncated: o.stdout_truncated,
                        stderr_truncated: o.stderr_truncated,
                        started_at: Some(started),
                        ended_at: now_ms(),
                        error,
                        for_: None,
                    };
                    (r, register)
                }
            },
        };
        drop(permit);
        let _ = std::fs::remove_file(self.cfg.data_dir.join("scripts").join(&spec.id));
        tracing::info!(task = %spec.id, status = result.status.as_str(), "task finished");
        // A result must not be lost to a passing outage: retry until it is written.
        for attempt in 0.. {
            match self
                .write_result(&spec, result.clone(), register.clone())
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 600 => {
                    tracing::warn!(task = %spec.id, "writing the result failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(task = %spec.id, "giving up writing the result: {e}");
                    break;
                }
            }
        }
        *self.running.lock().unwrap() -= 1;
    }
}

/// When an agent sends its next keep-alive. After a success, a third of the lease TTL (as etcd's
/// clients do); after a failure (a leader change, a busy member), again soon, with exponential
/// backoff and jitter, so that one lost keep-alive does not cost the lease and a thousand agents
/// refused together do not come back together.
#[derive(Debug, Clone)]
pub struct KeepAlivePace {
    ttl: Duration,
    backoff: eden_proto::client::Backoff,
}

impl KeepAlivePace {
    pub fn new(ttl: Duration) -> KeepAlivePace {
        KeepAlivePace {
            ttl,
            backoff: Self::fresh(ttl),
        }
    }

    fn fresh(ttl: Duration) -> eden_proto::client::Backoff {
        eden_proto::client::Backoff::new(Duration::from_millis(200), ttl / 6)
    }

    /// The pause after a keep-alive that worked.
    pub fn after_success(&mut self) -> Duration {
        self.backoff = Self::fresh(self.ttl);
        self.ttl / 3
    }

    /// The pause after a keep-alive (or a registration) that failed.
    pub fn after_failure(&mut self) -> Duration {
        self.backoff.next_delay().max(Duration::from_millis(20))
    }
}
