//! Join tokens, in Kubernetes' bootstrap-token shape `[a-z0-9]{6}.[a-z0-9]{16}`: the ID is public
//! (`/eden/tokens/ID`), only the SHA-256 of the secret is stored. Unlike Kubernetes', a token is
//! bound to one name and one role: it gets a certificate for exactly that identity, once, before it
//! expires (the join call deletes it in the same txn that checks it is still there).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::model::keys;
use crate::model::kv;
use crate::model::objects::now_ms;
use crate::model::Error;
use crate::pki::Identity;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const ID_LEN: usize = 6;
pub const SECRET_LEN: usize = 16;
/// Longest life a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Node,
    Member,
}

/// `/eden/tokens/ID`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Token {
    pub role: Role,
    /// The node's or member's name the certificate will name.
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// How long the certificate is valid (seconds; 0: the default, 30 days for a node); its
    /// renewals get as long.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cert_validity: u64,
    /// A member's addresses (IPs or DNS names) its certificate is valid for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
    pub created_at: u64,
    pub expires_at: u64,
}

impl Token {
    /// The identity a certificate for this token names.
    pub fn identity(&self) -> Identity {
        match self.role {
            Role::Node => Identity::Node(self.name.clone()),
            Role::Member => Identity::Member(self.name.clone()),
        }
    }
}

/// The cluster's CA as members keep it (`/eden/pki/ca`): only members may read it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CaKeys {
    pub cert_pem: String,
    pub key_pem: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

pub fn random(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn of_alphabet(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// Splits `ID.SECRET`, checking its shape.
pub fn split(token: &str) -> Result<(&str, &str), String> {
    match token.trim().split_once('.') {
        Some((id, secret)) if of_alphabet(id, ID_LEN) && of_alphabet(secret, SECRET_LEN) => {
            Ok((id, secret))
        }
        _ => Err("a join token is ID.SECRET: 6 and 16 lowercase letters or digits".into()),
    }
}

/// Hex SHA-256 of a secret.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `secret` is the one `stored` was made from (in time independent of where they differ).
pub fn matches(stored: &str, secret: &str) -> bool {
    let h = hash(secret);
    h.len() == stored.len()
        && h.bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Makes a token for `role` `name` that expires after `ttl`; returns `ID.SECRET` (shown once).
pub async fn create(
    client: &Client,
    role: Role,
    name: &str,
    addrs: &[String],
    ttl: Duration,
    cert_validity: Option<Duration>,
) -> Result<(String, Token), Error> {
    keys::check_node_name(name).map_err(Error::Invalid)?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::Invalid(format!(
            "a token lives between 1 s and {} h",
            MAX_TTL.as_secs() / 3600
        )));
    }
    let (id, secret) = (random(ID_LEN), random(SECRET_LEN));
    let now = now_ms();
    let token = Token {
        role,
        name: name.to_string(),
        secret_sha256: hash(&secret),
        cert_validity: cert_validity.map_or(0, |d| d.as_secs().max(10)),
        addrs: addrs.to_vec(),
        created_at: now,
        expires_at: now + ttl.as_millis() as u64,
    };
    let r = kv::txn(
        client,
        vec![kv::absent(&keys::token(&id))],
        vec![kv::put(&keys::token(&id), &token, 0)],
        vec![],
    )
    .await?;
    if !r.succeeded {
        return Err(Error::Refused("token ID collision, try again".into()));
    }
    Ok((format!("{id}.{secret}"), token))
}

/// Every token not yet used, with its ID.
pub async fn list(client: &Client) -> Result<Vec<(String, Token)>, Error> {
    let (kvs, _) = kv::get_prefix(client, keys::TOKENS, 0, false).await?;
    kvs.iter()
        .filter_map(|kv| {
            let id = keys::rest(&kv.key, keys::TOKENS)?.to_string();
            Some(kv::decode(kv).map_err(Error::Corrupt).map(|t| (id, t)))
        })
        .collect()
}

/// Deletes a token; NotFound if there was none.
pub async fn remove(client: &Client, id: &str) -> Result<(), Error> {
    let r = client
        .delete_range(crate::etcdserverpb::DeleteRangeRequest {
            key: keys::token(id).into(),
            ..Default::default()
        })
        .await?;
    if r.deleted == 0 {
        return Err(Error::NotFound(format!("no token {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_bootstrap_token_shape_and_only_their_hash_is_kept() {
        let (id, secret) = (random(ID_LEN), random(SECRET_LEN));
        let t = format!("{id}.{secret}");
        assert_eq!(split(&t).unwrap(), (id.as_str(), secret.as_str()));
        assert!(matches(&hash(&secret), &secret));
        assert!(!matches(&hash(&secret), &random(SECRET_LEN)));
        for bad in [
            "abc.def",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
            "",
        ] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
