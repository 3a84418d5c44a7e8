//! `eden snapshot save FILE`, `eden snapshot status FILE` and `eden snapshot restore FILE
//! --data-dir DIR`.
//!
//! The file is eden's backup format (laid out like etcd's snapshot stream, so `etcdctl snapshot
//! save` against eden writes the same file), not etcd's bbolt database: `etcdctl snapshot status`
//! and `etcdctl snapshot restore` cannot read it ("invalid database"); `eden snapshot status`
//! does, and says so when it is given an etcd snapshot.
//!
//! save: a consistent backup of the store from one member, written to FILE.part, synced, then
//! renamed (a crash never leaves a partial FILE).
//! restore: writes the backup into a new data dir. Start it with `eden server --data-dir DIR
//! --name ... --initial-cluster ...`: it bootstraps a new cluster holding the backup's keys, history
//! since the last compaction, and leases. For several members, restore the same file into each.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_store::raft::state_machine::StateMachine;

use crate::exit::{Failure, USAGE_OR_SETUP};
use crate::printer::{Format, Printer};
use serde_json::json;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Save a consistent backup of the store to FILE.
    Save { file: PathBuf },
    /// Check a backup whole and show what it holds (revision, keys, leases), as `etcdctl
    /// snapshot status` does for etcd's files.
    Status { file: PathBuf },
    /// Restore a backup into a new data dir.
    Restore {
        file: PathBuf,
        /// The new member's data dir (must not hold data yet).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn io_failure(what: String, e: std::io::Error) -> Failure {
    Failure {
        code: USAGE_OR_SETUP,
        message: format!("{what}: {e}"),
        quiet: false,
    }
}

pub async fn run(client: &Client, out: &Printer, c: SnapshotCmd) -> Result<(), Failure> {
    match c {
        SnapshotCmd::Save { file } => {
            let (bytes, rev) = client.snapshot().await?;
            let part = file.with_extension("part");
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&part)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&part, &file)
            };
            write().map_err(|e| io_failure(format!("writing {}", file.display()), e))?;
            out.line(&format!(
                "Snapshot saved at {} (revision {rev}, {} bytes; eden's backup format: `eden snapshot status` reads it, etcd's tools cannot)",
                file.display(),
                bytes.len()
            ))?;
        }
        SnapshotCmd::Status { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| io_failure(format!("reading {}", file.display()), e))?;
            let st = StateMachine::backup_status(&bytes)
                .map_err(|e| Failure::usage(format!("{}: {e:#}", file.display())))?;
            if out.format == Format::Json {
                out.json(&json!({
                    "hash": st.hash,
                    "revision": st.revision,
                    "compactRevision": st.compacted,
                    "totalKey": st.versions,
                    "keys": st.keys,
                    "leases": st.leases,
                    "totalSize": st.size,
                }))?;
            } else {
                out.table(
                    &[
                        "HASH",
                        "REVISION",
                        "TOTAL KEYS",
                        "KEYS",
                        "LEASES",
                        "TOTAL SIZE",
                    ],
                    &[vec![
                        format!("{:08x}", st.hash),
                        st.revision.to_string(),
                        st.versions.to_string(),
                        st.keys.to_string(),
                        st.leases.to_string(),
                        st.size.to_string(),
                    ]],
                )?;
            }
        }
        SnapshotCmd::Restore { file, data_dir } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| io_failure(format!("reading {}", file.display()), e))?;
            let rev = StateMachine::restore_backup(&bytes, &data_dir)
                .map_err(|e| Failure::usage(format!("restoring {}: {e:#}", file.display())))?;
            out.line(&format!(
                "Restored revision {rev} into {}; start it with: eden server --data-dir {} --name NAME --initial-cluster NAME=HOST:PORT,...",
                data_dir.display(),
                data_dir.display()
            ))?;
        }
    }
    Ok(())
}
