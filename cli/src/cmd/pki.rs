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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use eden_proto::client::{Backoff, Client, Tls};
use eden_proto::model::tokens::CaKeys;
use eden_proto::model::{keys, kv};
use eden_store::node::NodeConfig;

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
        /// An etcd user's certificate (user:NAME; its roles decide what it may do), valid a year.
        #[arg(long, group = "who")]
        user: Option<String>,
        /// How long it is valid instead (e.g. 90d, 12h; at least 10s): its holder renews it two
        /// thirds into that (`eden cert renew`; agents and members renew their own).
        #[arg(long, value_parser = humantime::parse_duration)]
        validity: Option<std::time::Duration>,
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
    validity: Option<std::time::Duration>,
) -> Result<(), Failure> {
    let validity = match (validity, who) {
        (Some(v), _) if v.as_secs() < 10 => return Err(Failure::usage("--validity: at least 10s")),
        (Some(v), _) => v,
        (None, Identity::Node(_)) => NODE_VALIDITY,
        (None, _) => ADMIN_VALIDITY,
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
            issue(out, &ca, &dir, &admin, &[], "admin", None)?;
            for (who, addrs) in &planned {
                issue(
                    out,
                    &ca,
                    &dir,
                    who,
                    addrs,
                    &format!("member-{}", who.name()),
                    None,
                )?;
            }
            out.line(&format!("CA pin: {}", ca.pin()))?;
        }
        PkiCmd::Issue {
            dir,
            node,
            admin,
            member,
            user,
            validity,
        } => {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .map_err(|e| Failure::usage(format!("{}: {e}", dir.join(f).display())))
            };
            let ca = Ca::from_pem(&read("ca.crt")?, &read("ca.key")?).map_err(Failure::usage)?;
            let (who, sans, stem) = match (node, admin, member, user) {
                (_, _, _, Some(u)) => {
                    let who = Identity::parse(&format!("user:{u}")).map_err(Failure::usage)?;
                    (who, vec![], format!("user-{u}"))
                }
                (Some(n), _, _, _) => {
                    let who = Identity::parse(&format!("node:{n}")).map_err(Failure::usage)?;
                    (who, vec![], format!("node-{n}"))
                }
                (_, Some(a), _, _) => {
                    let who = Identity::parse(&format!("admin:{a}")).map_err(Failure::usage)?;
                    (who, vec![], format!("admin-{a}"))
                }
                (_, _, Some(m), _) => {
                    let (who, sans) = member_of(&m)?;
                    let stem = format!("member-{}", who.name());
                    (who, sans, stem)
                }
                _ => return Err(Failure::usage("give --node, --admin, --member or --user")),
            };
            issue(out, &ca, &dir, &who, &sans, &stem, validity)?;
        }
    }
    Ok(())
}

