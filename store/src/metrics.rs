//! Prometheus metrics and the health endpoint, served over HTTP on `--metrics-addr`.
//!
//! Names follow etcd's where etcd has the same measure, so existing etcd dashboards and alerts
//! work: `etcd_server_has_leader`, `etcd_server_leader_changes_seen_total`,
//! `etcd_server_proposals_{committed,applied,failed}_total`, `etcd_mvcc_db_total_size_in_bytes`,
//! `etcd_debugging_mvcc_keys_total`, `etcd_debugging_mvcc_{watcher,watch_stream,slow_watcher}_total`,
//! `etcd_disk_wal_fsync_duration_seconds`, `grpc_server_handling_seconds{grpc_method}`, plus
//! `eden_raft_term`, `eden_raft_applied_index` and `eden_leases_total`.
//!
//! Counters and histograms are updated where things happen; the gauges that describe state (term,
//! leader, applied index, db size, keys, leases) are read when Prometheus scrapes.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::node::Node;

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
    pub raft_core_stopped: IntGauge,
    pub events_denied: IntCounter,
    pub events_refused: IntCounter,
    pub db_size: IntGauge,
    pub keys: IntGauge,
    pub leases: IntGauge,
    pub watchers: IntGauge,
    pub watch_streams: IntGauge,
    pub slow_watchers: IntGauge,
    pub fsync: Histogram,
    pub grpc: HistogramVec,
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
        Metrics {
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
            fsync,
            grpc,
            registry,
        }
    }

    /// Reads the state gauges from the member and renders everything in Prometheus text format.
    pub fn render(&self, node: &Node) -> String {
        let m = node.raft.metrics().borrow().clone();
        self.has_leader.set(i64::from(m.current_leader.is_some()));
        self.term.set(m.current_term as i64);
        self.applied_index
            .set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.db_size.set(node.sm.engine.size_bytes());
        let all = eden_proto::etcdserverpb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        };
        if let Ok(r) = node.mvcc().range(&all) {
            self.keys.set(r.count);
        }
        self.leases.set(node.sm.leases.ids().len() as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `/metrics` (Prometheus text) and `/health` (200 when this member's Raft core runs, it
/// has a leader and no alarm, else 503 with the reason: for load balancers and supervisors) until
/// `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let n1 = node.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let node = n1.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || metrics().render(&node))
                        .await
                        .unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let node = node.clone();
                async move {
                    let leader = node.leader().is_some();
                    let alarms = node.alarms();
                    let core = node.core_failure();
                    if core.is_none() && leader && alarms.is_empty() {
                        (StatusCode::OK, "{\"health\":\"true\"}\n".to_string())
                    } else {
                        let reason = if let Some(why) = core {
                            format!("raft core stopped: {why}")
                        } else if !leader {
                            "no leader".to_string()
                        } else {
                            format!("alarms: {alarms:?}")
                        };
                        let reason = serde_json::to_string(&reason).unwrap_or_default();
                        let reason = reason.trim_matches('"');
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}\n"),
                        )
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A tower layer that times every client RPC into `grpc_server_handling_seconds`.
#[derive(Clone, Default)]
pub struct RpcTimer;

impl<S> tower::Layer<S> for RpcTimer {
    type Service = TimedRpc<S>;
    fn layer(&self, inner: S) -> TimedRpc<S> {
        TimedRpc { inner }
    }
}

#[derive(Clone)]
pub struct TimedRpc<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for TimedRpc<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Paths are /etcdserverpb.KV/Range.
        let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let service = parts
            .next()
            .unwrap_or("")
            .trim_start_matches("etcdserverpb.")
            .to_string();
        let method = parts.next().unwrap_or("").to_string();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            metrics()
                .grpc
                .with_label_values(&[&service, &method])
                .observe(start.elapsed().as_secs_f64());
            r
        })
    }
}
