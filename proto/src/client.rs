//! A leader-agnostic etcd v3 client over a list of endpoints.
//!
//! Any member will do: every eden member forwards writes to the leader itself. A client starts on a
//! random endpoint of its list, so that many clients spread over the members; when an endpoint
//! cannot be reached, the client moves on to the next. A request is retried on another endpoint only
//! when it surely did not take effect: the connection could not be made, or the server said it has
//! no leader. A write whose connection broke mid-way is reported, never silently repeated.
//!
//! Members come and go: the client learns the cluster's current members from the member list (every
//! 30 s while in use, and whenever a whole round over its endpoints failed) and fails over to them
//! too, so a long-lived client (an agent, a watch) keeps working after every member it was given
//! has been replaced. The endpoints it was given stay in the list.
//!
//! [`Client::watch`] resumes by itself: it remembers the next revision it needs and, when its
//! stream breaks, re-creates the watch on another endpoint from that revision, so the caller sees
//! no gap and no duplicate.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::errors;
use crate::etcdserverpb::cluster_client::ClusterClient;
use crate::etcdserverpb::kv_client::KvClient;
use crate::etcdserverpb::lease_client::LeaseClient;
use crate::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::etcdserverpb::watch_client::WatchClient;
use crate::etcdserverpb::*;

/// How long to wait for a TCP connection to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response the client accepts.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint could be reached, or the cluster has no leader.
    #[error("{0}")]
    Unavailable(String),
    /// The cluster answered with an error.
    #[error("{}", .0.message())]
    Server(Status),
    #[error("{0}")]
    InvalidEndpoint(String),
}

impl ClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Server(s) => Some(s.code()),
            _ => None,
        }
    }

    /// True when a member answered with exactly this etcd error.
    fn is(&self, message: &str) -> bool {
        matches!(self, ClientError::Server(s) if s.message() == message)
    }

    /// The revision asked for was compacted away.
    pub fn is_compacted(&self) -> bool {
        self.is(errors::COMPACTED)
    }

    /// The authorizer refused the request.
    pub fn is_permission_denied(&self) -> bool {
        self.code() == Some(Code::PermissionDenied)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Whether a request of this kind may be sent again after this error.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: any unavailability is worth another endpoint.
    Read,
    /// Writes: only when the request surely did not take effect.
    Write,
}

pub struct Client {
    /// The endpoints it was given (per-endpoint calls like [`Client::status_of`] use these).
    endpoints: Vec<String>,
    channels: Mutex<Vec<Option<Channel>>>,
    /// Where requests and watches go: the given endpoints, then members learned from the
    /// cluster. `current` indexes it.
    pool: Mutex<Pool>,
    current: AtomicUsize,
    /// Mutual TLS, when the cluster speaks it (replaced when a certificate is renewed).
    tls: Mutex<Option<Tls>>,
    secure: bool,
    /// One channel given by the caller (an in-process connection): never dialed, forgotten or
    /// replaced by members learned from the cluster.
    fixed: bool,
}

/// How often a client in use refreshes its members.
const SYNC_INTERVAL: Duration = Duration::from_secs(30);

struct Pool {
    endpoints: Vec<String>,
    channels: std::collections::HashMap<String, Channel>,
    synced: std::time::Instant,
}

/// The certificates a client presents and trusts (PEM): mutual TLS with the cluster's CA.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The CA the servers' certificates must come from.
    pub ca_pem: String,
    /// This client's certificate and key.
    pub cert_pem: String,
    pub key_pem: String,
}

impl Tls {
    /// Reads the three PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> std::result::Result<Tls, String> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Tls {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// tonic's client TLS settings for these certificates.
    pub fn config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
    }
}

async fn connect(ep: &str, tls: Option<&Tls>) -> std::result::Result<Channel, String> {
    let mut e = Endpoint::from_shared(ep.to_string()).map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        e = e
            .tls_config(tls.config())
            .map_err(|e| format!("{ep}: {e}"))?;
    }
    e.connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("{ep}: {e}"))
}

