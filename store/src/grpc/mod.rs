//! gRPC services: etcd's v3 API on the client port, eden's peer protocol on the peer port.
//!
//! [`serve`] takes already bound listeners and a shutdown future, so tests can bind port 0.

pub mod auth_service;
pub mod authz;
pub mod cluster;
pub mod concurrency;
pub mod forming;
pub mod gateway;
pub mod join;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod peer;
pub mod tasks;
pub mod ui;
pub mod validate;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use eden_proto::etcdserverpb::auth_server::AuthServer;
use eden_proto::etcdserverpb::cluster_server::ClusterServer;
use eden_proto::etcdserverpb::kv_server::KvServer;
use eden_proto::etcdserverpb::lease_server::LeaseServer;
use eden_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use eden_proto::etcdserverpb::watch_server::WatchServer;
use eden_proto::forming::autopilot_server::AutopilotServer;
use eden_proto::forming::forming_server::FormingServer;
use eden_proto::join::join_server::JoinServer;
use eden_proto::peer::peer_server::PeerServer;
use eden_proto::tasks::tasks_server::TasksServer;
use eden_proto::tls_listener::{self, ClientAuth};
use eden_proto::v3electionpb::election_server::ElectionServer;
use eden_proto::v3lockpb::lock_server::LockServer;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Server;

use crate::node::Node;

/// Streams a client may reset before the server accepted them, per connection, before the
/// server closes that connection (h2's default is 20).
pub const CLIENT_MAX_PENDING_RESETS: usize = 1_000;

/// Streams the server may reset itself on one client connection, over its life, before it closes
/// the connection (hyper's default is 1,024).
pub const CLIENT_MAX_LOCAL_RESETS: usize = 100_000;

/// gRPC overhead allowed on top of the request size limit (etcd allows the same 512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The accepted connections of a listener, with TCP_NODELAY set on each. tonic applies its own
/// `tcp_nodelay` only to listeners it binds itself, not to a stream of connections it is given:
/// without this, small responses wait for the peer's delayed ACK (about 40 ms per request for a
/// client that sends one request at a time).
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY on an accepted connection");
            }
        })
    })
}

/// The TLS of a port when the member has certificates: its own certificate (replaceable, see
/// [`Node::replace_certificate`]), and the CA every client's and member's certificate must come
/// from. On the client port a caller may come without one (`ClientAuth::Optional`), for the join
/// call: every other service refuses it ([`authz::caller`]); the peer port requires one in the
/// handshake.
fn tls_config(
    node: &Node,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(tls)) = (node.server_cert(), node.tls()) else {
        return Ok(None);
    };
    let mut config = tls_listener::config_with(cert, &tls.ca_pem, auth, alpn[0])
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    Arc::make_mut(&mut config).alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(config))
}

/// Serves `router` on `listener` until `shutdown`: over TLS with `tls` (handshakes done
/// concurrently, each connection's certificates given to the handlers), else plaintext; either
/// way with TCP_NODELAY on every accepted connection.
async fn serve_on<L>(
    router: tonic::transport::server::Router<L>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()>
where
    L: tower::Layer<tonic::service::Routes> + Clone,
    L::Service: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    match tls {
        Some(config) => {
            let l = tls_listener::TlsListener::new(listener, config)?;
            router
                .serve_with_incoming_shutdown(l.into_stream(), shutdown)
                .await?
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), shutdown)
                .await?
        }
    }
    Ok(())
}

