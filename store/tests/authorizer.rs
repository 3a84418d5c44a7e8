//! The authorizer's rules, and a fuzz run: random requests from random callers against random
//! facts, checked against a reference written independently (key by key, over every key of a
//! universe): the authorizer must never allow what the reference denies.
//!
//! The fuzz is seeded: `EDEN_FUZZ_SEED=N` repeats a run, `EDEN_FUZZ_CASES=N` makes it longer.

use std::collections::{BTreeMap, BTreeSet};

use eden_proto::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use eden_proto::model::readers::Readers;
use eden_proto::model::users::Perm;
use eden_store::auth::{self, Caller, Facts, Rpc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Default, Clone, Debug)]
struct World {
    labels: BTreeMap<String, BTreeMap<String, String>>,
    readers: BTreeMap<(String, String), Readers>,
    assigned: BTreeSet<(String, String)>,
    /// An etcd user's permissions (through its roles), and whether it has the root role.
    users: BTreeMap<String, (bool, Vec<Perm>)>,
    /// Files' readers, by file name.
    file_readers: BTreeMap<String, Readers>,
    /// Read-once files, by name: the node each is for.
    once: BTreeMap<String, String>,
    /// Keys that do not exist (every other key does).
    gone: BTreeSet<Vec<u8>>,
}

impl Facts for World {
    fn labels(&self, node: &str) -> BTreeMap<String, String> {
        self.labels.get(node).cloned().unwrap_or_default()
    }
    fn var_readers(&self, scope: &str, name: &str) -> Option<Readers> {
        self.readers.get(&(scope.into(), name.into())).cloned()
    }
    fn assigned(&self, node: &str, task: &str) -> bool {
        self.assigned.contains(&(node.into(), task.into()))
    }
    fn file_readers(&self, name: &str) -> Option<Readers> {
        self.file_readers.get(name).cloned()
    }
    fn file_once(&self, name: &str) -> Option<String> {
        self.once.get(name).cloned()
    }
    fn exists(&self, key: &[u8]) -> bool {
        !self.gone.contains(key)
    }
    fn user_perms(&self, user: &str) -> (bool, Vec<Perm>) {
        self.users.get(user).cloned().unwrap_or_default()
    }
}

fn node(n: &str) -> Caller {
    Caller::Node(n.into())
}

fn read(c: &Caller, key: &str, end: &str, w: &World) -> bool {
    auth::check_read(c, key.as_bytes(), end.as_bytes(), w).is_ok()
}

fn write(c: &Caller, key: &str, end: &str, w: &World) -> bool {
    auth::check_write(c, key.as_bytes(), end.as_bytes(), w).is_ok()
}

fn story() -> World {
    let mut w = World::default();
    w.labels.insert(
        "a".into(),
        BTreeMap::from([("role".into(), "master".into())]),
    );
    w.readers.insert(
        ("a".into(), "token".into()),
        Readers::parse(&["role=master".into(), "node:b".into()]).unwrap(),
    );
    w.assigned.insert(("a".into(), "t1".into()));
    w
}

#[test]
fn a_node_reads_and_writes_its_own_keys_only() {
    let w = story();
    let a = node("a");
    assert!(read(&a, "/eden/nodes/a/labels", "", &w));
    assert!(read(&a, "/eden/nodes/a/tasks/", "/eden/nodes/a/tasks0", &w));
    // Another node's labels one at a time (to seal files for the nodes readers match), nothing
    // else of it, and no range over nodes.
    assert!(read(&a, "/eden/nodes/b/labels", "", &w));
    assert!(!read(&a, "/eden/nodes/b/facts", "", &w));
    assert!(!read(&a, "/eden/nodes/b/", "/eden/nodes/b0", &w));
    assert!(!read(&a, "/eden/nodes/", "/eden/nodes0", &w));
    for k in ["facts", "owner", "alive"] {
        assert!(write(&a, &format!("/eden/nodes/a/{k}"), "", &w), "{k}");
        assert!(!write(&a, &format!("/eden/nodes/b/{k}"), "", &w), "{k}");
    }
    // Never its labels, its assignments, tasks, rules, hooks or events.
    assert!(!write(&a, "/eden/nodes/a/labels", "", &w));
    assert!(!write(&a, "/eden/nodes/a/tasks/t9", "", &w));
    assert!(!write(&a, "/eden/tasks/t9", "", &w));
    assert!(!write(&a, "/eden/reactors/r", "", &w));
    assert!(!write(&a, "/eden/hooks/h", "", &w));
    assert!(!write(&a, "/eden/events/1-2", "", &w));
    assert!(!read(&a, "plain", "", &w));
    assert!(!read(&a, "\0", "\0", &w));
}

