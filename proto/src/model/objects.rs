//! The objects stored under `/eden/` (see the table in [`crate::model`]), as JSON. Times are Unix milliseconds.

use crate::model::readers::Readers;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A time as RFC 3339 (UTC, seconds), for people.
pub fn show_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// What an agent reports about its machine (`/eden/nodes/NODE/facts`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub hostname: String,
    pub addresses: Vec<String>,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub agent_version: String,
    /// When this agent process started.
    pub started_at: u64,
    /// Refreshed by the agent every facts interval: "last seen" once it is down.
    pub seen_at: u64,
    /// Set when the agent stopped cleanly.
    #[serde(default)]
    pub stopped_at: Option<u64>,
}

/// Present while the agent lives (`/eden/nodes/NODE/alive`, under its lease).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Alive {
    /// The agent instance (kept in its data dir) that owns the name.
    pub instance: String,
    /// This process's run of that instance.
    pub run: String,
    pub lease: i64,
    pub since: u64,
}

/// A task: what to run where (`/eden/tasks/ID`, and a slim copy in each target's
/// `/eden/nodes/NODE/tasks/ID`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TaskSpec {
    pub id: String,
    /// The program and its arguments; with `shell`, words joined into one `sh -c` command.
    #[serde(default)]
    pub command: Vec<String>,
    /// A script that travels in the task: run as a file (its #! line decides the interpreter,
    /// `sh` without one).
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub shell: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// The run's time limit; past it the whole process group is killed.
    pub timeout_ms: u64,
    /// A target whose agent has not started the task by then is unreachable.
    pub deadline: u64,
    /// Store each node's stdout as this variable of that node when the run succeeds.
    #[serde(default)]
    pub register: Option<String>,
    /// Who besides the node itself may read the registered variable.
    #[serde(default, skip_serializing_if = "Readers::is_empty")]
    pub readers: Readers,
    /// Whom or what the task is for (a rule's `for:`): carried into each result and its
    /// `task/finished` event, so that the next rule knows, whatever else ran meanwhile.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// Resolved when the task was created (empty in an assignment's copy of the spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// The selector or node list as given, for display.
    #[serde(default)]
    pub selector: String,
    pub created_at: u64,
    /// The lease every key of the task is attached to: its retention.
    pub lease: i64,
}

/// An agent took a task (`/eden/runs/ID/claims/NODE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Claim {
    pub instance: String,
    pub run: String,
    pub started_at: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Exited 0.
    Ok,
    /// Exited non-zero or was killed by a signal.
    Failed,
    /// Ran past its timeout and was killed.
    Timeout,
    /// Could not run: a template error, a missing program, a bad working directory.
    Error,
    /// Canceled before or while it ran.
    Canceled,
    /// Its agent did not start it before the deadline.
    Unreachable,
    /// Its agent died while running it; not run again.
    Lost,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Error => "error",
            Status::Canceled => "canceled",
            Status::Unreachable => "unreachable",
            Status::Lost => "lost",
        }
    }
}

/// A node's result (`/eden/runs/ID/results/NODE`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskResult {
    pub status: Status,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// The stored output was cut at the agent's output cap.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub started_at: Option<u64>,
    pub ended_at: u64,
    /// Why it could not run, or what happened, for every status but ok and failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The task's `for` (see [`TaskSpec::for_`]).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
}

impl TaskResult {
    /// A result without a run.
    pub fn without_run(status: Status, error: impl Into<String>) -> TaskResult {
        TaskResult {
            status,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            for_: None,
            started_at: None,
            ended_at: now_ms(),
            error: Some(error.into()),
        }
    }
}

/// A node as `eden node ls` shows it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub up: bool,
    pub labels: BTreeMap<String, String>,
    pub facts: Option<Facts>,
    /// Now if up; otherwise the last time the agent was known alive.
    pub last_seen: Option<u64>,
}
