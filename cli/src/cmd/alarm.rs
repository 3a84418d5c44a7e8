//! `eden alarm list|disarm`, like etcdctl's.

use clap::Subcommand;
use eden_proto::client::{Client, Retry};
use eden_proto::etcdserverpb::alarm_request::AlarmAction;
use eden_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use eden_proto::etcdserverpb::{AlarmRequest, AlarmType};

use crate::exit::Failure;
use crate::printer::Printer;

#[derive(Subcommand)]
pub enum AlarmCmd {
    /// List the active alarms.
    List,
    /// Clear every active alarm (after freeing space: compact, defrag).
    Disarm,
}

async fn alarm(
    client: &Client,
    req: AlarmRequest,
    kind: Retry,
) -> Result<Vec<(u64, i32)>, Failure> {
    let resp = client
        .call(kind, |ch| async move {
            MaintenanceClient::new(ch)
                .alarm(req)
                .await
                .map(|r| r.into_inner())
        })
        .await?;
    Ok(resp
        .alarms
        .into_iter()
        .map(|a| (a.member_id, a.alarm))
        .collect())
}

fn name(a: i32) -> &'static str {
    AlarmType::try_from(a).map_or("UNKNOWN", |t| t.as_str_name())
}

pub async fn run(client: &Client, out: &Printer, c: AlarmCmd) -> Result<(), Failure> {
    let active = alarm(client, AlarmRequest::default(), Retry::Read).await?;
    if let AlarmCmd::Disarm = c {
        for (member_id, a) in &active {
            let req = AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: *member_id,
                alarm: *a,
            };
            alarm(client, req, Retry::Write).await?;
        }
    }
    for (m, a) in active {
        out.line(&format!("memberID:{m} alarm:{}", name(a)))?;
    }
    Ok(())
}
