//! `make bench` (BENCH=cli): the CLI's figures for docs/benchmarks.md,
//! against the local cluster and operator hack/bench.sh starts.
//!
//! 1. `mahler status` of an environment of 200 Services and 200 Connections:
//!    wall time (median of 20), next to the same three requests made from a
//!    warm client in this process (the API round trips, the floor) and to
//!    `kubectl get msvc,mconn` (the plain alternative); and the API calls it
//!    made, from the API server's own request counter.
//! 2. Cold start of `mahler --help`, next to `kubectl --help`.

use std::process::Command;
use std::time::{Duration, Instant};

use std::io::Write;

use futures::{StreamExt, TryStreamExt};
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use mahler_api::{Connection, Environment, Service};

const N: usize = 200;
const RUNS: usize = 20;
const ENV: &str = "clibench-env";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn timed(mut cmd: Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn ready(s: &Service) -> bool {
    mahler_client::Summary::of_service(s).state == mahler_client::summary::State::Ready
}

/// The identity the counted `mahler status` runs as: a ServiceAccount, so
/// the local cluster's audit policy records every request it makes.
const BENCH_USER: &str = "system:serviceaccount:default:cli-bench";

/// Requests of `BENCH_USER` in the API server's audit log, by verb and resource.
fn audited_requests(log: &str) -> std::collections::BTreeMap<String, usize> {
    let text = std::fs::read_to_string(log).expect("the audit log (MAHLER_BENCH_AUDIT_LOG)");
    let mut counts = std::collections::BTreeMap::new();
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["user"]["username"] == BENCH_USER)
    {
        let key = format!(
            "{} {}",
            e["verb"].as_str().unwrap_or_default(),
            e["objectRef"]["resource"].as_str().unwrap_or_default()
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG (hack/bench.sh sets it)");
    let kubectl = std::env::var("MAHLER_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mahler = env!("CARGO_BIN_EXE_mahler");

    // The environment: 200 image Services, each connected to the next,
    // applied by the CLI itself in one `mahler apply -f -`.
    let mut manifest = format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: clibench}}\nspec: {{}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ENV}}}\nspec: {{project: clibench}}\n"
    );
    for i in 0..N {
        manifest.push_str(&format!(
            "---\napiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ENV}}}\n\
             spec: {{source: {{image: bench/s{i}:1}}, ports: [{{name: http, port: 8080}}]}}\n\
             ---\napiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {{name: c{i}, namespace: {ENV}}}\n\
             spec: {{from: s{i}, to: s{}, port: 8080}}\n",
            (i + 1) % N
        ));
    }
    let started = Instant::now();
    let mut apply = Command::new(mahler)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    assert!(apply.wait().unwrap().success(), "mahler apply");
    println!(
        "cli: mahler apply -f - of {} objects: {:.1} s",
        2 * N + 2,
        started.elapsed().as_secs_f64()
    );
    let services = Api::<Service>::namespaced(client.clone(), ENV);
    let connections = Api::<Connection>::namespaced(client.clone(), ENV);
    // All Ready, so status prints the full table.
    let started = Instant::now();
    let mut stream = watcher(services.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut done = std::collections::BTreeSet::new();
    while done.len() < N {
        let s = tokio::time::timeout(Duration::from_secs(300), stream.try_next())
            .await
            .expect("200 Services Ready within 300 s")
            .unwrap()
            .unwrap();
        if ready(&s) {
            done.insert(s.name_any());
        }
    }
    println!(
        "cli: {N} Services and {N} Connections Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The floor: the same three requests from a warm client.
    let floor = {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            Api::<Environment>::all(client.clone())
                .get(ENV)
                .await
                .unwrap();
            let lp = ListParams::default();
            let (a, b) = futures::try_join!(services.list(&lp), connections.list(&lp)).unwrap();
            assert_eq!((a.items.len(), b.items.len()), (N, N));
            runs.push(t.elapsed());
        }
        median(runs)
    };
    let status = |out: bool| {
        let mut cmd = Command::new(mahler);
        cmd.args(["status", ENV]);
        if !out {
            cmd.stdout(std::process::Stdio::null());
        }
        cmd
    };
    let out = status(true).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{N}/{N} services Ready, {N} connections")),
        "{text}"
    );
    // One run as a ServiceAccount that may read Mahler's kinds, counted in
    // the audit log (this request and no other client's).
    let rbac = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: cli-bench, namespace: default}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: cli-bench}\n\
         rules: [{apiGroups: [mahler.dev], resources: [environments, services, connections], verbs: [get, list]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: cli-bench}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cli-bench}\n\
         subjects: [{kind: ServiceAccount, name: cli-bench, namespace: default}]\n";
    let mut apply = Command::new(&kubectl)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(rbac.as_bytes())
        .unwrap();
    assert!(
        apply.wait().unwrap().success(),
        "kubectl apply of the bench RBAC"
    );
    let audit_log =
        std::env::var("MAHLER_BENCH_AUDIT_LOG").expect("MAHLER_BENCH_AUDIT_LOG (hack/bench.sh)");
    // Its own token in a copy of the kubeconfig (the audit policy matches
    // the authenticated user, not an impersonated one).
    let kubectl_out = |args: &[&str]| {
        let out = Command::new(&kubectl).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let token = kubectl_out(&["create", "token", "cli-bench", "-n", "default"]);
    let kubeconfig =
        std::env::temp_dir().join(format!("cli-bench-{}.kubeconfig", std::process::id()));
    std::fs::copy(
        std::env::var("KUBECONFIG").expect("KUBECONFIG"),
        &kubeconfig,
    )
    .unwrap();
    let at = kubeconfig.to_str().unwrap();
    kubectl_out(&[
        "--kubeconfig",
        at,
        "config",
        "set-credentials",
        "cli-bench",
        &format!("--token={token}"),
    ]);
    kubectl_out(&[
        "--kubeconfig",
        at,
        "config",
        "set-context",
        "--current",
        "--user=cli-bench",
    ]);
    let mut counted = status(false);
    counted.args(["--kubeconfig", at]);
    let one = timed(counted);
    let calls: Vec<String> = audited_requests(&audit_log)
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    let mut runs = vec![one];
    for _ in 1..RUNS {
        runs.push(timed(status(false)));
    }
    let cli = median(runs);
    let kubectl_runs: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let mut cmd = Command::new(&kubectl);
            cmd.args(["get", "msvc,mconn", "-n", ENV]);
            timed(cmd)
        })
        .collect();
    let plain = median(kubectl_runs);
    println!(
        "cli: mahler status ({N} services, {N} connections): median {:.1} ms over {RUNS} runs; \
         the API round trips alone {:.1} ms, so {:.1} ms beyond them (goal < 150); \
         kubectl get msvc,mconn {:.1} ms (ratio {:.2}×)",
        ms(cli),
        ms(floor),
        ms(cli.saturating_sub(floor)),
        ms(plain),
        cli.as_secs_f64() / plain.as_secs_f64()
    );
    println!("cli: API calls of one mahler status: {}", calls.join(", "));

    let help = |bin: &str| {
        let runs: Vec<Duration> = (0..50)
            .map(|_| {
                let mut cmd = Command::new(bin);
                cmd.arg("--help");
                timed(cmd)
            })
            .collect();
        median(runs)
    };
    let (ours, theirs) = (help(mahler), help(&kubectl));
    println!(
        "cli: cold start of mahler --help: median {:.1} ms over 50 runs (goal < 20); kubectl --help {:.1} ms (ratio {:.2}×)",
        ms(ours),
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
}
