//! eden's replicated store.
//!
//! Bottom-up, each layer knowing only the ones below it:
//!
//! ```text
//!   grpc/      etcd v3 services (KV, Watch, Lease, Cluster, Maintenance) and the peer service
//!   node       one member: propose, forward to the leader, read index, lease deadlines, compactor
//!   raft/      the seam: openraft log store, state machine, network
//!   watch      watch hub (recent revisions; streams pull, slow ones catch up from storage)
//!   lease      lease deadlines (the leader's clock)
//!   mvcc       etcd's revisioned key-value model, applied in one WriteBatch per run of entries
//!   engine     RocksDB, column families, synced writes
//!   keys       key encoding
//! ```

pub mod engine;
pub mod events;
pub mod grpc;
pub mod keys;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod watch;
