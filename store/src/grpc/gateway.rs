//! etcd's HTTP/JSON gateway on the client port: `POST /v3/kv/range` with `{"key":"Zm9v"}` and
//! the rest of etcd's `/v3/...` routes (also under `/v3beta/`), plus `GET /version`, `/health`
//! and `/metrics`, served on the same port as gRPC (HTTP/1.1 or HTTP/2, told apart by the
//! connection; gRPC by its paths).
//!
//! Each route decodes etcd's JSON mapping of the request (eden_proto's pbjson impls), calls the
//! same service a gRPC call reaches, with the connection's certificate, so the one authorizer and
//! the same limits apply, and answers in etcd's JSON mapping. Errors have the shape etcd's
//! gateway gives them (`{"error":..., "message":..., "code":N}`, with grpc-gateway's HTTP status
//! for the code); streaming RPCs answer one `{"result":...}` line per message.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request as HttpRequest;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use eden_proto::etcdserverpb::auth_server::Auth;
use eden_proto::etcdserverpb::cluster_server::Cluster;
use eden_proto::etcdserverpb::kv_server::Kv;
use eden_proto::etcdserverpb::lease_server::Lease;
use eden_proto::etcdserverpb::maintenance_server::Maintenance;
use eden_proto::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};
use eden_proto::v3electionpb::election_server::Election;
use eden_proto::v3lockpb::lock_server::Lock;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::grpc::{
    auth_service::AuthService, cluster::ClusterService, concurrency, kv::KvService,
    lease::LeaseService, maintenance, maintenance::MaintenanceService, watch::WatchService,
};
use crate::metrics::ServerHealth;
use crate::node::Node;

/// The version prefixes etcd serves its gateway under (3.4 and 3.5: `/v3/` and `/v3beta/`).
const PREFIXES: [&str; 2] = ["/v3", "/v3beta"];

