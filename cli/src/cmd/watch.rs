//! `eden watch KEY [END]`: prints events as they come. It resumes by itself on another member when
//! the one it watches through dies (no gap, no duplicate), and ends on Ctrl-C or when the watch is
//! canceled (for example because its start revision was compacted: exit code 1).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use eden_proto::client::Client;
use eden_proto::etcdserverpb::WatchCreateRequest;
use eden_proto::mvccpb::event::EventType;
use serde_json::json;

use crate::exit::{Failure, REFUSED};
use crate::printer::{header_json, kv_json, Format, Printer};

#[derive(Args)]
pub struct WatchArgs {
    pub key: String,
    pub range_end: Option<String>,
    #[arg(long)]
    pub prefix: bool,
    /// Start at this revision (inclusive); 0 = from now.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    #[arg(long)]
    pub prev_kv: bool,
    /// Ask for progress notifications.
    #[arg(long)]
    pub progress_notify: bool,
    /// Give up after the cluster stayed unreachable this many seconds.
    #[arg(long, default_value_t = 60)]
    pub give_up_secs: u64,
}

pub async fn run(client: &Arc<Client>, out: &Printer, a: WatchArgs) -> Result<(), Failure> {
    let range_end = super::get::range_end_for(&a.key, a.range_end.as_deref(), a.prefix, false)?;
    let key = if a.key.is_empty() && a.prefix {
        vec![0]
    } else {
        a.key.into_bytes()
    };
    let create = WatchCreateRequest {
        key,
        range_end,
        start_revision: a.rev,
        prev_kv: a.prev_kv,
        progress_notify: a.progress_notify,
        ..Default::default()
    };
    let mut rx = client.watch(create, Duration::from_secs(a.give_up_secs));
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(msg) = msg else { return Ok(()) };
        let resp = msg?;
        if resp.canceled {
            let reason = if resp.compact_revision > 0 {
                format!(
                    "etcdserver: mvcc: required revision has been compacted (compact revision {})",
                    resp.compact_revision
                )
            } else {
                resp.cancel_reason.clone()
            };
            return Err(Failure {
                code: REFUSED,
                message: format!("watch was canceled ({reason})"),
                quiet: false,
            });
        }
        if resp.events.is_empty() {
            continue;
        }
        match out.format {
            Format::Json => {
                let events: Vec<_> = resp
                    .events
                    .iter()
                    .map(|e| {
                        let mut v = json!({
                            "type": if e.r#type == EventType::Delete as i32 { "DELETE" } else { "PUT" },
                            "kv": e.kv.as_ref().map(kv_json),
                        });
                        if let Some(p) = &e.prev_kv {
                            v["prev_kv"] = kv_json(p);
                        }
                        v
                    })
                    .collect();
                out.json(&json!({"header": header_json(&resp.header), "events": events}))?;
            }
            _ => {
                for e in &resp.events {
                    out.line(if e.r#type == EventType::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    })?;
                    if let Some(p) = &e.prev_kv {
                        out.bytes_line(&p.key)?;
                        out.bytes_line(&p.value)?;
                    }
                    let kv = e.kv.clone().unwrap_or_default();
                    out.bytes_line(&kv.key)?;
                    out.bytes_line(&kv.value)?;
                }
            }
        }
    }
}
