//! Golden-script tests of MVCC semantics: revisions, ranges and their options, txn compares, leases,
//! compaction and the event history watchers replay. Scripts live in tests/scripts/; regenerate the
//! expected output with `UPDATE_GOLDENFILES=1 cargo test -p eden-store --test golden` and review the
//! diff.
//!
//! Commands (each write prints the revision and events it produced):
//!   put KEY VALUE [lease=ID] [ignore_value] [ignore_lease]
//!   del KEY [END] [prefix]
//!   get KEY [END] [prefix] [from_key] [rev=N] [limit=N] [sort=key|version|create|mod|value]
//!       [order=asc|desc] [keys_only] [count_only] [min_mod=N] [max_mod=N] [min_create=N] [max_create=N]
//!   txn [if="KEY TARGET OP VALUE"]... [then="put K V"|"get K [END]"|"del K [END]"]... [else=...]...
//!   compact REV            physical        lease_grant ID TTL     lease_revoke ID
//!   events FROM [TO]       (replayed from storage, with prev_kv)
//!   dump                   (every stored version: what compaction left)

use std::error::Error;
use std::fmt::Write as _;
use std::sync::Arc;

use eden_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use eden_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use eden_proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseOp, TxnRequest,
};
use eden_proto::mvccpb::{event::EventType, KeyValue};
use eden_store::engine::Engine;
use eden_store::keys::{dec_kv_key, prefix_end, CF_KV};
use eden_store::mvcc::{ApplyBatch, Mvcc, MvccError, Record, RevEvents};

struct Runner {
    _dir: tempfile::TempDir,
    mvcc: Arc<Mvcc>,
}

impl Runner {
    fn new() -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path()).unwrap());
        Runner {
            mvcc: Arc::new(Mvcc::open(engine).unwrap()),
            _dir: dir,
        }
    }

    /// Runs `f` in one batch and commits it, as the state machine does for a run of entries.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut ApplyBatch<'_>) -> Result<T, MvccError>,
    ) -> Result<(T, Vec<RevEvents>), Box<dyn Error>> {
        let mut b = self.mvcc.batch();
        let out = f(&mut b)?;
        let (batch, events, compacted, rev) = b.finish();
        self.mvcc.engine.write_sync(batch)?;
        self.mvcc.committed(rev, compacted);
        Ok((out, events))
    }
}

fn kv(kv: &KeyValue) -> String {
    let mut s = format!(
        "{}={} (c={} m={} v={}",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version
    );
    if kv.lease != 0 {
        write!(s, " lease={}", kv.lease).unwrap();
    }
    s + ")"
}

fn events(out: &mut String, revs: &[RevEvents]) {
    for r in revs {
        for e in &r.events {
            let kind = if e.r#type == EventType::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            let k = e.kv.clone().unwrap_or_default();
            let body = if kind == "PUT" {
                kv(&k)
            } else {
                format!("{} (m={})", String::from_utf8_lossy(&k.key), k.mod_revision)
            };
            write!(out, "rev {}: {kind} {body}", r.rev).unwrap();
            if let Some(p) = &e.prev_kv {
                write!(out, " prev={}", kv(p)).unwrap();
            }
            out.push('\n');
        }
    }
}

fn range_end(args: &[String], flags: &[String], key: &[u8]) -> Vec<u8> {
    if flags.iter().any(|f| f == "prefix") {
        prefix_end(key)
    } else if flags.iter().any(|f| f == "from_key") {
        vec![0]
    } else {
        args.get(1)
            .map(|e| e.as_bytes().to_vec())
            .unwrap_or_default()
    }
}

/// Splits a command's arguments into positional values, bare flags, and key=value options.
fn split(cmd: &goldenscript::Command) -> (Vec<String>, Vec<String>, Vec<(String, String)>) {
    let mut pos = Vec::new();
    let mut flags = Vec::new();
    let mut opts = Vec::new();
    for a in &cmd.args {
        match a {
            goldenscript::Argument::KeyValue(k, v) => opts.push((k.clone(), v.clone())),
            goldenscript::Argument::Positional(v)
                if [
                    "prefix",
                    "from_key",
                    "keys_only",
                    "count_only",
                    "ignore_value",
                    "ignore_lease",
                ]
                .contains(&v.as_str()) =>
            {
                flags.push(v.clone())
            }
            goldenscript::Argument::Positional(v) => pos.push(v.clone()),
            other => panic!("unsupported argument {other}"),
        }
    }
    (pos, flags, opts)
}

