//! The authorizer: the one place that decides whether a caller may make a request.
//!
//! Every client RPC is normalized into the keys it reads and writes and the operation it is, and
//! checked here before anything runs. Deny by default: only what a rule below allows is allowed.
//!
//! ```text
//! caller            may read                                  may write
//! admin:*, member:* everything, every RPC                     everything, every RPC
//! node:N            /eden/nodes/N/**                          /eden/nodes/N/{facts,owner,alive}
//!                   /eden/{states,plans,plugins/lock}/**      /eden/nodes/N/{files,states,plans,
//!                                                               drift}/**
//!                   /eden/tasks/T, /eden/runs/T/cancel,       /eden/runs/T/{claims,results}/N
//!                   /eden/runs/T/{claims,results}/N             while /eden/nodes/N/tasks/T exists
//!                     while /eden/nodes/N/tasks/T exists
//!                   /eden/vars/N/**, /eden/readers/vars/N/**  /eden/vars/N/**, /eden/readers/vars/N/**
//!                   /eden/vars/S/V when its readers allow N
//!                     (evaluated against N's labels now)
//!                   Status, MemberList, LeaseGrant; LeaseKeepAlive/Revoke when it may write every
//!                   key attached; LeaseTimeToLive (only the keys it may read are listed)
//! ```
//!
//! A user (an etcd user, `user:NAME`) gets what its roles grant, except writing under
//! `/eden/ui/` (the web view's sign-in links name whom their sessions act as): root users only.
//!
//! A node never writes labels, tasks, rules, hooks, events or anything outside `/eden/`, and never
//! calls Maintenance (but Status), Compact or Cluster changes. A range or watch is allowed only if
//! every key it could ever cover is readable: a multi-key range must lie inside one prefix the
//! caller may read whole (nothing is filtered after the fact). A txn is checked compare by compare
//! and op by op, nested txns included.

use std::collections::BTreeMap;
use std::fmt;

use eden_proto::etcdserverpb::{
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use eden_proto::model::keys;
use eden_proto::model::readers::Readers;
use eden_proto::model::states;
use eden_proto::model::users::{self, Perm};
use eden_proto::pki;

use crate::keys::KeyRange;
use crate::mvcc::Mvcc;

/// Who is asking, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// An admin or a member (or anyone, on an insecure member): every right.
    Root(String),
    /// A managed machine's agent, by name.
    Node(String),
    /// An etcd user: its roles' key-range permissions decide (etcd's Auth service).
    User(String),
}

impl Caller {
    pub fn of(identity: &pki::Identity) -> Caller {
        match identity {
            pki::Identity::Admin(_) | pki::Identity::Member(_) => {
                Caller::Root(identity.to_string())
            }
            pki::Identity::Node(n) => Caller::Node(n.clone()),
            pki::Identity::User(n) => Caller::User(n.clone()),
        }
    }

    pub fn is_root(&self) -> bool {
        matches!(self, Caller::Root(_))
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Root(who) => f.write_str(who),
            Caller::Node(n) => write!(f, "node:{n}"),
            Caller::User(n) => write!(f, "user:{n}"),
        }
    }
}

/// Why a request was refused (for the log and the audit trail; the client gets etcd's
/// "permission denied").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the authorizer needs to know about the cluster's state, read at the time of the request.
pub trait Facts {
    /// A node's labels (none when it has none).
    fn labels(&self, node: &str) -> BTreeMap<String, String>;
    /// The readers of a variable, when any were set.
    fn var_readers(&self, scope: &str, name: &str) -> Option<Readers>;
    /// The readers of a file (by its name), when it has any.
    fn file_readers(&self, name: &str) -> Option<Readers>;
    /// The node a read-once file is for, when it is one.
    fn file_once(&self, name: &str) -> Option<String>;
    /// Whether a key exists now.
    fn exists(&self, key: &[u8]) -> bool;
    /// Whether task `task` is assigned to `node` now.
    fn assigned(&self, node: &str, task: &str) -> bool;
    /// An etcd user's permissions through its roles, and whether one of them is `root`.
    fn user_perms(&self, user: &str) -> (bool, Vec<Perm>);
}

