//! `eden ui login`: a one-time sign-in link for the web view (`eden server --ui-addr`,
//! design/ui.md), acting as the certificate this command presents (an admin's).

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::{ui, Error};

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum UiCmd {
    /// Print a one-time link that signs a browser in to the web view as you (an admin).
    Login {
        /// How long the link may wait to be used (at most 1h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The web view's address (https://HOST:PORT, as the server's --ui-addr), to print the
        /// whole link.
        #[arg(long)]
        url: Option<String>,
    },
}

pub async fn run(client: &Arc<Client>, out: &Printer, c: UiCmd) -> Result<(), Failure> {
    match c {
        UiCmd::Login { ttl, url } => {
            let tls = client.tls().ok_or_else(|| {
                Failure::usage(
                    "the web view of an insecure server needs no sign-in (and a secure one needs \
                     this command to present an admin's certificate)",
                )
            })?;
            let der = eden_proto::pki::der_of_pem(&tls.cert_pem).map_err(Failure::usage)?;
            let cert = eden_proto::pki::cert_info(&der).map_err(Failure::usage)?;
            let token = ui::create(client, &cert, ttl).await.map_err(|e| match e {
                Error::Client(c) if c.is_permission_denied() => Failure::from(Error::Refused(
                    format!("{} may not make sign-in links (admins only)", cert.identity),
                )),
                e => Failure::from(e),
            })?;
            let path = format!("/login?token={token}");
            let link = match url {
                Some(u) => format!("{}{path}", u.trim_end_matches('/')),
                None => path,
            };
            match out.format {
                Format::Json => out.json(&serde_json::json!({
                    "link": link, "identity": cert.identity.to_string(),
                    "expires_in_s": ttl.as_secs(),
                }))?,
                _ => out.line(&link)?,
            }
        }
    }
    Ok(())
}
