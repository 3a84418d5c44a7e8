//! The web view's sign-in links (`eden ui login`, decision 0026): `/eden/ui/logins/ID` holds a
//! [`Login`], the SHA-256 of its secret and the certificate it stands for; the web view consumes
//! it on the first visit (deleting it in the txn that checks it is still there) and starts a
//! session that acts as that certificate. Only admins (and members) may write under
//! `/eden/ui/`: a role cannot grant it, since a link names whom its session acts as.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::model::objects::now_ms;
use crate::model::tokens;
use crate::model::{kv, Error};
use crate::pki::CertInfo;

pub const UI: &str = "/eden/ui/";
pub const LOGINS: &str = "/eden/ui/logins/";
/// The longest a sign-in link lives.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(3600);

pub fn login(id: &str) -> String {
    format!("{LOGINS}{id}")
}

/// `/eden/ui/logins/ID`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Login {
    pub secret_sha256: String,
    /// The identity its session acts as (`admin:ops`).
    pub identity: String,
    /// The serial, issue time and expiry of the certificate that made it: revoking that
    /// certificate ends the session.
    pub serial: String,
    pub issued_at: i64,
    pub cert_not_after: i64,
    pub created_at: u64,
    pub expires_at: u64,
}

/// Stores a sign-in link for the certificate `cert` (the caller's own); returns `ID.SECRET`.
pub async fn create(client: &Client, cert: &CertInfo, ttl: Duration) -> Result<String, Error> {
    if ttl.is_zero() || ttl > MAX_LINK_TTL {
        return Err(Error::Invalid(format!(
            "a sign-in link lives between 1 s and {} min",
            MAX_LINK_TTL.as_secs() / 60
        )));
    }
    let (id, secret) = (
        tokens::random(tokens::ID_LEN),
        tokens::random(tokens::SECRET_LEN),
    );
    let now = now_ms();
    let l = Login {
        secret_sha256: tokens::hash(&secret),
        identity: cert.identity.to_string(),
        serial: cert.serial.clone(),
        issued_at: cert.issued_at,
        cert_not_after: cert.not_after,
        created_at: now,
        expires_at: now + ttl.as_millis() as u64,
    };
    let r = kv::txn(
        client,
        vec![kv::absent(&login(&id))],
        vec![kv::put(&login(&id), &l, 0)],
        vec![],
    )
    .await?;
    if !r.succeeded {
        return Err(Error::Refused(
            "a sign-in link with that id exists; try again".into(),
        ));
    }
    Ok(format!("{id}.{secret}"))
}
