//! `eden compact REV`: drop history below a revision.

use clap::Args;
use eden_proto::client::Client;
use eden_proto::etcdserverpb::CompactionRequest;

use crate::exit::Failure;
use crate::printer::Printer;

#[derive(Args)]
pub struct CompactArgs {
    pub revision: i64,
    /// Wait until the old versions are physically removed.
    #[arg(long)]
    pub physical: bool,
}

pub async fn run(client: &Client, out: &Printer, a: CompactArgs) -> Result<(), Failure> {
    client
        .compact(CompactionRequest {
            revision: a.revision,
            physical: a.physical,
        })
        .await?;
    out.line(&format!("compacted revision {}", a.revision))?;
    Ok(())
}
