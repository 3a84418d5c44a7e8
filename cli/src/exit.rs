//! Exit codes and the one-line error a command ends with.

use eden_proto::client::ClientError;

/// The cluster refused the request (bad key, compacted revision, unknown lease...).
pub const REFUSED: i32 = 1;
/// Bad usage or input (clap also exits 2 for bad flags), or the server could not start.
pub const USAGE_OR_SETUP: i32 = 2;
/// No endpoint reachable, no leader, or a timeout.
pub const UNAVAILABLE: i32 = 3;
/// `eden run` / `eden task wait`: a target failed (non-zero exit, could not run, canceled).
pub const TASK_FAILED: i32 = 4;
/// ... no target failed, but one ran past its timeout.
pub const TASK_TIMEOUT: i32 = 5;
/// ... none failed or timed out, but one was unreachable (or its agent died: lost).
pub const TASK_UNREACHABLE: i32 = 6;
/// `eden server`: the member's Raft core stopped at run time (a storage failure or a bug); the
/// process exits so that its supervisor restarts it.
pub const MEMBER_FAILED: i32 = 7;
/// `eden server` in a cluster that forms and heals itself (`--join`, `--bootstrap-expect`): this
/// member was removed (autopilot replaced it); its supervisor restarts it, and it joins again as
/// a new standby with a fresh copy (its old data kept aside in DATA_DIR/removed-TIME).
pub const MEMBER_REMOVED: i32 = 9;
/// The cluster's authorizer refused the request: this identity may not do it ("etcdserver:
/// permission denied"; the member's log says which rule).
pub const PERMISSION_DENIED: i32 = 8;

#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
    /// Exit without printing (a closed stdout pipe).
    pub quiet: bool,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: USAGE_OR_SETUP,
            message: message.into(),
            quiet: false,
        }
    }

    pub fn broken_pipe() -> Failure {
        Failure {
            code: 0,
            message: String::new(),
            quiet: true,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match &e {
            ClientError::Unavailable(_) => UNAVAILABLE,
            e if e.is_permission_denied() => PERMISSION_DENIED,
            ClientError::Server(_) => REFUSED,
            ClientError::InvalidEndpoint(_) => USAGE_OR_SETUP,
        };
        Failure {
            code,
            message: e.to_string(),
            quiet: false,
        }
    }
}

impl From<eden_proto::model::Error> for Failure {
    fn from(e: eden_proto::model::Error) -> Failure {
        use eden_proto::model::Error as E;
        match e {
            E::Client(c) => c.into(),
            E::Invalid(m) => Failure::usage(m),
            E::NotFound(m) | E::NoMatch(m) | E::Refused(m) | E::Corrupt(m) => Failure {
                code: REFUSED,
                message: m,
                quiet: false,
            },
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Failure::broken_pipe();
        }
        Failure {
            code: USAGE_OR_SETUP,
            message: e.to_string(),
            quiet: false,
        }
    }
}
