//! `eden apply STATE.yaml (--on SELECTOR | --nodes LIST) [--plan] [--detailed-exitcode]`: every
//! target's agent plans the state and the plans are shown (a diff per node, nothing changed);
//! then, unless `--plan`, the state is stored and applied, and each node's result shown. The
//! state stays assigned: a node that comes to match later converges by itself, and agents keep
//! drift away (`eden_proto::model::states`, design/plugins.md).
//!
//! Exit codes: 0 done (with `--detailed-exitcode`: done and nothing to change), 2 with
//! `--detailed-exitcode`: done and there were changes (bad input then exits 1, so that 2 only
//! means changes); 4 a node's plan or apply failed (with a plan failure nothing is applied);
//! 6 a node did not answer in time.
//!
//! `eden state ls|show|rm`: the stored states, what each node did, forgetting one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use eden_proto::client::Client;
use eden_proto::model::files::writer_of;
use eden_proto::model::objects::{now_ms, show_time};
use eden_proto::model::states::{
    self, Action, Awaited, NodePlan, NodeState, PlanRequest, ResourceReport, State,
};
use eden_proto::model::tasks::{self, Targets};
use eden_proto::model::{keys, nodes, Error};

use crate::exit::{Failure, REFUSED, TASK_FAILED, TASK_UNREACHABLE};
use crate::printer::{Format, Printer};

