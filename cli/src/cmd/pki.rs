//! `eden pki init DIR`: a new certificate authority for a cluster and its first certificates, as
//! PEM files (keys mode 0600): `ca.crt` and `ca.key`, `admin.crt` and `admin.key`, and
//! `member-NAME.crt` and `member-NAME.key` for each `--member NAME=ADDR[+ADDR...]` (the addresses
//! its certificate is valid for). Give members `--cert-file member-NAME.crt --key-file
//! member-NAME.key --trusted-ca-file ca.crt` and clients `--cacert ca.crt --cert admin.crt --key
//! admin.key`. Certificates are made by `eden_proto::pki` (decision 0011).
//!
//! `eden pki issue DIR --node NAME` (or `--admin NAME`, `--member NAME=ADDR[+ADDR...]`) issues one
//! more certificate from the CA in DIR: `node-NAME.crt` and `node-NAME.key` for an agent
//! (`eden agent --cacert ca.crt --cert node-NAME.crt --key node-NAME.key`), valid 30 days.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use eden_proto::pki::{Ca, Identity, ADMIN_VALIDITY, NODE_VALIDITY};

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
    /// Issue one more certificate from the CA in DIR (its ca.crt and ca.key).
    Issue {
        dir: PathBuf,
        /// An agent's certificate (node:NAME), valid 30 days.
        #[arg(long, group = "who")]
        node: Option<String>,
        /// An operator's certificate (admin:NAME), valid a year.
        #[arg(long, group = "who")]
        admin: Option<String>,
        /// A member's certificate: NAME=ADDR[+ADDR...], valid a year.
        #[arg(long, group = "who")]
        member: Option<String>,
    },
}

/// `NAME=ADDR[+ADDR...]` of `--member`.
fn member_of(m: &str) -> Result<(Identity, Vec<String>), Failure> {
    let (name, addrs) = m
        .split_once('=')
        .ok_or_else(|| Failure::usage(format!("--member {m}: expected NAME=ADDR")))?;
    let who = Identity::parse(&format!("member:{name}")).map_err(Failure::usage)?;
    Ok((
        who,
        addrs.split('+').map(|a| a.trim().to_string()).collect(),
    ))
}

/// Writes `STEM.crt` and `STEM.key` (0600) for `who`, issued by `ca`, and says so.
fn issue(
    out: &Printer,
    ca: &Ca,
    dir: &Path,
    who: &Identity,
    sans: &[String],
    stem: &str,
) -> Result<(), Failure> {
    let validity = match who {
        Identity::Node(_) => NODE_VALIDITY,
        _ => ADMIN_VALIDITY,
    };
    let c = ca.issue(who, sans, validity).map_err(Failure::usage)?;
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
            let planned = members
                .iter()
                .map(|m| member_of(m))
                .collect::<Result<Vec<_>, _>>()?;
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
            issue(out, &ca, &dir, &admin, &[], "admin")?;
            for (who, addrs) in &planned {
                issue(
                    out,
                    &ca,
                    &dir,
                    who,
                    addrs,
                    &format!("member-{}", who.name()),
                )?;
            }
            out.line(&format!("CA pin: {}", ca.pin()))?;
        }
        PkiCmd::Issue {
            dir,
            node,
            admin,
            member,
        } => {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .map_err(|e| Failure::usage(format!("{}: {e}", dir.join(f).display())))
            };
            let ca = Ca::from_pem(&read("ca.crt")?, &read("ca.key")?).map_err(Failure::usage)?;
            let (who, sans, stem) = match (node, admin, member) {
                (Some(n), _, _) => {
                    let who = Identity::parse(&format!("node:{n}")).map_err(Failure::usage)?;
                    (who, vec![], format!("node-{n}"))
                }
                (_, Some(a), _) => {
                    let who = Identity::parse(&format!("admin:{a}")).map_err(Failure::usage)?;
                    (who, vec![], format!("admin-{a}"))
                }
                (_, _, Some(m)) => {
                    let (who, sans) = member_of(&m)?;
                    let stem = format!("member-{}", who.name());
                    (who, sans, stem)
                }
                _ => return Err(Failure::usage("give --node, --admin or --member")),
            };
            issue(out, &ca, &dir, &who, &sans, &stem)?;
        }
    }
    Ok(())
}
