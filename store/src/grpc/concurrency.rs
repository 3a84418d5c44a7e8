//! etcd's Election and Lock services (`v3electionpb.Election`, `v3lockpb.Lock`), served the way
//! etcd serves them: the member runs etcd's `concurrency` recipes against its own KV service.
//!
//! A campaign or a lock is a key `NAME/LEASE` (the lease in lowercase hex) put under the caller's
//! lease; the key created first under `NAME/` leads or holds the lock, and the others wait until
//! every key created before theirs is gone (deleted, or expired with its lease). Every read and
//! write is a call to [`KvService`] carrying the request's own metadata and certificate, so the one
//! authorizer checks each key as the caller's: a caller may campaign or lock only where it may
//! write, and observe only where it may read.
//!
//! Waiting costs nothing while nothing under the name changes: the waiter registers the name's
//! range with the watch hub and is woken only by revisions under it (then reads again,
//! linearizably). A waiter whose client goes away (the call canceled) deletes its key, as etcd's
//! recipes do; a waiter whose own key disappears (its lease expired) gets etcd's "session is
//! expired" error instead of the lock.

use std::pin::Pin;
use std::sync::Arc;

use eden_proto::etcdserverpb::kv_server::Kv;
use eden_proto::etcdserverpb::lease_server::Lease;
use eden_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use eden_proto::mvccpb::{event::EventType, KeyValue};
use eden_proto::v3electionpb::election_server::Election;
use eden_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use eden_proto::v3lockpb::lock_server::Lock;
use eden_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status};

use super::kv::KvService;
use super::lease::LeaseService;
use crate::keys::{prefix_end, KeyRange};
use crate::node::Node;
use crate::watch::{Signal, StreamId, Taken};

/// The TTL of the lease granted for a campaign or lock that names none (etcd's session default).
pub const DEFAULT_SESSION_TTL: i64 = 60;

pub const ERR_NO_LEADER: &str = "election: no leader";
pub const ERR_NOT_LEADER: &str = "election: not leader";
pub const ERR_SESSION_EXPIRED: &str = "mutex: session is expired";
pub const ERR_MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

pub struct ElectionService {
    pub node: Arc<Node>,
}

pub struct LockService {
    pub node: Arc<Node>,
}

/// The caller of a request, as the KV calls made for it carry it: its metadata and its
/// connection's extensions (which hold its TLS certificate).
#[derive(Clone)]
struct Caller {
    node: Arc<Node>,
    metadata: MetadataMap,
    extensions: Extensions,
}

impl Caller {
    fn of<T>(node: &Arc<Node>, r: &Request<T>) -> Caller {
        Caller {
            node: node.clone(),
            metadata: r.metadata().clone(),
            extensions: r.extensions().clone(),
        }
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        Request::from_parts(self.metadata.clone(), self.extensions.clone(), msg)
    }

    fn kv(&self) -> KvService {
        KvService {
            node: self.node.clone(),
        }
    }