#[test]
fn a_node_works_on_the_tasks_assigned_to_it_only() {
    let w = story();
    let a = node("a");
    assert!(read(&a, "/eden/tasks/t1", "", &w));
    assert!(read(&a, "/eden/runs/t1/cancel", "", &w));
    assert!(write(&a, "/eden/runs/t1/claims/a", "", &w));
    assert!(write(&a, "/eden/runs/t1/results/a", "", &w));
    assert!(!write(&a, "/eden/runs/t1/results/b", "", &w));
    assert!(!write(&a, "/eden/runs/t1/cancel", "", &w));
    assert!(!read(&a, "/eden/runs/t1/", "/eden/runs/t10", &w));
    assert!(!read(&a, "/eden/tasks/t2", "", &w));
    assert!(!write(&a, "/eden/runs/t2/results/a", "", &w));
    let b = node("b");
    assert!(!read(&b, "/eden/tasks/t1", "", &w));
    assert!(!write(&b, "/eden/runs/t1/results/b", "", &w));
}

#[test]
fn variables_are_read_by_their_owner_and_their_readers_as_labelled_now() {
    let mut w = story();
    let (a, b, c) = (node("a"), node("b"), node("c"));
    assert!(read(&a, "/eden/vars/a/", "/eden/vars/a0", &w));
    assert!(write(&a, "/eden/vars/a/token", "", &w));
    assert!(write(&a, "/eden/readers/vars/a/token", "", &w));
    assert!(!write(&b, "/eden/vars/a/token", "", &w));
    assert!(!write(&b, "/eden/readers/vars/a/token", "", &w));
    assert!(read(&b, "/eden/vars/a/token", "", &w));
    assert!(!read(&c, "/eden/vars/a/token", "", &w));
    // Not the range around it, even when every key in it is readable today.
    assert!(!read(&b, "/eden/vars/a/", "/eden/vars/a0", &w));
    assert!(!read(&b, "/eden/vars/a/token", "/eden/vars/a/tokeo", &w));
    // One key spelled as a range is still one key.
    assert!(read(&b, "/eden/vars/a/token", "/eden/vars/a/token\0", &w));
    // Labels change what it may read at once.
    w.labels.insert(
        "c".into(),
        BTreeMap::from([("role".into(), "master".into())]),
    );
    assert!(read(&c, "/eden/vars/a/token", "", &w));
    w.labels.remove("c");
    assert!(!read(&c, "/eden/vars/a/token", "", &w));
    // No readers: the owner and admins only; cluster variables: admins only.
    assert!(!read(&b, "/eden/vars/a/other", "", &w));
    assert!(!read(&a, "/eden/vars/cluster/x", "", &w));
    assert!(read(
        &Caller::Root("admin:ops".into()),
        "/eden/vars/cluster/x",
        "",
        &w
    ));
}

