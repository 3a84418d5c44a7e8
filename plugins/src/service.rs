//! `service`: a service running or stopped, enabled or disabled, restarted when a resource that
//! notifies it changed. Two service managers: systemd (`systemctl`), and runit (`sv`, for
//! machines and containers without systemd): a runit service is defined in `available/NAME`
//! (Debian: /etc/sv) and enabled by a link in the directory `runsvdir` watches (Debian:
//! /etc/service).

use std::path::{Path, PathBuf};
use std::time::Duration;

use eden_proto::plugin_v1 as pb;
use serde_json::{json, Map, Value};

use crate::{attr, string, type_errors, Plan, Resource};

/// How long runsvdir may take to start supervising a service just enabled (it looks every 5 s).
const RUNIT_PICKUP: Duration = Duration::from_secs(15);

pub struct Service;

#[derive(Debug, Clone, PartialEq)]
enum Manager {
    Systemd,
    Runit {
        enabled: PathBuf,
        available: PathBuf,
    },
}

fn manager(config: &Map<String, Value>) -> Result<Manager, String> {
    let runit = || Manager::Runit {
        enabled: PathBuf::from(
            string(config, "runit_dir")
                .map(str::to_string)
                .or_else(|| std::env::var("SVDIR").ok())
                .unwrap_or_else(|| "/etc/service".into()),
        ),
        available: PathBuf::from(string(config, "runit_available").unwrap_or("/etc/sv")),
    };
    match string(config, "manager") {
        Some("systemd") => Ok(Manager::Systemd),
        Some("runit") => Ok(runit()),
        Some(other) => Err(format!("manager {other:?}: systemd or runit")),
        // systemd when it runs this machine, else runit.
        None if Path::new("/run/systemd/system").exists() => Ok(Manager::Systemd),
        None => Ok(runit()),
    }
}

async fn run(program: &str, args: &[&str]) -> Result<(bool, String), String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text.trim().to_string()))
}

async fn must(program: &str, args: &[&str]) -> Result<(), String> {
    match run(program, args).await? {
        (true, _) => Ok(()),
        (false, text) => Err(format!("{program} {}: {text}", args.join(" "))),
    }
}

/// Whether it runs and whether it is enabled.
async fn status(m: &Manager, name: &str) -> Result<(bool, bool), String> {
    match m {
        Manager::Systemd => {
            let (active, _) = run("systemctl", &["is-active", "--quiet", name]).await?;
            let (enabled, _) = run("systemctl", &["is-enabled", "--quiet", name]).await?;
            Ok((active, enabled))
        }
        Manager::Runit { enabled, available } => {
            if !available.join(name).is_dir() {
                return Err(format!(
                    "no runit service {name} (no {})",
                    available.join(name).display()
                ));
            }
            let link = enabled.join(name);
            let on = link.exists();
            let running = on
                && link.join("supervise/ok").exists()
                && runit_running(&run("sv", &["status", &link.display().to_string()]).await?.1);
            Ok((running, on))
        }
    }
}

/// Whether `sv status` says the service runs or is on its way there: "down: ..., want up" is a
/// restart in progress, "run: ..., want down" a stop in progress.
fn runit_running(status: &str) -> bool {
    if status.contains("want up") {
        return true;
    }
    status.starts_with("run:") && !status.contains("want down")
}

