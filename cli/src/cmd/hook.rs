//! `eden hook create|ls|rm`: webhooks that `eden server --webhook-addr` accepts at
//! `POST /hooks/NAME` with `Authorization: Bearer TOKEN`. The token is printed once by `create`;
//! only its SHA-256 is stored.

use std::sync::Arc;

use clap::Subcommand;
use eden_agent::kv;
use eden_agent::model::{now_ms, show_time};
use eden_proto::client::Client;
use eden_reactor::webhook::{self, Hook, HOOKS};

use crate::exit::{Failure, REFUSED};
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum HookCmd {
    /// Create a hook and print its token (shown only this once).
    Create {
        name: String,
        /// Replace the token of an existing hook.
        #[arg(long)]
        rotate: bool,
    },
    /// The hooks (names and creation times; never tokens).
    Ls,
    /// Remove a hook: its token stops working.
    Rm { name: String },
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: HookCmd) -> Result<(), Failure> {
    match c {
        HookCmd::Create { name, rotate } => {
            eden_agent::keys::check_name("hook name", &name).map_err(Failure::usage)?;
            let token = webhook::new_token();
            let key = format!("{HOOKS}{name}");
            let hook = Hook {
                sha256: webhook::hash(&token),
                created_at: now_ms(),
            };
            let compare = if rotate {
                vec![]
            } else {
                vec![kv::absent(&key)]
            };
            let r = kv::txn(client, compare, vec![kv::put(&key, &hook, 0)], vec![]).await?;
            if !r.succeeded {
                return Err(Failure {
                    code: REFUSED,
                    message: format!("hook {name} exists (use --rotate for a new token)"),
                    quiet: false,
                });
            }
            match out.format {
                Format::Json => out.json(&serde_json::json!({"name": name, "token": token}))?,
                _ => out.line(&token)?,
            }
        }
        HookCmd::Ls => {
            let (kvs, _) = kv::get_prefix(client, HOOKS, 0, false).await?;
            let hooks: Vec<(String, Hook)> = kvs
                .iter()
                .filter_map(|kv| {
                    let name = eden_agent::keys::rest(&kv.key, HOOKS)?.to_string();
                    Some((name, kv::decode::<Hook>(kv).ok()?))
                })
                .collect();
            match out.format {
                Format::Json => out.json(&serde_json::json!(hooks
                    .iter()
                    .map(|(n, h)| serde_json::json!({"name": n, "created_at": h.created_at}))
                    .collect::<Vec<_>>()))?,
                _ => {
                    let rows: Vec<Vec<String>> = hooks
                        .iter()
                        .map(|(n, h)| vec![n.clone(), show_time(h.created_at)])
                        .collect();
                    out.table(&["NAME", "CREATED"], &rows)?
                }
            }
        }
        HookCmd::Rm { name } => {
            let r = client
                .delete_range(eden_proto::etcdserverpb::DeleteRangeRequest {
                    key: format!("{HOOKS}{name}").into(),
                    ..Default::default()
                })
                .await?;
            if r.deleted == 0 {
                return Err(Failure {
                    code: REFUSED,
                    message: format!("no hook {name}"),
                    quiet: false,
                });
            }
            out.line(&format!("removed hook {name}"))?;
        }
    }
    Ok(())
}
