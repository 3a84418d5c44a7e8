//! `eden bench agents --count N`: N lightweight simulated agents in one process, speaking the real
//! agent protocol (`eden_agent::keys`): each registers under its own lease, keeps it alive, watches
//! its own assignments, and answers a task with a claim txn and a result txn (running nothing).
//! It measures what N agents cost the store at rest (keep-alive rate and latency, and the servers'
//! CPU when their pids are given), then the time from `eden run` on all of them to the last
//! result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eden_agent::keys;
use eden_agent::kv;
use eden_agent::model::{now_ms, Alive, Claim, Facts, Status, TaskResult, TaskSpec};
use eden_agent::tasks::{self, NewTask, Targets};
use eden_proto::client::Client;
use eden_proto::etcdserverpb::WatchCreateRequest;
use eden_proto::keys::prefix_end;
use eden_proto::mvccpb::event::EventType;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
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
}

struct Stats {
    keepalives: AtomicU64,
    keepalive_errors: AtomicU64,
    /// Keep-alive errors by kind (the error's text, or "lease gone" for a TTL of 0).
    error_kinds: Mutex<std::collections::BTreeMap<String, u64>>,
    hist: Mutex<Histogram<u64>>,
    results: AtomicU64,
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
    let labels: std::collections::BTreeMap<&str, &str> = [("bench", "agents")].into();
    kv::txn(
        client,
        vec![],
        vec![
            kv::put(&keys::owner(name), &name, 0),
            kv::put(&keys::alive(name), &alive, lease),
            kv::put(&keys::facts(name), &facts, 0),
            kv::put(&keys::labels(name), &labels, 0),
        ],
        vec![],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(lease)
}

/// Claims and answers one assignment the way an agent does (claim txn, then result txn).
async fn answer(client: &Client, name: &str, id: &str) -> Result<bool, String> {
    let spec_kv = kv::get_one(client, &keys::assignment(name, id))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no assignment")?;
    let spec: TaskSpec = kv::decode(&spec_kv)?;
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
        ],
        vec![kv::put(&keys::claim(id, name), &claim, spec.lease)],
        vec![],
    )
    .await
    .map_err(|e| e.to_string())?;
    if !c.succeeded {
        return Ok(false);
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

async fn sim_agent(
    client: Arc<Client>,
    name: String,
    lease: i64,
    ttl: Duration,
    stats: Arc<Stats>,
) {
    let prefix = keys::assignments(&name);
    let mut w = client.watch(
        WatchCreateRequest {
            key: prefix.clone().into(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        },
        Duration::from_secs(3600),
    );
    // Spread the keep-alives over the period.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + ttl.mul_f64(rand::random::<f64>() / 3.0),
        ttl / 3,
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let t = Instant::now();
                match client.lease_keep_alive_once(lease).await {
                    Ok(r) if r.ttl > 0 => {
                        stats.keepalives.fetch_add(1, Ordering::Relaxed);
                        let _ = stats.hist.lock().unwrap().record(t.elapsed().as_micros() as u64);
                    }
                    other => {
                        stats.keepalive_errors.fetch_add(1, Ordering::Relaxed);
                        let kind = match other {
                            Ok(_) => "lease gone (TTL 0)".to_string(),
                            Err(e) => e.to_string(),
                        };
                        *stats.error_kinds.lock().unwrap().entry(kind).or_default() += 1;
                    }
                }
            }
            m = w.recv() => {
                let Some(Ok(m)) = m else { return };
                for e in &m.events {
                    let Some(kv) = &e.kv else { continue };
                    if e.r#type != EventType::Put as i32 { continue }
                    if let Some(id) = keys::rest(&kv.key, &prefix) {
                        let (client, name, id, stats) = (client.clone(), name.clone(), id.to_string(), stats.clone());
                        tokio::spawn(async move {
                            for _ in 0..20 {
                                match answer(&client, &name, &id).await {
                                    Ok(_) => { stats.results.fetch_add(1, Ordering::Relaxed); return; }
                                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                                }
                            }
                        });
                    }
                }
            }
        }
    }
}

