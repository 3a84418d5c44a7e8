//! eden's PKI: the cluster's own certificate authority and the certificates it issues. Decision
//! 0011 says where the CA lives and who gets which certificate; design/security.md says why.
//!
//! - A certificate names exactly one [`Identity`] in its subject's common name (`admin:NAME`,
//!   `node:NAME`, `member:NAME`) and nothing else: labels and permissions are looked up on the
//!   server at each request, never read from a certificate.
//! - Everything that matters is set by the issuer, never copied from a request: the subject, the
//!   validity, a random 128-bit serial, the key usages, `CA:FALSE`. A certificate signing request
//!   contributes its public key only (after its signature is checked).
//! - Keys are ECDSA P-256; the crypto provider is ring, the only one in the build.
//! - A CA's pin is `sha256:` and the hex SHA-256 of its SubjectPublicKeyInfo (kubeadm's
//!   `--discovery-token-ca-cert-hash`), so a joining machine checks the server before it trusts it.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an agent's certificate is valid by default (renewed by the agent before it expires).
pub const NODE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long an admin's or a member's certificate is valid by default.
pub const ADMIN_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start a little in the past, for clocks that disagree by a few minutes.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// An operator: root over the cluster.
    Admin(String),
    /// A managed machine's agent.
    Node(String),
    /// A server of the cluster.
    Member(String),
    /// An etcd user (the Auth service's users and roles decide what it may do).
    User(String),
}

impl Identity {
    /// Parses `admin:NAME`, `node:NAME` or `member:NAME`; a name is 1 to 128 letters, digits, `.`,
    /// `-` or `_`.
    pub fn parse(s: &str) -> Result<Identity, String> {
        let (kind, name) = s.split_once(':').ok_or_else(|| {
            format!("identity {s:?}: expected admin:NAME, node:NAME, member:NAME or user:NAME")
        })?;
        crate::model::keys::check_name("identity name", name)?;
        let name = name.to_string();
        match kind {
            "admin" => Ok(Identity::Admin(name)),
            "node" => Ok(Identity::Node(name)),
            "member" => Ok(Identity::Member(name)),
            "user" => Ok(Identity::User(name)),
            _ => Err(format!(
                "identity {s:?}: the kind is admin, node, member or user, not {kind:?}"
            )),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Identity::Admin(n) | Identity::Node(n) | Identity::Member(n) | Identity::User(n) => n,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin(n) => write!(f, "admin:{n}"),
            Identity::Node(n) => write!(f, "node:{n}"),
            Identity::Member(n) => write!(f, "member:{n}"),
            Identity::User(n) => write!(f, "user:{n}"),
        }
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// The private key, when the CA made it (never when it signed a request).
    pub key_pem: Option<String>,
    /// The serial, in hex (what `eden cert revoke` names).
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

fn err(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // and exactly 16 bytes long
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The parameters of a certificate for `who`, all chosen here.
fn leaf_params(who: &Identity, sans: &[String], validity: Duration) -> (CertificateParams, Issued) {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.to_string());
    p.distinguished_name = dn;
    let (serial, hex) = random_serial();
    p.serial_number = Some(serial);
    let start = now() - BACKDATE;
    let end = now() + validity;
    p.not_before = start;
    p.not_after = end;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if matches!(who, Identity::Member(_)) {
        // Members serve the client and peer ports too.
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        p.subject_alt_names = sans
            .iter()
            .filter_map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Some(SanType::IpAddress(ip)),
                Err(_) => s.clone().try_into().ok().map(SanType::DnsName),
            })
            .collect();
    }
    p.use_authority_key_identifier_extension = true;
    let issued = Issued {
        cert_pem: String::new(),
        key_pem: None,
        serial: hex,
        not_after: end.unix_timestamp(),
    };
    (p, issued)
}

