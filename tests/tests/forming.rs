//! Forming a cluster by itself (issue 17): servers started with the same `--bootstrap-expect 3
//! --join LIST` in any order, two of them at once, form exactly one cluster every time (also
//! when LIST names four and all four start: three form it, the fourth joins); a later
//! server joins it; a restarted member ignores the flags; servers that share a name or disagree on
//! the count never form one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eden_tests::{tls_by_default, wait_for, Cluster};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Fast elections, no reactor: each round of the loop forms a cluster in about a second.
use eden_tests::FAST_ELECTIONS as FAST;

/// What each started member says: (cluster id, leader, voters by name, learners by name).
async fn views(c: &Cluster, who: &[usize]) -> Vec<Option<(u64, u64, BTreeSet<String>, usize)>> {
    let mut out = Vec::new();
    for &i in who {
        let client = c.client_of(i);
        let view = async {
            let s = client.status_of(0).await.ok()?;
            let h = s.header?;
            let list = client.member_list().await.ok()?;
            let voters = list
                .members
                .iter()
                .filter(|m| !m.is_learner)
                .map(|m| m.name.clone())
                .collect();
            let learners = list.members.iter().filter(|m| m.is_learner).count();
            Some((h.cluster_id, s.leader, voters, learners))
        };
        out.push(view.await);
    }
    out
}

/// True when members `who` are one cluster with a leader, whose voters are exactly `voters`
/// and whose other members (standbys, which autopilot keeps beyond three voters) number
/// `standbys`.
async fn one_cluster(c: &Cluster, who: &[usize], voters: &[&str], standbys: usize) -> bool {
    let want: BTreeSet<String> = voters.iter().map(|s| s.to_string()).collect();
    let v = views(c, who).await;
    let Some(Some(first)) = v.first() else {
        return false;
    };
    first.1 != 0
        && first.2 == want
        && first.3 == standbys
        && v.iter().all(|x| {
            x.as_ref().is_some_and(|x| {
                x.0 == first.0 && x.1 == first.1 && x.2 == first.2 && x.3 == first.3
            })
        })
}

