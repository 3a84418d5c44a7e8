//! Mutual TLS on the client and peer ports (the first part of issue 13): members given
//! certificates from the cluster's CA (`eden pki init`) serve only clients and members that
//! present a certificate from the same CA; the eden CLI and etcdctl get through with theirs, and
//! the members replicate to each other over TLS.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eden_tests::{eden_bin, eden_local as eden, free_port, wait_for};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_members_speak_mutual_tls_with_the_clusters_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let p = |f: &str| pki.join(f).display().to_string();
    let (code, out, err) = eden(&[
        "pki",
        "init",
        &p(""),
        "--member",
        "m1=127.0.0.1",
        "--member",
        "m2=127.0.0.1",
        "--member",
        "m3=127.0.0.1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("admin:admin") && out.contains("CA pin: sha256:"),
        "{out}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pki.join("admin.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A second init does not replace the CA.
    assert_eq!(eden(&["pki", "init", &p("")]).0, 2);
    // Another CA, for a client the cluster must not trust.
    let other = dir.path().join("other");
    assert_eq!(eden(&["pki", "init", &other.display().to_string()]).0, 0);

    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{}=127.0.0.1:{peer}", i + 1))
        .collect();
    let mut servers = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let name = format!("m{}", i + 1);
        servers.push(Killed(
            Command::new(eden_bin())
                .args([
                    "server",
                    "--name",
                    &name,
                    "--data-dir",
                    &dir.path().join(&name).display().to_string(),
                    "--client-addr",
                    &format!("127.0.0.1:{client}"),
                    "--peer-addr",
                    &format!("127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &cluster.join(","),
                    "--cert-file",
                    &p(&format!("member-{name}.crt")),
                    "--key-file",
                    &p(&format!("member-{name}.key")),
                    "--trusted-ca-file",
                    &p("ca.crt"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    let ep = format!("127.0.0.1:{}", ports[0].0);
    let ep3 = format!("127.0.0.1:{}", ports[2].0);
    // The admin's certificate flags: the eden CLI and etcdctl take the same ones.
    let certs = [
        "--cacert",
        &p("ca.crt"),
        "--cert",
        &p("admin.crt"),
        "--key",
        &p("admin.key"),
    ]
    .map(String::from);
    let admin: Vec<String> = ["--endpoints".to_string(), ep.clone()]
        .into_iter()
        .chain(certs.iter().cloned())
        .collect();
    let with = |extra: &[&str]| {
        let mut a: Vec<String> = admin.to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    wait_for(
        "the TLS member to answer",
        Duration::from_secs(30),
        || async {
            let a = with(&["put", "greeting", "hello"]);
            eden(&a.iter().map(String::as_str).collect::<Vec<_>>()).0 == 0
        },
    )
    .await;
    // Written through m1, read (linearizably) through m3: replicated over the peer port's TLS.
    let a = with(&["--endpoints", &ep3, "get", "greeting"]);
    let (code, out, err) = eden(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!((code, out.as_str()), (0, "greeting\nhello\n"), "{err}");

    // The peer port refuses a plaintext caller.
    let peer_ep = format!("http://127.0.0.1:{}", ports[0].1);
    let plain = tonic::transport::Endpoint::from_shared(peer_ep)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut pc = eden_proto::peer::peer_client::PeerClient::new(ch);
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            pc.read_index(eden_proto::peer::Payload::default()),
        )
        .await;
        assert!(
            !matches!(r, Ok(Ok(_))),
            "a plaintext peer call was answered"
        );
    }

    // Plaintext, no client certificate, or one from another CA: refused (exit 3, unreachable).
    let o = eden(&["--endpoints", &ep, "get", "greeting"]);
    assert_eq!(o.0, 3, "plaintext got through: {o:?}");
    let o = eden(&[
        "--endpoints",
        &ep,
        "--cacert",
        &p("ca.crt"),
        "--cert",
        &other.join("admin.crt").display().to_string(),
        "--key",
        &other.join("admin.key").display().to_string(),
        "get",
        "greeting",
    ]);
    assert_eq!(o.0, 3, "a certificate from another CA got through: {o:?}");
    // Half the flags is a usage error.
    let o = eden(&[
        "--endpoints",
        &ep,
        "--cacert",
        &p("ca.crt"),
        "get",
        "greeting",
    ]);
    assert_eq!(o.0, 2, "{o:?}");
    assert!(o.2.contains("--cacert, --cert and --key"), "{o:?}");

    // etcdctl with etcd's flags.
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &ep, "--dial-timeout", "3s"])
            .args(args)
            .output()
            .unwrap()
    };
    let mut get: Vec<&str> = certs.iter().map(String::as_str).collect();
    get.extend(["get", "greeting"]);
    let o = etcdctl(&get);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "greeting\nhello\n");
    let o = etcdctl(&["--cacert", &p("ca.crt"), "get", "greeting"]);
    assert!(
        !o.status.success(),
        "etcdctl without a certificate got through: {o:?}"
    );
}

/// `eden` with HOME (and so the CLI's config file) in `home`.
fn eden_at_home(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(eden_bin())
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("EDEN_CONFIG")
        .env_remove("EDEN_ENDPOINTS")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_is_secure_by_default_and_its_user_needs_no_flags() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&home).unwrap();
    let (client, peer) = (free_port(), free_port());
    let ep = format!("127.0.0.1:{client}");
    let log = dir.path().join("server.log");
    let server_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "server",
            "--data-dir",
            &data.display().to_string(),
            "--client-addr",
            &ep,
            "--peer-addr",
            &format!("127.0.0.1:{peer}"),
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let spawn = |extra: &[&str]| {
        Command::new(eden_bin())
            .args(server_args(extra))
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("EDEN_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap()
    };
    let mut server = Killed(spawn(&[]));
    // The same user, no flags: the config file the first member wrote says where and with what.
    wait_for(
        "the secure server to answer its user",
        Duration::from_secs(30),
        || async { eden_at_home(&home, &["put", "greeting", "hello"]).0 == 0 },
    )
    .await;
    let (code, out, err) = eden_at_home(&home, &["get", "greeting"]);
    assert_eq!((code, out.as_str()), (0, "greeting\nhello\n"), "{err}");
    let pki = data.join("pki");
    for f in [
        "ca.crt",
        "ca.key",
        "member.crt",
        "member.key",
        "admin.crt",
        "admin.key",
    ] {
        assert!(pki.join(f).exists(), "{f} is missing");
    }
    for f in ["ca.key", "member.key", "admin.key"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(pki.join(f)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let config = std::fs::read_to_string(home.join(".config/eden/config.toml")).unwrap();
    assert!(config.contains("admin.crt"), "{config}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("admin.crt"),
        "the log does not say where: {logged}"
    );

    // Plaintext is refused; another user (no config file) gets nowhere without certificates.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (code, _, _) = eden_at_home(&elsewhere, &["--endpoints", &ep, "get", "greeting"]);
    assert_eq!(code, 3);
    // etcdctl with the admin's certificate.
    let p = |f: &str| pki.join(f).display().to_string();
    let o = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "--dial-timeout", "3s"])
        .args(["--cacert", &p("ca.crt"), "--cert", &p("admin.crt")])
        .args(["--key", &p("admin.key"), "get", "greeting"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");

    // An insecure member cannot join it.
    let (jc, jp) = (free_port(), free_port());
    let joiner = Command::new(eden_bin())
        .args(["server", "--insecure", "--name", "j", "--data-dir"])
        .arg(dir.path().join("j"))
        .args(["--client-addr", &format!("127.0.0.1:{jc}")])
        .args(["--peer-addr", &format!("127.0.0.1:{jp}"), "--join", &ep])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&joiner.stderr);
    assert!(
        !joiner.status.success(),
        "an insecure member joined: {said}"
    );
    assert!(said.contains("--insecure"), "{said}");

    // Its data is never served insecurely.
    drop(server);
    let o = Command::new(eden_bin())
        .args(server_args(&["--insecure"]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("belongs to a secure cluster"),
        "{o:?}"
    );
    // Started again as it was, it keeps its CA and serves what it had.
    server = Killed(spawn(&[]));
    wait_for("the restarted server", Duration::from_secs(30), || async {
        eden_at_home(&home, &["get", "greeting"]).1 == "greeting\nhello\n"
    })
    .await;
    drop(server);

    // A new cluster of several members without certificates, or a secure joiner without any:
    // refused at once, with what to do.
    let o = Command::new(eden_bin())
        .args(["server", "--name", "a", "--data-dir"])
        .arg(dir.path().join("multi"))
        .args(["--peer-addr", "127.0.0.1:1", "--initial-cluster"])
        .args(["a=127.0.0.1:1,b=127.0.0.1:2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("eden pki init"),
        "{o:?}"
    );
    let o = Command::new(eden_bin())
        .args(["server", "--name", "k", "--data-dir"])
        .arg(dir.path().join("k"))
        .args(["--join", &ep])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("eden pki issue"),
        "{o:?}"
    );
}

/// curl ARGS; returns (success, stdout).
fn curl(args: &[&str]) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_ports_speak_tls_and_metrics_want_a_certificate() {
    let (m, w) = (free_port(), free_port());
    let (maddr, waddr) = (format!("127.0.0.1:{m}"), format!("127.0.0.1:{w}"));
    let c =
        eden_tests::Cluster::start_tls(1, &["--metrics-addr", &maddr, "--webhook-addr", &waddr])
            .await;
    let pki = c.pki.clone().unwrap();
    let p = |f: &str| pki.join(f).display().to_string();
    let health = format!("https://{maddr}/health");
    let (ok, out) = curl(&[
        "--cacert",
        &p("ca.crt"),
        "--cert",
        &p("admin.crt"),
        "--key",
        &p("admin.key"),
        &health,
    ]);
    assert!(ok && out.contains("\"health\":\"true\""), "{out}");
    // A certificate revoked after its issue is refused there too (403), as on every port.
    c.tls_of("admin-ops");
    let ops = || {
        curl(&[
            "--cacert",
            &p("ca.crt"),
            "--cert",
            &p("admin-ops.crt"),
            "--key",
            &p("admin-ops.key"),
            "-w",
            " %{http_code}",
            &health,
        ])
    };
    assert!(ops().1.ends_with(" 200"), "{:?}", ops());
    let o = c.eden(&["cert", "revoke", "admin:ops"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    wait_for(
        "the revoked certificate to be refused",
        Duration::from_secs(10),
        || async { ops().1.ends_with(" 403") },
    )
    .await;
    // Without a client certificate, or in plaintext: nothing.
    assert!(!curl(&["--cacert", &p("ca.crt"), &health]).0);
    assert!(!curl(&[&format!("http://{maddr}/health")]).0);
    // The webhook port: TLS with the member's certificate, and the hook's bearer token.
    let o = c.eden(&["hook", "create", "h"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let token = o.stdout.trim().to_string();
    let hook = format!("https://{waddr}/hooks/h");
    let auth = format!("Authorization: Bearer {token}");
    let (ok, out) = curl(&[
        "--cacert",
        &p("ca.crt"),
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        "{\"x\":1}",
        "-w",
        " %{http_code}",
        &hook,
    ]);
    assert!(ok && out.ends_with(" 200"), "{out}");
    assert!(
        !curl(&[
            "-X",
            "POST",
            "-H",
            &auth,
            "-d",
            "{}",
            &format!("http://{waddr}/hooks/h")
        ])
        .0
    );
}

/// The webhook port can present the operator's own certificate (senders such as Alertmanager
/// trust a CA of their choosing), not the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_port_presents_the_operators_certificate() {
    let other = tempfile::tempdir().unwrap();
    let o = other.path().join("pki");
    let od = o.display().to_string();
    eden_tests::run_eden_ok(&["pki".into(), "init".into(), od.clone()]);
    eden_tests::run_eden_ok(&[
        "pki".into(),
        "issue".into(),
        od.clone(),
        "--member".into(),
        "hooks=127.0.0.1".into(),
    ]);
    let f = |n: &str| o.join(n).display().to_string();
    let waddr = format!("127.0.0.1:{}", free_port());
    let (cert, key) = (f("member-hooks.crt"), f("member-hooks.key"));
    let c = eden_tests::Cluster::start_tls(
        1,
        &[
            "--webhook-addr",
            &waddr,
            "--webhook-cert-file",
            &cert,
            "--webhook-key-file",
            &key,
        ],
    )
    .await;
    let out = c.eden(&["hook", "create", "h"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let auth = format!("Authorization: Bearer {}", out.stdout.trim());
    let hook = format!("https://{waddr}/hooks/h");
    let post = |ca: &str| {
        curl(&[
            "--cacert",
            ca,
            "-X",
            "POST",
            "-H",
            &auth,
            "-d",
            "{}",
            "-w",
            " %{http_code}",
            &hook,
        ])
    };
    let (ok, said) = post(&f("ca.crt"));
    assert!(ok && said.ends_with(" 200"), "{said}");
    // The cluster's CA does not vouch for it.
    let cluster_ca = c.pki.clone().unwrap().join("ca.crt");
    assert!(!post(&cluster_ca.display().to_string()).0);
}
