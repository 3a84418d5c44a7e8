//! `eden user ...` and `eden role ...`: etcd's users and roles, as etcdctl's commands of the same
//! names. A user is the identity `user:NAME` of a client certificate (`eden pki issue DIR --user
//! NAME`); its roles' key-range permissions decide what it may read and write.

use std::sync::Arc;

use clap::Subcommand;
use eden_proto::authpb::Permission;
use eden_proto::client::{Client, Retry};
use eden_proto::etcdserverpb::auth_client::AuthClient;
use eden_proto::etcdserverpb::*;
use eden_proto::keys::prefix_end;

use crate::exit::Failure;
use crate::printer::{Format, Printer};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user (it authenticates with a certificate naming user:NAME).
    Add { name: String },
    /// A user's roles.
    Get { name: String },
    /// Every user.
    #[command(alias = "list")]
    Ls,
    /// Remove a user.
    #[command(alias = "delete")]
    Rm { name: String },
    /// Grant a role to a user.
    GrantRole { name: String, role: String },
    /// Revoke a role from a user.
    RevokeRole { name: String, role: String },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Add a role (`root` is every right).
    Add { name: String },
    /// A role's permissions.
    Get { name: String },
    /// Every role.
    #[command(alias = "list")]
    Ls,
    /// Remove a role.
    #[command(alias = "delete")]
    Rm { name: String },
    /// Grant `read`, `write` or `readwrite` on KEY, [KEY, END), or (--prefix) every key under KEY.
    GrantPermission {
        name: String,
        kind: String,
        key: String,
        end: Option<String>,
        #[arg(long)]
        prefix: bool,
    },
    /// Revoke the permission on exactly that key or range.
    RevokePermission {
        name: String,
        key: String,
        end: Option<String>,
        #[arg(long)]
        prefix: bool,
    },
}

fn range_end(key: &str, end: Option<String>, prefix: bool) -> Vec<u8> {
    match (prefix, end) {
        (true, _) => prefix_end(key.as_bytes()),
        (false, Some(e)) => e.into_bytes(),
        (false, None) => Vec::new(),
    }
}

fn kind_of(s: &str) -> Result<i32, Failure> {
    match s.to_ascii_lowercase().as_str() {
        "read" => Ok(0),
        "write" => Ok(1),
        "readwrite" => Ok(2),
        _ => Err(Failure::usage(format!(
            "permission {s:?}: read, write or readwrite"
        ))),
    }
}

fn kind_name(k: i32) -> &'static str {
    match k {
        0 => "read",
        1 => "write",
        2 => "readwrite",
        _ => "unknown",
    }
}

/// Runs one Auth call against the cluster (writes are not retried once sent).
async fn call<T, F, Fut>(client: &Client, f: F) -> Result<T, Failure>
where
    F: Fn(AuthClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    Ok(client
        .call(Retry::Write, |ch| {
            let fut = f(AuthClient::new(ch));
            async move { fut.await.map(|r| r.into_inner()) }
        })
        .await?)
}

pub async fn run_user(client: &Arc<Client>, out: &Printer, c: UserCmd) -> Result<(), Failure> {
    match c {
        UserCmd::Add { name } => {
            let n = name.clone();
            call(client, move |mut a| {
                let n = n.clone();
                async move {
                    a.user_add(AuthUserAddRequest {
                        name: n,
                        options: Some(eden_proto::authpb::UserAddOptions { no_password: true }),
                        ..Default::default()
                    })
                    .await
                }
            })
            .await?;
            out.line(&format!("User {name} created"))?;
        }
        UserCmd::Get { name } => {
            let n = name.clone();
            let r = call(client, move |mut a| {
                let n = n.clone();
                async move { a.user_get(AuthUserGetRequest { name: n }).await }
            })
            .await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!({"user": name, "roles": r.roles}))?,
                _ => {
                    out.line(&format!("User: {name}"))?;
                    out.line(&format!("Roles: {}", r.roles.join(" ")))?;
                }
            }
        }
        UserCmd::Ls => {
            let r = call(client, |mut a| async move {
                a.user_list(AuthUserListRequest {}).await
            })
            .await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!(r.users))?,
                _ => {
                    for u in r.users {
                        out.line(&u)?;
                    }
                }
            }
        }
        UserCmd::Rm { name } => {
            let n = name.clone();
            call(client, move |mut a| {
                let n = n.clone();
                async move { a.user_delete(AuthUserDeleteRequest { name: n }).await }
            })
            .await?;
            out.line(&format!("User {name} deleted"))?;
        }
        UserCmd::GrantRole { name, role } => {
            let (n, r) = (name.clone(), role.clone());
            call(client, move |mut a| {
                let (user, role) = (n.clone(), r.clone());
                async move {
                    a.user_grant_role(AuthUserGrantRoleRequest { user, role })
                        .await
                }
            })
            .await?;
            out.line(&format!("Role {role} is granted to user {name}"))?;
        }
        UserCmd::RevokeRole { name, role } => {
            let (n, r) = (name.clone(), role.clone());
            call(client, move |mut a| {
                let (name, role) = (n.clone(), r.clone());
                async move {
                    a.user_revoke_role(AuthUserRevokeRoleRequest { name, role })
                        .await
                }
            })
            .await?;
            out.line(&format!("Role {role} is revoked from user {name}"))?;
        }
    }
    Ok(())
}

