//! Starting and talking to resource plugins (design/plugins.md). A plugin is an executable named
//! `eden-plugin-NAME` in the agent's plugin directory, or one of the built-ins (served by the
//! eden binary itself, `eden plugin serve NAME`). Before a plugin from the directory starts, its
//! SHA-256 must be the one an operator locked in the cluster (`eden plugin lock`); a plugin runs
//! in its own process group, dies with the agent (PR_SET_PDEATHSIG), prints go-plugin's
//! handshake within the start timeout and serves gRPC on a Unix socket in a directory only the
//! agent's user can enter. Its stderr goes to the agent's log. A call past its timeout, or a
//! plugin that dies, stops that plugin; the next call starts it again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eden_proto::health_v1::health_client::HealthClient;
use eden_proto::health_v1::HealthCheckRequest;
use eden_proto::model::files::sha256_hex;
use eden_proto::model::states::PluginLock;
use eden_proto::plugin;
use eden_proto::plugin_v1 as pb;
use eden_proto::plugin_v1::provider_client::ProviderClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::{Channel, Endpoint, Uri};

/// The file name prefix of a plugin in the plugin directory.
pub const PREFIX: &str = "eden-plugin-";
/// How long a plugin may take to print its handshake and answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a plugin's stderr kept to explain why it failed.
const STDERR_TAIL: usize = 20;

/// Checks a plugin name: lowercase letters and digits (a resource type's prefix before `_`).
pub fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?}: lowercase letters and digits only"
        ))
    }
}

/// A plugin the agent can start.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub name: String,
    /// The executable (the eden binary for a built-in).
    pub path: PathBuf,
    pub builtin: bool,
}

