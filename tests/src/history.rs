//! History checkers for the robustness suite: they judge recorded client operations and watch
//! streams, not end states.
//!
//! - [`check_linearizable`]: a Wing–Gong search (with Lowe's memoisation of visited states) per key,
//!   against a register model (put, get, delete, compare-and-set). Keys are independent in this
//!   model, so each key's history is checked alone (P-compositionality). An operation that failed
//!   without an answer is indeterminate: it may have taken effect at any time after it was called,
//!   or never.
//! - [`check_watch`]: a watcher's events against the authoritative event history: every revision
//!   once, in order, no gap, the right prev_kv.
//!
//! Each violation comes back as a readable report; the suite prints it with the seed and the fault
//! schedule.

use std::collections::{BTreeMap, HashSet};

/// What a client did to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A put, with the lease it attaches the key to (0: none).
    Put { value: Vec<u8>, lease: i64 },
    /// A read and what it returned.
    Get { result: Option<Vec<u8>> },
    /// A delete and how many keys it deleted (0 or 1).
    Delete { deleted: i64 },
    /// Compare-and-set: put `value` if the current value is `expected`; `succeeded` is the answer.
    Cas {
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        succeeded: bool,
    },
    /// A lease revoked; the key's history holds it because the key may be attached to it.
    Revoke { lease: i64 },
}

/// One operation with its call and return times (any monotonic unit). `ret: None` means it failed
/// without an answer (indeterminate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub client: usize,
    pub key: Vec<u8>,
    pub op: Op,
    pub call: u64,
    pub ret: Option<u64>,
    /// The revision the answer's header named (0: no answer, or unknown).
    pub revision: i64,
}

/// A key's state in the model: its value and the lease it is attached to (0: none).
type State = Option<(Vec<u8>, i64)>;

fn value_of(state: &State) -> Option<&Vec<u8>> {
    state.as_ref().map(|(v, _)| v)
}

/// Applies `op` to the register `state`; None if the op's observed answer is impossible there.
fn step(state: &State, op: &Op, determinate: bool) -> Option<State> {
    match op {
        Op::Put { value, lease } => Some(Some((value.clone(), *lease))),
        Op::Get { result } => {
            (!determinate || result.as_ref() == value_of(state)).then(|| state.clone())
        }
        Op::Delete { deleted } => {
            if determinate && *deleted != i64::from(state.is_some()) {
                return None;
            }
            Some(None)
        }
        Op::Cas {
            expected,
            value,
            succeeded,
        } => {
            let holds = value_of(state) == expected.as_ref();
            if determinate && holds != *succeeded {
                return None;
            }
            Some(if holds {
                Some((value.clone(), 0))
            } else {
                state.clone()
            })
        }
        // Revoking a lease deletes the key if it is still attached to it (a later put without
        // the lease detached it).
        Op::Revoke { lease } => Some(match state {
            Some((_, l)) if l == lease => None,
            other => other.clone(),
        }),
    }
}

/// The most search states one key's check may visit before it gives up as inconclusive.
pub const MAX_STATES: usize = 2_000_000;

