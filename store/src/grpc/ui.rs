//! The web view (`eden server --ui-addr`, decision 0026), first part: signing in, the cluster
//! page and the nodes page. Pages are HTML rendered here (minijinja, templates embedded in the binary); they read
//! through the same services a gRPC call reaches, in process, as the signed-in viewer's
//! certificate ([`ActingAs`]), so the one authorizer decides what a viewer sees.
//!
//! Signing in: the browser's client certificate (from the cluster's CA) names the viewer; or a
//! one-time link from `eden ui login` (`/eden/ui/logins/ID`, consumed in the txn that checks it)
//! starts a session: a random id in an `HttpOnly; Secure; SameSite=Strict` cookie, kept in this
//! member's memory for at most [`SESSION_TTL`], acting as the certificate that made the link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use eden_proto::etcdserverpb::cluster_server::Cluster;
use eden_proto::etcdserverpb::maintenance_server::Maintenance;
use eden_proto::etcdserverpb::{MemberListRequest, StatusRequest};
use eden_proto::model::{tokens, ui};
use eden_proto::pki;
use eden_proto::tls_listener::PeerCert;
use tonic::Request;

use crate::grpc::authz::{self, ActingAs};
use crate::grpc::{cluster::ClusterService, maintenance::MaintenanceService};
use crate::node::Node;

/// How long a session from a sign-in link lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
const COOKIE: &str = "eden_session";

const LAYOUT: &str = include_str!("ui/layout.html");
const CLUSTER: &str = include_str!("ui/cluster.html");
const SIGN_IN: &str = include_str!("ui/sign_in.html");
const NODES: &str = include_str!("ui/nodes.html");
const NODE_ROW: &str = include_str!("ui/node_row.html");
const LIVE_JS: &str = include_str!("ui/live.js");
const STYLE: &str = include_str!("ui/style.css");

struct Session {
    cert: pki::CertInfo,
    until: Instant,
}

/// The web view of one member.
pub struct Ui {
    node: Arc<Node>,
    /// This member's own client (its certificate), for the watches behind live pages; what a
    /// viewer may see is checked as the viewer before and during each stream.
    client: Arc<eden_proto::client::Client>,
    sessions: Mutex<HashMap<String, Session>>,
    templates: minijinja::Environment<'static>,
}

