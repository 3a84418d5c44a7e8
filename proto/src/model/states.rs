//! Desired state (design/plugins.md): a state names resources, each of a type a plugin provides,
//! with attributes and `require`/`notify` edges. `eden apply` stores it at `/eden/states/NAME`
//! with the nodes it is for; every agent it selects keeps its resources in that state. A plan
//! request (`eden apply --plan`, and the first step of every apply) is `/eden/plans/NAME`: the
//! agents plan it and change nothing. What each node did is under its own prefix:
//! `/eden/nodes/NODE/plans/NAME`, `/eden/nodes/NODE/states/NAME` (the events
//! `state/applied/NODE/NAME` and `state/failed/NODE/NAME`) and
//! `/eden/nodes/NODE/drift/NAME/RESOURCE` (the event `state/drift/NODE/RESOURCE`). A reactor's
//! `apply` action asks a node to apply a state now: `/eden/nodes/NODE/converge/NAME`.
//!
//! Every node may read every state (as it may read sync rules): a secret belongs in a sealed
//! file, which a state names in a template (`{{ files["web1/tls/key.pem"] }}`) and only the
//! nodes the file's readers allow can open.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::model::readers::Readers;
use crate::model::{keys, kv, Error};

pub const STATES: &str = "/eden/states/";
pub const PLANS: &str = "/eden/plans/";
/// The checksums of approved plugins: `/eden/plugins/lock/NAME` holds a [`PluginLock`].
pub const PLUGIN_LOCKS: &str = "/eden/plugins/lock/";

pub fn state(name: &str) -> String {
    format!("{STATES}{name}")
}
pub fn plan(name: &str) -> String {
    format!("{PLANS}{name}")
}
pub fn plugin_lock(name: &str) -> String {
    format!("{PLUGIN_LOCKS}{name}")
}
/// What node `node` did with state `name`.
pub fn node_state(node: &str, name: &str) -> String {
    format!("{}{node}/states/{name}", keys::NODES)
}
/// Node `node`'s plan of state `name`.
pub fn node_plan(node: &str, name: &str) -> String {
    format!("{}{node}/plans/{name}", keys::NODES)
}
/// A request that node `node` apply state `name` now (a reactor's `apply` action).
pub fn converge(node: &str, name: &str) -> String {
    format!("{}{node}/converge/{name}", keys::NODES)
}
pub fn converges(node: &str) -> String {
    format!("{}{node}/converge/", keys::NODES)
}

/// Drift node `node` found in resource `resource` of state `name`.
pub fn drift(node: &str, name: &str, resource: &str) -> String {
    format!("{}{node}/drift/{name}/{resource}", keys::NODES)
}

/// The default interval at which an agent reads its resources again.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The default time a plugin call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What an agent does about drift.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Change the resource back (and report it).
    #[default]
    Enforce,
    /// Only report it.
    Report,
}

/// One resource of a state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// The resource type; its plugin is the part before the first `_` (`file`, `greeting_message`
    /// from plugin `greeting`).
    #[serde(rename = "type")]
    pub type_: String,
    pub name: String,
    /// Its attributes, as its plugin's schema says; strings may be templates.
    #[serde(default)]
    pub attrs: serde_json::Map<String, serde_json::Value>,
    /// Resources (`TYPE.NAME`) applied before this one; a failed one skips it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    /// Resources (`TYPE.NAME`) applied after this one and told when it changed (a service
    /// restarts; an exec with `refreshonly` runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    /// How long each plugin call for it may take (`30s`, `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Hide its values and the plugin's detail in plans, reports and drift.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
}

impl Resource {
    /// `TYPE.NAME`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.type_, self.name)
    }

    /// The plugin that provides its type.
    pub fn plugin(&self) -> &str {
        plugin_of(&self.type_)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// The plugin that provides resource type `type_`: the part before the first `_`.
pub fn plugin_of(type_: &str) -> &str {
    type_.split('_').next().unwrap_or(type_)
}

/// A state as written (`eden apply STATE.yaml`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// How often agents read the resources again (`60s`).
    #[serde(default)]
    pub interval: Option<String>,
    pub resources: Vec<Resource>,
}

/// A state as stored (`/eden/states/NAME`, and in a plan request).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct State {
    pub name: String,
    /// The nodes it is for.
    pub targets: Readers,
    /// The selector or node list as given, for display.
    pub selector: String,
    pub mode: Mode,
    pub interval_ms: u64,
    /// In dependency order.
    pub resources: Vec<Resource>,
    /// Changes with every apply: an agent applies each generation once, then keeps it.
    pub generation: String,
    /// The identity that applied it.
    pub by: String,
    pub time: u64,
}

impl State {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(100))
    }
}

/// A request to plan a state without changing anything (`/eden/plans/NAME`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PlanRequest {
    pub id: String,
    pub state: State,
}

