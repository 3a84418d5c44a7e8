//! eden's `Tasks.Create` on the client port: a task's spec and its assignments in one log entry.
//!
//! The txn is the one a client would send ([`eden_proto::model::tasks::store_txn`]), built here
//! from the spec and written through the KV service's own path (the authorizer on every key, the
//! quota, the check at apply): only etcd's cap on a txn's operations does not apply, which would
//! cut a task on 10,000 nodes into 84 txns. Decision 0029.

use std::sync::Arc;

use eden_proto::model::keys;
use eden_proto::model::objects::TaskSpec;
use eden_proto::model::tasks;
use eden_proto::tasks::tasks_server::Tasks;
use eden_proto::tasks::{CreateRequest, CreateResponse};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{authz, kv::KvService, validate};
use crate::node::Node;

/// The most targets one task may name.
pub const MAX_TARGETS: usize = 100_000;

/// The largest txn a task may make (each assignment carries the spec without its targets): well
/// under what one peer message may carry (64 MiB).
pub const MAX_TASK_BYTES: usize = 32 << 20;

pub struct TasksService {
    pub node: Arc<Node>,
}

/// The spec, checked: an ID that is one name, at least one target, each a node name.
fn spec(json: &[u8]) -> Result<TaskSpec, Status> {
    let spec: TaskSpec = serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("eden: not a task spec: {e}")))?;
    keys::check_name("task ID", &spec.id).map_err(Status::invalid_argument)?;
    if spec.targets.is_empty() {
        return Err(Status::invalid_argument("eden: the task names no target"));
    }
    if spec.targets.len() > MAX_TARGETS {
        return Err(Status::invalid_argument(format!(
            "eden: the task names {} targets, more than {MAX_TARGETS}",
            spec.targets.len()
        )));
    }
    for n in &spec.targets {
        keys::check_node_name(n).map_err(Status::invalid_argument)?;
    }
    Ok(spec)
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(
        &self,
        request: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let cert = authz::cert_of(&self.node, &request)?;
        let spec = spec(&request.into_inner().spec_json)?;
        let txn = tasks::store_txn(&spec);
        let bytes = txn.encoded_len();
        if bytes > MAX_TASK_BYTES {
            return Err(Status::invalid_argument(format!(
                "eden: the task would take {bytes} bytes, more than {MAX_TASK_BYTES}: fewer \
                 targets, or a smaller script"
            )));
        }
        // Every check of a txn but the cap on its operations (a duplicate target is refused
        // here, as a key put twice).
        validate::txn(&txn, usize::MAX)?;
        let kv = KvService {
            node: self.node.clone(),
        };
        let t = kv.txn_write(cert.as_ref(), txn, true).await?;
        Ok(Response::new(CreateResponse {
            created: t.succeeded,
            revision: t.header.map_or(0, |h| h.revision),
        }))
    }
}
