//! Small files shared between machines (certificates, keys, configuration snippets): the bytes at
//! `/eden/files/data/NAME`, what they are at `/eden/files/meta/NAME` ([`FileMeta`]), and who may
//! read them at `/eden/readers/files/NAME` ([`Readers`], evaluated by the server's authorizer at
//! every request). The three are written in one txn.
//!
//! A name is `NAMESPACE/PATH`: a node's files live under its name (`web1/tls/ca.crt`), written by
//! that node and by admins; `cluster/...` by admins. Every node may read every file's metadata
//! (name, size, hash, mode, readers, writer), so that agents can find what to place; only readers
//! read the bytes. A sealed file's bytes are age ciphertext for the nodes its readers matched, and
//! its hash is the ciphertext's.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::etcdserverpb::{request_op, response_op, RangeRequest, RequestOp};
use crate::model::keys;
use crate::model::kv;
use crate::model::readers::Readers;
use crate::model::Error;

/// The largest file by default (files are for configuration, not binaries).
pub const DEFAULT_MAX_FILE_BYTES: usize = 1 << 20;
/// The most bytes all files together may hold by default.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 20;
/// The longest name.
pub const MAX_NAME_BYTES: usize = 255;

/// What a file is, besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Bytes stored (the ciphertext's, when sealed).
    pub size: u64,
    /// Hex SHA-256 of the bytes stored (the ciphertext's, when sealed).
    pub sha256: String,
    /// Unix permission bits to place it with (e.g. 0o640).
    pub mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Who may read it (a copy of its readers key, to show).
    pub readers: Readers,
    /// The identity that wrote it (`node:NAME`, `admin:NAME`); the server refuses a node that
    /// names another.
    pub writer: String,
    /// When it was written (Unix ms).
    pub time: u64,
    /// Sealed with age for the nodes in `recipients` (their keys at `/eden/sealkeys/NODE`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Readable once, by this node, then gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once: Option<String>,
}

/// Checks a file name: `NAMESPACE/PATH` where the namespace is a node's name or `cluster`, with
/// no empty, `.` or `..` segment, no leading `/`, and only letters, digits and `._-+@=,`
/// (Salt's path-traversal CVEs came from names that were not checked).
pub fn check_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Invalid(format!("file name {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad(&format!("longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.starts_with('/') {
        return bad("absolute (names are NAMESPACE/PATH, e.g. web1/tls/ca.crt)");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@=,".contains(*c)))
    {
        return bad(&format!(
            "{c:?} is not allowed (letters, digits and ._-+@=, only)"
        ));
    }
    let segments: Vec<&str> = name.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return bad("an empty segment");
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return bad("a . or .. segment");
    }
    if segments.len() < 2 {
        return bad("no namespace: name it NODE/PATH or cluster/PATH");
    }
    if segments[0] != keys::CLUSTER {
        keys::check_node_name(segments[0]).map_err(Error::Invalid)?;
    }
    Ok(())
}

/// The namespace of a (checked) name: a node's name or `cluster`.
pub fn namespace(name: &str) -> &str {
    name.split('/').next().unwrap_or_default()
}

/// A name prefix for `ls` (`web1/`, `web1/tls`): the same characters as names.
pub fn check_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_name(&format!("{}/x", prefix.trim_end_matches('/'))).map(|_| ())
}

/// The identity a client's certificate names (`node:web1`, `admin:ops`), the writer of what it
/// stores; `insecure` without one.
pub fn writer_of(client: &Client) -> String {
    client
        .tls()
        .and_then(|t| crate::pki::der_of_pem(&t.cert_pem).ok())
        .and_then(|der| crate::pki::identity_of(&der).ok())
        .map_or_else(|| "insecure".to_string(), |(who, _, _)| who.to_string())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A mode given as octal text (`0640`, `640`).
pub fn parse_mode(s: &str) -> Result<u32, Error> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Error::Invalid(format!("mode {s:?}: give octal permission bits, e.g. 0640")))
}

/// The writes that store a file: its bytes, its metadata and its readers, in one txn.
pub fn writes(name: &str, bytes: &[u8], meta: &FileMeta) -> Vec<RequestOp> {
    vec![
        kv::put_raw(&keys::file_data(name), bytes.to_vec(), 0),
        kv::put(&keys::file_meta(name), meta, 0),
        kv::put(&keys::file_readers(name), &meta.readers, 0),
    ]
}

