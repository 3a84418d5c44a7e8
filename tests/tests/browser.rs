//! The web view in a real browser (issue 19): headless Chromium driven through Debian's
//! chromedriver (WebDriver), against real `eden server` and `eden agent` processes over real TLS.
//!
//! Not in the default suite (they need chromium and chromium-driver, which scripts/setup.sh
//! installs, and take a minute): `scripts/test-browser.sh` runs them. Each test saves a
//! screenshot of every page it visits in `$EDEN_SCREENSHOTS` (default
//! /tmp/eden-ui-screenshots): artifacts, not committed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eden_tests::{free_port, wait_for, Cluster};
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver and the Chromium it starts, in their own process group (killed on drop, also
/// when a test fails), and a WebDriver session.
struct Browser {
    driver: std::process::Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium process it started. (`--` first:
        // procps' kill reads `-9 -PGID` as other arguments, and has been seen to kill(-1).)
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

async fn browser() -> Browser {
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let driver = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver (scripts/setup.sh installs chromium-driver)");
    wait_for("chromedriver", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let caps = serde_json::json!({
        "browserName": "chrome",
        // The cluster's own CA signed the server's certificate; the browser does not know it.
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session in headless Chromium");
    Browser {
        driver,
        client,
        _profile: profile,
    }
}

impl Browser {
    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the element `css` says `want` (its text contains it).
    async fn wait_text(&self, what: &str, css: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let t = self.text(css).await;
            if t.contains(want) {
                return;
            }
            if Instant::now() > deadline {
                let source = self.client.source().await.unwrap_or_default();
                panic!("{what}: {css} says {t:?}, not {want:?}, after {within:?}\n{source}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's live stream (on `css`) is open.
    async fn wait_live(&self, css: &str) {
        self.wait_text_attr(css, "data-live", "open").await
    }

    async fn wait_text_attr(&self, css: &str, attr: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if e.attr(attr).await.ok().flatten().as_deref() == Some(want) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{css} never had {attr}={want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(
            std::env::var("EDEN_SCREENSHOTS").unwrap_or_else(|_| "/tmp/eden-ui-screenshots".into()),
        );
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Marks the page, to show later that it was not reloaded.
    async fn mark(&self) {
        self.client
            .execute("window.edenMark = 42;", vec![])
            .await
            .unwrap();
    }

    async fn still_marked(&self) -> bool {
        self.client
            .execute("return window.edenMark === 42;", vec![])
            .await
            .unwrap()
            .as_bool()
            .unwrap_or(false)
    }
}

/// Signs the browser in with a one-time link made by `admin-ops`.
async fn sign_in(b: &Browser, c: &Cluster, url: &str) {
    let o = c.eden_as("admin-ops", &["ui", "login", "--url", url]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    b.client.goto(o.stdout.trim()).await.unwrap();
    b.wait_text(
        "signed in",
        ".viewer",
        "signed in as admin:ops",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: scripts/test-browser.sh"]
async fn an_admin_sees_the_fleet_live_starts_a_task_and_tails_events() {
    let ui = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_tls(1, &["--ui-addr", &ui]).await;
    let url = format!("https://{ui}");
    let mut agents = vec![
        c.agent("web1", &[]),
        c.agent("web2", &[]),
        c.agent("web3", &[]),
    ];
    c.wait_nodes(&["web1", "web2", "web3"], true).await;
    for n in ["web1", "web2", "web3"] {
        let o = c.eden(&["node", "label", n, "role=web"]).await;
        assert_eq!(o.code, Some(0), "{o:?}");
    }
    let b = browser().await;

    // Sign in: the cluster page, live.
    sign_in(&b, &c, &url).await;
    b.wait_text("the cluster page", "h1", "Cluster", Duration::from_secs(5))
        .await;
    b.wait_text("the leader", "#leader", "m0", Duration::from_secs(5))
        .await;
    b.wait_live("[data-sections]").await;
    b.screenshot("cluster").await;

    // The nodes page lists the three agents, up.
    b.client.goto(&format!("{url}/nodes")).await.unwrap();
    for n in ["web1", "web2", "web3"] {
        b.wait_text(
            n,
            &format!("#node-{n} td:nth-child(2)"),
            "up",
            Duration::from_secs(10),
        )
        .await;
    }
    // Filtered by a label selector.
    b.client
        .goto(&format!("{url}/nodes?selector=role%3Dweb%2C%21gone"))
        .await
        .unwrap();
    b.wait_text("filtered", "#node-web2", "web2", Duration::from_secs(5))
        .await;
    b.screenshot("nodes").await;
    // On a phone's screen.
    b.client.set_window_size(390, 844).await.unwrap();
    b.screenshot("nodes-phone").await;
    b.client.set_window_size(1280, 900).await.unwrap();

    // A task started from the page shows each node's output.
    b.client.goto(&format!("{url}/tasks")).await.unwrap();
    let form = b.client.form(Locator::Css("form.start")).await.unwrap();
    form.set_by_name("selector", "role=web").await.unwrap();
    form.set_by_name("command", "echo hello-from-the-page")
        .await
        .unwrap();
    form.submit().await.unwrap();
    b.wait_text("the task page", "h1", "Task ", Duration::from_secs(10))
        .await;
    for n in ["web1", "web2", "web3"] {
        b.wait_text(
            &format!("{n}'s output"),
            &format!("#run-{n} .stdout"),
            "hello-from-the-page",
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(b.text(&format!("#run-{n} .exit")).await, "0");
    }
    b.screenshot("task").await;
    // A long task, canceled from its page: every node's run ends canceled.
    b.client.goto(&format!("{url}/tasks")).await.unwrap();
    let form = b.client.form(Locator::Css("form.start")).await.unwrap();
    form.set_by_name("selector", "role=web").await.unwrap();
    form.set_by_name("command", "sleep 120").await.unwrap();
    form.submit().await.unwrap();
    b.wait_text(
        "the long task",
        "#run-web1 td:nth-child(2)",
        "running",
        Duration::from_secs(20),
    )
    .await;
    b.client
        .find(Locator::Id("cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_text(
        "canceled",
        "#task-state",
        "canceled",
        Duration::from_secs(20),
    )
    .await;
    for n in ["web1", "web2", "web3"] {
        b.wait_text(
            &format!("{n} canceled"),
            &format!("#run-{n} td:nth-child(2)"),
            "canceled",
            Duration::from_secs(20),
        )
        .await;
    }
    b.screenshot("task-canceled").await;
    b.client.goto(&format!("{url}/tasks")).await.unwrap();
    b.wait_text("the list", "#tasks-list", "3 of 3", Duration::from_secs(10))
        .await;
    b.screenshot("tasks").await;

    // A new event appears in the live tail within a second.
    b.client
        .goto(&format!("{url}/events?allow=ui/**"))
        .await
        .unwrap();
    b.wait_live("#events").await;
    let o = c
        .eden(&["event", "emit", "ui/hello", "--data", "{\"n\":1}"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let emitted = Instant::now();
    b.wait_text("the event", "#events", "ui/hello", Duration::from_secs(1))
        .await;
    eprintln!(
        "the event showed {:?} after `eden event emit` returned",
        emitted.elapsed()
    );
    // A denied tag does not show; paused, events are held until resumed.
    b.client
        .find(Locator::Id("pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let o = c.eden(&["event", "emit", "ui/held"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    b.wait_text("held", "#paused-count", "1 held", Duration::from_secs(5))
        .await;
    assert!(!b.text("#events").await.contains("ui/held"));
    b.client
        .find(Locator::Id("pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_text("resumed", "#events", "ui/held", Duration::from_secs(5))
        .await;
    b.screenshot("events").await;

    // The reactors page.
    b.client.goto(&format!("{url}/reactors")).await.unwrap();
    b.wait_text(
        "the reactors page",
        "h1",
        "Reactors",
        Duration::from_secs(5),
    )
    .await;
    b.screenshot("reactors").await;

    // A killed agent shows down within its TTL, without a reload.
    b.client.goto(&format!("{url}/nodes")).await.unwrap();
    b.wait_live("#nodes").await;
    b.mark().await;
    agents[2].kill();
    b.wait_text(
        "web3 down",
        "#node-web3 td:nth-child(2)",
        "down",
        Duration::from_secs(30),
    )
    .await;
    assert!(b.still_marked().await, "the page was reloaded");
    assert!(b.text("#node-web1 td:nth-child(2)").await.contains("up"));

    // A node's own page.
    b.client.goto(&format!("{url}/nodes/web1")).await.unwrap();
    b.wait_text(
        "web1's tasks",
        "#node-tasks",
        "echo hello-from-the-page",
        Duration::from_secs(5),
    )
    .await;
    b.screenshot("node").await;
    drop(agents);
}

/// A TLS-originating proxy: plain connections on a local port, each carried to `upstream` over
/// TLS presenting `tls`'s client certificate, so the browser is seen as that identity.
async fn client_cert_proxy(tls: eden_proto::client::Tls, upstream: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (connector, upstream) = (connector.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(tcp) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let Ok(mut out) = connector.connect(name, tcp).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: scripts/test-browser.sh"]
async fn a_node_identity_sees_its_own_page_and_not_another_nodes_variables_or_files() {
    let ui = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_tls(1, &["--ui-addr", &ui]).await;
    let _web1 = c.agent("web1", &[]);
    let _web2 = c.agent("web2", &[]);
    c.wait_nodes(&["web1", "web2"], true).await;
    for (node, value) in [("web1", "visible-to-web1"), ("web2", "secret-of-web2")] {
        let o = c.eden(&["var", "set", node, "color", value]).await;
        assert_eq!(o.code, Some(0), "{o:?}");
    }
    // A file readable by web2 only.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key.pem");
    std::fs::write(&f, "web2-private-bytes").unwrap();
    let o = c
        .eden(&[
            "file",
            "put",
            f.to_str().unwrap(),
            "web2/key.pem",
            "--readers",
            "node:web2",
        ])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let proxy = client_cert_proxy(c.tls_of("node-web1").unwrap(), ui.clone()).await;
    let url = format!("http://127.0.0.1:{proxy}");
    let b = browser().await;

    // Its own page: its variable.
    b.client.goto(&format!("{url}/nodes/web1")).await.unwrap();
    b.wait_text(
        "signed in",
        ".viewer",
        "signed in as node:web1",
        Duration::from_secs(10),
    )
    .await;
    b.wait_text(
        "its variable",
        "#node-vars",
        "visible-to-web1",
        Duration::from_secs(5),
    )
    .await;
    b.screenshot("node-as-node").await;

    // Another node's page: refused, and nothing of web2's in any page it can reach.
    for page in [
        "/nodes/web2",
        "/nodes",
        "/",
        "/tasks",
        "/events",
        "/reactors",
    ] {
        b.client.goto(&format!("{url}{page}")).await.unwrap();
        let source = b.client.source().await.unwrap();
        assert!(
            !source.contains("secret-of-web2") && !source.contains("web2-private-bytes"),
            "{page} shows web2's secrets to web1:\n{source}"
        );
        if page == "/nodes/web2" {
            assert!(source.contains("permission denied"), "{source}");
        }
    }
    // Its own page live: a variable set for web1 appears; one set for web2 does not.
    b.client.goto(&format!("{url}/nodes/web1")).await.unwrap();
    b.wait_live("[data-sections]").await;
    let o = c
        .eden(&["var", "set", "web2", "later", "secret-later"])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = c.eden(&["var", "set", "web1", "later", "web1-later"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    b.wait_text(
        "its new variable",
        "#node-vars",
        "web1-later",
        Duration::from_secs(5),
    )
    .await;
    let source = b.client.source().await.unwrap();
    assert!(!source.contains("secret-later"), "{source}");
}

/// CPU seconds (user and system) process `pid` used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: state is field 3; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The web view with 1,000 nodes and a stream of 100 events a second (issue 19's bench; not a
/// test: it prints figures). `bench/ui.sh` runs it against a release build. N nodes
/// (`EDEN_UI_BENCH_NODES`, default 1,000) are simulated agents of `eden bench agents`, alive and
/// idle; events are emitted by this process at `EDEN_UI_BENCH_RATE` a second (default 100) for
/// `EDEN_UI_BENCH_SECS` (default 30) while the browser tails them. Each row's update latency is
/// taken in the page (a MutationObserver: when the row was put in, minus the event's time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a bench, not a test: bench/ui.sh"]
async fn bench_a_thousand_nodes_and_a_hundred_events_a_second() {
    use eden_proto::model::events::{self, Event};
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, rate, secs) = (
        env("EDEN_UI_BENCH_NODES", 1000),
        env("EDEN_UI_BENCH_RATE", 100),
        env("EDEN_UI_BENCH_SECS", 30),
    );
    let ui = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_tls(1, &["--ui-addr", &ui]).await;
    let url = format!("https://{ui}");
    let pid = c.pid(0).expect("the member runs");
    // The simulated agents: registered, kept alive, idle for the whole bench.
    let mut sim = tokio::process::Command::new(eden_tests::eden_bin())
        .args(c.tls_flags("admin"))
        .arg("--endpoints")
        .arg(c.endpoints().join(","))
        .args([
            "bench",
            "agents",
            "--count",
            &n.to_string(),
            "--idle",
            "3600s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("eden bench agents");
    let admin = c.client_as("admin");
    let started = Instant::now();
    wait_for("the simulated nodes up", Duration::from_secs(300), || {
        let admin = admin.clone();
        async move {
            eden_proto::model::nodes::list(&admin)
                .await
                .map(|l| l.iter().filter(|x| x.up).count() as u64 >= n)
                .unwrap_or(false)
        }
    })
    .await;
    eprintln!(
        "{n} nodes up after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let b = browser().await;
    sign_in(&b, &c, &url).await;

    // The nodes page with every node: rendered, loaded and its stream open.
    let t = Instant::now();
    b.client.goto(&format!("{url}/nodes")).await.unwrap();
    b.wait_live("#nodes").await;
    let load = t.elapsed();
    let rows = b
        .client
        .execute(
            "return document.querySelectorAll('#nodes tr').length;",
            vec![],
        )
        .await
        .unwrap();
    eprintln!(
        "nodes page: {rows} rows, loaded and live in {} ms",
        load.as_millis()
    );

    // The events tail at `rate` events a second.
    b.client
        .goto(&format!("{url}/events?allow=bench/**"))
        .await
        .unwrap();
    b.wait_live("#events").await;
    b.client
        .execute(
            "window.edenLat = []; new MutationObserver((ms) => { const now = Date.now(); \
             for (const m of ms) for (const r of m.addedNodes) \
             if (r.dataset && r.dataset.time) window.edenLat.push(now - Number(r.dataset.time)); })\
             .observe(document.getElementById('events'), { childList: true });",
            vec![],
        )
        .await
        .unwrap();
    // The server at rest first: the idle agents' keep-alives, the page open.
    let (rest0, r0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!(
        "server at rest: {:.0}% of one core over {:.1} s",
        (cpu_seconds(pid) - rest0) / r0.elapsed().as_secs_f64() * 100.0,
        r0.elapsed().as_secs_f64()
    );
    let total = rate * secs;
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for i in 0..total {
        tick.tick().await;
        let ev = Event::new(
            "bench/ui".into(),
            "bench",
            Default::default(),
            serde_json::json!({ "i": i }),
        );
        events::emit(&admin, &[ev]).await.expect("emit");
    }
    let emitted_in = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lat: Vec<f64> = loop {
        let v = b
            .client
            .execute("return window.edenLat;", vec![])
            .await
            .unwrap();
        let lat: Vec<f64> = v
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        if lat.len() as u64 >= total || Instant::now() > deadline {
            break lat;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (cpu1, t1) = (cpu_seconds(pid), t0.elapsed().as_secs_f64());
    let mut sorted = lat.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "events: {total} emitted in {emitted_in:.1} s, {} shown; update latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    eprintln!(
        "server: {:.0}% of one core over those {t1:.1} s (with {n} idle agents and the page open)",
        (cpu1 - cpu0) / t1 * 100.0
    );
    b.screenshot("bench-events").await;
    let _ = sim.kill().await;
    assert_eq!(lat.len() as u64, total, "every event shown");
}
