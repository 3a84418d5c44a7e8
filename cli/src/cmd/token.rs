//! `eden token create|ls|rm`: join tokens (`eden_proto::model::tokens`). `create` prints the token
//! once, with the CA's pin the joining machine checks the cluster against:
//! `eden agent --join-token TOKEN --ca-pin PIN` gets a certificate for exactly the node the token
//! was made for, once, before it expires.

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::objects::show_time;
use eden_proto::model::tokens::{self, Role};

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a join token for one node (or one member) and print it (shown only this once).
    Create {
        /// The node the token gets a certificate for (node:NAME).
        #[arg(long, group = "who")]
        node: Option<String>,
        /// A member instead: NAME=ADDR[+ADDR...], the addresses its certificate is valid for.
        #[arg(long, group = "who")]
        member: Option<String>,
        /// How long the token may be used (at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How long the certificate it gets is valid, and each renewal [default: 30 days for a
        /// node, a year for a member; at least 10 seconds].
        #[arg(long, value_parser = humantime::parse_duration)]
        cert_validity: Option<Duration>,
    },
    /// The tokens not used yet (IDs, names, expiry; never secrets).
    Ls,
    /// Remove a token before it is used.
    Rm { id: String },
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: TokenCmd) -> Result<(), Failure> {
    match c {
        TokenCmd::Create {
            node,
            member,
            ttl,
            cert_validity,
        } => {
            let (role, name, addrs) = match (node, member) {
                (Some(n), _) => (Role::Node, n, vec![]),
                (_, Some(m)) => {
                    let (name, addrs) = m.split_once('=').ok_or_else(|| {
                        Failure::usage(format!("--member {m}: expected NAME=ADDR[+ADDR...]"))
                    })?;
                    let addrs = addrs.split('+').map(|a| a.trim().to_string()).collect();
                    (Role::Member, name.to_string(), addrs)
                }
                _ => return Err(Failure::usage("give --node NAME or --member NAME=ADDR")),
            };
            let pin = eden_proto::pki::pin_of(&client.ca_pem().await?).map_err(Failure::usage)?;
            let (token, t) =
                tokens::create(client, role, &name, &addrs, ttl, cert_validity).await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!({
                    "token": token,
                    "identity": t.identity().to_string(),
                    "expires_at": t.expires_at,
                    "ca_pin": pin,
                }))?,
                _ => {
                    out.line(&token)?;
                    out.line(&format!(
                        "for {} until {}; CA pin: {pin}",
                        t.identity(),
                        show_time(t.expires_at)
                    ))?;
                    let join = match role {
                        Role::Node => format!(
                            "eden --endpoints ENDPOINTS agent --name {name} --join-token {token} --ca-pin {pin}"
                        ),
                        Role::Member => format!(
                            "eden server --name {name} --join ENDPOINTS --join-token {token} --ca-pin {pin} ..."
                        ),
                    };
                    out.line(&format!("join with: {join}"))?;
                }
            }
        }
        TokenCmd::Ls => {
            let list = tokens::list(client).await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!(list
                    .iter()
                    .map(|(id, t)| serde_json::json!({
                        "id": id,
                        "identity": t.identity().to_string(),
                        "created_at": t.created_at,
                        "expires_at": t.expires_at,
                    }))
                    .collect::<Vec<_>>()))?,
                _ => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|(id, t)| {
                            vec![
                                id.clone(),
                                t.identity().to_string(),
                                show_time(t.created_at),
                                show_time(t.expires_at),
                            ]
                        })
                        .collect();
                    out.table(&["ID", "FOR", "CREATED", "EXPIRES"], &rows)?
                }
            }
        }
        TokenCmd::Rm { id } => {
            tokens::remove(client, &id).await?;
            out.line(&format!("removed token {id}"))?;
        }
    }
    Ok(())
}
