//! eden's replicated store.
//!
//! Bottom-up, each layer knowing only the ones below it (no module imports one above it; the
//! grpc services and the HTTP endpoint are the top):
//!
//! ```text
//!   grpc/      etcd v3 services (KV, Watch, Lease, Cluster, Maintenance) and the peer service;
//!              every client RPC asks the authorizer first
//!   http       /metrics and /health, through the ServerHealth trait the member implements
//!   node       one member: the one ask-the-leader loop (propose, read index, lease questions,
//!              membership changes), lease deadlines, compactor; its loops stop on shutdown
//!   auth       the authorizer: who may read, write or call what (rules over the keyspace and
//!              the facts in the store: labels, readers, assignments)
//!   forming    a new cluster from servers that find each other (--bootstrap-expect): promises
//!   membership etcd's membership rules as plain decisions (plan, outcome, already done)
//!   raft/      the seam: openraft log store, state machine, network
//!   events     the event policy and gate (size, tag globs, rate, retention buckets)
//!   watch      watch hub (recent revisions; streams pull, slow ones catch up from storage)
//!   errors     every error as etcd's gRPC status and message (one place)
//!   mvcc       etcd's revisioned key-value model, applied in one WriteBatch per run of entries
//!   engine     RocksDB, column families, synced writes
//!   metrics    the Prometheus registry (a leaf)
//!   lease      lease deadlines (the leader's clock)
//!   keys       key encoding
//! ```

pub mod auth;
pub mod engine;
pub mod errors;
pub mod events;
pub mod forming;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod watch;