/// A connection to one endpoint (`host:port` or a URL), with the client's TLS when given: for
/// calls that must reach that server and no other (forming a cluster asks each in turn).
pub async fn channel_to(ep: &str, tls: Option<&Tls>) -> std::result::Result<Channel, String> {
    connect(&normalize(ep, tls.is_some()), tls).await
}

/// An endpoint as a URL: `https://` when the client speaks TLS (a member's advertised
/// `http://` URL included), else `http://` for a bare `host:port`.
fn normalize(ep: &str, tls: bool) -> String {
    let ep = ep.trim();
    let bare = ep
        .strip_prefix("http://")
        .or_else(|| ep.strip_prefix("https://"));
    match (bare, tls) {
        (Some(b), true) => format!("https://{b}"),
        (None, true) => format!("https://{ep}"),
        (Some(_), false) => ep.to_string(),
        (None, false) => format!("http://{ep}"),
    }
}

/// True when the failure happened before the request reached a server.
fn not_sent(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    s.code() == Code::Unavailable
        && (m.contains("connect") || m.contains("connection refused") || m.contains("dns"))
}

/// True when the error came from the connection, not from a server's answer.
fn from_transport(s: &Status) -> bool {
    std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>())
}

/// True when a member refused the request because it is saturated (etcd's "too many
/// requests"): the request was not proposed, so it is safe to send again, after a pause.
pub fn too_many_requests(s: &Status) -> bool {
    s.code() == Code::ResourceExhausted && s.message() == errors::TOO_MANY_REQUESTS
}

/// Exponential backoff with full jitter: each pause is uniform in [0, min(cap, base * 2^n)), so
/// clients refused together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    n: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, n: 0 }
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.n.min(16))
            .min(self.cap);
        self.n = self.n.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// How long the client keeps retrying a request that a saturated cluster refused.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(10);

/// True when the member is a learner, which refuses what etcd's learners refuse: it did nothing,
/// and a voter will answer.
fn learner_refused(s: &Status) -> bool {
    s.code() == Code::FailedPrecondition && s.message() == errors::NOT_SUPPORTED_FOR_LEARNER
}

fn retryable(s: &Status, kind: Retry) -> bool {
    match kind {
        // A connection that broke (its member died) is worth another endpoint for a read.
        Retry::Read => s.code() == Code::Unavailable || from_transport(s),
        Retry::Write => {
            not_sent(s) || (s.code() == Code::Unavailable && s.message() == errors::NO_LEADER)
        }
    }
}

