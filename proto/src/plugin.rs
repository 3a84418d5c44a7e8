//! The plugin protocol's handshake, and serving a plugin written in Rust (design/plugins.md).
//!
//! A plugin is an executable the agent starts with [`MAGIC_COOKIE_KEY`] set to
//! [`MAGIC_COOKIE_VALUE`] and `PLUGIN_PROTOCOL_VERSIONS` naming the versions the agent speaks.
//! It prints one line on stdout, HashiCorp go-plugin's handshake
//! (`CORE|APP|NETWORK|ADDRESS|PROTOCOL`, e.g. `1|1|unix|/tmp/x/plugin.sock|grpc`), then serves
//! [`crate::plugin_v1`]'s Provider and gRPC's health service on that address until it is
//! stopped. So a plugin written with go-plugin (handshake config: key
//! `EDEN_PLUGIN_MAGIC_COOKIE`, the value below, protocol version 1) is an eden plugin.

use std::path::PathBuf;
use std::pin::Pin;

use tonic::{Request, Response, Status};

use crate::health_v1::health_check_response::ServingStatus;
use crate::health_v1::health_server::{Health, HealthServer};
use crate::health_v1::{HealthCheckRequest, HealthCheckResponse};
use crate::plugin_v1::provider_server::{Provider, ProviderServer};

/// The environment variable that tells a plugin it was started by an eden agent.
pub const MAGIC_COOKIE_KEY: &str = "EDEN_PLUGIN_MAGIC_COOKIE";
/// Its value (not a secret: it only keeps a plugin from being run by hand by mistake).
pub const MAGIC_COOKIE_VALUE: &str = "d6f1c4a0e8b94f2a9c7e3b5d1a0f6e2c";
/// go-plugin's own protocol version (the handshake's first field).
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// eden's plugin protocol version (the handshake's second field; `eden.plugin.v1`).
pub const APP_PROTOCOL_VERSION: u32 = 1;
/// The versions the agent offers, comma-separated (go-plugin's variable).
pub const PROTOCOL_VERSIONS_KEY: &str = "PLUGIN_PROTOCOL_VERSIONS";
/// Where the plugin should put its socket (go-plugin's variable).
pub const SOCKET_DIR_KEY: &str = "PLUGIN_UNIX_SOCKET_DIR";

/// A plugin's handshake line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub core: u32,
    pub app: u32,
    /// `unix` or `tcp`.
    pub network: String,
    pub address: String,
    /// `grpc` (go-plugin's `netrpc` is not spoken).
    pub protocol: String,
    /// The plugin's certificate (DER) when it answered the agent's AutoMTLS offer.
    pub server_cert: Option<Vec<u8>>,
}

/// Parses a handshake line; Err says what is wrong with it, in words for the operator.
pub fn parse_handshake(line: &str) -> Result<Handshake, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let shown: String = line.chars().take(80).collect();
    let fields: Vec<&str> = line.split('|').collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "printed {shown:?} where its handshake belongs (CORE|APP|NETWORK|ADDRESS|PROTOCOL, \
             e.g. 1|1|unix|/tmp/plugin.sock|grpc); a plugin logs to stderr, never to stdout"
        ));
    }
    let number = |what: &str, s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("its handshake {shown:?} has {s:?} as {what} version"))
    };
    let h = Handshake {
        core: number("core protocol", fields[0])?,
        app: number("plugin protocol", fields[1])?,
        network: fields[2].to_string(),
        address: fields[3].to_string(),
        protocol: fields[4].to_string(),
        server_cert: match fields.get(5) {
            Some(c) if !c.is_empty() => Some(crate::plugin_tls::decode_handshake_cert(c)?),
            _ => None,
        },
    };
    if h.core != CORE_PROTOCOL_VERSION {
        return Err(format!(
            "speaks core protocol {} (this agent speaks {CORE_PROTOCOL_VERSION})",
            h.core
        ));
    }
    if h.app != APP_PROTOCOL_VERSION {
        return Err(format!(
            "speaks plugin protocol {} (this agent speaks {APP_PROTOCOL_VERSION})",
            h.app
        ));
    }
    if h.network != "unix" && h.network != "tcp" {
        return Err(format!("serves on network {:?} (unix or tcp)", h.network));
    }
    if h.protocol != "grpc" {
        return Err(format!("speaks {:?}; eden plugins speak grpc", h.protocol));
    }
    Ok(h)
}

/// The handshake line a plugin prints for a socket at `path` (with its certificate, when the
/// agent asked for AutoMTLS).
pub fn handshake_line(path: &std::path::Path, cert: Option<&str>) -> String {
    let line = format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc",
        path.display()
    );
    match cert {
        Some(c) => format!("{line}|{c}"),
        None => line,
    }
}

/// The environment variable holding the agent's certificate (PEM) when it asks for AutoMTLS.
pub const CLIENT_CERT_KEY: &str = "PLUGIN_CLIENT_CERT";