/// RPCs that name no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Status,
    MemberList,
    LeaseGrant,
    /// Leases listed (LeaseLeases).
    LeaseList,
    /// A new certificate for the caller's own identity (Join's Renew).
    RenewOwn,
    /// Every other Maintenance, Cluster and Compact call.
    Admin,
}

/// Checks an RPC that names no key.
pub fn check_rpc(caller: &Caller, rpc: Rpc) -> Result<(), Denied> {
    match (caller, rpc) {
        (Caller::Root(_), _) => Ok(()),
        (
            Caller::Node(_) | Caller::User(_),
            Rpc::Status | Rpc::MemberList | Rpc::LeaseGrant | Rpc::RenewOwn,
        ) => Ok(()),
        (Caller::Node(_) | Caller::User(_), _) => {
            Err(Denied(format!("{caller} may not call {rpc:?} RPCs")))
        }
    }
}

/// Checks a read of `[key, range_end)` (etcd's encoding: empty end for one key, `"\0"` for "to
/// the end").
pub fn check_read(
    caller: &Caller,
    key: &[u8],
    range_end: &[u8],
    facts: &dyn Facts,
) -> Result<(), Denied> {
    check(caller, key, range_end, false, facts)
}

/// Checks a write (put, or delete of a range).
pub fn check_write(
    caller: &Caller,
    key: &[u8],
    range_end: &[u8],
    facts: &dyn Facts,
) -> Result<(), Denied> {
    check(caller, key, range_end, true, facts)
}

/// Checks one request op, nested txns included.
pub fn check_op(caller: &Caller, op: &RequestOp, facts: &dyn Facts) -> Result<(), Denied> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => {
            check_read(caller, &r.key, &r.range_end, facts)
        }
        Some(request_op::Request::RequestPut(p)) => {
            check_write(caller, &p.key, &[], facts)?;
            check_value(caller, p)
        }
        Some(request_op::Request::RequestDeleteRange(d)) => {
            check_write(caller, &d.key, &d.range_end, facts)
        }
        Some(request_op::Request::RequestTxn(t)) => check_txn(caller, t, facts),
        None => Ok(()),
    }
}

/// A read-once file's one read: a txn whose success reads the file's bytes and deletes them (and
/// does nothing else), by the node it is for, while they are there. None: not such a txn.
fn check_read_once(
    caller: &Caller,
    txn: &TxnRequest,
    facts: &dyn Facts,
) -> Option<Result<(), Denied>> {
    let Caller::Node(node) = caller else {
        return None;
    };
    let [read, delete] = txn.success.as_slice() else {
        return None;
    };
    let (
        Some(request_op::Request::RequestRange(r)),
        Some(request_op::Request::RequestDeleteRange(d)),
    ) = (&read.request, &delete.request)
    else {
        return None;
    };
    if r.key != d.key || !r.range_end.is_empty() || !d.range_end.is_empty() {
        return None;
    }
    let file = keys::rest(&r.key, keys::FILES_DATA)?;
    let target = facts.file_once(file)?;
    Some(
        if !txn.failure.is_empty() || txn.compare.iter().any(|c| c.key != r.key) {
            Err(Denied(format!(
                "{caller}: a read-once file is read by a txn that reads and deletes it, nothing else"
            )))
        } else if target != *node {
            Err(Denied(format!(
                "{caller} may not read {file}: it is read once, by node {target}"
            )))
        } else if !facts.exists(&r.key) {
            Err(Denied(format!(
                "{caller} may not read {file} again: it was read once already"
            )))
        } else {
            Ok(())
        },
    )
}

