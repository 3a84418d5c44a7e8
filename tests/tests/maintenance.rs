//! Cluster maintenance on real processes: backups taken under writes, the space quota, and etcdctl
//! 3.4's cluster-operation commands.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eden_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest};
use eden_tests::{eden_local, etcdctl, free_port, wait_for, Cluster};

fn all_keys(rev: i64) -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision: rev,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_saved_during_writes_restores_exactly_its_revision() {
    let c = Cluster::start(3, &[]).await;
    let client = c.client();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("b/{}", i % 50);
                if i % 7 == 3 {
                    let _ = client
                        .delete_range(DeleteRangeRequest {
                            key: key.into(),
                            ..Default::default()
                        })
                        .await;
                } else {
                    let _ = client
                        .put(PutRequest {
                            key: key.into(),
                            value: i.to_string().into(),
                            ..Default::default()
                        })
                        .await;
                }
                i += 1;
            }
        })
    };
    wait_for("some writes", Duration::from_secs(20), || async {
        client.range(all_keys(0)).await.is_ok_and(|r| r.count >= 30)
    })
    .await;
    let (backup, rev) = client.snapshot().await.unwrap();
    wait_for(
        "more writes after the backup",
        Duration::from_secs(20),
        || async {
            client
                .range(all_keys(0))
                .await
                .is_ok_and(|r| r.header.is_some_and(|h| h.revision >= rev + 10))
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let expected = client.range(all_keys(rev)).await.unwrap().kvs;
    assert!(
        client
            .range(all_keys(0))
            .await
            .unwrap()
            .header
            .unwrap()
            .revision
            > rev,
        "writes went on after the backup"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    std::fs::write(&file, &backup).unwrap();
    let restored = Cluster::start_restored(1, &[], &file).await;
    let got = restored.client().range(all_keys(0)).await.unwrap();
    assert_eq!(
        got.header.unwrap().revision,
        rev,
        "the new cluster starts at the backup's revision"
    );
    assert_eq!(
        got.kvs, expected,
        "exactly the keys (values, revisions, versions) at the backup's revision"
    );
    // It is a working cluster: writes continue from that revision.
    let r = restored
        .client()
        .put(PutRequest {
            key: "after".into(),
            value: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.header.unwrap().revision, rev + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_trips_and_compaction_defrag_and_disarm_recover() {
    let c = Cluster::start(
        1,
        &[
            "--quota-bytes",
            "400000",
            "--snapshot-count",
            "20",
            "--snapshot-catchup-entries",
            "5",
        ],
    )
    .await;
    let client = c.client();
    let value = vec![b'x'; 8000];
    let mut refused = None;
    for i in 0..200 {
        match client
            .put(PutRequest {
                key: "big".into(),
                value: value.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e.to_string()));
                break;
            }
        }
    }
    let (at, msg) = refused.expect("the quota never tripped");
    assert!(at > 10, "tripped too early, at put {at}");
    assert_eq!(msg, "etcdserver: mvcc: database space exceeded");
    let alarms = client.alarms_of(0).await.unwrap().alarms;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].alarm, 1, "NOSPACE");
    let (ok, out, _) = etcdctl(&c.endpoints(), &["alarm", "list"]);
    assert!(
        ok && out.trim() == format!("memberID:{} alarm:NOSPACE", alarms[0].member_id),
        "{out}"
    );
    // endpoint health reports the alarm.
    let health = Command::new(eden_tests::eden_bin())
        .args(eden_tests::tls_flags_for(&c.endpoints()))
        .args([
            "--endpoints",
            &c.members[0].endpoint(),
            "endpoint",
            "health",
        ])
        .output()
        .unwrap();
    assert_eq!(health.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&health.stderr).contains("is unhealthy"));
    // Reads and deletes still work; more data does not.
    assert_eq!(
        client
            .range(RangeRequest {
                key: "big".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .count,
        1
    );
    client
        .delete_range(DeleteRangeRequest {
            key: "nothing".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(client
        .put(PutRequest {
            key: "small".into(),
            value: "x".into(),
            ..Default::default()
        })
        .await
        .is_err());
    // Compaction plus defragmentation free the space; disarming lets writes in again.
    let rev = client
        .range(RangeRequest {
            key: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    client
        .compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await
        .unwrap();
    client.defragment_of(0).await.unwrap();
    let size = client.status_of(0).await.unwrap().db_size;
    assert!(size < 400_000, "space was not freed: {size}");
    let (ok, out, err) = etcdctl(&c.endpoints(), &["alarm", "disarm"]);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}{err}");
    assert!(client.alarms_of(0).await.unwrap().alarms.is_empty());
    client
        .put(PutRequest {
            key: "small".into(),
            value: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_endpoint_alarm_and_snapshot_commands() {
    let mut c = Cluster::start(3, &[]).await;
    let eps = c.endpoints();
    etcdctl(&eps, &["put", "k", "v"]);
    // member add --learner, then the new member starts and takes that entry over.
    let peer = format!("127.0.0.1:{}", free_port());
    let (ok, out, err) = etcdctl(
        &eps,
        &[
            "member",
            "add",
            "newbie",
            &format!("--peer-urls=http://{peer}"),
            "--learner",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("Member") && out.contains("added to cluster"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (ok, list, _) = etcdctl(&eps, &["member", "list"]);
    assert!(
        ok && list.contains(&format!("{id}, unstarted, , http://{peer}, , true")),
        "{list}"
    );
    // A learner that has not caught up can't be promoted, and etcd's reason is given.
    let (ok, _, err) = etcdctl(&eps, &["member", "promote", &id]);
    assert!(
        !ok && err
            .contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{err}"
    );
    // member update moves it to another peer address before it starts.
    let peer = format!("127.0.0.1:{}", free_port());
    let (ok, out, err) = etcdctl(
        &eps,
        &[
            "member",
            "update",
            &id,
            &format!("--peer-urls=http://{peer}"),
        ],
    );
    assert!(ok && out.contains("updated in cluster"), "{out}{err}");
    assert!(etcdctl(&eps, &["member", "list"])
        .1
        .contains(&format!("{id}, unstarted, , http://{peer}, , true")));
    let n = c.join_at(&peer, &["--stay-learner"]);
    wait_for("the learner to start", Duration::from_secs(20), || async {
        etcdctl(&eps, &["member", "list"])
            .1
            .contains(&format!("{id}, started, m{n}"))
    })
    .await;
    wait_for(
        "etcdctl member promote to succeed",
        Duration::from_secs(20),
        || async { etcdctl(&eps, &["member", "promote", &id]).0 },
    )
    .await;
    assert!(etcdctl(&eps, &["member", "list"])
        .1
        .contains(&format!("{id}, started, m{n}, http://{peer}")));
    let (ok, out, err) = etcdctl(&eps, &["member", "remove", &id]);
    assert!(ok && out.contains("removed from cluster"), "{out}{err}");
    c.wait_exited(n).await;

    // endpoint status and hashkv over the whole cluster: everyone agrees.
    let (ok, out, err) = etcdctl(&eps, &["endpoint", "hashkv", "--cluster", "-w", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hashes: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["HashKV"]["hash"].as_u64().unwrap())
        .collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{out}");
    let (ok, out, _) = etcdctl(&eps, &["endpoint", "status", "--cluster", "-w", "json"]);
    assert!(
        ok && serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
            == 3
    );

    // alarm list / disarm with no alarm, then snapshot save.
    let (ok, out, _) = etcdctl(&eps, &["alarm", "list"]);
    assert!(ok && out.is_empty(), "{out}");
    assert!(etcdctl(&eps, &["alarm", "disarm"]).0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcdctl.db");
    let (ok, out, err) = etcdctl(&eps[..1], &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok && out.contains("Snapshot saved at"), "{out}{err}");
    // eden restores what etcdctl saved.
    let restored = Cluster::start_restored(1, &[], &file).await;
    let kv: BTreeMap<Vec<u8>, Vec<u8>> = restored
        .client()
        .range(all_keys(0))
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    assert_eq!(kv.get(&b"k"[..]).map(|v| v.as_slice()), Some(&b"v"[..]));

    // The file is eden's format: `eden snapshot status` reads it, etcd's tools cannot.
    let o = eden_local(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert_eq!(o.0, 0, "{o:?}");
    let st: serde_json::Value = serde_json::from_str(&o.1).unwrap();
    let rev = c
        .client()
        .range(all_keys(0))
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    assert!(st["revision"].as_i64().unwrap() > 1, "{st}");
    assert!(st["revision"].as_i64().unwrap() <= rev, "{st}");
    assert!(st["keys"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["totalKey"].as_u64() >= st["keys"].as_u64(), "{st}");
    let (ok, _, err) = etcdctl(&[], &["snapshot", "status", file.to_str().unwrap()]);
    assert!(!ok && err.contains("invalid database"), "{err}");
    // A corrupt file is refused whole.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, bytes).unwrap();
    let o = eden_local(&["snapshot", "status", bad.to_str().unwrap()]);
    assert!(o.0 == 2 && o.2.contains("corrupt"), "{o:?}");

    // etcd's own snapshot: eden says what it is rather than "not an eden backup".
    let etcd = Cluster::start_etcd(1).await;
    let etcd_file = dir.path().join("etcd.db");
    let (ok, out, err) = etcdctl(
        &etcd.endpoints(),
        &["snapshot", "save", etcd_file.to_str().unwrap()],
    );
    assert!(ok, "{out}{err}");
    for args in [
        vec!["snapshot", "status", etcd_file.to_str().unwrap()],
        vec![
            "snapshot",
            "restore",
            etcd_file.to_str().unwrap(),
            "--data-dir",
            dir.path().join("r").to_str().unwrap(),
        ],
    ] {
        let o = eden_local(&args);
        assert!(
            o.0 == 2 && o.2.contains("this is an etcd snapshot"),
            "{args:?}: {o:?}"
        );
    }
    assert!(!dir.path().join("r").join("db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_keeps_the_configured_history() {
    // Revision mode: keep the last 20 revisions.
    let c = Cluster::start(
        1,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "20",
        ],
    )
    .await;
    let client = c.client();
    for i in 0..60 {
        client
            .put(PutRequest {
                key: "r".into(),
                value: i.to_string().into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let current = client
        .range(RangeRequest {
            key: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    wait_for(
        "revision-mode auto-compaction",
        Duration::from_secs(20),
        || async {
            client
                .hash_kv_of(0, 0)
                .await
                .is_ok_and(|h| h.compact_revision == current - 20)
        },
    )
    .await;
    let old = client
        .range(RangeRequest {
            key: "r".into(),
            revision: current - 21,
            ..Default::default()
        })
        .await;
    assert_eq!(
        old.unwrap_err().to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert!(client
        .range(RangeRequest {
            key: "r".into(),
            revision: current - 20,
            ..Default::default()
        })
        .await
        .is_ok());
    drop(c);

    // Periodic mode: keep 2 seconds of history.
    let c = Cluster::start(1, &["--auto-compaction-retention", "2s"]).await;
    let client = c.client();
    let first = client
        .put(PutRequest {
            key: "p".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    client
        .put(PutRequest {
            key: "p".into(),
            value: "2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for(
        "periodic auto-compaction",
        Duration::from_secs(20),
        || async {
            client
                .hash_kv_of(0, 0)
                .await
                .is_ok_and(|h| h.compact_revision > first)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_prometheus_text_and_health() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Without the reactor runtime, whose watch, lease, key and requests would count too.
    // Plaintext HTTP here (the metrics port over TLS is tests/tests/tls.rs's).
    let c = Cluster::start(1, &["--metrics-addr", &addr, "--no-reactor", "--insecure"]).await;
    let client = c.client();
    client
        .put(PutRequest {
            key: "m".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .range(RangeRequest {
            key: "m".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _watch = client.watch(
        eden_proto::etcdserverpb::WatchCreateRequest {
            key: "m".into(),
            ..Default::default()
        },
        Duration::from_secs(5),
    );
    client.lease_grant(60, 0).await.unwrap();
    // A plain HTTP/1.1 GET; returns the body, a newline and the status code.
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the metrics port");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let code = head.split_whitespace().nth(1).unwrap_or("?").to_string();
        format!("{}\n{code}", body.trim_end())
    };
    let health = get("/health");
    assert!(
        health.ends_with("\n200") && health.contains("\"health\":\"true\""),
        "{health}"
    );
    let mut text = String::new();
    wait_for("the watch to be counted", Duration::from_secs(5), || {
        text = get("/metrics");
        let done = text.contains("etcd_debugging_mvcc_watcher_total 1");
        async move { done }
    })
    .await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {name} in:\n{text}"))
    };
    assert_eq!(value("etcd_server_has_leader"), 1.0);
    assert!(value("eden_raft_term") >= 1.0);
    assert!(value("etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(value("etcd_server_proposals_committed_total") >= 2.0);
    assert!(value("etcd_server_proposals_applied_total") >= 2.0);
    assert_eq!(value("etcd_server_proposals_failed_total"), 0.0);
    assert!(value("eden_raft_applied_index") >= 3.0);
    assert!(value("etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert_eq!(value("etcd_debugging_mvcc_keys_total"), 1.0);
    assert_eq!(value("etcd_debugging_mvcc_watch_stream_total"), 1.0);
    assert_eq!(value("etcd_debugging_mvcc_slow_watcher_total"), 0.0);
    assert_eq!(value("eden_leases_total"), 1.0);
    assert!(value("etcd_disk_wal_fsync_duration_seconds_count") >= 2.0);
    assert!(
        text.contains(
            "grpc_server_handling_seconds_count{grpc_method=\"Put\",grpc_service=\"KV\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
}
