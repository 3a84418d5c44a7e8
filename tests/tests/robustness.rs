//! Robustness: three real members under concurrent clients while faults are injected, judged by
//! checking the recorded histories (see `eden_tests::history`), against eden and, with the same
//! workload and checkers, against etcd.
//!
//! The workload: puts, linearizable and serializable gets, compare-and-set txns, deletes,
//! multi-key txns (two puts, or two reads, in one txn), and puts under a lease that the same
//! client later revokes. Faults: kill -9 of the leader or of a random member (restarted a moment
//! later), SIGSTOP / SIGCONT pauses, network partitions on the peer links (the leader or a random
//! member isolated both ways, or cut off one way; see `eden_tests::PeerNet`), and membership
//! changes (a member removed, a new one joining in its place). Against etcd: the kills and pauses
//! (etcd's outgoing peer connections cannot be told apart by the proxy, and replacing an etcd
//! member takes a different procedure).
//!
//! Afterwards: the KV history must be linearizable per key (which also means no acknowledged
//! write was lost: every key is read at the end); every acknowledged write must be in the event
//! history at the revision it was acknowledged with, all of it (a multi-key txn never torn);
//! every serializable read must have returned a value that was written at the revision it names;
//! the watcher that ran through it all must have seen every revision once, in order, with the
//! right prev_kv; and every member must end with the same HashKV at the same revision.
//!
//! The default run is short (EDEN_ROBUSTNESS_SECS, default 30). A failure prints the seed
//! (EDEN_ROBUSTNESS_SEED replays the fault schedule), the schedule and the offending history.
//!
//!   EDEN_ROBUSTNESS_SECS=1800 cargo test --workspace --test robustness eden_histories -- --nocapture
//!
//! Load under faults (`eden_holds_under_faults_and_load`): the same workload and checks while
//! simulated agents and writers (`eden_tests::load`) keep the members busier than they can keep
//! up with (EDEN_LOAD_AGENTS, default 1,000; EDEN_LOAD_WRITERS, default 16). After each fault the
//! cluster settles, then a quiet phase of 5 s without faults must see no election: every member
//! keeps the same term and leader. No member's log may show a panic or a stopped Raft core. The
//! long run, on release binaries:
//!
//!   cargo build --release --bin eden
//!   EDEN_BIN=$HOME/.cache/eden-target/release/eden EDEN_ROBUSTNESS_SECS=1800 \
//!     EDEN_LOAD_AGENTS=10000 cargo test --workspace --test robustness load -- --nocapture

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eden_proto::client::Client;
use eden_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use eden_proto::etcdserverpb::response_op::Response;
use eden_proto::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest,
};
use eden_proto::keys::prefix_end;
use eden_proto::mvccpb::event::EventType;
use eden_tests::history::{
    check_acknowledged, check_linearizable, check_observed, check_watch, resolve_indeterminate,
    AckedWrite, Observed, Op, Record, SeenEvent,
};
use eden_tests::load::Load;
use eden_tests::{wait_for, Cluster};
use rand::{Rng, SeedableRng};

const KEYS: usize = 5;
const CLIENTS: usize = 4;
/// Long enough never to expire during a run: leases here end by revocation only.
const LEASE_TTL: i64 = 7200;

/// Rounds of this many seconds at most: each round's clients use their own keys, so each
/// round's KV history is checked alone and a long run's check stays small.
const ROUND_SECS: u64 = 60;

fn key(round: usize, i: usize) -> Vec<u8> {
    format!("r/{round}/{i}").into_bytes()
}

/// What the clients saw, with times in microseconds since `base`.
struct Recorder {
    base: Instant,
    history: Mutex<Vec<Record>>,
    acked: Mutex<Vec<AckedWrite>>,
    /// What serializable reads returned.
    observed: Mutex<Vec<Observed>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// `ret`: when the answer came and the revision its header named (None: no answer).
    fn record(&self, client: usize, key: &[u8], op: Op, call: u64, ret: Option<(u64, i64)>) {
        self.history.lock().unwrap().push(Record {
            client,
            key: key.to_vec(),
            op,
            call,
            ret: ret.map(|r| r.0),
            revision: ret.map_or(0, |r| r.1),
        });
    }

