//! `eden plugin ls|lock|unlock|serve`: the resource plugins (design/plugins.md). `ls` starts each
//! plugin found here (the built-ins and `DIR/eden-plugin-NAME`) and shows its schema and whether
//! the cluster approves its checksum; `lock` approves a plugin binary (its SHA-256, stored in the
//! cluster: agents refuse any other binary under that name); `serve` is how an agent runs a
//! built-in plugin.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use eden_agent::plugins::{self, Plugin};
use eden_proto::client::Client;
use eden_proto::model::files::writer_of;
use eden_proto::model::objects::{now_ms, show_time};
use eden_proto::model::states::{self, PluginLock};
use eden_proto::model::{kv, Error};

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum PluginCmd {
    /// The plugins on this machine: name, version, protocol, resource types, checksum, locked.
    Ls {
        /// The plugin directory [default: eden-agent/plugins, the agent's default].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Approve plugin binaries: store each one's SHA-256 in the cluster under its name
    /// (`eden-plugin-NAME`, or --name).
    Lock {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The plugin's name (with one path whose file name is not eden-plugin-NAME).
        #[arg(long)]
        name: Option<String>,
    },
    /// Withdraw a plugin's approval: agents refuse to start it.
    Unlock { name: String },
    /// Serve built-in plugin NAME (the agent runs this; not for people).
    #[command(hide = true)]
    Serve { name: String },
}

/// `eden plugin serve NAME`: runs before any cluster connection; returns the exit code.
pub fn serve(name: &str) -> i32 {
    let Some(b) = eden_plugins::builtin(name) else {
        eprintln!(
            "Error: no built-in plugin {name:?} (there are: {})",
            eden_plugins::BUILTINS.join(", ")
        );
        return crate::exit::USAGE_OR_SETUP;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(eden_proto::plugin::serve(b)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            crate::exit::USAGE_OR_SETUP
        }
    }
}

fn name_of(path: &std::path::Path, given: Option<&String>) -> Result<String, Failure> {
    let name = match given {
        Some(n) => n.clone(),
        None => path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_prefix(plugins::PREFIX))
            .map(str::to_string)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{}: name the file {}NAME or give --name",
                    path.display(),
                    plugins::PREFIX
                ))
            })?,
    };
    plugins::check_name(&name).map_err(Failure::usage)?;
    Ok(name)
}

/// A plugin's resource types and their attributes, as JSON (`eden plugin ls -w json`).
fn schema_json(s: &eden_proto::plugin_v1::GetSchemaResponse) -> serde_json::Value {
    s.resources
        .iter()
        .map(|r| {
            serde_json::json!({
                "type": r.r#type,
                "version": r.version,
                "description": r.description,
                "attributes": r.attributes.iter().map(|a| serde_json::json!({
                    "name": a.name, "type": a.r#type, "required": a.required,
                    "optional": a.optional, "computed": a.computed, "sensitive": a.sensitive,
                    "force_new": a.force_new, "description": a.description,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: PluginCmd) -> Result<(), Failure> {
    match c {
        PluginCmd::Serve { .. } => unreachable!("handled in main"),
        PluginCmd::Lock { paths, name } => {
            if name.is_some() && paths.len() != 1 {
                return Err(Failure::usage("--name goes with one path"));
            }
            let mut ops = vec![];
            let mut shown = vec![];
            for p in &paths {
                let n = name_of(p, name.as_ref())?;
                let sum = plugins::checksum(p).map_err(Failure::usage)?;
                let lock = PluginLock {
                    sha256: sum.clone(),
                    by: writer_of(client),
                    time: now_ms(),
                };
                ops.push(kv::put(&states::plugin_lock(&n), &lock, 0));
                shown.push(format!("locked plugin {n}: sha256 {sum}"));
            }
            kv::txn(client, vec![], ops, vec![])
                .await
                .map_err(Error::from)?;
            for s in shown {
                out.line(&s)?;
            }
        }
        PluginCmd::Unlock { name } => {
            plugins::check_name(&name).map_err(Failure::usage)?;
            if kv::delete_one(client, &states::plugin_lock(&name)).await? == 0 {
                return Err(Error::NotFound(format!("plugin {name} is not locked")).into());
            }
            out.line(&format!(
                "plugin {name} unlocked: agents refuse to start it"
            ))?;
        }
        PluginCmd::Ls { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("eden-agent/plugins"));
            let locks = states::locks(client).await.ok();
            let sockets = std::env::temp_dir().join(format!(
                "eden-plugin-ls-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            let host = plugins::Host::new(
                Some(dir),
                std::env::current_exe().ok(),
                &eden_plugins::BUILTINS,
                sockets.clone(),
            )
            .map_err(Failure::usage)?;
            let mut rows = vec![];
            let mut json = vec![];
            for f in host.discover() {
                let args: Vec<String> = if f.builtin {
                    vec!["plugin".into(), "serve".into(), f.name.clone()]
                } else {
                    vec![]
                };
                let sum = if f.builtin {
                    None
                } else {
                    plugins::checksum(&f.path).ok()
                };
                let locked = match (&sum, &locks) {
                    (None, _) => "built-in".to_string(),
                    (_, None) => "? (cluster not reached)".to_string(),
                    (Some(s), Some(l)) => match l.get(&f.name) {
                        None => "no".into(),
                        Some(l) if &l.sha256 == s => {
                            format!("yes ({}, {})", l.by, show_time(l.time))
                        }
                        Some(_) => "DIFFERS".into(),
                    },
                };
                let started =
                    Plugin::start(&f.name, &f.path, &args, &sockets, plugins::START_TIMEOUT).await;
                let (version, types) = match &started {
                    Ok(p) => (
                        p.schema.version.clone(),
                        p.schema
                            .resources
                            .iter()
                            .map(|r| r.r#type.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    Err(e) => ("-".into(), format!("error: {e}")),
                };
                json.push(serde_json::json!({
                    "name": f.name, "path": f.path, "builtin": f.builtin, "version": version,
                    "protocol": eden_proto::plugin::APP_PROTOCOL_VERSION, "types": types,
                    "sha256": sum, "locked": locked,
                    "mtls": started.as_ref().ok().map(|p| p.mtls),
                    "schema": started.as_ref().ok().map(|p| schema_json(&p.schema)),
                }));
                rows.push(vec![
                    f.name.clone(),
                    version,
                    eden_proto::plugin::APP_PROTOCOL_VERSION.to_string(),
                    types,
                    sum.map_or("-".into(), |s| s[..16].to_string()),
                    locked,
                ]);
            }
            let _ = std::fs::remove_dir_all(&sockets);
            if out.format == Format::Json {
                out.json(&serde_json::Value::Array(json))?;
            } else {
                out.table(
                    &["NAME", "VERSION", "PROTOCOL", "TYPES", "SHA256", "LOCKED"],
                    &rows,
                )?;
            }
        }
    }
    Ok(())
}
