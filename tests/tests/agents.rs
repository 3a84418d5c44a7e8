//! Agents and tasks against real processes: three `eden server` members and three `eden agent`s,
//! driven with the `eden` CLI as an operator would.

use std::time::Duration;

use eden_tests::{wait_for, AgentProc, CliOutput, Cluster};
use serde_json::Value;

/// Three members and agents web1, web2 and db1, all up, labelled by the operator role=web,
/// role=web and role=db.
async fn setup(extra: &[&str]) -> (Cluster, Vec<AgentProc>) {
    let c = Cluster::start(3, &[]).await;
    let mut agents = Vec::new();
    for name in ["web1", "web2", "db1"] {
        agents.push(c.agent(name, extra));
    }
    c.wait_nodes(&["web1", "web2", "db1"], true).await;
    // Agents never write labels: a registered node has none until the operator acts.
    let all = nodes(&c).await;
    for n in all.as_array().expect("node list") {
        assert_eq!(n["labels"], serde_json::json!({}), "{n}");
    }
    for (name, role) in [("web1", "web"), ("web2", "web"), ("db1", "db")] {
        let o = c
            .eden(&["node", "label", name, &format!("role={role}")])
            .await;
        assert_eq!(o.code, Some(0), "{o:?}");
    }
    (c, agents)
}

/// `eden run --on role=web --shell -- CMD`, which must succeed.
async fn run_on_web(c: &Cluster, cmd: &str) {
    let o = c
        .eden(&["run", "--on", "role=web", "--shell", "--", cmd])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
}

async fn nodes(c: &Cluster) -> Value {
    let o = c.eden(&["node", "ls", "-w", "json"]).await;
    serde_json::from_str(&o.stdout).unwrap_or(Value::Null)
}

