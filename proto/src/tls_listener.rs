//! TLS on a member's ports: a listener whose connections are TLS streams (for axum on the HTTP
//! ports, for tonic on the client and peer ports), and a server certificate that can be replaced
//! while it serves. Handshakes run concurrently, each with a time limit, so a client that connects
//! and says nothing cannot hold up the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Who must present a client certificate from the cluster's CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Nobody is asked for one.
    None,
    /// Every client presents one.
    Required,
    /// A client may come without one (the client port, for the join call); one it presents
    /// must be valid.
    Optional,
}

/// A server's certificate and key, replaceable while it serves: a member that renews its own
/// certificate presents the new one on every connection made from then on.
#[derive(Debug)]
pub struct ServerCert(std::sync::RwLock<Arc<CertifiedKey>>);

impl ServerCert {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerCert>, String> {
        Ok(Arc::new(ServerCert(std::sync::RwLock::new(certified(
            cert_pem, key_pem,
        )?))))
    }

    /// Presents `cert_pem` (with `key_pem`) from now on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let k = certified(cert_pem, key_pem)?;
        *self.0.write().expect("certificate lock") = k;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock").clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the key: {e}"))?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| format!("the certificate and key: {e}"))
}

/// A rustls server config presenting `cert_pem` (with `key_pem`); with `client_ca_pem`, clients
/// must present a certificate from that CA. For HTTP/1.1.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let auth = match client_ca_pem {
        Some(_) => ClientAuth::Required,
        None => ClientAuth::None,
    };
    config_with(
        ServerCert::new(cert_pem, key_pem)?,
        client_ca_pem.unwrap_or_default(),
        auth,
        b"http/1.1",
    )
}

/// A rustls server config presenting whatever `cert` holds at each handshake, asking clients
/// for a certificate from `ca_pem` as `auth` says, speaking `alpn` (`h2` for gRPC).
pub fn config_with(
    cert: Arc<ServerCert>,
    ca_pem: &str,
    auth: ClientAuth,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if auth == ClientAuth::None {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| format!("the CA: {e}"))?)
                .map_err(|e| format!("the CA: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if auth == ClientAuth::Optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The client certificate of a connection (DER), if it presented one: handlers check it further
/// (revocation) through axum's connect info.
#[derive(Clone, Debug, Default)]
pub struct PeerCert(pub Option<Vec<u8>>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerCert
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        PeerCert(
            conn.peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        )
    }
}

/// Accepts TLS connections on a TCP listener (TCP_NODELAY set on each).
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let accepting = tokio::spawn(async move {
            loop {
                let (s, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = s.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(s)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl TlsListener {
    /// The accepted connections as a stream, for tonic's `serve_with_incoming` (which then
    /// gives handlers the client's certificates through `Request::peer_certs`).
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send {
        futures::stream::unfold(self, |mut l| async move {
            let (s, _) = l.ready.recv().await?;
            Some((Ok(s), l))
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
