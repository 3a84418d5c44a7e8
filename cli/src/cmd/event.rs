//! `eden event emit|ls|watch`: explicit events (stored under `/eden/events/`, checked by the
//! server's event policy, kept for its retention) and the events derived from every change to
//! eden's objects (`node/joined/web1`, `task/finished/ID/web1`, `var/set/db1/token`, ...).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use eden_agent::kv;
use eden_agent::model::{now_ms, show_time};
use eden_proto::client::Client;
use eden_proto::etcdserverpb::WatchCreateRequest;
use eden_proto::glob;
use eden_proto::keys::prefix_end;
use eden_reactor::events::{self, Event, EVENTS};

use crate::exit::{Failure, REFUSED};
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum EventCmd {
    /// Emit an explicit event.
    Emit {
        tag: String,
        /// The event's data, as JSON.
        #[arg(long)]
        data: Option<String>,
        /// A label, K=V (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Who emits it [default: user@hostname].
        #[arg(long)]
        source: Option<String>,
    },
    /// Stored explicit events (within their retention), oldest first.
    Ls {
        /// Only tags matching this glob.
        #[arg(default_value = "**")]
        glob: String,
        /// Only events at or after this revision, or this recent (like 10m).
        #[arg(long)]
        since: Option<String>,
    },
    /// Every event as it happens, explicit and derived, from now or from a revision (resumable
    /// by revision; a compacted revision is an error).
    Watch {
        /// Only tags matching any of these globs.
        #[arg(default_value = "**")]
        globs: Vec<String>,
        /// Not tags matching these globs (repeatable).
        #[arg(long)]
        deny: Vec<String>,
        /// Start at this revision (inclusive); 0 = from now.
        #[arg(long, default_value_t = 0)]
        from: i64,
    },
}

fn print_event(out: &Printer, e: &Event) -> std::io::Result<()> {
    match out.format {
        Format::Json => out.json(&serde_json::to_value(e).expect("JSON")),
        _ => {
            let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.line(&format!(
                "{} {} {} {}{}{}",
                e.revision,
                show_time(e.time),
                e.tag,
                e.source,
                if labels.is_empty() {
                    String::new()
                } else {
                    format!(" {}", labels.join(","))
                },
                if e.data.is_null() {
                    String::new()
                } else {
                    format!(" {}", e.data)
                }
            ))
        }
    }
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: EventCmd) -> Result<(), Failure> {
    match c {
        EventCmd::Emit {
            tag,
            data,
            labels,
            source,
        } => {
            let data: serde_json::Value = match data {
                Some(d) => serde_json::from_str(&d)
                    .map_err(|e| Failure::usage(format!("--data is not JSON: {e}")))?,
                None => serde_json::Value::Null,
            };
            let mut l = BTreeMap::new();
            for s in &labels {
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| Failure::usage(format!("--label {s}: expected K=V")))?;
                l.insert(k.to_string(), v.to_string());
            }
            let source = source.unwrap_or_else(|| {
                format!(
                    "{}@{}",
                    std::env::var("USER").unwrap_or_else(|_| "user".into()),
                    eden_agent::facts::hostname()
                )
            });
            let ev = Event {
                tag,
                revision: 0,
                time: now_ms(),
                source,
                labels: l,
                data,
            };
            let key = format!("{EVENTS}{:013}-{:08x}", ev.time, rand::random::<u32>());
            let r = kv::txn(client, vec![], vec![kv::put(&key, &ev, 0)], vec![]).await?;
            let rev = r.header.map_or(0, |h| h.revision);
            match out.format {
                Format::Json => out.json(&serde_json::json!({"revision": rev, "key": key}))?,
                _ => out.line(&rev.to_string())?,
            }
        }
        EventCmd::Ls { glob: g, since } => {
            let (min_rev, min_time) = match since.as_deref() {
                None => (0, 0),
                Some(s) => match s.parse::<i64>() {
                    Ok(rev) => (rev, 0),
                    Err(_) => {
                        let d = humantime::parse_duration(s).map_err(|e| {
                            Failure::usage(format!("--since {s}: a revision or a duration ({e})"))
                        })?;
                        (0, now_ms().saturating_sub(d.as_millis() as u64))
                    }
                },
            };
            let (kvs, _) = kv::get_prefix(client, EVENTS, 0, false).await?;
            let mut list: Vec<Event> = kvs
                .iter()
                .filter_map(events::explicit)
                .filter(|e| {
                    glob::matches(&g, &e.tag) && e.revision >= min_rev && e.time >= min_time
                })
                .collect();
            list.sort_by_key(|e| e.revision);
            match out.format {
                Format::Json => out.json(&serde_json::to_value(&list).expect("JSON"))?,
                _ => {
                    for e in &list {
                        print_event(out, e)?;
                    }
                }
            }
        }
        EventCmd::Watch { globs, deny, from } => {
            let create = WatchCreateRequest {
                key: b"/eden/".to_vec(),
                range_end: prefix_end(b"/eden/"),
                start_revision: from,
                prev_kv: true,
                ..Default::default()
            };
            let mut rx = client.watch(create, Duration::from_secs(60));
            loop {
                let m = tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let Some(m) = m else { return Ok(()) };
                let m = m?;
                if m.canceled {
                    return Err(Failure {
                        code: REFUSED,
                        message: if m.compact_revision > 0 {
                            format!(
                                "revision {from} was compacted (the oldest kept is {}); events before it are gone",
                                m.compact_revision
                            )
                        } else {
                            format!("watch canceled: {}", m.cancel_reason)
                        },
                        quiet: false,
                    });
                }
                for e in &m.events {
                    if let Some(ev) = events::from_watch(e, now_ms()) {
                        if globs.iter().any(|g| glob::matches(g, &ev.tag))
                            && !deny.iter().any(|d| glob::matches(d, &ev.tag))
                        {
                            print_event(out, &ev)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
