//! `file`: a file's content, mode, owner and group, or its absence. Written whole (a temporary
//! file in the same directory, synced, renamed over the target: nothing ever sees half of it);
//! the plan shows a unified diff of the content. The content is `content` (text) or
//! `content_base64` (any bytes: what the agent puts for a state's `source`, an eden file).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use eden_agent::place;
use eden_proto::plugin_v1 as pb;
use serde_json::{json, Map, Value};

use crate::{attr, computed, string, type_errors, Plan, Resource};

/// Content larger than this is compared by hash only (not shown, not diffed).
const MAX_SHOWN: usize = 1 << 20;

pub struct File;

fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    unsafe {
        let p = libc::getpwuid(uid);
        if p.is_null() {
            return uid.to_string();
        }
        std::ffi::CStr::from_ptr((*p).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn group_name(gid: u32) -> String {
    // SAFETY: getgrgid returns a pointer into static storage or null; read at once.
    unsafe {
        let p = libc::getgrgid(gid);
        if p.is_null() {
            return gid.to_string();
        }
        std::ffi::CStr::from_ptr((*p).gr_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn mode_of(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode {s:?}: give octal permission bits, e.g. \"0644\""))
}

fn show_mode(m: u32) -> String {
    format!("{m:04o}")
}

/// The file at `path` as a state (Null: absent).
fn read_path(path: &Path) -> Result<Value, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Value::Null),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !meta.is_file() {
        return Err(format!(
            "{} exists and is not a regular file",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut state = json!({
        "path": path.display().to_string(),
        "sha256": eden_proto::model::files::sha256_hex(&bytes),
        "mode": show_mode(meta.permissions().mode() & 0o7777),
        "owner": user_name(meta.uid()),
        "group": group_name(meta.gid()),
        "state": "present",
    });
    if bytes.len() <= MAX_SHOWN {
        if let Ok(text) = String::from_utf8(bytes) {
            state["content"] = Value::String(text);
        }
    }
    Ok(state)
}

/// The content a configuration asks for: `content` (text) or `content_base64` (any bytes); None:
/// the content is left as it is.
fn wanted_bytes(config: &Map<String, Value>) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine;
    match (string(config, "content"), string(config, "content_base64")) {
        (Some(t), _) => Ok(Some(t.as_bytes().to_vec())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| format!("content_base64: {e}")),
        (None, None) => Ok(None),
    }
}

fn same_user(a: &str, b: &str) -> bool {
    a == b || matches!((place::uid_of(a), place::uid_of(b)), (Ok(x), Ok(y)) if x == y)
}

fn same_group(a: &str, b: &str) -> bool {
    a == b || matches!((place::gid_of(a), place::gid_of(b)), (Ok(x), Ok(y)) if x == y)
}

/// A unified diff of two texts, with the path in its headers.
fn unified(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(path, path)
        .to_string()
}

#[tonic::async_trait]
impl Resource for File {
    fn schema(&self) -> pb::ResourceSchema {
        let mut path = attr("path", "string", "absolute path of the file");
        path.required = true;
        path.optional = false;
        path.force_new = true;
        let sha = computed("sha256", "string", "hex SHA-256 of the content");
        pb::ResourceSchema {
            r#type: "file".into(),
            version: 1,
            description: "a file's content, mode and owner, or its absence".into(),
            attributes: vec![
                path,
                attr(
                    "content",
                    "string",
                    "the whole content (text); unset: the content is left as it is",
                ),
                attr(
                    "content_base64",
                    "string",
                    "the whole content in base64 (any bytes); the agent sets it from `source`, an \
                     eden file",
                ),
                attr("mode", "string", "octal permission bits, e.g. \"0644\""),
                attr("owner", "string", "user name or id"),
                attr("group", "string", "group name or id"),
                attr("state", "string", "present (default) or absent"),
                sha,
            ],
        }
    }

    fn validate(&self, config: &Map<String, Value>) -> Vec<(String, String)> {
        let mut out = type_errors(&self.schema(), config);
        if let Some(p) = string(config, "path") {
            if let Err(e) = place::check_path(p) {
                out.push(("path".into(), e));
            }
        }
        if config.contains_key("content") && config.contains_key("content_base64") {
            out.push((
                "content_base64".into(),
                "give content or content_base64 (or source), not both".into(),
            ));
        }
        if let Err(e) = wanted_bytes(config) {
            out.push(("content_base64".into(), e));
        }
        if let Some(m) = string(config, "mode") {
            if let Err(e) = mode_of(m) {
                out.push(("mode".into(), e));
            }
        }
        if let Some(s) = string(config, "state") {
            if s != "present" && s != "absent" {
                out.push(("state".into(), format!("state {s:?}: present or absent")));
            }
        }
        for (k, check) in [
            ("owner", place::uid_of as fn(&str) -> Result<u32, String>),
            ("group", place::gid_of),
        ] {
            if let Some(v) = string(config, k) {
                if let Err(e) = check(v) {
                    out.push((k.into(), e));
                }
            }
        }
        out
    }

    async fn read(&self, config: &Map<String, Value>) -> Result<Value, String> {
        read_path(Path::new(string(config, "path").unwrap_or_default()))
    }

    fn watch(
        &self,
        config: &Map<String, Value>,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<String>>, String> {
        let path = place::check_path(string(config, "path").unwrap_or_default())?;
        crate::inotify::watch(&path).map(Some)
    }

    async fn plan(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        _notified: bool,
        _drift_check: bool,
    ) -> Result<Plan, String> {
        let path = string(config, "path").unwrap_or_default();
        if string(config, "state") == Some("absent") {
            return Ok(Plan::absent(prior, || format!("remove {path}")));
        }
        let old_text = prior["content"].as_str();
        let wanted = wanted_bytes(config)?;
        let sha256 = match (&wanted, prior["sha256"].as_str()) {
            (Some(b), _) => eden_proto::model::files::sha256_hex(b),
            (None, Some(old)) => old.to_string(),
            (None, None) => eden_proto::model::files::sha256_hex(b""),
        };
        // The new content as text, when it is text (and not too large to show).
        let new_text: Option<String> = match &wanted {
            Some(b) if b.len() <= MAX_SHOWN => String::from_utf8(b.clone()).ok(),
            Some(_) => None,
            None => Some(old_text.unwrap_or_default().to_string()),
        };
        let pick = |k: &str, default: String| {
            string(config, k)
                .map(str::to_string)
                .or_else(|| prior[k].as_str().map(str::to_string))
                .unwrap_or(default)
        };
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mode = pick("mode", "0644".into());
        let owner = pick("owner", user_name(uid));
        let group = pick("group", group_name(gid));
        let mut planned = json!({
            "path": path,
            "sha256": sha256,
            "mode": show_mode(mode_of(&mode)?),
            "owner": owner,
            "group": group,
            "state": "present",
        });
        if let Some(t) = &new_text {
            planned["content"] = json!(t);
        }
        let not_shown = format!("{path}: content not shown (not text, or larger than 1 MiB)");
        if prior.is_null() {
            return Ok(Plan {
                detail: new_text.map_or(not_shown, |t| unified(path, "", &t)),
                planned,
                action: pb::Action::Create,
                requires_replace: vec![],
            });
        }
        let changed_content = prior["sha256"] != planned["sha256"];
        let changed = changed_content
            || prior["mode"] != planned["mode"]
            || !same_user(prior["owner"].as_str().unwrap_or(""), &owner)
            || !same_group(prior["group"].as_str().unwrap_or(""), &group);
        if !changed {
            return Ok(Plan::noop(prior.clone()));
        }
        let detail = match (changed_content, old_text, &new_text) {
            (true, Some(old), Some(new)) => unified(path, old, new),
            (true, _, _) => not_shown,
            _ => String::new(),
        };
        Ok(Plan {
            planned,
            action: pb::Action::Update,
            requires_replace: vec![],
            detail,
        })
    }

    async fn apply(
        &self,
        config: &Map<String, Value>,
        prior: &Value,
        planned: &Value,
        _notified: bool,
    ) -> Result<Value, String> {
        let path = place::check_path(string(config, "path").unwrap_or_default())?;
        if planned.is_null() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", path.display())),
            }
            return Ok(Value::Null);
        }
        let mode = mode_of(planned["mode"].as_str().unwrap_or("0644"))?;
        let uid = planned["owner"].as_str().map(place::uid_of).transpose()?;
        let gid = planned["group"].as_str().map(place::gid_of).transpose()?;
        let content = wanted_bytes(config)?.unwrap_or_default();
        if prior.is_null() || prior["sha256"] != planned["sha256"] {
            place::write_atomically(&path, &content, mode, uid, gid)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            std::os::unix::fs::chown(&path, uid, gid)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        read_path(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn plan_shows_a_diff_apply_converges_and_a_second_plan_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("motd");
        let c = config(
            json!({"path": path.display().to_string(), "content": "one\ntwo\n", "mode": "0640"}),
        );
        assert!(File.validate(&c).is_empty());
        let prior = File.read(&c).await.unwrap();
        assert!(prior.is_null());
        let p = File.plan(&c, &prior, false, false).await.unwrap();
        assert_eq!(p.action, pb::Action::Create);
        assert!(p.detail.contains("+one"), "{}", p.detail);
        assert!(!path.exists(), "planning changed nothing");
        let after = File.apply(&c, &prior, &p.planned, false).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        assert_eq!(after["mode"], "0640");
        let again = File
            .plan(&c, &File.read(&c).await.unwrap(), false, false)
            .await
            .unwrap();
        assert_eq!(again.action, pb::Action::Noop);

        std::fs::write(&path, "one\nthree\n").unwrap();
        let drift = File
            .plan(&c, &File.read(&c).await.unwrap(), false, false)
            .await
            .unwrap();
        assert_eq!(drift.action, pb::Action::Update);
        assert!(
            drift.detail.contains("-three") && drift.detail.contains("+two"),
            "{}",
            drift.detail
        );

        let gone = config(json!({"path": path.display().to_string(), "state": "absent"}));
        let p = File
            .plan(&gone, &File.read(&gone).await.unwrap(), false, false)
            .await
            .unwrap();
        assert_eq!(p.action, pb::Action::Delete);
        File.apply(&gone, &Value::Null, &p.planned, false)
            .await
            .unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn binary_content_comes_in_base64_and_is_not_shown() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("key.der");
        let c = config(json!({"path": path.display().to_string(), "content_base64": "AP8Q"}));
        assert!(File.validate(&c).is_empty());
        let p = File.plan(&c, &Value::Null, false, false).await.unwrap();
        assert_eq!(p.action, pb::Action::Create);
        assert!(p.detail.contains("not shown"), "{}", p.detail);
        File.apply(&c, &Value::Null, &p.planned, false)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [0u8, 0xff, 0x10]);
        let again = File
            .plan(&c, &File.read(&c).await.unwrap(), false, false)
            .await
            .unwrap();
        assert_eq!(again.action, pb::Action::Noop);
        let both = config(json!({"path": "/x", "content": "a", "content_base64": "YQ=="}));
        assert!(!File.validate(&both).is_empty());
        assert!(!File
            .validate(&config(json!({"path": "/x", "content_base64": "%%"})))
            .is_empty());
    }

    #[test]
    fn bad_configurations_name_the_attribute() {
        let bad = File.validate(&config(
            json!({"path": "etc/x", "mode": "999", "state": "gone", "owner": "no-such-user-here"}),
        ));
        let attrs: Vec<&str> = bad.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(attrs, ["path", "mode", "state", "owner"]);
    }
}
