//! The one place that maps what goes wrong in the store to etcd's gRPC statuses and messages (as
//! etcd's `toGRPCErrorMap`): every layer builds its errors here, with the messages of
//! `eden_proto::errors` that clients recognise. eden's own refusals (the event policy) are here too,
//! worded the same way.

use eden_proto::errors as msg;
use tonic::Status;

use crate::mvcc::ApplyError;

pub use msg::*;

/// A deterministic refusal of the state machine (the same on every member).
pub fn refused(e: &ApplyError) -> Status {
    let m = e.to_string();
    match e {
        ApplyError::Compacted | ApplyError::FutureRev => Status::out_of_range(m),
        ApplyError::LeaseNotFound => Status::not_found(m),
        ApplyError::LeaseExists => Status::failed_precondition(m),
        ApplyError::KeyNotFound => Status::invalid_argument(m),
    }
}

/// Something that should not happen (a storage error, a bad peer reply).
pub fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("etcdserver: {e}"))
}

/// An etcd error that means "try again": no leader, a timeout, a leader change, a stopped core.
pub fn unavailable(message: &str) -> Status {
    Status::unavailable(message.to_string())
}

pub fn no_leader() -> Status {
    unavailable(msg::NO_LEADER)
}

pub fn timeout() -> Status {
    unavailable(msg::TIMEOUT)
}

pub fn leader_changed() -> Status {
    unavailable(msg::LEADER_CHANGED)
}

/// The Raft core stopped (`why`: its fatal error).
pub fn stopped_message(why: impl std::fmt::Display) -> String {
    format!("{}: {why}", msg::STOPPED)
}

pub fn no_space() -> Status {
    Status::resource_exhausted(msg::NO_SPACE)
}

pub fn lease_ttl_too_large() -> Status {
    Status::out_of_range(msg::LEASE_TTL_TOO_LARGE)
}

/// A request etcd's checks refuse (`message`: one of etcd's).
pub fn invalid(message: &str) -> Status {
    Status::invalid_argument(message.to_string())
}

/// eden's members have one peer URL each (etcd allows several).
pub fn one_peer_url() -> Status {
    Status::invalid_argument("etcdserver: eden members have exactly one peer URL")
}

pub fn learner_refused() -> Status {
    Status::failed_precondition(msg::NOT_SUPPORTED_FOR_LEARNER)
}

/// A membership change openraft refused (`e`: its reason).
pub fn membership_change_refused(e: impl std::fmt::Display) -> String {
    format!("etcdserver: {e}")
}

pub fn event_too_big(bytes: usize, max: usize) -> Status {
    Status::invalid_argument(format!(
        "etcdserver: event of {bytes} bytes is over the {max}-byte limit"
    ))
}

pub fn event_not_an_event(why: Option<String>) -> Status {
    Status::invalid_argument(match why {
        Some(why) => format!("etcdserver: an event is a JSON object with a tag ({why})"),
        None => "etcdserver: an event is a JSON object with a tag".to_string(),
    })
}

pub fn event_denied(tag: &str) -> Status {
    Status::failed_precondition(format!(
        "etcdserver: event tag {tag:?} is denied by the server's event policy"
    ))
}

pub fn event_rate_message(source: &str, rate: impl std::fmt::Display) -> String {
    format!("etcdserver: events from source {source:?} are over {rate} per second")
}

/// A request the authorizer refused: etcd's message (clients match on it); why is logged.
pub fn permission_denied() -> Status {
    Status::permission_denied(eden_proto::errors::PERMISSION_DENIED)
}

pub fn no_client_cert(why: impl std::fmt::Display) -> Status {
    Status::unauthenticated(format!("{}: {why}", eden_proto::errors::NO_CLIENT_CERT))
}
