//! Desired state on this node (design/plugins.md). The agent watches the states and plan
//! requests (`eden_proto::model::states`), its own labels and the plugin locks, and:
//!
//! - answers each plan request that selects this node once: every resource read and planned
//!   by its plugin, nothing changed; the plan goes to `/eden/nodes/NODE/plans/NAME`;
//! - applies each new generation of a state that selects it once, resource by resource in
//!   dependency order (a failed one skips what requires it; one that changed tells what it
//!   notifies), and reports it at `/eden/nodes/NODE/states/NAME`;
//! - every state's interval, reads and plans every resource again (a drift check): what is no
//!   longer as the state says is drift, changed back in mode enforce, and reported at
//!   `/eden/nodes/NODE/drift/NAME/RESOURCE`.
//!
//! The states that select this node, with their templates rendered, are kept in
//! DATA_DIR/states.json: when the cluster cannot be reached the agent goes on checking and
//! correcting drift from that copy, keeps the reports, and writes them when it is back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eden_proto::model::objects::now_ms;
use eden_proto::model::states::{
    self, Action, AttrChange, Drift, NodePlan, NodeState, PlanRequest, PluginLock, Resource,
    ResourceReport, State,
};
use eden_proto::model::template;
use eden_proto::model::watcher::{Change, Watcher};
use eden_proto::model::{keys, kv, Error};
use eden_proto::plugin_v1 as pb;
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::plugins::CallError;

/// How often the agent tries the cluster again while it cannot reach it.
const RETRY: Duration = Duration::from_secs(2);
/// Reports kept while cut off from the cluster, at most (the oldest go first).
const MAX_OUTBOX: usize = 10_000;

/// A state that selects this node, as kept.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeptState {
    pub state: State,
    /// Its resources with their templates rendered: what is enforced while cut off.
    pub rendered: Vec<Resource>,
    /// The generation applied last.
    #[serde(default)]
    pub applied: Option<String>,
}

/// What the states worker keeps between rounds, and across restarts in DATA_DIR/states.json.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Kept {
    pub states: BTreeMap<String, KeptState>,
    /// Plan requests answered: state name -> request id.
    #[serde(default)]
    pub planned: BTreeMap<String, String>,
    /// Converge requests (a reactor's `apply`) handled: state name -> request id.
    #[serde(default)]
    pub converged: BTreeMap<String, String>,
    #[serde(default)]
    pub locks: BTreeMap<String, PluginLock>,
    /// Reports not yet written: key, value.
    #[serde(default)]
    pub outbox: Vec<(String, serde_json::Value)>,
    #[serde(skip)]
    path: PathBuf,
    /// When each state is checked for drift next.
    #[serde(skip)]
    due: HashMap<String, Instant>,
    /// The plugins' watches of this node's resources, by (state, resource).
    #[serde(skip)]
    watches: HashMap<(String, String), Watch>,
}

/// One resource watched through its plugin (WatchResource).
#[derive(Debug)]
struct Watch {
    /// The configuration it watches (a changed one is watched anew).
    config: String,
    task: tokio::task::JoinHandle<()>,
    /// The plugin cannot watch it: not asked again for this configuration.
    unsupported: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kept {
    pub fn load(data_dir: &Path) -> Kept {
        let path = data_dir.join("states.json");
        let mut k: Kept = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        k.path = path;
        k
    }

    fn save(&self) {
        let bytes = serde_json::to_vec(self).expect("JSON");
        let tmp = self.path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!("saving {}: {e}", self.path.display());
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.states
            .keys()
            .map(|n| self.due.get(n).copied().unwrap_or_else(Instant::now))
            .min()
    }
}

/// What a round does with the resources.
#[derive(Clone, Copy, Debug, PartialEq)]
enum How {
    /// Read and plan; change nothing.
    Plan,
    /// Apply a new generation.
    Apply,
    /// Read and plan again; apply what drifted when `enforce`.
    Drift { enforce: bool },
}

/// A resource's outcome in a round.
struct Outcome {
    report: ResourceReport,
    changed: bool,
}

/// The attributes that differ between `prior` and `planned`, values hidden where the schema (or
/// the resource) says sensitive; computed attributes left out.
fn attr_changes(
    schema: Option<&pb::ResourceSchema>,
    prior: &serde_json::Value,
    planned: &serde_json::Value,
    requires_replace: &[String],
    all_sensitive: bool,
) -> Vec<AttrChange> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        prior.as_object().unwrap_or(&empty),
        planned.as_object().unwrap_or(&empty),
    );
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let attr = |n: &str| schema.and_then(|s| s.attributes.iter().find(|x| x.name == n));
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .filter(|n| !attr(n).is_some_and(|x| x.computed && !x.optional))
        .map(|n| {
            let sensitive = all_sensitive || attr(n).is_some_and(|x| x.sensitive);
            AttrChange {
                attr: n.clone(),
                from: if sensitive { None } else { a.get(n).cloned() },
                to: if sensitive { None } else { b.get(n).cloned() },
                sensitive,
                forces_replace: requires_replace.contains(n),
            }
        })
        .collect()
}