/// What a node writes must not claim to be another's: a file's metadata names its writer.
fn check_value(caller: &Caller, p: &PutRequest) -> Result<(), Denied> {
    let Caller::Node(node) = caller else {
        return Ok(());
    };
    if p.key.starts_with(keys::FILES_META.as_bytes()) {
        let writer = serde_json::from_slice::<eden_proto::model::files::FileMeta>(&p.value)
            .map(|m| m.writer)
            .unwrap_or_default();
        if writer != format!("node:{node}") {
            return Err(Denied(format!(
                "{caller} may not write a file's metadata naming writer {writer:?}"
            )));
        }
    }
    Ok(())
}

/// Checks a txn: every compare is a read, every op of both branches is checked (whichever runs).
pub fn check_txn(caller: &Caller, txn: &TxnRequest, facts: &dyn Facts) -> Result<(), Denied> {
    if caller.is_root() {
        return Ok(());
    }
    if let Some(r) = check_read_once(caller, txn, facts) {
        return r;
    }
    for c in &txn.compare {
        check_compare(caller, c, facts)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        check_op(caller, op, facts)?;
    }
    Ok(())
}

/// A compare reads its key (or range): its version, revisions, value or lease.
fn check_compare(caller: &Caller, c: &Compare, facts: &dyn Facts) -> Result<(), Denied> {
    check_read(caller, &c.key, &c.range_end, facts)
}

/// Whether a lease may be kept alive or revoked: the caller may write every key attached to it.
pub fn check_lease(caller: &Caller, attached: &[Vec<u8>], facts: &dyn Facts) -> Result<(), Denied> {
    for k in attached {
        check_write(caller, k, &[], facts).map_err(|_| {
            Denied(format!(
                "{caller} may not touch a lease that holds {}",
                show(k)
            ))
        })?;
    }
    Ok(())
}

/// Whether one key may be read (to filter a lease's key list, which is not a range read).
pub fn may_read_key(caller: &Caller, key: &[u8], facts: &dyn Facts) -> bool {
    check_read(caller, key, &[], facts).is_ok()
}