impl Ca {
    /// A new CA for the cluster `cluster` (its name goes in the CA's subject, for people).
    pub fn generate(cluster: &str) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(err("making the CA's key"))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("eden CA {cluster}"));
        p.distinguished_name = dn;
        p.serial_number = Some(random_serial().0);
        p.not_before = now() - BACKDATE;
        p.not_after = now() + CA_VALIDITY;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).map_err(err("making the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(err("the CA's key"))?;
        // Check that the certificate parses and belongs to the key.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(err("the CA's certificate"))?;
        let spki = spki_of_pem(cert_pem)?;
        if spki != key.subject_public_key_info() {
            return Err("the CA's certificate is not for the CA's key".into());
        }
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM): a secret, only members keep it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The pin a joining machine checks (`sha256:HEX`).
    pub fn pin(&self) -> String {
        pin_of_spki(&self.key.subject_public_key_info())
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, String> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(err("the CA's certificate"))
    }

    /// A certificate for `who` over a new key made here (an admin's at bootstrap, a member's own);
    /// `sans`: a member's addresses (IPs or DNS names; ignored for others).
    pub fn issue(
        &self,
        who: &Identity,
        sans: &[String],
        validity: Duration,
    ) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(err("making a key"))?;
        let (params, mut issued) = leaf_params(who, sans, validity);
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(err("signing a certificate"))?;
        issued.cert_pem = cert.pem();
        issued.key_pem = Some(key.serialize_pem());
        Ok(issued)
    }

    /// A certificate for `who` over the public key of a signing request. The request's signature
    /// is checked; nothing else of it is used (not its subject, validity, extensions or usages).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        who: &Identity,
        sans: &[String],
        validity: Duration,
    ) -> Result<Issued, String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(err("the certificate signing request"))?;
        let (params, mut issued) = leaf_params(who, sans, validity);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(err("signing a certificate"))?;
        issued.cert_pem = cert.pem();
        Ok(issued)
    }
}

/// A new key and a signing request for `who` (what a joining agent or member sends); returns
/// (request PEM, key PEM). The key never leaves the machine.
pub fn new_csr(who: &Identity) -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(err("making a key"))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, who.to_string());
    p.distinguished_name = dn;
    let csr = p
        .serialize_request(&key)
        .map_err(err("making the signing request"))?;
    let pem = csr.pem().map_err(err("encoding the signing request"))?;
    Ok((pem, key.serialize_pem()))
}

fn pin_of_spki(spki: &[u8]) -> String {
    let hex: String = Sha256::digest(spki)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The DER of a certificate (the first in `pem`).
pub fn der_of_pem(pem: &str) -> Result<Vec<u8>, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(p.contents)
}

fn spki_of_pem(pem: &str) -> Result<Vec<u8>, String> {
    let der = der_of_pem(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.public_key().raw.to_vec())
}

/// The pin of a CA certificate (`sha256:HEX` of its SubjectPublicKeyInfo).
pub fn pin_of(ca_cert_pem: &str) -> Result<String, String> {
    Ok(pin_of_spki(&spki_of_pem(ca_cert_pem)?))
}

/// What the cluster needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    /// Hex, as `eden cert ls` shows it.
    pub serial: String,
    /// When it was issued (Unix seconds; its not-before is set this much earlier, for clocks
    /// that disagree).
    pub issued_at: i64,
    pub not_after: i64,
    /// Its subject alternative names (a member's addresses: IPs and DNS names), as issued.
    pub sans: Vec<String>,
}

/// A certificate's identity, serial, issue time and expiry. The chain is not checked here: TLS
/// checked it when the connection was made.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let (identity, serial, not_after) = identity_of(cert_der)?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => ip_of(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo {
        identity,
        serial,
        issued_at: cert.validity().not_before.timestamp() + BACKDATE.as_secs() as i64,
        not_after,
        sans,
    })
}

/// An IP address SAN's octets as text (4 or 16 of them).
fn ip_of(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
        _ => None,
    }
}

