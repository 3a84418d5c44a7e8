//! Group commit of proposals: the commands proposed on the leader while earlier entries are still
//! on their way through Raft go into the log together, as one [`Command::Batch`] entry.
//!
//! openraft 0.9 appends (and so syncs) each client write on its own before it looks at the next,
//! so a leader under many clients did one fsync per write and spent its Raft thread waiting on the
//! disk (design/benchmarks.md has the profile). etcd batches the proposals that arrive while its
//! WAL syncs; this does the same one level up: at most [`IN_FLIGHT`] entries are between proposed
//! and applied at a time, and whatever arrives meanwhile waits and then goes in the next entry, up
//! to [`MAX_BATCH_COMMANDS`] commands or [`MAX_BATCH_BYTES`]. A lone write goes in alone as the
//! command it is, so a single client waits for nothing.
//!
//! The state machine applies a batch's commands in order, each with its own revision and reply,
//! exactly as it would apply them as consecutive entries (`state_machine.rs`). A batch refused as
//! a whole (this member no longer leads, or Raft stopped) refuses each of its commands with the
//! same error, and none of them was committed.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Command, Member, NodeId, Raft, Response};

/// Entries proposed and not yet applied, at most: while they are in flight, new commands gather.
pub const IN_FLIGHT: usize = 2;
/// Commands in one batch entry, at most.
pub const MAX_BATCH_COMMANDS: usize = 1024;
/// Bytes of commands in one batch entry, at most (a single larger command goes alone). Replication
/// sends about [`super::log_store::MAX_APPEND_BYTES`] of entries per request.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

pub type WriteError =
    openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Member>>;
type Reply = oneshot::Sender<Result<Response, WriteError>>;

/// The leader's side of group commit: [`Proposer::write`] is `Raft::client_write` for one command.
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Command, usize, Reply)>,
}

impl Proposer {
    /// Starts the batching task; it ends when the proposer is dropped.
    pub fn start(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes one command and waits until it is applied (or refused with the batch it went in).
    pub async fn write(&self, cmd: Command) -> Result<Response, WriteError> {
        let size = cmd.approx_size();
        let (reply, answer) = oneshot::channel();
        if self.tx.send((cmd, size, reply)).is_err() {
            return Err(openraft::error::RaftError::Fatal(
                openraft::error::Fatal::Stopped,
            ));
        }
        answer
            .await
            .unwrap_or(Err(openraft::error::RaftError::Fatal(
                openraft::error::Fatal::Stopped,
            )))
    }
}

/// Limits of one gathered batch ([`gather`]).
pub(crate) struct Limits {
    /// Batches being sent at a time: what arrives while all are taken joins the next one.
    pub in_flight: usize,
    pub max_items: usize,
    /// Bytes of items in one batch (a single larger item goes alone).
    pub max_bytes: usize,
}

/// The gathering loop of group commit and of followers' forwards: takes the first item, waits
/// for a free slot, adds what has arrived meanwhile (while it fits the limits and `joins` the
/// first), and hands the batch to `send` on its own task, which holds the slot until it is done.
/// Items that did not fit wait for the next batch, in order. Ends when the channel closes.
pub(crate) async fn gather<T, S, F>(
    mut rx: mpsc::UnboundedReceiver<T>,
    limits: Limits,
    size: impl Fn(&T) -> usize,
    joins: impl Fn(&T, &T) -> bool,
    send: S,
) where
    T: Send + 'static,
    S: Fn(Vec<T>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    let mut waiting: VecDeque<T> = VecDeque::new();
    loop {
        let first = match waiting.pop_front() {
            Some(i) => i,
            None => match rx.recv().await {
                Some(i) => i,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = size(&first);
        let mut batch = vec![first];
        let mut kept = VecDeque::new();
        while batch.len() < limits.max_items {
            let Some(item) = waiting.pop_front().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            if !joins(&batch[0], &item) || bytes + size(&item) > limits.max_bytes {
                kept.push_back(item);
                continue;
            }
            bytes += size(&item);
            batch.push(item);
        }
        kept.extend(waiting.drain(..));
        waiting = kept;
        let sending = send(batch);
        tokio::spawn(async move {
            sending.await;
            drop(slot);
        });
    }
}

async fn run(raft: Raft, rx: mpsc::UnboundedReceiver<(Command, usize, Reply)>) {
    let limits = Limits {
        in_flight: IN_FLIGHT,
        max_items: MAX_BATCH_COMMANDS,
        max_bytes: MAX_BATCH_BYTES,
    };
    gather(
        rx,
        limits,
        |p| p.1,
        |_, _| true,
        |batch| {
            let raft = raft.clone();
            async move { propose(&raft, batch).await }
        },
    )
    .await
}

/// Proposes one entry for the gathered commands and answers each of them.
async fn propose(raft: &Raft, mut batch: Vec<(Command, usize, Reply)>) {
    if batch.len() == 1 {
        let (cmd, _, reply) = batch.pop().expect("one command");
        let _ = reply.send(raft.client_write(cmd).await.map(|r| r.data));
        return;
    }
    crate::metrics::metrics()
        .proposals_batched
        .observe(batch.len() as f64);
    let (cmds, replies): (Vec<Command>, Vec<Reply>) =
        batch.into_iter().map(|(c, _, r)| (c, r)).unzip();
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(r) => match r.data.result {
            super::Reply::Batch(answers) if answers.len() == replies.len() => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            other => {
                // The state machine answers a batch with one reply per command; anything else is
                // a bug, and every command of the batch was applied: say so rather than guess.
                tracing::error!(reply = ?other, "a batch entry was applied with a wrong reply");
                let e = openraft::error::RaftError::Fatal(openraft::error::Fatal::Panicked);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        },
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
