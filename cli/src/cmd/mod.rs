//! One file per command.

pub mod agent;
pub mod alarm;
pub mod apply;
pub mod bench;
pub mod bench_agents;
pub mod cert;
pub mod cluster;
pub mod compact;
pub mod del;
pub mod endpoint;
pub mod event;
pub mod file;
pub mod get;
pub mod hook;
pub mod lease;
pub mod member;
pub mod node;
pub mod pki;
pub mod plugin;
pub mod put;
pub mod reactor;
pub mod run;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod task;
pub mod token;
pub mod txn;
pub mod ui;
pub mod user;
pub mod var;
pub mod watch;

use eden_proto::model::watcher::{Change, Watcher};
use eden_proto::mvccpb::Event;

use crate::exit::{Failure, REFUSED};

/// The next changes a watching command prints; None once Ctrl-C is pressed (or the watch ends).
/// A compacted start is the one-line error `compacted(oldest)` words.
async fn next_events(
    w: &mut Watcher,
    compacted: impl Fn(i64) -> String,
) -> Result<Option<Vec<Event>>, Failure> {
    loop {
        let c = tokio::select! {
            c = w.next() => c,
            _ = tokio::signal::ctrl_c() => return Ok(None),
        };
        return match c {
            None => Ok(None),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Change::Compacted { oldest })) => Err(Failure {
                code: REFUSED,
                message: compacted(oldest),
                quiet: false,
            }),
            Some(Ok(Change::Listed { .. })) => continue,
            Some(Ok(Change::Events(events))) => Ok(Some(events)),
        };
    }
}