/// True when members `who` are one cluster with a leader: three voters and the rest standbys.
async fn one_cluster_of(c: &Cluster, who: &[usize]) -> bool {
    let v = views(c, who).await;
    let Some(Some(first)) = v.first() else {
        return false;
    };
    first.1 != 0
        && first.2.len() == 3
        && first.3 == who.len() - 3
        && v.iter().all(|x| {
            x.as_ref().is_some_and(|x| {
                x.0 == first.0 && x.1 == first.1 && x.2 == first.2 && x.3 == first.3
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_form_exactly_one_cluster_in_any_start_order() {
    let t0 = Instant::now();
    let seed: u64 = std::env::var("EDEN_FORMING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rounds: usize = std::env::var("EDEN_FORMING_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for round in 0..rounds {
        // Every other round lists four servers of which three are expected, all four started:
        // the coordinator picks three, the fourth joins what they formed (a standby: autopilot
        // keeps three voters).
        let n = if round % 2 == 0 { 3 } else { 4 };
        let mut c = Cluster::forming(n, 3, FAST, tls_by_default());
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        // Half of the rounds start two servers at the same moment; the others stagger them.
        let together = rng.gen_bool(0.5);
        for (k, &i) in order.iter().enumerate() {
            c.spawn(i);
            if k + 1 < n && !(together && k == 0) {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
            }
        }
        let all: Vec<usize> = (0..n).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !one_cluster_of(&c, &all).await {
            assert!(
                Instant::now() < deadline,
                "round {round} (seed {seed}, order {order:?}, together {together}): no single \
                 cluster of {n}: {:?}\n{}",
                views(&c, &all).await,
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "{rounds} rounds formed one cluster each in {:.1} s (seed {seed})",
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_server_joins_and_a_restarted_member_ignores_the_flags() {
    // Four servers listed, three expected: the fourth starts after the cluster formed.
    let mut c = Cluster::forming(4, 3, FAST, tls_by_default());
    for i in 0..3 {
        c.spawn(i);
    }
    wait_for("three servers to form", Duration::from_secs(20), || {
        one_cluster(&c, &[0, 1, 2], &["m0", "m1", "m2"], 0)
    })
    .await;
    let id = views(&c, &[0]).await[0].as_ref().unwrap().0;
    let wrote = c.put(0, "formed", "yes").await;
    assert!(wrote.is_ok(), "{wrote:?}");

    c.spawn(3);
    wait_for(
        "the fourth server to join as a standby",
        Duration::from_secs(30),
        || one_cluster(&c, &[0, 1, 2, 3], &["m0", "m1", "m2"], 1),
    )
    .await;
    assert_eq!(views(&c, &[3]).await[0].as_ref().unwrap().0, id);
    wait_for(
        "the fourth server to catch up",
        Duration::from_secs(20),
        || async { c.local_get(3, "formed").await.as_deref() == Some(&b"yes"[..]) },
    )
    .await;

    // A member restarted with the same flags keeps its data and its cluster.
    c.stop(1);
    c.restart(1);
    wait_for(
        "the restarted member to rejoin",
        Duration::from_secs(30),
        || one_cluster(&c, &[0, 1, 2, 3], &["m0", "m1", "m2"], 1),
    )
    .await;
    assert_eq!(views(&c, &[1]).await[0].as_ref().unwrap().0, id);
    // The first start formed; the restart (its log appends) did not form again.
    assert_eq!(
        c.members[1].log_text().matches("forming a cluster").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_share_a_name_or_disagree_on_the_count_never_form() {
    // m1 and m2 both called m1: nobody may form a cluster with two members of one name.
    let mut c = Cluster::forming(3, 3, FAST, false);
    let i = c.members[2]
        .args_mut()
        .iter()
        .position(|a| a == "m2")
        .unwrap();
    c.members[2].args_mut()[i] = "m1".into();
    for i in 0..3 {
        c.spawn(i);
    }
    wait_for(
        "a member to say two share a name",
        Duration::from_secs(20),
        || {
            let logs = c.logs();
            async move { logs.contains("two servers are named m1") }
        },
    )
    .await;
    assert!(views(&c, &[0, 1, 2]).await.iter().all(Option::is_none));

    // One server expects 2, the others 3.
    let mut c = Cluster::forming(3, 3, FAST, false);
    let i = c.members[0]
        .args_mut()
        .iter()
        .position(|a| a == "--bootstrap-expect")
        .unwrap();
    c.members[0].args_mut()[i + 1] = "2".into();
    for i in 0..3 {
        c.spawn(i);
    }
    wait_for(
        "a member to name the disagreement",
        Duration::from_secs(20),
        || {
            let logs = c.logs();
            async move { logs.contains("give every server the same --bootstrap-expect") }
        },
    )
    .await;
    assert!(views(&c, &[0, 1, 2]).await.iter().all(Option::is_none));
}

#[test]
fn expect_must_be_more_than_half_of_the_list() {
    let out = std::process::Command::new(eden_tests::eden_bin())
        .args([
            "server",
            "--insecure",
            "--bootstrap-expect",
            "2",
            "--join",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could form two clusters"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_and_admins_may_make_the_forming_call() {
    use eden_proto::forming::forming_client::FormingClient;
    use eden_proto::forming::{DiscoverRequest, PromiseRequest};
    let mut c = Cluster::forming(2, 2, FAST, true);
    c.spawn(0);
    c.spawn(1);
    wait_for("two servers to form", Duration::from_secs(20), || {
        one_cluster(&c, &[0, 1], &["m0", "m1"], 0)
    })
    .await;
    let ep = c.members[0].endpoint();
    let call = |who: &'static str| {
        let tls = c.tls_of(who);
        let ep = ep.clone();
        async move {
            let ch = eden_proto::client::channel_to(&ep, tls.as_ref()).await?;
            FormingClient::new(ch)
                .discover(DiscoverRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
        }
    };
    let admin = call("admin").await.expect("an admin may ask");
    assert!(admin.running && admin.members.len() == 2, "{admin:?}");
    let node = call("node-web1").await;
    assert!(
        node.as_ref().is_err_and(|e| e.contains("PermissionDenied")),
        "{node:?}"
    );
    // The refusal is audited, as every other one.
    wait_for(
        "the refusal as an audit event",
        Duration::from_secs(20),
        || async { !c.event_tags("audit/denied/node/web1").await.is_empty() },
    )
    .await;
    // A running member never promises.
    let ch = eden_proto::client::channel_to(&ep, c.tls_of("admin").as_ref())
        .await
        .unwrap();
    let r = FormingClient::new(ch)
        .promise(PromiseRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!r.granted, "{r:?}");
}
