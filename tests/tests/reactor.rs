//! Reactor rules as an operator handles them: stored in the cluster, listed, shown, removed, and
//! tried against an event with a dry run. (The runtime that executes them is a later step.)

use eden_tests::Cluster;
use serde_json::Value;

const RULES: &str = r#"
- name: issue-token
  on: node/joined/*
  actions:
    - run: { on: role=issuer, command: [sh, -c, "make-token {{ event.parts[2] }}"], register: token }
- name: flapping
  on: alert/firing/*
  labels: { severity: crit* }
  when: { count: 3, within: 60s, group_by: "{{ event.labels.instance }}" }
  actions:
    - run: { nodes: "{{ event.labels.instance }}", command: [systemctl, restart, app] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_stored_listed_and_tried() {
    let c = Cluster::start(1, &[]).await;
    let dir = c.dir();
    let file = dir.join("rules.yaml");
    std::fs::write(&file, RULES).unwrap();
    let f = file.to_str().unwrap();
    let o = c.eden(&["reactor", "apply", f]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(
        o.stdout,
        "applied rule issue-token\napplied rule flapping\n"
    );
    let o = c.eden(&["reactor", "ls", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["flapping", "issue-token"]);
    let o = c.eden(&["reactor", "show", "flapping"]).await;
    assert!(
        o.stdout.contains("group_by: '{{ event.labels.instance }}'"),
        "{}",
        o.stdout
    );
    // A dry run renders the actions of the rules that fire.
    let ev = dir.join("ev.json");
    std::fs::write(&ev, r#"{"tag": "node/joined/web7"}"#).unwrap();
    let o = c
        .eden(&[
            "reactor",
            "test",
            f,
            "--event",
            ev.to_str().unwrap(),
            "-w",
            "json",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["fired"][0]["rule"], "issue-token");
    assert_eq!(
        v["fired"][0]["actions"][0]["run"]["command"][2],
        "make-token web7"
    );
    // A Thorium rule does not fire on one event.
    std::fs::write(
        &ev,
        r#"{"tag": "alert/firing/Down", "labels": {"severity": "critical", "instance": "web3"}}"#,
    )
    .unwrap();
    let o = c
        .eden(&["reactor", "test", f, "--event", ev.to_str().unwrap()])
        .await;
    assert_eq!(o.stdout, "no rule fires\n", "{o:?}");
    // A bad rule is refused with its reason, and nothing is stored.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "name: broken\non: x\nactions:\n  - run: { command: [true] }\n",
    )
    .unwrap();
    let o = c.eden(&["reactor", "apply", bad.to_str().unwrap()]).await;
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(
        o.stderr.contains("exactly one of `on` and `nodes`"),
        "{}",
        o.stderr
    );
    assert_eq!(
        c.eden(&["reactor", "rm", "issue-token"]).await.code,
        Some(0)
    );
    assert_eq!(
        c.eden(&["reactor", "rm", "issue-token"]).await.code,
        Some(1)
    );
    let o = c.eden(&["reactor", "ls", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_explicit_or_derived_and_the_servers_policy_holds() {
    let c = Cluster::start(
        1,
        &[
            "--event-deny",
            "secret/**",
            "--event-max-bytes",
            "300",
            "--event-retention",
            "3s",
        ],
    )
    .await;
    let o = c
        .eden(&[
            "event",
            "emit",
            "deploy/done",
            "--data",
            r#"{"v": 3}"#,
            "--label",
            "env=prod",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let from: i64 = o.stdout.trim().parse().unwrap();
    // Denied and oversized events are refused with the reason and not stored.
    let o = c.eden(&["event", "emit", "secret/token"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("denied"), "{}", o.stderr);
    let big = format!("\"{}\"", "x".repeat(400));
    let o = c.eden(&["event", "emit", "big", "--data", &big]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("over the 300-byte limit"), "{}", o.stderr);
    let o = c.eden(&["event", "ls", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    let tags: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["deploy/done"]);
    assert_eq!(v[0]["labels"]["env"], "prod");
    assert_eq!(v[0]["data"]["v"], 3);
    // Derived events: an agent's arrival and departure, replayed from a revision.
    let mut agent = c.agent("n1", &[]);
    c.wait_nodes(&["n1"], true).await;
    agent.stop();
    let mut watch = tokio::process::Command::new(eden_tests::eden_bin())
        .args(eden_tests::tls_flags_for(&c.endpoints()))
        .args([
            "--endpoints",
            &c.endpoints().join(","),
            "event",
            "watch",
            "deploy/*",
            "node/**",
            "--deny",
            "node/registered/*",
        ])
        .args(["--from", &from.to_string(), "-w", "json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut tags = Vec::new();
    while tags.len() < 3 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("event watch printed too little")
            .unwrap()
            .unwrap();
        let e: Value = serde_json::from_str(&line).unwrap();
        tags.push(e["tag"].as_str().unwrap().to_string());
    }
    assert_eq!(tags, ["deploy/done", "node/joined/n1", "node/left/n1"]);
    // Events go with their retention (3 s here), with no lease per event.
    eden_tests::wait_for(
        "the event to expire",
        std::time::Duration::from_secs(20),
        || async { c.eden(&["event", "ls", "-w", "json"]).await.stdout.trim() == "[]" },
    )
    .await;
}

/// The leader key's holder (the active runtime's name).
/// Writes rules to NAME.yaml in the cluster's dir and applies them with `eden reactor apply`.
async fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).unwrap();
    let o = c.eden(&["reactor", "apply", f.to_str().unwrap()]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

/// The seed's join story, secure: when a node joins, the issuer makes a token readable by that
/// node only, and a second rule hands it over to the node the first one was `for` (two nodes join
/// at the same moment: each gets its own). Another node's template that names it fails before
/// running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_story_end_to_end() {
    let c = Cluster::start_tls(3, &[]).await;
    let _issuer = c.agent("issuer", &[]);
    c.wait_nodes(&["issuer"], true).await;
    let o = c.eden(&["node", "label", "issuer", "role=issuer"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    apply(&c, "join", r#"
- name: issue-token
  on: node/joined/*
  actions:
    - run:
        on: role=issuer
        command: [sh, -c, "echo token-for-{{ event.parts[2] }}"]
        register: "token-{{ event.parts[2] }}"
        readers: ["node:{{ event.parts[2] }}"]
        for: "{{ event.parts[2] }}"
- name: hand-over
  on: task/finished/*/issuer
  labels: { status: ok }
  actions:
    - run: { nodes: "{{ event.data.for }}", command: [sh, -c, "echo got {{ vars['issuer']['token-' ~ event.data.for] }}"], register: received }