fn action_of(a: i32) -> Action {
    match pb::Action::try_from(a).unwrap_or(pb::Action::Noop) {
        pb::Action::Noop => Action::Noop,
        pb::Action::Create => Action::Create,
        pb::Action::Update => Action::Update,
        pb::Action::Replace => Action::Replace,
        pb::Action::Delete => Action::Delete,
    }
}

/// The errors among a plugin's diagnostics (None: none), and its warnings.
fn diagnosed(d: &[pb::Diagnostic]) -> (Option<String>, Vec<String>) {
    let words = |d: &pb::Diagnostic| {
        let mut s = d.summary.clone();
        if !d.attribute.is_empty() {
            s = format!("{}: {s}", d.attribute.join("."));
        }
        if !d.detail.is_empty() {
            s = format!("{s} ({})", d.detail);
        }
        s
    };
    let warning = pb::diagnostic::Severity::Warning as i32;
    let errors: Vec<String> = d
        .iter()
        .filter(|d| d.severity != warning)
        .map(words)
        .collect();
    let warnings = d
        .iter()
        .filter(|d| d.severity == warning)
        .map(words)
        .collect();
    ((!errors.is_empty()).then(|| errors.join("; ")), warnings)
}

/// A resource's configuration as the plugin gets it (JSON text).
fn config_of(r: &Resource) -> String {
    serde_json::Value::Object(r.attrs.clone()).to_string()
}

/// How long a plugin may take to start answering a watch.
const WATCH_START: Duration = Duration::from_secs(10);

impl Agent {
    /// Watches, through their plugins, the resources of the states kept (those whose plugin can);
    /// a change sends the state's name on `changed`. Watches of resources no longer kept stop.
    async fn ensure_watches(self: &Arc<Self>, changed: &tokio::sync::mpsc::Sender<String>) {
        let mut k = self.states.lock().await;
        let wanted: HashMap<(String, String), Resource> = k
            .states
            .values()
            .flat_map(|s| {
                s.rendered
                    .iter()
                    .map(|r| ((s.state.name.clone(), r.id()), r.clone()))
            })
            .collect();
        k.watches.retain(|key, w| {
            wanted.get(key).is_some_and(|r| config_of(r) == w.config)
                && (!w.task.is_finished()
                    || w.unsupported.load(std::sync::atomic::Ordering::SeqCst))
        });
        for (key, r) in wanted {
            if k.watches.contains_key(&key) {
                continue;
            }
            let config = config_of(&r);
            let unsupported = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let task = tokio::spawn(self.clone().watch_one(
                key.0.clone(),
                r,
                config.clone(),
                changed.clone(),
                unsupported.clone(),
            ));
            k.watches.insert(
                key,
                Watch {
                    config,
                    task,
                    unsupported,
                },
            );
        }
    }

