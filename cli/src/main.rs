//! The `eden` binary: `eden server` runs a member; the other commands are etcdctl-like clients that
//! reach the cluster only through the etcd v3 API (`eden_proto::client`).
//!
//! Exit codes (also in the README): 0 success; 1 the cluster refused the request; 2 bad usage or
//! input; 3 no endpoint reachable or the cluster is unavailable (a txn whose compares failed is not
//! an error: etcdctl prints FAILURE and exits 0). `eden run` and `eden task wait`: 4 a target
//! failed, 5 a target timed out, 6 a target was unreachable or lost; `eden apply`: 4 a node's plan
//! or apply failed, 6 a node did not answer, and with `--detailed-exitcode` 2 for changes (bad
//! input then 1). Errors are one line on stderr.

mod cmd;
mod config;
mod exit;
mod printer;

use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::exit::Failure;
use crate::printer::Format;

#[derive(Parser)]
#[command(
    name = "eden",
    version,
    about = "Configuration management with automatic clustering and events"
)]
struct Cli {
    /// Members to talk to (any member will do), comma separated [default: the config file's
    /// cluster (~/.config/eden/config.toml, written by a new secure cluster's first member), else
    /// 127.0.0.1:2379].
    #[arg(long, global = true, env = "EDEN_ENDPOINTS", value_delimiter = ',')]
    endpoints: Option<Vec<String>>,

    /// Output format [default: simple; listing commands print a table unless `-w simple` is
    /// given, which makes every command print plain lines].
    #[arg(short = 'w', long = "write-out", global = true, value_enum)]
    write_out: Option<Format>,

    /// The CA the members' certificates come from (PEM), for a cluster that speaks TLS (with
    /// --cert and --key).
    #[arg(long = "cacert", id = "tls_cacert", global = true, env = "EDEN_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), from the cluster's CA.
    #[arg(long = "cert", id = "tls_cert", global = true, env = "EDEN_CERT")]
    cert: Option<std::path::PathBuf>,
    /// This client's key (PEM).
    #[arg(long = "key", id = "tls_key", global = true, env = "EDEN_KEY")]
    key: Option<std::path::PathBuf>,

    /// Log format for `eden server` (logs go to stderr; RUST_LOG sets the level).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: cmd::server::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a member of an eden cluster.
    Server(Box<cmd::server::ServerArgs>),
    /// The cluster's certificates: `pki init DIR` makes a CA and the first certificates.
    #[command(subcommand)]
    Pki(cmd::pki::PkiCmd),
    /// Get a key or a range of keys.
    Get(cmd::get::GetArgs),
    /// Put a key.
    Put(cmd::put::PutArgs),
    /// Delete a key or a range of keys.
    Del(cmd::del::DelArgs),
    /// Watch a key or a range of keys (resumes on another member when one dies).
    Watch(cmd::watch::WatchArgs),
    /// Run a transaction: compares, then the success or the failure requests.
    Txn(cmd::txn::TxnArgs),
    /// Lease commands.
    #[command(subcommand)]
    Lease(cmd::lease::LeaseCmd),
    /// Member commands.
    #[command(subcommand)]
    Member(cmd::member::MemberCmd),
    /// The cluster as autopilot sees it, and autopilot's settings.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCmd),
    /// The status of every member: leader, term, revision, raft index, db size.
    Status,
    /// Compact the history up to a revision.
    Compact(cmd::compact::CompactArgs),
    /// Endpoint checks: health, status, hashkv.
    #[command(subcommand)]
    Endpoint(cmd::endpoint::EndpointCmd),
    /// Save a backup of the store, or restore one into a new data dir.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::SnapshotCmd),
    /// Compact each endpoint's storage files (reclaims space after a compaction).
    Defrag,
    /// Load generator over the etcd v3 API (measures eden or etcd).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// List or clear alarms (NOSPACE when the space quota is exceeded).
    #[command(subcommand)]
    Alarm(cmd::alarm::AlarmCmd),
    /// Run the agent of this machine: register it, run the tasks assigned to it.
    Agent(Box<cmd::agent::AgentArgs>),
    /// Nodes: list, show, label, forget.
    #[command(subcommand)]
    Node(cmd::node::NodeCmd),
    /// Run a command on the nodes matching a selector (or a node list) and show every result.
    Run(Box<cmd::run::RunArgs>),
    /// Tasks: list, show, wait, cancel.
    #[command(subcommand)]
    Task(cmd::task::TaskCmd),
    /// Small files between machines: put, get, ls, rm, history; readable by the nodes their
    /// readers allow.
    #[command(subcommand)]
    File(cmd::file::FileCmd),
    /// Variables of nodes (from --register) and of the cluster.
    #[command(subcommand)]
    Var(cmd::var::VarCmd),
    /// Events: emit explicit ones, list them, watch every event (explicit and derived).
    #[command(subcommand)]
    Event(cmd::event::EventCmd),
    /// Webhooks for `eden server --webhook-addr`: create (prints the token once), list, remove.
    #[command(subcommand)]
    Hook(cmd::hook::HookCmd),
    /// Certificates the cluster issued: list them, revoke one or an identity's.
    #[command(subcommand)]
    Cert(cmd::cert::CertCmd),
    /// etcd users (identities user:NAME): add, get, ls, rm, grant-role, revoke-role.
    #[command(subcommand)]
    User(cmd::user::UserCmd),
    /// etcd roles: add, get, ls, rm, grant-permission, revoke-permission.
    #[command(subcommand)]
    Role(cmd::user::RoleCmd),
    /// Join tokens: create (prints the token and the CA's pin once), list, remove.
    #[command(subcommand)]
    Token(cmd::token::TokenCmd),
    /// Reactor rules: store them, list them, try them against an event.
    #[command(subcommand)]
    Reactor(cmd::reactor::ReactorCmd),
    /// Desired state: every target plans STATE.yaml (shown as a diff), then applies it and
    /// keeps it (drift corrected); --plan only shows the plans.
    Apply(Box<cmd::apply::ApplyArgs>),
    /// Stored states: list, show what each node did, remove.
    #[command(subcommand)]
    State(cmd::apply::StateCmd),
    /// Resource plugins: list them with their schema, approve (lock) their checksums.
    #[command(subcommand)]
    Plugin(cmd::plugin::PluginCmd),
    /// The web view (`eden server --ui-addr`): a one-time sign-in link.
    #[command(subcommand)]
    Ui(cmd::ui::UiCmd),
}

