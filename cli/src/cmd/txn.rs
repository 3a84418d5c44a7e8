//! `eden txn`: compares, then success or failure requests, in etcdctl's syntax, from flags or stdin.
//!
//! ```text
//! eden txn --compare 'value("k") = "v1"' --then 'put k v2' --else 'get k'
//! printf 'mod("k") > "0"\n\nput k v2\n\nget k\n' | eden txn
//! ```
//! On stdin: compares, an empty line, success requests, an empty line, failure requests.
//! Compare targets: value/val, version/ver, create/c, mod/m, lease; operators = != < >.
//! Requests: `put KEY VALUE [--lease=ID]`, `get KEY [END] [--prefix] [--rev=N]`, `del KEY [END] [--prefix]`.

use std::io::Read;

use clap::Args;
use eden_proto::client::Client;
use eden_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use eden_proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use serde_json::json;

use crate::exit::Failure;
use crate::printer::{header_json, kv_json, Format, Printer};

#[derive(Args)]
pub struct TxnArgs {
    /// A compare, e.g. 'value("k") = "v"' (repeatable; all must hold).
    #[arg(long = "compare")]
    pub compares: Vec<String>,
    /// A request to run when every compare holds (repeatable).
    #[arg(long = "then")]
    pub then: Vec<String>,
    /// A request to run otherwise (repeatable).
    #[arg(long = "else")]
    pub otherwise: Vec<String>,
}

/// Splits a line into words, honouring double quotes and backslash escapes.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(chars.next().ok_or("trailing backslash")?);
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

pub fn parse_compare(s: &str) -> Result<Compare, String> {
    let bad = || format!("bad compare {s:?} (expected e.g. value(\"key\") = \"v\")");
    let open = s.find('(').ok_or_else(bad)?;
    let close = s.rfind(')').ok_or_else(bad)?;
    let target_name = s[..open].trim();
    let key = words(&s[open + 1..close])?
        .into_iter()
        .next()
        .ok_or_else(bad)?;
    let rest = words(&s[close + 1..])?;
    let [op, value] = rest.as_slice() else {
        return Err(bad());
    };
    let result = match op.as_str() {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        _ => return Err(format!("bad compare operator {op:?} (use = != < >)")),
    };
    let int = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| format!("bad number {v:?} in compare"))
    };
    let (target, union) = match target_name {
        "value" | "val" => (
            CompareTarget::Value,
            TargetUnion::Value(value.as_bytes().to_vec()),
        ),
        "version" | "ver" => (CompareTarget::Version, TargetUnion::Version(int(value)?)),
        "create" | "c" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(int(value)?),
        ),
        "mod" | "m" => (CompareTarget::Mod, TargetUnion::ModRevision(int(value)?)),
        "lease" => (
            CompareTarget::Lease,
            TargetUnion::Lease(
                i64::from_str_radix(value, 16)
                    .map_err(|_| format!("bad lease {value:?} in compare"))?,
            ),
        ),
        other => {
            return Err(format!(
                "bad compare target {other:?} (use value, version, create, mod or lease)"
            ))
        }
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.into_bytes(),
        target_union: Some(union),
        range_end: Vec::new(),
    })
}

pub fn parse_op(s: &str) -> Result<RequestOp, String> {
    let w = words(s)?;
    let (flags, args): (Vec<&String>, Vec<&String>) =
        w.iter().skip(1).partition(|x| x.starts_with("--"));
    let flag = |name: &str| {
        flags.iter().find_map(|f| {
            f.strip_prefix(&format!("--{name}=")[..])
                .map(str::to_string)
        })
    };
    let has = |name: &str| flags.iter().any(|f| f.as_str() == format!("--{name}"));
    let key = args
        .first()
        .map(|k| k.as_bytes().to_vec())
        .ok_or_else(|| format!("request {s:?} names no key"))?;
    let end = |key: &[u8]| -> Vec<u8> {
        if has("prefix") {
            eden_proto::keys::prefix_end(key)
        } else {
            args.get(1)
                .map(|e| e.as_bytes().to_vec())
                .unwrap_or_default()
        }
    };
    let request = match w.first().map(String::as_str) {
        Some("put") => {
            let value = args
                .get(1)
                .ok_or_else(|| format!("put {s:?} has no value"))?
                .as_bytes()
                .to_vec();
            let lease = match flag("lease") {
                Some(l) => i64::from_str_radix(&l, 16).map_err(|_| format!("bad lease {l:?}"))?,
                None => 0,
            };
            request_op::Request::RequestPut(PutRequest {
                key,
                value,
                lease,
                ..Default::default()
            })
        }
        Some("get") => {
            let revision = match flag("rev") {
                Some(r) => r.parse().map_err(|_| format!("bad revision {r:?}"))?,
                None => 0,
            };
            let range_end = end(&key);
            request_op::Request::RequestRange(RangeRequest {
                key,
                range_end,
                revision,
                ..Default::default()
            })
        }
        Some("del") | Some("delete") => {
            let range_end = end(&key);
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key,
                range_end,
                prev_kv: false,
            })
        }
        _ => return Err(format!("bad request {s:?} (use put, get or del)")),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

