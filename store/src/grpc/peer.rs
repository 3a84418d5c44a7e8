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

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = from_payload(request.get_ref()).map_err(bad)?;
        Ok(Response::new(to_payload(
            &self.node.raft.append_entries(req).await,
        )))
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let req: VoteRequest<u64> = from_payload(request.get_ref()).map_err(bad)?;
        Ok(Response::new(to_payload(&self.node.raft.vote(req).await)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> =
            from_payload(request.get_ref()).map_err(bad)?;
        Ok(Response::new(to_payload(
            &self.node.raft.install_snapshot(req).await,
        )))
    }

    async fn forward(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let cmd: Command = from_payload(request.get_ref()).map_err(bad)?;
        Ok(Response::new(to_payload(
            &self.node.propose_local(cmd).await,
        )))
    }

    async fn read_index(&self, _request: Request<Payload>) -> Result<Response<Payload>, Status> {
        Ok(Response::new(to_payload(
            &self.node.read_index_local().await,
        )))
    }

    async fn membership(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let change: MembershipChange = from_payload(request.get_ref()).map_err(bad)?;
        Ok(Response::new(to_payload(
            &self.node.change_membership_local(change).await,
        )))
    }

    async fn lease_query(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let q: LeaseQuery = from_payload(request.get_ref()).map_err(bad)?;
        Ok(Response::new(to_payload(&self.node.lease_query_local(&q))))
    }
}
