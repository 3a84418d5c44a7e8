//! Autopilot: the leader keeps the cluster's voters healthy by itself (issue 17; Consul's
//! autopilot and hashicorp/raft-autopilot's rules, design/clustering.md).
//!
//! Every half second the leader probes every other member over the peer port and reads its
//! replication progress: a server is healthy when it answered within the last-contact
//! threshold, in the leader's term, and trails the log by at most max-trailing-logs. Then at most
//! one change per round, in this order ([`decide`]):
//! 1. promote a standby that has been healthy for the stabilization time, while there are fewer
//!    healthy voters than the target (ideal-voters, or the largest odd number of healthy servers
//!    below it);
//! 2. remove a voter out of contact for dead-server-after (past the last-contact threshold; one
//!    that answers but trails is unhealthy, never dead), once the healthy voters reach the target
//!    (its replacement came first), never when the others would lose their quorum or fall below
//!    min-quorum: autopilot then waits and says why;
//! 3. remove a standby out of contact for dead-server-after;
//! 4. demote voters beyond ideal-voters (a lowered setting, or servers that promoted
//!    themselves);
//! 5. move leadership away from a leader that has itself been unhealthy for dead-server-after
//!    (its state machine applies far behind its log, as on a slow disk) to the healthy voter
//!    furthest along (MoveLeader, decision 0019).
//!
//! Zones (`eden server --zone Z`, kept in `/eden/cluster/servers/NAME`) break ties: a standby in
//! a zone with fewer voters is promoted first, a voter in the most crowded zone demoted first. A
//! server started with `--stay-learner` is never promoted (Consul's non-voters).
//!
//! Every action is logged, counted (`eden_autopilot_actions_total`), recorded as an event
//! (`cluster/promoted/NAME`, `cluster/removed/NAME`, `cluster/demoted/NAME`) and shown by
//! `eden cluster status` with why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eden_proto::etcdserverpb::RangeRequest;
use eden_proto::model::cluster::{
    server_key, Action, AutopilotSettings, ClusterStatus, ServerHealth, ServerInfo, AUTOPILOT_KEY,
    SERVERS,
};
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{Lane, LeaderPeer, LeadershipError, LeadershipRequest, Node, Step};
use crate::errors;
use crate::membership::MembershipChange;
use crate::raft::network::{from_payload, to_payload};
use crate::raft::Command;

/// How often the leader looks.
const ROUND: Duration = Duration::from_millis(500);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// A member's answer to the leader's probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub term: u64,
    pub last_log_index: u64,
}

/// What the leader remembers of each server between rounds (reset when its term changes).
#[derive(Default)]
pub(crate) struct Tracked {
    term: u64,
    servers: BTreeMap<u64, Seen>,
    last_action: Option<Action>,
    status: Option<ClusterStatus>,
}

struct Seen {
    last_contact: Option<Instant>,
    term: u64,
    healthy: bool,
    since: Instant,
    /// Healthy at least once (a learner that never was is still joining: catching up).
    was_healthy: bool,
    /// When this leader first saw it (out of contact since then if it never answered).
    first_seen: Instant,
}

/// A server as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub name: String,
    pub voter: bool,
    pub leader: bool,
    pub healthy: bool,
    /// How long it has been healthy (or unhealthy).
    pub stable_for: Duration,
    /// How long it has been out of contact beyond the last-contact threshold (None: in
    /// contact). Only this makes a server dead: one that answers but trails (catching up, a slow
    /// disk) is unhealthy, never removed.
    pub unreachable_for: Option<Duration>,
    pub lag: u64,
    pub zone: String,
    /// Started with `--stay-learner`: never promoted.
    pub non_voter: bool,
}

/// One round's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Promote(u64, String),
    Remove(u64, String),
    Demote(u64, String),
    /// Move leadership to this voter (the leader itself is unhealthy).
    Transfer(u64, String),
    /// Nothing to do now, and why autopilot does not act (None: all is well).
    Wait(Option<String>),
}

fn odd_floor(n: usize) -> usize {
    if n == 0 {
        0
    } else if n % 2 == 1 {
        n
    } else {
        n - 1
    }
}

