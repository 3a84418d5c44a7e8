//! Desired state and plugins (issue 18), with real processes and TLS on: `eden apply` plans on
//! every target and changes nothing until it applies; a second apply plans no change; agents
//! correct drift and report it as an event, also while every server is stopped; `notify` sets
//! off a resource only when what notifies it changed; a plugin that prints garbage, dies in the
//! middle of an apply, hangs, or is not the approved binary gives a clear error on its node and
//! the agent goes on; a plugin written in Python goes through the same path as the built-ins.

use std::path::{Path, PathBuf};
use std::time::Duration;

use eden_tests::{wait_for, Cluster};
use tokio::io::AsyncBufReadExt;

/// The Python that scripts/setup.sh gives grpcio (`EDEN_TEST_PYTHON` names another).
fn python() -> PathBuf {
    std::env::var_os("EDEN_TEST_PYTHON").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/eden-pyclients/bin/python")
        },
        PathBuf::from,
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds a Python plugin into one executable file (a zipapp): the greeting example's stubs
/// and helper, with `main` as its `__main__.py`.
fn zipapp(main: &Path, out: &Path) {
    let src = tempfile::tempdir().unwrap();
    let example = repo().join("examples/plugins/python/greeting");
    for f in std::fs::read_dir(&example).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "py") {
            std::fs::copy(f.path(), src.path().join(f.file_name())).unwrap();
        }
    }
    std::fs::copy(main, src.path().join("__main__.py")).unwrap();
    let s = std::process::Command::new(python())
        .args(["-m", "zipapp"])
        .arg(src.path())
        .arg("-p")
        .arg(python())
        .arg("-o")
        .arg(out)
        .status()
        .unwrap();
    assert!(s.success(), "zipapp {}", out.display());
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

/// Edits a file as an editor does (a new file renamed over it): the agent never sees it half
/// written.
fn tamper(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Waits for a derived event whose tag starts with `prefix`, at or after revision `from`
/// (`eden event watch`); returns it.
async fn wait_event(c: &Cluster, from: i64, prefix: &str) -> serde_json::Value {
    let mut child = tokio::process::Command::new(eden_tests::eden_bin())
        .args(c.tls_flags("admin"))
        .arg("--endpoints")
        .arg(c.endpoints().join(","))
        .args([
            "event",
            "watch",
            "state/**",
            "--from",
            &from.to_string(),
            "-w",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["tag"].as_str().is_some_and(|t| t.starts_with(prefix)) {
                return v;
            }
        }
        panic!("event watch ended before {prefix}");
    })
    .await
    .unwrap_or_else(|_| panic!("no event {prefix} within 20 s"));
    let _ = child.kill().await;
    found
}

