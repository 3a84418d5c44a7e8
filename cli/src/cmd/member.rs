//! `eden member list`.

use clap::Subcommand;
use eden_proto::client::Client;
use serde_json::json;

use crate::exit::Failure;
use crate::printer::{header_json, Format, Printer};

#[derive(Subcommand)]
pub enum MemberCmd {
    /// List the cluster's members.
    List,
}

pub async fn run(client: &Client, out: &Printer, c: MemberCmd) -> Result<(), Failure> {
    match c {
        MemberCmd::List => {
            let resp = client.member_list().await?;
            let status = |m: &eden_proto::etcdserverpb::Member| {
                if m.client_ur_ls.is_empty() {
                    "unstarted"
                } else {
                    "started"
                }
            };
            match out.format {
                Format::Json => {
                    let members: Vec<_> = resp
                        .members
                        .iter()
                        .map(|m| json!({"ID": m.id, "name": m.name, "peerURLs": m.peer_ur_ls, "clientURLs": m.client_ur_ls, "isLearner": m.is_learner}))
                        .collect();
                    out.json(&json!({"header": header_json(&resp.header), "members": members}))?;
                }
                Format::Simple => {
                    for m in &resp.members {
                        out.line(&format!(
                            "{:x}, {}, {}, {}, {}, {}",
                            m.id,
                            status(m),
                            m.name,
                            m.peer_ur_ls.join(","),
                            m.client_ur_ls.join(","),
                            m.is_learner
                        ))?;
                    }
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = resp
                        .members
                        .iter()
                        .map(|m| {
                            vec![
                                format!("{:x}", m.id),
                                status(m).into(),
                                m.name.clone(),
                                m.peer_ur_ls.join(","),
                                m.client_ur_ls.join(","),
                                m.is_learner.to_string(),
                            ]
                        })
                        .collect();
                    out.table(
                        &[
                            "ID",
                            "STATUS",
                            "NAME",
                            "PEER ADDRS",
                            "CLIENT ADDRS",
                            "IS LEARNER",
                        ],
                        &rows,
                    )?;
                }
            }
            Ok(())
        }
    }
}