/// How many voters autopilot aims for: ideal-voters while that many servers are healthy, else
/// the largest odd number of healthy servers below it (at least one).
pub fn target(s: &AutopilotSettings, healthy_servers: usize) -> usize {
    (s.ideal_voters as usize)
        .min(odd_floor(healthy_servers))
        .max(1)
}

/// How many voters may fail with the cluster still committing.
pub fn failure_tolerance(voters: usize, healthy_voters: usize) -> usize {
    let quorum = voters / 2 + 1;
    healthy_voters.saturating_sub(quorum)
}

/// The one change of a round (see the module's rules).
pub fn decide(s: &AutopilotSettings, servers: &[Candidate]) -> Decision {
    let stabilization = Duration::from_secs(s.stabilization_s);
    let dead_after = Duration::from_secs(s.dead_server_after_s);
    let voters: Vec<&Candidate> = servers.iter().filter(|c| c.voter).collect();
    let healthy_voters = voters.iter().filter(|c| c.healthy).count();
    // Servers that could vote (non-voters never raise the target).
    let healthy = servers
        .iter()
        .filter(|c| c.healthy && (c.voter || !c.non_voter))
        .count();
    let target = target(s, healthy);
    let voters_in = |zone: &str| voters.iter().filter(|v| v.zone == zone).count();

    // 1. Promote a stable standby while healthy voters are short of the target.
    if healthy_voters < target {
        let mut ready: Vec<&Candidate> = servers
            .iter()
            .filter(|c| !c.voter && !c.non_voter && c.healthy && c.stable_for >= stabilization)
            .collect();
        ready.sort_by(|a, b| {
            (voters_in(&a.zone), a.lag, &a.name).cmp(&(voters_in(&b.zone), b.lag, &b.name))
        });
        if let Some(c) = ready.first() {
            return Decision::Promote(
                c.id,
                format!(
                    "{healthy_voters} healthy voter(s) of {target} wanted; {} has been healthy \
                     for {} s",
                    c.name,
                    c.stable_for.as_secs()
                ),
            );
        }
    }
    let dead_for = |c: &Candidate| c.unreachable_for.filter(|d| *d >= dead_after);
    // 2. Remove a voter dead for long enough, once that is safe.
    let mut dead: Vec<&&Candidate> = voters
        .iter()
        .filter(|c| !c.leader && dead_for(c).is_some())
        .collect();
    dead.sort_by_key(|c| std::cmp::Reverse(c.unreachable_for));
    if let Some(d) = dead.first() {
        let left = voters.len() - 1;
        let quorum_left = left / 2 + 1;
        if healthy_voters < voters.len() / 2 + 1 {
            return Decision::Wait(Some(format!(
                "{} of {} voters are unhealthy: the cluster has no quorum to change itself; \
                 waiting for voters to come back",
                voters.len() - healthy_voters,
                voters.len()
            )));
        }
        if healthy_voters < target {
            return Decision::Wait(Some(format!(
                "{} is dead but no standby has been healthy for {} s to replace it; waiting",
                d.name, s.stabilization_s
            )));
        }
        if healthy_voters < quorum_left || left < (s.min_quorum as usize).max(1) {
            return Decision::Wait(Some(format!(
                "removing {} would leave {left} voter(s) (min-quorum {}, {healthy_voters} \
                 healthy); waiting",
                d.name, s.min_quorum
            )));
        }
        return Decision::Remove(
            d.id,
            format!(
                "voter {} out of contact for {} s past the threshold (dead-server-after {} s)",
                d.name,
                d.unreachable_for.unwrap_or_default().as_secs(),
                s.dead_server_after_s
            ),
        );
    }
    // 3. Remove a standby dead for long enough.
    if let Some(d) = servers.iter().find(|c| !c.voter && dead_for(c).is_some()) {
        return Decision::Remove(
            d.id,
            format!(
                "standby {} out of contact for {} s past the threshold (dead-server-after {} s)",
                d.name,
                d.unreachable_for.unwrap_or_default().as_secs(),
                s.dead_server_after_s
            ),
        );
    }
    // 4. Demote voters beyond ideal-voters (never the leader).
    if healthy_voters > s.ideal_voters as usize {
        let mut extra: Vec<&&Candidate> = voters.iter().filter(|c| !c.leader).collect();
        extra.sort_by(|a, b| {
            (voters_in(&b.zone), !b.healthy, b.lag, &b.name).cmp(&(
                voters_in(&a.zone),
                !a.healthy,
                a.lag,
                &a.name,
            ))
        });
        if let Some(c) = extra.first() {
            return Decision::Demote(
                c.id,
                format!(
                    "{healthy_voters} healthy voters, ideal-voters {}",
                    s.ideal_voters
                ),
            );
        }
    }
    // 5. The leader itself unhealthy (its state machine far behind its log: a slow disk): hand
    // leadership to the healthy voter furthest along.
    // Only when that lasts as long as a server takes to count as dead: a burst of writes puts
    // any leader's state machine behind for a moment.
    if let Some(l) = servers
        .iter()
        .find(|c| c.leader && !c.healthy && c.stable_for >= dead_after)
    {
        let mut to: Vec<&&Candidate> = voters.iter().filter(|c| !c.leader && c.healthy).collect();
        to.sort_by(|a, b| (a.lag, &a.name).cmp(&(b.lag, &b.name)));
        if let Some(t) = to.first() {
            return Decision::Transfer(
                t.id,
                format!(
                    "the leader {} is unhealthy; {} is caught up",
                    l.name, t.name
                ),
            );
        }
    }
    if healthy_voters < target {
        let waiting = servers
            .iter()
            .any(|c| !c.voter && !c.non_voter && c.healthy);
        return Decision::Wait(Some(if waiting {
            format!(
                "{healthy_voters} healthy voter(s) of {target} wanted; a standby is promoted \
                 once healthy for {} s",
                s.stabilization_s
            )
        } else {
            format!("{healthy_voters} healthy voter(s) of {target} wanted; no healthy standby")
        }));
    }
    Decision::Wait(None)
}

