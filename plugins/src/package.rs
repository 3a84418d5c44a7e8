//! `package`: a Debian package installed (at a version, if given) or absent, through apt.

use eden_proto::plugin_v1 as pb;
use serde_json::{json, Map, Value};

use crate::{attr, string, type_errors, Plan, Resource};

pub struct Package;

/// Debian's rule for package names.
fn valid_name(n: &str) -> bool {
    n.len() >= 2
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c))
}

/// The installed version, if installed.
async fn installed(name: &str) -> Result<Option<String>, String> {
    let out = tokio::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}\t${Version}", name])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("dpkg-query: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(match text.split_once('\t') {
        Some((status, version)) if out.status.success() && status == "install ok installed" => {
            Some(version.to_string())
        }
        _ => None,
    })
}

async fn apt(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("apt-get: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    Err(format!("apt-get {}: {} {last}", args.join(" "), out.status))
}

#[tonic::async_trait]
impl Resource for Package {
    fn schema(&self) -> pb::ResourceSchema {
        let mut name = attr("name", "string", "the Debian package");
        name.required = true;
        name.optional = false;
        name.force_new = true;
        pb::ResourceSchema {
            r#type: "package".into(),
            version: 1,
            description: "a Debian package installed or absent (apt)".into(),
            attributes: vec![
                name,
                attr("state", "string", "installed (default) or absent"),
                attr("version", "string", "this version exactly (default: any)"),
            ],
        }
    }

    fn validate(&self, config: &Map<String, Value>) -> Vec<(String, String)> {
        let mut out = type_errors(&self.schema(), config);
        if let Some(n) = string(config, "name") {
            if !valid_name(n) {
                out.push((
                    "name".into(),
                    format!("name {n:?}: not a Debian package name"),
                ));
            }
        }
        if let Some(v) = string(config, "version") {
            if !valid_version(v) {
                out.push((
                    "version".into(),
                    format!("version {v:?}: not a Debian version"),
                ));
            }
        }
        if let Some(s) = string(config, "state") {
            if s != "installed" && s != "absent" {
                out.push(("state".into(), format!("state {s:?}: installed or absent")));
            }
        }
        out
    }

    async fn read(&self, config: &Map<String, Value>) -> Result<Value, String> {
        let name = string(config, "name").unwrap_or_default();
        Ok(match installed(name).await? {
            Some(v) => json!({"name": name, "state": "installed", "version": v}),
            None => Value::Null,
        })
    }

    async fn plan(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        _notified: bool,
        _drift_check: bool,
    ) -> Result<Plan, String> {
        let name = string(config, "name").unwrap_or_default();
        if string(config, "state") == Some("absent") {
            return Ok(Plan::absent(prior, || {
                format!(
                    "will remove {name} {}",
                    prior["version"].as_str().unwrap_or("")
                )
            }));
        }
        let want = string(config, "version");
        let planned = json!({"name": name, "state": "installed", "version": want.map_or(prior["version"].clone(), |v| json!(v))});
        if prior.is_null() {
            return Ok(Plan {
                detail: format!(
                    "will install {name}{}",
                    want.map_or(String::new(), |v| format!(" {v}"))
                ),
                planned,
                action: pb::Action::Create,
                requires_replace: vec![],
            });
        }
        match want {
            Some(v) if prior["version"] != v => Ok(Plan {
                detail: format!(
                    "will install {name} {v} (now {})",
                    prior["version"].as_str().unwrap_or("")
                ),
                planned,
                action: pb::Action::Update,
                requires_replace: vec![],
            }),
            _ => Ok(Plan::noop(prior.clone())),
        }
    }

    async fn apply(
        &self,
        config: &Map<String, Value>,
        _prior: &Value,
        planned: &Value,
        _notified: bool,
    ) -> Result<Value, String> {
        let name = string(config, "name").unwrap_or_default();
        if planned.is_null() {
            apt(&["remove", "-y", "-q", name]).await?;
        } else {
            let target = match string(config, "version") {
                Some(v) => format!("{name}={v}"),
                None => name.to_string(),
            };
            apt(&["install", "-y", "-q", "--no-install-recommends", &target]).await?;
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
    async fn an_installed_package_plans_no_change_and_a_missing_one_plans_its_install() {
        // dpkg itself is on every Debian machine.
        let dpkg = config(json!({"name": "dpkg"}));
        let prior = Package.read(&dpkg).await.unwrap();
        assert_eq!(prior["state"], "installed", "{prior}");
        assert_eq!(
            Package
                .plan(&dpkg, &prior, false, false)
                .await
                .unwrap()
                .action,
            pb::Action::Noop
        );
        let gone = config(json!({"name": "eden-no-such-package"}));
        let prior = Package.read(&gone).await.unwrap();
        assert!(prior.is_null());
        let p = Package.plan(&gone, &prior, false, false).await.unwrap();
        assert_eq!(
            (p.action, p.detail.as_str()),
            (pb::Action::Create, "will install eden-no-such-package")
        );
        let bad = Package.validate(&config(
            json!({"name": "Bad Name", "version": "1 2", "state": "latest"}),
        ));
        assert_eq!(bad.len(), 3);
    }
}
