//! The keys of eden's objects (the table is in [`crate::model`]). Task specs and their progress
//! live under two prefixes so that listing tasks reads specs only, and following one task is one
//! watch on `/eden/runs/ID/`. Task IDs sort by creation time.

pub const ROOT: &str = "/eden/";
pub const NODES: &str = "/eden/nodes/";
pub const TASKS: &str = "/eden/tasks/";
pub const RUNS: &str = "/eden/runs/";
pub const VARS: &str = "/eden/vars/";
/// Explicit events (`eden event emit`, webhooks, reactors), kept for the server's retention.
pub const EVENTS: &str = "/eden/events/";
/// Webhooks: `/eden/hooks/NAME` holds the hash of its token.
pub const HOOKS: &str = "/eden/hooks/";
/// Reactor rules, `/eden/reactors/NAME`.
pub const RULES: &str = "/eden/reactors/";
/// The reactor runtimes' own keys (election and cursor).
pub const REACTOR: &str = "/eden/reactor/";
/// The active reactor runtime's id, under its lease.
pub const REACTOR_LEADER: &str = "/eden/reactor/leader";
/// Where the active reactor runtime is in the log.
pub const REACTOR_CURSOR: &str = "/eden/reactor/cursor";
/// Who may read what (variables today): `/eden/readers/vars/SCOPE/NAME`.
pub const READERS: &str = "/eden/readers/";
/// The readers of variables.
pub const VAR_READERS: &str = "/eden/readers/vars/";
/// Join tokens: `/eden/tokens/ID` holds a Token (its secret's hash, the name it is for).
pub const TOKENS: &str = "/eden/tokens/";
/// What only members may read: the cluster's CA (`/eden/pki/ca`, certificate and key).
pub const PKI: &str = "/eden/pki/";
pub const PKI_CA: &str = "/eden/pki/ca";
/// Files: their bytes (`/eden/files/data/NAME`), what they are (`/eden/files/meta/NAME`), who
/// may read them (`/eden/readers/files/NAME`).
pub const FILES: &str = "/eden/files/";
pub const FILES_DATA: &str = "/eden/files/data/";
pub const FILES_META: &str = "/eden/files/meta/";
pub const FILE_READERS: &str = "/eden/readers/files/";
/// Where agents place files: `/eden/files/sync/NAME` holds a SyncRule.
pub const FILE_SYNC: &str = "/eden/files/sync/";
/// Each node's public age key, for files sealed to it: `/eden/sealkeys/NODE`.
pub const SEALKEYS: &str = "/eden/sealkeys/";
/// The pseudo-node whose variables are cluster-wide.
pub const CLUSTER: &str = "cluster";

pub fn node_prefix(node: &str) -> String {
    format!("{NODES}{node}/")
}
pub fn facts(node: &str) -> String {
    format!("{NODES}{node}/facts")
}
pub fn owner(node: &str) -> String {
    format!("{NODES}{node}/owner")
}
pub fn alive(node: &str) -> String {
    format!("{NODES}{node}/alive")
}
pub fn labels(node: &str) -> String {
    format!("{NODES}{node}/labels")
}
pub fn assignments(node: &str) -> String {
    format!("{NODES}{node}/tasks/")
}
pub fn assignment(node: &str, task: &str) -> String {
    format!("{NODES}{node}/tasks/{task}")
}
pub fn spec(task: &str) -> String {
    format!("{TASKS}{task}")
}
pub fn run_prefix(task: &str) -> String {
    format!("{RUNS}{task}/")
}
pub fn cancel(task: &str) -> String {
    format!("{RUNS}{task}/cancel")
}
pub fn claims(task: &str) -> String {
    format!("{RUNS}{task}/claims/")
}
pub fn claim(task: &str, node: &str) -> String {
    format!("{RUNS}{task}/claims/{node}")
}
pub fn results(task: &str) -> String {
    format!("{RUNS}{task}/results/")
}
pub fn result(task: &str, node: &str) -> String {
    format!("{RUNS}{task}/results/{node}")
}
pub fn node_vars(node: &str) -> String {
    format!("{VARS}{node}/")
}
pub fn var(node: &str, name: &str) -> String {
    format!("{VARS}{node}/{name}")
}
pub fn var_readers(scope: &str, name: &str) -> String {
    format!("{VAR_READERS}{scope}/{name}")
}
pub fn node_var_readers(scope: &str) -> String {
    format!("{VAR_READERS}{scope}/")
}

pub fn file_data(name: &str) -> String {
    format!("{FILES_DATA}{name}")
}
pub fn file_meta(name: &str) -> String {
    format!("{FILES_META}{name}")
}
pub fn file_readers(name: &str) -> String {
    format!("{FILE_READERS}{name}")
}
pub fn file_sync(rule: &str) -> String {
    format!("{FILE_SYNC}{rule}")
}
/// What node `node`'s agent did with file `name`.
pub fn placement(node: &str, name: &str) -> String {
    format!("{NODES}{node}/files/{name}")
}
pub fn sealkey(node: &str) -> String {
    format!("{SEALKEYS}{node}")
}

/// A new explicit event's key: time-ordered (milliseconds), unique.
pub fn event(time_ms: u64) -> String {
    format!("{EVENTS}{time_ms:013}-{:08x}", rand::random::<u32>())
}
pub fn token(id: &str) -> String {
    format!("{TOKENS}{id}")
}
pub fn hook(name: &str) -> String {
    format!("{HOOKS}{name}")
}
pub fn rule(name: &str) -> String {
    format!("{RULES}{name}")
}

/// The part of `key` after `prefix`, as text.
pub fn rest<'a>(key: &'a [u8], prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix.as_bytes())
        .and_then(|r| std::str::from_utf8(r).ok())
}

/// Checks a node or variable name: 1-128 characters of letters, digits, `.`, `-`, `_`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("{what} {name:?} must be 1 to 128 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{what} {name:?} has {c:?}; use letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// Checks a node name: a name, and not the reserved "cluster".
pub fn check_node_name(name: &str) -> Result<(), String> {
    check_name("node name", name)?;
    if name == CLUSTER {
        return Err("\"cluster\" is reserved for cluster-wide variables".into());
    }
    Ok(())
}