impl Client {
    /// A client for these endpoints (`host:port` or URLs). Nothing is dialed until the first request.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Client> {
        Client::with_tls(endpoints, None)
    }

    /// A client that speaks mutual TLS to these endpoints when `tls` is given.
    pub fn with_tls<S: AsRef<str>>(endpoints: &[S], tls: Option<Tls>) -> Result<Client> {
        let secure = tls.is_some();
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| normalize(e.as_ref(), secure))
            .filter(|e| e != "http://" && e != "https://")
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::InvalidEndpoint("no endpoints given".into()));
        }
        for ep in &endpoints {
            Endpoint::from_shared(ep.clone())
                .map_err(|e| ClientError::InvalidEndpoint(format!("{ep}: {e}")))?;
        }
        let n = endpoints.len();
        Ok(Client {
            pool: Mutex::new(Pool {
                endpoints: endpoints.clone(),
                channels: Default::default(),
                synced: std::time::Instant::now(),
            }),
            endpoints,
            // Each client starts on a random endpoint (etcd's clients balance too): a fleet of
            // agents given the same list must not all land on its first member.
            current: AtomicUsize::new(rand::random::<u32>() as usize % n),
            channels: Mutex::new(vec![None; n]),
            tls: Mutex::new(tls),
            secure,
            fixed: false,
        })
    }

    /// A client that sends everything over `channel` and nowhere else (the server's web view
    /// uses one per viewer, over an in-process connection that carries the viewer's identity).
    pub fn over_channel(channel: Channel, secure: bool) -> Client {
        let ep = "http://in-process".to_string();
        Client {
            pool: Mutex::new(Pool {
                endpoints: vec![ep.clone()],
                channels: [(ep.clone(), channel.clone())].into_iter().collect(),
                synced: std::time::Instant::now(),
            }),
            endpoints: vec![ep],
            current: AtomicUsize::new(0),
            channels: Mutex::new(vec![Some(channel)]),
            tls: Mutex::new(None),
            secure,
            fixed: true,
        }
    }

    /// A client for other endpoints of the same cluster, with the same certificates.
    pub fn sibling<S: AsRef<str>>(&self, endpoints: &[S]) -> Result<Client> {
        Client::with_tls(endpoints, self.tls())
    }

    /// The certificate this client presents, if any.
    pub fn tls(&self) -> Option<Tls> {
        self.tls.lock().expect("tls lock").clone()
    }

    /// Presents `tls` from now on (a renewed certificate): new connections use it; requests on
    /// the old ones finish, and every later request dials again.
    pub fn replace_tls(&self, tls: Tls) {
        *self.tls.lock().expect("tls lock") = Some(tls);
        self.channels
            .lock()
            .expect("channel lock")
            .iter_mut()
            .for_each(|c| *c = None);
        self.pool.lock().expect("pool lock").channels.clear();
    }

    /// Where requests go now: the given endpoints and the members learned since.
    pub fn pool(&self) -> Vec<String> {
        self.pool.lock().expect("pool lock").endpoints.clone()
    }

    fn pool_len(&self) -> usize {
        self.pool.lock().expect("pool lock").endpoints.len()
    }

    fn pool_endpoint(&self, i: usize) -> String {
        let p = self.pool.lock().expect("pool lock");
        p.endpoints[i % p.endpoints.len()].clone()
    }

    async fn pool_channel(&self, i: usize) -> std::result::Result<Channel, String> {
        let ep = self.pool_endpoint(i);
        if let Some(ch) = self.pool.lock().expect("pool lock").channels.get(&ep) {
            return Ok(ch.clone());
        }
        let ch = connect(&ep, self.tls().as_ref()).await?;
        self.pool
            .lock()
            .expect("pool lock")
            .channels
            .insert(ep, ch.clone());
        Ok(ch)
    }

    fn pool_forget(&self, i: usize) {
        if self.fixed {
            return;
        }
        let ep = self.pool_endpoint(i);
        self.pool.lock().expect("pool lock").channels.remove(&ep);
    }

    /// Learns the cluster's members now (it also happens by itself: every 30 s while the client
    /// is in use, and after a round over every endpoint failed).
    pub async fn sync_members(&self) {
        self.sync_pool(true).await
    }

    /// Learns the cluster's members from any endpoint in the pool (when `force`, or when the
    /// last time is SYNC_INTERVAL ago): the pool becomes the given endpoints plus the client
    /// addresses of the voting members.
    async fn sync_pool(&self, force: bool) {
        if self.fixed {
            return;
        }
        let eps = {
            let mut p = self.pool.lock().expect("pool lock");
            if !force && p.synced.elapsed() < SYNC_INTERVAL {
                return;
            }
            p.synced = std::time::Instant::now();
            p.endpoints.clone()
        };
        for (i, _) in eps.iter().enumerate() {
            let Ok(ch) = self.pool_channel(i).await else {
                continue;
            };
            let mut cc = ClusterClient::new(ch);
            let req = cc.member_list(MemberListRequest {
                linearizable: false,
            });
            let Ok(Ok(list)) = tokio::time::timeout(CONNECT_TIMEOUT, req).await else {
                continue;
            };
            let mut next = self.endpoints.clone();
            for m in list.into_inner().members.iter().filter(|m| !m.is_learner) {
                for u in &m.client_ur_ls {
                    let u = normalize(u, self.secure);
                    if !next.contains(&u) && Endpoint::from_shared(u.clone()).is_ok() {
                        next.push(u);
                    }
                }
            }
            let mut p = self.pool.lock().expect("pool lock");
            p.channels.retain(|ep, _| next.contains(ep));
            if p.endpoints != next {
                tracing::debug!(endpoints = ?next, "the client learned the cluster's members");
                p.endpoints = next;
            }
            return;
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn channel(&self, i: usize) -> std::result::Result<Channel, String> {
        if let Some(ch) = self.channels.lock().expect("channel lock")[i].clone() {
            return Ok(ch);
        }
        let ch = connect(&self.endpoints[i], self.tls().as_ref()).await?;
        self.channels.lock().expect("channel lock")[i] = Some(ch.clone());
        Ok(ch)
    }

    fn forget(&self, i: usize) {
        if self.fixed {
            return;
        }
        self.channels.lock().expect("channel lock")[i] = None;
    }

    /// Runs `f` against endpoints in turn, starting with the last one that worked.
    pub async fn call<T, F, Fut>(&self, kind: Retry, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        self.sync_pool(false).await;
        let n = self.pool_len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last_err = String::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let busy_until = std::time::Instant::now() + BUSY_RETRY_FOR;
        let mut refused_by_learner: Option<Status> = None;
        // Two rounds over the endpoints: a member may come back or elect a leader meanwhile.
        let mut attempt = 0;
        while attempt < 2 * n {
            let i = (start + attempt) % n;
            attempt += 1;
            let ch = match self.pool_channel(i).await {
                Ok(ch) => ch,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            };
            match f(ch).await {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(s) if too_many_requests(&s) && std::time::Instant::now() < busy_until => {
                    // Saturated, not broken: the same round again after a pause.
                    last_err = format!("{}: {}", self.pool_endpoint(i), s.message());
                    attempt -= 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(s) if learner_refused(&s) => {
                    // A learner did nothing: another endpoint may be a voter. If none is, the
                    // learner's answer is the answer.
                    last_err = format!("{}: {}", self.pool_endpoint(i), s.message());
                    refused_by_learner = Some(s);
                }
                Err(s) if retryable(&s, kind) => {
                    last_err = format!("{}: {}", self.pool_endpoint(i), s.message());
                    refused_by_learner = None;
                    self.pool_forget(i);
                    if attempt >= n {
                        tokio::time::sleep(backoff.next_delay() + Duration::from_millis(200)).await;
                    }
                }
                Err(s) if s.code() == Code::Unavailable => {
                    self.pool_forget(i);
                    return Err(ClientError::Unavailable(format!(
                        "{}: {}",
                        self.pool_endpoint(i),
                        s.message()
                    )));
                }
                Err(s) if s.code() == Code::DeadlineExceeded => {
                    return Err(ClientError::Unavailable(format!(
                        "{}: {}",
                        self.pool_endpoint(i),
                        s.message()
                    )));
                }
                Err(s) => return Err(ClientError::Server(s)),
            }
        }
        // Every endpoint failed: maybe the members changed.
        self.sync_pool(true).await;
        if let Some(s) = refused_by_learner {
            return Err(ClientError::Server(s));
        }
        Err(ClientError::Unavailable(format!(
            "no endpoint available ({last_err})"
        )))
    }

    fn kv(ch: Channel) -> KvClient<Channel> {
        KvClient::new(ch).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.call(Retry::Read, |ch| {
            let req = req.clone();
            async move { Self::kv(ch).range(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        self.call(Retry::Write, |ch| {
            let req = req.clone();
            async move { Self::kv(ch).put(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.call(Retry::Write, |ch| {
            let req = req.clone();
            async move { Self::kv(ch).delete_range(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        self.call(Retry::Write, |ch| {
            let req = req.clone();
            async move { Self::kv(ch).txn(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Stores a task (its spec, JSON, targets included) in one log entry: eden's `Tasks.Create`
    /// (an etcd server answers Unimplemented).
    pub async fn create_task(&self, spec_json: Vec<u8>) -> Result<crate::tasks::CreateResponse> {
        self.call(Retry::Write, |ch| {
            let spec_json = spec_json.clone();
            async move {
                crate::tasks::tasks_client::TasksClient::new(ch)
                    .max_encoding_message_size(MAX_RESPONSE_BYTES)
                    .create(crate::tasks::CreateRequest { spec_json })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        self.call(Retry::Write, |ch| async move {
            Self::kv(ch).compact(req).await.map(|r| r.into_inner())
        })
        .await
    }

    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        self.call(Retry::Write, |ch| async move {
            LeaseClient::new(ch)
                .lease_grant(LeaseGrantRequest { ttl, id })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.call(Retry::Write, |ch| async move {
            LeaseClient::new(ch)
                .lease_revoke(LeaseRevokeRequest { id })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        self.call(Retry::Read, |ch| async move {
            LeaseClient::new(ch)
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        self.call(Retry::Read, |ch| async move {
            LeaseClient::new(ch)
                .lease_leases(LeaseLeasesRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// One keep-alive round trip (a fresh stream each time, so it survives member failures).
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        self.call(Retry::Read, |ch| async move {
            let mut c = LeaseClient::new(ch);
            let mut stream = c
                .lease_keep_alive(tokio_stream::once(LeaseKeepAliveRequest { id }))
                .await?
                .into_inner();
            match stream.message().await? {
                Some(r) => Ok(r),
                None => Err(Status::unavailable("keep-alive stream closed")),
            }
        })
        .await
    }

    /// A new certificate for this client's own identity, for the public key of `csr_pem` (PEM).
    pub async fn renew(&self, csr_pem: &str) -> Result<String> {
        self.call(Retry::Write, |ch| async move {
            crate::join::join_client::JoinClient::new(ch)
                .renew(crate::join::RenewRequest {
                    csr_pem: csr_pem.to_string(),
                })
                .await
                .map(|r| r.into_inner().cert_pem)
        })
        .await
    }

    /// The cluster's CA certificate (PEM), as the join call hands it out.
    pub async fn ca_pem(&self) -> Result<String> {
        self.call(Retry::Read, |ch| async move {
            crate::join::join_client::JoinClient::new(ch)
                .ca(crate::join::CaRequest {})
                .await
                .map(|r| r.into_inner().ca_pem)
        })
        .await
    }

    pub async fn member_list(&self) -> Result<MemberListResponse> {
        self.call(Retry::Read, |ch| async move {
            ClusterClient::new(ch)
                .member_list(MemberListRequest {
                    linearizable: false,
                })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// The status of one endpoint (by its index in [`Client::endpoints`]); no failover.
    pub async fn status_of(&self, i: usize) -> Result<StatusResponse> {
        let ch = self.channel(i).await.map_err(ClientError::Unavailable)?;
        MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| {
                self.forget(i);
                if s.code() == Code::Unavailable {
                    ClientError::Unavailable(format!("{}: {}", self.endpoints[i], s.message()))
                } else {
                    ClientError::Server(s)
                }
            })
    }

    /// A consistent backup of the store from one member: the bytes and the revision they hold.
    pub async fn snapshot(&self) -> Result<(Vec<u8>, i64)> {
        self.call(Retry::Read, |ch| async move {
            let mut stream = MaintenanceClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .snapshot(SnapshotRequest {})
                .await?
                .into_inner();
            let mut out = Vec::new();
            let mut rev = 0;
            while let Some(part) = stream.message().await? {
                rev = part.header.map_or(rev, |h| h.revision);
                out.extend_from_slice(&part.blob);
                if part.remaining_bytes == 0 {
                    return Ok((out, rev));
                }
            }
            Err(Status::unavailable("snapshot stream ended early"))
        })
        .await
    }

    /// Compacts one endpoint's storage files; no failover.
    pub async fn defragment_of(&self, i: usize) -> Result<DefragmentResponse> {
        let ch = self.channel(i).await.map_err(ClientError::Unavailable)?;
        MaintenanceClient::new(ch)
            .defragment(DefragmentRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Server)
    }

    /// The alarms of one endpoint; no failover.
    pub async fn alarms_of(&self, i: usize) -> Result<AlarmResponse> {
        let ch = self.channel(i).await.map_err(ClientError::Unavailable)?;
        MaintenanceClient::new(ch)
            .alarm(AlarmRequest::default())
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Server)
    }

    /// A linearizable read through one endpoint only (for health checks); no failover.
    pub async fn range_of(&self, i: usize, req: RangeRequest) -> Result<RangeResponse> {
        let ch = self.channel(i).await.map_err(ClientError::Unavailable)?;
        Self::kv(ch)
            .range(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| {
                if s.code() == Code::Unavailable {
                    ClientError::Unavailable(format!("{}: {}", self.endpoints[i], s.message()))
                } else {
                    ClientError::Server(s)
                }
            })
    }

    /// HashKV of one endpoint (by its index in [`Client::endpoints`]); no failover.
    pub async fn hash_kv_of(&self, i: usize, revision: i64) -> Result<HashKvResponse> {
        let ch = self.channel(i).await.map_err(ClientError::Unavailable)?;
        MaintenanceClient::new(ch)
            .hash_kv(HashKvRequest { revision })
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Server)
    }

    /// Watches a key or range, resuming on another endpoint whenever a stream breaks. Responses
    /// (events, progress notifications, and a final cancel) arrive on the returned channel; it
    /// closes after a cancel or when every endpoint stayed unreachable for `give_up`.
    pub fn watch(
        self: &std::sync::Arc<Self>,
        create: WatchCreateRequest,
        give_up: Duration,
    ) -> mpsc::Receiver<Result<WatchResponse>> {
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        tokio::spawn(async move { client.watch_loop(create, give_up, tx).await });
        rx
    }

    async fn watch_loop(
        &self,
        mut create: WatchCreateRequest,
        give_up: Duration,
        tx: mpsc::Sender<Result<WatchResponse>>,
    ) {
        let mut i = self.current.load(Ordering::Relaxed);
        // The next revision the caller needs; 0 until the first created response tells us.
        let mut next_rev = create.start_revision;
        let mut down_since: Option<tokio::time::Instant> = None;
        loop {
            if next_rev > 0 {
                create.start_revision = next_rev;
            }
            let outcome = self.watch_once(i, &create, &mut next_rev, &tx).await;
            match outcome {
                WatchEnd::Done => return,
                WatchEnd::Broken(reason) => {
                    tracing::debug!(endpoint = %self.pool_endpoint(i), %reason, "watch stream broke, resuming");
                    self.pool_forget(i);
                    self.sync_pool(true).await;
                    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > give_up {
                        let _ = tx
                            .send(Err(ClientError::Unavailable(format!(
                                "watch: no endpoint available ({reason})"
                            ))))
                            .await;
                        return;
                    }
                    i = (i + 1) % self.pool_len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                WatchEnd::Healthy => down_since = None,
            }
        }
    }

    async fn watch_once(
        &self,
        i: usize,
        create: &WatchCreateRequest,
        next_rev: &mut i64,
        tx: &mpsc::Sender<Result<WatchResponse>>,
    ) -> WatchEnd {
        let ch = match self.pool_channel(i).await {
            Ok(ch) => ch,
            Err(e) => return WatchEnd::Broken(e),
        };
        let (req_tx, req_rx) = mpsc::channel(4);
        let _ = req_tx
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create.clone())),
            })
            .await;
        let mut wc = WatchClient::new(ch).max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(req_rx));
        req.metadata_mut()
            .insert("hasleader", "true".parse().expect("ascii"));
        let mut stream = match wc.watch(req).await {
            Ok(s) => s.into_inner(),
            Err(s) => return WatchEnd::Broken(s.message().to_string()),
        };
        let mut healthy = false;
        let mut sync = tokio::time::interval(SYNC_INTERVAL);
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                _ = sync.tick() => {
                    // A long healthy stream still learns about member changes.
                    self.sync_pool(false).await;
                    continue;
                }
            };
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return if healthy {
                        WatchEnd::Healthy
                    } else {
                        WatchEnd::Broken("stream closed".into())
                    }
                }
                Err(s) => {
                    return if healthy {
                        WatchEnd::Healthy
                    } else {
                        WatchEnd::Broken(s.message().to_string())
                    }
                }
            };
            if msg.created && !msg.canceled {
                healthy = true;
                if *next_rev == 0 {
                    *next_rev = msg.header.as_ref().map_or(0, |h| h.revision) + 1;
                }
            }
            if let Some(last) = msg.events.last() {
                *next_rev = last.kv.as_ref().map_or(*next_rev, |kv| kv.mod_revision + 1);
            }
            let done = msg.canceled;
            if tx.send(Ok(msg)).await.is_err() || done {
                drop(req_tx);
                return WatchEnd::Done;
            }
        }
    }
}

enum WatchEnd {
    /// The caller is gone or the watch was canceled.
    Done,
    /// The stream broke after working: resume at once.
    Healthy,
    /// The stream could not be set up.
    Broken(String),
}
