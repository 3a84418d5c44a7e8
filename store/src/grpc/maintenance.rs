//! The etcd Maintenance service: Status, HashKV, Alarm (list, activate and disarm, replicated
//! through the log), Defragment (flushes and compacts RocksDB's files) and Snapshot (a consistent
//! backup, see `StateMachine::backup`). MoveLeader and Downgrade answer Unimplemented for now.

use std::pin::Pin;
use std::sync::Arc;

use eden_proto::etcdserverpb::maintenance_server::Maintenance;
use eden_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::errors;
use crate::grpc::authz;
use crate::node::Node;
use crate::raft::{Command, Reply};

/// Snapshot streams carry the backup in pieces of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The etcd API version eden speaks (clients gate features on it).
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    pub node: Arc<Node>,
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("eden: {what} is not supported yet"))
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let req = request.into_inner();
        let to_pb = |list: Vec<(u64, i32)>| -> Vec<AlarmMember> {
            list.into_iter()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect()
        };
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => to_pb(
                self.node
                    .alarms()
                    .into_iter()
                    .filter(|(_, a)| req.alarm == AlarmType::None as i32 || *a == req.alarm)
                    .collect(),
            ),
            // etcd does nothing for an alarm of type NONE (clientv3 sends DEACTIVATE NONE for
            // member 0 only after expanding it into each alarm raised; older clients send it as is).
            Ok(_) if req.alarm == AlarmType::None as i32 => Vec::new(),
            Ok(action) => {
                let activate = action == AlarmAction::Activate;
                let r = self
                    .node
                    .propose(Command::Alarm {
                        activate,
                        member: req.member_id,
                        alarm: req.alarm,
                    })
                    .await?;
                match r.result {
                    Reply::Alarms(changed) => to_pb(changed),
                    other => return Err(errors::internal(format!("unexpected reply {other:?}"))),
                }
            }
            Err(_) => return Err(errors::invalid(errors::UNKNOWN_ALARM_ACTION)),
        };
        Ok(Response::new(AlarmResponse {
            header: Some(self.node.header()),
            alarms,
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Status)?;
        let m = self.node.raft().metrics().borrow().clone();
        let size = self.node.sm().engine.size_bytes();
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.node.id());
        Ok(Response::new(StatusResponse {
            header: Some(self.node.header()),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: self
                .node
                .core_failure()
                .map(|why| format!("raft core stopped: {why}"))
                .into_iter()
                .chain(self.node.alarms().into_iter().map(|(m, a)| {
                    format!(
                        "memberID:{m} alarm:{}",
                        AlarmType::try_from(a).map_or("UNKNOWN", |t| t.as_str_name())
                    )
                }))
                .collect(),
            db_size_in_use: size,
            is_learner,
            storage_version: ETCD_API_VERSION.into(),
            db_size_quota: self.node.config().quota_bytes,
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.sm().engine.defragment())
            .await
            .map_err(errors::internal)?;
        // etcd's Defragment answers without a header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let node = self.node.clone();
        // The header first: the hash then covers at least its revision (taken after, a write
        // applied meanwhile would be in the header and not in the hash).
        let header = self.node.header();
        let hash = tokio::task::spawn_blocking(move || node.mvcc().hash())
            .await
            .map_err(errors::internal)?
            .map_err(crate::grpc::kv::mvcc_status)?;
        Ok(Response::new(HashResponse {
            header: Some(header),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let rev = request.get_ref().revision;
        let node = self.node.clone();
        let (hash, compact_revision, hash_revision) =
            tokio::task::spawn_blocking(move || node.mvcc().hash_kv(rev))
                .await
                .map_err(errors::internal)?
                .map_err(crate::grpc::kv::mvcc_status)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header()),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let node = self.node.clone();
        let (backup, rev) = tokio::task::spawn_blocking(move || node.sm().backup())
            .await
            .map_err(errors::internal)?
            .map_err(errors::internal)?;
        let header = self.node.header_at(rev);
        let total = backup.len();
        let chunks: Vec<Result<SnapshotResponse, Status>> = backup
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                    version: ETCD_API_VERSION.into(),
                }))
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let to = request.into_inner().target_id;
        self.node.move_leader(to).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.node.header()),
        }))
    }

    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        Err(not_yet("downgrade"))
    }
}
