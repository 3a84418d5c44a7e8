//! The cluster's own settings and state: autopilot's settings (`/eden/cluster/autopilot`, written
//! by an admin with `eden cluster autopilot set`, read by the leader's autopilot) and the status
//! the leader reports (`eden cluster status`, the forming proto's `Autopilot.State` call).
//! design/clustering.md has the rules.

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::model::{kv, Error};

/// Where autopilot's settings live. Absent: the defaults.
pub const AUTOPILOT_KEY: &str = "/eden/cluster/autopilot";
/// What each server says of itself to autopilot, `/eden/cluster/servers/NAME` ([`ServerInfo`]),
/// written by that server.
pub const SERVERS: &str = "/eden/cluster/servers/";

pub fn server_key(server: &str) -> String {
    format!("{SERVERS}{server}")
}

/// A server's own settings that autopilot follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    /// `eden server --zone Z`: autopilot spreads voters over zones.
    pub zone: String,
    /// `eden server --stay-learner`: a standby autopilot never promotes (Consul's non-voter).
    pub non_voter: bool,
}

/// How autopilot keeps the cluster (Consul's autopilot settings, by the same names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutopilotSettings {
    /// Off: autopilot only reports; servers that join promote themselves (as before autopilot).
    pub enabled: bool,
    /// How many voters to keep (odd: 1, 3, 5 or 7) while that many healthy servers exist; the
    /// largest odd number below it otherwise. Further servers stay standbys (learners).
    pub ideal_voters: u32,
    /// A voter or standby out of contact this long (seconds, past the last-contact threshold) is
    /// removed (a voter once a healthy standby has replaced it, or when none can). One that
    /// answers but trails the log (catching up, a slow disk) is unhealthy, never removed.
    pub dead_server_after_s: u64,
    /// A server must be healthy this long (seconds) before it is promoted.
    pub stabilization_s: u64,
    /// Never remove a voter when fewer would be left.
    pub min_quorum: u32,
    /// A server further behind the leader's log than this is unhealthy.
    pub max_trailing_logs: u64,
    /// A server the leader has not heard from for this long (milliseconds) is unhealthy.
    pub last_contact_threshold_ms: u64,
}

impl Default for AutopilotSettings {
    fn default() -> Self {
        AutopilotSettings {
            enabled: true,
            ideal_voters: 3,
            dead_server_after_s: 300,
            stabilization_s: 10,
            min_quorum: 0,
            max_trailing_logs: 250,
            last_contact_threshold_ms: 2_000,
        }
    }
}

impl AutopilotSettings {
    /// Checks the values an admin gives.
    pub fn check(&self) -> Result<(), String> {
        if !matches!(self.ideal_voters, 1 | 3 | 5 | 7) {
            return Err(format!(
                "ideal-voters {} must be 1, 3, 5 or 7 (an even number of voters tolerates no \
                 more failures than the odd number below it)",
                self.ideal_voters
            ));
        }
        if self.min_quorum > self.ideal_voters {
            return Err(format!(
                "min-quorum {} is above ideal-voters {}",
                self.min_quorum, self.ideal_voters
            ));
        }
        if self.last_contact_threshold_ms == 0 {
            return Err("last-contact-threshold must be above 0".into());
        }
        Ok(())
    }
}

/// The settings stored in the cluster (the defaults when none are).
pub async fn autopilot(client: &Client) -> Result<AutopilotSettings, Error> {
    match kv::get_one(client, AUTOPILOT_KEY).await? {
        None => Ok(AutopilotSettings::default()),
        Some(kv) => kv::decode(&kv).map_err(Error::Corrupt),
    }
}

/// What the leader's autopilot reports (the `Autopilot.State` call).
pub async fn status(client: &Client) -> Result<ClusterStatus, Error> {
    use crate::client::Retry;
    use crate::forming::autopilot_client::AutopilotClient;
    use crate::forming::StateRequest;
    let r = client
        .call(Retry::Read, |ch| async move {
            AutopilotClient::new(ch)
                .state(StateRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await?;
    serde_json::from_str(&r.status_json)
        .map_err(|e| Error::Corrupt(format!("the leader's status does not parse: {e}")))
}

/// Stores new settings (checked first).
pub async fn set_autopilot(client: &Client, s: &AutopilotSettings) -> Result<(), Error> {
    s.check().map_err(Error::Invalid)?;
    kv::txn(client, vec![], vec![kv::put(AUTOPILOT_KEY, s, 0)], vec![]).await?;
    Ok(())
}

/// A server as the leader's autopilot sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerHealth {
    pub id: u64,
    pub name: String,
    pub peer_addr: String,
    /// "leader", "voter", "standby" (a learner) or "joining" (a learner not healthy yet: it
    /// catches up).
    pub role: String,
    pub healthy: bool,
    /// Why not, when not.
    pub reason: String,
    /// Milliseconds since the leader last heard from it (None: never).
    pub last_contact_ms: Option<u64>,
    /// Log entries it trails the leader by.
    pub lag: u64,
    pub term: u64,
    /// Milliseconds it has been healthy (or unhealthy) without a change.
    pub stable_ms: u64,
    pub zone: String,
}

/// What the leader's autopilot reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: u64,
    pub term: u64,
    pub servers: Vec<ServerHealth>,
    pub voters: u32,
    pub healthy_voters: u32,
    /// How many voters may fail with the cluster still committing.
    pub failure_tolerance: u32,
    pub settings: AutopilotSettings,
    /// What autopilot did last, and when (ms since the epoch).
    pub last_action: Option<Action>,
    /// Why autopilot is not acting when it would (two voters down, ...), if it is waiting.
    pub waiting: Option<String>,
}

/// One thing autopilot did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// promoted, demoted or removed.
    pub action: String,
    pub server: String,
    pub why: String,
    pub at_ms: u64,
}
