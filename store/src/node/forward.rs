//! Writes a follower forwards to the leader travel together: the commands proposed on this member
//! while earlier forwards are on their way go to the leader in one question on the `Ask` stream
//! ([`super::ask`]), where each
//! is proposed as if it had come alone (and joins the leader's group commit,
//! [`crate::raft::propose`]). With one call per write, a cluster whose clients spread over every
//! member wrote a third less than one whose clients all spoke to the leader (design/benchmarks.md).
//!
//! At most [`IN_FLIGHT`] calls are on their way at a time; up to [`MAX_BATCH_COMMANDS`] commands
//! or [`MAX_BATCH_BYTES`] go in one. Every command gets its own answer, what the leader's
//! `propose_local` answered for it; a failed call answers each of its commands with the failure.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::ask::{Answer, Ask, AskStreams};
use super::{ForwardError, LeaderPeer};
use crate::raft::propose::{gather, Limits};
use crate::raft::{Command, Response};

/// Calls on their way to the leader at a time.
pub const IN_FLIGHT: usize = 4;
/// Commands in one call, at most.
pub const MAX_BATCH_COMMANDS: usize = 1024;
/// Bytes of commands in one call, at most (a single larger command goes alone).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// What became of one forwarded command.
pub(crate) enum Forwarded {
    /// The leader's answer for this command.
    Answer(Result<Response, ForwardError>),
    /// No answer in the time the command had left.
    TimedOut,
    /// The call failed (the leader's status).
    Failed(Status),
    /// The leader answered something that does not decode.
    BadReply(String),
}

struct Item {
    to: LeaderPeer,
    cmd: Command,
    size: usize,
    left: Duration,
    reply: oneshot::Sender<Forwarded>,
}

pub(crate) struct Forwarder {
    tx: mpsc::UnboundedSender<Item>,
}

impl Forwarder {
    pub fn start(asks: Arc<AskStreams>) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, asks));
        Forwarder { tx }
    }

    /// Forwards one command to the leader `to` and waits for its answer, at most `left`.
    pub async fn forward(&self, to: LeaderPeer, cmd: Command, left: Duration) -> Forwarded {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            to,
            size: cmd.approx_size(),
            cmd,
            left,
            reply,
        };
        if self.tx.send(item).is_err() {
            return Forwarded::Failed(Status::unavailable("this member is stopping"));
        }
        match tokio::time::timeout(left, answer).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) => Forwarded::Failed(Status::unavailable("this member is stopping")),
            Err(_) => Forwarded::TimedOut,
        }
    }
}

async fn run(rx: mpsc::UnboundedReceiver<Item>, asks: Arc<AskStreams>) {
    let limits = Limits {
        in_flight: IN_FLIGHT,
        max_items: MAX_BATCH_COMMANDS,
        max_bytes: MAX_BATCH_BYTES,
    };
    gather(
        rx,
        limits,
        |i| i.size,
        |first, i| i.to.addr == first.to.addr,
        |batch| send(batch, asks.clone()),
    )
    .await
}

async fn send(batch: Vec<Item>, asks: Arc<AskStreams>) {
    let to = batch[0].to.clone();
    let left = batch.iter().map(|i| i.left).min().unwrap_or_default();
    let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<Forwarded>>) =
        batch.into_iter().map(|i| (i.cmd, i.reply)).unzip();
    let n = cmds.len();
    let asked = asks.ask(&to, Ask::Writes(cmds));
    let answers: Vec<Forwarded> = match tokio::time::timeout(left, asked).await {
        Err(_) => (0..n).map(|_| Forwarded::TimedOut).collect(),
        Ok(Err(status)) => (0..n).map(|_| Forwarded::Failed(status.clone())).collect(),
        Ok(Ok(Answer::Writes(answers))) if answers.len() == n => {
            answers.into_iter().map(Forwarded::Answer).collect()
        }
        Ok(Ok(Answer::Writes(answers))) => (0..n)
            .map(|_| Forwarded::BadReply(format!("{} answers to {n} commands", answers.len())))
            .collect(),
        Ok(Ok(Answer::ReadIndex(_))) => (0..n)
            .map(|_| Forwarded::BadReply("a read index in answer to writes".into()))
            .collect(),
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}
