//! The reactor runtime: exactly one is active at a time, elected through the store, and every
//! event fires every matching rule exactly once, across crashes and failovers.
//!
//! ```text
//!  campaign: txn (leader key absent) -> put /eden/reactor/leader under our lease
//!  lead:     cursor = /eden/reactor/cursor {revision, state}
//!            watch /eden/ from cursor.revision + 1
//!            per revision: events (derived and explicit) -> rules::react -> firings
//!              one txn: compare [leader key is ours, cursor unchanged]
//!                       success [the firings' writes (tasks, variables, events),
//!                                reactor/fired/RULE events, cursor := {revision, state}]
//!            post actions after the txn committed (at most once)
//! ```
//!
//! A reaction's writes and the cursor commit together, guarded by the election key: a crash
//! before the commit replays the revision, after it skips it; a deposed runtime's txn fails its
//! compare. Revisions that fire nothing advance the cursor lazily (within 5 s when they changed
//! the rules' state, within a minute otherwise): replaying them fires nothing, as the rules are
//! loaded as they were at the cursor's revision. Events tagged `reactor/...` (the runtime's own) are not reacted to, so rules
//! cannot loop on them. If the cursor's revision was compacted away, the runtime says so in a
//! `reactor/compacted` event and its log, and continues from the oldest revision kept.
//!
//! Known shortcuts: a reaction is one txn, so a run action's targets plus the rest must fit the
//! server's --max-txn-ops (128); `post` supports plain http:// URLs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eden_proto::client::{Client, ClientError};
use eden_proto::etcdserverpb::{RequestOp, WatchCreateRequest};
use eden_proto::model::events::{self, Event};
use eden_proto::model::keys::{self, REACTOR_CURSOR as CURSOR, REACTOR_LEADER as LEADER, RULES};
use eden_proto::model::objects::now_ms;
use eden_proto::model::rules::{Cursor, Rule, State};
use eden_proto::model::tasks;
use eden_proto::model::watcher::{Change, Watcher};
use eden_proto::model::{kv, vars};
use serde::{Deserialize, Serialize};

use crate::rules;
use crate::step::{self, Planned, Write};
/// How often (in 1 s ticks) the active runtime compares the member list with the last one seen.
const MEMBER_POLL_TICKS: u64 = 5;
/// How long a changed rules' state may go unwritten (a crash replays it from the cursor).
const STATE_LAG: Duration = Duration::from_secs(5);
/// How long the cursor may lag behind revisions that matched no rule. A failover replays them,
/// which fires nothing; with no rules, a busy cluster pays one cursor write a minute.
const REVISION_LAG: Duration = Duration::from_secs(60);

/// The elected runtime's key.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Leader {
    id: String,
    since: u64,
}

pub struct Runtime {
    client: Arc<Client>,
    id: String,
    lease_ttl: Duration,
    /// The lease of the leader key while this runtime is the active one.
    lease: std::sync::Mutex<Option<i64>>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn event_put(
    tag: String,
    source: &str,
    labels: BTreeMap<String, String>,
    data: serde_json::Value,
) -> RequestOp {
    events::put(&Event::new(tag, source, labels, data))
}

/// POSTs `body` (JSON) to a plain http:// URL within 10 s; Err says why not.
async fn post(url: &str, body: &str) -> Result<(), String> {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: answered {}", resp.status()))
    }
}

impl Runtime {
    pub fn new(client: Arc<Client>, id: &str) -> Runtime {
        Runtime {
            client,
            id: id.to_string(),
            lease_ttl: Duration::from_secs(10),
            lease: Default::default(),
        }
    }

