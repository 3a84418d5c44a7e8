//! etcd's Auth service over eden's users and roles (`eden_proto::model::users`): etcdctl's
//! `user` and `role` commands work. A client certificate naming `user:NAME` is that user, so
//! passwords are accepted and not used, and Authenticate answers that certificates authenticate.
//! Authorization is always on with TLS: AuthEnable succeeds, AuthDisable is refused. Only root
//! identities change users and roles.

use std::sync::Arc;

use eden_proto::etcdserverpb::auth_server::Auth;
use eden_proto::etcdserverpb::*;
use eden_proto::model::keys;
use eden_proto::model::users::{self, Perm, Role, User};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::grpc::authz;
use crate::grpc::kv::{read_json, write_op};
use crate::node::Node;

pub struct AuthService {
    pub node: Arc<Node>,
}

const USER_EXISTS: &str = "etcdserver: user name already exists";
const USER_NOT_FOUND: &str = "etcdserver: user name not found";
const ROLE_EXISTS: &str = "etcdserver: role name already exists";
const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";
const ROLE_NOT_GRANTED: &str = "etcdserver: role is not granted to the user";
const PERM_NOT_GRANTED: &str = "etcdserver: permission is not granted to the role";

fn precondition(msg: &str) -> Status {
    Status::failed_precondition(msg)
}

fn check_name(what: &str, name: &str) -> Result<(), Status> {
    keys::check_name(what, name).map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))
}

impl AuthService {
    /// Only root identities manage users and roles.
    fn root<T>(&self, req: &Request<T>) -> Result<(), Status> {
        authz::require_rpc(&self.node, req, auth::Rpc::Admin).map(|_| ())
    }

    fn header(&self, rev: i64) -> Option<ResponseHeader> {
        Some(self.node.header_at(rev))
    }

