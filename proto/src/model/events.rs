//! Every change to eden's objects is an event with a tag, derived from the store's watch stream:
//! no extra write, so the replicated log stays the one event bus, ordered and resumable by
//! revision.
//!
//! | change | tag |
//! |---|---|
//! | `/eden/nodes/N/alive` created / deleted | `node/joined/N` / `node/left/N` (lease expired or agent stopped) |
//! | `/eden/nodes/N/labels` written | `node/labels/N` |
//! | `/eden/nodes/N/facts` created / deleted | `node/registered/N` / `node/removed/N` |
//! | `/eden/tasks/ID` created | `task/created/ID` |
//! | `/eden/runs/ID/claims/N` created | `task/started/ID/N` |
//! | `/eden/runs/ID/results/N` created | `task/finished/ID/N` (label `status`, data: the result without its output) |
//! | `/eden/runs/ID/cancel` created | `task/canceled/ID` |
//! | `/eden/files/meta/NAME` written / deleted | `file/written/NAME` (data: its metadata) / `file/removed/NAME` |
//! | `/eden/nodes/N/files/NAME` written | `file/placed/N/NAME` or `file/failed/N/NAME` (data: path, revision, error) |
//! | `/eden/nodes/N/states/NAME` written | `state/applied/N/NAME` or `state/failed/N/NAME` (data: what the node did) |
//! | `/eden/nodes/N/drift/NAME/RES` written | `state/drift/N/RES` (label `state`: NAME; data: the drift, corrected or not) |
//! | `/eden/vars/N/NAME` written / deleted | `var/set/N/NAME` / `var/removed/N/NAME` |
//! | `/eden/tokens/ID` created / deleted | `audit/token/created/ID` (data: for whom, expiry) / `audit/token/gone/ID` (used or removed) |
//! | `/eden/certs/SERIAL` created | `audit/cert/issued/SERIAL` (data: identity, expiry, join or renewal) |
//! | `/eden/revoked/serials/S`, `/eden/revoked/identities/I` written | `audit/cert/revoked/S`, `audit/identity/revoked/I` |
//!
//! Refused requests are explicit events, `audit/denied/KIND/NAME` (data: the rule's reason),
//! written by the member that refused them, at most a few per identity and minute.
//! `/eden/pki/` (the CA's key) is never an event.
//!
//! Derived events carry `source: "eden"`; their time is when the consumer saw them (a revision
//! has no clock), their data what the key holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::etcdserverpb::RequestOp;
use crate::glob;
use crate::model::objects::now_ms;
use crate::model::{keys, kv, Error};
use crate::mvccpb::event::EventType;
use crate::mvccpb::KeyValue;

/// One event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    pub tag: String,
    /// Where it is in the log (not stored in an explicit event's value: its key's revision).
    #[serde(default)]
    pub revision: i64,
    /// Unix milliseconds.
    pub time: u64,
    pub source: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

fn json_of(kv: &KeyValue) -> serde_json::Value {
    serde_json::from_slice(&kv.value).unwrap_or(serde_json::Value::Null)
}

/// The event a watch event on `/eden/` stands for: an explicit event when one was stored, a
/// derived one when one of eden's objects changed, else None.
pub fn from_watch(e: &crate::mvccpb::Event, now_ms: u64) -> Option<Event> {
    let kv = e.kv.as_ref()?;
    let kind = if e.r#type == EventType::Delete as i32 {
        EventType::Delete
    } else {
        EventType::Put
    };
    if kv.key.starts_with(keys::EVENTS.as_bytes()) {
        return explicit(kv).filter(|_| kind == EventType::Put && kv.version == 1);
    }
    derive(kind, kv, e.prev_kv.as_ref(), now_ms)
}

impl Event {
    /// A new explicit event, now.
    pub fn new(
        tag: String,
        source: &str,
        labels: BTreeMap<String, String>,
        data: serde_json::Value,
    ) -> Event {
        Event {
            tag,
            revision: 0,
            time: now_ms(),
            source: source.to_string(),
            labels,
            data,
        }
    }
}

