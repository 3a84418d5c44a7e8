//! The creator's side of tasks: resolve targets, store the task, follow its results, cancel it,
//! list and show tasks.
//!
//! A task is stored as its spec (`/eden/tasks/ID`) plus one assignment per target
//! (`/eden/nodes/NODE/tasks/ID`), all under one lease whose TTL is the task's retention, in one
//! log entry through eden's `Tasks.Create` (the txn [`store_txn`], without etcd's limit on a
//! txn's operations; decision 0029). A server without that call (etcd) gets txns instead: one, or
//! several of at most [`MAX_OPS_PER_TXN`] operations for more targets than fit one (the spec goes
//! in the first, so a target whose assignment was never written shows as unreachable; the others
//! go [`TXNS_IN_FLIGHT`] at a time).
//! Agents write claims and results under `/eden/runs/ID/`, which [`follow`] watches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Client, ClientError};
use rand::Rng;
use serde::Serialize;

use crate::model::keys;
use crate::model::kv;
use crate::model::nodes;
use crate::model::objects::{now_ms, Claim, Status, TaskResult, TaskSpec};
use crate::model::readers::Readers;
use crate::model::selector::Selector;
use crate::model::watcher::{Change, Watcher};
use crate::model::Error;
use crate::mvccpb::event::EventType;

/// etcd's default --max-txn-ops is 128: stay under it.
pub const MAX_OPS_PER_TXN: usize = 120;
/// How many of a large task's txns are in flight at once (the first one goes alone).
pub const TXNS_IN_FLIGHT: usize = 8;
/// After the deadline, how long a claim made just before it has to show up.
pub const DEADLINE_GRACE_MS: u64 = 3_000;
/// After a run's timeout, how long its result has to show up before the run counts as lost.
pub const RESULT_GRACE_MS: u64 = 30_000;

/// Which nodes a task runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    Selector(String),
    Nodes(Vec<String>),
}

/// What `eden run` asks for.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub targets: Targets,
    pub command: Vec<String>,
    pub script: Option<String>,
    pub shell: bool,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub timeout: Duration,
    /// How long offline targets may take to start it.
    pub deadline: Duration,
    pub register: Option<String>,
    /// Who besides each node may read the variable it registers: `node:NAME` or selectors.
    pub readers: Vec<String>,
    /// Carried into the results and their events (a rule's `for:`).
    pub for_: Option<String>,
    pub retention: Duration,
}

/// Resolves targets to node names, now.
pub async fn resolve(client: &Client, targets: &Targets) -> Result<Vec<String>, Error> {
    let known = nodes::list(client).await?;
    match targets {
        Targets::Selector(s) => {
            let sel = Selector::parse(s).map_err(|e| Error::Invalid(e.to_string()))?;
            let matched: Vec<String> = known
                .iter()
                .filter(|n| sel.matches(&n.labels))
                .map(|n| n.name.clone())
                .collect();
            if matched.is_empty() {
                return Err(Error::NoMatch(format!(
                    "selector {s:?} matched no node ({} known)",
                    known.len()
                )));
            }
            Ok(matched)
        }
        Targets::Nodes(list) => {
            let mut out = Vec::new();
            for n in list {
                keys::check_node_name(n).map_err(Error::Invalid)?;
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
            let unknown: Vec<&str> = out
                .iter()
                .filter(|n| !known.iter().any(|k| &k.name == *n))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(Error::NoMatch(format!(
                    "unknown node(s): {} (no agent ever registered them)",
                    unknown.join(", ")
                )));
            }
            if out.is_empty() {
                return Err(Error::Invalid("--nodes names no node".into()));
            }
            Ok(out)
        }
    }
}

/// A new task ID: creation time (sortable) and a random suffix.
pub fn new_id() -> String {
    let now = std::time::SystemTime::now();
    let t = humantime::format_rfc3339_seconds(now).to_string(); // 2026-11-24T22:55:01Z
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    format!(
        "{}-{}-{:04x}",
        &digits[..8],
        &digits[8..14],
        rand::thread_rng().gen::<u16>()
    )
}

