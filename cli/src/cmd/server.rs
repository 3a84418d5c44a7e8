//! `eden server`: run a member.
//!
//! With no flags it is a single-member cluster with its data in ./eden-data, clients on
//! 127.0.0.1:2379 and peers on 127.0.0.1:2380. Every flag can also be set in a TOML file given with
//! `--config` (same names, e.g. `data-dir = "/var/lib/eden"`); a flag on the command line wins.
//! Restarting with the same data dir rejoins the cluster the member belongs to; `--initial-cluster`
//! only matters the first time (it bootstraps a new cluster).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use eden_store::node::{AutoCompaction, Node, NodeConfig};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// A TOML file with any of these settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This member's name (unique in the cluster) [default: default].
    #[arg(long)]
    pub name: Option<String>,
    /// Where the member keeps its data [default: ./eden-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address for clients (the etcd v3 API) [default: 127.0.0.1:2379].
    #[arg(long)]
    pub client_addr: Option<String>,
    /// Address for other members [default: 127.0.0.1:2380].
    #[arg(long)]
    pub peer_addr: Option<String>,
    /// Where the peer port listens, when that differs from the --peer-addr other members are
    /// told (behind NAT or a proxy) [default: --peer-addr]. Connections to other members leave
    /// from its IP unless it is 0.0.0.0 or ::.
    #[arg(long)]
    pub listen_peer_addr: Option<String>,
    /// Every initial member's peer address, NAME=HOST:PORT,... (bootstraps a new cluster).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Join a running cluster through any of its members' client addresses (HOST:PORT,...): the
    /// member is added as a learner; autopilot decides whether it votes.
    #[arg(long, value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// With --join: stay a learner (a standby autopilot never promotes) until `eden member
    /// promote`.
    #[arg(long)]
    pub stay_learner: bool,
    /// Form a new cluster once this many servers started with the same --join list (their
    /// client addresses) have found each other; when a cluster runs there already, join it.
    /// Ignored once the data dir holds data.
    #[arg(long, requires = "join")]
    pub bootstrap_expect: Option<u32>,
    /// This server's zone (a rack, a room, a data centre): autopilot spreads voters over zones.
    #[arg(long)]
    pub zone: Option<String>,
    /// On SIGINT or SIGTERM, leave the cluster: hand leadership over (when it leads), then remove
    /// this member, so that autopilot promotes a standby in its place.
    #[arg(long)]
    pub leave: bool,
    /// Take a snapshot after this many applied entries [default: 100000, as etcd].
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// Entries kept after a snapshot for slow followers [default: 5000].
    #[arg(long)]
    pub snapshot_catchup_entries: Option<u64>,
    /// Raft heartbeat interval in milliseconds [default: 100].
    #[arg(long)]
    pub heartbeat_interval: Option<u64>,
    /// Raft election timeout in milliseconds [default: 1000].
    #[arg(long)]
    pub election_timeout: Option<u64>,
    /// The leader answers linearizable reads under a lease (no heartbeat round per read) while a
    /// quorum acknowledged it within one election timeout [default: true].
    #[arg(long, value_name = "BOOL")]
    pub lease_reads: Option<bool>,
    /// Largest client request in bytes [default: 1572864].
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one txn [default: 128].
    #[arg(long)]
    pub max_txn_ops: Option<usize>,
    /// Largest file (eden file put) in bytes; below the request limit [default: 1048576].
    #[arg(long)]
    pub max_file_bytes: Option<usize>,
    /// Most bytes all files together may hold [default: 67108864].
    #[arg(long)]
    pub max_files_bytes: Option<u64>,
    /// Seconds between watch progress notifications [default: 600].
    #[arg(long)]
    pub watch_progress_notify_interval: Option<u64>,
    /// Recent revisions kept in memory for watchers; slower ones read from disk [default: 4096].
    #[arg(long)]
    pub watch_ring_revisions: Option<usize>,
    /// RocksDB's memory in MiB: half for memtables (all column families together), half for the
    /// block cache [default: 256].
    #[arg(long)]
    pub storage_memory_mb: Option<usize>,
    /// Space quota in bytes: past it, writes that add data fail with "database space exceeded"
    /// and a NOSPACE alarm [default: 2147483648].
    #[arg(long)]
    pub quota_bytes: Option<i64>,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics and a health check on /health.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Automatic compaction: `periodic` (keep a duration of history) or `revision` (keep a
    /// number of revisions) [default: periodic].
    #[arg(long, value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: Option<String>,
    /// How much history to keep: a duration like 1h, 30m, 90s (a bare number is hours, as in
    /// etcd) in periodic mode, a number of revisions in revision mode. Unset or 0: no automatic
    /// compaction.
    #[arg(long)]
    pub auto_compaction_retention: Option<String>,
    /// Explicit events (puts under /eden/events/) whose tag matches none of these globs are not
    /// stored (comma separated; unset: all allowed). `*` stays within a `/` part, `**` crosses.
    #[arg(long, value_delimiter = ',')]
    pub event_allow: Option<Vec<String>>,
    /// Explicit events whose tag matches any of these globs are not stored.
    #[arg(long, value_delimiter = ',')]
    pub event_deny: Option<Vec<String>>,
    /// Largest explicit event in bytes [default: 65536].
    #[arg(long)]
    pub event_max_bytes: Option<usize>,
    /// How long explicit events are kept, like 24h or 7d [default: 24h].
    #[arg(long)]
    pub event_retention: Option<String>,
    /// Explicit events per second per source, across the cluster (the leader's setting counts)
    /// [default: 100].
    #[arg(long)]
    pub event_rate: Option<u32>,
    /// Do not run a reactor runtime in this member. By default every member runs one: one is
    /// active at a time, the others stand by (`reactor = false` in a config file).
    #[arg(long)]
    pub no_reactor: bool,
    /// Accept webhooks on http://HOST:PORT/hooks/NAME (see `eden hook create`).
    #[arg(long)]
    pub webhook_addr: Option<String>,
    /// Largest webhook body in bytes; larger ones get 413 [default: 1048576].
    #[arg(long)]
    pub webhook_max_bytes: Option<usize>,
    /// Serve the web view on https://HOST:PORT (sign in with a client certificate from the
    /// cluster's CA or a link from `eden ui login`; design/ui.md).
    #[arg(long)]
    pub ui_addr: Option<String>,
    /// Serve the client and peer ports over TLS with this certificate (PEM; with --key-file and
    /// --trusted-ca-file): clients and members must then present a certificate from that CA
    /// (mutual TLS). The member presents it when it connects to other members.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// The key of --cert-file (PEM).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The CA clients' certificates must come from (PEM).
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Plaintext ports and no authorization: anyone who reaches the client port may do
    /// anything. For a trial, or a benchmark beside a plaintext etcd. Without it (and without
    /// certificate flags) a new single-member cluster makes its own CA and certificates in
    /// DATA_DIR/pki.
    #[arg(long)]
    pub insecure: bool,
    /// The CA's key (PEM, of --trusted-ca-file's CA): this member hands it to the cluster, kept
    /// where only members may read it, so that every member can issue certificates for join
    /// tokens. A member that made its CA itself does so with DATA_DIR/pki/ca.key.
    #[arg(long)]
    pub ca_key_file: Option<PathBuf>,
    /// On a secure member, let anyone read /metrics and /health (still over TLS) instead of
    /// requiring a client certificate from the cluster's CA.
    #[arg(long)]
    pub metrics_anonymous: bool,
    /// The certificate the webhook port presents (PEM, with --webhook-key-file), for senders
    /// configured with a CA of their own; by default the member's.
    #[arg(long, requires = "webhook_key_file")]
    pub webhook_cert_file: Option<PathBuf>,
    #[arg(long)]
    pub webhook_key_file: Option<PathBuf>,
    /// With --join: get this member's certificate with a join token (`eden token create
    /// --member NAME=ADDR`), checking the cluster against --ca-pin; kept in DATA_DIR/pki.
    #[arg(long, requires_all = ["ca_pin", "join"])]
    pub join_token: Option<String>,
    /// The CA's pin `eden token create` printed (sha256:HEX).
    #[arg(long)]
    pub ca_pin: Option<String>,
}

