//! The peer service: Raft RPCs, forwarded writes, read index and lease questions from other members.

use std::sync::Arc;

use eden_proto::peer::peer_server::Peer;
use eden_proto::peer::Payload;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::membership::MembershipChange;
use crate::node::{LeaseQuery, Node};
use crate::raft::network::{from_payload, to_payload};
use crate::raft::{Command, TypeConfig};

pub struct PeerService {
    pub node: Arc<Node>,
}

fn bad(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("bad peer payload: {e}"))
}

impl PeerService {
    /// Refuses a request from another cluster, or a Raft message meant for another member (a
    /// stopped member's address taken over by another one). 0 on either side is not checked.
    fn check(&self, p: &Payload) -> Result<(), Status> {
        let (mine, me) = (self.node.cluster_id, self.node.id);
        if p.cluster_id != 0 && mine != 0 && p.cluster_id != mine {
            return Err(Status::failed_precondition(format!(
                "a request from cluster {:x} reached a member of cluster {mine:x}",
                p.cluster_id
            )));
        }
        if p.to != 0 && p.to != me {
            return Err(Status::failed_precondition(format!(
                "a message for member {:x} reached member {me:x}",
                p.to
            )));
        }
        Ok(())
    }

    fn reply<T: serde::Serialize>(v: &T) -> Result<Response<Payload>, Status> {
        Ok(Response::new(to_payload(v, 0)))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.check(request.get_ref())?;
        let req: AppendEntriesRequest<TypeConfig> = from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.check(request.get_ref())?;
        let req: VoteRequest<u64> = from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        self.check(request.get_ref())?;
        let req: InstallSnapshotRequest<TypeConfig> =
            from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.raft.install_snapshot(req).await)
    }

    async fn forward(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.check(request.get_ref())?;
        let cmd: Command = from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.propose_local(cmd).await)
    }

    async fn read_index(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.check(request.get_ref())?;
        Self::reply(&self.node.read_index_local().await)
    }

    async fn membership(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.check(request.get_ref())?;
        let change: MembershipChange = from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.change_membership_local(change).await)
    }

    async fn lease_query(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.check(request.get_ref())?;
        let q: LeaseQuery = from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.lease_query_local(&q))
    }
}