"#).await;
    c.wait_reactor().await;
    let _b = c.agent("b", &[]);
    let _d = c.agent("d", &[]);
    for n in ["b", "d"] {
        eden_tests::wait_for(
            &format!("{n} to receive its token"),
            std::time::Duration::from_secs(60),
            || async {
                c.eden(&["var", "get", n, "received"]).await.stdout
                    == format!("got token-for-{n}\n")
            },
        )
        .await;
    }
    // b's token is b's: d's template that names it fails before running anything.
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "d",
            "--",
            "echo",
            r#"{{ vars["issuer"]["token-b"] }}"#,
        ])
        .await;
    assert_eq!(o.code, Some(4), "{o:?}");
    assert!(o.stdout.contains("may not read"), "{o:?}");
    let o = c
        .eden_as("node-d", &["var", "get", "issuer", "token-b"])
        .await;
    assert_eq!(o.code, Some(8), "{o:?}");
    let o = c
        .eden_as("node-b", &["var", "get", "issuer", "token-b"])
        .await;
    assert_eq!(o.stdout, "token-for-b\n", "{o:?}");
    let log = c.eden(&["reactor", "log"]).await.stdout;
    assert!(
        log.contains("reactor/fired/issue-token") && log.contains("reactor/fired/hand-over"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_reactor_mid_burst_fires_every_event_exactly_once() {
    let mut c = Cluster::start(3, &["--event-rate", "100000"]).await;
    apply(
        &c,
        "burst",
        "name: echo\non: burst/*\nactions:\n  - emit: { tag: \"done/{{ event.parts[1] }}\" }\n",
    )
    .await;
    c.wait_reactor().await;
    let client = c.client();
    let n = 1000;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            let ev = serde_json::json!({"tag": format!("burst/{i}"), "time": 0, "source": "test"});
            let put = eden_proto::etcdserverpb::PutRequest {
                key: format!("{}burst-{i:05}", eden_proto::model::keys::EVENTS).into(),
                value: ev.to_string().into(),
                ..Default::default()
            };
            // Retry until it is in: each burst event must exist exactly once.
            loop {
                match client.put(put.clone()).await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
        }
    });
    // Kill the member running the active runtime once a part of the burst was handled.
    eden_tests::wait_for(
        "reactions to start",
        std::time::Duration::from_secs(60),
        || async { c.event_tags("done/").await.len() >= 100 },
    )
    .await;
    let active = c.active_reactor().await.unwrap();
    let victim = c.members.iter().position(|m| m.name == active).unwrap();
    c.kill(victim);
    writer.await.unwrap();
    c.restart(victim);
    eden_tests::wait_for(
        "every event to be reacted to",
        std::time::Duration::from_secs(120),
        || async { c.event_tags("done/").await.len() >= n },
    )
    .await;
    let mut done = c.event_tags("done/").await;
    done.sort();
    let total = done.len();
    done.dedup();
    assert_eq!(
        (total, done.len()),
        (n, n),
        "each burst event fired its rule exactly once"
    );
    assert_ne!(c.active_reactor().await, None);
}