/// The same settings as read from a `--config` file.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    client_addr: Option<String>,
    peer_addr: Option<String>,
    listen_peer_addr: Option<String>,
    initial_cluster: Option<String>,
    join: Option<Vec<String>>,
    stay_learner: Option<bool>,
    bootstrap_expect: Option<u32>,
    zone: Option<String>,
    leave: Option<bool>,
    snapshot_count: Option<u64>,
    snapshot_catchup_entries: Option<u64>,
    heartbeat_interval: Option<u64>,
    election_timeout: Option<u64>,
    lease_reads: Option<bool>,
    max_request_bytes: Option<usize>,
    max_txn_ops: Option<usize>,
    max_file_bytes: Option<usize>,
    max_files_bytes: Option<u64>,
    watch_progress_notify_interval: Option<u64>,
    watch_ring_revisions: Option<usize>,
    storage_memory_mb: Option<usize>,
    quota_bytes: Option<i64>,
    auto_compaction_mode: Option<String>,
    auto_compaction_retention: Option<String>,
    metrics_addr: Option<String>,
    event_allow: Option<Vec<String>>,
    event_deny: Option<Vec<String>>,
    event_max_bytes: Option<usize>,
    event_retention: Option<String>,
    event_rate: Option<u32>,
    reactor: Option<bool>,
    webhook_addr: Option<String>,
    webhook_max_bytes: Option<usize>,
    ui_addr: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    insecure: Option<bool>,
    ca_key_file: Option<PathBuf>,
    metrics_anonymous: Option<bool>,
    webhook_cert_file: Option<PathBuf>,
    webhook_key_file: Option<PathBuf>,
    join_token: Option<String>,
    ca_pin: Option<String>,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Parses `NAME=HOST:PORT,...`.
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, addr)) = part.split_once('=') else {
            bail!("bad --initial-cluster entry {part:?} (expected NAME=HOST:PORT)");
        };
        let addr = addr.trim_start_matches("http://");
        if name.is_empty() || !addr.contains(':') {
            bail!("bad --initial-cluster entry {part:?} (expected NAME=HOST:PORT)");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--initial-cluster names {name:?} twice");
        }
        out.push((name.to_string(), addr.to_string()));
    }
    Ok(out)
}