/// The per-node results of `eden run ... -w json` (or `task wait -w json`).
fn results(o: &CliOutput) -> Value {
    let v: Value =
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"));
    v["nodes"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_selectors_and_node_lists() {
    let (c, mut agents) = setup(&[]).await;
    // `-w simple` is plain lines for a listing too; without `-w` it is a table.
    let o = c
        .eden(&["node", "ls", "-l", "role=db", "-w", "simple"])
        .await;
    assert!(o.stdout.starts_with("db1, up, role=db, "), "{o:?}");
    assert_eq!(o.stdout.lines().count(), 1, "{o:?}");
    let o = c.eden(&["node", "ls", "-l", "role=db"]).await;
    assert!(
        o.stdout.starts_with("+-") && o.stdout.contains("| NAME "),
        "{o:?}"
    );
    // A selector: both web nodes, each with its own output.
    let o = c
        .eden(&[
            "run",
            "--on",
            "role=web",
            "-w",
            "json",
            "--",
            "sh",
            "-c",
            "echo I am $(hostname) >/dev/null; echo hi",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let r = results(&o);
    assert_eq!(r.as_object().unwrap().len(), 2, "{r}");
    for n in ["web1", "web2"] {
        assert_eq!(r[n]["state"], "done");
        assert_eq!(r[n]["status"], "ok");
        assert_eq!(r[n]["exit_code"], 0);
        assert_eq!(r[n]["stdout"], "hi\n");
    }
    // Simple output: a header line per node, then its output.
    let o = c
        .eden(&["run", "--nodes", "db1,web1", "--", "echo", "x"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout.starts_with("== db1: ok (exit 0, ") && o.stdout.contains("s)\nx\n== web1: ok"),
        "{}",
        o.stdout
    );
    // A failing target: exit code 4, its stderr and exit code shown.
    let o = c
        .eden(&[
            "run",
            "--on",
            "role in (web,db),!gone",
            "-w",
            "json",
            "--shell",
            "--",
            "echo out; echo oops >&2; test {{ node.labels.role }} = web",
        ])
        .await;
    assert_eq!(o.code, Some(4), "{o:?}");
    let r = results(&o);
    assert_eq!(r["db1"]["status"], "failed");
    assert_eq!(r["db1"]["exit_code"], 1);
    assert_eq!(r["db1"]["stderr"], "oops\n");
    assert_eq!(r["web1"]["status"], "ok");
    // Bad selectors and empty matches: clear one-line errors, nothing created.
    let before = c.eden(&["task", "ls", "-w", "json"]).await.stdout;
    let o = c.eden(&["run", "--on", "role in (web", "--", "true"]).await;
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(
        o.stderr.contains("bad selector") && o.stderr.contains("unbalanced"),
        "{}",
        o.stderr
    );
    let o = c.eden(&["run", "--on", "role=nope", "--", "true"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("matched no node"), "{}", o.stderr);
    let o = c
        .eden(&["run", "--nodes", "web1,ghost", "--", "true"])
        .await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("unknown node(s): ghost"), "{}", o.stderr);
    assert_eq!(c.eden(&["task", "ls", "-w", "json"]).await.stdout, before);
    // Labels are the operator's: change one and the selector follows.
    let o = c
        .eden(&["node", "label", "web2", "role=db", "tier=b"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c
        .eden(&["run", "--on", "role=db", "-w", "json", "--", "true"])
        .await;
    let r = results(&o);
    assert!(
        r.get("web2").is_some() && r.get("db1").is_some() && r.get("web1").is_none(),
        "{r}"
    );
    // An agent cannot ask for labels either (it would choose its own role).
    let o = c
        .eden(&["agent", "--name", "rogue", "--label", "role=master"])
        .await;
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("eden node label"), "{}", o.stderr);
    // ...and a restarted agent leaves them as they are.
    agents[1].stop();
    agents[1].restart();
    c.wait_nodes(&["web2"], true).await;
    let o = c.eden(&["node", "show", "web2", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["labels"]["role"], "db");
    assert!(v["facts"]["cpus"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_variable_feeds_a_template_on_another_node() {
    let (c, _agents) = setup(&[]).await;
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "db1",
            "--register",
            "token",
            // web1 may read it (on a secure cluster nobody else but db1 and admins could).
            "--readers",
            "node:web1",
            "--",
            "sh",
            "-c",
            "echo s3cret-$((6*7))",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c.eden(&["var", "get", "db1", "token"]).await;
    assert_eq!(o.stdout, "s3cret-42\n", "{o:?}");
    // JSON output is stored as JSON.
    c.eden(&[
        "run",
        "--nodes",
        "db1",
        "--register",
        "info",
        "--readers",
        "node:web1",
        "--",
        "echo",
        "{\"port\": 5432}",
    ])
    .await;
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "web1",
            "-w",
            "json",
            "--",
            "echo",
            "{{ vars[\"db1\"].token }}:{{ vars[\"db1\"].info.port }}@{{ node.name }}",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(results(&o)["web1"]["stdout"], "s3cret-42:5432@web1\n");
    // A failed run does not overwrite the variable.
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "db1",
            "--register",
            "token",
            "--",
            "sh",
            "-c",
            "echo bad; exit 3",
        ])
        .await;
    assert_eq!(o.code, Some(4), "{o:?}");
    assert_eq!(
        c.eden(&["var", "get", "db1", "token"]).await.stdout,
        "s3cret-42\n"
    );
    // Cluster-wide variables, and an undefined name fails the task before anything runs.
    // (Shared with web1: on a secure cluster a cluster variable is the admins' unless its readers
    // say otherwise; web1's own missing variable is undefined.)
    c.eden(&[
        "var",
        "set",
        "--cluster",
        "dc",
        "fra",
        "--readers",
        "node:web1",
    ])
    .await;
    let marker = c.dir().join("ran");
    let script = format!(
        "touch {} {{{{ vars.cluster.dc }}}} {{{{ vars[\"web1\"].nope }}}}",
        marker.display()
    );
    let o = c
        .eden(&[
            "run", "--nodes", "web1", "-w", "json", "--shell", "--", &script,
        ])
        .await;
    assert_eq!(o.code, Some(4), "{o:?}");
    let r = &results(&o)["web1"];
    assert_eq!(r["status"], "error");
    assert!(r["error"].as_str().unwrap().contains("undefined"), "{r}");
    assert!(
        !marker.exists(),
        "the command ran despite the template error"
    );
    // History by revision.
    let o = c.eden(&["var", "ls", "db1", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    let rev = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "token")
        .unwrap()["revision"]
        .as_i64()
        .unwrap();
    c.eden(&["var", "set", "db1", "token", "rotated"]).await;
    assert_eq!(
        c.eden(&["var", "get", "db1", "token"]).await.stdout,
        "rotated\n"
    );
    let o = c
        .eden(&["var", "get", "db1", "token", "--rev", &rev.to_string()])
        .await;
    assert_eq!(o.stdout, "s3cret-42\n", "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_task_reports_it_lost_and_nothing_runs_twice() {
    // One task at a time per agent: a run a restarted agent would start again while it
    // reconciles is done before the next task it is given.
    let (c, mut agents) = setup(&["--concurrency", "1"]).await;
    let counter = c.dir().join("runs");
    let cmd = format!("echo run >> {}; sleep 30", counter.display());
    let o = c
        .eden(&["run", "--nodes", "web1", "--async", "--shell", "--", &cmd])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let id = o.stdout.trim().to_string();
    wait_for("the task to start", Duration::from_secs(20), || async {
        std::fs::read_to_string(&counter).is_ok_and(|s| s.lines().count() == 1)
    })
    .await;
    agents[0].kill();
    agents[0].restart();
    let o = c.eden(&["task", "wait", &id, "-w", "json"]).await;
    assert_eq!(o.code, Some(6), "{o:?}");
    let r = &results(&o)["web1"];
    assert_eq!(r["status"], "lost", "{r}");
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        1,
        "it ran again"
    );
    // A finished task is not run again by a restarted agent either (clean stop, then start).
    run_on_web(&c, &format!("echo again >> {}", counter.display())).await;
    assert_eq!(agents[0].stop(), Some(0));
    agents[0].restart();
    agents[1].kill();
    agents[1].restart();
    c.wait_nodes(&["web1", "web2"], true).await;
    // A new task on both: each restarted agent reconciles its old assignments before it watches
    // for new ones, so once this ran, anything reconciling would have run is done too.
    run_on_web(&c, &format!("echo marker >> {}", counter.display())).await;
    let lines = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(
        lines.lines().filter(|l| *l != "marker").collect::<Vec<_>>(),
        ["run", "again", "again"],
        "1 lost run and 2 runs, none again: {lines:?}"
    );
}

/// A new assignment is claimed straight from its watch event, on condition that nothing happened
/// to it since: one that another run already claimed, or that was canceled, when the agent sees
/// it is settled by reading (lost, canceled) and never runs. Keys written as `eden run` and
/// `eden task cancel` would, in the order that makes the agent meet them on the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_claimed_or_canceled_before_the_agent_sees_it_never_runs() {
    use eden_proto::model::objects::{now_ms, Claim, Status, TaskResult, TaskSpec};
    use eden_proto::model::{keys, kv};
    let (c, _agents) = setup(&[]).await;
    let client = c.client();
    let ran = c.dir().join("ran");
    for (id, before) in [("t-claimed", "claim"), ("t-canceled", "cancel")] {
        let spec = TaskSpec {
            id: id.into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("echo {id} >> {}", ran.display()),
            ],
            timeout_ms: 10_000,
            deadline: now_ms() + 60_000,
            created_at: now_ms(),
            ..Default::default()
        };
        let (key, value) = if before == "claim" {
            let claim = Claim {
                instance: "web1-before".into(),
                run: "a-run-that-died".into(),
                started_at: now_ms(),
            };
            (
                keys::claim(id, "web1"),
                serde_json::to_string(&claim).unwrap(),
            )
        } else {
            (keys::cancel(id), now_ms().to_string())
        };
        c.put(0, &key, &value).await.expect("put");
        c.put(0, &keys::spec(id), &serde_json::to_string(&spec).unwrap())
            .await
            .expect("put");
        c.put(
            0,
            &keys::assignment("web1", id),
            &serde_json::to_string(&spec).unwrap(),
        )
        .await
        .expect("put");
        let result = keys::result(id, "web1");
        wait_for("the agent's result", Duration::from_secs(20), || async {
            kv::get_one(&client, &result).await.ok().flatten().is_some()
        })
        .await;
        let r: TaskResult =
            kv::decode(&kv::get_one(&client, &result).await.unwrap().unwrap()).unwrap();
        let want = if before == "claim" {
            Status::Lost
        } else {
            Status::Canceled
        };
        assert_eq!(r.status, want, "{id}: {r:?}");
    }
    assert!(
        !ran.exists(),
        "a task ran: {:?}",
        std::fs::read_to_string(&ran)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_while_a_task_fans_out_loses_no_result() {
    let (mut c, _agents) = setup(&[]).await;
    let marks = c.dir().join("marks");
    let cmd = format!("sleep 1; echo {{{{ node.name }}}} >> {}", marks.display());
    let o = c
        .eden(&["run", "--on", "role", "--async", "--shell", "--", &cmd])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let id = o.stdout.trim().to_string();
    let leader = c.wait_leader().await;
    c.kill(leader);
    let o = c.eden(&["task", "wait", &id, "-w", "json"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let r = results(&o);
    for n in ["web1", "web2", "db1"] {
        assert_eq!(r[n]["status"], "ok", "{r}");
    }
    let mut lines: Vec<String> = std::fs::read_to_string(&marks)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["db1", "web1", "web2"],
        "each node ran it exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_shows_down_and_offline_targets_wait_for_the_deadline() {
    let (c, mut agents) = setup(&[]).await;
    // kill -9: the node is down within its lease TTL (3 s here), and "last seen" is kept.
    agents[1].kill();
    let t = std::time::Instant::now();
    c.wait_nodes(&["web2"], false).await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "down after {:?}",
        t.elapsed()
    );
    // A task for it waits; it runs when the agent returns before the deadline.
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "web2",
            "--deadline",
            "60s",
            "--async",
            "--",
            "echo",
            "late",
        ])
        .await;
    let id = o.stdout.trim().to_string();
    // A task with a short deadline, given at the same time, passes its deadline first: then the
    // first one is still pending, waiting for its own.
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "web2",
            "--deadline",
            "1s",
            "--async",
            "--",
            "true",
        ])
        .await;
    let short = o.stdout.trim().to_string();
    wait_for(
        "the short deadline to pass",
        Duration::from_secs(20),
        || async {
            let o = c.eden(&["task", "show", &short, "-w", "json"]).await;
            results(&o)["web2"]["status"] == "unreachable"
        },
    )
    .await;
    let o = c.eden(&["task", "show", &id, "-w", "json"]).await;
    assert_eq!(results(&o)["web2"]["state"], "pending", "{o:?}");
    agents[1].restart();
    let o = c.eden(&["task", "wait", &id, "-w", "json"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(results(&o)["web2"]["stdout"], "late\n");
    // Past the deadline it is unreachable, and a returning agent does not run it.
    agents[1].kill();
    c.wait_nodes(&["web2"], false).await;
    let marker = c.dir().join("too-late");
    let cmd = format!("touch {}", marker.display());
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "web2",
            "--deadline",
            "2s",
            "-w",
            "json",
            "--shell",
            "--",
            &cmd,
        ])
        .await;
    assert_eq!(o.code, Some(6), "{o:?}");
    assert_eq!(results(&o)["web2"]["status"], "unreachable");
    let id = serde_json::from_str::<Value>(&o.stdout).unwrap()["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    agents[1].restart();
    // The returning agent records it as unreachable itself, and runs nothing.
    wait_for(
        "the agent to settle the late task",
        Duration::from_secs(20),
        || async {
            let o = c.eden(&["task", "show", &id, "-w", "json"]).await;
            results(&o)["web2"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("after its deadline"))
        },
    )
    .await;
    assert!(!marker.exists(), "a task past its deadline ran");
    // A second agent cannot take a live node's name; the first one restarted takes it back at once.
    let mut twin = c.agent_in("web2", "twin", &[]);
    let code = twin.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "{}", twin.log_text());
    assert!(
        twin.log_text()
            .contains("already registered by a live agent"),
        "{}",
        twin.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_kill_the_process_group_and_output_caps_hold() {
    let (c, _agents) = setup(&["--max-output-bytes", "1000"]).await;
    let marker = c.dir().join("survivor");
    let cmd = format!("(sleep 3; touch {}) & sleep 30", marker.display());
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "web1",
            "--timeout",
            "1s",
            "-w",
            "json",
            "--shell",
            "--",
            &cmd,
        ])
        .await;
    assert_eq!(o.code, Some(5), "{o:?}");
    assert_eq!(results(&o)["web1"]["status"], "timeout");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !marker.exists(),
        "a process of the task's group outlived its timeout"
    );
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "web1",
            "-w",
            "json",
            "--shell",
            "--",
            "head -c 5000 /dev/zero | tr '\\0' x",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let r = &results(&o)["web1"];
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(r["stdout_truncated"], true);
    // Cancel kills a running task.
    let o = c
        .eden(&["run", "--nodes", "db1", "--async", "--", "sleep", "30"])
        .await;
    let id = o.stdout.trim().to_string();
    wait_for("the task to run", Duration::from_secs(20), || async {
        let o = c.eden(&["task", "show", &id, "-w", "json"]).await;
        results(&o)["db1"]["state"] == "running"
    })
    .await;
    assert_eq!(c.eden(&["task", "cancel", &id]).await.code, Some(0));
    let o = c.eden(&["task", "wait", &id, "-w", "json"]).await;
    assert_eq!(o.code, Some(4), "{o:?}");
    assert_eq!(results(&o)["db1"]["status"], "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_variable_watches_and_forgetting_nodes() {
    let (c, mut agents) = setup(&[]).await;
    // A script travels in the task; its #! line picks the interpreter; words after -- are its args.
    let script = c.dir().join("hello.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"script on {{ node.name }} says $1\"\n",
    )
    .unwrap();
    let o = c
        .eden(&[
            "run",
            "--nodes",
            "web1",
            "-w",
            "json",
            "--script",
            script.to_str().unwrap(),
            "--",
            "hi",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(results(&o)["web1"]["stdout"], "script on web1 says hi\n");
    // `eden var watch` prints each change (from a revision, so the set below cannot be missed).
    let from = c
        .client()
        .range(eden_proto::etcdserverpb::RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision
        + 1;
    let mut watch = tokio::process::Command::new(eden_tests::eden_bin())
        .args(eden_tests::tls_flags_for(&c.endpoints()))
        .args([
            "--endpoints",
            &c.endpoints().join(","),
            "var",
            "watch",
            "db1",
        ])
        .args(["--rev", &from.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    assert_eq!(
        c.eden(&["var", "set", "db1", "color", "blue"]).await.code,
        Some(0)
    );
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("var watch printed nothing")
        .unwrap();
    assert_eq!(line.as_deref(), Some("db1 color blue"));
    drop(watch);
    // Forgetting a node: refused while its agent lives, then everything of it goes.
    let o = c.eden(&["node", "rm", "db1"]).await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("is up"), "{}", o.stderr);
    agents[2].stop();
    c.wait_nodes(&["db1"], false).await;
    assert_eq!(c.eden(&["node", "rm", "db1"]).await.code, Some(0));
    let n = nodes(&c).await;
    assert!(
        !n.as_array().unwrap().iter().any(|x| x["name"] == "db1"),
        "{n}"
    );
    assert_eq!(c.eden(&["var", "ls", "db1"]).await.stdout, "");
    let o = c.eden(&["task", "ls", "-w", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    // Tasks and results go when their retention ends.
    let o = c
        .eden(&["run", "--nodes", "web1", "--retention", "2s", "--", "true"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    wait_for("the task to expire", Duration::from_secs(20), || async {
        let o = c.eden(&["task", "ls", "-w", "json"]).await;
        serde_json::from_str::<Value>(&o.stdout)
            .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 1))
    })
    .await;
    let (kvs, _) = eden_agent_keys_under(&c, eden_proto::model::keys::RUNS).await;
    assert_eq!(kvs, 2, "only the first task's claim and result are left");
}

/// How many keys are under a prefix.
async fn eden_agent_keys_under(c: &Cluster, prefix: &str) -> (usize, i64) {
    let r = c
        .client()
        .range(eden_proto::etcdserverpb::RangeRequest {
            key: prefix.into(),
            range_end: eden_proto::keys::prefix_end(prefix.as_bytes()),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    (r.count as usize, r.header.map_or(0, |h| h.revision))
}

/// A task for more targets than one etcd txn holds (one log entry through `Tasks.Create`) reaches
/// every target, on three members: `eden bench agents` with 500 simulated agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_500_simulated_agents_reaches_every_one() {
    let c = Cluster::start(3, &[]).await;
    let o = c
        .eden(&[
            "bench",
            "agents",
            "--count",
            "500",
            "--idle",
            "1s",
            "--lease-ttl",
            "6s",
            "-w",
            "json",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (
            v["targets"].as_u64(),
            v["ok"].as_u64(),
            v["not_ok"].as_u64()
        ),
        (Some(500), Some(500), Some(0)),
        "{v}"
    );
}

/// The revision a task's spec was written at, and how many assignments (`/eden/nodes/*/tasks/*`)
/// were written at that revision (read then: the bench deletes its nodes when it ends).
async fn assignments_with_the_spec(c: &Cluster) -> (i64, usize) {
    let range = |prefix: &'static str, revision: i64| async move {
        c.client()
            .range(eden_proto::etcdserverpb::RangeRequest {
                key: prefix.into(),
                range_end: eden_proto::keys::prefix_end(prefix.as_bytes()),
                revision,
                ..Default::default()
            })
            .await
            .unwrap()
            .kvs
    };
    let specs = range(eden_proto::model::keys::TASKS, 0).await;
    assert_eq!(specs.len(), 1);
    let at = specs[0].mod_revision;
    let with = range(eden_proto::model::keys::NODES, at)
        .await
        .into_iter()
        .filter(|kv| String::from_utf8_lossy(&kv.key).contains("/tasks/") && kv.mod_revision == at)
        .count();
    (at, with)
}

/// eden stores a task on 300 targets in one log entry (`Tasks.Create`: the spec and every
/// assignment at one revision); etcd does not know that call, and the same task goes to it in
/// txns of at most 120 operations (the spec and 119 assignments in the first). Every simulated
/// agent answers on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_one_entry_on_eden_and_txns_on_etcd() {
    let bench = [
        "bench", "agents", "--count", "300", "--idle", "1s", "-w", "json",
    ];
    for etcd in [false, true] {
        let c = if etcd {
            Cluster::start_etcd(1).await
        } else {
            Cluster::start(1, &[]).await
        };
        let o = c.eden(&bench).await;
        assert_eq!(o.code, Some(0), "etcd {etcd}: {}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(
            (v["targets"].as_u64(), v["ok"].as_u64()),
            (Some(300), Some(300)),
            "etcd {etcd}: {v}"
        );
        let (at, with) = assignments_with_the_spec(&c).await;
        let want = if etcd { 119 } else { 300 };
        assert_eq!(
            with, want,
            "etcd {etcd}: assignments at the spec's revision {at}"
        );
    }
}

/// `Tasks.Create` refuses a bad spec with InvalidArgument and a one-line reason, and writes
/// nothing: not JSON, no target, a target that is no node name, a target named twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_task_spec_is_refused_and_nothing_is_written() {
    let c = Cluster::start(1, &[]).await;
    let client = c.client();
    let lease = client.lease_grant(600, 0).await.unwrap().id;
    let spec = |targets: &[&str]| {
        serde_json::to_vec(&eden_proto::model::objects::TaskSpec {
            id: "20261201-000000-0bad".into(),
            command: vec!["true".into()],
            timeout_ms: 1_000,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            lease,
            ..Default::default()
        })
        .unwrap()
    };
    for (what, json, says) in [
        ("not JSON", b"{".to_vec(), "not a task spec"),
        ("no target", spec(&[]), "names no target"),
        ("a bad name", spec(&["a/b"]), "node name"),
        ("twice", spec(&["a", "a"]), "duplicate key"),
    ] {
        match client.create_task(json).await {
            Err(eden_proto::client::ClientError::Server(s)) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}: {s:?}");
                assert!(s.message().contains(says), "{what}: {}", s.message());
                assert!(!s.message().contains('\n'), "{what}: {}", s.message());
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let (kvs, _) = eden_agent_keys_under(&c, eden_proto::model::keys::TASKS).await;
    assert_eq!(kvs, 0, "nothing stored");
}
