//! Conformance: etcd's Election and Lock services, driven by the etcd-client crate against a
//! three-member eden cluster, through the loss of the Raft leader. The clients talk to the two
//! other members, so what is tested is that leadership and locks follow the store's keys and
//! leases, whoever leads Raft.

use std::time::Duration;

use eden_tests::Cluster;
use etcd_client::{
    Client, Error, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions,
};
use tokio::task::JoinHandle;

/// A lease of `ttl` seconds, kept alive every second until the returned task is aborted.
async fn kept_alive(c: &mut Client, ttl: i64) -> (i64, JoinHandle<()>) {
    let id = c.lease_grant(ttl, None).await.unwrap().id();
    let (mut keeper, mut answers) = c.lease_keep_alive(id).await.unwrap();
    let task = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            if answers.message().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (id, task)
}

/// Waits until `n` keys exist under `prefix` (the waiters have queued).
async fn wait_keys(c: &mut Client, prefix: &str, n: usize) {
    let c = c.clone();
    let prefix = prefix.to_string();
    eden_tests::wait_for(
        &format!("{n} keys under {prefix}"),
        Duration::from_secs(20),
        move || {
            let mut c = c.clone();
            let prefix = prefix.clone();
            async move {
                c.get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
                    .is_ok_and(|r| r.kvs().len() == n)
            }
        },
    )
    .await;
}

/// The value of the next proclamation observed.
async fn next(o: &mut etcd_client::ObserveStream) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(30), o.message())
        .await
        .expect("an observation")
        .unwrap()
        .expect("the observation goes on")
        .kv()
        .unwrap()
        .value()
        .to_vec()
}

fn message(e: Error) -> String {
    match e {
        Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// The clients on the members that are not the Raft leader (which the test then kills).
async fn clients_off_the_leader(c: &Cluster) -> (usize, Client, Client) {
    let leader = c.wait_leader().await;
    let others: Vec<String> = (0..c.members.len())
        .filter(|i| *i != leader)
        .map(|i| c.members[i].endpoint())
        .collect();
    (
        leader,
        c.etcd_client(&others[..1]).await,
        c.etcd_client(&others[1..2]).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_observe_proclaim_resign_through_a_leader_kill() {
    let mut c = Cluster::start(3, &["--no-reactor"]).await;
    let (raft_leader, mut a, mut b) = clients_off_the_leader(&c).await;
    let (la, keep_a) = kept_alive(&mut a, 5).await;
    let won = a.campaign("e", "a1", la).await.unwrap();
    let ka: LeaderKey = won.leader().unwrap().clone();
    assert_eq!(ka.key(), format!("e/{la:x}").as_bytes());
    assert_eq!(ka.lease(), la);
    let now = a.leader("e").await.unwrap();
    assert_eq!(now.kv().unwrap().value(), b"a1");
    let mut observed = b.observe("e").await.unwrap();
    assert_eq!(next(&mut observed).await, b"a1");

    // A second campaigner waits while the first leads.
    let (lb, _keep_b) = kept_alive(&mut b, 30).await;
    let mut b2 = b.clone();
    let second = tokio::spawn(async move { b2.campaign("e", "b1", lb).await });
    wait_keys(&mut a, "e/", 2).await;
    a.proclaim("a2", Some(ProclaimOptions::new().with_leader(ka.clone())))
        .await
        .unwrap();
    assert_eq!(next(&mut observed).await, b"a2");
    assert!(
        !second.is_finished(),
        "a second leader while the first leads"
    );

    // The Raft leader dies and the first campaigner stops keeping its lease alive: when the
    // lease expires, the second campaigner leads.
    c.kill(raft_leader);
    keep_a.abort();
    let kb = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("the second campaigner took over")
        .unwrap()
        .unwrap()
        .leader()
        .unwrap()
        .clone();
    assert_eq!(kb.key(), format!("e/{lb:x}").as_bytes());
    assert_eq!(next(&mut observed).await, b"b1");
    assert_eq!(
        b.leader("e").await.unwrap().kv().unwrap().value(),
        b"b1".to_vec()
    );
    let late = a
        .proclaim("a3", Some(ProclaimOptions::new().with_leader(ka)))
        .await
        .unwrap_err();
    assert!(message(late).contains("election: not leader"));

    b.resign(Some(ResignOptions::new().with_leader(kb)))
        .await
        .unwrap();
    let none = b.leader("e").await.unwrap_err();
    assert!(message(none).contains("election: no leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_each_other_and_pass_on_unlock_and_lease_expiry() {
    let mut c = Cluster::start(3, &["--no-reactor"]).await;
    let (raft_leader, mut a, mut b) = clients_off_the_leader(&c).await;

    // Mutual exclusion: the second holder gets the lock only once the first unlocked.
    let (l1, _keep1) = kept_alive(&mut a, 30).await;
    let first = a
        .lock("l", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    let key1 = first.key().to_vec();
    assert_eq!(key1, format!("l/{l1:x}").into_bytes());
    let (l2, keep2) = kept_alive(&mut b, 5).await;
    let mut b2 = b.clone();
    let second =
        tokio::spawn(async move { b2.lock("l", Some(LockOptions::new().with_lease(l2))).await });
    wait_keys(&mut a, "l/", 2).await;
    assert!(!second.is_finished(), "two holders of one lock");
    a.unlock(key1.clone()).await.unwrap();
    let key2 = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the lock passed on unlock")
        .unwrap()
        .unwrap()
        .key()
        .to_vec();
    assert_eq!(key2, format!("l/{l2:x}").into_bytes());
    assert!(a.get(key1, None).await.unwrap().kvs().is_empty());

    // Release on lease expiry, through the loss of the Raft leader.
    let (l3, _keep3) = kept_alive(&mut a, 30).await;
    let mut a2 = a.clone();
    let third =
        tokio::spawn(async move { a2.lock("l", Some(LockOptions::new().with_lease(l3))).await });
    wait_keys(&mut a, "l/", 2).await;
    assert!(!third.is_finished(), "two holders of one lock");
    c.kill(raft_leader);
    keep2.abort();
    let key3 = tokio::time::timeout(Duration::from_secs(60), third)
        .await
        .expect("the lock passed when its holder's lease expired")
        .unwrap()
        .unwrap()
        .key()
        .to_vec();
    assert_eq!(key3, format!("l/{l3:x}").into_bytes());
    assert!(a.get(key2, None).await.unwrap().kvs().is_empty());

    // A waiter whose call is dropped leaves no key behind.
    let mut b3 = b.clone();
    let (l4, _keep4) = kept_alive(&mut b, 30).await;
    let fourth =
        tokio::spawn(async move { b3.lock("l", Some(LockOptions::new().with_lease(l4))).await });
    wait_keys(&mut a, "l/", 2).await;
    fourth.abort();
    wait_keys(&mut a, "l/", 1).await;
    a.unlock(key3).await.unwrap();
}
