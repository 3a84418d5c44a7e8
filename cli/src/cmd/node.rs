//! `eden node ls|show|label|rm`: the nodes agents registered, up or down, and their labels (which
//! belong to the operator).

use std::sync::Arc;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::nodes::{self, LabelChange};
use eden_proto::model::objects::{show_time, NodeInfo};
use eden_proto::model::selector::Selector;

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Every known node, up or down, with labels, key facts and when it was last seen.
    Ls {
        /// Only nodes matching this label selector (role=web,env!=prod,tier in (a,b),!draining).
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
    },
    /// One node with all its facts.
    Show { name: String },
    /// Set (KEY=VALUE) or remove (KEY-) labels.
    Label {
        name: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Forget a node that is gone: its registration, labels and variables.
    Rm {
        name: String,
        /// Even if its agent is alive (it will register again).
        #[arg(long)]
        force: bool,
    },
}

fn labels_text(n: &NodeInfo) -> String {
    n.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: NodeCmd) -> Result<(), Failure> {
    match c {
        NodeCmd::Ls { selector } => {
            let sel = Selector::parse(selector.as_deref().unwrap_or(""))
                .map_err(|e| Failure::usage(e.to_string()))?;
            let nodes: Vec<NodeInfo> = nodes::list(client)
                .await?
                .into_iter()
                .filter(|n| sel.matches(&n.labels))
                .collect();
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&nodes).expect("JSON"))?,
                _ => {
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let f = n.facts.clone().unwrap_or_default();
                            vec![
                                n.name.clone(),
                                if n.up { "up" } else { "down" }.into(),
                                labels_text(n),
                                f.addresses.first().cloned().unwrap_or_default(),
                                f.os.clone(),
                                if n.up {
                                    "now".into()
                                } else {
                                    n.last_seen.map(show_time).unwrap_or_else(|| "never".into())
                                },
                            ]
                        })
                        .collect();
                    out.table(
                        &["NAME", "STATUS", "LABELS", "ADDRESS", "OS", "LAST SEEN"],
                        &rows,
                    )?
                }
            }
        }
        NodeCmd::Show { name } => {
            let n = nodes::show(client, &name).await?.ok_or_else(|| {
                Failure::from(eden_proto::model::Error::NotFound(format!(
                    "no node {name}"
                )))
            })?;
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&n).expect("JSON"))?,
                _ => {
                    out.line(&format!("name: {}", n.name))?;
                    out.line(&format!("status: {}", if n.up { "up" } else { "down" }))?;
                    out.line(&format!("labels: {}", labels_text(&n)))?;
                    if let Some(t) = n.last_seen.filter(|_| !n.up) {
                        out.line(&format!("last seen: {}", show_time(t)))?;
                    }
                    if let Some(f) = &n.facts {
                        out.line(&format!("hostname: {}", f.hostname))?;
                        out.line(&format!("addresses: {}", f.addresses.join(", ")))?;
                        out.line(&format!("os: {}", f.os))?;
                        out.line(&format!("kernel: {}", f.kernel))?;
                        out.line(&format!("arch: {}", f.arch))?;
                        out.line(&format!("cpus: {}", f.cpus))?;
                        out.line(&format!("memory: {}", gib(f.memory_bytes)))?;
                        out.line(&format!("agent version: {}", f.agent_version))?;
                        out.line(&format!("agent started: {}", show_time(f.started_at)))?;
                    }
                }
            }
        }
        NodeCmd::Label { name, changes } => {
            let changes = changes
                .iter()
                .map(|c| LabelChange::parse(c))
                .collect::<Result<Vec<_>, _>>()?;
            let labels = nodes::label(client, &name, &changes).await?;
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&labels).expect("JSON"))?,
                _ => out.line(&format!(
                    "{name}: {}",
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ))?,
            }
        }
        NodeCmd::Rm { name, force } => {
            nodes::remove(client, &name, force).await?;
            out.line(&format!("removed node {name}"))?;
        }
    }
    Ok(())
}
