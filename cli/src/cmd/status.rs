//! `eden status`: every member's status (leader, term, revision, raft index, db size), found
//! through the member list: the same as `eden endpoint status --cluster`.

use eden_proto::client::Client;

use super::endpoint::{self, EndpointCmd};
use crate::exit::Failure;
use crate::printer::Printer;

pub async fn run(client: &Client, out: &Printer) -> Result<(), Failure> {
    endpoint::run(client, out, EndpointCmd::Status { cluster: true }).await
}
