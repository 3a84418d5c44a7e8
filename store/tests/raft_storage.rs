//! openraft's own storage test suite (openraft::testing::Suite) against eden's RocksDB log store
//! and state machine.

use std::sync::Arc;

use eden_store::raft::log_store::LogStore;
use eden_store::raft::state_machine::StateMachine;
use eden_store::raft::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, Arc<StateMachine>, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, Arc<StateMachine>), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = StateMachine::open(dir.path(), 64).expect("open state machine");
        let log = LogStore::new(sm.engine.clone());
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}
