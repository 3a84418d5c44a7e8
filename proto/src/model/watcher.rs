//! List-then-watch over a prefix, in the spirit of kube-runtime's watcher: one loop for every
//! consumer that must not miss a change (the agent's assignments, the reactor runtime, `eden run`
//! following a task, `eden var|event watch`).
//!
//! A [`Watcher`] starts at a revision ([`Watcher::from_revision`], typically one after a list
//! the caller made) and then yields each watch response's events in revision order. The watch
//! survives members coming and going (the client resumes it on another endpoint). When the
//! history it needs was compacted away it says so: a watcher told to relist lists the prefix
//! again ([`Change::Listed`]), any other yields [`Change::Compacted`] and stops until
//! [`Watcher::resume_at`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::client::{Client, ClientError};
use crate::etcdserverpb::{WatchCreateRequest, WatchResponse};
use crate::keys::prefix_end;
use crate::model::{kv, Error};
use crate::mvccpb::{Event, KeyValue};

/// What a watcher saw.
#[derive(Debug)]
pub enum Change {
    /// Every key under the prefix at `revision`, listed because the history between the last
    /// change seen and now was compacted away: this list is the whole truth.
    Listed { kvs: Vec<KeyValue>, revision: i64 },
    /// Changes after the last ones yielded, in revision order.
    Events(Vec<Event>),
    /// (A watcher that does not list.) The history after the last change seen is gone: the
    /// oldest revision kept is `oldest`. The watcher yields nothing more until `resume_at`.
    Compacted { oldest: i64 },
}

pub struct Watcher {
    client: Arc<Client>,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    progress_notify: bool,
    give_up: Duration,
    relist: bool,
    need_list: bool,
    stopped: bool,
    /// The next revision wanted; 0: from now.
    next: i64,
    rx: Option<mpsc::Receiver<Result<WatchResponse, ClientError>>>,
}

impl Watcher {
    fn new(client: Arc<Client>, prefix: &str) -> Watcher {
        Watcher {
            client,
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            prev_kv: false,
            progress_notify: false,
            give_up: Duration::from_secs(60),
            relist: false,
            need_list: false,
            stopped: false,
            next: 0,
            rx: None,
        }
    }

    /// Watches `prefix` from `revision` (inclusive; 0: from now).
    pub fn from_revision(client: Arc<Client>, prefix: &str, revision: i64) -> Watcher {
        Watcher {
            next: revision,
            ..Watcher::new(client, prefix)
        }
    }

    /// On compaction, list the prefix again (yielding [`Change::Listed`]) instead of yielding
    /// [`Change::Compacted`].
    pub fn relist_on_compaction(mut self) -> Watcher {
        self.relist = true;
        self
    }

    /// Watch the one key given, not every key it prefixes (a watcher that does not list).
    pub fn single_key(mut self) -> Watcher {
        self.range_end = Vec::new();
        self
    }

    /// Deleted and overwritten keys come with their previous value.
    pub fn with_prev_kv(mut self) -> Watcher {
        self.prev_kv = true;
        self
    }

    /// Ask the server for progress notifications (they are not yielded; they keep the watch's
    /// revision fresh on the server).
    pub fn with_progress_notify(mut self) -> Watcher {
        self.progress_notify = true;
        self
    }

    /// How long the watch may find no member before it yields an error (60 s by default).
    pub fn give_up_after(mut self, d: Duration) -> Watcher {
        self.give_up = d;
        self
    }

    /// Continue from `revision` (after [`Change::Compacted`], or to skip ahead).
    pub fn resume_at(&mut self, revision: i64) {
        self.next = revision;
        self.stopped = false;
        self.rx = None;
    }

    /// The next change; None once stopped by compaction (see `resume_at`). An error (no member
    /// answered within the give-up time, a canceled watch) is yielded once; calling `next` again
    /// starts over from the last change seen.
    pub async fn next(&mut self) -> Option<Result<Change, Error>> {
        loop {
            if self.need_list {
                let prefix = String::from_utf8_lossy(&self.key).into_owned();
                return Some(
                    match kv::get_prefix(&self.client, &prefix, 0, false).await {
                        Ok((kvs, revision)) => {
                            self.need_list = false;
                            self.next = revision + 1;
                            Ok(Change::Listed { kvs, revision })
                        }
                        Err(e) => Err(e.into()),
                    },
                );
            }
            if self.stopped {
                return None;
            }
            let rx = self.rx.get_or_insert_with(|| {
                self.client.watch(
                    WatchCreateRequest {
                        key: self.key.clone(),
                        range_end: self.range_end.clone(),
                        start_revision: self.next,
                        prev_kv: self.prev_kv,
                        progress_notify: self.progress_notify,
                        ..Default::default()
                    },
                    self.give_up,
                )
            });
            let m = match rx.recv().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    self.rx = None;
                    return Some(Err(e.into()));
                }
                None => {
                    self.rx = None;
                    return Some(Err(Error::Refused("the watch ended".into())));
                }
            };
            if m.canceled {
                self.rx = None;
                if m.compact_revision > 0 {
                    if self.relist {
                        self.need_list = true;
                        continue;
                    }
                    self.stopped = true;
                    return Some(Ok(Change::Compacted {
                        oldest: m.compact_revision,
                    }));
                }
                return Some(Err(Error::Refused(format!(
                    "the watch was canceled: {}",
                    m.cancel_reason
                ))));
            }
            if m.events.is_empty() {
                continue;
            }
            if let Some(last) = m.events.iter().rev().find_map(|e| e.kv.as_ref()) {
                self.next = self.next.max(last.mod_revision + 1);
            }
            return Some(Ok(Change::Events(m.events)));
        }
    }
}
