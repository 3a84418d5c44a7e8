//! The etcd KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;
use std::time::Duration;

use eden_proto::etcdserverpb::kv_server::Kv;
use eden_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{authz, validate};
use crate::auth;
use crate::errors::{internal, refused};
use crate::keys::META_COMPACT_DONE;
use crate::mvcc::MvccError;
use crate::node::Node;
use crate::raft::{Command, Reply};

pub struct KvService {
    pub node: Arc<Node>,
}

pub fn mvcc_status(e: MvccError) -> Status {
    match e {
        MvccError::Apply(a) => refused(&a),
        MvccError::Engine(e) => internal(e),
    }
}

/// Puts this member's header on a response's nested headers too (etcd fills them all).
fn set_headers(resp: &mut ResponseOp, h: &ResponseHeader) {
    let with_rev = |rev: i64| ResponseHeader {
        revision: rev,
        ..*h
    };
    match &mut resp.response {
        Some(response_op::Response::ResponseRange(r)) => {
            r.header = Some(with_rev(r.header.map_or(h.revision, |x| x.revision)))
        }
        Some(response_op::Response::ResponsePut(r)) => {
            r.header = Some(with_rev(r.header.map_or(h.revision, |x| x.revision)))
        }
        Some(response_op::Response::ResponseDeleteRange(r)) => {
            r.header = Some(with_rev(r.header.map_or(h.revision, |x| x.revision)))
        }
        Some(response_op::Response::ResponseTxn(t)) => {
            t.header = Some(with_rev(t.header.map_or(h.revision, |x| x.revision)));
            for r in &mut t.responses {
                set_headers(r, h);
            }
        }
        None => {}
    }
}

impl KvService {
    async fn write(&self, op: RequestOp) -> Result<ResponseOp, Status> {
        write_op(&self.node, op).await
    }
}

/// One JSON object as this member holds it now, with its mod revision (the join and Auth
/// services' records).
pub fn read_json<T: serde::de::DeserializeOwned>(
    node: &Node,
    key: &str,
) -> Result<Option<(T, i64)>, Status> {
    let r = node
        .mvcc()
        .range(&RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .map_err(mvcc_status)?;
    match r.kvs.first() {
        None => Ok(None),
        Some(kv) => Ok(Some((
            serde_json::from_slice(&kv.value).map_err(internal)?,
            kv.mod_revision,
        ))),
    }
}

/// Proposes a KV write and returns the applied response with full headers.
pub async fn write_op(node: &Node, op: RequestOp) -> Result<ResponseOp, Status> {
    let r = node
        .propose(Command::Kv {
            op: op.encode_to_vec(),
        })
        .await?;
    match r.result {
        Reply::Kv(raw) => {
            let mut resp = ResponseOp::decode(raw.as_slice()).map_err(internal)?;
            set_headers(&mut resp, &node.header_at(r.revision));
            Ok(resp)
        }
        Reply::Refused(e) => Err(refused(&e)),
        other => Err(internal(format!("unexpected reply {other:?}"))),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = authz::caller(&self.node, &request)?;
        let req = request.into_inner();
        validate::size(&req, self.node.config().max_request_bytes)?;
        validate::range(&req)?;
        if !req.serializable {
            self.node.refuse_learner()?;
            self.node.read_barrier().await?;
        }
        // After the barrier: the rights are those of the state the read sees.
        authz::allow(&self.node, &caller, |f| {
            auth::check_read(&caller, &req.key, &req.range_end, f)
        })?;
        let mut resp = self.node.mvcc().range(&req).map_err(mvcc_status)?;
        resp.header = Some(self.node.header_at(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = authz::caller(&self.node, &request)?;
        let req = request.into_inner();
        validate::size(&req, self.node.config().max_request_bytes)?;
        validate::put(&req)?;
        authz::allow(&self.node, &caller, |f| {
            auth::check_write(&caller, &req.key, &[], f)
        })?;
        self.node.refuse_learner()?;
        self.node.check_quota().await?;
        let mut op = RequestOp {
            request: Some(request_op::Request::RequestPut(req)),
        };
        self.node.admit_events(&mut op).await?;
        match self.write(op).await?.response {
            Some(response_op::Response::ResponsePut(r)) => Ok(Response::new(r)),
            _ => Err(internal("put answered with another response")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = authz::caller(&self.node, &request)?;
        let req = request.into_inner();
        validate::size(&req, self.node.config().max_request_bytes)?;
        validate::delete(&req)?;
        authz::allow(&self.node, &caller, |f| {
            auth::check_write(&caller, &req.key, &req.range_end, f)
        })?;
        self.node.refuse_learner()?;
        match self
            .write(RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(req)),
            })
            .await?
            .response
        {
            Some(response_op::Response::ResponseDeleteRange(r)) => Ok(Response::new(r)),
            _ => Err(internal("delete answered with another response")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = authz::caller(&self.node, &request)?;
        let req = request.into_inner();
        validate::size(&req, self.node.config().max_request_bytes)?;
        validate::txn(&req, self.node.config().max_txn_ops)?;
        authz::allow(&self.node, &caller, |f| auth::check_txn(&caller, &req, f))?;
        self.node.refuse_learner()?;
        if validate::has_puts(&req) {
            self.node.check_quota().await?;
        }
        let mut op = RequestOp {
            request: Some(request_op::Request::RequestTxn(req)),
        };
        self.node.admit_events(&mut op).await?;
        let mut resp = if validate::read_only(match &op.request {
            Some(request_op::Request::RequestTxn(t)) => t,
            _ => unreachable!(),
        }) {
            // A read-only txn needs no log entry: a read barrier (unless every range is
            // serializable) and an evaluation that writes nothing.
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                if !validate::all_serializable(t) {
                    self.node.read_barrier().await?;
                }
            }
            let mut batch = self.node.mvcc().batch();
            let mut resp = batch.apply_op(&op).map_err(mvcc_status)?;
            set_headers(&mut resp, &self.node.header());
            resp
        } else {
            self.write(op).await?
        };
        match resp.response.take() {
            Some(response_op::Response::ResponseTxn(t)) => Ok(Response::new(t)),
            _ => Err(internal("txn answered with another response")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        authz::require_rpc(&self.node, &request, auth::Rpc::Admin)?;
        let req = request.into_inner();
        self.node.refuse_learner()?;
        let r = self
            .node
            .propose(Command::Compact {
                revision: req.revision,
            })
            .await?;
        if let Reply::Refused(e) = &r.result {
            return Err(refused(e));
        }
        if req.physical {
            // Wait until this member removed the old versions.
            for _ in 0..600 {
                let done: i64 = self
                    .node
                    .sm()
                    .engine
                    .get_meta(META_COMPACT_DONE)
                    .map_err(internal)?
                    .unwrap_or(0);
                if done >= req.revision {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(Response::new(CompactionResponse {
            header: Some(self.node.header_at(r.revision)),
        }))
    }
}
