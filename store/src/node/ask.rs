//! What a follower asks the leader on its clients' behalf, forwarded writes and read-index rounds,
//! goes on one `Peer.Ask` stream per leader and lane that stays open (decision 0031): a question
//! carries an id, its answer the same id, and answers come as they are ready. A unary call per
//! question (`ForwardBatch`, `ReadIndex`) cost a new HTTP/2 stream with its headers and trailers
//! each time, on both members: most of what a write through a follower cost more than one sent to
//! the leader.
//!
//! A stream opens on the first question to a member and lane. When it fails or ends, the
//! questions waiting on it fail with it and the next question opens a new one. Whether a failed
//! question reached the leader is known only when the stream never opened: then the error is the
//! connection's own (a caller may ask again when it could not connect); a stream that broke after
//! it opened fails its questions with [`tonic::Code::Unknown`]. A member that does not know `Ask`
//! (an older version) is asked with the unary calls from then on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use eden_proto::peer::peer_client::PeerClient;
use eden_proto::peer::Payload;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{ForwardError, Lane, LeaderPeer};
use crate::raft::network::{from_payload, to_payload};
use crate::raft::{Command, Response};

/// A question to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Ask {
    /// Propose each command as if it came alone; one answer per command, in order.
    Writes(Vec<Command>),
    /// Confirm leadership with a quorum and name a read index.
    ReadIndex,
}

/// The leader's answer to an [`Ask`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Writes(Vec<Result<Response, ForwardError>>),
    ReadIndex(Result<u64, ForwardError>),
}

type Waiter = oneshot::Sender<Result<Answer, Status>>;

/// The questions sent on one stream and not answered yet.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    waiters: HashMap<u64, Waiter>,
    /// Why the stream closed, once it has: no question joins it then.
    closed: Option<Status>,
}

struct AskStream {
    requests: mpsc::UnboundedSender<Payload>,
    waiting: Arc<Mutex<Waiting>>,
}

/// The open `Ask` streams of this member, by peer address and lane.
pub(crate) struct AskStreams {
    cluster_id: u64,
    streams: Mutex<HashMap<(String, Lane), AskStream>>,
    /// Peers that answered `Ask` with Unimplemented.
    unary_only: Mutex<HashSet<String>>,
}

/// Takes a question's waiter back when its asker stops waiting (a timeout), so an answer that
/// comes later finds nobody and is dropped.
struct Forget {
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .expect("ask lock")
            .waiters
            .remove(&self.id);
    }
}

impl AskStreams {
    pub fn new(cluster_id: u64) -> AskStreams {
        AskStreams {
            cluster_id,
            streams: Mutex::new(HashMap::new()),
            unary_only: Mutex::new(HashSet::new()),
        }
    }

    /// Closes every stream (their questions still get their answers): the next question opens a
    /// new one, on a new connection when the peer clients were remade.
    pub fn close_all(&self) {
        self.streams.lock().expect("ask lock").clear();
    }

    /// Asks `to` and waits for the answer (no time limit: the caller sets one).
    pub async fn ask(&self, to: &LeaderPeer, ask: Ask) -> Result<Answer, Status> {
        if self.unary_only.lock().expect("ask lock").contains(&to.addr) {
            return unary(to.client.clone(), &ask, self.cluster_id).await;
        }
        let (answer, _forget) = self.send(to, &ask);
        match answer.await {
            Ok(Err(status)) if status.code() == Code::Unimplemented => {
                self.unary_only
                    .lock()
                    .expect("ask lock")
                    .insert(to.addr.clone());
                unary(to.client.clone(), &ask, self.cluster_id).await
            }
            Ok(r) => r,
            Err(_) => Err(Status::unavailable("this member is stopping")),
        }
    }

    /// Puts a question on the stream to `to` (opened first if there is none, or it closed). The
    /// question is encoded outside the locks: its waiter is in place before it is sent, so its
    /// answer cannot come first.
    fn send(
        &self,
        to: &LeaderPeer,
        ask: &Ask,
    ) -> (oneshot::Receiver<Result<Answer, Status>>, Forget) {
        let key = (to.addr.clone(), to.lane);
        loop {
            let (tx, rx) = oneshot::channel();
            let (requests, waiting, id) = {
                let mut streams = self.streams.lock().expect("ask lock");
                let stream = streams
                    .entry(key.clone())
                    .or_insert_with(|| open(to.client.clone()));
                let mut w = stream.waiting.lock().expect("ask lock");
                if w.closed.is_some() {
                    drop(w);
                    streams.remove(&key);
                    continue;
                }
                let id = w.next_id;
                w.next_id += 1;
                w.waiters.insert(id, tx);
                drop(w);
                (stream.requests.clone(), stream.waiting.clone(), id)
            };
            let forget = Forget { waiting, id };
            if requests
                .send(to_payload(&(id, ask), self.cluster_id))
                .is_ok()
            {
                return (rx, forget);
            }
            // The stream's task ended (it marks the stream closed as it does): this stream is
            // not used again, the next turn opens a new one.
            let mut streams = self.streams.lock().expect("ask lock");
            if streams
                .get(&key)
                .is_some_and(|s| Arc::ptr_eq(&s.waiting, &forget.waiting))
            {
                streams.remove(&key);
            }
        }
    }
}