/// Serves the client port until `shutdown` resolves.
pub async fn serve_client(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let max = node.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    // Streams per connection are not capped (tonic leaves hyper's SETTINGS_MAX_CONCURRENT_STREAMS
    // unset; etcd does not cap them either): a client multiplexes hundreds of agents, each with a
    // watch stream that stays open. What they cost is bounded elsewhere (watchers behind the
    // ring share their reads from storage: watch.rs; client writes by "too many requests":
    // node.rs). Clients that time out reset their streams; h2's default answers the 21st such
    // reset still waiting to be accepted with GOAWAY, which fails every request on that
    // connection, not just the slow ones. A configuration store with thousands of clients per
    // connection tolerates more, and stays bounded against the rapid-reset attack
    // (CVE-2023-44487). The same for streams the server resets itself because a client sent on a
    // stream that had just closed (h2 counts those over the connection's whole life, 1,024 by
    // default: a busy connection of agents that lives for days would reach it).
    //
    // HTTP/1.1 is accepted too, for etcd's HTTP/JSON gateway (gateway.rs) on the same port.
    let tls = tls_config(&node, ClientAuth::Optional, &[b"h2", b"http/1.1"])?;
    let grpc = client_services(&node, max);
    // JSON spells bytes in base64 (4 bytes for 3) and adds its own syntax.
    let gateway = gateway::router(node.clone(), 2 * max);
    let routes = grpc.routes().into_axum_router().merge(gateway);
    let router = Server::builder()
        .http2_max_pending_accept_reset_streams(Some(CLIENT_MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(CLIENT_MAX_LOCAL_RESETS))
        .accept_http1(true)
        .layer(RpcTimer)
        .add_routes(tonic::service::Routes::from(routes).prepare());
    serve_on(router, listener, tls, shutdown).await
}

/// The client port's gRPC services (everything but the HTTP/JSON gateway).
fn client_services(node: &Arc<Node>, max: usize) -> tonic::service::RoutesBuilder {
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        KvServer::new(kv::KvService { node: node.clone() }).max_decoding_message_size(max),
    )
    .add_service(
        WatchServer::new(watch::WatchService { node: node.clone() }).max_decoding_message_size(max),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService { node: node.clone() }).max_decoding_message_size(max),
    )
    .add_service(ClusterServer::new(cluster::ClusterService {
        node: node.clone(),
    }))
    .add_service(MaintenanceServer::new(maintenance::MaintenanceService {
        node: node.clone(),
    }))
    .add_service(JoinServer::new(join::JoinService::new(node.clone())))
    .add_service(FormingServer::new(forming::FormingService::Running(
        node.clone(),
    )))
    .add_service(AutopilotServer::new(forming::AutopilotService {
        node: node.clone(),
    }))
    .add_service(AuthServer::new(auth_service::AuthService {
        node: node.clone(),
    }))
    .add_service(
        ElectionServer::new(concurrency::ElectionService { node: node.clone() })
            .max_decoding_message_size(max),
    )
    .add_service(
        LockServer::new(concurrency::LockService { node: node.clone() })
            .max_decoding_message_size(max),
    )
    .add_service(
        TasksServer::new(tasks::TasksService { node: node.clone() }).max_decoding_message_size(max),
    );
    grpc
}

/// The client port's services, served in process to the web view: each connection carries the
/// identity of the viewer it was made for (the same services and authorizer as the client port;
/// nothing from the network reaches it).
pub struct InProcess {
    conns: tokio::sync::mpsc::UnboundedSender<InProcessConn>,
    secure: bool,
}

/// One in-process connection and whom it acts for (None: root, on an insecure member).
struct InProcessConn {
    io: tokio::io::DuplexStream,
    acting: Option<authz::ActingAs>,
}

impl tonic::transport::server::Connected for InProcessConn {
    type ConnectInfo = Option<authz::ActingAs>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.acting.clone()
    }
}

impl tokio::io::AsyncRead for InProcessConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for InProcessConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl InProcess {
    /// Starts serving the client port's services in process, until `shutdown`.
    pub fn start(
        node: Arc<Node>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> InProcess {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<InProcessConn>();
        let max = node.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
        let secure = node.secure();
        let routes = client_services(&node, max).routes();
        let incoming =
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
        tokio::spawn(async move {
            let r = Server::builder()
                .layer(RpcTimer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "the in-process client services stopped");
            }
        });
        InProcess { conns: tx, secure }
    }