    /// Campaigns and, while elected, reacts; forever.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.campaign().await {
                Ok((lease, me)) => {
                    tracing::info!(id = %self.id, "this reactor runtime is the active one");
                    *self.lease.lock().expect("lease lock") = Some(lease);
                    let lost = Arc::new(AtomicBool::new(false));
                    let keep = tokio::spawn(self.clone().keep_alive(lease, lost.clone()));
                    let r = self.lead(&me, &lost).await;
                    keep.abort();
                    self.lease.lock().expect("lease lock").take();
                    let _ = self.client.lease_revoke(lease).await;
                    if let Err(e) = r {
                        tracing::warn!("reactor runtime stepped down: {e}");
                    }
                }
                Err(e) => tracing::debug!("reactor campaign: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// For a clean stop, after [`Runtime::run`] was dropped: gives up the leader key at once
    /// (revokes its lease), so a standby takes over without waiting for the lease to expire.
    /// Everything this runtime committed stays; what it had not, the next one replays.
    pub async fn resign(&self) {
        let lease = self.lease.lock().expect("lease lock").take();
        if let Some(lease) = lease {
            match tokio::time::timeout(Duration::from_secs(3), self.client.lease_revoke(lease))
                .await
            {
                Ok(Ok(_)) => tracing::info!(id = %self.id, "the reactor runtime resigned"),
                _ => tracing::warn!(
                    "could not give up the reactor's leader key; it expires with its lease"
                ),
            }
        }
    }

    async fn keep_alive(self: Arc<Self>, lease: i64, lost: Arc<AtomicBool>) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.lease_ttl / 4).await;
            match self.client.lease_keep_alive_once(lease).await {
                Ok(r) if r.ttl > 0 => last_ok = Instant::now(),
                Ok(_) => break,
                Err(_) if last_ok.elapsed() < self.lease_ttl / 2 => {}
                Err(_) => break,
            }
        }
        lost.store(true, Ordering::SeqCst);
    }

    /// Becomes the active runtime once the leader key is free; returns its lease and value.
    async fn campaign(&self) -> Result<(i64, Vec<u8>), String> {
        loop {
            let lease = self
                .client
                .lease_grant(self.lease_ttl.as_secs() as i64, 0)
                .await
                .map_err(err)?
                .id;
            let me = serde_json::to_vec(&Leader {
                id: self.id.clone(),
                since: now_ms(),
            })
            .expect("JSON");
            let r = kv::txn(
                &self.client,
                vec![kv::absent(LEADER)],
                vec![kv::put_raw(LEADER, me.clone(), lease)],
                vec![],
            )
            .await
            .map_err(err)?;
            if r.succeeded {
                return Ok((lease, me));
            }
            let _ = self.client.lease_revoke(lease).await;
            // Wait for the key to go (its holder stopped or its lease expired).
            let rev = r.header.map_or(0, |h| h.revision);
            let mut w = self.client.watch(
                WatchCreateRequest {
                    key: LEADER.into(),
                    start_revision: rev + 1,
                    ..Default::default()
                },
                Duration::from_secs(60),
            );
            let wait = async {
                while let Some(Ok(m)) = w.recv().await {
                    if m.events.iter().any(|e| e.r#type == 1) || m.canceled {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(self.lease_ttl * 2, wait).await;
        }
    }

    /// Membership is not in the key-value store, so the active runtime compares the member list
    /// with the one it saw last (kept in its state) and emits `member/added/NAME`,
    /// `member/removed/NAME` and `member/promoted/NAME` events for the differences; they come back
    /// through the watch and are reacted to like any explicit event. None: nothing changed.
    async fn member_events(&self, state: &mut State) -> Option<Vec<RequestOp>> {
        let list = self.client.member_list().await.ok()?;
        let now: BTreeMap<String, (String, bool)> = list
            .members
            .iter()
            .filter(|m| !m.name.is_empty())
            .map(|m| (format!("{:x}", m.id), (m.name.clone(), m.is_learner)))
            .collect();
        let Some(before) = state.members.clone() else {
            state.members = Some(now);
            return Some(vec![]);
        };
        if before == now {
            return None;
        }
        let mut ops = Vec::new();
        let ev = |tag: String, id: &str, learner: bool| {
            event_put(
                tag,
                "reactor",
                BTreeMap::new(),
                serde_json::json!({"id": id, "learner": learner}),
            )
        };
        for (id, (name, learner)) in &now {
            match before.get(id) {
                None => ops.push(ev(format!("member/added/{name}"), id, *learner)),
                Some((_, true)) if !learner => {
                    ops.push(ev(format!("member/promoted/{name}"), id, false))
                }
                _ => {}
            }
        }
        for (id, (name, learner)) in &before {
            if !now.contains_key(id) {
                ops.push(ev(format!("member/removed/{name}"), id, *learner));
            }
        }
        state.members = Some(now);
        Some(ops)
    }

    /// The rules as they were at `revision`, so that a replay after a failover reacts with the
    /// rules each event first met; the current ones if that revision was compacted away.
    async fn load_rules(&self, revision: i64) -> Result<Vec<Rule>, String> {
        let kvs = match kv::get_prefix(&self.client, RULES, revision, false).await {
            Ok((kvs, _)) => kvs,
            Err(e) if e.is_compacted() => {
                kv::get_prefix(&self.client, RULES, 0, false)
                    .await
                    .map_err(err)?
                    .0
            }
            Err(e) => return Err(err(e)),
        };
        Ok(kvs
            .iter()
            .filter_map(|kv| kv::decode::<Rule>(kv).ok())
            .collect())
    }

    /// The txn operations of one planned firing (a task's targets are resolved now), with the
    /// `reactor/fired/RULE` event that records it.
    async fn firing_ops(&self, p: &Planned) -> Vec<RequestOp> {
        let f = &p.firing;
        let mut errors = p.errors.clone();
        let (mut ops, mut tasks_made) = (Vec::new(), Vec::new());
        for w in &p.writes {
            match w {
                Write::Task(t) => match tasks::prepare(&self.client, t).await {
                    Ok(spec) => {
                        tasks_made.push(spec.id.clone());
                        ops.extend(tasks::store_ops(&spec));
                    }
                    Err(e) => errors.push(format!("run: {e}")),
                },
                Write::Var { node, name, value } => {
                    ops.extend(vars::writes(node, name, value, &Default::default()))
                }
                Write::Event(ev) => ops.push(events::put(ev)),
                Write::Converge { node, state } => ops.push(kv::put(
                    &eden_proto::model::states::converge(node, state),
                    &eden_proto::model::states::ConvergeRequest {
                        id: eden_proto::model::states::new_id(),
                        by: format!("reactor/{}", f.rule),
                        time: eden_proto::model::objects::now_ms(),
                    },
                    0,
                )),
            }
        }
        for e in &errors {
            tracing::warn!(rule = %f.rule, "{e}");
        }
        ops.push(event_put(
            format!("reactor/fired/{}", f.rule),
            "reactor",
            BTreeMap::new(),
            serde_json::json!({
                "event": {"tag": f.tag, "revision": f.revision},
                "tasks": tasks_made,
                "errors": errors,
            }),
        ));
        ops
    }

    /// Commits `ops` with the cursor, guarded by the leader key and the cursor's last revision.
    /// Ok(new cursor mod revision); Err(None) when this runtime is no longer the active one.
    async fn commit(
        &self,
        me: &[u8],
        cursor_mod: i64,
        cursor: &Cursor,
        mut ops: Vec<RequestOp>,
    ) -> Result<i64, Option<String>> {
        ops.push(kv::put(CURSOR, cursor, 0));
        for attempt in 0.. {
            let r = kv::txn(
                &self.client,
                vec![
                    kv::value_is(LEADER, me),
                    kv::unchanged_since(CURSOR, cursor_mod),
                ],
                ops.clone(),
                vec![kv::get(LEADER), kv::get(CURSOR)],
            )
            .await;
            match r {
                Ok(r) if r.succeeded => return Ok(r.header.map_or(0, |h| h.revision)),
                Ok(r) => {
                    let leader_ours = kv::txn_kvs(&r, 0).first().is_some_and(|kv| kv.value == me);
                    let stored: Option<(Cursor, i64)> = kv::txn_kvs(&r, 1)
                        .first()
                        .and_then(|kv| kv::decode::<Cursor>(kv).ok().map(|c| (c, kv.mod_revision)));
                    return match (leader_ours, stored) {
                        // An earlier attempt whose answer was lost did commit.
                        (true, Some((c, m))) if c.revision >= cursor.revision => Ok(m),
                        (true, _) => {
                            Err(Some("the cursor changed under the active runtime".into()))
                        }
                        (false, _) => Err(None),
                    };
                }
                Err(ClientError::Server(s)) => {
                    // A deterministic refusal (an event the policy denies, too many operations):
                    // record it and move on without the reaction's writes.
                    tracing::error!("a reaction was refused: {}", s.message());
                    ops = vec![
                        event_put(
                            "reactor/failed".into(),
                            "reactor",
                            BTreeMap::new(),
                            serde_json::json!({"revision": cursor.revision, "error": s.message()}),
                        ),
                        kv::put(CURSOR, cursor, 0),
                    ];
                }
                Err(e) if attempt < 100 => {
                    tracing::warn!("committing a reaction: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(Some(e.to_string())),
            }
        }
        unreachable!()
    }

    async fn lead(&self, me: &[u8], lost: &AtomicBool) -> Result<(), String> {
        let (mut cursor, mut cursor_mod) =
            match kv::get_one(&self.client, CURSOR).await.map_err(err)? {
                Some(kv) => (kv::decode::<Cursor>(&kv)?, kv.mod_revision),
                None => {
                    // The first runtime ever starts from now.
                    let (_, rev) = kv::get_prefix(&self.client, LEADER, 0, true)
                        .await
                        .map_err(err)?;
                    (
                        Cursor {
                            revision: rev,
                            state: State::default(),
                        },
                        0,
                    )
                }
            };
        let mut rules = self.load_rules(cursor.revision).await?;
        let mut last_write = Instant::now();
        if cursor.state.members.is_none() {
            // The first runtime ever: remember the members now, so that changes from here on
            // become events even across a failover.
            if let Some(ops) = self.member_events(&mut cursor.state).await {
                cursor_mod = self
                    .commit(me, cursor_mod, &cursor, ops)
                    .await
                    .map_err(|e| e.unwrap_or_else(|| "deposed".into()))?;
            }
        }
        // What the stored cursor lacks: a changed rules' state (written within 5 s), or only
        // revisions that matched no rule (written within a minute; replaying them does nothing).
        let mut changed = false;
        let mut behind = false;
        let mut w = Watcher::from_revision(self.client.clone(), keys::ROOT, cursor.revision + 1)
            .with_prev_kv()
            .with_progress_notify();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            let m = tokio::select! {
                m = w.next() => m,
                _ = tick.tick() => {
                    if lost.load(Ordering::SeqCst) {
                        return Err("lost the leader key".into());
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(MEMBER_POLL_TICKS) {
                        if let Some(ops) = self.member_events(&mut cursor.state).await {
                            cursor_mod = self.commit(me, cursor_mod, &cursor, ops).await
                                .map_err(|e| e.unwrap_or_else(|| "deposed".into()))?;
                            (changed, behind) = (false, false);
                            last_write = Instant::now();
                        }
                    }
                    if rules::pending(&cursor.state) {
                        let vars = vars::all(&self.client).await.unwrap_or_default();
                        let st = step::tick(&rules, &mut cursor.state, now_ms(), &serde_json::json!({"vars": vars}));
                        for e in &st.errors {
                            tracing::warn!("{e}");
                        }
                        if !st.planned.is_empty() {
                            let mut ops = Vec::new();
                            let mut posts = Vec::new();
                            for p in &st.planned {
                                ops.extend(self.firing_ops(p).await);
                                posts.extend(p.posts.iter().cloned());
                            }
                            cursor_mod = self.commit(me, cursor_mod, &cursor, ops).await
                                .map_err(|e| e.unwrap_or_else(|| "deposed".into()))?;
                            (changed, behind) = (false, false);
                            last_write = Instant::now();
                            for (url, body) in posts {
                                if let Err(e) = post(&url, &body).await {
                                    tracing::warn!("post: {e}");
                                }
                            }
                        }
                    }
                    let since = last_write.elapsed();
                    if (changed && since > STATE_LAG) || (behind && since > REVISION_LAG) {
                        cursor_mod = self.commit(me, cursor_mod, &cursor, vec![]).await
                            .map_err(|e| e.unwrap_or_else(|| "deposed".into()))?;
                        (changed, behind) = (false, false);
                        last_write = Instant::now();
                    }
                    continue;
                }
            };
            let events = match m {
                Some(Ok(Change::Events(events))) => events,
                Some(Ok(Change::Compacted { oldest })) => {
                    let missed = (cursor.revision + 1, oldest - 1);
                    tracing::error!(from = missed.0, to = missed.1, "the reactor's cursor was compacted away: events in between were not reacted to");
                    let ev = event_put(
                        "reactor/compacted".into(),
                        "reactor",
                        BTreeMap::new(),
                        serde_json::json!({"missed_from": missed.0, "missed_to": missed.1}),
                    );
                    cursor.revision = oldest - 1;
                    cursor_mod = self
                        .commit(me, cursor_mod, &cursor, vec![ev])
                        .await
                        .map_err(|e| e.unwrap_or_else(|| "deposed".into()))?;
                    w.resume_at(oldest);
                    continue;
                }
                Some(Ok(Change::Listed { .. })) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the watch ended".into()),
            };
            // Events of one revision together (a txn's changes share it).
            let mut by_rev: BTreeMap<i64, Vec<&eden_proto::mvccpb::Event>> = BTreeMap::new();
            for e in &events {
                if let Some(kv) = &e.kv {
                    by_rev.entry(kv.mod_revision).or_default().push(e);
                }
            }
            for (rev, evs) in by_rev {
                if rev <= cursor.revision {
                    continue;
                }
                if lost.load(Ordering::SeqCst) {
                    return Err("lost the leader key".into());
                }
                if evs.iter().any(|e| {
                    e.kv.as_ref()
                        .is_some_and(|kv| kv.key.starts_with(RULES.as_bytes()))
                }) {
                    rules = self.load_rules(rev).await?;
                }
                // Only the runtime's own keys changed (its cursor, its election): nothing to
                // remember, or the cursor would chase its own writes.
                let own = evs.iter().all(|e| {
                    e.kv.as_ref()
                        .is_some_and(|kv| kv.key.starts_with(keys::REACTOR.as_bytes()))
                });
                let evs: Vec<Event> = evs
                    .into_iter()
                    .filter_map(|e| events::from_watch(e, now_ms()))
                    .collect();
                let vars = if evs
                    .iter()
                    .any(|e| rules.iter().any(|r| rules::matches(r, e)))
                {
                    vars::all(&self.client).await.unwrap_or_default()
                } else {
                    Default::default()
                };
                let st = step::step(
                    &rules,
                    &mut cursor.state,
                    &evs,
                    &serde_json::json!({"vars": vars}),
                );
                for e in &st.errors {
                    tracing::warn!(revision = rev, "{e}");
                }
                changed |= st.matched;
                cursor.revision = rev;
                if st.planned.is_empty() {
                    behind |= !own;
                    continue;
                }
                let mut ops = Vec::new();
                let mut posts = Vec::new();
                for p in &st.planned {
                    ops.extend(self.firing_ops(p).await);
                    posts.extend(p.posts.iter().cloned());
                }
                cursor_mod = self
                    .commit(me, cursor_mod, &cursor, ops)
                    .await
                    .map_err(|e| e.unwrap_or_else(|| "deposed".into()))?;
                (changed, behind) = (false, false);
                last_write = Instant::now();
                for p in &st.planned {
                    let f = &p.firing;
                    tracing::info!(rule = %f.rule, tag = %f.tag, revision = f.revision, "fired");
                }
                for (url, body) in posts {
                    if let Err(e) = post(&url, &body).await {
                        tracing::warn!("post: {e}");
                    }
                }
            }
        }
    }
}