/// Parses --auto-compaction-retention for a mode; Ok(None) for 0.
pub fn parse_retention(mode: &str, r: &str) -> anyhow::Result<Option<AutoCompaction>> {
    let bad = || anyhow::anyhow!("bad --auto-compaction-retention {r:?} for mode {mode}");
    match mode {
        "revision" => {
            let n: i64 = r.trim().parse().map_err(|_| bad())?;
            if n < 0 {
                return Err(bad());
            }
            Ok((n > 0).then_some(AutoCompaction::Revision(n)))
        }
        "periodic" => {
            let r = r.trim();
            let (num, unit) = r.split_at(
                r.find(|c: char| !c.is_ascii_digit() && c != '.')
                    .unwrap_or(r.len()),
            );
            let n: f64 = num.parse().map_err(|_| bad())?;
            let secs = match unit {
                "" | "h" => n * 3600.0,
                "m" => n * 60.0,
                "s" => n,
                _ => return Err(bad()),
            };
            if secs < 0.0 {
                return Err(bad());
            }
            Ok((secs > 0.0).then(|| AutoCompaction::Periodic(Duration::from_secs_f64(secs))))
        }
        _ => Err(bad()),
    }
}

fn resolve(args: &ServerArgs) -> anyhow::Result<(NodeConfig, Extras)> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let name = args
        .name
        .clone()
        .or(file.name)
        .unwrap_or_else(|| "default".into());
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("eden-data"));
    let client_addr = args
        .client_addr
        .clone()
        .or(file.client_addr)
        .unwrap_or_else(|| "127.0.0.1:2379".into());
    let peer_addr = args
        .peer_addr
        .clone()
        .or(file.peer_addr)
        .unwrap_or_else(|| "127.0.0.1:2380".into());
    let mut c = NodeConfig::new(&name, data_dir, &client_addr, &peer_addr);
    if let Some(a) = args.listen_peer_addr.clone().or(file.listen_peer_addr) {
        c.listen_peer_addr = a;
    }
    c.join = args.join.clone().or(file.join);
    c.stay_learner = args.stay_learner || file.stay_learner.unwrap_or(false);
    if c.join.is_some() && (args.initial_cluster.is_some() || file.initial_cluster.is_some()) {
        bail!("give either --join or --initial-cluster, not both");
    }
    c.zone = args.zone.clone().or(file.zone);
    if let Some(z) = &c.zone {
        eden_proto::model::keys::check_name("zone", z).map_err(anyhow::Error::msg)?;
    }
    let leave = args.leave || file.leave.unwrap_or(false);
    let bootstrap_expect = args.bootstrap_expect.or(file.bootstrap_expect);
    if let Some(n) = bootstrap_expect {
        if args.initial_cluster.is_some() || file.initial_cluster.is_some() {
            bail!("give either --bootstrap-expect or --initial-cluster, not both");
        }
        let Some(list) = &c.join else {
            bail!("--bootstrap-expect needs --join (every server's client address)");
        };
        eden_store::forming::check_expect(n, list, &client_addr).map_err(anyhow::Error::msg)?;
        if c.stay_learner {
            bail!("--stay-learner is for joining a running cluster, not --bootstrap-expect");
        }
    }
    if let Some(ic) = args.initial_cluster.clone().or(file.initial_cluster) {
        c.initial_cluster = parse_initial_cluster(&ic)?;
        match c.initial_cluster.iter().find(|(n, _)| *n == name) {
            None => bail!("--initial-cluster does not name this member ({name})"),
            Some((_, a)) if *a != peer_addr => {
                bail!("--initial-cluster gives {name} the peer address {a}, but --peer-addr is {peer_addr}")
            }
            _ => {}
        }
    }
    if let Some(v) = args.snapshot_count.or(file.snapshot_count) {
        c.snapshot_count = v.max(1);
    }
    if let Some(v) = args
        .snapshot_catchup_entries
        .or(file.snapshot_catchup_entries)
    {
        c.snapshot_catchup_entries = v;
    }
    if let Some(v) = args.heartbeat_interval.or(file.heartbeat_interval) {
        c.heartbeat_ms = v.max(1);
    }
    if let Some(v) = args.election_timeout.or(file.election_timeout) {
        c.election_timeout_ms = v;
    }
    if c.election_timeout_ms <= c.heartbeat_ms * 2 {
        bail!(
            "--election-timeout ({} ms) must be more than twice --heartbeat-interval ({} ms)",
            c.election_timeout_ms,
            c.heartbeat_ms
        );
    }
    if let Some(v) = args.lease_reads.or(file.lease_reads) {
        c.lease_reads = v;
    }
    if let Some(v) = args.max_request_bytes.or(file.max_request_bytes) {
        c.max_request_bytes = v;
    }
    if let Some(v) = args.max_txn_ops.or(file.max_txn_ops) {
        c.max_txn_ops = v;
    }
    if let Some(v) = args.max_file_bytes.or(file.max_file_bytes) {
        c.max_file_bytes = v;
    }
    if let Some(v) = args.max_files_bytes.or(file.max_files_bytes) {
        c.max_files_bytes = v;
    }
    // A file is one value: the cap stays under the request limit (with room for its metadata),
    // so no file is ever chunked (decision 0014).
    if c.max_file_bytes + 64 * 1024 > c.max_request_bytes {
        bail!(
            "--max-file-bytes {} must be at least 64 KiB under --max-request-bytes {}",
            c.max_file_bytes,
            c.max_request_bytes
        );
    }
    if let Some(v) = args
        .watch_progress_notify_interval
        .or(file.watch_progress_notify_interval)
    {
        c.progress_notify_interval = Duration::from_secs(v.max(1));
    }
    let mode = args
        .auto_compaction_mode
        .clone()
        .or(file.auto_compaction_mode)
        .unwrap_or_else(|| "periodic".into());
    if let Some(r) = args
        .auto_compaction_retention
        .clone()
        .or(file.auto_compaction_retention)
    {
        c.auto_compaction = parse_retention(&mode, &r)?;
    }
    if let Some(v) = args.quota_bytes.or(file.quota_bytes) {
        c.quota_bytes = v;
    }
    if let Some(v) = args.watch_ring_revisions.or(file.watch_ring_revisions) {
        c.watch_ring_revisions = v.max(1);
    }
    if let Some(v) = args.storage_memory_mb.or(file.storage_memory_mb) {
        c.storage_memory_mb = v.max(8);
    }
    if let Some(v) = args.event_allow.clone().or(file.event_allow) {
        c.events.allow = v.into_iter().filter(|g| !g.is_empty()).collect();
    }
    if let Some(v) = args.event_deny.clone().or(file.event_deny) {
        c.events.deny = v.into_iter().filter(|g| !g.is_empty()).collect();
    }
    if let Some(v) = args.event_max_bytes.or(file.event_max_bytes) {
        c.events.max_bytes = v;
    }
    if let Some(v) = args.event_retention.clone().or(file.event_retention) {
        c.events.retention = humantime::parse_duration(&v)
            .map_err(|e| anyhow::anyhow!("bad --event-retention {v:?}: {e}"))?;
    }
    if let Some(v) = args.event_rate.or(file.event_rate) {
        c.events.rate = v.max(1);
    }
    let tls_files = (
        args.cert_file.clone().or(file.cert_file),
        args.key_file.clone().or(file.key_file),
        args.trusted_ca_file.clone().or(file.trusted_ca_file),
    );
    let insecure = args.insecure || file.insecure.unwrap_or(false);
    if insecure && tls_files != (None, None, None) {
        bail!("give --insecure or the certificate flags, not both");
    }
    c.tls = match tls_files {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => Some(
            eden_proto::client::Tls::from_files(&ca, &cert, &key)
                .map_err(|e| anyhow::anyhow!(e))?,
        ),
        _ => anyhow::bail!("TLS needs all of --cert-file, --key-file and --trusted-ca-file"),
    };
    let extras = Extras {
        insecure,
        ca_key_file: args.ca_key_file.clone().or(file.ca_key_file),
        metrics_anonymous: args.metrics_anonymous || file.metrics_anonymous.unwrap_or(false),
        join_token: match (
            args.join_token.clone().or(file.join_token),
            args.ca_pin.clone().or(file.ca_pin),
        ) {
            (None, _) => None,
            (Some(t), Some(p)) => Some((t, p)),
            (Some(_), None) => bail!("--join-token needs --ca-pin"),
        },
        webhook_cert: match (
            args.webhook_cert_file.clone().or(file.webhook_cert_file),
            args.webhook_key_file.clone().or(file.webhook_key_file),
        ) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c, k)),
            _ => bail!("give both --webhook-cert-file and --webhook-key-file"),
        },
        metrics_addr: args.metrics_addr.clone().or(file.metrics_addr),
        reactor: !args.no_reactor && file.reactor.unwrap_or(true),
        webhook_addr: args.webhook_addr.clone().or(file.webhook_addr),
        ui_addr: args.ui_addr.clone().or(file.ui_addr),
        webhook_max_bytes: args
            .webhook_max_bytes
            .or(file.webhook_max_bytes)
            .unwrap_or(1 << 20),
        own_cert: false,
        bootstrap_expect,
        leave,
        rejoin: c.join.is_some(),
    };
    Ok((c, extras))
}

