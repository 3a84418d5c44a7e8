//! Leadership transfer (etcd's MoveLeader) on openraft 0.9, which has none of its own.
//!
//! A follower refuses to vote while it heard from its leader within the leader lease
//! (`election_timeout_max`), and starts an election of its own only after the lease plus an
//! election timeout. So the leader stops sending anything (no new proposals or read-index rounds
//! on it: they wait and retry, as in any leader change; no heartbeats), waits until the target
//! has the whole log, lets the lease run out, and asks the target to campaign at once: the
//! target is the only member whose timer runs short, and it has the longest log, so the others
//! vote for it. The old leader steps down when it sees the higher term. The writes and reads
//! held back go to the new leader. design/decisions/0019-leadership-transfer.md.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{Lane, LeaderPeer, Node, Step, REQUEST_TIMEOUT};
use crate::errors;
use crate::raft::network::{from_payload, to_payload};

/// What one member asks another about leadership, on the peer port.
#[derive(Debug, Serialize, Deserialize)]
pub enum LeadershipRequest {
    /// To the leader: hand leadership to this member.
    MoveTo(u64),
    /// To the target of a transfer: start an election now.
    CampaignNow,
    /// From the leader's autopilot: are you there, in which term, how far is your log? (answered
    /// with a [`super::Probe`]).
    Probe,
    /// To the leader: what autopilot sees (answered with a `Result<ClusterStatus, _>`).
    AutopilotState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeadershipError {
    NotLeader,
    /// Not a voter of the cluster (a learner, or no member at all).
    BadTransferee,
    Failed(String),
}

/// The margin past the leader lease before the target campaigns (a heartbeat sent just before
/// heartbeats stopped may still be on its way).
const LEASE_MARGIN: Duration = Duration::from_millis(250);

impl Node {
    /// Makes member `to` the leader, from any member (asked of the leader). Moving to the
    /// current leader does nothing.
    pub async fn move_leader(&self, to: u64) -> Result<(), Status> {
        let cluster = self.cluster_id;
        let answer = |r: Result<(), LeadershipError>| match r {
            Ok(()) => Step::Done(Ok(())),
            Err(LeadershipError::NotLeader) => Step::Again,
            Err(LeadershipError::BadTransferee) => {
                Step::Done(Err(Status::failed_precondition(errors::BAD_TRANSFEREE)))
            }
            Err(LeadershipError::Failed(e)) => Step::Done(Err(errors::unavailable(&e))),
        };
        self.at_leader(
            Lane::Control,
            || async move { answer(self.move_leader_local(to).await) },
            |LeaderPeer { mut client, .. }, left| async move {
                let asked = client.leadership(to_payload(&LeadershipRequest::MoveTo(to), cluster));
                match tokio::time::timeout(left, asked).await {
                    Ok(Ok(reply)) => {
                        match from_payload::<Result<(), LeadershipError>>(reply.get_ref()) {
                            Ok(r) => answer(r),
                            Err(e) => Step::Done(Err(errors::internal(format!(
                                "bad leadership reply: {e}"
                            )))),
                        }
                    }
                    _ => Step::Again,
                }
            },
        )
        .await
    }

