//! `eden hook create|ls|rm`: webhooks that `eden server --webhook-addr` accepts at
//! `POST /hooks/NAME` with `Authorization: Bearer TOKEN`. The token is printed once by `create`;
//! only its SHA-256 is stored.

use std::sync::Arc;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::hooks;
use eden_proto::model::objects::show_time;

use crate::exit::Failure;
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
            let token = hooks::create(client, &name, rotate).await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!({"name": name, "token": token}))?,
                _ => out.line(&token)?,
            }
        }
        HookCmd::Ls => {
            let hooks = hooks::list(client).await?;
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
            hooks::remove(client, &name).await?;
            out.line(&format!("removed hook {name}"))?;
        }
    }
    Ok(())
}
