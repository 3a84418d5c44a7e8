//! Membership changes on real processes: growing and shrinking a cluster under writes, learners.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eden_proto::client::{Client, Retry};
use eden_proto::etcdserverpb::cluster_client::ClusterClient;
use eden_proto::etcdserverpb::{MemberPromoteRequest, PutRequest, RangeRequest};
use eden_proto::keys::prefix_end;
use eden_tests::{wait_for, Cluster};

async fn member_id(client: &Client, endpoint: &str) -> u64 {
    let list = client.member_list().await.unwrap();
    list.members
        .iter()
        .find(|m| {
            m.client_ur_ls
                .iter()
                .any(|u| eden_tests::same_endpoint(u, endpoint))
        })
        .map(|m| m.id)
        .unwrap()
}

async fn voters(client: &Client) -> (usize, usize) {
    let list = client.member_list().await.unwrap();
    let started = list
        .members
        .iter()
        .filter(|m| !m.client_ur_ls.is_empty())
        .count();
    (
        list.members.iter().filter(|m| !m.is_learner).count(),
        started,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_with_join_and_shrink_to_three_under_writes() {
    let mut c = Cluster::start(
        3,
        &[
            "--snapshot-count",
            "100",
            "--snapshot-catchup-entries",
            "20",
        ],
    )
    .await;
    // Autopilot keeps three voters by default; this cluster wants five.
    let set = c
        .eden(&[
            "cluster",
            "autopilot",
            "set",
            "--ideal-voters",
            "5",
            "--stabilization",
            "1s",
        ])
        .await;
    assert_eq!(set.code, Some(0), "{set:?}");
    let admin = c.client();
    let writer_client = c.client();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("g/{i:05}");
                let put = PutRequest {
                    key: key.clone().into(),
                    value: "v".into(),
                    ..Default::default()
                };
                if writer_client.put(put).await.is_ok() {
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
        })
    };
    // Enough history that the newcomers catch up by snapshot.
    wait_for("writes before growing", Duration::from_secs(30), || {
        let acked = acked.clone();
        async move { acked.lock().unwrap().len() >= 150 }
    })
    .await;
    // Four servers: autopilot keeps an odd number of voters, so the 4th is a standby until the
    // 5th is in.
    let a = c.join(&[]);
    wait_for(
        "the 4th member to join as a standby",
        Duration::from_secs(30),
        || async { voters(&admin).await == (3, 4) },
    )
    .await;
    let b = c.join(&[]);
    wait_for(
        "the 5th member to join and be promoted",
        Duration::from_secs(30),
        || async { voters(&admin).await == (5, 5) },
    )
    .await;

    // Shrink: remove one newcomer and the leader.
    let leader = c.wait_leader().await;
    for victim in [a, leader] {
        let id = c.member_id(victim).await;
        c.remove_member(id)
            .await
            .unwrap_or_else(|e| panic!("removing member {victim}: {e}"));
        c.wait_exited(victim).await;
    }
    assert_eq!(voters(&admin).await.0, 3);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "writes went on during the changes: {}",
        acked.len()
    );

    // Every acknowledged write is on every remaining member, and they hash the same.
    let remaining: Vec<usize> = (0..c.members.len())
        .filter(|i| c.members[*i].is_running())
        .collect();
    assert_eq!(remaining.len(), 3);
    assert!(remaining.contains(&b));
    let rev = c
        .client()
        .range(RangeRequest {
            key: "g/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    for &i in &remaining {
        wait_for(
            "every member at the revision of the last write",
            Duration::from_secs(20),
            // At least: a reactor runtime taking over from the removed leader's writes its keys.
            || async { c.local_revision(i).await.is_some_and(|r| r >= rev) },
        )
        .await;
        let r = c
            .client_of(i)
            .range(RangeRequest {
                key: "g/".into(),
                range_end: prefix_end(b"g/"),
                serializable: true,
                keys_only: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let have: HashSet<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|k| !have.contains(k.as_bytes()))
            .collect();
        assert!(
            lost.is_empty(),
            "member {i} lost acknowledged writes: {lost:?}"
        );
    }
    let hashes: Vec<u32> = {
        let mut out = Vec::new();
        for &i in &remaining {
            out.push(c.client_of(i).hash_kv_of(0, rev).await.unwrap().hash);
        }
        out
    };
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "HashKV differs: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_not_in_the_quorum_and_refuses_what_etcd_learners_refuse() {
    let mut c = Cluster::start(1, &[]).await;
    let l = c.join(&["--stay-learner"]);
    let admin = c.client_of(0);
    wait_for("the learner to start", Duration::from_secs(20), || async {
        voters(&admin).await == (1, 2)
    })
    .await;
    admin
        .put(PutRequest {
            key: "x".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let learner = c.client_of(l);
    // Serializable reads and the member list work on a learner; writes and linearizable reads don't.
    wait_for(
        "the learner to replicate",
        Duration::from_secs(20),
        || async { c.local_get(l, "x").await.as_deref() == Some(&b"1"[..]) },
    )
    .await;
    // What the learner itself answers (eden's client, given it alone, passes that on; given
    // voters too, it goes on to them).
    let refused = learner
        .put(PutRequest {
            key: "y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "etcdserver: rpc not supported for learner"
    );
    let mut raw = eden_proto::etcdserverpb::kv_client::KvClient::new(
        eden_tests::channel_for(&c.members[l].endpoint()).await,
    );
    let refused = raw
        .range(RangeRequest {
            key: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.message(),
        "etcdserver: rpc not supported for learner"
    );
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    // Clients start on a random endpoint: ten of them, so that some start on the learner.
    for _ in 0..10 {
        let both = eden_tests::client_for(&[c.members[l].endpoint(), c.members[0].endpoint()]);
        both.range(RangeRequest {
            key: "x".into(),
            ..Default::default()
        })
        .await
        .expect("a client given a learner and a voter reads from the voter");
    }
    assert_eq!(learner.member_list().await.unwrap().members.len(), 2);
    // Not in the quorum: with the learner dead, the single voter still commits.
    c.kill(l);
    admin
        .put(PutRequest {
            key: "z".into(),
            value: "2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A voter can't be promoted; the learner can, once in sync.
    c.restart(l);
    let id = member_id(&admin, &c.members[l].endpoint()).await;
    let voter_id = member_id(&admin, &c.members[0].endpoint()).await;
    let err = admin
        .call(Retry::Write, |ch| async move {
            ClusterClient::new(ch)
                .member_promote(MemberPromoteRequest { id: voter_id })
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "etcdserver: can only promote a learner member"
    );
    wait_for(
        "the learner to be promoted once in sync",
        Duration::from_secs(20),
        || {
            let admin = admin.clone();
            async move {
                admin
                    .call(Retry::Write, |ch| async move {
                        ClusterClient::new(ch)
                            .member_promote(MemberPromoteRequest { id })
                            .await
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    assert_eq!(voters(&admin).await, (2, 2));
    // The last voter can't be removed. (Removing a voter needs a quorum of the old
    // configuration, so the other voter is removed while it runs.)
    let id = c.member_id(l).await;
    c.remove_member(id)
        .await
        .unwrap_or_else(|e| panic!("removing the second voter: {e}"));
    c.wait_exited(l).await;
    let last = c.member_id(0).await;
    let err = c.remove_member(last).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "etcdserver: re-configuration failed due to not enough started members"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_member_restarted_with_the_same_flags_rejoins_and_is_not_added_again() {
    let mut c = Cluster::start(2, &[]).await; // plus the joiner: three voters, so one can die
    let admin = c.client_of(0);
    let j = c.join(&[]);
    wait_for(
        "the member to join and be promoted",
        Duration::from_secs(20),
        || async { voters(&admin).await == (3, 3) },
    )
    .await;
    let id = member_id(&admin, &c.members[j].endpoint()).await;
    // kill -9 and restart with the same flags (--join included): same id, no new member.
    c.kill(j);
    admin
        .put(PutRequest {
            key: "while-down".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.restart(j);
    wait_for(
        "the member to catch up",
        Duration::from_secs(20),
        || async { c.local_get(j, "while-down").await.as_deref() == Some(&b"1"[..]) },
    )
    .await;
    let list = admin.member_list().await.unwrap();
    assert_eq!(list.members.len(), 3, "{:?}", list.members);
    assert!(list.members.iter().any(|m| m.id == id && !m.is_learner));
}