/// Creates the task; returns its spec.
pub async fn create(client: &Client, t: &NewTask) -> Result<TaskSpec, Error> {
    use futures::StreamExt;
    let spec = prepare(client, t).await?;
    let json = serde_json::to_vec(&spec).expect("JSON");
    match client.create_task(json).await {
        Ok(r) if r.created => return Ok(spec),
        Ok(_) => return Err(Error::Refused(format!("task {} exists already", spec.id))),
        // etcd, or an eden from before the call: txns.
        Err(ClientError::Server(s)) if s.code() == tonic::Code::Unimplemented => {}
        Err(e) => return Err(e.into()),
    }
    let ops = store_ops(&spec);
    let mut chunks = ops.chunks(MAX_OPS_PER_TXN);
    // The first txn (the spec and the first assignments) also makes sure the ID is new.
    let first = chunks.next().unwrap_or_default();
    let r = kv::txn(
        client,
        vec![kv::absent(&keys::spec(&spec.id))],
        first.to_vec(),
        vec![],
    )
    .await?;
    if !r.succeeded {
        return Err(Error::Refused(format!("task {} exists already", spec.id)));
    }
    // A loop, not a stream over a closure: rustc cannot prove the latter's future Send for
    // every lifetime, and the web view awaits this in a handler that must be Send.
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for chunk in chunks {
        if in_flight.len() >= TXNS_IN_FLIGHT {
            if let Some(r) = in_flight.next().await {
                r?;
            }
        }
        in_flight.push(kv::txn(client, vec![], chunk.to_vec(), vec![]));
    }
    while let Some(r) = in_flight.next().await {
        r?;
    }
    Ok(spec)
}

/// Checks a new task, resolves its targets and grants its lease; returns the spec, which
/// [`store_ops`] turns into the puts that store it (for a caller that writes them in its own
/// txn: a reactor, with its cursor).
pub async fn prepare(client: &Client, t: &NewTask) -> Result<TaskSpec, Error> {
    if t.command.is_empty() && t.script.is_none() {
        return Err(Error::Invalid(
            "nothing to run: give a command after -- or --script FILE".into(),
        ));
    }
    if let Some(r) = &t.register {
        keys::check_name("variable name", r).map_err(Error::Invalid)?;
    }
    if !t.readers.is_empty() && t.register.is_none() {
        return Err(Error::Invalid("--readers needs --register".into()));
    }
    let readers = Readers::parse(&t.readers).map_err(Error::Invalid)?;
    let targets = resolve(client, &t.targets).await?;
    let ttl = t.retention.as_secs().max(1) as i64;
    let lease = client.lease_grant(ttl, 0).await?.id;
    let now = now_ms();
    let spec = TaskSpec {
        id: new_id(),
        command: t.command.clone(),
        script: t.script.clone(),
        shell: t.shell,
        env: t.env.clone(),
        cwd: t.cwd.clone(),
        timeout_ms: t.timeout.as_millis() as u64,
        deadline: now + t.deadline.as_millis() as u64,
        register: t.register.clone(),
        readers,
        for_: t.for_.clone(),
        targets,
        selector: match &t.targets {
            Targets::Selector(s) => s.clone(),
            Targets::Nodes(n) => format!("nodes {}", n.join(",")),
        },
        created_at: now,
        lease,
    };
    Ok(spec)
}

/// The puts that store a task: its spec, then one assignment per target, under its lease.
pub fn store_ops(spec: &TaskSpec) -> Vec<crate::etcdserverpb::RequestOp> {
    let mut ops = vec![kv::put(&keys::spec(&spec.id), spec, spec.lease)];
    // Each assignment carries the spec without the targets: all its agent needs, so that
    // 10,000 agents do not each read a spec that names 10,000 targets.
    let slim = serde_json::to_vec(&TaskSpec {
        targets: vec![],
        ..spec.clone()
    })
    .expect("JSON");
    ops.extend(
        spec.targets
            .iter()
            .map(|n| kv::put_raw(&keys::assignment(n, &spec.id), slim.clone(), spec.lease)),
    );
    ops
}

/// The one txn that stores a task ([`store_ops`]) if no task has its ID yet: what the server
/// writes for `Tasks.Create`.
pub fn store_txn(spec: &TaskSpec) -> crate::etcdserverpb::TxnRequest {
    crate::etcdserverpb::TxnRequest {
        compare: vec![kv::absent(&keys::spec(&spec.id))],
        success: store_ops(spec),
        failure: vec![],
    }
}

/// Where one target of a task stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum NodeState {
    /// Not started; its agent may still pick it up before the deadline.
    Pending,
    /// Claimed by its agent, no result yet.
    Running { started_at: u64 },
    /// Finished, with its result (ok or not).
    Done(TaskResult),
}

