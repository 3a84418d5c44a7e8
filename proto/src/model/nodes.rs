//! The operator's side of nodes: list them (up or down), change their labels, forget them.

use std::collections::BTreeMap;

use crate::client::Client;

use crate::model::keys;
use crate::model::kv;
use crate::model::objects::{now_ms, Alive, Facts, NodeInfo};
use crate::model::selector::{check_label_key, check_label_value};
use crate::model::Error;

/// Every known node (one with facts, labels or a live agent), by name.
pub async fn list(client: &Client) -> Result<Vec<NodeInfo>, Error> {
    let (kvs, _) = kv::get_prefix(client, keys::NODES, 0, false).await?;
    from_kvs(&kvs)
}

/// The nodes the keys under `/eden/nodes/` describe (what [`list`] reads), by name.
pub fn from_kvs(kvs: &[crate::mvccpb::KeyValue]) -> Result<Vec<NodeInfo>, Error> {
    let mut nodes: BTreeMap<String, NodeInfo> = BTreeMap::new();
    for kv in kvs {
        let Some(rest) = keys::rest(&kv.key, keys::NODES) else {
            continue;
        };
        let Some((name, what)) = rest.split_once('/') else {
            continue;
        };
        if !matches!(what, "facts" | "labels" | "alive") {
            continue;
        }
        let n = nodes.entry(name.to_string()).or_insert_with(|| NodeInfo {
            name: name.to_string(),
            up: false,
            labels: BTreeMap::new(),
            facts: None,
            last_seen: None,
        });
        match what {
            "facts" => n.facts = kv::decode::<Facts>(kv).ok(),
            "labels" => n.labels = kv::decode(kv).map_err(Error::Corrupt)?,
            _ => n.up = kv::decode::<Alive>(kv).is_ok(),
        }
    }
    let now = now_ms();
    for n in nodes.values_mut() {
        n.last_seen = if n.up {
            Some(now)
        } else {
            n.facts
                .as_ref()
                .map(|f| f.seen_at.max(f.stopped_at.unwrap_or(0)))
        };
    }
    Ok(nodes.into_values().collect())
}

/// One node, if known.
pub async fn show(client: &Client, name: &str) -> Result<Option<NodeInfo>, Error> {
    keys::check_node_name(name).map_err(Error::Invalid)?;
    Ok(list(client).await?.into_iter().find(|n| n.name == name))
}

/// A label change: `KEY=VALUE` sets, `KEY-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

impl LabelChange {
    pub fn parse(s: &str) -> Result<LabelChange, Error> {
        let bad = |why: String| Error::Invalid(format!("bad label change {s:?}: {why}"));
        if let Some((k, v)) = s.split_once('=') {
            check_label_key(k).map_err(bad)?;
            check_label_value(v).map_err(bad)?;
            Ok(LabelChange::Set(k.into(), v.into()))
        } else if let Some(k) = s.strip_suffix('-') {
            check_label_key(k).map_err(bad)?;
            Ok(LabelChange::Remove(k.into()))
        } else {
            Err(bad("expected KEY=VALUE to set or KEY- to remove".into()))
        }
    }
}

/// Applies label changes to a node in one compare-and-set; returns the node's labels after.
pub async fn label(
    client: &Client,
    node: &str,
    changes: &[LabelChange],
) -> Result<BTreeMap<String, String>, Error> {
    keys::check_node_name(node).map_err(Error::Invalid)?;
    let key = keys::labels(node);
    loop {
        let current = kv::get_one(client, &key).await?;
        let (mut labels, rev): (BTreeMap<String, String>, i64) = match &current {
            Some(kv) => (kv::decode(kv).map_err(Error::Corrupt)?, kv.mod_revision),
            None => (BTreeMap::new(), 0),
        };
        for c in changes {
            match c {
                LabelChange::Set(k, v) => {
                    labels.insert(k.clone(), v.clone());
                }
                LabelChange::Remove(k) => {
                    labels.remove(k);
                }
            }
        }
        let r = kv::txn(
            client,
            vec![kv::unchanged_since(&key, rev)],
            vec![kv::put(&key, &labels, 0)],
            vec![],
        )
        .await?;
        if r.succeeded {
            return Ok(labels);
        }
    }
}

/// Forgets a node: its registration, labels, assignments and variables, in one txn. A node whose
/// agent is alive is refused unless `force`.
pub async fn remove(client: &Client, node: &str, force: bool) -> Result<(), Error> {
    keys::check_node_name(node).map_err(Error::Invalid)?;
    let known = list(client).await?.into_iter().find(|n| n.name == node);
    match known {
        None => return Err(Error::NotFound(format!("no node {node}"))),
        Some(n) if n.up && !force => {
            return Err(Error::Refused(format!(
                "node {node} is up (its agent is alive); stop the agent first or use --force"
            )))
        }
        Some(_) => {}
    }
    kv::txn(
        client,
        vec![],
        vec![
            kv::delete_prefix(&keys::node_prefix(node)),
            kv::delete_prefix(&keys::node_vars(node)),
            kv::delete_prefix(&keys::node_var_readers(node)),
            // Its certificates stop working on every member at once.
            crate::model::certs::revoke_identity(&crate::pki::Identity::Node(node.into())),
        ],
        vec![],
    )
    .await?;
    Ok(())
}
