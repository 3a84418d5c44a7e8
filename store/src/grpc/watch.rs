//! The etcd Watch service: many watches on one bidirectional stream.
//!
//! Each stream runs one task, woken by the [`WatchHub`](crate::watch::WatchHub) only for revisions
//! with a key one of its watchers (or its caller's rights) depends on: it then brings each watcher
//! from its `next_rev` up to the latest revision, from the revisions its signal handed over, or,
//! for a watcher that starts in the past or a stream that fell behind, from the hub's ring or
//! storage. A revision's events always go out in
//! one response (atomic), each watcher's revisions in order and once (ordered, unique, reliable), and
//! a watcher whose next revision was compacted is canceled with the compact revision (so a client
//! knows to re-list, then resume: resumable, bookmarkable with progress notifications).
//!
//! A response holds at most [`MAX_EVENTS_PER_RESPONSE`] events and, past its first revision, at
//! most `--max-request-bytes` (more revisions go in the next response). One revision larger than
//! that goes whole, unless the watch asked for fragments (`fragment`, as etcd's): then it is split
//! into responses under the limit, each but the last marked `fragment`, as etcd's
//! `sendFragments` does.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use eden_proto::etcdserverpb::watch_server::Watch;
use eden_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use eden_proto::mvccpb::{event::EventType, Event};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Caller, StoreFacts};
use crate::errors::{self, internal};
use crate::grpc::authz;
use crate::keys::KeyRange;
use crate::metrics::metrics;
use crate::mvcc::RevEvents;
use crate::node::Node;
use crate::watch::{Signal, StreamId, Taken};
use eden_proto::model::certs;
use eden_proto::pki::CertInfo;

/// Revisions per storage read while a watcher catches up.
const CATCHUP_REVISIONS: usize = 1000;
/// A response carries at most this many events (more revisions go in the next one).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;

pub struct WatchService {
    pub node: Arc<Node>,
}

/// One watch on a stream.
#[derive(Debug, Clone)]
pub struct Watcher {
    pub id: i64,
    pub range: KeyRange,
    /// The first revision this watcher has not seen yet.
    pub next_rev: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    /// Split a response larger than the request limit (etcd's `fragment`).
    pub fragment: bool,
    /// Catching up from storage (the ring no longer holds its next revision).
    pub slow: bool,
    /// From this revision on, the stream's signal hands over every revision this watcher needs;
    /// revisions before it are read whole from the ring or storage.
    pub indexed_from: i64,
}

impl Watcher {
    pub fn from_request(id: i64, req: &WatchCreateRequest, current_rev: i64) -> Watcher {
        Watcher {
            id,
            range: KeyRange::new(&req.key, &req.range_end),
            next_rev: if req.start_revision > 0 {
                req.start_revision
            } else {
                current_rev + 1
            },
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            slow: false,
            indexed_from: i64::MAX,
        }
    }

    /// The events of `rev` this watcher wants, shaped for it (prev_kv only if asked).
    pub fn select(&self, rev: &RevEvents) -> Vec<Event> {
        rev.positions_in(&self.range)
            .into_iter()
            .map(|i| &rev.events[i])
            .filter(|e| {
                if e.r#type == EventType::Put as i32 {
                    !self.no_put
                } else {
                    !self.no_delete
                }
            })
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.open(request)
    }
}

/// A stream of watch requests, from gRPC or from the HTTP/JSON gateway.
pub type Inbound = Pin<Box<dyn Stream<Item = Result<WatchRequest, Status>> + Send>>;

