//! What an agent does with one of its assignments, decided from what the store holds for it: a
//! plain function, so that every case is a story in `tests/scripts/decide` (run by
//! `tests/decide.rs`). The agent reads the assignment, claim, result and cancel keys in one txn,
//! asks [`decide`], and acts: claims with a txn that requires no claim and no result (at most
//! once), or writes the result it was told to. A new assignment seen in the watch is first offered
//! to [`decide`] as if nothing else were there, and claimed with a txn that requires exactly that.

use eden_proto::model::objects::{show_time, Claim, TaskSpec};

/// What the store holds for one assignment of this node.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The assignment's spec; None once it is gone (past its retention, or the node forgotten).
    pub spec: Option<TaskSpec>,
    pub claim: Option<Claim>,
    pub has_result: bool,
    pub canceled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do: the assignment is gone, or it has a result.
    Nothing,
    /// This run's own claim (a claim txn whose answer was lost): run it unless it already runs.
    Resume,
    /// Another run of this agent claimed it and ended without a result: report it lost, never
    /// run it again.
    Lost(String),
    /// Canceled before it started: report it canceled.
    Canceled,
    /// Seen after its deadline: report it unreachable, do not run it.
    Unreachable(String),
    /// Claim it, then run it.
    Claim,
}

/// The decision for an assignment as `seen` by the agent run `my_run` at `now_ms`.
pub fn decide(seen: &Seen, my_run: &str, now_ms: u64) -> Decision {
    let Some(spec) = &seen.spec else {
        return Decision::Nothing;
    };
    if seen.has_result {
        return Decision::Nothing;
    }
    if let Some(claim) = &seen.claim {
        if claim.run == my_run {
            return Decision::Resume;
        }
        return Decision::Lost(format!(
            "the agent run that started it at {} ended before reporting a result (killed?); eden does not run it again",
            show_time(claim.started_at)
        ));
    }
    if seen.canceled {
        return Decision::Canceled;
    }
    if now_ms > spec.deadline {
        return Decision::Unreachable(format!(
            "the agent got the task after its deadline ({})",
            show_time(spec.deadline)
        ));
    }
    Decision::Claim
}
