//! One file per command.

pub mod agent;
pub mod alarm;
pub mod bench;
pub mod bench_agents;
pub mod compact;
pub mod del;
pub mod endpoint;
pub mod event;
pub mod get;
pub mod hook;
pub mod lease;
pub mod member;
pub mod node;
pub mod put;
pub mod reactor;
pub mod run;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod task;
pub mod txn;
pub mod var;
pub mod watch;