impl WatchService {
    /// Opens a watch stream fed by `request`'s stream of requests, checked as its caller.
    pub fn open<S>(&self, request: Request<S>) -> Result<Response<WatchStream>, Status>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + 'static,
    {
        self.node.refuse_learner()?;
        let wants_leader = request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v == "true");
        if wants_leader && self.node.leader().is_none() {
            return Err(errors::no_leader());
        }
        let (caller, cert) = authz::caller_and_cert(&self.node, &request)?;
        let inbound: Inbound = Box::pin(request.into_inner());
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut s = StreamTask::new(node, caller, cert, tx.clone());
            if let Err(status) = s.run(inbound).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct StreamTask {
    node: Arc<Node>,
    /// Who opened the stream: every watch on it is checked for them, at creation and again
    /// after each change to their rights.
    caller: Caller,
    /// The certificate the stream was opened with: checked again after each revocation, and the
    /// stream closed when it is revoked.
    cert: Option<CertInfo>,
    /// The keys whose changes may change the caller's rights.
    rights: Vec<KeyRange>,
    /// The stream's id in the hub, and what wakes it.
    hub_id: StreamId,
    signal: Arc<Signal>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

impl StreamTask {
    fn new(
        node: Arc<Node>,
        caller: Caller,
        cert: Option<CertInfo>,
        tx: mpsc::Sender<Result<WatchResponse, Status>>,
    ) -> StreamTask {
        metrics().watch_streams.inc();
        let (hub_id, signal) = node.hub().open_stream();
        let rights = auth::rights_ranges(&caller);
        for r in &rights {
            node.hub().watch_range(hub_id, r);
        }
        if cert.is_some() {
            node.hub().watch_range(hub_id, &revoked_range());
        }
        StreamTask {
            node,
            caller,
            cert,
            rights,
            hub_id,
            signal,
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
        }
    }

    fn insert(&mut self, mut w: Watcher) {
        metrics().watchers.inc();
        w.indexed_from = self.node.hub().watch_range(self.hub_id, &w.range) + 1;
        self.watchers.insert(w.id, w);
    }

    fn remove(&mut self, id: i64) -> Option<Watcher> {
        let w = self.watchers.remove(&id)?;
        self.node.hub().unwatch_range(self.hub_id, &w.range);
        metrics().watchers.dec();
        if w.slow {
            metrics().slow_watchers.dec();
        }
        Some(w)
    }

    fn set_slow(&mut self, id: i64, slow: bool) {
        if let Some(w) = self.watchers.get_mut(&id) {
            if w.slow != slow {
                w.slow = slow;
                if slow {
                    metrics().slow_watchers.inc();
                } else {
                    metrics().slow_watchers.dec();
                }
            }
        }
    }
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.remove(id);
        }
        self.node.hub().close_stream(self.hub_id);
        metrics().watch_streams.dec();
    }
}

/// The stream ended (client gone): stop quietly.
struct Closed;