    /// Reads one object with its mod revision, after a read barrier.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, i64)>, Status> {
        self.node.read_barrier().await?;
        read_json(&self.node, key)
    }

    async fn names(&self, prefix: &str) -> Result<Vec<String>, Status> {
        self.node.read_barrier().await?;
        let r = self
            .node
            .mvcc()
            .range(&RangeRequest {
                key: prefix.into(),
                range_end: eden_proto::keys::prefix_end(prefix.as_bytes()),
                keys_only: true,
                ..Default::default()
            })
            .map_err(crate::grpc::kv::mvcc_status)?;
        Ok(r.kvs
            .iter()
            .filter_map(|kv| keys::rest(&kv.key, prefix).map(String::from))
            .collect())
    }

    /// Writes `value` at `key` if it is still at `rev` (0: absent); false when it moved.
    async fn put_if(
        &self,
        key: &str,
        rev: i64,
        value: Option<&impl serde::Serialize>,
    ) -> Result<(bool, i64), Status> {
        let compare = Compare {
            key: key.into(),
            target: compare::CompareTarget::Mod as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::ModRevision(rev)),
            ..Default::default()
        };
        let op = match value {
            Some(v) => request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                value: serde_json::to_vec(v).map_err(crate::errors::internal)?,
                ..Default::default()
            }),
            None => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            }),
        };
        let txn = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp { request: Some(op) }],
                failure: vec![],
            })),
        };
        match write_op(&self.node, txn).await?.response {
            Some(response_op::Response::ResponseTxn(t)) => {
                Ok((t.succeeded, t.header.map_or(0, |h| h.revision)))
            }
            _ => Err(crate::errors::internal(
                "txn answered with another response",
            )),
        }
    }

    /// Read, change, write back; again when someone else wrote in between.
    async fn update<T, F>(&self, key: &str, missing: &str, mut change: F) -> Result<i64, Status>
    where
        T: serde::de::DeserializeOwned + serde::Serialize,
        F: FnMut(&mut T) -> Result<(), Status>,
    {
        for _ in 0..20 {
            let (mut v, rev) = self
                .read::<T>(key)
                .await?
                .ok_or_else(|| precondition(missing))?;
            change(&mut v)?;
            let (ok, at) = self.put_if(key, rev, Some(&v)).await?;
            if ok {
                return Ok(at);
            }
        }
        Err(Status::aborted(
            "eden: too many concurrent changes; try again",
        ))
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.root(&request)?;
        Ok(Response::new(AuthEnableResponse {
            header: Some(self.node.header()),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.root(&request)?;
        Err(precondition(
            "eden: authorization cannot be turned off while members run; start them with --insecure",
        ))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        authz::caller(&self.node, &request)?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.node.header()),
            enabled: self.node.secure(),
            auth_revision: self.node.mvcc().current_rev() as u64,
        }))
    }

    async fn authenticate(
        &self,
        _request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Err(Status::unimplemented(
            "eden: a client certificate naming user:NAME authenticates (no passwords)",
        ))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.root(&request)?;
        let name = request.into_inner().name;
        check_name("user name", &name)?;
        let (ok, rev) = self
            .put_if(&users::user(&name), 0, Some(&User::default()))
            .await?;
        if !ok {
            return Err(precondition(USER_EXISTS));
        }
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(rev),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        self.root(&request)?;
        let name = request.into_inner().name;
        let (u, _) = self
            .read::<User>(&users::user(&name))
            .await?
            .ok_or_else(|| precondition(USER_NOT_FOUND))?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.node.header()),
            roles: u.roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.root(&request)?;
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.node.header()),
            users: self.names(users::USERS).await?,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.root(&request)?;
        let key = users::user(&request.into_inner().name);
        let (_, rev) = self
            .read::<User>(&key)
            .await?
            .ok_or_else(|| precondition(USER_NOT_FOUND))?;
        let (ok, at) = self.put_if(&key, rev, None::<&User>).await?;
        if !ok {
            return Err(precondition(USER_NOT_FOUND));
        }
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(at),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.root(&request)?;
        let name = request.into_inner().name;
        self.read::<User>(&users::user(&name))
            .await?
            .ok_or_else(|| precondition(USER_NOT_FOUND))?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: Some(self.node.header()),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.root(&request)?;
        let r = request.into_inner();
        if r.role != users::ROOT_ROLE && self.read::<Role>(&users::role(&r.role)).await?.is_none() {
            return Err(precondition(ROLE_NOT_FOUND));
        }
        let rev = self
            .update::<User, _>(&users::user(&r.user), USER_NOT_FOUND, |u| {
                if !u.roles.contains(&r.role) {
                    u.roles.push(r.role.clone());
                    u.roles.sort();
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(rev),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.root(&request)?;
        let r = request.into_inner();
        let rev = self
            .update::<User, _>(&users::user(&r.name), USER_NOT_FOUND, |u| {
                let before = u.roles.len();
                u.roles.retain(|x| *x != r.role);
                if u.roles.len() == before {
                    return Err(precondition(ROLE_NOT_GRANTED));
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(rev),
        }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.root(&request)?;
        let name = request.into_inner().name;
        check_name("role name", &name)?;
        let (ok, rev) = self
            .put_if(&users::role(&name), 0, Some(&Role::default()))
            .await?;
        if !ok {
            return Err(precondition(ROLE_EXISTS));
        }
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(rev),
        }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.root(&request)?;
        let name = request.into_inner().role;
        let (r, _) = self
            .read::<Role>(&users::role(&name))
            .await?
            .ok_or_else(|| precondition(ROLE_NOT_FOUND))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: Some(self.node.header()),
            perm: r
                .perms
                .into_iter()
                .map(|p| eden_proto::authpb::Permission {
                    perm_type: p.kind,
                    key: p.key,
                    range_end: p.range_end,
                })
                .collect(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.root(&request)?;
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.node.header()),
            roles: self.names(users::ROLES).await?,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.root(&request)?;
        let key = users::role(&request.into_inner().role);
        let (_, rev) = self
            .read::<Role>(&key)
            .await?
            .ok_or_else(|| precondition(ROLE_NOT_FOUND))?;
        let (ok, at) = self.put_if(&key, rev, None::<&Role>).await?;
        if !ok {
            return Err(precondition(ROLE_NOT_FOUND));
        }
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(at),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.root(&request)?;
        let r = request.into_inner();
        let p = r
            .perm
            .ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
        if p.key.is_empty() {
            return Err(Status::invalid_argument(crate::errors::EMPTY_KEY));
        }
        let perm = Perm {
            kind: p.perm_type,
            key: p.key,
            range_end: p.range_end,
        };
        let rev = self
            .update::<Role, _>(&users::role(&r.name), ROLE_NOT_FOUND, |role| {
                role.perms
                    .retain(|x| !(x.key == perm.key && x.range_end == perm.range_end));
                role.perms.push(perm.clone());
                Ok(())
            })
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(rev),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.root(&request)?;
        let r = request.into_inner();
        let rev = self
            .update::<Role, _>(&users::role(&r.role), ROLE_NOT_FOUND, |role| {
                let before = role.perms.len();
                role.perms
                    .retain(|x| !(x.key == r.key && x.range_end == r.range_end));
                if role.perms.len() == before {
                    return Err(precondition(PERM_NOT_GRANTED));
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(rev),
        }))
    }
}
