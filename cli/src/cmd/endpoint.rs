//! `eden endpoint health|status|hashkv [--cluster]`, like etcdctl's: one line (or row) per endpoint.
//! With `--cluster`, the endpoints are every member's client URL from the member list.

use std::time::Instant;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::etcdserverpb::RangeRequest;
use serde_json::json;

use crate::exit::{Failure, UNAVAILABLE};
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Whether each endpoint can serve a linearizable read and has no alarm.
    Health {
        #[arg(long)]
        cluster: bool,
    },
    /// Each endpoint's status.
    Status {
        #[arg(long)]
        cluster: bool,
    },
    /// Each endpoint's HashKV at a revision (0 = latest).
    Hashkv {
        #[arg(long)]
        cluster: bool,
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

async fn endpoints(client: &Client, cluster: bool) -> Result<Vec<String>, Failure> {
    if !cluster {
        return Ok(client
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect());
    }
    let list = client.member_list().await?;
    Ok(list
        .members
        .iter()
        .filter_map(|m| m.client_ur_ls.first())
        .map(|u| {
            u.trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_string()
        })
        .collect())
}

pub async fn run(client: &Client, out: &Printer, c: EndpointCmd) -> Result<(), Failure> {
    let (cluster, what) = match &c {
        EndpointCmd::Health { cluster } => (*cluster, 0),
        EndpointCmd::Status { cluster } => (*cluster, 1),
        EndpointCmd::Hashkv { cluster, .. } => (*cluster, 2),
    };
    let eps = endpoints(client, cluster).await?;
    let each = client.sibling(&eps)?;
    let mut failures = 0;
    let mut json_rows = Vec::new();
    let mut table = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        match &c {
            EndpointCmd::Health { .. } => {
                let start = Instant::now();
                let read = each
                    .range_of(
                        i,
                        RangeRequest {
                            key: b"health".to_vec(),
                            ..Default::default()
                        },
                    )
                    .await;
                let alarms = each.alarms_of(i).await;
                let took = start.elapsed();
                let problem = match (&read, &alarms) {
                    (Err(e), _) => Some(e.to_string()),
                    (_, Err(e)) => Some(e.to_string()),
                    (_, Ok(a)) if !a.alarms.is_empty() => {
                        Some(format!("active alarm(s): {:?}", a.alarms))
                    }
                    _ => None,
                };
                match &problem {
                    None => out.line(&format!(
                        "{ep} is healthy: successfully committed proposal: took = {took:?}"
                    ))?,
                    Some(p) => {
                        failures += 1;
                        eprintln!("{ep} is unhealthy: failed to commit proposal: {p}");
                    }
                }
            }
            EndpointCmd::Status { .. } => match each.status_of(i).await {
                Ok(s) => {
                    let h = s.header.unwrap_or_default();
                    json_rows.push(json!({"Endpoint": ep, "Status": {"header": {"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision, "raft_term": h.raft_term}, "version": s.version, "dbSize": s.db_size, "leader": s.leader, "raftIndex": s.raft_index, "raftTerm": s.raft_term, "raftAppliedIndex": s.raft_applied_index, "isLearner": s.is_learner}}));
                    table.push(vec![
                        ep.clone(),
                        format!("{:x}", h.member_id),
                        s.version.clone(),
                        s.db_size.to_string(),
                        (s.leader == h.member_id).to_string(),
                        s.is_learner.to_string(),
                        s.raft_term.to_string(),
                        s.raft_index.to_string(),
                        s.raft_applied_index.to_string(),
                        h.revision.to_string(),
                    ]);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{ep}: {e}");
                }
            },
            EndpointCmd::Hashkv { rev, .. } => match each.hash_kv_of(i, *rev).await {
                Ok(r) => {
                    json_rows.push(json!({"Endpoint": ep, "HashKV": {"hash": r.hash, "compact_revision": r.compact_revision, "hash_revision": r.hash_revision}}));
                    table.push(vec![
                        ep.clone(),
                        r.hash.to_string(),
                        r.hash_revision.to_string(),
                    ]);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{ep}: {e}");
                }
            },
        }
    }
    if what > 0 {
        match out.format {
            Format::Json => out.json(&json!(json_rows))?,
            Format::Table if what == 1 => out.table(
                &[
                    "ENDPOINT",
                    "ID",
                    "VERSION",
                    "DB SIZE",
                    "IS LEADER",
                    "IS LEARNER",
                    "RAFT TERM",
                    "RAFT INDEX",
                    "RAFT APPLIED INDEX",
                    "REVISION",
                ],
                &table,
            )?,
            Format::Table => out.table(&["ENDPOINT", "HASH", "REVISION"], &table)?,
            Format::Simple => {
                for row in &table {
                    out.line(&row.join(", "))?;
                }
            }
        }
    }
    if failures > 0 {
        return Err(Failure {
            code: UNAVAILABLE,
            message: format!("{failures} endpoint(s) failed"),
            quiet: false,
        });
    }
    Ok(())
}
