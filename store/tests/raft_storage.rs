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

mod log_contiguity {
    //! The log store keeps the Raft log one contiguous run (issue 11: a hole in it panicked
    //! openraft 0.9.25's apply path at raft_core.rs:779 on two members under load).

    use eden_store::raft::log_store::LogStore;
    use eden_store::raft::state_machine::StateMachine;
    use eden_store::raft::{Entry, LogId};
    use openraft::entry::RaftEntry;
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::CommittedLeaderId;

    fn blank(term: u64, index: u64) -> Entry {
        Entry::new_blank(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = StateMachine::open(dir.path(), 64).expect("open state machine");
        let log = LogStore::new(sm.engine.clone());
        (dir, log)
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry>) -> Result<(), String> {
        log.append_entries(entries).map_err(|e| e.to_string())
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn an_append_that_would_leave_a_hole_is_refused() {
        let (_dir, mut log) = store();
        append(&mut log, vec![blank(1, 0), blank(1, 1), blank(1, 2)])
            .await
            .unwrap();
        let e = append(&mut log, vec![blank(1, 4), blank(1, 5)])
            .await
            .unwrap_err();
        assert!(
            e.contains("refusing to append log entries from index 4"),
            "{e}"
        );
        let e = append(&mut log, vec![blank(1, 3), blank(1, 5)])
            .await
            .unwrap_err();
        assert!(e.contains("not consecutive: 3 is followed by 5"), "{e}");
        // Nothing of the refused batches was written.
        assert_eq!(
            indexes(&log.try_get_log_entries(0..10).await.unwrap()),
            vec![0, 1, 2]
        );
        append(&mut log, vec![blank(1, 3), blank(1, 4)])
            .await
            .unwrap();
        assert_eq!(
            indexes(&log.try_get_log_entries(0..10).await.unwrap()),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[tokio::test]
    async fn appends_continue_after_a_truncate_and_a_purge() {
        let (_dir, mut log) = store();
        append(&mut log, (0..10).map(|i| blank(1, i)).collect())
            .await
            .unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 7))
            .await
            .unwrap();
        append(&mut log, vec![blank(2, 7), blank(2, 8)])
            .await
            .unwrap();
        // Everything purged: the next entry follows the purged one.
        log.purge(LogId::new(CommittedLeaderId::new(2, 1), 8))
            .await
            .unwrap();
        assert!(append(&mut log, vec![blank(2, 10)]).await.is_err());
        append(&mut log, vec![blank(2, 9)]).await.unwrap();
        assert_eq!(
            indexes(&log.try_get_log_entries(0..20).await.unwrap()),
            vec![9]
        );
    }

    #[tokio::test]
    async fn a_hole_in_the_stored_log_is_an_error_not_a_short_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = StateMachine::open(dir.path(), 64).expect("open state machine");
        let mut log = LogStore::new(sm.engine.clone());
        append(&mut log, vec![blank(1, 0), blank(1, 1)])
            .await
            .unwrap();
        // A hole written behind the store's back (as a store without the append check could).
        let e = &sm.engine;
        let cf = e.cf(eden_store::keys::CF_LOG);
        e.db.put_cf(
            cf,
            eden_store::keys::log_key(3),
            eden_store::engine::encode(&blank(1, 3)),
        )
        .unwrap();
        let err = log.try_get_log_entries(0..4).await.unwrap_err().to_string();
        assert!(err.contains("index 1 is followed by 3"), "{err}");
        // A read from a purged start returns what is stored from there on (openraft's contract).
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 0))
            .await
            .unwrap();
        assert_eq!(
            indexes(&log.try_get_log_entries(0..2).await.unwrap()),
            vec![1]
        );
    }
}