/// The keys whose changes may change what `caller` may read or write (its labels, its
/// assignments, a variable's readers): its watches are checked again after such a change.
pub fn rights_ranges(caller: &Caller) -> Vec<KeyRange> {
    let prefix = |p: &str| KeyRange::new(p.as_bytes(), &eden_proto::keys::prefix_end(p.as_bytes()));
    match caller {
        Caller::Root(_) => Vec::new(),
        Caller::User(_) => vec![prefix(users::AUTH)],
        Caller::Node(node) => {
            let mine = keys::node_prefix(node);
            vec![
                prefix(keys::READERS),
                KeyRange::new(format!("{mine}labels").as_bytes(), &[]),
                prefix(&format!("{mine}tasks/")),
            ]
        }
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn check(
    caller: &Caller,
    key: &[u8],
    range_end: &[u8],
    write: bool,
    facts: &dyn Facts,
) -> Result<(), Denied> {
    let verb = if write { "write" } else { "read" };
    let node = match caller {
        Caller::Root(_) => return Ok(()),
        Caller::Node(n) => n.as_str(),
        Caller::User(u) => {
            let (root, perms) = facts.user_perms(u);
            // A web view sign-in link names whom its session acts as: no role may grant writing
            // one (admins, members and root users only).
            if write && !root && overlaps(key, range_end, eden_proto::model::ui::UI.as_bytes()) {
                return Err(Denied(format!(
                    "{caller} may not write the web view's sign-in links (admins only)"
                )));
            }
            // As etcd: the permissions of all its roles together must cover the whole range.
            return if root || users::covered(&perms, write, key, range_end) {
                Ok(())
            } else {
                Err(Denied(format!(
                    "{caller} has no role that may {verb} [{}, {})",
                    show(key),
                    show(range_end)
                )))
            };
        }
    };
    let single = range_end.is_empty() || is_key_plus_zero(key, range_end);
    let ok = if single {
        key_allowed(node, key, write, facts)
    } else {
        whole_prefixes(node, write)
            .iter()
            .any(|p| inside(key, range_end, p.as_bytes()))
    };
    if ok {
        Ok(())
    } else if single {
        Err(Denied(format!("{caller} may not {verb} {}", show(key))))
    } else {
        Err(Denied(format!(
            "{caller} may not {verb} the range [{}, {})",
            show(key),
            show(range_end)
        )))
    }
}

/// Whether `[key, end)` (or `key` alone, `end` empty) holds a key that starts with `prefix`.
fn overlaps(key: &[u8], end: &[u8], prefix: &[u8]) -> bool {
    if end.is_empty() || is_key_plus_zero(key, end) {
        return key.starts_with(prefix);
    }
    let prefix_end = eden_proto::keys::prefix_end(prefix);
    key < prefix_end.as_slice() && (end == [0] || end > prefix)
}

/// `end` is `key` followed by one zero byte: the range holds `key` alone.
fn is_key_plus_zero(key: &[u8], end: &[u8]) -> bool {
    end.len() == key.len() + 1 && end.starts_with(key) && end[key.len()] == 0
}

/// Whether `[key, end)` (end not empty) lies inside the keys that start with `prefix`.
fn inside(key: &[u8], end: &[u8], prefix: &[u8]) -> bool {
    if end == [0] || !key.starts_with(prefix) {
        return false;
    }
    let prefix_end = eden_proto::keys::prefix_end(prefix);
    // Every key k with key <= k < end starts with the prefix iff end <= prefix_end.
    end <= prefix_end.as_slice()
}

/// The prefixes node `node` may read (or write) whole.
fn whole_prefixes(node: &str, write: bool) -> Vec<String> {
    let mut p = vec![keys::node_vars(node), keys::node_var_readers(node)];
    p.extend(own_file_prefixes(node));
    if !write {
        p.push(keys::node_prefix(node));
        p.extend(PUBLIC_TO_NODES.iter().map(|s| s.to_string()));
    }
    p
}

/// What every node may read: files' metadata and readers, where agents place files, the public
/// keys files are sealed to, the desired states and plan requests, and the approved plugins.
const PUBLIC_TO_NODES: [&str; 7] = [
    keys::FILES_META,
    keys::FILE_READERS,
    keys::FILE_SYNC,
    keys::SEALKEYS,
    states::STATES,
    states::PLANS,
    states::PLUGIN_LOCKS,
];

/// A node's own files: their bytes, metadata and readers.
fn own_file_prefixes(node: &str) -> [String; 3] {
    [
        format!("{}{node}/", keys::FILES_DATA),
        format!("{}{node}/", keys::FILES_META),
        format!("{}{node}/", keys::FILE_READERS),
    ]
}

/// One name: what `keys::check_name` accepts (so no '/' and nothing odd).
fn name(s: &str) -> Option<&str> {
    keys::check_name("name", s).ok().map(|_| s)
}

/// Whether node `node` may read (or write) the single key `key`.
fn key_allowed(node: &str, key: &[u8], write: bool, facts: &dyn Facts) -> bool {
    // Its own registration keys (and, to read, everything under its node prefix).
    if let Some(leaf) = keys::rest(key, &keys::node_prefix(node)) {
        return !write
            || matches!(leaf, "facts" | "owner" | "alive")
            || ["files/", "states/", "plans/", "drift/"]
                .iter()
                .any(|p| leaf.starts_with(p));
    }
    // Any node's labels (one at a time): a writer seals a file for the nodes its readers match.
    if !write
        && keys::rest(key, keys::NODES)
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(n, leaf)| leaf == "labels" && name(n).is_some())
    {
        return true;
    }
    // Its own files, everyone's files' metadata, and a file whose readers allow it now.
    if own_file_prefixes(node)
        .iter()
        .any(|p| key.starts_with(p.as_bytes()))
    {
        return true;
    }
    if PUBLIC_TO_NODES
        .iter()
        .any(|p| key.starts_with(p.as_bytes()))
    {
        return !write || key == keys::sealkey(node).as_bytes();
    }
    if let Some(file) = keys::rest(key, keys::FILES_DATA) {
        // A read-once file is read only by its consuming txn ([`check_read_once`]).
        return !write
            && facts.file_once(file).is_none()
            && facts
                .file_readers(file)
                .is_some_and(|r| r.allows(node, &facts.labels(node)));
    }
    // Its own variables and their readers.
    if key.starts_with(keys::node_vars(node).as_bytes())
        || key.starts_with(keys::node_var_readers(node).as_bytes())
    {
        return true;
    }
    // A task assigned to it: the spec and the cancel mark to read, its own claim and result.
    if let Some(task) = keys::rest(key, keys::TASKS).and_then(name) {
        return !write && facts.assigned(node, task);
    }
    if let Some(rest) = keys::rest(key, keys::RUNS) {
        let parts: Vec<&str> = rest.split('/').collect();
        let (task, mine) = match parts.as_slice() {
            [task, "cancel"] => (*task, !write),
            [task, "claims" | "results", who] => (*task, *who == node),
            _ => return false,
        };
        return mine && name(task).is_some() && facts.assigned(node, task);
    }
    // Another scope's variable, when its readers allow this node now.
    if !write {
        if let Some((scope, var)) = keys::rest(key, keys::VARS).and_then(|r| r.split_once('/')) {
            if name(scope).is_some() && name(var).is_some() {
                return facts
                    .var_readers(scope, var)
                    .is_some_and(|r| r.allows(node, &facts.labels(node)));
            }
        }
    }
    false
}

/// Keys a check read, each with its mod revision then (0: absent).
pub type Seen = Vec<(Vec<u8>, i64)>;

/// The facts as this member's store holds them now. A recording one also notes every key it read
/// with that key's mod revision then (0: absent), so that a write can be applied only if they are
/// still the same when the write is applied ([`StoreFacts::seen`]).
pub struct StoreFacts<'a> {
    mvcc: &'a Mvcc,
    seen: Option<std::cell::RefCell<Seen>>,
}

