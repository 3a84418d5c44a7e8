//! A certificate renewed by its holder before it expires (an agent's, a member's own, an
//! operator's with `eden cert renew`): a new key made here, a signing request, the cluster's
//! Renew call (as the holder, with the certificate it has), and the files replaced whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Client, Tls};
use crate::pki::{self, CertInfo};

/// Where a holder keeps its CA, certificate and key (PEM).
#[derive(Debug, Clone)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// `DIR/ca.crt`, `DIR/STEM.crt`, `DIR/STEM.key`.
    pub fn in_dir(dir: &Path, stem: &str) -> Files {
        Files {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    /// What the certificate file holds now.
    pub fn current(&self) -> Result<CertInfo, String> {
        std::fs::read_to_string(&self.cert)
            .map_err(|e| format!("{}: {e}", self.cert.display()))
            .and_then(|pem| pki::der_of_pem(&pem))
            .and_then(|der| pki::cert_info(&der))
    }
}

/// When a certificate is renewed: two thirds into its life (Unix seconds).
pub fn renew_at(info: &CertInfo) -> i64 {
    info.issued_at + (info.not_after - info.issued_at) * 2 / 3
}

fn now() -> i64 {
    (crate::model::objects::now_ms() / 1000) as i64
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The cluster refused it or could not be reached.
    #[error("{0}")]
    Cluster(#[from] crate::client::ClientError),
    /// The holder's own files.
    #[error("{0}")]
    Local(String),
}

impl From<String> for RenewError {
    fn from(s: String) -> RenewError {
        RenewError::Local(s)
    }
}

/// Renews the certificate in `files` once, through `client` (which presents it): the new key and
/// certificate replace the old ones (each written aside, then renamed over it). Returns what the
/// holder presents from now on. `client` is not changed.
pub async fn renew_once(client: &Client, files: &Files) -> Result<(Tls, CertInfo), RenewError> {
    let old = files.current()?;
    let (csr, key_pem) = pki::new_csr(&old.identity)?;
    let cert_pem = client.renew(&csr).await?;
    let info = pki::der_of_pem(&cert_pem).and_then(|der| pki::cert_info(&der))?;
    if info.identity != old.identity {
        return Err(RenewError::Local(format!(
            "the cluster renewed {} as {}: kept the old certificate",
            old.identity, info.identity
        )));
    }
    let aside = |p: &Path| PathBuf::from(format!("{}.new", p.display()));
    write(&aside(&files.key), &key_pem, 0o600)?;
    write(&aside(&files.cert), &cert_pem, 0o644)?;
    for p in [&files.key, &files.cert] {
        std::fs::rename(aside(p), p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let tls = Tls::from_files(&files.ca, &files.cert, &files.key)?;
    Ok((tls, info))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Renews the certificate in `files` two thirds into each certificate's life, for as long as it
/// runs; after each renewal `client` and `renewed` get the new certificate. A failed renewal is
/// logged and tried again after a thirtieth of the certificate's life (at most 5 minutes).
pub async fn keep_renewed(client: Arc<Client>, files: Files, renewed: impl Fn(Tls)) {
    loop {
        let info = match files.current() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("cannot read this holder's certificate, not renewing it: {e}");
                return;
            }
        };
        let at = renew_at(&info);
        if at > now() {
            tokio::time::sleep(Duration::from_secs((at - now()).max(0) as u64)).await;
        }
        match renew_once(&client, &files).await {
            Ok((tls, new)) => {
                client.replace_tls(tls.clone());
                renewed(tls);
                tracing::info!(identity = %info.identity, old = %info.serial, new = %new.serial,
                    not_after = new.not_after, "renewed this holder's certificate");
            }
            Err(e) => {
                tracing::warn!(identity = %info.identity, not_after = info.not_after,
                    "renewing this holder's certificate failed, will retry: {e}");
                let retry = ((info.not_after - info.issued_at) / 30).clamp(1, 300);
                tokio::time::sleep(Duration::from_secs(retry as u64)).await;
            }
        }
    }
}
