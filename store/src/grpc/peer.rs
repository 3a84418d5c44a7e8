//! The peer service: Raft RPCs, forwarded writes, read index and lease questions from other members.

use std::sync::Arc;

use eden_proto::peer::peer_server::Peer;
use eden_proto::peer::Payload;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::grpc::authz;
use crate::membership::MembershipChange;
use crate::node::ask::{Answer, Ask};
use crate::node::{ForwardError, LeadershipRequest, LeaseQuery, Node};
use crate::raft::network::{from_payload, to_payload};
use crate::raft::{Command, Response as Reply, TypeConfig};

pub struct PeerService {
    pub node: Arc<Node>,
    /// Where work on behalf of clients runs (forwarded writes, read-index questions, lease
    /// keep-alives): the client runtime, so that the peer port's own threads stay free for
    /// Raft's messages (see `eden server`'s two runtimes).
    pub client_work: tokio::runtime::Handle,
}

fn bad(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("bad peer payload: {e}"))
}

impl PeerService {
    /// Refuses a request from another cluster, or a Raft message meant for another member (a
    /// stopped member's address taken over by another one). 0 on either side is not checked.
    fn check(&self, p: &Payload) -> Result<(), Status> {
        Self::check_for(&self.node, p)
    }

    fn check_for(node: &Node, p: &Payload) -> Result<(), Status> {
        let (mine, me) = (node.cluster_id(), node.id());
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

    /// Runs client work on the client runtime and answers with its result.
    async fn on_client_runtime<T, F>(&self, work: F) -> Result<Response<Payload>, Status>
    where
        T: serde::Serialize + Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let r = self
            .client_work
            .spawn(work)
            .await
            .map_err(|e| Status::internal(format!("peer request failed: {e}")))?;
        Self::reply(&r)
    }
}

/// Checks that an append-entries request's entries directly follow its `prev_log_id` and each
/// other. openraft 0.9.25 checks this only in debug builds; a release build appends such a request
/// as it is, leaving a hole in the log that panics the Raft core when it is applied. A replication
/// task that outlived its leader's term can send one (design/decisions/0009), so every member
/// refuses them before they reach Raft.
pub fn check_consecutive(req: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    use openraft::RaftLogId;
    let mut expected = req.prev_log_id.map_or(0, |p| p.index + 1);
    for e in &req.entries {
        let index = e.get_log_id().index;
        if index != expected {
            return Err(format!(
                "append-entries entry {index} does not follow {} (prev_log_id {})",
                expected as i128 - 1,
                req.prev_log_id
                    .map_or("none".to_string(), |p| p.to_string())
            ));
        }
        expected = index + 1;
    }
    Ok(())
}

/// Appends one request's entries (checked as [`Peer::append_entries`] does) and answers.
async fn append_one(node: &Node, p: &Payload) -> Result<Payload, Status> {
    PeerService::check_for(node, p)?;
    let req: AppendEntriesRequest<TypeConfig> = from_payload(p).map_err(bad)?;
    if let Err(e) = check_consecutive(&req) {
        tracing::warn!(error = %e, vote = %req.vote, "refused an append-entries request");
        return Err(Status::invalid_argument(e));
    }
    Ok(to_payload(&node.raft().append_entries(req).await, 0))
}

type AppendAnswers =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Payload, Status>> + Send + 'static>>;

/// Questions on one `Ask` stream answered at a time; the next one is read when one is done.
pub const ASK_IN_FLIGHT: usize = 64;

/// Proposes forwarded writes, each as if it came alone (they join the leader's group commit).
async fn propose_all(node: &Node, cmds: Vec<Command>) -> Vec<Result<Reply, ForwardError>> {
    futures::future::join_all(cmds.into_iter().map(|cmd| node.propose_local(cmd))).await
}