fn opt<T: std::str::FromStr>(opts: &[(String, String)], name: &str) -> Option<T> {
    opts.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn range_request(pos: &[String], flags: &[String], opts: &[(String, String)]) -> RangeRequest {
    let key = pos[0].as_bytes().to_vec();
    let sort_target = match opt::<String>(opts, "sort").as_deref() {
        Some("version") => SortTarget::Version,
        Some("create") => SortTarget::Create,
        Some("mod") => SortTarget::Mod,
        Some("value") => SortTarget::Value,
        _ => SortTarget::Key,
    };
    let sort_order = match opt::<String>(opts, "order").as_deref() {
        Some("asc") => SortOrder::Ascend,
        Some("desc") => SortOrder::Descend,
        _ => SortOrder::None,
    };
    RangeRequest {
        range_end: range_end(pos, flags, &key),
        key,
        revision: opt(opts, "rev").unwrap_or(0),
        limit: opt(opts, "limit").unwrap_or(0),
        sort_order: sort_order as i32,
        sort_target: sort_target as i32,
        keys_only: flags.iter().any(|f| f == "keys_only"),
        count_only: flags.iter().any(|f| f == "count_only"),
        min_mod_revision: opt(opts, "min_mod").unwrap_or(0),
        max_mod_revision: opt(opts, "max_mod").unwrap_or(0),
        min_create_revision: opt(opts, "min_create").unwrap_or(0),
        max_create_revision: opt(opts, "max_create").unwrap_or(0),
        serializable: true,
    }
}

fn parse_op(s: &str) -> RequestOp {
    let words: Vec<String> = s.split_whitespace().map(String::from).collect();
    let rest = &words[1..];
    let request = match words[0].as_str() {
        "put" => request_op::Request::RequestPut(PutRequest {
            key: rest[0].clone().into(),
            value: rest[1].clone().into(),
            lease: rest
                .get(2)
                .and_then(|l| l.strip_prefix("lease="))
                .map_or(0, |l| l.parse().unwrap()),
            ..Default::default()
        }),
        "get" => request_op::Request::RequestRange(RangeRequest {
            key: rest[0].clone().into(),
            range_end: rest.get(1).cloned().unwrap_or_default().into(),
            ..Default::default()
        }),
        "del" => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: rest[0].clone().into(),
            range_end: rest.get(1).cloned().unwrap_or_default().into(),
            prev_kv: true,
        }),
        other => panic!("unknown txn op {other}"),
    };
    RequestOp {
        request: Some(request),
    }
}

fn parse_compare(s: &str) -> Compare {
    let w: Vec<&str> = s.split_whitespace().collect();
    let [key, target, op, value] = w.as_slice() else {
        panic!("compare is KEY TARGET OP VALUE: {s}")
    };
    let result = match *op {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        o => panic!("bad op {o}"),
    };
    let n = || value.parse::<i64>().unwrap();
    let (target, union) = match *target {
        "value" => (
            CompareTarget::Value,
            TargetUnion::Value(value.as_bytes().to_vec()),
        ),
        "version" => (CompareTarget::Version, TargetUnion::Version(n())),
        "create" => (CompareTarget::Create, TargetUnion::CreateRevision(n())),
        "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(n())),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(n())),
        t => panic!("bad target {t}"),
    };
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(union),
        range_end: vec![],
    }
}

