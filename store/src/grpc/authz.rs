//! Who is calling: the identity a client certificate names, turned into the authorizer's
//! [`Caller`], and the refusal every service answers with.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use eden_proto::pki;
use tonic::{Request, Status};

use crate::auth::{self, Caller, Denied, StoreFacts};
use crate::errors;
use crate::node::Node;

/// Identities of certificates seen lately, by the certificate's bytes: parsing X.509 on every
/// request would cost more than the request.
const CACHED_IDENTITIES: usize = 100_000;

fn cache() -> &'static Mutex<HashMap<Vec<u8>, pki::Identity>> {
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, pki::Identity>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The identity of a client certificate (DER).
pub fn identity_of_cert(der: &[u8]) -> Result<pki::Identity, String> {
    if let Some(id) = cache().lock().unwrap().get(der) {
        return Ok(id.clone());
    }
    let (id, _, _) = pki::identity_of(der)?;
    let mut c = cache().lock().unwrap();
    if c.len() >= CACHED_IDENTITIES {
        c.clear();
    }
    c.insert(der.to_vec(), id.clone());
    Ok(id)
}

/// The caller of a request: the identity its client certificate names (TLS already checked the
/// certificate against the cluster's CA), or root on an insecure member (no TLS, no authorization).
pub fn caller<T>(node: &Node, req: &Request<T>) -> Result<Caller, Status> {
    if node.config().tls.is_none() {
        return Ok(Caller::Root("insecure".into()));
    }
    let certs = req
        .peer_certs()
        .ok_or_else(|| errors::no_client_cert("the connection has none"))?;
    let der = certs
        .first()
        .ok_or_else(|| errors::no_client_cert("the connection has none"))?;
    let id = identity_of_cert(der).map_err(errors::no_client_cert)?;
    Ok(Caller::of(&id))
}

/// Refuses a peer-port call from anyone but a member of the cluster (an agent's certificate comes
/// from the same CA, and must not speak Raft).
pub fn require_member<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    if node.config().tls.is_none() {
        return Ok(());
    }
    let der = req
        .peer_certs()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| errors::no_client_cert("the connection has none"))?;
    match identity_of_cert(&der).map_err(errors::no_client_cert)? {
        pki::Identity::Member(_) => Ok(()),
        other => {
            tracing::warn!(caller = %other, "refused: only members may use the peer port");
            Err(errors::permission_denied())
        }
    }
}

/// Logs a refusal and turns it into etcd's "permission denied".
pub fn refuse(caller: &Caller, why: Denied) -> Status {
    tracing::warn!(caller = %caller, "refused: {why}");
    errors::permission_denied()
}

/// Runs `check` over this member's facts; a refusal becomes etcd's "permission denied".
pub fn allow(
    node: &Node,
    caller: &Caller,
    check: impl FnOnce(&StoreFacts) -> Result<(), Denied>,
) -> Result<(), Status> {
    if caller.is_root() {
        return Ok(());
    }
    check(&StoreFacts(node.mvcc())).map_err(|why| refuse(caller, why))
}

/// Checks an RPC that names no key.
pub fn allow_rpc(caller: &Caller, rpc: auth::Rpc) -> Result<(), Status> {
    auth::check_rpc(caller, rpc).map_err(|why| refuse(caller, why))
}
