//! `eden reactor apply|ls|show|rm|run|log|test`: reactor rules stored in the cluster
//! (`eden_proto::model::rules`), a runtime that executes them (`eden_reactor::runtime`; `eden
//! server` runs one too unless told not to), what they did, and a dry run of rules against an
//! event.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::events::Event;
use eden_proto::model::rules::{self, Rule, State};
use eden_reactor::rules::react;

use crate::exit::{Failure, REFUSED};
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum ReactorCmd {
    /// Store the rules of a YAML file (one rule or a list), replacing rules of the same names,
    /// all in one txn.
    Apply { file: PathBuf },
    /// The stored rules.
    Ls,
    /// One stored rule, as YAML.
    Show { name: String },
    /// Remove a stored rule.
    Rm { name: String },
    /// Run a reactor runtime here (one is active at a time across the cluster; others stand by)
    /// until Ctrl-C or SIGTERM.
    Run {
        /// This runtime's name in the election [default: the hostname].
        #[arg(long)]
        name: Option<String>,
    },
    /// What the rules did: `reactor/...` events (fired, failed, compacted).
    Log,
    /// Dry run: which rules an event would fire, with their actions rendered.
    Test {
        file: PathBuf,
        /// The event as JSON: {"tag": "...", "labels": {...}, "data": {...}}.
        #[arg(long)]
        event: PathBuf,
    },
}

fn read(path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn load_rules(path: &PathBuf) -> Result<Vec<Rule>, Failure> {
    rules::parse(&read(path)?).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: ReactorCmd) -> Result<(), Failure> {
    match c {
        ReactorCmd::Apply { file } => {
            let rules = load_rules(&file)?;
            rules::apply(client, &rules).await?;
            for r in &rules {
                out.line(&format!("applied rule {}", r.name))?;
            }
        }
        ReactorCmd::Ls => {
            let rules = rules::list(client).await?;
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&rules).expect("JSON"))?,
                _ => {
                    let rows: Vec<Vec<String>> = rules
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                r.on.clone(),
                                r.when
                                    .as_ref()
                                    .map(|w| format!("{} within {}", w.count, w.within))
                                    .unwrap_or_default(),
                                r.actions.len().to_string(),
                            ]
                        })
                        .collect();
                    out.table(&["NAME", "ON", "WHEN", "ACTIONS"], &rows)?;
                }
            }
        }
        ReactorCmd::Show { name } => {
            let r = rules::list(client)
                .await?
                .into_iter()
                .find(|r| r.name == name)
                .ok_or_else(|| Failure {
                    code: REFUSED,
                    message: format!("no rule {name}"),
                    quiet: false,
                })?;
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&r).expect("JSON"))?,
                _ => {
                    let v = serde_json::to_value(&r).expect("JSON");
                    out.line(serde_yaml::to_string(&v).expect("YAML").trim_end())?
                }
            }
        }
        ReactorCmd::Rm { name } => {
            rules::remove(client, &name).await?;
            out.line(&format!("removed rule {name}"))?;
        }
        ReactorCmd::Run { name } => {
            let name = name.unwrap_or_else(eden_agent::facts::hostname);
            let rt = Arc::new(eden_reactor::runtime::Runtime::new(client.clone(), &name));
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| Failure::usage(e.to_string()))?;
            tokio::select! {
                _ = rt.clone().run() => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            rt.resign().await;
        }
        ReactorCmd::Log => {
            super::event::run(
                client,
                out,
                super::event::EventCmd::Ls {
                    glob: "reactor/**".into(),
                    since: None,
                },
            )
            .await?;
        }
        ReactorCmd::Test { file, event } => {
            let rules = load_rules(&file)?;
            let mut v: serde_json::Value = serde_json::from_str(&read(&event)?)
                .map_err(|e| Failure::usage(format!("{}: {e}", event.display())))?;
            let o = v
                .as_object_mut()
                .ok_or_else(|| Failure::usage("the event must be a JSON object"))?;
            o.entry("revision").or_insert(0.into());
            o.entry("time")
                .or_insert(eden_proto::model::objects::now_ms().into());
            o.entry("source").or_insert("test".into());
            let ev: Event = serde_json::from_value(v)
                .map_err(|e| Failure::usage(format!("{}: {e}", event.display())))?;
            let vars = eden_proto::model::vars::all(client)
                .await
                .unwrap_or_default();
            let (fired, errors) = react(
                &rules,
                &mut State::default(),
                &ev,
                &serde_json::json!({ "vars": vars }),
            );
            match out.format {
                Format::Json => out.json(&serde_json::json!({"fired": fired, "errors": errors}))?,
                _ => {
                    if fired.is_empty() {
                        out.line("no rule fires")?;
                    }
                    for f in &fired {
                        out.line(&format!("rule {} fires:", f.rule))?;
                        // Through JSON, so actions print as `- run: ...` maps.
                        let v = serde_json::to_value(&f.actions).expect("JSON");
                        let y = serde_yaml::to_string(&v).expect("YAML");
                        for l in y.lines() {
                            out.line(&format!("  {l}"))?;
                        }
                    }
                    for e in &errors {
                        out.line(&format!("error: {e}"))?;
                    }
                }
            }
            if !errors.is_empty() {
                return Err(Failure {
                    code: REFUSED,
                    message: format!("{} rule(s) could not be rendered", errors.len()),
                    quiet: false,
                });
            }
        }
    }
    Ok(())
}
