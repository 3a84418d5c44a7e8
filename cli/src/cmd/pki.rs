//! `eden pki init DIR`: a new certificate authority for a cluster and its first certificates, as
//! PEM files (keys mode 0600): `ca.crt` and `ca.key`, `admin.crt` and `admin.key`, and
//! `member-NAME.crt` and `member-NAME.key` for each `--member NAME=ADDR[+ADDR...]` (the addresses
//! its certificate is valid for). Give members `--cert-file member-NAME.crt --key-file
//! member-NAME.key --trusted-ca-file ca.crt` and clients `--cacert ca.crt --cert admin.crt --key
//! admin.key`. Certificates are made by `eden_proto::pki` (decision 0011).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use eden_proto::pki::{Ca, Identity, ADMIN_VALIDITY};

use crate::exit::Failure;
use crate::printer::Printer;

#[derive(Subcommand)]
pub enum PkiCmd {
    /// Make a new CA and certificates in DIR (refused if DIR already holds a CA).
    Init {
        dir: PathBuf,
        /// The cluster's name, in the CA's subject.
        #[arg(long, default_value = "eden")]
        cluster: String,
        /// The operator's identity name (admin:NAME).
        #[arg(long, default_value = "admin")]
        admin: String,
        /// A member and the addresses (IPs or DNS names) it serves on: NAME=ADDR[+ADDR...]
        /// (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
    },
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), Failure> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

pub fn run(out: &Printer, c: PkiCmd) -> Result<(), Failure> {
    match c {
        PkiCmd::Init {
            dir,
            cluster,
            admin,
            members,
        } => {
            let admin = Identity::parse(&format!("admin:{admin}")).map_err(Failure::usage)?;
            let mut planned = Vec::new();
            for m in &members {
                let (name, addrs) = m
                    .split_once('=')
                    .ok_or_else(|| Failure::usage(format!("--member {m}: expected NAME=ADDR")))?;
                let who = Identity::parse(&format!("member:{name}")).map_err(Failure::usage)?;
                let addrs: Vec<String> = addrs.split('+').map(|a| a.trim().to_string()).collect();
                planned.push((who, addrs));
            }
            if dir.join("ca.key").exists() {
                return Err(Failure::usage(format!(
                    "{} already holds a CA (ca.key): not replaced",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
            let ca = Ca::generate(&cluster).map_err(Failure::usage)?;
            write(&dir.join("ca.crt"), ca.cert_pem(), false)?;
            write(&dir.join("ca.key"), &ca.key_pem(), true)?;
            let issue = |who: &Identity, sans: &[String], stem: &str| -> Result<(), Failure> {
                let c = ca
                    .issue(who, sans, ADMIN_VALIDITY)
                    .map_err(Failure::usage)?;
                write(&dir.join(format!("{stem}.crt")), &c.cert_pem, false)?;
                write(
                    &dir.join(format!("{stem}.key")),
                    c.key_pem.as_deref().unwrap_or_default(),
                    true,
                )?;
                out.line(&format!(
                    "{who}: {}/{stem}.crt (serial {})",
                    dir.display(),
                    c.serial
                ))
                .map_err(Failure::from)
            };
            issue(&admin, &[], "admin")?;
            for (who, addrs) in &planned {
                issue(who, addrs, &format!("member-{}", who.name()))?;
            }
            out.line(&format!("CA pin: {}", ca.pin()))?;
        }
    }
    Ok(())
}
