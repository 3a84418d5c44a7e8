//! `eden cert ls|revoke`: the certificates the cluster issued (joins and renewals), and revoking
//! one by serial or every certificate of an identity (`node:web1`, or a node's bare name). A
//! revoked certificate is refused on every port at its next request, and its open watches and
//! keep-alives end (`eden_proto::model::certs`).

use std::sync::Arc;

use clap::Subcommand;
use eden_proto::client::Client;
use eden_proto::model::certs;
use eden_proto::model::objects::show_time;
use eden_proto::renewal::RenewError;

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum CertCmd {
    /// The certificates the cluster issued that have not expired (with whether revoked).
    Ls,
    /// Revoke a certificate by its serial, or every certificate of an identity issued until now.
    Revoke {
        /// A serial (hex, as `eden cert ls` shows it) or an identity (node:NAME, admin:NAME,
        /// member:NAME, or a node's NAME).
        what: String,
    },
    /// Renew the certificate this command presents (--cert and --key, or the config file's): a
    /// new key, the same identity and lifetime; both files are replaced. Operators and members
    /// renew this way before their certificates expire (agents renew their own by themselves).
    Renew,
}

pub async fn run(
    client: &Arc<Client>,
    out: &Printer,
    c: CertCmd,
    files: Option<eden_proto::renewal::Files>,
) -> Result<(), Failure> {
    match c {
        CertCmd::Ls => {
            let list = certs::list(client).await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!(list
                    .iter()
                    .map(|(i, revoked)| serde_json::json!({
                        "serial": i.serial,
                        "identity": i.identity,
                        "issued_at": i.issued_at,
                        "not_after": i.not_after,
                        "how": i.how,
                        "revoked": revoked,
                    }))
                    .collect::<Vec<_>>()))?,
                _ => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|(i, revoked)| {
                            vec![
                                i.serial.clone(),
                                i.identity.clone(),
                                show_time(i.issued_at),
                                show_time(i.not_after.max(0) as u64 * 1000),
                                i.how.clone(),
                                if *revoked { "revoked" } else { "" }.to_string(),
                            ]
                        })
                        .collect();
                    out.table(
                        &["SERIAL", "IDENTITY", "ISSUED", "EXPIRES", "HOW", "REVOKED"],
                        &rows,
                    )?
                }
            }
        }
        CertCmd::Revoke { what } => {
            let said = certs::revoke(client, &what).await?;
            out.line(&said)?;
        }
        CertCmd::Renew => {
            let files = files.ok_or_else(|| {
                Failure::usage(
                    "eden cert renew: no certificate to renew (give --cacert --cert --key)",
                )
            })?;
            let (_, new) = eden_proto::renewal::renew_once(client, &files)
                .await
                .map_err(|e| {
                    let mut f = match e {
                        RenewError::Cluster(e) => Failure::from(e),
                        RenewError::Local(e) => Failure::usage(e),
                    };
                    f.message = format!("renewing {}: {}", files.cert.display(), f.message);
                    f
                })?;
            out.line(&format!(
                "renewed {}: serial {}, expires {} ({})",
                new.identity,
                new.serial,
                show_time(new.not_after.max(0) as u64 * 1000),
                files.cert.display()
            ))?;
        }
    }
    Ok(())
}
