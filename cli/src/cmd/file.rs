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
use eden_proto::model::sealing;

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
        /// Encrypt it here for the nodes the readers match now (their registered keys): no server
        /// and no other node can read it. The namespace's node re-seals it when readers change
        /// (`eden file reseal`).
        #[arg(long)]
        sealed: bool,
        /// Readable once, by this node alone, then gone (a second read is refused and audited).
        #[arg(long, conflicts_with = "readers")]
        once: Option<String>,
    },
    /// Print NAME's bytes, or write them to a file with -o (mode as stored).
    Get {
        name: String,
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// As of this revision (while not compacted).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// The node's key that opens sealed files (an agent's DATA_DIR/seal.key; tasks get it
        /// as EDEN_SEAL_KEY).
        #[arg(long, env = "EDEN_SEAL_KEY")]
        seal_key: Option<PathBuf>,
    },
    /// Seal again the sealed files whose names start with PREFIX (this node's) for the nodes
    /// their readers match now; unchanged ones are left alone.
    Reseal {
        prefix: String,
        #[arg(long, env = "EDEN_SEAL_KEY")]
        seal_key: Option<PathBuf>,
    },
    /// Where agents place files: apply a rules file (YAML), list, remove.
    #[command(subcommand)]
    Sync(SyncCmd),
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

#[derive(Subcommand)]
pub enum SyncCmd {
    /// Store the sync rules of a YAML file (one rule or a list), replacing those of the same
    /// names: name, files (a glob over names), on (a label selector), path (a directory when it
    /// ends with /), and optional mode, owner, group, then (a command run after a change).
    Apply {
        file: PathBuf,
    },
    Ls,
    Rm {
        name: String,
    },
}

fn seal_key(path: Option<&PathBuf>) -> Result<String, Failure> {
    let path = path.ok_or_else(|| {
        Failure::usage("the file is sealed: give --seal-key (an agent's DATA_DIR/seal.key)")
    })?;
    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// Seals `plain` as `name` for the nodes `meta`'s readers match now (and the namespace's node);
/// sets the recipients in `meta`.
async fn seal_for(
    client: &Client,
    name: &str,
    plain: &[u8],
    meta: &mut FileMeta,
) -> Result<Vec<u8>, Failure> {
    let ns = files::namespace(name);
    let owner = (ns != eden_proto::model::keys::CLUSTER).then_some(ns);
    let to = sealing::recipients(client, &meta.readers, owner).await?;
    if to.is_empty() {
        return Err(Failure::usage(format!(
            "{name}: no node with a registered key matches the readers: nobody could open it"
        )));
    }
    meta.sealed = true;
    meta.recipients = to.keys().cloned().collect();
    let keys: Vec<String> = to.into_values().collect();
    sealing::seal(name, plain, &keys).map_err(Failure::usage)
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
            sealed,
            once,
        } => {
            files::check_name(&name)?;
            let readers = match &once {
                Some(n) => Readers::parse(&[format!("node:{n}")]),
                None => Readers::parse(&readers),
            }
            .map_err(Failure::usage)?;
            let mode = files::parse_mode(&mode)?;
            let mut bytes = Vec::new();
            if local.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes)
            } else {
                std::fs::File::open(&local).and_then(|mut f| f.read_to_end(&mut bytes))
            }
            .map_err(|e| Failure::usage(format!("{}: {e}", local.display())))?;
            let mut meta = FileMeta {
                mode,
                owner,
                group,
                readers,
                writer: files::writer_of(client),
                time: now_ms(),
                once,
                ..Default::default()
            };
            if sealed {
                bytes = seal_for(client, &name, &bytes, &mut meta).await?;
            }
            let rev = files::put(client, &name, &bytes, meta).await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!({"name": name, "revision": rev}))?,
                _ => out.line(&format!(
                    "{name}: {} at revision {rev}",
                    human(bytes.len() as u64)
                ))?,
            }
        }
        FileCmd::Get {
            name,
            output,
            rev,
            seal_key: key,
        } => {
            let f = if rev == 0 {
                files::get_once_aware(client, &name).await?
            } else {
                files::get(client, &name, rev).await?
            };
            let bytes = if f.meta.sealed {
                sealing::open(&name, &f.bytes, &seal_key(key.as_ref())?).map_err(Failure::usage)?
            } else {
                f.bytes
            };
            match output {
                Some(path) => write_out(&path, &bytes, f.meta.mode)?,
                None => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&bytes).and_then(|_| o.flush())?;
                }
            }
        }
        FileCmd::Reseal {
            prefix,
            seal_key: key,
        } => {
            let secret = seal_key(key.as_ref())?;
            for (name, meta, _) in files::list(client, &prefix).await? {
                if !meta.sealed || meta.once.is_some() {
                    continue;
                }
                let f = files::get(client, &name, 0).await?;
                let plain = sealing::open(&name, &f.bytes, &secret).map_err(Failure::usage)?;
                let mut new = FileMeta {
                    writer: files::writer_of(client),
                    time: now_ms(),
                    ..f.meta.clone()
                };
                let sealed = seal_for(client, &name, &plain, &mut new).await?;
                if new.recipients == f.meta.recipients {
                    continue;
                }
                let rev = files::put(client, &name, &sealed, new.clone()).await?;
                out.line(&format!(
                    "{name}: sealed for {} at revision {rev}",
                    new.recipients.join(",")
                ))?;
            }
        }
        FileCmd::Sync(SyncCmd::Apply { file }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
            let rules = files::parse_sync(&text)
                .map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
            files::apply_sync(client, &rules).await?;
            for r in &rules {
                out.line(&format!("sync rule {} applied", r.name))?;
            }
        }
        FileCmd::Sync(SyncCmd::Ls) => {
            let (rules, _) = files::list_sync(client).await?;
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&rules).unwrap_or_default())?,
                _ => {
                    let rows: Vec<Vec<String>> = rules
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                r.files.clone(),
                                r.on.clone(),
                                r.path.clone(),
                                r.then.join(" "),
                            ]
                        })
                        .collect();
                    out.table(&["NAME", "FILES", "ON", "PATH", "THEN"], &rows)?
                }
            }
        }
        FileCmd::Sync(SyncCmd::Rm { name }) => {
            files::remove_sync(client, &name).await?;
            out.line(&format!("sync rule {name} removed"))?;
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