/// The gateway's routes for `node`; a request body may be at most `max_body` bytes of JSON (a
/// stream's, per message).
pub fn router(node: Arc<Node>, max_body: usize) -> Router {
    let kv = Arc::new(KvService { node: node.clone() });
    let lease = Arc::new(LeaseService { node: node.clone() });
    let watch = Arc::new(WatchService { node: node.clone() });
    let cluster = Arc::new(ClusterService { node: node.clone() });
    let maint = Arc::new(MaintenanceService { node: node.clone() });
    let auth = Arc::new(AuthService { node: node.clone() });
    let election = Arc::new(concurrency::ElectionService { node: node.clone() });
    let lock = Arc::new(concurrency::LockService { node: node.clone() });

    macro_rules! unary {
        ($svc:ident . $method:ident) => {{
            let svc = $svc.clone();
            post(move |req: HttpRequest| {
                let svc = svc.clone();
                async move {
                    unary(req, max_body, move |r| async move { svc.$method(r).await }).await
                }
            })
        }};
    }
    macro_rules! server_stream {
        ($svc:ident . $method:ident) => {{
            let svc = $svc.clone();
            post(move |req: HttpRequest| {
                let svc = svc.clone();
                async move {
                    server_stream(req, max_body, move |r| async move { svc.$method(r).await }).await
                }
            })
        }};
    }

    macro_rules! bidi {
        ($svc:ident . $method:ident, $req:ty, $keep_open:expr) => {{
            let svc = $svc.clone();
            post(move |req: HttpRequest| {
                let svc = svc.clone();
                async move {
                    bidi_stream::<$req, _, _>(req, max_body, $keep_open, move |r| svc.$method(r))
                }
            })
        }};
    }

    let mut r = Router::new();
    for v in PREFIXES {
        let routes: Vec<(&str, MethodRouter)> = vec![
            ("/kv/range", unary!(kv.range)),
            ("/kv/put", unary!(kv.put)),
            ("/kv/deleterange", unary!(kv.delete_range)),
            ("/kv/txn", unary!(kv.txn)),
            ("/kv/compaction", unary!(kv.compact)),
            // The watch stays open after the body ends, as etcd's (the caller hangs up).
            ("/watch", bidi!(watch.open, WatchRequest, true)),
            ("/lease/grant", unary!(lease.lease_grant)),
            ("/lease/revoke", unary!(lease.lease_revoke)),
            ("/kv/lease/revoke", unary!(lease.lease_revoke)),
            (
                "/lease/keepalive",
                bidi!(lease.keep_alive, LeaseKeepAliveRequest, false),
            ),
            ("/lease/timetolive", unary!(lease.lease_time_to_live)),
            ("/kv/lease/timetolive", unary!(lease.lease_time_to_live)),
            ("/lease/leases", unary!(lease.lease_leases)),
            ("/kv/lease/leases", unary!(lease.lease_leases)),
            ("/cluster/member/add", unary!(cluster.member_add)),
            ("/cluster/member/remove", unary!(cluster.member_remove)),
            ("/cluster/member/update", unary!(cluster.member_update)),
            ("/cluster/member/list", unary!(cluster.member_list)),
            ("/cluster/member/promote", unary!(cluster.member_promote)),
            ("/maintenance/alarm", unary!(maint.alarm)),
            ("/maintenance/status", unary!(maint.status)),
            ("/maintenance/defragment", unary!(maint.defragment)),
            // etcd routes Hash and HashKV to the same path; Hash is the one it answers.
            ("/maintenance/hash", unary!(maint.hash)),
            ("/maintenance/snapshot", server_stream!(maint.snapshot)),
            (
                "/maintenance/transfer-leadership",
                unary!(maint.move_leader),
            ),
            ("/maintenance/downgrade", unary!(maint.downgrade)),
            ("/auth/enable", unary!(auth.auth_enable)),
            ("/auth/disable", unary!(auth.auth_disable)),
            ("/auth/status", unary!(auth.auth_status)),
            ("/auth/authenticate", unary!(auth.authenticate)),
            ("/auth/user/add", unary!(auth.user_add)),
            ("/auth/user/get", unary!(auth.user_get)),
            ("/auth/user/list", unary!(auth.user_list)),
            ("/auth/user/delete", unary!(auth.user_delete)),
            ("/auth/user/changepw", unary!(auth.user_change_password)),
            ("/auth/user/grant", unary!(auth.user_grant_role)),
            ("/auth/user/revoke", unary!(auth.user_revoke_role)),
            ("/auth/role/add", unary!(auth.role_add)),
            ("/auth/role/get", unary!(auth.role_get)),
            ("/auth/role/list", unary!(auth.role_list)),
            ("/auth/role/delete", unary!(auth.role_delete)),
            ("/auth/role/grant", unary!(auth.role_grant_permission)),
            ("/auth/role/revoke", unary!(auth.role_revoke_permission)),
            ("/election/campaign", unary!(election.campaign)),
            ("/election/proclaim", unary!(election.proclaim)),
            ("/election/leader", unary!(election.leader)),
            ("/election/observe", server_stream!(election.observe)),
            ("/election/resign", unary!(election.resign)),
            ("/lock/lock", unary!(lock.lock)),
            ("/lock/unlock", unary!(lock.unlock)),
        ];
        for (path, route) in routes {
            r = r.route(&format!("{v}{path}"), route);
        }
    }
    // Any other path under the gateway's prefixes is not found (rather than reaching gRPC's
    // "unimplemented", which an HTTP/1.1 client cannot read).
    for v in PREFIXES.iter().chain(&["/v3alpha"]) {
        r = r.route(&format!("{v}/{{*rest}}"), any(not_found));
    }
    let version = get(|| async {
        json_response(
            StatusCode::OK,
            format!(
                "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}\",\"eden\":\"{}\"}}\n",
                maintenance::ETCD_API_VERSION,
                cluster_version(maintenance::ETCD_API_VERSION),
                env!("CARGO_PKG_VERSION")
            ),
        )
    });
    let health: Arc<dyn ServerHealth> = node.clone();
    // /metrics, /health and /version as on etcd's client port: on a secure member for a caller
    // with a valid certificate from the cluster's CA, as the metrics port without anonymous
    // scrapes (the routes under /v3 check their caller in the services they call).
    let checked = crate::http::routes(health)
        .route("/version", version)
        .layer(axum::middleware::from_fn(
            move |req: HttpRequest, next: axum::middleware::Next| {
                let node = node.clone();
                async move {
                    match certificate_refused(&node, &req) {
                        Some(status) => error_response(&status),
                        None => next.run(req).await,
                    }
                }
            },
        ));
    r.merge(checked)
}

