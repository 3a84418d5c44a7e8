//! The member's HTTP endpoint on `--metrics-addr`: `/metrics` (Prometheus text) and `/health`
//! (200 when the member is healthy, else 503 with the reason: for load balancers and
//! supervisors). It reads the member through [`ServerHealth`] (which the member implements), as
//! etcd's health handler does, so neither it nor the metrics registry knows a member.

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;

use crate::metrics::{metrics, ServerHealth};

/// `/metrics` and `/health` of `server` (served on `--metrics-addr`, and on the client port
/// beside etcd's gateway).
pub fn routes(server: Arc<dyn ServerHealth>) -> axum::Router {
    let s1 = server.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let server = s1.clone();
                async move {
                    let body =
                        tokio::task::spawn_blocking(move || metrics().render(&server.gauges()))
                            .await
                            .unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let server = server.clone();
                async move {
                    match server.unhealthy() {
                        None => (StatusCode::OK, "{\"health\":\"true\"}\n".to_string()),
                        Some(reason) => {
                            let reason = serde_json::to_string(&reason).unwrap_or_default();
                            let reason = reason.trim_matches('"');
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}\n"),
                            )
                        }
                    }
                }
            }),
        )
}

/// Serves `/metrics` and `/health` until `shutdown`: over TLS when `tls` is given (a secure
/// member: its certificate, and a client certificate from the cluster's CA unless anonymous
/// scrapes are allowed), else plaintext.
pub async fn serve(
    server: Arc<dyn ServerHealth>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let checker = server.clone();
    let app = routes(server);
    if let Some(config) = tls {
        use eden_proto::tls_listener::{PeerCert, TlsListener};
        // A certificate revoked (or expired) since its connection was made is refused, as on the
        // gRPC ports.
        let checker = checker.clone();
        let app = app.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let checker = checker.clone();
                async move {
                    let refused = req
                        .extensions()
                        .get::<axum::extract::ConnectInfo<PeerCert>>()
                        .and_then(|c| {
                            c.0 .0
                                .as_deref()
                                .and_then(|d| checker.certificate_refused(d))
                        });
                    match refused {
                        Some(why) => (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
                        None => next.run(req).await,
                    }
                }
            },
        ));
        let listener = TlsListener::new(listener, config)?;
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<PeerCert>(),
        )
        .with_graceful_shutdown(shutdown)
        .await?;
        return Ok(());
    }
    // TCP_NODELAY on every accepted connection, as on the gRPC ports (grpc::incoming).
    let listener = listener.tap_io(|s| {
        if let Err(e) = s.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
