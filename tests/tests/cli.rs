//! The `eden` CLI as an operator runs it: output, documented exit codes, one-line errors, and a
//! watch that resumes on another member when its member dies.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use eden_tests::{eden_bin, free_port, Cluster};

fn eden(eps: &[String], args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(eden_bin())
        .args(eden_tests::tls_flags_for(eps))
        .arg("--endpoints")
        .arg(eps.join(","))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_output_and_exit_codes() {
    let c = Cluster::start(3, &[]).await;
    let eps = c.endpoints();
    let o = eden(&eps, &["put", "k", "v1"], None);
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), "OK\n".into()));
    let o = eden(&eps, &["put", "k"], Some("from stdin"));
    assert_eq!(o.status.code(), Some(0));
    let o = eden(&eps, &["get", "k"], None);
    assert_eq!(text(&o.stdout), "k\nfrom stdin\n");
    let o = eden(&eps, &["get", "k", "-w", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kvs"][0]["version"], 2);
    let rev = v["kvs"][0]["mod_revision"].as_i64().unwrap();
    // txn from flags: compares hold, then-branch runs; a failed compare exits 0 with FAILURE.
    let o = eden(
        &eps,
        &[
            "txn",
            "--compare",
            "version(\"k\") = \"2\"",
            "--then",
            "put k v3",
            "--else",
            "get k",
        ],
        None,
    );
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "SUCCESS\n\nOK\n".into())
    );
    let o = eden(
        &eps,
        &[
            "txn",
            "--compare",
            "value(\"k\") = \"nope\"",
            "--then",
            "put k x",
            "--else",
            "get k",
        ],
        None,
    );
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "FAILURE\n\nk\nv3\n".into())
    );
    // Leases print like etcdctl.
    let o = eden(&eps, &["lease", "grant", "60"], None);
    let line = text(&o.stdout);
    assert!(
        line.starts_with("lease ") && line.ends_with(" granted with TTL(60s)\n"),
        "{line}"
    );
    let id = line.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(
        eden(&eps, &["put", "lk", "v", "--lease", &id], None)
            .status
            .code(),
        Some(0)
    );
    let ttl = text(&eden(&eps, &["lease", "ttl", &id, "--keys"], None).stdout);
    assert!(ttl.contains("attached keys([lk])"), "{ttl}");
    // Status shows every member with one leader.
    let o = eden(&eps[..1], &["status", "-w", "json"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let leaders = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        .count();
    assert_eq!((v.as_array().unwrap().len(), leaders), (3, 1));

    // endpoint commands: every member healthy and agreeing on the hash.
    let o = eden(&eps[..1], &["endpoint", "health", "--cluster"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).matches("is healthy").count(), 3);
    let o = eden(&eps, &["endpoint", "hashkv", "-w", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hashes: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["HashKV"]["hash"].as_u64().unwrap())
        .collect();
    assert!(
        hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0]),
        "{v}"
    );

    // 1: the cluster refused (compacted revision), with etcd's message on one line.
    assert_eq!(
        eden(&eps, &["compact", &(rev + 1).to_string()], None)
            .status
            .code(),
        Some(0)
    );
    let o = eden(&eps, &["get", "k", "--rev", &rev.to_string()], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    // 2: bad usage or input.
    assert_eq!(eden(&eps, &["get"], None).status.code(), Some(2));
    let o = eden(&eps, &["txn", "--compare", "size(\"k\") = \"1\""], None);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
    assert_eq!(
        eden(&eps, &["put", "k", "v", "--lease", "not-hex"], None)
            .status
            .code(),
        Some(2)
    );
    // 3: nothing reachable.
    let dead = vec![format!("127.0.0.1:{}", free_port())];
    let o = eden(&dead, &["get", "k"], None);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eden_watch_resumes_when_its_member_dies() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.wait_leader().await;
    let watched = (leader + 1) % 3;
    let mut eps = c.endpoints();
    eps.rotate_left(watched); // the watch starts on `watched`
    let mut child = Command::new(eden_bin())
        .args(eden_tests::tls_flags_for(&eps))
        .args(["--endpoints", &eps.join(","), "watch", "--prefix", "x/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Wait until the watch is set up: a first event arrives.
    let mut lines = Vec::new();
    let mut n = 0;
    while lines.is_empty() {
        c.put(leader, "x/probe", &n.to_string()).await.unwrap();
        n += 1;
        if let Ok(Some(l)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            lines.push(l);
        }
    }
    for i in 0..20 {
        c.put(leader, &format!("x/{i}"), "a").await.unwrap();
    }
    c.kill(watched);
    for i in 20..40 {
        c.put(leader, &format!("x/{i}"), "b").await.unwrap();
    }
    // Each event is 3 lines (PUT, key, value); read until the last put's key shows up.
    while lines.len() < 2 || lines[lines.len() - 2] != "x/39" || lines.len() % 3 != 0 {
        let l = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("watch stalled")
            .unwrap();
        lines.push(l);
    }
    let _ = child.kill();
    let _ = child.wait();
    let keys: Vec<&String> = lines.iter().skip(1).step_by(3).collect();
    let puts: Vec<String> = keys
        .iter()
        .filter(|k| !k.starts_with("x/probe"))
        .map(|k| k.to_string())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("x/{i}")).collect();
    assert_eq!(
        puts, expected,
        "every put once, in order, across the member's death"
    );
}
