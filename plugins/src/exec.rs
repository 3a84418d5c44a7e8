//! `exec`: a command, run by `sh -c`, made idempotent by guards as in Salt's `cmd.run`:
//! `creates` (a path: run only while it does not exist), `unless` (a command: run only while it
//! fails), `onlyif` (run only while it succeeds), `refreshonly` (run only when a resource that
//! notifies it changed). Guards run while planning, so they must not change anything. A plan
//! never runs the command itself: it says "will run". A command without guards runs when its
//! state is applied, not again at every drift check.

use std::process::Stdio;

use eden_proto::plugin_v1 as pb;
use serde_json::{json, Map, Value};

use crate::{attr, computed, string, type_errors, Plan, Resource};

/// Output kept in the resource's state after it ran.
const KEPT_OUTPUT: usize = 4096;

pub struct Exec;

fn command(config: &Map<String, Value>, script: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = string(config, "cwd") {
        c.current_dir(dir);
    }
    if let Some(env) = config.get("env").and_then(Value::as_object) {
        for (k, v) in env {
            c.env(k, v.as_str().map_or_else(|| v.to_string(), str::to_string));
        }
    }
    c
}

/// Whether a guard command succeeds.
async fn succeeds(config: &Map<String, Value>, guard: &str) -> Result<bool, String> {
    command(config, guard)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .map_err(|e| format!("running {guard:?}: {e}"))
}

/// Why the command need not run, if it need not.
async fn not_needed(config: &Map<String, Value>) -> Result<Option<String>, String> {
    if let Some(path) = string(config, "creates") {
        if std::path::Path::new(path).exists() {
            return Ok(Some(format!("{path} exists")));
        }
    }
    if let Some(guard) = string(config, "unless") {
        if succeeds(config, guard).await? {
            return Ok(Some(format!("unless {guard:?} succeeded")));
        }
    }
    if let Some(guard) = string(config, "onlyif") {
        if !succeeds(config, guard).await? {
            return Ok(Some(format!("onlyif {guard:?} failed")));
        }
    }
    Ok(None)
}

fn guarded(config: &Map<String, Value>) -> bool {
    ["creates", "unless", "onlyif"]
        .iter()
        .any(|k| config.contains_key(*k))
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.len().saturating_sub(KEPT_OUTPUT);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

#[tonic::async_trait]
impl Resource for Exec {
    fn schema(&self) -> pb::ResourceSchema {
        let mut command = attr("command", "string", "what to run, by sh -c");
        command.required = true;
        command.optional = false;
        pb::ResourceSchema {
            r#type: "exec".into(),
            version: 1,
            description: "a command, with guards that make it idempotent".into(),
            attributes: vec![
                command,
                attr(
                    "creates",
                    "string",
                    "run only while this path does not exist",
                ),
                attr("unless", "string", "run only while this command fails"),
                attr("onlyif", "string", "run only while this command succeeds"),
                attr(
                    "refreshonly",
                    "bool",
                    "run only when a resource that notifies it changed",
                ),
                attr("cwd", "string", "the working directory"),
                attr("env", "map", "environment variables"),
                computed("needed", "bool", "whether the guards say it should run"),
                computed("why", "string", "why it need not run"),
                computed("exit_code", "number", "its exit code, after it ran"),
                computed("stdout", "string", "the end of its output, after it ran"),
            ],
        }
    }

    fn validate(&self, config: &Map<String, Value>) -> Vec<(String, String)> {
        let mut out = type_errors(&self.schema(), config);
        if string(config, "command").is_some_and(|c| c.trim().is_empty()) {
            out.push(("command".into(), "command is empty".into()));
        }
        out
    }

    async fn read(&self, config: &Map<String, Value>) -> Result<Value, String> {
        Ok(match not_needed(config).await? {
            Some(why) => json!({"needed": false, "why": why}),
            None => json!({"needed": true}),
        })
    }

    async fn plan(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        notified: bool,
        drift_check: bool,
    ) -> Result<Plan, String> {
        let cmd = string(config, "command").unwrap_or_default();
        let refreshonly = config.get("refreshonly") == Some(&Value::Bool(true));
        let runs = if refreshonly {
            notified
        } else if drift_check && !guarded(config) {
            false
        } else {
            prior["needed"] != Value::Bool(false)
        };
        if !runs {
            return Ok(Plan::noop(prior.clone()));
        }
        Ok(Plan {
            planned: json!({"needed": false}),
            action: pb::Action::Update,
            requires_replace: vec![],
            detail: format!("will run: {cmd}"),
        })
    }

    async fn apply(
        &self,
        config: &Map<String, Value>,
        _prior: &Value,
        _planned: &Value,
        _notified: bool,
    ) -> Result<Value, String> {
        let cmd = string(config, "command").unwrap_or_default();
        let out = command(config, cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| format!("running {cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?} {}: {}",
                out.status,
                tail(&out.stderr).trim()
            ));
        }
        Ok(json!({
            "needed": false,
            "exit_code": out.status.code(),
            "stdout": tail(&out.stdout),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn guards_decide_and_a_plan_never_runs_the_command() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("done");
        let c = config(json!({
            "command": format!("touch {}", marker.display()),
            "creates": marker.display().to_string(),
        }));
        let prior = Exec.read(&c).await.unwrap();
        let p = Exec.plan(&c, &prior, false, false).await.unwrap();
        assert_eq!(p.action, pb::Action::Update);
        assert!(p.detail.starts_with("will run"));
        assert!(!marker.exists(), "the plan ran nothing");
        Exec.apply(&c, &prior, &p.planned, false).await.unwrap();
        assert!(marker.exists());
        let again = Exec
            .plan(&c, &Exec.read(&c).await.unwrap(), false, false)
            .await
            .unwrap();
        assert_eq!(again.action, pb::Action::Noop);

        let unguarded = config(json!({"command": "true"}));
        let prior = Exec.read(&unguarded).await.unwrap();
        assert_eq!(
            Exec.plan(&unguarded, &prior, false, false)
                .await
                .unwrap()
                .action,
            pb::Action::Update
        );
        assert_eq!(
            Exec.plan(&unguarded, &prior, false, true)
                .await
                .unwrap()
                .action,
            pb::Action::Noop
        );
        let refresh = config(json!({"command": "true", "refreshonly": true}));
        assert_eq!(
            Exec.plan(&refresh, &prior, false, false)
                .await
                .unwrap()
                .action,
            pb::Action::Noop
        );
        assert_eq!(
            Exec.plan(&refresh, &prior, true, false)
                .await
                .unwrap()
                .action,
            pb::Action::Update
        );

        let failing = config(json!({"command": "echo broken >&2; exit 3"}));
        let e = Exec
            .apply(&failing, &Value::Null, &Value::Null, false)
            .await
            .unwrap_err();
        assert!(e.contains("broken") && e.contains('3'), "{e}");
    }
}
