//! A member's loops end when it shuts down: each holds a handle on the member, so once they have
//! all ended the test's handle is the only one left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eden_store::node::{AutoCompaction, Node, NodeConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_loop_of_a_member_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // A single member needs no peer connection; nothing listens on these ports.
    let mut config = NodeConfig::new(
        "solo",
        dir.path().join("data"),
        "127.0.0.1:1",
        "127.0.0.1:2",
    );
    config.auto_compaction = Some(AutoCompaction::Revision(1000));
    let node = Node::start(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.leader() != Some(node.id()) {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        Arc::strong_count(&node) > 1,
        "the member's loops hold handles on it while it runs"
    );
    node.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&node) > 1 {
        assert!(
            Instant::now() < deadline,
            "{} handles on the member remain after shutdown",
            Arc::strong_count(&node) - 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