    async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv().txn(self.request(t)).await?.into_inner())
    }

    /// Every key under `prefix`, read linearizably.
    async fn under(&self, prefix: &[u8]) -> Result<RangeResponse, Status> {
        let r = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        Ok(self.kv().range(self.request(r)).await?.into_inner())
    }

    /// `NAME/LEASE`, put under the lease unless it exists; returns its create revision and the
    /// txn's header. A value different from `value` on an existing key is proclaimed anew when
    /// `proclaim` (a campaign) and left as it is otherwise (a lock).
    async fn join(
        &self,
        key: &[u8],
        lease: i64,
        value: &[u8],
        proclaim: bool,
    ) -> Result<(i64, ResponseHeader), Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(key, 0)],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.to_vec(),
                        value: value.to_vec(),
                        lease,
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    })),
                }],
            })
            .await?;
        let header = resp.header.unwrap_or_default();
        if resp.succeeded {
            return Ok((header.revision, header));
        }
        let existing = match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(response_op::Response::ResponseRange(r)) => r.kvs.first().cloned(),
            _ => None,
        }
        .ok_or_else(|| Status::unknown(ERR_SESSION_EXPIRED))?;
        let rev = existing.create_revision;
        if proclaim && existing.value != value {
            if let Err(e) = self.proclaim(key, rev, value).await {
                self.release(key, rev).await.ok();
                return Err(e);
            }
        }
        Ok((rev, header))
    }

    /// Puts `value` on the leader key if it is still the one created at `rev`.
    async fn proclaim(&self, key: &[u8], rev: i64, value: &[u8]) -> Result<ResponseHeader, Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(key, rev)],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.to_vec(),
                        value: value.to_vec(),
                        ignore_lease: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(Status::unknown(ERR_NOT_LEADER));
        }
        Ok(resp.header.unwrap_or_default())
    }

    /// Deletes the key if it is still the one created at `rev`.
    async fn release(&self, key: &[u8], rev: i64) -> Result<ResponseHeader, Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(key, rev)],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: key.to_vec(),
                            ..Default::default()
                        },
                    )),
                }],
                failure: vec![],
            })
            .await?;
        Ok(resp.header.unwrap_or_default())
    }

    /// The lease named, or a new one of [`DEFAULT_SESSION_TTL`] for 0 (as etcd's sessions do).
    async fn lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let svc = LeaseService {
            node: self.node.clone(),
        };
        let r = svc
            .lease_grant(self.request(LeaseGrantRequest {
                ttl: DEFAULT_SESSION_TTL,
                id: 0,
            }))
            .await?
            .into_inner();
        Ok(r.id)
    }

    /// Waits until no key under `prefix` was created before `rev` (the key `own`, created at
    /// `rev`, then leads or holds the lock); returns the header of the read that saw it.
    async fn wait_turn(
        &self,
        prefix: &[u8],
        own: &[u8],
        rev: i64,
    ) -> Result<ResponseHeader, Status> {
        let interest = Interest::new(&self.node, prefix);
        loop {
            let r = self.under(prefix).await?;
            if !r
                .kvs
                .iter()
                .any(|kv| kv.key == own && kv.create_revision == rev)
            {
                return Err(Status::unknown(ERR_SESSION_EXPIRED));
            }
            if !r.kvs.iter().any(|kv| kv.create_revision < rev) {
                return Ok(r.header.unwrap_or_default());
            }
            interest.next().await;
        }
    }
}

fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