/// Opens a stream: its task sends what comes on `requests` and hands each answer to its waiter.
fn open(client: PeerClient<Channel>) -> AskStream {
    let (requests, rx) = mpsc::unbounded_channel();
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    tokio::spawn(run(client, rx, waiting.clone()));
    AskStream { requests, waiting }
}

async fn run(
    mut client: PeerClient<Channel>,
    requests: mpsc::UnboundedReceiver<Payload>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(requests);
    let why = match client.ask(requests).await {
        // Never opened: nothing reached the peer, and the error says why (a connect error, or
        // Unimplemented from an older member).
        Err(status) => status,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                let p = match answers.message().await {
                    Ok(Some(p)) => p,
                    Ok(None) => break Status::unknown("the leader ended the stream"),
                    Err(status) => {
                        break Status::unknown(format!(
                            "the stream to the leader failed ({:?}): {}",
                            status.code(),
                            status.message()
                        ))
                    }
                };
                match from_payload::<(u64, Answer)>(&p) {
                    Ok((id, answer)) => {
                        let waiter = waiting.lock().expect("ask lock").waiters.remove(&id);
                        if let Some(w) = waiter {
                            let _ = w.send(Ok(answer));
                        }
                    }
                    Err(e) => break Status::internal(format!("bad answer from the leader: {e}")),
                }
            }
        }
    };
    let mut w = waiting.lock().expect("ask lock");
    for (_, waiter) in w.waiters.drain() {
        let _ = waiter.send(Err(why.clone()));
    }
    w.closed = Some(why);
}