#[test]
fn a_txn_is_checked_compare_by_compare_and_op_by_op_nested_included() {
    let w = story();
    let a = node("a");
    let put = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            ..Default::default()
        })),
    };
    let txn =
        |compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            compare,
            success,
            failure,
        };
    let ok = txn(vec![], vec![put("/eden/nodes/a/facts")], vec![]);
    assert!(auth::check_txn(&a, &ok, &w).is_ok());
    // The forbidden write hides in the failure branch of a nested txn.
    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(txn(
            vec![],
            vec![],
            vec![put("/eden/nodes/a/labels")],
        ))),
    };
    let bad = txn(vec![], vec![put("/eden/nodes/a/facts")], vec![nested]);
    assert!(auth::check_txn(&a, &bad, &w).is_err());
    // A compare reads.
    let peek = txn(
        vec![Compare {
            key: "/eden/vars/b/secret".into(),
            ..Default::default()
        }],
        vec![],
        vec![],
    );
    assert!(auth::check_txn(&a, &peek, &w).is_err());
}

#[test]
fn nodes_call_no_admin_rpc() {
    let a = node("a");
    for rpc in [Rpc::Status, Rpc::MemberList, Rpc::LeaseGrant, Rpc::RenewOwn] {
        assert!(auth::check_rpc(&a, rpc).is_ok(), "{rpc:?}");
    }
    for rpc in [Rpc::Admin, Rpc::LeaseList] {
        assert!(auth::check_rpc(&a, rpc).is_err(), "{rpc:?}");
        assert!(auth::check_rpc(&Caller::Root("admin:x".into()), rpc).is_ok());
    }
    let w = story();
    let mine = vec![b"/eden/nodes/a/alive".to_vec()];
    let theirs = vec![b"/eden/nodes/b/alive".to_vec()];
    assert!(auth::check_lease(&a, &mine, &w).is_ok());
    assert!(auth::check_lease(&a, &theirs, &w).is_err());
}

#[test]
fn an_etcd_user_gets_what_its_roles_grant_whole() {
    let mut w = World::default();
    let app = Perm {
        kind: 2,
        key: b"/app/".to_vec(),
        range_end: b"/app0".to_vec(),
    };
    let cfg = Perm {
        kind: 0,
        key: b"/cfg".to_vec(),
        range_end: vec![],
    };
    w.users.insert("alice".into(), (false, vec![app, cfg]));
    let alice = Caller::User("alice".into());
    assert!(write(&alice, "/app/x", "", &w));
    assert!(read(&alice, "/app/", "/app0", &w));
    assert!(read(&alice, "/cfg", "", &w));
    assert!(!write(&alice, "/cfg", "", &w));
    assert!(!read(&alice, "/app/", "\0", &w));
    assert!(!read(&alice, "/", "/app0", &w));
    assert!(!read(&alice, "/eden/vars/a/token", "", &w));
    assert!(auth::check_rpc(&alice, Rpc::Admin).is_err());
    assert!(!read(&Caller::User("bob".into()), "/app/x", "", &w));
}

#[test]
fn a_read_once_file_is_read_by_its_node_once_by_a_consuming_txn_only() {
    let mut w = World::default();
    w.file_readers
        .insert("a/tok".into(), Readers::parse(&["node:b".into()]).unwrap());
    w.once.insert("a/tok".into(), "b".into());
    let key = b"/eden/files/data/a/tok".to_vec();
    let consume = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    },
                )),
            },
        ],
        ..Default::default()
    };
    assert!(auth::check_txn(&node("b"), &consume, &w).is_ok());
    assert!(auth::check_txn(&node("c"), &consume, &w).is_err());
    // A plain read would leave it there: refused, even to b.
    assert!(!read(&node("b"), "/eden/files/data/a/tok", "", &w));
    // Something more in the txn: refused.
    let mut more = consume.clone();
    more.failure.push(more.success[0].clone());
    assert!(auth::check_txn(&node("b"), &more, &w).is_err());
    // Once read, gone: refused (and so audited).
    w.gone.insert(key);
    assert!(auth::check_txn(&node("b"), &consume, &w).is_err());
}

// ---- the fuzz ----

