//! Watch and lease behaviour that needs special settings: a slow watcher catching up from storage,
//! progress notifications, and leases across a leader change.

use std::time::Duration;

use eden_proto::etcdserverpb::watch_client::WatchClient;
use eden_proto::etcdserverpb::{
    watch_request, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use eden_proto::keys::prefix_end;
use eden_tests::{wait_for, Cluster};
use tokio_stream::wrappers::ReceiverStream;

/// Many watchers behind the ring at once (they share each chunk of history read from storage):
/// every one gets exactly the events of its own keys, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_replaying_history_each_get_exactly_their_events() {
    let c = Cluster::start(1, &["--watch-ring-revisions", "8", "--no-reactor"]).await;
    let client = c.client();
    let start = c.local_revision(0).await.unwrap() + 1;
    const WATCHERS: usize = 40;
    const ROUNDS: usize = 60;
    // 2,400 revisions, each key of a watcher written ROUNDS times, interleaved with the others.
    for round in 0..ROUNDS {
        for w in 0..WATCHERS {
            client
                .put(PutRequest {
                    key: format!("h/{w:02}/k").into(),
                    value: format!("{round}").into(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let mut tasks = Vec::new();
    for w in 0..WATCHERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let prefix = format!("h/{w:02}/");
            let mut watch = client.watch(
                WatchCreateRequest {
                    key: prefix.clone().into(),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision: start,
                    ..Default::default()
                },
                Duration::from_secs(10),
            );
            let mut seen = Vec::new();
            while seen.len() < ROUNDS {
                let m = tokio::time::timeout(Duration::from_secs(30), watch.recv())
                    .await
                    .expect("a replaying watcher stalled")
                    .unwrap()
                    .unwrap();
                for e in m.events {
                    let kv = e.kv.unwrap();
                    assert_eq!(
                        kv.key,
                        format!("{prefix}k").into_bytes(),
                        "another watcher's key"
                    );
                    seen.push((kv.mod_revision, String::from_utf8(kv.value).unwrap()));
                }
            }
            let values: Vec<String> = seen.iter().map(|(_, v)| v.clone()).collect();
            let want: Vec<String> = (0..ROUNDS).map(|r| r.to_string()).collect();
            assert_eq!(values, want, "watcher {w}: every value once, in order");
            assert!(seen.windows(2).all(|p| p[0].0 < p[1].0), "revisions ascend");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_blocks_nobody_and_catches_up_from_storage() {
    // A ring of 8 revisions: a watcher that falls further behind must read history from RocksDB.
    let c = Cluster::start(1, &["--watch-ring-revisions", "8"]).await;
    let client = c.client();
    let start = c.local_revision(0).await.unwrap() + 1;
    let create = WatchCreateRequest {
        key: "s/".into(),
        range_end: prefix_end(b"s/"),
        start_revision: start,
        ..Default::default()
    };

    // The slow watcher: a raw stream nobody reads until the writes are done.
    let ch = eden_tests::channel_for(&c.members[0].endpoint()).await;
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(1);
    req_tx
        .send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create.clone())),
        })
        .await
        .unwrap();
    let mut slow = WatchClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .watch(ReceiverStream::new(req_rx))
        .await
        .unwrap()
        .into_inner();

    // A fast watcher on another stream.
    let mut fast = client.watch(create, Duration::from_secs(10));
    let total = 300usize;
    // 9.6 MB in all: far more than the HTTP/2 windows and the stream's channel hold, so the
    // server-side stream stalls while the ring moves on.
    let value = "v".repeat(32 * 1024);
    for i in 0..total {
        let put = client.put(PutRequest {
            key: format!("s/{i:03}").into(),
            value: value.clone().into(),
            ..Default::default()
        });
        tokio::time::timeout(Duration::from_secs(10), put)
            .await
            .expect("a slow watcher must not block writes")
            .unwrap();
    }
    let mut fast_seen = 0;
    while fast_seen < total {
        let m = tokio::time::timeout(Duration::from_secs(10), fast.recv())
            .await
            .expect("the fast watcher stalled")
            .unwrap()
            .unwrap();
        fast_seen += m.events.len();
    }
    // Now the slow one reads: every revision once, in order.
    let mut revs = Vec::new();
    while revs.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("slow watcher stalled")
            .unwrap()
            .unwrap();
        assert!(!m.canceled);
        revs.extend(m.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    let want: Vec<i64> = (start..start + total as i64).collect();
    assert_eq!(revs, want);
    drop(req_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_bookmark_the_revision() {
    let c = Cluster::start(1, &["--watch-progress-notify-interval", "1"]).await;
    let client = c.client();
    let rev = client
        .put(PutRequest {
            key: "p".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut rx = client.watch(
        WatchCreateRequest {
            key: "other".into(),
            progress_notify: true,
            ..Default::default()
        },
        Duration::from_secs(10),
    );
    let created = rx.recv().await.unwrap().unwrap();
    assert!(created.created);
    let notify = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no progress notification")
        .unwrap()
        .unwrap();
    assert!(notify.events.is_empty() && !notify.canceled);
    assert_eq!(notify.header.unwrap().revision, rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_leader_change_with_a_full_ttl() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let client = c.client();
    let lease = client.lease_grant(6, 0).await.unwrap();
    client
        .put(PutRequest {
            key: "held".into(),
            value: "x".into(),
            lease: lease.id,
            ..Default::default()
        })
        .await
        .unwrap();
    c.kill(leader);
    let new_leader = c.wait_leader().await;
    let survivor = eden_tests::client_for(&[c.members[new_leader].endpoint()]);
    // The new leader knows the lease and gave it a full TTL.
    let ttl = survivor.lease_time_to_live(lease.id, true).await.unwrap();
    assert_eq!(ttl.granted_ttl, 6);
    assert!(
        ttl.ttl >= 4,
        "a new leader resets the deadline to a full TTL: {ttl:?}"
    );
    assert_eq!(ttl.keys, vec![b"held".to_vec()]);
    assert_eq!(
        survivor.lease_keep_alive_once(lease.id).await.unwrap().ttl,
        6
    );
    // Without keep-alives it still expires on the new leader, deleting its key.
    wait_for(
        "the lease to expire on the new leader",
        Duration::from_secs(20),
        || {
            let survivor = survivor.clone();
            async move {
                survivor
                    .range(RangeRequest {
                        key: "held".into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.kvs.is_empty())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_share_one_stream() {
    let c = Cluster::start(1, &[]).await;
    let client = c.client();
    let ch = eden_tests::channel_for(&c.members[0].endpoint()).await;
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(8);
    let mut stream = WatchClient::new(ch)
        .watch(ReceiverStream::new(req_rx))
        .await
        .unwrap()
        .into_inner();
    let create = |key: &str, end: &[u8]| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.into(),
                range_end: end.to_vec(),
                ..Default::default()
            },
        )),
    };
    // A key, a prefix, and a range [m, n) on one stream: ids 0, 1, 2.
    req_tx.send(create("a", b"")).await.unwrap();
    req_tx.send(create("b/", &prefix_end(b"b/"))).await.unwrap();
    req_tx.send(create("m", b"n")).await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let m = stream.message().await.unwrap().unwrap();
        assert!(m.created);
        ids.push(m.watch_id);
    }
    assert_eq!(ids, vec![0, 1, 2]);
    for k in ["a", "b/1", "mm", "z", "ab"] {
        client
            .put(PutRequest {
                key: k.into(),
                value: "v".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut got: Vec<(i64, Vec<u8>)> = Vec::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend(
            m.events
                .iter()
                .map(|e| (m.watch_id, e.kv.as_ref().unwrap().key.clone())),
        );
    }
    assert_eq!(
        got,
        vec![
            (0, b"a".to_vec()),
            (1, b"b/1".to_vec()),
            (2, b"mm".to_vec())
        ]
    );
    // Cancel one: the stream confirms it and the others go on.
    req_tx
        .send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                eden_proto::etcdserverpb::WatchCancelRequest { watch_id: 1 },
            )),
        })
        .await
        .unwrap();
    let m = stream.message().await.unwrap().unwrap();
    assert!(m.canceled && m.watch_id == 1);
    client
        .put(PutRequest {
            key: "b/2".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .put(PutRequest {
            key: "a".into(),
            value: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.watch_id, m.events[0].kv.as_ref().unwrap().key.clone()),
        (0, b"a".to_vec())
    );
}

/// A watch stream is woken only by revisions with a key it watches (the hub's index): 50 idle
/// streams, each on its own prefix, are not woken while 200 keys elsewhere change, and the one
/// that a write concerns still gets it. Before the index, every revision woke every stream
/// (about 10,000 wake-ups here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_streams_are_not_woken_by_other_keys() {
    const IDLE: usize = 50;
    const WRITES: usize = 200;
    let metrics = format!("127.0.0.1:{}", eden_tests::free_port());
    let c = Cluster::start(1, &["--metrics-addr", &metrics, "--no-reactor"]).await;
    let client = c.client();
    let ch = eden_tests::channel_for(&c.members[0].endpoint()).await;
    let open = |prefix: String| {
        let ch = ch.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: prefix.clone().into(),
                        range_end: prefix_end(prefix.as_bytes()),
                        ..Default::default()
                    },
                )),
            })
            .await
            .unwrap();
            let mut stream = WatchClient::new(ch)
                .watch(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            assert!(stream.message().await.unwrap().unwrap().created);
            (tx, stream)
        }
    };
    let mut idle = Vec::new();
    for i in 0..IDLE {
        idle.push(open(format!("idle/{i:02}/")).await);
    }
    let (_busy_tx, mut busy) = open("busy/".into()).await;
    let before = eden_tests::metric(&metrics, "eden_watch_stream_wakeups_total").await;
    for i in 0..WRITES {
        client
            .put(PutRequest {
                key: format!("busy/{i:03}").into(),
                value: "v".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut seen = 0;
    while seen < WRITES {
        let m = tokio::time::timeout(Duration::from_secs(10), busy.message())
            .await
            .expect("the busy stream's events")
            .unwrap()
            .unwrap();
        seen += m.events.len();
    }
    let woken = eden_tests::metric(&metrics, "eden_watch_stream_wakeups_total").await - before;
    assert!(
        woken <= WRITES as f64,
        "{woken} wake-ups for {WRITES} writes that concern one stream of {}",
        IDLE + 1
    );
    // A write under one idle prefix reaches its stream.
    client
        .put(PutRequest {
            key: "idle/07/k".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), idle[7].1.message())
        .await
        .expect("idle/07's event")
        .unwrap()
        .unwrap();
    assert_eq!(m.events[0].kv.as_ref().unwrap().key, b"idle/07/k".to_vec());
}

/// A revision larger than the request limit reaches a watch that asked for fragments in pieces
/// under the limit, all but the last marked `fragment` (as etcd sends them); a watch that did
/// not ask gets it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_split_a_large_revision_for_watches_that_ask() {
    use eden_proto::etcdserverpb::{request_op, RequestOp, TxnRequest};
    const LIMIT: usize = 128 * 1024;
    let c = Cluster::start(
        1,
        &[
            "--max-request-bytes",
            &LIMIT.to_string(),
            "--max-file-bytes",
            "65536",
        ],
    )
    .await;
    let client = c.client();
    let put = |k: usize, fill: u8| PutRequest {
        key: format!("frag/{k}").into(),
        value: vec![fill; 30 * 1024],
        ..Default::default()
    };
    for k in 0..4 {
        client.put(put(k, b'a')).await.unwrap();
    }
    // One revision of 4 x 30 KiB with their previous values: over the limit with prev_kv.
    let txn = client
        .txn(TxnRequest {
            success: (0..4)
                .map(|k| RequestOp {
                    request: Some(request_op::Request::RequestPut(put(k, b'b'))),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rev = txn.header.unwrap().revision;

    let watch = |fragment: bool| {
        let ep = c.members[0].endpoint();
        async move {
            let ch = eden_tests::channel_for(&ep).await;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: "frag/".into(),
                        range_end: prefix_end(b"frag/"),
                        start_revision: rev,
                        prev_kv: true,
                        fragment,
                        ..Default::default()
                    },
                )),
            })
            .await
            .unwrap();
            let mut stream = WatchClient::new(ch)
                .max_decoding_message_size(16 << 20)
                .watch(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut parts = Vec::new();
            let mut events = 0;
            while events < 4 {
                let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .expect("watch responses in time")
                    .unwrap()
                    .unwrap();
                if m.events.is_empty() {
                    continue;
                }
                events += m.events.len();
                parts.push((
                    prost::Message::encoded_len(&m),
                    m.fragment,
                    m.header.unwrap().revision,
                ));
            }
            drop(tx);
            parts
        }
    };
    let whole = watch(false).await;
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert!(whole[0].0 > LIMIT && !whole[0].1, "{whole:?}");
    let pieces = watch(true).await;
    assert!(pieces.len() >= 2, "{pieces:?}");
    for (i, (len, fragment, r)) in pieces.iter().enumerate() {
        assert!(*len < LIMIT, "{pieces:?}");
        assert_eq!(*fragment, i + 1 < pieces.len(), "{pieces:?}");
        assert_eq!(*r, rev);
    }
}

/// `eden bench lease-keepalive` revokes the leases it granted once it is measured, so they do not
/// expire minutes later in the time of another benchmark on the same machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_benchmark_revokes_its_leases() {
    let c = Cluster::start(1, &["--no-reactor"]).await;
    let before = c.client().lease_leases().await.unwrap().leases.len();
    let o = c
        .eden(&[
            "bench",
            "lease-keepalive",
            "--leases",
            "40",
            "--clients",
            "4",
            "--conns",
            "2",
            "--total",
            "200",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let after = c.client().lease_leases().await.unwrap().leases.len();
    assert_eq!(after, before, "leases left behind");
}
