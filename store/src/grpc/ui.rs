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
const STYLE: &str = include_str!("ui/style.css");

struct Session {
    cert: pki::CertInfo,
    until: Instant,
}

/// The web view of one member.
pub struct Ui {
    node: Arc<Node>,
    sessions: Mutex<HashMap<String, Session>>,
    templates: minijinja::Environment<'static>,
}

impl Ui {
    pub fn new(node: Arc<Node>) -> Arc<Ui> {
        let mut t = minijinja::Environment::new();
        t.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, src) in [
            ("layout.html", LAYOUT),
            ("cluster.html", CLUSTER),
            ("sign_in.html", SIGN_IN),
            ("nodes.html", NODES),
        ] {
            t.add_template(name, src)
                .expect("the web view's templates parse");
        }
        Arc::new(Ui {
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

    async fn nodes_page(&self, viewer: Option<pki::CertInfo>) -> Response {
        use eden_proto::etcdserverpb::kv_server::Kv;
        use eden_proto::etcdserverpb::RangeRequest;
        let kv = crate::grpc::kv::KvService {
            node: self.node.clone(),
        };
        let prefix = eden_proto::model::keys::NODES;
        let req = RangeRequest {
            key: prefix.into(),
            range_end: eden_proto::keys::prefix_end(prefix.as_bytes()),
            ..Default::default()
        };
        let r = match kv.range(Self::as_viewer(&viewer, req)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return refused(&s),
        };
        let nodes = match eden_proto::model::nodes::from_kvs(&r.kvs) {
            Ok(n) => n,
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        };
        let rows: Vec<minijinja::Value> = nodes
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
        self.render(
            "nodes.html",
            minijinja::context! {
                viewer => viewer.as_ref().map_or("root (insecure)".to_string(), |c| c.identity.to_string()),
                nodes => rows,
                revision => r.header.map_or(0, |h| h.revision),
            },
        )
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
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(Ui::new(node));
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