impl StreamTask {
    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(resp)).await.map_err(|_| Closed)
    }

    async fn run(&mut self, mut inbound: Inbound) -> Result<(), Status> {
        let signal = self.signal.clone();
        let mut progress = tokio::time::interval(self.node.config().progress_notify_interval);
        progress.tick().await;
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => if self.handle(req).await.is_err() { return Ok(()) },
                    None | Some(Err(_)) => return Ok(()),
                },
                _ = signal.wait() => metrics().watch_wakeups.inc(),
                _ = progress.tick() => {
                    match self.catch_up().await {
                        Ok(_) => {}
                        Err(CatchUpError::Refused(s)) => return Err(s),
                        Err(_) => return Ok(()),
                    }
                    if self.notify_progress().await.is_err() { return Ok(()) }
                    continue;
                }
            }
            match self.catch_up().await {
                Ok(_) => {}
                Err(CatchUpError::Closed) => return Ok(()),
                Err(CatchUpError::Storage(e)) => return Err(internal(e)),
                Err(CatchUpError::Refused(s)) => return Err(s),
            }
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                if self.remove(c.watch_id).is_some() {
                    let header = Some(self.node.header());
                    self.send(WatchResponse {
                        header,
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // Answered once for the stream, after every watcher caught up to the revision named.
                let rev = match self.catch_up().await {
                    Ok(rev) => rev,
                    Err(_) => return Err(Closed),
                };
                self.send(WatchResponse {
                    header: Some(self.node.header_at(rev)),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        let current = self.node.hub().latest();
        let header = Some(self.node.header_at(current));
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self
                    .send(WatchResponse {
                        header,
                        watch_id: c.watch_id,
                        created: true,
                        canceled: true,
                        cancel_reason: errors::WATCH_DUPLICATE_ID.into(),
                        ..Default::default()
                    })
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let w = Watcher::from_request(id, &c, current);
        if let Err(status) = authz::allow(&self.node, &self.caller, |f| {
            auth::check_read(&self.caller, &c.key, &c.range_end, f)
        }) {
            return self
                .send(WatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: status.message().into(),
                    ..Default::default()
                })
                .await;
        }
        self.send(WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        let compact = self.node.mvcc().compact_rev();
        if c.start_revision > 0 && c.start_revision < compact {
            return self
                .send(WatchResponse {
                    header,
                    watch_id: id,
                    canceled: true,
                    compact_revision: compact,
                    ..Default::default()
                })
                .await;
        }
        self.insert(w);
        Ok(())
    }

    async fn notify_progress(&mut self) -> Result<(), Closed> {
        let latest = self.node.hub().latest();
        let ids: Vec<i64> = self
            .watchers
            .values()
            .filter(|w| w.progress_notify && w.next_rev > latest)
            .map(|w| w.id)
            .collect();
        for id in ids {
            self.send(WatchResponse {
                header: Some(self.node.header_at(latest)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Refuses to go on when one of the revisions taken (or, after an overflow, any revision)
    /// revoked the stream's certificate.
    fn check_revocations(&self, taken: &Taken) -> Result<(), CatchUpError> {
        let Some(info) = &self.cert else {
            return Ok(());
        };
        let revoked = revoked_range();
        let touched = taken.overflowed
            || taken.revs.iter().any(|r| {
                r.events
                    .iter()
                    .any(|e| e.kv.as_ref().is_some_and(|kv| revoked.contains(&kv.key)))
            });
        if touched {
            authz::still_valid(&self.node, info).map_err(CatchUpError::Refused)?;
        }
        Ok(())
    }

    /// Brings every watcher up to the latest revision; returns that revision.
    async fn catch_up(&mut self) -> Result<i64, CatchUpError> {
        let taken = self.node.hub().take(&self.signal);
        self.check_revocations(&taken)?;
        let upto = taken.upto;
        if taken.overflowed {
            // The signal dropped revisions: read everything up to `upto` whole.
            for w in self.watchers.values_mut() {
                w.indexed_from = w.indexed_from.max(upto + 1);
            }
        }
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            // The revisions the hub's index does not vouch for, read whole.
            let unindexed = upto.min(w.indexed_from - 1);
            if w.next_rev <= unindexed && !self.scan(id, unindexed).await? {
                continue;
            }
            // Then only the revisions the signal handed over.
            let Some(w) = self.watchers.get(&id).cloned() else {
                continue;
            };
            let start = taken.revs.partition_point(|r| r.rev < w.next_rev);
            if !self.deliver(&w, &taken.revs[start..]).await? {
                continue;
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = w.next_rev.max(upto + 1);
            }
        }
        Ok(upto)
    }

    /// Reads watcher `id`'s revisions up to `target` from the ring or storage and sends what it
    /// wants of them; false when the watcher ended on the way (compacted or denied).
    async fn scan(&mut self, id: i64, target: i64) -> Result<bool, CatchUpError> {
        while let Some(w) = self.watchers.get(&id).cloned() {
            if w.next_rev > target {
                return Ok(true);
            }
            let revs = match self.node.hub().recent(w.next_rev, target) {
                Some(r) => {
                    self.set_slow(id, false);
                    r
                }
                None => {
                    self.set_slow(id, true);
                    let node = self.node.clone();
                    let from = w.next_rev;
                    let got = self
                        .node
                        .hub()
                        .history
                        .read(from, move || {
                            node.mvcc().events_between(from, target, CATCHUP_REVISIONS)
                        })
                        .await
                        .map_err(CatchUpError::Storage)?;
                    match got {
                        Some(chunk) => chunk
                            .iter()
                            .take_while(|r| r.rev <= target)
                            .cloned()
                            .collect(),
                        None => {
                            // The watcher's next revision was compacted before it got there.
                            let compact = self.node.mvcc().compact_rev();
                            self.remove(id);
                            self.send(WatchResponse {
                                header: Some(self.node.header_at(target)),
                                watch_id: id,
                                canceled: true,
                                compact_revision: compact,
                                ..Default::default()
                            })
                            .await
                            .map_err(|_| CatchUpError::Closed)?;
                            return Ok(false);
                        }
                    }
                }
            };
            let Some(last) = revs.last().map(|r| r.rev) else {
                // Nothing stored between next_rev and the target (cannot happen with a contiguous
                // history, but never spin).
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.next_rev = target + 1;
                }
                return Ok(true);
            };
            if !self.deliver(&w, &revs).await? {
                return Ok(false);
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.next_rev = last + 1;
            }
        }
        Ok(false)
    }

    /// Sends watcher `w` what it wants of `revs` (ascending, from its next revision on), a
    /// revision's events always in one response; false when the caller's rights changed on the
    /// way so that it may no longer watch (it is then canceled, with the reason).
    async fn deliver(
        &mut self,
        w: &Watcher,
        revs: &[Arc<RevEvents>],
    ) -> Result<bool, CatchUpError> {
        let id = w.id;
        let limit = self.node.config().max_request_bytes;
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut sent_to = w.next_rev - 1;
        let mut denied = None;
        for r in revs {
            if self.rights_changed(r) {
                if let Err(why) = self.still_allowed(w) {
                    denied = Some(why);
                    break;
                }
            }
            let mut selected = w.select(r);
            if selected.is_empty() {
                continue;
            }
            let size: usize = selected.iter().map(approx_len).sum();
            if !events.is_empty()
                && (events.len() + selected.len() > MAX_EVENTS_PER_RESPONSE || bytes + size > limit)
            {
                self.send_events(w, sent_to, std::mem::take(&mut events))
                    .await?;
                bytes = 0;
            }
            bytes += size;
            events.append(&mut selected);
            sent_to = r.rev;
        }
        if let Some(why) = denied {
            // What it could read until its rights changed, then the reason it stops.
            if !events.is_empty() {
                self.send_events(w, sent_to, events).await?;
            }
            self.remove(id);
            self.send(WatchResponse {
                header: Some(self.node.header_at(sent_to)),
                watch_id: id,
                canceled: true,
                cancel_reason: format!("{}: {why}", errors::PERMISSION_DENIED),
                ..Default::default()
            })
            .await?;
            return Ok(false);
        }
        if !events.is_empty() {
            let last = revs.last().map_or(sent_to, |r| r.rev);
            self.send_events(w, last, events).await?;
        }
        Ok(true)
    }

    /// Whether revision `r` changed what this stream's caller may read.
    fn rights_changed(&self, r: &RevEvents) -> bool {
        !self.caller.is_root() && self.rights.iter().any(|x| r.any_in(x))
    }

    /// Checks a watch again against the rights as they are now.
    fn still_allowed(&self, w: &Watcher) -> Result<(), auth::Denied> {
        auth::check_read(
            &self.caller,
            &w.range.start,
            &w.range.range_end(),
            &StoreFacts::new(self.node.mvcc()),
        )
    }

    /// Sends `events` to watcher `w` at revision `rev`: in one response, or, when `w` asked for
    /// fragments and they are larger than the request limit, in pieces under it.
    async fn send_events(
        &self,
        w: &Watcher,
        rev: i64,
        events: Vec<Event>,
    ) -> Result<(), CatchUpError> {
        let resp = WatchResponse {
            header: Some(self.node.header_at(rev)),
            watch_id: w.id,
            events,
            ..Default::default()
        };
        let limit = self.node.config().max_request_bytes;
        for part in fragments(resp, w.fragment, limit) {
            self.send(part).await.map_err(|_| CatchUpError::Closed)?;
        }
        Ok(())
    }
}

/// About what one event adds to a response: its keys and values, read off their lengths (no
/// encoding pass on the fan-out path; the byte cap between revisions is a soft one).
fn approx_len(e: &Event) -> usize {
    let kv = |kv: &Option<eden_proto::mvccpb::KeyValue>| {
        kv.as_ref()
            .map_or(0, |kv| kv.key.len() + kv.value.len() + 32)
    };
    kv(&e.kv) + kv(&e.prev_kv)
}

/// What one event adds to an encoded response (its field tag, length and bytes).
fn event_len(e: &Event) -> usize {
    let n = e.encoded_len();
    1 + prost::length_delimiter_len(n) + n
}

/// `resp` as it goes out: whole, unless `fragment` is asked and it holds more than one event and
/// is at least `limit` bytes; then in pieces each under `limit` (or of one event), all but the
/// last marked `fragment` (etcd's `sendFragments`).
fn fragments(resp: WatchResponse, fragment: bool, limit: usize) -> Vec<WatchResponse> {
    if !fragment || resp.events.len() < 2 || resp.encoded_len() < limit {
        return vec![resp];
    }
    let base = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..resp.clone()
    };
    let base_len = base.encoded_len();
    let mut out = Vec::new();
    let mut cur = base.clone();
    let mut size = base_len;
    for e in resp.events {
        let add = event_len(&e);
        if !cur.events.is_empty() && size + add >= limit {
            out.push(std::mem::replace(&mut cur, base.clone()));
            size = base_len;
        }
        size += add;
        cur.events.push(e);
    }
    cur.fragment = false;
    out.push(cur);
    out
}

/// Revocation lists: a stream opened with a certificate is checked again after a change here.
fn revoked_range() -> KeyRange {
    let p = certs::REVOKED.as_bytes();
    KeyRange::new(p, &crate::keys::prefix_end(p))
}

enum CatchUpError {
    Closed,
    Storage(String),
    /// The stream's certificate was revoked: it ends with this status.
    Refused(Status),
}

impl From<Closed> for CatchUpError {
    fn from(_: Closed) -> Self {
        CatchUpError::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eden_proto::mvccpb::KeyValue;

    fn event(key: &str, value_len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![b'x'; value_len],
                mod_revision: 7,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn response(events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            watch_id: 3,
            events,
            ..Default::default()
        }
    }

    #[test]
    fn a_large_response_is_split_under_the_limit_only_when_asked() {
        let events: Vec<Event> = (0..10).map(|i| event(&format!("k{i}"), 1000)).collect();
        let resp = response(events.clone());
        assert_eq!(fragments(resp.clone(), false, 2500), vec![resp.clone()]);
        assert_eq!(fragments(resp.clone(), true, 1 << 20), vec![resp.clone()]);
        let parts = fragments(resp, true, 2500);
        assert_eq!(
            parts.len(),
            5,
            "two events of about 1 KB fit under 2,500 bytes"
        );
        for (i, p) in parts.iter().enumerate() {
            assert!(p.encoded_len() < 2500);
            assert_eq!(p.fragment, i + 1 < parts.len());
            assert_eq!(p.watch_id, 3);
        }
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, events);
    }

    #[test]
    fn one_event_larger_than_the_limit_goes_alone() {
        let events = vec![event("a", 10), event("big", 5000), event("b", 10)];
        let parts = fragments(response(events.clone()), true, 1000);
        let sizes: Vec<usize> = parts.iter().map(|p| p.events.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(
            parts.iter().map(|p| p.fragment).collect::<Vec<_>>(),
            vec![true, true, false]
        );
        // One event alone is never marked as a fragment.
        let one = fragments(response(vec![event("big", 5000)]), true, 1000);
        assert_eq!((one.len(), one[0].fragment), (1, false));
    }
}
