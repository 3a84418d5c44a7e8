//! The seam between openraft and eden's store.
//!
//! openraft (pinned at 0.9.25, see design/decisions/0001-openraft-version.md) replicates a log of
//! [`Command`]s. Three pieces plug eden into it:
//!
//! - [`log_store::LogStore`]: the Raft log and vote in RocksDB, synced before openraft hears they
//!   are stored.
//! - [`state_machine::StateMachine`]: applies committed commands to [`crate::mvcc`] in one
//!   WriteBatch with the last applied log id, then publishes the events to the watch hub. It also
//!   builds and installs snapshots.
//! - [`network::PeerNetwork`]: Raft RPCs over tonic gRPC on the peer port.
//! - [`propose::Proposer`]: group commit: the leader's client writes that arrive together go into
//!   one [`Command::Batch`] entry.
//!
//! MVCC and the watch hub know nothing of openraft; this module is the only place they meet.

// openraft's StorageError is large (224 bytes) and its trait signatures return it by value.
#![allow(clippy::result_large_err)]

#[cfg(test)]
mod cluster_tests;
pub mod log_store;
pub mod network;
pub mod propose;
pub mod snapshot;
pub mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mvcc::ApplyError;

/// A member as Raft knows it: its name and peer address. Client addresses are published through
/// the log separately ([`Command::PublishMember`]), as etcd does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// One entry of the replicated log: every change to the store is one of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A KV write: an etcd `RequestOp` (put, delete range or txn), prost-encoded. (As bytes:
    /// bincode writes a `Vec<u8>` the same way either way, but reads and writes bytes one by
    /// one without `serde_bytes`.)
    Kv {
        #[serde(with = "serde_bytes")]
        op: Vec<u8>,
    },
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// A member announces its name and client URLs.
    PublishMember {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// Raise or clear an alarm (etcd's AlarmType numbers; member 0 with clear = every member).
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// Commands the leader gathered into one entry (group commit, [`propose`]): applied in order,
    /// each as if it were an entry of its own, answered with [`Reply::Batch`]. Never nested.
    Batch(Vec<Command>),
}

impl Command {
    /// About the bytes this command takes in the log (for sizing batches).
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Kv { op } => op.len() + 8,
            Command::PublishMember {
                name, client_urls, ..
            } => name.len() + client_urls.iter().map(|u| u.len() + 8).sum::<usize>() + 16,
            Command::Batch(cmds) => cmds.iter().map(Command::approx_size).sum::<usize>() + 8,
            _ => 32,
        }
    }
}

/// The state machine's answer to a command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The store revision once the command was applied.
    pub revision: i64,
    pub result: Reply,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    #[default]
    Done,
    /// A prost-encoded `ResponseOp` for a [`Command::Kv`].
    Kv(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The alarms an Alarm command raised or cleared.
    Alarms(Vec<(u64, i32)>),
    LeaseGranted {
        id: i64,
        ttl: i64,
    },
    Refused(ApplyError),
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}

/// Client URLs and name a member published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

openraft::declare_raft_types!(
    /// eden's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;

/// Wraps any error as an openraft storage error for the given operation.
pub(crate) fn sto_err(
    verb: openraft::ErrorVerb,
    subject: openraft::ErrorSubject<NodeId>,
    e: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes log entries and snapshots had before their bytes were `serde_bytes`: what is
    /// on disk and on the wire must read the same.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum OldCommand {
        Kv { op: Vec<u8> },
    }

    #[test]
    fn bytes_are_encoded_as_before() {
        let op = vec![1u8, 2, 3, 250];
        let new = bincode::serialize(&Command::Kv { op: op.clone() }).unwrap();
        let old = bincode::serialize(&OldCommand::Kv { op: op.clone() }).unwrap();
        assert_eq!(new, old);
        let back: Command = bincode::deserialize(&old).unwrap();
        assert_eq!(back, Command::Kv { op: op.clone() });
        let records_old = vec![("kv".to_string(), op.clone(), op.clone())];
        let records_new = vec![(
            "kv".to_string(),
            serde_bytes::ByteBuf::from(op.clone()),
            serde_bytes::ByteBuf::from(op),
        )];
        assert_eq!(
            bincode::serialize(&records_old).unwrap(),
            bincode::serialize(&records_new).unwrap()
        );
    }
}