/// Checks a resource type: lowercase letters, digits and `_`, starting with a letter.
pub fn check_type(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "resource type {t:?}: use lowercase letters, digits and '_', starting with a letter"
        ))
    }
}

/// Parses and checks a state file: names, types, references; returns it with its resources in
/// dependency order (a resource after everything it requires and everything that notifies it;
/// otherwise in the order written).
pub fn parse(yaml: &str) -> Result<StateFile, Error> {
    let mut f: StateFile =
        serde_yaml::from_str(yaml).map_err(|e| Error::Invalid(format!("the state file: {e}")))?;
    if let Some(n) = &f.name {
        keys::check_name("state name", n).map_err(Error::Invalid)?;
    }
    if let Some(i) = &f.interval {
        let d = humantime::parse_duration(i)
            .map_err(|e| Error::Invalid(format!("interval {i:?}: {e}")))?;
        if d < Duration::from_millis(100) {
            return Err(Error::Invalid(format!("interval {i:?}: at least 100ms")));
        }
    }
    if f.resources.is_empty() {
        return Err(Error::Invalid("the state has no resources".into()));
    }
    for r in &f.resources {
        check_type(&r.type_).map_err(Error::Invalid)?;
        keys::check_name("resource name", &r.name).map_err(Error::Invalid)?;
        if let Some(t) = &r.timeout {
            humantime::parse_duration(t)
                .map_err(|e| Error::Invalid(format!("{}: timeout {t:?}: {e}", r.id())))?;
        }
    }
    f.resources = order(&f.resources)?;
    Ok(f)
}

/// The resources in dependency order; Err names an unknown reference, a duplicate or a cycle.
pub fn order(resources: &[Resource]) -> Result<Vec<Resource>, Error> {
    let mut index = HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        if index.insert(r.id(), i).is_some() {
            return Err(Error::Invalid(format!("{} is named twice", r.id())));
        }
    }
    // before[i]: the resources that must come before i.
    let mut before: Vec<Vec<usize>> = vec![vec![]; resources.len()];
    for (i, r) in resources.iter().enumerate() {
        for (edge, list) in [("require", &r.require), ("notify", &r.notify)] {
            for target in list {
                let j = *index.get(target).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} has {edge} {target:?}, which is not a resource of this state (TYPE.NAME)",
                        r.id()
                    ))
                })?;
                if j == i {
                    return Err(Error::Invalid(format!("{} names itself in {edge}", r.id())));
                }
                if edge == "require" {
                    before[i].push(j);
                } else {
                    before[j].push(i);
                }
            }
        }
    }
    // Depth-first, in the order written; 1 = on the path, 2 = placed.
    let mut mark = vec![0u8; resources.len()];
    let mut out = Vec::with_capacity(resources.len());
    fn visit(
        i: usize,
        before: &[Vec<usize>],
        mark: &mut [u8],
        out: &mut Vec<usize>,
        rs: &[Resource],
    ) -> Result<(), Error> {
        match mark[i] {
            2 => return Ok(()),
            1 => {
                return Err(Error::Invalid(format!(
                    "{} is part of a cycle of require and notify",
                    rs[i].id()
                )))
            }
            _ => {}
        }
        mark[i] = 1;
        for &j in &before[i] {
            visit(j, before, mark, out, rs)?;
        }
        mark[i] = 2;
        out.push(i);
        Ok(())
    }
    for i in 0..resources.len() {
        visit(i, &before, &mut mark, &mut out, resources)?;
    }
    Ok(out.into_iter().map(|i| resources[i].clone()).collect())
}

/// What a plan does to a resource.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Noop,
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Noop => "no-op",
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
        }
    }
    /// Terraform's marks: `+`, `~`, `-/+`, `-`.
    pub fn sign(self) -> &'static str {
        match self {
            Action::Noop => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

/// One attribute a plan changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AttrChange {
    pub attr: String,
    /// Absent: not set before (or hidden, when sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forces_replace: bool,
}

/// What a node planned or did for one resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResourceReport {
    /// `TYPE.NAME`.
    pub id: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<AttrChange>,
    /// The plugin's words for the change (a unified diff of a file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Set when planning or applying it failed, or it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Warnings the plugin gave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A node's plan of a state (`/eden/nodes/NODE/plans/NAME`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NodePlan {
    /// The plan request's id.
    pub id: String,
    pub time: u64,
    /// Why the node could not plan at all (no such plugin, a template error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resources: Vec<ResourceReport>,
}

impl NodePlan {
    pub fn changes(&self) -> usize {
        self.resources
            .iter()
            .filter(|r| r.action != Action::Noop)
            .count()
    }
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.resources.iter().any(|r| r.error.is_some())
    }
}

