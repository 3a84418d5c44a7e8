//! `eden bench agents --count N`: N lightweight simulated agents in one process, speaking the real
//! agent protocol (`eden_proto::model::keys`): each registers under its own lease, keeps it alive, watches
//! its own assignments, and answers a task with a claim txn and a result txn (running nothing).
//! It measures what N agents cost the store at rest (keep-alive rate and latency, and the servers'
//! CPU when their pids are given), then the time from `eden run` on all of them to the last
//! result.
//!
//! It never hangs silently: a progress line goes to stderr every 5 s, every request has a 10 s
//! timeout, registration gives up after `--register-timeout` and the run after `--run-timeout`
//! with the errors by kind (exit 3). Agents retry registration and keep-alives as a real agent
//! does (backoff with jitter; a lease that expired is registered again), and every error is
//! counted by kind. The report also gives each member's Raft term before and after: elections
//! during the bench.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eden_agent::agent::KeepAlivePace;
use eden_proto::client::{Backoff, Client};
use eden_proto::etcdserverpb::WatchCreateRequest;
use eden_proto::keys::prefix_end;
use eden_proto::model::files;
use eden_proto::model::keys;
use eden_proto::model::kv;
use eden_proto::model::objects::{now_ms, Alive, Claim, Facts, Status, TaskResult, TaskSpec};
use eden_proto::model::readers::Readers;
use eden_proto::model::tasks::{self, NewTask, Targets};
use eden_proto::mvccpb::event::EventType;
use eden_proto::mvccpb::KeyValue;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(clap::Args, Debug)]
pub struct AgentsArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Agents per connection (each agent has its own watch stream).
    #[arg(long, default_value_t = 200)]
    pub per_conn: usize,
    /// The agents' lease TTL (keep-alive every third of it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How long to measure the agents at rest before the run.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Server process ids whose CPU use is measured at rest (repeatable).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Give up (exit 3, with the errors by kind) when not every agent registered in this time.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub register_timeout: Duration,
    /// Give up when the task did not finish on every agent in this time.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub run_timeout: Duration,
    /// After the task, place one file of this many bytes on every agent (0: no file phase):
    /// each simulated agent watches the files' metadata as an agent does, reads the file when
    /// it changes and records its placement.
    #[arg(long, default_value_t = 0)]
    pub file_bytes: usize,
}

/// A count of errors by kind (the error's text, shortened).
#[derive(Default)]
struct ErrorKinds(Mutex<BTreeMap<String, u64>>);

