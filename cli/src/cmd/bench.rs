//! `eden bench`: a load generator over the etcd v3 API. It only speaks the etcd protocol, so the
//! same command measures eden or etcd (see bench/compare.sh).
//!
//! Every workload reports requests, errors (counted and shown, never hidden), throughput and
//! latency percentiles (p50, p90, p99, p99.9, max), as text or as JSON with `-w json`, and shows a
//! progress bar on a terminal while it runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use eden_proto::client::Tls;
use eden_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use eden_proto::etcdserverpb::kv_client::KvClient;
use eden_proto::etcdserverpb::lease_client::LeaseClient;
use eden_proto::etcdserverpb::watch_client::WatchClient;
use eden_proto::etcdserverpb::{
    request_op, watch_request, Compare, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    WatchRequest,
};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Args, Clone)]
pub struct Load {
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections the clients share (round-robin over the endpoints).
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Stop after this many requests in all...
    #[arg(long)]
    pub total: Option<u64>,
    /// ...or after this many seconds [default: 10 s when --total is not given].
    #[arg(long)]
    pub duration: Option<f64>,
    /// At most this many requests per second in all (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Puts of random or sequential keys.
    Put {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        /// Keys are drawn from this many distinct keys.
        #[arg(long, default_value_t = 100_000)]
        key_space: u64,
        /// Sequential keys instead of random ones.
        #[arg(long)]
        seq_keys: bool,
    },
    /// Reads of one key or a prefix.
    Range {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value = "bench-range")]
        key: String,
        #[arg(long)]
        prefix: bool,
        /// l: linearizable, s: serializable.
        #[arg(long, default_value = "l", value_parser = ["l", "s"])]
        consistency: String,
    },
    /// Compare-and-set: each client updates its own key with a txn on its mod revision.
    TxnPut {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
    },
    /// Time from a put's acknowledgement to each watcher receiving its event.
    WatchLatency {
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Watch streams the watchers are spread over.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Puts made by the one writer.
        #[arg(long, default_value_t = 200)]
        puts: u64,
        /// Puts per second.
        #[arg(long, default_value_t = 50)]
        put_rate: u64,
        #[arg(long, default_value_t = 16)]
        conns: usize,
    },
    /// N simulated agents: their keep-alive load at rest, and the time from a run on all of
    /// them to the last result.
    Agents(super::bench_agents::AgentsArgs),
    /// Keep N leases alive: time of each keep-alive round trip.
    LeaseKeepalive {
        #[arg(long, default_value_t = 1000)]
        leases: usize,
        #[command(flatten)]
        load: Load,
    },
}

/// What a run measured.
struct Report {
    name: String,
    requests: u64,
    errors: u64,
    error_samples: Vec<String>,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Report {
    fn print(&self, out: &Printer) -> std::io::Result<()> {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let tput = self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9);
        if out.format == Format::Json {
            return out.json(&json!({
                "workload": self.name,
                "requests": self.requests,
                "errors": self.errors,
                "error_samples": self.error_samples,
                "seconds": self.elapsed.as_secs_f64(),
                "throughput": tput,
                "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": self.hist.max() as f64 / 1000.0},
            }));
        }
        out.line(&format!("workload:   {}", self.name))?;
        out.line(&format!(
            "requests:   {} in {:.2}s",
            self.requests,
            self.elapsed.as_secs_f64()
        ))?;
        out.line(&format!("errors:     {}", self.errors))?;
        for e in &self.error_samples {
            out.line(&format!("  error:    {e}"))?;
        }
        out.line(&format!("throughput: {tput:.1} requests/s"))?;
        out.line(&format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            self.hist.max() as f64 / 1000.0
        ))
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// The certificates the command was given (benchmarks of a secure cluster pay for TLS, as its
/// clients do).
static TLS: std::sync::OnceLock<Option<Tls>> = std::sync::OnceLock::new();

/// Sets the TLS every benchmark connection uses (once, before `run`).
pub fn use_tls(tls: Option<Tls>) {
    let _ = TLS.set(tls);
}

