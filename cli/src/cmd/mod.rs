//! One file per command.

pub mod alarm;
pub mod bench;
pub mod compact;
pub mod del;
pub mod endpoint;
pub mod get;
pub mod lease;
pub mod member;
pub mod put;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod txn;
pub mod watch;
