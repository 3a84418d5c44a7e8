//! Output in three formats, like etcdctl: `simple` (keys and values on their own lines), `json`
//! (etcd's JSON shape, bytes in base64, one object per response) and `table`. Without `-w`,
//! listing commands (`node ls`, `task ls`, ...) print a table; `-w simple` makes them print one
//! plain line per row, cells separated by ", ", as `etcdctl member list` does.

use std::io::Write;

use base64::Engine;
use eden_proto::etcdserverpb::ResponseHeader;
use eden_proto::mvccpb::KeyValue;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Simple,
    Json,
    Table,
}

pub struct Printer {
    pub format: Format,
    /// `-w` was given (a listing prints plain lines for an explicit `simple`).
    explicit: bool,
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn header_json(h: &Option<ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    json!({"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision, "raft_term": h.raft_term})
}

pub fn kv_json(kv: &KeyValue) -> Value {
    let mut v = json!({
        "key": b64(&kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": b64(&kv.value),
    });
    if kv.lease != 0 {
        v["lease"] = json!(kv.lease);
    }
    v
}

impl Printer {
    pub fn new(format: Option<Format>) -> Printer {
        Printer {
            format: format.unwrap_or(Format::Simple),
            explicit: format.is_some(),
        }
    }

    pub fn line(&self, s: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(s.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()
    }

    pub fn bytes_line(&self, b: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(b)?;
        out.write_all(b"\n")?;
        out.flush()
    }

    pub fn json(&self, v: &Value) -> std::io::Result<()> {
        self.line(&v.to_string())
    }

    /// A table with a header row, columns padded to their widest cell; with an explicit
    /// `-w simple`, one plain line per row (no header), cells separated by ", ".
    pub fn table(&self, head: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
        if self.explicit && self.format == Format::Simple {
            for r in rows {
                self.line(&r.join(", "))?;
            }
            return Ok(());
        }
        let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.len());
            }
        }
        let sep: String = widths
            .iter()
            .map(|w| format!("+{}", "-".repeat(w + 2)))
            .collect::<String>()
            + "+";
        let fmt_row = |cells: Vec<&str>| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("| {:<w$} ", c, w = widths[i]))
                .collect::<String>()
                + "|"
        };
        self.line(&sep)?;
        self.line(&fmt_row(head.to_vec()))?;
        self.line(&sep)?;
        for r in rows {
            self.line(&fmt_row(r.iter().map(|s| s.as_str()).collect()))?;
        }
        self.line(&sep)
    }

    /// Keys and values the way `etcdctl get` prints them in each format.
    pub fn kvs(
        &self,
        header: &Option<ResponseHeader>,
        kvs: &[KeyValue],
        more: bool,
        count: i64,
        keys_only: bool,
    ) -> std::io::Result<()> {
        match self.format {
            Format::Simple => {
                for kv in kvs {
                    self.bytes_line(&kv.key)?;
                    if !keys_only {
                        self.bytes_line(&kv.value)?;
                    }
                }
                Ok(())
            }
            Format::Json => {
                let mut v = json!({"header": header_json(header), "count": count});
                if !kvs.is_empty() {
                    v["kvs"] = Value::Array(kvs.iter().map(kv_json).collect());
                }
                if more {
                    v["more"] = json!(true);
                }
                self.json(&v)
            }
            Format::Table => {
                let rows: Vec<Vec<String>> = kvs
                    .iter()
                    .map(|kv| {
                        vec![
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            String::from_utf8_lossy(&kv.value).into_owned(),
                            kv.create_revision.to_string(),
                            kv.mod_revision.to_string(),
                            kv.version.to_string(),
                            format!("{:x}", kv.lease),
                        ]
                    })
                    .collect();
                self.table(
                    &["KEY", "VALUE", "CREATE REV", "MOD REV", "VERSION", "LEASE"],
                    &rows,
                )
            }
        }
    }
}