/// Stores a file; returns the revision it was stored at. `meta`'s size and hash are set here.
pub async fn put(
    client: &Client,
    name: &str,
    bytes: &[u8],
    mut meta: FileMeta,
) -> Result<i64, Error> {
    check_name(name)?;
    if meta.readers.is_empty() && meta.once.is_none() {
        return Err(Error::Invalid(format!(
            "file {name}: no readers (give --readers node:NAME or a label selector)"
        )));
    }
    meta.size = bytes.len() as u64;
    meta.sha256 = sha256_hex(bytes);
    let r = kv::txn(client, vec![], writes(name, bytes, &meta), vec![]).await?;
    Ok(r.header.map_or(0, |h| h.revision))
}

/// A file as read: its bytes, what it is, and the revision its bytes were written at.
#[derive(Debug, Clone)]
pub struct File {
    pub name: String,
    pub bytes: Vec<u8>,
    pub meta: FileMeta,
    pub revision: i64,
}

fn range_op(key: &str, revision: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            revision,
            ..Default::default()
        })),
    }
}

/// Reads a file (as of `revision`, 0: now): bytes and metadata at the same revision.
pub async fn get(client: &Client, name: &str, revision: i64) -> Result<File, Error> {
    check_name(name)?;
    let r = kv::txn(
        client,
        vec![],
        vec![
            range_op(&keys::file_data(name), revision),
            range_op(&keys::file_meta(name), revision),
        ],
        vec![],
    )
    .await?;
    let first = |i: usize| match r.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(rr)) => rr.kvs.first().cloned(),
        _ => None,
    };
    let (Some(data), Some(meta)) = (first(0), first(1)) else {
        return Err(Error::NotFound(format!("no file {name}")));
    };
    Ok(File {
        name: name.into(),
        bytes: data.value,
        meta: kv::decode(&meta).map_err(Error::Corrupt)?,
        revision: data.mod_revision,
    })
}

/// Reads a file now; a read-once file is read and deleted in one txn (the server allows that txn
/// to the node it is for, once).
pub async fn get_once_aware(client: &Client, name: &str) -> Result<File, Error> {
    check_name(name)?;
    let meta: FileMeta = match kv::get_one(client, &keys::file_meta(name)).await? {
        Some(kv) => kv::decode(&kv).map_err(Error::Corrupt)?,
        None => return Err(Error::NotFound(format!("no file {name}"))),
    };
    if meta.once.is_none() {
        return get(client, name, 0).await;
    }
    let key = keys::file_data(name);
    let r = kv::txn(
        client,
        vec![],
        vec![range_op(&key, 0), kv::delete(&key)],
        vec![],
    )
    .await?;
    let data = match r.responses.first().and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(rr)) => rr.kvs.first().cloned(),
        _ => None,
    }
    .ok_or_else(|| Error::NotFound(format!("file {name} was read once already")))?;
    Ok(File {
        name: name.into(),
        bytes: data.value,
        meta,
        revision: data.mod_revision,
    })
}

/// Every file whose name starts with `prefix` (all: ""), with its metadata and revision.
pub async fn list(client: &Client, prefix: &str) -> Result<Vec<(String, FileMeta, i64)>, Error> {
    check_prefix(prefix)?;
    let (kvs, _) =
        kv::get_prefix(client, &format!("{}{prefix}", keys::FILES_META), 0, false).await?;
    kvs.iter()
        .filter_map(|kv| {
            let name = keys::rest(&kv.key, keys::FILES_META)?;
            Some(
                kv::decode(kv)
                    .map_err(Error::Corrupt)
                    .map(|m| (name.to_string(), m, kv.mod_revision)),
            )
        })
        .collect()
}

/// Removes a file; NotFound if there was none.
pub async fn remove(client: &Client, name: &str) -> Result<(), Error> {
    check_name(name)?;
    let r = kv::txn(
        client,
        vec![],
        vec![
            kv::delete(&keys::file_meta(name)),
            kv::delete(&keys::file_data(name)),
            kv::delete(&keys::file_readers(name)),
        ],
        vec![],
    )
    .await?;
    let deleted = match r.responses.first().and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseDeleteRange(d)) => d.deleted,
        _ => 0,
    };
    if deleted == 0 {
        return Err(Error::NotFound(format!("no file {name}")));
    }
    Ok(())
}