/// The write that stores explicit event `ev` (a new key; see [`keys::event`]).
pub fn put(ev: &Event) -> RequestOp {
    kv::put(&keys::event(ev.time), ev, 0)
}

/// Stores explicit events in one txn (the server's event policy may refuse them all); returns
/// the revision they got and their keys.
pub async fn emit(client: &Client, evs: &[Event]) -> Result<(i64, Vec<String>), Error> {
    let keys: Vec<String> = evs.iter().map(|ev| keys::event(ev.time)).collect();
    let ops = evs
        .iter()
        .zip(&keys)
        .map(|(ev, key)| kv::put(key, ev, 0))
        .collect();
    let r = kv::txn(client, vec![], ops, vec![]).await?;
    Ok((r.header.map_or(0, |h| h.revision), keys))
}

/// The stored explicit events whose tag matches `tag_glob`, at or after `min_revision` and
/// `min_time` (ms), oldest first.
pub async fn list(
    client: &Client,
    tag_glob: &str,
    min_revision: i64,
    min_time: u64,
) -> Result<Vec<Event>, Error> {
    let (kvs, _) = kv::get_prefix(client, keys::EVENTS, 0, false).await?;
    let mut list: Vec<Event> = kvs
        .iter()
        .filter_map(explicit)
        .filter(|e| {
            glob::matches(tag_glob, &e.tag) && e.revision >= min_revision && e.time >= min_time
        })
        .collect();
    list.sort_by_key(|e| e.revision);
    Ok(list)
}

/// A stored explicit event, with its revision.
pub fn explicit(kv: &KeyValue) -> Option<Event> {
    let mut ev: Event = serde_json::from_slice(&kv.value).ok()?;
    ev.revision = kv.mod_revision;
    Some(ev)
}

