//! `eden member list|add|remove|promote|update|move-leader`, like etcdctl's member commands. Members can be
//! named by name or by hex id.

use clap::Subcommand;
use eden_proto::client::{Client, Retry};
use eden_proto::etcdserverpb::cluster_client::ClusterClient;
use eden_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use eden_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
    MoveLeaderRequest, ResponseHeader,
};
use serde_json::json;

use crate::exit::{Failure, REFUSED};
use crate::printer::{header_json, Format, Printer};

#[derive(Subcommand)]
pub enum MemberCmd {
    /// List the cluster's members.
    List,
    /// Add a member (start it afterwards with `eden server --join ...`).
    Add {
        name: String,
        /// The new member's peer address, HOST:PORT.
        #[arg(long)]
        peer_addr: String,
        /// Add it as a learner (not counted in the quorum until promoted).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (by name or hex id); removing the leader works.
    Remove { member: String },
    /// Promote a learner that caught up to a voter.
    Promote { member: String },
    /// Make a voter the leader (etcdctl's move-leader); writes pause for about the followers'
    /// leader lease (2 × the election timeout) while leadership moves.
    MoveLeader { member: String },
    /// Change a member's peer address.
    Update {
        member: String,
        #[arg(long)]
        peer_addr: String,
    },
}

async fn resolve(client: &Client, who: &str) -> Result<u64, Failure> {
    let list = client.member_list().await?;
    if let Some(m) = list.members.iter().find(|m| m.name == who) {
        return Ok(m.id);
    }
    if let Ok(id) = u64::from_str_radix(who, 16) {
        if list.members.iter().any(|m| m.id == id) {
            return Ok(id);
        }
    }
    Err(Failure {
        code: REFUSED,
        message: format!("no member named {who:?} (give a name or a hex id)"),
        quiet: false,
    })
}

fn print_members(
    out: &Printer,
    header: &Option<ResponseHeader>,
    members: &[Member],
) -> Result<(), Failure> {
    let status = |m: &Member| {
        if m.client_ur_ls.is_empty() {
            "unstarted"
        } else {
            "started"
        }
    };
    match out.format {
        Format::Json => {
            let members: Vec<_> = members
                .iter()
                .map(|m| json!({"ID": m.id, "name": m.name, "peerURLs": m.peer_ur_ls, "clientURLs": m.client_ur_ls, "isLearner": m.is_learner}))
                .collect();
            out.json(&json!({"header": header_json(header), "members": members}))?;
        }
        Format::Simple => {
            for m in members {
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
            let rows: Vec<Vec<String>> = members
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

pub async fn run(client: &Client, out: &Printer, c: MemberCmd) -> Result<(), Failure> {
    match c {
        MemberCmd::List => {
            let resp = client.member_list().await?;
            print_members(out, &resp.header, &resp.members)
        }
        MemberCmd::Add {
            name,
            peer_addr,
            learner,
        } => {
            let req = MemberAddRequest {
                peer_ur_ls: vec![format!(
                    "http://{}",
                    peer_addr.trim_start_matches("http://")
                )],
                is_learner: learner,
            };
            let resp = client
                .call(Retry::Write, |ch| {
                    let req = req.clone();
                    async move {
                        ClusterClient::new(ch)
                            .member_add(req)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            let id = resp.member.as_ref().map_or(0, |m| m.id);
            if out.format == Format::Json {
                return print_members(out, &resp.header, &resp.members);
            }
            let cluster = resp.header.map_or(0, |h| h.cluster_id);
            out.line(&format!("Member {id:x} added to cluster {cluster:x}"))?;
            out.line("")?;
            out.line(&format!(
                "Start it with: eden server --name {name} --peer-addr {} --client-addr HOST:PORT --join {}",
                peer_addr.trim_start_matches("http://"),
                client.endpoints().iter().map(|e| e.trim_start_matches("http://")).collect::<Vec<_>>().join(",")
            ))?;
            Ok(())
        }
        MemberCmd::Remove { member } => {
            let id = resolve(client, &member).await?;
            let resp = client
                .call(Retry::Write, |ch| async move {
                    ClusterClient::new(ch)
                        .member_remove(MemberRemoveRequest { id })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            let cluster = resp.header.map_or(0, |h| h.cluster_id);
            out.line(&format!("Member {id:x} removed from cluster {cluster:x}"))?;
            Ok(())
        }
        MemberCmd::Promote { member } => {
            let id = resolve(client, &member).await?;
            let resp = client
                .call(Retry::Write, |ch| async move {
                    ClusterClient::new(ch)
                        .member_promote(MemberPromoteRequest { id })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            let cluster = resp.header.map_or(0, |h| h.cluster_id);
            out.line(&format!("Member {id:x} promoted in cluster {cluster:x}"))?;
            Ok(())
        }
        MemberCmd::MoveLeader { member } => {
            let id = resolve(client, &member).await?;
            client
                .call(Retry::Write, |ch| async move {
                    MaintenanceClient::new(ch)
                        .move_leader(MoveLeaderRequest { target_id: id })
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            out.line(&format!("Leadership transferred to {member} ({id:x})"))?;
            Ok(())
        }
        MemberCmd::Update { member, peer_addr } => {
            let id = resolve(client, &member).await?;
            let peer = vec![format!(
                "http://{}",
                peer_addr.trim_start_matches("http://")
            )];
            let resp = client
                .call(Retry::Write, |ch| {
                    let peer = peer.clone();
                    async move {
                        ClusterClient::new(ch)
                            .member_update(MemberUpdateRequest {
                                id,
                                peer_ur_ls: peer,
                            })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            let cluster = resp.header.map_or(0, |h| h.cluster_id);
            out.line(&format!("Member {id:x} updated in cluster {cluster:x}"))?;
            Ok(())
        }
    }
}