/// Waits until runsvdir supervises the service behind `link`.
async fn supervised(link: &Path) -> Result<(), String> {
    let end = tokio::time::Instant::now() + RUNIT_PICKUP;
    while !link.join("supervise/ok").exists() {
        if tokio::time::Instant::now() > end {
            return Err(format!(
                "runsvdir did not pick up {} within {RUNIT_PICKUP:?} (does runsvdir watch {}?)",
                link.display(),
                link.parent()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tonic::async_trait]
impl Resource for Service {
    fn schema(&self) -> pb::ResourceSchema {
        let mut name = attr(
            "name",
            "string",
            "the service (a systemd unit or a runit service)",
        );
        name.required = true;
        name.optional = false;
        name.force_new = true;
        pb::ResourceSchema {
            r#type: "service".into(),
            version: 1,
            description: "a service running or stopped, enabled or not, restarted when notified"
                .into(),
            attributes: vec![
                name,
                attr("state", "string", "running (default) or stopped"),
                attr("enabled", "bool", "started at boot (default: as it is)"),
                attr(
                    "manager",
                    "string",
                    "systemd or runit (default: systemd when it runs the machine)",
                ),
                attr(
                    "runit_dir",
                    "string",
                    "runit: the directory runsvdir watches (default $SVDIR, else /etc/service)",
                ),
                attr(
                    "runit_available",
                    "string",
                    "runit: where services are defined (default /etc/sv)",
                ),
            ],
        }
    }

    fn validate(&self, config: &Map<String, Value>) -> Vec<(String, String)> {
        let mut out = type_errors(&self.schema(), config);
        if let Some(s) = string(config, "state") {
            if s != "running" && s != "stopped" {
                out.push(("state".into(), format!("state {s:?}: running or stopped")));
            }
        }
        if let Some(n) = string(config, "name") {
            if n.is_empty() || n.contains('/') || n.starts_with('.') {
                out.push(("name".into(), format!("name {n:?}: not a service name")));
            }
        }
        if let Err(e) = manager(config) {
            out.push(("manager".into(), e));
        }
        out
    }

    async fn read(&self, config: &Map<String, Value>) -> Result<Value, String> {
        let name = string(config, "name").unwrap_or_default();
        let (running, enabled) = status(&manager(config)?, name).await?;
        Ok(json!({
            "name": name,
            "state": if running { "running" } else { "stopped" },
            "enabled": enabled,
        }))
    }

    async fn plan(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        notified: bool,
        _drift_check: bool,
    ) -> Result<Plan, String> {
        let mut planned = prior.clone();
        let state = string(config, "state").unwrap_or("running");
        planned["state"] = json!(state);
        if let Some(e) = config.get("enabled") {
            planned["enabled"] = e.clone();
        }
        let restart = notified && state == "running" && prior["state"] == "running";
        if planned == *prior && !restart {
            return Ok(Plan::noop(prior.clone()));
        }
        let mut words = vec![];
        if planned["enabled"] != prior["enabled"] {
            words.push(if planned["enabled"] == true {
                "enable"
            } else {
                "disable"
            });
        }
        if planned["state"] != prior["state"] {
            words.push(if state == "running" { "start" } else { "stop" });
        }
        if restart {
            words.push("restart (notified)");
        }
        Ok(Plan {
            planned,
            action: pb::Action::Update,
            requires_replace: vec![],
            detail: format!("will {}", words.join(", ")),
        })
    }

    async fn apply(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        planned: &Value,
        notified: bool,
    ) -> Result<Value, String> {
        let name = string(config, "name").unwrap_or_default();
        let m = manager(config)?;
        let enable = planned["enabled"] != prior["enabled"];
        let running = planned["state"] == "running";
        let restart = notified && running && prior["state"] == "running";
        match &m {
            Manager::Systemd => {
                if enable {
                    let verb = if planned["enabled"] == true {
                        "enable"
                    } else {
                        "disable"
                    };
                    must("systemctl", &[verb, name]).await?;
                }
                if restart {
                    must("systemctl", &["restart", name]).await?;
                } else if planned["state"] != prior["state"] {
                    must("systemctl", &[if running { "start" } else { "stop" }, name]).await?;
                }
            }
            Manager::Runit { enabled, available } => {
                let link = enabled.join(name);
                if enable && planned["enabled"] == true {
                    std::os::unix::fs::symlink(available.join(name), &link)
                        .map_err(|e| format!("enabling {name}: {e}"))?;
                }
                if enable && planned["enabled"] == false {
                    if link.exists() {
                        let _ = run("sv", &["down", &link.display().to_string()]).await;
                    }
                    std::fs::remove_file(&link).map_err(|e| format!("disabling {name}: {e}"))?;
                } else if link.exists() {
                    supervised(&link).await?;
                    let l = link.display().to_string();
                    if restart {
                        must("sv", &["-w", "10", "restart", &l]).await?;
                    } else if enable || planned["state"] != prior["state"] {
                        // Just enabled, runsv starts it: bring it to the state asked for.
                        must("sv", &["-w", "10", if running { "up" } else { "down" }, &l]).await?;
                    }
                } else if running {
                    return Err(format!(
                        "{name} is not enabled (no {}): runit runs enabled services only",
                        link.display()
                    ));
                }
            }
        }
        self.read(config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn plans_say_what_changes_and_a_notified_running_service_restarts() {
        let c = config(json!({"name": "web", "state": "running", "enabled": true}));
        let stopped = json!({"name": "web", "state": "stopped", "enabled": false});
        let p = Service.plan(&c, &stopped, false, false).await.unwrap();
        assert_eq!(p.action, pb::Action::Update);
        assert_eq!(p.detail, "will enable, start");
        let running = json!({"name": "web", "state": "running", "enabled": true});
        assert_eq!(
            Service
                .plan(&c, &running, false, false)
                .await
                .unwrap()
                .action,
            pb::Action::Noop
        );
        let p = Service.plan(&c, &running, true, false).await.unwrap();
        assert_eq!(p.detail, "will restart (notified)");
        // Stopped and notified: started, not restarted.
        let p = Service.plan(&c, &stopped, true, false).await.unwrap();
        assert_eq!(p.detail, "will enable, start");
        assert!(
            Service
                .validate(&config(json!({"name": "a/b", "state": "up"})))
                .len()
                == 2
        );
    }
}
