//! Load beyond a cluster's capacity, for the robustness suite's load-under-faults mode: simulated
//! agents (each a lease, a key under it, keep-alives paced as an agent paces them: a third of the
//! TTL after a success, soon with backoff and jitter after a failure, registering again when the
//! lease is gone) and writers that put as fast as the cluster answers. Every error is counted by
//! kind; nothing here is checked, it only has to keep the members busy while the history
//! checkers and the quiet-phase leader checks judge them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eden_proto::client::{Backoff, Client};
use eden_proto::etcdserverpb::PutRequest;

/// Agents per client connection (as `eden bench agents` multiplexes them).
const AGENTS_PER_CONN: usize = 200;
const LEASE_TTL: Duration = Duration::from_secs(10);
/// One request of the load may take this long before it counts as a timeout.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct LoadStats {
    pub registered: AtomicU64,
    pub keepalives: AtomicU64,
    pub writes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl LoadStats {
    fn error(&self, kind: &str) {
        let kind: String = kind.chars().take(120).collect();
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// One line: what the load did and its errors by kind.
    pub fn summary(&self) -> String {
        let errors = self.errors.lock().unwrap();
        format!(
            "{} agents registered, {} keep-alives, {} writes; errors: {}",
            self.registered.load(Ordering::Relaxed),
            self.keepalives.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors
                    .iter()
                    .map(|(k, n)| format!("{n} x {k}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        )
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub stats: Arc<LoadStats>,
}

async fn timed<T>(
    fut: impl std::future::Future<Output = eden_proto::client::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

async fn register(client: &Client, key: &[u8]) -> Result<i64, String> {
    let lease = timed(client.lease_grant(LEASE_TTL.as_secs() as i64, 0))
        .await?
        .id;
    timed(client.put(PutRequest {
        key: key.to_vec(),
        value: b"alive".to_vec(),
        lease,
        ..Default::default()
    }))
    .await?;
    Ok(lease)
}

async fn agent(client: Arc<Client>, key: Vec<u8>, stop: Arc<AtomicBool>, stats: Arc<LoadStats>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), LEASE_TTL / 6);
    let mut lease = None;
    while !stop.load(Ordering::Relaxed) {
        let wait = match lease {
            None => match register(&client, &key).await {
                Ok(l) => {
                    stats.registered.fetch_add(1, Ordering::Relaxed);
                    lease = Some(l);
                    backoff = Backoff::new(Duration::from_millis(200), LEASE_TTL / 6);
                    LEASE_TTL.mul_f64(rand::random::<f64>() / 3.0)
                }
                Err(e) => {
                    stats.error(&format!("register: {e}"));
                    backoff.next_delay()
                }
            },
            Some(l) => match timed(client.lease_keep_alive_once(l)).await {
                Ok(r) if r.ttl > 0 => {
                    stats.keepalives.fetch_add(1, Ordering::Relaxed);
                    backoff = Backoff::new(Duration::from_millis(200), LEASE_TTL / 6);
                    LEASE_TTL / 3
                }
                Ok(_) => {
                    stats.error("keep-alive: lease gone");
                    lease = None;
                    Duration::ZERO
                }
                Err(e) => {
                    stats.error(&format!("keep-alive: {e}"));
                    backoff.next_delay()
                }
            },
        };
        tokio::time::sleep(wait).await;
    }
}

async fn writer(client: Arc<Client>, w: usize, stop: Arc<AtomicBool>, stats: Arc<LoadStats>) {
    let mut n = 0u64;
    let value = vec![b'w'; 256];
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let r = timed(client.put(PutRequest {
            key: format!("load/w{w}/{}", n % 100).into_bytes(),
            value: value.clone(),
            ..Default::default()
        }))
        .await;
        match r {
            Ok(_) => {
                stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.error(&format!("write: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Load {
    /// Starts `agents` simulated agents and `writers` writers against `endpoints`.
    pub fn start(endpoints: &[String], agents: usize, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let conns = agents.div_ceil(AGENTS_PER_CONN).max(1);
        let clients: Vec<Arc<Client>> = (0..conns).map(|_| crate::client_for(endpoints)).collect();
        let mut tasks = Vec::new();
        for i in 0..agents {
            let key = format!("load/agent/{i:05}").into_bytes();
            tasks.push(tokio::spawn(agent(
                clients[i % conns].clone(),
                key,
                stop.clone(),
                stats.clone(),
            )));
        }
        for w in 0..writers {
            tasks.push(tokio::spawn(writer(
                clients[w % conns].clone(),
                w,
                stop.clone(),
                stats.clone(),
            )));
        }
        Load { stop, tasks, stats }
    }

    /// Stops the load and waits for its tasks (each ends after its current request).
    pub async fn stop(self) -> Arc<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(OP_TIMEOUT * 2, t).await;
        }
        self.stats
    }
}
