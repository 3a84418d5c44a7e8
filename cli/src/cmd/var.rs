//! `eden var get|ls|set|rm|watch`: variables of a node (what `eden run --register` stores) or of
//! the cluster (`--cluster`). Values are JSON; a value given as text that is not JSON is stored
//! as a string, and strings print bare.

use std::sync::Arc;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::keys;
use eden_proto::model::readers::Readers;
use eden_proto::model::vars::{self, show_value, value_of_text, Var};
use eden_proto::model::watcher::Watcher;
use eden_proto::mvccpb::event::EventType;

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum VarCmd {
    /// `get NODE NAME`, or `get --cluster NAME`.
    Get {
        #[arg(long)]
        cluster: bool,
        /// Read it as of this revision (while not compacted).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        #[arg(num_args = 1..=2)]
        args: Vec<String>,
    },
    /// `ls [NODE]`, or `ls --cluster`: variables with their revisions.
    Ls {
        #[arg(long)]
        cluster: bool,
        node: Option<String>,
    },
    /// `set NODE NAME VALUE`, or `set --cluster NAME VALUE`.
    Set {
        #[arg(long)]
        cluster: bool,
        /// Who besides the node (and admins) may read it: `node:NAME` or a label selector
        /// (repeatable). Replaces the readers it had.
        #[arg(long = "readers")]
        readers: Vec<String>,
        #[arg(num_args = 2..=3)]
        args: Vec<String>,
    },
    /// `rm NODE NAME`, or `rm --cluster NAME`.
    Rm {
        #[arg(long)]
        cluster: bool,
        #[arg(num_args = 1..=2)]
        args: Vec<String>,
    },
    /// `watch [NODE [NAME]]`, or `watch --cluster [NAME]`: prints each change.
    Watch {
        #[arg(long)]
        cluster: bool,
        /// Start at this revision (inclusive; replays history while not compacted).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        #[arg(num_args = 0..=2)]
        args: Vec<String>,
    },
}

/// Splits positional words into (scope, rest) by `--cluster`.
fn scoped(cluster: bool, args: &[String], rest: usize) -> Result<(String, Vec<String>), Failure> {
    let (scope, rest_args) = if cluster {
        (keys::CLUSTER.to_string(), args.to_vec())
    } else {
        let (s, r) = args
            .split_first()
            .ok_or_else(|| Failure::usage("give a NODE (or --cluster)"))?;
        (s.clone(), r.to_vec())
    };
    if rest_args.len() != rest {
        return Err(Failure::usage(if cluster {
            "with --cluster, give NAME (and VALUE for set) only"
        } else {
            "give NODE NAME (and VALUE for set), or --cluster NAME"
        }));
    }
    Ok((scope, rest_args))
}

fn print_vars(out: &Printer, list: &[Var]) -> Result<(), Failure> {
    match out.format {
        Format::Json => out.json(&serde_json::to_value(list).expect("JSON"))?,
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|v| {
                    vec![
                        v.scope.clone(),
                        v.name.clone(),
                        show_value(&v.value),
                        v.revision.to_string(),
                    ]
                })
                .collect();
            out.table(&["SCOPE", "NAME", "VALUE", "REVISION"], &rows)?
        }
        Format::Simple => {
            for v in list {
                out.line(&format!("{} {} {}", v.scope, v.name, show_value(&v.value)))?;
            }
        }
    }
    Ok(())
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: VarCmd) -> Result<(), Failure> {
    match c {
        VarCmd::Get { cluster, rev, args } => {
            let (scope, rest) = scoped(cluster, &args, 1)?;
            let v = vars::get(client, &scope, &rest[0], rev).await?;
            match out.format {
                Format::Simple => out.line(&show_value(&v.value))?,
                _ => print_vars(out, &[v])?,
            }
        }
        VarCmd::Ls { cluster, node } => {
            let scope = if cluster {
                Some(keys::CLUSTER.to_string())
            } else {
                node
            };
            print_vars(out, &vars::list(client, scope.as_deref()).await?)?;
        }
        VarCmd::Set {
            cluster,
            readers,
            args,
        } => {
            let (scope, rest) = scoped(cluster, &args, 2)?;
            let readers = Readers::parse(&readers).map_err(Failure::usage)?;
            let rev =
                vars::set(client, &scope, &rest[0], &value_of_text(&rest[1]), &readers).await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!({"revision": rev}))?,
                _ => out.line("OK")?,
            }
        }
        VarCmd::Rm { cluster, args } => {
            let (scope, rest) = scoped(cluster, &args, 1)?;
            vars::remove(client, &scope, &rest[0]).await?;
            out.line("OK")?;
        }
        VarCmd::Watch { cluster, rev, args } => {
            let (prefix, exact) = match (cluster, args.as_slice()) {
                (true, []) => (keys::node_vars(keys::CLUSTER), false),
                (true, [name]) => (keys::var(keys::CLUSTER, name), true),
                (false, []) => (keys::VARS.to_string(), false),
                (false, [node]) => (keys::node_vars(node), false),
                (false, [node, name]) => (keys::var(node, name), true),
                _ => return Err(Failure::usage("give [NODE [NAME]], or --cluster [NAME]")),
            };
            let mut w = Watcher::from_revision(client.clone(), &prefix, rev);
            if exact {
                w = w.single_key();
            }
            let compacted = |oldest| {
                format!(
                    "watch canceled: revision {rev} was compacted (the oldest kept is {oldest})"
                )
            };
            while let Some(events) = super::next_events(&mut w, compacted).await? {
                for e in &events {
                    let Some(kv) = &e.kv else { continue };
                    let Some((scope, name)) =
                        keys::rest(&kv.key, keys::VARS).and_then(|r| r.split_once('/'))
                    else {
                        continue;
                    };
                    let deleted = e.r#type == EventType::Delete as i32;
                    let value: Option<serde_json::Value> = (!deleted)
                        .then(|| serde_json::from_slice(&kv.value).ok())
                        .flatten();
                    match out.format {
                        Format::Json => out.json(&serde_json::json!({
                            "scope": scope, "name": name, "revision": kv.mod_revision,
                            "deleted": deleted, "value": value,
                        }))?,
                        _ => out.line(&match &value {
                            Some(v) => format!("{scope} {name} {}", show_value(v)),
                            None => format!("{scope} {name} deleted"),
                        })?,
                    }
                }
            }
        }
    }
    Ok(())
}
