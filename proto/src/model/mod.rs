//! eden's object model: every key eden keeps under `/eden/`, the shape of its value, and who
//! writes it. This table is the one answer to "which keys exist"; [`keys`] builds them, the
//! modules below read and write them through the etcd v3 API ([`crate::client`]).
//!
//! ```text
//! key                              value (module)               written by
//! /eden/nodes/NODE/facts           Facts (objects)              agent NODE; kept after it stops
//! /eden/nodes/NODE/owner           instance id, text            agent NODE (claims the name once)
//! /eden/nodes/NODE/alive           Alive (objects)              agent NODE, under its lease
//! /eden/nodes/NODE/files/NAME      Placement (files)            agent NODE (placing file NAME)
//! /eden/nodes/NODE/labels          {key: value} (nodes)         operator only (`eden node label`)
//! /eden/nodes/NODE/tasks/ID        TaskSpec, slim (tasks)       operator or reactor; task lease
//! /eden/tasks/ID                   TaskSpec (tasks)             operator or reactor; task lease
//! /eden/runs/ID/cancel             time, ms (tasks)             operator; task lease
//! /eden/runs/ID/claims/NODE        Claim (objects)              agent NODE; task lease
//! /eden/runs/ID/results/NODE       TaskResult (objects)         agent NODE; task lease
//! /eden/vars/NODE/NAME             any JSON (vars)              agent NODE (register), operator,
//!                                                               reactor
//! /eden/vars/cluster/NAME          any JSON (vars)              operator, reactor
//! /eden/readers/vars/SCOPE/NAME    Readers (readers)            whoever writes the variable
//! /eden/events/TIME-RANDOM         Event (events)               operator, webhook intake, reactor;
//!                                                               the server keeps them a retention
//! /eden/files/data/NS/PATH         bytes (files), sealed: age   node NS (its own), operator
//! /eden/files/meta/NS/PATH         FileMeta (files)             with the bytes; every node reads
//! /eden/readers/files/NS/PATH      Readers (readers)            with the bytes
//! /eden/files/sync/NAME            SyncRule (files)             operator (`eden file sync apply`)
//! /eden/sealkeys/NODE              age public key, text          agent NODE; every node reads
//! /eden/tokens/ID                 Token (tokens)               operator (`eden token create`);
//!                                                               the join call uses it up
//! /eden/pki/ca                     CaKeys (tokens), secret       the member that made the CA;
//!                                                               members only may read it
//! /eden/certs/SERIAL               Issued (certs)               the member that signed it
//! /eden/revoked/...                Revoked (certs)              operator (`eden cert revoke`,
//!                                                               `eden node rm`)
//! /eden/auth/users/NAME           User (users)                 admin (`eden user`, etcdctl user)
//! /eden/auth/roles/NAME           Role (users)                 admin (`eden role`, etcdctl role)
//! /eden/hooks/NAME                 Hook (hooks)                 operator (`eden hook create`)
//! /eden/reactors/NAME              Rule (rules)                 operator (`eden reactor apply`)
//! /eden/reactor/leader             runtime id, text (rules)     the active reactor runtime, lease
//! /eden/reactor/cursor             Cursor (rules)               the active reactor runtime
//! /eden/cluster/autopilot          AutopilotSettings (cluster)  admin (`eden cluster autopilot`);
//!                                                               the leader's autopilot reads it
//! /eden/cluster/servers/NAME       ServerInfo (cluster)         server NAME (`--zone`,
//!                                                               `--stay-learner`)
//! /eden/states/NAME                State (states)               operator (`eden apply`); every
//!                                                               node reads
//! /eden/plans/NAME                 PlanRequest (states)         operator (`eden apply`, first
//!                                                               step); every node reads
//! /eden/plugins/lock/NAME          PluginLock (states)          operator (`eden plugin lock`);
//!                                                               every node reads
//! /eden/nodes/NODE/states/NAME     NodeState (states)           agent NODE (applied a state)
//! /eden/nodes/NODE/plans/NAME      NodePlan (states)            agent NODE (planned a state)
//! /eden/nodes/NODE/drift/NAME/RES  Drift (states)               agent NODE (found drift)
//! /eden/nodes/NODE/converge/NAME   ConvergeRequest (states)     reactor (`apply` action)
//! /eden/ui/logins/ID               Login (ui)                   admin (`eden ui login`); the web
//!                                                               view consumes it
//! ```
//!
//! Every change to these keys is also an event ([`events`]): the log is the event bus. A node
//! only ever needs to write its own facts, owner, alive, claims, results, variables, plans,
//! states and drift; labels,
//! tasks, hooks and rules are the operator's. "cluster" is therefore not a valid node name.

pub mod certs;
pub mod cluster;
pub mod events;
pub mod files;
pub mod hooks;
pub mod keys;
pub mod kv;
pub mod nodes;
pub mod objects;
pub mod readers;
pub mod rules;
pub mod sealing;
pub mod selector;
pub mod states;
pub mod tasks;
pub mod template;
pub mod tokens;
pub mod ui;
pub mod users;
pub mod vars;
pub mod watcher;

use crate::client::ClientError;

/// What can go wrong; the CLI maps each kind to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster could not be reached or answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Bad input (a name, a selector, a flag).
    #[error("{0}")]
    Invalid(String),
    /// No such node, task or variable.
    #[error("{0}")]
    NotFound(String),
    /// A selector or node list matched nothing.
    #[error("{0}")]
    NoMatch(String),
    /// The request conflicts with the cluster's state (a name taken, a node up).
    #[error("{0}")]
    Refused(String),
    /// Something under /eden/ is not what eden wrote.
    #[error("{0}")]
    Corrupt(String),
}
