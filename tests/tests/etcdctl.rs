//! Conformance: etcdctl 3.4 (Debian's etcd-client package) against a three-member eden cluster.
//! Each test drives the real etcdctl binary and checks what it prints, as an operator would.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use eden_tests::{wait_for, Cluster};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn etcdctl(eps: &[String], args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(eps.join(","))
        .args(eden_tests::tls_flags_for(eps))
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (apt-get install etcd-client)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(eps: &[String], args: &[&str]) -> String {
    let o = etcdctl(eps, args, None);
    assert!(o.ok, "etcdctl {args:?} failed: {}", o.stderr);
    o.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_kv_txn_and_errors() {
    let c = Cluster::start(3, &[]).await;
    let eps = c.endpoints();
    assert_eq!(ok(&eps, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(ok(&eps, &["get", "foo"]), "foo\nbar\n");
    assert_eq!(ok(&eps, &["get", "missing"]), "");
    for (k, v) in [("p/a", "1"), ("p/b", "2"), ("p/c", "3"), ("q", "4")] {
        ok(&eps, &["put", k, v]);
    }
    assert_eq!(
        ok(&eps, &["get", "--prefix", "p/"]),
        "p/a\n1\np/b\n2\np/c\n3\n"
    );
    assert_eq!(
        ok(&eps, &["get", "--prefix", "p/", "--keys-only"]),
        "p/a\n\np/b\n\np/c\n\n"
    );
    assert_eq!(
        ok(&eps, &["get", "--prefix", "p/", "--limit", "1"]),
        "p/a\n1\n"
    );
    assert_eq!(
        ok(
            &eps,
            &[
                "get",
                "--prefix",
                "p/",
                "--sort-by",
                "KEY",
                "--order",
                "DESCEND"
            ]
        ),
        "p/c\n3\np/b\n2\np/a\n1\n"
    );
    assert_eq!(
        ok(&eps, &["get", "p/b", "--from-key", "--keys-only"]),
        "p/b\n\np/c\n\nq\n\n"
    );
    assert_eq!(ok(&eps, &["get", "p/a", "p/c"]), "p/a\n1\np/b\n2\n");
    assert!(ok(
        &eps,
        &[
            "get",
            "--prefix",
            "p/",
            "--consistency",
            "s",
            "--keys-only",
            "-w",
            "json"
        ]
    )
    .contains("\"count\":3"));
    let json = ok(&eps, &["get", "foo", "-w", "json"]);
    assert!(json.contains("\"kvs\":[{\"key\":\"Zm9v\""), "{json}");
    // History: read foo at the revision it was created.
    ok(&eps, &["put", "foo", "baz"]);
    let rev: i64 = serde_json::from_str::<serde_json::Value>(&json).unwrap()["kvs"][0]
        ["mod_revision"]
        .as_i64()
        .unwrap();
    assert_eq!(
        ok(&eps, &["get", "foo", "--rev", &rev.to_string()]),
        "foo\nbar\n"
    );
    assert_eq!(ok(&eps, &["del", "--prefix", "p/"]), "3\n");
    assert_eq!(ok(&eps, &["del", "nothing"]), "0\n");
    assert_eq!(ok(&eps, &["del", "q", "--prev-kv"]), "1\nq\n4\n");

    // Txn from stdin, the way etcdctl reads it.
    let o = etcdctl(
        &eps,
        &["txn"],
        Some("value(\"foo\") = \"baz\"\n\nput t yes\nget foo\n\nput t no\n\n"),
    );
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout, "SUCCESS\n\nOK\n\nfoo\nbaz\n");
    let o = etcdctl(
        &eps,
        &["txn"],
        Some("mod(\"foo\") < \"2\"\n\nput t yes\n\nput t no\n\n"),
    );
    assert_eq!(o.stdout, "FAILURE\n\nOK\n");
    assert_eq!(ok(&eps, &["get", "t"]), "t\nno\n");

    // Compaction, and etcd's error for a compacted revision.
    ok(&eps, &["compact", &(rev + 1).to_string()]);
    let o = etcdctl(&eps, &["get", "foo", "--rev", &rev.to_string()], None);
    assert!(
        !o.ok
            && o.stderr
                .contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        o.stderr
    );
    let o = etcdctl(&eps, &["get", "foo", "--rev", "100000"], None);
    assert!(
        !o.ok
            && o.stderr
                .contains("etcdserver: mvcc: required revision is a future revision"),
        "{}",
        o.stderr
    );
    // A too-large request.
    let big = "x".repeat(1800 * 1024);
    // (etcdctl reads the value from stdin: a 2 MiB argument is over the kernel's limit)
    let o = etcdctl(&eps, &["put", "big"], Some(&big));
    assert!(
        !o.ok && o.stderr.contains("etcdserver: request is too large"),
        "{}",
        o.stderr
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_and_lease() {
    let c = Cluster::start(3, &[]).await;
    let eps = c.endpoints();
    // watch through one member; write through another.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(eden_tests::tls_flags_for(&eps))
        .args([
            "--endpoints",
            &eps[0],
            "watch",
            "--prefix",
            "w/",
            "--prev-kv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read etcdctl's output as it comes.
    let mut stdout = watch.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut got = String::new();
    // The watch is subscribed once a probe written through another member comes out of it.
    let mut probe = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !got.contains("w/probe") {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch never started: {got:?}"
        );
        probe += 1;
        ok(&eps[1..], &["put", &format!("w/probe{probe}"), "p"]);
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            got.push_str(&String::from_utf8_lossy(&b));
        }
    }
    ok(&eps[1..], &["put", "w/1", "a"]);
    ok(&eps[1..], &["put", "w/1", "b"]);
    ok(&eps[1..], &["del", "w/1"]);
    let end = "DELETE\nw/1\nb\nw/1\n\n";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !got.ends_with(end) && std::time::Instant::now() < deadline {
        if let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            got.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    // What follows the probes (no probe event has a key w/1): with --prev-kv etcdctl prints the
    // previous key-value before the new one.
    let after_probes = got.find("PUT\nw/1\n").map_or("", |i| &got[i..]);
    assert_eq!(
        after_probes, "PUT\nw/1\na\nPUT\nw/1\na\nw/1\nb\nDELETE\nw/1\nb\nw/1\n\n",
        "{got:?}"
    );

    // Leases: grant, attach, time-to-live with keys, keep-alive once, revoke deletes the key.
    let granted = ok(&eps, &["lease", "grant", "30"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert!(granted.ends_with("granted with TTL(30s)\n"), "{granted}");
    ok(&eps, &["put", "--lease", &id, "lk", "v"]);
    let ttl = ok(&eps, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains(&format!("lease {id} granted with TTL(30s), remaining("))
            && ttl.contains("attached keys([lk])"),
        "{ttl}"
    );
    let ka = ok(&eps, &["lease", "keep-alive", "--once", &id]);
    assert!(
        ka.contains(&format!("lease {id} keepalived with TTL(30)")),
        "{ka}"
    );
    assert!(ok(&eps, &["lease", "list"]).contains(&id));
    assert!(ok(&eps, &["lease", "revoke", &id]).contains("revoked"));
    assert_eq!(ok(&eps, &["get", "lk"]), "");
    let gone = ok(&eps, &["lease", "timetolive", &id]);
    assert!(gone.contains("already expired"), "{gone}");
    let o = etcdctl(&eps, &["put", "--lease", "1234abcd", "x", "y"], None);
    assert!(
        !o.ok && o.stderr.contains("etcdserver: requested lease not found"),
        "{}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cluster_views() {
    let c = Cluster::start(3, &[]).await;
    let eps = c.endpoints();
    wait_for(
        "every member to publish its client URL",
        Duration::from_secs(10),
        // (etcdctl prints "started" for any member with a name, which initial members have from
        // the start; the client addresses come with each member's publication.)
        // The member list is each member's own view (as in etcd 3.4), so a follower may answer
        // before it applied the last publication: wait for a complete answer.
        // Client URLs carry the scheme clients must use, as etcd's do.
        || async {
            let list = ok(&eps, &["member", "list"]);
            let scheme = if c.pki.is_some() { "https" } else { "http" };
            c.members.iter().all(|m| {
                list.contains(&format!(
                    ", started, {}, http://{}, {scheme}://{}, false",
                    m.name, m.peer_addr, m.client_addr
                ))
            })
        },
    )
    .await;
    let status = ok(&eps, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let leaders: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert_eq!(leaders.len(), 3);
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "all agree on one leader: {status}"
    );
    let health = etcdctl(&eps, &["endpoint", "health"], None);
    assert!(health.ok, "{}", health.stderr);
    assert_eq!(
        health.stderr.matches("is healthy").count() + health.stdout.matches("is healthy").count(),
        3
    );
}

/// etcdctl's own performance check at its smallest load (60 seconds of puts from 50 clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_check_perf_small_load_passes() {
    let c = Cluster::start(3, &[]).await;
    let o = etcdctl(&c.endpoints(), &["check", "perf", "--load=s"], None);
    assert!(
        o.ok && o.stdout.contains("PASS: Throughput"),
        "check perf failed:\n{}\n{}",
        o.stdout,
        o.stderr
    );
}

/// An etcdctl command left running, its output read as it comes; killed when dropped.
struct Running {
    child: std::process::Child,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    got: String,
}

impl Running {
    fn start(eps: &[String], args: &[&str]) -> Running {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(eps.join(","))
            .args(eden_tests::tls_flags_for(eps))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl is installed");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            rx,
            got: String::new(),
        }
    }

    /// Waits until the output holds `text`; returns the output so far.
    async fn wait_text(&mut self, text: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        while !self.got.contains(text) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(b)) => self.got.push_str(&String::from_utf8_lossy(&b)),
                _ => panic!("no {text:?} in etcdctl's output: {:?}", self.got),
            }
        }
        self.got.clone()
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Sends SIGINT, as Ctrl-C would.
    fn interrupt(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcdctl's `lock` and `elect` (etcd's concurrency recipes over KV and Watch, client side):
/// a second holder waits until the first's lease expires after it was killed, and a second
/// candidate leads once the first resigns on Ctrl-C, which an observer sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect() {
    let c = Cluster::start(3, &[]).await;
    let eps = c.endpoints();
    let keys_under = |prefix: &'static str| {
        let eps = eps.clone();
        move || {
            let o = etcdctl(&eps, &["get", "--prefix", "--keys-only", prefix], None);
            o.stdout.lines().filter(|l| !l.is_empty()).count()
        }
    };

    let mut first = Running::start(&eps[..1], &["lock", "--ttl", "3", "L"]);
    first.wait_text("L/", Duration::from_secs(20)).await;
    let mut second = Running::start(
        &eps[1..2],
        &["lock", "--ttl", "3", "L", "echo", "second holder"],
    );
    let waiting = keys_under("L/");
    wait_for("the second holder queued", Duration::from_secs(20), || {
        let n = waiting();
        async move { n == 2 }
    })
    .await;
    assert!(!second.exited(), "two holders of one lock");
    // Killed without unlocking: the lock passes when its lease expires.
    let _ = first.child.kill();
    second
        .wait_text("second holder", Duration::from_secs(30))
        .await;
    let done = second.child.wait().unwrap();
    assert!(done.success());
    assert_eq!(keys_under("L/")(), 0, "the lock's keys are gone");

    let mut one = Running::start(&eps[..1], &["elect", "E", "p1"]);
    one.wait_text("p1", Duration::from_secs(20)).await;
    let mut observer = Running::start(&eps[2..], &["elect", "-l", "E"]);
    observer.wait_text("p1", Duration::from_secs(20)).await;
    let mut two = Running::start(&eps[1..2], &["elect", "E", "p2"]);
    let queued = keys_under("E/");
    wait_for(
        "the second candidate queued",
        Duration::from_secs(20),
        || {
            let n = queued();
            async move { n == 2 }
        },
    )
    .await;
    assert!(!two.got.contains("p2") && !two.exited(), "two leaders");
    one.interrupt();
    two.wait_text("p2", Duration::from_secs(20)).await;
    observer.wait_text("p2", Duration::from_secs(20)).await;
    assert!(
        one.child.wait().unwrap().success(),
        "the first resigned and exited"
    );
}
