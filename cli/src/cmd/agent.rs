//! `eden agent`: runs the agent of this machine (see `eden_agent::agent`). Settings come from
//! flags or a TOML `--config` file (flags win); endpoints from `--endpoints` / EDEN_ENDPOINTS.
//! Labels are not among them: they are the operator's (`eden node label`), so that a machine
//! cannot give itself a role (design/decisions/0006).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use eden_agent::agent::{Agent, AgentConfig};
use eden_proto::client::{Client, Tls};
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;

use crate::exit::Failure;

#[derive(Args, Debug, Default)]
pub struct AgentArgs {
    /// A TOML file with any of these settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's name [default: the hostname].
    #[arg(long)]
    pub name: Option<String>,
    /// Where the agent keeps its identity and cursor [default: ./eden-agent].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Tasks run at the same time at most [default: 4].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The node's lease: it shows as down this long after the agent dies [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// How often facts and "last seen" are refreshed [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub facts_interval: Option<Duration>,
    /// Output kept per stream of a task, in bytes [default: 65536].
    #[arg(long)]
    pub max_output_bytes: Option<usize>,
    /// Join the cluster with this token (`eden token create --node NAME`) when the data dir has
    /// no certificate yet: the agent makes its key, checks the cluster against --ca-pin, and
    /// keeps the certificate it gets in DATA_DIR/pki (ca.crt, node.crt, node.key).
    #[arg(long, requires = "ca_pin")]
    pub join_token: Option<String>,
    /// The CA's pin `eden token create` printed (sha256:HEX).
    #[arg(long)]
    pub ca_pin: Option<String>,
    /// Where resource plugins are (`eden-plugin-NAME`; each must be approved with `eden plugin
    /// lock`) [default: DATA_DIR/plugins].
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    /// Refused: labels are the operator's (`eden node label NODE KEY=VALUE`).
    #[arg(long = "label", hide = true)]
    pub labels: Vec<String>,
}

/// Why an agent takes no labels, for `--label` and a config file's `labels`.
const NO_LABELS: &str = "an agent does not set its node's labels (a machine could give itself any role); the operator does: eden node label NODE KEY=VALUE";

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    concurrency: Option<usize>,
    lease_ttl: Option<String>,
    facts_interval: Option<String>,
    max_output_bytes: Option<usize>,
    plugin_dir: Option<PathBuf>,
    /// Only to refuse it with the reason.
    labels: Option<toml::Value>,
}

fn duration(what: &str, s: Option<String>) -> Result<Option<Duration>, Failure> {
    s.map(|s| {
        humantime::parse_duration(&s)
            .map_err(|e| Failure::usage(format!("bad {what} {s:?} in the config file: {e}")))
    })
    .transpose()
}

pub fn resolve(a: &AgentArgs) -> Result<AgentConfig, Failure> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?
        }
        None => FileConfig::default(),
    };
    if !a.labels.is_empty() {
        return Err(Failure::usage(format!("--label: {NO_LABELS}")));
    }
    if file.labels.is_some() {
        return Err(Failure::usage(format!(
            "labels in the config file: {NO_LABELS}"
        )));
    }
    let name = a
        .name
        .clone()
        .or(file.name)
        .unwrap_or_else(eden_agent::facts::hostname);
    let data_dir = a
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("eden-agent"));
    let mut c = AgentConfig::new(&name, data_dir);
    if let Some(v) = a.concurrency.or(file.concurrency) {
        c.concurrency = v.max(1);
    }
    if let Some(v) = a.lease_ttl.or(duration("lease-ttl", file.lease_ttl)?) {
        c.lease_ttl = v.max(Duration::from_secs(2));
    }
    if let Some(v) = a
        .facts_interval
        .or(duration("facts-interval", file.facts_interval)?)
    {
        c.facts_interval = v.max(Duration::from_secs(1));
    }
    if let Some(v) = a.max_output_bytes.or(file.max_output_bytes) {
        c.max_output_bytes = v;
    }
    c.plugin_dir = a.plugin_dir.clone().or(file.plugin_dir);
    // The built-in plugins are this binary (`eden plugin serve NAME`).
    c.builtin_plugins = std::env::current_exe().ok();
    c.builtins = eden_plugins::BUILTINS
        .iter()
        .map(|s| s.to_string())
        .collect();
    Ok(c)
}

