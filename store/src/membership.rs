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
//!
//! This module decides ([`plan`], [`outcome`], [`already_done`]): plain functions over a [`View`]
//! of the cluster. The member (`node.rs`) asks the leader and applies the plan.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::errors::{
    self, LEARNER_NOT_READY as ERR_LEARNER_NOT_READY,
    MEMBERSHIP_CHANGE_IN_PROGRESS as ERR_IN_PROGRESS, MEMBER_NOT_FOUND as ERR_NOT_FOUND,
    MEMBER_NOT_LEARNER as ERR_NOT_LEARNER, NOT_ENOUGH_STARTED_MEMBERS as ERR_NOT_ENOUGH_STARTED,
    PEER_URL_EXIST as ERR_PEER_EXISTS,
};
use crate::raft::{Member, TypeConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    Add {
        peer_addr: String,
        learner: bool,
    },
    Remove {
        id: u64,
    },
    Promote {
        id: u64,
    },
    /// A voter becomes a learner (autopilot: voters beyond its ideal count).
    Demote {
        id: u64,
    },
    Update {
        id: u64,
        peer_addr: String,
    },
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

/// Demoting a member that is not a voter.
pub const NOT_A_VOTER: &str = "eden: the member is not a voter";

fn refuse(code: Code, message: &str) -> MembershipError {
    MembershipError::Refused {
        code: code as i32,
        message: message.to_string(),
    }
}

/// A member's id: a stable 64-bit hash of its name (FNV-1a), never 0.
pub fn member_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h.max(1)
}

/// Strips a URL scheme: members are addressed as HOST:PORT.
pub fn peer_addr_of(url: &str) -> String {
    url.trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

/// The cluster as the leader sees it when it plans a change.
pub struct View {
    pub nodes: BTreeMap<u64, Member>,
    pub voters: BTreeSet<u64>,
    pub last_log_index: u64,
    /// Each member's replicated log index, as the leader knows it.
    pub matched: BTreeMap<u64, u64>,
}

/// openraft's change, whether to keep removed voters as learners, and the new member's id.
pub type Plan = (ChangeMembers<u64, Member>, bool, Option<u64>);

/// Checks a change against the cluster with etcd's rules and plans it, or refuses it with etcd's
/// message.
pub fn plan(change: MembershipChange, view: &View) -> Result<Plan, MembershipError> {
    let (nodes, voters) = (&view.nodes, &view.voters);
    let addr_taken = |addr: &str, except: Option<u64>| {
        nodes
            .iter()
            .any(|(id, n)| n.peer_addr == addr && Some(*id) != except)
    };
    Ok(match change {
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
            let last = view.last_log_index;
            let matched = view.matched.get(&id).copied().unwrap_or(0);
            if matched < last * 9 / 10 || matched == 0 {
                return Err(refuse(Code::FailedPrecondition, ERR_LEARNER_NOT_READY));
            }
            (ChangeMembers::AddVoterIds(BTreeSet::from([id])), true, None)
        }
        MembershipChange::Demote { id } => {
            if !nodes.contains_key(&id) {
                return Err(refuse(Code::NotFound, ERR_NOT_FOUND));
            }
            if !voters.contains(&id) {
                return Err(refuse(Code::FailedPrecondition, NOT_A_VOTER));
            }
            if voters.len() == 1 {
                return Err(refuse(Code::FailedPrecondition, ERR_NOT_ENOUGH_STARTED));
            }
            // Kept as a learner (openraft's `retain`).
            (
                ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                true,
                None,
            )
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
    })
}

/// openraft's answer to a change, or the time it ran out.
pub type Answer = Result<
    Result<ClientWriteResponse<TypeConfig>, RaftError<u64, ClientWriteError<u64, Member>>>,
    tokio::time::error::Elapsed,
>;

/// What openraft's answer to a planned change means for the client.
pub fn outcome(r: Answer, added: Option<u64>) -> Result<Option<u64>, MembershipError> {
    match r {
        Err(_) => Err(refuse(Code::Unavailable, errors::TIMEOUT)),
        Ok(Ok(_)) => Ok(added),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(MembershipError::NotLeader)
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )))) => Err(refuse(Code::FailedPrecondition, ERR_IN_PROGRESS)),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Err(refuse(
            Code::FailedPrecondition,
            &errors::membership_change_refused(e),
        )),
        Ok(Err(RaftError::Fatal(e))) => Err(refuse(Code::Unavailable, &errors::stopped_message(e))),
    }
}

/// After an attempt without an answer: Some(result) when the change is already in place.
pub fn already_done(
    change: &MembershipChange,
    refusal: &str,
    nodes: &BTreeMap<u64, Member>,
) -> Option<Option<u64>> {
    match (change, refusal) {
        (MembershipChange::Remove { .. }, ERR_NOT_FOUND) => Some(None),
        (MembershipChange::Promote { .. }, ERR_NOT_LEARNER) => Some(None),
        (MembershipChange::Demote { .. }, NOT_A_VOTER) => Some(None),
        (MembershipChange::Add { peer_addr, .. }, ERR_PEER_EXISTS) => {
            let addr = peer_addr_of(peer_addr);
            nodes
                .iter()
                .find(|(_, n)| n.peer_addr == addr)
                .map(|(id, _)| Some(*id))
        }
        _ => None,
    }
}
