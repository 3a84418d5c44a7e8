//! Writes a follower forwards to the leader travel together: the commands proposed on this member
//! while earlier forwards are on their way go to the leader in one `ForwardBatch` call, where each
//! is proposed as if it had come alone (and joins the leader's group commit,
//! [`crate::raft::propose`]). With one call per write, a cluster whose clients spread over every
//! member wrote a third less than one whose clients all spoke to the leader (design/benchmarks.md).
//!
//! At most [`IN_FLIGHT`] calls are on their way at a time; up to [`MAX_BATCH_COMMANDS`] commands
//! or [`MAX_BATCH_BYTES`] go in one. Every command gets its own answer, what the leader's
//! `propose_local` answered for it; a failed call answers each of its commands with the failure.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

use super::ForwardError;
use crate::raft::network::{from_payload, to_payload};
use crate::raft::propose::{gather, Limits};
use crate::raft::{Command, Response};
use eden_proto::peer::peer_client::PeerClient;

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
    leader: u64,
    client: PeerClient<Channel>,
    cmd: Command,
    size: usize,
    left: Duration,
    reply: oneshot::Sender<Forwarded>,
}

pub(crate) struct Forwarder {
    tx: mpsc::UnboundedSender<Item>,
}

impl Forwarder {
    pub fn start(cluster_id: u64) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, cluster_id));
        Forwarder { tx }
    }

    /// Forwards one command to the leader `leader` (whose peer client is `client`) and waits for
    /// its answer, at most `left`.
    pub async fn forward(
        &self,
        leader: u64,
        client: PeerClient<Channel>,
        cmd: Command,
        left: Duration,
    ) -> Forwarded {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            leader,
            client,
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

async fn run(rx: mpsc::UnboundedReceiver<Item>, cluster_id: u64) {
    let limits = Limits {
        in_flight: IN_FLIGHT,
        max_items: MAX_BATCH_COMMANDS,
        max_bytes: MAX_BATCH_BYTES,
    };
    gather(
        rx,
        limits,
        |i| i.size,
        |first, i| i.leader == first.leader,
        |batch| send(batch, cluster_id),
    )
    .await
}

async fn send(batch: Vec<Item>, cluster_id: u64) {
    let mut client = batch[0].client.clone();
    let left = batch.iter().map(|i| i.left).min().unwrap_or_default();
    let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<Forwarded>>) =
        batch.into_iter().map(|i| (i.cmd, i.reply)).unzip();
    let n = cmds.len();
    let call = client.forward_batch(to_payload(&cmds, cluster_id));
    let answers: Vec<Forwarded> = match tokio::time::timeout(left, call).await {
        Err(_) => (0..n).map(|_| Forwarded::TimedOut).collect(),
        Ok(Err(status)) => (0..n).map(|_| Forwarded::Failed(status.clone())).collect(),
        Ok(Ok(reply)) => {
            match from_payload::<Vec<Result<Response, ForwardError>>>(reply.get_ref()) {
                Ok(answers) if answers.len() == n => {
                    answers.into_iter().map(Forwarded::Answer).collect()
                }
                Ok(answers) => (0..n)
                    .map(|_| {
                        Forwarded::BadReply(format!("{} answers to {n} commands", answers.len()))
                    })
                    .collect(),
                Err(e) => (0..n).map(|_| Forwarded::BadReply(e.to_string())).collect(),
            }
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}
