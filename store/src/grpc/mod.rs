//! gRPC services: etcd's v3 API on the client port, eden's peer protocol on the peer port.
//!
//! [`serve`] takes already bound listeners and a shutdown future, so tests can bind port 0.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod peer;
pub mod validate;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use eden_proto::etcdserverpb::cluster_server::ClusterServer;
use eden_proto::etcdserverpb::kv_server::KvServer;
use eden_proto::etcdserverpb::lease_server::LeaseServer;
use eden_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use eden_proto::etcdserverpb::watch_server::WatchServer;
use eden_proto::peer::peer_server::PeerServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::node::Node;

/// gRPC overhead allowed on top of the request size limit (etcd allows the same 512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The HTTP/2 settings of both ports. Streams per connection are not limited (etcd's default too;
/// hyper's is 200, and a client multiplexing thousands of agents' requests, or a follower
/// forwarding thousands of writes, would queue behind it); many streams reset by the peer before
/// they were accepted (requests that timed out while queued) are tolerated rather than answered
/// with GOAWAY, which would fail every request on the connection.
fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(u32::MAX)
        .http2_max_pending_accept_reset_streams(Some(100_000))
}

/// Serves the client port until `shutdown` resolves.
pub async fn serve_client(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let max = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    server()
        .layer(crate::metrics::RpcTimer)
        .add_service(
            KvServer::new(kv::KvService { node: node.clone() }).max_decoding_message_size(max),
        )
        .add_service(
            WatchServer::new(watch::WatchService { node: node.clone() })
                .max_decoding_message_size(max),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService { node: node.clone() })
                .max_decoding_message_size(max),
        )
        .add_service(ClusterServer::new(cluster::ClusterService {
            node: node.clone(),
        }))
        .add_service(MaintenanceServer::new(maintenance::MaintenanceService {
            node: node.clone(),
        }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Serves the peer port until `shutdown` resolves.
pub async fn serve_peer(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    server()
        .add_service(
            PeerServer::new(peer::PeerService { node })
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