impl<'a> StoreFacts<'a> {
    pub fn new(mvcc: &'a Mvcc) -> StoreFacts<'a> {
        StoreFacts { mvcc, seen: None }
    }

    pub fn recording(mvcc: &'a Mvcc) -> StoreFacts<'a> {
        StoreFacts {
            mvcc,
            seen: Some(Default::default()),
        }
    }

    /// The keys read so far, each with its mod revision when read (0: it did not exist).
    pub fn seen(&self) -> Seen {
        self.seen
            .as_ref()
            .map(|s| s.borrow().clone())
            .unwrap_or_default()
    }

    /// One key's value and mod revision, noted when recording.
    fn read(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        let r = self
            .mvcc
            .range(&RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .ok()?;
        let found = r.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision));
        if let Some(seen) = &self.seen {
            let rev = found.as_ref().map_or(0, |(_, rev)| *rev);
            let mut seen = seen.borrow_mut();
            if !seen.iter().any(|(k, _)| k.as_slice() == key.as_bytes()) {
                seen.push((key.as_bytes().to_vec(), rev));
            }
        }
        found
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(&self.read(key)?.0).ok()
    }
}

impl StoreFacts<'_> {
    /// Whether a certificate was revoked (by serial, or with every certificate of its identity
    /// issued before the revocation).
    pub fn revoked(&self, info: &pki::CertInfo) -> bool {
        use eden_proto::model::certs;
        let by_serial: Option<certs::Revoked> = self.get(&certs::revoked_serial(&info.serial));
        let by_identity: Option<certs::Revoked> =
            self.get(&certs::revoked_identity(&info.identity));
        certs::is_revoked(info, by_serial.as_ref(), by_identity.as_ref())
    }
}

