//! Lease deadlines.
//!
//! Leases themselves (id and granted TTL) live in the state machine, replicated like everything else.
//! Their deadlines do not: only the leader keeps time. Every member tracks the leases it has applied
//! here, but only the leader renews them on keep-alive and proposes a revoke through the log when one
//! expires, which deletes the lease's keys with DELETE events on every member.
//!
//! A leader change resets every deadline to a full TTL on the new leader (etcd does the same), so a
//! lease never expires early because its leader died; it may live up to one TTL longer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LeaseKeeper {
    leases: Mutex<HashMap<i64, Tracked>>,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    ttl: i64,
    deadline: Instant,
}

/// The smallest TTL a lease gets (etcd: 1.5 election timeouts, rounded up to whole seconds).
pub const MIN_LEASE_TTL_SECS: i64 = 2;
/// etcd's largest TTL.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

impl Default for LeaseKeeper {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseKeeper {
    pub fn new() -> LeaseKeeper {
        LeaseKeeper {
            leases: Mutex::new(HashMap::new()),
        }
    }

    fn deadline(ttl: i64) -> Instant {
        Instant::now() + Duration::from_secs(ttl.max(0) as u64)
    }

    /// Replaces everything tracked (at startup and after a snapshot is installed).
    pub fn load(&self, leases: impl IntoIterator<Item = (i64, i64)>) {
        let mut map = self.leases.lock().expect("lease lock");
        map.clear();
        for (id, ttl) in leases {
            map.insert(
                id,
                Tracked {
                    ttl,
                    deadline: Self::deadline(ttl),
                },
            );
        }
    }

    pub fn granted(&self, id: i64, ttl: i64) {
        self.leases.lock().expect("lease lock").insert(
            id,
            Tracked {
                ttl,
                deadline: Self::deadline(ttl),
            },
        );
    }

    pub fn revoked(&self, id: i64) {
        self.leases.lock().expect("lease lock").remove(&id);
    }

    /// Gives every lease a full TTL (when this member becomes leader).
    pub fn reset_all(&self) {
        for t in self.leases.lock().expect("lease lock").values_mut() {
            t.deadline = Self::deadline(t.ttl);
        }
    }

    /// A keep-alive: the lease's TTL, or None if it is unknown.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut map = self.leases.lock().expect("lease lock");
        let t = map.get_mut(&id)?;
        t.deadline = Self::deadline(t.ttl);
        Some(t.ttl)
    }

    /// Remaining whole seconds (rounded up) and the granted TTL, or None if unknown.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let map = self.leases.lock().expect("lease lock");
        let t = map.get(&id)?;
        let left = t.deadline.saturating_duration_since(Instant::now());
        let secs = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
        Some((secs, t.ttl))
    }

    /// The leases whose deadline has passed.
    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let map = self.leases.lock().expect("lease lock");
        let mut ids: Vec<i64> = map
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .leases
            .lock()
            .expect("lease lock")
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }
}