/// The CA (certificate and key) this member hands to the cluster: `--ca-key-file`, or the key of
/// the CA it made itself; checked against the CA it trusts.
fn ca_keys(
    node: &Node,
    extras: &Extras,
) -> anyhow::Result<Option<eden_proto::model::tokens::CaKeys>> {
    let Some(tls) = &node.config().tls else {
        return Ok(None);
    };
    let own = node.config().data_dir.join("pki").join("ca.key");
    let path = match &extras.ca_key_file {
        Some(p) => p.clone(),
        None if own.exists() => own,
        None => return Ok(None),
    };
    let key_pem =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // from_pem refuses a key that does not go with the CA (it would issue certificates nobody
    // trusts).
    eden_proto::pki::Ca::from_pem(&tls.ca_pem, &key_pem)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some(eden_proto::model::tokens::CaKeys {
        cert_pem: tls.ca_pem.clone(),
        key_pem,
    }))
}

/// The nice value of the threads that serve clients: above the Raft threads' 0, so that on a
/// saturated machine heartbeats, votes and appends get the CPU first (see [`run`]).
const CLIENT_THREAD_NICE: i32 = 5;

/// Lowers the calling thread's scheduling priority (Linux: nice is per thread). Needs no
/// privilege; where it fails the thread keeps its priority.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; no memory is shared with the kernel.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, CLIENT_THREAD_NICE);
    }
}

