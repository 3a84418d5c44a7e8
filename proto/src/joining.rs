//! The joining side of the join call (kubeadm's discovery with a pinned CA): fetch the cluster's
//! CA certificate over TLS without trusting anything yet, check it against the pin the operator
//! gave, then connect again trusting only that CA and trade the join token and a signing request
//! for a certificate. The private key is made here and never leaves the machine.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};

use crate::join::join_client::JoinClient;
use crate::join::{CaRequest, JoinRequest};
use crate::model::tokens;
use crate::pki::{self, Identity};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What a join brings home (PEM).
#[derive(Debug, Clone)]
pub struct Joined {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Joins through `endpoint` (HOST:PORT of any member's client port) as `who` with `token`,
/// trusting the cluster only if its CA matches `pin` (`sha256:HEX`).
pub async fn join(
    endpoint: &str,
    token: &str,
    pin: &str,
    who: &Identity,
) -> Result<Joined, String> {
    tokens::split(token)?;
    if !pin.starts_with("sha256:") {
        return Err(format!(
            "--ca-pin {pin:?}: expected sha256:HEX, as `eden token create` prints"
        ));
    }
    let endpoint = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let ca_pem = fetch_ca(endpoint).await?;
    let got = pki::pin_of(&ca_pem)?;
    if got != pin {
        return Err(format!(
            "the cluster at {endpoint} has the CA {got}, not the pinned {pin}: not joining it"
        ));
    }
    let (csr_pem, key_pem) = pki::new_csr(who)?;
    let ch = Endpoint::from_shared(format!("https://{endpoint}"))
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connecting to {endpoint}: {e}"))?;
    let resp = JoinClient::new(ch)
        .join(JoinRequest {
            token: token.trim().to_string(),
            csr_pem,
            identity: who.to_string(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let (issued_for, _, _) = pki::identity_of(&pki::der_of_pem(&resp.cert_pem)?)?;
    if issued_for != *who {
        return Err(format!(
            "the cluster issued a certificate for {issued_for}, not {who}"
        ));
    }
    Ok(Joined {
        ca_pem,
        cert_pem: resp.cert_pem,
        key_pem,
    })
}

/// The CA certificate a member hands out, over a TLS connection that checks nothing (the pin
/// does, afterwards; nothing secret is sent on it).
async fn fetch_ca(endpoint: &str) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CheckedByPin(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = endpoint.to_string();
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, addr) = (connector.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let ch = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect_with_connector(connect)
        .await
        .map_err(|e| format!("connecting to {endpoint}: {e}"))?;
    Ok(JoinClient::new(ch)
        .ca(CaRequest {})
        .await
        .map_err(|s| format!("asking {endpoint} for its CA: {}", s.message()))?
        .into_inner()
        .ca_pem)
}

/// Accepts any server certificate (signatures still checked): the CA it leads to is checked
/// against the pin before anything is trusted or sent.
#[derive(Debug)]
struct CheckedByPin(Arc<CryptoProvider>);

impl ServerCertVerifier for CheckedByPin {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
