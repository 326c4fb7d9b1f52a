//! The `mahler` CLI against the real cluster and operator: each command's
//! effect and output, `deploy --wait` success, failure and timeout with
//! their exit codes, logs from several pods and services (kwok serves them
//! through the API server's kubelet proxy), config precedence, every error
//! path, and the interactive parts under tmux as a person sees them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use mahler_api::{Service, terraform::PlanPhase};

use super::harness::{env, exclusive, has_reason, is_ready, shared, wait_for};
use super::{project_with_env, svc_conditions};

/// The CLI binaries, built once per run (`cargo build -p mahler-cli`).
fn cli_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        crate::harness::built_binary("mahler-cli", "mahler")
            .parent()
            .unwrap()
            .to_path_buf()
    })
}

pub fn mahler_bin() -> PathBuf {
    cli_dir().join("mahler")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Exits `code` with one error line (and maybe a hint): never a
    /// backtrace, a panic or a JSON body.
    pub fn fails(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.iter().any(|l| l.starts_with("error: ")),
            "no error line:\n{}",
            self.stderr
        );
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("error: ") || l.starts_with("hint: ")),
            "more than error and hint lines:\n{}",
            self.stderr
        );
        for bad in [
            "panicked",
            "RUST_BACKTRACE",
            "{\"kind\"",
            "ErrorResponse",
            "ApiError",
        ] {
            assert!(!self.stderr.contains(bad), "{bad} in:\n{}", self.stderr);
        }
        self
    }
}

/// A CLI invocation with the test cluster's kubeconfig, a private config
/// file and no MAHLER_* from the outside.
pub struct Cli {
    config: PathBuf,
    envs: Vec<(String, String)>,
}

impl Cli {
    pub fn new(test: &str) -> Self {
        let dir = env().dir.join("cli").join(test);
        std::fs::create_dir_all(&dir).unwrap();
        Cli {
            config: dir.join("config.yaml"),
            envs: vec![],
        }
    }

    pub fn with(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(mahler_bin());
        cmd.args(args)
            .env("KUBECONFIG", &env().kubeconfig)
            .env("MAHLER_CONFIG", &self.config)
            .env_remove("MAHLER_CONTEXT")
            .env_remove("MAHLER_PROJECT")
            .env_remove("MAHLER_ENV")
            .env_remove("MAHLER_OUTPUT")
            .env_remove("NO_COLOR");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mahler");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A role for the CLI's test users: what a developer of an environment needs.
fn cli_users_rbac() {
    env().apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: e2e-cli-user}\nrules:\n\
         - {apiGroups: [mahler.dev], resources: [projects, environments, services, connections], verbs: [get, list, watch, create, patch, delete]}\n\
         - {apiGroups: [''], resources: [pods, events], verbs: [get, list, watch]}\n\
         - {apiGroups: [''], resources: [pods/log], verbs: [get]}\n\
         - {apiGroups: [apps], resources: [deployments], verbs: [get, list, watch]}\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: e2e-cli-user}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-cli-user}\n\
         subjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: cli-owner}\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: cli-dev}\n",
    );
}

