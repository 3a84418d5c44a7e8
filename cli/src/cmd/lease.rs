//! `eden lease grant|revoke|keepalive|ttl|list`, printed like etcdctl (lease IDs in hex).

use clap::Subcommand;
use eden_proto::client::Client;
use serde_json::json;

use super::put::parse_lease;
use crate::exit::{Failure, REFUSED};
use crate::printer::{header_json, Format, Printer};

#[derive(Subcommand)]
pub enum LeaseCmd {
    /// Grant a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revoke a lease (its keys are deleted).
    Revoke { id: String },
    /// Keep a lease alive until interrupted (or once).
    Keepalive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    /// A lease's remaining time.
    Ttl {
        id: String,
        /// Also list the keys attached to it.
        #[arg(long)]
        keys: bool,
    },
    /// Every lease.
    List,
}

pub async fn run(client: &Client, out: &Printer, c: LeaseCmd) -> Result<(), Failure> {
    let json = out.format == Format::Json;
    match c {
        LeaseCmd::Grant { ttl } => {
            let r = client.lease_grant(ttl, 0).await?;
            if json {
                out.json(&json!({"header": header_json(&r.header), "ID": r.id, "TTL": r.ttl}))?;
            } else {
                out.line(&format!("lease {:x} granted with TTL({}s)", r.id, r.ttl))?;
            }
        }
        LeaseCmd::Revoke { id } => {
            let id = parse_lease(&id)?;
            let r = client.lease_revoke(id).await?;
            if json {
                out.json(&json!({"header": header_json(&r.header)}))?;
            } else {
                out.line(&format!("lease {id:x} revoked"))?;
            }
        }
        LeaseCmd::Keepalive { id, once } => {
            let id = parse_lease(&id)?;
            loop {
                let r = client.lease_keep_alive_once(id).await?;
                if r.ttl <= 0 {
                    return Err(Failure {
                        code: REFUSED,
                        message: format!("lease {id:x} expired or revoked"),
                        quiet: false,
                    });
                }
                if json {
                    out.json(&json!({"header": header_json(&r.header), "ID": r.id, "TTL": r.ttl}))?;
                } else {
                    out.line(&format!("lease {id:x} keepalived with TTL({})", r.ttl))?;
                }
                if once {
                    return Ok(());
                }
                let wait = std::time::Duration::from_millis((r.ttl as u64 * 1000 / 3).max(500));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        LeaseCmd::Ttl { id, keys } => {
            let id = parse_lease(&id)?;
            let r = client.lease_time_to_live(id, keys).await?;
            if json {
                let ks: Vec<String> = r.keys.iter().map(|k| crate::printer::b64(k)).collect();
                out.json(&json!({"header": header_json(&r.header), "ID": r.id, "TTL": r.ttl, "grantedTTL": r.granted_ttl, "keys": ks}))?;
            } else if r.ttl == -1 {
                out.line(&format!("lease {id:x} already expired"))?;
            } else {
                let mut line = format!(
                    "lease {id:x} granted with TTL({}s), remaining({}s)",
                    r.granted_ttl, r.ttl
                );
                if keys {
                    let ks: Vec<String> = r
                        .keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect();
                    line.push_str(&format!(", attached keys([{}])", ks.join(" ")));
                }
                out.line(&line)?;
            }
        }
        LeaseCmd::List => {
            let r = client.lease_leases().await?;
            if json {
                let ids: Vec<_> = r.leases.iter().map(|l| json!({"ID": l.id})).collect();
                out.json(&json!({"header": header_json(&r.header), "leases": ids}))?;
            } else {
                out.line(&format!("found {} leases", r.leases.len()))?;
                for l in &r.leases {
                    out.line(&format!("{:x}", l.id))?;
                }
            }
        }
    }
    Ok(())
}
