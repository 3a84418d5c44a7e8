//! The webhook intake: `POST /hooks/NAME` with `Authorization: Bearer TOKEN` turns a JSON body
//! into events, all in one txn (nothing partial is written).
//!
//! - A Prometheus Alertmanager payload (version 4) becomes one event per alert,
//!   `alert/STATUS/ALERTNAME`, with the alert's labels as labels and its annotations, times,
//!   fingerprint and generator URL as data.
//! - Any other JSON body becomes one event `hook/NAME` with the body as data.
//!
//! Hooks are created with `eden hook create NAME`, which prints the token once; only its SHA-256
//! is stored (`/eden/hooks/NAME`). Answers: 200 with the events' revision; 401 for a missing or
//! wrong token (or an unknown hook); 400 for a body that is not JSON, with the reason; 413 for a
//! body over the limit; 403 when the server's event policy refuses an event; 503 when the cluster
//! cannot be reached. Events pass the server's event gate like any other (source `hook/NAME`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::ListenerExt;
use eden_proto::client::{Client, ClientError};
use eden_proto::model::events::{self, Event};
use eden_proto::model::{hooks, Error};

/// The events a hook's body stands for.
pub fn events_of(name: &str, body: &serde_json::Value) -> Vec<Event> {
    let source = format!("hook/{name}");
    let ev = |tag: String, labels: BTreeMap<String, String>, data: serde_json::Value| {
        Event::new(tag, &source, labels, data)
    };
    let alertmanager = body["version"] == "4" && body["alerts"].is_array();
    if !alertmanager {
        return vec![ev(format!("hook/{name}"), BTreeMap::new(), body.clone())];
    }
    body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let status = a["status"]
                .as_str()
                .or(body["status"].as_str())
                .unwrap_or("firing");
            let labels: BTreeMap<String, String> = a["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect();
            let alertname = labels
                .get("alertname")
                .cloned()
                .unwrap_or_else(|| "unnamed".into());
            let data = serde_json::json!({
                "annotations": a["annotations"],
                "startsAt": a["startsAt"],
                "endsAt": a["endsAt"],
                "fingerprint": a["fingerprint"],
                "generatorURL": a["generatorURL"],
                "receiver": body["receiver"],
            });
            ev(format!("alert/{status}/{alertname}"), labels, data)
        })
        .collect()
}

struct Intake {
    client: Arc<Client>,
}

async fn receive(
    State(st): State<Arc<Intake>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let stored = match hooks::get(&st.client, &name).await {
        Ok(h) => h,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    if token.is_empty() || stored.is_none_or(|h| h.sha256 != hooks::hash(token)) {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong token for this hook\n".into(),
        );
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}\n"),
            )
        }
    };
    let evs = events_of(&name, &v);
    match events::emit(&st.client, &evs).await {
        Ok((revision, _)) => (
            StatusCode::OK,
            format!(
                "{}\n",
                serde_json::json!({"events": evs.len(), "revision": revision})
            ),
        ),
        Err(Error::Client(ClientError::Server(s))) => {
            (StatusCode::FORBIDDEN, format!("{}\n", s.message()))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// Serves the intake on `listener` until `shutdown`; bodies over `max_bytes` get 413.
/// Serves the intake until `shutdown`: over TLS when `tls` is given (a secure member), else
/// plaintext. Senders authenticate with their hook's bearer token, not a certificate.
pub async fn serve(
    client: Arc<Client>,
    listener: tokio::net::TcpListener,
    max_bytes: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/hooks/{name}", post(receive))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(Arc::new(Intake { client }));
    if let Some(config) = tls {
        let listener = eden_proto::tls_listener::TlsListener::new(listener, config)?;
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    }
    // TCP_NODELAY on every accepted connection: small answers are not held back.
    let listener = listener.tap_io(|s| {
        if let Err(e) = s.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_payloads_become_one_event_per_alert() {
        let body = serde_json::json!({
            "version": "4", "status": "firing", "receiver": "eden",
            "alerts": [
                {"status": "firing", "labels": {"alertname": "Down", "instance": "web1"},
                 "annotations": {"summary": "web1 down"}, "fingerprint": "f1", "startsAt": "t"},
                {"status": "resolved", "labels": {"alertname": "Down", "instance": "web2"}, "fingerprint": "f2"}
            ]
        });
        let e = events_of("am", &body);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].tag, "alert/firing/Down");
        assert_eq!(e[0].labels["instance"], "web1");
        assert_eq!(e[0].data["annotations"]["summary"], "web1 down");
        assert_eq!(e[1].tag, "alert/resolved/Down");
        assert_eq!(e[1].source, "hook/am");
        let e = events_of("gh", &serde_json::json!({"ref": "main"}));
        assert_eq!((e.len(), e[0].tag.as_str()), (1, "hook/gh"));
        assert_eq!(e[0].data["ref"], "main");
    }
}
