//! The web view (issue 19, first part): `eden server --ui-addr`, signing in with a client
//! certificate or a one-time link from `eden ui login`, and the cluster page, read through the
//! authorizer as the viewer. Over real TLS with curl (browser tests are to come).

use std::time::Duration;

use eden_tests::{free_port, wait_for, Cluster};

/// `curl` against the web view: (HTTP status, headers and body).
async fn curl(args: &[&str]) -> (u16, String) {
    let o = tokio::process::Command::new("curl")
        .args(["-s", "-i", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_link_works_once_and_the_cluster_page_shows_the_members() {
    let ui = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_tls(1, &["--ui-addr", &ui]).await;
    let url = format!("https://{ui}");
    let admin = c.tls_flags("admin");
    let ca = admin[1].clone();
    wait_for("the web view", Duration::from_secs(20), || async {
        curl(&["--cacert", &ca, &format!("{url}/")]).await.0 != 0
    })
    .await;

    // Nobody signed in: the sign-in page, 401.
    let (code, body) = curl(&["--cacert", &ca, &format!("{url}/")]).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("eden ui login"), "{body}");

    // A client certificate from the cluster's CA signs in.
    let (code, body) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &admin[3],
        "--key",
        &admin[5],
        &format!("{url}/"),
    ])
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("signed in as admin:admin") && body.contains(">m0<"),
        "{body}"
    );

    // A one-time link, made by an admin: a session cookie, then refused a second time.
    let o = c
        .eden_as("admin-ops", &["ui", "login", "--url", &url])
        .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let link = o.stdout.trim().to_string();
    assert!(link.starts_with(&format!("{url}/login?token=")), "{link}");
    let (code, head) = curl(&["--cacert", &ca, &link]).await;
    assert_eq!(code, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let (code, body) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &format!("Cookie: {session}"),
        &format!("{url}/"),
    ])
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("signed in as admin:ops"), "{body}");
    let (code, body) = curl(&["--cacert", &ca, &link]).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("used already"), "{body}");

    // A node may not make links.
    let o = c.eden_as("node-web1", &["ui", "login"]).await;
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains("admins only"), "{o:?}");

    // Nor may a user whose role grants all of /eden/: a link names whom its session acts as.
    for args in [
        vec!["role", "add", "all"],
        vec![
            "role",
            "grant-permission",
            "all",
            "readwrite",
            "/eden/",
            "--prefix",
        ],
        vec!["user", "add", "bob"],
        vec!["user", "grant-role", "bob", "all"],
    ] {
        let o = c.eden(&args).await;
        assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
    }
    let o = c.eden_as("user-bob", &["ui", "login"]).await;
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains("admins only"), "{o:?}");

    // Revoking the certificate the link stood for ends its session.
    let o = c.eden(&["cert", "revoke", "admin:ops"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let (code, body) = curl(&[
        "--cacert",
        &ca,
        "-H",
        &format!("Cookie: {session}"),
        &format!("{url}/"),
    ])
    .await;
    assert_eq!(code, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_page_shows_agents_up_and_down_to_whom_may_see_every_node() {
    let ui = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_tls(1, &["--ui-addr", &ui]).await;
    let mut web1 = c.agent("web1", &[]);
    let _web2 = c.agent("web2", &[]);
    c.wait_nodes(&["web1", "web2"], true).await;
    let url = format!("https://{ui}/nodes");
    let admin = c.tls_flags("admin");
    let get = |who: Vec<String>| {
        let url = url.clone();
        async move {
            curl(&[
                "--cacert", &who[1], "--cert", &who[3], "--key", &who[5], &url,
            ])
            .await
        }
    };
    let row = |body: &str, node: &str| {
        body.lines()
            .find(|l| l.contains(&format!("id=\"node-{node}\"")))
            .unwrap_or_default()
            .to_string()
    };
    let (code, body) = get(admin.clone()).await;
    assert_eq!(code, 200, "{body}");
    assert!(row(&body, "web1").contains(">up<"), "{body}");
    assert!(row(&body, "web2").contains(">up<"), "{body}");
    // An agent killed: down once its lease expires.
    web1.kill();
    c.wait_nodes(&["web1"], false).await;
    let (_, body) = get(admin).await;
    assert!(row(&body, "web1").contains(">down<"), "{body}");
    assert!(row(&body, "web2").contains(">up<"), "{body}");
    // A node may not read every node's keys: the authorizer refuses the page.
    let (code, body) = get(c.tls_flags("node-web2")).await;
    assert_eq!(code, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_page_is_live_a_killed_agent_shows_down_without_a_reload() {
    let ui = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_tls(1, &["--ui-addr", &ui]).await;
    let mut web1 = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    let admin = c.tls_flags("admin");
    // The page names its stream and the revision to follow from.
    let (code, body) = curl(&[
        "--cacert",
        &admin[1],
        "--cert",
        &admin[3],
        "--key",
        &admin[5],
        &format!("https://{ui}/nodes"),
    ])
    .await;
    assert_eq!(code, 200, "{body}");
    let stream = body
        .split("data-stream=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a live table")
        // As a browser reads the attribute.
        .replace("&#x2f;", "/")
        .replace("&amp;", "&");
    // What a browser's EventSource reads, with curl.
    let mut events = tokio::process::Command::new("curl")
        .args([
            "-s", "-N", "--cacert", &admin[1], "--cert", &admin[3], "--key", &admin[5],
        ])
        .arg(format!("https://{ui}{stream}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(events.stdout.take().unwrap()));
    web1.kill();
    let down = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("data:") && line.contains("node-web1") && line.contains(">down<") {
                return line;
            }
        }
        panic!("the stream ended");
    })
    .await
    .expect("web1 shown down within 20 s");
    assert!(down.contains("node-web1"), "{down}");
    // A node's certificate gets no stream.
    let node = c.tls_flags("node-web2");
    let (code, _) = curl(&[
        "--cacert",
        &node[1],
        "--cert",
        &node[3],
        "--key",
        &node[5],
        "--max-time",
        "5",
        &format!("https://{ui}/nodes/stream"),
    ])
    .await;
    assert_eq!(code, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_started_from_a_form_of_this_site_only_and_as_the_viewer() {
    let ui = format!("127.0.0.1:{}", free_port());
    let c = Cluster::start_tls(1, &["--ui-addr", &ui]).await;
    let _web1 = c.agent("web1", &[]);
    c.wait_nodes(&["web1"], true).await;
    let o = c.eden(&["node", "label", "web1", "role=web"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let post = |who: Vec<String>, origin: String| {
        let ui = ui.clone();
        async move {
            curl(&[
                "--cacert",
                &who[1],
                "--cert",
                &who[3],
                "--key",
                &who[5],
                "-H",
                &format!("Origin: {origin}"),
                "--data",
                "selector=role%3Dweb&command=echo+from-a-form&timeout=",
                &format!("https://{ui}/tasks"),
            ])
            .await
        }
    };
    // A browser that presents the admin's certificate, posting another site's form: refused,
    // and no task made.
    let (code, body) = post(c.tls_flags("admin"), "https://evil.example".into()).await;
    assert_eq!(code, 403, "{body}");
    let o = c.eden(&["task", "ls"]).await;
    assert!(!o.stdout.contains("from-a-form"), "{o:?}");
    // A node may not start tasks, from the page either: the authorizer refuses it.
    let (code, body) = post(c.tls_flags("node-web1"), format!("https://{ui}")).await;
    assert_eq!(code, 403, "{body}");
    // The admin, from this site's own page: the task runs; the answer is its page.
    let (code, head) = post(c.tls_flags("admin"), format!("https://{ui}")).await;
    assert_eq!(code, 303, "{head}");
    let task = head
        .lines()
        .find_map(|l| l.strip_prefix("location: /tasks/"))
        .expect("the task's page")
        .trim()
        .to_string();
    let o = c.eden(&["task", "wait", &task]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("from-a-form"), "{o:?}");
}
