//! `eden put KEY [VALUE|-]`: like `etcdctl put`; `-` (or no value) reads the value from stdin.

use std::io::Read;

use clap::Args;
use eden_proto::client::Client;
use eden_proto::etcdserverpb::PutRequest;
use serde_json::json;

use crate::exit::Failure;
use crate::printer::{header_json, kv_json, Format, Printer};

#[derive(Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; `-` or nothing reads it from stdin.
    pub value: Option<String>,
    /// Attach the key to this lease (hex, as `eden lease grant` prints it).
    #[arg(long)]
    pub lease: Option<String>,
    /// Print the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
}

pub fn parse_lease(s: &str) -> Result<i64, Failure> {
    i64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| Failure::usage(format!("bad lease ID {s:?} (hex expected)")))
}

pub async fn run(client: &Client, out: &Printer, a: PutArgs) -> Result<(), Failure> {
    let value = match a.value.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        Some(v) => v.as_bytes().to_vec(),
    };
    let lease = a
        .lease
        .as_deref()
        .map(parse_lease)
        .transpose()?
        .unwrap_or(0);
    let resp = client
        .put(PutRequest {
            key: a.key.into_bytes(),
            value,
            lease,
            prev_kv: a.prev_kv,
            ..Default::default()
        })
        .await?;
    match out.format {
        Format::Json => {
            let mut v = json!({"header": header_json(&resp.header)});
            if let Some(p) = &resp.prev_kv {
                v["prev_kv"] = kv_json(p);
            }
            out.json(&v)?;
        }
        _ => {
            out.line("OK")?;
            if let Some(p) = &resp.prev_kv {
                out.bytes_line(&p.key)?;
                out.bytes_line(&p.value)?;
            }
        }
    }
    Ok(())
}
