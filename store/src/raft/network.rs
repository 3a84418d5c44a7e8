//! Raft RPCs between members over tonic gRPC (service `eden.peer.Peer` on the peer port).
//!
//! Messages are openraft's own serde types, bincode-encoded into an opaque payload; the reply
//! carries `Result<response, RaftError>` the same way, so a remote Raft error comes back as one.

use eden_proto::client::Tls;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use eden_proto::peer::peer_client::PeerClient;
use eden_proto::peer::Payload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::{Member, NodeId, TypeConfig};

/// Makes a lazily connecting gRPC channel to a member's peer address; with `local`, connections
/// leave from that IP (the one this member's peer port listens on).
/// A lazy connection to a member's peer port: mutual TLS when `tls` is given (this member's
/// certificate, the cluster's CA), else plaintext.
pub fn peer_channel(
    addr: &str,
    local: Option<IpAddr>,
    tls: Option<&Tls>,
) -> Result<Channel, tonic::transport::Error> {
    let mut e = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
        )?,
        None => Endpoint::from_shared(format!("http://{addr}"))?,
    };
    e = e.local_address(local);
    Ok(e.connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// A request or reply for the peer port; `cluster_id` is the sender's (0 in replies).
pub fn to_payload<T: Serialize>(v: &T, cluster_id: u64) -> Payload {
    Payload {
        data: bincode::serialize(v).expect("serializing an in-memory value cannot fail"),
        cluster_id,
        to: 0,
    }
}

pub fn from_payload<T: DeserializeOwned>(p: &Payload) -> Result<T, bincode::Error> {
    bincode::deserialize(&p.data)
}

/// The certificate a member presents to other members, replaceable while it runs (a member
/// renews its own): connections made from then on present the new one, and [`PeerConn`]s remake
/// theirs when the generation changes.
#[derive(Debug, Default)]
pub struct MemberTls {
    current: std::sync::RwLock<Option<Tls>>,
    generation: std::sync::atomic::AtomicU64,
}

impl MemberTls {
    pub fn new(tls: Option<Tls>) -> Arc<MemberTls> {
        Arc::new(MemberTls {
            current: std::sync::RwLock::new(tls),
            generation: Default::default(),
        })
    }

    pub fn get(&self) -> Option<Tls> {
        self.current.read().expect("tls lock").clone()
    }

    /// How many times the certificate was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn replace(&self, tls: Tls) {
        *self.current.write().expect("tls lock") = Some(tls);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Makes the connections to other members. `local_ip` is where they leave from; `cluster_id`
/// goes with every message.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    pub local_ip: Option<IpAddr>,
    pub cluster_id: u64,
    pub tls: Arc<MemberTls>,
    channels: Channels,
}

/// One connection per peer address (and certificate generation), shared by every client openraft
/// asks for. openraft 0.9 asks for a new client for each leadership check (every read-index
/// round) and each vote; each used to open its own TCP (and TLS) connection.
type Channels =
    Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, Option<PeerClient<Channel>>)>>>;

fn shared_client(
    channels: &Channels,
    addr: &str,
    local_ip: Option<IpAddr>,
    tls: &MemberTls,
) -> Option<PeerClient<Channel>> {
    let generation = tls.generation();
    let mut m = channels.lock().expect("peer channels lock");
    if let Some((g, c)) = m.get(addr) {
        if *g == generation {
            return c.clone();
        }
    }
    let c = peer_channel(addr, local_ip, tls.get().as_ref())
        .ok()
        .map(PeerClient::new);
    m.insert(addr.to_string(), (generation, c.clone()));
    c
}

impl PeerNetwork {
    /// Connections leave from the IP of `listen_addr` when it is a specific address (not
    /// 0.0.0.0 or ::), so peers and firewalls see this member's own address.
    pub fn new(listen_addr: &str, cluster_id: u64, tls: Arc<MemberTls>) -> PeerNetwork {
        PeerNetwork {
            local_ip: listen_addr
                .parse::<SocketAddr>()
                .ok()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified()),
            cluster_id,
            tls,
            channels: Default::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        let mut c = PeerConn {
            target,
            cluster_id: self.cluster_id,
            client: None,
            addr: node.peer_addr.clone(),
            local_ip: self.local_ip,
            tls: self.tls.clone(),
            generation: 0,
            channels: self.channels.clone(),
            stream: None,
            appends: 0,
            unary_only: false,
        };
        c.connect();
        c
    }
}