/// A file's versions, newest first (as far back as compaction left them): each metadata with
/// the revision it was written at.
pub async fn history(client: &Client, name: &str) -> Result<Vec<(i64, FileMeta)>, Error> {
    check_name(name)?;
    let key = keys::file_meta(name);
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let r = match client
            .range(RangeRequest {
                key: key.clone().into(),
                revision: at,
                ..Default::default()
            })
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_compacted() => break,
            Err(e) => return Err(e.into()),
        };
        let Some(kv) = r.kvs.first() else { break };
        out.push((kv.mod_revision, kv::decode(kv).map_err(Error::Corrupt)?));
        if kv.version <= 1 {
            break;
        }
        at = kv.mod_revision - 1;
    }
    if out.is_empty() {
        return Err(Error::NotFound(format!("no file {name}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonical() {
        for ok in ["web1/ca.crt", "cluster/tls/ca.crt", "a/b/c-d_e.f+g@h=i,j"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "web1",
            "web1/../x",
            "web1/./x",
            "web1//x",
            "web1/x/",
            "web1/a b",
            "web1/a\nb",
            "web1/a\\b",
            "Web 1/x",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(namespace("web1/tls/ca.crt"), "web1");
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert!(parse_mode("0999").is_err());
        assert!(check_name(&format!("a/{}", "x".repeat(300))).is_err());
    }
}

/// Where agents place files: the nodes `on` selects place each file whose name matches the glob
/// `files` at `path` (a directory when it ends with `/`: the file keeps its last name segment;
/// `{node}` in it is the placing node's name),
/// with the file's mode, owner and group unless the rule sets them, and run `then` after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRule {
    pub name: String,
    /// A glob over file names (`*` within a segment, `**` across).
    pub files: String,
    /// A label selector: the nodes that place the files.
    pub on: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A command (program and arguments) run after the file changed on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<String>,
}

/// A path an agent writes to: absolute, with no `.` or `..` segment and no NUL (the agent checks
/// again before writing).
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?}: not absolute"));
    }
    if path.contains('\0') || path.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("path {path:?}: holds . or .. or a NUL"));
    }
    Ok(())
}

impl SyncRule {
    /// Checks what YAML cannot: the name, glob, selector, path and mode.
    pub fn validate(&self) -> Result<(), String> {
        keys::check_name("rule name", &self.name)?;
        if self.files.is_empty() {
            return Err("`files` (a glob over file names) is empty".into());
        }
        let s = crate::model::selector::Selector::parse(&self.on).map_err(|e| e.to_string())?;
        if s.requirements.is_empty() {
            return Err("`on` selects every node: name the labels".into());
        }
        check_path(&self.path)?;
        if let Some(m) = &self.mode {
            parse_mode(m).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Whether a node with `labels` places files by this rule.
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        crate::model::selector::Selector::parse(&self.on)
            .is_ok_and(|s| !s.requirements.is_empty() && s.matches(labels))
    }

    /// Whether this rule places file `name`.
    pub fn takes(&self, name: &str) -> bool {
        crate::glob::matches(&self.files, name)
    }

    /// Where file `name` goes on node `node` (`{node}` in the path is the node's name).
    pub fn dest(&self, name: &str, node: &str) -> String {
        let path = self.path.replace("{node}", node);
        if path.ends_with('/') {
            format!("{path}{}", name.rsplit('/').next().unwrap_or(name))
        } else {
            path
        }
    }
}

/// Parses a sync rules file: one rule or a list.
pub fn parse_sync(text: &str) -> Result<Vec<SyncRule>, String> {
    let rules: Vec<SyncRule> = crate::model::rules::one_or_list(text)?;
    for r in &rules {
        r.validate()
            .map_err(|e| format!("sync rule {:?}: {e}", r.name))?;
    }
    Ok(rules)
}

/// Stores sync rules, replacing those of the same names, in one txn.
pub async fn apply_sync(client: &Client, rules: &[SyncRule]) -> Result<(), Error> {
    let ops = rules
        .iter()
        .map(|r| kv::put(&keys::file_sync(&r.name), r, 0))
        .collect();
    kv::txn(client, vec![], ops, vec![]).await?;
    Ok(())
}

/// The stored sync rules, and the revision they were read at.
pub async fn list_sync(client: &Client) -> Result<(Vec<SyncRule>, i64), Error> {
    let (kvs, rev) = kv::get_prefix(client, keys::FILE_SYNC, 0, false).await?;
    let rules = kvs
        .iter()
        .map(|kv| kv::decode::<SyncRule>(kv).map_err(Error::Corrupt))
        .collect::<Result<_, _>>()?;
    Ok((rules, rev))
}

pub async fn remove_sync(client: &Client, name: &str) -> Result<(), Error> {
    if kv::delete_one(client, &keys::file_sync(name)).await? == 0 {
        return Err(Error::NotFound(format!("no sync rule {name}")));
    }
    Ok(())
}

/// What a node's agent did with a file: `/eden/nodes/NODE/files/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// "placed" or "failed".
    pub status: String,
    pub path: String,
    /// The revision of the file's bytes placed (or tried).
    pub revision: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub time: u64,
}
