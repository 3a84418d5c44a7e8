//! Membership changes: what etcd's Cluster API asks for, made with openraft's joint consensus.
//!
//! Only the leader can change the membership; any member takes the request and forwards it
//! (`Peer.Membership`). The checks are etcd's, with etcd's messages:
//!
//! - add: a peer address may be used once; a new *voter* is refused when the cluster could not
//!   commit without it ("not enough started members"), since it has not started yet. Adding a
//!   learner (and `eden server --join`, which does that and then promotes itself) is always safe.
//! - remove: an unknown member is "member not found"; the last voter cannot be removed. Removing
//!   the leader works: it commits the change, steps down, and the others elect a new leader.
//! - promote: only a learner, and only once it is in sync with the leader (its replicated index is
//!   at least 90% of the leader's, as etcd checks).
//! - one change at a time: openraft refuses a change while a joint configuration is in progress.
//!
//! New members get a random id from the cluster (as in etcd); a member stores its own id in its
//! data dir (`META_SELF`), so a restart never re-adds it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::node::{internal, unavailable, Node, REQUEST_TIMEOUT};
use crate::raft::network::{from_payload, to_payload};
use crate::raft::Member;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    Add { peer_addr: String, learner: bool },
    Remove { id: u64 },
    Promote { id: u64 },
    Update { id: u64, peer_addr: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipError {
    NotLeader,
    /// A refusal, with the gRPC code and etcd's message.
    Refused {
        code: i32,
        message: String,
    },
}

fn refuse(code: Code, message: &str) -> MembershipError {
    MembershipError::Refused {
        code: code as i32,
        message: message.to_string(),
    }
}

pub const ERR_PEER_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const ERR_NOT_FOUND: &str = "etcdserver: member not found";
pub const ERR_NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";
pub const ERR_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const ERR_LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
pub const ERR_LEARNER_RPC: &str = "etcdserver: rpc not supported for learner";
pub const ERR_IN_PROGRESS: &str = "etcdserver: another membership change is in progress";

/// Strips a URL scheme: members are addressed as HOST:PORT.
pub fn peer_addr_of(url: &str) -> String {
    url.trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

impl Node {
    /// True when this member is a learner (not counted in the quorum).
    pub fn is_learner(&self) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        !m.membership().voter_ids().any(|id| id == self.id)
    }

    /// etcd's learners answer only serializable reads, Status and MemberList.
    pub fn refuse_learner(&self) -> Result<(), Status> {
        if self.is_learner() {
            return Err(Status::failed_precondition(ERR_LEARNER_RPC));
        }
        Ok(())
    }

    /// Makes a membership change through the leader; returns the new member's id for an add.
    ///
    /// A leader may step down in the middle of a change (removing itself does exactly that), so an
    /// attempt can take effect without an answer. A retry that then finds its work done (the member
    /// gone, already a voter, the address already added) reports success.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Option<u64>, Status> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        // An earlier attempt went out and got no answer (its leader stepped down or vanished).
        let mut unanswered = false;
        loop {
            let mut attempted = false;
            let outcome = if self.is_leader() {
                attempted = true;
                Some(self.change_membership_local(change.clone()).await)
            } else if let Some(addr) = self.leader_peer_addr() {
                let mut client = self.peer_client(&addr, crate::node::Lane::Control)?;
                let left = deadline.saturating_duration_since(Instant::now());
                attempted = true;
                match tokio::time::timeout(
                    left,
                    client.membership(to_payload(&change, self.cluster_id)),
                )
                .await
                {
                    Ok(Ok(reply)) => Some(
                        from_payload::<Result<Option<u64>, MembershipError>>(reply.get_ref())
                            .map_err(|e| internal(format!("bad membership reply: {e}")))?,
                    ),
                    _ => None,
                }
            } else {
                None
            };
            match outcome {
                Some(Ok(id)) => return Ok(id),
                Some(Err(MembershipError::Refused { code, message })) => {
                    if unanswered {
                        if let Some(done) = self.already_done(&change, &message) {
                            return Ok(done);
                        }
                    }
                    return Err(Status::new(Code::from(code), message));
                }
                Some(Err(MembershipError::NotLeader)) | None => unanswered |= attempted,
            }
            if Instant::now() >= deadline {
                return Err(unavailable("etcdserver: request timed out"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After an attempt without an answer: Some(result) when the change is already in place.
    fn already_done(&self, change: &MembershipChange, refusal: &str) -> Option<Option<u64>> {
        match (change, refusal) {
            (MembershipChange::Remove { .. }, ERR_NOT_FOUND) => Some(None),
            (MembershipChange::Promote { .. }, ERR_NOT_LEARNER) => Some(None),
            (MembershipChange::Add { peer_addr, .. }, ERR_PEER_EXISTS) => {
                let addr = peer_addr_of(peer_addr);
                let m = self.raft.metrics().borrow().membership_config.clone();
                let id = m
                    .membership()
                    .nodes()
                    .find(|(_, n)| n.peer_addr == addr)
                    .map(|(id, _)| *id);
                id.map(Some)
            }
            _ => None,
        }
    }

    /// On the leader: checks and makes the change.
    pub async fn change_membership_local(
        &self,
        change: MembershipChange,
    ) -> Result<Option<u64>, MembershipError> {
        if !self.is_leader() {
            return Err(MembershipError::NotLeader);
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let nodes: BTreeMap<u64, Member> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let addr_taken = |addr: &str, except: Option<u64>| {
            nodes
                .iter()
                .any(|(id, n)| n.peer_addr == addr && Some(*id) != except)
        };
        let (changes, retain, added) = match change {
            MembershipChange::Add { peer_addr, learner } => {
                let peer_addr = peer_addr_of(&peer_addr);
                if addr_taken(&peer_addr, None) {
                    return Err(refuse(Code::FailedPrecondition, ERR_PEER_EXISTS));
                }
                let mut id = rand::random::<u64>() >> 1;
                while id == 0 || nodes.contains_key(&id) {
                    id = rand::random::<u64>() >> 1;
                }
                let node = Member {
                    name: String::new(),
                    peer_addr,
                };
                if learner {
                    (
                        ChangeMembers::AddNodes(BTreeMap::from([(id, node)])),
                        true,
                        Some(id),
                    )
                } else {
                    // The new voter has not started: the others alone must still make a quorum.
                    let n = voters.len() + 1;
                    if voters.len() < n / 2 + 1 {
                        return Err(refuse(Code::FailedPrecondition, ERR_NOT_ENOUGH_STARTED));
                    }
                    (
                        ChangeMembers::AddVoters(BTreeMap::from([(id, node)])),
                        true,
                        Some(id),
                    )
                }
            }
            MembershipChange::Remove { id } => {
                if !nodes.contains_key(&id) {
                    return Err(refuse(Code::NotFound, ERR_NOT_FOUND));
                }
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(refuse(Code::FailedPrecondition, ERR_NOT_ENOUGH_STARTED));
                    }
                    (
                        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                        false,
                        None,
                    )
                } else {
                    (
                        ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                        false,
                        None,
                    )
                }
            }
            MembershipChange::Promote { id } => {
                if !nodes.contains_key(&id) {
                    return Err(refuse(Code::NotFound, ERR_NOT_FOUND));
                }
                if voters.contains(&id) {
                    return Err(refuse(Code::FailedPrecondition, ERR_NOT_LEARNER));
                }
                let last = metrics.last_log_index.unwrap_or(0);
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |l| l.index);
                if matched < last * 9 / 10 || matched == 0 {
                    return Err(refuse(Code::FailedPrecondition, ERR_LEARNER_NOT_READY));
                }
                (ChangeMembers::AddVoterIds(BTreeSet::from([id])), true, None)
            }
            MembershipChange::Update { id, peer_addr } => {
                let peer_addr = peer_addr_of(&peer_addr);
                let Some(old) = nodes.get(&id) else {
                    return Err(refuse(Code::NotFound, ERR_NOT_FOUND));
                };
                if addr_taken(&peer_addr, Some(id)) {
                    return Err(refuse(Code::FailedPrecondition, ERR_PEER_EXISTS));
                }
                let node = Member {
                    name: old.name.clone(),
                    peer_addr,
                };
                (
                    ChangeMembers::SetNodes(BTreeMap::from([(id, node)])),
                    true,
                    None,
                )
            }
        };
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.raft.change_membership(changes, retain),
        )
        .await
        {
            Err(_) => Err(refuse(Code::Unavailable, "etcdserver: request timed out")),
            Ok(Ok(_)) => Ok(added),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(MembershipError::NotLeader)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )))) => Err(refuse(Code::FailedPrecondition, ERR_IN_PROGRESS)),
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Err(
                refuse(Code::FailedPrecondition, &format!("etcdserver: {e}")),
            ),
            Ok(Err(RaftError::Fatal(e))) => Err(refuse(
                Code::Unavailable,
                &format!("etcdserver: server stopped: {e}"),
            )),
        }
    }

    /// A member that joined as a learner promotes itself once it is in sync.
    pub(crate) async fn promote_self(self: std::sync::Arc<Self>) {
        loop {
            if !self.is_learner() {
                return;
            }
            match self
                .change_membership(MembershipChange::Promote { id: self.id })
                .await
            {
                Ok(_) => {
                    tracing::info!("promoted to voter");
                    return;
                }
                Err(e) if e.message() == ERR_NOT_LEARNER => return,
                Err(e) => tracing::debug!(reason = %e.message(), "not promoted yet"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Resolves when this member has been removed from the cluster (it then stops, as etcd does).
    ///
    /// A removed follower may never see the configuration that leaves it out (the leader stops
    /// replicating to it first), so a member that does not lead also asks the others, every few
    /// seconds, for a linearizable member list: only a member in a working quorum can answer it.
    pub async fn removed(&self) {
        let mut metrics = self.raft.metrics();
        let mut was_member = false;
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            let is_member = metrics
                .borrow()
                .membership_config
                .membership()
                .get_node(&self.id)
                .is_some();
            if is_member {
                was_member = true;
            } else if was_member {
                tracing::warn!("this member was removed from the cluster");
                return;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { std::future::pending::<()>().await },
                _ = tick.tick() => {
                    if was_member && !self.is_leader() && self.removed_says_cluster().await {
                        tracing::warn!("the cluster says this member was removed");
                        return;
                    }
                }
            }
        }
    }

    /// Asks the other members' client ports whether this member is still in the cluster.
    async fn removed_says_cluster(&self) -> bool {
        let Ok(attrs) = self.sm.members() else {
            return false;
        };
        let urls: Vec<String> = attrs
            .iter()
            .filter(|(id, _)| **id != self.id)
            .filter_map(|(_, a)| a.client_urls.first().cloned())
            .collect();
        if urls.is_empty() {
            return false;
        }
        let Ok(client) = eden_proto::client::Client::new(&urls) else {
            return false;
        };
        let list = client
            .call(eden_proto::client::Retry::Read, |ch| async move {
                eden_proto::etcdserverpb::cluster_client::ClusterClient::new(ch)
                    .member_list(eden_proto::etcdserverpb::MemberListRequest { linearizable: true })
                    .await
                    .map(|r| r.into_inner())
            })
            .await;
        match list {
            Ok(l) => !l.members.is_empty() && !l.members.iter().any(|m| m.id == self.id),
            Err(_) => false,
        }
    }
}
