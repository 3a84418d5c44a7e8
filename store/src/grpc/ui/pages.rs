//! What each page of the web view shows, read through a viewer's client ([`super::Viewer`]):
//! the same model functions `eden` uses, so the authorizer decides as for the CLI. A section
//! the viewer may not read says so instead of failing the page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eden_proto::client::Client;
use eden_proto::model::events::{self, Event};
use eden_proto::model::objects::{now_ms, show_time, NodeInfo, TaskResult};
use eden_proto::model::tasks::{self, NodeState};
use eden_proto::model::{cluster, files, hooks, keys, kv, nodes, rules, vars, Error};
use serde_json::{json, Value};

/// Which keys' changes concern a live page (None: all under the watched prefix).
pub type KeyFilter = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// A page made of live sections.
#[derive(Clone, Debug)]
pub enum Page {
    Cluster,
    Node(String),
    /// The list of tasks and the form to start one (with the last try's error).
    Tasks {
        error: Option<String>,
    },
    Task(String),
    Reactors,
}

/// Events shown at most on a page that lists recent ones.
const RECENT: usize = 20;
/// A node page shows its latest tasks, at most.
const NODE_TASKS: usize = 20;

impl Page {
    /// A node's page; the name checked first.
    pub fn node(name: &str) -> Result<Page, String> {
        keys::check_node_name(name)?;
        Ok(Page::Node(name.to_string()))
    }

    /// A task's page; the ID checked first (digits, lowercase letters and dashes).
    pub fn task(id: &str) -> Result<Page, String> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
        if !ok {
            return Err(format!("{id:?} is not a task ID"));
        }
        Ok(Page::Task(id.to_string()))
    }

    pub fn template(&self) -> &'static str {
        match self {
            Page::Cluster => "cluster.html",
            Page::Node(_) => "node.html",
            Page::Tasks { .. } => "tasks.html",
            Page::Task(_) => "task.html",
            Page::Reactors => "reactors.html",
        }
    }

    /// The page's live sections (templates whose root element's id is the name with dashes).
    pub fn sections(&self) -> &'static [&'static str] {
        match self {
            Page::Cluster => &["cluster_facts.html", "cluster_members.html"],
            Page::Node(_) => &[
                "node_facts.html",
                "node_tasks.html",
                "node_vars.html",
                "node_files.html",
                "node_events.html",
            ],
            Page::Tasks { .. } => &["tasks_list.html"],
            Page::Task(_) => &["task_summary.html", "task_nodes.html"],
            Page::Reactors => &[
                "reactors_runtime.html",
                "reactors_rules.html",
                "reactors_firings.html",
                "reactors_hooks.html",
            ],
        }
    }

    /// The prefixes whose changes make the page render again.
    pub fn watches(&self) -> Vec<(String, Option<KeyFilter>)> {
        match self {
            Page::Cluster => vec![],
            Page::Node(name) => {
                let (claim, result) = (format!("/claims/{name}"), format!("/results/{name}"));
                let runs: KeyFilter = Arc::new(move |k| {
                    k.ends_with(claim.as_bytes()) || k.ends_with(result.as_bytes())
                });
                vec![
                    (keys::node_prefix(name), None),
                    (keys::node_vars(name), None),
                    (keys::RUNS.to_string(), Some(runs)),
                    (keys::EVENTS.to_string(), None),
                ]
            }
            Page::Tasks { .. } => {
                let runs: KeyFilter = Arc::new(|k: &[u8]| {
                    k.ends_with(b"/cancel") || k.windows(9).any(|w| w == b"/results/")
                });
                vec![
                    (keys::TASKS.to_string(), None),
                    (keys::RUNS.to_string(), Some(runs)),
                ]
            }
            Page::Task(id) => vec![(keys::run_prefix(id), None), (keys::spec(id), None)],
            Page::Reactors => vec![
                (keys::RULES.to_string(), None),
                (keys::REACTOR.to_string(), None),
                (keys::HOOKS.to_string(), None),
                (keys::EVENTS.to_string(), None),
            ],
        }
    }

    /// Rendered again this often even without a change: the cluster's health and lag change
    /// without writes; a task's pending targets become unreachable at its deadline.
    pub fn tick(&self) -> Option<Duration> {
        match self {
            Page::Cluster => Some(Duration::from_secs(1)),
            Page::Task(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

/// What `page` shows, read through `client`, and the revision read at.
pub async fn read(client: &Client, page: &Page) -> Result<(Value, i64), Error> {
    match page {
        Page::Cluster => cluster_page(client).await,
        Page::Node(name) => node_page(client, name).await,
        Page::Tasks { error } => {
            let (_, revision) = kv::get_prefix(client, keys::TASKS, 0, true).await?;
            let mut list = tasks::list(client).await?;
            list.reverse();
            let rows: Vec<Value> = list
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id, "created": show_time(t.created_at), "command": t.command,
                        "selector": t.selector, "targets": t.targets, "results": t.results,
                        "canceled": t.canceled,
                    })
                })
                .collect();
            Ok((
                json!({"tasks": rows, "error": error.clone().unwrap_or_default()}),
                revision,
            ))
        }
        Page::Task(id) => task_page(client, id).await,
        Page::Reactors => reactors_page(client).await,
    }
}

