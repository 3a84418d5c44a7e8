//! The etcd Lease service. Grants and revokes go through the log; keep-alives and time-to-live
//! questions go to the leader, which holds the deadlines (see [`crate::lease`]).

use std::pin::Pin;
use std::sync::Arc;

use eden_proto::etcdserverpb::lease_server::Lease;
use eden_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Caller, StoreFacts};
use crate::errors::{internal, refused};
use crate::grpc::authz;
use crate::node::{LeaseAnswer, LeaseQuery, Node};
use crate::raft::{Command, Reply};

pub struct LeaseService {
    pub node: Arc<Node>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::LeaseGrant)?;
        self.node.refuse_learner()?;
        let req = request.into_inner();
        let (id, ttl, rev) = self.node.lease_grant(req.id, req.ttl).await?;
        Ok(Response::new(LeaseGrantResponse {
            header: Some(self.node.header_at(rev)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = authz::caller(&self.node, &request)?;
        self.node.refuse_learner()?;
        let req = request.into_inner();
        allow_lease(&self.node, &caller, req.id)?;
        let r = self
            .node
            .propose(Command::LeaseRevoke { id: req.id })
            .await?;
        if let Reply::Refused(e) = &r.result {
            return Err(refused(e));
        }
        Ok(Response::new(LeaseRevokeResponse {
            header: Some(self.node.header_at(r.revision)),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.keep_alive(request)
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = authz::caller(&self.node, &request)?;
        self.node.refuse_learner()?;
        let req = request.into_inner();
        let header = Some(self.node.header());
        match self
            .node
            .lease_query(LeaseQuery::TimeToLive(req.id))
            .await?
        {
            LeaseAnswer::Remaining(Some((ttl, granted))) => {
                let keys = if req.keys {
                    // Only the keys the caller may read.
                    let mut keys = self.node.mvcc().lease_keys(req.id).map_err(internal)?;
                    if !caller.is_root() {
                        let facts = StoreFacts::new(self.node.mvcc());
                        keys.retain(|k| auth::may_read_key(&caller, k, &facts));
                    }
                    keys
                } else {
                    Vec::new()
                };
                Ok(Response::new(LeaseTimeToLiveResponse {
                    header,
                    id: req.id,
                    ttl,
                    granted_ttl: granted,
                    keys,
                }))
            }
            LeaseAnswer::Remaining(None) => Ok(Response::new(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                ..Default::default()
            })),
            other => Err(internal(format!("unexpected lease answer {other:?}"))),
        }
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::LeaseList)?;
        self.node.refuse_learner()?;
        let leases = self.node.mvcc().leases().map_err(internal)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header()),
            leases: leases
                .into_iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect(),
        }))
    }
}

impl LeaseService {
    /// Answers each keep-alive of `request`'s stream (from gRPC or the HTTP/JSON gateway),
    /// checked as its caller.
    pub fn keep_alive<S>(&self, request: Request<S>) -> Result<Response<KeepAliveStream>, Status>
    where
        S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + 'static,
    {
        let (caller, cert) = authz::caller_and_cert(&self.node, &request)?;
        self.node.refuse_learner()?;
        let mut inbound = Box::pin(request.into_inner());
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                // A revoked certificate's keep-alives stop at once.
                let checked = match &cert {
                    Some(info) => authz::still_valid(&node, info),
                    None => Ok(()),
                };
                if let Err(denied) = checked.and_then(|_| allow_lease(&node, &caller, req.id)) {
                    let _ = tx.send(Err(denied)).await;
                    return;
                }
                let resp = match node.lease_query(LeaseQuery::KeepAlive(req.id)).await {
                    Ok(LeaseAnswer::Ttl(ttl)) => Ok(LeaseKeepAliveResponse {
                        header: Some(node.header()),
                        id: req.id,
                        ttl,
                    }),
                    Ok(other) => Err(internal(format!("unexpected lease answer {other:?}"))),
                    Err(e) => Err(e),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Keeping a lease alive or revoking it needs the right to write every key attached to it.
fn allow_lease(node: &Node, caller: &Caller, id: i64) -> Result<(), Status> {
    if caller.is_root() {
        return Ok(());
    }
    let attached = node.mvcc().lease_keys(id).map_err(internal)?;
    authz::allow(node, caller, |f| auth::check_lease(caller, &attached, f))
}