/// The same question as a unary call, to a member that does not know `Ask`.
async fn unary(
    mut client: PeerClient<Channel>,
    ask: &Ask,
    cluster_id: u64,
) -> Result<Answer, Status> {
    let bad = |e: bincode::Error| Status::internal(format!("bad answer from the leader: {e}"));
    match ask {
        Ask::Writes(cmds) => {
            let reply = client.forward_batch(to_payload(cmds, cluster_id)).await?;
            from_payload(reply.get_ref())
                .map(Answer::Writes)
                .map_err(bad)
        }
        Ask::ReadIndex => {
            let reply = client.read_index(to_payload(&(), cluster_id)).await?;
            from_payload(reply.get_ref())
                .map(Answer::ReadIndex)
                .map_err(bad)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The asking side against a peer port served by a small stand-in for the leader's `Peer`
    //! service, so answer order and an older member can be chosen (the real service is tested
    //! through real members: tests/tests/cluster.rs, authz.rs).
    use std::pin::Pin;
    use std::time::Duration;

    use eden_proto::peer::peer_server::{Peer, PeerServer};
    use tonic::{Request, Response, Streaming};

    use super::*;

    type Answers = Pin<Box<dyn futures::Stream<Item = Result<Payload, Status>> + Send>>;

    /// Answers read-index questions with 100 + the question's id; with `hold`, holds the answer
    /// to every question until the next question came and was answered (so answers come in
    /// reverse pairs), and never answers id 2. Without `ask`, it is an older member: it answers
    /// `ReadIndex` calls with 7 and knows no `Ask`.
    struct Stand {
        ask: bool,
    }

    fn no<T>() -> Result<T, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }

    #[tonic::async_trait]
    impl Peer for Stand {
        async fn append_entries(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            no()
        }
        type AppendStreamStream = Answers;
        async fn append_stream(
            &self,
            _: Request<Streaming<Payload>>,
        ) -> Result<Response<Answers>, Status> {
            no()
        }
        async fn vote(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            no()
        }
        async fn install_snapshot(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            no()
        }
        async fn forward_batch(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            no()
        }
        async fn read_index(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            Ok(Response::new(to_payload(&Ok::<u64, ForwardError>(7), 0)))
        }
        type AskStream = Answers;
        async fn ask(
            &self,
            request: Request<Streaming<Payload>>,
        ) -> Result<Response<Answers>, Status> {
            if !self.ask {
                return no();
            }
            let mut questions = request.into_inner();
            let answers = async_stream(move |tx| async move {
                let mut held: Option<u64> = None;
                while let Ok(Some(p)) = questions.message().await {
                    let (id, _): (u64, Ask) = from_payload(&p).unwrap();
                    if id == 2 {
                        continue;
                    }
                    let answer =
                        |id: u64| Ok(to_payload(&(id, Answer::ReadIndex(Ok(100 + id))), 0));
                    match held.take() {
                        None => held = Some(id),
                        Some(first) => {
                            let _ = tx.send(answer(id)).await;
                            let _ = tx.send(answer(first)).await;
                        }
                    }
                }
            });
            Ok(Response::new(answers))
        }
        async fn lease_query(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            no()
        }
        async fn membership(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            no()
        }
        async fn leadership(&self, _: Request<Payload>) -> Result<Response<Payload>, Status> {
            no()
        }
    }

    /// A stream of what `f` sends on its channel.
    fn async_stream<F, Fut>(f: F) -> Answers
    where
        F: FnOnce(mpsc::Sender<Result<Payload, Status>>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(f(tx));
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn serve(stand: Stand) -> LeaderPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(stand))
                .serve_with_incoming(incoming),
        );
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        LeaderPeer {
            client: PeerClient::new(ch),
            addr,
            lane: Lane::Control,
        }
    }

    fn index(a: Result<Answer, Status>) -> u64 {
        match a {
            Ok(Answer::ReadIndex(Ok(i))) => i,
            Ok(other) => panic!("not a read index: {other:?}"),
            Err(status) => panic!("no answer: {status}"),
        }
    }

    #[tokio::test]
    async fn answers_find_their_questions_in_any_order_and_a_lost_one_only_times_out() {
        let to = serve(Stand { ask: true }).await;
        let asks = AskStreams::new(0);
        // Questions 0 and 1 go together; the stand-in answers 1 before 0.
        let (a, b) = tokio::join!(asks.ask(&to, Ask::ReadIndex), asks.ask(&to, Ask::ReadIndex));
        assert_eq!((index(a), index(b)), (100, 101));
        // Question 2 is never answered: its asker gives up, and the stream goes on.
        let lost = tokio::time::timeout(Duration::from_millis(200), asks.ask(&to, Ask::ReadIndex));
        assert!(lost.await.is_err(), "question 2 was answered");
        assert!(
            asks.streams.lock().unwrap()[&(to.addr.clone(), Lane::Control)]
                .waiting
                .lock()
                .unwrap()
                .waiters
                .is_empty()
        );
        let (c, d) = tokio::join!(asks.ask(&to, Ask::ReadIndex), asks.ask(&to, Ask::ReadIndex));
        assert_eq!((index(c), index(d)), (103, 104));
        assert_eq!(asks.streams.lock().unwrap().len(), 1, "one stream for all");
    }

    #[tokio::test]
    async fn a_member_without_ask_is_asked_with_unary_calls() {
        let to = serve(Stand { ask: false }).await;
        let asks = AskStreams::new(0);
        let ask = || tokio::time::timeout(Duration::from_secs(5), asks.ask(&to, Ask::ReadIndex));
        assert_eq!(index(ask().await.expect("no answer in 5 s")), 7);
        assert!(asks.unary_only.lock().unwrap().contains(&to.addr));
        assert_eq!(index(ask().await.expect("no answer in 5 s")), 7);
    }

    #[tokio::test]
    async fn a_stream_that_ends_fails_its_questions_and_the_next_opens_a_new_one() {
        let to = serve(Stand { ask: true }).await;
        let asks = AskStreams::new(0);
        let (a, b) = tokio::join!(asks.ask(&to, Ask::ReadIndex), asks.ask(&to, Ask::ReadIndex));
        assert_eq!((index(a), index(b)), (100, 101));
        // Close the stream from this side while question 2 waits (sent at the first poll): it
        // fails, not hangs.
        let waiting = asks.ask(&to, Ask::ReadIndex);
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        asks.close_all();
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        let status = r.expect("a question on a closed stream hung").unwrap_err();
        assert_eq!(status.code(), Code::Unknown, "{status}");
        // A new stream starts at id 0 again.
        let (c, d) = tokio::join!(asks.ask(&to, Ask::ReadIndex), asks.ask(&to, Ask::ReadIndex));
        assert_eq!((index(c), index(d)), (100, 101));
    }
}