impl Ui {
    /// `client`: the member's own client (its certificate, its own client port).
    pub fn new(node: Arc<Node>, client: Arc<eden_proto::client::Client>) -> Arc<Ui> {
        let mut t = minijinja::Environment::new();
        t.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, src) in [
            ("layout.html", LAYOUT),
            ("cluster.html", CLUSTER),
            ("sign_in.html", SIGN_IN),
            ("nodes.html", NODES),
            ("node_row.html", NODE_ROW),
        ] {
            t.add_template(name, src)
                .expect("the web view's templates parse");
        }
        Arc::new(Ui {
            client,
            node,
            sessions: Mutex::default(),
            templates: t,
        })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Response {
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
        {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(template = name, "rendering: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be rendered\n",
                )
                    .into_response()
            }
        }
    }

    /// Who is asking: the session's certificate, else the connection's; None: not signed in.
    /// On an insecure member everyone is root, as on its other ports.
    fn viewer(&self, headers: &HeaderMap, peer: &PeerCert) -> Option<Option<pki::CertInfo>> {
        if !self.node.secure() {
            return Some(None);
        }
        if let Some(id) = cookie(headers, COOKIE) {
            let mut sessions = self.sessions.lock().unwrap();
            match sessions.get(id) {
                Some(s) if s.until > Instant::now() => return Some(Some(s.cert.clone())),
                Some(_) => {
                    sessions.remove(id);
                }
                None => {}
            }
        }
        let der = peer.0.as_deref()?;
        authz::cert_info(der).ok().map(Some)
    }

    /// A request to a service, as `viewer`.
    fn as_viewer<T>(viewer: &Option<pki::CertInfo>, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(c) = viewer {
            r.extensions_mut().insert(ActingAs(c.clone()));
        }
        r
    }

    async fn cluster_page(&self, viewer: Option<pki::CertInfo>) -> Response {
        let cluster = ClusterService {
            node: self.node.clone(),
        };
        let maint = MaintenanceService {
            node: self.node.clone(),
        };
        let members = match cluster
            .member_list(Self::as_viewer(&viewer, MemberListRequest::default()))
            .await
        {
            Ok(r) => r.into_inner().members,
            Err(s) => return refused(&s),
        };
        let status = match maint
            .status(Self::as_viewer(&viewer, StatusRequest::default()))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return refused(&s),
        };
        let rows: Vec<minijinja::Value> = members
            .iter()
            .map(|m| {
                minijinja::context! {
                    name => m.name,
                    id => format!("{:x}", m.id),
                    peer => m.peer_ur_ls.join(", "),
                    client => m.client_ur_ls.join(", "),
                    role => if m.id == status.leader { "leader" } else if m.is_learner { "learner" } else { "voter" },
                }
            })
            .collect();
        let header = status.header.unwrap_or_default();
        self.render(
            "cluster.html",
            minijinja::context! {
                viewer => viewer.as_ref().map_or("root (insecure)".to_string(), |c| c.identity.to_string()),
                members => rows,
                revision => header.revision,
                term => status.raft_term,
                db_size => status.db_size,
                leader => format!("{:x}", status.leader),
                errors => status.errors,
            },
        )
    }

    /// The nodes under `prefix` (`/eden/nodes/`, or one node's), read as the viewer, as table
    /// rows; and the revision read at.
    async fn node_rows(
        &self,
        viewer: &Option<pki::CertInfo>,
        prefix: &str,
    ) -> Result<(Vec<minijinja::Value>, i64), Response> {
        use eden_proto::etcdserverpb::kv_server::Kv;
        use eden_proto::etcdserverpb::RangeRequest;
        let kv = crate::grpc::kv::KvService {
            node: self.node.clone(),
        };
        let req = RangeRequest {
            key: prefix.into(),
            range_end: eden_proto::keys::prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        let r = kv
            .range(Self::as_viewer(viewer, req))
            .await
            .map_err(|s| refused(&s))?
            .into_inner();
        let nodes = eden_proto::model::nodes::from_kvs(&r.kvs)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response())?;
        let rows = nodes
            .iter()
            .map(|n| {
                minijinja::context! {
                    name => n.name,
                    up => n.up,
                    labels => n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
                    address => n.facts.as_ref().and_then(|f| f.addresses.first().cloned()).unwrap_or_default(),
                    os => n.facts.as_ref().map(|f| f.os.clone()).unwrap_or_default(),
                    last_seen => n.last_seen.map(eden_proto::model::objects::show_time).unwrap_or_default(),
                }
            })
            .collect();
        Ok((rows, r.header.map_or(0, |h| h.revision)))
    }

    async fn nodes_page(&self, viewer: Option<pki::CertInfo>) -> Response {
        let (rows, revision) = match self
            .node_rows(&viewer, eden_proto::model::keys::NODES)
            .await
        {
            Ok(x) => x,
            Err(r) => return r,
        };
        self.render(
            "nodes.html",
            minijinja::context! {
                viewer => viewer.as_ref().map_or("root (insecure)".to_string(), |c| c.identity.to_string()),
                nodes => rows,
                revision => revision,
            },
        )
    }

    /// Server-sent events for the nodes page: after each change under `/eden/nodes/` from
    /// revision `from` on, the changed nodes' rows (read again as the viewer), each event's id
    /// its revision, so that a reconnecting browser resumes where it was (`Last-Event-ID`).
    async fn nodes_stream(self: Arc<Self>, viewer: Option<pki::CertInfo>, from: i64) -> Response {
        use axum::response::sse::{Event, KeepAlive, Sse};
        use eden_proto::model::keys::{self, NODES};
        use eden_proto::model::watcher::{Change, Watcher};
        // The viewer must be allowed the page's read to get its changes.
        let start = match self.node_rows(&viewer, NODES).await {
            Ok((_, rev)) => rev,
            Err(r) => return r,
        };
        let from = if from > 0 { from } else { start + 1 };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
        let ui = self.clone();
        tokio::spawn(async move {
            let mut w =
                Watcher::from_revision(ui.client.clone(), NODES, from).relist_on_compaction();
            loop {
                let c = tokio::select! {
                    c = w.next() => c,
                    _ = tx.closed() => return,
                };
                let (names, rev): (std::collections::BTreeSet<String>, i64) = match c {
                    None => return,
                    Some(Err(_)) => continue,
                    Some(Ok(Change::Compacted { .. })) => return,
                    Some(Ok(Change::Listed { kvs, revision })) => (
                        kvs.iter().filter_map(|kv| node_of(&kv.key)).collect(),
                        revision,
                    ),
                    Some(Ok(Change::Events(evs))) => {
                        let rev = evs
                            .iter()
                            .filter_map(|e| e.kv.as_ref())
                            .map(|kv| kv.mod_revision)
                            .max()
                            .unwrap_or(0);
                        (
                            evs.iter()
                                .filter_map(|e| e.kv.as_ref())
                                .filter_map(|kv| node_of(&kv.key))
                                .collect(),
                            rev,
                        )
                    }
                };
                for name in names {
                    // Read as the viewer again: a revoked certificate or a lost right ends it.
                    let rows = match ui.node_rows(&viewer, &keys::node_prefix(&name)).await {
                        Ok((rows, _)) => rows,
                        Err(_) => return,
                    };
                    let html = match rows.first() {
                        Some(row) => match ui
                            .templates
                            .get_template("node_row.html")
                            .and_then(|t| t.render(minijinja::context! { n => row }))
                        {
                            Ok(h) => h,
                            Err(_) => return,
                        },
                        None => String::new(),
                    };
                    let data = serde_json::json!({"id": format!("node-{name}"), "html": html});
                    let ev = Event::default()
                        .event("row")
                        .id(rev.to_string())
                        .data(data.to_string());
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    /// Consumes a sign-in link and starts a session.
    async fn sign_in(&self, token: &str) -> Result<(String, pki::CertInfo), String> {
        let (id, secret) = tokens::split(token).map_err(|_| "not a sign-in link".to_string())?;
        let key = ui::login(id);
        let found = self
            .node
            .mvcc()
            .range(&eden_proto::etcdserverpb::RangeRequest {
                key: key.clone().into(),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
        let Some(kv) = found.kvs.first() else {
            return Err("this sign-in link was used already, or never existed".into());
        };
        let login: ui::Login =
            serde_json::from_slice(&kv.value).map_err(|_| "a damaged sign-in link".to_string())?;
        if !tokens::matches(&login.secret_sha256, secret) {
            return Err("this sign-in link was used already, or never existed".into());
        }
        if login.expires_at < eden_proto::model::objects::now_ms() {
            return Err("this sign-in link has expired: make another with `eden ui login`".into());
        }
        // Consumed in one txn with the check that it is still there: used once.
        use eden_proto::etcdserverpb::{
            compare, request_op, response_op, Compare, DeleteRangeRequest, RequestOp, TxnRequest,
        };
        let use_up = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![Compare {
                    key: key.clone().into(),
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    target_union: Some(compare::TargetUnion::ModRevision(kv.mod_revision)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: key.into(),
                            ..Default::default()
                        },
                    )),
                }],
                failure: vec![],
            })),
        };
        match crate::grpc::kv::write_op(&self.node, use_up)
            .await
            .map_err(|s| s.message().to_string())?
            .response
        {
            Some(response_op::Response::ResponseTxn(t)) if t.succeeded => {}
            _ => return Err("this sign-in link was used already".into()),
        }
        let identity = pki::Identity::parse(&login.identity)
            .map_err(|_| "a damaged sign-in link".to_string())?;
        let cert = pki::CertInfo {
            identity,
            serial: login.serial,
            issued_at: login.issued_at,
            not_after: login.cert_not_after,
            sans: vec![],
        };
        authz::still_valid(&self.node, &cert).map_err(|s| s.message().to_string())?;
        let sid = hex(&rand::random::<[u8; 32]>());
        let mut sessions = self.sessions.lock().unwrap();
        let now = Instant::now();
        sessions.retain(|_, s| s.until > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.until)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            sid.clone(),
            Session {
                cert: cert.clone(),
                until: now + SESSION_TTL,
            },
        );
        Ok((sid, cert))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A cookie's value.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn refused(s: &tonic::Status) -> Response {
    let code = match s.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        // A revoked or expired certificate: the session (or the browser's certificate) is over.
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, format!("{}\n", s.message())).into_response()
}

