//! Reactors, as clients of the store through `eden_proto` only: the rule engine ([`rules`], pure
//! logic over the events of `eden_proto::model::events`), one revision's reaction decided as a
//! plain function ([`step`]), the runtime that drives it exactly once per event ([`runtime`]),
//! and the webhook intake that turns HTTP posts into events
//! ([`webhook`]).

pub mod rules;
pub mod runtime;
pub mod step;
pub mod webhook;
