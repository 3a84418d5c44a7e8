//! Events and reactors, as clients of the store. So far: every change to eden's objects presented
//! as a named event ([`events::derive`]), derived from the watch stream with no extra write, and
//! the rule engine ([`rules::react`]), pure logic that a runtime will drive.

pub mod events;
pub mod rules;
pub mod runtime;
pub mod webhook;
