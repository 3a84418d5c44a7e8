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