/// A plugin's resource `TYPE.hi` (attributes `path`, `name`) on web1: planned (a change, nothing
/// written), applied (the file says `expected`), applied again (nothing to change).
async fn plan_apply_again(c: &Cluster, type_: &str, expected: &str) {
    let path = c.dir().join(format!("{type_}.out"));
    let f = write(
        &c.dir().join(format!("{type_}.yaml")),
        &format!(
            "resources:\n  - type: {type_}\n    name: hi\n    attrs: {{path: \"{}\", name: \"{{{{ node.name }}}}\"}}\n",
            path.display()
        ),
    );
    let plan = c
        .eden(&[
            "apply",
            &f,
            "--nodes",
            "web1",
            "--plan",
            "--detailed-exitcode",
        ])
        .await;
    assert_eq!(plan.code, Some(2), "{plan:?}");
    assert!(plan.stdout.contains(&format!("+ {type_}.hi")), "{plan:?}");
    assert!(!path.exists(), "the plan wrote nothing");
    let o = c.eden(&["apply", &f, "--nodes", "web1"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(read(&path).unwrap(), expected);
    let o = c
        .eden(&["apply", &f, "--nodes", "web1", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
}

async fn revision(c: &Cluster) -> i64 {
    c.client()
        .range(eden_proto::etcdserverpb::RangeRequest {
            key: b"/".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_changes_nothing_apply_converges_and_notify_fires_only_on_change() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agents: Vec<_> = ["web1", "web2", "db1"]
        .iter()
        .map(|n| c.agent(n, &[]))
        .collect();
    c.wait_nodes(&["web1", "web2", "db1"], true).await;
    for n in ["web1", "web2"] {
        assert_eq!(
            c.eden(&["node", "label", n, "role=web"]).await.code,
            Some(0)
        );
    }
    let dir = c.dir().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let state = |greeting: &str| {
        format!(
            r#"
name: site
resources:
  - type: exec
    name: reload
    attrs:
      command: "echo reload >> {d}/{{{{ node.name }}}}.reloads"
      refreshonly: true
  - type: file
    name: index
    attrs:
      path: "{d}/{{{{ node.name }}}}.html"
      content: "{greeting} from {{{{ node.name }}}}\n"
      mode: "0640"
    notify: [exec.reload]
  - type: exec
    name: marker
    attrs:
      command: "touch {d}/{{{{ node.name }}}}.marker"
      creates: "{d}/{{{{ node.name }}}}.marker"
    require: [file.index]
  - type: file
    name: banner
    attrs:
      path: "{d}/{{{{ node.name }}}}.banner"
      content: "{{{{ vars.cluster.motto }}}} / {{{{ files['cluster/banner'] }}}}"
"#
        )
    };
    // Templates read variables and files the node may read, as in tasks.
    let o = c
        .eden(&[
            "var",
            "set",
            "--cluster",
            "motto",
            "be kind",
            "--readers",
            "role=web",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let banner = write(&c.dir().join("banner"), "welcome");
    let o = c
        .eden(&[
            "file",
            "put",
            &banner,
            "cluster/banner",
            "--readers",
            "role=web",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let f = write(&c.dir().join("site.yaml"), &state("hello"));

    // The plan: a diff per node, nothing changed, nothing stored.
    let o = c
        .eden(&[
            "apply",
            &f,
            "--on",
            "role=web",
            "--plan",
            "--detailed-exitcode",
        ])
        .await;
    assert_eq!(o.code, Some(2), "{o:?}");
    for n in ["web1", "web2"] {
        assert!(
            o.stdout.contains(&format!("{n}: 4 to change")),
            "{}",
            o.stdout
        );
        assert!(
            o.stdout.contains(&format!("+hello from {n}")),
            "{}",
            o.stdout
        );
    }
    assert!(o.stdout.contains("+ file.index") && o.stdout.contains("will run: touch"));
    assert!(!o.stdout.contains("db1"), "{}", o.stdout);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the plan changed nothing"
    );
    let ls = c.eden(&["state", "ls", "-w", "json"]).await;
    assert_eq!(ls.stdout.trim(), "[]", "{ls:?}");

    // Apply: converged, in order; the reload ran once because the file changed.
    let from = revision(&c).await;
    let o = c.eden(&["apply", &f, "--on", "role=web"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    for n in ["web1", "web2"] {
        assert_eq!(
            read(&dir.join(format!("{n}.html"))).unwrap(),
            format!("hello from {n}\n")
        );
        assert!(dir.join(format!("{n}.marker")).exists());
        assert_eq!(read(&dir.join(format!("{n}.reloads"))).unwrap(), "reload\n");
        assert_eq!(
            read(&dir.join(format!("{n}.banner"))).unwrap(),
            "be kind / welcome"
        );
    }
    assert!(!dir.join("db1.html").exists());
    let e = wait_event(&c, from, "state/applied/").await;
    assert_eq!(e["data"]["status"], "applied", "{e}");

    // Again: nothing to change, and nothing set off.
    let o = c
        .eden(&["apply", &f, "--on", "role=web", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("web1: no changes"), "{}", o.stdout);
    assert_eq!(read(&dir.join("web1.reloads")).unwrap(), "reload\n");

    // A changed greeting: the file changes and the reload runs once more.
    let f = write(&c.dir().join("site.yaml"), &state("hi"));
    let o = c
        .eden(&["apply", &f, "--on", "role=web", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stdout.contains("-hello from web1") && o.stdout.contains("+hi from web1"));
    assert_eq!(read(&dir.join("web1.html")).unwrap(), "hi from web1\n");
    assert_eq!(read(&dir.join("web1.reloads")).unwrap(), "reload\nreload\n");

    // A node labelled later converges by itself; the state is listed with its nodes.
    assert_eq!(
        c.eden(&["node", "label", "db1", "role=web"]).await.code,
        Some(0)
    );
    wait_for("db1 to converge", Duration::from_secs(20), || async {
        read(&dir.join("db1.html")).as_deref() == Some("hi from db1\n")
    })
    .await;
    // Its report comes once its whole round is done (the file above is its first resource).
    wait_for("db1's report", Duration::from_secs(20), || async {
        let show = c.eden(&["state", "show", "site"]).await;
        show.stdout.contains("db1: applied")
    })
    .await;
    // Removed: agents stop keeping it, and leave the files.
    assert_eq!(c.eden(&["state", "rm", "site"]).await.code, Some(0));
    assert_eq!(c.eden(&["state", "rm", "site"]).await.code, Some(1));

    // Bad input: one line, exit 2, nothing stored.
    let bad = write(
        &c.dir().join("bad.yaml"),
        "resources:\n  - {type: file, name: a, require: [file.b]}\n",
    );
    let o = c.eden(&["apply", &bad, "--on", "role=web"]).await;
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("not a resource of this state"), "{o:?}");
    let o = c
        .eden(&["apply", &bad, "--on", "role=web", "--detailed-exitcode"])
        .await;
    assert_eq!(
        o.code,
        Some(1),
        "2 means changes with --detailed-exitcode: {o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_corrected_and_reported_also_while_every_server_is_stopped() {
    let mut c = Cluster::start_tls(1, &[]).await;
    let agent = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    let path = c.dir().join("motd");
    let p = path.display();
    let f = write(
        &c.dir().join("motd.yaml"),
        &format!(
            "interval: 300ms\nresources:\n  - type: file\n    name: motd\n    attrs: {{path: \"{p}\", content: \"welcome\\n\"}}\n"
        ),
    );
    let o = c.eden(&["apply", &f, "--nodes", "web1"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(read(&path).unwrap(), "welcome\n");

    // Edited by hand: changed back within the interval, and an event says so.
    let from = revision(&c).await;
    tamper(&path, "defaced\n");
    let e = wait_event(&c, from, "state/drift/web1/file.motd").await;
    assert_eq!(e["data"]["corrected"], true, "{e}");
    assert_eq!(e["data"]["changes"][0]["from"], "defaced\n", "{e}");
    assert_eq!(e["labels"]["state"], "motd");
    assert_eq!(read(&path).unwrap(), "welcome\n");

    // Every server stopped: the agent still changes it back, and reports it when they are back.
    assert_eq!(c.stop(0), Some(0));
    tamper(&path, "defaced while cut off\n");
    wait_for(
        "the agent to correct the file",
        Duration::from_secs(10),
        || async { read(&path).as_deref() == Some("welcome\n") },
    )
    .await;
    c.restart(0);
    wait_for(
        "the drift found while cut off to be reported",
        Duration::from_secs(30),
        || async {
            let o = c
                .eden(&["get", "/eden/nodes/web1/drift/motd/file.motd"])
                .await;
            let value = o.stdout.lines().nth(1).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
            v["changes"][0]["from"] == "defaced while cut off\n" && v["corrected"] == true
        },
    )
    .await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugins_fail_on_their_node_with_a_clear_error_and_the_agent_goes_on() {
    let c = Cluster::start_tls(1, &[]).await;
    let plugins = c.dir().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let pd = plugins.display().to_string();
    let _agent = c.agent("web1", &["--plugin-dir", &pd]);
    c.wait_nodes(&["web1"], true).await;
    // Garbage on stdout instead of a handshake.
    let garbage = plugins.join("eden-plugin-garbage");
    write(&garbage, "#!/bin/sh\necho 'listening on :8080'\nsleep 60\n");
    std::fs::set_permissions(
        &garbage,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // A Python plugin that dies in the middle of an apply, or never answers a plan.
    zipapp(
        &repo().join("tests/plugins/misbehave/__main__.py"),
        &plugins.join("eden-plugin-misbehave"),
    );
    let out = c.dir().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let od = out.display().to_string();

    // Not locked: refused before it runs, and the built-in file in the same state is applied.
    let f = write(
        &c.dir().join("bad.yaml"),
        &format!(
            r#"resources:
  - {{type: garbage_thing, name: g, attrs: {{}}}}
  - {{type: misbehave_crash, name: c, attrs: {{path: "{od}/crash"}}}}
  - {{type: misbehave_hang, name: h, attrs: {{path: "{od}/hang"}}, timeout: 1s}}
  - {{type: file, name: ok, attrs: {{path: "{od}/ok", content: "fine\n"}}}}
  - {{type: file, name: after, attrs: {{path: "{od}/after", content: "x\n"}}, require: [misbehave_crash.c]}}
"#
        ),
    );
    let plan = c.eden(&["apply", &f, "--nodes", "web1", "--plan"]).await;
    assert_eq!(plan.code, Some(4), "{plan:?}");
    assert!(
        plan.stdout
            .contains("is not approved: run `eden plugin lock"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stderr
            .contains("the plan failed on web1: nothing applied"),
        "{plan:?}"
    );
    let g = garbage.display().to_string();
    let m = plugins.join("eden-plugin-misbehave").display().to_string();
    let o = c.eden(&["plugin", "lock", &g, &m]).await;
    assert_eq!(o.code, Some(0), "{o:?}");

    // Locked: planning shows each one's error; nothing is applied.
    let plan = c.eden(&["apply", &f, "--nodes", "web1", "--plan"]).await;
    assert_eq!(plan.code, Some(4), "{plan:?}");
    assert!(
        plan.stdout
            .contains("printed \"listening on :8080\" where its handshake belongs"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("planning misbehave_hang.h took longer than 1s"),
        "{}",
        plan.stdout
    );
    assert!(!out.join("ok").exists());

    // Only the crashing one and what requires it: the crash is reported, the other file applied,
    // nothing half-written where the state said, and the agent goes on.
    let f2 = write(
        &c.dir().join("crash.yaml"),
        &format!(
            r#"resources:
  - {{type: misbehave_crash, name: c, attrs: {{path: "{od}/crash"}}}}
  - {{type: file, name: ok, attrs: {{path: "{od}/ok", content: "fine\n"}}}}
  - {{type: file, name: after, attrs: {{path: "{od}/after", content: "x\n"}}, require: [misbehave_crash.c]}}
"#
        ),
    );
    let o = c.eden(&["apply", &f2, "--nodes", "web1"]).await;
    assert_eq!(o.code, Some(4), "{o:?}");
    assert!(
        o.stdout
            .contains("plugin misbehave died during applying misbehave_crash.c"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("skipped: it requires misbehave_crash.c, which failed"),
        "{}",
        o.stdout
    );
    assert_eq!(read(&out.join("ok")).unwrap(), "fine\n");
    assert!(!out.join("crash").exists() && !out.join("after").exists());

    // A binary replaced after it was locked is refused.
    std::fs::write(&garbage, "#!/bin/sh\necho another\n").unwrap();
    let f3 = write(
        &c.dir().join("g.yaml"),
        "resources:\n  - {type: garbage_thing, name: g, attrs: {}}\n",
    );
    let plan = c.eden(&["apply", &f3, "--nodes", "web1", "--plan"]).await;
    assert_eq!(plan.code, Some(4), "{plan:?}");
    assert!(plan.stdout.contains("not the approved"), "{}", plan.stdout);

    // The agent still works: a good state applies.
    let f4 = write(
        &c.dir().join("good.yaml"),
        &format!("resources:\n  - {{type: file, name: good, attrs: {{path: \"{od}/good\", content: \"ok\\n\"}}}}\n"),
    );
    let o = c.eden(&["apply", &f4, "--nodes", "web1"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(read(&out.join("good")).unwrap(), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_is_planned_and_applied_like_the_built_ins() {
    let c = Cluster::start_tls(1, &[]).await;
    let plugins = c.dir().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let bin = plugins.join("eden-plugin-greeting");
    zipapp(
        &repo().join("examples/plugins/python/greeting/__main__.py"),
        &bin,
    );
    let pd = plugins.display().to_string();
    let mut agent = c.agent("web1", &["--plugin-dir", &pd]);
    c.wait_nodes(&["web1"], true).await;
    let b = bin.display().to_string();
    assert_eq!(c.eden(&["plugin", "lock", &b]).await.code, Some(0));
    plan_apply_again(&c, "greeting_message", "Hello, web1!\n").await;
    // Its schema, version and lock, as `eden plugin ls` shows them.
    let ls = c.eden(&["plugin", "ls", "--dir", &pd]).await;
    assert!(
        ls.stdout.contains("greeting_message") && ls.stdout.contains("0.1.0"),
        "{ls:?}"
    );
    // It does not answer AutoMTLS: plaintext, on the agent's own socket directory.
    let json = c.eden(&["plugin", "ls", "--dir", &pd, "-w", "json"]).await;
    assert!(json.stdout.contains(r#""mtls":false"#), "{json:?}");
    // What it wrote on stderr is in the agent's log; it dies with the agent.
    assert!(
        agent.log_text().contains("greeting: wrote"),
        "{}",
        agent.log_text()
    );
    let running = || {
        std::process::Command::new("pgrep")
            .arg("-f")
            .arg(&b)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(running(), "the plugin runs while the agent does");
    agent.kill();
    wait_for(
        "the plugin to die with its agent",
        Duration::from_secs(10),
        || async { !running() },
    )
    .await;
}

/// `runsvdir` watching a directory: a real service manager for machines without systemd as
/// PID 1 (this one). SIGHUP on drop: it stops every service and exits.
struct Runsvdir(std::process::Child);

impl Drop for Runsvdir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn sv_status(svdir: &Path, name: &str) -> String {
    let o = std::process::Command::new("sv")
        .arg("status")
        .arg(svdir.join(name))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_under_runit_is_started_restarted_on_notify_and_kept_running() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agent = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    let (svdir, avail) = (c.dir().join("service"), c.dir().join("sv"));
    let starts = c.dir().join("starts");
    std::fs::create_dir_all(&svdir).unwrap();
    std::fs::create_dir_all(avail.join("web")).unwrap();
    let run = avail.join("web/run");
    write(
        &run,
        &format!(
            "#!/bin/sh\necho start >> {}\nexec sleep 1000\n",
            starts.display()
        ),
    );
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _runsvdir = Runsvdir(
        std::process::Command::new("runsvdir")
            .arg("-P")
            .arg(&svdir)
            .spawn()
            .expect("runsvdir (scripts/setup.sh installs runit)"),
    );
    let conf = c.dir().join("web.conf");
    let state = |version: &str| {
        format!(
            r#"interval: 300ms
resources:
  - type: file
    name: conf
    attrs: {{path: "{}", content: "version {version}\n"}}
    notify: [service.web]
  - type: service
    name: web
    attrs: {{name: web, manager: runit, runit_dir: "{}", runit_available: "{}", state: running, enabled: true}}
"#,
            conf.display(),
            svdir.display(),
            avail.display()
        )
    };
    let starts_now = || read(&starts).unwrap_or_default().lines().count();
    let f = write(&c.dir().join("web.yaml"), &state("1"));
    let o = c.eden(&["apply", &f, "--nodes", "web1", "--plan"]).await;
    assert!(o.stdout.contains("will enable, start"), "{o:?}");
    let o = c.eden(&["apply", &f, "--nodes", "web1"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        sv_status(&svdir, "web").starts_with("run:"),
        "{}",
        sv_status(&svdir, "web")
    );
    // Its run script writes the line as it starts (just after runsv reports it running).
    wait_for("the start", Duration::from_secs(10), || async {
        starts_now() == 1
    })
    .await;

    // Unchanged: not restarted.
    let o = c
        .eden(&["apply", &f, "--nodes", "web1", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(starts_now(), 1);

    // The file changed: restarted once.
    let f = write(&c.dir().join("web.yaml"), &state("2"));
    let o = c.eden(&["apply", &f, "--nodes", "web1", "--plan"]).await;
    assert!(o.stdout.contains("will restart (notified)"), "{o:?}");
    let o = c
        .eden(&["apply", &f, "--nodes", "web1", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(2), "{o:?}");
    wait_for("the restart", Duration::from_secs(10), || async {
        starts_now() == 2
    })
    .await;

    // Stopped by hand: started again, and reported.
    let from = revision(&c).await;
    let s = std::process::Command::new("sv")
        .arg("down")
        .arg(svdir.join("web"))
        .status()
        .unwrap();
    assert!(s.success());
    let e = wait_event(&c, from, "state/drift/web1/service.web").await;
    assert_eq!(e["data"]["corrected"], true, "{e}");
    wait_for("web to run again", Duration::from_secs(10), || async {
        sv_status(&svdir, "web").starts_with("run:") && starts_now() == 3
    })
    .await;
}

/// Installs and removes Debian's `hello` with apt: changes the machine and needs apt's
/// repositories, so it runs only when asked:
/// `cargo test -p eden-tests --test states -- --ignored apt` (as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn apt_installs_and_removes_a_package() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agent = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    let state = |s: &str| {
        format!("resources:\n  - {{type: package, name: hello, attrs: {{name: hello, state: {s}}}, timeout: 5m}}\n")
    };
    let f = write(&c.dir().join("p.yaml"), &state("installed"));
    let o = c
        .eden(&["apply", &f, "--nodes", "web1", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stdout.contains("will install hello"), "{o:?}");
    assert!(std::process::Command::new("hello")
        .output()
        .is_ok_and(|o| o.status.success()));
    let o = c
        .eden(&["apply", &f, "--nodes", "web1", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let f = write(&c.dir().join("p.yaml"), &state("absent"));
    let o = c
        .eden(&["apply", &f, "--nodes", "web1", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stdout.contains("will remove hello"), "{o:?}");
    assert!(std::process::Command::new("hello").output().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactor_applies_a_state_when_an_alert_comes() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agent = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    let path = c.dir().join("motd");
    // Mode report: drift is only reported, until an alert converges the machine.
    let f = write(
        &c.dir().join("motd.yaml"),
        &format!(
            "mode: report\ninterval: 300ms\nresources:\n  - type: file\n    name: motd\n    attrs: {{path: \"{}\", content: \"welcome\\n\"}}\n",
            path.display()
        ),
    );
    assert_eq!(
        c.eden(&["apply", &f, "--nodes", "web1"]).await.code,
        Some(0)
    );
    let from = revision(&c).await;
    tamper(&path, "defaced\n");
    let e = wait_event(&c, from, "state/drift/web1/file.motd").await;
    assert_eq!(e["data"]["corrected"], false, "{e}");
    assert_eq!(read(&path).unwrap(), "defaced\n");

    let rule = write(
        &c.dir().join("rule.yaml"),
        "name: converge-on-alert\non: alert/defaced/*\nactions:\n  - apply: {state: motd, node: \"{{ event.parts[2] }}\"}\n",
    );
    let o = c.eden(&["reactor", "apply", &rule]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let from = revision(&c).await;
    let o = c.eden(&["event", "emit", "alert/defaced/web1"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let e = wait_event(&c, from, "state/applied/web1/motd").await;
    assert_eq!(e["data"]["resources"][0]["id"], "file.motd", "{e}");
    assert_eq!(read(&path).unwrap(), "welcome\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_plugin_built_with_hashicorp_go_plugin_is_applied_like_the_built_ins() {
    let c = Cluster::start_tls(1, &[]).await;
    let plugins = c.dir().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let bin = plugins.join("eden-plugin-hello");
    // Built from Debian's Go packages (scripts/setup.sh installs them), in GOPATH mode.
    let s = std::process::Command::new(repo().join("examples/plugins/go/hello/build.sh"))
        .arg(&bin)
        .status()
        .unwrap();
    assert!(s.success(), "building the Go plugin");
    let pd = plugins.display().to_string();
    let _agent = c.agent("web1", &["--plugin-dir", &pd]);
    c.wait_nodes(&["web1"], true).await;
    let b = bin.display().to_string();
    assert_eq!(c.eden(&["plugin", "lock", &b]).await.code, Some(0));
    plan_apply_again(&c, "hello_file", "hello from Go, web1\n").await;
    // go-plugin answered the agent's AutoMTLS offer (with a P-521 certificate); the built-ins too.
    let ls = c.eden(&["plugin", "ls", "--dir", &pd, "-w", "json"]).await;
    let ls: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    let mtls = |name: &str| {
        ls.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["mtls"].clone())
    };
    assert_eq!(mtls("hello"), Some(serde_json::json!(true)), "{ls}");
    assert_eq!(mtls("file"), Some(serde_json::json!(true)), "{ls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_is_changed_back_at_once_not_at_the_interval() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agent = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    let path = c.dir().join("motd");
    // An hour between drift checks: only the file plugin's watch (inotify) can be this quick.
    let f = write(
        &c.dir().join("motd.yaml"),
        &format!(
            "interval: 1h\nresources:\n  - type: file\n    name: motd\n    attrs: {{path: \"{}\", content: \"welcome\\n\"}}\n",
            path.display()
        ),
    );
    assert_eq!(
        c.eden(&["apply", &f, "--nodes", "web1"]).await.code,
        Some(0)
    );
    for attempt in 0..2 {
        let from = revision(&c).await;
        tamper(&path, &format!("defaced {attempt}\n"));
        let e = wait_event(&c, from, "state/drift/web1/file.motd").await;
        assert_eq!(e["data"]["corrected"], true, "{e}");
        assert_eq!(read(&path).unwrap(), "welcome\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_s_source_is_an_eden_file_and_a_sealed_one_never_shows() {
    let c = Cluster::start_tls(1, &[]).await;
    let _agent = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    assert_eq!(
        c.eden(&["node", "label", "web1", "role=web"]).await.code,
        Some(0)
    );
    // A key that is not text, sealed for the web nodes (web1 registered its sealing key).
    let key: Vec<u8> = (0..300u32).map(|i| (i * 11 % 256) as u8).collect();
    let local = c.dir().join("key.der");
    std::fs::write(&local, &key).unwrap();
    let l = local.display().to_string();
    let o = c
        .eden(&[
            "file",
            "put",
            &l,
            "cluster/tls/key.der",
            "--readers",
            "role=web",
            "--sealed",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let path = c.dir().join("placed.der");
    let f = write(
        &c.dir().join("key.yaml"),
        &format!(
            "resources:\n  - type: file\n    name: key\n    attrs: {{path: \"{}\", source: cluster/tls/key.der, mode: \"0600\"}}\n",
            path.display()
        ),
    );
    let plan = c.eden(&["apply", &f, "--nodes", "web1", "--plan"]).await;
    assert_eq!(plan.code, Some(0), "{plan:?}");
    assert!(plan.stdout.contains("(sensitive)"), "{plan:?}");
    assert!(!plan.stdout.contains("content"), "{plan:?}");
    assert!(
        !plan.stdout.contains("not shown"),
        "the detail is hidden too: {plan:?}"
    );
    let o = c.eden(&["apply", &f, "--nodes", "web1"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(std::fs::read(&path).unwrap(), key);
    let o = c
        .eden(&["apply", &f, "--nodes", "web1", "--detailed-exitcode"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
}