pub async fn run(endpoints: &[String], out: &Printer, a: AgentsArgs) -> Result<(), Failure> {
    let conns = a.count.div_ceil(a.per_conn.max(1)).max(1);
    let clients: Vec<Arc<Client>> = (0..conns)
        .map(|_| Client::new(endpoints).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let stats = Arc::new(Stats {
        keepalives: AtomicU64::new(0),
        keepalive_errors: AtomicU64::new(0),
        error_kinds: Default::default(),
        hist: Mutex::new(Histogram::new(3).expect("histogram")),
        results: AtomicU64::new(0),
    });
    let run_id: u32 = rand::random();
    let names: Vec<String> = (0..a.count)
        .map(|i| format!("sim-{run_id:08x}-{i:05}"))
        .collect();
    // Register, 64 at a time.
    let bar = ProgressBar::new(a.count as u64);
    let t0 = Instant::now();
    let mut leases = vec![0i64; a.count];
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut joins = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (client, name, sem, ttl, stats) = (
            clients[i % conns].clone(),
            name.clone(),
            sem.clone(),
            a.lease_ttl,
            stats.clone(),
        );
        joins.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            // Like a real agent, registration is retried (a leader change under load is an
            // answer worth retrying); the retries are counted. Once registered, the agent keeps
            // its lease alive at once (not after every agent registered: at 10,000 that takes
            // longer than a TTL).
            let mut tries = 0;
            loop {
                match register(&client, &name, ttl).await {
                    Ok(l) => {
                        tokio::spawn(sim_agent(client, name, l, ttl, stats));
                        return Ok((l, tries));
                    }
                    Err(e) if tries >= 20 => return Err(e),
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    let mut retries = 0;
    for (i, j) in joins.into_iter().enumerate() {
        let (lease, tries) = j
            .await
            .map_err(|e| Failure::usage(e.to_string()))?
            .map_err(|e| Failure::usage(format!("registering: {e}")))?;
        leases[i] = lease;
        retries += tries;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let registered = t0.elapsed();
    // At rest: keep-alives only.
    tokio::time::sleep(a.lease_ttl / 3).await;
    let (k0, e0) = (
        stats.keepalives.load(Ordering::Relaxed),
        stats.keepalive_errors.load(Ordering::Relaxed),
    );
    stats.hist.lock().unwrap().reset();
    stats.error_kinds.lock().unwrap().clear();
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
    let kinds = std::mem::take(&mut *stats.error_kinds.lock().unwrap());
    let e1 = stats.keepalive_errors.load(Ordering::Relaxed);
    let (kp50, kp99) = {
        let h = stats.hist.lock().unwrap();
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    // The run: one task on every simulated agent, created and followed as `eden run` does.
    let client = clients[0].clone();
    let t1 = Instant::now();
    let spec = tasks::create(
        &client,
        &NewTask {
            targets: Targets::Selector("bench=agents".into()),
            command: vec!["true".into()],
            script: None,
            shell: false,
            env: Default::default(),
            cwd: None,
            timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(120),
            register: None,
            retention: Duration::from_secs(3600),
        },
    )
    .await?;
    let created = t1.elapsed();
    let st = tasks::follow(&client, &spec.id, |_| {}).await?;
    let all = t1.elapsed();
    let run_errors = stats.keepalive_errors.load(Ordering::Relaxed) - e1;
    let (ok, bad, _, _) = st.counts(now_ms());
    // Leave: revoke the leases (their keys go with them) and forget the nodes.
    for (i, name) in names.iter().enumerate() {
        let c = &clients[i % conns];
        let _ = c.lease_revoke(leases[i]).await;
        let _ = kv::txn(
            c,
            vec![],
            vec![kv::delete_prefix(&keys::node_prefix(name))],
            vec![],
        )
        .await;
    }
    let v = json!({
        "agents": a.count,
        "connections": conns,
        "register_seconds": registered.as_secs_f64(),
        "register_retries": retries,
        "keepalive_per_second": kps,
        "keepalive_p50_ms": kp50,
        "keepalive_p99_ms": kp99,
        "keepalive_errors": kerr,
        "keepalive_error_kinds": kinds,
        "keepalive_errors_during_run": run_errors,
        "server_cpu_percent": cpu,
        "task": spec.id,
        "targets": spec.targets.len(),
        "create_seconds": created.as_secs_f64(),
        "last_result_seconds": all.as_secs_f64(),
        "ok": ok,
        "not_ok": bad,
    });
    if out.format == Format::Json {
        out.json(&v)?;
    } else {
        out.line(&format!(
            "agents: {} over {conns} connections, registered in {:.2} s ({retries} retries)",
            a.count,
            registered.as_secs_f64()
        ))?;
        out.line(&format!(
            "at rest: {kps:.0} keep-alives/s, p50 {kp50:.2} ms, p99 {kp99:.2} ms, {kerr} errors; server CPU: {}",
            if cpu.is_empty() { "not measured (give --server-pid)".to_string() } else { cpu.iter().map(|c| format!("{c:.0}%")).collect::<Vec<_>>().join(" ") }
        ))?;
        for (kind, n) in &kinds {
            out.line(&format!("  {n} keep-alive errors: {kind}"))?;
        }
        out.line(&format!(
            "run on {} agents: task stored in {:.2} s, last result after {:.2} s ({ok} ok, {bad} not ok; {run_errors} keep-alive errors meanwhile)",
            spec.targets.len(),
            created.as_secs_f64(),
            all.as_secs_f64()
        ))?;
    }
    Ok(())
}
