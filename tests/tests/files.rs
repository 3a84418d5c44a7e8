//! Small files between machines (issue 14), with real processes and TLS on: a file is readable by
//! the nodes its readers allow, checked by the server at every request against the reader's
//! labels as they are then; names, sizes and readers are checked before anything is stored.

use std::time::Duration;

use eden_proto::etcdserverpb::{PutRequest, RangeRequest};
use eden_tests::{denied, watch_key, Cluster};

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
    let first = watch_key(&cc, data).recv().await.unwrap().unwrap();
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
    let mut w = watch_key(&cc, data);
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

/// The CLI's path, for tasks that run `eden` as their node.
fn eden() -> String {
    eden_tests::eden_bin().display().to_string()
}

async fn eden_ok(c: &Cluster, args: &[&str]) -> eden_tests::CliOutput {
    let o = c.eden(args).await;
    assert_eq!(o.code, Some(0), "eden {args:?}: {o:?}");
    o
}

async fn wait_file(path: &std::path::Path, what: &str, cond: impl Fn(&[u8]) -> bool) {
    eden_tests::wait_for(what, Duration::from_secs(30), || async {
        std::fs::read(path).is_ok_and(|b| cond(&b))
    })
    .await;
}

/// The seed's certificate story: a task on a makes a CA with openssl and publishes its
/// certificate (plain) and key (sealed) for the masters; agents place them where the sync rule
/// says; c is refused and gets nothing; a new master gets them (the key re-sealed by a reactor
/// rule on a), and once unlabelled gets no later version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_story_masters_get_the_files_and_no_other_node_does() {
    let c = Cluster::start_tls(1, &[]).await;
    let agents: Vec<_> = ["a", "b", "c"].iter().map(|n| c.agent(n, &[])).collect();
    c.wait_nodes(&["a", "b", "c"], true).await;
    for n in ["a", "b"] {
        eden_ok(&c, &["node", "label", n, "role=master"]).await;
    }
    let placed = c.dir().join("placed");
    let rules = c.dir().join("sync.yaml");
    std::fs::write(
        &rules,
        format!(
            "name: tls\nfiles: a/tls/*\non: role=master\npath: {}/{{node}}/\n",
            placed.display()
        ),
    )
    .unwrap();
    eden_ok(&c, &["file", "sync", "apply", &rules.display().to_string()]).await;
    for n in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(placed.join(n)).unwrap();
    }
    let make_ca = format!(
        "set -e; cd \"$(mktemp -d)\"; openssl req -x509 -newkey ec -pkeyopt \
         ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj /CN=eden-test -days 1 \
         2>/dev/null; {e} file put ca.crt a/tls/ca.crt --readers role=master --mode 0644; \
         {e} file put ca.key a/tls/ca.key --readers role=master --mode 0600 --sealed",
        e = eden()
    );
    let o = c
        .eden(&["run", "--nodes", "a", "--shell", "--", &make_ca])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}\n{}", agents[0].log_text());

    // The certificate as stored, byte for byte, at the masters' paths; the key opened there.
    let cert = c
        .client()
        .range(range("/eden/files/data/a/tls/ca.crt", false))
        .await
        .unwrap()
        .kvs[0]
        .value
        .clone();
    for n in ["a", "b"] {
        wait_file(
            &placed.join(n).join("ca.crt"),
            "the certificate placed",
            |b| b == cert,
        )
        .await;
        wait_file(&placed.join(n).join("ca.key"), "the key placed", |b| {
            String::from_utf8_lossy(b).contains("PRIVATE KEY")
        })
        .await;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(placed.join(n).join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key = std::fs::read(placed.join("a").join("ca.key")).unwrap();
    assert_eq!(std::fs::read(placed.join("b").join("ca.key")).unwrap(), key);
    // What the servers hold of the sealed key is not the key.
    let stored = c
        .client()
        .range(range("/eden/files/data/a/tls/ca.key", false))
        .await
        .unwrap()
        .kvs[0]
        .value
        .clone();
    assert!(stored.starts_with(b"age-encryption.org/v1"), "not sealed");
    assert!(!String::from_utf8_lossy(&stored).contains("PRIVATE KEY"));
    // Recorded as placed (the event file/placed/b/a/tls/ca.crt).
    let rec = c
        .client()
        .range(range("/eden/nodes/b/files/a/tls/ca.crt", false))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rec.kvs[0].value).contains("\"placed\""),
        "{rec:?}"
    );

    // c: refused by file get and by a template, and nothing placed.
    let o = c.eden_as("node-c", &["file", "get", "a/tls/ca.crt"]).await;
    assert_eq!(o.code, Some(8), "{o:?}");
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "c",
            "--",
            "echo",
            r#"{{ files["a/tls/ca.crt"] }}"#,
        ])
        .await;
    assert_eq!(o.code, Some(4), "{o:?}");
    assert!(o.stdout.contains("may not read"), "{o:?}");
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "b",
            "--",
            "echo",
            r#"{{ files["a/tls/ca.crt"] }}"#,
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("BEGIN CERTIFICATE"), "{o:?}");
    assert!(std::fs::read_dir(placed.join("c"))
        .unwrap()
        .next()
        .is_none());

    // A rule on a re-seals a's sealed files when labels change; a new master d gets both.
    let reseal = c.dir().join("reseal.yaml");
    std::fs::write(
        &reseal,
        format!(
            "name: reseal\non: node/labels/*\nactions:\n  - run:\n      nodes: a\n      \
             command: [\"{}\", \"file\", \"reseal\", \"a/\"]\n",
            eden()
        ),
    )
    .unwrap();
    eden_ok(&c, &["reactor", "apply", &reseal.display().to_string()]).await;
    let d = c.agent("d", &[]);
    c.wait_nodes(&["d"], true).await;
    eden_ok(&c, &["node", "label", "d", "role=master"]).await;
    wait_file(&placed.join("d").join("ca.crt"), "d's certificate", |b| {
        b == cert
    })
    .await;
    wait_file(
        &placed.join("d").join("ca.key"),
        "d's key, re-sealed",
        |b| b == key,
    )
    .await;

    // Unlabelled, d gets no later version; b does.
    eden_ok(&c, &["node", "label", "d", "role-"]).await;
    let o = c
        .eden(&[
            "run", "--nodes", "a", "--shell", "--",
            &format!("echo v2 > /tmp/eden-v2-$$ && {} file put /tmp/eden-v2-$$ a/tls/ca.crt --readers role=master", eden()),
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    wait_file(&placed.join("b").join("ca.crt"), "b's new version", |b| {
        b == b"v2\n"
    })
    .await;
    let rec = c
        .client()
        .range(range("/eden/nodes/d/files/a/tls/ca.crt", false))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(placed.join("d").join("ca.crt")).unwrap(),
        cert,
        "{rec:?}\n{}",
        d.log_text()
    );
}

