//! Three real `eden server` processes: writes through a follower, leader failure during writes,
//! restarts (also through a snapshot after the log was purged), watch resumption, lease expiry,
//! and a leader cut off by a network partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eden_proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest};
use eden_proto::keys::prefix_end;
use eden_proto::mvccpb::event::EventType;
use eden_tests::{wait_for, Cluster};

fn follower(c: &Cluster, leader: usize) -> usize {
    (leader + 1) % c.members.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_are_seen_everywhere() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let f = follower(&c, leader);
    let rev = c
        .put(f, "greeting", "hello")
        .await
        .expect("put through a follower");
    assert!(rev >= 2, "a write gets a revision: {rev}");
    // A linearizable read on the other follower sees it at once.
    let other = (f + 1) % 3;
    let other = if other == leader {
        (other + 1) % 3
    } else {
        other
    };
    let r = c
        .client_of(other)
        .range(RangeRequest {
            key: "greeting".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r.kvs.first().map(|kv| kv.value.as_slice()),
        Some(&b"hello"[..])
    );
    assert_eq!(r.kvs[0].mod_revision, rev);
    // Every member applies it (serializable reads answer locally).
    let c = &c;
    for i in 0..3 {
        wait_for(
            "every member to apply the write",
            Duration::from_secs(10),
            || async move { c.local_get(i, "greeting").await.as_deref() == Some(&b"hello"[..]) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_during_writes_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let client = c.client();
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let client = client.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                let key = format!("k/{i:04}");
                if client
                    .put(PutRequest {
                        key: key.clone().into(),
                        value: format!("v{i}").into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                {
                    acked.lock().unwrap().push(key);
                }
            }
        })
    };
    wait_for(
        "some writes before the kill",
        Duration::from_secs(30),
        || {
            let acked = acked.clone();
            async move { acked.lock().unwrap().len() >= 100 }
        },
    )
    .await;
    c.kill(leader);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "most writes succeed across the failover: {}",
        acked.len()
    );
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    c.restart(leader);
    // Every acknowledged write is on every member, the killed one included.
    for i in 0..3 {
        let cl = c.client_of(i);
        let acked = &acked;
        wait_for(
            "every acknowledged write on every member",
            Duration::from_secs(30),
            || {
                let cl = cl.clone();
                async move {
                    let Ok(r) = cl
                        .range(RangeRequest {
                            key: "k/".into(),
                            range_end: prefix_end(b"k/"),
                            serializable: true,
                            ..Default::default()
                        })
                        .await
                    else {
                        return false;
                    };
                    let have: std::collections::HashSet<Vec<u8>> =
                        r.kvs.into_iter().map(|kv| kv.key).collect();
                    acked.iter().all(|k| have.contains(k.as_bytes()))
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_catches_up_through_a_snapshot() {
    // Snapshot every 50 entries and keep only 10 behind it, so a member that misses 300 writes
    // can only catch up by installing a snapshot.
    let mut c = Cluster::start(
        3,
        &["--snapshot-count", "50", "--snapshot-catchup-entries", "10"],
    )
    .await;
    let leader = c.wait_leader().await;
    let f = follower(&c, leader);
    c.put(leader, "before", "1").await.unwrap();
    c.stop(f);
    for i in 0..300 {
        c.put(leader, &format!("s/{i}"), &i.to_string())
            .await
            .unwrap();
    }
    let want = c.local_revision(leader).await.unwrap();
    c.restart(f);
    wait_for(
        "the restarted member to reach the leader's revision",
        Duration::from_secs(30),
        || async { c.local_revision(f).await.is_some_and(|r| r >= want) },
    )
    .await;
    assert_eq!(c.local_get(f, "s/299").await.as_deref(), Some(&b"299"[..]));
    assert_eq!(c.local_get(f, "before").await.as_deref(), Some(&b"1"[..]));
    assert!(
        c.members[f].log_text().contains("installed snapshot"),
        "caught up without a snapshot:\n{}",
        c.members[f].log_text()
    );
    // History came along: the restarted member serves an old revision.
    let old = c
        .client_of(f)
        .range(RangeRequest {
            key: "s/0".into(),
            revision: want - 299,
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(old.kvs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_restarts_with_what_it_acknowledged() {
    let mut c = Cluster::start(1, &[]).await;
    for i in 0..50 {
        c.put(0, &format!("d/{i}"), "x").await.unwrap();
    }
    c.kill(0);
    c.restart(0);
    c.wait_leader().await;
    let r = c
        .client()
        .range(RangeRequest {
            key: "d/".into(),
            range_end: prefix_end(b"d/"),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.count, 50);
    // SIGTERM shuts down cleanly (exit code 0) and the data is still there after.
    assert_eq!(c.stop(0), Some(0));
    c.restart(0);
    c.wait_leader().await;
    assert_eq!(c.local_get(0, "d/49").await.as_deref(), Some(&b"x"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_member_without_gap_or_duplicate() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let watched = follower(&c, leader);
    // The watcher's client starts on `watched`, then moves on when it dies.
    let mut eps = c.endpoints();
    eps.rotate_left(watched);
    let wclient = eden_tests::client_for(&eps);
    let start = c.local_revision(leader).await.unwrap() + 1;
    let mut rx = wclient.watch(
        WatchCreateRequest {
            key: "w/".into(),
            range_end: prefix_end(b"w/"),
            start_revision: start,
            prev_kv: true,
            ..Default::default()
        },
        Duration::from_secs(30),
    );
    let writer_client = eden_tests::client_for(&[c.members[leader].endpoint()]);
    let total = 200;
    let writer = tokio::spawn(async move {
        for i in 0..total {
            writer_client
                .put(PutRequest {
                    key: format!("w/{}", i % 20).into(),
                    value: format!("{i}").into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // (revision, key, value, prev value)
    type Seen = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>);
    let mut seen: Vec<Seen> = Vec::new();
    let mut killed = false;
    while seen.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("watch stalled")
            .expect("watch ended");
        let msg = msg.expect("watch failed");
        assert!(!msg.canceled, "watch canceled: {msg:?}");
        for e in msg.events {
            assert_eq!(e.r#type, EventType::Put as i32);
            let kv = e.kv.unwrap();
            seen.push((
                kv.mod_revision,
                kv.key,
                kv.value,
                e.prev_kv.map(|p| p.value),
            ));
        }
        if !killed && seen.len() >= 50 {
            c.kill(watched);
            killed = true;
        }
    }
    writer.await.unwrap();
    // Every revision once, in order, with no gap, and prev_kv is the key's previous value.
    for (n, (rev, _, value, prev)) in seen.iter().enumerate() {
        assert_eq!(*rev, start + n as i64, "gap or duplicate at event {n}");
        assert_eq!(value, format!("{n}").as_bytes());
        let want_prev = (n >= 20).then(|| format!("{}", n - 20).into_bytes());
        assert_eq!(prev, &want_prev, "prev_kv of event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_after_keepalives_stop_and_its_keys_are_deleted() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let f = c.client_of(follower(&c, leader));
    let lease = f.lease_grant(3, 0).await.unwrap();
    assert_eq!(lease.ttl, 3);
    for k in ["l/a", "l/b"] {
        f.put(PutRequest {
            key: k.into(),
            value: "v".into(),
            lease: lease.id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let from = c.local_revision(leader).await.unwrap() + 1;
    let mut rx = c.client().watch(
        WatchCreateRequest {
            key: "l/".into(),
            range_end: prefix_end(b"l/"),
            start_revision: from,
            ..Default::default()
        },
        Duration::from_secs(30),
    );
    // Keep-alives through a follower reach the leader: the keys outlive the TTL.
    for _ in 0..5 {
        let r = f.lease_keep_alive_once(lease.id).await.unwrap();
        assert_eq!(r.ttl, 3);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ttl = f.lease_time_to_live(lease.id, true).await.unwrap();
    assert!(ttl.ttl > 0 && ttl.granted_ttl == 3, "{ttl:?}");
    assert_eq!(ttl.keys.len(), 2);
    // Stop: within TTL plus a little, both keys are deleted with DELETE events, in one revision.
    let mut deletes: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    while deletes.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("no DELETE events")
            .unwrap()
            .unwrap();
        for e in msg.events {
            assert_eq!(e.r#type, EventType::Delete as i32);
            let kv = e.kv.unwrap();
            deletes.insert(kv.key, kv.mod_revision);
        }
    }
    let revs: std::collections::BTreeSet<i64> = deletes.values().copied().collect();
    assert_eq!(
        revs.len(),
        1,
        "a lease's keys go in one revision: {deletes:?}"
    );
    let gone = c
        .client()
        .range(RangeRequest {
            key: "l/".into(),
            range_end: prefix_end(b"l/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(gone.kvs.is_empty());
    let ttl = f.lease_time_to_live(lease.id, false).await.unwrap();
    assert_eq!(ttl.ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_serves_no_stale_read_and_catches_up() {
    let c = Cluster::start_partitionable(3, &[]).await;
    let old = c.wait_leader().await;
    c.put(old, "k", "before").await.expect("put before");
    c.net.as_ref().unwrap().isolate(old, 3);
    // The other two elect a leader among themselves.
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let c = &c;
    let new = Arc::new(std::sync::Mutex::new(None));
    wait_for(
        "the majority to elect a new leader",
        Duration::from_secs(20),
        || {
            let (others, new) = (others.clone(), new.clone());
            async move {
                for i in others {
                    if let Ok(s) = c.client_of(i).status_of(0).await {
                        if s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader) {
                            *new.lock().unwrap() = Some(i);
                            return true;
                        }
                    }
                }
                false
            }
        },
    )
    .await;
    let new = new.lock().unwrap().unwrap();
    c.put(new, "k", "after")
        .await
        .expect("put on the majority side");
    // The isolated member can neither answer a linearizable read (it would be stale) nor write.
    let stale = c
        .client_of(old)
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await;
    assert!(
        stale.is_err(),
        "an isolated member answered a linearizable read: {stale:?}"
    );
    assert!(c.put(old, "k", "isolated").await.is_err());
    c.net.as_ref().unwrap().heal();
    wait_for(
        "the old leader to catch up after the partition heals",
        Duration::from_secs(20),
        || async move { c.local_get(old, "k").await.as_deref() == Some(&b"after"[..]) },
    )
    .await;
}

/// A leader that a quorum acknowledges refuses to vote, as its followers do (decision 0028: it
/// answers linearizable reads under that lease, so no one may be elected while it holds). A
/// follower that stops hearing the leader (one direction cut: its own requests still reach the
/// leader) campaigns again and again; the leader, still heard by the other follower, neither
/// votes for it nor steps down. Without the leader's refusal, the leader granted the first vote
/// (the follower's log was as long as its own) and leadership moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_acknowledged_by_a_quorum_refuses_to_vote() {
    let c = Cluster::start_partitionable(3, &[]).await;
    let leader = c.wait_leader().await;
    c.put(leader, "k", "v").await.expect("put");
    let term = |i: usize| {
        let client = c.client_of(i);
        async move {
            client
                .status_of(0)
                .await
                .ok()
                .map(|s| (s.raft_term, s.leader, s.header.map_or(0, |h| h.member_id)))
        }
    };
    let (start_term, leader_id, _) = term(leader).await.expect("leader status");
    let cut = (0..3).find(|i| *i != leader).unwrap();
    c.net.as_ref().unwrap().block(leader, cut);
    // Until the cut follower has campaigned twice, or leadership moved.
    wait_for(
        "the cut follower to campaign twice (or the leader to lose)",
        Duration::from_secs(30),
        || async {
            let cut_term = term(cut).await.map_or(0, |t| t.0);
            let now = term(leader).await;
            cut_term >= start_term + 2 || now.is_none_or(|(_, l, me)| l != me)
        },
    )
    .await;
    let (now_term, now_leader, me) = term(leader).await.expect("leader status");
    assert_eq!(
        (now_leader, now_term),
        (leader_id, start_term),
        "the leader (term {start_term}) voted or stepped down"
    );
    assert_eq!(me, leader_id);
    // And it still serves linearizable reads and writes.
    c.put(leader, "k", "still")
        .await
        .expect("put while the follower is cut");
    let r = c
        .client_of(leader)
        .range(RangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .expect("linearizable read");
    assert_eq!(r.kvs[0].value, b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_one_member_follows_the_cluster_after_it_dies() {
    let mut c = Cluster::start(3, &[]).await;
    let client = c.client_of(0);
    assert_eq!(client.pool().len(), 1);
    // (Members publish their client addresses just after they start.)
    wait_for(
        "the client to learn every member",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                client.sync_members().await;
                client.pool().len() == 3
            }
        },
    )
    .await;
    c.kill(0);
    // The member it was given is gone; the ones it learned answer.
    let r = client
        .range(RangeRequest {
            key: "after".into(),
            ..Default::default()
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
}

/// Members stamp peer messages with their cluster id and the member they are for; a member
/// refuses any other (as when a stopped member's address is taken by another cluster's member,
/// whose id may be the same, as ids are hashes of names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refuses_peer_messages_from_another_cluster() {
    use eden_proto::peer::peer_client::PeerClient;
    use eden_proto::peer::Payload;
    // Plaintext: the peer port's cluster check, not its TLS (tests/tests/authz.rs has that).
    let c = Cluster::start(1, &["--no-reactor", "--insecure"]).await;
    let mut peer = PeerClient::connect(format!("http://{}", c.members[0].peer_addr))
        .await
        .expect("connect to the peer port");
    let vote = |cluster_id, to| Payload {
        data: vec![1, 2, 3],
        cluster_id,
        to,
    };
    let e = peer.vote(vote(0x1234, 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("from cluster 1234"), "{e:?}");
    let e = peer.vote(vote(0, 0x77)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("for member 77"), "{e:?}");
    // Unstamped, it gets as far as decoding.
    let e = peer.vote(vote(0, 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // The cluster itself is unaffected.
    assert!(c.put(0, "k", "v").await.is_ok());
}

/// Group commit: writes that arrive together go into the log as one entry, and each still gets
/// its own revision, its own reply and its own compare: 300 puts of distinct keys and 100
/// compare-and-set increments of one counter, all at once. The revisions of the writes that
/// changed something are exactly the run after the start (none shared, none skipped), each key
/// holds its put's revision, the counter counts the increments that succeeded, and the metrics
/// show batches of more than one command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_keep_their_own_revisions() {
    use eden_proto::etcdserverpb::{compare, request_op, Compare, RequestOp, TxnRequest};
    let metrics = format!("127.0.0.1:{}", eden_tests::free_port());
    let c = Cluster::start(
        1,
        &["--metrics-addr", &metrics, "--no-reactor", "--insecure"],
    )
    .await;
    let client = c.client();
    let start = c.put(0, "counter", "0").await.expect("first put");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let client = client.clone();
        tasks.spawn(async move {
            let r = client
                .put(PutRequest {
                    key: format!("k{i:03}").into(),
                    value: format!("v{i}").into(),
                    ..Default::default()
                })
                .await
                .expect("put");
            (Some(i), r.header.unwrap().revision, true)
        });
    }
    for _ in 0..100 {
        let client = client.clone();
        tasks.spawn(async move {
            // Read, then increment if nobody wrote in between.
            let got = client
                .range(RangeRequest {
                    key: "counter".into(),
                    ..Default::default()
                })
                .await
                .expect("range");
            let kv = &got.kvs[0];
            let n: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
            let r = client
                .txn(TxnRequest {
                    compare: vec![Compare {
                        key: "counter".into(),
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Mod as i32,
                        target_union: Some(compare::TargetUnion::ModRevision(kv.mod_revision)),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: "counter".into(),
                            value: (n + 1).to_string().into(),
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                })
                .await
                .expect("txn");
            (None, r.header.unwrap().revision, r.succeeded)
        });
    }
    let mut changed = Vec::new();
    let mut puts = BTreeMap::new();
    let mut increments = 0u64;
    while let Some(r) = tasks.join_next().await {
        let (put, rev, succeeded) = r.unwrap();
        match put {
            Some(i) => {
                puts.insert(i, rev);
                changed.push(rev);
            }
            None if succeeded => {
                increments += 1;
                changed.push(rev);
            }
            None => {}
        }
    }
    changed.sort_unstable();
    let expected: Vec<i64> = (start + 1..=start + changed.len() as i64).collect();
    assert_eq!(
        changed, expected,
        "one revision per write that changed something"
    );
    assert!(increments >= 1, "at least one increment succeeds");
    let all = client
        .range(RangeRequest {
            key: "k".into(),
            range_end: prefix_end(b"k"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 300);
    for kv in &all.kvs {
        let i: usize = String::from_utf8_lossy(&kv.key[1..]).parse().unwrap();
        assert_eq!(
            kv.mod_revision, puts[&i],
            "k{i:03} holds its put's revision"
        );
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
    let counter = client
        .range(RangeRequest {
            key: "counter".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(counter.kvs[0].value, increments.to_string().into_bytes());
    let text = eden_tests::http_get(&metrics, "/metrics").await;
    let batches: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("eden_raft_proposals_per_entry_count "))
        .unwrap_or_else(|| panic!("no batch histogram in:\n{text}"))
        .parse()
        .unwrap();
    assert!(batches >= 1.0, "some writes shared an entry:\n{text}");
}

/// Writes through a follower are forwarded to the leader together (`ForwardBatch`): 200 puts at
/// once through one follower each get their own answer, with the revision their key holds on
/// every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer() {
    let c = Cluster::start(3, &["--no-reactor"]).await;
    let leader = c.wait_leader().await;
    let f = follower(&c, leader);
    let client = c.client_of(f);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        tasks.spawn(async move {
            let r = client
                .put(PutRequest {
                    key: format!("f{i:03}").into(),
                    value: format!("v{i}").into(),
                    prev_kv: true,
                    ..Default::default()
                })
                .await
                .expect("put through a follower");
            assert!(r.prev_kv.is_none(), "a new key has no previous value");
            (i, r.header.unwrap().revision)
        });
    }
    let mut revs = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, rev) = r.unwrap();
        revs.insert(i, rev);
    }
    let distinct: std::collections::BTreeSet<i64> = revs.values().copied().collect();
    assert_eq!(distinct.len(), 200, "one revision per write");
    let last = *distinct.last().unwrap();
    let c = &c;
    for m in 0..3 {
        wait_for(
            "every member to apply the writes",
            Duration::from_secs(10),
            || async move { c.local_revision(m).await.is_some_and(|r| r >= last) },
        )
        .await;
        let all = c
            .client_of(m)
            .range(RangeRequest {
                key: "f".into(),
                range_end: prefix_end(b"f"),
                serializable: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.kvs.len(), 200);
        for kv in &all.kvs {
            let i: usize = String::from_utf8_lossy(&kv.key[1..]).parse().unwrap();
            assert_eq!(kv.mod_revision, revs[&i], "member {m}: f{i:03}");
        }
    }
}