impl Facts for StoreFacts<'_> {
    fn labels(&self, node: &str) -> BTreeMap<String, String> {
        self.get(&keys::labels(node)).unwrap_or_default()
    }

    fn var_readers(&self, scope: &str, name: &str) -> Option<Readers> {
        self.get(&keys::var_readers(scope, name))
    }

    fn file_readers(&self, name: &str) -> Option<Readers> {
        self.get(&keys::file_readers(name))
    }

    fn file_once(&self, name: &str) -> Option<String> {
        self.get::<eden_proto::model::files::FileMeta>(&keys::file_meta(name))?
            .once
    }

    fn exists(&self, key: &[u8]) -> bool {
        self.read(&String::from_utf8_lossy(key)).is_some()
    }

    fn user_perms(&self, user: &str) -> (bool, Vec<Perm>) {
        let Some(u) = self.get::<users::User>(&users::user(user)) else {
            return (false, Vec::new());
        };
        let mut perms = Vec::new();
        let mut root = false;
        for r in &u.roles {
            root |= r == users::ROOT_ROLE;
            if let Some(role) = self.get::<users::Role>(&users::role(r)) {
                perms.extend(role.perms);
            }
        }
        (root, perms)
    }

    fn assigned(&self, node: &str, task: &str) -> bool {
        self.read(&keys::assignment(node, task)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_a_prefix_means_every_key_of_the_range_has_it() {
        assert!(inside(b"/a/", b"/a0", b"/a/"));
        assert!(inside(b"/a/x", b"/a/y", b"/a/"));
        assert!(!inside(b"/a/", b"/a1", b"/a/"));
        assert!(!inside(b"/a/", b"\0", b"/a/"));
        assert!(!inside(b"/a", b"/a/z", b"/a/"));
    }

    struct NoFacts;
    impl Facts for NoFacts {
        fn labels(&self, _: &str) -> BTreeMap<String, String> {
            BTreeMap::new()
        }
        fn var_readers(&self, _: &str, _: &str) -> Option<Readers> {
            None
        }
        fn file_readers(&self, _: &str) -> Option<Readers> {
            None
        }
        fn file_once(&self, _: &str) -> Option<String> {
            None
        }
        fn exists(&self, _: &[u8]) -> bool {
            false
        }
        fn assigned(&self, _: &str, _: &str) -> bool {
            false
        }
        fn user_perms(&self, _: &str) -> (bool, Vec<Perm>) {
            (false, vec![])
        }
    }

    #[test]
    fn a_range_overlaps_a_prefix_when_one_of_its_keys_starts_with_it() {
        assert!(overlaps(b"/eden/ui/logins/a", b"", b"/eden/ui/"));
        assert!(overlaps(b"/eden/", b"/eden0", b"/eden/ui/"));
        assert!(overlaps(b"/", b"\0", b"/eden/ui/"));
        assert!(!overlaps(b"/eden/vars/", b"/eden/vars0", b"/eden/ui/"));
        assert!(!overlaps(b"/eden/uj", b"", b"/eden/ui/"));
    }

    #[test]
    fn a_node_reads_desired_states_and_writes_only_its_own_reports() {
        let ok = |key: &str, write: bool| key_allowed("web1", key.as_bytes(), write, &NoFacts);
        for k in [
            "/eden/states/web",
            "/eden/plans/web",
            "/eden/plugins/lock/greeting",
        ] {
            assert!(ok(k, false), "{k}");
            assert!(!ok(k, true), "{k}");
        }
        for k in [
            "/eden/nodes/web1/states/web",
            "/eden/nodes/web1/plans/web",
            "/eden/nodes/web1/drift/web/file.motd",
        ] {
            assert!(ok(k, true), "{k}");
        }
        for k in [
            "/eden/nodes/web2/states/web",
            "/eden/nodes/web2/plans/web",
            "/eden/nodes/web2/drift/web/file.motd",
        ] {
            assert!(!ok(k, true) && !ok(k, false), "{k}");
        }
        let whole = |p: &str| whole_prefixes("web1", false).iter().any(|x| x == p);
        assert!(whole("/eden/states/") && whole("/eden/plans/") && whole("/eden/plugins/lock/"));
    }
}
