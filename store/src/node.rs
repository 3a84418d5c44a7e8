//! One member of the cluster: the Raft instance and the store around it, and what a member does on
//! its own: forward writes and read-index requests to the leader, keep lease deadlines when it
//! leads, compact old versions, and publish its client URLs through the log.
//!
//! Retrying a write is only safe when it surely was not committed. openraft answers
//! `ForwardToLeader` for a write it never appended or whose entry was truncated, so those are retried
//! (on the leader they name). A forwarded write whose connection breaks mid-way is indeterminate, as
//! in etcd, and the client gets "etcdserver: leader changed".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eden_proto::etcdserverpb::{Member as PbMember, RequestOp, ResponseHeader};
use eden_proto::peer::peer_client::PeerClient;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::Status;

use crate::engine::EngineError;
use crate::errors::{self, internal, refused, unavailable};
use crate::keys::{META_ALARMS, META_CLUSTER, META_COMPACT_DONE, META_SELF};
use crate::lease::{MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS};
use crate::membership::{self, MembershipChange, MembershipError};
use crate::mvcc::Mvcc;
use crate::raft::log_store::LogStore;
use crate::raft::network::{from_payload, peer_channel, to_payload, MemberTls, PeerNetwork};
use crate::raft::propose::Proposer;
use ask::{Answer, Ask, AskStreams};
use forward::{Forwarded, Forwarder};

pub(crate) mod ask;
mod autopilot;
mod forward;
mod leadership;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Command, Member, Raft, Reply, Response};
use crate::watch::{WatchHub, DEFAULT_RING_REVISIONS};
pub use autopilot::{decide, Candidate, Decision, Probe};
use eden_proto::tls_listener::ServerCert;
pub use leadership::{LeadershipError, LeadershipRequest};

/// etcd's default space quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 << 30;
/// etcd's AlarmType numbers.
pub const ALARM_NOSPACE: i32 = 1;

/// How long a request waits for a leader and for its write to be applied.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// A leader refuses client writes while its state machine trails its log by more than this many
/// entries (etcd's maxGapBetweenApplyAndCommitIndex).
pub const MAX_APPLY_LAG: u64 = 5_000;
/// At most this many client writes wait in a leader's Raft at once; more are refused with
/// "too many requests" (etcd's `ErrTooManyRequests`).
pub const MAX_PENDING_PROPOSALS: usize = 4_096;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// The client address other members and clients are told about.
    pub client_addr: String,
    /// The peer address other members are told about.
    pub peer_addr: String,
    /// Where the peer port listens (usually the same as `peer_addr`).
    pub listen_peer_addr: String,
    /// name -> peer address of every initial member (including this one).
    pub initial_cluster: Vec<(String, String)>,
    /// Take a snapshot after this many applied entries (etcd's --snapshot-count).
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slow followers (etcd's --snapshot-catchup-entries).
    pub snapshot_catchup_entries: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// The leader answers linearizable reads without a heartbeat round while a quorum
    /// acknowledged it within `election_timeout_ms` (half the leader lease): decision 0028.
    pub lease_reads: bool,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub progress_notify_interval: Duration,
    /// How many recent revisions the watch hub keeps in memory for synced watchers.
    pub watch_ring_revisions: usize,
    /// RocksDB's memory (memtables and block cache), in MiB.
    pub storage_memory_mb: usize,
    /// Join a running cluster through these client endpoints (on a fresh data dir only).
    pub join: Option<Vec<String>>,
    /// After joining, stay a learner until an operator promotes this member.
    pub stay_learner: bool,
    /// This server's zone (a rack, a room, a data centre): autopilot spreads voters over zones.
    pub zone: Option<String>,
    /// Start (on a fresh data dir) as a member of this running cluster that named this member
    /// when it formed: the leader replicates the membership to it, so it never initializes one
    /// (see [`crate::forming`]).
    pub member_of: Option<u64>,
    /// Past this many bytes on disk, writes that add data are refused with a NOSPACE alarm.
    pub quota_bytes: i64,
    /// Automatic history compaction, if any.
    pub auto_compaction: Option<AutoCompaction>,
    /// Mutual TLS on the client and peer ports (this member's certificate and key, and the CA
    /// every client's and member's certificate must come from); the member presents the same
    /// certificate when it connects to other members. None: plaintext.
    pub tls: Option<eden_proto::client::Tls>,
    /// What explicit events may be stored (see [`crate::events`]).
    pub events: crate::events::EventPolicy,
    /// The largest file (`/eden/files/data/...`) and all files together, in bytes.
    pub max_file_bytes: usize,
    pub max_files_bytes: u64,
}

/// How much history the leader keeps before compacting it automatically (etcd's
/// --auto-compaction-mode and --auto-compaction-retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl NodeConfig {
    pub fn new(name: &str, data_dir: PathBuf, client_addr: &str, peer_addr: &str) -> NodeConfig {
        NodeConfig {
            name: name.to_string(),
            data_dir,
            client_addr: client_addr.to_string(),
            peer_addr: peer_addr.to_string(),
            listen_peer_addr: peer_addr.to_string(),
            initial_cluster: vec![(name.to_string(), peer_addr.to_string())],
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
            heartbeat_ms: 100,
            election_timeout_ms: 1_000,
            lease_reads: true,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            progress_notify_interval: Duration::from_secs(600),
            watch_ring_revisions: DEFAULT_RING_REVISIONS,
            storage_memory_mb: crate::engine::DEFAULT_MEMORY_MB,
            join: None,
            stay_learner: false,
            zone: None,
            member_of: None,
            quota_bytes: DEFAULT_QUOTA_BYTES,
            auto_compaction: None,
            tls: None,
            events: Default::default(),
            max_file_bytes: eden_proto::model::files::DEFAULT_MAX_FILE_BYTES,
            max_files_bytes: eden_proto::model::files::DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

pub use crate::membership::member_id;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClusterInfo {
    cluster_id: u64,
    /// This member joined a running cluster: it must never bootstrap one.
    joined: bool,
}

/// Which connection to a peer a request takes (see [`Node::peer_client`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Lane {
    Writes,
    Control,
}

/// The leader's peer port as [`Node::at_leader`] hands it to a question asked remotely.
#[derive(Clone)]
pub(crate) struct LeaderPeer {
    pub client: PeerClient<Channel>,
    pub addr: String,
    pub lane: Lane,
}

/// A write or read-index request forwarded between members.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardError {
    NotLeader,
    Failed(String),
    /// Refused by the leader before proposing (an event source over its rate).
    Exhausted(String),
}

