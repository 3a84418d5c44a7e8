//! `eden file put|get|ls|rm|history`: small files shared between machines, readable by the nodes
//! their readers allow (checked by the server at every request), versioned by revision
//! (`eden_proto::model::files`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::files::{self, FileMeta};
use eden_proto::model::objects::{now_ms, show_time};
use eden_proto::model::readers::Readers;

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum FileCmd {
    /// Store LOCAL (a path, or - for standard input) as NAME (NODE/PATH or cluster/PATH).
    Put {
        local: PathBuf,
        name: String,
        /// Who may read it: `node:NAME` or a label selector (repeatable), checked by the server
        /// against the reader's labels at every request.
        #[arg(long = "readers")]
        readers: Vec<String>,
        /// The permission bits agents place it with (octal).
        #[arg(long, default_value = "0640")]
        mode: String,
        /// The user agents place it as.
        #[arg(long)]
        owner: Option<String>,
        /// The group agents place it as.
        #[arg(long)]
        group: Option<String>,
    },
    /// Print NAME's bytes, or write them to a file with -o (mode as stored).
    Get {
        name: String,
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// As of this revision (while not compacted).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
    /// Files (whose names start with PREFIX): -l for size, mode, readers, writer, time, hash.
    Ls {
        prefix: Option<String>,
        #[arg(short = 'l')]
        long: bool,
    },
    /// Remove NAME.
    Rm { name: String },
    /// NAME's versions, newest first (as far back as compaction left them).
    History { name: String },
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn meta_json(name: &str, m: &FileMeta, rev: i64) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["name"] = name.into();
    v["revision"] = rev.into();
    v
}

fn readers_text(r: &Readers) -> String {
    r.nodes
        .iter()
        .map(|n| format!("node:{n}"))
        .chain(r.selectors.iter().cloned())
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: FileCmd) -> Result<(), Failure> {
    match c {
        FileCmd::Put {
            local,
            name,
            readers,
            mode,
            owner,
            group,
        } => {
            files::check_name(&name)?;
            let readers = Readers::parse(&readers).map_err(Failure::usage)?;
            let mode = files::parse_mode(&mode)?;
            let mut bytes = Vec::new();
            if local.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes)
            } else {
                std::fs::File::open(&local).and_then(|mut f| f.read_to_end(&mut bytes))
            }
            .map_err(|e| Failure::usage(format!("{}: {e}", local.display())))?;
            let meta = FileMeta {
                mode,
                owner,
                group,
                readers,
                writer: files::writer_of(client),
                time: now_ms(),
                ..Default::default()
            };
            let rev = files::put(client, &name, &bytes, meta).await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!({"name": name, "revision": rev}))?,
                _ => out.line(&format!(
                    "{name}: {} at revision {rev}",
                    human(bytes.len() as u64)
                ))?,
            }
        }
        FileCmd::Get { name, output, rev } => {
            let f = files::get(client, &name, rev).await?;
            match output {
                Some(path) => write_out(&path, &f.bytes, f.meta.mode)?,
                None => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&f.bytes).and_then(|_| o.flush())?;
                }
            }
        }
        FileCmd::Ls { prefix, long } => {
            let list = files::list(client, prefix.as_deref().unwrap_or_default()).await?;
            match out.format {
                Format::Json => out.json(&serde_json::Value::Array(
                    list.iter().map(|(n, m, r)| meta_json(n, m, *r)).collect(),
                ))?,
                _ if !long => {
                    for (n, _, _) in &list {
                        out.line(n)?;
                    }
                }
                _ => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|(n, m, r)| {
                            vec![
                                n.clone(),
                                human(m.size),
                                format!("{:04o}", m.mode),
                                readers_text(&m.readers),
                                m.writer.clone(),
                                show_time(m.time),
                                r.to_string(),
                                m.sha256.clone(),
                            ]
                        })
                        .collect();
                    out.table(
                        &[
                            "NAME", "SIZE", "MODE", "READERS", "WRITER", "WRITTEN", "REVISION",
                            "SHA256",
                        ],
                        &rows,
                    )?
                }
            }
        }
        FileCmd::Rm { name } => {
            files::remove(client, &name).await?;
            out.line(&format!("removed {name}"))?;
        }
        FileCmd::History { name } => {
            let h = files::history(client, &name).await?;
            match out.format {
                Format::Json => out.json(&serde_json::Value::Array(
                    h.iter().map(|(r, m)| meta_json(&name, m, *r)).collect(),
                ))?,
                _ => {
                    let rows: Vec<Vec<String>> = h
                        .iter()
                        .map(|(r, m)| {
                            vec![
                                r.to_string(),
                                show_time(m.time),
                                m.writer.clone(),
                                human(m.size),
                                m.sha256.clone(),
                            ]
                        })
                        .collect();
                    out.table(&["REVISION", "WRITTEN", "WRITER", "SIZE", "SHA256"], &rows)?
                }
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` whole: a temporary file beside it, synced, renamed over it.
fn write_out(path: &std::path::Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    eden_agent::place::write_atomically(path, bytes, mode, None, None)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}