/// jemalloc rather than glibc's malloc: after a burst of large writes, glibc kept a member's freed
/// memory (about 1 GiB after `etcdctl check perf --load=l`); jemalloc gives it back
/// (design/decisions/0021-jemalloc.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Agent(_) | Command::Reactor(cmd::reactor::ReactorCmd::Run { .. })
    ) {
        cmd::server::init_logging(cli.log_format);
    }
    if let Command::Server(args) = &cli.command {
        cmd::server::init_logging(cli.log_format);
        let code = match cmd::server::run(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("Error: {e:#}");
                if e.is::<cmd::server::CoreStopped>() {
                    exit::MEMBER_FAILED
                } else if e.is::<cmd::server::Removed>() {
                    exit::MEMBER_REMOVED
                } else {
                    exit::USAGE_OR_SETUP
                }
            }
        };
        std::process::exit(code);
    }
    if let Command::Plugin(cmd::plugin::PluginCmd::Serve { name }) = &cli.command {
        std::process::exit(cmd::plugin::serve(name));
    }
    if let Command::Pki(c) = cli.command {
        let code = match cmd::pki::run(&printer::Printer::new(cli.write_out), c) {
            Ok(()) => 0,
            Err(f) => {
                eprintln!("Error: {}", f.message);
                f.code
            }
        };
        std::process::exit(code);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(run_client(cli));
    let code = match result {
        Ok(()) => 0,
        Err(f) => {
            if !f.quiet {
                eprintln!("Error: {}", f.message);
            }
            f.code
        }
    };
    std::process::exit(code);
}

/// The certificate a command presents, and the files it came from.
type Presented = (eden_proto::client::Tls, eden_proto::renewal::Files);

/// Where a command connects and with which certificates: the flags (or their environment
/// variables); with no `--endpoints`, the config file's cluster (see [`config`]); else
/// 127.0.0.1:2379.
/// Also the files the certificate came from.
fn target(cli: &Cli) -> Result<(Vec<String>, Option<Presented>), Failure> {
    let mut files = (cli.cacert.clone(), cli.cert.clone(), cli.key.clone());
    let mut from_config = None;
    let endpoints = match &cli.endpoints {
        Some(e) => e.clone(),
        None => match config::load().map_err(Failure::usage)? {
            Some(c) => {
                if files == (None, None, None) {
                    files = (c.cacert, c.cert, c.key);
                    from_config = config::path();
                }
                c.endpoints
            }
            None => vec!["127.0.0.1:2379".to_string()],
        },
    };
    let tls = match files {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some((
            eden_proto::client::Tls::from_files(&ca, &cert, &key).map_err(
                |e| match &from_config {
                    Some(p) => Failure::usage(format!("{e} (named by {})", p.display())),
                    None => Failure::usage(e),
                },
            )?,
            eden_proto::renewal::Files { ca, cert, key },
        )),
        _ => {
            return Err(Failure::usage(
                "TLS needs all of --cacert, --cert and --key",
            ))
        }
    };
    Ok((endpoints, tls))
}

