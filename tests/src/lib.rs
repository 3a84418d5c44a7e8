//! Test harness: real `eden server` processes on 127.0.0.1 ports.
//!
//! [`Cluster::start`] picks free ports, starts the members, and waits until one leads. Every process
//! is killed when the [`Cluster`] is dropped, also when a test fails. Tests wait on conditions
//! ([`wait_for`]), never on fixed sleeps.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eden_proto::client::Client;
use eden_proto::etcdserverpb::{PutRequest, RangeRequest};

/// The `eden` binary next to the test executable (target/<profile>/eden), or $EDEN_BIN.
pub fn eden_bin() -> PathBuf {
    if let Ok(p) = std::env::var("EDEN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("eden");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin eden` first",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    free_port_on([127, 0, 0, 1].into())
}

/// A port free on this IP now, taken from below the kernel's ephemeral range.
///
/// A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range it
/// takes the local port of every outgoing connection from: between picking a port and a member
/// binding it, another member's connection could take it ("Address already in use"). Ports below
/// that range are never handed out on their own, and each is picked once per test process (a
/// counter from an offset drawn from the process id), so only a bound listener can hold one, which
/// the bind here checks. A port free on 127.0.0.1 may be held on 127.0.0.2, hence the IP.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = ephemeral_low().clamp(LOW + 1_000, 32_768);
    let span = high - LOW;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free test port left in {LOW}..{high}");
        let port = (LOW + (offset + n) % span) as u16;
        if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Whether clusters started with [`Cluster::start`] speak TLS (with the authorizer on):
/// `EDEN_TEST_TLS=1` runs the suite that way (decision 0012; every test written against a
/// plaintext cluster must pass on a secure one too).
pub fn tls_by_default() -> bool {
    std::env::var_os("EDEN_TEST_TLS").is_some_and(|v| v != "0" && !v.is_empty())
}

/// The certificate directory of every secure cluster of this process, by member endpoint: so
/// that tests that only know endpoints (etcdctl, a client of their own) present the admin's.
fn registry() -> &'static std::sync::Mutex<std::collections::HashMap<String, PathBuf>> {
    static R: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

fn pki_of(eps: &[String]) -> Option<PathBuf> {
    let r = registry().lock().unwrap();
    eps.iter().find_map(|e| {
        let bare = e
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        r.get(bare).cloned()
    })
}

/// A client's `--cacert --cert --key` for the certificate `WHO.crt` in `pki`.
fn client_flags(pki: &Path, who: &str) -> Vec<String> {
    let f = |n: String| pki.join(n).display().to_string();
    vec![
        "--cacert".into(),
        f("ca.crt".into()),
        "--cert".into(),
        f(format!("{who}.crt")),
        "--key".into(),
        f(format!("{who}.key")),
    ]
}

/// The TLS a client presents with the certificate `WHO.crt` in `pki`.
fn client_tls(pki: &Path, who: &str) -> eden_proto::client::Tls {
    eden_proto::client::Tls::from_files(
        &pki.join("ca.crt"),
        &pki.join(format!("{who}.crt")),
        &pki.join(format!("{who}.key")),
    )
    .expect("read test certificates")
}

/// A member's `--cert-file --key-file --trusted-ca-file` (and `--ca-key-file`, so that the cluster
/// can issue certificates for join tokens) from `pki`.
fn member_flags(pki: &Path, name: &str) -> Vec<String> {
    let f = |n: String| pki.join(n).display().to_string();
    vec![
        "--cert-file".into(),
        f(format!("member-{name}.crt")),
        "--key-file".into(),
        f(format!("member-{name}.key")),
        "--trusted-ca-file".into(),
        f("ca.crt".into()),
        "--ca-key-file".into(),
        f("ca.key".into()),
    ]
}

/// etcdctl's and eden's `--cacert --cert --key` for the admin of the cluster these endpoints
/// belong to (none for a plaintext cluster).
pub fn tls_flags_for(eps: &[String]) -> Vec<String> {
    pki_of(eps).map_or_else(Vec::new, |pki| client_flags(&pki, "admin"))
}

/// A client over these endpoints, as the admin when their cluster is secure.
pub fn client_for(eps: &[String]) -> Arc<Client> {
    let tls = pki_of(eps).map(|pki| client_tls(&pki, "admin"));
    Arc::new(Client::with_tls(eps, tls).expect("client"))
}

/// A gRPC channel to one member (TLS with the admin's certificate when its cluster is secure).
pub async fn channel_for(ep: &str) -> tonic::transport::Channel {
    let eps = [ep.to_string()];
    let endpoint = match pki_of(&eps) {
        Some(pki) => {
            let tls = client_tls(&pki, "admin");
            tonic::transport::Endpoint::from_shared(format!("https://{ep}"))
                .expect("endpoint")
                .tls_config(tls.config())
                .expect("tls")
        }
        None => tonic::transport::Endpoint::from_shared(format!("http://{ep}")).expect("endpoint"),
    };
    endpoint.connect().await.expect("connect")
}

/// Runs `eden ARGS` and panics with its stderr unless it succeeds.
pub fn run_eden_ok(args: &[String]) {
    let o = Command::new(eden_bin())
        .args(args)
        .output()
        .expect("run eden");
    assert!(
        o.status.success(),
        "eden {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
/// The body (with the status line and headers) of a plain HTTP GET, e.g. a member's `/metrics`.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http port");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// One unlabeled metric's value from a member's metrics port.
pub async fn metric(addr: &str, name: &str) -> f64 {
    let text = http_get(addr, "/metrics").await;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Member {
    pub name: String,
    pub client_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// The program and its arguments: `eden server ...`, or `etcd ...` in an etcd cluster.
    program: PathBuf,
    args: Vec<String>,
}

impl Member {
    /// A member named `name` in `dir` on the given ports; `mode` is `--initial-cluster ...` or
    /// `--join ...`, `extra` any further `eden server` flags.
    /// `peer` is the advertised peer address and, when it differs, the one to listen on.
    fn new(
        dir: &Path,
        name: &str,
        client_port: u16,
        peer: (String, Option<String>),
        mode: [String; 2],
        extra: &[&str],
    ) -> Member {
        let data_dir = dir.join(name);
        let client_addr = format!("127.0.0.1:{client_port}");
        let (peer_addr, listen_peer) = peer;
        let mut args = vec![
            "server".to_string(),
            "--name".to_string(),
            name.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--client-addr".into(),
            client_addr.clone(),
            "--peer-addr".into(),
            peer_addr.clone(),
        ];
        if let Some(l) = listen_peer {
            args.extend(["--listen-peer-addr".to_string(), l]);
        }
        args.extend(mode);
        args.extend(extra.iter().map(|s| s.to_string()));
        // Without certificates a member makes its own CA (single member) or refuses to start
        // (several): a plaintext test cluster says so.
        if !extra.contains(&"--cert-file") && !extra.contains(&"--insecure") {
            args.push("--insecure".into());
        }
        Member {
            name: name.to_string(),
            client_addr,
            peer_addr,
            log: dir.join(format!("{name}.log")),
            data_dir,
            child: None,
            program: eden_bin(),
            args,
        }
    }

    /// An etcd member (`etcd` from PATH) of the cluster `initial` (NAME=URL,...).
    fn etcd(dir: &Path, name: &str, client_port: u16, peer_port: u16, initial: &str) -> Member {
        let data_dir = dir.join(name);
        let client_addr = format!("127.0.0.1:{client_port}");
        let peer_addr = format!("127.0.0.1:{peer_port}");
        let (client_url, peer_url) = (
            format!("http://{client_addr}"),
            format!("http://{peer_addr}"),
        );
        let args = [
            "--name",
            name,
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ]
        .map(String::from)
        .to_vec();
        Member {
            name: name.to_string(),
            client_addr,
            peer_addr,
            log: dir.join(format!("{name}.log")),
            data_dir,
            child: None,
            program: PathBuf::from("etcd"),
            args,
        }
    }

    pub fn endpoint(&self) -> String {
        self.client_addr.clone()
    }

    /// The arguments it is (re)started with, to change before it starts.
    pub fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("EDEN_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); scripts/setup.sh installs what the tests need",
                    self.program.display()
                )
            });
        self.child = Some(child);
    }

    fn signal(&mut self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Makes this member (not started yet) secure with certificates of its own in DATA_DIR/pki,
    /// as a member keeps those it made at bootstrap or got with a join token (and renews them):
    /// `ca.crt`, `ca.key` and `member-NAME.crt`/`.key` from `pki` (`eden pki init`, `issue`).
    pub fn own_pki_from(&mut self, pki: &Path) {
        let own = self.data_dir.join("pki");
        std::fs::create_dir_all(&own).expect("create DATA_DIR/pki");
        let name = &self.name;
        for (from, to) in [
            ("ca.crt".to_string(), "ca.crt"),
            ("ca.key".to_string(), "ca.key"),
            (format!("member-{name}.crt"), "member.crt"),
            (format!("member-{name}.key"), "member.key"),
        ] {
            std::fs::copy(pki.join(from), own.join(to)).expect("copy a certificate");
        }
        self.args.retain(|a| a != "--insecure");
    }

    /// The member's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    /// With [`Cluster::start_partitionable`]: the proxies on the peer links.
    pub net: Option<Arc<PeerNet>>,
    /// With [`Cluster::start_tls`]: the cluster's CA and certificates (`eden pki init`): the
    /// members serve mutual TLS, and the harness's clients and commands use `admin.crt`, agents
    /// `node-NAME.crt` (issued when the agent is first started).
    pub pki: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members with extra `eden server` flags, and waits for a leader.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_inner(n, extra, None, None, tls_by_default()).await
    }

    /// Like [`Cluster::start`], every member with a certificate from the cluster's own CA: mutual
    /// TLS on the client and peer ports, and the authorizer deciding who may do what.
    pub async fn start_tls(n: usize, extra: &[&str]) -> Cluster {
        Self::start_inner(n, extra, None, None, true).await
    }

    /// Like [`Cluster::start`], with every peer link through a proxy that can cut it
    /// ([`Cluster::net`], see [`PeerNet`]).
    pub async fn start_partitionable(n: usize, extra: &[&str]) -> Cluster {
        Self::start_inner(
            n,
            extra,
            None,
            Some(Arc::new(PeerNet::default())),
            tls_by_default(),
        )
        .await
    }

    /// [`Cluster::start_partitionable`] with TLS on, whatever `EDEN_TEST_TLS` says.
    pub async fn start_partitionable_tls(n: usize, extra: &[&str]) -> Cluster {
        Self::start_inner(n, extra, None, Some(Arc::new(PeerNet::default())), true).await
    }

    /// A cluster of `n` etcd members (etcd from PATH, installed by scripts/setup.sh), to run
    /// the same checks against etcd.
    pub async fn start_etcd(n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs: Vec<(String, u16, u16)> = (0..n)
            .map(|i| (format!("e{i}"), free_port(), free_port()))
            .collect();
        let initial: Vec<String> = specs
            .iter()
            .map(|(name, _, pp)| format!("{name}=http://127.0.0.1:{pp}"))
            .collect();
        let mut members: Vec<Member> = specs
            .iter()
            .map(|(name, cp, pp)| Member::etcd(dir.path(), name, *cp, *pp, &initial.join(",")))
            .collect();
        for m in &mut members {
            m.spawn();
        }
        let c = Cluster {
            members,
            net: None,
            pki: None,
            _dir: dir,
        };
        c.wait_leader().await;
        c
    }

    /// A cluster of `n` members of which only those in `running` are started; returns at once,
    /// without waiting for a leader (there may be none: the others never start).
    pub fn start_some(n: usize, running: &[usize], extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs: Vec<(String, u16, (String, Option<String>))> = (0..n)
            .map(|i| (format!("m{i}"), free_port(), peer_addrs(None, i)))
            .collect();
        let initial: Vec<String> = specs
            .iter()
            .map(|(name, _, (pa, _))| format!("{name}={pa}"))
            .collect();
        let mut members = Vec::new();
        for (name, cp, peer) in specs {
            let mode = ["--initial-cluster".to_string(), initial.join(",")];
            members.push(Member::new(dir.path(), &name, cp, peer, mode, extra));
        }
        for i in running {
            members[*i].spawn();
        }
        Cluster {
            members,
            net: None,
            pki: None,
            _dir: dir,
        }
    }

    /// `n` servers that form a cluster by themselves (`--bootstrap-expect expect --join` every
    /// server's client address), none started yet: start them with [`Cluster::spawn`]. With
    /// `tls`, each has a certificate from one CA (`eden pki init`).
    pub fn forming(n: usize, expect: usize, extra: &[&str], tls: bool) -> Cluster {
        Self::forming_with(n, expect, extra, tls, None)
    }

    /// [`Cluster::forming`] with every peer link through a proxy that can cut it
    /// ([`Cluster::net`]); call it inside a tokio runtime.
    pub fn forming_partitionable(n: usize, expect: usize, extra: &[&str], tls: bool) -> Cluster {
        Self::forming_with(n, expect, extra, tls, Some(Arc::new(PeerNet::default())))
    }

    fn forming_with(
        n: usize,
        expect: usize,
        extra: &[&str],
        tls: bool,
        net: Option<Arc<PeerNet>>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs: Vec<MemberSpec> = (0..n)
            .map(|i| (format!("m{i}"), free_port(), peer_addrs(net.as_deref(), i)))
            .collect();
        let list: Vec<String> = specs
            .iter()
            .map(|(_, cp, _)| format!("127.0.0.1:{cp}"))
            .collect();
        let pki = tls.then(|| make_pki(dir.path(), &specs));
        let mut members = Vec::new();
        for (name, cp, peer) in specs {
            let mode = ["--join".to_string(), list.join(",")];
            let mut flags: Vec<String> = vec!["--bootstrap-expect".into(), expect.to_string()];
            flags.extend(extra.iter().map(|s| s.to_string()));
            if let Some(pki) = &pki {
                flags.extend(member_flags(pki, &name));
            }
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            members.push(Member::new(dir.path(), &name, cp, peer, mode, &flags));
        }
        if let Some(pki) = &pki {
            let mut r = registry().lock().unwrap();
            for m in &members {
                r.insert(m.endpoint(), pki.clone());
            }
        }
        Cluster {
            members,
            net,
            pki,
            _dir: dir,
        }
    }

    /// The tags of the explicit events stored now (`/eden/events/`) that start with `prefix`.
    pub async fn event_tags(&self, prefix: &str) -> Vec<String> {
        let events = eden_proto::model::keys::EVENTS.as_bytes();
        let r = self
            .client()
            .range(RangeRequest {
                key: events.to_vec(),
                range_end: eden_proto::keys::prefix_end(events),
                ..Default::default()
            })
            .await
            .unwrap();
        r.kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
            .filter_map(|v| v["tag"].as_str().map(String::from))
            .filter(|t| t.starts_with(prefix))
            .collect()
    }

    /// What the leader's autopilot reports (`eden cluster status`), asked of any member; None
    /// when no member answers.
    pub async fn autopilot_status(&self) -> Option<eden_proto::model::cluster::ClusterStatus> {
        use eden_proto::forming::autopilot_client::AutopilotClient;
        let r = self
            .client()
            .call(eden_proto::client::Retry::Read, |ch| async move {
                AutopilotClient::new(ch)
                    .state(eden_proto::forming::StateRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await
            .ok()?;
        serde_json::from_str(&r.status_json).ok()
    }

    /// Starts member `i` (one made by [`Cluster::forming`], or one that was stopped).
    pub fn spawn(&mut self, i: usize) {
        self.members[i].spawn();
    }

    /// The `--initial-cluster` value the members were started with.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Like [`Cluster::start`], each member's data dir first restored from a backup made by
    /// `eden snapshot save` (with `eden snapshot restore`).
    pub async fn start_restored(n: usize, extra: &[&str], backup: &Path) -> Cluster {
        Self::start_inner(n, extra, Some(backup), None, tls_by_default()).await
    }

    async fn start_inner(
        n: usize,
        extra: &[&str],
        backup: Option<&Path>,
        net: Option<Arc<PeerNet>>,
        tls: bool,
    ) -> Cluster {
        // A test that asks for a plaintext cluster gets one, in the TLS mode too.
        let tls = tls && !extra.contains(&"--insecure");
        let dir = tempfile::tempdir().expect("tempdir");
        let specs: Vec<(String, u16, (String, Option<String>))> = (0..n)
            .map(|i| (format!("m{i}"), free_port(), peer_addrs(net.as_deref(), i)))
            .collect();
        let initial: Vec<String> = specs
            .iter()
            .map(|(name, _, (pa, _))| format!("{name}={pa}"))
            .collect();
        let pki = tls.then(|| make_pki(dir.path(), &specs));
        let mut members = Vec::new();
        for (name, cp, peer) in specs {
            let mode = ["--initial-cluster".to_string(), initial.join(",")];
            let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            if let Some(pki) = &pki {
                flags.extend(member_flags(pki, &name));
            }
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            members.push(Member::new(dir.path(), &name, cp, peer, mode, &flags));
        }
        for m in &mut members {
            if let Some(file) = backup {
                let out = Command::new(eden_bin())
                    .args(["snapshot", "restore"])
                    .arg(file)
                    .arg("--data-dir")
                    .arg(&m.data_dir)
                    .output()
                    .expect("run eden snapshot restore");
                assert!(
                    out.status.success(),
                    "restore failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            m.spawn();
        }
        if let Some(pki) = &pki {
            let mut r = registry().lock().unwrap();
            for m in &members {
                r.insert(m.endpoint(), pki.clone());
            }
        }
        let c = Cluster {
            members,
            net,
            pki,
            _dir: dir,
        };
        c.wait_leader().await;
        if !extra.contains(&"--no-reactor") {
            // The reactor runtime's first writes (its election key, its cursor) land before the
            // test starts, so that the revisions a test sees are its own.
            c.wait_reactor().await;
        }
        c
    }

    /// The id of the active reactor runtime (the member's name for one inside `eden server`).
    pub async fn active_reactor(&self) -> Option<String> {
        let r = self
            .client()
            .range(eden_proto::etcdserverpb::RangeRequest {
                key: eden_proto::model::keys::REACTOR_LEADER.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&r.kvs.first()?.value).ok()?;
        v["id"].as_str().map(String::from)
    }

    /// Waits until a reactor runtime is active and its cursor is stored (a runtime that becomes
    /// active later starts from the revision it becomes active at).
    pub async fn wait_reactor(&self) {
        wait_for(
            "a reactor runtime to be active",
            Duration::from_secs(30),
            || async {
                let cursor = self
                    .client()
                    .range(eden_proto::etcdserverpb::RangeRequest {
                        key: eden_proto::model::keys::REACTOR_CURSOR.as_bytes().to_vec(),
                        count_only: true,
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.count == 1);
                cursor && self.active_reactor().await.is_some()
            },
        )
        .await;
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// A client over every member (the admin's, on a TLS cluster).
    /// The etcd-client crate connected to `endpoints` of the cluster: over TLS as its admin when
    /// the cluster is secure (EDEN_TEST_TLS=1).
    pub async fn etcd_client(&self, endpoints: &[String]) -> etcd_client::Client {
        let Some(pki) = &self.pki else {
            return etcd_client::Client::connect(endpoints, None).await.unwrap();
        };
        let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.crt")))
            .identity(etcd_client::Identity::from_pem(
                read("admin.crt"),
                read("admin.key"),
            ));
        let eps: Vec<String> = endpoints.iter().map(|e| format!("https://{e}")).collect();
        etcd_client::Client::connect(eps, Some(etcd_client::ConnectOptions::new().with_tls(tls)))
            .await
            .unwrap()
    }

    pub fn client(&self) -> Arc<Client> {
        self.client_as("admin")
    }

    /// A client over every member with the certificate `WHO.crt` of a TLS cluster (`admin`,
    /// `node-NAME`: issued if it was not yet).
    pub fn client_as(&self, who: &str) -> Arc<Client> {
        Arc::new(Client::with_tls(&self.endpoints(), self.tls_of(who)).expect("client"))
    }

    /// A client that talks to one member only.
    pub fn client_of(&self, i: usize) -> Arc<Client> {
        Arc::new(
            Client::with_tls(&[self.members[i].endpoint()], self.tls_of("admin")).expect("client"),
        )
    }

    /// The certificate `WHO.crt` and key of a TLS cluster, issued from its CA if missing
    /// (`node-NAME`, `admin-NAME`); None on a plaintext cluster.
    pub fn tls_of(&self, who: &str) -> Option<eden_proto::client::Tls> {
        let pki = self.pki.as_ref()?;
        self.ensure_cert(who);
        Some(client_tls(pki, who))
    }

    /// The `--cacert --cert --key` flags for `WHO.crt` on a TLS cluster (none on plaintext).
    pub fn tls_flags(&self, who: &str) -> Vec<String> {
        let Some(pki) = &self.pki else {
            return Vec::new();
        };
        self.ensure_cert(who);
        client_flags(pki, who)
    }

    fn ensure_cert(&self, who: &str) {
        let Some(pki) = &self.pki else { return };
        if pki.join(format!("{who}.crt")).exists() {
            return;
        }
        let (kind, name) = who
            .split_once('-')
            .expect("WHO is admin, node-NAME or admin-NAME");
        run_eden_ok(&[
            "pki".to_string(),
            "issue".into(),
            pki.display().to_string(),
            format!("--{kind}"),
            name.to_string(),
        ]);
    }

    /// The index of the member that leads, as the running members agree on it.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() {
                continue;
            }
            let c = Client::with_tls(&[m.endpoint()], self.tls_of("admin")).expect("client");
            if let Ok(s) = tokio::time::timeout(Duration::from_secs(1), c.status_of(0))
                .await
                .unwrap_or_else(|_| {
                    Err(eden_proto::client::ClientError::Unavailable(
                        "timeout".into(),
                    ))
                })
            {
                let id = s.header.map_or(0, |h| h.member_id);
                if s.leader != 0 && s.leader == id {
                    return Some(i);
                }
            }
        }
        None
    }

    pub async fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.leader().await {
                return i;
            }
            if Instant::now() > deadline {
                panic!("no leader after 30 s; logs:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a new member that joins the running cluster with `--join` (plus `extra` flags);
    /// returns its index.
    pub fn join(&mut self, extra: &[&str]) -> usize {
        let peer = peer_addrs(self.net.as_deref(), self.members.len());
        self.join_with(peer, extra)
    }

    /// Like [`Cluster::join`], with a given peer address (one added beforehand with
    /// `member add`, which the new member then takes over).
    pub fn join_at(&mut self, peer_addr: &str, extra: &[&str]) -> usize {
        self.join_with((peer_addr.to_string(), None), extra)
    }

    fn join_with(&mut self, peer: (String, Option<String>), extra: &[&str]) -> usize {
        let i = self.members.len();
        let name = format!("m{i}");
        let cp = free_port();
        let dir = self.members[0]
            .data_dir
            .parent()
            .expect("cluster dir")
            .to_path_buf();
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.endpoint())
            .collect();
        let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(pki) = &self.pki {
            let host = peer.0.rsplit_once(':').map_or(peer.0.as_str(), |(h, _)| h);
            if !pki.join(format!("member-{name}.crt")).exists() {
                run_eden_ok(&[
                    "pki".into(),
                    "issue".into(),
                    pki.display().to_string(),
                    "--member".into(),
                    format!("{name}=127.0.0.1+{host}"),
                ]);
            }
            flags.extend(member_flags(pki, &name));
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut m = Member::new(
            &dir,
            &name,
            cp,
            peer,
            ["--join".to_string(), running.join(",")],
            &flags,
        );
        if let Some(pki) = &self.pki {
            registry().lock().unwrap().insert(m.endpoint(), pki.clone());
        }
        m.spawn();
        self.members.push(m);
        i
    }

    /// The member id of member `i`, from the member list (asked until a member that knows it
    /// answers: one that just caught up may not list the newest member yet).
    pub async fn member_id(&self, i: usize) -> u64 {
        let endpoint = self.members[i].endpoint();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(list) = self.client().member_list().await {
                if let Some(m) = list
                    .members
                    .iter()
                    .find(|m| m.client_ur_ls.iter().any(|u| same_endpoint(u, &endpoint)))
                {
                    return m.id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "member {i} is not in the member list"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes a member through the Cluster API (asking again for up to 10 s while the previous
    /// membership change, like a newcomer's promotion, is still being committed).
    pub async fn remove_member(&self, id: u64) -> Result<(), eden_proto::client::ClientError> {
        use eden_proto::etcdserverpb::{cluster_client::ClusterClient, MemberRemoveRequest};
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .client()
                .call(eden_proto::client::Retry::Write, |ch| async move {
                    ClusterClient::new(ch)
                        .member_remove(MemberRemoveRequest { id })
                        .await
                })
                .await
                .map(|_| ());
            match r {
                Err(e)
                    if e.to_string()
                        .contains("another membership change is in progress")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => return other,
            }
        }
    }

    /// Waits until member `i`'s process exits by itself (a removed member stops).
    pub async fn wait_exited(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.exited(i) {
            assert!(
                Instant::now() < deadline,
                "member {i} did not stop within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True once the member's process has exited by itself (for example after being removed).
    pub fn exited(&mut self, i: usize) -> bool {
        let done = match self.members[i].child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        };
        if done {
            self.members[i].child = None;
        }
        done
    }

    /// Member `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// SIGSTOP: the member freezes (its peers see it as gone, its sockets stay open).
    pub fn pause(&mut self, i: usize) {
        self.members[i].signal("STOP");
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, i: usize) {
        self.members[i].signal("CONT");
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        self.members[i].signal("KILL");
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        self.members[i].signal("TERM");
        self.members[i]
            .child
            .take()
            .and_then(|mut c| c.wait().ok())
            .and_then(|s| s.code())
    }

    /// Starts a stopped or killed member again with the same flags and data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "member {i} is still running"
        );
        self.members[i].spawn();
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("==== {} ====\n{}", m.name, m.log_text()))
            .collect()
    }

    /// Puts through one member's endpoint.
    pub async fn put(
        &self,
        i: usize,
        key: &str,
        value: &str,
    ) -> Result<i64, eden_proto::client::ClientError> {
        let r = self
            .client_of(i)
            .put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })
            .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// A serializable read of one key on one member: what that member itself has applied.
    pub async fn local_get(&self, i: usize, key: &str) -> Option<Vec<u8>> {
        let r = self
            .client_of(i)
            .range(RangeRequest {
                key: key.into(),
                serializable: true,
                ..Default::default()
            })
            .await
            .ok()?;
        r.kvs.first().map(|kv| kv.value.clone())
    }

    /// The member's current revision from a serializable read.
    pub async fn local_revision(&self, i: usize) -> Option<i64> {
        let r = self
            .client_of(i)
            .range(RangeRequest {
                key: b"\0".to_vec(),
                range_end: b"\0".to_vec(),
                serializable: true,
                count_only: true,
                ..Default::default()
            })
            .await
            .ok()?;
        r.header.map(|h| h.revision)
    }
}

/// Member `i`'s advertised peer address and, behind a [`PeerNet`] proxy, its listen address.
/// `eden server` flags for tests that start many clusters: fast elections, no reactor.
pub const FAST_ELECTIONS: &[&str] = &[
    "--no-reactor",
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "400",
];

/// A member to be: its name, client port, advertised peer address and the one it listens on.
type MemberSpec = (String, u16, (String, Option<String>));

/// The cluster's CA and a certificate for each member (`eden pki init` in `dir/pki`).
fn make_pki(dir: &Path, specs: &[MemberSpec]) -> PathBuf {
    let pki = dir.join("pki");
    let mut args = vec!["pki".to_string(), "init".into(), pki.display().to_string()];
    for (name, _, (pa, _)) in specs {
        // Valid for the client port's 127.0.0.1 and its advertised peer address (which
        // is another loopback IP behind a PeerNet proxy).
        let host = pa.rsplit_once(':').map_or(pa.as_str(), |(h, _)| h);
        args.extend(["--member".to_string(), format!("{name}=127.0.0.1+{host}")]);
    }
    run_eden_ok(&args);
    pki
}

fn peer_addrs(net: Option<&PeerNet>, i: usize) -> (String, Option<String>) {
    match net {
        None => (format!("127.0.0.1:{}", free_port()), None),
        Some(net) => {
            let ip = PeerNet::ip_of(i);
            let listen = SocketAddr::new(ip, free_port_on(ip));
            (net.add_member(i, listen), Some(listen.to_string()))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() || std::env::var("EDEN_TEST_SHOW_LOGS").is_ok() {
            eprintln!("{}", self.logs());
        }
    }
}
pub mod history;
pub mod load;
pub mod net;

pub use net::PeerNet;

/// An `eden agent` process against a cluster; killed when dropped.
pub struct AgentProc {
    pub name: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl AgentProc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open agent log");
        let child = Command::new(eden_bin())
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("EDEN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn eden agent");
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok().and_then(|s| s.code())
    }

    /// Starts it again on the same data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent {} is running", self.name);
        self.spawn();
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.child = None;
                    return s.code();
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not exit",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== agent {} ====\n{}", self.name, self.log_text());
        }
        self.kill();
    }
}

/// What an `eden` command printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Cluster {
    /// Starts `eden agent --name NAME` against every member, with its data dir in the cluster's
    /// temp dir (`extra`: more flags, like `--concurrency 1`). The lease TTL is 3 s so tests
    /// see a dead agent's node go down quickly.
    pub fn agent(&self, name: &str, extra: &[&str]) -> AgentProc {
        self.agent_in(name, name, extra)
    }

    /// Like [`Cluster::agent`], with the data dir (and log) named `dir_name` instead: a second
    /// agent instance that claims the same node name.
    pub fn agent_in(&self, name: &str, dir_name: &str, extra: &[&str]) -> AgentProc {
        self.agent_proc(
            name,
            dir_name,
            self.tls_flags(&format!("node-{name}")),
            extra,
        )
    }

    /// An agent started with no certificate flags (it joins with `--join-token` in `extra`, or
    /// uses what an earlier join left in its data dir).
    pub fn agent_without_cert(&self, name: &str, dir_name: &str, extra: &[&str]) -> AgentProc {
        self.agent_proc(name, dir_name, Vec::new(), extra)
    }

    fn agent_proc(
        &self,
        name: &str,
        dir_name: &str,
        mut args: Vec<String>,
        extra: &[&str],
    ) -> AgentProc {
        let dir = self.dir();
        let data_dir = dir.join(format!("agent-{dir_name}"));
        args.extend([
            "--endpoints".to_string(),
            self.endpoints().join(","),
            "agent".into(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--lease-ttl".into(),
            "3s".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = AgentProc {
            name: name.to_string(),
            log: dir.join(format!("agent-{dir_name}.log")),
            data_dir,
            args,
            child: None,
        };
        a.spawn();
        a
    }

    /// Starts `eden reactor run --name NAME` against every member (a runtime outside the
    /// servers); its log is in the cluster's temp dir.
    pub fn reactor_run(&self, name: &str) -> AgentProc {
        self.reactor_run_as(name, "admin")
    }

    /// Like [`Cluster::reactor_run`], with the certificate `WHO.crt` of a secure cluster (a
    /// runtime acts as whom its certificate names, no more).
    pub fn reactor_run_as(&self, name: &str, who: &str) -> AgentProc {
        let dir = self.dir();
        let mut a = AgentProc {
            name: name.to_string(),
            log: dir.join(format!("reactor-{name}.log")),
            data_dir: dir.join(format!("reactor-{name}")),
            args: self
                .tls_flags(who)
                .into_iter()
                .chain([
                    "--endpoints".to_string(),
                    self.endpoints().join(","),
                    "reactor".into(),
                    "run".into(),
                    "--name".into(),
                    name.into(),
                ])
                .collect(),
            child: None,
        };
        a.spawn();
        a
    }

    /// Waits until every named node is shown up (or, with `up` false, down) by `eden node ls`.
    pub async fn wait_nodes(&self, names: &[&str], up: bool) {
        wait_for(
            &format!("{names:?} to be {}", if up { "up" } else { "down" }),
            Duration::from_secs(20),
            || async {
                let o = self.eden(&["node", "ls", "-w", "json"]).await;
                let n: serde_json::Value =
                    serde_json::from_str(&o.stdout).unwrap_or(serde_json::Value::Null);
                names.iter().all(|name| {
                    n.as_array().is_some_and(|a| {
                        a.iter()
                            .any(|x| x["name"] == *name && x["up"] == serde_json::Value::Bool(up))
                    })
                })
            },
        )
        .await;
    }

    /// Runs `eden --endpoints <every member> ARGS...` and returns what it printed (as the
    /// admin, on a TLS cluster).
    pub async fn eden(&self, args: &[&str]) -> CliOutput {
        self.eden_as("admin", args).await
    }

    /// Runs `eden` with the certificate `WHO.crt` of a TLS cluster (see [`Cluster::tls_of`]).
    pub async fn eden_as(&self, who: &str, args: &[&str]) -> CliOutput {
        let run = tokio::process::Command::new(eden_bin())
            .args(self.tls_flags(who))
            .arg("--endpoints")
            .arg(self.endpoints().join(","))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let o = tokio::time::timeout(Duration::from_secs(90), run)
            .await
            .unwrap_or_else(|_| panic!("eden {args:?} did not finish within 90 s"))
            .expect("run eden");
        CliOutput {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The temp dir the cluster lives in (for files tests share with agents).
    pub fn dir(&self) -> PathBuf {
        self.members[0]
            .data_dir
            .parent()
            .expect("cluster dir")
            .to_path_buf()
    }
}

/// Fails unless `r` is etcd's "permission denied".
pub fn denied<T: std::fmt::Debug>(r: Result<T, eden_proto::client::ClientError>, what: &str) {
    match r {
        Err(e) if e.is_permission_denied() => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

/// A watch of one key by `client`: its responses (the first says created, or created and
/// canceled).
pub fn watch_key(
    client: &Arc<Client>,
    key: &str,
) -> tokio::sync::mpsc::Receiver<
    Result<eden_proto::etcdserverpb::WatchResponse, eden_proto::client::ClientError>,
> {
    client.watch(
        eden_proto::etcdserverpb::WatchCreateRequest {
            key: key.into(),
            ..Default::default()
        },
        Duration::from_secs(30),
    )
}

/// Whether a member's client URL (`http://HOST:PORT` or `https://HOST:PORT`) names `endpoint`
/// (`HOST:PORT`).
pub fn same_endpoint(url: &str, endpoint: &str) -> bool {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        == endpoint
}

/// `etcdctl ARGS` (API 3) against `eps`, as the admin on a secure cluster: success, stdout, stderr.
pub fn etcdctl(eps: &[String], args: &[&str]) -> (bool, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(eps.join(","))
        .args(tls_flags_for(eps))
        .args(args)
        .output()
        .expect("etcdctl is installed (scripts/setup.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `eden ARGS` with no cluster of the harness (local commands, or flags of its own): exit code,
/// stdout, stderr.
pub fn eden_local(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(eden_bin())
        .args(args)
        .output()
        .expect("run eden");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
