//! etcd's HTTP/JSON gateway on eden's client port (issue 16): curl and a third-party Python
//! client (etcd3gw from PyPI, installed by scripts/setup.sh) speak plain HTTP/1.1 JSON to the
//! same port gRPC clients use; answers have the shape etcd 3.4's gateway gives for the same
//! requests; with TLS on, the gateway wants a client certificate and the authorizer decides, as
//! on gRPC.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eden_tests::{wait_for, Cluster};
use serde_json::Value;

/// How to reach a client port with curl: its base URL and curl's TLS flags.
struct Endpoint {
    base: String,
    tls: Vec<String>,
}

impl Endpoint {
    fn of(c: &Cluster, who: &str) -> Endpoint {
        let ep = &c.endpoints()[0];
        let tls = c.tls_flags(who);
        let scheme = if tls.is_empty() { "http" } else { "https" };
        Endpoint {
            base: format!("{scheme}://{}", ep.trim_start_matches("http://")),
            tls,
        }
    }

    /// `curl -X METHOD base+path -d body`: the HTTP status and the body.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-S",
            "--http1.1",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .args(&self.tls)
        .arg(format!("{}{path}", self.base));
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = cmd.output().expect("curl is installed (scripts/setup.sh)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A POST that must answer 200: its JSON.
    fn post(&self, path: &str, body: &str) -> Value {
        let (code, text) = self.call("POST", path, Some(body));
        assert_eq!(code, 200, "POST {path} {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// `curl -N` on a streaming route, its lines read as they come.
    fn stream(&self, path: &str, body: &str) -> Lines {
        let mut child = Command::new("curl")
            .args(["-s", "-N", "--http1.1", "-X", "POST"])
            .args(&self.tls)
            .arg(format!("{}{path}", self.base))
            .args(["-d", body])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, rx }
    }
}

struct Lines {
    child: Child,
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    /// The next line that satisfies `pred`, within `timeout`.
    fn until(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .rx
                .recv_timeout(left)
                .expect("a matching line before the timeout");
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if pred(&v) {
                return v;
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key's value, read over gRPC as the admin.
async fn value(c: &Cluster, key: &str) -> Option<Vec<u8>> {
    let r = c
        .client()
        .range(eden_proto::etcdserverpb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("a gRPC read");
    r.kvs.into_iter().next().map(|kv| kv.value)
}

fn b64(s: &str) -> String {
    use std::fmt::Write;
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                let _ = write!(out, "{}", T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_puts_reads_deletes_txns_leases_and_watches_through_the_gateway() {
    let c = Cluster::start(1, &[]).await;
    let e = Endpoint::of(&c, "admin");
    let put = e.post(
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("gw/a"), b64("1")),
    );
    let rev: i64 = put["header"]["revision"].as_str().unwrap().parse().unwrap();
    assert!(rev > 0, "{put}");
    let got = e.post("/v3/kv/range", &format!(r#"{{"key":"{}"}}"#, b64("gw/a")));
    assert_eq!(got["kvs"][0]["value"], b64("1"), "{got}");
    assert_eq!(got["count"], "1");
    // The gRPC side sees the same key.
    assert_eq!(value(&c, "gw/a").await, Some(b"1".to_vec()));
    // Compare-and-set: succeeds once, then fails and reads.
    let txn = format!(
        r#"{{"compare":[{{"target":"VALUE","key":"{k}","value":"{v1}","result":"EQUAL"}}],
            "success":[{{"request_put":{{"key":"{k}","value":"{v2}"}}}}],
            "failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#,
        k = b64("gw/a"),
        v1 = b64("1"),
        v2 = b64("2")
    );
    let t = e.post("/v3/kv/txn", &txn);
    assert_eq!(t["succeeded"], true, "{t}");
    let t = e.post("/v3/kv/txn", &txn);
    assert!(t.get("succeeded").is_none(), "{t}");
    assert_eq!(
        t["responses"][0]["response_range"]["kvs"][0]["value"],
        b64("2")
    );
    // A lease, a key on it, its time to live.
    let lease = e.post("/v3/lease/grant", r#"{"TTL":60}"#);
    let id = lease["ID"].as_str().unwrap().to_string();
    assert_eq!(lease["TTL"], "60");
    e.post(
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{}","value":"eA==","lease":"{id}"}}"#,
            b64("gw/l")
        ),
    );
    let ttl = e.post(
        "/v3/lease/timetolive",
        &format!(r#"{{"ID":"{id}","keys":true}}"#),
    );
    assert_eq!(ttl["keys"][0], b64("gw/l"), "{ttl}");
    let ka = e.post("/v3/lease/keepalive", &format!(r#"{{"ID":"{id}"}}"#));
    assert_eq!(ka["result"]["TTL"], "60", "{ka}");
    // A streamed watch sees a put made after it started.
    let w = e.stream(
        "/v3/watch",
        &format!(r#"{{"create_request":{{"key":"{}"}}}}"#, b64("gw/w")),
    );
    w.until(Duration::from_secs(10), |v| v["result"]["created"] == true);
    e.post(
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("gw/w"), b64("seen")),
    );
    let ev = w.until(Duration::from_secs(10), |v| {
        v["result"]["events"].as_array().is_some()
    });
    assert_eq!(
        ev["result"]["events"][0]["kv"]["value"],
        b64("seen"),
        "{ev}"
    );
    // Delete with the previous value; the revoke removes the lease's key.
    let d = e.post(
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}","prev_kv":true}}"#, b64("gw/a")),
    );
    assert_eq!(d["deleted"], "1");
    assert_eq!(d["prev_kvs"][0]["value"], b64("2"));
    e.post("/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#));
    let gone = e.post("/v3/kv/range", &format!(r#"{{"key":"{}"}}"#, b64("gw/l")));
    assert!(gone.get("kvs").is_none(), "{gone}");

    // Bad input: etcd's error shape and status; nothing written.
    let (code, body) = e.call("POST", "/v3/kv/put", Some(r#"{"key":"Zm9v","#));
    assert_eq!(code, 400, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], 3, "{body}");
    assert!(err["error"].is_string() && err["message"] == err["error"]);
    let (code, body) = e.call("POST", "/v3/kv/put", Some(r#"{"key":""}"#));
    assert_eq!((code, body.contains("key is not provided")), (400, true));
    let (code, _) = e.call("POST", "/v3/kv/nothing", Some("{}"));
    assert_eq!(code, 404);
    let (code, _) = e.call("GET", "/v3/kv/range", None);
    assert_eq!(code, 405);
    assert_eq!(value(&c, "foo").await, None);
    let (code, version) = e.call("GET", "/version", None);
    assert_eq!(code, 200);
    assert!(version.contains("\"etcdserver\":\"3."), "{version}");
    let (code, health) = e.call("GET", "/health", None);
    assert_eq!((code, health.trim()), (200, "{\"health\":\"true\"}"));
}

/// A JSON document's shape: its keys and the kind of each value (arrays by their elements').
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => {
            let mut shapes: Vec<Value> = a.iter().map(shape).collect();
            shapes.dedup();
            Value::Array(shapes)
        }
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

/// The same requests against etcd 3.4 and eden: each answer's HTTP status and JSON shape.
fn session(e: &Endpoint) -> Vec<(String, u16, Value)> {
    let k = b64("shape/k");
    let requests = [
        ("/v3/kv/put", format!(r#"{{"key":"{k}","value":"YQ=="}}"#)),
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{k}","value":"Yg==","prev_kv":true}}"#),
        ),
        ("/v3/kv/range", format!(r#"{{"key":"{k}"}}"#)),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{k}","count_only":true}}"#),
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{k}","range_end":"AA==","sort_order":"DESCEND","limit":1}}"#),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"target":"MOD","key":"{k}","mod_revision":"1","result":"GREATER"}}],
                    "success":[{{"request_put":{{"key":"{k}","value":"Yw=="}}}},{{"request_range":{{"key":"{k}"}}}}]}}"#
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"target":"VERSION","key":"{k}","version":"99","result":"EQUAL"}}],
                    "failure":[{{"request_delete_range":{{"key":"{k}","prev_kv":true}}}}]}}"#
            ),
        ),
        ("/v3/kv/deleterange", format!(r#"{{"key":"{k}"}}"#)),
        ("/v3/lease/grant", r#"{"TTL":60}"#.to_string()),
        ("/v3/lease/leases", "{}".to_string()),
        ("/v3/kv/put", format!(r#"{{"key":"{k}","#)),
        ("/v3/kv/put", r#"{"key":""}"#.to_string()),
        ("/v3/kv/range", r#"{"key":"Zm9v","limit":"x"}"#.to_string()),
        ("/v3/kv/compaction", r#"{"revision":"100000"}"#.to_string()),
        ("/v3/lease/revoke", r#"{"ID":"12345"}"#.to_string()),
        ("/v3beta/kv/range", format!(r#"{{"key":"{k}"}}"#)),
        ("/v3/cluster/member/list", "{}".to_string()),
        ("/v3/nothing", "{}".to_string()),
    ];
    requests
        .iter()
        .map(|(path, body)| {
            let (code, text) = e.call("POST", path, Some(body));
            let v = serde_json::from_str(&text).map_or(Value::Null, |v| shape(&v));
            (format!("POST {path} {body}"), code, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_have_the_shape_and_status_etcds_have() {
    let etcd = Cluster::start_etcd(1).await;
    let want = session(&Endpoint::of(&etcd, "admin"));
    let c = Cluster::start(1, &[]).await;
    let got = session(&Endpoint::of(&c, "admin"));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g, "etcd 3.4 answered {w:?}, eden {g:?}");
    }
}

/// Where scripts/setup.sh installs etcd3gw (a virtual environment; `EDEN_TEST_PYTHON` names
/// another Python that has it).
fn python() -> PathBuf {
    std::env::var_os("EDEN_TEST_PYTHON").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/eden-pyclients/bin/python")
        },
        PathBuf::from,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_etcd3gw_client_works_unchanged() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints()[0].trim_start_matches("http://").to_string();
    let (host, port) = ep.rsplit_once(':').unwrap();
    let mut args = vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/py/etcd3gw_check.py").to_string(),
        host.to_string(),
        port.to_string(),
    ];
    if let Some(pki) = &c.pki {
        for f in ["ca.crt", "admin.crt", "admin.key"] {
            args.push(pki.join(f).display().to_string());
        }
    }
    let py = python();
    let out = Command::new(&py)
        .args(&args)
        // requests prefers these to the CA the client is given.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs it)", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "etcd3gw check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // What it wrote is there for gRPC clients.
    assert_eq!(value(&c, "/py/b").await, Some(b"2".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_gateway_wants_a_certificate_and_the_authorizer_decides() {
    let c = Cluster::start_tls(1, &[]).await;
    let admin = Endpoint::of(&c, "admin");
    assert!(admin.base.starts_with("https://"));
    admin.post(
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("/app/x"), b64("1")),
    );
    let (code, _) = admin.call("GET", "/metrics", None);
    assert_eq!(code, 200);

    // The cluster's CA, no client certificate: refused on every route, in etcd's shape.
    let ca = c.pki.as_ref().unwrap().join("ca.crt").display().to_string();
    let anonymous = Endpoint {
        base: admin.base.clone(),
        tls: vec!["--cacert".into(), ca],
    };
    for (method, path) in [
        ("POST", "/v3/kv/range"),
        ("POST", "/v3/lease/grant"),
        ("GET", "/metrics"),
        ("GET", "/health"),
        ("GET", "/version"),
    ] {
        let (code, body) = anonymous.call(method, path, Some(r#"{"key":"L2FwcC94"}"#));
        assert_eq!(code, 401, "{method} {path}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(err["code"], 16, "{body}");
    }
    // A node's certificate: its own variables yes, another node's no (403, permission denied),
    // also inside a txn and on a watch.
    let node = Endpoint::of(&c, "node-web1");
    let own = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        b64("/eden/vars/web1/port"),
        b64("80")
    );
    let (code, body) = node.call("POST", "/v3/kv/put", Some(&own));
    assert_eq!(code, 200, "{body}");
    let other = format!(
        r#"{{"key":"{}","value":"eA=="}}"#,
        b64("/eden/vars/db1/port")
    );
    let (code, body) = node.call("POST", "/v3/kv/put", Some(&other));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("permission denied") && body.contains("\"code\":7"),
        "{body}"
    );
    let (code, body) = node.call(
        "POST",
        "/v3/kv/txn",
        Some(&format!(r#"{{"success":[{{"request_put":{other}}}]}}"#)),
    );
    assert_eq!(code, 403, "{body}");
    let w = node.stream(
        "/v3/watch",
        &format!(
            r#"{{"create_request":{{"key":"{}"}}}}"#,
            b64("/eden/vars/db1/port")
        ),
    );
    let refused = w.until(Duration::from_secs(10), |_| true);
    assert!(
        refused["result"]["canceled"] == true || refused.get("error").is_some(),
        "{refused}"
    );
    assert_eq!(value(&c, "/eden/vars/db1/port").await, None);
    // The gRPC side was not disturbed by HTTP/1.1 on the same port.
    wait_for("a gRPC read", Duration::from_secs(5), || async {
        value(&c, "/app/x").await.is_some()
    })
    .await;
}