async fn run_client(cli: Cli) -> Result<(), Failure> {
    // Restoring or checking a backup is local: no cluster, so no config file or certificates to
    // read.
    let offline = matches!(
        cli.command,
        Command::Snapshot(
            cmd::snapshot::SnapshotCmd::Restore { .. } | cmd::snapshot::SnapshotCmd::Status { .. }
        )
    );
    let (endpoints, presented) = if offline {
        (vec!["127.0.0.1:2379".to_string()], None)
    } else {
        target(&cli)?
    };
    let (mut tls, files) = presented.unzip();
    // An agent presents its own certificate (from its data dir, or a join) unless flags name one.
    let mut own_cert = false;
    if let Command::Agent(a) = &cli.command {
        if (&cli.cacert, &cli.cert, &cli.key) == (&None, &None, &None) {
            if let Some(own) = cmd::agent::own_tls(a, &endpoints).await? {
                tls = Some(own);
                own_cert = true;
            }
        }
    }
    cmd::bench::use_tls(tls.clone());
    let client =
        Arc::new(eden_proto::client::Client::with_tls(&endpoints, tls).map_err(Failure::from)?);
    let out = printer::Printer::new(cli.write_out);
    match cli.command {
        Command::Server(_) | Command::Pki(_) => unreachable!("handled in main"),
        Command::Get(a) => cmd::get::run(&client, &out, a).await,
        Command::Put(a) => cmd::put::run(&client, &out, a).await,
        Command::Del(a) => cmd::del::run(&client, &out, a).await,
        Command::Watch(a) => cmd::watch::run(&client, &out, a).await,
        Command::Txn(a) => cmd::txn::run(&client, &out, a).await,
        Command::Lease(c) => cmd::lease::run(&client, &out, c).await,
        Command::Member(c) => cmd::member::run(&client, &out, c).await,
        Command::Cluster(c) => cmd::cluster::run(&client, &out, c).await,
        Command::Status => cmd::status::run(&client, &out).await,
        Command::Compact(a) => cmd::compact::run(&client, &out, a).await,
        Command::Endpoint(c) => cmd::endpoint::run(&client, &out, c).await,
        Command::Snapshot(c) => cmd::snapshot::run(&client, &out, c).await,
        Command::Alarm(c) => cmd::alarm::run(&client, &out, c).await,
        Command::Bench(c) => cmd::bench::run(client.endpoints(), &out, c).await,
        Command::Agent(a) => cmd::agent::run(&client, *a, own_cert, files).await,
        Command::Node(c) => cmd::node::run(&client, &out, c).await,
        Command::Run(a) => cmd::run::run(&client, &out, *a).await,
        Command::Task(c) => cmd::task::run(&client, &out, c).await,
        Command::Var(c) => cmd::var::run(&client, &out, c).await,
        Command::File(c) => cmd::file::run(&client, &out, c).await,
        Command::Reactor(c) => cmd::reactor::run(&client, &out, c).await,
        Command::Apply(a) => cmd::apply::run(&client, &out, *a).await,
        Command::State(c) => cmd::apply::state_cmd(&client, &out, c).await,
        Command::Plugin(c) => cmd::plugin::run(&client, &out, c).await,
        Command::Ui(c) => cmd::ui::run(&client, &out, c).await,
        Command::Event(c) => cmd::event::run(&client, &out, c).await,
        Command::Hook(c) => cmd::hook::run(&client, &out, c).await,
        Command::Token(c) => cmd::token::run(&client, &out, c).await,
        Command::Cert(c) => cmd::cert::run(&client, &out, c, files).await,
        Command::User(c) => cmd::user::run_user(&client, &out, c).await,
        Command::Role(c) => cmd::user::run_role(&client, &out, c).await,
        Command::Defrag => {
            for (i, ep) in client.endpoints().iter().enumerate() {
                client.defragment_of(i).await?;
                out.line(&format!("Finished defragmenting etcd member[{ep}]"))?;
            }
            Ok(())
        }
    }
}
