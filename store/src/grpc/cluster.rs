//! The etcd Cluster service: list, add, remove, update and promote members (see
//! [`crate::membership`] for the rules).

use std::sync::Arc;

use eden_proto::etcdserverpb::cluster_server::Cluster;
use eden_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::errors::{self, internal};
use crate::grpc::authz;
use crate::membership::{peer_addr_of, MembershipChange};
use crate::node::Node;

pub struct ClusterService {
    pub node: Arc<Node>,
}

fn one_peer_url(urls: &[String]) -> Result<String, Status> {
    match urls {
        [one] if !one.trim().is_empty() => Ok(peer_addr_of(one)),
        _ => Err(errors::one_peer_url()),
    }
}

impl ClusterService {
    fn members(&self) -> Result<Vec<Member>, Status> {
        self.node.members().map_err(internal)
    }
}

impl ClusterService {
    /// etcd's Cluster header: the cluster, member and term, no revision (membership is not in
    /// the keyspace's revisions).
    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: 0,
            ..self.node.header()
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let req = request.into_inner();
        let peer_addr = one_peer_url(&req.peer_ur_ls)?;
        let id = self
            .node
            .change_membership(MembershipChange::Add {
                peer_addr: peer_addr.clone(),
                learner: req.is_learner,
            })
            .await?
            .ok_or_else(|| internal("member add returned no id"))?;
        // The new member may not be in this member's view yet: describe it from the request.
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: vec![format!("http://{peer_addr}")],
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        Ok(Response::new(MemberAddResponse {
            header: Some(self.header()),
            member: Some(member),
            members: self.members()?,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let id = request.into_inner().id;
        self.node
            .change_membership(MembershipChange::Remove { id })
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.header()),
            members: self.members()?,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let req = request.into_inner();
        let peer_addr = one_peer_url(&req.peer_ur_ls)?;
        self.node
            .change_membership(MembershipChange::Update {
                id: req.id,
                peer_addr,
            })
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.header()),
            members: self.members()?,
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::MemberList)?;
        if request.get_ref().linearizable {
            self.node.refuse_learner()?;
            self.node.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.header()),
            members: self.members()?,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let id = request.into_inner().id;
        self.node
            .change_membership(MembershipChange::Promote { id })
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.header()),
            members: self.members()?,
        }))
    }
}
