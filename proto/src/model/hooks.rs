//! Webhooks (`/eden/hooks/NAME`): a hook's token is printed once when it is created; only its
//! SHA-256 is stored. The intake that checks tokens is `eden_reactor::webhook`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::model::objects::now_ms;
use crate::model::{keys, kv, Error};

/// What is stored for a hook.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Hook {
    pub sha256: String,
    pub created_at: u64,
}

/// A token's SHA-256, in hex.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token.
fn new_token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Creates hook `name` (or, with `rotate`, gives an existing one a new token) and returns its
/// token; Refused if it exists and `rotate` is not set.
pub async fn create(client: &Client, name: &str, rotate: bool) -> Result<String, Error> {
    keys::check_name("hook name", name).map_err(Error::Invalid)?;
    let token = new_token();
    let key = keys::hook(name);
    let hook = Hook {
        sha256: hash(&token),
        created_at: now_ms(),
    };
    let compare = if rotate {
        vec![]
    } else {
        vec![kv::absent(&key)]
    };
    let r = kv::txn(client, compare, vec![kv::put(&key, &hook, 0)], vec![]).await?;
    if !r.succeeded {
        return Err(Error::Refused(format!(
            "hook {name} exists (use --rotate for a new token)"
        )));
    }
    Ok(token)
}

/// The hooks, by name (never their tokens).
pub async fn list(client: &Client) -> Result<Vec<(String, Hook)>, Error> {
    let (kvs, _) = kv::get_prefix(client, keys::HOOKS, 0, false).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| {
            let name = keys::rest(&kv.key, keys::HOOKS)?.to_string();
            Some((name, kv::decode::<Hook>(kv).ok()?))
        })
        .collect())
}

/// Hook `name` if it exists.
pub async fn get(client: &Client, name: &str) -> Result<Option<Hook>, Error> {
    Ok(kv::get_one(client, &keys::hook(name))
        .await?
        .and_then(|kv| kv::decode::<Hook>(&kv).ok()))
}

/// Removes hook `name`: its token stops working. NotFound if there is none.
pub async fn remove(client: &Client, name: &str) -> Result<(), Error> {
    if kv::delete_one(client, &keys::hook(name)).await? == 0 {
        return Err(Error::NotFound(format!("no hook {name}")));
    }
    Ok(())
}
