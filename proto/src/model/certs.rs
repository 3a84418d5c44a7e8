//! Certificates the cluster issued and the ones it revoked.
//!
//! ```text
//! /eden/certs/SERIAL                    Issued       the member that signed it (join, renewal)
//! /eden/revoked/serials/SERIAL          Revoked      operator (`eden cert revoke SERIAL`)
//! /eden/revoked/identities/KIND:NAME    Revoked      operator (`eden cert revoke NAME`,
//!                                                    `eden node rm`): every certificate of that
//!                                                    identity issued before it
//! ```
//!
//! Every member refuses a revoked certificate at each request, on every port, and closes the
//! streams opened with it (design/decisions/0012).

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::etcdserverpb::RequestOp;
use crate::model::keys;
use crate::model::kv;
use crate::model::objects::now_ms;
use crate::model::Error;
use crate::pki::{CertInfo, Identity};

pub const CERTS: &str = "/eden/certs/";
pub const REVOKED: &str = "/eden/revoked/";
pub const REVOKED_SERIALS: &str = "/eden/revoked/serials/";
pub const REVOKED_IDENTITIES: &str = "/eden/revoked/identities/";

pub fn cert(serial: &str) -> String {
    format!("{CERTS}{serial}")
}
pub fn revoked_serial(serial: &str) -> String {
    format!("{REVOKED_SERIALS}{serial}")
}
pub fn revoked_identity(identity: &Identity) -> String {
    format!("{REVOKED_IDENTITIES}{identity}")
}

/// A certificate the cluster issued.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Issued {
    pub identity: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Milliseconds.
    pub issued_at: u64,
    /// "join" or "renewal".
    pub how: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Revoked {
    /// Milliseconds.
    pub revoked_at: u64,
}

/// Records an issued certificate (its lease: none; `eden cert ls` drops expired ones).
pub fn register(i: &Issued) -> RequestOp {
    kv::put(&cert(&i.serial), i, 0)
}

/// Revokes every certificate of `who` issued until now.
pub fn revoke_identity(who: &Identity) -> RequestOp {
    kv::put(
        &revoked_identity(who),
        &Revoked {
            revoked_at: now_ms(),
        },
        0,
    )
}

/// Whether a certificate is revoked, given what the store holds for its serial and identity.
pub fn is_revoked(
    info: &CertInfo,
    by_serial: Option<&Revoked>,
    by_identity: Option<&Revoked>,
) -> bool {
    by_serial.is_some()
        || by_identity.is_some_and(|r| (info.issued_at as u64) * 1000 <= r.revoked_at)
}

/// A hex serial as `eden cert ls` prints it.
pub fn looks_like_serial(s: &str) -> bool {
    s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every issued certificate not expired yet.
pub async fn list(client: &Client) -> Result<Vec<(Issued, bool)>, Error> {
    let (kvs, _) = kv::get_prefix(client, CERTS, 0, false).await?;
    let (revoked, _) = kv::get_prefix(client, REVOKED, 0, false).await?;
    let now = (now_ms() / 1000) as i64;
    let mut out = Vec::new();
    for kv in &kvs {
        let i: Issued = kv::decode(kv).map_err(Error::Corrupt)?;
        if i.not_after < now {
            continue;
        }
        let gone = revoked.iter().any(|r| {
            r.key == revoked_serial(&i.serial).as_bytes()
                || (r.key.ends_with(format!("/{}", i.identity).as_bytes())
                    && kv::decode::<Revoked>(r).is_ok_and(|r| i.issued_at <= r.revoked_at))
        });
        out.push((i, gone));
    }
    Ok(out)
}

/// `eden cert revoke SERIAL|IDENTITY` (an identity is `kind:NAME`, or a node's bare NAME).
pub async fn revoke(client: &Client, what: &str) -> Result<String, Error> {
    let op = if looks_like_serial(what) {
        kv::put(
            &revoked_serial(&what.to_ascii_lowercase()),
            &Revoked {
                revoked_at: now_ms(),
            },
            0,
        )
    } else {
        let who = if what.contains(':') {
            Identity::parse(what).map_err(Error::Invalid)?
        } else {
            keys::check_node_name(what).map_err(Error::Invalid)?;
            Identity::Node(what.to_string())
        };
        let op = revoke_identity(&who);
        kv::txn(client, vec![], vec![op], vec![]).await?;
        return Ok(format!(
            "revoked every certificate of {who} issued until now"
        ));
    };
    kv::txn(client, vec![], vec![op], vec![]).await?;
    Ok(format!("revoked certificate {what}"))
}
