//! The CLI's config file: the cluster a command talks to when it is given no `--endpoints`, and
//! the certificates it presents there (as kubectl's kubeconfig). A new secure cluster's first
//! member writes one for the user who started it, if that user has none, so that right after
//! `./scripts/run.sh` the same user's `eden put greeting hello` works with no flags.
//!
//! Where: `$EDEN_CONFIG`, else `$XDG_CONFIG_HOME/eden/config.toml`, else
//! `~/.config/eden/config.toml`. Flags and their environment variables win over it.
//!
//! ```toml
//! endpoints = ["127.0.0.1:2379"]
//! cacert = "/home/me/eden-data/pki/ca.crt"
//! cert = "/home/me/eden-data/pki/admin.crt"
//! key = "/home/me/eden-data/pki/admin.key"
//! ```

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CliConfig {
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Where the config file is (None: no home to put it in).
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EDEN_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("eden").join("config.toml"))
}

/// The config file, when there is one.
pub fn load() -> Result<Option<CliConfig>, String> {
    let Some(p) = path() else { return Ok(None) };
    match std::fs::read_to_string(&p) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Writes `c` as the config file unless one exists; returns where it wrote it.
pub fn write_if_absent(c: &CliConfig) -> Result<Option<PathBuf>, String> {
    let Some(p) = path() else { return Ok(None) };
    if p.exists() {
        return Ok(None);
    }
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = toml::to_string(c).map_err(|e| e.to_string())?;
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(Some(p))
}
