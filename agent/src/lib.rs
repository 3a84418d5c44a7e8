//! eden's configuration-management side, as a client of the store: the agent that runs on every
//! managed machine, and the model the CLI (and later the reactors) share with it: the keyspace
//! ([`keys`]), the stored objects ([`model`]), label selectors, templates, nodes, tasks and
//! variables. Everything goes through the etcd v3 API (`eden_proto::client`); nothing here links
//! RocksDB or openraft. See design/agents.md.

pub mod agent;
pub mod exec;
pub mod facts;
pub mod keys;
pub mod kv;
pub mod model;
pub mod nodes;
pub mod selector;
pub mod tasks;
pub mod template;
pub mod vars;

use eden_proto::client::ClientError;

/// What can go wrong; the CLI maps each kind to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster could not be reached or answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Bad input (a name, a selector, a flag).
    #[error("{0}")]
    Invalid(String),
    /// No such node, task or variable.
    #[error("{0}")]
    NotFound(String),
    /// A selector or node list matched nothing.
    #[error("{0}")]
    NoMatch(String),
    /// The request conflicts with the cluster's state (a name taken, a node up).
    #[error("{0}")]
    Refused(String),
    /// Something under /eden/ is not what eden wrote.
    #[error("{0}")]
    Corrupt(String),
}
