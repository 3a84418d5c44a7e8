//! Reactor rules as stored (`/eden/reactors/NAME`) and the state the active runtime keeps with its
//! cursor (`/eden/reactor/cursor`). The engine that applies them is `eden_reactor::rules`.
//!
//! A rule (YAML, `eden reactor apply FILE.yaml`; a file holds one rule or a list):
//!
//! ```yaml
//! name: issue-join-token
//! on: node/joined/*            # a tag glob
//! labels: { severity: crit* }  # optional: event labels matching globs
//! data: { status: ok }         # optional: top-level data fields equal to these
//! when:                        # optional, like Salt's Thorium: fire on the count-th matching
//!   count: 3                   #   event within the window, per group
//!   within: 60s
//!   group_by: "{{ event.labels.instance }}"
//!   cooldown: 5m               #   then not again in this group for this long
//!   debounce: 10s              #   and only once matching events stopped for 10 s
//! actions:
//!   - run: { on: "role=issuer", command: [sh, -c, "make-token"], register: token }
//!   - set_var: { node: cluster, name: last_join, value: "{{ event.tag }}" }
//!   - emit: { tag: "join/token-requested", data: { node: "{{ event.tag }}" } }
//!   - post: { url: "http://hooks.example/join", body: "{{ event | tojson }}" }
//!   - apply: { state: web, node: "{{ event.parts[2] }}" }   # converge it now (design/plugins.md)
//! ```
//!
//! Every string in an action is a minijinja template (strict) over `event` (with `event.parts`,
//! the tag split at `/`: `node/joined/web1` has `event.parts[2] == "web1"`), `vars` (node name
//! or "cluster" -> name -> value) and `node` (the node an event names, when the runtime knows
//! it). The state (Thorium counters, cooldowns) is plain data the runtime stores with its cursor,
//! so a new runtime continues where the last one stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::model::events::Event;
use crate::model::{keys, kv, template, Error};

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub on: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// `- run: {...}` maps (not YAML tags).
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub actions: Vec<Action>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub count: usize,
    pub within: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
    /// Fire only once matching events stopped for this long (with the last one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Run a task: on a selector or a node list (templated), like `eden run`.
    Run {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nodes: Option<String>,
        command: Vec<String>,
        #[serde(default)]
        shell: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        register: Option<String>,
        /// Who besides each node may read the registered variable (`node:NAME`, selectors).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        readers: Vec<String>,
        /// Whom the task is for (templated): carried into its results and `task/finished`
        /// events (`event.data.for`), so that a later rule acts for the right one even when
        /// several ran at once.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        for_: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
    /// Set a variable of a node, or of the cluster (`node: cluster`, the default).
    SetVar {
        #[serde(default = "cluster")]
        node: String,
        name: String,
        value: serde_json::Value,
    },
    /// Emit an explicit event.
    Emit {
        tag: String,
        #[serde(default)]
        data: serde_json::Value,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
    /// POST to a URL (after the reaction committed: at most once).
    Post {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Apply a stored state on a node now (`eden apply`'s state, by name), whatever its mode and
    /// interval: an alert converges the machine it is about.
    Apply { state: String, node: String },
}

fn cluster() -> String {
    "cluster".into()
}
/// Counters and cooldowns, per rule and group.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct State {
    pub groups: BTreeMap<String, Group>,
    /// The cluster's members as last seen by the runtime (member id in hex -> name and whether
    /// a learner); None until first seen. The runtime emits member events from its changes.
    #[serde(default)]
    pub members: Option<BTreeMap<String, (String, bool)>>,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Group {
    /// Times (ms) of matching events within the window.
    pub times: Vec<u64>,
    pub last_fired: Option<u64>,
    /// With debounce: the event to fire with, and when.
    #[serde(default)]
    pub pending: Option<(Event, u64)>,
}

/// Where the active runtime is: the last revision handled and the rules' state.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Cursor {
    pub revision: i64,
    pub state: State,
}

pub fn duration(what: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{what} {s:?}: {e}"))
}

/// A YAML file holding one item or a list of them.
pub fn one_or_list<T: serde::de::DeserializeOwned>(text: &str) -> Result<Vec<T>, String> {
    match serde_yaml::from_str::<Vec<T>>(text) {
        Ok(r) => Ok(r),
        Err(list_err) => match serde_yaml::from_str::<T>(text) {
            Ok(r) => Ok(vec![r]),
            Err(_) if text.trim_start().starts_with('-') => Err(list_err.to_string()),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// Parses a rules file: one rule or a list. Err explains what is wrong, with the rule's name.
pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let rules: Vec<Rule> = one_or_list(text)?;
    for r in &rules {
        validate(r).map_err(|e| format!("rule {:?}: {e}", r.name))?;
    }
    Ok(rules)
}

/// Checks what YAML cannot: names, durations, templates, targets.
pub fn validate(r: &Rule) -> Result<(), String> {
    keys::check_name("rule name", &r.name)?;
    if r.on.is_empty() {
        return Err("`on` (a tag glob) is empty".into());
    }
    if let Some(w) = &r.when {
        if w.count == 0 {
            return Err("when.count must be at least 1".into());
        }
        duration("when.within", &w.within)?;
        if let Some(c) = &w.cooldown {
            duration("when.cooldown", c)?;
        }
        if let Some(d) = &w.debounce {
            duration("when.debounce", d)?;
        }
    }
    if r.actions.is_empty() {
        return Err("no actions".into());
    }
    let env = template::env();
    let check = |s: &str| {
        env.template_from_str(s)
            .map(|_| ())
            .map_err(|e| format!("template {s:?}: {e}"))
    };
    for a in &r.actions {
        match a {
            Action::Run {
                on,
                nodes,
                command,
                timeout,
                ..
            } => {
                if on.is_some() == nodes.is_some() {
                    return Err("a run action needs exactly one of `on` and `nodes`".into());
                }
                if command.is_empty() {
                    return Err("a run action needs a command".into());
                }
                if let Some(t) = timeout {
                    duration("run.timeout", t)?;
                }
                for s in on.iter().chain(nodes.iter()).chain(command.iter()) {
                    check(s)?;
                }
            }
            Action::SetVar { node, name, .. } => {
                check(node)?;
                check(name)?;
            }
            Action::Emit { tag, .. } => check(tag)?,
            Action::Apply { state, node } => {
                check(state)?;
                check(node)?;
            }
            Action::Post { url, body } => {
                check(url)?;
                if let Some(b) = body {
                    check(b)?;
                }
            }
        }
    }
    Ok(())
}

/// Stores rules, replacing those of the same names, all in one txn.
pub async fn apply(client: &Client, rules: &[Rule]) -> Result<(), Error> {
    let ops = rules
        .iter()
        .map(|r| kv::put(&keys::rule(&r.name), r, 0))
        .collect();
    kv::txn(client, vec![], ops, vec![]).await?;
    Ok(())
}

/// The stored rules, by name.
pub async fn list(client: &Client) -> Result<Vec<Rule>, Error> {
    let (kvs, _) = kv::get_prefix(client, keys::RULES, 0, false).await?;
    kvs.iter()
        .map(|kv| kv::decode::<Rule>(kv).map_err(Error::Corrupt))
        .collect()
}

/// Removes a stored rule; NotFound if there is none of that name.
pub async fn remove(client: &Client, name: &str) -> Result<(), Error> {
    if kv::delete_one(client, &keys::rule(name)).await? == 0 {
        return Err(Error::NotFound(format!("no rule {name}")));
    }
    Ok(())
}
