//! The gate for explicit events: puts under `/eden/events/` (from `eden event emit`, webhooks,
//! reactors, or any etcd client) are checked here before they are proposed, so that events can
//! never fill the store:
//!
//! - the value must be a JSON object with a non-empty `tag`, at most `max_bytes` long;
//! - the tag must pass the server's allow and deny globs (a denied event is not stored, and
//!   counted in `eden_events_denied_total`);
//! - each source (the event's `source` field) may emit `rate` events per second (burst: twice
//!   that) across the cluster: the leader counts them as it proposes (so the leader's `--event-rate`
//!   applies, and a new leader starts with full buckets);
//! - the event is attached to the lease of its time bucket: one lease per bucket of events (a
//!   24th of the retention, between 1 s and 1 h; id `EVENT_LEASE_BASE + bucket number`), with a
//!   TTL of the retention plus a bucket, so events expire without one lease per event.
//!
//! Every member checks the first three before forwarding a write; the rate is the leader's.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use eden_proto::etcdserverpb::{request_op, PutRequest, RequestOp};
use tonic::Status;

use crate::errors;
use crate::metrics::metrics;

pub const EVENTS_PREFIX: &[u8] = eden_proto::model::keys::EVENTS.as_bytes();
/// Bucket leases are `EVENT_LEASE_BASE + buckets since the Unix epoch`.
pub const EVENT_LEASE_BASE: i64 = 0x6576_0000_0000_0000;

#[derive(Debug, Clone)]
pub struct EventPolicy {
    /// Tag globs to allow (empty: all).
    pub allow: Vec<String>,
    /// Tag globs to deny (checked after allow).
    pub deny: Vec<String>,
    pub max_bytes: usize,
    pub retention: Duration,
    /// Events per second per source.
    pub rate: u32,
}

impl EventPolicy {
    /// The time span whose events share a lease.
    pub fn bucket(&self) -> Duration {
        (self.retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
            max_bytes: 64 * 1024,
            retention: Duration::from_secs(24 * 3600),
            rate: 100,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct EventGate {
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Bucket leases known to exist.
    leases: Mutex<HashSet<i64>>,
}

/// Calls `f` on every put of a request, including those inside (nested) txns.
fn for_each_put(
    op: &mut RequestOp,
    f: &mut impl FnMut(&mut PutRequest) -> Result<(), Status>,
) -> Result<(), Status> {
    match op.request.as_mut() {
        Some(request_op::Request::RequestPut(p)) => f(p),
        Some(request_op::Request::RequestTxn(t)) => {
            for o in t.success.iter_mut().chain(t.failure.iter_mut()) {
                for_each_put(o, f)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl EventGate {
    /// Checks one event put; returns the hour lease it must be attached to.
    fn admit(&self, policy: &EventPolicy, key: &[u8], value: &[u8]) -> Result<i64, Status> {
        let refuse = |s: Status| {
            metrics().events_refused.inc();
            s
        };
        if value.len() > policy.max_bytes {
            return Err(refuse(errors::event_too_big(value.len(), policy.max_bytes)));
        }
        let v: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
            refuse(errors::event_not_an_event(Some(format!(
                "{}: {e}",
                String::from_utf8_lossy(key)
            ))))
        })?;
        let tag = v["tag"].as_str().unwrap_or_default();
        if tag.is_empty() {
            return Err(refuse(errors::event_not_an_event(None)));
        }
        let allowed = policy.allow.is_empty()
            || policy
                .allow
                .iter()
                .any(|g| eden_proto::glob::matches(g, tag));
        if !allowed
            || policy
                .deny
                .iter()
                .any(|g| eden_proto::glob::matches(g, tag))
        {
            metrics().events_denied.inc();
            return Err(errors::event_denied(tag));
        }
        let bucket = policy.bucket().as_secs();
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / bucket);
        Ok(EVENT_LEASE_BASE + n as i64)
    }
}

/// The `source` of an event's JSON value ("unknown" when it has none).
fn source_of(value: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v["source"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

impl EventGate {
    /// On the leader, before proposing a KV write: takes one token per event put from its
    /// source's bucket. Err: the message for a refusal (nothing is taken then).
    pub(crate) fn take_tokens(&self, policy: &EventPolicy, op: &[u8]) -> Result<(), String> {
        // Most writes are not events: skip decoding them.
        if !op.windows(EVENTS_PREFIX.len()).any(|w| w == EVENTS_PREFIX) {
            return Ok(());
        }
        let Ok(mut op) = <RequestOp as prost::Message>::decode(op) else {
            return Ok(());
        };
        let mut sources: HashMap<String, f64> = HashMap::new();
        let _ = for_each_put(&mut op, &mut |p| {
            if p.key.starts_with(EVENTS_PREFIX) {
                *sources.entry(source_of(&p.value)).or_default() += 1.0;
            }
            Ok(())
        });
        let rate = f64::from(policy.rate.max(1));
        let mut b = self.buckets.lock().expect("buckets lock");
        let now = Instant::now();
        for (source, n) in &sources {
            let bucket = b.entry(source.clone()).or_insert(Bucket {
                tokens: rate * 2.0,
                at: now,
            });
            bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate)
                .min(rate * 2.0);
            bucket.at = now;
            if bucket.tokens < *n {
                metrics().events_refused.inc();
                return Err(errors::event_rate_message(source, policy.rate));
            }
        }
        for (source, n) in sources {
            if let Some(bucket) = b.get_mut(&source) {
                bucket.tokens -= n;
            }
        }
        Ok(())
    }
}

impl EventGate {
    /// Checks every event put in `op` and attaches it to its bucket's lease, granted with
    /// `grant(lease, ttl)` the first time this member needs it.
    pub async fn admit_op<F, Fut>(
        &self,
        policy: &EventPolicy,
        op: &mut RequestOp,
        grant: F,
    ) -> Result<(), Status>
    where
        F: Fn(i64, i64) -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        let mut need = Vec::new();
        for_each_put(op, &mut |p| {
            if p.key.starts_with(EVENTS_PREFIX) {
                p.lease = self.admit(policy, &p.key, &p.value)?;
                need.push(p.lease);
            }
            Ok(())
        })?;
        for lease in need {
            if self.leases.lock().expect("leases lock").contains(&lease) {
                continue;
            }
            let ttl = (policy.retention + policy.bucket()).as_secs().max(1) as i64;
            match grant(lease, ttl).await {
                Ok(()) => {}
                Err(s) if s.message() == errors::LEASE_EXIST => {}
                Err(s) => return Err(s),
            }
            self.leases.lock().expect("leases lock").insert(lease);
        }
        Ok(())
    }
}