/// A section's data, or why the viewer cannot see it.
fn optional<T: serde::Serialize>(r: Result<T, Error>) -> Value {
    match r {
        Ok(v) => json!({"ok": true, "items": v, "why": ""}),
        Err(e) => json!({"ok": false, "items": [], "why": short(&e)}),
    }
}

fn short(e: &Error) -> String {
    use eden_proto::client::ClientError;
    match e {
        Error::Client(ClientError::Server(s)) if s.code() == tonic::Code::PermissionDenied => {
            "not visible to you".into()
        }
        e => e.to_string(),
    }
}

async fn cluster_page(client: &Client) -> Result<(Value, i64), Error> {
    let members = client.member_list().await?.members;
    let status = client.status_of(0).await?;
    // The autopilot's view comes from the leader; without one it is unknown.
    let health = cluster::status(client).await.ok();
    let by_id: BTreeMap<u64, &cluster::ServerHealth> = health
        .iter()
        .flat_map(|h| h.servers.iter().map(|s| (s.id, s)))
        .collect();
    let rows: Vec<Value> = members
        .iter()
        .map(|m| {
            let h = by_id.get(&m.id);
            json!({
                "name": m.name,
                "id": format!("{:x}", m.id),
                "role": h.map(|h| h.role.clone()).unwrap_or_else(|| {
                    if m.id == status.leader { "leader".into() }
                    else if m.is_learner { "learner".into() } else { "voter".into() }
                }),
                "healthy": h.map(|h| h.healthy),
                "reason": h.map(|h| h.reason.clone()).unwrap_or_default(),
                "last_contact": h.and_then(|h| h.last_contact_ms).map(|c| format!("{c} ms")).unwrap_or_default(),
                "lag": h.map(|h| h.lag.to_string()).unwrap_or_default(),
                "peer": m.peer_ur_ls.join(", "),
                "client": m.client_ur_ls.join(", "),
            })
        })
        .collect();
    let header = status.header.unwrap_or_default();
    let leader_name = members
        .iter()
        .find(|m| m.id == status.leader)
        .map_or_else(|| "none".to_string(), |m| m.name.clone());
    let alarms: Vec<String> = status
        .errors
        .iter()
        .cloned()
        .chain(
            client
                .alarms_of(0)
                .await
                .map(|a| {
                    a.alarms
                        .iter()
                        .map(|a| format!("alarm {} on member {:x}", a.alarm, a.member_id))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .collect();
    Ok((
        json!({
            "members": rows,
            "term": status.raft_term,
            "db_size": status.db_size,
            "leader": leader_name,
            "alarms": alarms,
            "tolerance": health.as_ref().map(|h| h.failure_tolerance.to_string()).unwrap_or_else(|| "unknown (no leader answered)".into()),
            "healthy_voters": health.as_ref().map(|h| format!("{} of {}", h.healthy_voters, h.voters)).unwrap_or_default(),
            "waiting": health.as_ref().and_then(|h| h.waiting.clone()).unwrap_or_default(),
            "applied": header.revision,
        }),
        header.revision,
    ))
}

/// A node's row in the nodes table.
pub fn node_row(n: &NodeInfo) -> Value {
    json!({
        "name": n.name,
        "up": n.up,
        "labels": labels(&n.labels),
        "address": n.facts.as_ref().and_then(|f| f.addresses.first().cloned()).unwrap_or_default(),
        "os": n.facts.as_ref().map(|f| f.os.clone()).unwrap_or_default(),
        "last_seen": n.last_seen.map(show_time).unwrap_or_default(),
    })
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn result_row(node: &str, s: &NodeState) -> Value {
    let (state, r): (String, Option<&TaskResult>) = match s {
        NodeState::Pending => ("pending".into(), None),
        NodeState::Running { .. } => ("running".into(), None),
        NodeState::Done(r) => (r.status.as_str().into(), Some(r)),
    };
    let started = match s {
        NodeState::Running { started_at } => Some(*started_at),
        NodeState::Done(r) => r.started_at,
        NodeState::Pending => None,
    };
    json!({
        "node": node,
        "state": state,
        "exit_code": r.and_then(|r| r.exit_code).map(|c| c.to_string()).unwrap_or_default(),
        "started": started.map(show_time).unwrap_or_default(),
        "ended": r.map(|r| show_time(r.ended_at)).unwrap_or_default(),
        "stdout": r.map(|r| r.stdout.clone()).unwrap_or_default(),
        "stderr": r.map(|r| r.stderr.clone()).unwrap_or_default(),
        "error": r.and_then(|r| r.error.clone()).unwrap_or_default(),
    })
}

async fn node_page(client: &Client, name: &str) -> Result<(Value, i64), Error> {
    let (kvs, revision) = kv::get_prefix(client, &keys::node_prefix(name), 0, false).await?;
    let node = nodes::from_kvs(&kvs)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotFound(format!("no node {name}")))?;
    let facts = node.facts.clone().unwrap_or_default();
    // Its latest tasks (IDs sort by creation time), each with where it stands on this node.
    let mut ids: Vec<String> = kvs
        .iter()
        .filter_map(|kv| keys::rest(&kv.key, &keys::assignments(name)).map(str::to_string))
        .collect();
    ids.sort();
    ids.reverse();
    ids.truncate(NODE_TASKS);
    let node_tasks: Result<Vec<Value>, Error> = async {
        let mut rows = Vec::new();
        for id in &ids {
            let spec: Option<eden_proto::model::objects::TaskSpec> = kvs
                .iter()
                .find(|kv| kv.key == keys::assignment(name, id).as_bytes())
                .and_then(|kv| kv::decode(kv).ok());
            // This node's claim and result only: a task may have thousands of targets.
            let result = kv::get_one(client, &keys::result(id, name)).await?;
            let claim = kv::get_one(client, &keys::claim(id, name)).await?;
            let state = match (result, claim) {
                (Some(kv), _) => kv::decode::<TaskResult>(&kv)
                    .map(NodeState::Done)
                    .unwrap_or(NodeState::Pending),
                (None, Some(kv)) => kv::decode::<eden_proto::model::objects::Claim>(&kv)
                    .map(|c| NodeState::Running {
                        started_at: c.started_at,
                    })
                    .unwrap_or(NodeState::Pending),
                (None, None) => NodeState::Pending,
            };
            let mut row = result_row(name, &state);
            row["id"] = json!(id);
            row["command"] = json!(spec.as_ref().map(tasks::describe).unwrap_or_default());
            rows.push(row);
        }
        Ok(rows)
    }
    .await;
    let node_vars = vars::list(client, Some(name)).await.map(|vs| {
        vs.iter()
            .map(|v| json!({"name": v.name, "value": vars::show_value(&v.value), "revision": v.revision}))
            .collect::<Vec<_>>()
    });
    // What its agent placed (metadata only: never a file's bytes).
    let placed: Vec<Value> = kvs
        .iter()
        .filter_map(|kv| {
            let file = keys::rest(&kv.key, &format!("{}files/", keys::node_prefix(name)))?;
            let p: files::Placement = kv::decode(kv).ok()?;
            Some(json!({
                "name": file, "status": p.status, "path": p.path, "revision": p.revision,
                "error": p.error, "time": show_time(p.time),
            }))
        })
        .collect();
    let recent = events::list(client, "**", 0, 0).await.map(|evs| {
        let mut mine: Vec<Value> = evs
            .iter()
            .filter(|e| e.source == name || e.labels.get("node").is_some_and(|n| n == name))
            .map(|e| event_row(e, 0))
            .collect();
        mine.reverse();
        mine.truncate(RECENT);
        mine
    });
    Ok((
        json!({
            "node": node_row(&node),
            "name": name,
            "facts": {
                "hostname": facts.hostname, "os": facts.os, "kernel": facts.kernel,
                "arch": facts.arch, "cpus": facts.cpus,
                "memory_mib": facts.memory_bytes / (1024 * 1024),
                "agent_version": facts.agent_version,
                "addresses": facts.addresses.join(", "),
                "started": if facts.started_at > 0 { show_time(facts.started_at) } else { String::new() },
            },
            "tasks": optional(node_tasks),
            "vars": optional(node_vars),
            "files": {"ok": true, "items": placed, "why": ""},
            "events": optional(recent),
        }),
        revision,
    ))
}

async fn task_page(client: &Client, id: &str) -> Result<(Value, i64), Error> {
    let (st, revision) = tasks::state(client, id).await?;
    let now = now_ms();
    let (ok, failed, running, pending) = st.counts(now);
    let rows: Vec<Value> = st
        .settled(now)
        .iter()
        .map(|(n, s)| result_row(n, s))
        .collect();
    Ok((
        json!({
            "task": {
                "id": st.spec.id,
                "command": tasks::describe(&st.spec),
                "selector": st.spec.selector,
                "created": show_time(st.spec.created_at),
                "canceled": st.canceled,
                "finished": st.finished(now),
                "ok": ok, "failed": failed, "running": running, "pending": pending,
                "targets": st.nodes.len(),
            },
            "nodes": rows,
        }),
        revision,
    ))
}

async fn reactors_page(client: &Client) -> Result<(Value, i64), Error> {
    let (_, revision) = kv::get_prefix(client, keys::RULES, 0, true).await?;
    let cursor: Result<Option<rules::Cursor>, Error> = kv::get_one(client, keys::REACTOR_CURSOR)
        .await
        .map_err(Error::from)
        .and_then(|kv| {
            kv.map(|kv| kv::decode(&kv).map_err(Error::Corrupt))
                .transpose()
        });
    let leader = kv::get_one(client, keys::REACTOR_LEADER)
        .await
        .ok()
        .flatten()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    let state = cursor.as_ref().ok().cloned().flatten().unwrap_or_default();
    let rule_rows = rules::list(client).await.map(|rs| {
        rs.iter()
            .map(|r| {
                // Thorium-like state: each group's count within the window and last firing.
                let prefix = format!("{}\u{0}", r.name);
                let groups: Vec<Value> = state
                    .state
                    .groups
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, g)| {
                        json!({
                            "group": k[prefix.len()..].to_string(),
                            "count": g.times.len(),
                            "last_fired": g.last_fired.map(show_time).unwrap_or_default(),
                            "pending": g.pending.is_some(),
                        })
                    })
                    .collect();
                json!({
                    "name": r.name,
                    "on": r.on,
                    "when": r.when.as_ref().map(|w| format!("{} within {}", w.count, w.within)).unwrap_or_default(),
                    "actions": r.actions.len(),
                    "groups": groups,
                })
            })
            .collect::<Vec<_>>()
    });
    let firings = events::list(client, "reactor/**", 0, 0).await.map(|evs| {
        let mut rows: Vec<Value> = evs.iter().map(|e| event_row(e, 0)).collect();
        rows.reverse();
        rows.truncate(RECENT);
        rows
    });
    // Names and creation times only: a hook's token is never stored, its hash never shown.
    let hook_rows = hooks::list(client).await.map(|hs| {
        hs.iter()
            .map(|(name, h)| json!({"name": name, "created": show_time(h.created_at)}))
            .collect::<Vec<_>>()
    });
    Ok((
        json!({
            "runtime": {
                "leader": leader.unwrap_or_default(),
                "cursor": cursor.as_ref().ok().and_then(|c| c.as_ref().map(|c| c.revision)).unwrap_or(0),
                "why": cursor.as_ref().err().map(short).unwrap_or_default(),
            },
            "rules": optional(rule_rows),
            "firings": optional(firings),
            "hooks": optional(hook_rows),
        }),
        revision,
    ))
}

/// An event as a row of the events tail (`n` keeps rows of one revision apart).
pub fn event_row(e: &Event, n: usize) -> Value {
    let mut data = if e.data.is_null() {
        String::new()
    } else {
        e.data.to_string()
    };
    if data.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| data.is_char_boundary(*i))
            .unwrap_or(0);
        data.truncate(cut);
        data.push('…');
    }
    json!({
        "id": format!("ev-{}-{n}", e.revision),
        "revision": e.revision,
        "time": show_time(e.time),
        "time_ms": e.time,
        "tag": e.tag,
        "source": e.source,
        "labels": labels(&e.labels),
        "data": data,
    })
}

