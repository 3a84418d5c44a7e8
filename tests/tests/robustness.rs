//! Robustness: three real members under concurrent clients while faults are injected, judged by
//! checking the recorded histories (see `eden_tests::history`).
//!
//! Faults: kill -9 of the leader or of a random member (restarted a moment later), SIGSTOP /
//! SIGCONT pauses, and (with EDEN_ROBUSTNESS_MEMBERSHIP=1) membership changes: a member removed,
//! a new one joining in its place. Network partitions are not injected yet. Afterwards: the KV history must be linearizable per key (which also means no
//! acknowledged write was lost: every key is read at the end), the watcher that ran through it all
//! must have seen every revision once, in order, with the right prev_kv, and every member must end
//! with the same HashKV at the same revision.
//!
//! The default run is short (EDEN_ROBUSTNESS_SECS, default 30). A failure prints the seed
//! (EDEN_ROBUSTNESS_SEED replays it), the fault schedule and the offending history.
//!
//!   EDEN_ROBUSTNESS_SECS=1800 cargo test -p eden-tests --test robustness -- --nocapture

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eden_proto::client::Client;
use eden_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use eden_proto::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest,
};
use eden_proto::keys::prefix_end;
use eden_proto::mvccpb::event::EventType;
use eden_tests::history::{check_linearizable, check_watch, Op, Record, SeenEvent};
use eden_tests::{wait_for, Cluster};
use rand::{Rng, SeedableRng};

const KEYS: usize = 5;
const CLIENTS: usize = 4;

fn key(i: usize) -> Vec<u8> {
    format!("r/{i}").into_bytes()
}