/// What a certificate (DER) says about its holder: its identity, serial (hex) and expiry (Unix
/// seconds). The chain is not checked here: TLS checked it when the connection was made.
pub fn identity_of(cert_der: &[u8]) -> Result<(Identity, String, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the certificate names no identity")?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((
        Identity::parse(cn)?,
        serial,
        cert.validity().not_after.timestamp(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(pem: &str) -> (Vec<u8>, x509_parser::certificate::X509Certificate<'static>) {
        let der = der_of_pem(pem).unwrap();
        let leaked: &'static [u8] = Box::leak(der.clone().into_boxed_slice());
        (der, x509_parser::parse_x509_certificate(leaked).unwrap().1)
    }

    #[test]
    fn identities_parse_and_print() {
        for s in ["admin:root", "node:web1", "member:m-1.a_b"] {
            assert_eq!(Identity::parse(s).unwrap().to_string(), s);
        }
        for bad in ["root", "group:x", "node:", "node:a/b", "node:a b"] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_certificate_names_its_identity_with_what_the_issuer_chose() {
        let ca = Ca::generate("test").unwrap();
        let admin = ca
            .issue(&Identity::Admin("root".into()), &[], ADMIN_VALIDITY)
            .unwrap();
        let (der, cert) = parsed(&admin.cert_pem);
        let (who, serial, not_after) = identity_of(&der).unwrap();
        assert_eq!(who, Identity::Admin("root".into()));
        assert_eq!(serial, admin.serial);
        assert_eq!(serial.len(), 32);
        assert_eq!(not_after, admin.not_after);
        let left = not_after - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            (ADMIN_VALIDITY.as_secs() as i64 - left).abs() < 60,
            "{left}"
        );
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        // Serials are random.
        let again = ca
            .issue(&Identity::Admin("root".into()), &[], ADMIN_VALIDITY)
            .unwrap();
        assert_ne!(again.serial, admin.serial);
        // A member's certificate serves too, for its addresses.
        let m = ca
            .issue(
                &Identity::Member("m1".into()),
                &["127.0.0.1".into(), "m1.example".into()],
                ADMIN_VALIDITY,
            )
            .unwrap();
        let (_, cert) = parsed(&m.cert_pem);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 2);
        let der = der_of_pem(&m.cert_pem).unwrap();
        assert_eq!(
            cert_info(&der).unwrap().sans,
            vec!["127.0.0.1".to_string(), "m1.example".to_string()]
        );
    }

    #[test]
    fn a_signing_request_gives_its_key_and_nothing_else() {
        let ca = Ca::generate("test").unwrap();
        // The request claims to be an admin; the certificate names what the issuer decided.
        let (csr, key) = new_csr(&Identity::Admin("root".into())).unwrap();
        let issued = ca
            .sign_csr(&csr, &Identity::Node("web1".into()), &[], NODE_VALIDITY)
            .unwrap();
        assert!(issued.key_pem.is_none());
        let (der, cert) = parsed(&issued.cert_pem);
        assert_eq!(identity_of(&der).unwrap().0, Identity::Node("web1".into()));
        assert!(!cert.is_ca());
        // Over the requester's key.
        let key = KeyPair::from_pem(&key).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        // A request whose signature does not hold is refused.
        let mut bad = csr.clone();
        let mid = bad.len() / 2;
        bad.replace_range(mid..mid + 4, "AAAA");
        assert!(ca
            .sign_csr(&bad, &Identity::Node("web1".into()), &[], NODE_VALIDITY)
            .is_err());
    }

    #[test]
    fn the_pin_is_the_hash_of_the_cas_public_key() {
        let ca = Ca::generate("test").unwrap();
        let pin = ca.pin();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
        assert_eq!(pin_of(ca.cert_pem()).unwrap(), pin);
        let other = Ca::generate("test").unwrap();
        assert_ne!(other.pin(), pin);
        // A CA comes back from its PEM files, and refuses a certificate of another key.
        let back = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(back.pin(), pin);
        assert!(Ca::from_pem(ca.cert_pem(), &other.key_pem()).is_err());
    }
}
