//! A member's Raft core must never be killed by what a peer sends, and a member whose core did
//! stop (a storage failure) must say so and exit, not keep answering as if alive (issue 11).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eden_proto::client::Client;
use eden_proto::etcdserverpb::PutRequest;
use eden_proto::peer::peer_client::PeerClient;
use eden_proto::peer::Payload;
use eden_store::node::member_id;
use eden_store::raft::{Entry, LogId, TypeConfig};
use eden_tests::{eden_bin, free_port, wait_for, Cluster};
use openraft::entry::RaftEntry;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{CommittedLeaderId, Vote};

/// The term the test's forged leader claims: far above any a lone member reaches by itself.
const TERM: u64 = 1_000;

fn log_id(leader: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(TERM, leader), index)
}

async fn send(
    c: &Cluster,
    to: usize,
    req: &AppendEntriesRequest<TypeConfig>,
    streamed: bool,
) -> Result<AppendEntriesResponse<u64>, tonic::Status> {
    let mut names: Vec<String> = c.initial_cluster().split(',').map(String::from).collect();
    names.sort();
    let payload = Payload {
        data: bincode::serialize(req).expect("encode"),
        cluster_id: member_id(&names.join(",")),
        to: member_id(&c.members[to].name),
    };
    let mut peer = PeerClient::connect(format!("http://{}", c.members[to].peer_addr))
        .await
        .expect("connect to the peer port");
    let reply = if streamed {
        // As a leader's replication sends all but its first request: on an AppendStream.
        let mut answers = peer
            .append_stream(futures::stream::iter([payload]))
            .await?
            .into_inner();
        answers.message().await?.expect("an answer on the stream")
    } else {
        peer.append_entries(payload).await?.into_inner()
    };
    let r: Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>> =
        bincode::deserialize(&reply.data).expect("decode");
    Ok(r.expect("a Raft answer"))
}

/// What openraft 0.9.25 does with an append-entries request whose entries skip an index: in a
/// release build it stores them as they come, and applying the hole panics the core
/// (raft_core.rs:779, `applying_entries.next().unwrap()`); a replication task that outlived its
/// leader's term sends such requests (design/decisions/0009). The member must refuse it and
/// carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_entries_with_a_hole_is_refused_and_the_member_lives_on() {
    // Two members, one started: m1 cannot elect itself, so the test plays m0, the leader.
    let c = Cluster::start_some(2, &[1], &["--no-reactor"]);
    let m1 = Client::new(&[c.members[1].endpoint()]).unwrap();
    wait_for("m1 to answer", Duration::from_secs(30), || async {
        m1.status_of(0).await.is_ok()
    })
    .await;
    let leader = member_id("m0");
    let vote = Vote::new_committed(TERM, leader);
    // Every member's log starts with the initial membership at index 0 (openraft's initialize).
    let prev = Some(LogId::default());
    let holed = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: prev,
        entries: vec![
            Entry::new_blank(log_id(leader, 1)),
            Entry::new_blank(log_id(leader, 3)),
        ],
        leader_commit: Some(log_id(leader, 3)),
    };
    for streamed in [false, true] {
        let refused = send(&c, 1, &holed, streamed)
            .await
            .expect_err("an append-entries request with a hole must be refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("entry 3 does not follow 1"),
            "{refused:?}"
        );
    }
    // Entries that do not follow prev_log_id are refused too.
    let detached = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: prev,
        entries: vec![Entry::new_blank(log_id(leader, 2))],
        leader_commit: None,
    };
    for streamed in [false, true] {
        assert_eq!(
            send(&c, 1, &detached, streamed).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
    // The member is alive and takes a well-formed request, and applies it.
    let good = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: prev,
        entries: (1..=3)
            .map(|i| Entry::new_blank(log_id(leader, i)))
            .collect(),
        leader_commit: Some(log_id(leader, 3)),
    };
    assert_eq!(
        send(&c, 1, &good, true).await.unwrap(),
        AppendEntriesResponse::Success
    );
    wait_for("m1 to apply index 3", Duration::from_secs(10), || async {
        m1.status_of(0)
            .await
            .is_ok_and(|s| s.raft_applied_index >= 3 && s.errors.is_empty())
    })
    .await;
    let log = c.members[1].log_text();
    assert!(!log.contains("panicked"), "m1 panicked:\n{log}");
}

/// GET `path` on `addr` over HTTP/1.1; (status, body).
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// A member on a 16 MiB file system: once the disk is full, RocksDB refuses the Raft log's
/// writes, openraft's core stops on the storage error, and the member must report it (/health
/// 503, Status errors) and exit with code 7 so that its supervisor restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_raft_core_stopped_says_so_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (client_addr, peer_addr, metrics_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let log_path = dir.path().join("m0.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // A small tmpfs for the data dir, in a user and mount namespace of its own (no root needed
    // where unprivileged user namespaces are allowed).
    let script = format!(
        "mount -t tmpfs -o size=16m tmpfs '{data}' && exec '{eden}' server --insecure --name m0 --data-dir '{data}/m0' \
         --client-addr {client_addr} --peer-addr {peer_addr} --metrics-addr {metrics_addr} \
         --no-reactor --quota-bytes 100000000000",
        data = data.display(),
        eden = eden_bin().display(),
    );
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("unshare (util-linux) runs the member in its own mount namespace");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(&mut child);
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let client = Client::new(std::slice::from_ref(&client_addr)).unwrap();
    let healthy = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(&metrics_addr, "/health").await, Some((200, _))) {
        assert!(
            Instant::now() < healthy,
            "the member never became healthy:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fill the disk.
    let value = vec![b'x'; 256 * 1024];
    let mut written = 0;
    loop {
        let r = client
            .put(PutRequest {
                key: format!("fill/{written}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            })
            .await;
        if r.is_err() {
            break;
        }
        written += 1;
        assert!(written < 1_000, "16 MiB never filled up:\n{}", logs());
    }
    // It says so: /health and Status. The member keeps answering them for a few seconds.
    wait_for(
        "/health to say the core stopped",
        Duration::from_secs(5),
        || async {
            matches!(http_get(&metrics_addr, "/health").await,
            Some((503, body)) if body.contains("raft core stopped"))
        },
    )
    .await;
    let status = client.status_of(0).await;
    assert!(
        status
            .as_ref()
            .is_ok_and(|s| s.errors.iter().any(|e| e.contains("raft core stopped"))),
        "{status:?}"
    );
    // And exits non-zero (7), by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "the member did not exit:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(7), "{}", logs());
    let text = logs();
    assert!(text.contains("the Raft core stopped"), "{text}");
}