/// Runs a member on two runtimes: Raft first. openraft's core, its replication and state-machine
/// tasks, the peer port and the member's own loops run on `eden-raft` threads; the client port,
/// watches, the reactor and the webhook intake on `eden-client` threads, which run at a lower
/// priority. However many clients queue up, they never sit between a heartbeat and the thread
/// that sends or answers it (issue 11: 10,000 agents on one runtime starved the Raft core into
/// elections).
pub fn run(args: &ServerArgs) -> anyhow::Result<()> {
    let (mut config, mut extras) = resolve(args)?;
    if config.join.is_some() {
        set_aside_removed_data(&config.data_dir)?;
    }
    if extras.insecure {
        tracing::warn!(
            "--insecure: plaintext ports and no authorization; anyone who reaches {} may read \
             and change everything and run commands on every agent",
            config.client_addr
        );
    } else if config.tls.is_none() {
        if let Some((token, pin)) = &extras.join_token {
            crate::cmd::pki::join_as_member(&config, token, pin)?;
        }
        config.tls = Some(crate::cmd::pki::member_tls(&config)?);
        extras.own_cert = true;
    }
    crate::cmd::pki::check_data_dir_mode(&config.data_dir, extras.insecure)?;
    let raft_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("eden-raft")
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("eden-client")
        .on_thread_start(lower_thread_priority)
        .enable_all()
        .build()?;
    let r = rt.block_on(serve(config, extras, raft_rt.handle().clone()));
    drop(rt);
    raft_rt.shutdown_timeout(Duration::from_secs(2));
    r
}

