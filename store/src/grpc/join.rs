//! The join call (`eden.join.Join` on the client port): what a caller without a client
//! certificate may do, and nothing else. `Ca` hands out the CA certificate, which the caller checks
//! against its pin; `Join` trades a join token and a signing request for a certificate naming the
//! identity the token was made for, and uses the token up. Bad tokens are rate-limited.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eden_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, RequestOp, TxnRequest,
};
use eden_proto::join::join_server::Join;
use eden_proto::join::{CaRequest, CaResponse, JoinRequest, JoinResponse, RenewRequest};
use eden_proto::model::objects::now_ms;
use eden_proto::model::tokens::{self, CaKeys, Token};
use eden_proto::model::{certs, keys};
use eden_proto::pki::{self, Ca};
use tonic::{Request, Response, Status};

use crate::auth;
use crate::errors;
use crate::grpc::authz;
use crate::grpc::kv::{read_json, write_op};
use crate::node::Node;

/// Bad tokens a member accepts per window before it refuses every join until the window ends.
const MAX_BAD_TOKENS: u32 = 10;
const BAD_TOKEN_WINDOW: Duration = Duration::from_secs(60);

pub struct JoinService {
    pub node: Arc<Node>,
    bad: Mutex<(Instant, u32)>,
}

impl JoinService {
    pub fn new(node: Arc<Node>) -> JoinService {
        JoinService {
            node,
            bad: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Refuses while too many bad tokens came in this window.
    fn limited(&self) -> Result<(), Status> {
        let mut b = self.bad.lock().unwrap();
        if b.0.elapsed() > BAD_TOKEN_WINDOW {
            *b = (Instant::now(), 0);
        }
        if b.1 >= MAX_BAD_TOKENS {
            return Err(Status::resource_exhausted(
                "eden: too many bad join tokens; try again in a minute",
            ));
        }
        Ok(())
    }

    /// One bad token: counted, logged without its secret, and answered the same whatever was
    /// wrong with it (unknown, wrong secret, expired, used).
    fn bad_token(&self, id: &str) -> Status {
        self.bad.lock().unwrap().1 += 1;
        tracing::warn!(token = %id, "refused a join: unknown, used or expired token, or a wrong secret");
        self.node.audit_denied(
            "anonymous:join",
            &format!("join token {id}: unknown, used or expired, or a wrong secret"),
        );
        Status::permission_denied("eden: unknown, used or expired join token")
    }

    fn read<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<(T, i64)>, Status> {
        read_json(&self.node, key)
    }

    fn ca_pem(&self) -> Result<String, Status> {
        self.node
            .config()
            .tls
            .as_ref()
            .map(|t| t.ca_pem.clone())
            .ok_or_else(|| Status::failed_precondition("eden: this member is insecure (no CA)"))
    }
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn ca(&self, _request: Request<CaRequest>) -> Result<Response<CaResponse>, Status> {
        Ok(Response::new(CaResponse {
            ca_pem: self.ca_pem()?,
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        self.limited()?;
        let req = request.into_inner();
        let (id, secret) = tokens::split(&req.token)
            .map_err(|e| Status::invalid_argument(format!("eden: {e}")))?;
        // The token as the cluster has it now (not as this member may have had it a moment ago).
        self.node.read_barrier().await?;
        let Some((token, rev)) = self.read::<Token>(&keys::token(id))? else {
            return Err(self.bad_token(id));
        };
        if !tokens::matches(&token.secret_sha256, secret) || token.expires_at <= now_ms() {
            return Err(self.bad_token(id));
        }
        let who = token.identity();
        if !req.identity.is_empty() && req.identity != who.to_string() {
            // The holder of a good token asked for another name: kept for the right one.
            return Err(Status::permission_denied(format!(
                "eden: this join token is for {who}, not {}",
                req.identity
            )));
        }
        let (ca, _) = self.read::<CaKeys>(keys::PKI_CA)?.ok_or_else(|| {
            Status::failed_precondition(
                "eden: this cluster cannot issue certificates: no member gave it the CA's key",
            )
        })?;
        let validity = match (token.cert_validity, &who) {
            (0, pki::Identity::Node(_)) => pki::NODE_VALIDITY,
            (0, _) => pki::ADMIN_VALIDITY,
            (s, _) => Duration::from_secs(s),
        };
        let authority = Ca::from_pem(&ca.cert_pem, &ca.key_pem).map_err(errors::internal)?;
        // Signed before the token is used up, so a bad request does not waste it.
        let issued = authority
            .sign_csr(&req.csr_pem, &who, &token.addrs, validity)
            .map_err(|e| Status::invalid_argument(format!("eden: {e}")))?;
        // Used once: deleted only if nobody used it since it was read.
        let use_up = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![Compare {
                    key: keys::token(id).into(),
                    target: compare::CompareTarget::Mod as i32,
                    result: compare::CompareResult::Equal as i32,
                    target_union: Some(compare::TargetUnion::ModRevision(rev)),
                    ..Default::default()
                }],
                success: vec![
                    RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: keys::token(id).into(),
                                ..Default::default()
                            },
                        )),
                    },
                    certs::register(&certs::Issued {
                        identity: who.to_string(),
                        serial: issued.serial.clone(),
                        not_after: issued.not_after,
                        issued_at: now_ms(),
                        how: "join".into(),
                    }),
                ],
                failure: vec![],
            })),
        };
        match write_op(&self.node, use_up).await?.response {
            Some(response_op::Response::ResponseTxn(t)) if t.succeeded => {}
            _ => return Err(self.bad_token(id)),
        }
        tracing::info!(token = %id, identity = %who, serial = %issued.serial, "issued a certificate for a join token");
        Ok(Response::new(JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: ca.cert_pem,
        }))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<JoinResponse>, Status> {
        let (caller, cert) = authz::caller_and_cert(&self.node, &request)?;
        authz::allow_rpc(&self.node, &caller, auth::Rpc::RenewOwn)?;
        let info = cert.ok_or_else(|| {
            Status::failed_precondition("eden: this member is insecure (no certificates)")
        })?;
        // This member may not have applied the CA's publication yet (a follower a moment behind):
        // before saying there is none, read it as the cluster has it now.
        let mut ca = self.read::<CaKeys>(keys::PKI_CA)?;
        if ca.is_none() {
            self.node.read_barrier().await?;
            ca = self.read::<CaKeys>(keys::PKI_CA)?;
        }
        let (ca, _) = ca.ok_or_else(|| {
            Status::failed_precondition(
                "eden: this cluster cannot issue certificates: no member gave it the CA's key",
            )
        })?;
        // The same identity (and a member's same addresses), as long-lived as the certificate it
        // replaces (which the cluster issued), never more than its kind's default.
        let longest = match info.identity {
            pki::Identity::Node(_) => pki::NODE_VALIDITY,
            _ => pki::ADMIN_VALIDITY,
        };
        let lifetime = (info.not_after - info.issued_at).clamp(10, longest.as_secs() as i64);
        let sans = match info.identity {
            pki::Identity::Member(_) => info.sans.clone(),
            _ => Vec::new(),
        };
        let authority = Ca::from_pem(&ca.cert_pem, &ca.key_pem).map_err(errors::internal)?;
        let issued = authority
            .sign_csr(
                &request.get_ref().csr_pem,
                &info.identity,
                &sans,
                Duration::from_secs(lifetime as u64),
            )
            .map_err(|e| Status::invalid_argument(format!("eden: {e}")))?;
        write_op(
            &self.node,
            certs::register(&certs::Issued {
                identity: info.identity.to_string(),
                serial: issued.serial.clone(),
                not_after: issued.not_after,
                issued_at: now_ms(),
                how: "renewal".into(),
            }),
        )
        .await?;
        tracing::info!(identity = %info.identity, old = %info.serial, new = %issued.serial, "renewed a certificate");
        Ok(Response::new(JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: ca.cert_pem,
        }))
    }
}
