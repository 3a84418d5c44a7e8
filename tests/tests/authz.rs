//! The authorizer with real processes and TLS on (issue 13): each agent's certificate names its
//! node, and the server lets it read and write only what the rules say (store/src/auth.rs).
//!
//! The seed's first story as access control: a token registered on `a` is readable by the nodes
//! labelled `role=master` only; `c` is refused by get, prefix range, watch, txn and through a task
//! template until it is labelled, and loses its open watch and its reads when the label goes.

use std::time::Duration;

use eden_proto::client::{Client, ClientError};
use eden_proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use eden_tests::{denied, wait_for, watch_key, Cluster};

fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix(p: &str) -> RangeRequest {
    RangeRequest {
        key: p.into(),
        range_end: eden_proto::keys::prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

async fn value(c: &Client, key: &str) -> Result<Option<String>, ClientError> {
    Ok(c.range(range(key))
        .await?
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_token_is_read_by_the_nodes_its_readers_allow_and_by_no_other() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agents: Vec<_> = ["a", "b", "c"].iter().map(|n| c.agent(n, &[])).collect();
    c.wait_nodes(&["a", "b", "c"], true).await;
    for n in ["a", "b"] {
        let o = c.eden(&["node", "label", n, "role=master"]).await;
        assert_eq!(o.code, Some(0), "{o:?}");
    }
    // The token is made on a, for the masters.
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "a",
            "--register",
            "token",
            "--readers",
            "role=master",
            "--",
            "echo",
            "s3cret",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let token = "/eden/vars/a/token";
    let (a, b, cc) = (
        c.client_as("node-a"),
        c.client_as("node-b"),
        c.client_as("node-c"),
    );
    assert_eq!(
        value(&a, token).await.unwrap().as_deref(),
        Some("\"s3cret\"")
    );
    assert_eq!(
        value(&b, token).await.unwrap().as_deref(),
        Some("\"s3cret\"")
    );

    // c: refused by get, prefix range, a range to the end, watch and txn (compare or range).
    denied(cc.range(range(token)).await, "get");
    denied(cc.range(prefix("/eden/vars/a/")).await, "prefix");
    denied(
        cc.range(RangeRequest {
            key: "/eden/vars/".into(),
            range_end: vec![0],
            ..Default::default()
        })
        .await,
        "range to the end",
    );
    // b may read the token, but not the range around it (nothing is filtered after the fact).
    denied(b.range(prefix("/eden/vars/a/")).await, "b's prefix");
    let first = watch_key(&cc, token).recv().await.unwrap().unwrap();
    assert!(
        first.canceled && first.cancel_reason.contains("permission denied"),
        "{first:?}"
    );
    let read_in_txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(range(token))),
        }],
        ..Default::default()
    };
    denied(cc.txn(read_in_txn).await, "txn range");
    let compare_in_txn = TxnRequest {
        compare: vec![Compare {
            key: token.into(),
            target: compare::CompareTarget::Value as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Value(b"\"s3cret\"".to_vec())),
            ..Default::default()
        }],
        ..Default::default()
    };
    denied(cc.txn(compare_in_txn).await, "txn compare");

    // Through a task template: b's run renders it, c's fails before running anything.
    let tmpl = r#"{{ vars["a"].token }}"#;
    let o = c.eden(&["run", "--nodes", "b", "--", "echo", tmpl]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("s3cret"), "{o:?}");
    let o = c.eden(&["run", "--nodes", "c", "--", "echo", tmpl]).await;
    assert_eq!(o.code, Some(4), "{o:?}");
    assert!(
        o.stdout.contains("may not read") && !o.stdout.contains("s3cret"),
        "{o:?}"
    );

    // Labelled a master, c reads it and may watch it...
    let o = c.eden(&["node", "label", "c", "role=master"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(
        value(&cc, token).await.unwrap().as_deref(),
        Some("\"s3cret\"")
    );
    let mut w = watch_key(&cc, token);
    let created = w.recv().await.unwrap().unwrap();
    assert!(created.created && !created.canceled, "{created:?}");
    // ...until the label goes: its open watch is canceled with the reason, its reads refused.
    let o = c.eden(&["node", "label", "c", "role-"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("the watch was not canceled after the label went")
        .unwrap()
        .unwrap();
    assert!(
        ended.canceled && ended.cancel_reason.contains("permission denied"),
        "{ended:?}"
    );
    denied(cc.range(range(token)).await, "get after unlabel");
    // The eden CLI says so with its own exit code.
    let o = c.eden_as("node-c", &["var", "get", "a", "token"]).await;
    assert_eq!(o.code, Some(8), "{o:?}");
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    // Refusals are audit events (a few per identity and minute).
    wait_for(
        "c's refusals to be audit events",
        Duration::from_secs(10),
        || async {
            let o = c
                .eden(&["event", "ls", "audit/denied/**", "-w", "json"])
                .await;
            o.stdout.contains("audit/denied/node/c") && o.stdout.contains("may not read")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_not_label_itself_write_for_another_node_or_run_the_cluster() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agents: Vec<_> = ["a", "c"].iter().map(|n| c.agent(n, &[])).collect();
    c.wait_nodes(&["a", "c"], true).await;
    let o = c
        .eden(&["run", "--nodes", "a", "--async", "--", "sleep", "30"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let task = o.stdout.trim().to_string();
    let cc = c.client_as("node-c");
    let a = c.client_as("node-a");
    // Its own registration keys: yes. Its labels, another node's keys, tasks: no.
    cc.put(put("/eden/nodes/c/facts", "{}")).await.unwrap();
    denied(
        cc.put(put("/eden/nodes/c/labels", r#"{"role":"master"}"#))
            .await,
        "own labels",
    );
    denied(cc.put(put("/eden/nodes/a/facts", "{}")).await, "a's facts");
    denied(
        cc.put(put("/eden/vars/a/token", "\"x\"")).await,
        "a's variable",
    );
    denied(
        cc.put(put(&format!("/eden/runs/{task}/results/a"), "{}"))
            .await,
        "a's result",
    );
    denied(
        cc.put(put(&format!("/eden/runs/{task}/claims/c"), "{}"))
            .await,
        "a claim on a task not assigned to it",
    );
    denied(cc.put(put("/eden/tasks/x", "{}")).await, "a task");
    denied(cc.put(put("/eden/reactors/r", "{}")).await, "a rule");
    denied(cc.put(put("plain", "x")).await, "a key outside /eden/");
    denied(
        cc.range(range(&format!("/eden/tasks/{task}"))).await,
        "a's task spec",
    );
    // The node it runs on may read its task and its cancel mark.
    a.range(range(&format!("/eden/tasks/{task}")))
        .await
        .unwrap();
    // A forbidden write hidden in a nested txn's failure branch.
    let nested = TxnRequest {
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(put(
                        "/eden/nodes/c/labels",
                        "{}",
                    ))),
                }],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    denied(cc.txn(nested).await, "nested txn");
    // Through the CLI too: `eden node label` as node c is refused with exit 8.
    let o = c
        .eden_as("node-c", &["node", "label", "c", "role=master"])
        .await;
    assert_eq!(o.code, Some(8), "{o:?}");

    // Cluster-wide calls: a node gets status and the member list, nothing else.
    cc.status_of(0).await.unwrap();
    cc.member_list().await.unwrap();
    denied(cc.snapshot().await, "snapshot");
    denied(cc.defragment_of(0).await, "defragment");
    denied(cc.hash_kv_of(0, 0).await, "hash kv");
    denied(
        cc.compact(eden_proto::etcdserverpb::CompactionRequest {
            revision: 1,
            ..Default::default()
        })
        .await,
        "compact",
    );
    denied(cc.lease_leases().await, "lease list");
    let o = c
        .eden_as(
            "node-c",
            &["member", "add", "x", "--peer-addr", "127.0.0.1:1"],
        )
        .await;
    assert_eq!(o.code, Some(8), "{o:?}");

    // Leases: another node's lease may not be kept alive or revoked; its TTL lists no key.
    let alive = c
        .client()
        .range(range("/eden/nodes/a/alive"))
        .await
        .unwrap();
    let lease = alive.kvs[0].lease;
    denied(
        cc.lease_keep_alive_once(lease).await,
        "keep-alive of a's lease",
    );
    denied(cc.lease_revoke(lease).await, "revoke of a's lease");
    let ttl = cc.lease_time_to_live(lease, true).await.unwrap();
    assert!(ttl.keys.is_empty(), "{ttl:?}");
    let ttl = c.client().lease_time_to_live(lease, true).await.unwrap();
    assert_eq!(ttl.keys, vec![b"/eden/nodes/a/alive".to_vec()]);
    // a's agent still keeps it alive (its own lease).
    wait_for("a to stay up", Duration::from_secs(10), || async {
        a.lease_keep_alive_once(lease).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_answers_members_only() {
    let c = Cluster::start_tls(1, &[]).await;
    let tls = c.tls_of("node-c").unwrap();
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &tls.cert_pem,
            &tls.key_pem,
        ))
        .domain_name("127.0.0.1");
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", c.members[0].peer_addr))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .expect("a node's certificate passes the TLS handshake");
    let mut pc = eden_proto::peer::peer_client::PeerClient::new(ch);
    let r = pc.read_index(eden_proto::peer::Payload::default()).await;
    assert_eq!(
        r.expect_err("a node's peer call was answered").code(),
        tonic::Code::PermissionDenied
    );
    // Nor may it append to a member's log, in a call or on a stream.
    let r = pc
        .append_entries(eden_proto::peer::Payload::default())
        .await;
    assert_eq!(
        r.expect_err("a node's append was answered").code(),
        tonic::Code::PermissionDenied
    );
    let r = pc
        .append_stream(futures::stream::iter(
            [eden_proto::peer::Payload::default()],
        ))
        .await;
    assert_eq!(
        r.expect_err("a node's append stream was opened").code(),
        tonic::Code::PermissionDenied
    );
    // Forwarded writes are proposed as they come: a node must never reach them (it would write
    // past the authorizer).
    let r = pc.forward_batch(eden_proto::peer::Payload::default()).await;
    assert_eq!(
        r.expect_err("a node's forwarded writes were taken").code(),
        tonic::Code::PermissionDenied
    );
    let r = pc
        .ask(futures::stream::iter(
            [eden_proto::peer::Payload::default()],
        ))
        .await;
    assert_eq!(
        r.expect_err("a node's ask stream was opened").code(),
        tonic::Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_users_and_roles_decide_what_a_user_certificate_may_do() {
    let c = Cluster::start_tls(1, &[]).await;
    let etcdctl = |who: &str, args: &[&str]| {
        let o = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &c.endpoints().join(","),
                "--dial-timeout",
                "5s",
            ])
            .args(c.tls_flags(who))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    // etcdctl's auth commands, as the admin.
    for args in [
        &["role", "add", "app"][..],
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "/app/",
        ],
        &["user", "add", "alice:unused"],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        let (ok, out) = etcdctl("admin", args);
        assert!(ok, "etcdctl {args:?}: {out}");
    }
    let (ok, out) = etcdctl("admin", &["role", "get", "app"]);
    assert!(ok && out.contains("/app/"), "{out}");
    let (ok, out) = etcdctl("admin", &["user", "get", "alice"]);
    assert!(ok && out.contains("app"), "{out}");

    // alice, with the certificate that names user:alice.
    let (ok, out) = etcdctl("user-alice", &["put", "/app/x", "1"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl("user-alice", &["get", "/app/", "--prefix"]);
    assert!(ok && out.contains("/app/x"), "{out}");
    for args in [
        &["put", "/other", "1"][..],
        &["get", "", "--prefix"],
        &["get", "/app", "--prefix"],
        &["user", "list"],
    ] {
        let (ok, out) = etcdctl("user-alice", args);
        assert!(!ok && out.contains("permission denied"), "{args:?}: {out}");
    }

    // eden's user and role commands mirror etcdctl's, and a revoked permission takes effect.
    let o = c.eden(&["user", "get", "alice"]).await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (Some(0), "User: alice\nRoles: app\n"),
        "{o:?}"
    );
    let o = c
        .eden(&["role", "revoke-permission", "app", "/app/", "--prefix"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c.eden_as("user-alice", &["put", "/app/y", "2"]).await;
    assert_eq!(o.code, Some(8), "{o:?}");
    // The root role is every right.
    for args in [
        &["role", "add", "root"][..],
        &["user", "grant-role", "alice", "root"],
    ] {
        let o = c.eden(args).await;
        assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
    }
    let o = c.eden_as("user-alice", &["put", "/other", "3"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c.eden(&["user", "ls"]).await;
    assert_eq!(o.stdout, "alice\n", "{o:?}");
}

/// Allowed (the call got past the authorizer: answered, or refused for another reason), or
/// refused by it (permission denied, no or a bad certificate).
fn allowed<T>(r: &Result<T, tonic::Status>) -> bool {
    match r {
        Ok(_) => true,
        // Answers a handler gives once past the authorizer (an unknown member, a bad argument,
        // a call not supported yet); anything else (permission denied, no certificate, a failed
        // handshake) never got through.
        Err(s) => matches!(
            s.code(),
            tonic::Code::NotFound
                | tonic::Code::InvalidArgument
                | tonic::Code::Unimplemented
                | tonic::Code::FailedPrecondition
                | tonic::Code::OutOfRange
                | tonic::Code::AlreadyExists
        ),
    }
}

/// Every RPC of the client port against every kind of caller, allowed and refused as the rules
/// say (design/security.md's table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_over_every_rpc_and_caller() {
    use eden_proto::etcdserverpb::auth_client::AuthClient;
    use eden_proto::etcdserverpb::cluster_client::ClusterClient;
    use eden_proto::etcdserverpb::kv_client::KvClient;
    use eden_proto::etcdserverpb::lease_client::LeaseClient;
    use eden_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use eden_proto::etcdserverpb::watch_client::WatchClient;
    use eden_proto::etcdserverpb::*;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

    let c = Cluster::start_tls(1, &[]).await;
    let _a = c.agent("a", &[]);
    c.wait_nodes(&["a"], true).await;
    for args in [
        &["role", "add", "app"][..],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "/app/",
            "--prefix",
        ],
        &["user", "add", "alice"],
        &["user", "grant-role", "alice", "app"],
    ] {
        assert_eq!(c.eden(args).await.code, Some(0), "{args:?}");
    }
    let other = c.dir().join("other-pki");
    eden_tests::run_eden_ok(&["pki".into(), "init".into(), other.display().to_string()]);
    let pki = c.pki.clone().unwrap();
    let ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let ep = format!("https://{}", c.members[0].endpoint());
    let channel = |cert: Option<(std::path::PathBuf, std::path::PathBuf)>| {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
        if let Some((crt, key)) = cert {
            tls = tls.identity(Identity::from_pem(
                std::fs::read_to_string(crt).unwrap(),
                std::fs::read_to_string(key).unwrap(),
            ));
        }
        Endpoint::from_shared(ep.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy()
    };
    let own = |who: &str| {
        c.tls_of(who);
        Some((
            pki.join(format!("{who}.crt")),
            pki.join(format!("{who}.key")),
        ))
    };
    let callers: Vec<(&str, Channel)> = vec![
        ("admin", channel(own("admin"))),
        ("node-a", channel(own("node-a"))),
        ("node-c", channel(own("node-c"))),
        ("alice", channel(own("user-alice"))),
        ("no-cert", channel(None)),
        (
            "other-ca",
            channel(Some((other.join("admin.crt"), other.join("admin.key")))),
        ),
    ];
    let lease = c
        .client()
        .range(RangeRequest {
            key: b"/eden/nodes/a/alive".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .kvs[0]
        .lease;
    let range = |k: &str, end: &[u8]| RangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        ..Default::default()
    };
    let put = |k: &str| PutRequest {
        key: k.into(),
        value: b"{}".to_vec(),
        ..Default::default()
    };
    // The task's own lease (the matrix counts the keys on the node's).
    let task_lease = c.client().lease_grant(600, 0).await.unwrap().id;
    let task_json = |who: &str| {
        serde_json::to_vec(&eden_proto::model::objects::TaskSpec {
            id: format!("20261201-000000-{who}"),
            command: vec!["true".into()],
            script: None,
            shell: false,
            env: Default::default(),
            cwd: None,
            timeout_ms: 1_000,
            deadline: 0,
            register: None,
            readers: Default::default(),
            for_: None,
            targets: vec!["a".into()],
            selector: "nodes a".into(),
            created_at: 0,
            lease: task_lease,
        })
        .unwrap()
    };
    // (rpc, admin, node-a, node-c, alice); no-cert and other-ca are refused everything.
    type Row = (&'static str, [bool; 4]);
    let mut failures = Vec::new();
    for (name, ch) in &callers {
        let col = match *name {
            "admin" => Some(0),
            "node-a" => Some(1),
            "node-c" => Some(2),
            "alice" => Some(3),
            _ => None,
        };
        let mut kv = KvClient::new(ch.clone());
        let mut lc = LeaseClient::new(ch.clone());
        let mut cl = ClusterClient::new(ch.clone());
        let mut mt = MaintenanceClient::new(ch.clone());
        let mut au = AuthClient::new(ch.clone());
        let mut jn = eden_proto::join::join_client::JoinClient::new(ch.clone());
        let mut lk = eden_proto::v3lockpb::lock_client::LockClient::new(ch.clone());
        let mut el = eden_proto::v3electionpb::election_client::ElectionClient::new(ch.clone());
        // Lock and campaign under a name, then let go at once (the next caller takes its turn).
        let locked = lk
            .lock(eden_proto::v3lockpb::LockRequest {
                name: b"/app/lock".to_vec(),
                lease: 0,
            })
            .await;
        if let Ok(r) = &locked {
            lk.unlock(eden_proto::v3lockpb::UnlockRequest {
                key: r.get_ref().key.clone(),
            })
            .await
            .unwrap();
        }
        let campaigned = el
            .campaign(eden_proto::v3electionpb::CampaignRequest {
                name: b"/app/election".to_vec(),
                lease: 0,
                value: b"me".to_vec(),
            })
            .await;
        if let Ok(r) = &campaigned {
            el.resign(eden_proto::v3electionpb::ResignRequest {
                leader: r.get_ref().leader.clone(),
            })
            .await
            .unwrap();
        }
        let (csr, _) =
            eden_proto::pki::new_csr(&eden_proto::pki::Identity::Admin("x".into())).unwrap();
        let nested = TxnRequest {
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(put("/eden/nodes/a/labels"))),
                    }],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let results: Vec<(Row, bool)> = vec![
            (
                ("range own key", [true, true, false, false]),
                allowed(&kv.range(range("/eden/nodes/a/facts", b"")).await),
            ),
            (
                ("range /app/", [true, false, false, true]),
                allowed(&kv.range(range("/app/", b"/app0")).await),
            ),
            (
                ("range to the end", [true, false, false, false]),
                allowed(&kv.range(range("/", b"\0")).await),
            ),
            (
                ("put own facts", [true, true, false, false]),
                allowed(&kv.put(put("/eden/nodes/a/facts")).await),
            ),
            (
                ("put own labels", [true, false, false, false]),
                allowed(&kv.put(put("/eden/nodes/a/labels")).await),
            ),
            (
                ("put /app/x", [true, false, false, true]),
                allowed(&kv.put(put("/app/x")).await),
            ),
            (
                ("delete /app/", [true, false, false, true]),
                allowed(
                    &kv.delete_range(DeleteRangeRequest {
                        key: b"/app/".to_vec(),
                        range_end: b"/app0".to_vec(),
                        ..Default::default()
                    })
                    .await,
                ),
            ),
            (
                ("nested txn", [true, false, false, false]),
                allowed(&kv.txn(nested).await),
            ),
            (
                // eden's one-entry task: the same rights as its txn (a node may not make one,
                // not even for itself).
                ("task create", [true, false, false, false]),
                allowed(
                    &eden_proto::tasks::tasks_client::TasksClient::new(ch.clone())
                        .create(eden_proto::tasks::CreateRequest {
                            spec_json: task_json(name),
                        })
                        .await,
                ),
            ),
            (
                ("compact", [true, false, false, false]),
                allowed(
                    &kv.compact(CompactionRequest {
                        revision: 1,
                        ..Default::default()
                    })
                    .await,
                ),
            ),
            (
                ("lock under /app/", [true, false, false, true]),
                allowed(&locked),
            ),
            (
                ("campaign under /app/", [true, false, false, true]),
                allowed(&campaigned),
            ),
            (
                ("lease grant", [true, true, true, true]),
                allowed(&lc.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await),
            ),
            (
                ("lease list", [true, false, false, false]),
                allowed(&lc.lease_leases(LeaseLeasesRequest {}).await),
            ),
            (
                ("lease ttl", [true, true, true, true]),
                allowed(
                    &lc.lease_time_to_live(LeaseTimeToLiveRequest {
                        id: lease,
                        keys: true,
                    })
                    .await,
                ),
            ),
            (
                ("member list", [true, true, true, true]),
                allowed(
                    &cl.member_list(MemberListRequest {
                        linearizable: false,
                    })
                    .await,
                ),
            ),
            (
                ("member add", [true, false, false, false]),
                allowed(
                    &cl.member_add(MemberAddRequest {
                        peer_ur_ls: vec!["not a url".into()],
                        is_learner: true,
                    })
                    .await,
                ),
            ),
            (
                ("member remove", [true, false, false, false]),
                allowed(&cl.member_remove(MemberRemoveRequest { id: 1 }).await),
            ),
            (
                ("member update", [true, false, false, false]),
                allowed(
                    &cl.member_update(MemberUpdateRequest {
                        id: 1,
                        peer_ur_ls: vec![],
                    })
                    .await,
                ),
            ),
            (
                ("member promote", [true, false, false, false]),
                allowed(&cl.member_promote(MemberPromoteRequest { id: 1 }).await),
            ),
            (
                ("status", [true, true, true, true]),
                allowed(&mt.status(StatusRequest {}).await),
            ),
            (
                ("alarm", [true, false, false, false]),
                allowed(&mt.alarm(AlarmRequest::default()).await),
            ),
            (
                ("defragment", [true, false, false, false]),
                allowed(&mt.defragment(DefragmentRequest {}).await),
            ),
            (
                ("hash kv", [true, false, false, false]),
                allowed(&mt.hash_kv(HashKvRequest { revision: 0 }).await),
            ),
            (
                ("hash", [true, false, false, false]),
                allowed(&mt.hash(HashRequest {}).await),
            ),
            (
                ("snapshot", [true, false, false, false]),
                allowed(&mt.snapshot(SnapshotRequest {}).await),
            ),
            (
                ("move leader", [true, false, false, false]),
                allowed(&mt.move_leader(MoveLeaderRequest { target_id: 1 }).await),
            ),
            (
                ("user list", [true, false, false, false]),
                allowed(&au.user_list(AuthUserListRequest {}).await),
            ),
            (
                ("renew own certificate", [true, true, true, true]),
                allowed(
                    &jn.renew(eden_proto::join::RenewRequest { csr_pem: csr })
                        .await,
                ),
            ),
            (
                ("auth status", [true, true, true, true]),
                allowed(&au.auth_status(AuthStatusRequest {}).await),
            ),
        ];
        for ((rpc, want), got) in results {
            let want = col.is_some_and(|i| want[i]);
            if want != got {
                failures.push(format!(
                    "{name} {rpc}: want allowed={want}, got allowed={got}"
                ));
            }
        }
        // A watch: created for what may be read, canceled at once otherwise.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"/eden/nodes/a/".to_vec(),
                    range_end: b"/eden/nodes/a0".to_vec(),
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
        let got = match WatchClient::new(ch.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(s) => match s.into_inner().message().await {
                Ok(Some(m)) => m.created && !m.canceled,
                _ => false,
            },
            Err(_) => false,
        };
        let want = col.is_some_and(|i| [true, true, false, false][i]);
        if want != got {
            failures.push(format!(
                "{name} watch: want allowed={want}, got allowed={got}"
            ));
        }
        // LeaseTimeToLive lists only the keys the caller may read.
        if let Some(i) = col {
            let keys = lc
                .lease_time_to_live(LeaseTimeToLiveRequest {
                    id: lease,
                    keys: true,
                })
                .await
                .map(|r| r.into_inner().keys.len())
                .unwrap_or(99);
            if keys != [1, 1, 0, 0][i] {
                failures.push(format!("{name} lease ttl keys: {keys}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A write is applied only as it was authorized, even when the member that checked it trails the
/// leader: node a's certificate is revoked while the member a talks to hears nothing from the
/// leader (the leader's link to it is cut; its own link to the leader, which carries forwarded
/// writes, works). That member still sees a valid certificate and forwards a's write, but the
/// keys its check read changed before the write was applied, so the write is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_revoked_a_moment_ago_is_not_used_through_a_lagging_member() {
    let c = Cluster::start_partitionable_tls(3, &["--election-timeout", "5000"]).await;
    let leader = c.wait_leader().await;
    let lagging = (leader + 1) % 3;
    let a = Client::with_tls(&[c.members[lagging].endpoint()], c.tls_of("node-a")).unwrap();
    let put = |k: &str| PutRequest {
        key: k.into(),
        value: b"{}".to_vec(),
        ..Default::default()
    };
    a.put(put("/eden/nodes/a/facts")).await.unwrap();
    let admin = Client::with_tls(&[c.members[leader].endpoint()], c.tls_of("admin")).unwrap();
    c.net.as_ref().unwrap().block(leader, lagging);
    eden_proto::model::certs::revoke(&admin, "node:a")
        .await
        .unwrap();
    // The lagging member has not seen the revocation: a's (serializable) read still passes there.
    a.range(RangeRequest {
        serializable: true,
        ..range("/eden/nodes/a/facts")
    })
    .await
    .expect("the lagging member does not know yet");
    let r = a.put(put("/eden/nodes/a/owner")).await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains("rights kept changing")),
        "a revoked node's write was applied: {r:?}"
    );
    let got = admin.range(range("/eden/nodes/a/owner")).await.unwrap();
    assert!(got.kvs.is_empty(), "the write must not be applied");
    // Once it has caught up, the member refuses a's certificate itself.
    c.net.as_ref().unwrap().heal();
    wait_for("the member to refuse a", Duration::from_secs(20), || async {
        matches!(a.range(range("/eden/nodes/a/facts")).await, Err(e) if e.code() == Some(tonic::Code::Unauthenticated))
    })
    .await;
}