/// Answers SERVING for the plugin (go-plugin's clients ask for service "plugin").
struct Healthy;

#[tonic::async_trait]
impl Health for Healthy {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }
}

/// TLS connections on `listener` (failed handshakes are dropped).
fn async_stream_tls(
    listener: tokio::net::UnixListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::UnixStream>>>
{
    futures::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
        loop {
            let (sock, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => return Some((Err(e), (listener, acceptor))),
            };
            match acceptor.accept(sock).await {
                Ok(tls) => return Some((Ok(tls), (listener, acceptor))),
                Err(e) => eprintln!("a plugin connection without a good TLS handshake: {e}"),
            }
        }
    })
}

/// Serves `provider` as a plugin: checks that an agent started it, binds a Unix socket (in
/// `PLUGIN_UNIX_SOCKET_DIR`, else the temporary directory), prints the handshake (with its own
/// certificate when the agent offered one in `PLUGIN_CLIENT_CERT`: then only TLS connections
/// presenting the agent's certificate are served) and serves until SIGTERM or SIGINT. Err: why it cannot (not started by an agent, no common version).
pub async fn serve<P: Provider>(provider: P) -> Result<(), String> {
    if std::env::var(MAGIC_COOKIE_KEY).as_deref() != Ok(MAGIC_COOKIE_VALUE) {
        return Err(
            "this is an eden plugin: the eden agent starts it (it is not a program to run by hand)"
                .into(),
        );
    }
    let offered = std::env::var(PROTOCOL_VERSIONS_KEY).unwrap_or_default();
    if !offered
        .split(',')
        .any(|v| v.trim() == APP_PROTOCOL_VERSION.to_string())
    {
        return Err(format!(
            "the agent offers plugin protocol versions {offered:?}; this plugin speaks {APP_PROTOCOL_VERSION}"
        ));
    }
    let dir = std::env::var_os(SOCKET_DIR_KEY)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "plugin-{}-{:08x}.sock",
        std::process::id(),
        rand::random::<u32>()
    ));
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // AutoMTLS when the agent offers its certificate: ours goes back in the handshake.
    let tls = match std::env::var(CLIENT_CERT_KEY) {
        Ok(pem) if !pem.trim().is_empty() => {
            let client = crate::plugin_tls::der_of_pem(&pem)?;
            let own = crate::plugin_tls::AutoCert::new()?;
            let config = crate::plugin_tls::server_config(&own, &client)?;
            Some((own.handshake_field(), config))
        }
        _ => None,
    };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}",
            handshake_line(&path, tls.as_ref().map(|(c, _)| c.as_str()))
        )
        .and_then(|_| out.flush())
        .map_err(|e| format!("printing the handshake: {e}"))?;
    }
    let stop: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    });
    let router = tonic::transport::Server::builder()
        .add_service(ProviderServer::new(provider))
        .add_service(HealthServer::new(Healthy));
    let served = match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    stop,
                )
                .await
        }
        Some((_, config)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
            // Handshakes one at a time: the agent is the only client.
            let incoming = async_stream_tls(listener, acceptor);
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    let _ = std::fs::remove_file(&path);
    served.map_err(|e| format!("serving: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_checked_field_by_field() {
        let h = parse_handshake("1|1|unix|/tmp/p.sock|grpc\n").unwrap();
        assert_eq!(h.address, "/tmp/p.sock");
        assert_eq!(
            parse_handshake(&handshake_line(std::path::Path::new("/x/y.sock"), None)).unwrap(),
            Handshake {
                core: 1,
                app: 1,
                network: "unix".into(),
                address: "/x/y.sock".into(),
                protocol: "grpc".into(),
                server_cert: None,
            }
        );
        let cert = crate::plugin_tls::AutoCert::new().unwrap();
        let with = handshake_line(
            std::path::Path::new("/x/y.sock"),
            Some(&cert.handshake_field()),
        );
        assert_eq!(
            parse_handshake(&with).unwrap().server_cert,
            Some(cert.der.clone())
        );
        // go-plugin ends the line with an empty sixth field when there is no certificate.
        assert_eq!(
            parse_handshake("1|1|unix|/p|grpc|").unwrap().server_cert,
            None
        );
        assert!(parse_handshake("1|1|unix|/p|grpc|%%%")
            .unwrap_err()
            .contains("base64"));
        assert!(parse_handshake("hello world")
            .unwrap_err()
            .contains("never to stdout"));
        assert!(parse_handshake("1|2|unix|/p|grpc")
            .unwrap_err()
            .contains("plugin protocol 2"));
        assert!(parse_handshake("1|1|unix|/p|netrpc")
            .unwrap_err()
            .contains("grpc"));
        assert!(parse_handshake("1|x|unix|/p|grpc")
            .unwrap_err()
            .contains("\"x\""));
    }
}