/// Read once: the node it is for reads it one time; a second read, and anyone else's, is refused
/// and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_once_file_is_read_once_by_its_node() {
    let c = Cluster::start_tls(1, &[]).await;
    let local = c.dir().join("token");
    std::fs::write(&local, b"abcdef.0123456789abcdef").unwrap();
    let l = local.display().to_string();
    let o = c
        .eden_as(
            "node-a",
            &["file", "put", &l, "a/join-token", "--once", "b"],
        )
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c.eden_as("node-c", &["file", "get", "a/join-token"]).await;
    assert_eq!(o.code, Some(8), "c: {o:?}");
    let o = c.eden_as("node-b", &["file", "get", "a/join-token"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "abcdef.0123456789abcdef");
    let o = c.eden_as("node-b", &["file", "get", "a/join-token"]).await;
    assert_eq!(o.code, Some(8), "the second read: {o:?}");
    eden_tests::wait_for(
        "the refusals to be audit events",
        Duration::from_secs(10),
        || async {
            let o = c
                .eden(&["event", "ls", "audit/denied/**", "-w", "json"])
                .await;
            o.stdout.contains("audit/denied/node/b") && o.stdout.contains("read once already")
        },
    )
    .await;
}

/// An agent killed while it places a file leaves the old content or the new, never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_a_whole_file() {
    let c = Cluster::start_tls(1, &[]).await;
    let mut a = c.agent("a", &[]);
    c.wait_nodes(&["a"], true).await;
    eden_ok(&c, &["node", "label", "a", "role=web"]).await;
    let dir = c.dir().join("placed");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = c.dir().join("sync.yaml");
    std::fs::write(
        &rules,
        format!(
            "name: big\nfiles: cluster/big\non: role=web\npath: {}/big\n",
            dir.display()
        ),
    )
    .unwrap();
    eden_ok(&c, &["file", "sync", "apply", &rules.display().to_string()]).await;
    let target = dir.join("big");
    for round in 0..6u8 {
        let fill = b'a' + round;
        let local = c.dir().join("v");
        std::fs::write(&local, vec![fill; 900_000]).unwrap();
        eden_ok(
            &c,
            &[
                "file",
                "put",
                &local.display().to_string(),
                "cluster/big",
                "--readers",
                "node:a",
            ],
        )
        .await;
        // Kill the agent at some point of its work on this version (or after it).
        tokio::time::sleep(Duration::from_millis(rand_ms(round))).await;
        a.kill();
        if let Ok(b) = std::fs::read(&target) {
            let first = b[0];
            assert!(
                b.len() == 900_000 && b.iter().all(|x| *x == first),
                "a mixed file in round {round}"
            );
        }
        a.restart();
        wait_file(&target, "the new version placed after a restart", |b| {
            b.len() == 900_000 && b[0] == fill
        })
        .await;
    }
}

fn rand_ms(round: u8) -> u64 {
    [5, 20, 60, 120, 1, 40][round as usize % 6]
}
