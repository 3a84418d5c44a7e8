//! Autopilot (issue 17), with real processes: five servers with ideal-voters 3 keep three voters
//! and two standbys; a voter killed with SIGKILL, or cut off from the others by the peer-link
//! proxy, is replaced by a standby and then removed, with no acknowledged write lost and the
//! failure tolerance back to 1 (the partitioned one, healed, stops; started again it comes back
//! as a new standby with a fresh copy); a leader stopped with `--leave` hands over and a standby takes
//! its place; two voters dead at once in a three-voter cluster are never
//! removed, and autopilot says why it waits.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eden_proto::etcdserverpb::{PutRequest, RangeRequest};
use eden_proto::model::cluster::ClusterStatus;
use eden_tests::{tls_by_default, wait_for, Cluster};

use eden_tests::FAST_ELECTIONS as FAST;

async fn status(c: &Cluster) -> Option<ClusterStatus> {
    c.autopilot_status().await
}

/// (voters, standbys) by name, from the member list.
async fn roles(c: &Cluster) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let l = c.client().member_list().await.ok()?;
    let (v, s): (Vec<_>, Vec<_>) = l.members.iter().partition(|m| !m.is_learner);
    Some((
        v.iter().map(|m| m.name.clone()).collect(),
        s.iter().map(|m| m.name.clone()).collect(),
    ))
}

/// Five servers formed with --bootstrap-expect 3: three voters, then two standbys, all healthy.
async fn five(partitionable: bool) -> Cluster {
    five_with(partitionable, &[]).await
}

async fn five_with(partitionable: bool, extra: &[&str]) -> Cluster {
    let flags: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    let mut c = if partitionable {
        Cluster::forming_partitionable(5, 3, &flags, tls_by_default())
    } else {
        Cluster::forming(5, 3, &flags, tls_by_default())
    };
    // Three zones: z0, z1, z2, z0, z1.
    for i in 0..5 {
        c.members[i]
            .args_mut()
            .extend(["--zone".to_string(), format!("z{}", i % 3)]);
        c.spawn(i);
    }
    wait_for(
        "three voters, two standbys, all healthy",
        Duration::from_secs(40),
        || async {
            let Some(s) = status(&c).await else {
                return false;
            };
            s.voters == 3
                && s.healthy_voters == 3
                && s.servers.len() == 5
                && s.servers.iter().all(|m| m.healthy && !m.zone.is_empty())
                && s.failure_tolerance == 1
        },
    )
    .await;
    let set = c
        .eden(&[
            "cluster",
            "autopilot",
            "set",
            "--dead-server-after",
            "3s",
            "--stabilization",
            "1s",
        ])
        .await;
    assert_eq!(set.code, Some(0), "{set:?}");
    c
}