/// Lease questions only the leader can answer (it holds the deadlines).
#[derive(Debug, Serialize, Deserialize)]
pub enum LeaseQuery {
    KeepAlive(i64),
    TimeToLive(i64),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// TTL after a keep-alive (0 = unknown lease).
    Ttl(i64),
    /// remaining and granted TTL; None = unknown lease.
    Remaining(Option<(i64, i64)>),
    NotLeader,
}

/// One attempt of [`Node::at_leader`].
pub(crate) enum Step<T> {
    /// An answer (an outcome or a deterministic refusal): no more attempts.
    Done(Result<T, Status>),
    /// The member asked does not lead, or did not answer: ask again after a pause.
    Again,
}

pub struct Node {
    id: u64,
    cluster_id: u64,
    config: NodeConfig,
    raft: Raft,
    /// Client writes go through it: group commit ([`crate::raft::propose`]).
    proposer: Proposer,
    /// Writes proposed here while a follower go to the leader through it, batched.
    forwarder: Forwarder,
    /// The streams that forwarded writes and read-index rounds take to the leader.
    asks: Arc<AskStreams>,
    sm: Arc<StateMachine>,
    peers: Mutex<BTreeMap<(String, Lane), PeerClient<Channel>>>,
    /// The certificate this member presents to other members, and to its clients (the same one,
    /// replaced when the member renews it: [`Node::replace_certificate`]).
    tls: Arc<MemberTls>,
    server_cert: Option<Arc<ServerCert>>,
    revoking: Mutex<HashSet<i64>>,
    /// Linearizable reads waiting for a read-index round, and whether a round is running.
    reads: Mutex<(Vec<ReadWaiter>, bool)>,
    /// The gate explicit events pass (see [`crate::events`]).
    pub(crate) events: crate::events::EventGate,
    /// Why the Raft core stopped, once it has (a panic or a storage error): set by
    /// [`Node::watch_core`], read by `/health`, Status and `eden server`, which exits.
    core_stopped: tokio::sync::watch::Sender<Option<String>>,
    /// Set by [`Node::shutdown`]: every loop [`Node::start`] spawned ends.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Permits for client writes in Raft on this member (see [`MAX_PENDING_PROPOSALS`]).
    proposals: Arc<tokio::sync::Semaphore>,
    /// Refusals to record as `audit/denied/...` events ([`Node::audit_denied`]).
    audit: tokio::sync::mpsc::Sender<(String, String)>,
    /// One leadership transfer at a time ([`Node::move_leader`]), and whether one holds back
    /// proposals and read-index rounds on this leader now.
    transfer: tokio::sync::Mutex<()>,
    transferring: std::sync::atomic::AtomicBool,
    /// What the leader's autopilot tracks between rounds ([`autopilot`]).
    autopilot: Mutex<autopilot::Tracked>,
}

/// Refusals recorded per identity and minute; more are counted into the next one recorded.
const AUDITS_PER_IDENTITY_MINUTE: u32 = 5;

type ReadWaiter = tokio::sync::oneshot::Sender<Result<u64, Status>>;

