//! The REST API (`mahler-server`, docs/api.md) against the real cluster:
//! started once per run beside it, plain HTTP on loopback, as the
//! ServiceAccount the chart's `apiServer` template makes (TokenReview and
//! impersonation only). That template is rendered as its own release,
//! `e2e`, and applied with kubectl, so the chart tests' upgrades of the
//! suite's release leave it alone. Callers are the local cluster's token
//! users.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::access::{Case, Kind, Verb, allowed_via_rest, check_matrix, fixtures};
use crate::harness::{built_binary, env, free_port, helm, service_account_kubeconfig, shared};

pub struct Rest {
    pub base: String,
    _child: Mutex<Child>,
}

/// The server's ServiceAccount (release `e2e` of the chart's template).
pub const API_SA: &str = "e2e-api";
pub const API_USER: &str = "system:serviceaccount:mahler-system:e2e-api";

/// How long the test server caches an accepted token (the default is 30 s).
const TOKEN_TTL_SECONDS: u64 = 3;

pub fn rest() -> &'static Rest {
    static REST: OnceLock<Rest> = OnceLock::new();
    REST.get_or_init(|| {
        let env = env();
        let bin = built_binary("mahler-server", "mahler-server");
        let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/mahler");
        let rendered = helm(
            &env.tools,
            &env.kubeconfig,
            &[
                "template",
                "e2e",
                chart.to_str().unwrap(),
                "--namespace",
                "mahler-system",
                "--show-only",
                "templates/api-server.yaml",
                "--set",
                "apiServer.enabled=true,apiServer.tls.secretName=e2e-api-tls",
            ],
        );
        env.apply(&rendered);
        let kubeconfig = env.dir.join("api.kubeconfig");
        service_account_kubeconfig(
            &env.kubectl,
            &env.kubeconfig,
            "mahler-system",
            API_SA,
            &kubeconfig,
        );
        let port = free_port();
        let log = std::fs::File::create(env.dir.join("api.log")).unwrap();
        let child = Command::new(bin)
            .env("KUBECONFIG", &kubeconfig)
            .env("MAHLER_API_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "MAHLER_API_TOKEN_CACHE_TTL",
                format!("{TOKEN_TTL_SECONDS}s"),
            )
            .env("MAHLER_API_LOG_FORMAT", "json")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mahler-server");
        std::fs::write(env.dir.join("api.pid"), child.id().to_string()).unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while call("GET", &format!("{base}/readyz"), None, None, None).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "mahler-server never became ready (see api.log)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Rest {
            base,
            _child: Mutex::new(child),
        }
    })
}

/// A local user's bearer token (hack/cluster.sh's tokens.csv).
pub fn token(user: &str) -> String {
    let text = std::fs::read_to_string(env().dir.join("tokens.csv")).expect("tokens.csv");
    text.lines()
        .find_map(|l| {
            let mut f = l.split(',');
            let t = f.next()?;
            (f.next()? == user).then(|| t.to_string())
        })
        .unwrap_or_else(|| panic!("no token for {user}"))
}