/// Checks one key's history; Err explains the first point where no linearization exists (or that
/// the search was too large to finish, which the suite reports as a failure too: a run must stay
/// small enough to be judged).
fn check_key(ops: &[Record]) -> Result<(), String> {
    // Indeterminate reads observe nothing and change nothing: drop them.
    let mut ops: Vec<&Record> = ops
        .iter()
        .filter(|r| r.ret.is_some() || !matches!(r.op, Op::Get { .. }))
        .collect();
    ops.sort_by_key(|r| r.call);
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    // Depth-first search over (linearized set, state).
    let mut stack: Vec<(Vec<u64>, State, usize)> = vec![(vec![0; words], None, 0)];
    let mut best = 0usize;
    while let Some((done, state, count)) = stack.pop() {
        best = best.max(count);
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // Every determinate op linearized: what is left may all be "never happened".
        if (0..n).all(|i| is_done(i) || ops[i].ret.is_none()) {
            return Ok(());
        }
        if !seen.insert((done.clone(), state.clone())) {
            continue;
        }
        if seen.len() > MAX_STATES {
            return Err(format!("inconclusive: the search passed {MAX_STATES} states ({n} operations); run shorter or with fewer faults"));
        }
        // The earliest return among the determinate ops still to place bounds who may go next.
        let horizon = (0..n)
            .filter(|i| !is_done(*i))
            .filter_map(|i| ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..n {
            if ops[i].call > horizon {
                break; // sorted by call time: no later op may go first
            }
            if is_done(i) {
                continue;
            }
            if let Some(next) = step(&state, &ops[i].op, ops[i].ret.is_some()) {
                let mut d = done.clone();
                d[i / 64] |= 1 << (i % 64);
                stack.push((d, next, count + 1));
            }
        }
    }
    let shown: Vec<String> = ops
        .iter()
        .map(|r| {
            format!(
                "  client {} [{}, {}] {:?}",
                r.client,
                r.call,
                r.ret.map_or("?".into(), |t| t.to_string()),
                r.op
            )
        })
        .collect();
    Err(format!(
        "not linearizable (the longest valid prefix places {best} of {n} operations):\n{}",
        shown.join("\n")
    ))
}

/// Checks a whole history, key by key. Err lists each key whose history is not linearizable.
pub fn check_linearizable(history: &[Record]) -> Result<(), String> {
    let mut by_key: BTreeMap<&[u8], Vec<Record>> = BTreeMap::new();
    for r in history {
        by_key.entry(&r.key).or_default().push(r.clone());
    }
    let mut errors = Vec::new();
    for (key, ops) in by_key {
        if let Err(e) = check_key(&ops) {
            errors.push(format!("key {:?}: {e}", String::from_utf8_lossy(key)));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// One event as a watcher saw it, or as the history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    pub revision: i64,
    pub key: Vec<u8>,
    pub delete: bool,
    pub value: Vec<u8>,
    pub prev_value: Option<Vec<u8>>,
}

/// Checks a watcher that started at `from` against the authoritative `history` (every event of the
/// watched range from `from` on, in order): the watcher must have seen a prefix of it exactly
/// (every revision once, in order, no gap, the same prev_kv). `complete` demands all of it.
pub fn check_watch(
    seen: &[SeenEvent],
    history: &[SeenEvent],
    complete: bool,
) -> Result<(), String> {
    for (i, e) in seen.iter().enumerate() {
        if let Some(p) = i.checked_sub(1).map(|j| &seen[j]) {
            if e.revision == p.revision && e.key == p.key {
                return Err(format!("duplicate event at index {i}: {e:?}"));
            }
            if e.revision < p.revision {
                return Err(format!(
                    "out of order at index {i}: revision {} after {}",
                    e.revision, p.revision
                ));
            }
        }
        match history.get(i) {
            None => return Err(format!("event {i} is not in the history: {e:?}")),
            Some(h) if h.revision != e.revision || h.key != e.key => {
                let kind = if e.revision > h.revision {
                    "gap"
                } else {
                    "unexpected event"
                };
                return Err(format!(
                    "{kind} at index {i}: expected revision {} {:?}, got revision {} {:?}",
                    h.revision,
                    String::from_utf8_lossy(&h.key),
                    e.revision,
                    String::from_utf8_lossy(&e.key)
                ));
            }
            Some(h) if h != e => {
                return Err(format!(
                    "wrong event at index {i}: expected {h:?}, got {e:?}"
                ))
            }
            Some(_) => {}
        }
    }
    if complete && seen.len() < history.len() {
        return Err(format!(
            "missed events: saw {} of {}; the first missing is {:?}",
            seen.len(),
            history.len(),
            history[seen.len()]
        ));
    }
    Ok(())
}

/// A write the cluster acknowledged: the revision its answer named and what it put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedWrite {
    pub revision: i64,
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Checks acknowledged writes against the authoritative event history: each one's revision holds
/// exactly its puts, all of them (a multi-key txn is never torn, an acknowledged write never lost).
pub fn check_acknowledged(writes: &[AckedWrite], history: &[SeenEvent]) -> Result<(), String> {
    let mut at: BTreeMap<i64, Vec<&SeenEvent>> = BTreeMap::new();
    for e in history {
        at.entry(e.revision).or_default().push(e);
    }
    for w in writes {
        let events = at.get(&w.revision).map_or(&[][..], |v| &v[..]);
        let missing: Vec<String> = w
            .puts
            .iter()
            .filter(|(k, v)| {
                !events
                    .iter()
                    .any(|e| !e.delete && e.key == *k && e.value == *v)
            })
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        if !missing.is_empty() || events.len() != w.puts.len() {
            return Err(format!(
                "acknowledged write at revision {} is lost or torn: missing {missing:?}; the history has {events:?} there; the write was {w:?}",
                w.revision
            ));
        }
    }
    Ok(())
}

/// Settles writes that got no answer, using the authoritative event history (as etcd's robustness
/// tests do): a put or compare-and-set whose unique value never appears there never took effect
/// and is dropped; one that appears took effect at that revision, so it must be linearized, and
/// no later than the first answer (to any client, on any key) whose header revision had reached
/// it. Deletes and revokes stay indeterminate. This only removes freedom the search cannot use,
/// so it never hides a violation, and it keeps long runs checkable.
pub fn resolve_indeterminate(history: &[Record], events: &[SeenEvent]) -> Vec<Record> {
    // (revision, return time) of answers, to find the first answer at or past a revision.
    let mut answers: Vec<(i64, u64)> = history
        .iter()
        .filter_map(|r| r.ret.map(|t| (r.revision, t)))
        .filter(|(rev, _)| *rev > 0)
        .collect();
    answers.sort();
    // Suffix minimum of return times over answers sorted by revision.
    let mut first_after = vec![u64::MAX; answers.len() + 1];
    for i in (0..answers.len()).rev() {
        first_after[i] = first_after[i + 1].min(answers[i].1);
    }
    let bound = |rev: i64| -> Option<u64> {
        let i = answers.partition_point(|(r, _)| *r < rev);
        (first_after[i] != u64::MAX).then_some(first_after[i])
    };
    history
        .iter()
        .filter_map(|r| {
            if r.ret.is_some() {
                return Some(r.clone());
            }
            let value = match &r.op {
                Op::Put { value, .. } | Op::Cas { value, .. } => value,
                _ => return Some(r.clone()),
            };
            let written = events
                .iter()
                .find(|e| !e.delete && e.key == r.key && &e.value == value)?;
            let mut r = r.clone();
            if let Op::Cas { succeeded, .. } = &mut r.op {
                *succeeded = true;
            }
            r.ret = bound(written.revision);
            r.revision = written.revision;
            Some(r)
        })
        .collect()
}

/// What a read that may be stale (serializable) returned: a key, its value and mod_revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub revision: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Checks reads that may be stale (serializable) against the event history: each one must have
/// returned a put of that value to that key at that revision.
pub fn check_observed(reads: &[Observed], history: &[SeenEvent]) -> Result<(), String> {
    for Observed {
        revision: rev,
        key,
        value,
    } in reads
    {
        let written = history
            .iter()
            .any(|e| e.revision == *rev && !e.delete && e.key == *key && e.value == *value);
        if !written {
            return Err(format!(
                "a read returned {}={} at revision {rev}, which the history does not hold",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(client: usize, op: Op, call: u64, ret: Option<u64>) -> Record {
        Record {
            client,
            key: b"k".to_vec(),
            op,
            call,
            ret,
            revision: 0,
        }
    }
    fn put(v: &str) -> Op {
        Op::Put {
            value: v.into(),
            lease: 0,
        }
    }
    fn get(v: Option<&str>) -> Op {
        Op::Get {
            result: v.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_correct_concurrent_history_passes() {
        let h = vec![
            rec(0, put("a"), 0, Some(10)),
            rec(1, get(Some("a")), 5, Some(6)), // overlaps the put: may see it
            rec(2, put("b"), 11, Some(20)),
            rec(1, get(Some("a")), 12, Some(13)), // overlaps put b: may still see a
            rec(0, get(Some("b")), 21, Some(22)),
        ];
        assert!(check_linearizable(&h).is_ok());
    }

    #[test]
    fn a_stale_read_is_reported() {
        let h = vec![
            rec(0, put("a"), 0, Some(1)),
            rec(0, put("b"), 2, Some(3)),
            rec(1, get(Some("a")), 4, Some(5)),
        ];
        let e = check_linearizable(&h).unwrap_err();
        assert!(e.contains("not linearizable"), "{e}");
    }

    #[test]
    fn a_lost_write_is_reported() {
        // The put was acknowledged, yet a later read sees nothing.
        let h = vec![rec(0, put("a"), 0, Some(1)), rec(1, get(None), 2, Some(3))];
        assert!(check_linearizable(&h).is_err());
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_happen() {
        let h = vec![
            rec(0, put("a"), 0, None),
            rec(1, get(None), 2, Some(3)),
            rec(1, get(Some("a")), 4, Some(5)),
        ];
        assert!(
            check_linearizable(&h).is_ok(),
            "it took effect between the two reads"
        );
        let h = vec![rec(0, put("a"), 0, None), rec(1, get(None), 2, Some(3))];
        assert!(check_linearizable(&h).is_ok(), "it never took effect");
        // ...but it can't take effect before it was called.
        let h = vec![
            rec(1, get(Some("a")), 0, Some(1)),
            rec(0, put("a"), 2, None),
        ];
        assert!(check_linearizable(&h).is_err());
    }

    #[test]
    fn a_wrong_cas_answer_is_reported() {
        let cas = Op::Cas {
            expected: Some(b"a".to_vec()),
            value: b"c".to_vec(),
            succeeded: true,
        };
        let h = vec![rec(0, put("b"), 0, Some(1)), rec(1, cas, 2, Some(3))];
        assert!(check_linearizable(&h).is_err());
        let del = Op::Delete { deleted: 1 };
        assert!(
            check_linearizable(&[rec(0, del, 0, Some(1))]).is_err(),
            "deleting a missing key reports 0"
        );
    }

    #[test]
    fn a_write_that_outlives_its_revoked_lease_is_reported() {
        let leased = Op::Put {
            value: b"a".to_vec(),
            lease: 5,
        };
        let revoke = Op::Revoke { lease: 5 };
        let h = vec![
            rec(0, leased.clone(), 0, Some(1)),
            rec(0, revoke.clone(), 2, Some(3)),
            rec(1, get(None), 4, Some(5)),
        ];
        assert!(check_linearizable(&h).is_ok());
        let h = vec![
            rec(0, leased.clone(), 0, Some(1)),
            rec(0, revoke.clone(), 2, Some(3)),
            rec(1, get(Some("a")), 4, Some(5)),
        ];
        assert!(check_linearizable(&h).is_err(), "revoke deletes the key");
        // A put without the lease detaches the key: the revoke leaves it alone.
        let h = vec![
            rec(0, leased, 0, Some(1)),
            rec(1, put("b"), 2, Some(3)),
            rec(0, revoke, 4, Some(5)),
            rec(1, get(None), 6, Some(7)),
        ];
        assert!(check_linearizable(&h).is_err());
    }

    #[test]
    fn a_lost_or_torn_acknowledged_write_is_reported() {
        let e = |rev: i64, k: &str, v: &str| SeenEvent {
            revision: rev,
            key: k.into(),
            delete: false,
            value: v.into(),
            prev_value: None,
        };
        let txn = AckedWrite {
            revision: 3,
            puts: vec![
                (b"x".to_vec(), b"1".to_vec()),
                (b"y".to_vec(), b"1".to_vec()),
            ],
        };
        let whole = vec![e(2, "x", "0"), e(3, "x", "1"), e(3, "y", "1")];
        assert!(check_acknowledged(std::slice::from_ref(&txn), &whole).is_ok());
        let torn = vec![e(2, "x", "0"), e(3, "x", "1"), e(4, "y", "1")];
        assert!(check_acknowledged(std::slice::from_ref(&txn), &torn)
            .unwrap_err()
            .contains("torn"));
        let lost = vec![e(2, "x", "0")];
        assert!(check_acknowledged(&[txn], &lost).is_err());
    }

    #[test]
    fn unanswered_writes_are_settled_by_the_event_history() {
        let e = |rev: i64, v: &str| SeenEvent {
            revision: rev,
            key: b"k".to_vec(),
            delete: false,
            value: v.into(),
            prev_value: None,
        };
        let at = |mut r: Record, rev: i64| {
            r.revision = rev;
            r
        };
        let h = vec![
            at(rec(0, put("a"), 0, Some(1)), 2),
            rec(1, put("lost"), 2, None), // never in the history: dropped
            rec(2, put("b"), 3, None),    // in the history at revision 3
            at(rec(0, get(Some("b")), 4, Some(9)), 3), // the first answer that saw revision 3
        ];
        let events = vec![e(2, "a"), e(3, "b")];
        let r = resolve_indeterminate(&h, &events);
        assert_eq!(r.len(), 3);
        assert!(!r.iter().any(|x| x.op == put("lost")));
        let b = r.iter().find(|x| x.op == put("b")).unwrap();
        assert_eq!((b.ret, b.revision), (Some(9), 3));
        assert!(check_linearizable(&r).is_ok());
        // Settling never hides a violation: a read of a dropped write still fails.
        let h = vec![
            rec(1, put("lost"), 0, None),
            rec(0, get(Some("lost")), 1, Some(2)),
        ];
        assert!(check_linearizable(&resolve_indeterminate(&h, &[])).is_err());
    }

    #[test]
    fn a_read_of_a_value_never_written_is_reported() {
        let history = vec![SeenEvent {
            revision: 2,
            key: b"x".to_vec(),
            delete: false,
            value: b"a".to_vec(),
            prev_value: None,
        }];
        let read = |rev: i64, v: &str| {
            vec![Observed {
                revision: rev,
                key: b"x".to_vec(),
                value: v.into(),
            }]
        };
        assert!(check_observed(&read(2, "a"), &history).is_ok());
        assert!(check_observed(&read(2, "b"), &history).is_err());
        assert!(check_observed(&read(3, "a"), &history).is_err());
    }

    fn ev(rev: i64, v: &str, prev: Option<&str>) -> SeenEvent {
        SeenEvent {
            revision: rev,
            key: b"k".to_vec(),
            delete: false,
            value: v.into(),
            prev_value: prev.map(|p| p.as_bytes().to_vec()),
        }
    }

    #[test]
    fn watch_checker_finds_gaps_duplicates_and_wrong_prev_kv() {
        let history = vec![
            ev(2, "a", None),
            ev(3, "b", Some("a")),
            ev(4, "c", Some("b")),
        ];
        assert!(check_watch(&history, &history, true).is_ok());
        assert!(
            check_watch(&history[..2], &history, false).is_ok(),
            "a prefix is fine while the run goes on"
        );
        let gap = vec![ev(2, "a", None), ev(4, "c", Some("b"))];
        assert!(check_watch(&gap, &history, false)
            .unwrap_err()
            .contains("gap"));
        let dup = vec![ev(2, "a", None), ev(2, "a", None), ev(3, "b", Some("a"))];
        assert!(check_watch(&dup, &history, false)
            .unwrap_err()
            .contains("duplicate"));
        let wrong_prev = vec![ev(2, "a", None), ev(3, "b", None)];
        assert!(check_watch(&wrong_prev, &history, false)
            .unwrap_err()
            .contains("wrong event"));
        assert!(check_watch(&history[..2], &history, true)
            .unwrap_err()
            .contains("missed"));
    }
}