    /// A client whose every request acts as `viewer` (None: root, on an insecure member).
    pub fn client_as(
        &self,
        viewer: Option<eden_proto::pki::CertInfo>,
    ) -> eden_proto::client::Client {
        let conns = self.conns.clone();
        let acting = viewer.map(authz::ActingAs);
        let channel = tonic::transport::Endpoint::from_static("http://in-process")
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let (ours, theirs) = tokio::io::duplex(256 * 1024);
                let sent = conns.send(InProcessConn {
                    io: theirs,
                    acting: acting.clone(),
                });
                async move {
                    sent.map_err(|_| std::io::Error::other("the server is stopping"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(ours))
                }
            }));
        eden_proto::client::Client::over_channel(channel, self.secure)
    }
}

/// Serves the forming call alone on the client port of a server that has no data yet and forms a
/// cluster ([`crate::forming`]), until `shutdown`: over TLS with the member's certificate and its
/// CA (a client certificate required) when `tls` is given.
pub async fn serve_forming(
    state: Arc<crate::forming::Forming>,
    listener: TcpListener,
    tls: Option<(Arc<tls_listener::ServerCert>, String)>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let config = match &tls {
        Some((cert, ca_pem)) => Some(
            tls_listener::config_with(cert.clone(), ca_pem, ClientAuth::Required, b"h2")
                .map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
        ),
        None => None,
    };
    let router =
        Server::builder().add_service(FormingServer::new(forming::FormingService::Forming {
            state,
            secure: tls.is_some(),
        }));
    serve_on(router, listener, config, shutdown).await
}

/// Serves the peer port until `shutdown` resolves. Raft's messages are handled on the runtime
/// this runs on; forwarded client work on `client_work`.
pub async fn serve_peer(
    node: Arc<Node>,
    listener: TcpListener,
    client_work: tokio::runtime::Handle,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Peers are trusted: a follower whose forwarded writes time out while queued resets many
    // streams before they are accepted, which h2 would otherwise answer with GOAWAY
    // (ENHANCE_YOUR_CALM), failing every request on the connection.
    let tls = tls_config(&node, ClientAuth::Required, &[b"h2"])?;
    let router = Server::builder()
        .http2_max_pending_accept_reset_streams(Some(100_000))
        .add_service(
            PeerServer::new(peer::PeerService { node, client_work })
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        );
    serve_on(router, listener, tls, shutdown).await
}

/// A tower layer that times every client RPC into `grpc_server_handling_seconds`.
#[derive(Clone, Default)]
pub struct RpcTimer;

impl<S> tower::Layer<S> for RpcTimer {
    type Service = TimedRpc<S>;
    fn layer(&self, inner: S) -> TimedRpc<S> {
        TimedRpc { inner }
    }
}

#[derive(Clone)]
pub struct TimedRpc<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for TimedRpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Paths are /etcdserverpb.KV/Range, or the gateway's /v3/kv/range.
        let path = req.uri().path();
        let (service, method) = if path.starts_with("/etcdserverpb.")
            || path.starts_with("/v3electionpb.")
            || path.starts_with("/v3lockpb.")
            || path.starts_with("/eden.")
        {
            let mut parts = path.trim_start_matches('/').splitn(2, '/');
            let service = parts.next().unwrap_or("");
            let service = service.rsplit('.').next().unwrap_or(service).to_string();
            (service, parts.next().unwrap_or("").to_string())
        } else if path.starts_with("/v3") {
            // The gateway's routes are a fixed set; anything else under them is "not found".
            let route = path.split_once('/').map(|(_, r)| r).unwrap_or("");
            let route = route.split_once('/').map(|(_, r)| r).unwrap_or("");
            ("gateway".to_string(), route.to_string())
        } else {
            ("http".to_string(), path.to_string())
        };
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            // Paths that name nothing served are not counted (their labels would be unbounded).
            let served = r.as_ref().is_ok_and(|resp| {
                resp.status() != http::StatusCode::NOT_FOUND
                    && resp.headers().get("grpc-status").is_none_or(|s| s != "12")
            });
            if served {
                crate::metrics::metrics()
                    .grpc
                    .with_label_values(&[&service, &method])
                    .observe(start.elapsed().as_secs_f64());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let conn = accepted.next().await.unwrap().unwrap();
        assert!(
            conn.nodelay().unwrap(),
            "TCP_NODELAY is off on an accepted connection"
        );
    }
}
