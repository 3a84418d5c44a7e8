//! `eden task ls|show|wait|cancel`, and the result printing `eden run` shares.

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::objects::{now_ms, show_time, Status};
use eden_proto::model::tasks::{self, NodeState, TaskState};
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit::{Failure, TASK_FAILED, TASK_TIMEOUT, TASK_UNREACHABLE};
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Tasks within their retention, oldest first.
    Ls,
    /// A task and each target's state or result (now; does not wait).
    Show { id: String },
    /// Wait for a task to finish and print its results (exit code as `eden run`).
    Wait { id: String },
    /// Cancel a task: targets that have not started it never will; running ones are killed.
    Cancel { id: String },
}

/// The exit code for a finished task: 0 only if every target succeeded.
pub fn exit_code(st: &TaskState) -> i32 {
    let settled = st.settled(now_ms());
    let statuses: Vec<Status> = settled
        .values()
        .map(|s| match s {
            NodeState::Done(r) => r.status,
            // Still running or pending when we stopped looking.
            _ => Status::Unreachable,
        })
        .collect();
    if statuses
        .iter()
        .any(|s| matches!(s, Status::Failed | Status::Error | Status::Canceled))
    {
        TASK_FAILED
    } else if statuses.contains(&Status::Timeout) {
        TASK_TIMEOUT
    } else if statuses
        .iter()
        .any(|s| matches!(s, Status::Unreachable | Status::Lost))
    {
        TASK_UNREACHABLE
    } else {
        0
    }
}

fn duration_text(r: &eden_proto::model::objects::TaskResult) -> String {
    match r.started_at {
        Some(s) => format!("{:.2} s", r.ended_at.saturating_sub(s) as f64 / 1000.0),
        None => "-".into(),
    }
}

/// Prints every target's state or result in the chosen format.
pub fn print_results(out: &Printer, st: &TaskState) -> Result<(), Failure> {
    let settled = st.settled(now_ms());
    match out.format {
        Format::Json => {
            let v = serde_json::json!({
                "task": st.spec,
                "canceled": st.canceled,
                "nodes": settled,
            });
            out.json(&v)?;
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = settled
                .iter()
                .map(|(n, s)| match s {
                    NodeState::Done(r) => vec![
                        n.clone(),
                        r.status.as_str().into(),
                        r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        duration_text(r),
                        r.stdout
                            .lines()
                            .next()
                            .or(r.error.as_deref())
                            .unwrap_or("")
                            .chars()
                            .take(60)
                            .collect(),
                    ],
                    NodeState::Running { .. } => {
                        vec![n.clone(), "running".into(), "".into(), "".into(), "".into()]
                    }
                    NodeState::Pending => {
                        vec![n.clone(), "pending".into(), "".into(), "".into(), "".into()]
                    }
                })
                .collect();
            out.table(&["NODE", "STATUS", "EXIT", "DURATION", "OUTPUT"], &rows)?;
        }
        Format::Simple => {
            for (n, s) in &settled {
                match s {
                    NodeState::Done(r) => {
                        let exit = r
                            .exit_code
                            .map(|c| format!("exit {c}, "))
                            .unwrap_or_default();
                        out.line(&format!(
                            "== {n}: {} ({exit}{})",
                            r.status.as_str(),
                            duration_text(r)
                        ))?;
                        if !r.stdout.is_empty() {
                            out.line(r.stdout.trim_end_matches('\n'))?;
                        }
                        if r.stdout_truncated {
                            out.line("[stdout truncated]")?;
                        }
                        if !r.stderr.is_empty() {
                            out.line("-- stderr:")?;
                            out.line(r.stderr.trim_end_matches('\n'))?;
                        }
                        if r.stderr_truncated {
                            out.line("[stderr truncated]")?;
                        }
                        if let Some(e) = &r.error {
                            out.line(&format!("-- {e}"))?;
                        }
                    }
                    NodeState::Running { started_at } => {
                        out.line(&format!("== {n}: running since {}", show_time(*started_at)))?
                    }
                    NodeState::Pending => out.line(&format!(
                        "== {n}: pending (until {})",
                        show_time(st.spec.deadline)
                    ))?,
                }
            }
        }
    }
    Ok(())
}

/// Follows a task with a progress bar on stderr (when it is a terminal), then prints the results
/// and returns the exit code.
pub async fn wait_and_print(client: &Arc<Client>, out: &Printer, id: &str) -> Result<i32, Failure> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} {msg}").expect("progress template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let st = tasks::follow(client, id, |st| {
        let (ok, bad, running, pending) = st.counts(now_ms());
        bar.set_length(st.spec.targets.len() as u64);
        bar.set_position((ok + bad) as u64);
        let waiting: Vec<String> = st
            .settled(now_ms())
            .into_iter()
            .filter(|(_, s)| !matches!(s, NodeState::Done(_)))
            .map(|(n, _)| n)
            .take(5)
            .collect();
        bar.set_message(format!(
            "done {ok}, failed {bad}, running {running}, pending {pending} {}",
            if waiting.is_empty() {
                String::new()
            } else {
                format!("(waiting for {})", waiting.join(", "))
            }
        ));
    })
    .await;
    bar.finish_and_clear();
    let st = st?;
    print_results(out, &st)?;
    Ok(exit_code(&st))
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: TaskCmd) -> Result<(), Failure> {
    match c {
        TaskCmd::Ls => {
            let list = tasks::list(client).await?;
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&list).expect("JSON"))?,
                _ => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                show_time(t.created_at),
                                t.selector.clone(),
                                format!(
                                    "{}/{}{}",
                                    t.results,
                                    t.targets,
                                    if t.canceled { " canceled" } else { "" }
                                ),
                                t.command.chars().take(50).collect(),
                            ]
                        })
                        .collect();
                    out.table(&["ID", "CREATED", "TARGETS", "DONE", "COMMAND"], &rows)?;
                }
            }
        }
        TaskCmd::Show { id } => {
            let (st, _) = tasks::state(client, &id).await?;
            if out.format == Format::Simple {
                out.line(&format!(
                    "task {}: {}",
                    st.spec.id,
                    tasks::describe(&st.spec)
                ))?;
                out.line(&format!(
                    "created {}, on {}",
                    show_time(st.spec.created_at),
                    st.spec.selector
                ))?;
            }
            print_results(out, &st)?;
        }
        TaskCmd::Wait { id } => {
            let code = wait_and_print(client, out, &id).await?;
            if code != 0 {
                return Err(Failure {
                    code,
                    message: String::new(),
                    quiet: true,
                });
            }
        }
        TaskCmd::Cancel { id } => {
            tasks::cancel(client, &id).await?;
            out.line(&format!("canceled task {id}"))?;
        }
    }
    Ok(())
}