/// A task and where each of its targets stands.
#[derive(Debug, Clone, Serialize)]
pub struct TaskState {
    pub spec: TaskSpec,
    pub nodes: BTreeMap<String, NodeState>,
    pub canceled: bool,
}

impl TaskState {
    /// Each target's state as the creator reports it at `now`: a target still pending after
    /// the deadline (plus grace) is unreachable, and one still running long after its timeout is
    /// lost; neither is written to the store (the agent writes its own when it returns).
    pub fn settled(&self, now: u64) -> BTreeMap<String, NodeState> {
        self.nodes
            .iter()
            .map(|(n, s)| {
                let s = match s {
                    NodeState::Pending if now > self.spec.deadline + DEADLINE_GRACE_MS => {
                        NodeState::Done(TaskResult::without_run(
                            Status::Unreachable,
                            "its agent did not start the task before the deadline",
                        ))
                    }
                    NodeState::Running { started_at }
                        if now
                            > started_at.max(&self.spec.deadline)
                                + self.spec.timeout_ms
                                + RESULT_GRACE_MS =>
                    {
                        NodeState::Done(TaskResult::without_run(
                            Status::Lost,
                            "no result long after its timeout: its agent is gone",
                        ))
                    }
                    other => other.clone(),
                };
                (n.clone(), s)
            })
            .collect()
    }

    /// True once every target has a result (or counts as unreachable or lost) at `now`.
    pub fn finished(&self, now: u64) -> bool {
        self.settled(now)
            .values()
            .all(|s| matches!(s, NodeState::Done(_)))
    }

    /// Counts of (done ok, done not ok, running, pending) at `now`.
    pub fn counts(&self, now: u64) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for s in self.settled(now).values() {
            match s {
                NodeState::Done(r) if r.status == Status::Ok => c.0 += 1,
                NodeState::Done(_) => c.1 += 1,
                NodeState::Running { .. } => c.2 += 1,
                NodeState::Pending => c.3 += 1,
            }
        }
        c
    }

    /// Applies one key under `/eden/runs/ID/`.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Some(rest) = keys::rest(key, &keys::run_prefix(&self.spec.id)) else {
            return;
        };
        if rest == "cancel" {
            self.canceled = value.is_some();
            return;
        }
        let Some((kind, node)) = rest.split_once('/') else {
            return;
        };
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        match (kind, value) {
            ("results", Some(v)) => {
                if let Ok(r) = serde_json::from_slice::<TaskResult>(v) {
                    *state = NodeState::Done(r);
                }
            }
            ("claims", Some(v)) => {
                if let (NodeState::Pending, Ok(c)) = (&state, serde_json::from_slice::<Claim>(v)) {
                    *state = NodeState::Running {
                        started_at: c.started_at,
                    };
                }
            }
            _ => {}
        }
    }
}

/// Reads a task and its progress; also the revision read.
pub async fn state(client: &Client, id: &str) -> Result<(TaskState, i64), Error> {
    let spec_kv = kv::get_one(client, &keys::spec(id))
        .await?
        .ok_or_else(|| Error::NotFound(format!("no task {id} (unknown, or past its retention)")))?;
    let spec: TaskSpec = kv::decode(&spec_kv).map_err(Error::Corrupt)?;
    let (kvs, rev) = kv::get_prefix(client, &keys::run_prefix(id), 0, false).await?;
    let mut st = TaskState {
        nodes: spec
            .targets
            .iter()
            .map(|n| (n.clone(), NodeState::Pending))
            .collect(),
        spec,
        canceled: false,
    };
    // Claims first, then results, so a result wins whatever the key order.
    for pass in ["claims/", "results/", "cancel"] {
        for kv in &kvs {
            if keys::rest(&kv.key, &keys::run_prefix(id)).is_some_and(|r| r.starts_with(pass)) {
                st.apply(&kv.key, Some(&kv.value));
            }
        }
    }
    Ok((st, rev))
}

