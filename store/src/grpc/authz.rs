//! Who is calling: the identity a client certificate names, turned into the authorizer's
//! [`Caller`], and the refusal every service answers with.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use eden_proto::pki;
use tonic::{Request, Status};

use crate::auth::{self, Caller, Denied, Facts, StoreFacts};
use crate::errors;
use crate::node::Node;

/// Identities of certificates seen lately, by the certificate's bytes: parsing X.509 on every
/// request would cost more than the request.
const CACHED_IDENTITIES: usize = 100_000;

fn cache() -> &'static Mutex<HashMap<Vec<u8>, pki::CertInfo>> {
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, pki::CertInfo>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// What a client certificate (DER) says: identity, serial, issue time, expiry.
pub fn cert_info(der: &[u8]) -> Result<pki::CertInfo, String> {
    if let Some(info) = cache().lock().unwrap().get(der) {
        return Ok(info.clone());
    }
    let info = pki::cert_info(der)?;
    let mut c = cache().lock().unwrap();
    if c.len() >= CACHED_IDENTITIES {
        c.clear();
    }
    c.insert(der.to_vec(), info.clone());
    Ok(info)
}

/// A request the server makes for someone, in process (the web view, for a signed-in viewer):
/// the certificate it acts as. Only code in this crate can attach it; nothing from the network
/// can.
#[derive(Clone, Debug)]
pub struct ActingAs(pub(crate) pki::CertInfo);

/// The certificate of a request's connection (TLS already checked it against the cluster's CA),
/// or the one an in-process request acts as.
pub(crate) fn peer_cert<T>(req: &Request<T>) -> Result<pki::CertInfo, Status> {
    if let Some(a) = req.extensions().get::<ActingAs>() {
        return Ok(a.0.clone());
    }
    // A connection of the in-process server (grpc::InProcess): whom it was made for.
    if let Some(Some(a)) = req.extensions().get::<Option<ActingAs>>() {
        return Ok(a.0.clone());
    }
    let der = req
        .peer_certs()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| errors::no_client_cert("the connection has none"))?;
    cert_info(&der).map_err(errors::no_client_cert)
}

/// Refuses a certificate that was revoked or has expired since its connection was made (TLS
/// checks expiry only when a connection starts).
pub fn still_valid(node: &Node, info: &pki::CertInfo) -> Result<(), Status> {
    still_valid_in(info, &StoreFacts::new(node.mvcc()))
}

/// Like [`still_valid`], reading the revocations through `facts`.
pub fn still_valid_in(info: &pki::CertInfo, facts: &StoreFacts) -> Result<(), Status> {
    let now = (eden_proto::model::objects::now_ms() / 1000) as i64;
    if info.not_after < now {
        return Err(Status::unauthenticated(format!(
            "eden: the certificate of {} (serial {}) has expired",
            info.identity, info.serial
        )));
    }
    if facts.revoked(info) {
        tracing::warn!(caller = %info.identity, serial = %info.serial, "refused a revoked certificate");
        return Err(Status::unauthenticated(format!(
            "eden: the certificate of {} (serial {}) was revoked",
            info.identity, info.serial
        )));
    }
    Ok(())
}

/// The caller of a request: the identity its client certificate names, if that certificate is
/// still valid; root on an insecure member (no TLS, no authorization).
pub fn caller<T>(node: &Node, req: &Request<T>) -> Result<Caller, Status> {
    caller_and_cert(node, req).map(|(c, _)| c)
}

/// Like [`caller`], with the certificate, for streams that check it again while they last.
pub fn caller_and_cert<T>(
    node: &Node,
    req: &Request<T>,
) -> Result<(Caller, Option<pki::CertInfo>), Status> {
    let cert = cert_of(node, req)?;
    let caller = caller_in(cert.as_ref(), &StoreFacts::new(node.mvcc()))?;
    Ok((caller, cert))
}

/// The certificate of a request (None on an insecure member).
pub fn cert_of<T>(node: &Node, req: &Request<T>) -> Result<Option<pki::CertInfo>, Status> {
    if !node.secure() {
        return Ok(None);
    }
    peer_cert(req).map(Some)
}

/// The caller a certificate names, if it is still valid, reading revocations and roles through
/// `facts`; root on an insecure member (`cert` None).
pub fn caller_in(cert: Option<&pki::CertInfo>, facts: &StoreFacts) -> Result<Caller, Status> {
    let Some(info) = cert else {
        return Ok(Caller::Root("insecure".into()));
    };
    still_valid_in(info, facts)?;
    Ok(match Caller::of(&info.identity) {
        // etcd's root role is every right.
        Caller::User(u) if facts.user_perms(&u).0 => Caller::Root(format!("user:{u}")),
        c => c,
    })
}

/// Refuses a peer-port call from anyone but a member of the cluster (an agent's certificate comes
/// from the same CA, and must not speak Raft).
pub fn require_member<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    if !node.secure() {
        return Ok(());
    }
    let info = peer_cert(req)?;
    still_valid(node, &info)?;
    match info.identity {
        pki::Identity::Member(_) => Ok(()),
        other => {
            tracing::warn!(caller = %other, "refused: only members may use the peer port");
            node.audit_denied(&other.to_string(), "only members may use the peer port");
            Err(errors::permission_denied())
        }
    }
}

/// A peer-port stream opening: refused unless from a member ([`require_member`]); the caller's
/// certificate, to check again before each request with [`still_member`] (None when insecure).
pub fn member_stream<T>(node: &Node, req: &Request<T>) -> Result<Option<pki::CertInfo>, Status> {
    require_member(node, req)?;
    match node.secure() {
        true => Ok(Some(peer_cert(req)?)),
        false => Ok(None),
    }
}

/// Before each request on a stream [`member_stream`] opened: the certificate was not revoked and
/// has not expired since.
pub fn still_member(node: &Node, cert: &Option<pki::CertInfo>) -> Result<(), Status> {
    match cert {
        Some(info) => still_valid(node, info),
        None => Ok(()),
    }
}

/// Logs a refusal, records it as an audit event, and turns it into etcd's "permission denied".
pub fn refuse(node: &Node, caller: &Caller, why: Denied) -> Status {
    tracing::warn!(caller = %caller, "refused: {why}");
    node.audit_denied(&caller.to_string(), &why.0);
    errors::permission_denied()
}

/// Runs `check` over this member's facts; a refusal becomes etcd's "permission denied".
pub fn allow(
    node: &Node,
    caller: &Caller,
    check: impl FnOnce(&StoreFacts) -> Result<(), Denied>,
) -> Result<(), Status> {
    allow_in(node, caller, &StoreFacts::new(node.mvcc()), check)
}

/// Like [`allow`], over `facts` (a recording one, for a write).
pub fn allow_in(
    node: &Node,
    caller: &Caller,
    facts: &StoreFacts,
    check: impl FnOnce(&StoreFacts) -> Result<(), Denied>,
) -> Result<(), Status> {
    if caller.is_root() {
        return Ok(());
    }
    check(facts).map_err(|why| refuse(node, caller, why))
}

/// Checks an RPC that names no key.
pub fn allow_rpc(node: &Node, caller: &Caller, rpc: auth::Rpc) -> Result<(), Status> {
    auth::check_rpc(caller, rpc).map_err(|why| refuse(node, caller, why))
}

/// The caller of a request that needs `rpc`, refused (and audited) when it may not.
pub fn require_rpc<T>(node: &Node, req: &Request<T>, rpc: auth::Rpc) -> Result<Caller, Status> {
    let caller = caller(node, req)?;
    allow_rpc(node, &caller, rpc)?;
    Ok(caller)
}
