//! Who may read a variable besides its owner and admins: `/eden/readers/vars/SCOPE/NAME` holds a
//! [`Readers`], written with the variable (`eden var set --readers`, `eden run --register NAME
//! --readers`). The server's authorizer evaluates it at every request against the reader's labels
//! as they are then, so relabeling a node changes what it may read at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::keys;
use crate::model::selector::Selector;

/// Nodes named outright, or matched by any one of the selectors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readers {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<String>,
}

impl Readers {
    /// Parses `--readers` values: each is `node:NAME` or a label selector.
    pub fn parse(items: &[String]) -> Result<Readers, String> {
        let mut r = Readers::default();
        for item in items {
            if let Some(name) = item.strip_prefix("node:") {
                keys::check_node_name(name)?;
                r.nodes.push(name.to_string());
            } else {
                let s = Selector::parse(item).map_err(|e| e.to_string())?;
                if s.requirements.is_empty() {
                    return Err(format!(
                        "readers {item:?}: an empty selector would let every node read; \
                         name the nodes or the labels"
                    ));
                }
                r.selectors.push(s.to_string());
            }
        }
        Ok(r)
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.selectors.is_empty()
    }

    /// Whether node `node` with `labels` may read. A selector that does not parse (not written by
    /// eden) allows nobody.
    pub fn allows(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.nodes.iter().any(|n| n == node)
            || self.selectors.iter().any(|s| {
                Selector::parse(s).is_ok_and(|s| !s.requirements.is_empty() && s.matches(labels))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_name_nodes_or_select_them_by_label() {
        let r = Readers::parse(&["node:b".into(), "role=master".into()]).unwrap();
        let none = BTreeMap::new();
        let master = BTreeMap::from([("role".to_string(), "master".to_string())]);
        assert!(r.allows("b", &none));
        assert!(r.allows("c", &master));
        assert!(!r.allows("c", &none));
        assert!(Readers::parse(&["".into()]).is_err());
        assert!(Readers::parse(&["node:a/b".into()]).is_err());
        assert!(Readers::parse(&["role in (".into()]).is_err());
    }
}
