//! `eden run (--on SELECTOR | --nodes LIST) [...] -- COMMAND ARGS...` or `--script FILE`: runs a
//! command on every matching node and waits for the results (or prints the task ID with
//! `--async`). Exit code 0 only if every target succeeded; 4 a target failed, 5 one timed out,
//! 6 one was unreachable or lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use eden_proto::client::Client;
use eden_proto::model::tasks::{self, NewTask, Targets};

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Args)]
pub struct RunArgs {
    /// Run on the nodes matching this label selector (role=web,env!=prod,tier in (a,b),!draining).
    #[arg(long, conflicts_with = "nodes", required_unless_present = "nodes")]
    pub on: Option<String>,
    /// Run on these nodes, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Option<Vec<String>>,
    /// Store each node's stdout (trimmed; JSON when it parses as JSON) as this variable of that
    /// node, when its run succeeds.
    #[arg(long)]
    pub register: Option<String>,
    /// Who besides each node may read the variable it registers: `node:NAME` or a label
    /// selector (repeatable; default: the node itself and admins).
    #[arg(long = "readers", requires = "register")]
    pub readers: Vec<String>,
    /// The run's time limit on each node; past it the process group is killed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How long offline targets may take to start the task before they count as unreachable.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// An environment variable for the command, K=V (repeatable; templates allowed).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// The working directory on the node.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Run the command words through `sh -c` (pipes, redirections, globbing).
    #[arg(long)]
    pub shell: bool,
    /// A script file to send and run (its #! line picks the interpreter; sh without one); words
    /// after -- become its arguments.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Print the task ID and return at once (see `eden task wait`).
    #[arg(long = "async")]
    pub detach: bool,
    /// How long the task and its results are kept.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// The command and its arguments.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(client: &Arc<Client>, out: &Printer, a: RunArgs) -> Result<(), Failure> {
    let mut env = BTreeMap::new();
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--env {e}: expected K=V")))?;
        if k.is_empty() {
            return Err(Failure::usage(format!("--env {e}: empty name")));
        }
        env.insert(k.to_string(), v.to_string());
    }
    let script = match &a.script {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Failure::usage(format!("--script {}: {e}", p.display())))?,
        ),
        None => None,
    };
    if a.shell && script.is_some() {
        return Err(Failure::usage("give --shell or --script, not both"));
    }
    let targets = match (&a.on, &a.nodes) {
        (Some(s), _) => Targets::Selector(s.clone()),
        (None, Some(n)) => Targets::Nodes(n.clone()),
        (None, None) => return Err(Failure::usage("give --on SELECTOR or --nodes LIST")),
    };
    let spec = tasks::create(
        client,
        &NewTask {
            targets,
            command: a.command.clone(),
            script,
            shell: a.shell,
            env,
            cwd: a.cwd.clone(),
            timeout: a.timeout,
            deadline: a.deadline,
            register: a.register.clone(),
            readers: a.readers.clone(),
            for_: None,
            retention: a.retention,
        },
    )
    .await?;
    if a.detach {
        match out.format {
            Format::Json => {
                out.json(&serde_json::json!({"task": spec.id, "targets": spec.targets}))?
            }
            _ => out.line(&spec.id)?,
        }
        return Ok(());
    }
    if out.format == Format::Simple {
        eprintln!("task {} on {} node(s)", spec.id, spec.targets.len());
    }
    let code = super::task::wait_and_print(client, out, &spec.id).await?;
    if code != 0 {
        return Err(Failure {
            code,
            message: String::new(),
            quiet: true,
        });
    }
    Ok(())
}