/// The reference: may node `n` read (or write) the single key `key`? Written from the rules'
/// table by splitting the key into segments, not by the authorizer's prefix logic.
fn reference(n: &str, key: &[u8], write: bool, w: &World) -> bool {
    let Ok(key) = std::str::from_utf8(key) else {
        return false;
    };
    let Some(rest) = key.strip_prefix("/eden/") else {
        return false;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    match segs.as_slice() {
        ["nodes", x, leaf @ ..] if *x == n && !leaf.is_empty() => {
            !write || matches!(leaf, ["facts"] | ["owner"] | ["alive"] | ["files", _, ..])
        }
        ["vars", x, _, ..] if *x == n => true,
        ["nodes", x, "labels"] => !write && valid(x),
        ["files", "data" | "meta", x, _, ..] if *x == n => true,
        ["readers", "files", x, _, ..] if *x == n => true,
        ["sealkeys", x] if *x == n => true,
        ["files", "meta" | "sync", _, ..] | ["readers", "files", _, ..] | ["sealkeys", _, ..] => {
            !write
        }
        ["files", "data", file @ ..] if !file.is_empty() => {
            !write
                && w.file_once(&file.join("/")).is_none()
                && w.file_readers(&file.join("/"))
                    .is_some_and(|r| r.allows(n, &w.labels(n)))
        }
        ["readers", "vars", x, _, ..] if *x == n => true,
        ["tasks", t] => !write && valid(t) && w.assigned(n, t),
        ["runs", t, "cancel"] => !write && valid(t) && w.assigned(n, t),
        ["runs", t, "claims" | "results", x] => *x == n && valid(t) && w.assigned(n, t),
        ["vars", s, v] => {
            !write
                && valid(s)
                && valid(v)
                && w.var_readers(s, v)
                    .is_some_and(|r| r.allows(n, &w.labels(n)))
        }
        _ => false,
    }
}

const NODES: [&str; 4] = ["a", "b", "a0", "cluster"];
const SEGMENTS: [&str; 19] = [
    "nodes", "vars", "readers", "tasks", "runs", "a", "b", "a0", "t1", "cancel", "claims",
    "results", "facts", "labels", "files", "data", "meta", "sync", "sealkeys",
];

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

/// A key shaped like eden's (most of the time), cut or extended at random.
fn random_key(rng: &mut StdRng) -> Vec<u8> {
    let n = pick(rng, &NODES);
    let m = pick(rng, &NODES);
    let t = pick(rng, &["t1", "a", "cancel"]);
    let v = pick(rng, &SEGMENTS);
    let mut k = match rng.gen_range(0..15) {
        0 => format!(
            "/eden/nodes/{n}/{}",
            pick(rng, &["facts", "owner", "alive", "labels"])
        ),
        1 => format!("/eden/nodes/{n}/tasks/{t}"),
        2 => format!("/eden/vars/{n}/{v}"),
        3 => format!("/eden/readers/vars/{n}/{v}"),
        4 => format!("/eden/tasks/{t}"),
        5 => format!("/eden/runs/{t}/cancel"),
        6 => format!("/eden/runs/{t}/{}/{m}", pick(rng, &["claims", "results"])),
        7 => format!(
            "/eden/{}/{n}/",
            pick(rng, &["nodes", "vars", "readers/vars", "runs"])
        ),
        8 => format!("/eden/{}", pick(rng, &SEGMENTS)),
        9 => String::new(),
        10 => format!(
            "/eden/files/{}/{n}/{v}",
            pick(rng, &["data", "meta", "sync"])
        ),
        11 => format!("/eden/readers/files/{n}/{v}"),
        12 => format!("/eden/sealkeys/{n}"),
        _ => {
            let mut k = "/eden/".to_string();
            for i in 0..rng.gen_range(0..5) {
                if i > 0 {
                    k.push('/');
                }
                k.push_str(pick(rng, &SEGMENTS));
            }
            k
        }
    }
    .into_bytes();
    match rng.gen_range(0..10) {
        0 => k.push(b'/'),
        1 => k.push(0),
        2 => k.push(b'0'),
        3 => {
            let cut = rng.gen_range(0..=k.len());
            k.truncate(cut);
        }
        4 => k.extend_from_slice(b"/x"),
        _ => {}
    }
    k
}

fn random_end(rng: &mut StdRng, key: &[u8]) -> Vec<u8> {
    match rng.gen_range(0..8) {
        0 => Vec::new(),
        1 => vec![0],
        2 | 5 => eden_proto::keys::prefix_end(key),
        3 => {
            let mut e = key.to_vec();
            e.push(0);
            e
        }
        _ => random_key(rng),
    }
}

/// The reference for an etcd user: some permission of its roles holds the key and grants the kind
/// of access.
fn user_reference(u: &str, key: &[u8], write: bool, w: &World) -> bool {
    let (root, perms) = w.user_perms(u);
    root || perms.iter().any(|p| {
        p.grants(write)
            && if p.range_end.is_empty() {
                key == p.key.as_slice()
            } else {
                key >= p.key.as_slice() && (p.range_end == [0] || key < p.range_end.as_slice())
            }
    })
}

fn random_world(rng: &mut StdRng) -> World {
    let mut w = World::default();
    for n in NODES {
        let perms = (0..rng.gen_range(0..3))
            .map(|_| {
                let key = random_key(rng);
                Perm {
                    kind: rng.gen_range(0..3),
                    range_end: random_end(rng, &key),
                    key,
                }
            })
            .collect();
        w.users.insert(n.into(), (false, perms));
    }
    for n in NODES {
        if rng.gen_bool(0.5) {
            w.labels
                .insert(n.into(), BTreeMap::from([("role".into(), "master".into())]));
        }
        for t in ["t1", "a", "cancel"] {
            if rng.gen_bool(0.5) {
                w.assigned.insert((n.into(), t.into()));
            }
        }
        for v in SEGMENTS {
            if rng.gen_bool(0.2) {
                let items = match rng.gen_range(0..3) {
                    0 => vec!["role=master".to_string()],
                    1 => vec![format!("node:{}", NODES[rng.gen_range(0..3)])],
                    _ => vec!["!role".to_string()],
                };
                w.file_readers
                    .insert(format!("{n}/{v}"), Readers::parse(&items).unwrap());
                if rng.gen_bool(0.3) {
                    w.once
                        .insert(format!("{n}/{v}"), NODES[rng.gen_range(0..3)].into());
                }
            }
            if rng.gen_bool(0.2) {
                let items = match rng.gen_range(0..3) {
                    0 => vec!["role=master".to_string()],
                    1 => vec![format!("node:{}", NODES[rng.gen_range(0..3)])],
                    _ => vec!["!role".to_string()],
                };
                w.readers
                    .insert((n.into(), v.into()), Readers::parse(&items).unwrap());
            }
        }
    }
    w
}

/// Every key the fuzz knows of: what a range could return.
fn universe() -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(0);
    let mut keys: BTreeSet<Vec<u8>> = (0..200_000).map(|_| random_key(&mut rng)).collect();
    // Every three-segment key and its neighbours, exhaustively.
    for a in SEGMENTS {
        for b in SEGMENTS {
            for c in SEGMENTS {
                let k = format!("/eden/{a}/{b}/{c}");
                keys.insert(k.clone().into_bytes());
                keys.insert(format!("{k}/").into_bytes());
                keys.insert(format!("{k}/x").into_bytes());
                keys.insert(format!("/eden/{a}/{b}").into_bytes());
            }
        }
    }
    keys.into_iter().collect()
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        return k == key;
    }
    k >= key && (end == [0] || k < end)
}