    /// Follows one resource's watch until it ends (the plugin stopped, or cannot watch).
    async fn watch_one(
        self: Arc<Self>,
        state: String,
        r: Resource,
        config: String,
        changed: tokio::sync::mpsc::Sender<String>,
        unsupported: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let Ok(plugin) = self.plugins.get(r.plugin()).await else {
            return;
        };
        let req = pb::WatchRequest {
            r#type: r.type_.clone(),
            name: r.name.clone(),
            config_json: config,
        };
        let mut stream = match plugin.watch(req, WATCH_START).await {
            Ok(s) => s,
            Err(s) => {
                if s.code() == tonic::Code::Unimplemented {
                    unsupported.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                return;
            }
        };
        drop(plugin);
        while let Ok(Some(ev)) = stream.message().await {
            tracing::debug!(%state, resource = %r.id(), reason = %ev.reason, "changed");
            if changed.send(state.clone()).await.is_err() {
                return;
            }
        }
    }

    /// Keeps this node's states for as long as the agent runs.
    pub(crate) async fn states_loop(self: Arc<Self>) {
        let (changed_tx, mut changed_rx) = tokio::sync::mpsc::channel::<String>(64);
        let mut synced = self.states_sync().await;
        let rev = *synced.as_ref().unwrap_or(&0);
        if let Err(e) = &synced {
            tracing::warn!("desired state: {e}; enforcing the local copy");
        }
        let from = if rev > 0 { rev + 1 } else { 0 };
        let watch = |prefix: &str| {
            Watcher::from_revision(self.client.clone(), prefix, from).relist_on_compaction()
        };
        let mut w_states = watch(states::STATES);
        let mut w_plans = watch(states::PLANS);
        let mut w_locks = watch(states::PLUGIN_LOCKS);
        let mut w_labels = watch(&keys::labels(&self.cfg.name)).single_key();
        let mut w_converge = watch(&states::converges(&self.cfg.name));
        loop {
            let due = self.states.lock().await.next_due();
            let wake = match (&synced, due) {
                (Err(_), Some(d)) => d.min(Instant::now() + RETRY),
                (Err(_), None) => Instant::now() + RETRY,
                (Ok(_), Some(d)) => d,
                (Ok(_), None) => Instant::now() + Duration::from_secs(3600),
            };
            let changed = |c: Option<Result<Change, Error>>| matches!(c, Some(Ok(_)));
            let resync = tokio::select! {
                c = w_states.next() => changed(c),
                c = w_plans.next() => changed(c),
                c = w_locks.next() => changed(c),
                c = w_labels.next() => changed(c),
                c = w_converge.next() => changed(c),
                Some(state) = changed_rx.recv() => {
                    // A plugin saw a change: check that state now.
                    self.states.lock().await.due.insert(state, Instant::now());
                    false
                }
                _ = tokio::time::sleep_until(wake.into()) => synced.is_err(),
            };
            if resync {
                synced = self.states_sync().await;
                if let Err(e) = &synced {
                    tracing::warn!("desired state: {e}; enforcing the local copy");
                }
            }
            self.drift_round().await;
            self.ensure_watches(&changed_tx).await;
        }
    }

    /// Reads the states, plan requests, labels and locks; applies new generations, answers new
    /// plan requests, writes what waits in the outbox. Returns the revision read.
    async fn states_sync(&self) -> Result<i64, Error> {
        let (all, rev) = states::list(&self.client).await?;
        let plans = states::plan_requests(&self.client).await?;
        let locks = states::locks(&self.client).await?;
        let (converge, _) =
            kv::get_prefix(&self.client, &states::converges(&self.cfg.name), 0, false).await?;
        let labels: BTreeMap<String, String> =
            match kv::get_one(&self.client, &keys::labels(&self.cfg.name)).await? {
                Some(kv) => kv::decode(&kv).map_err(Error::Corrupt)?,
                None => BTreeMap::new(),
            };
        self.plugins.set_locks(locks.clone()).await;
        let node = self.cfg.name.clone();
        // Converge requests: apply the named state now, once each, selected or not.
        for kv in &converge {
            let Some(name) = keys::rest(&kv.key, &states::converges(&node)) else {
                continue;
            };
            let Ok(req) = kv::decode::<states::ConvergeRequest>(kv) else {
                continue;
            };
            if self.states.lock().await.converged.get(name) == Some(&req.id) {
                continue;
            }
            let report = match all.iter().find(|s| s.name == name) {
                None => NodeState {
                    generation: String::new(),
                    status: "failed".into(),
                    time: now_ms(),
                    error: Some(format!(
                        "{} asked to apply state {name}, which does not exist",
                        req.by
                    )),
                    resources: vec![],
                },
                Some(s) => self.apply_now(s).await,
            };
            tracing::info!(state = %name, by = %req.by, status = %report.status, "applied a state on request");
            self.report(&states::node_state(&node, name), &report).await;
            let mut k = self.states.lock().await;
            k.converged.insert(name.to_string(), req.id.clone());
            k.save();
        }
        let mine: Vec<State> = all
            .into_iter()
            .filter(|s| s.targets.allows(&node, &labels))
            .collect();
        {
            let mut k = self.states.lock().await;
            k.locks = locks;
            let names: HashSet<&String> = mine.iter().map(|s| &s.name).collect();
            let gone: Vec<String> = k
                .states
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            for n in gone {
                tracing::info!(state = %n, "no longer selects this node: left as it is");
                k.states.remove(&n);
                k.due.remove(&n);
            }
        }
        for s in mine {
            let rendered = self.render_resources(&s.resources).await;
            let applied = {
                let k = self.states.lock().await;
                k.states.get(&s.name).and_then(|x| x.applied.clone())
            };
            let new_generation = applied.as_ref() != Some(&s.generation);
            let rendered = match rendered {
                Ok(r) => r,
                Err(e) => {
                    if new_generation {
                        let report = NodeState {
                            generation: s.generation.clone(),
                            status: "failed".into(),
                            time: now_ms(),
                            error: Some(e),
                            resources: vec![],
                        };
                        self.report(&states::node_state(&node, &s.name), &report)
                            .await;
                        let mut k = self.states.lock().await;
                        if let Some(x) = k.states.get_mut(&s.name) {
                            x.applied = Some(s.generation.clone());
                        }
                        k.save();
                    }
                    continue;
                }
            };
            {
                let mut k = self.states.lock().await;
                let entry = k.states.entry(s.name.clone()).or_insert(KeptState {
                    state: s.clone(),
                    rendered: rendered.clone(),
                    applied: None,
                });
                entry.state = s.clone();
                entry.rendered = rendered.clone();
                k.save();
            }
            if new_generation {
                let report = self.report_of(&s, self.round(&s.name, &rendered, How::Apply).await);
                tracing::info!(state = %s.name, generation = %s.generation, status = %report.status, "applied a state");
                self.report(&states::node_state(&node, &s.name), &report)
                    .await;
                let mut k = self.states.lock().await;
                if let Some(x) = k.states.get_mut(&s.name) {
                    x.applied = Some(s.generation.clone());
                }
                k.due.insert(s.name.clone(), Instant::now() + s.interval());
                k.save();
            }
        }
        for p in plans {
            if !p.state.targets.allows(&node, &labels) {
                continue;
            }
            if self.states.lock().await.planned.get(&p.state.name) == Some(&p.id) {
                continue;
            }
            let plan = self.plan_request(&p).await;
            self.report(&states::node_plan(&node, &p.state.name), &plan)
                .await;
            let mut k = self.states.lock().await;
            k.planned.insert(p.state.name.clone(), p.id.clone());
            k.save();
        }
        self.flush_outbox().await;
        Ok(rev)
    }

    /// Applies state `s` now (its templates rendered now); what happened, as a report.
    async fn apply_now(&self, s: &State) -> NodeState {
        match self.render_resources(&s.resources).await {
            Ok(rendered) => self.report_of(s, self.round(&s.name, &rendered, How::Apply).await),
            Err(e) => NodeState {
                generation: s.generation.clone(),
                status: "failed".into(),
                time: now_ms(),
                error: Some(e),
                resources: vec![],
            },
        }
    }

    fn report_of(&self, s: &State, outcomes: Vec<Outcome>) -> NodeState {
        let failed = outcomes.iter().any(|o| o.report.error.is_some());
        NodeState {
            generation: s.generation.clone(),
            status: if failed { "failed" } else { "applied" }.into(),
            time: now_ms(),
            error: None,
            resources: outcomes
                .into_iter()
                .filter(|o| o.report.action != Action::Noop || o.report.error.is_some())
                .map(|o| o.report)
                .collect(),
        }
    }

    async fn plan_request(&self, p: &PlanRequest) -> NodePlan {
        let (error, resources) = match self.render_resources(&p.state.resources).await {
            Err(e) => (Some(e), vec![]),
            Ok(rendered) => (
                None,
                self.round(&p.state.name, &rendered, How::Plan)
                    .await
                    .into_iter()
                    .map(|o| o.report)
                    .collect(),
            ),
        };
        NodePlan {
            id: p.id.clone(),
            time: now_ms(),
            error,
            resources,
        }
    }

    /// Checks every state that is due for drift.
    async fn drift_round(&self) {
        let due: Vec<KeptState> = {
            let k = self.states.lock().await;
            let now = Instant::now();
            k.states
                .iter()
                .filter(|(n, _)| k.due.get(*n).is_none_or(|d| *d <= now))
                .map(|(_, s)| s.clone())
                .collect()
        };
        for s in due {
            // Templates rendered again when the cluster answers; the kept copy otherwise.
            let rendered = match self.render_resources(&s.state.resources).await {
                Ok(r) => r,
                Err(_) => s.rendered.clone(),
            };
            let enforce = s.state.mode == states::Mode::Enforce;
            let outcomes = self
                .round(&s.state.name, &rendered, How::Drift { enforce })
                .await;
            for o in outcomes {
                if o.report.action == Action::Noop && o.report.error.is_none() {
                    continue;
                }
                if o.report.action == Action::Noop {
                    tracing::warn!(state = %s.state.name, resource = %o.report.id, "checking for drift: {}", o.report.error.as_deref().unwrap_or_default());
                    continue;
                }
                let d = Drift {
                    state: s.state.name.clone(),
                    resource: o.report.id.clone(),
                    action: o.report.action,
                    changes: o.report.changes.clone(),
                    corrected: o.changed,
                    error: o.report.error.clone(),
                    time: now_ms(),
                };
                tracing::info!(state = %d.state, resource = %d.resource, corrected = d.corrected, "drift");
                self.report(
                    &states::drift(&self.cfg.name, &s.state.name, &o.report.id),
                    &d,
                )
                .await;
            }
            let mut k = self.states.lock().await;
            k.due
                .insert(s.state.name.clone(), Instant::now() + s.state.interval());
        }
        self.flush_outbox().await;
    }

    /// Every resource's attributes rendered over this node's context (facts, labels, variables,
    /// files).
    async fn render_resources(&self, resources: &[Resource]) -> Result<Vec<Resource>, String> {
        let mut rendered = self.render_templates(resources).await?;
        // A file's `source`: an eden file, read as this node (opened if sealed; a sealed one makes
        // the resource sensitive, so that its content shows in no plan or report).
        for r in rendered.iter_mut().filter(|r| r.type_ == "file") {
            let Some(source) = r.attrs.remove("source") else {
                continue;
            };
            let name = source
                .as_str()
                .ok_or_else(|| format!("{}: source must be an eden file's name", r.id()))?;
            let (bytes, meta, _) = match self.placer.read(name).await {
                Ok(Some(f)) => f,
                Ok(None) => return Err(format!("{}: source: no file {name}", r.id())),
                Err(Error::Client(e)) if e.is_permission_denied() => {
                    return Err(format!(
                        "{}: source: this node may not read file {name} (its readers do not include it)",
                        r.id()
                    ))
                }
                Err(e) => return Err(format!("{}: source: {name}: {e}", r.id())),
            };
            use base64::Engine;
            r.attrs.insert(
                "content_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
            r.sensitive |= meta.sealed;
        }
        Ok(rendered)
    }

    async fn render_templates(&self, resources: &[Resource]) -> Result<Vec<Resource>, String> {
        self.render_with(|ctx| {
            let mut env = template::env();
            // A file's content keeps its last newline.
            env.set_keep_trailing_newline(true);
            resources
                .iter()
                .map(|r| {
                    let attrs = template::render_json(
                        &env,
                        &serde_json::Value::Object(r.attrs.clone()),
                        ctx,
                    )
                    .map_err(|e| format!("{}: template: {e}", r.id()))?;
                    let mut r = r.clone();
                    r.attrs = attrs.as_object().cloned().unwrap_or_default();
                    Ok(r)
                })
                .collect()
        })
        .await
    }

    /// One round over a state's resources, in order.
    async fn round(&self, state: &str, resources: &[Resource], how: How) -> Vec<Outcome> {
        let mut out: Vec<Outcome> = Vec::with_capacity(resources.len());
        for r in resources {
            let failed_dep = r.require.iter().find(|dep| {
                out.iter()
                    .any(|o| &o.report.id == *dep && o.report.error.is_some())
            });
            let notified = resources.iter().any(|other| {
                other.notify.contains(&r.id())
                    && out.iter().any(|o| o.report.id == other.id() && o.changed)
            });
            let outcome = match failed_dep {
                Some(dep) => Outcome {
                    report: ResourceReport {
                        id: r.id(),
                        action: Action::Noop,
                        changes: vec![],
                        detail: String::new(),
                        error: Some(format!("skipped: it requires {dep}, which failed")),
                        warnings: vec![],
                    },
                    changed: false,
                },
                None => self.one(r, how, notified).await,
            };
            if let Some(e) = &outcome.report.error {
                tracing::warn!(%state, resource = %r.id(), "{e}");
            }
            out.push(outcome);
        }
        out
    }

    /// Reads, plans and (unless planning, or reporting drift only) applies one resource.
    async fn one(&self, r: &Resource, how: How, notified: bool) -> Outcome {
        let mut report = ResourceReport {
            id: r.id(),
            action: Action::Noop,
            changes: vec![],
            detail: String::new(),
            error: None,
            warnings: vec![],
        };
        let fail = |mut report: ResourceReport, e: String| {
            report.error = Some(e);
            Outcome {
                report,
                changed: false,
            }
        };
        let plugin = match self.plugins.get(r.plugin()).await {
            Ok(p) => p,
            Err(e) => return fail(report, e),
        };
        let Some(schema) = plugin.resource(&r.type_).cloned() else {
            return fail(
                report,
                format!(
                    "plugin {} provides no resource type {} (it provides: {})",
                    plugin.name,
                    r.type_,
                    plugin
                        .schema
                        .resources
                        .iter()
                        .map(|s| s.r#type.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        let timeout = r.timeout();
        let config = config_of(r);
        let stopped = |e: &CallError| matches!(e, CallError::TimedOut(_) | CallError::Died(_));
        macro_rules! call {
            ($f:expr) => {
                match $f.await {
                    Ok(x) => x,
                    Err(e) => {
                        if stopped(&e) {
                            self.plugins.stop(&plugin.name).await;
                        }
                        return fail(report, e.to_string());
                    }
                }
            };
        }
        let v = call!(plugin.validate(
            pb::ValidateRequest {
                r#type: r.type_.clone(),
                config_json: config.clone(),
            },
            timeout
        ));
        let (err, warnings) = diagnosed(&v.diagnostics);
        report.warnings = warnings;
        if let Some(e) = err {
            return fail(report, format!("invalid: {e}"));
        }
        let read = call!(plugin.read(
            pb::ReadRequest {
                r#type: r.type_.clone(),
                name: r.name.clone(),
                config_json: config.clone(),
            },
            timeout
        ));
        if let (Some(e), _) = diagnosed(&read.diagnostics) {
            return fail(report, format!("reading: {e}"));
        }
        let plan = call!(plugin.plan(
            pb::PlanRequest {
                r#type: r.type_.clone(),
                name: r.name.clone(),
                config_json: config.clone(),
                prior_state_json: read.state_json.clone(),
                notified,
                drift_check: matches!(how, How::Drift { .. }),
            },
            timeout
        ));
        let (err, warnings) = diagnosed(&plan.diagnostics);
        report.warnings.extend(warnings);
        if let Some(e) = err {
            return fail(report, format!("planning: {e}"));
        }
        report.action = action_of(plan.action);
        let parse = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        report.changes = attr_changes(
            Some(&schema),
            &parse(&read.state_json),
            &parse(&plan.planned_state_json),
            &plan.requires_replace,
            r.sensitive,
        );
        if !r.sensitive {
            report.detail = plan.detail.clone();
        }
        let apply = match how {
            How::Plan => false,
            How::Apply => true,
            How::Drift { enforce } => enforce,
        };
        if report.action == Action::Noop || !apply {
            // A plan's change counts for notify: the plan then shows what it would set off.
            let changed = how == How::Plan && report.action != Action::Noop;
            return Outcome { report, changed };
        }
        let applied = call!(plugin.apply(
            pb::ApplyRequest {
                r#type: r.type_.clone(),
                name: r.name.clone(),
                config_json: config,
                prior_state_json: read.state_json,
                planned_state_json: plan.planned_state_json,
                notified,
            },
            timeout
        ));
        let (err, warnings) = diagnosed(&applied.diagnostics);
        report.warnings.extend(warnings);
        if let Some(e) = err {
            return fail(report, format!("applying: {e}"));
        }
        tracing::info!(resource = %r.id(), action = r#report.action.as_str(), "applied");
        Outcome {
            report,
            changed: true,
        }
    }

    /// Writes a report, or keeps it in the outbox while the cluster cannot be reached.
    async fn report(&self, key: &str, value: &impl Serialize) {
        let value = serde_json::to_value(value).expect("JSON");
        let mut k = self.states.lock().await;
        k.outbox.push((key.to_string(), value));
        if k.outbox.len() > MAX_OUTBOX {
            let extra = k.outbox.len() - MAX_OUTBOX;
            k.outbox.drain(..extra);
        }
        k.save();
    }

    /// Writes what waits in the outbox, oldest first; stops at the first failure.
    async fn flush_outbox(&self) {
        let mut k = self.states.lock().await;
        while let Some((key, value)) = k.outbox.first().cloned() {
            let put = kv::put(&key, &value, 0);
            match kv::txn(&self.client, vec![], vec![put], vec![]).await {
                Ok(_) => {
                    k.outbox.remove(0);
                }
                Err(e) => {
                    tracing::warn!("writing a state report: {e}; kept until the cluster answers");
                    break;
                }
            }
        }
        k.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_hide_sensitive_values_and_leave_out_computed_ones() {
        let schema = pb::ResourceSchema {
            r#type: "file".into(),
            attributes: vec![
                pb::Attribute {
                    name: "sha256".into(),
                    computed: true,
                    ..Default::default()
                },
                pb::Attribute {
                    name: "secret".into(),
                    sensitive: true,
                    optional: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let prior = json!({"mode": "0644", "sha256": "a", "secret": "x", "same": 1});
        let planned = json!({"mode": "0600", "sha256": "b", "secret": "y", "same": 1});
        let c = attr_changes(Some(&schema), &prior, &planned, &["mode".into()], false);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].attr, "mode");
        assert_eq!(c[0].to, Some(json!("0600")));
        assert!(c[0].forces_replace);
        assert_eq!(
            (c[1].attr.as_str(), c[1].sensitive, &c[1].to),
            ("secret", true, &None)
        );
        let all = attr_changes(Some(&schema), &prior, &planned, &[], true);
        assert!(all.iter().all(|c| c.sensitive && c.from.is_none()));
    }
}