/// One HTTP request with curl: (status, body as JSON or text).
pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    content_type: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if body.is_some() {
        cmd.args([
            "-H",
            &format!(
                "Content-Type: {}",
                content_type.unwrap_or("application/json")
            ),
            "--data-binary",
            "@-",
        ]);
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("curl");
    if let Some(b) = body {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn error_of(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap_or_else(|_| panic!("not a JSON error body: {body}"))
        ["error"]
        .clone()
}

/// The matrix case as a REST request; writes are `?dryRun=All`.
fn by_rest(c: &Case) -> (bool, String) {
    let base = &rest().base;
    let (collection, item) = match c.kind {
        Kind::Service => (
            format!("{base}/api/v1/environments/{}/services", c.env),
            "matrix-web",
        ),
        Kind::Connection => (
            format!("{base}/api/v1/environments/{}/connections", c.env),
            "matrix-web-db",
        ),
        Kind::Environment => (format!("{base}/api/v1/environments"), c.env),
        Kind::Project => (format!("{base}/api/v1/projects"), "shop"),
    };
    let token = token(c.user);
    let (status, body) = match c.verb {
        Verb::Get => call(
            "GET",
            &format!("{collection}/{item}"),
            Some(&token),
            None,
            None,
        ),
        Verb::List => call("GET", &collection, Some(&token), None, None),
        Verb::Create => {
            let body = match c.kind {
                Kind::Service => {
                    json!({"metadata": {"name": "matrix-new"}, "spec": {"source": {"image": "new:1"}}})
                }
                Kind::Connection => {
                    json!({"metadata": {"name": "matrix-new"}, "spec": {"from": "matrix-db", "to": "matrix-web", "port": 80}})
                }
                Kind::Environment => {
                    json!({"metadata": {"name": "shop-matrix"}, "spec": {"project": "shop"}})
                }
                Kind::Project => json!({"metadata": {"name": "matrix-new"}, "spec": {}}),
            };
            call(
                "POST",
                &format!("{collection}?dryRun=All"),
                Some(&token),
                Some(&body.to_string()),
                None,
            )
        }
        Verb::Update => call(
            "PATCH",
            &format!("{collection}/{item}?dryRun=All"),
            Some(&token),
            Some(r#"{"metadata":{"labels":{"e2e.mahler.dev/touched":"true"}}}"#),
            Some("application/merge-patch+json"),
        ),
        Verb::Delete => call(
            "DELETE",
            &format!("{collection}/{item}?dryRun=All"),
            Some(&token),
            None,
            None,
        ),
    };
    let ok = (200..300).contains(&status);
    if !ok && status != 403 {
        // Neither allowed nor forbidden: make the cell differ, with why.
        return (
            !allowed_via_rest(c),
            format!("unexpected HTTP {status}: {body}"),
        );
    }
    (
        ok,
        format!(
            "HTTP {status}: {}",
            body.chars().take(300).collect::<String>()
        ),
    )
}

#[tokio::test]
async fn the_access_matrix_holds_through_the_rest_api() {
    let _guard = shared().await;
    let env = env();
    fixtures(env).await;
    rest();
    check_matrix("REST API", allowed_via_rest, |c| {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || by_rest(&c))
                .await
                .unwrap()
        })
    })
    .await;
    // A 403 says which verb on which resource in which namespace, and the
    // protected-environment policy's reason.
    let (status, body) = call(
        "PATCH",
        &format!(
            "{}/api/v1/environments/shop-production/services/matrix-web?dryRun=All",
            rest().base
        ),
        Some(&token("shop-dev")),
        Some(r#"{"spec":{"replicas":2}}"#),
        Some("application/merge-patch+json"),
    );
    assert_eq!(status, 403, "{body}");
    let e = error_of(&body);
    assert_eq!(e["verb"], "patch", "{body}");
    assert_eq!(e["namespace"], "shop-production", "{body}");
    assert!(
        e["resource"].as_str().unwrap_or("").starts_with("services"),
        "{body}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("only its owners may change it: user:prod-owner"),
        "{body}"
    );
    // A member's list of environments: the project's, and no other.
    let (status, body) = call(
        "GET",
        &format!("{}/api/v1/environments?project=shop", rest().base),
        Some(&token("shop-viewer")),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["shop-production", "shop-staging"], "{body}");
    let (status, body) = call(
        "GET",
        &format!("{}/api/v1/environments/shop-staging/services", rest().base),
        Some(&token("outsider")),
        None,
        None,
    );
    assert_eq!(status, 403, "{body}");
    let e = error_of(&body);
    assert_eq!(
        (e["verb"].as_str(), e["namespace"].as_str()),
        (Some("list"), Some("shop-staging")),
        "{body}"
    );

    // The audit log names the real user, impersonated by the server.
    let audit = std::fs::read_to_string(&env.audit_log).unwrap();
    assert!(
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| {
                e["user"]["username"] == API_USER && e["impersonatedUser"]["username"] == "shop-dev"
            }),
        "no request of the server impersonating shop-dev in the audit log"
    );
}