/// Answers one question from a follower (on the client runtime).
async fn answer(node: Arc<Node>, ask: Ask) -> Answer {
    match ask {
        Ask::Writes(cmds) => Answer::Writes(propose_all(&node, cmds).await),
        Ask::ReadIndex => Answer::ReadIndex(node.read_index_local().await),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        append_one(&self.node, request.get_ref())
            .await
            .map(Response::new)
    }

    type AppendStreamStream = AppendAnswers;

    /// Each request on the stream as [`Peer::append_entries`], in order; the caller's certificate
    /// is checked once for the stream and again (revocation, expiry) before each request.
    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<Payload>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        let cert = authz::member_stream(&self.node, &request)?;
        let node = self.node.clone();
        let requests = request.into_inner();
        let answers = futures::stream::unfold(Some((requests, node, cert)), |state| async move {
            let (mut requests, node, cert) = state?;
            let p = match requests.message().await {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(status) => return Some((Err(status), None)),
            };
            if let Err(status) = authz::still_member(&node, &cert) {
                return Some((Err(status), None));
            }
            match append_one(&node, &p).await {
                Ok(answer) => Some((Ok(answer), Some((requests, node, cert)))),
                // The stream ends after a refused request, as a unary call would fail.
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    type AskStream = AppendAnswers;

    /// Each question on the stream as [`Peer::forward_batch`] or [`Peer::read_index`] would
    /// answer it, up to [`ASK_IN_FLIGHT`] at a time, each answer sent when it is ready with its
    /// question's id. The caller's certificate is checked once for the stream and again
    /// (revocation, expiry) before each question; the stream ends after a refused one.
    async fn ask(
        &self,
        request: Request<tonic::Streaming<Payload>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        let cert = authz::member_stream(&self.node, &request)?;
        let (node, work) = (self.node.clone(), self.client_work.clone());
        let mut questions = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(ASK_IN_FLIGHT + 1);
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(ASK_IN_FLIGHT));
            while let Ok(Some(p)) = questions.message().await {
                let checked = authz::still_member(&node, &cert)
                    .and_then(|_| Self::check_for(&node, &p))
                    .and_then(|_| from_payload::<(u64, Ask)>(&p).map_err(bad));
                let (id, ask) = match checked {
                    Ok(q) => q,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (node, tx) = (node.clone(), tx.clone());
                work.spawn(async move {
                    let a = answer(node, ask).await;
                    let _ = tx.send(Ok(to_payload(&(id, a), 0))).await;
                    drop(slot);
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        self.check(request.get_ref())?;
        let req: VoteRequest<u64> = from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.raft().vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Payload>,
    ) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        self.check(request.get_ref())?;
        let req: InstallSnapshotRequest<TypeConfig> =
            from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.raft().install_snapshot(req).await)
    }

    async fn forward_batch(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        self.check(request.get_ref())?;
        let cmds: Vec<Command> = from_payload(request.get_ref()).map_err(bad)?;
        let node = self.node.clone();
        self.on_client_runtime(async move { propose_all(&node, cmds).await })
            .await
    }

    async fn read_index(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        self.check(request.get_ref())?;
        let node = self.node.clone();
        self.on_client_runtime(async move { node.read_index_local().await })
            .await
    }

    async fn membership(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        self.check(request.get_ref())?;
        let change: MembershipChange = from_payload(request.get_ref()).map_err(bad)?;
        Self::reply(&self.node.change_membership_local(change).await)
    }

    async fn leadership(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        self.check(request.get_ref())?;
        let req: LeadershipRequest = from_payload(request.get_ref()).map_err(bad)?;
        let node = self.node.clone();
        match req {
            LeadershipRequest::Probe => Self::reply(&node.probe_local()),
            LeadershipRequest::AutopilotState => Self::reply(&node.autopilot_status_local()),
            LeadershipRequest::MoveTo(to) => {
                self.on_client_runtime(async move { node.move_leader_local(to).await })
                    .await
            }
            LeadershipRequest::CampaignNow => {
                self.on_client_runtime(async move { node.campaign_now().await })
                    .await
            }
        }
    }

    async fn lease_query(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        authz::require_member(&self.node, &request)?;
        self.check(request.get_ref())?;
        let q: LeaseQuery = from_payload(request.get_ref()).map_err(bad)?;
        let node = self.node.clone();
        self.on_client_runtime(async move { node.lease_query_local(&q) })
            .await
    }
}
