//! The web view (`eden server --ui-addr`, decision 0026, design/ui.md). Pages are HTML rendered
//! here (minijinja, templates embedded in the binary). Every read and write a page makes goes
//! through a client of the store's own services, in process, whose connection carries the
//! signed-in viewer's certificate ([`InProcess`]): the one authorizer decides what a viewer sees
//! and may do, exactly as for `eden` or etcdctl with that certificate.
//!
//! Signing in: the browser's client certificate (from the cluster's CA) names the viewer; or a
//! one-time link from `eden ui login` (`/eden/ui/logins/ID`, consumed in the txn that checks it)
//! starts a session: a random id in an `HttpOnly; Secure; SameSite=Strict` cookie, kept in this
//! member's memory for at most [`SESSION_TTL`], acting as the certificate that made the link.
//!
//! Live pages: a page names a server-sent-event stream starting at the revision it was rendered
//! at. Section pages (cluster, a node, tasks, a task, reactors) are re-rendered as the viewer
//! when a watch on their keys sees a change (at most every [`SECTION_EVERY`]; the cluster page,
//! whose health and lag change without writes, every second) and each section whose HTML changed
//! is sent. The nodes list and the events tail send rows. A reconnecting browser sends
//! `Last-Event-ID` (a revision) and resumes after it.

mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use eden_proto::client::Client;
use eden_proto::model::{tokens, ui};
use eden_proto::pki;
use eden_proto::tls_listener::PeerCert;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::grpc::authz;
use crate::grpc::InProcess;
use crate::node::Node;

pub use pages::Page;

/// How long a session from a sign-in link lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
/// Clients kept for viewers signed in by certificate (all dropped when full).
const MAX_CERT_CLIENTS: usize = 1_000;
/// The fastest a live section page is rendered again.
pub const SECTION_EVERY: Duration = Duration::from_millis(250);
const COOKIE: &str = "eden_session";

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("ui/layout.html")),
    ("sign_in.html", include_str!("ui/sign_in.html")),
    ("cluster.html", include_str!("ui/cluster.html")),
    ("cluster_facts.html", include_str!("ui/cluster_facts.html")),
    (
        "cluster_members.html",
        include_str!("ui/cluster_members.html"),
    ),
    ("nodes.html", include_str!("ui/nodes.html")),
    ("node_row.html", include_str!("ui/node_row.html")),
    ("node.html", include_str!("ui/node.html")),
    ("node_facts.html", include_str!("ui/node_facts.html")),
    ("node_tasks.html", include_str!("ui/node_tasks.html")),
    ("node_vars.html", include_str!("ui/node_vars.html")),
    ("node_files.html", include_str!("ui/node_files.html")),
    ("event_list.html", include_str!("ui/event_list.html")),
    ("node_events.html", include_str!("ui/node_events.html")),
    ("tasks.html", include_str!("ui/tasks.html")),
    ("tasks_list.html", include_str!("ui/tasks_list.html")),
    ("task.html", include_str!("ui/task.html")),
    ("task_summary.html", include_str!("ui/task_summary.html")),
    ("task_nodes.html", include_str!("ui/task_nodes.html")),
    ("events.html", include_str!("ui/events.html")),
    ("event_row.html", include_str!("ui/event_row.html")),
    ("reactors.html", include_str!("ui/reactors.html")),
    (
        "reactors_rules.html",
        include_str!("ui/reactors_rules.html"),
    ),
    (
        "reactors_runtime.html",
        include_str!("ui/reactors_runtime.html"),
    ),
    (
        "reactors_firings.html",
        include_str!("ui/reactors_firings.html"),
    ),
    (
        "reactors_hooks.html",
        include_str!("ui/reactors_hooks.html"),
    ),
];
const LIVE_JS: &str = include_str!("ui/live.js");
const STYLE: &str = include_str!("ui/style.css");

struct Session {
    cert: pki::CertInfo,
    until: Instant,
    client: Arc<Client>,
}

/// The web view of one member.
pub struct Ui {
    node: Arc<Node>,
    services: InProcess,
    sessions: Mutex<HashMap<String, Session>>,
    /// Viewers signed in by their browser's certificate: a client per certificate serial.
    cert_clients: Mutex<HashMap<String, Arc<Client>>>,
    /// Root, on an insecure member.
    root: Option<Arc<Client>>,
    templates: minijinja::Environment<'static>,
}

