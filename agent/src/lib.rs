//! The eden agent, the daemon on every managed machine: it registers the machine, keeps its facts
//! fresh, runs the tasks assigned to it and reports their results. Its keys and objects are
//! eden's model (`eden_proto::model`); everything goes through the etcd v3 API
//! (`eden_proto::client`); nothing here links RocksDB or openraft. See design/agents.md.

pub mod agent;
pub mod decide;
pub mod exec;
pub mod facts;
pub mod place;
pub mod placing;
pub mod plugins;
pub mod sealing;
pub mod states;

pub use eden_proto::model::Error;