/// Whether the events tail shows a tag: an allow glob matches (none given: all do) and no deny
/// glob does.
pub fn tag_selected(tag: &str, allow: &[String], deny: &[String]) -> bool {
    use eden_proto::glob;
    (allow.is_empty() || allow.iter().any(|g| glob::matches(g, tag)))
        && !deny.iter().any(|g| glob::matches(g, tag))
}

/// The latest `n` stored events the tail shows, newest last, and the revision read at.
pub async fn recent_events(
    client: &Client,
    allow: &[String],
    deny: &[String],
    n: usize,
) -> Result<(Vec<Event>, i64), Error> {
    let (_, revision) = kv::get_prefix(client, keys::EVENTS, 0, true).await?;
    let mut evs: Vec<Event> = events::list(client, "**", 0, 0)
        .await?
        .into_iter()
        .filter(|e| e.revision <= revision && tag_selected(&e.tag, allow, deny))
        .collect();
    let skip = evs.len().saturating_sub(n);
    evs.drain(..skip);
    Ok((evs, revision))
}

/// Starts a task from the tasks page's form: a shell command line on the nodes a selector
/// picks, as the viewer (who must be allowed to create tasks). Its ID.
pub async fn start_task(
    client: &Client,
    selector: &str,
    command: &str,
    timeout: &str,
) -> Result<String, Error> {
    let selector = selector.trim();
    let command = command.trim();
    if selector.is_empty() {
        return Err(Error::Invalid(
            "give a label selector (like role=web)".into(),
        ));
    }
    if command.is_empty() {
        return Err(Error::Invalid("give a command".into()));
    }
    let timeout = match timeout.trim() {
        "" => Duration::from_secs(600),
        t => humantime::parse_duration(t)
            .map_err(|e| Error::Invalid(format!("timeout {t:?}: {e}")))?,
    };
    let spec = tasks::create(
        client,
        &tasks::NewTask {
            targets: tasks::Targets::Selector(selector.to_string()),
            command: vec![command.to_string()],
            script: None,
            shell: true,
            env: BTreeMap::new(),
            cwd: None,
            timeout,
            deadline: Duration::from_secs(300),
            register: None,
            readers: vec![],
            for_: None,
            retention: Duration::from_secs(7 * 24 * 3600),
        },
    )
    .await?;
    Ok(spec.id)
}
