//! The etcd KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;
use std::time::Duration;

use eden_proto::etcdserverpb::kv_server::Kv;
use eden_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use eden_proto::pki;
use prost::Message;
use tonic::{Request, Response, Status};

use super::{authz, validate};
use crate::auth::{self, Seen, StoreFacts};
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

/// Puts this member's header on a response; a txn's nested responses get a header with their
/// revision only, as etcd 3.4 and 3.5 give them.
fn set_headers(resp: &mut ResponseOp, h: &ResponseHeader) {
    fill_headers(resp, h, true);
}

fn fill_headers(resp: &mut ResponseOp, h: &ResponseHeader, top: bool) {
    let make = |old: &Option<ResponseHeader>| {
        let revision = old.as_ref().map_or(h.revision, |x| x.revision);
        Some(if top {
            ResponseHeader { revision, ..*h }
        } else {
            ResponseHeader {
                revision,
                ..Default::default()
            }
        })
    };
    match &mut resp.response {
        Some(response_op::Response::ResponseRange(r)) => r.header = make(&r.header),
        Some(response_op::Response::ResponsePut(r)) => r.header = make(&r.header),
        Some(response_op::Response::ResponseDeleteRange(r)) => r.header = make(&r.header),
        Some(response_op::Response::ResponseTxn(t)) => {
            t.header = make(&t.header);
            for r in &mut t.responses {
                fill_headers(r, h, false);
            }
        }
        None => {}
    }
}

/// How many times a write whose caller's rights changed between its check and its application is
/// checked and proposed again before the caller is told to try again.
const GUARD_ATTEMPTS: usize = 5;

/// `op` applied only if every key in `seen` still has the same mod revision when it is applied:
/// a txn comparing them, with `op` its only success.
fn guarded(op: &RequestOp, seen: &Seen) -> RequestOp {
    use eden_proto::etcdserverpb::{compare, Compare};
    RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare: seen
                .iter()
                .map(|(key, rev)| Compare {
                    key: key.clone(),
                    target: compare::CompareTarget::Mod as i32,
                    result: compare::CompareResult::Equal as i32,
                    target_union: Some(compare::TargetUnion::ModRevision(*rev)),
                    range_end: Vec::new(),
                })
                .collect(),
            success: vec![op.clone()],
            failure: Vec::new(),
        })),
    }
}