pub(crate) fn tls() -> Option<Tls> {
    TLS.get().cloned().flatten()
}

async fn connect(endpoints: &[String], n: usize) -> Result<Vec<Channel>, Failure> {
    let tls = tls();
    let mut out = Vec::new();
    for i in 0..n.max(1) {
        let ep = &endpoints[i % endpoints.len()];
        let bare = ep
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let ep = match &tls {
            Some(_) => format!("https://{bare}"),
            None => format!("http://{bare}"),
        };
        let mut endpoint = Endpoint::from_shared(ep.clone())
            .map_err(|e| Failure::usage(format!("{ep}: {e}")))?
            .tcp_nodelay(true);
        if let Some(t) = &tls {
            endpoint = endpoint
                .tls_config(t.config())
                .map_err(|e| Failure::usage(format!("{ep}: {e}")))?;
        }
        let ch = endpoint.connect().await.map_err(|e| Failure {
            code: crate::exit::UNAVAILABLE,
            message: format!("{ep}: {e}"),
            quiet: false,
        })?;
        out.push(ch);
    }
    Ok(out)
}

/// Shared accounting for a closed-loop load of `clients` tasks.
struct Run {
    load: Load,
    started: Instant,
    issued: AtomicU64,
    errors: AtomicU64,
    samples: Mutex<Vec<String>>,
    bar: indicatif::ProgressBar,
}

impl Run {
    fn new(load: Load) -> Arc<Run> {
        let bar = match load.total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new((load.duration.unwrap_or(10.0) * 10.0) as u64),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed} {msg}")
                .expect("template"),
        );
        Arc::new(Run {
            load,
            started: Instant::now(),
            issued: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            bar,
        })
    }

    /// Claims the next request; None when the run is over. Paces to --rate.
    async fn next(&self) -> Option<u64> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.load.total {
            if n >= t {
                return None;
            }
            self.bar.set_position(n + 1);
        } else {
            let limit = self.load.duration.unwrap_or(10.0);
            let el = self.started.elapsed().as_secs_f64();
            if el >= limit {
                return None;
            }
            self.bar.set_position((el * 10.0) as u64);
        }
        if self.load.rate > 0 {
            let due = self.started + Duration::from_secs_f64(n as f64 / self.load.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        Some(n)
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().expect("samples");
        if s.len() < 5 {
            s.push(e);
        }
    }

    fn report(&self, name: &str, hists: Vec<Histogram<u64>>) -> Report {
        self.bar.finish_and_clear();
        let mut hist = hist();
        for h in hists {
            hist.add(h).expect("same bounds");
        }
        Report {
            name: name.to_string(),
            requests: hist.len(),
            errors: self.errors.load(Ordering::Relaxed),
            error_samples: self.samples.lock().expect("samples").clone(),
            elapsed: self.started.elapsed(),
            hist,
        }
    }
}

/// Runs `clients` closed-loop tasks; `op(client, request number, channel)` does one request.
async fn closed_loop<F, Fut>(
    name: &str,
    endpoints: &[String],
    load: Load,
    op: F,
) -> Result<Report, Failure>
where
    F: Fn(usize, u64, Channel) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let chans = connect(endpoints, load.conns).await?;
    let run = Run::new(load.clone());
    let op = Arc::new(op);
    let mut tasks = Vec::new();
    for c in 0..load.clients.max(1) {
        let (run, op, ch) = (run.clone(), op.clone(), chans[c % chans.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            while let Some(n) = run.next().await {
                let start = Instant::now();
                match op(c, n, ch.clone()).await {
                    Ok(()) => {
                        let _ = h.record(start.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => run.error(e),
                }
            }
            h
        }));
    }
    let mut hists = Vec::new();
    for t in tasks {
        hists.push(
            t.await
                .map_err(|e| Failure::usage(format!("bench task failed: {e}")))?,
        );
    }
    Ok(run.report(name, hists))
}

fn key_of(n: u64, size: usize) -> Vec<u8> {
    let s = format!("{n:0size$}");
    s.into_bytes()
}