/// `NAME/`, the prefix of an election's or a lock's keys.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// `NAME/LEASE`.
fn key_of(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = prefix_of(name);
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

/// The key created first (the leader, or the lock's holder).
fn first_created(kvs: &[KeyValue]) -> Option<&KeyValue> {
    kvs.iter().min_by_key(|kv| kv.create_revision)
}

/// A registration with the watch hub for the keys under a prefix: woken only by revisions that
/// touch them. Unregistered when dropped.
struct Interest {
    node: Arc<Node>,
    id: StreamId,
    signal: Arc<Signal>,
}

impl Interest {
    fn new(node: &Arc<Node>, prefix: &[u8]) -> Interest {
        let (id, signal) = node.hub().open_stream();
        node.hub()
            .watch_range(id, &KeyRange::new(prefix, &prefix_end(prefix)));
        Interest {
            node: node.clone(),
            id,
            signal,
        }
    }

    /// Waits for revisions under the prefix since the last call; returns them.
    async fn next(&self) -> Taken {
        self.signal.wait().await;
        self.node.hub().take(&self.signal)
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.node.hub().close_stream(self.id);
    }
}

/// Deletes a waiter's key when its call ends before it got its turn (the client canceled or went
/// away), as etcd's recipes do.
struct ReleaseOnDrop {
    caller: Option<Caller>,
    key: Vec<u8>,
    rev: i64,
}

impl ReleaseOnDrop {
    fn disarm(mut self) {
        self.caller = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(caller) = self.caller.take() {
            let (key, rev) = (std::mem::take(&mut self.key), self.rev);
            tokio::spawn(async move {
                let _ = caller.release(&key, rev).await;
            });
        }
    }
}

/// Waits for `key`'s turn under `prefix`; on any failure (or the call dropped), deletes the key.
async fn take_turn(
    caller: &Caller,
    prefix: &[u8],
    key: &[u8],
    rev: i64,
) -> Result<ResponseHeader, Status> {
    let guard = ReleaseOnDrop {
        caller: Some(caller.clone()),
        key: key.to_vec(),
        rev,
    };
    let r = caller.wait_turn(prefix, key, rev).await;
    if r.is_ok() {
        guard.disarm();
    }
    r
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = Caller::of(&self.node, &request);
        let req = request.into_inner();
        let lease = caller.lease(req.lease).await?;
        let prefix = prefix_of(&req.name);
        let key = key_of(&req.name, lease);
        let (rev, header) = caller.join(&key, lease, &req.value, true).await?;
        take_turn(&caller, &prefix, &key, rev).await?;
        Ok(Response::new(CampaignResponse {
            header: Some(header),
            leader: Some(LeaderKey {
                name: req.name,
                key,
                rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let caller = Caller::of(&self.node, &request);
        let req = request.into_inner();
        let leader = req
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        let header = caller.proclaim(&leader.key, leader.rev, &req.value).await?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = Caller::of(&self.node, &request);
        let name = request.into_inner().name;
        let r = caller.under(&prefix_of(&name)).await?;
        let kv = first_created(&r.kvs)
            .cloned()
            .ok_or_else(|| Status::unknown(ERR_NO_LEADER))?;
        Ok(Response::new(LeaderResponse {
            header: r.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = Caller::of(&self.node, &request);
        let prefix = prefix_of(&request.into_inner().name);
        // Refuse at once what the caller may not read.
        caller.under(&prefix).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(status) = observe(&caller, &prefix, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = Caller::of(&self.node, &request);
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::unknown(ERR_MISSING_LEADER_KEY))?;
        let header = caller.release(&leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}

/// Sends each proclamation of the election's leaders in order: the current leader's value, each
/// new value it proclaims, then, once its key is gone, the next leader's (etcd's `Observe`).
/// Returns Ok when the client went away.
async fn observe(
    caller: &Caller,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    let interest = Interest::new(&caller.node, prefix);
    let send = |header: ResponseHeader, kv: KeyValue| async move {
        tx.send(Ok(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }))
        .await
        .is_ok()
    };
    'leaders: loop {
        // The leader now, or the first key put under the prefix after this read.
        let r = caller.under(prefix).await?;
        let mut seen = r.header.map_or(0, |h| h.revision);
        let leader = match first_created(&r.kvs) {
            Some(kv) => {
                if !send(r.header.unwrap_or_default(), kv.clone()).await {
                    return Ok(());
                }
                kv.key.clone()
            }
            None => loop {
                let taken = interest.next().await;
                if taken.overflowed {
                    continue 'leaders;
                }
                let put = events_after(&taken, seen, prefix)
                    .find(|(_, e)| e.0 == EventType::Put)
                    .map(|(rev, (_, kv))| (rev, kv));
                seen = taken.upto;
                if let Some((_, kv)) = put {
                    let header = caller.node.header_at(kv.mod_revision);
                    if !send(header, kv.clone()).await {
                        return Ok(());
                    }
                    seen = kv.mod_revision;
                    break kv.key.clone();
                }
            },
        };
        // Follow the leader's key: each put is a proclamation, a delete ends its term.
        loop {
            let taken = interest.next().await;
            if taken.overflowed {
                continue 'leaders;
            }
            let mut gone = false;
            let mut proclaimed = Vec::new();
            for (rev, (kind, kv)) in events_after(&taken, seen, &leader) {
                if kv.key != leader {
                    continue;
                }
                if kind == EventType::Delete {
                    gone = true;
                    break;
                }
                proclaimed.push((rev, kv));
            }
            for (rev, kv) in proclaimed {
                if !send(caller.node.header_at(rev), kv).await {
                    return Ok(());
                }
            }
            if gone {
                continue 'leaders;
            }
            seen = taken.upto;
        }
    }
}

/// The events after revision `seen` in what a signal handed over, on keys starting with `prefix`.
fn events_after<'a>(
    taken: &'a Taken,
    seen: i64,
    prefix: &'a [u8],
) -> impl Iterator<Item = (i64, (EventType, KeyValue))> + 'a {
    taken
        .revs
        .iter()
        .filter(move |r| r.rev > seen)
        .flat_map(|r| r.events.iter().map(move |e| (r.rev, e)))
        .filter_map(move |(rev, e)| {
            let kv = e.kv.as_ref()?;
            if !kv.key.starts_with(prefix) {
                return None;
            }
            let kind = if e.r#type == EventType::Delete as i32 {
                EventType::Delete
            } else {
                EventType::Put
            };
            Some((rev, (kind, kv.clone())))
        })
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = Caller::of(&self.node, &request);
        let req = request.into_inner();
        let lease = caller.lease(req.lease).await?;
        let prefix = prefix_of(&req.name);
        let key = key_of(&req.name, lease);
        let (rev, _) = caller.join(&key, lease, b"", false).await?;
        let header = take_turn(&caller, &prefix, &key, rev).await?;
        Ok(Response::new(LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = Caller::of(&self.node, &request);
        let key = request.into_inner().key;
        let r = caller
            .kv()
            .delete_range(caller.request(DeleteRangeRequest {
                key,
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(Response::new(UnlockResponse { header: r.header }))
    }
}