/// The agent's own certificate: DATA_DIR/pki/node.crt from an earlier join, or a new one from
/// `--join-token`; None when it has neither (the command's flags or config file decide).
pub async fn own_tls(a: &AgentArgs, endpoints: &[String]) -> Result<Option<Tls>, Failure> {
    let cfg = resolve(a)?;
    let pki = cfg.data_dir.join("pki");
    let (ca, cert, key) = (
        pki.join("ca.crt"),
        pki.join("node.crt"),
        pki.join("node.key"),
    );
    if cert.exists() {
        return Tls::from_files(&ca, &cert, &key)
            .map(Some)
            .map_err(Failure::usage);
    }
    let (Some(token), Some(pin)) = (&a.join_token, &a.ca_pin) else {
        return Ok(None);
    };
    let who = eden_proto::pki::Identity::Node(cfg.name.clone());
    let mut why = String::from("no endpoint");
    for ep in endpoints {
        match eden_proto::joining::join(ep, token, pin, &who).await {
            Ok(j) => {
                std::fs::create_dir_all(&pki)
                    .and_then(|_| {
                        std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o700))
                    })
                    .map_err(|e| Failure::usage(format!("{}: {e}", pki.display())))?;
                write_new(&ca, &j.ca_pem, 0o644)?;
                write_new(&key, &j.key_pem, 0o600)?;
                write_new(&cert, &j.cert_pem, 0o644)?;
                tracing::info!(identity = %who, "joined: certificate in {}", cert.display());
                return Tls::from_files(&ca, &cert, &key)
                    .map(Some)
                    .map_err(Failure::usage);
            }
            // A refusal is the cluster's answer; only an unreachable endpoint is worth the next.
            Err(e) if !e.starts_with("connecting to") && !e.starts_with("asking") => {
                return Err(Failure {
                    code: crate::exit::REFUSED,
                    message: format!("joining as {who}: {e}"),
                    quiet: false,
                })
            }
            Err(e) => why = e,
        }
    }
    Err(Failure {
        code: crate::exit::UNAVAILABLE,
        message: format!("joining as {who}: {why}"),
        quiet: false,
    })
}

/// Writes a PEM file whole (the agent's placing: a temporary file renamed over it).
fn write_new(path: &std::path::Path, text: &str, mode: u32) -> Result<(), Failure> {
    eden_agent::place::write_atomically(path, text.as_bytes(), mode, None, None)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// Runs the agent; `own_cert`: its certificate is its own (DATA_DIR/pki), which it renews.
/// `files`: the certificate the command presents (its flags or config file), if not its own.
pub async fn run(
    client: &Arc<Client>,
    a: AgentArgs,
    own_cert: bool,
    files: Option<eden_proto::renewal::Files>,
) -> Result<(), Failure> {
    let mut cfg = resolve(&a)?;
    // A task's `eden` commands act as this node.
    let abs = |p: &std::path::Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let identity = match own_cert {
        true => Some(eden_proto::renewal::Files::in_dir(
            &cfg.data_dir.join("pki"),
            "node",
        )),
        false => files,
    };
    cfg.task_env
        .insert("EDEN_ENDPOINTS".into(), client.endpoints().join(","));
    if let Some(f) = identity {
        cfg.task_env.insert("EDEN_CACERT".into(), abs(&f.ca));
        cfg.task_env.insert("EDEN_CERT".into(), abs(&f.cert));
        cfg.task_env.insert("EDEN_KEY".into(), abs(&f.key));
    }
    cfg.task_env
        .insert("EDEN_SEAL_KEY".into(), abs(&cfg.data_dir.join("seal.key")));
    // Its certificate renewed two thirds into its life, the client presenting the new one.
    let renewal = own_cert.then(|| {
        let files = eden_proto::renewal::Files::in_dir(&cfg.data_dir.join("pki"), "node");
        tokio::spawn(eden_proto::renewal::keep_renewed(
            client.clone(),
            files,
            |_| (),
        ))
    });
    let agent = Agent::start(cfg, client.clone()).await?;
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => tracing::info!("SIGTERM: stopping"),
        }
    };
    agent.run(stop).await?;
    if let Some(r) = renewal {
        r.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "name = \"web1\"\nconcurrency = 8\nlease-ttl = \"20s\"\n",
        )
        .unwrap();
        let a = AgentArgs {
            config: Some(file.clone()),
            concurrency: Some(2),
            ..Default::default()
        };
        let c = resolve(&a).unwrap();
        assert_eq!(c.name, "web1");
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.lease_ttl, Duration::from_secs(20));
        std::fs::write(&file, "nmae = \"x\"\n").unwrap();
        let e = resolve(&a).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }

    #[test]
    fn an_agent_takes_no_labels() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "[labels]\nrole = \"master\"\n").unwrap();
        let a = AgentArgs {
            config: Some(file),
            ..Default::default()
        };
        let e = resolve(&a).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE_OR_SETUP);
        assert!(e.message.contains("eden node label"), "{}", e.message);
        let a = AgentArgs {
            labels: vec!["role=master".into()],
            ..Default::default()
        };
        let e = resolve(&a).unwrap_err();
        assert!(e.message.starts_with("--label: "), "{}", e.message);
    }
}
