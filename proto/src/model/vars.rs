//! Variables: JSON values kept per node (`/eden/vars/NODE/NAME`) or cluster-wide
//! (`/eden/vars/cluster/NAME`). A task's `--register NAME` writes them; so can operators. They
//! stay until removed, and their history is readable by revision until it is compacted.

use std::collections::BTreeMap;

use crate::client::Client;

use crate::model::keys;
use crate::model::kv;
use crate::model::readers::Readers;
use crate::model::Error;

/// Where a variable lives: a node's name or [`keys::CLUSTER`].
pub fn check_scope(scope: &str) -> Result<(), Error> {
    if scope == keys::CLUSTER {
        Ok(())
    } else {
        keys::check_node_name(scope).map_err(Error::Invalid)
    }
}

/// The JSON a text becomes when registered or set: JSON when it parses as JSON, else a string.
pub fn value_of_text(text: &str) -> serde_json::Value {
    let t = text.trim();
    serde_json::from_str(t).unwrap_or_else(|_| serde_json::Value::String(t.to_string()))
}

/// A variable's value as people read it: strings bare, anything else as JSON.
pub fn show_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A variable with its revision.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Var {
    pub scope: String,
    pub name: String,
    pub value: serde_json::Value,
    pub revision: i64,
}

pub async fn get(client: &Client, scope: &str, name: &str, revision: i64) -> Result<Var, Error> {
    check_scope(scope)?;
    keys::check_name("variable name", name).map_err(Error::Invalid)?;
    let key = keys::var(scope, name);
    let r = client
        .range(crate::etcdserverpb::RangeRequest {
            key: key.clone().into(),
            revision,
            ..Default::default()
        })
        .await?;
    let kv = r
        .kvs
        .first()
        .ok_or_else(|| Error::NotFound(format!("no variable {name} on {scope}")))?;
    Ok(Var {
        scope: scope.into(),
        name: name.into(),
        value: kv::decode(kv).map_err(Error::Corrupt)?,
        revision: kv.mod_revision,
    })
}

/// Every variable of `scope` (None: of every node and the cluster).
pub async fn list(client: &Client, scope: Option<&str>) -> Result<Vec<Var>, Error> {
    let prefix = match scope {
        Some(s) => {
            check_scope(s)?;
            keys::node_vars(s)
        }
        None => keys::VARS.to_string(),
    };
    let (kvs, _) = kv::get_prefix(client, &prefix, 0, false).await?;
    kvs.iter()
        .filter_map(|kv| {
            let (scope, name) = keys::rest(&kv.key, keys::VARS)?.split_once('/')?;
            Some(kv::decode(kv).map_err(Error::Corrupt).map(|value| Var {
                scope: scope.into(),
                name: name.into(),
                value,
                revision: kv.mod_revision,
            }))
        })
        .collect()
}

/// Every variable as templates see them: scope -> name -> value.
pub async fn all(
    client: &Client,
) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>, Error> {
    let mut out: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for v in list(client, None).await? {
        out.entry(v.scope).or_default().insert(v.name, v.value);
    }
    Ok(out)
}

/// The writes that set a variable and its readers (none: only the owner and admins read it).
pub fn writes(
    scope: &str,
    name: &str,
    value: &serde_json::Value,
    readers: &Readers,
) -> Vec<crate::etcdserverpb::RequestOp> {
    vec![
        kv::put(&keys::var(scope, name), value, 0),
        if readers.is_empty() {
            kv::delete(&keys::var_readers(scope, name))
        } else {
            kv::put(&keys::var_readers(scope, name), readers, 0)
        },
    ]
}

pub async fn set(
    client: &Client,
    scope: &str,
    name: &str,
    value: &serde_json::Value,
    readers: &Readers,
) -> Result<i64, Error> {
    check_scope(scope)?;
    keys::check_name("variable name", name).map_err(Error::Invalid)?;
    let r = kv::txn(client, vec![], writes(scope, name, value, readers), vec![]).await?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// Removes a variable; NotFound if there was none.
pub async fn remove(client: &Client, scope: &str, name: &str) -> Result<(), Error> {
    check_scope(scope)?;
    keys::check_name("variable name", name).map_err(Error::Invalid)?;
    let r = kv::txn(
        client,
        vec![],
        vec![
            kv::delete(&keys::var(scope, name)),
            kv::delete(&keys::var_readers(scope, name)),
        ],
        vec![],
    )
    .await?;
    let deleted = match r.responses.first().and_then(|r| r.response.as_ref()) {
        Some(crate::etcdserverpb::response_op::Response::ResponseDeleteRange(d)) => d.deleted,
        _ => 0,
    };
    if deleted == 0 {
        return Err(Error::NotFound(format!("no variable {name} on {scope}")));
    }
    Ok(())
}