/// A client writing one key after another until stopped; returns the acknowledged keys.
fn writer(c: &Cluster) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (client, flag) = (c.client(), stop.clone());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn(async move {
        let mut i = 0;
        while !flag.load(Ordering::Relaxed) {
            let key = format!("ap/{i:05}");
            let put = PutRequest {
                key: key.clone().into(),
                value: "v".into(),
                ..Default::default()
            };
            if client.put(put).await.is_ok() {
                acked.lock().unwrap().push(key);
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = acked.lock().unwrap().clone();
        out
    });
    (stop, task)
}

async fn all_present(c: &Cluster, keys: &[String]) {
    let r = c
        .client()
        .range(RangeRequest {
            key: b"ap/".to_vec(),
            range_end: b"ap0".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let have: BTreeSet<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
    let lost: Vec<&String> = keys
        .iter()
        .filter(|k| !have.contains(k.as_bytes()))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(!keys.is_empty(), "no write was acknowledged");
}

/// Waits until autopilot reports what `ok` accepts; returns that report.
async fn until(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let s = status(c).await;
        if let Some(s) = s.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; autopilot says {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `victim` is gone and a standby took its place: three healthy voters, tolerance 1.
async fn replaced(c: &Cluster, victim: &str) -> ClusterStatus {
    until(
        c,
        &format!("autopilot to replace {victim}"),
        Duration::from_secs(40),
        |s| {
            s.voters == 3
                && s.healthy_voters == 3
                && s.failure_tolerance == 1
                && s.servers.len() == 4
                && !s.servers.iter().any(|m| m.name == victim)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_voter_is_replaced_by_a_standby_then_removed() {
    let mut c = five(false).await;
    let (voters, standbys) = roles(&c).await.unwrap();
    assert_eq!((voters.len(), standbys.len()), (3, 2));
    let leader = c.wait_leader().await;
    let victim = (0..5)
        .find(|i| *i != leader && voters.contains(&c.members[*i].name))
        .unwrap();
    let victim_name = c.members[victim].name.clone();
    let (stop, task) = writer(&c);
    c.kill(victim);
    let s = replaced(&c, &victim_name).await;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    all_present(&c, &acked).await;
    let (voters_after, standbys_after) = roles(&c).await.unwrap();
    assert_eq!(voters_after.len(), 3);
    assert_eq!(standbys_after.len(), 1);
    assert!(!voters_after.contains(&victim_name));
    assert!(s.last_action.is_some());
    // Each action is an event.
    let promoted = c.event_tags("cluster/promoted/").await;
    let removed = c.event_tags("cluster/removed/").await;
    assert_eq!(promoted.len(), 1, "{promoted:?}");
    assert_eq!(removed, [format!("cluster/removed/{victim_name}")]);
    // `eden cluster status` shows it.
    let out = c.eden(&["cluster", "status"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("failure tolerance: 1"), "{out:?}");
    assert!(out.stdout.contains("last action: removed"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_voter_is_replaced_and_never_splits_the_cluster() {
    let mut c = five(true).await;
    let (voters, _) = roles(&c).await.unwrap();
    let leader = c.wait_leader().await;
    let victim = (0..5)
        .find(|i| *i != leader && voters.contains(&c.members[*i].name))
        .unwrap();
    let victim_name = c.members[victim].name.clone();
    let (stop, task) = writer(&c);
    c.net.as_ref().unwrap().isolate(victim, 5);
    replaced(&c, &victim_name).await;
    // Healed: the removed member learns it was removed and stops; the cluster keeps one leader
    // and its members, and writes go on.
    c.net.as_ref().unwrap().heal();
    c.wait_exited(victim).await;
    assert!(
        c.members[victim]
            .log_text()
            .contains("start it again to join as a new standby"),
        "{}",
        c.members[victim].log_text()
    );
    let before = c.put(leader, "after-heal", "1").await;
    assert!(before.is_ok(), "{before:?}");
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    all_present(&c, &acked).await;
    let s = status(&c).await.unwrap();
    assert_eq!(
        (s.voters, s.healthy_voters, s.servers.len()),
        (3, 3, 4),
        "{s:?}"
    );
    assert!(!s.servers.iter().any(|m| m.name == victim_name));
    // Started again (as its supervisor would), it sets its stale data aside and comes back as a
    // new standby with a fresh copy.
    c.restart(victim);
    until(
        &c,
        "the removed server back as a standby",
        Duration::from_secs(40),
        |s| {
            s.servers.len() == 5
                && s.voters == 3
                && s.servers
                    .iter()
                    .any(|m| m.name == victim_name && m.role == "standby" && m.healthy)
        },
    )
    .await;
    assert!(std::fs::read_dir(&c.members[victim].data_dir)
        .unwrap()
        .any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("removed-")));
    wait_for(
        "the new standby to have the writes",
        Duration::from_secs(20),
        || async { c.local_get(victim, "after-heal").await.as_deref() == Some(&b"1"[..]) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dead_voters_of_three_are_never_removed_and_autopilot_says_why() {
    let mut c = Cluster::forming(3, 3, FAST, tls_by_default());
    for i in 0..3 {
        c.spawn(i);
    }
    wait_for("three healthy voters", Duration::from_secs(30), || async {
        status(&c)
            .await
            .is_some_and(|s| s.voters == 3 && s.healthy_voters == 3)
    })
    .await;
    let set = c
        .eden(&["cluster", "autopilot", "set", "--dead-server-after", "1s"])
        .await;
    assert_eq!(set.code, Some(0), "{set:?}");
    let leader = c.wait_leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &others {
        c.kill(i);
    }
    // Long past dead-server-after, the two stay members; autopilot says it has no quorum.
    let s = until(
        &c,
        "autopilot to say why it waits",
        Duration::from_secs(30),
        |s| {
            s.waiting
                .as_deref()
                .is_some_and(|w| w.contains("no quorum"))
                && s.servers
                    .iter()
                    .filter(|m| !m.healthy)
                    .all(|m| m.stable_ms > 3_000)
        },
    )
    .await;
    assert_eq!(
        (s.voters, s.healthy_voters, s.failure_tolerance),
        (3, 1, 0),
        "{s:?}"
    );
    assert_eq!(s.last_action, None, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_leave_hands_over_and_a_standby_takes_its_place() {
    let mut c = five_with(false, &["--leave"]).await;
    let leader = c.wait_leader().await;
    let name = c.members[leader].name.clone();
    let (stop, task) = writer(&c);
    let code = tokio::task::block_in_place(|| c.stop(leader));
    assert_eq!(code, Some(0), "{}", c.members[leader].log_text());
    assert!(
        c.members[leader].log_text().contains("left the cluster"),
        "{}",
        c.members[leader].log_text()
    );
    until(
        &c,
        "a standby to take the leaver's place",
        Duration::from_secs(30),
        |s| {
            s.voters == 3
                && s.healthy_voters == 3
                && s.servers.len() == 4
                && !s.servers.iter().any(|m| m.name == name)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    all_present(&c, &acked).await;
    // It left: autopilot promoted a standby and removed nobody.
    assert_eq!(c.event_tags("cluster/promoted/").await.len(), 1);
    assert!(c.event_tags("cluster/removed/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_with_stay_learner_is_never_promoted() {
    let mut c = Cluster::start(1, FAST).await;
    let set = c
        .eden(&["cluster", "autopilot", "set", "--stabilization", "1s"])
        .await;
    assert_eq!(set.code, Some(0), "{set:?}");
    // The non-voter joins first: it would be the first promoted if autopilot ignored it.
    let nv = c.join(&["--stay-learner"]);
    let nv_name = c.members[nv].name.clone();
    until(
        &c,
        "the non-voter to be healthy",
        Duration::from_secs(30),
        |s| s.servers.iter().any(|m| m.name == nv_name && m.healthy),
    )
    .await;
    c.join(&[]);
    c.join(&[]);
    until(&c, "three voters", Duration::from_secs(40), |s| {
        s.voters == 3 && s.healthy_voters == 3
    })
    .await;
    let (voters, standbys) = roles(&c).await.unwrap();
    assert!(!voters.contains(&nv_name), "{voters:?}");
    assert_eq!(standbys, BTreeSet::from([nv_name]));
}