async fn client_loop(
    c: usize,
    client: Arc<Client>,
    base: Instant,
    stop: Arc<AtomicBool>,
    seed: u64,
    out: Arc<Mutex<Vec<Record>>>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((c as u64 + 1) * 0x9e37_79b9));
    let now = |b: Instant| b.elapsed().as_micros() as u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Paced, so a history stays small enough to check (and a failing cluster is not hammered).
        tokio::time::sleep(Duration::from_millis(10)).await;
        n += 1;
        let k = key(rng.gen_range(0..KEYS));
        let call = now(base);
        let (op, ret) = match rng.gen_range(0..10) {
            0..=3 => {
                let value = format!("c{c}-{n}").into_bytes();
                let r = client
                    .put(PutRequest {
                        key: k.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await;
                (Op::Put { value }, r.is_ok().then(|| now(base)))
            }
            4..=6 => match client
                .range(RangeRequest {
                    key: k.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(r) => (
                    Op::Get {
                        result: r.kvs.first().map(|kv| kv.value.clone()),
                    },
                    Some(now(base)),
                ),
                Err(_) => continue, // a failed read observed nothing
            },
            7..=8 => {
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
                let put = RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: k.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })),
                };
                let call = now(base);
                let r = client
                    .txn(TxnRequest {
                        compare: vec![compare],
                        success: vec![put],
                        failure: vec![],
                    })
                    .await;
                let (succeeded, ret) = match r {
                    Ok(t) => (t.succeeded, Some(now(base))),
                    Err(_) => (true, None),
                };
                out.lock().unwrap().push(Record {
                    client: c,
                    key: k,
                    op: Op::Cas {
                        expected,
                        value,
                        succeeded,
                    },
                    call,
                    ret,
                });
                continue;
            }
            _ => {
                let r = client
                    .delete_range(DeleteRangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(d) => (Op::Delete { deleted: d.deleted }, Some(now(base))),
                    // Indeterminate: it may have deleted or not (the count is not checked).
                    Err(_) => (Op::Delete { deleted: -1 }, None),
                }
            }
        };
        out.lock().unwrap().push(Record {
            client: c,
            key: k,
            op,
            call,
            ret,
        });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_watch_histories_hold_under_faults() {
    let secs: u64 = std::env::var("EDEN_ROBUSTNESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("EDEN_ROBUSTNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("robustness: seed {seed}, {secs} s (replay with EDEN_ROBUSTNESS_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Membership changes as a fault are opt-in for now: with them, seed 11 leaves a member that
    // was killed right after its promotion unable to catch up (open; see the issue notes).
    let membership_faults = std::env::var("EDEN_ROBUSTNESS_MEMBERSHIP").is_ok_and(|v| v == "1");
    let mut c = Cluster::start(3, &[]).await;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
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
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        tasks.push(tokio::spawn(client_loop(
            i,
            c.client(),
            base,
            stop.clone(),
            seed,
            history.clone(),
        )));
    }
    // The fault schedule.
    let mut schedule: Vec<String> = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() + Duration::from_secs(4) < end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
        let t = base.elapsed().as_millis();
        let running: Vec<usize> = (0..c.members.len())
            .filter(|i| c.members[*i].is_running())
            .collect();
        let v = running[rng.gen_range(0..running.len())];
        let kinds = if membership_faults { 4 } else { 3 };
        match rng.gen_range(0..kinds) {
            0 => {
                let Some(l) = c.leader().await else { continue };
                schedule.push(format!("{t} ms: kill -9 the leader m{l}"));
                c.kill(l);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
                c.restart(l);
            }
            1 => {
                schedule.push(format!("{t} ms: kill -9 m{v}"));
                c.kill(v);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
                c.restart(v);
            }
            2 => {
                schedule.push(format!("{t} ms: SIGSTOP m{v} for a while"));
                c.pause(v);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..3000))).await;
                c.resume(v);
            }
            _ => {
                // Membership change: remove a member, then a new one joins in its place.
                let id = c.member_id(v).await;
                schedule.push(format!("{t} ms: remove m{v}, then a new member joins"));
                if let Err(e) = c.remove_member(id).await {
                    schedule.push(format!("  (remove refused: {e})"));
                    continue;
                }
                c.wait_exited(v).await;
                let admin = c.client();
                let n = c.join(&[]);
                let admin2 = admin.clone();
                wait_for(
                    "the new member to become a voter",
                    Duration::from_secs(30),
                    || {
                        let admin = admin2.clone();
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
                schedule.push(format!("  m{n} joined"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let report = |what: &str, detail: String| -> String {
        format!(
            "{what}\nseed {seed}\nfault schedule:\n  {}\n{detail}",
            schedule.join("\n  ")
        )
    };
    // Every key read once more at the end: an acknowledged write that was lost shows up here.
    let client = c.client();
    let mut h = history.lock().unwrap().clone();
    for k in 0..KEYS {
        let call = base.elapsed().as_micros() as u64;
        let r = client
            .range(RangeRequest {
                key: key(k),
                ..Default::default()
            })
            .await
            .unwrap();
        h.push(Record {
            client: 99,
            key: key(k),
            op: Op::Get {
                result: r.kvs.first().map(|kv| kv.value.clone()),
            },
            call,
            ret: Some(base.elapsed().as_micros() as u64),
        });
    }
    eprintln!(
        "robustness: {} operations, {} faults",
        h.len(),
        schedule.len()
    );
    if let Err(e) = check_linearizable(&h) {
        panic!("{}", report("the KV history is not linearizable", e));
    }
    // Every member at the same revision with the same hash.
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
    for i in 0..3 {
        wait_for(
            "every member to catch up",
            Duration::from_secs(30),
            || async { c.local_revision(i).await.is_some_and(|r| r >= last) },
        )
        .await;
    }
    let mut hashes = Vec::new();
    for i in 0..3 {
        hashes.push(c.client_of(i).hash_kv_of(0, last).await.unwrap().hash);
    }
    assert!(
        hashes.iter().all(|x| *x == hashes[0]),
        "{}",
        report("members differ", format!("HashKV at {last}: {hashes:?}"))
    );
    // The watcher against the authoritative history: a fresh watch from the same revision.
    wait_for("the watcher to catch up", Duration::from_secs(30), || {
        let n = seen
            .lock()
            .unwrap()
            .last()
            .map_or(0, |e: &SeenEvent| e.revision);
        async move { n >= last }
    })
    .await;
    watcher.abort();
    let mut fresh = c.client().watch(watch_create, Duration::from_secs(30));
    let mut truth: Vec<SeenEvent> = Vec::new();
    while truth.last().map_or(0, |e| e.revision) < last {
        let m = tokio::time::timeout(Duration::from_secs(30), fresh.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        truth.extend(m.events.iter().map(event_of));
    }
    let seen = seen.lock().unwrap().clone();
    if let Err(e) = check_watch(&seen, &truth, true) {
        panic!("{}", report("the watcher's events are wrong", e));
    }
}