/// Forms a cluster (`--bootstrap-expect`): answers the forming call on the client port (a second
/// handle on the bound socket, so callers queue for the member that follows) until the cluster is
/// decided; returns the config to start the member with.
async fn form(
    mut config: NodeConfig,
    expect: u32,
    client_listener: &tokio::net::TcpListener,
) -> anyhow::Result<NodeConfig> {
    use eden_store::forming::{Forming, Outcome};
    use std::os::fd::AsFd;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let me = eden_proto::forming::Server {
        name: config.name.clone(),
        peer_addr: config.peer_addr.clone(),
        client_addr: config.client_addr.clone(),
    };
    let state = Forming::new(me, expect, &config.data_dir)?;
    let tls = match &config.tls {
        Some(t) => Some((
            eden_proto::tls_listener::ServerCert::new(&t.cert_pem, &t.key_pem)
                .map_err(|e| anyhow::anyhow!("this member's certificate: {e}"))?,
            t.ca_pem.clone(),
        )),
        None => None,
    };
    let dup = std::net::TcpListener::from(client_listener.as_fd().try_clone_to_owned()?);
    dup.set_nonblocking(true)?;
    let dup = tokio::net::TcpListener::from_std(dup)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(eden_store::grpc::serve_forming(
        state.clone(),
        dup,
        tls,
        async move {
            let _ = stopped.await;
        },
    ));
    let endpoints = config.join.clone().unwrap_or_default();
    tracing::info!(expect, join = ?endpoints, "forming a cluster");
    let peers = eden_store::forming::GrpcPeers(config.tls.clone());
    let outcome = state.run(&endpoints, &peers).await;
    let _ = stop.send(());
    server.await??;
    match outcome {
        Outcome::Bootstrap(members) => {
            tracing::info!(?members, "bootstrapping the cluster that formed");
            config.initial_cluster = members;
            config.join = None;
        }
        Outcome::Member { cluster_id } => {
            tracing::info!(
                cluster = format!("{cluster_id:x}"),
                "the cluster formed without waiting for this member: starting as its member"
            );
            config.member_of = Some(cluster_id);
            config.join = None;
        }
        Outcome::Join(endpoints) => {
            tracing::info!(?endpoints, "a cluster runs already: joining it");
            config.join = Some(endpoints);
        }
    }
    Ok(config)
}

/// What a member runs besides the store: metrics, a reactor runtime, the webhook intake.
/// How long a member whose Raft core stopped keeps answering (with errors and a 503 /health)
/// before it exits.
pub const CORE_STOPPED_GRACE: Duration = Duration::from_secs(5);

/// `eden server` ends with this error when it was removed from a cluster it joined by itself
/// (`--join`, `--bootstrap-expect`); it exits with [`crate::exit::MEMBER_REMOVED`] and, started
/// again, joins as a new standby.
#[derive(Debug, thiserror::Error)]
#[error("this member was removed from the cluster; start it again to join as a new standby")]
pub struct Removed;

/// The marker a removed member leaves in its data dir: the next start sets the old data aside.
const REMOVED_MARKER: &str = "removed";