/// Who is asking, and a client of the store's services that acts as them.
#[derive(Clone)]
pub struct Viewer {
    cert: Option<pki::CertInfo>,
    client: Arc<Client>,
}

impl Viewer {
    fn name(&self) -> String {
        self.cert
            .as_ref()
            .map_or("root (insecure)".to_string(), |c| c.identity.to_string())
    }
}

impl FromRequestParts<Arc<Ui>> for Viewer {
    type Rejection = Response;

    /// The signed-in viewer; else the sign-in page (401).
    async fn from_request_parts(parts: &mut Parts, ui: &Arc<Ui>) -> Result<Viewer, Response> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerCert>>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        ui.viewer(&parts.headers, &peer).ok_or_else(|| {
            let mut r = ui.render("sign_in.html", minijinja::context! { error => "" });
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        })
    }
}

impl Ui {
    /// Starts the in-process services the pages read through, until `shutdown`.
    pub fn new(
        node: Arc<Node>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Arc<Ui> {
        let mut t = minijinja::Environment::new();
        t.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, src) in TEMPLATES {
            t.add_template(name, src)
                .expect("the web view's templates parse");
        }
        let services = InProcess::start(node.clone(), shutdown);
        let root = (!node.secure()).then(|| Arc::new(services.client_as(None)));
        Arc::new(Ui {
            node,
            services,
            sessions: Mutex::default(),
            cert_clients: Mutex::default(),
            root,
            templates: t,
        })
    }

