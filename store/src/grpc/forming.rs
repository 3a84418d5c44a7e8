//! The forming call (`eden.forming.Forming` on the client port, see [`crate::forming`]): answered
//! by a server that is forming a cluster (its promises) and by a member of a running cluster
//! (that it runs, and its members, so that a late server joins it). On a secure server only
//! members and admins may call it.

use std::sync::Arc;

use eden_proto::forming::forming_server::Forming as FormingApi;
use eden_proto::forming::{
    CommitRequest, CommitResponse, DiscoverRequest, DiscoverResponse, PromiseRequest,
    PromiseResponse, ReleaseRequest, ReleaseResponse, Server,
};
use eden_proto::pki::Identity;
use tonic::{Request, Response, Status};

use crate::errors;
use crate::forming::Forming;
use crate::grpc::authz;
use crate::membership::peer_addr_of;
use crate::node::Node;

/// Who answers the forming call.
pub enum FormingService {
    /// A server without data, forming a cluster; `secure` when its port speaks TLS.
    Forming { state: Arc<Forming>, secure: bool },
    /// A member of a running cluster.
    Running(Arc<Node>),
}

impl FormingService {
    /// Only members and admins: forming decides who the cluster's members are.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let info = match self {
            FormingService::Forming { secure: false, .. } => return Ok(()),
            FormingService::Forming { secure: true, .. } => authz::peer_cert(req)?,
            FormingService::Running(node) => match authz::cert_of(node, req)? {
                None => return Ok(()),
                Some(info) => {
                    authz::still_valid(node, &info)?;
                    info
                }
            },
        };
        match info.identity {
            Identity::Member(_) | Identity::Admin(_) => Ok(()),
            other => {
                tracing::warn!(caller = %other, "refused: only members and admins may form or read autopilot");
                if let FormingService::Running(node) = self {
                    node.audit_denied(
                        &other.to_string(),
                        "only members and admins may call Forming and Autopilot",
                    );
                }
                Err(errors::permission_denied())
            }
        }
    }
}

#[tonic::async_trait]
impl FormingApi for FormingService {
    async fn discover(
        &self,
        req: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(match self {
            FormingService::Forming { state, .. } => state.discover(),
            FormingService::Running(node) => {
                let members = node
                    .members()
                    .map_err(|e| errors::internal(e.to_string()))?
                    .into_iter()
                    .map(|m| Server {
                        name: m.name,
                        peer_addr: m
                            .peer_ur_ls
                            .first()
                            .map(|u| peer_addr_of(u))
                            .unwrap_or_default(),
                        client_addr: m
                            .client_ur_ls
                            .first()
                            .map(|u| peer_addr_of(u))
                            .unwrap_or_default(),
                    })
                    .collect();
                let c = node.config();
                DiscoverResponse {
                    server: Some(Server {
                        name: c.name.clone(),
                        peer_addr: c.peer_addr.clone(),
                        client_addr: c.client_addr.clone(),
                    }),
                    instance: format!("member-{:x}", node.id()),
                    expect: 0,
                    promised_to: String::new(),
                    members,
                    running: true,
                    cluster_id: node.cluster_id(),
                }
            }
        }))
    }

    async fn promise(
        &self,
        req: Request<PromiseRequest>,
    ) -> Result<Response<PromiseResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(match self {
            FormingService::Forming { state, .. } => state.promise(req.into_inner()),
            FormingService::Running(node) => PromiseResponse {
                granted: false,
                reason: format!("{} is a member of a running cluster", node.config().name),
            },
        }))
    }

    async fn commit(
        &self,
        req: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(match self {
            FormingService::Forming { state, .. } => state.commit(req.into_inner()),
            FormingService::Running(_) => CommitResponse {},
        }))
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(match self {
            FormingService::Forming { state, .. } => state.release(req.into_inner()),
            FormingService::Running(_) => ReleaseResponse {},
        }))
    }
}

/// `eden.forming.Autopilot` on the client port: what the leader's autopilot sees, asked of the
/// leader by any member. Members and admins only.
pub struct AutopilotService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl eden_proto::forming::autopilot_server::Autopilot for AutopilotService {
    async fn state(
        &self,
        req: Request<eden_proto::forming::StateRequest>,
    ) -> Result<Response<eden_proto::forming::StateResponse>, Status> {
        FormingService::Running(self.node.clone()).check(&req)?;
        let status = self.node.autopilot_status().await?;
        Ok(Response::new(eden_proto::forming::StateResponse {
            status_json: serde_json::to_string(&status)
                .map_err(|e| errors::internal(e.to_string()))?,
        }))
    }
}