/// A member that was removed comes back with a fresh copy, never its stale data: everything but
/// its certificates moves to DATA_DIR/removed-TIME.
fn set_aside_removed_data(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let marker = data_dir.join(REMOVED_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    let aside = data_dir.join(format!(
        "removed-{}",
        eden_proto::model::objects::now_ms() / 1000
    ));
    std::fs::create_dir_all(&aside)?;
    for e in std::fs::read_dir(data_dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "pki" || name.starts_with("removed") {
            continue;
        }
        std::fs::rename(e.path(), aside.join(&*name))?;
    }
    std::fs::remove_file(&marker)?;
    tracing::warn!(
        old = %aside.display(),
        "this member was removed from its cluster: its old data is set aside; joining as a new member"
    );
    Ok(())
}

/// How long a member stopped with `--leave` tries to hand leadership over and remove itself.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// `eden server` ends with this error when its Raft core stopped; it exits with
/// [`crate::exit::MEMBER_FAILED`].
#[derive(Debug, thiserror::Error)]
#[error("the Raft core stopped: {0}")]
pub struct CoreStopped(pub String);

struct Extras {
    /// Plaintext and no authorization (`--insecure`).
    insecure: bool,
    /// The CA's key to hand to the cluster.
    ca_key_file: Option<PathBuf>,
    /// /metrics and /health without a client certificate.
    metrics_anonymous: bool,
    /// A join token and the CA's pin, to get this member's certificate when it has none.
    join_token: Option<(String, String)>,
    /// The webhook port's own certificate and key.
    webhook_cert: Option<(PathBuf, PathBuf)>,
    metrics_addr: Option<String>,
    reactor: bool,
    webhook_addr: Option<String>,
    webhook_max_bytes: usize,
    ui_addr: Option<String>,
    /// The member's certificate is its own, in DATA_DIR/pki (made at bootstrap or got with a
    /// join token), so it renews it; one given with --cert-file is the operator's to replace.
    own_cert: bool,
    /// Form a new cluster with this many servers (`--bootstrap-expect`).
    bootstrap_expect: Option<u32>,
    /// Leave the cluster when stopped (`--leave`).
    leave: bool,
    /// Started with `--join` (or `--bootstrap-expect`): a removed member comes back as a new
    /// standby when started again.
    rejoin: bool,
}

async fn serve(
    config: NodeConfig,
    extras: Extras,
    raft_rt: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let client_listener = tokio::net::TcpListener::bind(&config.client_addr)
        .await
        .with_context(|| format!("binding the client address {}", config.client_addr))?;
    // The peer port is bound on the Raft runtime, so its connections are driven by its threads.
    let peer_addr = config.listen_peer_addr.clone();
    let peer_listener = raft_rt
        .spawn(async move { tokio::net::TcpListener::bind(&peer_addr).await })
        .await?
        .with_context(|| format!("binding the peer address {}", config.listen_peer_addr))?;
    tracing::info!(name = %config.name, data_dir = %config.data_dir.display(), client = %config.client_addr, peer = %config.peer_addr, listen_peer = %config.listen_peer_addr, "starting eden server");
    let metrics_listener = match &extras.metrics_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the metrics address {a}"))?,
        ),
        None => None,
    };
    let webhook_listener = match &extras.webhook_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the webhook address {a}"))?,
        ),
        None => None,
    };
    let ui_listener = match &extras.ui_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the web view's address {a}"))?,
        ),
        None => None,
    };
    let config = match extras.bootstrap_expect {
        Some(n) if !crate::cmd::pki::has_data(&config.data_dir) => {
            form(config, n, &client_listener).await?
        }
        _ => config,
    };
    let node = raft_rt.spawn(Node::start(config)).await??;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let client = tokio::spawn(eden_store::grpc::serve_client(
        node.clone(),
        client_listener,
        stopped(stop_rx.clone()),
    ));
    let peer = raft_rt.spawn(eden_store::grpc::serve_peer(
        node.clone(),
        peer_listener,
        tokio::runtime::Handle::current(),
        stopped(stop_rx.clone()),
    ));
    // The HTTP ports speak TLS on a secure member: its certificate; /metrics and /health ask for
    // a client certificate from the cluster's CA unless anonymous scrapes are allowed.
    use eden_proto::tls_listener::{config_with, ClientAuth};
    let metrics_tls = match (node.server_cert(), node.tls()) {
        (Some(cert), Some(t)) => Some(
            config_with(
                cert,
                &t.ca_pem,
                if extras.metrics_anonymous {
                    ClientAuth::None
                } else {
                    ClientAuth::Required
                },
                b"http/1.1",
            )
            .map_err(|e| anyhow::anyhow!("the metrics port's TLS: {e}"))?,
        ),
        _ => None,
    };
    let webhook_tls = match (node.server_cert(), &extras.webhook_cert) {
        (_, Some((c, k))) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            Some(
                eden_proto::tls_listener::server_config(&read(c)?, &read(k)?, None)
                    .map_err(|e| anyhow::anyhow!("the webhook port's TLS: {e}"))?,
            )
        }
        (Some(cert), None) => Some(
            config_with(cert, "", ClientAuth::None, b"http/1.1")
                .map_err(|e| anyhow::anyhow!("the webhook port's TLS: {e}"))?,
        ),
        (None, None) => None,
    };
    if let Some(l) = metrics_listener {
        let (node, stop) = (node.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move {
            if let Err(e) = eden_store::http::serve(node, l, metrics_tls, stop).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let own_client = Arc::new(eden_proto::client::Client::with_tls(
        std::slice::from_ref(&node.config().client_addr),
        node.tls(),
    )?);
    if let Some(l) = ui_listener {
        // A browser may present a client certificate from the cluster's CA; without one it signs
        // in with a link.
        let tls = match (node.server_cert(), node.tls()) {
            (Some(cert), Some(t)) => Some(
                config_with(cert, &t.ca_pem, ClientAuth::Optional, b"http/1.1")
                    .map_err(|e| anyhow::anyhow!("the web view's TLS: {e}"))?,
            ),
            _ => None,
        };
        let (node, stop) = (node.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move {
            if let Err(e) = eden_store::grpc::ui::serve(node, l, tls, stop).await {
                tracing::error!(error = %e, "the web view failed");
            }
        });
    }
    let reactor = extras.reactor.then(|| {
        let rt = Arc::new(eden_reactor::runtime::Runtime::new(
            own_client.clone(),
            &node.config().name,
        ));
        (rt.clone(), tokio::spawn(rt.run()))
    });
    if let Some(l) = webhook_listener {
        let (client, stop, max) = (
            own_client.clone(),
            stopped(stop_rx.clone()),
            extras.webhook_max_bytes,
        );
        tokio::spawn(async move {
            if let Err(e) = eden_reactor::webhook::serve(client, l, max, webhook_tls, stop).await {
                tracing::error!(error = %e, "webhook intake failed");
            }
        });
    }
    if let Some(keys) = ca_keys(&node, &extras)? {
        tokio::spawn(crate::cmd::pki::publish_ca(own_client.clone(), keys));
    }
    // Its own certificate renewed two thirds into its life (through the cluster's Renew call, as
    // agents do), then presented on its ports and to other members with no restart.
    if extras.own_cert {
        let files =
            eden_proto::renewal::Files::in_dir(&node.config().data_dir.join("pki"), "member");
        let n = node.clone();
        tokio::spawn(eden_proto::renewal::keep_renewed(
            own_client.clone(),
            files,
            move |tls| {
                if let Err(e) = n.replace_certificate(tls) {
                    tracing::error!("presenting the renewed certificate: {e}");
                }
            },
        ));
    }
    tracing::info!(id = format!("{:x}", node.id()), "eden server ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut signalled = false;
    let mut removed = false;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); signalled = true; }
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); signalled = true; }
        _ = node.removed() => {
            // Finish answering what is in flight (the change that removed this member, when it led).
            tracing::warn!("removed from the cluster: shutting down in 2 s");
            tokio::time::sleep(Duration::from_secs(2)).await;
            removed = true;
        }
        r = client => bail!("the client server stopped: {:?}", r),
        r = peer => bail!("the peer server stopped: {:?}", r),
        why = node.core_stopped() => {
            // A member whose core died must not look alive: /health and Status already say so;
            // after a short grace (so a scrape or a client sees why) the process exits non-zero
            // and its supervisor (contrib/systemd/eden.service) restarts it from its data dir.
            tracing::error!(
                reason = %why,
                "the Raft core stopped: exiting in {} s so the supervisor restarts this member",
                CORE_STOPPED_GRACE.as_secs()
            );
            tokio::time::sleep(CORE_STOPPED_GRACE).await;
            let _ = stop_tx.send(true);
            return Err(CoreStopped(why).into());
        }
    }
    if signalled && extras.leave {
        match tokio::time::timeout(LEAVE_TIMEOUT, node.leave()).await {
            Ok(Ok(())) => tracing::info!("left the cluster"),
            Ok(Err(e)) => tracing::warn!(reason = %e.message(), "could not leave the cluster"),
            Err(_) => tracing::warn!("could not leave the cluster in {LEAVE_TIMEOUT:?}"),
        }
    }
    if let Some((rt, task)) = reactor {
        // Hand the reactor over to a standby at once rather than after its lease expires.
        task.abort();
        rt.resign().await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
    tracing::info!("eden server stopped");
    if removed && extras.rejoin {
        std::fs::write(node.config().data_dir.join(REMOVED_MARKER), b"")?;
        return Err(Removed.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parsing() {
        assert_eq!(
            parse_retention("revision", "1000").unwrap(),
            Some(AutoCompaction::Revision(1000))
        );
        assert_eq!(
            parse_retention("periodic", "1").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_retention("periodic", "30m").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(parse_retention("periodic", "0").unwrap(), None);
        assert!(parse_retention("revision", "1h").is_err());
        assert!(parse_retention("periodic", "5d").is_err());
    }

    #[test]
    fn initial_cluster_parsing() {
        let c = parse_initial_cluster("a=127.0.0.1:1,b=http://127.0.0.1:2").unwrap();
        assert_eq!(
            c,
            vec![
                ("a".into(), "127.0.0.1:1".into()),
                ("b".into(), "127.0.0.1:2".into())
            ]
        );
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=x:1,a=y:2").is_err());
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = std::env::temp_dir().join(format!("eden-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("eden.toml");
        std::fs::write(
            &path,
            "name = \"n1\"\nsnapshot-count = 7\nclient-addr = \"127.0.0.1:9\"\nwebhook-addr = \"127.0.0.1:11\"\n",
        )
        .unwrap();
        let mut args = ServerArgs {
            config: Some(path.clone()),
            client_addr: Some("127.0.0.1:10".into()),
            ..Default::default()
        };
        let (c, x) = resolve(&args).unwrap();
        assert_eq!(
            (c.name.as_str(), c.snapshot_count, c.client_addr.as_str()),
            ("n1", 7, "127.0.0.1:10")
        );
        assert!(x.reactor, "a reactor runtime runs by default");
        assert_eq!(x.webhook_addr.as_deref(), Some("127.0.0.1:11"));
        args.no_reactor = true;
        assert!(!resolve(&args).unwrap().1.reactor);
        args.no_reactor = false;
        std::fs::write(&path, "reactor = false\n").unwrap();
        assert!(!resolve(&args).unwrap().1.reactor);
        std::fs::write(&path, "nmae = \"typo\"\n").unwrap();
        assert!(resolve(&args).is_err(), "unknown keys are refused");
        std::fs::remove_dir_all(dir).ok();
    }
}
