//! Small files between machines (issue 14), with real processes and TLS on: a file is readable by
//! the nodes its readers allow, checked by the server at every request against the reader's
//! labels as they are then; names, sizes and readers are checked before anything is stored.

use std::time::Duration;

use eden_proto::client::{Client, ClientError};
use eden_proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest};
use eden_tests::Cluster;

fn denied<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) {
    match r {
        Err(e) if e.is_permission_denied() => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

fn range(key: &str, prefix: bool) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: if prefix {
            eden_proto::keys::prefix_end(key.as_bytes())
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// A watch of `key` by `client`: its responses.
async fn watch(
    client: &std::sync::Arc<Client>,
    key: &str,
) -> tokio::sync::mpsc::Receiver<Result<eden_proto::etcdserverpb::WatchResponse, ClientError>> {
    client.watch(
        WatchCreateRequest {
            key: key.into(),
            ..Default::default()
        },
        Duration::from_secs(30),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_read_by_the_nodes_its_readers_allow_now_and_by_no_other() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agents: Vec<_> = ["a", "b", "c"].iter().map(|n| c.agent(n, &[])).collect();
    c.wait_nodes(&["a", "b", "c"], true).await;
    for n in ["a", "b"] {
        let o = c.eden(&["node", "label", n, "role=master"]).await;
        assert_eq!(o.code, Some(0), "{o:?}");
    }
    // Node a publishes a key (bytes that are not text) for the masters.
    let local = c.dir().join("ca.key");
    let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &bytes).unwrap();
    let l = local.display().to_string();
    let o = c
        .eden_as(
            "node-a",
            &[
                "file",
                "put",
                &l,
                "a/tls/ca.key",
                "--readers",
                "role=master",
                "--mode",
                "0600",
            ],
        )
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");

    // b gets it byte for byte, with its mode; c is refused by file get, get, range and watch.
    let got = c.dir().join("b-ca.key");
    let g = got.display().to_string();
    let o = c
        .eden_as("node-b", &["file", "get", "a/tls/ca.key", "-o", &g])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&got).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let o = c.eden_as("node-c", &["file", "get", "a/tls/ca.key"]).await;
    assert_eq!(o.code, Some(8), "{o:?}");
    let cc = c.client_as("node-c");
    let data = "/eden/files/data/a/tls/ca.key";
    denied(cc.range(range(data, false)).await, "get");
    denied(cc.range(range("/eden/files/data/", true)).await, "prefix");
    let first = watch(&cc, data).await.recv().await.unwrap().unwrap();
    assert!(first.canceled, "{first:?}");
    // Every node sees what files exist (to place them), not their bytes.
    let o = c.eden_as("node-c", &["file", "ls", "-l"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout.contains("a/tls/ca.key") && o.stdout.contains("node:a"),
        "{o:?}"
    );
    // c may not write in a's namespace, nor claim to be a in its own.
    let o = c
        .eden_as("node-c", &["file", "put", &l, "a/x", "--readers", "node:c"])
        .await;
    assert_eq!(o.code, Some(8), "{o:?}");
    let forged = serde_json::json!({"size": 1, "sha256": "", "mode": 420,
        "readers": {"nodes": ["c"]}, "writer": "node:a", "time": 0});
    denied(
        cc.put(PutRequest {
            key: "/eden/files/meta/c/x".into(),
            value: forged.to_string().into_bytes(),
            ..Default::default()
        })
        .await,
        "a forged writer",
    );

    // Labelled a master, c reads it and may watch it, until the label goes.
    let o = c.eden(&["node", "label", "c", "role=master"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(
        cc.range(range(data, false)).await.unwrap().kvs[0].value,
        bytes
    );
    let mut w = watch(&cc, data).await;
    let created = w.recv().await.unwrap().unwrap();
    assert!(created.created && !created.canceled, "{created:?}");
    let o = c.eden(&["node", "label", "c", "role-"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("the watch was not canceled after the label went")
        .unwrap()
        .unwrap();
    assert!(ended.canceled, "{ended:?}");
    denied(cc.range(range(data, false)).await, "get after unlabel");

    // A new version; history lists both, newest first; an admin removes it.
    let o = c
        .eden_as(
            "node-a",
            &[
                "file",
                "put",
                &l,
                "a/tls/ca.key",
                "--readers",
                "role=master",
            ],
        )
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c
        .eden(&["file", "history", "a/tls/ca.key", "-w", "json"])
        .await;
    let h: Vec<serde_json::Value> = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(h.len(), 2, "{o:?}");
    assert!(h[0]["revision"].as_i64() > h[1]["revision"].as_i64());
    let o = c.eden(&["file", "rm", "a/tls/ca.key"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c.eden(&["file", "get", "a/tls/ca.key"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_with_one_line_and_nothing_stored() {
    let c = Cluster::start_tls(1, &["--max-file-bytes", "100000"]).await;
    let small = c.dir().join("small");
    std::fs::write(&small, b"hello").unwrap();
    let big = c.dir().join("big");
    std::fs::write(&big, vec![b'x'; 100_001]).unwrap();
    let (s, b) = (small.display().to_string(), big.display().to_string());
    for (args, code, says) in [
        (
            vec!["file", "put", &s, "a/../etc/passwd", "--readers", "node:a"],
            2,
            "..",
        ),
        (
            vec!["file", "put", &s, "/etc/passwd", "--readers", "node:a"],
            2,
            "absolute",
        ),
        (vec!["file", "put", &s, "a/x"], 2, "no readers"),
        (
            vec!["file", "put", &s, "a/x", "--readers", "role in ("],
            2,
            "role in (",
        ),
        (
            vec!["file", "put", &b, "a/x", "--readers", "node:a"],
            1,
            "not binaries",
        ),
    ] {
        let o = c.eden(&args).await;
        assert_eq!(o.code, Some(code), "{args:?}: {o:?}");
        assert!(o.stderr.contains(says), "{args:?}: {o:?}");
        assert_eq!(o.stderr.trim().lines().count(), 1, "{args:?}: {o:?}");
    }
    let o = c.eden(&["file", "ls"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.trim().is_empty(), "nothing stored: {o:?}");
    let left = c.client().range(range("/eden/files/", true)).await.unwrap();
    assert!(left.kvs.is_empty(), "{left:?}");
}