    fn html(&self, name: &str, ctx: &minijinja::Value) -> Result<String, minijinja::Error> {
        self.templates.get_template(name)?.render(ctx)
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Response {
        match self.html(name, &ctx) {
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
    fn viewer(&self, headers: &HeaderMap, peer: &PeerCert) -> Option<Viewer> {
        if let Some(root) = &self.root {
            return Some(Viewer {
                cert: None,
                client: root.clone(),
            });
        }
        if let Some(id) = cookie(headers, COOKIE) {
            let mut sessions = self.sessions.lock().unwrap();
            match sessions.get(id) {
                Some(s) if s.until > Instant::now() => {
                    return Some(Viewer {
                        cert: Some(s.cert.clone()),
                        client: s.client.clone(),
                    })
                }
                Some(_) => {
                    sessions.remove(id);
                }
                None => {}
            }
        }
        let der = peer.0.as_deref()?;
        let cert = authz::cert_info(der).ok()?;
        let mut clients = self.cert_clients.lock().unwrap();
        if clients.len() >= MAX_CERT_CLIENTS && !clients.contains_key(&cert.serial) {
            clients.clear();
        }
        let client = clients
            .entry(cert.serial.clone())
            .or_insert_with(|| Arc::new(self.services.client_as(Some(cert.clone()))))
            .clone();
        Some(Viewer {
            cert: Some(cert),
            client,
        })
    }

    /// A page with live sections, rendered as `viewer`.
    async fn page(&self, viewer: &Viewer, page: &Page) -> Response {
        match self.page_context(viewer, page).await {
            Ok((ctx, _)) => self.render(page.template(), ctx),
            Err(r) => r,
        }
    }

    /// The page's context: what its sections show, with the viewer and the revision read at.
    async fn page_context(
        &self,
        viewer: &Viewer,
        page: &Page,
    ) -> Result<(minijinja::Value, i64), Response> {
        let (data, revision) = pages::read(&viewer.client, page).await.map_err(refused)?;
        let ctx = minijinja::context! {
            viewer => viewer.name(),
            revision => revision,
            ..minijinja::Value::from_serialize(&data)
        };
        Ok((ctx, revision))
    }

    /// Server-sent events for a section page: each section whose HTML changed, rendered again
    /// as the viewer after a change under the page's keys from revision `from` on (or every
    /// second, for the cluster page).
    fn sections_stream(self: Arc<Self>, viewer: Viewer, page: Page, from: i64) -> Response {
        let (tx, rx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(16);
        let ui = self.clone();
        tokio::spawn(async move {
            let (changed_tx, mut changed) = mpsc::channel::<()>(1);
            for (prefix, filter) in page.watches() {
                watch_into(
                    viewer.client.clone(),
                    prefix,
                    from,
                    filter,
                    changed_tx.clone(),
                );
            }
            let tick = page.tick();
            drop(changed_tx);
            let mut sent: HashMap<&'static str, String> = HashMap::new();
            // The first render compares against the page as the browser got it, if it changed
            // meanwhile: render now.
            let mut first = true;
            // Until every watch ended (refused or gone): then only the tick, if any, is left.
            let mut watching = true;
            loop {
                if !first {
                    tokio::select! {
                        c = changed.recv(), if watching => {
                            if c.is_none() {
                                watching = false;
                                if tick.is_none() {
                                    return;
                                }
                                continue;
                            }
                        }
                        _ = sleep_or_never(tick) => {}
                        _ = tx.closed() => return,
                    }
                    tokio::time::sleep(SECTION_EVERY).await;
                }
                first = false;
                // Read again as the viewer: a revoked certificate or a lost right ends it.
                let Ok((ctx, revision)) = ui.page_context(&viewer, &page).await else {
                    return;
                };
                for section in page.sections() {
                    let Ok(html) = ui.html(section, &ctx) else {
                        return;
                    };
                    if sent.get(section) == Some(&html) {
                        continue;
                    }
                    let id = section.trim_end_matches(".html").replace('_', "-");
                    let data = serde_json::json!({"id": id, "html": html});
                    sent.insert(section, html);
                    let ev = Event::default()
                        .event("section")
                        .id(revision.to_string())
                        .data(data.to_string());
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
        });
        sse(rx)
    }

    /// The nodes under `prefix` (`/eden/nodes/`, or one node's) that `selector` selects, read
    /// as the viewer, as table rows; and the revision read at.
    async fn node_rows(
        &self,
        viewer: &Viewer,
        prefix: &str,
        selector: &Option<eden_proto::model::selector::Selector>,
    ) -> Result<(Vec<minijinja::Value>, i64), Response> {
        let (kvs, revision) = eden_proto::model::kv::get_prefix(&viewer.client, prefix, 0, false)
            .await
            .map_err(|e| refused(e.into()))?;
        let nodes = eden_proto::model::nodes::from_kvs(&kvs)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response())?;
        let rows = nodes
            .iter()
            .filter(|n| selector.as_ref().is_none_or(|s| s.matches(&n.labels)))
            .map(|n| minijinja::Value::from_serialize(pages::node_row(n)))
            .collect();
        Ok((rows, revision))
    }

    async fn nodes_page(&self, viewer: Viewer, selector: String) -> Response {
        let parsed = match parse_selector(&selector) {
            Ok(s) => s,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        };
        let (rows, revision) = match self
            .node_rows(&viewer, eden_proto::model::keys::NODES, &parsed)
            .await
        {
            Ok(x) => x,
            Err(r) => return r,
        };
        self.render(
            "nodes.html",
            minijinja::context! {
                viewer => viewer.name(),
                nodes => rows,
                revision => revision,
                stream => format!("/nodes/stream?from={}&selector={}", revision + 1, urlencoding(&selector)),
                selector => selector,
            },
        )
    }

    /// Server-sent events for the nodes page: after each change under `/eden/nodes/` from
    /// revision `from` on, the changed nodes' rows (read again as the viewer; an empty row for
    /// a node gone or no longer selected), each event's id its revision.
    async fn nodes_stream(
        self: Arc<Self>,
        viewer: Viewer,
        from: i64,
        selector: String,
    ) -> Response {
        use eden_proto::model::keys::{self, NODES};
        use eden_proto::model::watcher::{Change, Watcher};
        let parsed = match parse_selector(&selector) {
            Ok(s) => s,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        };
        // The viewer must be allowed the page's read to get its changes.
        let start = match self.node_rows(&viewer, NODES, &None).await {
            Ok((_, rev)) => rev,
            Err(r) => return r,
        };
        let from = if from > 0 { from } else { start + 1 };
        let (tx, rx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
        let ui = self.clone();
        tokio::spawn(async move {
            let mut w =
                Watcher::from_revision(viewer.client.clone(), NODES, from).relist_on_compaction();
            loop {
                let c = tokio::select! {
                    c = w.next() => c,
                    _ = tx.closed() => return,
                };
                let (names, rev): (std::collections::BTreeSet<String>, i64) = match c {
                    None | Some(Err(_)) | Some(Ok(Change::Compacted { .. })) => return,
                    Some(Ok(Change::Listed { kvs, revision })) => (
                        kvs.iter().filter_map(|kv| node_of(&kv.key)).collect(),
                        revision,
                    ),
                    Some(Ok(Change::Events(evs))) => {
                        let kvs = evs.iter().filter_map(|e| e.kv.as_ref());
                        let rev = kvs.clone().map(|kv| kv.mod_revision).max().unwrap_or(0);
                        (kvs.filter_map(|kv| node_of(&kv.key)).collect(), rev)
                    }
                };
                for name in names {
                    let rows = match ui
                        .node_rows(&viewer, &keys::node_prefix(&name), &parsed)
                        .await
                    {
                        Ok((rows, _)) => rows,
                        Err(_) => return,
                    };
                    let html = match rows.first() {
                        Some(row) => {
                            match ui.html("node_row.html", &minijinja::context! { n => row }) {
                                Ok(h) => h,
                                Err(_) => return,
                            }
                        }
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
        sse(rx)
    }

    async fn events_page(&self, viewer: Viewer, q: EventsQuery) -> Response {
        let (allow, deny) = q.globs();
        // From a revision: the stream replays from there. Else the stored events of late, and
        // the stream from now.
        let (rows, revision) = if q.from > 0 {
            (vec![], q.from - 1)
        } else {
            match pages::recent_events(&viewer.client, &allow, &deny, 50).await {
                Ok(x) => x,
                Err(e) => return refused(e),
            }
        };
        let rows: Vec<minijinja::Value> = rows
            .iter()
            .rev()
            .enumerate()
            .map(|(i, e)| minijinja::Value::from_serialize(pages::event_row(e, i)))
            .collect();
        self.render(
            "events.html",
            minijinja::context! {
                viewer => viewer.name(),
                events => rows,
                revision => revision,
                allow => q.allow,
                deny => q.deny,
                from => q.from,
                stream => format!(
                    "/events/stream?from={}&allow={}&deny={}",
                    revision + 1,
                    urlencoding(&q.allow),
                    urlencoding(&q.deny)
                ),
            },
        )
    }

    /// Server-sent events for the events tail: every event (explicit or derived from a change
    /// to eden's objects) from revision `from` on whose tag an allow glob matches and no deny
    /// glob does, read by a watch on `/eden/` as the viewer.
    fn events_stream(self: Arc<Self>, viewer: Viewer, q: EventsQuery) -> Response {
        use eden_proto::model::events;
        use eden_proto::model::watcher::{Change, Watcher};
        let (allow, deny) = q.globs();
        let (tx, rx) = mpsc::channel::<Result<Event, std::convert::Infallible>>(256);
        let ui = self.clone();
        tokio::spawn(async move {
            let mut w = Watcher::from_revision(
                viewer.client.clone(),
                eden_proto::model::keys::ROOT,
                q.from,
            )
            .with_prev_kv();
            let mut n = 0usize;
            loop {
                let c = tokio::select! {
                    c = w.next() => c,
                    _ = tx.closed() => return,
                };
                let evs = match c {
                    Some(Ok(Change::Events(evs))) => evs,
                    Some(Ok(Change::Compacted { oldest })) => {
                        let data = serde_json::json!({"error": format!(
                            "revision {} was compacted (the oldest kept is {oldest})", q.from)});
                        let _ = tx
                            .send(Ok(Event::default().event("gone").data(data.to_string())))
                            .await;
                        return;
                    }
                    _ => return,
                };
                let now = eden_proto::model::objects::now_ms();
                for e in &evs {
                    let Some(ev) = events::from_watch(e, now) else {
                        continue;
                    };
                    if !pages::tag_selected(&ev.tag, &allow, &deny) {
                        continue;
                    }
                    let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    let ev = events::Event {
                        revision: rev,
                        ..ev
                    };
                    n += 1;
                    let row = minijinja::Value::from_serialize(pages::event_row(&ev, n));
                    let Ok(html) = ui.html("event_row.html", &minijinja::context! { e => row })
                    else {
                        return;
                    };
                    let data = serde_json::json!({"html": html, "at": "top"});
                    let sse_ev = Event::default()
                        .event("row")
                        .id(rev.to_string())
                        .data(data.to_string());
                    if tx.send(Ok(sse_ev)).await.is_err() {
                        return;
                    }
                }
            }
        });
        sse(rx)
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
        let client = Arc::new(self.services.client_as(Some(cert.clone())));
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
                client,
            },
        );
        Ok((sid, cert))
    }
}

/// Forwards "something changed" from a watch on `prefix` (from revision `from`) to `changed`,
/// for the keys `filter` accepts. A refused or ended watch just stops.
fn watch_into(
    client: Arc<Client>,
    prefix: String,
    from: i64,
    filter: Option<pages::KeyFilter>,
    changed: mpsc::Sender<()>,
) {
    use eden_proto::model::watcher::{Change, Watcher};
    tokio::spawn(async move {
        let mut w = Watcher::from_revision(client, &prefix, from).relist_on_compaction();
        loop {
            let c = tokio::select! {
                c = w.next() => c,
                _ = changed.closed() => return,
            };
            let relevant = match c {
                None | Some(Err(_)) | Some(Ok(Change::Compacted { .. })) => return,
                Some(Ok(Change::Listed { .. })) => true,
                Some(Ok(Change::Events(evs))) => evs
                    .iter()
                    .filter_map(|e| e.kv.as_ref())
                    .any(|kv| filter.as_ref().is_none_or(|f| f(&kv.key))),
            };
            if relevant {
                let _ = changed.try_send(());
            }
        }
    });
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn sse(rx: mpsc::Receiver<Result<Event, std::convert::Infallible>>) -> Response {
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn parse_selector(s: &str) -> Result<Option<eden_proto::model::selector::Selector>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    eden_proto::model::selector::Selector::parse(s)
        .map(Some)
        .map_err(|e| format!("selector {s:?}: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Percent-encodes a query value.
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// A form posted from one of this view's own pages: the browser says where it comes from
/// (`Origin`), and it is this host. A browser that presents a client certificate sends it to
/// any site's form too, so a write needs this, not only the session cookie's SameSite.
fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .is_some_and(|o| o == host)
}

fn refused(e: eden_proto::model::Error) -> Response {
    let (code, msg) = error_status(&e);
    (code, format!("{msg}\n")).into_response()
}

/// The HTTP status for an error of the store or the model, and its message.
fn error_status(e: &eden_proto::model::Error) -> (StatusCode, String) {
    use eden_proto::client::ClientError;
    use eden_proto::model::Error;
    match e {
        Error::Client(ClientError::Server(s)) => (
            match s.code() {
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                // A revoked or expired certificate: the session (or the browser's certificate)
                // is over.
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            s.message().to_string(),
        ),
        Error::Client(_) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Error::Invalid(_) | Error::NoMatch(_) => (StatusCode::BAD_REQUEST, e.to_string()),
        Error::NotFound(_) => (StatusCode::NOT_FOUND, e.to_string()),
        Error::Refused(_) => (StatusCode::CONFLICT, e.to_string()),
        Error::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The node a key under `/eden/nodes/` is about.
fn node_of(key: &[u8]) -> Option<String> {
    let rest = eden_proto::model::keys::rest(key, eden_proto::model::keys::NODES)?;
    rest.split_once('/').map(|(n, _)| n.to_string())
}

/// Where a live stream starts: after the revision a reconnecting EventSource last saw, else
/// the one its page names.
fn stream_from(headers: &HeaderMap, from: i64) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map(|r| r + 1)
        .unwrap_or(from)
}

#[derive(Deserialize, Default)]
struct FromQuery {
    #[serde(default)]
    from: i64,
    #[serde(default)]
    selector: String,
}

#[derive(Deserialize, Default, Clone)]
struct EventsQuery {
    #[serde(default)]
    from: i64,
    /// Tag globs, space or comma separated (empty: every tag).
    #[serde(default)]
    allow: String,
    #[serde(default)]
    deny: String,
}

impl EventsQuery {
    fn globs(&self) -> (Vec<String>, Vec<String>) {
        let split = |s: &str| -> Vec<String> {
            s.split([',', ' '])
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect()
        };
        (split(&self.allow), split(&self.deny))
    }
}

#[derive(Deserialize)]
struct NewTaskForm {
    selector: String,
    command: String,
    #[serde(default)]
    timeout: String,
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    token: String,
}

/// The web view's routes.
pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(ui): State<Arc<Ui>>, v: Viewer| async move {
                ui.page(&v, &Page::Cluster).await
            }),
        )
        .route(
            "/cluster/stream",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, h: HeaderMap, Query(q): Query<FromQuery>| async move {
                    ui.sections_stream(v, Page::Cluster, stream_from(&h, q.from))
                },
            ),
        )
        .route(
            "/nodes",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, Query(q): Query<FromQuery>| async move {
                    ui.nodes_page(v, q.selector).await
                },
            ),
        )
        .route(
            "/nodes/stream",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, h: HeaderMap, Query(q): Query<FromQuery>| async move {
                    let from = stream_from(&h, q.from);
                    ui.nodes_stream(v, from, q.selector).await
                },
            ),
        )
        .route(
            "/nodes/{name}",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, Path(name): Path<String>| async move {
                    match Page::node(&name) {
                        Ok(p) => ui.page(&v, &p).await,
                        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
                    }
                },
            ),
        )
        .route(
            "/nodes/{name}/stream",
            get(
                |State(ui): State<Arc<Ui>>,
                 v: Viewer,
                 h: HeaderMap,
                 Path(name): Path<String>,
                 Query(q): Query<FromQuery>| async move {
                    match Page::node(&name) {
                        Ok(p) => ui.sections_stream(v, p, stream_from(&h, q.from)),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
                    }
                },
            ),
        )
        .route(
            "/tasks",
            get(|State(ui): State<Arc<Ui>>, v: Viewer| async move {
                ui.page(&v, &Page::Tasks { error: None }).await
            })
            .post(
                |State(ui): State<Arc<Ui>>, v: Viewer, h: HeaderMap, Form(f): Form<NewTaskForm>| async move {
                    if !same_origin(&h) {
                        return (StatusCode::FORBIDDEN, "a form from another site\n").into_response();
                    }
                    match pages::start_task(&v.client, &f.selector, &f.command, &f.timeout).await {
                        Ok(id) => Redirect::to(&format!("/tasks/{id}")).into_response(),
                        Err(e) => {
                            let (status, msg) = error_status(&e);
                            let mut r = ui.page(&v, &Page::Tasks { error: Some(msg) }).await;
                            if r.status() == StatusCode::OK {
                                *r.status_mut() = status;
                            }
                            r
                        }
                    }
                },
            ),
        )
        .route(
            "/tasks/stream",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, h: HeaderMap, Query(q): Query<FromQuery>| async move {
                    ui.sections_stream(v, Page::Tasks { error: None }, stream_from(&h, q.from))
                },
            ),
        )
        .route(
            "/tasks/{id}",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, Path(id): Path<String>| async move {
                    match Page::task(&id) {
                        Ok(p) => ui.page(&v, &p).await,
                        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
                    }
                },
            ),
        )
        .route(
            "/tasks/{id}/stream",
            get(
                |State(ui): State<Arc<Ui>>,
                 v: Viewer,
                 h: HeaderMap,
                 Path(id): Path<String>,
                 Query(q): Query<FromQuery>| async move {
                    match Page::task(&id) {
                        Ok(p) => ui.sections_stream(v, p, stream_from(&h, q.from)),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
                    }
                },
            ),
        )
        .route(
            "/tasks/{id}/cancel",
            post(
                |v: Viewer, h: HeaderMap, Path(id): Path<String>| async move {
                    if !same_origin(&h) {
                        return (StatusCode::FORBIDDEN, "a form from another site\n").into_response();
                    }
                    if let Err(e) = Page::task(&id) {
                        return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
                    }
                    match eden_proto::model::tasks::cancel(&v.client, &id).await {
                        Ok(()) => Redirect::to(&format!("/tasks/{id}")).into_response(),
                        Err(e) => refused(e),
                    }
                },
            ),
        )
        .route(
            "/events",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, Query(q): Query<EventsQuery>| async move {
                    ui.events_page(v, q).await
                },
            ),
        )
        .route(
            "/events/stream",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, h: HeaderMap, Query(mut q): Query<EventsQuery>| async move {
                    q.from = stream_from(&h, q.from);
                    ui.events_stream(v, q)
                },
            ),
        )
        .route(
            "/reactors",
            get(|State(ui): State<Arc<Ui>>, v: Viewer| async move {
                ui.page(&v, &Page::Reactors).await
            }),
        )
        .route(
            "/reactors/stream",
            get(
                |State(ui): State<Arc<Ui>>, v: Viewer, h: HeaderMap, Query(q): Query<FromQuery>| async move {
                    ui.sections_stream(v, Page::Reactors, stream_from(&h, q.from))
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
                |State(ui): State<Arc<Ui>>, Query(q): Query<LoginQuery>| async move {
                    match ui.sign_in(&q.token).await {
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
    use futures::FutureExt;
    let shutdown = shutdown.shared();
    let app = router(Ui::new(node, shutdown.clone()));
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