#[tokio::test]
async fn bad_input_gets_a_400_naming_the_field_and_nothing_is_written() {
    let _guard = shared().await;
    let env = env();
    fixtures(env).await;
    let base = &rest().base;
    let admin = token("shop-admin");
    let services = format!("{base}/api/v1/environments/shop-staging/services");
    let post = |body: &str| call("POST", &services, Some(&admin), Some(body), None);
    for (body, field) in [
        (
            r#"{"metadata":{"name":"bad1"},"spec":{"source":{"image":"a:1"},"replicas":"two"}}"#,
            "spec.replicas",
        ),
        (
            r#"{"metadata":{"name":"bad2"},"spec":{"source":{"image":"a:1"},"replicaz":2}}"#,
            "spec.replicaz",
        ),
        (
            r#"{"metadata":{"name":"bad3"},"spec":{"source":{"image":"a:1"},"ports":[{"name":"http","port":70000}]}}"#,
            "spec.ports",
        ),
        (
            r#"{"metadata":{"name":"bad4"},"spec":{"source":{"image":"a:1","git":{"url":"g"}}}}"#,
            "spec.source",
        ),
        (
            r#"{"metadata":{"name":"Bad_Name"},"spec":{"source":{"image":"a:1"}}}"#,
            "name",
        ),
    ] {
        let (status, out) = post(body);
        assert_eq!(status, 400, "{body}: {out}");
        let e = error_of(&out);
        assert!(
            e["field"].as_str().is_some_and(|f| f.contains(field))
                || e["message"].as_str().is_some_and(|m| m.contains(field)),
            "{body}: the error does not name {field}: {out}"
        );
    }
    let (status, out) = post("{not json");
    assert_eq!(status, 400, "{out}");
    error_of(&out);
    let big = format!(
        r#"{{"metadata":{{"name":"bad5"}},"spec":{{"source":{{"image":"a:1"}},"env":[{{"name":"X","value":"{}"}}]}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, out) = post(&big);
    assert_eq!(status, 413, "{}", out.chars().take(200).collect::<String>());
    error_of(&out);
    let (status, _) = call(
        "GET",
        &format!("{services}/Not_A_Name"),
        Some(&admin),
        None,
        None,
    );
    assert_eq!(status, 400);
    // Nothing was written.
    for name in ["bad1", "bad2", "bad3", "bad4", "bad5"] {
        let (status, out) = call(
            "GET",
            &format!("{services}/{name}"),
            Some(&admin),
            None,
            None,
        );
        assert_eq!(status, 404, "{name} exists: {out}");
    }

    // No token, a bad token: 401 saying what is expected.
    let (status, out) = call("GET", &services, None, None, None);
    assert_eq!(status, 401);
    assert!(
        error_of(&out)["message"]
            .as_str()
            .unwrap()
            .contains("Bearer"),
        "{out}"
    );
    let (status, out) = call("GET", &services, Some("not-a-token"), None, None);
    assert_eq!(status, 401, "{out}");
}

#[tokio::test]
async fn a_token_of_a_deleted_service_account_is_refused() {
    let _guard = shared().await;
    let env = env();
    rest();
    env.kubectl(&["create", "serviceaccount", "e2e-api-gone", "-n", "default"]);
    let t = env.kubectl(&["create", "token", "e2e-api-gone", "-n", "default"]);
    let t = t.trim();
    let url = format!("{}/api/v1/projects/shop", rest().base);
    // Authenticated (then refused by RBAC: it is in no project).
    let (status, out) = call("GET", &url, Some(t), None, None);
    assert_eq!(status, 403, "{out}");
    env.kubectl(&["delete", "serviceaccount", "e2e-api-gone", "-n", "default"]);
    // kube-apiserver refuses it at once; the REST API once its cache entry
    // (TOKEN_TTL_SECONDS in this run) has gone.
    let deadline = Instant::now() + Duration::from_secs(TOKEN_TTL_SECONDS + 10);
    loop {
        let (status, out) = call("GET", &url, Some(t), None, None);
        if status == 401 {
            break;
        }
        assert_eq!(status, 403, "{out}");
        assert!(
            Instant::now() < deadline,
            "a deleted ServiceAccount's token still works"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = crate::harness::kubectl_output(
        &env.kubectl,
        &env.kubeconfig,
        &["--context", "outsider", "--token", t, "get", "projects"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn status_changes_stream_as_server_sent_events() {
    let _guard = shared().await;
    let env = env();
    fixtures(env).await;
    let base = &rest().base;
    let dev = token("shop-dev");
    let mut curl = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "120",
            "-H",
            &format!("Authorization: Bearer {dev}"),
            &format!("{base}/api/v1/environments/shop-staging/events"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let stdout = curl.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(v) = serde_json::from_str::<Value>(data.trim())
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    let next_of = |name: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no matching event for {name}"));
            if v["name"] == name && pred(&v) {
                return v;
            }
        }
    };
    // The stream starts with the current state.
    next_of("matrix-web", &|_| true);
    // A new Service: its progress, then Ready; then its deletion.
    let services = format!("{base}/api/v1/environments/shop-staging/services");
    let (status, out) = call(
        "POST",
        &services,
        Some(&dev),
        Some(r#"{"metadata":{"name":"sse-web"},"spec":{"source":{"image":"web:1"}}}"#),
        None,
    );
    assert_eq!(status, 201, "{out}");
    let ready = next_of("sse-web", &|v| v["ready"] == true);
    assert_eq!(ready["kind"], "Service", "{ready}");
    let (status, out) = call(
        "DELETE",
        &format!("{services}/sse-web"),
        Some(&dev),
        None,
        None,
    );
    assert!((200..300).contains(&status), "{out}");
    next_of("sse-web", &|v| v["deleted"] == true);
    let _ = curl.kill();
    let _ = curl.wait();
}
