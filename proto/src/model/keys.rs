//! The keyspace of eden's configuration-management objects, and who writes each prefix.
//!
//! Everything lives under `/eden/`, beside whatever users keep in the store themselves:
//!
//! ```text
//! /eden/nodes/NODE/facts          agent     facts and agent metadata (JSON), kept after it stops
//! /eden/nodes/NODE/owner          agent     the agent instance (from its data dir) owning the name
//! /eden/nodes/NODE/alive          agent     present while the agent lives: under its lease
//! /eden/nodes/NODE/labels         operator  JSON object; an agent may create it, never change it
//! /eden/nodes/NODE/tasks/ID       CLI       an assignment: run task ID here (under the task lease)
//! /eden/tasks/ID                  CLI       the task (JSON), under the task's lease
//! /eden/runs/ID/cancel            CLI       present once cancel was asked (task lease)
//! /eden/runs/ID/claims/NODE       agent     NODE's agent took the task (task lease)
//! /eden/runs/ID/results/NODE      agent     NODE's result (task lease)
//! /eden/vars/NODE/NAME            agent (register) or operator: a node's variable (JSON)
//! /eden/vars/cluster/NAME         operator  a cluster-wide variable (JSON)
//! ```
//!
//! A node may only ever need to write its own facts, owner, alive, claims, results and
//! variables; labels are the operator's. (A later issue enforces this with mTLS identities.)
//! "cluster" is therefore not a valid node name. Task specs and their progress live under two
//! prefixes so that listing tasks reads specs only, and following one task is one watch on
//! `/eden/runs/ID/`. Task IDs sort by creation time.

pub const ROOT: &str = "/eden/";
pub const NODES: &str = "/eden/nodes/";
pub const TASKS: &str = "/eden/tasks/";
pub const RUNS: &str = "/eden/runs/";
pub const VARS: &str = "/eden/vars/";
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