#[derive(Args)]
pub struct ApplyArgs {
    /// The state file (YAML: resources with type, name, attrs, require, notify).
    pub file: PathBuf,
    /// Apply it on the nodes matching this label selector (and on nodes that match later).
    #[arg(long, conflicts_with = "nodes", required_unless_present = "nodes")]
    pub on: Option<String>,
    /// Apply it on these nodes, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Option<Vec<String>>,
    /// The state's name [default: the file's `name`, else the file name without extension].
    #[arg(long)]
    pub name: Option<String>,
    /// Show the plans and stop: nothing is changed or stored.
    #[arg(long)]
    pub plan: bool,
    /// Exit 0 when nothing changes and 2 when something does (as Terraform's).
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// How long to wait for each node's plan, and then for its result.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Subcommand)]
pub enum StateCmd {
    /// The stored states.
    Ls,
    /// A state: its resources, and what each node did with it.
    Show { name: String },
    /// Forget a state: its agents stop keeping it (its resources stay as they are).
    Rm { name: String },
}

fn failure(code: i32, message: String) -> Failure {
    Failure {
        code,
        message,
        quiet: false,
    }
}

/// One value, on one line, at most 60 characters.
fn short(v: &Option<serde_json::Value>) -> String {
    let s = match v {
        None => return "(none)".into(),
        Some(serde_json::Value::String(s)) => format!("{s:?}"),
        Some(v) => v.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn print_resource(out: &Printer, r: &ResourceReport) -> std::io::Result<()> {
    let head = match &r.error {
        Some(e) => format!("  ! {}: {e}", r.id),
        None => format!("  {} {}", r.action.sign(), r.id),
    };
    out.line(&head)?;
    for c in &r.changes {
        let multiline = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .and_then(|v| v.as_str())
                .is_some_and(|s| s.trim_end().contains('\n') || s.ends_with('\n'))
        };
        let v = if c.sensitive {
            "(sensitive)".to_string()
        } else if !r.detail.is_empty() && (multiline(&c.from) || multiline(&c.to)) {
            "(in the diff below)".to_string()
        } else {
            format!("{} -> {}", short(&c.from), short(&c.to))
        };
        let replace = if c.forces_replace {
            " (forces replacement)"
        } else {
            ""
        };
        out.line(&format!("      {}: {v}{replace}", c.attr))?;
    }
    for line in r.detail.lines() {
        out.line(&format!("      {line}"))?;
    }
    for w in &r.warnings {
        out.line(&format!("      warning: {w}"))?;
    }
    Ok(())
}

fn print_plan(out: &Printer, node: &str, p: &NodePlan) -> std::io::Result<()> {
    if let Some(e) = &p.error {
        return out.line(&format!("{node}: cannot plan: {e}"));
    }
    let failed = p.resources.iter().filter(|r| r.error.is_some()).count();
    let n = p.changes();
    let mut head = match n {
        0 => format!("{node}: no changes"),
        1 => format!("{node}: 1 to change"),
        n => format!("{node}: {n} to change"),
    };
    if failed > 0 {
        head.push_str(&format!(", {failed} failed"));
    }
    out.line(&head)?;
    for r in &p.resources {
        if r.action != Action::Noop || r.error.is_some() {
            print_resource(out, r)?;
        }
    }
    Ok(())
}

fn print_result(out: &Printer, node: &str, s: &NodeState) -> std::io::Result<()> {
    let changed = s
        .resources
        .iter()
        .filter(|r| r.error.is_none() && r.action != Action::Noop)
        .count();
    match &s.error {
        Some(e) => out.line(&format!("{node}: failed: {e}"))?,
        None => out.line(&format!("{node}: {} ({changed} changed)", s.status))?,
    }
    for r in &s.resources {
        print_resource(out, r)?;
    }
    Ok(())
}

pub async fn run(client: &Arc<Client>, out: &Printer, a: ApplyArgs) -> Result<(), Failure> {
    // With --detailed-exitcode, 2 means "changes": bad input exits 1 instead.
    let usage = |m: String| {
        if a.detailed_exitcode {
            failure(REFUSED, m)
        } else {
            Failure::usage(m)
        }
    };
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| usage(format!("{}: {e}", a.file.display())))?;
    let file = states::parse(&text).map_err(|e| usage(e.to_string()))?;
    let name = match a.name.clone().or(file.name.clone()) {
        Some(n) => n,
        None => a
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    keys::check_name("state name", &name).map_err(usage)?;
    let targets = match (&a.on, &a.nodes) {
        (Some(s), _) => Targets::Selector(s.clone()),
        (None, Some(n)) => Targets::Nodes(n.clone()),
        (None, None) => return Err(usage("give --on SELECTOR or --nodes LIST".into())),
    };
    let readers = states::targets_of(&targets).map_err(|e| usage(e.to_string()))?;
    let interval = file
        .interval
        .as_deref()
        .map(|i| humantime::parse_duration(i).expect("checked by parse"))
        .unwrap_or(states::DEFAULT_INTERVAL);
    let matched = tasks::resolve(client, &targets).await?;
    let known = nodes::list(client).await?;
    let (up, down): (Vec<String>, Vec<String>) = matched
        .into_iter()
        .partition(|n| known.iter().any(|k| &k.name == n && k.up));
    let id = states::new_id();
    let state = State {
        name: name.clone(),
        targets: readers,
        selector: match &targets {
            Targets::Selector(s) => s.clone(),
            Targets::Nodes(n) => n.join(","),
        },
        mode: file.mode,
        interval_ms: interval.as_millis() as u64,
        resources: file.resources,
        generation: id.clone(),
        by: writer_of(client),
        time: now_ms(),
    };
    let simple = out.format != Format::Json;

    // 1. Plan on every node that is up.
    let from = states::request_plan(
        client,
        &PlanRequest {
            id: id.clone(),
            state: state.clone(),
        },
    )
    .await?;
    if simple {
        eprintln!(
            "planning state {name} on {} node(s){}",
            up.len(),
            if down.is_empty() {
                String::new()
            } else {
                format!(" ({} down: {})", down.len(), down.join(", "))
            }
        );
    }
    let plans: BTreeMap<String, NodePlan> = states::wait_reports(
        client,
        Awaited {
            kind: "plans",
            name: &name,
            nodes: &up,
            from,
            within: a.timeout,
        },
        |p: &NodePlan| p.id == id,
        |_, _| {},
    )
    .await?;
    let _ = states::withdraw_plan(client, &name).await;
    let silent: Vec<&String> = up.iter().filter(|n| !plans.contains_key(*n)).collect();
    let changes: usize = plans.values().map(NodePlan::changes).sum();
    let plan_failed: Vec<&String> = plans
        .iter()
        .filter(|(_, p)| p.failed())
        .map(|(n, _)| n)
        .collect();
    if simple {
        for (node, p) in &plans {
            print_plan(out, node, p)?;
        }
        for n in &silent {
            out.line(&format!("{n}: no plan within {:?}", a.timeout))?;
        }
        out.line(&format!(
            "plan: {} node(s) with changes ({changes} in all), {} without, {} failed, {} silent, {} down",
            plans.values().filter(|p| p.changes() > 0 && !p.failed()).count(),
            plans.values().filter(|p| p.changes() == 0 && !p.failed()).count(),
            plan_failed.len(),
            silent.len(),
            down.len()
        ))?;
    }
    if !plan_failed.is_empty() {
        if !simple {
            out.json(&serde_json::json!({"state": name, "plans": plans}))?;
        }
        return Err(failure(
            TASK_FAILED,
            format!(
                "the plan failed on {}: nothing applied",
                plan_failed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if a.plan {
        if !simple {
            out.json(&serde_json::json!({"state": name, "plans": plans}))?;
        }
        if !silent.is_empty() {
            return Err(failure(
                TASK_UNREACHABLE,
                format!("no plan from {} within {:?}", silent.len(), a.timeout),
            ));
        }
        if a.detailed_exitcode && changes > 0 {
            return Err(Failure {
                code: 2,
                message: String::new(),
                quiet: true,
            });
        }
        return Ok(());
    }

    // 2. Store it: every target applies this generation, and keeps it.
    let from = states::store(client, &state).await?;
    let bar = if simple && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let b = indicatif::ProgressBar::new(up.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("applying {bar:30} {pos}/{len} {elapsed}")
                .expect("template"),
        );
        Some(b)
    } else {
        None
    };
    let results: BTreeMap<String, NodeState> = states::wait_reports(
        client,
        Awaited {
            kind: "states",
            name: &name,
            nodes: &up,
            from,
            within: a.timeout,
        },
        |s: &NodeState| s.generation == id,
        |_, _| {
            if let Some(b) = &bar {
                b.inc(1);
            }
        },
    )
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let silent: Vec<&String> = up.iter().filter(|n| !results.contains_key(*n)).collect();
    let failed: Vec<&String> = results
        .iter()
        .filter(|(_, s)| !s.ok())
        .map(|(n, _)| n)
        .collect();
    let changed: usize = results
        .values()
        .map(|s| {
            s.resources
                .iter()
                .filter(|r| r.error.is_none() && r.action != Action::Noop)
                .count()
        })
        .sum();
    if simple {
        for (node, s) in &results {
            print_result(out, node, s)?;
        }
        for n in &silent {
            out.line(&format!("{n}: no result within {:?}", a.timeout))?;
        }
        for n in &down {
            out.line(&format!("{n}: down; applies it when its agent is back"))?;
        }
        out.line(&format!(
            "applied state {name} (generation {id}): {} node(s) applied, {changed} change(s), {} failed, {} silent, {} down",
            results.len() - failed.len(),
            failed.len(),
            silent.len(),
            down.len()
        ))?;
    } else {
        out.json(&serde_json::json!({"state": name, "generation": id, "plans": plans, "results": results}))?;
    }
    if !failed.is_empty() {
        return Err(failure(
            TASK_FAILED,
            format!(
                "state {name} failed on {}",
                failed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if !silent.is_empty() {
        return Err(failure(
            TASK_UNREACHABLE,
            format!("no result from {} within {:?}", silent.len(), a.timeout),
        ));
    }
    if a.detailed_exitcode && changed > 0 {
        return Err(Failure {
            code: 2,
            message: String::new(),
            quiet: true,
        });
    }
    Ok(())
}

pub async fn state_cmd(client: &Arc<Client>, out: &Printer, c: StateCmd) -> Result<(), Failure> {
    match c {
        StateCmd::Ls => {
            let (all, _) = states::list(client).await?;
            if out.format == Format::Json {
                out.json(&serde_json::to_value(&all).expect("JSON"))?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.selector.clone(),
                        format!("{:?}", s.mode).to_lowercase(),
                        humantime::format_duration(s.interval()).to_string(),
                        s.resources.len().to_string(),
                        show_time(s.time),
                    ]
                })
                .collect();
            out.table(
                &["NAME", "ON", "MODE", "INTERVAL", "RESOURCES", "APPLIED"],
                &rows,
            )?;
        }
        StateCmd::Show { name } => {
            let s = states::get(client, &name).await?;
            let mut reports = BTreeMap::new();
            for n in nodes::list(client).await? {
                if let Some(kv) =
                    eden_proto::model::kv::get_one(client, &states::node_state(&n.name, &name))
                        .await?
                {
                    let r: NodeState = eden_proto::model::kv::decode(&kv)
                        .map_err(|e| Failure::from(Error::Corrupt(e)))?;
                    reports.insert(n.name, r);
                }
            }
            if out.format == Format::Json {
                out.json(&serde_json::json!({"state": s, "nodes": reports}))?;
                return Ok(());
            }
            out.line(&format!(
                "state {} on {} ({:?}, every {}), generation {} by {} at {}",
                s.name,
                s.selector,
                s.mode,
                humantime::format_duration(s.interval()),
                s.generation,
                s.by,
                show_time(s.time)
            ))?;
            for r in &s.resources {
                out.line(&format!("  {}", r.id()))?;
            }
            for (node, r) in &reports {
                let current = if r.generation == s.generation {
                    ""
                } else {
                    " (an older generation)"
                };
                out.line(&format!(
                    "{node}: {} at {}{current}",
                    r.status,
                    show_time(r.time)
                ))?;
            }
        }
        StateCmd::Rm { name } => {
            states::remove(client, &name).await?;
            out.line(&format!(
                "state {name} removed (its resources stay as they are)"
            ))?;
        }
    }
    Ok(())
}
