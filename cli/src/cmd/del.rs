//! `eden del KEY [END]`: like `etcdctl del`; prints how many keys were deleted.

use clap::Args;
use eden_proto::client::Client;
use eden_proto::etcdserverpb::DeleteRangeRequest;
use serde_json::json;

use crate::exit::Failure;
use crate::printer::{header_json, kv_json, Format, Printer};

#[derive(Args)]
pub struct DelArgs {
    pub key: String,
    pub range_end: Option<String>,
    #[arg(long)]
    pub prefix: bool,
    #[arg(long)]
    pub from_key: bool,
    #[arg(long)]
    pub prev_kv: bool,
}

pub async fn run(client: &Client, out: &Printer, a: DelArgs) -> Result<(), Failure> {
    let range_end =
        super::get::range_end_for(&a.key, a.range_end.as_deref(), a.prefix, a.from_key)?;
    let key = if a.key.is_empty() && (a.prefix || a.from_key) {
        vec![0]
    } else {
        a.key.into_bytes()
    };
    let resp = client
        .delete_range(DeleteRangeRequest {
            key,
            range_end,
            prev_kv: a.prev_kv,
        })
        .await?;
    match out.format {
        Format::Json => {
            let mut v = json!({"header": header_json(&resp.header), "deleted": resp.deleted});
            if !resp.prev_kvs.is_empty() {
                v["prev_kvs"] = resp.prev_kvs.iter().map(kv_json).collect();
            }
            out.json(&v)?;
        }
        _ => {
            out.line(&resp.deleted.to_string())?;
            for p in &resp.prev_kvs {
                out.bytes_line(&p.key)?;
                out.bytes_line(&p.value)?;
            }
        }
    }
    Ok(())
}