impl Node {
    /// The settings stored in the cluster, as this member has applied them (the defaults when
    /// none are stored or they do not parse).
    pub fn autopilot_settings(&self) -> AutopilotSettings {
        let r = self.mvcc().range(&RangeRequest {
            key: AUTOPILOT_KEY.as_bytes().to_vec(),
            ..Default::default()
        });
        r.ok()
            .and_then(|r| r.kvs.into_iter().next())
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or_default()
    }

    /// What each server said of itself (`/eden/cluster/servers/NAME`), by name.
    fn server_infos(&self) -> BTreeMap<String, ServerInfo> {
        let prefix = SERVERS.as_bytes().to_vec();
        let r = self.mvcc().range(&RangeRequest {
            range_end: eden_proto::keys::prefix_end(&prefix),
            key: prefix,
            ..Default::default()
        });
        r.map(|r| {
            r.kvs
                .into_iter()
                .filter_map(|kv| {
                    let name = String::from_utf8(kv.key).ok()?;
                    let name = name.strip_prefix(SERVERS)?.to_string();
                    Some((name, serde_json::from_slice(&kv.value).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Keeps `/eden/cluster/servers/NAME` saying this server's `--zone` and `--stay-learner`
    /// (removed when it has neither).
    pub(crate) async fn publish_server_info(self: Arc<Self>) {
        let name = self.config.name.clone();
        let want = ServerInfo {
            zone: self.config.zone.clone().unwrap_or_default(),
            non_voter: self.config.stay_learner,
        };
        loop {
            let have = self.server_infos().get(&name).cloned().unwrap_or_default();
            if have == want {
                return;
            }
            let op = if want == ServerInfo::default() {
                eden_proto::model::kv::delete(&server_key(&name))
            } else {
                eden_proto::model::kv::put(&server_key(&name), &want, 0)
            };
            if self
                .propose(Command::Kv {
                    op: prost::Message::encode_to_vec(&op),
                })
                .await
                .is_ok()
            {
                continue;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// This member's answer to the leader's probe.
    pub fn probe_local(&self) -> Probe {
        let m = self.raft.metrics().borrow().clone();
        Probe {
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
        }
    }

    async fn probe(&self, peer_addr: &str) -> Option<Probe> {
        let mut client = self.peer_client(peer_addr, Lane::Control).ok()?;
        let asked = client.leadership(to_payload(&LeadershipRequest::Probe, self.cluster_id));
        let reply = tokio::time::timeout(PROBE_TIMEOUT, asked)
            .await
            .ok()?
            .ok()?;
        from_payload::<Probe>(reply.get_ref()).ok()
    }

    /// The leader's autopilot, every [`ROUND`]; other members only forget what they tracked.
    pub(crate) async fn autopilot_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.is_leader() {
                *self.autopilot.lock().unwrap() = Tracked::default();
                continue;
            }
            self.autopilot_round().await;
        }
    }

    async fn autopilot_round(&self) {
        let settings = self.autopilot_settings();
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let joint = membership.get_joint_config().len() > 1;
        let voters: Vec<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, crate::raft::Member> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let names = self.sm.members().unwrap_or_default();
        let infos = self.server_infos();
        let last = m.last_log_index.unwrap_or(0);
        let probes: BTreeMap<u64, Option<Probe>> = futures::future::join_all(
            nodes
                .iter()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, n)| async move { (*id, self.probe(&n.peer_addr).await) }),
        )
        .await
        .into_iter()
        .collect();
        let now = Instant::now();
        let threshold = Duration::from_millis(settings.last_contact_threshold_ms);
        let mut candidates = Vec::new();
        let mut servers = Vec::new();
        {
            let mut t = self.autopilot.lock().unwrap();
            if t.term != m.current_term {
                *t = Tracked {
                    term: m.current_term,
                    last_action: t.last_action.take(),
                    ..Default::default()
                };
            }
            t.servers.retain(|id, _| nodes.contains_key(id));
            for (id, node) in &nodes {
                let is_self = *id == self.id;
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map_or(0, |l| l.index);
                let lag = if is_self {
                    0
                } else {
                    last.saturating_sub(matched)
                };
                let seen = t.servers.entry(*id).or_insert(Seen {
                    last_contact: None,
                    term: 0,
                    healthy: false,
                    since: now,
                    was_healthy: false,
                    first_seen: now,
                });
                if is_self {
                    seen.last_contact = Some(now);
                    seen.term = m.current_term;
                } else if let Some(Some(p)) = probes.get(id) {
                    seen.last_contact = Some(now);
                    seen.term = p.term;
                }
                let contact = seen.last_contact.map(|c| now.duration_since(c));
                let applied_lag = last.saturating_sub(m.last_applied.map_or(0, |l| l.index));
                let reason = match contact {
                    _ if is_self && applied_lag > settings.max_trailing_logs => {
                        format!("applies {applied_lag} entries behind its log")
                    }
                    _ if is_self => String::new(),
                    None => "never answered the leader".to_string(),
                    Some(c) if c > threshold => {
                        format!("no contact for {} ms", c.as_millis())
                    }
                    _ if seen.term != m.current_term => {
                        format!("in term {}, the leader in {}", seen.term, m.current_term)
                    }
                    _ if lag > settings.max_trailing_logs => {
                        format!("trails the log by {lag} entries")
                    }
                    _ => String::new(),
                };
                let healthy = reason.is_empty();
                if healthy != seen.healthy {
                    seen.healthy = healthy;
                    seen.since = now;
                }
                seen.was_healthy |= healthy;
                let joining = !seen.was_healthy;
                let name = names
                    .get(id)
                    .map(|a| a.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| node.name.clone());
                let voter = voters.contains(id);
                let info = infos.get(&name).cloned().unwrap_or_default();
                let zone = info.zone.clone();
                candidates.push(Candidate {
                    id: *id,
                    name: name.clone(),
                    voter,
                    leader: is_self,
                    healthy,
                    stable_for: now.duration_since(seen.since),
                    unreachable_for: if is_self {
                        None
                    } else {
                        let silent =
                            now.duration_since(seen.last_contact.unwrap_or(seen.first_seen));
                        (silent > threshold).then(|| silent - threshold)
                    },
                    lag,
                    zone: zone.clone(),
                    non_voter: info.non_voter,
                });
                servers.push(ServerHealth {
                    id: *id,
                    name,
                    peer_addr: node.peer_addr.clone(),
                    role: if is_self {
                        "leader"
                    } else if voter {
                        "voter"
                    } else if joining {
                        "joining"
                    } else {
                        "standby"
                    }
                    .into(),
                    healthy,
                    reason,
                    last_contact_ms: contact.map(|c| c.as_millis() as u64),
                    lag,
                    term: seen.term,
                    stable_ms: now.duration_since(seen.since).as_millis() as u64,
                    zone,
                });
            }
        }
        let healthy_voters = candidates.iter().filter(|c| c.voter && c.healthy).count();
        let tolerance = failure_tolerance(voters.len(), healthy_voters);
        crate::metrics::metrics()
            .failure_tolerance
            .set(tolerance as i64);
        let decision = if !settings.enabled {
            Decision::Wait(Some(
                "autopilot is off (eden cluster autopilot set --enabled true)".into(),
            ))
        } else if joint {
            Decision::Wait(Some("a membership change is under way".into()))
        } else {
            decide(&settings, &candidates)
        };
        let waiting = match &decision {
            Decision::Wait(w) => w.clone(),
            _ => None,
        };
        {
            let mut t = self.autopilot.lock().unwrap();
            t.status = Some(ClusterStatus {
                leader: self.id,
                term: m.current_term,
                servers,
                voters: voters.len() as u32,
                healthy_voters: healthy_voters as u32,
                failure_tolerance: tolerance as u32,
                settings: settings.clone(),
                last_action: t.last_action.clone(),
                waiting,
            });
        }
        let (action, id, why) = match decision {
            Decision::Wait(_) => return,
            Decision::Promote(id, why) => ("promoted", id, why),
            Decision::Remove(id, why) => ("removed", id, why),
            Decision::Demote(id, why) => ("demoted", id, why),
            Decision::Transfer(id, why) => ("leadership-transferred", id, why),
        };
        let name = candidates
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let change = match action {
            "promoted" => Some(MembershipChange::Promote { id }),
            "removed" => Some(MembershipChange::Remove { id }),
            "demoted" => Some(MembershipChange::Demote { id }),
            _ => None,
        };
        let done = match change {
            Some(c) => self
                .change_membership_local(c)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
            None => self
                .move_leader(id)
                .await
                .map_err(|e| e.message().to_string()),
        };
        if let Err(e) = done {
            tracing::info!(server = %name, error = %e, "autopilot could not act: {action}");
            return;
        }
        tracing::info!(server = %name, id = %format!("{id:x}"), %why, "autopilot: {action}");
        crate::metrics::metrics()
            .autopilot_actions
            .with_label_values(&[action])
            .inc();
        self.autopilot.lock().unwrap().last_action = Some(Action {
            action: action.into(),
            server: name.clone(),
            why: why.clone(),
            at_ms: eden_proto::model::objects::now_ms(),
        });
        self.record_event(
            format!("cluster/{action}/{name}"),
            serde_json::json!({ "server": name, "id": format!("{id:x}"), "why": why }),
        )
        .await;
    }

    /// On the leader: what autopilot sees (None until its first round).
    pub fn autopilot_status_local(&self) -> Result<ClusterStatus, LeadershipError> {
        if !self.is_leader() {
            return Err(LeadershipError::NotLeader);
        }
        self.autopilot
            .lock()
            .unwrap()
            .status
            .clone()
            .ok_or_else(|| {
                LeadershipError::Failed("autopilot has not looked yet; try again".into())
            })
    }

    /// What the leader's autopilot sees, from any member.
    pub async fn autopilot_status(&self) -> Result<ClusterStatus, Status> {
        let cluster = self.cluster_id;
        let answer = |r: Result<ClusterStatus, LeadershipError>| match r {
            Ok(s) => Step::Done(Ok(s)),
            Err(LeadershipError::NotLeader) => Step::Again,
            Err(LeadershipError::BadTransferee) => Step::Again,
            Err(LeadershipError::Failed(e)) => Step::Done(Err(errors::unavailable(&e))),
        };
        self.at_leader(
            Lane::Control,
            || async move { answer(self.autopilot_status_local()) },
            |LeaderPeer { mut client, .. }, left| async move {
                let asked =
                    client.leadership(to_payload(&LeadershipRequest::AutopilotState, cluster));
                match tokio::time::timeout(left, asked).await {
                    Ok(Ok(reply)) => {
                        match from_payload::<Result<ClusterStatus, LeadershipError>>(
                            reply.get_ref(),
                        ) {
                            Ok(r) => answer(r),
                            Err(e) => Step::Done(Err(errors::internal(format!(
                                "bad autopilot reply: {e}"
                            )))),
                        }
                    }
                    _ => Step::Again,
                }
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, voter: bool, healthy: bool, secs: u64) -> Candidate {
        Candidate {
            id,
            name: format!("s{id}"),
            voter,
            leader: id == 1,
            healthy,
            stable_for: Duration::from_secs(secs),
            unreachable_for: (!healthy).then(|| Duration::from_secs(secs)),
            lag: 0,
            zone: String::new(),
            non_voter: false,
        }
    }

    fn settings() -> AutopilotSettings {
        AutopilotSettings {
            dead_server_after_s: 60,
            stabilization_s: 10,
            ..Default::default()
        }
    }

    #[test]
    fn targets_and_tolerance() {
        let s = settings();
        assert_eq!(target(&s, 5), 3);
        assert_eq!(target(&s, 2), 1);
        assert_eq!(target(&s, 0), 1);
        let five = AutopilotSettings {
            ideal_voters: 5,
            ..s
        };
        assert_eq!(target(&five, 4), 3);
        assert_eq!(target(&five, 7), 5);
        assert_eq!(failure_tolerance(3, 3), 1);
        assert_eq!(failure_tolerance(3, 2), 0);
        assert_eq!(failure_tolerance(5, 5), 2);
        assert_eq!(failure_tolerance(3, 1), 0);
    }

    #[test]
    fn standbys_are_promoted_only_when_stable_and_needed() {
        let s = settings();
        // One voter, two standbys: the stable one is promoted.
        let d = decide(
            &s,
            &[
                c(1, true, true, 100),
                c(2, false, true, 5),
                c(3, false, true, 30),
            ],
        );
        assert!(matches!(d, Decision::Promote(3, _)), "{d:?}");
        // Three healthy voters: standbys stay standbys.
        let d = decide(
            &s,
            &[
                c(1, true, true, 100),
                c(2, true, true, 100),
                c(3, true, true, 100),
                c(4, false, true, 100),
            ],
        );
        assert_eq!(d, Decision::Wait(None));
    }

    #[test]
    fn a_dead_voter_is_replaced_first_then_removed() {
        let s = settings();
        let dead_for = |secs| {
            vec![
                c(1, true, true, 100),
                c(2, true, true, 100),
                c(3, true, false, secs),
                c(4, false, true, 100),
            ]
        };
        // Not dead long enough, but unhealthy: the standby is promoted right away (add first).
        assert!(matches!(decide(&s, &dead_for(5)), Decision::Promote(4, _)));
        // Replaced: four voters, three healthy; the dead one goes once dead-server-after passed.
        let mut replaced = dead_for(61);
        replaced[3].voter = true;
        assert!(matches!(decide(&s, &replaced), Decision::Remove(3, _)));
        replaced[2].unreachable_for = Some(Duration::from_secs(30));
        assert_eq!(decide(&s, &replaced), Decision::Wait(None));
    }

    #[test]
    fn never_removes_what_would_lose_quorum_and_says_why() {
        let s = settings();
        // Two of three voters dead: no quorum, wait.
        let d = decide(
            &s,
            &[
                c(1, true, true, 100),
                c(2, true, false, 100),
                c(3, true, false, 100),
            ],
        );
        assert!(
            matches!(&d, Decision::Wait(Some(w)) if w.contains("no quorum")),
            "{d:?}"
        );
        // min-quorum 3 with three voters: the dead one stays.
        let strict = AutopilotSettings {
            min_quorum: 3,
            ..settings()
        };
        let d = decide(
            &strict,
            &[
                c(1, true, true, 100),
                c(2, true, true, 100),
                c(3, true, false, 100),
            ],
        );
        assert!(
            matches!(&d, Decision::Wait(Some(w)) if w.contains("min-quorum")),
            "{d:?}"
        );
    }

    #[test]
    fn voters_beyond_the_ideal_are_demoted_never_the_leader() {
        let s = settings();
        let d = decide(
            &s,
            &[
                c(1, true, true, 100),
                c(2, true, true, 100),
                c(3, true, true, 100),
                c(4, true, true, 100),
                c(5, true, true, 100),
            ],
        );
        assert!(matches!(d, Decision::Demote(id, _) if id != 1), "{d:?}");
    }

    #[test]
    fn voters_are_spread_over_zones() {
        let s = settings();
        let z = |mut c: Candidate, zone: &str| {
            c.zone = zone.into();
            c
        };
        // Voters in a and b; the standby in c goes first, even with more lag.
        let mut in_c = z(c(4, false, true, 100), "c");
        in_c.lag = 5;
        let d = decide(
            &s,
            &[
                z(c(1, true, true, 100), "a"),
                z(c(2, true, true, 100), "b"),
                z(c(3, false, true, 100), "a"),
                in_c,
            ],
        );
        assert!(matches!(d, Decision::Promote(4, _)), "{d:?}");
        // Too many voters: the one sharing a zone goes back to standby.
        let d = decide(
            &s,
            &[
                z(c(1, true, true, 100), "a"),
                z(c(2, true, true, 100), "b"),
                z(c(3, true, true, 100), "c"),
                z(c(4, true, true, 100), "a"),
            ],
        );
        assert!(matches!(d, Decision::Demote(4, _)), "{d:?}");
    }

    #[test]
    fn an_unhealthy_leader_hands_leadership_to_a_caught_up_voter_and_is_never_removed() {
        let s = settings();
        let mut behind = c(3, true, true, 100);
        behind.lag = 7;
        let d = decide(
            &s,
            &[c(1, true, false, 1_000), c(2, true, true, 100), behind],
        );
        assert!(matches!(d, Decision::Transfer(2, _)), "{d:?}");
        // Not for a moment's lag.
        let d = decide(
            &s,
            &[
                c(1, true, false, 5),
                c(2, true, true, 100),
                c(3, true, true, 100),
            ],
        );
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
    }

    #[test]
    fn a_server_that_answers_but_trails_is_never_removed() {
        let s = settings();
        // A standby catching up (unhealthy for long, but in contact) stays.
        let mut joining = c(4, false, false, 600);
        joining.unreachable_for = None;
        joining.lag = 100_000;
        let d = decide(
            &s,
            &[
                c(1, true, true, 100),
                c(2, true, true, 100),
                c(3, true, true, 100),
                joining,
            ],
        );
        assert_eq!(d, Decision::Wait(None));
    }

    #[test]
    fn a_non_voter_is_never_promoted() {
        let s = settings();
        let mut stays = c(0, false, true, 100);
        stays.non_voter = true;
        // It sorts first by name, and still the others are promoted.
        let servers = vec![
            c(1, true, true, 100),
            c(2, false, true, 100),
            c(3, false, true, 100),
            stays,
        ];
        assert!(matches!(decide(&s, &servers), Decision::Promote(2, _)));
        let mut two = servers.clone();
        two[1].voter = true;
        assert!(matches!(decide(&s, &two), Decision::Promote(3, _)));
        two[2].voter = true;
        assert_eq!(decide(&s, &two), Decision::Wait(None));
        // One voter and a non-voter: one server could vote, so one voter is the target.
        let alone = vec![servers[0].clone(), servers[3].clone()];
        assert_eq!(decide(&s, &alone), Decision::Wait(None));
    }

    #[test]
    fn a_dead_standby_is_removed() {
        let s = settings();
        let d = decide(
            &s,
            &[
                c(1, true, true, 100),
                c(2, true, true, 100),
                c(3, true, true, 100),
                c(4, false, false, 61),
            ],
        );
        assert!(matches!(d, Decision::Remove(4, _)), "{d:?}");
    }
}