pub async fn run(endpoints: &[String], out: &Printer, c: BenchCmd) -> Result<(), Failure> {
    let report = match c {
        BenchCmd::Agents(a) => return super::bench_agents::run(endpoints, out, a).await,
        BenchCmd::Put {
            load,
            key_size,
            val_size,
            key_space,
            seq_keys,
        } => {
            let value = vec![b'v'; val_size];
            let name = format!("put clients={} conns={}", load.clients, load.conns);
            closed_loop(&name, endpoints, load, move |_, n, ch| {
                let k = if seq_keys {
                    n
                } else {
                    rand::random::<u64>() % key_space.max(1)
                };
                let req = PutRequest {
                    key: key_of(k, key_size),
                    value: value.clone(),
                    ..Default::default()
                };
                async move {
                    KvClient::new(ch)
                        .put(req)
                        .await
                        .map(|_| ())
                        .map_err(|s| s.message().to_string())
                }
            })
            .await?
        }
        BenchCmd::Range {
            load,
            key,
            prefix,
            consistency,
        } => {
            let chans = connect(endpoints, 1).await?;
            KvClient::new(chans[0].clone())
                .put(PutRequest {
                    key: key.clone().into(),
                    value: b"value".to_vec(),
                    ..Default::default()
                })
                .await
                .map_err(|s| Failure::usage(format!("preparing the key: {}", s.message())))?;
            let range_end = if prefix {
                eden_proto::keys::prefix_end(key.as_bytes())
            } else {
                Vec::new()
            };
            let req = RangeRequest {
                key: key.into(),
                range_end,
                serializable: consistency == "s",
                ..Default::default()
            };
            let name = format!(
                "range {} clients={} conns={}",
                if consistency == "s" {
                    "serializable"
                } else {
                    "linearizable"
                },
                load.clients,
                load.conns
            );
            closed_loop(&name, endpoints, load, move |_, _, ch| {
                let req = req.clone();
                async move {
                    KvClient::new(ch)
                        .range(req)
                        .await
                        .map(|_| ())
                        .map_err(|s| s.message().to_string())
                }
            })
            .await?
        }
        BenchCmd::TxnPut { load, val_size } => {
            let value = vec![b'v'; val_size];
            let mods: Arc<Vec<AtomicU64>> = Arc::new(
                (0..load.clients.max(1))
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            );
            let name = format!("txn-put clients={} conns={}", load.clients, load.conns);
            closed_loop(&name, endpoints, load, move |c, _, ch| {
                let (mods, value) = (mods.clone(), value.clone());
                async move {
                    let key = format!("bench-txn/{c}").into_bytes();
                    let last = mods[c].load(Ordering::Relaxed) as i64;
                    let put = RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone(),
                            value,
                            ..Default::default()
                        })),
                    };
                    let get = RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: key.clone(),
                            ..Default::default()
                        })),
                    };
                    let cmp = Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        key,
                        target_union: Some(TargetUnion::ModRevision(last)),
                        range_end: Vec::new(),
                    };
                    let r = KvClient::new(ch)
                        .txn(TxnRequest {
                            compare: vec![cmp],
                            success: vec![put],
                            failure: vec![get],
                        })
                        .await
                        .map_err(|s| s.message().to_string())?
                        .into_inner();
                    let rev = if r.succeeded {
                        r.header.map_or(0, |h| h.revision)
                    } else {
                        // Someone else's write (or the first round): learn the key's mod revision.
                        match r.responses.first().and_then(|r| r.response.as_ref()) {
                            Some(
                                eden_proto::etcdserverpb::response_op::Response::ResponseRange(g),
                            ) => g.kvs.first().map_or(0, |kv| kv.mod_revision),
                            _ => 0,
                        }
                    };
                    mods[c].store(rev as u64, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await?
        }
        BenchCmd::WatchLatency {
            watchers,
            streams,
            puts,
            put_rate,
            conns,
        } => watch_latency(endpoints, watchers, streams, puts, put_rate, conns).await?,
        BenchCmd::LeaseKeepalive { leases, load } => {
            let chans = connect(endpoints, load.conns).await?;
            let mut ids = Vec::with_capacity(leases);
            for i in 0..leases {
                let r = LeaseClient::new(chans[i % chans.len()].clone())
                    .lease_grant(LeaseGrantRequest { ttl: 300, id: 0 })
                    .await
                    .map_err(|s| Failure::usage(format!("granting leases: {}", s.message())))?;
                ids.push(r.into_inner().id);
            }
            let name = format!("lease-keepalive leases={leases} clients={}", load.clients);
            let run = Run::new(load.clone());
            let ids = Arc::new(ids);
            let mut tasks = Vec::new();
            for c in 0..load.clients.max(1) {
                let (run, ids, ch) = (run.clone(), ids.clone(), chans[c % chans.len()].clone());
                tasks.push(tokio::spawn(async move {
                    // One long-lived keep-alive stream per client, as clients keep leases alive.
                    let mut h = hist();
                    let (tx, rx) = mpsc::channel(1);
                    // Queue a first keep-alive before opening the stream: etcd's (grpc-go) server
                    // sends its response headers only with its first answer, so a client that
                    // waited for the headers before sending would wait forever.
                    let warm = ids[c % ids.len()];
                    let _ = tx.send(LeaseKeepAliveRequest { id: warm }).await;
                    let mut stream = match LeaseClient::new(ch)
                        .lease_keep_alive(ReceiverStream::new(rx))
                        .await
                    {
                        Ok(s) => s.into_inner(),
                        Err(e) => {
                            run.error(e.message().to_string());
                            return h;
                        }
                    };
                    if !matches!(stream.message().await, Ok(Some(_))) {
                        run.error("no answer to the first keep-alive".into());
                        return h;
                    }
                    while let Some(n) = run.next().await {
                        let id = ids[(n as usize) % ids.len()];
                        let start = Instant::now();
                        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                            run.error("keep-alive stream closed".into());
                            break;
                        }
                        let answer =
                            match tokio::time::timeout(Duration::from_secs(5), stream.message())
                                .await
                            {
                                Ok(a) => a,
                                Err(_) => {
                                    run.error(format!(
                                        "no keep-alive answer for lease {id:x} within 5 s"
                                    ));
                                    break;
                                }
                            };
                        match answer {
                            Ok(Some(r)) if r.ttl > 0 => {
                                let _ = h.record(start.elapsed().as_micros().max(1) as u64);
                            }
                            Ok(Some(_)) => run.error(format!("lease {id:x} expired")),
                            Ok(None) => {
                                run.error("keep-alive stream closed".into());
                                break;
                            }
                            Err(e) => {
                                run.error(e.message().to_string());
                                break;
                            }
                        }
                    }
                    h
                }));
            }
            let mut hists = Vec::new();
            for t in tasks {
                hists.push(
                    t.await
                        .map_err(|e| Failure::usage(format!("bench task failed: {e}")))?,
                );
            }
            let report = run.report(&name, hists);
            revoke_all(&chans, &ids).await;
            report
        }
    };
    report.print(out)?;
    Ok(())
}

