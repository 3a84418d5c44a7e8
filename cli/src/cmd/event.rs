//! `eden event emit|ls|watch`: explicit events (stored under `/eden/events/`, checked by the
//! server's event policy, kept for its retention) and the events derived from every change to
//! eden's objects (`node/joined/web1`, `task/finished/ID/web1`, `var/set/db1/token`, ...).

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::glob;
use eden_proto::model::events::{self, Event};
use eden_proto::model::keys;
use eden_proto::model::objects::{now_ms, show_time};
use eden_proto::model::watcher::Watcher;

use crate::exit::Failure;
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
            let (rev, stored) = events::emit(client, &[Event::new(tag, &source, l, data)]).await?;
            match out.format {
                Format::Json => {
                    out.json(&serde_json::json!({"revision": rev, "key": stored[0]}))?
                }
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
            let list = events::list(client, &g, min_rev, min_time).await?;
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
            let mut w = Watcher::from_revision(client.clone(), keys::ROOT, from).with_prev_kv();
            let compacted = |oldest| {
                format!("revision {from} was compacted (the oldest kept is {oldest}); events before it are gone")
            };
            while let Some(evs) = super::next_events(&mut w, compacted).await? {
                for e in &evs {
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