/// What a node did with a state's generation (`/eden/nodes/NODE/states/NAME`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NodeState {
    pub generation: String,
    /// `applied` or `failed`.
    pub status: String,
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The resources it changed or failed on (no-ops left out).
    pub resources: Vec<ResourceReport>,
}

impl NodeState {
    pub fn ok(&self) -> bool {
        self.status == "applied"
    }
}

/// Drift an agent found: a resource no longer as its state says
/// (`/eden/nodes/NODE/drift/NAME/RESOURCE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Drift {
    pub state: String,
    pub resource: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<AttrChange>,
    /// Changed back (mode enforce) or only reported.
    pub corrected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the agent found it (it may report it later, after it was cut off).
    pub time: u64,
}

/// Apply a state now, once (`/eden/nodes/NODE/converge/NAME`; written by a reactor, read by
/// the node).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConvergeRequest {
    pub id: String,
    pub by: String,
    pub time: u64,
}

/// An approved plugin binary (`/eden/plugins/lock/NAME`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PluginLock {
    /// Hex SHA-256 of the executable.
    pub sha256: String,
    /// The identity that approved it.
    pub by: String,
    pub time: u64,
}

/// Every stored state, and the revision read at.
pub async fn list(client: &Client) -> Result<(Vec<State>, i64), Error> {
    let (kvs, rev) = kv::get_prefix(client, STATES, 0, false).await?;
    let states = kvs
        .iter()
        .map(|kv| kv::decode(kv).map_err(Error::Corrupt))
        .collect::<Result<_, _>>()?;
    Ok((states, rev))
}

/// Every plan request.
pub async fn plan_requests(client: &Client) -> Result<Vec<PlanRequest>, Error> {
    let (kvs, _) = kv::get_prefix(client, PLANS, 0, false).await?;
    kvs.iter()
        .map(|kv| kv::decode(kv).map_err(Error::Corrupt))
        .collect()
}

/// Every plugin lock by plugin name.
pub async fn locks(client: &Client) -> Result<BTreeMap<String, PluginLock>, Error> {
    let (kvs, _) = kv::get_prefix(client, PLUGIN_LOCKS, 0, false).await?;
    kvs.iter()
        .map(|kv| {
            let name = keys::rest(&kv.key, PLUGIN_LOCKS)
                .unwrap_or_default()
                .to_string();
            Ok((name, kv::decode(kv).map_err(Error::Corrupt)?))
        })
        .collect()
}

/// The nodes a state is for, as `--on SELECTOR` or `--nodes LIST` gave them.
pub fn targets_of(t: &crate::model::tasks::Targets) -> Result<Readers, Error> {
    use crate::model::tasks::Targets;
    let items: Vec<String> = match t {
        Targets::Selector(s) => vec![s.clone()],
        Targets::Nodes(n) => n.iter().map(|n| format!("node:{n}")).collect(),
    };
    Readers::parse(&items).map_err(Error::Invalid)
}

/// A new plan request id or generation: time-ordered, unique.
pub fn new_id() -> String {
    crate::model::tasks::new_id()
}