    fn acked(&self, revision: i64, puts: Vec<(Vec<u8>, Vec<u8>)>) {
        self.acked
            .lock()
            .unwrap()
            .push(AckedWrite { revision, puts });
    }
}

fn rev_of(h: &Option<eden_proto::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

fn put_op(key: &[u8], value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

fn range_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// A lease this client granted and put one key under; it revokes it later.
struct Leased {
    id: i64,
    key: Vec<u8>,
}

/// Revokes a lease, retrying until an answer (a retry that finds it gone means an earlier
/// attempt took effect): a lease left behind would expire at a time no history records.
async fn revoke(client: &Client, rec: &Recorder, c: usize, l: Leased) {
    let call = rec.now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ret = loop {
        match client.lease_revoke(l.id).await {
            Ok(r) => break Some((rec.now(), rev_of(&r.header))),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => break Some((rec.now(), 0)),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(_) => break None,
        }
    };
    rec.record(c, &l.key, Op::Revoke { lease: l.id }, call, ret);
}

async fn client_loop(
    round: usize,
    c: usize,
    client: Arc<Client>,
    stop: Arc<AtomicBool>,
    seed: u64,
    rec: Arc<Recorder>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ ((c as u64 + 1) * 0x9e37_79b9) ^ ((round as u64) << 32),
    );
    let mut n = 0u64;
    let mut leased: Option<Leased> = None;
    while !stop.load(Ordering::Relaxed) {
        // Paced, so a history stays small enough to check (and a failing cluster is not hammered).
        tokio::time::sleep(Duration::from_millis(10)).await;
        n += 1;
        let ki = rng.gen_range(0..KEYS);
        let k = key(round, ki);
        let k2 = key(round, (ki + rng.gen_range(1..KEYS)) % KEYS);
        let call = rec.now();
        match rng.gen_range(0..20) {
            0..=5 => {
                let value = format!("c{c}-{n}").into_bytes();
                let r = client
                    .put(PutRequest {
                        key: k.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await;
                let ret = r.as_ref().ok().map(|p| (rec.now(), rev_of(&p.header)));
                if let Ok(p) = r {
                    rec.acked(
                        p.header.map_or(0, |h| h.revision),
                        vec![(k.clone(), value.clone())],
                    );
                }
                rec.record(c, &k, Op::Put { value, lease: 0 }, call, ret);
            }
            6..=9 => {
                // A failed read observed nothing.
                if let Ok(r) = client
                    .range(RangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    let result = r.kvs.first().map(|kv| kv.value.clone());
                    let ret = Some((rec.now(), rev_of(&r.header)));
                    rec.record(c, &k, Op::Get { result }, call, ret);
                }
            }
            10 => {
                // Serializable: may be stale, so not linearizable; but what it returns must be a
                // value that was written at the revision it names.
                if let Ok(r) = client
                    .range(RangeRequest {
                        key: k.clone(),
                        serializable: true,
                        ..Default::default()
                    })
                    .await
                {
                    if let Some(kv) = r.kvs.first() {
                        rec.observed.lock().unwrap().push(Observed {
                            revision: kv.mod_revision,
                            key: kv.key.clone(),
                            value: kv.value.clone(),
                        });
                    }
                }
            }
            11..=12 => {
                // compare-and-set against what a fresh read saw
                let Ok(seen) = client
                    .range(RangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    })
                    .await
                else {
                    continue;
                };
                let expected = seen.kvs.first().map(|kv| kv.value.clone());
                let value = format!("c{c}-{n}-cas").into_bytes();
                let compare = match &expected {
                    Some(v) => Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: k.clone(),
                        target_union: Some(TargetUnion::Value(v.clone())),
                        range_end: vec![],
                    },
                    None => Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Version as i32,
                        key: k.clone(),
                        target_union: Some(TargetUnion::Version(0)),
                        range_end: vec![],
                    },
                };
                let call = rec.now();
                let r = client
                    .txn(TxnRequest {
                        compare: vec![compare],
                        success: vec![put_op(&k, &value)],
                        failure: vec![],
                    })
                    .await;
                let (succeeded, ret) = match r {
                    Ok(t) => {
                        if t.succeeded {
                            rec.acked(
                                t.header.map_or(0, |h| h.revision),
                                vec![(k.clone(), value.clone())],
                            );
                        }
                        (t.succeeded, Some((rec.now(), rev_of(&t.header))))
                    }
                    Err(_) => (true, None),
                };
                let op = Op::Cas {
                    expected,
                    value,
                    succeeded,
                };
                rec.record(c, &k, op, call, ret);
            }
            13 => {
                let r = client
                    .delete_range(DeleteRangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    })
                    .await;
                let (op, ret) = match r {
                    Ok(d) => (
                        Op::Delete { deleted: d.deleted },
                        Some((rec.now(), rev_of(&d.header))),
                    ),
                    // Indeterminate: it may have deleted or not (the count is not checked).
                    Err(_) => (Op::Delete { deleted: -1 }, None),
                };
                rec.record(c, &k, op, call, ret);
            }
            14..=15 => {
                // Two keys in one txn: each key's history gets a put; the event history must
                // hold both at one revision.
                let value = format!("c{c}-{n}-txn").into_bytes();
                let r = client
                    .txn(TxnRequest {
                        compare: vec![],
                        success: vec![put_op(&k, &value), put_op(&k2, &value)],
                        failure: vec![],
                    })
                    .await;
                let ret = r.as_ref().ok().map(|p| (rec.now(), rev_of(&p.header)));
                if let Ok(t) = r {
                    rec.acked(
                        t.header.map_or(0, |h| h.revision),
                        vec![(k.clone(), value.clone()), (k2.clone(), value.clone())],
                    );
                }
                for key in [&k, &k2] {
                    let op = Op::Put {
                        value: value.clone(),
                        lease: 0,
                    };
                    rec.record(c, key, op, call, ret);
                }
            }
            16 => {
                // Two reads in one txn.
                let Ok(t) = client
                    .txn(TxnRequest {
                        compare: vec![],
                        success: vec![range_op(&k), range_op(&k2)],
                        failure: vec![],
                    })
                    .await
                else {
                    continue;
                };
                let ret = Some((rec.now(), rev_of(&t.header)));
                for (key, resp) in [&k, &k2].into_iter().zip(&t.responses) {
                    let Some(Response::ResponseRange(r)) = &resp.response else {
                        panic!("a range in a txn answered {resp:?}");
                    };
                    let result = r.kvs.first().map(|kv| kv.value.clone());
                    rec.record(c, key, Op::Get { result }, call, ret);
                }
            }
            _ => match leased.take() {
                Some(l) => revoke(&client, &rec, c, l).await,
                None => {
                    let Ok(g) = client.lease_grant(LEASE_TTL, 0).await else {
                        continue;
                    };
                    let value = format!("c{c}-{n}-lease").into_bytes();
                    let call = rec.now();
                    let r = client
                        .put(PutRequest {
                            key: k.clone(),
                            value: value.clone(),
                            lease: g.id,
                            ..Default::default()
                        })
                        .await;
                    let ret = r.as_ref().ok().map(|p| (rec.now(), rev_of(&p.header)));
                    if let Ok(p) = r {
                        rec.acked(
                            p.header.map_or(0, |h| h.revision),
                            vec![(k.clone(), value.clone())],
                        );
                    }
                    rec.record(c, &k, Op::Put { value, lease: g.id }, call, ret);
                    leased = Some(Leased {
                        id: g.id,
                        key: k.clone(),
                    });
                }
            },
        }
    }
    if let Some(l) = leased {
        revoke(&client, &rec, c, l).await;
    }
}

