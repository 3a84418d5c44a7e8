//! eden's wire contract and client.
//!
//! - [`etcdserverpb`], [`mvccpb`], [`authpb`]: etcd's v3 API, generated from `proto/etcd/*.proto`. The
//!   client port of `eden server` serves these services, so etcdctl and etcd client libraries work.
//! - [`peer`]: what members say to each other (Raft messages, forwarded writes, read index, lease
//!   queries), as opaque payloads the store encodes.
//! - [`client`]: a leader-agnostic client over a list of endpoints, used by the CLI, agents and
//!   reactors. It retries on another member when one is unavailable and resumes watches.
//! - [`errors`]: etcd's error messages, shared by the server that sends them and the client that
//!   recognises them.
//! - [`pki`]: the cluster's certificate authority and the certificates that name identities.
//! - [`model`]: eden's keyspace and object shapes (which keys exist under `/eden/`, their values,
//!   who writes them), with their read and write functions over the client.

pub mod mvccpb {
    #![allow(clippy::all)]
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

pub mod authpb {
    #![allow(clippy::all)]
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

pub mod etcdserverpb {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
/// etcd's Election service (leader election on keys under a name).
pub mod v3electionpb {
    #![allow(clippy::all)]
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
/// etcd's Lock service (distributed locks on keys under a name).
pub mod v3lockpb {
    #![allow(clippy::all)]
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

pub mod peer {
    #![allow(clippy::all)]
    tonic::include_proto!("eden.peer");
}
pub mod join {
    #![allow(clippy::all)]
    tonic::include_proto!("eden.join");
}
/// Forming a new cluster (`eden server --bootstrap-expect`): discovery and promises.
pub mod forming {
    #![allow(clippy::all)]
    tonic::include_proto!("eden.forming");
}

/// Storing a task in one log entry (eden's own call on the client port).
pub mod tasks {
    #![allow(clippy::all)]
    tonic::include_proto!("eden.tasks");
}

/// The plugin protocol (design/plugins.md): what the agent asks a resource plugin.
pub mod plugin_v1 {
    #![allow(clippy::all)]
    tonic::include_proto!("eden.plugin.v1");
}
/// gRPC's health service, which every plugin serves (go-plugin's convention).
pub mod health_v1 {
    #![allow(clippy::all)]
    tonic::include_proto!("grpc.health.v1");
}

pub mod client;
pub mod errors;
pub mod glob;
pub mod joining;
pub mod keys;
pub mod model;
pub mod pki;
pub mod plugin;
pub mod plugin_tls;
pub mod renewal;
pub mod tls_listener;