/// Revokes the leases a run granted (after it was measured), so that they do not expire later
/// in another run's time (a benchmark of many systems on one machine). Failures are ignored:
/// a lease left behind expires on its own.
async fn revoke_all(chans: &[Channel], ids: &[i64]) {
    let mut tasks = Vec::new();
    for (c, ch) in chans.iter().enumerate() {
        let mine: Vec<i64> = ids.iter().skip(c).step_by(chans.len()).copied().collect();
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = LeaseClient::new(ch);
            for id in mine {
                let _ = client.lease_revoke(LeaseRevokeRequest { id }).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// N watchers over M streams on one prefix, one writer: for each put, the time from its
/// acknowledgement to each watcher's receipt of the event.
async fn watch_latency(
    endpoints: &[String],
    watchers: usize,
    streams: usize,
    puts: u64,
    put_rate: u64,
    conns: usize,
) -> Result<Report, Failure> {
    let chans = connect(endpoints, conns).await?;
    let prefix = format!("bench-watch/{}/", rand::random::<u32>());
    let acked: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; puts as usize]));
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<Result<(u64, Instant), String>>();
    let per_stream = watchers.div_ceil(streams.max(1));
    let mut created = 0;
    let mut stream_tasks = Vec::new();
    for s in 0..streams.max(1) {
        let n = per_stream.min(watchers - created);
        if n == 0 {
            break;
        }
        created += n;
        let (req_tx, req_rx) = mpsc::channel(n + 1);
        for _ in 0..n {
            let create = WatchCreateRequest {
                key: prefix.clone().into(),
                range_end: eden_proto::keys::prefix_end(prefix.as_bytes()),
                ..Default::default()
            };
            let _ = req_tx
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
                })
                .await;
        }
        let mut wc =
            WatchClient::new(chans[s % chans.len()].clone()).max_decoding_message_size(64 << 20);
        let mut stream = wc
            .watch(ReceiverStream::new(req_rx))
            .await
            .map_err(|e| Failure::usage(format!("opening a watch stream: {}", e.message())))?
            .into_inner();
        let mut ready = 0;
        while ready < n {
            match stream.message().await {
                Ok(Some(m)) if m.created => ready += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(Failure::usage("a watch stream closed while being set up"))
                }
            }
        }
        let lat_tx = lat_tx.clone();
        stream_tasks.push(tokio::spawn(async move {
            let _keep = req_tx;
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        let now = Instant::now();
                        for e in &m.events {
                            let v =
                                e.kv.as_ref()
                                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                                    .unwrap_or_default();
                            if let Ok(i) = v.parse::<u64>() {
                                let _ = lat_tx.send(Ok((i, now)));
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = lat_tx.send(Err(e.message().to_string()));
                        return;
                    }
                }
            }
        }));
    }
    drop(lat_tx);
    let run = Run::new(Load {
        clients: 1,
        conns: 1,
        total: Some(puts),
        duration: None,
        rate: put_rate,
    });
    let writer = {
        let (run, acked, ch, prefix) =
            (run.clone(), acked.clone(), chans[0].clone(), prefix.clone());
        tokio::spawn(async move {
            let mut kv = KvClient::new(ch);
            while let Some(n) = run.next().await {
                let req = PutRequest {
                    key: format!("{prefix}{}", n % 100).into(),
                    value: n.to_string().into(),
                    ..Default::default()
                };
                match kv.put(req).await {
                    Ok(_) => acked.lock().expect("acked")[n as usize] = Some(Instant::now()),
                    Err(e) => run.error(e.message().to_string()),
                }
            }
        })
    };
    writer
        .await
        .map_err(|e| Failure::usage(format!("writer failed: {e}")))?;
    // Collect until every watcher saw every acknowledged put, or 10 s of silence.
    let expected = acked
        .lock()
        .expect("acked")
        .iter()
        .filter(|a| a.is_some())
        .count() as u64
        * created as u64;
    let mut received: Vec<(u64, Instant)> = Vec::new();
    let mut h = hist();
    while (received.len() as u64) < expected {
        match tokio::time::timeout(Duration::from_secs(10), lat_rx.recv()).await {
            Ok(Some(Ok(x))) => received.push(x),
            Ok(Some(Err(e))) => run.error(e),
            Ok(None) | Err(_) => break,
        }
    }
    let acked = acked.lock().expect("acked");
    for (i, at) in &received {
        if let Some(Some(ack)) = acked.get(*i as usize) {
            let _ = h.record(at.saturating_duration_since(*ack).as_micros().max(1) as u64);
        }
    }
    let missing = expected.saturating_sub(received.len() as u64);
    for _ in 0..missing.min(1) {
        run.error(format!("{missing} events never arrived"));
    }
    for t in stream_tasks {
        t.abort();
    }
    let mut r = run.report(
        &format!("watch-latency watchers={created} streams={streams} puts={puts}"),
        vec![h],
    );
    r.errors += missing.saturating_sub(1);
    Ok(r)
}