/// The event a watch event stands for, if it is a change to one of eden's objects.
pub fn derive(
    kind: EventType,
    kv: &KeyValue,
    prev: Option<&KeyValue>,
    now_ms: u64,
) -> Option<Event> {
    let created = kind == EventType::Put && kv.version == 1;
    let deleted = kind == EventType::Delete;
    let ev = |tag: String, data: serde_json::Value, labels: BTreeMap<String, String>| Event {
        tag,
        revision: kv.mod_revision,
        time: now_ms,
        source: "eden".into(),
        labels,
        data,
    };
    let none = BTreeMap::new;
    if let Some(rest) = keys::rest(&kv.key, keys::NODES) {
        let (node, what) = rest.split_once('/')?;
        return match what {
            "alive" if created => Some(ev(format!("node/joined/{node}"), json_of(kv), none())),
            "alive" if deleted => Some(ev(
                format!("node/left/{node}"),
                prev.map(json_of).unwrap_or_default(),
                none(),
            )),
            "labels" if !deleted => Some(ev(format!("node/labels/{node}"), json_of(kv), none())),
            "facts" if created => Some(ev(format!("node/registered/{node}"), json_of(kv), none())),
            "facts" if deleted => Some(ev(
                format!("node/removed/{node}"),
                serde_json::Value::Null,
                none(),
            )),
            _ if !deleted && what.starts_with("files/") => {
                let data = json_of(kv);
                let status = if data["status"] == "placed" {
                    "placed"
                } else {
                    "failed"
                };
                Some(ev(
                    format!("file/{status}/{node}/{}", &what["files/".len()..]),
                    data,
                    none(),
                ))
            }
            _ if !deleted && what.starts_with("states/") => {
                let data = json_of(kv);
                let status = if data["status"] == "applied" {
                    "applied"
                } else {
                    "failed"
                };
                Some(ev(
                    format!("state/{status}/{node}/{}", &what["states/".len()..]),
                    data,
                    none(),
                ))
            }
            _ if !deleted && what.starts_with("drift/") => {
                let (state, resource) = what["drift/".len()..].split_once('/')?;
                Some(ev(
                    format!("state/drift/{node}/{resource}"),
                    json_of(kv),
                    [("state".to_string(), state.to_string())].into(),
                ))
            }
            _ => None,
        };
    }
    if let Some(id) = keys::rest(&kv.key, keys::TOKENS) {
        if deleted {
            return Some(ev(
                format!("audit/token/gone/{id}"),
                serde_json::Value::Null,
                none(),
            ));
        }
        return created.then(|| {
            let mut data = json_of(kv);
            if let Some(o) = data.as_object_mut() {
                o.remove("secret_sha256");
            }
            ev(format!("audit/token/created/{id}"), data, none())
        });
    }
    if let Some(serial) = keys::rest(&kv.key, crate::model::certs::CERTS) {
        return created.then(|| ev(format!("audit/cert/issued/{serial}"), json_of(kv), none()));
    }
    if let Some(serial) = keys::rest(&kv.key, crate::model::certs::REVOKED_SERIALS) {
        return (!deleted).then(|| ev(format!("audit/cert/revoked/{serial}"), json_of(kv), none()));
    }
    if let Some(who) = keys::rest(&kv.key, crate::model::certs::REVOKED_IDENTITIES) {
        return (!deleted)
            .then(|| ev(format!("audit/identity/revoked/{who}"), json_of(kv), none()));
    }
    if let Some(id) = keys::rest(&kv.key, keys::TASKS) {
        return (created && !id.contains('/')).then(|| {
            let mut data = json_of(kv);
            if let Some(o) = data.as_object_mut() {
                o.remove("script");
            }
            ev(format!("task/created/{id}"), data, none())
        });
    }
    if let Some(rest) = keys::rest(&kv.key, keys::RUNS) {
        let (id, what) = rest.split_once('/')?;
        if what == "cancel" {
            return created.then(|| {
                ev(
                    format!("task/canceled/{id}"),
                    serde_json::Value::Null,
                    none(),
                )
            });
        }
        let (kind, node) = what.split_once('/')?;
        return match kind {
            "claims" if created => {
                Some(ev(format!("task/started/{id}/{node}"), json_of(kv), none()))
            }
            "results" if created => {
                let mut data = json_of(kv);
                let status = data["status"].as_str().unwrap_or("").to_string();
                if let Some(o) = data.as_object_mut() {
                    o.remove("stdout");
                    o.remove("stderr");
                }
                Some(ev(
                    format!("task/finished/{id}/{node}"),
                    data,
                    [("status".to_string(), status)].into(),
                ))
            }
            _ => None,
        };
    }
    if let Some(name) = keys::rest(&kv.key, keys::FILES_META) {
        if deleted {
            return Some(ev(
                format!("file/removed/{name}"),
                serde_json::Value::Null,
                none(),
            ));
        }
        return Some(ev(format!("file/written/{name}"), json_of(kv), none()));
    }
    if let Some(rest) = keys::rest(&kv.key, keys::VARS) {
        let (node, name) = rest.split_once('/')?;
        return Some(if deleted {
            ev(
                format!("var/removed/{node}/{name}"),
                serde_json::Value::Null,
                none(),
            )
        } else {
            ev(
                format!("var/set/{node}/{name}"),
                serde_json::json!({"value": json_of(kv)}),
                none(),
            )
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, version: i64, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            version,
            mod_revision: rev,
            create_revision: rev,
            lease: 0,
        }
    }

    #[test]
    fn identity_changes_are_audit_events_without_their_secrets() {
        let t = kv(
            "/eden/tokens/abc123",
            r#"{"role":"node","name":"web1","secret_sha256":"ff","created_at":1,"expires_at":2}"#,
            1,
            3,
        );
        let e = derive(EventType::Put, &t, None, 0).unwrap();
        assert_eq!(e.tag, "audit/token/created/abc123");
        assert_eq!(e.data["name"], "web1");
        assert!(e.data.get("secret_sha256").is_none());
        let used = kv("/eden/tokens/abc123", "", 0, 4);
        assert_eq!(
            derive(EventType::Delete, &used, None, 0).unwrap().tag,
            "audit/token/gone/abc123"
        );
        let r = kv(
            "/eden/revoked/identities/node:web1",
            r#"{"revoked_at":5}"#,
            1,
            5,
        );
        assert_eq!(
            derive(EventType::Put, &r, None, 0).unwrap().tag,
            "audit/identity/revoked/node:web1"
        );
        let ca = kv("/eden/pki/ca", r#"{"cert_pem":"c","key_pem":"k"}"#, 1, 6);
        assert!(derive(EventType::Put, &ca, None, 0).is_none());
    }

    #[test]
    fn what_agents_do_with_states_becomes_events() {
        let applied = kv(
            "/eden/nodes/web1/states/web",
            r#"{"generation":"g","status":"applied","time":1,"resources":[]}"#,
            1,
            3,
        );
        assert_eq!(
            derive(EventType::Put, &applied, None, 0).unwrap().tag,
            "state/applied/web1/web"
        );
        let failed = kv(
            "/eden/nodes/web1/states/web",
            r#"{"status":"failed"}"#,
            2,
            4,
        );
        assert_eq!(
            derive(EventType::Put, &failed, None, 0).unwrap().tag,
            "state/failed/web1/web"
        );
        let drift = kv(
            "/eden/nodes/web1/drift/web/file.motd",
            r#"{"corrected":true}"#,
            1,
            5,
        );
        let e = derive(EventType::Put, &drift, None, 0).unwrap();
        assert_eq!(e.tag, "state/drift/web1/file.motd");
        assert_eq!(e.labels["state"], "web");
        assert!(derive(
            EventType::Put,
            &kv("/eden/nodes/web1/plans/web", "{}", 1, 6),
            None,
            0
        )
        .is_none());
    }

    #[test]
    fn changes_to_eden_objects_become_tagged_events() {
        let alive = kv("/eden/nodes/web1/alive", r#"{"instance":"i"}"#, 1, 5);
        let e = derive(EventType::Put, &alive, None, 7).unwrap();
        assert_eq!(
            (e.tag.as_str(), e.revision, e.time),
            ("node/joined/web1", 5, 7)
        );
        assert_eq!(e.data["instance"], "i");
        // Taking the name back (version 2) is not a new join; its expiry is a leave.
        assert!(derive(
            EventType::Put,
            &kv("/eden/nodes/web1/alive", "{}", 2, 6),
            None,
            7
        )
        .is_none());
        let gone = kv("/eden/nodes/web1/alive", "", 0, 8);
        assert_eq!(
            derive(EventType::Delete, &gone, Some(&alive), 9)
                .unwrap()
                .tag,
            "node/left/web1"
        );
        let result = kv(
            "/eden/runs/T1/results/web1",
            r#"{"status":"failed","exit_code":2,"stdout":"x","ended_at":1}"#,
            1,
            10,
        );
        let e = derive(EventType::Put, &result, None, 0).unwrap();
        assert_eq!(e.tag, "task/finished/T1/web1");
        assert_eq!(e.labels["status"], "failed");
        assert_eq!(e.data["exit_code"], 2);
        assert!(e.data.get("stdout").is_none(), "output stays in the result");
        let var = kv("/eden/vars/db1/token", r#""s3cret""#, 3, 11);
        assert_eq!(
            derive(EventType::Put, &var, None, 0).unwrap().tag,
            "var/set/db1/token"
        );
        assert_eq!(
            derive(EventType::Put, &kv("/eden/tasks/T1", "{}", 1, 2), None, 0)
                .unwrap()
                .tag,
            "task/created/T1"
        );
        assert_eq!(
            derive(
                EventType::Put,
                &kv("/eden/runs/T1/claims/db1", "{}", 1, 3),
                None,
                0
            )
            .unwrap()
            .tag,
            "task/started/T1/db1"
        );
        assert!(derive(EventType::Put, &kv("/app/config", "x", 1, 4), None, 0).is_none());
        assert!(derive(
            EventType::Put,
            &kv("/eden/nodes/web1/tasks/T1", "x", 1, 4),
            None,
            0
        )
        .is_none());
    }
}
