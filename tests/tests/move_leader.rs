//! Leadership transfer (etcd's MoveLeader, issue 16): the etcd-client crate and etcdctl 3.4 move
//! leadership between the members of a three-member eden while a client keeps writing; a move to
//! a learner or to a stranger is refused with etcd's error, a move to the leader does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eden_proto::etcdserverpb::{PutRequest, RangeRequest};
use eden_tests::{etcdctl, wait_for, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_leadership_over_while_writes_go_on() {
    let c = Cluster::start(3, &[]).await;
    let first = c.wait_leader().await;
    let target = (first + 1) % 3;
    let target_id = c.member_id(target).await;

    // A client writes one key after another all along; each acknowledged key must stay.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (c.client(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("ml/{i:05}");
                match client
                    .put(PutRequest {
                        key: key.clone().into(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => acked.push(key),
                    Err(e) => failed.push(e.to_string()),
                }
                i += 1;
            }
            (acked, failed)
        })
    };
    let mut ec = c.etcd_client(&c.endpoints()).await;
    let started = Instant::now();
    ec.move_leader(target_id)
        .await
        .unwrap_or_else(|e| panic!("move leader: {e}\n{}", c.logs()));
    let took = started.elapsed();
    assert_eq!(c.wait_leader().await, target, "{}", c.logs());
    // Moving to the member that leads does nothing.
    ec.move_leader(target_id).await.unwrap();
    assert_eq!(c.leader().await, Some(target));

    // etcdctl 3.4 moves it back (it asks the leader among its endpoints).
    let first_id = c.member_id(first).await;
    let (ok, out, err) = etcdctl(&c.endpoints(), &["move-leader", &format!("{first_id:x}")]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(c.wait_leader().await, first);
    // And eden's CLI, by name.
    let name = c.members[target].name.clone();
    let o = c.eden(&["member", "move-leader", &name]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("Leadership transferred to"), "{o:?}");
    assert_eq!(c.wait_leader().await, target);

    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await.unwrap();
    assert!(
        failed.is_empty(),
        "writes failed during the moves: {failed:?}"
    );
    assert!(!acked.is_empty());
    let r = c
        .client()
        .range(RangeRequest {
            key: b"ml/".to_vec(),
            range_end: b"ml0".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let have: std::collections::HashSet<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !have.contains(k.as_bytes()))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    eprintln!(
        "moved in {took:?}; {} writes acknowledged during the moves",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_is_refused_for_a_learner_or_a_stranger() {
    let mut c = Cluster::start(1, &[]).await;
    let l = c.join(&["--stay-learner"]);
    let learner = c.member_id(l).await;
    let leader = c.member_id(0).await;
    let mut ec = c.etcd_client(&c.endpoints()[..1]).await;
    for to in [learner, 0x1234] {
        let e = ec.move_leader(to).await.unwrap_err().to_string();
        assert!(e.contains("etcdserver: bad leader transferee"), "{e}");
    }
    // eden's CLI says the same, with its exit code for a refusal.
    let o = c
        .eden(&["member", "move-leader", &format!("{learner:x}")])
        .await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("bad leader transferee"), "{o:?}");
    // On one voter a move to itself is a no-op, as in etcd.
    ec.move_leader(leader).await.unwrap();
    wait_for("the leader to stay", Duration::from_secs(5), || async {
        c.leader().await == Some(0)
    })
    .await;
}