pub async fn run_role(client: &Arc<Client>, out: &Printer, c: RoleCmd) -> Result<(), Failure> {
    match c {
        RoleCmd::Add { name } => {
            let n = name.clone();
            call(client, move |mut a| {
                let n = n.clone();
                async move { a.role_add(AuthRoleAddRequest { name: n }).await }
            })
            .await?;
            out.line(&format!("Role {name} created"))?;
        }
        RoleCmd::Get { name } => {
            let n = name.clone();
            let r = call(client, move |mut a| {
                let n = n.clone();
                async move { a.role_get(AuthRoleGetRequest { role: n }).await }
            })
            .await?;
            let show = |p: &Permission| {
                let key = String::from_utf8_lossy(&p.key).into_owned();
                match p.range_end.as_slice() {
                    [] => format!("{}\t{key}", kind_name(p.perm_type)),
                    e if e == prefix_end(&p.key).as_slice() => {
                        format!("{}\t{key} (prefix {key})", kind_name(p.perm_type))
                    }
                    e => format!(
                        "{}\t[{key}, {})",
                        kind_name(p.perm_type),
                        String::from_utf8_lossy(e)
                    ),
                }
            };
            match out.format {
                Format::Json => out.json(&serde_json::json!({
                    "role": name,
                    "permissions": r.perm.iter().map(show).collect::<Vec<_>>(),
                }))?,
                _ => {
                    out.line(&format!("Role {name}"))?;
                    out.line("KV permissions:")?;
                    for p in &r.perm {
                        out.line(&format!("\t{}", show(p)))?;
                    }
                }
            }
        }
        RoleCmd::Ls => {
            let r = call(client, |mut a| async move {
                a.role_list(AuthRoleListRequest {}).await
            })
            .await?;
            match out.format {
                Format::Json => out.json(&serde_json::json!(r.roles))?,
                _ => {
                    for x in r.roles {
                        out.line(&x)?;
                    }
                }
            }
        }
        RoleCmd::Rm { name } => {
            let n = name.clone();
            call(client, move |mut a| {
                let n = n.clone();
                async move { a.role_delete(AuthRoleDeleteRequest { role: n }).await }
            })
            .await?;
            out.line(&format!("Role {name} deleted"))?;
        }
        RoleCmd::GrantPermission {
            name,
            kind,
            key,
            end,
            prefix,
        } => {
            let perm = Permission {
                perm_type: kind_of(&kind)?,
                range_end: range_end(&key, end, prefix),
                key: key.clone().into_bytes(),
            };
            let n = name.clone();
            call(client, move |mut a| {
                let (name, perm) = (n.clone(), perm.clone());
                async move {
                    a.role_grant_permission(AuthRoleGrantPermissionRequest {
                        name,
                        perm: Some(perm),
                    })
                    .await
                }
            })
            .await?;
            out.line(&format!("Role {name} updated"))?;
        }
        RoleCmd::RevokePermission {
            name,
            key,
            end,
            prefix,
        } => {
            let req = AuthRoleRevokePermissionRequest {
                role: name.clone(),
                range_end: range_end(&key, end, prefix),
                key: key.into_bytes(),
            };
            call(client, move |mut a| {
                let req = req.clone();
                async move { a.role_revoke_permission(req).await }
            })
            .await?;
            out.line(&format!("Permission of role {name} is revoked"))?;
        }
    }
    Ok(())
}