/// A member's certificates when no certificate flags were given: those in DATA_DIR/pki from an
/// earlier start, or, for a new single-member cluster, a new CA with this member's certificate
/// and an admin's (`ca.crt`, `ca.key`, `member.crt`, `member.key`, `admin.crt`, `admin.key`; keys
/// mode 0600), and a CLI config file for the user who started it when that user has none
/// (decision 0012).
pub fn member_tls(config: &NodeConfig) -> anyhow::Result<Tls> {
    let dir = config.data_dir.join("pki");
    let (ca, cert, key) = (
        dir.join("ca.crt"),
        dir.join("member.crt"),
        dir.join("member.key"),
    );
    if cert.exists() {
        return Tls::from_files(&ca, &cert, &key).map_err(|e| anyhow::anyhow!(e));
    }
    if has_data(&config.data_dir) {
        bail!(
            "{} holds data but no pki/ (an insecure member's, or a restored backup): start it \
             with --insecure, or give it its certificates (--cert-file, --key-file, \
             --trusted-ca-file)",
            config.data_dir.display()
        );
    }
    if config.join.is_some() {
        bail!(
            "joining a secure cluster needs this member's certificates: make them with `eden pki \
             issue CA_DIR --member {}=HOST` and give --cert-file, --key-file and \
             --trusted-ca-file (or --insecure, to join an insecure cluster)",
            config.name
        );
    }
    if config.initial_cluster.len() > 1 {
        bail!(
            "a new cluster of {} members needs certificates from one CA: run `eden pki init DIR \
             --member NAME=HOST ...` and give each member --cert-file, --key-file and \
             --trusted-ca-file (or --insecure)",
            config.initial_cluster.len()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let authority = Ca::generate("eden").map_err(|e| anyhow::anyhow!(e))?;
    let mut hosts: Vec<String> = [
        &config.client_addr,
        &config.peer_addr,
        &config.listen_peer_addr,
    ]
    .iter()
    .filter_map(|a| host_of(a))
    .chain(["127.0.0.1".to_string(), "localhost".to_string()])
    .collect();
    hosts.sort();
    hosts.dedup();
    let member =
        Identity::parse(&format!("member:{}", config.name)).map_err(|e| anyhow::anyhow!(e))?;
    let m = authority
        .issue(&member, &hosts, ADMIN_VALIDITY)
        .map_err(|e| anyhow::anyhow!(e))?;
    let admin = Identity::Admin("admin".into());
    let a = authority
        .issue(&admin, &[], ADMIN_VALIDITY)
        .map_err(|e| anyhow::anyhow!(e))?;
    let files = [
        ("ca.crt", authority.cert_pem().to_string(), false),
        ("ca.key", authority.key_pem(), true),
        ("admin.crt", a.cert_pem.clone(), false),
        ("admin.key", a.key_pem.clone().unwrap_or_default(), true),
        // The member's own last: its presence says the directory is complete.
        ("member.key", m.key_pem.clone().unwrap_or_default(), true),
        ("member.crt", m.cert_pem.clone(), false),
    ];
    for (name, text, secret) in &files {
        write(&dir.join(name), text, *secret).map_err(|f| anyhow::anyhow!(f.message))?;
    }
    let abs = std::fs::canonicalize(&dir)?;
    tracing::info!(
        ca_pin = %authority.pin(),
        "made the cluster's CA and an admin certificate: {}/admin.crt and admin.key (eden and \
         etcdctl take them with --cacert {0}/ca.crt --cert {0}/admin.crt --key {0}/admin.key)",
        abs.display()
    );
    let cli = crate::config::CliConfig {
        endpoints: vec![config.client_addr.clone()],
        cacert: Some(abs.join("ca.crt")),
        cert: Some(abs.join("admin.crt")),
        key: Some(abs.join("admin.key")),
    };
    match crate::config::write_if_absent(&cli) {
        Ok(Some(p)) => tracing::info!(
            "wrote {}: this user's eden commands use this cluster and the admin certificate",
            p.display()
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!("could not write the CLI's config file: {e}"),
    }
    Tls::from_files(&ca, &cert, &key).map_err(|e| anyhow::anyhow!(e))
}

/// Gets this member's certificate with a join token, unless DATA_DIR/pki already holds one: a new
/// key, the cluster checked against the pin, a certificate for `member:NAME` (valid for the
/// addresses the token names), kept in DATA_DIR/pki (`ca.crt`, `member.crt`, `member.key`).
pub fn join_as_member(config: &NodeConfig, token: &str, pin: &str) -> anyhow::Result<()> {
    let dir = config.data_dir.join("pki");
    if dir.join("member.crt").exists() {
        return Ok(());
    }
    let endpoints = config.join.clone().unwrap_or_default();
    let who =
        Identity::parse(&format!("member:{}", config.name)).map_err(|e| anyhow::anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut why = String::from("no endpoint to join through (--join)");
    for ep in &endpoints {
        match rt.block_on(eden_proto::joining::join(ep, token, pin, &who)) {
            Ok(j) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                for (name, text, secret) in [
                    ("ca.crt", &j.ca_pem, false),
                    ("member.key", &j.key_pem, true),
                    ("member.crt", &j.cert_pem, false),
                ] {
                    write(&dir.join(name), text, secret).map_err(|f| anyhow::anyhow!(f.message))?;
                }
                tracing::info!(identity = %who, "joined with a token: certificate in {}", dir.display());
                return Ok(());
            }
            Err(e) if e.starts_with("connecting to") || e.starts_with("asking") => why = e,
            Err(e) => bail!("joining as {who}: {e}"),
        }
    }
    bail!("joining as {who}: {why}")
}

/// Refuses to serve a secure member's data insecurely.
pub fn check_data_dir_mode(data_dir: &Path, insecure: bool) -> anyhow::Result<()> {
    if insecure && data_dir.join("pki").join("member.crt").exists() {
        bail!(
            "{} belongs to a secure cluster (it has pki/member.crt): --insecure would serve its \
             data to anyone; start it without --insecure",
            data_dir.display()
        );
    }
    Ok(())
}

/// Whether a data dir already holds a member's data (anything but pki/).
/// True when the data dir holds a member's data (its certificates and a promise made while
/// forming a cluster do not count).
pub(crate) fn has_data(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            !matches!(
                e.file_name().to_str(),
                Some("pki" | eden_store::forming::FORMING_FILE | "forming.tmp")
            )
        })
    })
}

/// The host of HOST:PORT (None for a wildcard address, which no certificate can name).
fn host_of(addr: &str) -> Option<String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && host != "0.0.0.0" && host != "::").then(|| host.to_string())
}

/// Hands the CA to the cluster (`/eden/pki/ca`, which only members may read) unless it has one,
/// retrying until the cluster answers: every member can then issue certificates for join tokens.
pub async fn publish_ca(client: Arc<Client>, ca: CaKeys) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let r = kv::txn(
            &client,
            vec![kv::absent(keys::PKI_CA)],
            vec![kv::put(keys::PKI_CA, &ca, 0)],
            vec![],
        )
        .await;
        match r {
            Ok(r) => {
                if r.succeeded {
                    tracing::info!("handed the CA to the cluster: every member can issue certificates for join tokens");
                }
                return;
            }
            Err(e) => {
                tracing::debug!("handing the CA to the cluster: {e}; trying again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
