//! go-plugin's AutoMTLS for plugin connections (design/plugins.md): the agent makes a
//! throw-away certificate for each plugin it starts and passes it in `PLUGIN_CLIENT_CERT` (PEM);
//! a plugin that supports it makes its own and returns it (DER, unpadded base64) as the
//! handshake's sixth field; then each side accepts exactly the other's certificate (pinned: the
//! certificates are self-signed CAs, as go-plugin makes them, so no chain is built).
//!
//! go-plugin's certificates use ECDSA P-521, which ring (eden's one crypto provider) cannot
//! verify: handshake signatures on P-521 keys are checked with the `p521` crate here; everything
//! else (key exchange, ciphers, other signatures) stays ring's.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// A throw-away certificate and key for one plugin connection.
pub struct AutoCert {
    pub der: Vec<u8>,
    pub pem: String,
    key: Vec<u8>,
}

impl AutoCert {
    /// A new self-signed certificate for `localhost` (P-256), usable by a client and a server.
    pub fn new() -> Result<AutoCert, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let key = KeyPair::generate().map_err(|e| format!("a key for the plugin: {e}"))?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()])
            .map_err(|e| format!("a certificate for the plugin: {e}"))?;
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p
            .self_signed(&key)
            .map_err(|e| format!("a certificate for the plugin: {e}"))?;
        Ok(AutoCert {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            key: key.serialize_der(),
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    /// The handshake's sixth field: the DER in unpadded standard base64 (go-plugin's form).
    pub fn handshake_field(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.der)
    }
}

/// The certificate a handshake's sixth field holds (padded or not).
pub fn decode_handshake_cert(field: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(field.trim_end_matches('='))
        .map_err(|e| format!("its certificate in the handshake is not base64: {e}"))
}

/// The DER of the first certificate in `pem` (`PLUGIN_CLIENT_CERT`).
pub fn der_of_pem(pem: &str) -> Result<Vec<u8>, String> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("PLUGIN_CLIENT_CERT: {e}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one certificate; checks handshake signatures with ring, or with `p521` for
/// P-521 keys.
#[derive(Debug)]
struct Pinned {
    der: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if cert.as_ref() == self.der.as_slice() {
            Ok(())
        } else {
            Err(rustls::Error::General(
                "not the certificate the handshake named".into(),
            ))
        }
    }

    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme == SignatureScheme::ECDSA_NISTP521_SHA512 {
            return verify_p521(message, cert, dss.signature());
        }
        let algs = &self.provider.signature_verification_algorithms;
        if tls13 {
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        } else {
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        let mut s = self
            .provider
            .signature_verification_algorithms
            .supported_schemes();
        s.push(SignatureScheme::ECDSA_NISTP521_SHA512);
        s
    }
}

/// An ECDSA P-521 / SHA-512 signature by the key of `cert` over `message`.
fn verify_p521(
    message: &[u8],
    cert: &CertificateDer<'_>,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use p521::ecdsa::signature::Verifier;
    let bad = |why: String| rustls::Error::General(format!("P-521 signature: {why}"));
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let point = &parsed.public_key().subject_public_key.data;
    let key =
        p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(format!("key: {e}")))?;
    let sig = p521::ecdsa::Signature::from_der(signature).map_err(|e| bad(e.to_string()))?;
    key.verify(message, &sig)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// The agent's side: present `own`, accept only the plugin's `server_der`.
pub fn client_config(own: &AutoCert, server_der: &[u8]) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            der: server_der.to_vec(),
            provider,
        }))
        .with_client_auth_cert(vec![CertificateDer::from(own.der.clone())], own.key())
        .map_err(|e| format!("the agent's plugin certificate: {e}"))?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// The plugin's side: present `own`, accept only the agent's `client_der`.
pub fn server_config(own: &AutoCert, client_der: &[u8]) -> Result<rustls::ServerConfig, String> {
    let provider = provider();
    let mut c = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(Pinned {
            der: client_der.to_vec(),
            provider,
        }))
        .with_single_cert(vec![CertificateDer::from(own.der.clone())], own.key())
        .map_err(|e| format!("the plugin's certificate: {e}"))?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS handshake over an in-memory pipe; Err: the client's or the server's error.
    async fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<(), String> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let name = ServerName::try_from("localhost").unwrap();
        let (c, s) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
        c.map_err(|e| format!("client: {e}"))?;
        s.map_err(|e| format!("server: {e}"))?;
        Ok(())
    }

    #[tokio::test]
    async fn each_side_accepts_the_other_s_certificate_and_no_other() {
        let (agent, plugin, other) = (
            AutoCert::new().unwrap(),
            AutoCert::new().unwrap(),
            AutoCert::new().unwrap(),
        );
        assert_eq!(
            decode_handshake_cert(&plugin.handshake_field()).unwrap(),
            plugin.der
        );
        assert_eq!(der_of_pem(&agent.pem).unwrap(), agent.der);
        handshake(
            client_config(&agent, &plugin.der).unwrap(),
            server_config(&plugin, &agent.der).unwrap(),
        )
        .await
        .unwrap();
        // A plugin that is not the one the handshake named; an agent that is not the one the
        // plugin was given.
        assert!(handshake(
            client_config(&agent, &other.der).unwrap(),
            server_config(&plugin, &agent.der).unwrap()
        )
        .await
        .is_err());
        assert!(handshake(
            client_config(&other, &plugin.der).unwrap(),
            server_config(&plugin, &agent.der).unwrap()
        )
        .await
        .is_err());
    }
}