/// etcd's cluster version: the major and minor of its server version, patch 0.
fn cluster_version(server: &str) -> String {
    let mut parts = server.splitn(3, '.');
    format!(
        "{}.{}.0",
        parts.next().unwrap_or("3"),
        parts.next().unwrap_or("5")
    )
}

/// Why the connection of `req` may not use a route that needs a member of the cluster's PKI (a
/// secure member only): no certificate, or one revoked or expired since the handshake.
fn certificate_refused(node: &Node, req: &HttpRequest) -> Option<Status> {
    if !node.secure() {
        return None;
    }
    let r = Request::from_parts(MetadataMap::new(), req.extensions().clone(), ());
    crate::grpc::authz::cert_of(node, &r).err()
}

async fn not_found() -> HttpResponse {
    (StatusCode::NOT_FOUND, "Not Found\n").into_response()
}

/// A unary RPC: the body is one JSON message (empty for the default one).
async fn unary<Req, Resp, F, Fut>(req: HttpRequest, max_body: usize, call: F) -> HttpResponse
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let request = match decode::<Req>(req, max_body).await {
        Ok(r) => r,
        Err(status) => return error_response(&status),
    };
    match call(request).await {
        Ok(resp) => match serde_json::to_string(resp.get_ref()) {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => error_response(&Status::internal(e.to_string())),
        },
        Err(status) => error_response(&status),
    }
}

/// A server-streaming RPC: one JSON request, one `{"result":...}` line per message answered.
async fn server_stream<Req, Resp, S, F, Fut>(
    req: HttpRequest,
    max_body: usize,
    call: F,
) -> HttpResponse
where
    Req: DeserializeOwned + Default,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<S>, Status>>,
{
    let request = match decode::<Req>(req, max_body).await {
        Ok(r) => r,
        Err(status) => return error_response(&status),
    };
    match call(request).await {
        Ok(resp) => stream_response(resp.into_inner(), None),
        Err(status) => error_response(&status),
    }
}

/// A bidirectional stream: the body is a sequence of JSON requests, read as they come; each
/// message answered is a `{"result":...}` line. With `keep_open` the stream stays open after the
/// body ends (etcd's watch does: the caller hangs up to stop it); else it ends with the body.
fn bidi_stream<Req, Resp, S>(
    req: HttpRequest,
    max_body: usize,
    keep_open: bool,
    open: impl FnOnce(Request<ReceiverStream<Result<Req, Status>>>) -> Result<Response<S>, Status>,
) -> HttpResponse
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let (tx, rx) = mpsc::channel(16);
    let (err_tx, err_rx) = oneshot::channel();
    let request = Request::from_parts(
        metadata(&parts.headers),
        parts.extensions,
        ReceiverStream::new(rx),
    );
    match open(request) {
        Ok(resp) => {
            tokio::spawn(read_messages(body, max_body, keep_open, tx, err_tx));
            stream_response(resp.into_inner(), Some(err_rx))
        }
        Err(status) => error_response(&status),
    }
}

/// Feeds the JSON messages of `body` to `tx` as they arrive. A message that is not valid (or
/// larger than `max` bytes) ends the stream, its error sent to `err`.
async fn read_messages<Req: DeserializeOwned>(
    body: Body,
    max: usize,
    keep_open: bool,
    tx: mpsc::Sender<Result<Req, Status>>,
    err: oneshot::Sender<Status>,
) {
    let mut data = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::select! {
            c = data.next() => c,
            _ = tx.closed() => return,
        };
        let ended = match chunk {
            Some(Ok(bytes)) => {
                buf.extend_from_slice(&bytes);
                false
            }
            Some(Err(_)) => return,
            None => true,
        };
        let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<Req>();
        let mut consumed = 0;
        let failure = loop {
            match values.next() {
                Some(Ok(msg)) => {
                    consumed = values.byte_offset();
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() && !ended => break None,
                Some(Err(e)) => break Some(Status::invalid_argument(e.to_string())),
                None => break None,
            }
        };
        buf.drain(..consumed);
        if let Some(status) = failure {
            let _ = err.send(status);
            return;
        }
        if buf.len() > max {
            let _ = err.send(Status::resource_exhausted(format!(
                "eden: a message of the stream is larger than {max} bytes"
            )));
            return;
        }
        if ended {
            break;
        }
    }
    if keep_open {
        tx.closed().await;
    }
}