impl ErrorKinds {
    fn add(&self, kind: &str) {
        let kind: String = kind.chars().take(160).collect();
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

#[derive(Default)]
struct Stats {
    registered: AtomicU64,
    register_retries: AtomicU64,
    register_errors: ErrorKinds,
    keepalives: AtomicU64,
    keepalive_errors: AtomicU64,
    /// Keep-alive errors by kind ("lease gone" for a TTL of 0, which makes the agent register
    /// again).
    keepalive_kinds: ErrorKinds,
    reregistered: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
    results: AtomicU64,
    answer_errors: ErrorKinds,
    /// Agents that placed the file of the file phase.
    placed: AtomicU64,
}

/// How long one request of a simulated agent may take before it counts as a timeout.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one request with [`OP_TIMEOUT`]; a timeout is an error of its own kind.
async fn timed<T>(fut: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout ({} s)", OP_TIMEOUT.as_secs())),
    }
}

/// A process's peak resident size in MiB (VmHWM), where /proc has it.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

async fn register(client: &Client, name: &str, ttl: Duration) -> Result<i64, String> {
    let lease = client
        .lease_grant(ttl.as_secs().max(1) as i64, 0)
        .await
        .map_err(|e| e.to_string())?
        .id;
    let alive = Alive {
        instance: name.to_string(),
        run: "bench".into(),
        lease,
        since: now_ms(),
    };
    let facts = Facts {
        hostname: name.to_string(),
        agent_version: "bench".into(),
        started_at: now_ms(),
        seen_at: now_ms(),
        ..Default::default()
    };
    kv::txn(
        client,
        vec![],
        vec![
            kv::put(&keys::owner(name), &name, 0),
            kv::put(&keys::alive(name), &alive, lease),
            kv::put(&keys::facts(name), &facts, 0),
        ],
        vec![],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(lease)
}

/// Claims and answers one assignment the way an agent does: claimed straight from the watch
/// event (claim, result and cancel absent, the assignment unchanged since), then the result txn.
/// Safe to repeat after a timeout: a claim of its own from an earlier attempt is taken up, a
/// result already there is the answer.
async fn answer(
    client: &Client,
    name: &str,
    id: &str,
    assignment: &KeyValue,
) -> Result<bool, String> {
    let spec: TaskSpec = kv::decode(assignment)?;
    let claim = Claim {
        instance: name.into(),
        run: "bench".into(),
        started_at: now_ms(),
    };
    let c = kv::txn(
        client,
        vec![
            kv::absent(&keys::claim(id, name)),
            kv::absent(&keys::result(id, name)),
            kv::absent(&keys::cancel(id)),
            kv::unchanged_since(&keys::assignment(name, id), assignment.mod_revision),
        ],
        vec![kv::put(&keys::claim(id, name), &claim, spec.lease)],
        vec![
            kv::get(&keys::claim(id, name)),
            kv::get(&keys::result(id, name)),
        ],
    )
    .await
    .map_err(|e| e.to_string())?;
    if !c.succeeded {
        if !kv::txn_kvs(&c, 1).is_empty() {
            return Ok(true);
        }
        let mine = kv::txn_kvs(&c, 0)
            .first()
            .and_then(|kv| kv::decode::<Claim>(kv).ok())
            .is_some_and(|c| c.instance == name);
        if !mine {
            return Ok(false);
        }
    }
    let mut r = TaskResult::without_run(Status::Ok, "simulated");
    r.error = None;
    r.exit_code = Some(0);
    r.started_at = Some(claim.started_at);
    kv::txn(
        client,
        vec![kv::absent(&keys::result(id, name))],
        vec![kv::put(&keys::result(id, name), &r, spec.lease)],
        vec![],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(true)
}

/// One simulated agent and what it shares with the bench.
struct SimAgent {
    client: Arc<Client>,
    name: String,
    ttl: Duration,
    stats: Arc<Stats>,
    /// Every agent's current lease (for the clean-up), this one's at `slot`.
    leases: Arc<Mutex<Vec<i64>>>,
    slot: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// The file to place when its metadata changes (the file phase), if any.
    file: Option<String>,
}

/// What a simulated agent does when a file it places changed: read it, record the placement
/// (a real agent also writes it to disk).
async fn place(client: &Client, node: &str, name: &str) -> Result<(), String> {
    let f = files::get(client, name, 0)
        .await
        .map_err(|e| e.to_string())?;
    let p = files::Placement {
        status: "placed".into(),
        path: format!("/bench/{name}"),
        revision: f.revision,
        error: String::new(),
        time: now_ms(),
    };
    kv::txn(
        client,
        vec![],
        vec![kv::put(&keys::placement(node, name), &p, 0)],
        vec![],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

async fn sim_agent(a: SimAgent, mut lease: i64) {
    let SimAgent {
        client,
        name,
        ttl,
        stats,
        leases,
        slot,
        stop,
        file,
    } = a;
    let mut files_watch = file.as_ref().map(|_| {
        client.watch(
            WatchCreateRequest {
                key: keys::FILES_META.into(),
                range_end: prefix_end(keys::FILES_META.as_bytes()),
                ..Default::default()
            },
            Duration::from_secs(3600),
        )
    });
    let prefix = keys::assignments(&name);
    let mut w = client.watch(
        WatchCreateRequest {
            key: prefix.clone().into(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        },
        Duration::from_secs(3600),
    );
    // Keep-alives paced as a real agent's (eden_agent::agent::KeepAlivePace), the first one
    // spread over the period so that 10,000 agents do not send theirs together.
    let mut pace = KeepAlivePace::new(ttl);
    let mut next = tokio::time::Instant::now() + ttl.mul_f64(rand::random::<f64>() / 3.0);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                let t = Instant::now();
                let r = timed(async { client.lease_keep_alive_once(lease).await.map_err(|e| e.to_string()) }).await;
                let wait = match r {
                    Ok(r) if r.ttl > 0 => {
                        stats.keepalives.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = stats.hist.lock().unwrap().as_mut() {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                        pace.after_success()
                    }
                    Ok(_) => {
                        // The lease expired: register again, as an agent does.
                        stats.keepalive_errors.fetch_add(1, Ordering::Relaxed);
                        stats.keepalive_kinds.add("lease gone (TTL 0): registered again");
                        match timed(register(&client, &name, ttl)).await {
                            Ok(l) => {
                                lease = l;
                                leases.lock().unwrap()[slot] = l;
                                stats.reregistered.fetch_add(1, Ordering::Relaxed);
                                pace.after_success()
                            }
                            Err(e) => {
                                stats.keepalive_kinds.add(&format!("registering again: {e}"));
                                pace.after_failure()
                            }
                        }
                    }
                    Err(e) => {
                        stats.keepalive_errors.fetch_add(1, Ordering::Relaxed);
                        stats.keepalive_kinds.add(&e);
                        pace.after_failure()
                    }
                };
                next = tokio::time::Instant::now() + wait;
            }
            m = async { match files_watch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                let Some(Ok(m)) = m else { return };
                let Some(file) = &file else { continue };
                let changed = m.events.iter().any(|e| {
                    e.r#type == EventType::Put as i32
                        && e.kv.as_ref().is_some_and(|kv| kv.key == keys::file_meta(file).as_bytes())
                });
                if changed {
                    let (client, name, file, stats) = (client.clone(), name.clone(), file.clone(), stats.clone());
                    tokio::spawn(async move {
                        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                        for _ in 0..20 {
                            match timed(place(&client, &name, &file)).await {
                                Ok(()) => { stats.placed.fetch_add(1, Ordering::Relaxed); return; }
                                Err(e) => {
                                    stats.answer_errors.add(&format!("placing: {e}"));
                                    tokio::time::sleep(backoff.next_delay()).await;
                                }
                            }
                        }
                    });
                }
            }
            m = w.recv() => {
                let Some(Ok(m)) = m else { return };
                for e in &m.events {
                    let Some(kv) = &e.kv else { continue };
                    if e.r#type != EventType::Put as i32 { continue }
                    if let Some(id) = keys::rest(&kv.key, &prefix) {
                        let (client, name, id, stats, kv) = (client.clone(), name.clone(), id.to_string(), stats.clone(), kv.clone());
                        tokio::spawn(async move {
                            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                            for _ in 0..20 {
                                match timed(answer(&client, &name, &id, &kv)).await {
                                    Ok(_) => { stats.results.fetch_add(1, Ordering::Relaxed); return; }
                                    Err(e) => {
                                        stats.answer_errors.add(&e);
                                        tokio::time::sleep(backoff.next_delay()).await;
                                    }
                                }
                            }
                        });
                    }
                }
            }
        }
    }
}

/// Each member's Raft term, as its Status says (None where it did not answer).
async fn terms(clients: &[Arc<Client>]) -> Vec<Option<u64>> {
    let c = &clients[0];
    let mut out = Vec::new();
    for i in 0..c.endpoints().len() {
        let s = tokio::time::timeout(Duration::from_secs(3), c.status_of(i)).await;
        out.push(match s {
            Ok(Ok(s)) => Some(s.raft_term),
            _ => None,
        });
    }
    out
}

/// Prints a progress line to stderr every few seconds until `stop` (a bench must never look hung).
fn progress(
    stats: Arc<Stats>,
    phase: Arc<Mutex<String>>,
    count: usize,
    t0: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let phase = phase.lock().unwrap().clone();
            eprintln!(
                "[{:>4.0} s] {phase}: {}/{count} registered ({} retries, {} registration errors), {} keep-alives ({} errors), {} results",
                t0.elapsed().as_secs_f64(),
                stats.registered.load(Ordering::Relaxed),
                stats.register_retries.load(Ordering::Relaxed),
                stats.register_errors.total(),
                stats.keepalives.load(Ordering::Relaxed),
                stats.keepalive_errors.load(Ordering::Relaxed),
                stats.results.load(Ordering::Relaxed),
            );
        }
    })
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

fn kinds_text(kinds: &BTreeMap<String, u64>) -> String {
    if kinds.is_empty() {
        return "none".into();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} x {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the operator does in the run: `eden run --on bench=agents -- true`, storing the task,
/// then following it to the last result; the spec, the final status and the times to both.
async fn operate(
    client: &Arc<Client>,
    run_timeout: Duration,
    stats: &Stats,
) -> Result<(TaskSpec, tasks::TaskState, Duration, Duration), Failure> {
    let t1 = Instant::now();
    let deadline = Duration::from_secs(120);
    let spec = tokio::time::timeout(
        run_timeout,
        tasks::create(
            client,
            &NewTask {
                targets: Targets::Selector("bench=agents".into()),
                command: vec!["true".into()],
                script: None,
                shell: false,
                env: Default::default(),
                cwd: None,
                timeout: Duration::from_secs(60),
                deadline,
                register: None,
                readers: vec![],
                for_: None,
                retention: Duration::from_secs(3600),
            },
        ),
    )
    .await
    .map_err(|_| Failure {
        code: crate::exit::UNAVAILABLE,
        message: format!(
            "storing the task took more than {} s",
            run_timeout.as_secs()
        ),
        quiet: false,
    })??;
    let created = t1.elapsed();
    let left = run_timeout.saturating_sub(created);
    let st = tokio::time::timeout(left, tasks::follow(client, &spec.id, |_| {}))
        .await
        .map_err(|_| Failure {
            code: crate::exit::UNAVAILABLE,
            message: format!(
                "the task did not finish within {} s: {} of {} agents answered; answer errors by kind: {}; keep-alive errors by kind: {}",
                run_timeout.as_secs(),
                stats.results.load(Ordering::Relaxed),
                spec.targets.len(),
                kinds_text(&stats.answer_errors.take()),
                kinds_text(&stats.keepalive_kinds.take())
            ),
            quiet: false,
        })??;
    Ok((spec, st, created, t1.elapsed()))
}

pub async fn run(endpoints: &[String], out: &Printer, a: AgentsArgs) -> Result<(), Failure> {
    let conns = a.count.div_ceil(a.per_conn.max(1)).max(1);
    let clients: Vec<Arc<Client>> = (0..conns)
        .map(|_| Client::with_tls(endpoints, super::bench::tls()).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let run_id: u32 = rand::random();
    let file = (a.file_bytes > 0).then(|| format!("cluster/bench-{run_id:08x}"));
    let names: Vec<String> = (0..a.count)
        .map(|i| format!("sim-{run_id:08x}-{i:05}"))
        .collect();
    // Labels are the operator's (agents never write them): label the nodes-to-be first, as an
    // operator labels machines from an inventory, 100 to a txn; not part of the figures.
    let labels: std::collections::BTreeMap<&str, &str> = [("bench", "agents")].into();
    for chunk in names.chunks(100) {
        let ops = chunk
            .iter()
            .map(|n| kv::put(&keys::labels(n), &labels, 0))
            .collect();
        kv::txn(&clients[0], vec![], ops, vec![]).await?;
    }
    let stats = Arc::new(Stats::default());
    let phase = Arc::new(Mutex::new("registering".to_string()));
    let t0 = Instant::now();
    let reporter = progress(stats.clone(), phase.clone(), a.count, t0);
    let _stop_reporter = AbortOnDrop(reporter);
    let terms0 = terms(&clients).await;
    // Register, 64 at a time, each retried with backoff like a real agent until the deadline;
    // once registered, the agent keeps its lease alive at once (not after every agent
    // registered: at 10,000 that takes longer than a TTL).
    let leases = Arc::new(Mutex::new(vec![0i64; a.count]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_agents = StopOnDrop(stop.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let register_deadline = tokio::time::Instant::now() + a.register_timeout;
    let mut joins = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (client, name, sem, ttl, stats, leases, stop, file) = (
            clients[i % conns].clone(),
            name.clone(),
            sem.clone(),
            a.lease_ttl,
            stats.clone(),
            leases.clone(),
            stop.clone(),
            file.clone(),
        );
        joins.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            loop {
                match timed(register(&client, &name, ttl)).await {
                    Ok(l) => {
                        leases.lock().unwrap()[i] = l;
                        stats.registered.fetch_add(1, Ordering::Relaxed);
                        let agent = SimAgent {
                            client,
                            name,
                            ttl,
                            stats,
                            leases,
                            slot: i,
                            stop,
                            file,
                        };
                        tokio::spawn(sim_agent(agent, l));
                        return true;
                    }
                    Err(e) => {
                        stats.register_errors.add(&e);
                        let pause = backoff.next_delay();
                        if tokio::time::Instant::now() + pause >= register_deadline {
                            return false;
                        }
                        stats.register_retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }));
    }
    let mut failed = 0;
    for j in joins {
        if !j.await.unwrap_or(false) {
            failed += 1;
        }
    }
    let registered = t0.elapsed();
    let retries = stats.register_retries.load(Ordering::Relaxed);
    let register_kinds = stats.register_errors.take();
    if failed > 0 {
        return Err(Failure {
            code: crate::exit::UNAVAILABLE,
            message: format!(
                "{failed} of {} simulated agents could not register within {} s; errors by kind: {}",
                a.count,
                a.register_timeout.as_secs(),
                kinds_text(&register_kinds)
            ),
            quiet: false,
        });
    }
    // At rest: keep-alives only.
    *phase.lock().unwrap() = "at rest".into();
    tokio::time::sleep(a.lease_ttl / 3).await;
    let (k0, e0) = (
        stats.keepalives.load(Ordering::Relaxed),
        stats.keepalive_errors.load(Ordering::Relaxed),
    );
    *stats.hist.lock().unwrap() = Some(Histogram::new(3).expect("histogram"));
    let early_kinds = stats.keepalive_kinds.take();
    let cpu0: Vec<Option<u64>> = a.server_pids.iter().map(|p| cpu_ticks(*p)).collect();
    let idle_start = Instant::now();
    tokio::time::sleep(a.idle).await;
    let idle = idle_start.elapsed().as_secs_f64();
    let cpu: Vec<f64> = a
        .server_pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| match (c0, cpu_ticks(*p)) {
            (Some(a), Some(b)) => (b - a) as f64 / 100.0 / idle * 100.0,
            _ => f64::NAN,
        })
        .collect();
    let kps = (stats.keepalives.load(Ordering::Relaxed) - k0) as f64 / idle;
    let kerr = stats.keepalive_errors.load(Ordering::Relaxed) - e0;
    let kinds = stats.keepalive_kinds.take();
    let e1 = stats.keepalive_errors.load(Ordering::Relaxed);
    let (kp50, kp99) = {
        let h = stats.hist.lock().unwrap();
        let h = h.as_ref().expect("set above");
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    // The run: one task on every simulated agent, created and followed as `eden run` does, from
    // its own connection and its own thread (an operator's `eden run` is its own process, not a
    // task queued behind 10,000 agents' in this runtime).
    *phase.lock().unwrap() = "running a task on every agent".into();
    let client = clients[0].clone();
    let run_timeout = a.run_timeout;
    let op_stats = stats.clone();
    let op_endpoints = endpoints.to_vec();
    let operator = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure {
                code: crate::exit::UNAVAILABLE,
                message: format!("a runtime for the operator: {e}"),
                quiet: false,
            })?
            .block_on(async move {
                // Made here: a client's connection tasks run on the runtime that makes it.
                let op = Arc::new(Client::with_tls(&op_endpoints, super::bench::tls())?);
                operate(&op, run_timeout, &op_stats).await
            })
    });
    let (spec, st, created, all) = tokio::task::spawn_blocking(move || operator.join())
        .await
        .expect("the operator's thread is joined")
        .expect("the operator's thread does not panic")?;
    // The file phase: one file for every agent, from the put to the last placement recorded.
    let placed = match &file {
        None => None,
        Some(name) => {
            *phase.lock().unwrap() = format!("placing {name} on every agent");
            let bytes: Vec<u8> = (0..a.file_bytes).map(|i| (i % 251) as u8).collect();
            let t2 = Instant::now();
            files::put(
                &client,
                name,
                &bytes,
                files::FileMeta {
                    mode: 0o644,
                    readers: Readers::parse(&["bench=agents".to_string()])
                        .map_err(Failure::usage)?,
                    writer: files::writer_of(&client),
                    time: now_ms(),
                    ..Default::default()
                },
            )
            .await?;
            let stored = t2.elapsed();
            let give_up = Instant::now() + a.run_timeout;
            while stats.placed.load(Ordering::Relaxed) < a.count as u64 {
                if Instant::now() > give_up {
                    return Err(Failure {
                        code: crate::exit::UNAVAILABLE,
                        message: format!(
                            "the file was placed on {} of {} agents within {} s; errors by kind: {}",
                            stats.placed.load(Ordering::Relaxed),
                            a.count,
                            a.run_timeout.as_secs(),
                            kinds_text(&stats.answer_errors.take())
                        ),
                        quiet: false,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let all = t2.elapsed();
            let _ = files::remove(&client, name).await;
            Some((stored, all))
        }
    };
    let run_errors = stats.keepalive_errors.load(Ordering::Relaxed) - e1;
    let run_kinds = stats.keepalive_kinds.take();
    let answer_kinds = stats.answer_errors.take();
    let (ok, bad, _, _) = st.counts(now_ms());
    let terms1 = terms(&clients).await;
    let peak_rss: Vec<Option<u64>> = a.server_pids.iter().map(|p| peak_rss_mib(*p)).collect();
    let term_of = |t: &[Option<u64>]| t.iter().flatten().copied().max();
    let elections = match (term_of(&terms0), term_of(&terms1)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    // Leave: the agents stop, then their leases are revoked (their keys go with them) and their
    // nodes forgotten, 64 at a time.
    stop.store(true, Ordering::Relaxed);
    *phase.lock().unwrap() = "cleaning up".into();
    let leases: Vec<i64> = leases.lock().unwrap().clone();
    {
        use futures::StreamExt;
        futures::stream::iter(names.iter().enumerate())
            .for_each_concurrent(64, |(i, name)| {
                let c = clients[i % conns].clone();
                let lease = leases[i];
                async move {
                    let _ = tokio::time::timeout(OP_TIMEOUT, c.lease_revoke(lease)).await;
                    let _ = tokio::time::timeout(
                        OP_TIMEOUT,
                        kv::txn(
                            &c,
                            vec![],
                            vec![kv::delete_prefix(&keys::node_prefix(name))],
                            vec![],
                        ),
                    )
                    .await;
                }
            })
            .await;
    }
    let v = json!({
        "agents": a.count,
        "connections": conns,
        "register_seconds": registered.as_secs_f64(),
        "register_retries": retries,
        "register_error_kinds": register_kinds,
        "keepalive_errors_while_registering": early_kinds,
        "keepalive_per_second": kps,
        "keepalive_p50_ms": kp50,
        "keepalive_p99_ms": kp99,
        "keepalive_errors": kerr,
        "keepalive_error_kinds": kinds,
        "keepalive_errors_during_run": run_errors,
        "keepalive_error_kinds_during_run": run_kinds,
        "reregistered": stats.reregistered.load(Ordering::Relaxed),
        "server_cpu_percent": cpu,
        "task": spec.id,
        "targets": spec.targets.len(),
        "create_seconds": created.as_secs_f64(),
        "last_result_seconds": all.as_secs_f64(),
        "ok": ok,
        "not_ok": bad,
        "answer_error_kinds": answer_kinds,
        "terms_before": terms0,
        "terms_after": terms1,
        "elections": elections,
        "server_peak_rss_mib": peak_rss,
        "file_bytes": a.file_bytes,
        "file_stored_seconds": placed.map(|p| p.0.as_secs_f64()),
        "file_last_placed_seconds": placed.map(|p| p.1.as_secs_f64()),
    });
    if out.format == Format::Json {
        out.json(&v)?;
    } else {
        out.line(&format!(
            "agents: {} over {conns} connections, registered in {:.2} s ({retries} retries; errors: {})",
            a.count,
            registered.as_secs_f64(),
            kinds_text(&register_kinds)
        ))?;
        if !early_kinds.is_empty() {
            out.line(&format!(
                "  keep-alive errors while registering: {}",
                kinds_text(&early_kinds)
            ))?;
        }
        out.line(&format!(
            "at rest: {kps:.0} keep-alives/s, p50 {kp50:.2} ms, p99 {kp99:.2} ms, {kerr} errors; server CPU: {}",
            if cpu.is_empty() { "not measured (give --server-pid)".to_string() } else { cpu.iter().map(|c| format!("{c:.0}%")).collect::<Vec<_>>().join(" ") }
        ))?;
        for (kind, n) in &kinds {
            out.line(&format!("  {n} keep-alive errors: {kind}"))?;
        }
        out.line(&format!(
            "run on {} agents: task stored in {:.2} s, last result after {:.2} s ({ok} ok, {bad} not ok; {run_errors} keep-alive errors meanwhile{})",
            spec.targets.len(),
            created.as_secs_f64(),
            all.as_secs_f64(),
            if run_kinds.is_empty() { String::new() } else { format!(": {}", kinds_text(&run_kinds)) }
        ))?;
        if !answer_kinds.is_empty() {
            out.line(&format!("  answer retries: {}", kinds_text(&answer_kinds)))?;
        }
        if let Some((stored, all)) = placed {
            out.line(&format!(
                "file of {} bytes: stored in {:.3} s, read and placed by all {} agents after {:.2} s",
                a.file_bytes,
                stored.as_secs_f64(),
                a.count,
                all.as_secs_f64()
            ))?;
        }
        let show = |t: &[Option<u64>]| {
            t.iter()
                .map(|x| x.map_or("?".into(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.line(&format!(
            "raft terms before {} / after {}: {} elections during the bench",
            show(&terms0),
            show(&terms1),
            elections.map_or("unknown".into(), |e| e.to_string())
        ))?;
        if !peak_rss.is_empty() {
            out.line(&format!(
                "servers' peak resident memory: {} MiB",
                peak_rss
                    .iter()
                    .map(|m| m.map_or("?".into(), |v| v.to_string()))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ))?;
        }
    }
    Ok(())
}

/// Tells the simulated agents to stop when dropped (also when the bench gives up).
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped (the progress reporter ends with the bench, also on an error).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
