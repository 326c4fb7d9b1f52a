//! `make bench` (BENCH=api): the REST API's figures for docs/benchmarks.md,
//! against the local cluster and operator hack/bench.sh starts.
//!
//! Two reads, each with 16 concurrent clients, through the REST API and
//! side by side directly against kube-apiserver with the same token:
//!
//! 1. GET of one Service;
//! 2. the connection graph of an environment of 200 Services and 200
//!    Connections (directly: the same GET + two LISTs and the same graph
//!    built in this process).
//!
//! Requests/s and p50/p99 of each, and the Kubernetes calls the REST server
//! made per request, from the API server's audit log (the server's
//! ServiceAccount; TokenReviews counted apart).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::Client;
use kube::api::{Api, ListParams};
use mahler_api::{Connection, Environment, Service};

const N: usize = 200;
const CONCURRENCY: usize = 16;
const PROJECT: &str = "apibench";
const ENV: &str = "apibench-env";
const SERVER_SA: &str = "api-bench-server";
const USER_SA: &str = "api-bench-user";

/// The server process, killed when the bench ends, a panic included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:8.0} req/s  p50 {:7.2} ms  p99 {:7.2} ms",
            self.rps,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0
        )
    }
}

/// Runs `total` calls of `one`, `CONCURRENCY` at a time.
async fn load<F, Fut>(total: usize, one: F) -> Figures
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut took: Vec<Duration> = futures::stream::iter(0..total)
        .map(|_| {
            let fut = one();
            async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = start.elapsed();
    took.sort();
    Figures {
        rps: total as f64 / wall.as_secs_f64(),
        p50: percentile(&took, 0.50),
        p99: percentile(&took, 0.99),
    }
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let kubectl = std::env::var("MAHLER_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut child = std::process::Command::new(kubectl)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("kubectl");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubeconfig whose user is `token`.
async fn token_client(token: &str) -> Client {
    let mut kc = kube::config::Kubeconfig::read().expect("KUBECONFIG");
    for auth in &mut kc.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            *info = kube::config::AuthInfo {
                token: Some(token.to_string().into()),
                ..Default::default()
            };
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// Kubernetes calls of the server's ServiceAccount in the audit log: (all,
/// TokenReviews).
fn server_calls(log: &str) -> (usize, usize) {
    let user = format!("system:serviceaccount:default:{SERVER_SA}");
    let text = std::fs::read_to_string(log).expect("the audit log (MAHLER_BENCH_AUDIT_LOG)");
    let mut all = 0;
    let mut reviews = 0;
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["user"]["username"] == user.as_str() && e["stage"] == "ResponseComplete")
    {
        all += 1;
        if e["objectRef"]["resource"] == "tokenreviews" {
            reviews += 1;
        }
    }
    (all, reviews)
}

#[tokio::main]
async fn main() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG (hack/bench.sh sets it)");
    let audit_log = std::env::var("MAHLER_BENCH_AUDIT_LOG").expect("MAHLER_BENCH_AUDIT_LOG");

    // The environment, its reader (read of Mahler's kinds, as a viewer's
    // role gives), and the server's ServiceAccount with the chart's rights.
    kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {USER_SA}, namespace: default}}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {SERVER_SA}, namespace: default}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {SERVER_SA}}}\nrules:\n\
             - {{apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}}\n\
             - {{apiGroups: [\"\"], resources: [users, groups, serviceaccounts], verbs: [impersonate]}}\n\
             - {{apiGroups: [authentication.k8s.io], resources: [uids], verbs: [impersonate]}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {SERVER_SA}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {SERVER_SA}}}\n\
             subjects: [{{kind: ServiceAccount, name: {SERVER_SA}, namespace: default}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {USER_SA}}}\nrules:\n\
             - {{apiGroups: [mahler.dev], resources: [environments, services, connections], verbs: [get, list]}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {USER_SA}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {USER_SA}}}\n\
             subjects: [{{kind: ServiceAccount, name: {USER_SA}, namespace: default}}]\n---\n\
             apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: {PROJECT}}}\nspec: {{}}\n---\n\
             apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ENV}}}\nspec: {{project: {PROJECT}}}\n"
        )),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get_opt(ENV)
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "namespace {ENV} never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ENV);
    let have = services
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    if have < N {
        let mut yaml = String::new();
        for i in 0..N {
            yaml.push_str(&format!(
                "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ENV}}}\nspec: {{source: {{image: \"app:1\"}}, ports: [{{name: http, port: 80}}]}}\n---\n"
            ));
            if i > 0 {
                yaml.push_str(&format!(
                    "apiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {{name: c{i}, namespace: {ENV}}}\nspec: {{from: s{i}, to: s{}, port: 80}}\n---\n",
                    i - 1
                ));
            }
        }
        yaml.push_str(&format!(
            "apiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {{name: c0, namespace: {ENV}}}\nspec: {{from: s0, to: s{}, port: 80}}\n",
            N - 1
        ));
        kubectl(&["apply", "--server-side", "-f", "-"], Some(&yaml));
    }

    let token = kubectl(
        &["create", "token", USER_SA, "-n", "default", "--duration=1h"],
        None,
    )
    .trim()
    .to_string();
    let server_token = kubectl(
        &[
            "create",
            "token",
            SERVER_SA,
            "-n",
            "default",
            "--duration=1h",
        ],
        None,
    )
    .trim()
    .to_string();
    let direct = token_client(&token).await;
    // RBAC caches settle quickly; wait until the reader may read.
    let direct_services: Api<Service> = Api::namespaced(direct.clone(), ENV);
    let deadline = Instant::now() + Duration::from_secs(120);
    while direct_services.get("s0").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the bench user never got read access"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The REST server, as its ServiceAccount, on a free loopback port.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("server.kubeconfig");
    let mut kc = kube::config::Kubeconfig::read().unwrap();
    for auth in &mut kc.auth_infos {
        auth.auth_info = Some(kube::config::AuthInfo {
            token: Some(server_token.clone().into()),
            ..Default::default()
        });
    }
    std::fs::write(&kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_mahler-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &kubeconfig)
            .env("MAHLER_API_LOG_LEVEL", "warn")
            .spawn()
            .expect("start mahler-server"),
    );
    let http: HttpClient<_, Empty<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz").parse().unwrap()).await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mahler-server never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = Arc::new(http);
    let rest = |path: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let req = http::Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Empty::new())
                .unwrap();
            let resp = http.request(req).await.expect("request");
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    };

    let gets = 4000;
    let graphs = 400;
    // Warm both paths (connections, the token cache).
    load(64, || {
        rest(format!("{base}/api/v1/environments/{ENV}/services/s0"))
    })
    .await;
    load(64, || async {
        direct_services.get("s0").await.unwrap();
    })
    .await;

    let (calls_before, reviews_before) = server_calls(&audit_log);
    let rest_get = load(gets, || {
        rest(format!("{base}/api/v1/environments/{ENV}/services/s0"))
    })
    .await;
    // Let the audit log catch up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (calls_after, reviews_after) = server_calls(&audit_log);
    let direct_get = load(gets, || async {
        direct_services.get("s0").await.unwrap();
    })
    .await;

    let (graph_calls_before, _) = server_calls(&audit_log);
    let rest_graph = load(graphs, || {
        rest(format!("{base}/api/v1/environments/{ENV}/graph"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (graph_calls_after, graph_reviews_after) = server_calls(&audit_log);
    let direct_graph = load(graphs, || {
        let direct = direct.clone();
        async move {
            let envs: Api<Environment> = Api::all(direct.clone());
            let svcs: Api<Service> = Api::namespaced(direct.clone(), ENV);
            let conns: Api<Connection> = Api::namespaced(direct.clone(), ENV);
            let lp = ListParams::default();
            let (e, s, c) = futures::join!(envs.get(ENV), svcs.list(&lp), conns.list(&lp));
            let (_e, s, c) = (e.unwrap(), s.unwrap(), c.unwrap());
            let graph = mahler_client::Graph::of(&s.items, &c.items);
            let _ = serde_json::to_vec(&mahler_server::views::graph(ENV, &graph)).unwrap();
        }
    })
    .await;
    drop(_server);

    println!("REST API vs kube-apiserver directly, same token, {CONCURRENCY} concurrent clients:");
    println!("  GET one Service ({gets} requests)");
    println!("    REST API        {rest_get}");
    println!("    kube-apiserver  {direct_get}");
    println!(
        "    ratio           {:.2}x the throughput, {:.2}x the p50",
        rest_get.rps / direct_get.rps,
        rest_get.p50.as_secs_f64() / direct_get.p50.as_secs_f64()
    );
    println!(
        "    Kubernetes calls per REST GET: {:.3} ({} calls, {} TokenReviews, for {gets} requests)",
        (calls_after - calls_before) as f64 / gets as f64,
        calls_after - calls_before,
        reviews_after - reviews_before
    );
    println!("  graph of {N} Services / {N} Connections ({graphs} requests)");
    println!("    REST API        {rest_graph}");
    println!("    kube-apiserver  {direct_graph}  (GET + 2 LISTs + the same graph in-process)");
    println!(
        "    ratio           {:.2}x the throughput, {:.2}x the p50",
        rest_graph.rps / direct_graph.rps,
        rest_graph.p50.as_secs_f64() / direct_graph.p50.as_secs_f64()
    );
    println!(
        "    Kubernetes calls per REST graph: {:.3} ({} TokenReviews)",
        (graph_calls_after - graph_calls_before) as f64 / graphs as f64,
        graph_reviews_after - reviews_after
    );
}
