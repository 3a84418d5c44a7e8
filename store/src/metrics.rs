//! Prometheus metrics: one registry per process that every layer updates where things happen. A
//! leaf: it knows no other module (the HTTP endpoint above the member, `http.rs`, serves it).
//!
//! Names follow etcd's where etcd has the same measure, so existing etcd dashboards and alerts
//! work: `etcd_server_has_leader`, `etcd_server_leader_changes_seen_total`,
//! `etcd_server_proposals_{committed,applied,failed}_total`, `etcd_mvcc_db_total_size_in_bytes`,
//! `etcd_debugging_mvcc_keys_total`, `etcd_debugging_mvcc_{watcher,watch_stream,slow_watcher}_total`,
//! `etcd_disk_wal_fsync_duration_seconds`, `grpc_server_handling_seconds{grpc_method}`, plus
//! `eden_raft_term`, `eden_raft_applied_index`, `eden_leases_total` and
//! `eden_watch_stream_wakeups_total`, `eden_autopilot_actions_total{action}` and
//! `eden_cluster_failure_tolerance`.
//!
//! Counters and histograms are updated where things happen; the gauges that describe state (term,
//! leader, applied index, db size, keys, leases) are read when Prometheus scrapes.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub has_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub term: IntGauge,
    pub applied_index: IntGauge,
    pub proposals_committed: IntCounter,
    pub proposals_applied: IntCounter,
    pub proposals_failed: IntCounter,
    pub proposals_refused: IntCounter,
    pub authorized_writes_rechecked: IntCounter,
    pub raft_core_stopped: IntGauge,
    pub events_denied: IntCounter,
    pub events_refused: IntCounter,
    pub db_size: IntGauge,
    pub keys: IntGauge,
    pub leases: IntGauge,
    pub watchers: IntGauge,
    pub watch_streams: IntGauge,
    pub slow_watchers: IntGauge,
    pub watch_wakeups: IntCounter,
    pub fsync: Histogram,
    pub proposals_batched: Histogram,
    pub grpc: HistogramVec,
    pub autopilot_actions: IntCounterVec,
    pub failure_tolerance: IntGauge,
}