/// The plugins in `dir` (files named `eden-plugin-NAME`), by name.
pub fn scan(dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<Found> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_prefix(PREFIX)?.to_string();
            check_name(&name).ok()?;
            Some(Found {
                name,
                path: e.path(),
                builtin: false,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Hex SHA-256 of a file.
pub fn checksum(path: &Path) -> Result<String, String> {
    std::fs::read(path)
        .map(|b| sha256_hex(&b))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// One running plugin.
pub struct Plugin {
    pub name: String,
    pub schema: pb::GetSchemaResponse,
    /// The connection is TLS pinned both ways (the plugin answered the AutoMTLS offer).
    pub mtls: bool,
    client: ProviderClient<Channel>,
    child: Mutex<tokio::process::Child>,
    pid: Option<u32>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// The executable's size and modification time when it started (a changed binary is
    /// checked against its lock again).
    stamp: Option<(u64, std::time::SystemTime)>,
}

fn stamp_of(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: killpg only sends a signal; the group is the plugin's own (process_group(0)).
            unsafe {
                libc::killpg(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

fn stderr_tail(lines: &Mutex<VecDeque<String>>) -> String {
    let l = lines.lock().unwrap();
    if l.is_empty() {
        String::new()
    } else {
        format!(
            "; its stderr ended: {}",
            l.iter().cloned().collect::<Vec<_>>().join(" | ")
        )
    }
}

impl Plugin {
    /// Starts `program args` as plugin `name` and connects to it.
    pub async fn start(
        name: &str,
        program: &Path,
        args: &[String],
        socket_dir: &Path,
        timeout: Duration,
    ) -> Result<Plugin, String> {
        // go-plugin's AutoMTLS: our throw-away certificate; a plugin that supports it answers
        // with its own, and the connection is TLS pinned both ways.
        let own =
            eden_proto::plugin_tls::AutoCert::new().map_err(|e| format!("plugin {name}: {e}"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env(plugin::MAGIC_COOKIE_KEY, plugin::MAGIC_COOKIE_VALUE)
            .env(plugin::CLIENT_CERT_KEY, &own.pem)
            .env(
                plugin::PROTOCOL_VERSIONS_KEY,
                plugin::APP_PROTOCOL_VERSION.to_string(),
            )
            .env(plugin::SOCKET_DIR_KEY, socket_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the plugin when
        // the agent's thread that started it ends.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("plugin {name}: starting {}: {e}", program.display()))?;
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let (tail, name) = (stderr.clone(), name.to_string());
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(plugin = %name, "{line}");
                    let mut t = tail.lock().unwrap();
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        let kill = |pid: Option<u32>| {
            if let Some(pid) = pid {
                // SAFETY: as in Drop.
                unsafe {
                    libc::killpg(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        };
        let line = match tokio::time::timeout(timeout, out.next_line()).await {
            Err(_) => {
                kill(pid);
                return Err(format!(
                    "plugin {name}: no handshake within {timeout:?}{}",
                    stderr_tail(&stderr)
                ));
            }
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or("no exit status".to_string(), |s| s.to_string());
                // Let the stderr reader catch up with what was written before the exit.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(format!(
                    "plugin {name} exited before its handshake ({status}){}",
                    stderr_tail(&stderr)
                ));
            }
        };
        let hs = match plugin::parse_handshake(&line) {
            Ok(h) => h,
            Err(e) => {
                kill(pid);
                return Err(format!("plugin {name} {e}"));
            }
        };
        // Anything it prints later goes to the log.
        {
            let name = name.to_string();
            tokio::spawn(async move {
                while let Ok(Some(line)) = out.next_line().await {
                    tracing::warn!(plugin = %name, "printed on stdout: {line}");
                }
            });
        }
        let connected = tokio::time::timeout(timeout, connect(&hs, &own)).await;
        let channel = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                kill(pid);
                return Err(format!("plugin {name}: connecting to {}: {e}", hs.address));
            }
            Err(_) => {
                kill(pid);
                return Err(format!(
                    "plugin {name}: no connection to {} within {timeout:?}",
                    hs.address
                ));
            }
        };
        let ready = async {
            HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: "plugin".into(),
                })
                .await
                .map_err(|s| format!("health check: {}", s.message()))?;
            ProviderClient::new(channel.clone())
                .get_schema(pb::GetSchemaRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("schema: {}", s.message()))
        };
        let schema = match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                kill(pid);
                return Err(format!("plugin {name}: {e}"));
            }
            Err(_) => {
                kill(pid);
                return Err(format!(
                    "plugin {name}: no answer to its health check within {timeout:?}"
                ));
            }
        };
        Ok(Plugin {
            name: name.to_string(),
            schema,
            mtls: hs.server_cert.is_some(),
            client: ProviderClient::new(channel),
            child: Mutex::new(child),
            pid,
            stderr,
            stamp: stamp_of(program),
        })
    }

    /// Whether its process still runs.
    pub fn alive(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// The schema of resource type `type_`, if this plugin provides it.
    pub fn resource(&self, type_: &str) -> Option<&pb::ResourceSchema> {
        self.schema.resources.iter().find(|r| r.r#type == type_)
    }

    /// Why a call failed, in words: the plugin died, or it answered with an error.
    fn failure(&self, what: &str, s: tonic::Status) -> CallError {
        // A dead plugin: its exit status and last words.
        for _ in 0..20 {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return CallError::Died(format!(
                    "plugin {} died during {what} ({status}){}",
                    self.name,
                    stderr_tail(&self.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        CallError::Failed(format!("plugin {}: {what}: {}", self.name, s.message()))
    }

    async fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(timeout, f).await {
            Err(_) => Err(CallError::TimedOut(format!(
                "plugin {}: {what} took longer than {timeout:?}; the plugin was stopped",
                self.name
            ))),
            Ok(Err(s)) => Err(self.failure(what, s)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    pub async fn validate(
        &self,
        req: pb::ValidateRequest,
        timeout: Duration,
    ) -> Result<pb::ValidateResponse, CallError> {
        let what = format!("validating {}", req.r#type);
        self.call(&what, timeout, self.client.clone().validate_resource(req))
            .await
    }

    pub async fn read(
        &self,
        req: pb::ReadRequest,
        timeout: Duration,
    ) -> Result<pb::ReadResponse, CallError> {
        let what = format!("reading {}.{}", req.r#type, req.name);
        self.call(&what, timeout, self.client.clone().read_resource(req))
            .await
    }

    pub async fn plan(
        &self,
        req: pb::PlanRequest,
        timeout: Duration,
    ) -> Result<pb::PlanResponse, CallError> {
        let what = format!("planning {}.{}", req.r#type, req.name);
        self.call(&what, timeout, self.client.clone().plan_resource(req))
            .await
    }

    /// A stream of changes to one resource (the plugin's WatchResource); Err(status) with code
    /// UNIMPLEMENTED when the plugin cannot watch it. The stream holds its own connection, not
    /// the plugin: a stopped plugin ends it.
    pub async fn watch(
        &self,
        req: pb::WatchRequest,
        timeout: Duration,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, tonic::Status> {
        match tokio::time::timeout(timeout, self.client.clone().watch_resource(req)).await {
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer")),
            Ok(r) => r.map(|r| r.into_inner()),
        }
    }

    pub async fn apply(
        &self,
        req: pb::ApplyRequest,
        timeout: Duration,
    ) -> Result<pb::ApplyResponse, CallError> {
        let what = format!("applying {}.{}", req.r#type, req.name);
        self.call(&what, timeout, self.client.clone().apply_resource(req))
            .await
    }
}

/// A failed plugin call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The plugin answered with an error.
    Failed(String),
    /// It took too long (the plugin is stopped).
    TimedOut(String),
    /// The plugin's process ended.
    Died(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Failed(s) | CallError::TimedOut(s) | CallError::Died(s) => f.write_str(s),
        }
    }
}

async fn connect(
    hs: &plugin::Handshake,
    own: &eden_proto::plugin_tls::AutoCert,
) -> Result<Channel, String> {
    match (hs.network.as_str(), &hs.server_cert) {
        ("unix", Some(server)) => {
            let path = PathBuf::from(&hs.address);
            let config = eden_proto::plugin_tls::client_config(own, server)?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let dial = tower::service_fn(move |_: Uri| {
                let (path, connector) = (path.clone(), connector.clone());
                async move {
                    let sock = tokio::net::UnixStream::connect(path).await?;
                    let name =
                        rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
                    let tls = connector.connect(name, sock).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            });
            Endpoint::from_static("http://plugin.invalid")
                .connect_with_connector(dial)
                .await
                .map_err(|e| format!("{e} ({})", source_chain(&e)))
        }
        ("unix", None) => {
            let path = PathBuf::from(&hs.address);
            // The URI is ignored: the connector dials the plugin's socket.
            let dial = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            });
            Endpoint::from_static("http://plugin.invalid")
                .connect_with_connector(dial)
                .await
                .map_err(|e| e.to_string())
        }
        (_, Some(_)) => Err("AutoMTLS over TCP is not supported".into()),
        _ => Endpoint::from_shared(format!("http://{}", hs.address))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Every cause of an error, for the log.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = vec![];
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push(c.to_string());
        cur = c.source();
    }
    out.join(": ")
}

/// Where plugins come from and which ones run.
pub struct Host {
    /// The plugin directory.
    dir: Option<PathBuf>,
    /// The eden binary, which serves the built-ins.
    builtin: Option<PathBuf>,
    builtins: Vec<String>,
    socket_dir: PathBuf,
    start_timeout: Duration,
    running: tokio::sync::Mutex<HashMap<String, Arc<Plugin>>>,
    /// The approved checksums, as last read from the cluster.
    locks: Mutex<BTreeMap<String, PluginLock>>,
}

impl Host {
    /// `socket_dir` is created with mode 0700.
    pub fn new(
        dir: Option<PathBuf>,
        builtin: Option<PathBuf>,
        builtins: &[&str],
        socket_dir: PathBuf,
    ) -> Result<Host, String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&socket_dir)
            .and_then(|_| {
                std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| format!("{}: {e}", socket_dir.display()))?;
        Ok(Host {
            dir,
            builtin,
            builtins: builtins.iter().map(|s| s.to_string()).collect(),
            socket_dir,
            start_timeout: START_TIMEOUT,
            running: Default::default(),
            locks: Default::default(),
        })
    }

    /// The approved checksums as the cluster has them now; a running plugin whose lock changed
    /// or was withdrawn is stopped (the next call checks it again).
    pub async fn set_locks(&self, locks: BTreeMap<String, PluginLock>) {
        let changed: Vec<String> = {
            let mut old = self.locks.lock().unwrap();
            let changed = old
                .iter()
                .filter(|(n, l)| locks.get(*n).map(|x| &x.sha256) != Some(&l.sha256))
                .map(|(n, _)| n.clone())
                .collect();
            *old = locks;
            changed
        };
        let mut running = self.running.lock().await;
        for n in changed {
            if running.remove(&n).is_some() {
                tracing::info!(plugin = %n, "its lock changed: stopped");
            }
        }
    }

    /// Every plugin this agent can start: the built-ins, then the directory's.
    pub fn discover(&self) -> Vec<Found> {
        let mut out: Vec<Found> = match &self.builtin {
            Some(b) => self
                .builtins
                .iter()
                .map(|n| Found {
                    name: n.clone(),
                    path: b.clone(),
                    builtin: true,
                })
                .collect(),
            None => vec![],
        };
        if let Some(dir) = &self.dir {
            for f in scan(dir) {
                if out.iter().any(|o| o.name == f.name) {
                    tracing::warn!(plugin = %f.name, path = %f.path.display(), "ignored: a built-in plugin has that name");
                } else {
                    out.push(f);
                }
            }
        }
        out
    }

    /// Plugin `name`, started if it does not run. Err: why it cannot (no such plugin, not
    /// locked, its checksum differs, it failed to start).
    pub async fn get(&self, name: &str) -> Result<Arc<Plugin>, String> {
        let mut running = self.running.lock().await;
        let found = self.discover().into_iter().find(|f| f.name == name);
        if let Some(p) = running.get(name) {
            // Still the binary it started from (a replaced one is checked again below).
            let same = found
                .as_ref()
                .is_some_and(|f| f.builtin || stamp_of(&f.path) == p.stamp);
            if p.alive() && same {
                return Ok(p.clone());
            }
            running.remove(name);
        }
        let Some(found) = found else {
            return Err(format!(
                "no plugin {name} on this node (built-ins: {}; others go in {} as {PREFIX}{name})",
                self.builtins.join(", "),
                self.dir
                    .as_ref()
                    .map_or("the plugin directory".to_string(), |d| d
                        .display()
                        .to_string())
            ));
        };
        let args = if found.builtin {
            vec!["plugin".into(), "serve".into(), name.to_string()]
        } else {
            self.check_lock(&found)?;
            vec![]
        };
        let p = Arc::new(
            Plugin::start(
                name,
                &found.path,
                &args,
                &self.socket_dir,
                self.start_timeout,
            )
            .await?,
        );
        tracing::info!(plugin = %name, version = %p.schema.version, mtls = p.mtls, "plugin started");
        running.insert(name.to_string(), p.clone());
        Ok(p)
    }

    fn check_lock(&self, found: &Found) -> Result<(), String> {
        let sum = checksum(&found.path)?;
        match self.locks.lock().unwrap().get(&found.name) {
            None => Err(format!(
                "plugin {} ({}, sha256 {sum}) is not approved: run `eden plugin lock {}` with \
                 the binary you approve",
                found.name,
                found.path.display(),
                found.path.display()
            )),
            Some(l) if l.sha256 != sum => Err(format!(
                "plugin {}: {} has sha256 {sum}, not the approved {} (locked by {}); refusing \
                 to run it",
                found.name,
                found.path.display(),
                l.sha256,
                l.by
            )),
            Some(_) => Ok(()),
        }
    }

    /// Stops plugin `name` (after a timeout; the next call starts it again).
    pub async fn stop(&self, name: &str) {
        self.running.lock().await.remove(name);
    }

    /// Stops every plugin.
    pub async fn stop_all(&self) {
        self.running.lock().await.clear();
    }
}