/// The node a key under `/eden/nodes/` is about.
fn node_of(key: &[u8]) -> Option<String> {
    let rest = eden_proto::model::keys::rest(key, eden_proto::model::keys::NODES)?;
    rest.split_once('/').map(|(n, _)| n.to_string())
}

/// A query parameter's value (sign-in tokens are letters, digits and a dot: nothing to decode).
fn query_param<'a>(uri: &'a axum::http::Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The web view's routes.
pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route(
            "/",
            get(
                |State(ui): State<Arc<Ui>>,
                 ConnectInfo(peer): ConnectInfo<PeerCert>,
                 headers: HeaderMap| async move {
                    match ui.viewer(&headers, &peer) {
                        Some(v) => ui.cluster_page(v).await,
                        None => {
                            let mut r = ui.render("sign_in.html", minijinja::context! { error => "" });
                            *r.status_mut() = StatusCode::UNAUTHORIZED;
                            r
                        }
                    }
                },
            ),
        )
        .route(
            "/nodes",
            get(
                |State(ui): State<Arc<Ui>>,
                 ConnectInfo(peer): ConnectInfo<PeerCert>,
                 headers: HeaderMap| async move {
                    match ui.viewer(&headers, &peer) {
                        Some(v) => ui.nodes_page(v).await,
                        None => Redirect::to("/").into_response(),
                    }
                },
            ),
        )
        .route(
            "/nodes/stream",
            get(
                |State(ui): State<Arc<Ui>>,
                 ConnectInfo(peer): ConnectInfo<PeerCert>,
                 headers: HeaderMap,
                 uri: axum::http::Uri| async move {
                    // A reconnecting EventSource says where it was; a page, what it rendered.
                    let from = headers
                        .get("last-event-id")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .map(|r| r + 1)
                        .or_else(|| query_param(&uri, "from").and_then(|v| v.parse().ok()))
                        .unwrap_or(0);
                    match ui.viewer(&headers, &peer) {
                        Some(v) => ui.clone().nodes_stream(v, from).await,
                        None => StatusCode::UNAUTHORIZED.into_response(),
                    }
                },
            ),
        )
        .route(
            "/live.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], LIVE_JS) }),
        )
        .route(
            "/login",
            get(
                |State(ui): State<Arc<Ui>>, uri: axum::http::Uri| async move {
                    let token = query_param(&uri, "token").unwrap_or_default().to_string();
                    match ui.sign_in(&token).await {
                        Ok((sid, cert)) => {
                            tracing::info!(viewer = %cert.identity, "signed in to the web view with a link");
                            let secure = if ui.node.secure() { "; Secure" } else { "" };
                            let mut r = Redirect::to("/").into_response();
                            r.headers_mut().insert(
                                header::SET_COOKIE,
                                format!(
                                    "{COOKIE}={sid}; HttpOnly{secure}; SameSite=Strict; Path=/; Max-Age={}",
                                    SESSION_TTL.as_secs()
                                )
                                .parse()
                                .expect("a header value"),
                            );
                            r
                        }
                        Err(e) => {
                            let mut r = ui.render("sign_in.html", minijinja::context! { error => e });
                            *r.status_mut() = StatusCode::UNAUTHORIZED;
                            r
                        }
                    }
                },
            ),
        )
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }),
        )
        .with_state(ui)
}

/// Serves the web view until `shutdown`: over TLS on a secure member (its certificate; a browser
/// may present a client certificate from the cluster's CA), else plaintext.
pub async fn serve(
    node: Arc<Node>,
    client: Arc<eden_proto::client::Client>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(Ui::new(node, client));
    match tls {
        Some(config) => {
            let listener = eden_proto::tls_listener::TlsListener::new(listener, config)?;
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<PeerCert>(),
            )
            .with_graceful_shutdown(shutdown)
            .await?;
        }
        None => {
            // No TLS: no client certificate either.
            let app = app.layer(axum::middleware::from_fn(
                |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                    req.extensions_mut().insert(ConnectInfo(PeerCert(None)));
                    next.run(req).await
                },
            ));
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    Ok(())
}
