//! The watch hub: where applied revisions become visible to watchers.
//!
//! Events are raised in exactly one place: the state machine publishes each durable batch of
//! revisions here. The hub keeps the most recent revisions in a ring and a `latest` counter that
//! streams subscribe to; it never pushes to anyone. Each watch stream pulls what it needs:
//!
//! ```text
//!   apply ──publish──▶ ring [first ..= latest] ──▶ stream A (synced: reads the ring)
//!                          │                    └▶ stream B (behind: ring moved past it)
//!   RocksDB "rev" cf ◀─────┴────────────────────────── B catches up from storage by revision
//! ```
//!
//! So a slow watcher never blocks writes or other watchers: it falls behind, then catches up from
//! storage, and can never miss or repeat a revision because it tracks the next revision it needs.
//! The ring always holds a contiguous run of revisions (every revision has at least one event).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::mvcc::RevEvents;

/// How many recent revisions the ring keeps by default.
pub const DEFAULT_RING_REVISIONS: usize = 4096;

pub struct WatchHub {
    ring: RwLock<VecDeque<Arc<RevEvents>>>,
    latest: watch::Sender<i64>,
    capacity: usize,
}

impl WatchHub {
    pub fn new(current_rev: i64, capacity: usize) -> WatchHub {
        let (latest, _) = watch::channel(current_rev);
        WatchHub {
            ring: RwLock::new(VecDeque::new()),
            latest,
            capacity: capacity.max(1),
        }
    }

    /// Publishes durable revisions (in order) and wakes the streams.
    pub fn publish(&self, revs: Vec<RevEvents>) {
        let Some(last) = revs.last().map(|r| r.rev) else {
            return;
        };
        {
            let mut ring = self.ring.write().expect("ring lock");
            for r in revs {
                ring.push_back(Arc::new(r));
            }
            while ring.len() > self.capacity {
                ring.pop_front();
            }
        }
        self.latest.send_replace(last);
    }

    /// After a snapshot was installed: history jumped, so the ring is dropped and streams catch up
    /// from storage.
    pub fn reset(&self, rev: i64) {
        self.ring.write().expect("ring lock").clear();
        self.latest.send_replace(rev);
    }

    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// The revisions `[from, to]` if the ring still holds `from`; None if the caller must read them
    /// from storage.
    pub fn recent(&self, from: i64, to: i64) -> Option<Vec<Arc<RevEvents>>> {
        let ring = self.ring.read().expect("ring lock");
        let first = ring.front()?.rev;
        if from < first {
            return None;
        }
        let skip = (from - first) as usize;
        Some(
            ring.iter()
                .skip(skip)
                .take_while(|r| r.rev <= to)
                .cloned()
                .collect(),
        )
    }
}
