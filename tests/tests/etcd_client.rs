//! Conformance: the Rust etcd-client crate against a three-member eden cluster: KV, txn (every
//! compare target, nested txns), watch (prev_kv, filters, progress, compaction), leases, cluster
//! and maintenance views, and etcd's error codes and messages.

use std::time::Duration;

use eden_tests::Cluster;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, EventType, GetOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchFilterType,
    WatchOptions,
};
use tonic::Code;

async fn connect(c: &Cluster) -> Client {
    c.etcd_client(&c.endpoints()).await
}

fn status(e: Error) -> (Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_txn() {
    // Without the reactor runtime's keys (/eden/reactor/...) and a secure member's CA
    // (/eden/pki/ca), so that "all keys" are the test's.
    let c = Cluster::start(3, &["--no-reactor", "--insecure"]).await;
    let mut cl = connect(&c).await;
    let r = cl.put("a", "1", None).await.unwrap();
    let rev_a = r.header().unwrap().revision();
    cl.put("b", "2", None).await.unwrap();
    let prev = cl
        .put("a", "11", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(prev.prev_key().unwrap().value(), b"1");
    let g = cl.get("a", None).await.unwrap();
    let kv = &g.kvs()[0];
    assert_eq!(
        (kv.value(), kv.version(), kv.create_revision()),
        (&b"11"[..], 2, rev_a)
    );
    let all = cl
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_sort(SortTarget::Value, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"b"[..], &b"a"[..]]);
    assert_eq!(all.count(), 2);
    let limited = cl
        .get("", Some(GetOptions::new().with_all_keys().with_limit(1)))
        .await
        .unwrap();
    assert!(limited.more() && limited.kvs().len() == 1 && limited.count() == 2);
    let old = cl
        .get("a", Some(GetOptions::new().with_revision(rev_a)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");

    // Every compare target; a nested txn; reads inside a txn see its earlier writes.
    let lease = cl.lease_grant(60, None).await.unwrap().id();
    cl.put("l", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let txn = Txn::new()
        .when([
            Compare::value("a", CompareOp::Equal, "11"),
            Compare::version("a", CompareOp::Equal, 2),
            Compare::create_revision("a", CompareOp::Equal, rev_a),
            Compare::mod_revision("b", CompareOp::Less, 1_000),
            Compare::lease("l", CompareOp::Equal, lease),
            Compare::version("nope", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put("c", "3", None),
            TxnOp::get("c", None),
            // Nested compares see the store before the txn, as in etcd (all compares run first).
            TxnOp::txn(
                Txn::new()
                    .when([
                        Compare::version("c", CompareOp::Equal, 0),
                        Compare::value("b", CompareOp::Equal, "2"),
                    ])
                    .and_then([TxnOp::put("d", "4", None)]),
            ),
        ])
        .or_else([TxnOp::put("c", "failed", None)]);
    let t = cl.txn(txn).await.unwrap();
    assert!(t.succeeded());
    // The get inside the txn saw the txn's own put.
    match &t.op_responses()[1] {
        etcd_client::TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"3"),
        other => panic!("expected a get response, got {other:?}"),
    }
    assert_eq!(cl.get("d", None).await.unwrap().kvs()[0].value(), b"4");
    let failed = cl
        .txn(
            Txn::new()
                .when([Compare::value("a", CompareOp::NotEqual, "11")])
                .and_then([TxnOp::delete("a", None)]),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded());
    // A txn is one revision.
    let c_rev = cl.get("c", None).await.unwrap().kvs()[0].mod_revision();
    let d_rev = cl.get("d", None).await.unwrap().kvs()[0].mod_revision();
    assert_eq!(c_rev, d_rev);

    let del = cl
        .delete(
            "",
            Some(DeleteOptions::new().with_all_keys().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), 5);

    // Errors clients match on.
    assert_eq!(
        status(cl.put("", "x", None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    let many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    assert_eq!(
        status(cl.txn(Txn::new().and_then(many)).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request".into()
        )
    );
    assert_eq!(
        status(
            cl.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]))
                .await
                .unwrap_err()
        ),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );
    assert_eq!(
        status(
            cl.put("k", "v", Some(PutOptions::new().with_lease(424242)))
                .await
                .unwrap_err()
        ),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let now = cl
        .get("a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        status(
            cl.get("a", Some(GetOptions::new().with_revision(now + 10)))
                .await
                .unwrap_err()
        ),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    cl.compact(now, None).await.unwrap();
    assert_eq!(
        status(
            cl.get("a", Some(GetOptions::new().with_revision(now - 1)))
                .await
                .unwrap_err()
        ),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    assert_eq!(
        status(cl.compact(now - 1, None).await.unwrap_err()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let big = vec![b'x'; 1800 * 1024]; // over the 1.5 MiB limit, under the gRPC cap
    assert_eq!(
        status(cl.put("big", big, None).await.unwrap_err()),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_guarantees() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = connect(&c).await;
    let first = cl
        .put("w/a", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    cl.put("w/b", "2", None).await.unwrap();
    cl.txn(Txn::new().and_then([TxnOp::put("w/a", "3", None), TxnOp::delete("w/b", None)]))
        .await
        .unwrap();
    cl.put("other", "x", None).await.unwrap();

    // Replay from history, prev_kv, and the txn's two events in one response.
    let mut s = cl
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(first)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    while events.len() < 4 {
        let resp = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if resp.events().len() == 2 {
            let revs: Vec<i64> = resp
                .events()
                .iter()
                .map(|e| e.kv().unwrap().mod_revision())
                .collect();
            assert_eq!(
                revs[0], revs[1],
                "a txn's events share a revision and a response"
            );
        }
        for e in resp.events() {
            events.push((
                e.event_type(),
                e.kv().unwrap().key().to_vec(),
                e.prev_kv().map(|p| p.value().to_vec()),
            ));
        }
    }
    assert_eq!(
        events,
        vec![
            (EventType::Put, b"w/a".to_vec(), None),
            (EventType::Put, b"w/b".to_vec(), None),
            (EventType::Put, b"w/a".to_vec(), Some(b"1".to_vec())),
            (EventType::Delete, b"w/b".to_vec(), Some(b"2".to_vec())),
        ]
    );

    // NOPUT: only deletes.
    let mut d = cl
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .unwrap();
    let created = tokio::time::timeout(Duration::from_secs(10), d.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(created.created());
    cl.put("w/c", "5", None).await.unwrap();
    cl.delete("w/c", None).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), d.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.events().len(), 1);
    assert_eq!(resp.events()[0].event_type(), EventType::Delete);

    // A progress request is answered with the current revision.
    let now = cl
        .get("w/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    d.request_progress().await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(10), d.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(p.events().is_empty());
    assert_eq!(p.header().unwrap().revision(), now);

    // A watch from a compacted revision is canceled with the compact revision, on every member
    // once it applied the compaction. Compact answers once the leader applied it; a follower
    // learns the commit with the next message from the leader (up to 2 ms later when no write
    // follows, decision 0027), and a watch made there before that streams the history still
    // kept. So: watch again until the member that serves it has compacted too.
    cl.compact(now, None).await.unwrap();
    let mut canceled = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while canceled.is_none() && std::time::Instant::now() < deadline {
        let mut old = cl
            .watch(
                "w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(first)),
            )
            .await
            .unwrap();
        for _ in 0..3 {
            let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(2), old.message()).await
            else {
                break;
            };
            if r.canceled() {
                canceled = Some(r.compact_revision());
                break;
            }
            if !r.events().is_empty() {
                // The history from `first`: this member has not compacted yet.
                break;
            }
        }
        if canceled.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(canceled, Some(now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_members_and_status() {
    let c = Cluster::start(3, &[]).await;
    let mut cl = connect(&c).await;
    let g = cl.lease_grant(10, None).await.unwrap();
    assert_eq!(g.ttl(), 10);
    cl.put("lk", "v", Some(PutOptions::new().with_lease(g.id())))
        .await
        .unwrap();
    let (mut keeper, mut stream) = cl.lease_keep_alive(g.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let ka = stream.message().await.unwrap().unwrap();
    assert_eq!((ka.id(), ka.ttl()), (g.id(), 10));
    let ttl = cl
        .lease_time_to_live(g.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 10);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 10);
    assert_eq!(ttl.keys(), &[b"lk".to_vec()]);
    let leases = cl.leases().await.unwrap();
    assert!(leases.leases().iter().any(|l| l.id() == g.id()));
    assert_eq!(
        status(
            cl.lease_grant(
                10,
                Some(etcd_client::LeaseGrantOptions::new().with_id(g.id()))
            )
            .await
            .unwrap_err()
        ),
        (
            Code::FailedPrecondition,
            "etcdserver: lease already exists".into()
        )
    );
    cl.lease_revoke(g.id()).await.unwrap();
    assert!(cl.get("lk", None).await.unwrap().kvs().is_empty());
    assert_eq!(cl.lease_time_to_live(g.id(), None).await.unwrap().ttl(), -1);
    assert_eq!(
        status(cl.lease_revoke(g.id()).await.unwrap_err()),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );

    let members = cl.member_list().await.unwrap();
    let mut names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    names.sort();
    assert_eq!(names, vec!["m0", "m1", "m2"]);
    let s = cl.status().await.unwrap();
    assert!(
        s.leader() != 0
            && s.raft_term() >= 1
            && s.raft_index() >= s.raft_applied_index().min(s.raft_index())
    );
}

/// Hash and HashKV agree across members; an alarm of type NONE is disarmed as etcd does (nothing
/// to do, no error); Defragment answers without a header, as etcd's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_alarm_none_and_defragment_answer_as_etcd_does() {
    use etcd_client::{AlarmAction, AlarmType};
    let c = Cluster::start(3, &["--no-reactor"]).await;
    let mut cl = connect(&c).await;
    let lease = cl.lease_grant(600, None).await.unwrap().id();
    for i in 0..20 {
        cl.put(
            format!("h/{i}"),
            "v",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    let rev = cl
        .delete("h/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut each = Vec::new();
    for ep in c.endpoints() {
        each.push(c.etcd_client(&[ep]).await);
    }
    // Once every member applied the last write, their hashes are equal.
    let mut hashes = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        hashes.clear();
        for m in &mut each {
            let h = m.hash().await.unwrap();
            let r = h.header().unwrap().revision();
            hashes.push((r, h.hash()));
        }
        if hashes.iter().all(|h| *h == hashes[0] && h.0 >= rev) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hashes differ: {hashes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kv: Vec<u32> = {
        let mut v = Vec::new();
        for m in &mut each {
            v.push(m.hash_kv(rev).await.unwrap().hash());
        }
        v
    };
    assert!(kv.iter().all(|h| *h == kv[0]), "HashKV differs: {kv:?}");
    // A new key changes the hash (once the member asked applied it).
    let put = cl.put("h/new", "v", None).await.unwrap();
    let after = put.header().unwrap().revision();
    loop {
        let h = each[0].hash().await.unwrap();
        if h.header().unwrap().revision() >= after {
            assert_ne!(h.hash(), hashes[0].1);
            break;
        }
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let none = cl
        .alarm(AlarmAction::Deactivate, AlarmType::None, None)
        .await
        .unwrap();
    assert!(none.alarms().is_empty());
    let d = cl.defragment().await.unwrap();
    assert!(d.header().is_none(), "etcd's Defragment has no header");
}