impl KvService {
    /// Refuses a write that would store a file over the cap per file, or take all files over
    /// the cap for the cluster (files are for configuration, not binaries).
    fn check_files(&self, op: &RequestOp) -> Result<(), Status> {
        use eden_proto::model::files::FileMeta;
        use eden_proto::model::keys;
        let mut all = Vec::new();
        validate::puts(op, &mut all);
        let files: Vec<_> = all
            .into_iter()
            .filter(|p| p.key.starts_with(keys::FILES_DATA.as_bytes()))
            .collect();
        if files.is_empty() {
            return Ok(());
        }
        let config = self.node.config();
        let name =
            |p: &PutRequest| String::from_utf8_lossy(&p.key[keys::FILES_DATA.len()..]).into_owned();
        for p in &files {
            if p.value.len() > config.max_file_bytes {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: file {} is {} bytes, over the cap of {} per file \
                     (--max-file-bytes): files are for configuration, not binaries",
                    name(p),
                    p.value.len(),
                    config.max_file_bytes
                )));
            }
        }
        let stored = self
            .node
            .mvcc()
            .range(&RangeRequest {
                key: keys::FILES_META.into(),
                range_end: eden_proto::keys::prefix_end(keys::FILES_META.as_bytes()),
                ..Default::default()
            })
            .map_err(mvcc_status)?;
        let replaced: Vec<String> = files.iter().map(|p| name(p)).collect();
        let kept: u64 = stored
            .kvs
            .iter()
            .filter(|kv| {
                !replaced
                    .iter()
                    .any(|n| kv.key == keys::file_meta(n).as_bytes())
            })
            .filter_map(|kv| serde_json::from_slice::<FileMeta>(&kv.value).ok())
            .map(|m| m.size)
            .sum();
        let total = kept + files.iter().map(|p| p.value.len() as u64).sum::<u64>();
        if total > config.max_files_bytes {
            return Err(Status::invalid_argument(format!(
                "etcdserver: files would hold {total} bytes, over the cluster's cap of {} \
                 (--max-files-bytes): files are for configuration, not binaries",
                config.max_files_bytes
            )));
        }
        Ok(())
    }

    async fn write(&self, op: RequestOp) -> Result<ResponseOp, Status> {
        write_op(&self.node, op).await
    }

    /// A txn that writes (already validated): authorized, checked against the caps on files,
    /// quota and events, proposed. Also what `Tasks.Create` writes.
    pub(crate) async fn txn_write(
        &self,
        cert: Option<&pki::CertInfo>,
        req: TxnRequest,
        puts: bool,
    ) -> Result<TxnResponse, Status> {
        let mut op = RequestOp {
            request: Some(request_op::Request::RequestTxn(req)),
        };
        let seen = self.authorize(cert, &op)?;
        self.check_files(&op)?;
        self.node.refuse_learner()?;
        if puts {
            self.node.check_quota().await?;
        }
        self.node.admit_events(&mut op).await?;
        match self.write_authorized(op, cert, seen).await?.response {
            Some(response_op::Response::ResponseTxn(t)) => Ok(t),
            _ => Err(internal("txn answered with another response")),
        }
    }

    /// Authorizes `op` for the certificate's caller on this member's state; returns what the
    /// check read (the certificate's revocations, a user's roles, a node's labels and
    /// assignments).
    fn authorize(&self, cert: Option<&pki::CertInfo>, op: &RequestOp) -> Result<Seen, Status> {
        let facts = StoreFacts::recording(self.node.mvcc());
        let caller = authz::caller_in(cert, &facts)?;
        authz::allow_in(&self.node, &caller, &facts, |f| {
            auth::check_op(&caller, op, f)
        })?;
        Ok(facts.seen())
    }

    /// Proposes an authorized write so that it is applied only as authorized: the member that
    /// checked it may trail the leader, so the keys the check read are compared when the write is
    /// applied, and a write whose rights changed in between is checked again on this member's
    /// newer state (a right revoked a moment ago is never used). Nothing is read on an insecure
    /// member, and nothing compared.
    async fn write_authorized(
        &self,
        op: RequestOp,
        cert: Option<&pki::CertInfo>,
        mut seen: Seen,
    ) -> Result<ResponseOp, Status> {
        if seen.is_empty() {
            return self.write(op).await;
        }
        for _ in 0..GUARD_ATTEMPTS {
            match self.write(guarded(&op, &seen)).await?.response {
                Some(response_op::Response::ResponseTxn(mut t)) if t.succeeded => {
                    let mut resp = t
                        .responses
                        .pop()
                        .ok_or_else(|| internal("a guarded write answered nothing"))?;
                    // The write's answer is the top one: the member's full header.
                    set_headers(&mut resp, &t.header.unwrap_or_default());
                    return Ok(resp);
                }
                Some(response_op::Response::ResponseTxn(_)) => {
                    crate::metrics::metrics().authorized_writes_rechecked.inc();
                    seen = self.authorize(cert, &op)?;
                }
                _ => return Err(internal("a guarded write answered with another response")),
            }
        }
        Err(Status::unavailable(
            "etcdserver: the caller's rights kept changing while the write was applied; try again",
        ))
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
        let cert = authz::cert_of(&self.node, &request)?;
        let req = request.into_inner();
        validate::size(&req, self.node.config().max_request_bytes)?;
        validate::put(&req)?;
        let mut op = RequestOp {
            request: Some(request_op::Request::RequestPut(req)),
        };
        let seen = self.authorize(cert.as_ref(), &op)?;
        self.check_files(&op)?;
        self.node.refuse_learner()?;
        self.node.check_quota().await?;
        self.node.admit_events(&mut op).await?;
        match self
            .write_authorized(op, cert.as_ref(), seen)
            .await?
            .response
        {
            Some(response_op::Response::ResponsePut(r)) => Ok(Response::new(r)),
            _ => Err(internal("put answered with another response")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let cert = authz::cert_of(&self.node, &request)?;
        let req = request.into_inner();
        validate::size(&req, self.node.config().max_request_bytes)?;
        validate::delete(&req)?;
        let op = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(req)),
        };
        let seen = self.authorize(cert.as_ref(), &op)?;
        self.node.refuse_learner()?;
        match self
            .write_authorized(op, cert.as_ref(), seen)
            .await?
            .response
        {
            Some(response_op::Response::ResponseDeleteRange(r)) => Ok(Response::new(r)),
            _ => Err(internal("delete answered with another response")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let cert = authz::cert_of(&self.node, &request)?;
        let req = request.into_inner();
        validate::size(&req, self.node.config().max_request_bytes)?;
        validate::txn(&req, self.node.config().max_txn_ops)?;
        let (read_only, serializable, puts) = (
            validate::read_only(&req),
            validate::all_serializable(&req),
            validate::has_puts(&req),
        );
        if !read_only {
            return self
                .txn_write(cert.as_ref(), req, puts)
                .await
                .map(Response::new);
        }
        let op = RequestOp {
            request: Some(request_op::Request::RequestTxn(req)),
        };
        let mut resp = {
            // A read-only txn needs no log entry: a read barrier (unless every range is
            // serializable), then the rights of the state it reads, and an evaluation that writes
            // nothing.
            self.node.refuse_learner()?;
            if !serializable {
                self.node.read_barrier().await?;
            }
            self.authorize(cert.as_ref(), &op)?;
            let mut batch = self.node.mvcc().batch();
            let mut resp = batch.apply_op(&op).map_err(mvcc_status)?;
            set_headers(&mut resp, &self.node.header());
            resp
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
