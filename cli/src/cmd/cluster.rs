//! `eden cluster status` (what the leader's autopilot sees: members, roles, health, lag, the
//! failure tolerance, what it did last and why it waits) and `eden cluster autopilot get|set`
//! (its settings, stored in the cluster). design/clustering.md.

use std::time::Duration;

use clap::{Args, Subcommand};
use eden_proto::client::Client;
use eden_proto::model::cluster::{self, AutopilotSettings, ClusterStatus};

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Members, their roles (leader, voter, standby), health, last contact, lag, the failure
    /// tolerance, and what autopilot did last and why (asked of the leader).
    Status,
    /// Autopilot's settings (stored in the cluster; the leader applies them).
    #[command(subcommand)]
    Autopilot(AutopilotCmd),
}

#[derive(Subcommand)]
pub enum AutopilotCmd {
    /// Show the settings.
    Get,
    /// Change some settings; the others keep their values.
    Set(SetArgs),
}

#[derive(Args)]
pub struct SetArgs {
    /// Off: autopilot only reports, and joining servers promote themselves.
    #[arg(long)]
    enabled: Option<bool>,
    /// Voters to keep: 1, 3, 5 or 7 [default: 3].
    #[arg(long)]
    ideal_voters: Option<u32>,
    /// Remove a server unhealthy this long [default: 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    dead_server_after: Option<Duration>,
    /// Promote a standby once healthy this long [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    stabilization: Option<Duration>,
    /// Never remove a voter when fewer would be left [default: 0].
    #[arg(long)]
    min_quorum: Option<u32>,
    /// A server further behind the leader's log is unhealthy [default: 250].
    #[arg(long)]
    max_trailing_logs: Option<u64>,
    /// A server the leader has not heard from this long is unhealthy [default: 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    last_contact_threshold: Option<Duration>,
}

fn print_settings(out: &Printer, s: &AutopilotSettings) -> Result<(), Failure> {
    match out.format {
        Format::Json => out.json(&serde_json::to_value(s).expect("plain data"))?,
        _ => {
            out.line(&format!("enabled: {}", s.enabled))?;
            out.line(&format!("ideal-voters: {}", s.ideal_voters))?;
            out.line(&format!("dead-server-after: {}s", s.dead_server_after_s))?;
            out.line(&format!("stabilization: {}s", s.stabilization_s))?;
            out.line(&format!("min-quorum: {}", s.min_quorum))?;
            out.line(&format!("max-trailing-logs: {}", s.max_trailing_logs))?;
            out.line(&format!(
                "last-contact-threshold: {}ms",
                s.last_contact_threshold_ms
            ))?;
        }
    }
    Ok(())
}

/// What the leader's autopilot reports.
pub async fn status(client: &Client) -> Result<ClusterStatus, Failure> {
    Ok(cluster::status(client).await?)
}

fn print_status(out: &Printer, s: &ClusterStatus) -> Result<(), Failure> {
    if out.format == Format::Json {
        out.json(&serde_json::to_value(s).expect("plain data"))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = s
        .servers
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                format!("{:x}", m.id),
                m.role.clone(),
                if m.healthy {
                    "healthy".into()
                } else {
                    format!("unhealthy: {}", m.reason)
                },
                m.last_contact_ms
                    .map_or_else(|| "never".into(), |c| format!("{c}ms")),
                m.lag.to_string(),
                format!("{}s", m.stable_ms / 1000),
                if m.zone.is_empty() {
                    "-".into()
                } else {
                    m.zone.clone()
                },
            ]
        })
        .collect();
    out.table(
        &[
            "NAME",
            "ID",
            "ROLE",
            "HEALTH",
            "LAST CONTACT",
            "LAG",
            "FOR",
            "ZONE",
        ],
        &rows,
    )?;
    out.line(&format!(
        "failure tolerance: {} ({} of {} voters healthy; term {})",
        s.failure_tolerance, s.healthy_voters, s.voters, s.term
    ))?;
    out.line(&format!(
        "autopilot: {}, ideal-voters {}",
        if s.settings.enabled { "on" } else { "off" },
        s.settings.ideal_voters
    ))?;
    if let Some(a) = &s.last_action {
        let ago = eden_proto::model::objects::now_ms().saturating_sub(a.at_ms) / 1000;
        out.line(&format!(
            "last action: {} {} {ago}s ago ({})",
            a.action, a.server, a.why
        ))?;
    }
    if let Some(w) = &s.waiting {
        out.line(&format!("waiting: {w}"))?;
    }
    Ok(())
}

pub async fn run(client: &Client, out: &Printer, c: ClusterCmd) -> Result<(), Failure> {
    match c {
        ClusterCmd::Status => print_status(out, &status(client).await?),
        ClusterCmd::Autopilot(AutopilotCmd::Get) => {
            print_settings(out, &cluster::autopilot(client).await?)
        }
        ClusterCmd::Autopilot(AutopilotCmd::Set(a)) => {
            let mut s = cluster::autopilot(client).await?;
            if let Some(v) = a.enabled {
                s.enabled = v;
            }
            if let Some(v) = a.ideal_voters {
                s.ideal_voters = v;
            }
            if let Some(v) = a.dead_server_after {
                s.dead_server_after_s = v.as_secs();
            }
            if let Some(v) = a.stabilization {
                s.stabilization_s = v.as_secs();
            }
            if let Some(v) = a.min_quorum {
                s.min_quorum = v;
            }
            if let Some(v) = a.max_trailing_logs {
                s.max_trailing_logs = v;
            }
            if let Some(v) = a.last_contact_threshold {
                s.last_contact_threshold_ms = v.as_millis() as u64;
            }
            cluster::set_autopilot(client, &s).await?;
            print_settings(out, &s)
        }
    }
}
