//! etcd's error messages, as its clients know them (etcd's `rpctypes`): the server answers with
//! exactly these, and clients recognise them with [`crate::client::ClientError`]'s typed checks
//! (`is_compacted()`, ...), never by searching a message for a word. The gRPC code each goes with
//! is the server's to choose (store/src/grpc/errors.rs) and is etcd's.

pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const INVALID_SORT_OPTION: &str = "etcdserver: invalid sort option";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const LEASE_EXIST: &str = "etcdserver: lease already exists";
pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
pub const WATCH_DUPLICATE_ID: &str = "etcdserver: duplicate watch ID";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const BAD_TRANSFEREE: &str = "etcdserver: bad leader transferee";
pub const TRANSFER_TIMEOUT: &str = "etcdserver: request timed out, leader transfer took too long";
pub const PEER_URL_EXIST: &str = "etcdserver: Peer URLs already exists";
pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
pub const NOT_ENOUGH_STARTED_MEMBERS: &str =
    "etcdserver: re-configuration failed due to not enough started members";
pub const MEMBERSHIP_CHANGE_IN_PROGRESS: &str =
    "etcdserver: another membership change is in progress";
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const LEADER_CHANGED: &str = "etcdserver: leader changed";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const NOT_SUPPORTED_FOR_LEARNER: &str = "etcdserver: rpc not supported for learner";
pub const UNKNOWN_ALARM_ACTION: &str = "etcdserver: unknown alarm action";
/// The start of "server stopped: WHY" (a member whose Raft core stopped).
pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
/// What a TLS member answers a request without a client certificate (its TLS handshake requires
/// one, so this is only seen past a proxy that terminated TLS).
pub const NO_CLIENT_CERT: &str = "eden: a client certificate is required";
pub const STOPPED: &str = "etcdserver: server stopped";