fn response(out: &mut String, r: &ResponseOp, depth: usize) {
    let pad = "  ".repeat(depth);
    match &r.response {
        Some(response_op::Response::ResponsePut(_)) => writeln!(out, "{pad}put ok").unwrap(),
        Some(response_op::Response::ResponseDeleteRange(d)) => {
            writeln!(out, "{pad}deleted {}", d.deleted).unwrap()
        }
        Some(response_op::Response::ResponseRange(g)) => {
            writeln!(out, "{pad}get count={}", g.count).unwrap();
            for k in &g.kvs {
                writeln!(out, "{pad}  {}", kv(k)).unwrap();
            }
        }
        Some(response_op::Response::ResponseTxn(t)) => {
            writeln!(out, "{pad}txn succeeded={}", t.succeeded).unwrap();
            for r in &t.responses {
                response(out, r, depth + 1);
            }
        }
        None => {}
    }
}

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(
        &mut self,
        cmd: &goldenscript::Command,
        _ctx: &goldenscript::Context,
    ) -> Result<String, Box<dyn Error>> {
        let mut out = String::new();
        let (pos, flags, opts) = split(cmd);
        match cmd.name.as_str() {
            "put" => {
                let req = PutRequest {
                    key: pos[0].clone().into(),
                    value: pos.get(1).cloned().unwrap_or_default().into(),
                    lease: opt(&opts, "lease").unwrap_or(0),
                    ignore_value: flags.iter().any(|f| f == "ignore_value"),
                    ignore_lease: flags.iter().any(|f| f == "ignore_lease"),
                    prev_kv: false,
                };
                let op = RequestOp {
                    request: Some(request_op::Request::RequestPut(req)),
                };
                let (_, evs) = self.write(|b| b.apply_op(&op))?;
                events(&mut out, &evs);
            }
            "del" => {
                let key = pos[0].as_bytes().to_vec();
                let req = DeleteRangeRequest {
                    range_end: range_end(&pos, &flags, &key),
                    key,
                    prev_kv: true,
                };
                let op = RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(req)),
                };
                let (r, evs) = self.write(|b| b.apply_op(&op))?;
                response(&mut out, &r, 0);
                events(&mut out, &evs);
            }
            "get" => {
                let r = self.mvcc.range(&range_request(&pos, &flags, &opts))?;
                writeln!(
                    out,
                    "count={} more={} rev={}",
                    r.count,
                    r.more,
                    r.header.unwrap_or_default().revision
                )?;
                for k in &r.kvs {
                    writeln!(out, "{}", kv(k))?;
                }
            }
            "txn" => {
                let t = TxnRequest {
                    compare: opts
                        .iter()
                        .filter(|(k, _)| k == "if")
                        .map(|(_, v)| parse_compare(v))
                        .collect(),
                    success: opts
                        .iter()
                        .filter(|(k, _)| k == "then")
                        .map(|(_, v)| parse_op(v))
                        .collect(),
                    failure: opts
                        .iter()
                        .filter(|(k, _)| k == "else")
                        .map(|(_, v)| parse_op(v))
                        .collect(),
                };
                let op = RequestOp {
                    request: Some(request_op::Request::RequestTxn(t)),
                };
                let (r, evs) = self.write(|b| b.apply_op(&op))?;
                response(&mut out, &r, 0);
                events(&mut out, &evs);
            }
            "compact" => {
                let rev: i64 = pos[0].parse()?;
                self.write(|b| b.compact(rev).map_err(MvccError::from))?;
                writeln!(out, "compacted at {rev}")?;
            }
            "physical" => {
                self.mvcc.physical_compact(self.mvcc.compact_rev())?;
            }
            "lease_grant" => {
                let (id, ttl): (i64, i64) = (pos[0].parse()?, pos[1].parse()?);
                self.write(|b| b.lease_grant(id, ttl))?;
                writeln!(out, "lease {id} granted")?;
            }
            "lease_revoke" => {
                let id: i64 = pos[0].parse()?;
                let (_, evs) = self.write(|b| b.lease_revoke(id))?;
                writeln!(out, "lease {id} revoked")?;
                events(&mut out, &evs);
            }
            "events" => {
                let from: i64 = pos[0].parse()?;
                let to: i64 = pos
                    .get(1)
                    .map(|s| s.parse())
                    .transpose()?
                    .unwrap_or(self.mvcc.current_rev());
                match self.mvcc.events_between(from, to, 1000)? {
                    Some(revs) => events(&mut out, &revs),
                    None => writeln!(
                        out,
                        "compacted (compact revision {})",
                        self.mvcc.compact_rev()
                    )?,
                }
            }
            "dump" => {
                let e = &self.mvcc.engine;
                let mut it = e.scan(CF_KV);
                it.seek_to_first();
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    let (key, rev) = dec_kv_key(k).unwrap();
                    let rec: Record = bincode::deserialize(v)?;
                    let body = if rec.tombstone {
                        "tombstone".to_string()
                    } else {
                        String::from_utf8_lossy(&rec.value).into_owned()
                    };
                    writeln!(out, "{}@{rev} {body}", String::from_utf8_lossy(&key))?;
                    it.next();
                }
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        Ok(out)
    }
}

fn run(name: &str) {
    goldenscript::run(&mut Runner::new(), format!("tests/scripts/{name}")).expect("goldenscript");
}

#[test]
fn revisions() {
    run("revisions");
}

#[test]
fn ranges() {
    run("ranges");
}

#[test]
fn txn() {
    run("txn");
}

#[test]
fn leases() {
    run("leases");
}

#[test]
fn compaction_and_history() {
    run("compaction");
}

/// Revoking a lease deletes its key index entries one by one, never with a range deletion: every
/// range tombstone in a memtable is fragmented again by each new iterator on it, so a storm of
/// revocations (10,000 agents going away) slowed every later read of the lease index. The
/// revoked leases' keys are gone, the others' stay.
#[test]
fn lease_revocations_leave_no_range_tombstones() {
    use eden_store::keys::CF_LEASE_KEYS;
    let r = Runner::new();
    let put = |key: String, lease: i64| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })),
    };
    for id in 1..=50 {
        r.write(|b| {
            b.lease_grant(id, 600)?;
            b.apply_op(&put(format!("k{id}a"), id))?;
            b.apply_op(&put(format!("k{id}b"), id))
        })
        .unwrap();
    }
    for id in 1..=40 {
        r.write(|b| b.lease_revoke(id)).unwrap();
    }
    // RocksDB counts range deletions in a table's properties once the memtable is flushed.
    let e = &r.mvcc.engine;
    e.db.flush_cf(e.cf(CF_LEASE_KEYS)).unwrap();
    let props =
        e.db.property_value_cf(e.cf(CF_LEASE_KEYS), "rocksdb.aggregated-table-properties")
            .unwrap()
            .unwrap_or_default();
    assert!(
        props.contains("# range deletions=0;"),
        "the lease index has range deletions: {props}"
    );
    for id in 1..=50 {
        let keys = r.mvcc.lease_keys(id).unwrap();
        let want = if id <= 40 { 0 } else { 2 };
        assert_eq!(keys.len(), want, "lease {id}: {keys:?}");
    }
}