impl Node {
    /// Opens the data dir, starts Raft and this member's background tasks. The caller serves the
    /// client and peer ports (the grpc module above serves them).
    pub async fn start(config: NodeConfig) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let sm = StateMachine::open_with(
            &config.data_dir,
            config.watch_ring_revisions,
            config.storage_memory_mb,
        )?;
        let engine = sm.engine.clone();
        let stored_id: Option<u64> = engine.get_meta(META_SELF)?;
        let joining = stored_id.is_none() && (config.join.is_some() || config.member_of.is_some());
        let stored: Option<ClusterInfo> = engine.get_meta(META_CLUSTER)?;
        let joined = joining || stored.as_ref().is_some_and(|c| c.joined);
        let (id, cluster_id) = match (stored_id, &config.join) {
            (Some(id), _) => (id, stored.map_or(0, |c| c.cluster_id)),
            (None, _) if config.member_of.is_some() => (
                member_id(&config.name),
                config.member_of.unwrap_or_default(),
            ),
            (None, Some(endpoints)) => {
                // Not through itself: its own client port is bound already (a server that forms
                // a cluster listens before it knows whether it joins), but nothing answers on it
                // yet, so a request sent there hangs until the client's timeout (checked by hand:
                // a member-add through a bound, unserved port first in the list took 15 s). A
                // rejoining server's member-add timed out like that in two CI runs; whether
                // through its own port was not proven.
                let others: Vec<String> = endpoints
                    .iter()
                    .filter(|e| !same_addr(e, &config.client_addr))
                    .cloned()
                    .collect();
                let through = if others.is_empty() {
                    endpoints
                } else {
                    &others
                };
                join_cluster(through, &config.peer_addr, config.tls.clone()).await?
            }
            (None, None) => {
                let mut names: Vec<String> = config
                    .initial_cluster
                    .iter()
                    .map(|(n, a)| format!("{n}={a}"))
                    .collect();
                names.sort();
                (member_id(&config.name), member_id(&names.join(",")))
            }
        };
        if stored_id.is_none() {
            let mut b = rocksdb::WriteBatch::default();
            engine.put_meta(&mut b, META_CLUSTER, &ClusterInfo { cluster_id, joined });
            engine.put_meta(&mut b, META_SELF, &id);
            engine.write_sync(b)?;
        }
        let raft_config = Config {
            cluster_name: "eden".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
            install_snapshot_timeout: 10_000,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        }
        .validate()?;
        let tls = MemberTls::new(config.tls.clone());
        let server_cert = match &config.tls {
            Some(t) => Some(
                ServerCert::new(&t.cert_pem, &t.key_pem)
                    .map_err(|e| anyhow::anyhow!("this member's certificate: {e}"))?,
            ),
            None => None,
        };
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            PeerNetwork::new(&config.listen_peer_addr, cluster_id, tls.clone()),
            LogStore::new(engine.clone()),
            sm.clone(),
        )
        .await?;
        if !raft.is_initialized().await? && !joined {
            let members: BTreeMap<u64, Member> = config
                .initial_cluster
                .iter()
                .map(|(n, a)| {
                    (
                        member_id(n),
                        Member {
                            name: n.clone(),
                            peer_addr: a.clone(),
                        },
                    )
                })
                .collect();
            if !members.contains_key(&id) {
                anyhow::bail!(
                    "--initial-cluster does not name this member ({})",
                    config.name
                );
            }
            tracing::info!(?members, "bootstrapping a new cluster");
            raft.initialize(members).await?;
        }
        let (audit, audits) = tokio::sync::mpsc::channel(256);
        let asks = Arc::new(AskStreams::new(cluster_id));
        let node = Arc::new(Node {
            id,
            cluster_id,
            config,
            proposer: Proposer::start(raft.clone()),
            forwarder: Forwarder::start(asks.clone()),
            asks,
            raft,
            sm,
            peers: Mutex::new(BTreeMap::new()),
            tls,
            server_cert,
            revoking: Mutex::new(HashSet::new()),
            reads: Mutex::new((Vec::new(), false)),
            events: Default::default(),
            core_stopped: tokio::sync::watch::channel(None).0,
            stopping: tokio::sync::watch::channel(false).0,
            proposals: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_PROPOSALS)),
            transfer: tokio::sync::Mutex::new(()),
            transferring: std::sync::atomic::AtomicBool::new(false),
            autopilot: Mutex::new(Default::default()),
            audit,
        });
        node.spawn_loop(node.clone().watch_core());
        node.spawn_loop(node.clone().audit_loop(audits));
        node.spawn_loop(node.clone().lease_loop());
        node.spawn_loop(node.clone().compactor_loop());
        if let Some(policy) = node.config.auto_compaction {
            node.spawn_loop(node.clone().auto_compact_loop(policy));
        }
        node.spawn_loop(node.clone().publish_self());
        node.spawn_loop(node.clone().autopilot_loop());
        node.spawn_loop(node.clone().publish_server_info());
        if joined && !node.config.stay_learner {
            node.spawn_loop(node.clone().promote_self());
        }
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The Raft handle, for the peer service (its RPCs) and the maintenance service (its metrics).
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(crate) fn sm(&self) -> &Arc<StateMachine> {
        &self.sm
    }

    /// Records a refused request as an event (`audit/denied/KIND/NAME`, data: why), at most
    /// [`AUDITS_PER_IDENTITY_MINUTE`] per identity and minute, under the event policy; never
    /// blocks the request (a full queue drops it).
    pub fn audit_denied(&self, who: &str, why: &str) {
        let _ = self.audit.try_send((who.to_string(), why.to_string()));
    }

    async fn audit_loop(
        self: Arc<Self>,
        mut audits: tokio::sync::mpsc::Receiver<(String, String)>,
    ) {
        let mut seen: HashMap<String, (std::time::Instant, u32, u32)> = HashMap::new();
        while let Some((who, why)) = audits.recv().await {
            let e = seen
                .entry(who.clone())
                .or_insert((std::time::Instant::now(), 0, 0));
            if e.0.elapsed() > Duration::from_secs(60) {
                *e = (std::time::Instant::now(), 0, e.2);
            }
            if e.1 >= AUDITS_PER_IDENTITY_MINUTE {
                e.2 += 1;
                continue;
            }
            e.1 += 1;
            let dropped = std::mem::take(&mut e.2);
            if seen.len() > 10_000 {
                seen.retain(|_, v| v.0.elapsed() <= Duration::from_secs(60));
            }
            self.record_event(
                format!("audit/denied/{}", who.replacen(':', "/", 1)),
                serde_json::json!({ "identity": who, "reason": why, "not_recorded_before": dropped }),
            )
            .await;
        }
    }

    /// Runs one of the member's loops until it ends or the member shuts down.
    /// Records an explicit event from this member (source `member:NAME`) in the log, through
    /// the event policy; a refusal or a failed proposal is only logged (at debug level).
    pub(crate) async fn record_event(&self, tag: String, data: serde_json::Value) {
        use eden_proto::model::events::{self, Event};
        let ev = Event {
            tag,
            revision: 0,
            time: eden_proto::model::objects::now_ms(),
            source: format!("member:{}", self.config.name),
            labels: Default::default(),
            data,
        };
        let mut op = events::put(&ev);
        if self.admit_events(&mut op).await.is_err() {
            return;
        }
        if let Err(e) = self
            .propose(Command::Kv {
                op: prost::Message::encode_to_vec(&op),
            })
            .await
        {
            tracing::debug!(error = %e, tag = %ev.tag, "could not record an event");
        }
    }

    fn spawn_loop(&self, work: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.stopping.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = work => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }

    /// Stops the member's loops and its Raft core (at the end of `eden server`). Each loop drops
    /// its handle on the member as it ends.
    pub async fn shutdown(&self) {
        let _ = self.stopping.send(true);
        let _ = self.raft.shutdown().await;
    }

    pub fn mvcc(&self) -> &Mvcc {
        &self.sm.mvcc
    }

    /// Waits for the Raft core to stop (openraft sets `running_state` to an error when it stops
    /// on an error, and drops the metrics sender when its task ends, also on a panic), then
    /// records why and logs it once. A clean shutdown (`raft.shutdown()`) is not a failure.
    ///
    /// It wakes on the server metrics (role, leader, membership), which change rarely, not on
    /// the full metrics, which openraft sends on every turn of its loop: a subscriber to those
    /// wakes several times per write.
    async fn watch_core(self: Arc<Self>) {
        let mut changes = self.raft.server_metrics();
        let metrics = self.raft.metrics();
        let state = |rx: &tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, Member>>| {
            rx.borrow()
                .running_state
                .clone()
                .err()
                .map(|e| e.to_string())
        };
        let reason = loop {
            if let Some(e) = state(&metrics) {
                break e;
            }
            if changes.changed().await.is_err() {
                break state(&metrics)
                    .unwrap_or_else(|| "the Raft core task ended (panicked)".into());
            }
        };
        if reason == openraft::error::Fatal::<u64>::Stopped.to_string() {
            return;
        }
        tracing::error!(reason = %reason, "the Raft core stopped: this member can no longer serve");
        crate::metrics::metrics().raft_core_stopped.set(1);
        self.core_stopped.send_replace(Some(reason));
    }

    /// Why the Raft core stopped, if it has: a member in that state is dead and says so.
    pub fn core_failure(&self) -> Option<String> {
        self.core_stopped.borrow().clone()
    }

    /// Resolves once the Raft core stopped on a failure; returns why.
    pub async fn core_stopped(&self) -> String {
        let mut rx = self.core_stopped.subscribe();
        let why = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    pub fn hub(&self) -> &WatchHub {
        &self.sm.hub
    }

    pub fn header(&self) -> ResponseHeader {
        self.header_at(self.mvcc().current_rev())
    }

    pub fn header_at(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this member serves mutual TLS (it has certificates) or is `--insecure`.
    pub fn secure(&self) -> bool {
        self.server_cert.is_some()
    }

    /// The certificate this member presents now (with the CA and key), if it is secure.
    pub fn tls(&self) -> Option<eden_proto::client::Tls> {
        self.tls.get()
    }

    /// What this member presents when a client or member connects to it.
    pub fn server_cert(&self) -> Option<Arc<ServerCert>> {
        self.server_cert.clone()
    }

    /// Presents `tls`'s certificate from now on: on new connections to this member's ports, and
    /// on its connections to other members (those it had are remade).
    pub fn replace_certificate(&self, tls: eden_proto::client::Tls) -> Result<(), String> {
        let Some(server) = &self.server_cert else {
            return Err("this member is insecure".into());
        };
        server.replace(&tls.cert_pem, &tls.key_pem)?;
        self.tls.replace(tls);
        self.peers.lock().expect("peer lock").clear();
        self.asks.close_all();
        Ok(())
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// A connection to a member's peer port. Forwarded writes have their own (`Lane::Writes`), so
    /// that lease keep-alives and read-index questions never queue behind a burst of writes.
    pub(crate) fn peer_client(
        &self,
        addr: &str,
        lane: Lane,
    ) -> Result<PeerClient<Channel>, Status> {
        let mut peers = self.peers.lock().expect("peer lock");
        if let Some(c) = peers.get(&(addr.to_string(), lane)) {
            return Ok(c.clone());
        }
        let local = PeerNetwork::new(&self.config.listen_peer_addr, 0, Default::default()).local_ip;
        let ch = peer_channel(addr, local, self.tls.get().as_ref())
            .map_err(|e| internal(format!("bad peer address {addr}: {e}")))?;
        let c = PeerClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        peers.insert((addr.to_string(), lane), c.clone());
        Ok(c)
    }

    fn leader_addr(&self, leader: Option<u64>) -> Option<String> {
        let leader = leader?;
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .get_node(&leader)
            .map(|n| n.peer_addr.clone())
    }

    /// The one "ask the leader" loop: until [`REQUEST_TIMEOUT`], `local()` when this member
    /// leads, else `remote(leader, time left)` on the leader's peer port (on `lane`); after
    /// [`Step::Again`] (not the leader, no answer) it pauses and asks whoever leads then. At the
    /// deadline: "no leader" when there is none, else "request timed out".
    pub(crate) async fn at_leader<T, L, LF, R, RF>(
        &self,
        lane: Lane,
        mut local: L,
        mut remote: R,
    ) -> Result<T, Status>
    where
        L: FnMut() -> LF,
        LF: Future<Output = Step<T>>,
        R: FnMut(LeaderPeer, Duration) -> RF,
        RF: Future<Output = Step<T>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let step = match self.leader() {
                Some(l) if l == self.id => local().await,
                leader => match self.leader_addr(leader) {
                    Some(addr) => {
                        let client = self.peer_client(&addr, lane)?;
                        let to = LeaderPeer { client, addr, lane };
                        remote(to, deadline.saturating_duration_since(Instant::now())).await
                    }
                    None => Step::Again,
                },
            };
            if let Step::Done(r) = step {
                return r;
            }
            if Instant::now() >= deadline {
                return Err(if self.leader().is_none() {
                    errors::no_leader()
                } else {
                    errors::timeout()
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes a command through Raft from any member and waits until it is applied here or on
    /// the leader. Deterministic refusals come back as `Ok(Reply::Refused)`.
    pub async fn propose(&self, cmd: Command) -> Result<Response, Status> {
        let r = self.propose_inner(cmd).await;
        let m = crate::metrics::metrics();
        match &r {
            Ok(_) => m.proposals_committed.inc(),
            Err(_) => m.proposals_failed.inc(),
        }
        r
    }

    async fn propose_inner(&self, cmd: Command) -> Result<Response, Status> {
        let done = |r: Result<Response, ForwardError>| match r {
            Ok(r) => Step::Done(Ok(r)),
            Err(ForwardError::Failed(e)) => Step::Done(Err(unavailable(&e))),
            Err(ForwardError::Exhausted(e)) => Step::Done(Err(Status::resource_exhausted(e))),
            Err(ForwardError::NotLeader) => Step::Again,
        };
        self.at_leader(
            Lane::Writes,
            || {
                let cmd = cmd.clone();
                async move { done(self.propose_local(cmd).await) }
            },
            |to, left| {
                let cmd = cmd.clone();
                async move {
                    match self.forwarder.forward(to, cmd, left).await {
                        Forwarded::TimedOut => Step::Done(Err(errors::timeout())),
                        Forwarded::Answer(r) => done(r),
                        Forwarded::BadReply(e) => {
                            Step::Done(Err(internal(format!("bad forward reply: {e}"))))
                        }
                        Forwarded::Failed(status) if is_connect_error(&status) => Step::Again,
                        Forwarded::Failed(status) => {
                            tracing::warn!(code = ?status.code(), "forwarding a write failed: {}", status.message());
                            Step::Done(Err(errors::leader_changed()))
                        }
                    }
                }
            },
        )
        .await
    }

    /// Proposes on this member only; `NotLeader` when it does not lead (and the write surely was
    /// not committed).
    pub async fn propose_local(&self, cmd: Command) -> Result<Response, ForwardError> {
        if matches!(cmd, Command::Batch(_)) {
            // Only the proposer makes batches; one from elsewhere would stop every member's Raft
            // core when applied (a batch inside a batch).
            return Err(ForwardError::Failed("a batch cannot be proposed".into()));
        }
        if self.transferring() {
            // Handing leadership over: the write goes to the next leader.
            return Err(ForwardError::NotLeader);
        }
        let from_client = matches!(cmd, Command::Kv { .. } | Command::LeaseGrant { .. });
        if let Command::Kv { op } = &cmd {
            if !self.is_leader() {
                return Err(ForwardError::NotLeader);
            }
            self.events
                .take_tokens(&self.config.events, op)
                .map_err(ForwardError::Exhausted)?;
        }
        // Backpressure (etcd's "too many requests"): a leader whose state machine trails its log
        // by more than MAX_APPLY_LAG entries, or that already has MAX_PENDING_PROPOSALS client
        // writes in Raft, refuses more at once rather than queueing without bound. A refused
        // write was never proposed, so clients retry it (with backoff).
        let _permit = if from_client {
            let lag = {
                let m = self.raft.metrics();
                let m = m.borrow();
                m.last_log_index
                    .unwrap_or(0)
                    .saturating_sub(m.last_applied.map_or(0, |l| l.index))
            };
            if lag > MAX_APPLY_LAG {
                crate::metrics::metrics().proposals_refused.inc();
                return Err(ForwardError::Exhausted(errors::TOO_MANY_REQUESTS.into()));
            }
            match self.proposals.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    crate::metrics::metrics().proposals_refused.inc();
                    return Err(ForwardError::Exhausted(errors::TOO_MANY_REQUESTS.into()));
                }
            }
        } else {
            None
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, self.proposer.write(cmd)).await {
            Err(_) => Err(ForwardError::Failed(errors::TIMEOUT.into())),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(ForwardError::NotLeader)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ForwardError::Failed(errors::membership_change_refused(e)))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ForwardError::Failed(errors::stopped_message(e))),
        }
    }

    /// Waits until this member may serve a linearizable read: the leader confirms its leadership
    /// with a quorum and names a read index, and this member has applied up to it.
    ///
    /// Concurrent reads share read-index rounds (as etcd's linearizable read loop does): a read
    /// waits for a round that starts after it arrived, and one round answers every read that
    /// arrived before it started, so its index is at least the commit index each of them saw.
    pub async fn read_barrier(self: &Arc<Self>) -> Result<(), Status> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.reads.lock().expect("reads lock");
            q.0.push(tx);
            !std::mem::replace(&mut q.1, true)
        };
        if start {
            tokio::spawn(self.clone().read_rounds());
        }
        let index = rx.await.unwrap_or_else(|_| Err(errors::timeout()))?;
        self.wait_applied(index, deadline).await
    }

    /// Runs read-index rounds while reads are waiting; each round answers those queued before it.
    async fn read_rounds(self: Arc<Self>) {
        loop {
            let batch = {
                let mut q = self.reads.lock().expect("reads lock");
                if q.0.is_empty() {
                    q.1 = false;
                    return;
                }
                std::mem::take(&mut q.0)
            };
            let r = self.read_index_round().await;
            for tx in batch {
                let _ = tx.send(r.clone());
            }
        }
    }

    /// One read-index round: from the leader's quorum, here or over the peer port.
    async fn read_index_round(&self) -> Result<u64, Status> {
        self.at_leader(
            Lane::Control,
            || async move {
                match self.read_index_local().await {
                    Ok(index) => Step::Done(Ok(index)),
                    Err(ForwardError::Failed(e) | ForwardError::Exhausted(e)) => {
                        Step::Done(Err(unavailable(&e)))
                    }
                    Err(ForwardError::NotLeader) => Step::Again,
                }
            },
            |to, left| async move {
                let asked = self.asks.ask(&to, Ask::ReadIndex);
                match tokio::time::timeout(left, asked).await {
                    Ok(Ok(Answer::ReadIndex(Ok(index)))) => Step::Done(Ok(index)),
                    Ok(Ok(Answer::Writes(_))) => Step::Done(Err(internal(
                        "the leader answered a read-index question with writes",
                    ))),
                    _ => Step::Again,
                }
            },
        )
        .await
    }

    /// On the leader: confirms leadership with a quorum and returns the read index.
    pub async fn read_index_local(&self) -> Result<u64, ForwardError> {
        if self.transferring() {
            return Err(ForwardError::NotLeader);
        }
        let asked = async {
            if self.config.lease_reads {
                // Half the leader lease (`election_timeout_max`, twice this): decision 0028.
                let lease = Duration::from_millis(self.config.election_timeout_ms);
                self.raft.get_read_log_id_leased(lease).await
            } else {
                self.raft.get_read_log_id().await
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, asked).await {
            Err(_) => Err(ForwardError::Failed(errors::TIMEOUT.into())),
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(ForwardError::NotLeader)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(ForwardError::NotLeader)
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ForwardError::Failed(errors::stopped_message(e))),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), Status> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| errors::timeout())
    }

    /// The active alarms, as (member id, alarm type).
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        let set: std::collections::BTreeSet<(u64, i32)> = self
            .sm
            .engine
            .get_meta(META_ALARMS)
            .ok()
            .flatten()
            .unwrap_or_default();
        set.into_iter().collect()
    }

    /// Refuses a write that adds data while a NOSPACE alarm is active, or when this member's
    /// database is past its quota (then it raises the alarm first, through the log, as etcd does).
    /// Deletes, compaction and disarming are never refused.
    pub async fn check_quota(&self) -> Result<(), Status> {
        if self.alarms().iter().any(|(_, a)| *a == ALARM_NOSPACE) {
            return Err(errors::no_space());
        }
        // A size under the quota may be up to SIZE_MAX_AGE old (what arrives meanwhile is let
        // through, as etcd lets through what is in flight past its check); one over it is measured
        // again, so a size from before a compaction and defragmentation refuses nothing.
        let quota = self.config.quota_bytes;
        if quota <= 0 || self.sm.engine.recent_size_bytes() <= quota {
            return Ok(());
        }
        let size = self.sm.engine.measure_size_bytes();
        if size <= quota {
            return Ok(());
        }
        tracing::warn!(quota, size, "database space exceeded: raising NOSPACE");
        self.propose(Command::Alarm {
            activate: true,
            member: self.id,
            alarm: ALARM_NOSPACE,
        })
        .await?;
        Err(errors::no_space())
    }

    /// Grants a lease (id 0: the member picks one).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64, i64), Status> {
        self.check_quota().await?;
        if ttl > MAX_LEASE_TTL_SECS {
            return Err(errors::lease_ttl_too_large());
        }
        let ttl = ttl.max(MIN_LEASE_TTL_SECS);
        let id = if id == 0 {
            (rand::random::<u64>() >> 2) as i64 + 1
        } else {
            id
        };
        let r = self.propose(Command::LeaseGrant { id, ttl }).await?;
        match r.result {
            Reply::LeaseGranted { id, ttl } => Ok((id, ttl, r.revision)),
            Reply::Refused(e) => Err(refused(&e)),
            other => Err(internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// True when this member is a learner (not counted in the quorum).
    pub fn is_learner(&self) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        !m.membership().voter_ids().any(|id| id == self.id)
    }

    /// etcd's learners answer only serializable reads, Status and MemberList.
    pub fn refuse_learner(&self) -> Result<(), Status> {
        if self.is_learner() {
            return Err(errors::learner_refused());
        }
        Ok(())
    }

    /// Makes a membership change through the leader; returns the new member's id for an add.
    ///
    /// A leader may step down in the middle of a change (removing itself does exactly that), so an
    /// attempt can take effect without an answer. A retry that then finds its work done (the member
    /// gone, already a voter, the address already added) reports success.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Option<u64>, Status> {
        // An earlier attempt went out and got no answer (its leader stepped down or vanished).
        let unanswered = std::sync::atomic::AtomicBool::new(false);
        let unanswered = &unanswered;
        let outcome = |r: Result<Option<u64>, MembershipError>| match r {
            Ok(id) => Step::Done(Ok(id)),
            Err(MembershipError::Refused { code, message }) => {
                if unanswered.load(Ordering::Relaxed) {
                    if let Some(done) =
                        membership::already_done(&change, &message, &self.membership_nodes())
                    {
                        return Step::Done(Ok(done));
                    }
                }
                Step::Done(Err(Status::new(tonic::Code::from(code), message)))
            }
            Err(MembershipError::NotLeader) => {
                unanswered.store(true, Ordering::Relaxed);
                Step::Again
            }
        };
        let cluster = self.cluster_id;
        self.at_leader(
            Lane::Control,
            || {
                let change = change.clone();
                async move { outcome(self.change_membership_local(change).await) }
            },
            |LeaderPeer { mut client, .. }, left| {
                let payload = to_payload(&change, cluster);
                async move {
                    let asked = client.membership(payload);
                    match tokio::time::timeout(left, asked).await {
                        Ok(Ok(reply)) => {
                            match from_payload::<Result<Option<u64>, MembershipError>>(
                                reply.get_ref(),
                            ) {
                                Ok(r) => outcome(r),
                                Err(e) => {
                                    Step::Done(Err(internal(format!("bad membership reply: {e}"))))
                                }
                            }
                        }
                        _ => {
                            unanswered.store(true, Ordering::Relaxed);
                            Step::Again
                        }
                    }
                }
            },
        )
        .await
    }

    /// On the leader: checks and makes the change (see [`crate::membership`]).
    pub async fn change_membership_local(
        &self,
        change: MembershipChange,
    ) -> Result<Option<u64>, MembershipError> {
        if !self.is_leader() {
            return Err(MembershipError::NotLeader);
        }
        let metrics = self.raft.metrics().borrow().clone();
        let m = metrics.membership_config.membership();
        let view = membership::View {
            nodes: m.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            voters: m.voter_ids().collect(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            matched: metrics
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let (changes, retain, added) = membership::plan(change, &view)?;
        let r = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.raft.change_membership(changes, retain),
        )
        .await;
        membership::outcome(r, added)
    }

    /// The members (voters and learners) with their peer addresses.
    fn membership_nodes(&self) -> BTreeMap<u64, Member> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// A member that joined as a learner promotes itself once it is in sync, unless autopilot
    /// is on (it decides who votes).
    pub(crate) async fn promote_self(self: std::sync::Arc<Self>) {
        loop {
            if !self.is_learner() {
                return;
            }
            if self.autopilot_settings().enabled {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            match self
                .change_membership(MembershipChange::Promote { id: self.id })
                .await
            {
                Ok(_) => {
                    tracing::info!("promoted to voter");
                    return;
                }
                Err(e) if e.message() == errors::MEMBER_NOT_LEARNER => return,
                Err(e) => tracing::debug!(reason = %e.message(), "not promoted yet"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Resolves when this member has been removed from the cluster (it then stops, as etcd does).
    ///
    /// A removed follower may never see the configuration that leaves it out (the leader stops
    /// replicating to it first), so a member that does not lead also asks the others, every few
    /// seconds, for a linearizable member list: only a member in a working quorum can answer it.
    pub async fn removed(&self) {
        let mut metrics = self.raft.server_metrics();
        let mut was_member = false;
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            let is_member = metrics
                .borrow()
                .membership_config
                .membership()
                .get_node(&self.id)
                .is_some();
            if is_member {
                was_member = true;
            } else if was_member {
                tracing::warn!("this member was removed from the cluster");
                return;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { std::future::pending::<()>().await },
                _ = tick.tick() => {
                    if was_member && !self.is_leader() && self.removed_says_cluster().await {
                        tracing::warn!("the cluster says this member was removed");
                        return;
                    }
                }
            }
        }
    }

    /// Asks the other members' client ports whether this member is still in the cluster.
    async fn removed_says_cluster(&self) -> bool {
        let Ok(attrs) = self.sm.members() else {
            return false;
        };
        let urls: Vec<String> = attrs
            .iter()
            .filter(|(id, _)| **id != self.id)
            .filter_map(|(_, a)| a.client_urls.first().cloned())
            .collect();
        if urls.is_empty() {
            return false;
        }
        let Ok(client) = eden_proto::client::Client::with_tls(&urls, self.tls()) else {
            return false;
        };
        let list = client
            .call(eden_proto::client::Retry::Read, |ch| async move {
                eden_proto::etcdserverpb::cluster_client::ClusterClient::new(ch)
                    .member_list(eden_proto::etcdserverpb::MemberListRequest { linearizable: true })
                    .await
                    .map(|r| r.into_inner())
            })
            .await;
        match list {
            Ok(l) => !l.members.is_empty() && !l.members.iter().any(|m| m.id == self.id),
            Err(_) => false,
        }
    }
    /// Checks every event put in `op` against the event policy and attaches it to its bucket's
    /// lease (see [`crate::events`]).
    pub async fn admit_events(&self, op: &mut RequestOp) -> Result<(), Status> {
        self.events
            .admit_op(&self.config.events, op, |lease, ttl| async move {
                self.lease_grant(lease, ttl).await.map(|_| ())
            })
            .await
    }

    /// Answers a lease question here if this member leads, else asks the leader.
    pub async fn lease_query(&self, q: LeaseQuery) -> Result<LeaseAnswer, Status> {
        let cluster = self.cluster_id;
        let answered = |a: LeaseAnswer| match a {
            LeaseAnswer::NotLeader => Step::Again,
            a => Step::Done(Ok(a)),
        };
        self.at_leader(
            Lane::Control,
            || {
                let a = self.lease_query_local(&q);
                async move { answered(a) }
            },
            |LeaderPeer { mut client, .. }, left| {
                let payload = to_payload(&q, cluster);
                async move {
                    let asked = client.lease_query(payload);
                    match tokio::time::timeout(left.min(Duration::from_secs(2)), asked).await {
                        Ok(Ok(reply)) => match from_payload(reply.get_ref()) {
                            Ok(a) => answered(a),
                            Err(e) => Step::Done(Err(internal(format!("bad lease reply: {e}")))),
                        },
                        _ => Step::Again,
                    }
                }
            },
        )
        .await
    }

    pub fn lease_query_local(&self, q: &LeaseQuery) -> LeaseAnswer {
        if !self.is_leader() {
            return LeaseAnswer::NotLeader;
        }
        match q {
            LeaseQuery::KeepAlive(id) => LeaseAnswer::Ttl(self.sm.leases.renew(*id).unwrap_or(0)),
            LeaseQuery::TimeToLive(id) => LeaseAnswer::Remaining(self.sm.leases.remaining(*id)),
        }
    }

    /// A published client address as a URL, with the scheme clients must use to reach it.
    fn client_url(&self, addr: &str) -> String {
        if addr.contains("://") {
            return addr.to_string();
        }
        let scheme = if self.secure() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// The members with their published names and client URLs.
    pub fn members(&self) -> Result<Vec<PbMember>, EngineError> {
        let attrs = self.sm.members()?;
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: HashSet<u64> = m.membership().voter_ids().collect();
        Ok(m.membership()
            .nodes()
            .map(|(id, node)| {
                let a = attrs.get(id);
                PbMember {
                    id: *id,
                    name: a.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                    peer_ur_ls: vec![format!("http://{}", node.peer_addr)],
                    client_ur_ls: a
                        .map(|a| a.client_urls.iter().map(|u| self.client_url(u)).collect())
                        .unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect())
    }

    /// The leader revokes expired leases through the log; a new leader first gives every lease a
    /// full TTL.
    async fn lease_loop(self: Arc<Self>) {
        let mut metrics = self.raft.server_metrics();
        let mut led_term: Option<u64> = None;
        let mut last_leader: Option<u64> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let (state, term, leader) = {
                let m = metrics.borrow();
                (m.state, m.vote.leader_id().get_term(), m.current_leader)
            };
            if leader.is_some() && leader != last_leader {
                crate::metrics::metrics().leader_changes.inc();
            }
            last_leader = leader;
            if state != ServerState::Leader {
                led_term = None;
                continue;
            }
            if led_term != Some(term) {
                led_term = Some(term);
                self.sm.leases.reset_all();
                continue;
            }
            for id in self.sm.leases.expired() {
                if !self.revoking.lock().expect("revoking lock").insert(id) {
                    continue;
                }
                let node = self.clone();
                tokio::spawn(async move {
                    match node.propose(Command::LeaseRevoke { id }).await {
                        Ok(_) => tracing::info!(lease = id, "lease expired and was revoked"),
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e.message(), "revoking an expired lease failed")
                        }
                    }
                    node.revoking.lock().expect("revoking lock").remove(&id);
                });
            }
        }
    }

    /// Removes what compactions made unreachable, in the background.
    async fn compactor_loop(self: Arc<Self>) {
        loop {
            let target = self.mvcc().compact_rev();
            let done = self
                .sm
                .engine
                .get_meta::<i64>(META_COMPACT_DONE)
                .ok()
                .flatten()
                .unwrap_or(0);
            if target > done {
                let sm = self.sm.clone();
                let res =
                    tokio::task::spawn_blocking(move || sm.mvcc.physical_compact(target)).await;
                match res {
                    Ok(Ok(())) => tracing::info!(revision = target, "compacted old versions"),
                    Ok(Err(e)) => tracing::error!(error = %e, "compaction failed"),
                    Err(e) => tracing::error!(error = %e, "compaction task failed"),
                }
                continue;
            }
            self.sm.compactor.notified().await;
        }
    }

    /// On the leader: compacts history older than the retention, through the log.
    ///
    /// Revision mode keeps the last N revisions (checked every 5 s, compacting when at least N/10
    /// more revisions piled up). Periodic mode samples the revision every retention/10 (at least
    /// every second) and compacts to the newest sample older than the retention.
    async fn auto_compact_loop(self: Arc<Self>, policy: AutoCompaction) {
        let every = match policy {
            AutoCompaction::Revision(_) => Duration::from_secs(5),
            AutoCompaction::Periodic(d) => (d / 10).max(Duration::from_secs(1)),
        };
        let mut samples: std::collections::VecDeque<(Instant, i64)> =
            std::collections::VecDeque::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let current = self.mvcc().current_rev();
            let compacted = self.mvcc().compact_rev();
            let target = match policy {
                AutoCompaction::Revision(keep) => {
                    let t = current - keep;
                    (t > compacted + (keep / 10).max(1) - 1).then_some(t)
                }
                AutoCompaction::Periodic(keep) => {
                    samples.push_back((Instant::now(), current));
                    let mut t = None;
                    while samples.front().is_some_and(|(at, _)| at.elapsed() >= keep) {
                        t = samples.pop_front().map(|(_, r)| r);
                    }
                    t.filter(|t| *t > compacted)
                }
            };
            let Some(target) = target else { continue };
            if !self.is_leader() || target <= 0 {
                continue;
            }
            match self.propose(Command::Compact { revision: target }).await {
                Ok(r) if matches!(r.result, Reply::Done) => {
                    tracing::info!(revision = target, "auto-compacted history")
                }
                Ok(r) => {
                    tracing::debug!(revision = target, reply = ?r.result, "auto-compaction refused")
                }
                Err(e) => {
                    tracing::warn!(revision = target, error = %e.message(), "auto-compaction failed")
                }
            }
        }
    }

    /// Publishes this member's name and client URL through the log, as etcd members do.
    async fn publish_self(self: Arc<Self>) {
        // Stored as a bare HOST:PORT; the member list gives it as a URL with the scheme of the
        // cluster (`members`; design/decisions/0018-client-urls-with-a-scheme.md).
        let url = self.config.client_addr.clone();
        loop {
            if let Ok(attrs) = self.sm.members() {
                if attrs
                    .get(&self.id)
                    .is_some_and(|a| a.client_urls == [url.clone()] && a.name == self.config.name)
                {
                    return;
                }
            }
            let cmd = Command::PublishMember {
                id: self.id,
                name: self.config.name.clone(),
                client_urls: vec![url.clone()],
            };
            if self.propose(cmd).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Asks a running cluster (through any of `endpoints`) to add this member as a learner; returns
/// the id the cluster gave it and the cluster id.
impl crate::metrics::ServerHealth for Node {
    fn certificate_refused(&self, der: &[u8]) -> Option<String> {
        let info = match eden_proto::pki::cert_info(der) {
            Ok(i) => i,
            Err(e) => return Some(e),
        };
        let now = (eden_proto::model::objects::now_ms() / 1000) as i64;
        if info.not_after < now {
            return Some(format!("the certificate of {} has expired", info.identity));
        }
        if crate::auth::StoreFacts::new(self.mvcc()).revoked(&info) {
            return Some(format!(
                "the certificate of {} (serial {}) was revoked",
                info.identity, info.serial
            ));
        }
        None
    }

    fn unhealthy(&self) -> Option<String> {
        if let Some(why) = self.core_failure() {
            return Some(format!("raft core stopped: {why}"));
        }
        if self.leader().is_none() {
            return Some("no leader".into());
        }
        let alarms = self.alarms();
        if !alarms.is_empty() {
            return Some(format!("alarms: {alarms:?}"));
        }
        None
    }

    fn gauges(&self) -> crate::metrics::StateGauges {
        let m = self.raft.metrics().borrow().clone();
        let all = eden_proto::etcdserverpb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        crate::metrics::StateGauges {
            has_leader: m.current_leader.is_some(),
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            db_size: self.sm.engine.size_bytes(),
            keys: self.mvcc().range(&all).ok().map(|r| r.count),
            leases: self.sm.leases.ids().len() as i64,
        }
    }
}

/// Whether two client addresses name the same `HOST:PORT` (a scheme in front ignored).
fn same_addr(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        s.trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    bare(a) == bare(b)
}

async fn join_cluster(
    endpoints: &[String],
    peer_addr: &str,
    tls: Option<eden_proto::client::Tls>,
) -> anyhow::Result<(u64, u64)> {
    use eden_proto::etcdserverpb::cluster_client::ClusterClient;
    use eden_proto::etcdserverpb::MemberAddRequest;
    let secure = tls.is_some();
    let client = eden_proto::client::Client::with_tls(endpoints, tls)?;
    let req = MemberAddRequest {
        peer_ur_ls: vec![format!("http://{peer_addr}")],
        is_learner: true,
    };
    // Another member may be joining or being promoted: wait for that change to finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let added = loop {
        let r = client
            .call(eden_proto::client::Retry::Write, |ch| {
                let req = req.clone();
                async move {
                    ClusterClient::new(ch)
                        .member_add(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await;
        match r {
            Err(eden_proto::client::ClientError::Server(s))
                if s.message() == errors::MEMBERSHIP_CHANGE_IN_PROGRESS
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            // No answer in time (a CI run saw one take 15 s right after autopilot removed this
            // server's old self): ask again. If the first attempt added us after all, the next
            // one finds our peer URL taken by an unstarted member and takes that entry over.
            Err(eden_proto::client::ClientError::Server(s))
                if matches!(
                    s.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) && std::time::Instant::now() < deadline =>
            {
                tracing::warn!("joining: no answer in time ({}); asking again", s.message());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => break other,
        }
    };
    let resp = match added {
        Ok(r) => r,
        // Added beforehand with `eden member add`: take over that (unstarted) entry.
        Err(eden_proto::client::ClientError::Server(s))
            if s.message() == errors::PEER_URL_EXIST =>
        {
            let list = client.member_list().await?;
            let url = format!("http://{peer_addr}");
            let m = list
                .members
                .iter()
                .find(|m| m.peer_ur_ls.contains(&url) && m.client_ur_ls.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("{url} is already a started member of the cluster")
                })?;
            eden_proto::etcdserverpb::MemberAddResponse {
                header: list.header,
                member: Some(m.clone()),
                members: list.members,
            }
        }
        Err(e @ eden_proto::client::ClientError::Unavailable(_)) => anyhow::bail!(
            "joining through {}: {e} (is it {} cluster? a member started with --insecure \
             cannot join a secure cluster, nor a secure member an insecure one)",
            endpoints.join(","),
            if secure { "a secure" } else { "an insecure" }
        ),
        Err(e) => anyhow::bail!("joining through {}: {e}", endpoints.join(",")),
    };
    let member = resp
        .member
        .ok_or_else(|| anyhow::anyhow!("the cluster did not say which id it gave this member"))?;
    tracing::info!(
        id = format!("{:x}", member.id),
        "joined the cluster as a learner"
    );
    Ok((member.id, resp.header.map_or(0, |h| h.cluster_id)))
}

/// True when a peer call failed before the request could have been sent.
fn is_connect_error(status: &Status) -> bool {
    let m = status.message().to_ascii_lowercase();
    status.code() == tonic::Code::Unavailable
        && (m.contains("connect") || m.contains("connection refused"))
}