/// A plain HTTP/1.1 POST; returns the status code and the body.
async fn http_post(addr: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alertmanager_webhook_runs_a_task_on_each_alerts_instance() {
    let hook_addr = format!("127.0.0.1:{}", eden_tests::free_port());
    // Plaintext HTTP here (the webhook port over TLS is tests/tests/tls.rs's).
    let c = Cluster::start(
        1,
        &[
            "--webhook-addr",
            &hook_addr,
            "--webhook-max-bytes",
            "2000",
            "--insecure",
        ],
    )
    .await;
    let _a = c.agent("web1", &[]);
    let _b = c.agent("web2", &[]);
    c.wait_nodes(&["web1", "web2"], true).await;
    apply(&c, "alerts", r#"
name: restart-on-alert
on: alert/firing/*
actions:
  - run: { nodes: "{{ event.labels.instance }}", command: [sh, -c, "echo restarted {{ event.labels.instance }}"], register: restarted }
"#).await;
    let o = c.eden(&["hook", "create", "am"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let token = o.stdout.trim().to_string();
    assert_eq!(token.len(), 64);
    let payload = serde_json::json!({
        "version": "4", "status": "firing", "receiver": "eden", "groupKey": "g",
        "alerts": [
            {"status": "firing", "labels": {"alertname": "AppDown", "instance": "web1"},
             "annotations": {"summary": "app down"}, "startsAt": "2026-11-24T00:00:00Z", "fingerprint": "a1"},
            {"status": "firing", "labels": {"alertname": "AppDown", "instance": "web2"},
             "annotations": {"summary": "app down"}, "startsAt": "2026-11-24T00:00:00Z", "fingerprint": "a2"}
        ]
    })
    .to_string();
    // Bad requests first: each gets its status and writes nothing.
    let (code, _) = http_post(&hook_addr, "/hooks/am", Some("wrong"), payload.as_bytes()).await;
    assert_eq!(code, 401);
    let (code, _) = http_post(&hook_addr, "/hooks/am", None, payload.as_bytes()).await;
    assert_eq!(code, 401);
    let (code, body) = http_post(&hook_addr, "/hooks/am", Some(&token), b"{not json").await;
    assert_eq!(code, 400);
    assert!(body.contains("not JSON"), "{body}");
    let big = format!("{{\"x\": \"{}\"}}", "y".repeat(3000));
    let (code, _) = http_post(&hook_addr, "/hooks/am", Some(&token), big.as_bytes()).await;
    assert_eq!(code, 413);
    assert_eq!(
        c.eden(&["event", "ls", "-w", "json"]).await.stdout.trim(),
        "[]"
    );
    // The real one: two alerts, two events, the rule fires twice, a task on each instance.
    let (code, body) = http_post(&hook_addr, "/hooks/am", Some(&token), payload.as_bytes()).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"events\":2"), "{body}");
    for n in ["web1", "web2"] {
        eden_tests::wait_for(
            &format!("the task on {n}"),
            std::time::Duration::from_secs(60),
            || async {
                c.eden(&["var", "get", n, "restarted"]).await.stdout == format!("restarted {n}\n")
            },
        )
        .await;
    }
    let o = c.eden(&["event", "ls", "alert/**", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["data"]["annotations"]["summary"], "app down");
    let fired = c.event_tags("reactor/fired/restart-on-alert").await;
    assert_eq!(fired.len(), 2);
    // Any other JSON body is one event hook/NAME with the body as its data; a hook's token
    // opens only that hook.
    let o = c.eden(&["hook", "create", "ci"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let ci = o.stdout.trim().to_string();
    let body = br#"{"ref": "main", "ok": true}"#;
    let (code, _) = http_post(&hook_addr, "/hooks/ci", Some(&token), body).await;
    assert_eq!(code, 401, "the am token opens only the am hook");
    let (code, reply) = http_post(&hook_addr, "/hooks/ci", Some(&ci), body).await;
    assert_eq!(code, 200, "{reply}");
    let o = c.eden(&["event", "ls", "hook/**", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["tag"], "hook/ci");
    assert_eq!(v[0]["source"], "hook/ci");
    assert_eq!(v[0]["data"], serde_json::json!({"ref": "main", "ok": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thorium_rule_fires_on_the_third_event_in_its_window_and_not_in_its_cooldown() {
    let c = Cluster::start(1, &[]).await;
    apply(
        &c,
        "thorium",
        r#"
name: flapping
on: check/failed/*
when: { count: 3, within: 60s, group_by: "{{ event.parts[2] }}", cooldown: 1h }
actions:
  - emit: { tag: "flapping/{{ event.parts[2] }}" }
"#,
    )
    .await;
    c.wait_reactor().await;
    let c = &c;
    let emit = |tag: &'static str| async move {
        assert_eq!(c.eden(&["event", "emit", tag]).await.code, Some(0));
    };
    emit("check/failed/db").await;
    emit("check/failed/web").await;
    emit("check/failed/db").await;
    // Two for db, one for web: nothing yet. The third for db fires once.
    emit("check/failed/db").await;
    eden_tests::wait_for(
        "the rule to fire",
        std::time::Duration::from_secs(20),
        || async { c.event_tags("flapping/").await == ["flapping/db"] },
    )
    .await;
    // Three more within the cooldown do not fire again (the runtime has handled them once the
    // marker emitted after them has been seen by the reactor log).
    for _ in 0..3 {
        emit("check/failed/db").await;
    }
    apply(
        c,
        "marker",
        "name: marker\non: mark\nactions:\n  - emit: { tag: marked }\n",
    )
    .await;
    emit("mark").await;
    eden_tests::wait_for(
        "the runtime to get past the burst",
        std::time::Duration::from_secs(20),
        || async { c.event_tags("marked").await.len() == 1 },
    )
    .await;
    assert_eq!(c.event_tags("flapping/").await, ["flapping/db"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_become_member_events() {
    let mut c = Cluster::start(3, &[]).await;
    c.wait_reactor().await;
    // The active runtime has seen the initial members (it polls every 5 s and keeps them in its
    // stored state).
    eden_tests::wait_for(
        "the runtime to see the members",
        std::time::Duration::from_secs(30),
        || async {
            c.client()
                .range(eden_proto::etcdserverpb::RangeRequest {
                    key: eden_proto::model::keys::REACTOR_CURSOR.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await
                .ok()
                .and_then(|r| r.kvs.first().cloned())
                .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                .is_some_and(|v| {
                    v["state"]["members"]
                        .as_object()
                        .is_some_and(|m| m.len() == 3)
                })
        },
    )
    .await;
    let n = c.join(&[]);
    let name = c.members[n].name.clone();
    eden_tests::wait_for(
        "member/added",
        std::time::Duration::from_secs(40),
        || async { c.event_tags("member/added/").await == [format!("member/added/{name}")] },
    )
    .await;
    let id = c.member_id(n).await;
    c.remove_member(id).await.unwrap();
    c.wait_exited(n).await;
    eden_tests::wait_for(
        "member/removed",
        std::time::Duration::from_secs(40),
        || async { c.event_tags("member/removed/").await == [format!("member/removed/{name}")] },
    )
    .await;
    // A member stopped cleanly gives its runtime's leader key up before it exits (rather than
    // leaving it to expire with its lease, 10 s later).
    let active = c.active_reactor().await.expect("an active runtime");
    let i = c
        .members
        .iter()
        .position(|m| m.name == active)
        .expect("the active runtime is a member's");
    c.stop(i);
    let after = c.active_reactor().await;
    assert!(
        after.as_deref() != Some(active.as_str()),
        "{active} still holds the leader key"
    );
}

/// A tiny HTTP server: each request's path and body go to the channel; paths under /fail get
/// 500, others 200.
async fn http_sink() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).await.unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let status = if path.starts_with("/fail") {
                    "500 Oops"
                } else {
                    "200 OK"
                };
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                r.get_mut().write_all(reply.as_bytes()).await.unwrap();
                let _ = tx.send((path, String::from_utf8(body).unwrap()));
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_action_sends_its_rendered_body_once() {
    let (addr, mut got) = http_sink().await;
    let c = Cluster::start(1, &[]).await;
    apply(
        &c,
        "post",
        &format!(
            r#"
- name: notify
  on: deploy/*
  actions:
    - post:
        url: "http://{addr}/notify/{{{{ event.parts[1] }}}}"
        body: '{{"app": "{{{{ event.parts[1] }}}}", "who": "{{{{ event.data.who }}}}"}}'
- name: broken-hook
  on: deploy/*
  actions:
    - post: {{ url: "http://{addr}/fail" }}
"#
        ),
    )
    .await;
    c.wait_reactor().await;
    let o = c
        .eden(&["event", "emit", "deploy/web", "--data", r#"{"who": "ann"}"#])
        .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), got.recv())
            .await
            .expect("the posts to arrive")
            .unwrap();
        seen.push(r);
    }
    seen.sort();
    assert_eq!(seen[0].0, "/fail");
    let v: Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(
        (v["rule"].as_str(), v["tag"].as_str()),
        (Some("broken-hook"), Some("deploy/web"))
    );
    assert_eq!(seen[1].0, "/notify/web");
    let v: Value = serde_json::from_str(&seen[1].1).unwrap();
    assert_eq!(v, serde_json::json!({"app": "web", "who": "ann"}));
    // A failed post is logged, not retried, and the runtime goes on: the next event posts too,
    // and nothing came twice.
    let o = c
        .eden(&["event", "emit", "deploy/db", "--data", r#"{"who": "bob"}"#])
        .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let mut next = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), got.recv())
            .await
            .unwrap_or_else(|_| panic!("the next posts to arrive; logs:\n{}", c.logs()))
            .unwrap();
        next.push(r.0);
    }
    next.sort();
    assert_eq!(next, ["/fail", "/notify/db"]);
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(2), got.recv())
            .await
            .is_err(),
        "a post came twice"
    );
}

/// The per-source event rate holds across the cluster: a source that spreads its events over
/// every member gets the leader's rate once, not each member's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_gets_its_rate_across_the_cluster() {
    let c = Cluster::start(3, &["--event-rate", "5"]).await;
    let ev = |tag: &str, source: &str| {
        serde_json::json!({"tag": tag, "time": 0, "source": source}).to_string()
    };
    let start = std::time::Instant::now();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..45 {
        match c
            .put(
                i % 3,
                &format!("{}flood-{i:03}", eden_proto::model::keys::EVENTS),
                &ev("flood", "flooder"),
            )
            .await
        {
            Ok(_) => accepted += 1,
            Err(eden_proto::client::ClientError::Server(s)) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("over 5 per second"), "{s:?}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // A burst of twice the rate, plus the rate for the time it took.
    let allowed = 10.0 + 5.0 * secs;
    assert!(
        f64::from(accepted) <= allowed + 1.0 && refused > 0,
        "{accepted} accepted, {refused} refused in {secs:.2} s (at most {allowed:.0} allowed)"
    );
    // Another source is not held back by this one.
    assert!(c
        .put(
            1,
            &format!("{}other", eden_proto::model::keys::EVENTS),
            &ev("calm", "other")
        )
        .await
        .is_ok());
}

/// `eden reactor run` outside the servers; a clean stop hands the runtime over at once; and a
/// runtime whose cursor was compacted away says so (an event with the missed range, and its
/// log), does not react to what it missed, and goes on from the oldest revision kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_whose_cursor_was_compacted_says_so_and_goes_on() {
    let c = Cluster::start(1, &["--no-reactor"]).await;
    apply(
        &c,
        "pong",
        "name: pong\non: ping/*\nactions:\n  - emit: { tag: \"pong/{{ event.parts[1] }}\" }\n",
    )
    .await;
    let mut r = c.reactor_run("outside");
    c.wait_reactor().await;
    assert_eq!(c.active_reactor().await.as_deref(), Some("outside"));
    let emit = |tag: &'static str| {
        let c = &c;
        async move {
            let o = c.eden(&["event", "emit", tag]).await;
            assert_eq!(o.code, Some(0), "{}", o.stderr);
            o.stdout.trim().parse::<i64>().unwrap()
        }
    };
    emit("ping/1").await;
    eden_tests::wait_for("pong/1", std::time::Duration::from_secs(20), || async {
        c.event_tags("pong/").await == ["pong/1"]
    })
    .await;
    assert_eq!(r.stop(), Some(0));
    assert_eq!(
        c.active_reactor().await,
        None,
        "a clean stop gives the leader key up"
    );
    // Missed while no runtime runs, then compacted away.
    let first_missed = emit("ping/2").await;
    emit("ping/3").await;
    let compact_at = c.put(0, "filler", "x").await.unwrap();
    let o = c.eden(&["compact", &compact_at.to_string()]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    r.restart();
    eden_tests::wait_for(
        "reactor/compacted",
        std::time::Duration::from_secs(20),
        || async { !c.event_tags("reactor/compacted").await.is_empty() },
    )
    .await;
    let o = c
        .eden(&["event", "ls", "reactor/compacted", "-w", "json"])
        .await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    let data = &v[0]["data"];
    let (from, to) = (
        data["missed_from"].as_i64().unwrap(),
        data["missed_to"].as_i64().unwrap(),
    );
    assert!(
        from <= first_missed && to == compact_at - 1,
        "missed {from}..{to}; ping/2 at {first_missed}, compacted at {compact_at}"
    );
    assert!(r.log_text().contains("compacted away"), "{}", r.log_text());
    // It goes on, and does not guess what it missed.
    emit("ping/4").await;
    eden_tests::wait_for("pong/4", std::time::Duration::from_secs(20), || async {
        c.event_tags("pong/").await.contains(&"pong/4".to_string())
    })
    .await;
    assert_eq!(c.event_tags("pong/").await, ["pong/1", "pong/4"]);
}

/// A runtime outside the servers acts as the identity its certificate names, with the rights an
/// admin granted it: a rule that would write more is refused (a `reactor/failed` event), one
/// within them works. Nodes cannot write rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_runtime_does_no_more_than_its_identity_may() {
    let c = Cluster::start_tls(1, &["--no-reactor"]).await;
    for args in [
        &["role", "add", "reactor"][..],
        &[
            "role",
            "grant-permission",
            "reactor",
            "read",
            "/eden/",
            "--prefix",
        ],
        &[
            "role",
            "grant-permission",
            "reactor",
            "readwrite",
            "/eden/reactor/",
            "--prefix",
        ],
        &[
            "role",
            "grant-permission",
            "reactor",
            "readwrite",
            "/eden/events/",
            "--prefix",
        ],
        &["user", "add", "reactor"],
        &["user", "grant-role", "reactor", "reactor"],
    ] {
        let o = c.eden(args).await;
        assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
    }
    apply(
        &c,
        "limited",
        r#"
- name: answer
  on: ping/*
  actions:
    - emit: { tag: "pong/{{ event.parts[1] }}" }
- name: overreach
  on: grab/*
  actions:
    - set_var: { node: cluster, name: grabbed, value: "{{ event.parts[1] }}" }
"#,
    )
    .await;
    // A node may not write rules.
    let f = c.dir().join("node-rule.yaml");
    std::fs::write(&f, "name: x\non: a/*\nactions:\n  - emit: { tag: b }\n").unwrap();
    let o = c
        .eden_as("node-n1", &["reactor", "apply", f.to_str().unwrap()])
        .await;
    assert_eq!(o.code, Some(8), "{o:?}");

    let _rt = c.reactor_run_as("limited", "user-reactor");
    c.wait_reactor().await;
    for tag in ["ping/1", "grab/1"] {
        let o = c.eden(&["event", "emit", tag]).await;
        assert_eq!(o.code, Some(0), "{o:?}");
    }
    eden_tests::wait_for(
        "the rule within its rights to fire, the other to be refused",
        std::time::Duration::from_secs(30),
        || async {
            let failed = c.event_tags("reactor/failed").await;
            !c.event_tags("pong/1").await.is_empty() && !failed.is_empty()
        },
    )
    .await;
    let o = c.eden(&["var", "get", "--cluster", "grabbed"]).await;
    assert_ne!(o.code, Some(0), "the refused rule wrote: {o:?}");
}
