//! `eden get KEY [END]`: like `etcdctl get`.

use clap::{Args, ValueEnum};
use eden_proto::client::Client;
use eden_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use eden_proto::etcdserverpb::RangeRequest;
use eden_proto::keys::prefix_end;

use crate::exit::Failure;
use crate::printer::Printer;

#[derive(Args)]
pub struct GetArgs {
    pub key: String,
    /// The end of the range [KEY, END).
    pub range_end: Option<String>,
    /// Every key with KEY as prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Every key >= KEY.
    #[arg(long)]
    pub from_key: bool,
    /// Read at this revision (0 = latest).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    #[arg(long)]
    pub keys_only: bool,
    #[arg(long)]
    pub count_only: bool,
    #[arg(long, value_enum)]
    pub sort_by: Option<SortBy>,
    #[arg(long, value_enum)]
    pub order: Option<Order>,
    /// l: linearizable (default), s: serializable (answered by the member itself).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortBy {
    Key,
    Create,
    Modify,
    Value,
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Order {
    Ascend,
    Descend,
}

/// The range end for a key and the usual flags.
pub fn range_end_for(
    key: &str,
    end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<Vec<u8>, Failure> {
    let n = [end.is_some(), prefix, from_key]
        .iter()
        .filter(|x| **x)
        .count();
    if n > 1 {
        return Err(Failure::usage(
            "give only one of a range end, --prefix and --from-key",
        ));
    }
    Ok(if prefix {
        if key.is_empty() {
            vec![0]
        } else {
            prefix_end(key.as_bytes())
        }
    } else if from_key {
        vec![0]
    } else {
        end.map(|e| e.as_bytes().to_vec()).unwrap_or_default()
    })
}

pub async fn run(client: &Client, out: &Printer, a: GetArgs) -> Result<(), Failure> {
    let mut key = a.key.as_bytes().to_vec();
    let range_end = range_end_for(&a.key, a.range_end.as_deref(), a.prefix, a.from_key)?;
    if key.is_empty() && (a.prefix || a.from_key) {
        key = vec![0];
    }
    let sort_target = match a.sort_by {
        None | Some(SortBy::Key) => SortTarget::Key,
        Some(SortBy::Create) => SortTarget::Create,
        Some(SortBy::Modify) => SortTarget::Mod,
        Some(SortBy::Value) => SortTarget::Value,
        Some(SortBy::Version) => SortTarget::Version,
    };
    let sort_order = match (a.order, a.sort_by) {
        (Some(Order::Ascend), _) => SortOrder::Ascend,
        (Some(Order::Descend), _) => SortOrder::Descend,
        (None, Some(_)) => SortOrder::Ascend,
        (None, None) => SortOrder::None,
    };
    let req = RangeRequest {
        key,
        range_end,
        limit: a.limit,
        revision: a.rev,
        sort_order: sort_order as i32,
        sort_target: sort_target as i32,
        serializable: a.consistency == "s",
        keys_only: a.keys_only,
        count_only: a.count_only,
        ..Default::default()
    };
    let resp = client.range(req).await?;
    if a.count_only && out.format == crate::printer::Format::Simple {
        out.line(&resp.count.to_string())?;
        return Ok(());
    }
    out.kvs(&resp.header, &resp.kvs, resp.more, resp.count, a.keys_only)?;
    Ok(())
}