/// Follows a task until every target finished (or counts as unreachable or lost), calling
/// `progress` on every change and every second.
pub async fn follow(
    client: &Arc<Client>,
    id: &str,
    mut progress: impl FnMut(&TaskState),
) -> Result<TaskState, Error> {
    let (mut st, rev) = state(client, id).await?;
    progress(&st);
    let prefix = keys::run_prefix(id);
    let mut w = Watcher::from_revision(client.clone(), &prefix, rev + 1);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !st.finished(now_ms()) {
        tokio::select! {
            c = w.next() => match c {
                Some(Ok(Change::Events(events))) => {
                    for e in &events {
                        if let Some(kv) = &e.kv {
                            let deleted = e.r#type == EventType::Delete as i32;
                            st.apply(&kv.key, (!deleted).then_some(&kv.value[..]));
                        }
                    }
                }
                Some(Ok(Change::Compacted { .. })) => {
                    // Compacted past us: read it all again.
                    let (fresh, rev) = state(client, id).await?;
                    st = fresh;
                    w.resume_at(rev + 1);
                }
                Some(Ok(Change::Listed { .. })) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Refused(format!("the watch on task {id} ended"))),
            },
            _ = tick.tick() => {}
        }
        progress(&st);
    }
    Ok(st)
}

/// Asks every agent to stop the task: pending targets will not start it, running ones are killed.
pub async fn cancel(client: &Client, id: &str) -> Result<(), Error> {
    let (st, _) = state(client, id).await?;
    kv::txn(
        client,
        vec![kv::present(&keys::spec(id))],
        vec![kv::put(&keys::cancel(id), &now_ms(), st.spec.lease)],
        vec![],
    )
    .await?;
    Ok(())
}

/// A line of `eden task ls`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    pub id: String,
    pub created_at: u64,
    pub command: String,
    pub selector: String,
    pub targets: usize,
    pub results: usize,
    pub canceled: bool,
}

/// The command line a task runs, for display.
pub fn describe(spec: &TaskSpec) -> String {
    match &spec.script {
        Some(_) => format!("script {}", spec.command.join(" "))
            .trim()
            .to_string(),
        None => spec.command.join(" "),
    }
}

/// Every task still within its retention, oldest first.
pub async fn list(client: &Client) -> Result<Vec<TaskSummary>, Error> {
    let (specs, rev) = kv::get_prefix(client, keys::TASKS, 0, false).await?;
    let (runs, _) = kv::get_prefix(client, keys::RUNS, rev, true).await?;
    let mut results: BTreeMap<&str, usize> = BTreeMap::new();
    let mut canceled: BTreeMap<&str, bool> = BTreeMap::new();
    for kv in &runs {
        if let Some((id, rest)) = keys::rest(&kv.key, keys::RUNS).and_then(|r| r.split_once('/')) {
            if rest.starts_with("results/") {
                *results.entry(id).or_default() += 1;
            } else if rest == "cancel" {
                canceled.insert(id, true);
            }
        }
    }
    specs
        .iter()
        .map(|kv| {
            let spec: TaskSpec = kv::decode(kv).map_err(Error::Corrupt)?;
            Ok(TaskSummary {
                results: results.get(spec.id.as_str()).copied().unwrap_or(0),
                canceled: canceled.contains_key(spec.id.as_str()),
                command: describe(&spec),
                selector: spec.selector.clone(),
                targets: spec.targets.len(),
                created_at: spec.created_at,
                id: spec.id,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_time() {
        let id = new_id();
        assert_eq!(id.len(), "20261124-225501-a3f9".len(), "{id}");
        assert!(id.starts_with("20"), "{id}");
    }

    #[test]
    fn pending_past_the_deadline_is_unreachable_and_silent_runs_are_lost() {
        let spec = TaskSpec {
            id: "t".into(),
            targets: vec!["a".into(), "b".into()],
            deadline: 1_000,
            timeout_ms: 1_000,
            ..Default::default()
        };
        let st = TaskState {
            nodes: [
                ("a".to_string(), NodeState::Pending),
                ("b".to_string(), NodeState::Running { started_at: 500 }),
            ]
            .into(),
            spec,
            canceled: false,
        };
        assert!(!st.finished(1_000));
        let later = 1_000 + DEADLINE_GRACE_MS + 1;
        assert!(
            matches!(&st.settled(later)["a"], NodeState::Done(r) if r.status == Status::Unreachable)
        );
        assert!(matches!(&st.settled(later)["b"], NodeState::Running { .. }));
        let much_later = 1_000 + 1_000 + RESULT_GRACE_MS + 1;
        assert!(st.finished(much_later));
    }
}