/// Stores a plan request for `state`; returns the revision it was stored at.
pub async fn request_plan(client: &Client, req: &PlanRequest) -> Result<i64, Error> {
    let r = kv::txn(
        client,
        vec![],
        vec![kv::put(&plan(&req.state.name), req, 0)],
        vec![],
    )
    .await?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// Withdraws a plan request (after its plans were shown).
pub async fn withdraw_plan(client: &Client, name: &str) -> Result<(), Error> {
    kv::delete_one(client, &plan(name)).await?;
    Ok(())
}

/// Stores `state` (its agents apply it) and withdraws its plan request, in one txn; returns the
/// revision.
pub async fn store(client: &Client, state: &State) -> Result<i64, Error> {
    let r = kv::txn(
        client,
        vec![],
        vec![
            kv::put(&self::state(&state.name), state, 0),
            kv::delete(&plan(&state.name)),
        ],
        vec![],
    )
    .await?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// Removes a state: its agents stop keeping it (its resources stay as they are).
pub async fn remove(client: &Client, name: &str) -> Result<(), Error> {
    keys::check_name("state name", name).map_err(Error::Invalid)?;
    let r = kv::txn(
        client,
        vec![],
        vec![kv::delete(&state(name)), kv::delete(&plan(name))],
        vec![],
    )
    .await?;
    let deleted = r.responses.iter().any(|r| {
        matches!(&r.response, Some(crate::etcdserverpb::response_op::Response::ResponseDeleteRange(d)) if d.deleted > 0)
    });
    if !deleted {
        return Err(Error::NotFound(format!("no state {name}")));
    }
    Ok(())
}

/// One stored state.
pub async fn get(client: &Client, name: &str) -> Result<State, Error> {
    keys::check_name("state name", name).map_err(Error::Invalid)?;
    match kv::get_one(client, &state(name)).await? {
        Some(kv) => kv::decode(&kv).map_err(Error::Corrupt),
        None => Err(Error::NotFound(format!("no state {name}"))),
    }
}

/// Which reports [`wait_reports`] waits for: each of `nodes`' `/eden/nodes/NODE/{kind}/NAME`,
/// watched from revision `from`, for at most `within`.
pub struct Awaited<'a> {
    /// `plans` or `states`.
    pub kind: &'a str,
    pub name: &'a str,
    pub nodes: &'a [String],
    pub from: i64,
    pub within: Duration,
}

/// Waits until each node wrote a report that `fits`, or until the time is up; calls `each` as
/// they come. Returns the reports by node (a node missing did not report in time).
pub async fn wait_reports<T: serde::de::DeserializeOwned>(
    client: &std::sync::Arc<Client>,
    w: Awaited<'_>,
    fits: impl Fn(&T) -> bool,
    mut each: impl FnMut(&str, &T),
) -> Result<BTreeMap<String, T>, Error> {
    let Awaited {
        kind,
        name,
        nodes,
        from,
        within,
    } = w;
    use crate::model::watcher::{Change, Watcher};
    let mut got: BTreeMap<String, T> = BTreeMap::new();
    let node_of = |key: &[u8]| -> Option<String> {
        let rest = keys::rest(key, keys::NODES)?;
        let (node, what) = rest.split_once('/')?;
        (what == format!("{kind}/{name}") && nodes.iter().any(|n| n == node))
            .then(|| node.to_string())
    };
    // Reports already there (written before the watch starts) count too.
    let (kvs, _) = kv::get_prefix(client, keys::NODES, 0, false).await?;
    let mut take = |kvs: &[crate::mvccpb::KeyValue], got: &mut BTreeMap<String, T>| {
        for kv in kvs {
            if let Some(node) = node_of(&kv.key) {
                if let Ok(r) = kv::decode::<T>(kv) {
                    if fits(&r) && !got.contains_key(&node) {
                        each(&node, &r);
                        got.insert(node, r);
                    }
                }
            }
        }
    };
    take(&kvs, &mut got);
    let mut w = Watcher::from_revision(client.clone(), keys::NODES, from).relist_on_compaction();
    let end = tokio::time::Instant::now() + within;
    while got.len() < nodes.len() {
        let c = tokio::select! {
            c = w.next() => c,
            _ = tokio::time::sleep_until(end) => break,
        };
        match c {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(Change::Listed { kvs, .. })) => take(&kvs, &mut got),
            Some(Ok(Change::Events(events))) => {
                let kvs: Vec<_> = events.into_iter().filter_map(|e| e.kv).collect();
                take(&kvs, &mut got);
            }
            Some(Ok(Change::Compacted { .. })) => {}
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(rs: &[Resource]) -> Vec<String> {
        rs.iter().map(|r| r.id()).collect()
    }

    #[test]
    fn resources_come_after_what_they_require_and_what_notifies_them() {
        let f = parse(
            r#"
resources:
  - type: service
    name: nginx
    attrs: {name: nginx}
  - type: file
    name: site
    attrs: {path: /etc/nginx/sites-enabled/x}
    require: [package.nginx]
    notify: [service.nginx]
  - type: package
    name: nginx
"#,
        )
        .unwrap();
        assert_eq!(
            ids(&f.resources),
            ["package.nginx", "file.site", "service.nginx"]
        );
        assert_eq!(f.mode, Mode::Enforce);
    }

    #[test]
    fn bad_states_are_refused_with_the_reason() {
        let err = |y: &str| parse(y).unwrap_err().to_string();
        assert!(err("resources: []").contains("no resources"));
        assert!(err("resources: [{type: File, name: a}]").contains("lowercase"));
        assert!(err("resources: [{type: file, name: a/b}]").contains("resource name"));
        assert!(err("resources: [{type: file, name: a, require: [file.b]}]")
            .contains("not a resource of this state"));
        assert!(
            err("resources: [{type: file, name: a}, {type: file, name: a}]")
                .contains("named twice")
        );
        assert!(err(
            "resources: [{type: file, name: a, require: [file.b]}, {type: file, name: b, require: [file.a]}]"
        )
        .contains("cycle"));
        assert!(
            err("resources: [{type: file, name: a, require: [file.b], notify: [file.b]}, {type: file, name: b}]")
                .contains("cycle")
        );
        assert!(err("resources: [{type: file, name: a, colour: red}]").contains("colour"));
        assert!(err("interval: 1ms\nresources: [{type: file, name: a}]").contains("100ms"));
    }

    #[test]
    fn a_type_names_its_plugin() {
        assert_eq!(plugin_of("file"), "file");
        assert_eq!(plugin_of("greeting_message"), "greeting");
    }
}