pub async fn run(client: &Client, out: &Printer, a: TxnArgs) -> Result<(), Failure> {
    let (compares, then, otherwise) =
        if a.compares.is_empty() && a.then.is_empty() && a.otherwise.is_empty() {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let mut sections = vec![Vec::new(), Vec::new(), Vec::new()];
            let mut i = 0;
            for line in input.lines() {
                if line.trim().is_empty() {
                    i += 1;
                    if i > 2 {
                        break;
                    }
                    continue;
                }
                sections[i].push(line.trim().to_string());
            }
            let otherwise = sections.pop().unwrap_or_default();
            let then = sections.pop().unwrap_or_default();
            let compares = sections.pop().unwrap_or_default();
            (compares, then, otherwise)
        } else {
            (a.compares, a.then, a.otherwise)
        };
    let compare = compares
        .iter()
        .map(|c| parse_compare(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    let success = then
        .iter()
        .map(|o| parse_op(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    let failure = otherwise
        .iter()
        .map(|o| parse_op(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    let resp = client
        .txn(TxnRequest {
            compare,
            success,
            failure,
        })
        .await?;
    match out.format {
        Format::Json => {
            let responses: Vec<_> = resp
                .responses
                .iter()
                .map(|r| match &r.response {
                    Some(response_op::Response::ResponsePut(_)) => json!({"put": {}}),
                    Some(response_op::Response::ResponseRange(g)) => {
                        json!({"range": {"count": g.count, "kvs": g.kvs.iter().map(kv_json).collect::<Vec<_>>()}})
                    }
                    Some(response_op::Response::ResponseDeleteRange(d)) => json!({"delete_range": {"deleted": d.deleted}}),
                    _ => json!({}),
                })
                .collect();
            out.json(&json!({"header": header_json(&resp.header), "succeeded": resp.succeeded, "responses": responses}))?;
        }
        _ => {
            out.line(if resp.succeeded { "SUCCESS" } else { "FAILURE" })?;
            for r in &resp.responses {
                out.line("")?;
                match &r.response {
                    Some(response_op::Response::ResponsePut(_)) => out.line("OK")?,
                    Some(response_op::Response::ResponseRange(g)) => {
                        for kv in &g.kvs {
                            out.bytes_line(&kv.key)?;
                            out.bytes_line(&kv.value)?;
                        }
                    }
                    Some(response_op::Response::ResponseDeleteRange(d)) => {
                        out.line(&d.deleted.to_string())?
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_syntax() {
        let c = parse_compare(r#"value("k 1") = "v""#).unwrap();
        assert_eq!(c.key, b"k 1");
        assert_eq!(c.target, CompareTarget::Value as i32);
        let c = parse_compare(r#"mod("k") > "5""#).unwrap();
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));
        assert!(parse_compare(r#"size("k") = "1""#).is_err());
        assert!(
            matches!(parse_op("put k \"a b\"").unwrap().request, Some(request_op::Request::RequestPut(p)) if p.value == b"a b")
        );
        assert!(
            matches!(parse_op("get k --prefix").unwrap().request, Some(request_op::Request::RequestRange(r)) if r.range_end == b"l")
        );
        assert!(parse_op("frob k").is_err());
    }
}