/// The process's metrics (one member per process).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let buckets = prometheus::exponential_buckets(0.0005, 2.0, 16).expect("buckets");
        let fsync = Histogram::with_opts(
            HistogramOpts::new(
                "etcd_disk_wal_fsync_duration_seconds",
                "Latency of synced RocksDB writes (the WAL fsync).",
            )
            .buckets(buckets.clone()),
        )
        .expect("metric");
        registry
            .register(Box::new(fsync.clone()))
            .expect("register");
        let proposals_batched = Histogram::with_opts(
            HistogramOpts::new(
                "eden_raft_proposals_per_entry",
                "Commands in each batch entry the leader proposed (group commit; lone commands \
                 are not counted).",
            )
            .buckets(prometheus::exponential_buckets(2.0, 2.0, 10).expect("buckets")),
        )
        .expect("metric");
        registry
            .register(Box::new(proposals_batched.clone()))
            .expect("register");
        let grpc = HistogramVec::new(
            HistogramOpts::from(Opts::new(
                "grpc_server_handling_seconds",
                "Time to answer a client RPC (to its first response for streams).",
            ))
            .buckets(buckets),
            &["grpc_service", "grpc_method"],
        )
        .expect("metric");
        registry.register(Box::new(grpc.clone())).expect("register");
        let autopilot_actions = IntCounterVec::new(
            Opts::new(
                "eden_autopilot_actions_total",
                "Membership changes the leader's autopilot made (promoted, demoted, removed).",
            ),
            &["action"],
        )
        .expect("metric");
        registry
            .register(Box::new(autopilot_actions.clone()))
            .expect("register");
        Metrics {
            autopilot_actions,
            failure_tolerance: gauge(
                "eden_cluster_failure_tolerance",
                "How many voters may fail with the cluster still committing (set by the leader's \
                 autopilot).",
            ),
            has_leader: gauge("etcd_server_has_leader", "1 if this member knows a leader."),
            leader_changes: counter(
                "etcd_server_leader_changes_seen_total",
                "Leader changes this member has seen.",
            ),
            term: gauge("eden_raft_term", "The current Raft term."),
            applied_index: gauge(
                "eden_raft_applied_index",
                "The last log index applied to the state machine.",
            ),
            proposals_committed: counter(
                "etcd_server_proposals_committed_total",
                "Proposals from this member that were committed.",
            ),
            proposals_applied: counter(
                "etcd_server_proposals_applied_total",
                "Log entries with a command applied by this member.",
            ),
            proposals_failed: counter(
                "etcd_server_proposals_failed_total",
                "Proposals from this member that failed.",
            ),
            proposals_refused: counter(
                "eden_server_proposals_refused_total",
                "Client writes this leader refused with \"too many requests\" (backpressure).",
            ),
            authorized_writes_rechecked: counter(
                "eden_server_authorized_writes_rechecked_total",
                "Writes whose caller's rights changed between their check and their application, \
                 checked again.",
            ),
            raft_core_stopped: gauge(
                "eden_raft_core_stopped",
                "1 once this member's Raft core stopped (a storage failure or a bug): it exits.",
            ),
            events_denied: counter(
                "eden_events_denied_total",
                "Explicit events not stored because the event policy denies their tag.",
            ),
            events_refused: counter(
                "eden_events_refused_total",
                "Explicit events not stored because they were malformed, too large or over their source's rate.",
            ),
            db_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "The database's size on disk (SST and WAL files).",
            ),
            keys: gauge("etcd_debugging_mvcc_keys_total", "Live keys."),
            leases: gauge("eden_leases_total", "Leases."),
            watchers: gauge(
                "etcd_debugging_mvcc_watcher_total",
                "Watches on this member.",
            ),
            watch_streams: gauge(
                "etcd_debugging_mvcc_watch_stream_total",
                "Watch streams on this member.",
            ),
            slow_watchers: gauge(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Watches catching up from storage.",
            ),
            watch_wakeups: counter(
                "eden_watch_stream_wakeups_total",
                "Times a watch stream was woken by new revisions with a key it watches.",
            ),
            fsync,
            proposals_batched,
            grpc,
            registry,
        }
    }

    /// Sets the state gauges from `g` and renders everything in Prometheus text format.
    pub fn render(&self, g: &StateGauges) -> String {
        self.has_leader.set(i64::from(g.has_leader));
        self.term.set(g.term as i64);
        self.applied_index.set(g.applied_index as i64);
        self.db_size.set(g.db_size);
        if let Some(keys) = g.keys {
            self.keys.set(keys);
        }
        self.leases.set(g.leases);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What the HTTP endpoint (`http.rs`) asks a member (etcd's `ServerHealth`).
pub trait ServerHealth: Send + Sync + 'static {
    /// None when healthy (its Raft core runs, it has a leader, no alarm is raised); else why not.
    fn unhealthy(&self) -> Option<String>;
    /// The state gauges, read at each scrape (may block briefly: called off the async threads).
    fn gauges(&self) -> StateGauges;
    /// Why a client certificate (DER) that passed the TLS handshake is refused now (revoked,
    /// expired), if it is.
    fn certificate_refused(&self, _der: &[u8]) -> Option<String> {
        None
    }
}

/// The gauges that describe a member's state, read when Prometheus scrapes.
#[derive(Debug, Default, Clone)]
pub struct StateGauges {
    pub has_leader: bool,
    pub term: u64,
    pub applied_index: u64,
    pub db_size: i64,
    /// None when the count could not be read (the gauge keeps its last value).
    pub keys: Option<i64>,
    pub leases: i64,
}