#[test]
fn fuzz_the_authorizer_never_allows_what_the_reference_denies() {
    let seed: u64 = std::env::var("EDEN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("EDEN_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    println!("EDEN_FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let universe = universe();
    let (mut allowed, mut denied) = (0, 0);
    for case in 0..cases {
        let w = random_world(&mut rng);
        let n = NODES[rng.gen_range(0..3)];
        // A quarter of the cases are an etcd user's requests.
        let user = rng.gen_bool(0.25);
        let caller = if user {
            Caller::User(n.into())
        } else {
            node(n)
        };
        let key = random_key(&mut rng);
        let end = random_end(&mut rng, &key);
        let write = rng.gen_bool(0.5);
        let got = if write {
            auth::check_write(&caller, &key, &end, &w)
        } else {
            auth::check_read(&caller, &key, &end, &w)
        };
        if got.is_err() {
            denied += 1;
            continue;
        }
        allowed += 1;
        let single = end.is_empty() || end == [key.as_slice(), &[0]].concat();
        let reference = |n: &str, k: &[u8], write: bool, w: &World| {
            if user {
                user_reference(n, k, write, w)
            } else {
                reference(n, k, write, w)
            }
        };
        if single {
            assert!(
                reference(n, &key, write, &w),
                "seed {seed} case {case}: {caller} allowed to {} {:?}\n{w:?}",
                if write { "write" } else { "read" },
                String::from_utf8_lossy(&key)
            );
            continue;
        }
        // A range: every key it could return must be allowed by the reference.
        let lo = universe.partition_point(|k| k.as_slice() < key.as_slice());
        for k in universe[lo..]
            .iter()
            .take_while(|k| in_range(k, &key, &end))
        {
            assert!(
                reference(n, k, write, &w),
                "seed {seed} case {case}: {caller} allowed to {} [{:?}, {:?}), which holds {:?}",
                if write { "write" } else { "read" },
                String::from_utf8_lossy(&key),
                String::from_utf8_lossy(&end),
                String::from_utf8_lossy(k)
            );
        }
    }
    // Random ops nested in txns: allowed only if every op and compare is.
    for _ in 0..cases / 10 {
        let w = random_world(&mut rng);
        let n = NODES[rng.gen_range(0..3)];
        let caller = node(n);
        let txn = random_txn(&mut rng, 0);
        if auth::check_txn(&caller, &txn, &w).is_ok() {
            every_op_allowed(n, &txn, &w, seed);
        }
    }
    println!("{allowed} allowed, {denied} denied");
    assert!(
        allowed > 0 && denied > 0,
        "the fuzz exercised one side only"
    );
}

fn random_txn(rng: &mut StdRng, depth: usize) -> TxnRequest {
    let op = |rng: &mut StdRng| -> RequestOp {
        let key = random_key(rng);
        let request = match rng.gen_range(0..if depth < 2 { 4 } else { 3 }) {
            0 => request_op::Request::RequestRange(RangeRequest {
                range_end: random_end(rng, &key),
                key,
                ..Default::default()
            }),
            1 => request_op::Request::RequestPut(PutRequest {
                key,
                ..Default::default()
            }),
            2 => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                range_end: random_end(rng, &key),
                key,
                ..Default::default()
            }),
            _ => request_op::Request::RequestTxn(random_txn(rng, depth + 1)),
        };
        RequestOp {
            request: Some(request),
        }
    };
    let ops = |rng: &mut StdRng| (0..rng.gen_range(0..3)).map(|_| op(rng)).collect();
    TxnRequest {
        compare: (0..rng.gen_range(0..2))
            .map(|_| {
                let key = random_key(rng);
                Compare {
                    range_end: random_end(rng, &key),
                    key,
                    ..Default::default()
                }
            })
            .collect(),
        success: ops(rng),
        failure: ops(rng),
    }
}

fn every_op_allowed(n: &str, txn: &TxnRequest, w: &World, seed: u64) {
    let single = |k: &[u8], e: &[u8], write: bool| {
        let one = e.is_empty() || e == [k, &[0]].concat();
        assert!(
            !one || reference(n, k, write, w),
            "seed {seed}: a txn let node {n} touch {:?}",
            String::from_utf8_lossy(k)
        );
    };
    for c in &txn.compare {
        single(&c.key, &c.range_end, false);
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => single(&r.key, &r.range_end, false),
            Some(request_op::Request::RequestPut(p)) => single(&p.key, &[], true),
            Some(request_op::Request::RequestDeleteRange(d)) => single(&d.key, &d.range_end, true),
            Some(request_op::Request::RequestTxn(t)) => every_op_allowed(n, t, w, seed),
            None => {}
        }
    }
}