/// A range over many keys steps through each key's versions in one forward pass (seeking only
/// past a key with many versions or ones newer than the revision read): at every revision of a
/// random history (keys written up to 12 times, deleted and written again, some in one batch,
/// most of it flushed to tables, four of them), every range answers what each of its keys' own
/// lookup does.
#[test]
fn ranges_over_many_keys_agree_with_each_keys_own_lookup() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let r = Runner::new();
    let keys: Vec<String> = (0..24).map(|i| format!("k{i:02}")).collect();
    let op = |rng: &mut rand::rngs::StdRng| {
        let key = keys[rng.gen_range(0..keys.len())].clone().into_bytes();
        if rng.gen_bool(0.2) {
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key,
                ..Default::default()
            })
        } else {
            let value = format!("v{}", rng.gen_range(0..1000)).into_bytes();
            request_op::Request::RequestPut(PutRequest {
                key,
                value,
                ..Default::default()
            })
        }
    };
    for round in 0..120 {
        let ops: Vec<RequestOp> = (0..rng.gen_range(1..4))
            .map(|_| RequestOp {
                request: Some(op(&mut rng)),
            })
            .collect();
        r.write(|b| {
            for o in &ops {
                b.apply_op(o)?;
            }
            Ok(())
        })
        .unwrap();
        // Tables of their own for parts of the history: a key's versions spread over several,
        // each with its bloom filter (a scan that consulted them would miss keys).
        if round % 30 == 29 {
            let e = &r.mvcc.engine;
            e.db.flush_cf(e.cf(CF_KV)).unwrap();
        }
    }
    let get = |key: &str, end: &[u8], rev: i64| {
        r.mvcc
            .range(&RangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: end.to_vec(),
                revision: rev,
                ..Default::default()
            })
            .unwrap()
            .kvs
    };
    let current = r.mvcc.current_rev();
    for rev in 1..=current {
        let one_by_one: Vec<KeyValue> = keys.iter().flat_map(|k| get(k, b"", rev)).collect();
        let all = get("k", &prefix_end(b"k"), rev);
        assert_eq!(all, one_by_one, "seed {seed}, revision {rev}");
        let part: Vec<KeyValue> = one_by_one
            .iter()
            .filter(|kv| kv.key.as_slice() >= &b"k05"[..] && kv.key.as_slice() < &b"k17"[..])
            .cloned()
            .collect();
        assert_eq!(get("k05", b"k17", rev), part, "seed {seed}, revision {rev}");
    }
}

/// Nested txns decide their branches on the store as it was before the outer txn (as etcd's
/// txn path), each once, in the order they come: a put the outer txn makes first does not change
/// what a nested compare sees, and two nested txns side by side each take their own branch.
#[test]
fn nested_txns_decide_on_the_store_before_the_outer_txn() {
    let r = Runner::new();
    let put = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.as_bytes().to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        })),
    };
    let version_is = |k: &str, v: i64| Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: k.as_bytes().to_vec(),
        target_union: Some(TargetUnion::Version(v)),
        range_end: Vec::new(),
    };
    let txn = |compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>| RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare,
            success,
            failure,
        })),
    };
    // x is absent before the txn: the nested compare holds although the outer txn put x first.
    r.write(|b| {
        b.apply_op(&txn(
            vec![],
            vec![
                put("x"),
                txn(vec![version_is("x", 0)], vec![put("y")], vec![put("z")]),
            ],
            vec![],
        ))
    })
    .unwrap();
    // Now x and y exist: the outer compare fails; of its two nested txns the first fails (x
    // has version 1) and the second holds (y has version 1).
    r.write(|b| {
        b.apply_op(&txn(
            vec![version_is("x", 0)],
            vec![put("never")],
            vec![
                txn(vec![version_is("x", 0)], vec![put("a1")], vec![put("a2")]),
                txn(vec![version_is("y", 1)], vec![put("b1")], vec![put("b2")]),
            ],
        ))
    })
    .unwrap();
    let keys: Vec<String> = r
        .mvcc
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap()
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(keys, ["a2", "b1", "x", "y"]);
}
