//! One revision, decided: events in; the firings' writes, posts and errors out. A plain function
//! over the rules and their state, so every case is a story in `tests/scripts/step` (run by
//! `tests/step.rs`). The runtime ([`crate::runtime`]) reads the events, calls [`step`], turns the
//! writes into one txn with the new cursor (resolving a task's targets then), and posts after
//! the commit.

use std::collections::BTreeMap;
use std::time::Duration;

use eden_proto::model::events::Event;
use eden_proto::model::rules::{Action, Rule, State};
use eden_proto::model::tasks::{NewTask, Targets};
use eden_proto::model::{keys, vars};

use crate::rules::{self, Firing};

/// A write a firing asks for; all of a revision's writes commit together with the cursor.
#[derive(Debug, Clone)]
pub enum Write {
    /// Create a task (its targets are resolved when the runtime commits).
    Task(NewTask),
    /// Set a node's or the cluster's variable.
    Var {
        node: String,
        name: String,
        value: serde_json::Value,
    },
    /// Store an explicit event (the source is `reactor/RULE`).
    Event(Event),
    /// Ask a node to apply a state now.
    Converge { node: String, state: String },
}

/// One firing, planned.
#[derive(Debug, Clone)]
pub struct Planned {
    pub firing: Firing,
    pub writes: Vec<Write>,
    /// (URL, body), sent after the commit (at most once).
    pub posts: Vec<(String, String)>,
    /// Actions that could not be planned (a bad variable name...); the others still happen.
    pub errors: Vec<String>,
}

/// What one revision (or one tick) does.
#[derive(Debug, Default)]
pub struct Step {
    pub planned: Vec<Planned>,
    /// Rules whose templates failed: they did not fire.
    pub errors: Vec<String>,
    /// An event matched a rule (so the state may have changed even without a firing).
    pub matched: bool,
}

/// Reacts to the events of one revision. `extra` is the rest of the template context (`vars`).
/// Events tagged `reactor/...` (the runtime's own) are not reacted to, so rules cannot loop.
pub fn step(
    rules: &[Rule],
    state: &mut State,
    events: &[Event],
    extra: &serde_json::Value,
) -> Step {
    let mut out = Step::default();
    for ev in events {
        if ev.tag.starts_with("reactor/") || !rules.iter().any(|r| rules::matches(r, ev)) {
            continue;
        }
        out.matched = true;
        let (fired, errors) = rules::react(rules, state, ev, extra);
        out.errors.extend(errors);
        out.planned.extend(fired.into_iter().map(plan));
    }
    out
}

/// Fires the debounced rules whose wait is over at `now` (every second while one waits).
pub fn tick(rules: &[Rule], state: &mut State, now: u64, extra: &serde_json::Value) -> Step {
    let (fired, errors) = rules::tick(rules, state, now, extra);
    Step {
        matched: !fired.is_empty(),
        planned: fired.into_iter().map(plan).collect(),
        errors,
    }
}

/// The writes and posts of one firing's (rendered) actions.
pub fn plan(f: Firing) -> Planned {
    let (mut writes, mut posts, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let source = format!("reactor/{}", f.rule);
    for a in &f.actions {
        match a {
            Action::Run {
                on,
                nodes,
                command,
                shell,
                register,
                readers,
                for_,
                timeout,
            } => {
                let targets = match (on, nodes) {
                    (Some(s), _) => Targets::Selector(s.clone()),
                    (None, Some(n)) => Targets::Nodes(
                        n.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    ),
                    (None, None) => continue,
                };
                writes.push(Write::Task(NewTask {
                    targets,
                    command: command.clone(),
                    script: None,
                    shell: *shell,
                    env: BTreeMap::new(),
                    cwd: None,
                    timeout: timeout
                        .as_deref()
                        .and_then(|t| humantime::parse_duration(t).ok())
                        .unwrap_or(Duration::from_secs(600)),
                    deadline: Duration::from_secs(300),
                    register: register.clone(),
                    readers: readers.clone(),
                    for_: for_.clone(),
                    retention: Duration::from_secs(7 * 24 * 3600),
                }));
            }
            Action::SetVar { node, name, value } => {
                match vars::check_scope(node)
                    .map_err(|e| e.to_string())
                    .and_then(|_| keys::check_name("variable name", name))
                {
                    Ok(()) => writes.push(Write::Var {
                        node: node.clone(),
                        name: name.clone(),
                        value: value.clone(),
                    }),
                    Err(e) => errors.push(format!("set_var: {e}")),
                }
            }
            Action::Emit { tag, data, labels } => writes.push(Write::Event(Event::new(
                tag.clone(),
                &source,
                labels.clone(),
                data.clone(),
            ))),
            Action::Apply { state, node } => {
                match keys::check_node_name(node)
                    .and_then(|_| keys::check_name("state name", state))
                {
                    Ok(()) => writes.push(Write::Converge {
                        node: node.clone(),
                        state: state.clone(),
                    }),
                    Err(e) => errors.push(format!("apply: {e}")),
                }
            }
            Action::Post { url, body } => posts.push((
                url.clone(),
                body.clone().unwrap_or_else(|| {
                    serde_json::json!({"rule": f.rule, "tag": f.tag, "revision": f.revision})
                        .to_string()
                }),
            )),
        }
    }
    Planned {
        firing: f,
        writes,
        posts,
        errors,
    }
}