/// The lines of a streamed answer: `{"result":...}` per message, `{"error":{...}}` for an error
/// (the stream's own, or one in the request body: `body_error`), which ends it.
fn stream_response<Resp, S>(
    stream: S,
    body_error: Option<oneshot::Receiver<Status>>,
) -> HttpResponse
where
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let answers = stream.map(|item| match item {
        Ok(msg) => match serde_json::to_string(&msg) {
            Ok(json) => Ok(format!("{{\"result\":{json}}}\n")),
            Err(e) => Err(Status::internal(e.to_string())),
        },
        Err(status) => Err(status),
    });
    let body_errors = futures::stream::iter(body_error)
        .filter_map(|rx| async move { rx.await.ok() })
        .map(Err);
    let mut failed = false;
    let lines = futures::stream::select(answers, body_errors)
        .take_while(move |item| {
            // The first error is the stream's last line.
            let go = !failed;
            failed |= item.is_err();
            futures::future::ready(go)
        })
        .map(|item| {
            Ok::<_, std::convert::Infallible>(Bytes::from(match item {
                Ok(line) => line,
                Err(status) => stream_error_line(&status),
            }))
        });
    HttpResponse::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The request's JSON body decoded into `Req` (an empty body is the default message), with the
/// request's metadata and its connection's certificate.
async fn decode<Req>(req: HttpRequest, max_body: usize) -> Result<Request<Req>, Status>
where
    Req: DeserializeOwned + Default,
{
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, max_body).await.map_err(|_| {
        Status::resource_exhausted(format!("eden: the request is larger than {max_body} bytes"))
    })?;
    let msg = if bytes.iter().all(u8::is_ascii_whitespace) {
        Req::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| Status::invalid_argument(e.to_string()))?
    };
    Ok(Request::from_parts(
        metadata(&parts.headers),
        parts.extensions,
        msg,
    ))
}

/// gRPC metadata from HTTP headers as grpc-gateway passes them: `Grpc-Metadata-NAME: V` becomes
/// `NAME: V` (etcd's clients send `hasleader` so).
fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("grpc-metadata-") else {
            continue;
        };
        if let (Ok(k), Ok(Ok(v))) = (
            MetadataKey::from_bytes(key.as_bytes()),
            value.to_str().map(MetadataValue::try_from),
        ) {
            md.insert(k, v);
        }
    }
    md
}

fn json_response(status: StatusCode, body: String) -> HttpResponse {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An error as etcd's gateway gives it: `{"error":MSG,"message":MSG,"code":GRPC_CODE}` with the
/// HTTP status grpc-gateway maps the code to.
pub fn error_response(status: &Status) -> HttpResponse {
    let msg = serde_json::to_string(status.message()).unwrap_or_else(|_| "\"\"".into());
    json_response(
        http_status(status.code()),
        format!(
            "{{\"error\":{msg},\"message\":{msg},\"code\":{}}}",
            status.code() as i32
        ),
    )
}

/// An error in a stream, as grpc-gateway writes it.
fn stream_error_line(status: &Status) -> String {
    let http = http_status(status.code());
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{},\"http_status\":{}}}}}\n",
        status.code() as i32,
        http.as_u16(),
        serde_json::to_string(status.message()).unwrap_or_else(|_| "\"\"".into()),
        serde_json::to_string(http.canonical_reason().unwrap_or("")).unwrap_or_default(),
    )
}

/// grpc-gateway's HTTP status for a gRPC code (as etcd 3.4's gateway answers: a failed
/// precondition is 412).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_etcds_shape_and_status() {
        let r = error_response(&Status::invalid_argument("etcdserver: key is not provided"));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = error_response(&Status::failed_precondition("x"));
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            stream_error_line(&Status::permission_denied("etcdserver: permission denied")),
            "{\"error\":{\"grpc_code\":7,\"http_code\":403,\"message\":\"etcdserver: permission denied\",\"http_status\":\"Forbidden\"}}\n"
        );
    }

    #[test]
    fn grpc_metadata_headers_become_metadata() {
        let mut h = HeaderMap::new();
        h.insert("grpc-metadata-hasleader", "true".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let md = metadata(&h);
        assert_eq!(md.get("hasleader").unwrap(), "true");
        assert!(md.get("content-type").is_none());
    }
}