fn event_of(e: &eden_proto::mvccpb::Event) -> SeenEvent {
    let kv = e.kv.clone().unwrap_or_default();
    SeenEvent {
        revision: kv.mod_revision,
        key: kv.key,
        delete: e.r#type == EventType::Delete as i32,
        value: kv.value,
        prev_value: e.prev_kv.as_ref().map(|p| p.value.clone()),
    }
}

/// The store's current revision (a linearizable read).
async fn current_revision(c: &Cluster) -> i64 {
    rev_of(
        &c.client()
            .range(RangeRequest {
                key: b"r/".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .header,
    )
}

/// Every event under `r/` from revision `from` through `to`, replayed by a fresh watch. The watch
/// covers every key (the reactor runtime writes its own under /eden/), so that revision `to`,
/// a revision the store had reached, is sure to come.
async fn replay(c: &Cluster, from: i64, to: i64) -> Vec<SeenEvent> {
    let mut out: Vec<SeenEvent> = Vec::new();
    if to < from {
        return out;
    }
    let mut w = c.client().watch(
        WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: from,
            prev_kv: true,
            ..Default::default()
        },
        Duration::from_secs(30),
    );
    let mut reached = 0;
    while reached < to {
        let m = tokio::time::timeout(Duration::from_secs(30), w.recv())
            .await
            .expect("replaying the event history timed out")
            .expect("the replay watch ended")
            .expect("the replay watch failed");
        assert!(!m.canceled, "the replay watch was canceled: {m:?}");
        for e in &m.events {
            let e = event_of(e);
            reached = reached.max(e.revision);
            if e.key.starts_with(b"r/") {
                out.push(e);
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillLeader,
    KillRandom,
    Pause,
    IsolateLeader,
    IsolateRandom,
    /// A member cannot send to the others, but hears them.
    CutOutgoing,
    /// A member removed, and a new one joins in its place.
    ReplaceMember,
    /// Autopilot mode: a member killed for longer than dead-server-after; autopilot replaces it
    /// (a standby promoted when it was a voter) and removes it; restarted, it finds itself
    /// removed and stops; a new server joins as a standby.
    KillPastGrace,
    /// Autopilot mode: a member isolated for longer than dead-server-after; the same, after the
    /// partition heals.
    IsolatePastGrace,
}

fn seed_and_secs() -> (u64, u64) {
    let secs: u64 = std::env::var("EDEN_ROBUSTNESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("EDEN_ROBUSTNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    (seed, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eden_histories_hold_under_faults() {
    let (seed, secs) = seed_and_secs();
    eprintln!("robustness (eden): seed {seed}, {secs} s (replay with EDEN_ROBUSTNESS_SEED={seed})");
    let c = Cluster::start_partitionable(3, &[]).await;
    use Fault::*;
    let faults = [
        KillLeader,
        KillRandom,
        Pause,
        IsolateLeader,
        IsolateRandom,
        CutOutgoing,
        ReplaceMember,
    ];
    run(c, &faults, seed, secs).await;
}

/// Autopilot acting while the faults run: five servers formed with --bootstrap-expect 3 (three
/// voters, two standbys), members killed and partitioned for longer than the grace period (8 s
/// of dead-server-after here, after 2 s without contact) as well as more briefly (at most 6 s);
/// autopilot replaces and removes them, new servers join.
///
///   EDEN_ROBUSTNESS_SECS=600 cargo test --workspace --test robustness autopilot -- --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eden_histories_hold_while_autopilot_acts() {
    let (seed, secs) = seed_and_secs();
    eprintln!(
        "robustness (eden, autopilot): seed {seed}, {secs} s (replay with \
         EDEN_ROBUSTNESS_SEED={seed})"
    );
    let mut c = Cluster::forming_partitionable(5, 3, &[], eden_tests::tls_by_default());
    for i in 0..5 {
        c.spawn(i);
    }
    wait_for(
        "three voters and two standbys",
        Duration::from_secs(60),
        || async {
            c.autopilot_status()
                .await
                .is_some_and(|s| s.voters == 3 && s.healthy_voters == 3 && s.servers.len() == 5)
        },
    )
    .await;
    let set = c
        .eden(&[
            "cluster",
            "autopilot",
            "set",
            "--dead-server-after",
            "8s",
            "--stabilization",
            "1s",
        ])
        .await;
    assert_eq!(set.code, Some(0), "{set:?}");
    use Fault::*;
    let faults = [
        KillPastGrace,
        IsolatePastGrace,
        KillRandom,
        IsolateRandom,
        KillLeader,
    ];
    run(c, &faults, seed, secs).await;
}

/// Load beyond the cluster's capacity while the faults run; no election in the quiet phases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eden_holds_under_faults_and_load() {
    let (seed, secs) = seed_and_secs();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (agents, writers) = (env("EDEN_LOAD_AGENTS", 1_000), env("EDEN_LOAD_WRITERS", 16));
    eprintln!(
        "robustness (eden, load of {agents} agents and {writers} writers): seed {seed}, {secs} s \
         (replay with EDEN_ROBUSTNESS_SEED={seed})"
    );
    let c = Cluster::start_partitionable(3, &[]).await;
    use Fault::*;
    let faults = [
        KillLeader,
        KillRandom,
        Pause,
        IsolateLeader,
        IsolateRandom,
        CutOutgoing,
    ];
    let load = Load::start(&c.endpoints(), agents, writers);
    run_with(c, &faults, seed, secs, Some(load)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_same_checks() {
    let (seed, secs) = seed_and_secs();
    eprintln!("robustness (etcd): seed {seed}, {secs} s (replay with EDEN_ROBUSTNESS_SEED={seed})");
    let c = Cluster::start_etcd(3).await;
    run(
        c,
        &[Fault::KillLeader, Fault::KillRandom, Fault::Pause],
        seed,
        secs,
    )
    .await;
}

/// Injects one fault and undoes it; returns what it did, for the schedule.
async fn inject(c: &mut Cluster, fault: Fault, rng: &mut rand::rngs::StdRng) -> Option<String> {
    let running: Vec<usize> = (0..c.members.len())
        .filter(|i| c.members[*i].is_running())
        .collect();
    let v = running[rng.gen_range(0..running.len())];
    let n = c.members.len();
    let hold = Duration::from_millis(rng.gen_range(500..3000));
    match fault {
        Fault::KillLeader => {
            let l = c.leader().await?;
            c.kill(l);
            tokio::time::sleep(hold).await;
            c.restart(l);
            Some(format!("kill -9 the leader m{l}, restart after {hold:?}"))
        }
        Fault::KillRandom => {
            c.kill(v);
            tokio::time::sleep(hold).await;
            c.restart(v);
            Some(format!("kill -9 m{v}, restart after {hold:?}"))
        }
        Fault::Pause => {
            c.pause(v);
            tokio::time::sleep(hold).await;
            c.resume(v);
            Some(format!("SIGSTOP m{v}, SIGCONT after {hold:?}"))
        }
        Fault::IsolateLeader | Fault::IsolateRandom => {
            let target = if fault == Fault::IsolateLeader {
                c.leader().await?
            } else {
                v
            };
            let net = c.net.clone().expect("a partitionable cluster");
            net.isolate(target, n);
            tokio::time::sleep(hold * 2).await;
            net.heal();
            let who = if fault == Fault::IsolateLeader {
                "the leader "
            } else {
                ""
            };
            Some(format!("isolate {who}m{target}, heal after {:?}", hold * 2))
        }
        Fault::CutOutgoing => {
            let net = c.net.clone().expect("a partitionable cluster");
            for j in (0..n).filter(|j| *j != v) {
                net.block(v, j);
            }
            tokio::time::sleep(hold * 2).await;
            net.heal();
            Some(format!(
                "m{v} cannot send to the others, heal after {:?}",
                hold * 2
            ))
        }
        Fault::ReplaceMember => {
            let id = c.member_id(v).await;
            if let Err(e) = c.remove_member(id).await {
                return Some(format!("remove m{v}: refused ({e})"));
            }
            c.wait_exited(v).await;
            let admin = c.client();
            let new = c.join(&[]);
            wait_for(
                "the new member to become a voter",
                Duration::from_secs(30),
                || {
                    let admin = admin.clone();
                    async move {
                        admin.member_list().await.is_ok_and(|l| {
                            l.members.len() == 3
                                && l.members
                                    .iter()
                                    .all(|m| !m.is_learner && !m.client_ur_ls.is_empty())
                        })
                    }
                },
            )
            .await;
            Some(format!("remove m{v}; m{new} joins and becomes a voter"))
        }
        Fault::KillPastGrace | Fault::IsolatePastGrace => {
            let name = c.members[v].name.clone();
            let kill = fault == Fault::KillPastGrace;
            if kill {
                c.kill(v);
            } else {
                c.net
                    .clone()
                    .expect("a partitionable cluster")
                    .isolate(v, n);
            }
            // Autopilot removes it (after promoting a standby, when it was a voter).
            let removed = gone_from_autopilot(c, &name, Duration::from_secs(60)).await;
            if kill {
                c.restart(v);
            } else {
                c.net.clone().expect("a partitionable cluster").heal();
            }
            if !removed {
                return Some(format!(
                    "{} m{v} past the grace period: autopilot did not remove it in 60 s",
                    if kill { "kill -9" } else { "isolate" }
                ));
            }
            // It finds itself removed and stops; a fresh server joins in its place.
            c.wait_exited(v).await;
            let new = c.join(&[]);
            let joined = c.members[new].name.clone();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let s = c.autopilot_status().await;
                if s.as_ref().is_some_and(|s| {
                    s.servers.iter().any(|m| m.name == joined && m.healthy) && s.healthy_voters == 3
                }) {
                    break;
                }
                if Instant::now() > deadline {
                    let log = c.members[new].log_text();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                    return Some(format!(
                        "FAILED: {} m{v} past the grace period, m{new} joined but autopilot never \
                         reported it healthy with three healthy voters in 60 s: {s:#?}\nm{new}'s \
                         log:\n{tail}",
                        if kill { "kill -9" } else { "isolate" },
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(format!(
                "{} m{v} past the grace period: autopilot removed it; it stopped; m{new} joined",
                if kill { "kill -9" } else { "isolate" }
            ))
        }
    }
}

/// Waits until the leader's autopilot no longer lists `name`; false after `timeout`.
async fn gone_from_autopilot(c: &Cluster, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if c.autopilot_status()
            .await
            .is_some_and(|s| !s.servers.iter().any(|m| m.name == name))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Each running member's (term, leader) from its Status; None for a member that did not answer.
async fn terms(c: &Cluster) -> Vec<Option<(u64, u64)>> {
    let mut out = Vec::new();
    for i in 0..c.members.len() {
        if !c.members[i].is_running() {
            out.push(None);
            continue;
        }
        let s = tokio::time::timeout(Duration::from_secs(2), c.client_of(i).status_of(0)).await;
        out.push(match s {
            Ok(Ok(s)) => Some((s.raft_term, s.leader)),
            _ => None,
        });
    }
    out
}

/// How long the cluster may take to settle after a fault. Under a load beyond capacity a write
/// waits behind the admitted queue (up to 4096 proposals and 5000 unapplied entries) at the
/// reduced rate of a cluster that is catching a member up, so this is generous.
const SETTLE: Duration = Duration::from_secs(60);

/// Why a cluster did not settle.
#[derive(Debug)]
enum Unsettled {
    /// No write committed within [`SETTLE`].
    NoCommit,
    /// Writes commit, but the running members do not all name the same leader in the same term.
    NoAgreement,
}

/// Waits (up to [`SETTLE`]) until a write commits (so a leader with a quorum exists: right after
/// a fault every member may still name a leader that no longer leads, such as a restarted one),
/// and every running member answers and all name the same leader in the same term; returns that
/// (term, leader). One write waits as long as it takes within the budget: under overload the
/// client's own retries of "too many requests" and the queue make it slow, not failed.
async fn settled(c: &Cluster) -> Result<(u64, u64), Unsettled> {
    let deadline = Instant::now() + SETTLE;
    let client = c.client();
    loop {
        let put = client.put(PutRequest {
            key: b"settle".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        });
        let left = deadline.saturating_duration_since(Instant::now());
        if matches!(tokio::time::timeout(left, put).await, Ok(Ok(_))) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Unsettled::NoCommit);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while Instant::now() < deadline {
        let t = terms(c).await;
        let running: Vec<Option<(u64, u64)>> = t
            .iter()
            .enumerate()
            .filter(|(i, _)| c.members[*i].is_running())
            .map(|(_, x)| *x)
            .collect();
        if let Some(Some(first)) = running.first() {
            if first.1 != 0 && running.iter().all(|x| *x == Some(*first)) {
                return Ok(*first);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Unsettled::NoAgreement)
}

/// How long the cluster is left alone after each fault in the load mode.
const QUIET: Duration = Duration::from_secs(5);

async fn run(c: Cluster, faults: &[Fault], seed: u64, secs: u64) {
    run_with(c, faults, seed, secs, None).await
}

async fn run_with(mut c: Cluster, faults: &[Fault], seed: u64, secs: u64, load: Option<Load>) {
    let report = |schedule: &[String], what: &str, detail: String| -> String {
        format!(
            "{what}\nseed {seed}\nfault schedule:\n  {}\n{detail}",
            schedule.join("\n  ")
        )
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Every fault is undone (a replaced member by a new one): as many run at the end.
    let members_at_start = (0..c.members.len())
        .filter(|i| c.members[*i].is_running())
        .count();
    let rec = Arc::new(Recorder {
        base: Instant::now(),
        history: Mutex::default(),
        acked: Mutex::default(),
        observed: Mutex::default(),
    });
    let start_rev = c
        .client()
        .range(RangeRequest {
            key: b"r/".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision
        + 1;
    let watch_create = WatchCreateRequest {
        key: b"r/".to_vec(),
        range_end: prefix_end(b"r/"),
        start_revision: start_rev,
        prev_kv: true,
        ..Default::default()
    };
    let mut watch = c
        .client()
        .watch(watch_create.clone(), Duration::from_secs(60));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = watch.recv().await {
                assert!(!m.canceled, "the watch was canceled: {m:?}");
                seen.lock().unwrap().extend(m.events.iter().map(event_of));
            }
        })
    };
    // Rounds: clients on the round's keys while faults go on; then the round's KV history is
    // checked. Faults, the watcher and the event-history checks span the whole run.
    let mut schedule: Vec<String> = Vec::new();
    let mut quiet_failures: Vec<String> = Vec::new();
    let mut quiet_phases = 0;
    let run_end = Instant::now() + Duration::from_secs(secs);
    let mut operations = 0;
    let mut round = 0;
    while round == 0 || Instant::now() + Duration::from_secs(10) < run_end {
        let end = run_end.min(Instant::now() + Duration::from_secs(ROUND_SECS));
        let stop = Arc::new(AtomicBool::new(false));
        rec.history.lock().unwrap().clear();
        let round_start = current_revision(&c).await + 1;
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(client_loop(
                    round,
                    i,
                    c.client(),
                    stop.clone(),
                    seed,
                    rec.clone(),
                ))
            })
            .collect();
        while Instant::now() + Duration::from_secs(4) < end {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
            let t = rec.base.elapsed().as_millis();
            let fault = faults[rng.gen_range(0..faults.len())];
            if let Some(done) = inject(&mut c, fault, &mut rng).await {
                let failed = done.starts_with("FAILED");
                schedule.push(format!("{t} ms: {done}"));
                assert!(
                    !failed,
                    "{}",
                    report(&schedule, "a fault was not undone", String::new())
                );
            }
            if load.is_some() {
                // Settle, then a quiet phase: under load, with no fault, no election.
                let before = match settled(&c).await {
                    Ok(b) => b,
                    Err(why) => {
                        quiet_failures.push(format!(
                            "{} ms: not settled {} s after the fault ({why:?}): {:?}",
                            rec.base.elapsed().as_millis(),
                            SETTLE.as_secs(),
                            terms(&c).await
                        ));
                        continue;
                    }
                };
                let q0 = rec.base.elapsed().as_millis();
                tokio::time::sleep(QUIET).await;
                let after = settled(&c).await.ok();
                let q1 = rec.base.elapsed().as_millis();
                if after != Some(before) {
                    quiet_failures.push(format!(
                        "{q0}..{q1} ms: (term, leader) went from {before:?} to {after:?} with no fault"
                    ));
                }
                quiet_phases += 1;
                schedule.push(format!(
                    "{q0}..{q1} ms: quiet, (term, leader) {before:?} -> {after:?}"
                ));
            }
        }
        tokio::time::sleep_until(end.into()).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        // Every key read once more at the end: an acknowledged write that was lost shows up here.
        let client = c.client();
        for k in 0..KEYS {
            let call = rec.now();
            let r = client
                .range(RangeRequest {
                    key: key(round, k),
                    ..Default::default()
                })
                .await
                .unwrap();
            let result = r.kvs.first().map(|kv| kv.value.clone());
            rec.record(
                99,
                &key(round, k),
                Op::Get { result },
                call,
                Some((rec.now(), rev_of(&r.header))),
            );
        }
        // Unanswered writes settled against the event history of the round's keys.
        let upto = current_revision(&c).await;
        let prefix = format!("r/{round}/").into_bytes();
        let events: Vec<SeenEvent> = replay(&c, round_start, upto)
            .await
            .into_iter()
            .filter(|e| e.key.starts_with(&prefix))
            .collect();
        let h = resolve_indeterminate(&rec.history.lock().unwrap(), &events);
        operations += h.len();
        eprintln!(
            "robustness: round {round}: {} operations; {} faults so far",
            h.len(),
            schedule.len()
        );
        if let Err(e) = check_linearizable(&h) {
            panic!(
                "{}",
                report(
                    &schedule,
                    &format!("round {round}: the KV history is not linearizable"),
                    e
                )
            );
        }
        round += 1;
    }
    eprintln!(
        "robustness: {operations} operations in {round} rounds, {} faults:\n  {}",
        schedule.len(),
        schedule.join("\n  ")
    );
    if let Some(load) = load {
        let stats = load.stop().await;
        eprintln!(
            "robustness: load: {}; {quiet_phases} quiet phases",
            stats.summary()
        );
        assert!(
            quiet_failures.is_empty(),
            "{}",
            report(
                &schedule,
                "an election in a quiet phase under load",
                quiet_failures.join("\n")
            )
        );
    }
    // No member's core died on the way (a panic, or a storage error that stopped it).
    for m in &c.members {
        let log = m.log_text();
        for bad in ["panicked at", "the Raft core stopped"] {
            assert!(
                !log.contains(bad),
                "{}",
                report(
                    &schedule,
                    &format!("{}: {bad}", m.name),
                    log.lines()
                        .filter(|l| l.contains(bad))
                        .take(5)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            );
        }
    }
    let client = c.client();
    // Every member at the same revision with the same hash.
    let live: Vec<usize> = (0..c.members.len())
        .filter(|i| c.members[*i].is_running())
        .collect();
    assert_eq!(
        live.len(),
        members_at_start,
        "{}",
        report(&schedule, "members missing", format!("{live:?}"))
    );
    let last = client
        .range(RangeRequest {
            key: b"r/".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    for &i in &live {
        wait_for(
            &format!("m{i} to catch up to revision {last}"),
            Duration::from_secs(30),
            || async { c.local_revision(i).await.is_some_and(|r| r >= last) },
        )
        .await;
    }
    let mut hashes = Vec::new();
    for &i in &live {
        hashes.push(c.client_of(i).hash_kv_of(0, last).await.unwrap().hash);
    }
    assert!(
        hashes.iter().all(|x| *x == hashes[0]),
        "{}",
        report(
            &schedule,
            "members differ",
            format!("HashKV at {last}: {hashes:?}")
        )
    );
    // The authoritative event history: a fresh watch from the same revision.
    let truth = replay(&c, start_rev, last).await;
    if let Err(e) = check_acknowledged(&rec.acked.lock().unwrap(), &truth) {
        panic!("{}", report(&schedule, "an acknowledged write is wrong", e));
    }
    if let Err(e) = check_observed(&rec.observed.lock().unwrap(), &truth) {
        panic!(
            "{}",
            report(
                &schedule,
                "a serializable read returned what was never written",
                e
            )
        );
    }
    // The watcher that ran through the faults against it.
    let last_r = truth.last().map_or(0, |e| e.revision);
    wait_for("the watcher to catch up", Duration::from_secs(30), || {
        let n = seen
            .lock()
            .unwrap()
            .last()
            .map_or(0, |e: &SeenEvent| e.revision);
        async move { n >= last_r }
    })
    .await;
    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    if let Err(e) = check_watch(&seen, &truth, true) {
        panic!("{}", report(&schedule, "the watcher's events are wrong", e));
    }
}