#[tokio::test]
async fn cli_creates_lists_connects_and_deletes_what_users_work_with() {
    let _g = shared().await;
    let cli = Cli::new("lifecycle");
    let out = cli
        .run(&[
            "project",
            "create",
            "clia",
            "--display-name",
            "CLI A",
            "--wait",
        ])
        .ok();
    assert!(
        out.stdout.contains("project.mahler.dev/clia created"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Project clia is Ready"),
        "{}",
        out.stdout
    );
    let out = cli
        .run(&[
            "env",
            "create",
            "staging",
            "-p",
            "clia",
            "--owner",
            "user:cli-owner",
            "--wait",
        ])
        .ok();
    assert!(
        out.stdout
            .contains("environment.mahler.dev/clia-staging created"),
        "{}",
        out.stdout
    );
    // From here on the environment comes from MAHLER_ENV.
    let cli = cli.with("MAHLER_ENV", "clia-staging");
    let out = cli
        .run(&[
            "service",
            "create",
            "api",
            "--image",
            "registry.example/api:1",
            "--port",
            "http=8080",
            "--replicas",
            "2",
            "--env",
            "LOG=debug",
            "--wait",
        ])
        .ok();
    assert!(
        out.stdout.contains("Service api is Ready"),
        "{}",
        out.stdout
    );
    let client = env().client().await;
    let d = Api::<Deployment>::namespaced(client.clone(), "clia-staging")
        .get("api")
        .await
        .unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    assert!(super::pod_env(&d).get("LOG").is_some_and(|v| v == "debug"));
    cli.run(&[
        "service",
        "create",
        "db",
        "--image",
        "postgres:16",
        "--port",
        "5432",
        "--wait",
    ])
    .ok();
    let out = cli
        .run(&["connect", "api", "db", "--port", "5432", "--wait"])
        .ok();
    assert!(
        out.stdout.contains("Connection api-db is Ready"),
        "{}",
        out.stdout
    );
    // The connection re-rolls api (DB_* variables); `connect --wait` waits for
    // the Connection only. Wait for that rollout, then for api's status.
    let deployments = Api::<Deployment>::namespaced(client.clone(), "clia-staging");
    wait_for(
        &deployments,
        "api",
        "api rolled out with DB_HOST",
        |d: Option<&Deployment>| {
            d.is_some_and(|d| {
                let want = d.spec.as_ref().and_then(|s| s.replicas);
                let s = d.status.clone().unwrap_or_default();
                super::pod_env(d).contains_key("DB_HOST")
                    && s.observed_generation == d.metadata.generation
                    && s.updated_replicas == want
                    && s.replicas == want
                    && s.available_replicas == want
            })
        },
    )
    .await;
    let services = Api::<Service>::namespaced(client.clone(), "clia-staging");
    wait_for(&services, "api", "api Ready", is_ready(svc_conditions)).await;

    // Every output format.
    let names = cli.run(&["service", "list", "-o", "name"]).ok().stdout;
    assert_eq!(names, "service.mahler.dev/api\nservice.mahler.dev/db\n");
    let json: serde_json::Value = serde_json::from_str(
        &cli.run(&["service", "get", "api", "-o", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["spec"]["replicas"], 2);
    let yaml: serde_json::Value =
        serde_yaml::from_str(&cli.run(&["service", "list", "-o", "yaml"]).ok().stdout).unwrap();
    assert_eq!(yaml["items"].as_array().unwrap().len(), 2);
    let table = cli.run(&["service", "list"]).ok().stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        !table.contains('\u{1b}'),
        "colour when not on a terminal:\n{table}"
    );
    let wide = cli.run(&["service", "list", "-o", "wide"]).ok().stdout;
    assert!(
        wide.contains("http://api.clia-staging.svc.cluster.local:8080"),
        "{wide}"
    );

    let status = cli.run(&["status"]).ok().stdout;
    assert!(
        status.contains("Environment clia-staging (project clia)"),
        "{status}"
    );
    assert!(
        status.contains("2/2 services Ready, 1 connections"),
        "{status}"
    );
    assert!(status.contains("db:5432"), "{status}");
    let dot = cli.run(&["graph", "-o", "dot"]).ok().stdout;
    assert!(dot.contains("\"api\" -> \"db\" [label=\"5432\"];"), "{dot}");
    let mermaid = cli.run(&["graph", "-o", "mermaid"]).ok().stdout;
    assert!(mermaid.contains("api -->|5432| db"), "{mermaid}");
    let explain = cli.run(&["explain", "api"]).ok().stdout;
    assert!(explain.starts_with("Service api is Ready"), "{explain}");

    // The same binary as a kubectl plugin.
    let path = format!(
        "{}:{}",
        cli_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&env().kubectl)
        .args(["mahler", "status", "clia-staging"])
        .env("PATH", path)
        .env("KUBECONFIG", &env().kubeconfig)
        .env("MAHLER_CONFIG", env().dir.join("cli/none.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("2/2 services Ready"),
        "{text}"
    );

    // apply: created, configured, unchanged.
    let manifest = "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {name: worker}\nspec: {source: {image: registry.example/worker:1}}\n---\n\
                    apiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {name: worker-api}\nspec: {from: worker, to: api, port: 8080}\n";
    let out = cli
        .run_stdin(&["apply", "-f", "-", "--wait"], Some(manifest))
        .ok();
    assert!(
        out.stdout.contains("service.mahler.dev/worker created"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("connection.mahler.dev/worker-api created"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Service worker is Ready"),
        "{}",
        out.stdout
    );
    let out = cli.run_stdin(&["apply", "-f", "-"], Some(manifest)).ok();
    assert!(
        out.stdout.contains("service.mahler.dev/worker unchanged"),
        "{}",
        out.stdout
    );
    let changed = manifest.replace("worker:1", "worker:2");
    let out = cli.run_stdin(&["apply", "-f", "-"], Some(&changed)).ok();
    assert!(
        out.stdout.contains("service.mahler.dev/worker configured"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("connection.mahler.dev/worker-api unchanged"),
        "{}",
        out.stdout
    );
    let owner = Api::<Service>::namespaced(client.clone(), "clia-staging")
        .get("worker")
        .await
        .unwrap();
    assert!(
        owner
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("mahler-cli")
                && m.operation.as_deref() == Some("Apply")),
        "applied with the CLI's field manager"
    );

    let out = cli.run(&["disconnect", "worker", "api"]).ok();
    assert!(
        out.stdout
            .contains("connection.mahler.dev/worker-api deleted"),
        "{}",
        out.stdout
    );
    cli.run(&["service", "delete", "worker", "--wait"]).ok();
    assert!(
        Api::<Service>::namespaced(client.clone(), "clia-staging")
            .get_opt("worker")
            .await
            .unwrap()
            .is_none()
    );
    cli.run(&[
        "env",
        "delete",
        "clia-staging",
        "--wait",
        "--timeout",
        "90s",
    ])
    .ok();
    let out = cli
        .run(&["project", "delete", "clia", "--wait", "--timeout", "90s"])
        .ok();
    assert!(
        out.stdout.contains("project.mahler.dev/clia deleted"),
        "{}",
        out.stdout
    );
    cli.run(&["project", "get", "clia"]).fails(3);
}

/// A Service whose pods can never be scheduled (no node has 5000 CPUs).
fn unschedulable(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  source: {{image: registry.example/{name}:1}}\n  resources: {{requests: {{cpu: \"5000\"}}}}\n"
    )
}

#[tokio::test]
async fn deploy_wait_ends_ready_failed_or_timed_out_with_its_exit_code() {
    let _g = shared().await;
    let client = env().client().await;
    let ns = project_with_env(&client, "clid").await;
    let cli = Cli::new("deploy").with("MAHLER_ENV", &ns);
    cli.run(&[
        "service",
        "create",
        "web",
        "--image",
        "registry.example/web:1",
        "--replicas",
        "2",
        "--wait",
    ])
    .ok();
    let out = cli
        .run(&[
            "deploy",
            "web",
            "--image",
            "registry.example/web:2",
            "--wait",
            "--timeout",
            "90s",
        ])
        .ok();
    assert!(
        out.stdout.contains("image set to registry.example/web:2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Service web: replicas: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Service web is Ready"),
        "{}",
        out.stdout
    );
    let out = cli
        .run(&["deploy", "web", "--image", "registry.example/web:2"])
        .ok();
    assert!(out.stdout.contains("unchanged"), "{}", out.stdout);

    // Failure: the new pods never schedule and the rollout misses its
    // deadline (2 s, set on the Deployment: a field Mahler leaves alone).
    env().apply(&unschedulable(&ns, "stuck"));
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    wait_for(
        &deployments,
        "stuck",
        "the Deployment",
        |d: Option<&Deployment>| d.is_some(),
    )
    .await;
    env().kubectl(&[
        "-n",
        &ns,
        "patch",
        "deployment",
        "stuck",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":2}}"#,
    ]);
    let out = cli
        .run(&[
            "deploy",
            "stuck",
            "--image",
            "registry.example/stuck:2",
            "--wait",
            "--timeout",
            "120s",
        ])
        .fails(1);
    assert!(
        out.stderr.contains("Service stuck failed: RolloutFailed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("FailedScheduling"),
        "Warning Events as they arrive:\n{}",
        out.stdout
    );

    // Timeout: the same, without a short deadline.
    env().apply(&unschedulable(&ns, "slow"));
    wait_for(
        &deployments,
        "slow",
        "the Deployment",
        |d: Option<&Deployment>| d.is_some(),
    )
    .await;
    let out = cli
        .run(&[
            "deploy",
            "slow",
            "--image",
            "registry.example/slow:2",
            "--wait",
            "--timeout",
            "3s",
        ])
        .fails(4);
    assert!(
        out.stderr.contains("Service slow is not Ready after 3s"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mahler explain slow"), "{}", out.stderr);
    // Explain names the pods' problem.
    let explain = cli.run(&["explain", "slow"]).ok().stdout;
    assert!(explain.contains("FailedScheduling"), "{explain}");
    // service create --wait fails the same way.
    let out = cli
        .run(&[
            "service",
            "create",
            "api",
            "--template",
            "postgres-credentials",
            "--input",
            "database=Bad-Name",
            "--wait",
            "--timeout",
            "60s",
        ])
        .fails(1);
    assert!(out.stderr.contains("Service api failed"), "{}", out.stderr);
}

/// Points kwok's log server for `pod` at a file of CRI log lines.
fn pod_logs(ns: &str, pod: &str, lines: &[&str]) -> PathBuf {
    let dir = env().dir.join("pod-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{ns}-{pod}.log"));
    let now = jiff_now();
    let text: String = lines
        .iter()
        .map(|l| format!("{now} stdout F {l}\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
    env().apply(&format!(
        "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Logs\nmetadata: {{name: {pod}, namespace: {ns}}}\nspec:\n  logs:\n  - containers: []\n    logsFile: {}\n    follow: true\n",
        file.display()
    ));
    // kwok picks the Logs object up from its watch: ready when it serves them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !super::harness::kubectl_output(
        &env().kubectl,
        &env().kubeconfig,
        &["-n", ns, "logs", pod, "--tail=1"],
        None,
    )
    .status
    .success()
    {
        assert!(
            Instant::now() < deadline,
            "kwok never served the logs of {pod}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    file
}

fn jiff_now() -> String {
    // RFC 3339 with nanoseconds, as CRI log files have it.
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn pods_of(client: &kube::Client, ns: &str, service: &str) -> Vec<String> {
    let mut names: Vec<String> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("mahler.dev/service={service}")))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn logs_come_from_every_pod_of_a_service_and_of_an_environment() {
    let _g = shared().await;
    let client = env().client().await;
    let ns = project_with_env(&client, "clil").await;
    let cli = Cli::new("logs").with("MAHLER_ENV", &ns);
    cli.run(&[
        "service",
        "create",
        "api",
        "--image",
        "registry.example/api:1",
        "--replicas",
        "2",
        "--wait",
    ])
    .ok();
    cli.run(&[
        "service",
        "create",
        "worker",
        "--image",
        "registry.example/worker:1",
        "--wait",
    ])
    .ok();
    let api_pods = pods_of(&client, &ns, "api").await;
    let worker_pods = pods_of(&client, &ns, "worker").await;
    assert_eq!((api_pods.len(), worker_pods.len()), (2, 1));
    for pod in api_pods.iter().chain(&worker_pods) {
        pod_logs(
            &ns,
            pod,
            &[&format!("starting {pod}"), &format!("ready {pod}")],
        );
    }
    let out = cli.run(&["logs", "api"]).ok().stdout;
    for pod in &api_pods {
        assert!(out.contains(&format!("[{pod}] starting {pod}")), "{out}");
        assert!(out.contains(&format!("[{pod}] ready {pod}")), "{out}");
    }
    assert!(!out.contains("worker"), "{out}");
    assert!(!out.contains('\u{1b}'), "colour in piped logs:\n{out}");
    let all = cli.run(&["logs", "--tail", "1"]).ok().stdout;
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(
        all.contains(&format!("[{}] ready", worker_pods[0])),
        "{all}"
    );
    let since = cli.run(&["logs", "api", "--since", "1h"]).ok().stdout;
    assert_eq!(since.lines().count(), 4, "{since}");
    cli.run(&["logs", "nope"]).fails(3);
}

#[tokio::test]
async fn settings_come_from_flags_then_variables_then_the_context() {
    let _g = shared().await;
    let cli = Cli::new("config");
    let kube_context = env()
        .kubectl(&["config", "current-context"])
        .trim()
        .to_string();
    cli.run(&[
        "config",
        "set-context",
        "a",
        "--project",
        "pa",
        "--env",
        "ea",
        "-o",
        "wide",
        "--kube-context",
        &kube_context,
        "--use",
    ])
    .ok();
    cli.run(&[
        "config",
        "set-context",
        "b",
        "--project",
        "pb",
        "--env",
        "eb",
    ])
    .ok();
    let contexts = cli.run(&["config", "get-contexts"]).ok().stdout;
    assert!(
        contexts
            .lines()
            .any(|l| l.starts_with('*') && l.contains(" a ")),
        "{contexts}"
    );
    let view = |cli: &Cli, args: &[&str]| {
        let mut all = vec!["config", "view"];
        all.extend_from_slice(args);
        cli.run(&all).ok().stdout
    };
    let row = |text: &str, setting: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(setting))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let v = view(&cli, &[]);
    assert_eq!(row(&v, "project"), "project pa context a", "{v}");
    assert_eq!(row(&v, "output"), "output wide context a", "{v}");
    let v = view(
        &Cli {
            envs: vec![("MAHLER_PROJECT".into(), "px".into())],
            config: cli.config.clone(),
        },
        &[],
    );
    assert_eq!(row(&v, "project"), "project px MAHLER_PROJECT", "{v}");
    let v = view(
        &Cli {
            envs: vec![("MAHLER_PROJECT".into(), "px".into())],
            config: cli.config.clone(),
        },
        &["-p", "pf"],
    );
    assert_eq!(row(&v, "project"), "project pf flag", "{v}");
    let with_b = Cli {
        envs: vec![("MAHLER_CONTEXT".into(), "b".into())],
        config: cli.config.clone(),
    };
    let v = view(&with_b, &[]);
    assert_eq!(row(&v, "environment"), "environment eb context b", "{v}");
    let v = view(&with_b, &["--context", "a"]);
    assert_eq!(row(&v, "environment"), "environment ea context a", "{v}");
    assert!(
        v.contains("(environment ea expands to pa-ea with the project)"),
        "{v}"
    );
    // --context may name a kubeconfig context, as kubectl's does.
    let v = view(&cli, &["--context", &kube_context]);
    assert_eq!(
        row(&v, "kube context"),
        format!("kube context {kube_context} flag"),
        "{v}"
    );
    // The context's output format is used by commands.
    cli.run(&["project", "create", "clic"]).ok();
    let projects = cli.run(&["project", "get", "clic"]).ok().stdout;
    assert!(
        projects.starts_with("NAME") && projects.lines().next().unwrap().contains("MEMBERS"),
        "{projects}"
    );
    let out = cli.run(&["config", "use-context", "bb"]).fails(3);
    assert!(out.stderr.contains("did you mean \"b\""), "{}", out.stderr);
    cli.run(&["--context", "nowhere", "env", "list"]).fails(3);
    cli.run(&["config", "delete-context", "a"]).ok();
    cli.run(&["config", "current-context"]).fails(3);
}

#[tokio::test]
async fn errors_are_one_line_with_what_to_do_and_a_documented_exit_code() {
    let _g = shared().await;
    let client = env().client().await;
    let ns = project_with_env(&client, "clie").await;
    let cli = Cli::new("errors");
    cli.run(&[
        "-e",
        &ns,
        "service",
        "create",
        "api",
        "--image",
        "registry.example/api:1",
        "--wait",
    ])
    .ok();

    let out = cli.run(&["status", "clie-tset"]).fails(3);
    assert!(
        out.stderr.contains("did you mean \"clie-test\""),
        "{}",
        out.stderr
    );
    let out = cli.run(&["-e", &ns, "explain", "apii"]).fails(3);
    assert!(
        out.stderr.contains("did you mean \"api\""),
        "{}",
        out.stderr
    );
    let out = cli
        .run(&["-e", &ns, "service", "create", "api", "--image", "x:1"])
        .fails(1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    // Usage errors are clap's, exit 2.
    assert_eq!(cli.run(&["service", "create", "x"]).code, 2);
    assert_eq!(
        cli.run(&[]).code,
        2,
        "a missing subcommand is a usage error"
    );
    let out = cli.run(&["-e", &ns, "status", "-o", "dot"]).fails(2);
    assert!(
        out.stderr.contains("only `mahler graph` prints dot"),
        "{}",
        out.stderr
    );

    // No permission.
    let out = cli.run(&["--as", "nobody", "project", "list"]).fails(5);
    assert!(
        out.stderr.contains("forbidden") && out.stderr.contains("hint:"),
        "{}",
        out.stderr
    );

    // No cluster: a kubeconfig whose server does not answer.
    let dir = env().dir.join("cli/errors");
    let dead = dir.join("dead.kubeconfig");
    let text = std::fs::read_to_string(&env().kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server line")
        .to_string();
    std::fs::write(&dead, text.replace(&server, "https://127.0.0.1:1")).unwrap();
    let out = cli
        .run(&["--kubeconfig", dead.to_str().unwrap(), "project", "list"])
        .fails(1);
    assert!(
        out.stderr.contains("cannot reach the cluster"),
        "{}",
        out.stderr
    );
    let out = Cli::new("errors")
        .with("KUBECONFIG", "")
        .with("HOME", dir.to_str().unwrap())
        .run(&["project", "list"])
        .fails(1);
    assert!(
        out.stderr.contains("no cluster configured"),
        "{}",
        out.stderr
    );
    // No Mahler API: the API server answers 404 for the group, as when the
    // CRDs are not installed (a path prefix the server does not serve).
    let bare = dir.join("bare.kubeconfig");
    std::fs::write(
        &bare,
        text.replace(&server, &format!("{server}/no-mahler-here")),
    )
    .unwrap();
    let out = cli
        .run(&["--kubeconfig", bare.to_str().unwrap(), "project", "list"])
        .fails(1);
    assert!(
        out.stderr.contains("does not serve Mahler's API"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("helm install mahler"), "{}", out.stderr);

    // apply shows the API server's field message, and names unknown kinds.
    let both = format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: both, namespace: {ns}}}\nspec:\n  source: {{image: x:1, template: {{name: postgres-credentials}}}}\n"
    );
    let out = cli.run_stdin(&["apply", "-f", "-"], Some(&both)).fails(1);
    assert!(
        out.stderr
            .contains("spec.source: set exactly one of image, git or template"),
        "{}",
        out.stderr
    );
    let typo = both.replace("kind: Service", "kind: Servce");
    let out = cli.run_stdin(&["apply", "-f", "-"], Some(&typo)).fails(1);
    assert!(
        out.stderr.contains("did you mean \"Service\""),
        "{}",
        out.stderr
    );
    let out = cli
        .run_stdin(&["apply", "-f", "-"], Some("kind: ["))
        .fails(1);
    assert!(out.stderr.contains("stdin (document 1)"), "{}", out.stderr);
}

#[tokio::test]
async fn without_the_operator_wait_says_the_object_was_never_observed() {
    let _g = exclusive().await;
    let client = env().client().await;
    let ns = project_with_env(&client, "clio").await;
    env().kill_operator();
    let out = Cli::new("operator-down").with("MAHLER_ENV", &ns).run(&[
        "service",
        "create",
        "api",
        "--image",
        "registry.example/api:1",
        "--wait",
        "--timeout",
        "17s",
    ]);
    env().start_operator();
    let out = out.fails(4);
    assert!(
        out.stdout.contains("no report from the operator after 15s"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("the operator never reported on it"),
        "{}",
        out.stderr
    );
    wait_for(
        &Api::<Service>::namespaced(client, &ns),
        "api",
        "Ready once the operator is back",
        is_ready(svc_conditions),
    )
    .await;
}

#[tokio::test]
async fn explain_follows_the_chain_to_the_plan_and_approve_is_checked_by_the_policy() {
    let _g = shared().await;
    let client = env().client().await;
    cli_users_rbac();
    let ns = "clix-test";
    env().apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: clix}}\nspec: {{}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ns}}}\nspec: {{project: clix, owners: [{{user: cli-owner}}]}}\n"
    ));
    let cli = Cli::new("approve").with("MAHLER_ENV", ns);
    wait_for(
        &Api::<mahler_api::Environment>::all(client.clone()),
        ns,
        "Environment Ready",
        is_ready(super::env_conditions),
    )
    .await;
    cli.run(&[
        "service",
        "create",
        "creds",
        "--template",
        "postgres-credentials",
        "--input",
        "database=shop",
        "--manual-approval",
    ])
    .ok();
    env().apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: app, namespace: {ns}}}\nspec:\n  source: {{image: registry.example/app:1}}\n  env:\n  - name: DATABASE_URL\n    valueFrom: {{serviceOutput: {{service: creds, key: url}}}}\n"
    ));
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let creds = wait_for(
        &services,
        "creds",
        "a plan awaiting approval",
        has_reason("AwaitingApproval", svc_conditions),
    )
    .await;
    let plan = creds.status.unwrap().terraform.unwrap().plan.unwrap();
    assert_eq!(plan.phase, PlanPhase::Pending);
    wait_for(
        &services,
        "app",
        "waiting for outputs",
        has_reason("WaitingForOutputs", svc_conditions),
    )
    .await;

    let explain = cli.run(&["explain", "app"]).ok().stdout;
    assert!(
        explain.starts_with("Service app is Progressing: WaitingForOutputs"),
        "{explain}"
    );
    assert!(
        explain.contains("└─ Service creds is Progressing: AwaitingApproval"),
        "{explain}"
    );
    assert!(
        explain.contains(&format!(
            "an owner (user:cli-owner) runs `mahler approve creds --plan {} --env {ns}`",
            plan.id
        )),
        "{explain}"
    );

    // Not on a terminal, no --yes: refused before anything is written.
    let out = cli.run(&["approve", "creds", "--as", "cli-owner"]).fails(2);
    assert!(
        out.stdout
            .contains(&format!("Plan {} for Service creds", plan.id)),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("+ create random_password.this"),
        "{}",
        out.stdout
    );
    // A developer who is not an owner: the admission policy says no, in one line.
    let out = cli
        .run(&["approve", "creds", "--yes", "--as", "cli-dev"])
        .fails(5);
    assert!(
        out.stderr.contains("approval refused: ") && out.stderr.contains("cli-dev is not an owner"),
        "{}",
        out.stderr
    );
    let out = cli
        .run(&[
            "approve",
            "creds",
            "--plan",
            "000000000000",
            "--yes",
            "--as",
            "cli-owner",
        ])
        .fails(1);
    assert!(
        out.stderr.contains("not the pending plan"),
        "{}",
        out.stderr
    );
    let out = cli
        .run(&[
            "approve",
            "creds",
            "--plan",
            &plan.id,
            "--yes",
            "--as",
            "cli-owner",
        ])
        .ok();
    assert!(
        out.stdout
            .contains(&format!("plan {} approved by cli-owner", plan.id)),
        "{}",
        out.stdout
    );
    let app = wait_for(
        &services,
        "app",
        "Ready after the approval",
        is_ready(svc_conditions),
    )
    .await;
    assert!(app.status.unwrap().replicas.is_some());
    let creds = services.get("creds").await.unwrap();
    assert_eq!(
        creds
            .status
            .unwrap()
            .terraform
            .unwrap()
            .plan
            .unwrap()
            .approved_by
            .as_deref(),
        Some("cli-owner")
    );
}

/// A terminal: a tmux session of its own, 150×40.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn start(name: &str, command: &str) -> Terminal {
        Self::sized(name, 150, command)
    }

    fn sized(name: &str, width: u16, command: &str) -> Terminal {
        let socket = format!("mahler-e2e-{name}-{}", std::process::id());
        let width = width.to_string();
        let status = Command::new("tmux")
            .args([
                "-L",
                &socket,
                "new-session",
                "-d",
                "-x",
                &width,
                "-y",
                "40",
                "-s",
                "t",
            ])
            .arg(format!("{command}; echo EXIT=$?; sleep 600"))
            .status()
            .expect("tmux");
        assert!(status.success());
        Terminal { socket }
    }

    /// The screen, with colour escapes (`capture-pane -e`).
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-e", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `text` (a terminal has no other signal).
    fn wait_for(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {text:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["-L", &self.socket, "send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(Command::new("tmux").args(&args).status().unwrap().success());
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The text of a line without its colour escapes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A shell command line running the CLI with the test's settings.
fn shell_line(cli: &Cli, args: &str) -> String {
    let mut line = format!(
        "env KUBECONFIG={} MAHLER_CONFIG={}",
        env().kubeconfig.display(),
        cli.config.display()
    );
    for (k, v) in &cli.envs {
        line.push_str(&format!(" {k}={v}"));
    }
    format!("{line} {} {args}", mahler_bin().display())
}

#[tokio::test]
async fn on_a_terminal_progress_confirmation_and_colour_are_what_a_person_sees() {
    let _g = shared().await;
    let client = env().client().await;
    cli_users_rbac();
    let ns = "clit-test";
    env().apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: clit}}\nspec: {{}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ns}}}\nspec: {{project: clit, owners: [{{user: cli-owner}}]}}\n"
    ));
    wait_for(
        &Api::<mahler_api::Environment>::all(client.clone()),
        ns,
        "Environment Ready",
        is_ready(super::env_conditions),
    )
    .await;
    let cli = Cli::new("terminal").with("MAHLER_ENV", ns);

    // deploy --wait: a spinner with the state, lines above it, colour.
    cli.run(&[
        "service",
        "create",
        "web",
        "--image",
        "registry.example/web:1",
        "--replicas",
        "3",
        "--wait",
    ])
    .ok();
    let term = Terminal::start(
        "deploy",
        &shell_line(&cli, "deploy web --image registry.example/web:2 --wait"),
    );
    let screen = term.wait_for("EXIT=", Duration::from_secs(90));
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(
        screen.contains("\u{1b}[32m"),
        "green Ready on a terminal:\n{screen}"
    );
    assert!(screen.contains("Service web: replicas: "), "{screen}");
    drop(term);
    // The spinner, caught while the rollout cannot finish.
    env().apply(&unschedulable(ns, "stuck"));
    let term = Terminal::start(
        "spinner",
        &shell_line(
            &cli,
            "deploy stuck --image registry.example/stuck:2 --wait --timeout 20s",
        ),
    );
    let screen = term.wait_for("s)", Duration::from_secs(30));
    assert!(
        screen
            .lines()
            .any(|l| l.contains("Service stuck") && l.trim_end().ends_with("s)")),
        "a spinner line with the elapsed time:\n{screen}"
    );
    drop(term);

    // Tables fit the terminal: status in 80 columns wraps its cells.
    let term = Terminal::sized("narrow", 80, &shell_line(&cli, "status"));
    let screen = term.wait_for("EXIT=", Duration::from_secs(20));
    assert!(
        screen.contains("services Ready") && screen.contains("EXIT=0"),
        "{screen}"
    );
    let widest = screen
        .lines()
        .map(|l| strip_ansi(l).chars().count())
        .max()
        .unwrap_or(0);
    assert!(widest <= 80, "a line of {widest} columns:\n{screen}");
    drop(term);

    // approve asks, and only "y" approves.
    cli.run(&[
        "service",
        "create",
        "creds",
        "--template",
        "postgres-credentials",
        "--input",
        "database=shop",
        "--manual-approval",
    ])
    .ok();
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let creds = wait_for(
        &services,
        "creds",
        "a plan awaiting approval",
        has_reason("AwaitingApproval", svc_conditions),
    )
    .await;
    let plan = creds.status.unwrap().terraform.unwrap().plan.unwrap();
    let term = Terminal::start(
        "approve-no",
        &shell_line(&cli, "approve creds --as cli-owner"),
    );
    term.wait_for("[y/N]", Duration::from_secs(20));
    term.keys(&["n", "Enter"]);
    let screen = term.wait_for("EXIT=", Duration::from_secs(20));
    assert!(
        screen.contains("Not approved.") && screen.contains("EXIT=1"),
        "{screen}"
    );
    drop(term);
    let term = Terminal::start(
        "approve-yes",
        &shell_line(&cli, "approve creds --as cli-owner"),
    );
    let screen = term.wait_for("[y/N]", Duration::from_secs(20));
    assert!(
        screen.contains(&format!("Approve plan {} as cli-owner? [y/N]", plan.id)),
        "{screen}"
    );
    assert!(
        screen.contains("\u{1b}[32m+ create"),
        "coloured actions:\n{screen}"
    );
    term.keys(&["y", "Enter"]);
    let screen = term.wait_for("EXIT=", Duration::from_secs(20));
    assert!(
        screen.contains("approved by cli-owner") && screen.contains("EXIT=0"),
        "{screen}"
    );
    drop(term);

    // logs -f follows new lines and ends cleanly on Ctrl-C.
    let pod = pods_of(&client, ns, "web").await.remove(0);
    let file = pod_logs(ns, &pod, &["first line"]);
    let term = Terminal::start("logs", &shell_line(&cli, "logs web -f"));
    term.wait_for("first line", Duration::from_secs(20));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    use std::io::Write;
    writeln!(f, "{} stdout F appended while following", jiff_now()).unwrap();
    drop(f);
    let screen = term.wait_for("appended while following", Duration::from_secs(20));
    assert!(
        screen.contains(&format!("\u{1b}[36m[{pod}]")),
        "a coloured pod prefix:\n{screen}"
    );
    term.keys(&["C-c"]);
    let screen = term.wait_for("EXIT=", Duration::from_secs(10));
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(!screen.contains("error"), "{screen}");
}