    /// On the leader: the transfer itself.
    pub async fn move_leader_local(&self, to: u64) -> Result<(), LeadershipError> {
        if !self.is_leader() {
            return Err(LeadershipError::NotLeader);
        }
        if to == self.id {
            return Ok(());
        }
        let target = {
            let m = self.raft.metrics().borrow().membership_config.clone();
            if !m.membership().voter_ids().any(|v| v == to) {
                return Err(LeadershipError::BadTransferee);
            }
            m.membership().get_node(&to).map(|n| n.peer_addr.clone())
        };
        let Some(target) = target else {
            return Err(LeadershipError::BadTransferee);
        };
        let Ok(_one) = self.transfer.try_lock() else {
            return Err(LeadershipError::Failed(
                "etcdserver: a leader transfer is already under way".into(),
            ));
        };
        tracing::info!(to = %format!("{to:x}"), "transferring leadership");
        let _held = HeldBack::start(self);
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        // The target must have every entry, so that it wins the others' votes.
        loop {
            if !self.is_leader() {
                return Err(LeadershipError::NotLeader);
            }
            let caught_up = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let last = m.last_log_index.unwrap_or(0);
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&to).cloned().flatten())
                    .is_some_and(|matched| matched.index >= last)
            };
            if caught_up {
                break;
            }
            if Instant::now() >= deadline {
                return Err(LeadershipError::Failed(errors::TRANSFER_TIMEOUT.into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Nothing goes out now: let the followers' leader lease run out.
        let lease = Duration::from_millis(self.config.election_timeout_ms * 2);
        tokio::time::sleep(lease + LEASE_MARGIN).await;
        let mut client = self
            .peer_client(&target, Lane::Control)
            .map_err(|e| LeadershipError::Failed(e.message().to_string()))?;
        let asked = client.leadership(to_payload(&LeadershipRequest::CampaignNow, self.cluster_id));
        match tokio::time::timeout(REQUEST_TIMEOUT, asked).await {
            Ok(Ok(reply)) => match from_payload::<Result<(), LeadershipError>>(reply.get_ref()) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(LeadershipError::Failed(format!("{e:?}"))),
                Err(e) => return Err(LeadershipError::Failed(e.to_string())),
            },
            Ok(Err(status)) => return Err(LeadershipError::Failed(status.message().to_string())),
            Err(_) => return Err(LeadershipError::Failed(errors::TRANSFER_TIMEOUT.into())),
        }
        // Done when the target leads (this member has stepped down by then).
        let until = Instant::now() + lease * 2;
        loop {
            let (leader, state) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (m.current_leader, m.state)
            };
            if leader == Some(to) {
                tracing::info!(to = %format!("{to:x}"), "leadership transferred");
                return Ok(());
            }
            if state != ServerState::Leader && leader.is_some() && leader != Some(self.id) {
                return Err(LeadershipError::Failed(format!(
                    "etcdserver: another member ({:x}) was elected",
                    leader.unwrap_or(0)
                )));
            }
            if Instant::now() >= until {
                return Err(LeadershipError::Failed(errors::TRANSFER_TIMEOUT.into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Leaves the cluster (`eden server --leave` when stopped): hands leadership to the voter
    /// furthest along when this member leads, then asks the leader to remove this member.
    pub async fn leave(&self) -> Result<(), Status> {
        if self.is_leader() {
            let to = {
                let m = self.raft.metrics().borrow().clone();
                let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                m.replication.as_ref().and_then(|r| {
                    r.iter()
                        .filter(|(id, _)| **id != self.id && voters.contains(id))
                        .max_by_key(|(_, l)| l.as_ref().map_or(0, |l| l.index))
                        .map(|(id, _)| *id)
                })
            };
            if let Some(to) = to {
                tracing::info!(to = %format!("{to:x}"), "leaving: handing leadership over");
                self.move_leader(to).await?;
            }
        }
        self.change_membership(crate::membership::MembershipChange::Remove { id: self.id })
            .await
            .map(|_| ())
    }

    /// On the target of a transfer: campaign now (the leader has gone quiet for the lease).
    pub async fn campaign_now(&self) -> Result<(), LeadershipError> {
        if self.is_learner() {
            return Err(LeadershipError::BadTransferee);
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| LeadershipError::Failed(errors::stopped_message(e)))
    }

    /// Whether this member holds back proposals and read-index rounds for a transfer.
    pub(crate) fn transferring(&self) -> bool {
        self.transferring.load(Ordering::Acquire)
    }
}

/// While it lives, the leader sends nothing: no heartbeats, no new proposals or read-index
/// rounds (they answer "not leader", and their callers retry wherever the leader is then).
struct HeldBack<'a>(&'a Node);

impl<'a> HeldBack<'a> {
    fn start(node: &'a Node) -> HeldBack<'a> {
        node.transferring.store(true, Ordering::Release);
        node.raft.runtime_config().heartbeat(false);
        HeldBack(node)
    }
}

impl Drop for HeldBack<'_> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
        self.0.transferring.store(false, Ordering::Release);
    }
}