pub struct PeerConn {
    target: NodeId,
    cluster_id: u64,
    addr: String,
    client: Option<PeerClient<Channel>>,
    local_ip: Option<IpAddr>,
    tls: Arc<MemberTls>,
    /// Of the certificate `client` presents.
    generation: u64,
    channels: Channels,
    /// The append stream to this peer, once opened ([`PeerConn::append_entries`]).
    stream: Option<AppendStream>,
    /// Append requests made through this connection.
    appends: u64,
    /// The peer does not know `AppendStream` (a member of an older version).
    unary_only: bool,
}

/// One `AppendStream` call: requests go one at a time, each answered before the next. (Generic
/// over its answers so tests can make one from a channel.)
struct AppendStream<A = tonic::Streaming<Payload>> {
    requests: tokio::sync::mpsc::Sender<Payload>,
    answers: A,
    /// A request went and its answer was not read yet. Left set when the call waiting for it
    /// is dropped: openraft wraps every append in its own timeout, as long as ours, and when
    /// that one fires first our call just stops. That answer may still come, and on this stream
    /// it would be taken for the next request's (a follower's "conflict" for an earlier probe
    /// read as the answer to a later append, or a success for entries it has not got yet).
    waiting: bool,
}

impl<A> AppendStream<A>
where
    A: futures::Stream<Item = Result<Payload, tonic::Status>> + Unpin,
{
    fn new(requests: tokio::sync::mpsc::Sender<Payload>, answers: A) -> AppendStream<A> {
        AppendStream {
            requests,
            answers,
            waiting: false,
        }
    }

    /// Sends one request and waits for its answer.
    async fn exchange(&mut self, payload: Payload) -> Result<Payload, tonic::Status> {
        use futures::StreamExt;
        self.waiting = true;
        self.requests
            .send(payload)
            .await
            .map_err(|_| tonic::Status::unavailable("the append stream closed"))?;
        let answer = self
            .answers
            .next()
            .await
            .ok_or_else(|| tonic::Status::unavailable("the append stream ended"))??;
        self.waiting = false;
        Ok(answer)
    }

    /// The stream in `slot` if it can carry another request: one whose last request was
    /// abandoned before its answer came is dropped (see [`AppendStream::waiting`]).
    fn usable(slot: &mut Option<AppendStream<A>>) -> Option<&mut AppendStream<A>> {
        if slot.as_ref().is_some_and(|s| s.waiting) {
            *slot = None;
        }
        slot.as_mut()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

/// One of the generated client's methods, boxed so [`PeerConn::call`] can be shared by all RPCs.
type PeerRpc =
    fn(
        PeerClient<Channel>,
        Payload,
    ) -> futures::future::BoxFuture<'static, Result<tonic::Response<Payload>, tonic::Status>>;

impl PeerConn {
    fn connect(&mut self) {
        self.stream = None;
        self.generation = self.tls.generation();
        self.client = shared_client(&self.channels, &self.addr, self.local_ip, &self.tls);
    }

    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        which: PeerRpc,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.generation != self.tls.generation() {
            self.connect();
        }
        let client = self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&Msg(format!(
                "bad peer address {}",
                self.addr
            ))))
        })?;
        let mut payload = to_payload(req, self.cluster_id);
        payload.to = self.target;
        let fut = which(client, payload);
        // Only a peer that cannot be reached at all is Unreachable: openraft then pauses
        // replication to it for 500 ms. A call that was too slow for its deadline (an append
        // request on a busy member gets the heartbeat interval) or failed otherwise is a network
        // error, retried at once; treating those as unreachable stalled commits for half a
        // second at a time under load.
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(status)) => return Err(self.failed(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        self.answer(&reply)
    }

    fn timed_out<E: std::error::Error>(&self) -> RPCError<NodeId, Member, E> {
        RPCError::Network(NetworkError::new(&Msg(format!(
            "timeout talking to {}",
            self.addr
        ))))
    }

    fn failed<E: std::error::Error>(&self, status: tonic::Status) -> RPCError<NodeId, Member, E> {
        let msg = Msg(format!("{}: {}", self.addr, status.message()));
        match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&msg)),
            _ => RPCError::Network(NetworkError::new(&msg)),
        }
    }

    fn answer<Resp, E>(
        &self,
        reply: &Payload,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> =
            from_payload(reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends one append request on the append stream (opened first if there is none) and waits
    /// for its answer.
    async fn on_stream(&mut self, payload: Payload) -> Result<Payload, tonic::Status> {
        if AppendStream::usable(&mut self.stream).is_none() {
            let mut client = self.client.clone().ok_or_else(|| {
                tonic::Status::unavailable(format!("bad peer address {}", self.addr))
            })?;
            let (requests, rx) = tokio::sync::mpsc::channel(1);
            let answers = client
                .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            self.stream = Some(AppendStream::new(requests, answers));
        }
        let s = self.stream.as_mut().expect("the append stream is open");
        s.exchange(payload).await
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        // openraft 0.9 makes a new client for each leadership check, which sends one request;
        // a replication task sends all its requests through one. So the first request goes as
        // a call of its own and the ones after it on a stream, kept open between them.
        self.appends += 1;
        if self.appends == 1 || self.unary_only {
            return self
                .call(&rpc, &option, |mut c, p| {
                    Box::pin(async move { c.append_entries(p).await })
                })
                .await;
        }
        if self.generation != self.tls.generation() {
            self.connect();
        }
        let mut payload = to_payload(&rpc, self.cluster_id);
        payload.to = self.target;
        // A request that failed or timed out closes the stream: its answer, if one still comes,
        // must not be taken for the next request's.
        match tokio::time::timeout(option.hard_ttl(), self.on_stream(payload)).await {
            Ok(Ok(reply)) => self.answer(&reply),
            Err(_) => {
                self.stream = None;
                Err(self.timed_out())
            }
            Ok(Err(status)) => {
                self.stream = None;
                if status.code() == tonic::Code::Unimplemented {
                    self.unary_only = true;
                }
                Err(self.failed(status))
            }
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&rpc, &option, |mut c, p| {
            Box::pin(async move { c.install_snapshot(p).await })
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(&rpc, &option, |mut c, p| {
            Box::pin(async move { c.vote(p).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(b: u8) -> Payload {
        Payload {
            data: vec![b],
            cluster_id: 0,
            to: 0,
        }
    }

    /// A request whose call was dropped before its answer came (openraft's own timeout fired
    /// first) leaves its stream unused: the next request never gets that answer as its own.
    #[tokio::test]
    async fn an_abandoned_append_never_answers_the_next_one() {
        let (requests, mut rx) = tokio::sync::mpsc::channel::<Payload>(1);
        let (answer, answers) = tokio::sync::mpsc::channel(4);
        // The peer: echoes each request, the one holding 1 slowly.
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if p.data == [1] {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = answer.send(Ok(p)).await;
            }
        });
        let answers = tokio_stream::wrappers::ReceiverStream::new(answers);
        let mut slot = Some(AppendStream::new(requests, answers));
        // Answered in time: the stream carries the next request too.
        let s = AppendStream::usable(&mut slot).expect("a fresh stream");
        assert_eq!(s.exchange(payload(0)).await.unwrap().data, [0]);
        let s = AppendStream::usable(&mut slot).expect("still usable");
        let abandoned = tokio::time::timeout(Duration::from_millis(20), s.exchange(payload(1)));
        assert!(
            abandoned.await.is_err(),
            "the slow answer outlived the call"
        );
        if let Some(s) = AppendStream::usable(&mut slot) {
            assert_eq!(s.exchange(payload(2)).await.unwrap().data, [2]);
        }
        assert!(slot.is_none(), "the abandoned stream is dropped");
    }
}
