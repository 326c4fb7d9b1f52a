//! The shared test cluster and operator.
//!
//! `hack/test.sh` starts one real cluster (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok) and sets MAHLER_TEST_DIR.
//! The first test to call [`env`] installs the CRDs and the operator's RBAC,
//! and starts the operator binary with the operator ServiceAccount's token,
//! so the tests exercise the shipped least-privilege ClusterRole.
//!
//! Tests isolate themselves by project name. Tests that restart the operator
//! or count its writes take [`exclusive`]; the rest take [`shared`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static ENV: OnceLock<TestEnv> = OnceLock::new();
static LOCK: RwLock<()> = RwLock::const_new(());

pub const OPERATOR_USER: &str = "system:serviceaccount:mahler-system:mahler-operator";

/// Whether `user` is an environment's OpenTofu identity.
pub fn is_terraform_user(user: &str) -> bool {
    user.starts_with("system:serviceaccount:") && user.ends_with(":mahler-terraform")
}

pub struct TestEnv {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub audit_log: PathBuf,
    pub tools: PathBuf,
    operator_kubeconfig: PathBuf,
    operator: Mutex<Option<Child>>,
    pub metrics_port: u16,
    pub consul: Consul,
}

/// The run's Consul agent (hack/consul.sh, started by hack/test.sh).
pub struct Consul {
    pub dir: PathBuf,
    pub address: String,
    /// The management token (the agent runs with ACLs, default deny).
    pub token: String,
    /// What the operator reads its token from (tests may swap it).
    pub token_file: PathBuf,
}

impl Consul {
    fn read(dir: &std::path::Path) -> Consul {
        let env = std::fs::read_to_string(dir.join("consul.env")).expect(
            "consul.env: run the end-to-end tests with `make test` (hack/test.sh starts Consul)",
        );
        let get = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{key} in consul.env"))
                .to_string()
        };
        Consul {
            dir: dir.to_path_buf(),
            address: get("CONSUL_HTTP_ADDR"),
            token: get("CONSUL_HTTP_TOKEN"),
            token_file: dir.join("consul-token"),
        }
    }

    /// A client with the management token.
    pub fn client(&self) -> mahler_consul::Client {
        let client = mahler_consul::Client::new(mahler_consul::Config {
            address: self.address.clone(),
            ..Default::default()
        })
        .expect("consul client");
        client.set_token(Some(self.token.clone()));
        client
    }

    /// Restarts the agent (dev mode: it comes back empty).
    pub fn restart(&self) {
        let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/consul.sh"))
            .args(["restart", self.dir.to_str().unwrap()])
            .output()
            .expect("hack/consul.sh");
        assert!(
            out.status.success(),
            "consul restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub async fn shared() -> RwLockReadGuard<'static, ()> {
    LOCK.read().await
}

pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    LOCK.write().await
}

pub fn env() -> &'static TestEnv {
    ENV.get_or_init(TestEnv::start)
}

impl TestEnv {
    fn start() -> TestEnv {
        let dir = PathBuf::from(std::env::var("MAHLER_TEST_DIR").expect("MAHLER_TEST_DIR is not set: run the end-to-end tests with `make test` (hack/test.sh starts the cluster)"));
        let tools = PathBuf::from(
            std::env::var("MAHLER_TOOLS_DIR")
                .expect("MAHLER_TOOLS_DIR is not set: run `make test`"),
        );
        let kubeconfig = dir.join("kubeconfig");
        let audit_log = std::fs::read_dir(dir.join("clusters"))
            .expect("cluster dir")
            .next()
            .expect("one cluster")
            .expect("entry")
            .path()
            .join("logs/audit.log");
        let kubectl = tools.join("kubectl");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let run = |args: &[&str]| kubectl_at(&kubectl, &kubeconfig, args, None);
        // Mahler installed the way users install it: the Helm chart with its
        // default values (CRDs, ServiceAccount, least-privilege RBAC,
        // admission policies, the Deployment, whose pods kwok simulates).
        // The operator under test runs beside the cluster with the chart's
        // ServiceAccount token, so every test exercises the chart's RBAC.
        let consul = Consul::read(&dir.join("consul"));
        let consul_address = format!("consul.address={}", consul.address);
        helm(
            &tools,
            &kubeconfig,
            &[
                "install",
                "mahler",
                root.join("charts/mahler").to_str().unwrap(),
                "--namespace",
                "mahler-system",
                "--create-namespace",
                // Consul on, as users turn it on (the operator under test
                // runs beside the cluster and reaches the test's agent).
                "--set",
                &consul_address,
                // The pod-log agent on, in the release's namespace.
                "--set",
                "telemetry.logs.enabled=true",
                "--wait",
                "--timeout=120s",
            ],
        );
        run(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "-l",
            "",
            "--all",
            "--timeout=60s",
        ]);
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        service_account_kubeconfig(
            &kubectl,
            &kubeconfig,
            "mahler-system",
            "mahler-operator",
            &operator_kubeconfig,
        );
        run(&[
            "apply",
            "-f",
            root.join("manifests/templates").to_str().unwrap(),
        ]);
        let metrics_port = free_port();
        let env = TestEnv {
            dir,
            kubeconfig,
            kubectl,
            audit_log,
            tools: tools.clone(),
            operator_kubeconfig,
            operator: Mutex::new(None),
            metrics_port,
            consul,
        };
        env.start_operator();
        env
    }

    /// Starts the operator process (leader election on, as the chart runs
    /// it; 2 s resync).
    pub fn start_operator(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("operator.log"))
            .expect("operator log");
        // MAHLER_E2E_OPERATOR: another build of the operator, to measure
        // it side by side with this one (docs/benchmarks.md, "Churn").
        let binary = std::env::var("MAHLER_E2E_OPERATOR")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_mahler-operator").into());
        let child = Command::new(binary)
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env(
                "MAHLER_METRICS_ADDR",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            // 2 s, so tests see drift repaired quickly; `make soak` runs the
            // operator's default (MAHLER_E2E_RESYNC_SECONDS=600).
            .env(
                "MAHLER_RESYNC_SECONDS",
                std::env::var("MAHLER_E2E_RESYNC_SECONDS").unwrap_or_else(|_| "2".into()),
            )
            .env("MAHLER_LEADER_ELECT", "true")
            // As the chart runs it: OpenTofu as each environment's own
            // ServiceAccount, bound to the chart's Terraform role.
            .env("MAHLER_TERRAFORM_ROLE", "mahler-terraform")
            .env("MAHLER_LEASE_SECONDS", "6")
            .env("POD_NAMESPACE", "mahler-system")
            .env("RUST_LOG", "info,mahler=debug,kube=warn")
            .env("MAHLER_TOFU", self.tools.join("tofu"))
            .env("MAHLER_OTELCOL", self.tools.join("otelcol"))
            .env("MAHLER_COLLECTOR_ROLE", "mahler-collector")
            .env("MAHLER_LOG_AGENT_NAMESPACE", "mahler-system")
            // Its own traces, to the run's sink collector (hack/test.sh).
            .env(
                "MAHLER_OTLP_ENDPOINT",
                std::env::var("MAHLER_TRACES_ENDPOINT").unwrap_or_default(),
            )
            .env(
                "MAHLER_PROVIDER_MIRROR",
                std::env::var("MAHLER_PROVIDER_MIRROR")
                    .expect("MAHLER_PROVIDER_MIRROR is not set: run `make test`"),
            )
            .env("MAHLER_TOFU_WORKDIR", self.dir.join("tofu"))
            .env("MAHLER_CONSUL_ADDRESS", &self.consul.address)
            .env("MAHLER_CONSUL_TOKEN_FILE", &self.consul.token_file)
            .env("MAHLER_CONSUL_NODE", "mahler-e2e")
            .env("MAHLER_CONSUL_RESYNC_SECONDS", "5")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mahler-operator");
        std::fs::write(self.dir.join("operator.pid"), child.id().to_string()).expect("pid file");
        *self.operator.lock().unwrap() = Some(child);
    }

    /// The running operator's process id.
    pub fn operator_pid(&self) -> u32 {
        self.operator
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
            .expect("the operator is running")
    }

    /// Kills the operator with SIGKILL (no graceful shutdown, no Lease release).
    pub fn kill_operator(&self) {
        if let Some(mut child) = self.operator.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        kubectl_at(&self.kubectl, &self.kubeconfig, args, None)
    }

    /// kubectl as another user (impersonation); returns (success, stderr).
    pub fn kubectl_as(&self, user: &str, args: &[&str]) -> (bool, String) {
        let mut all = vec!["--as", user];
        all.extend_from_slice(args);
        let out = kubectl_output(&self.kubectl, &self.kubeconfig, &all, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn apply(&self, yaml: &str) -> String {
        kubectl_at(
            &self.kubectl,
            &self.kubeconfig,
            &["apply", "-f", "-"],
            Some(yaml),
        )
    }

    /// `kubectl apply` that is expected to fail; returns its stderr.
    pub fn apply_rejected(&self, yaml: &str) -> String {
        let out = kubectl_output(
            &self.kubectl,
            &self.kubeconfig,
            &["apply", "-f", "-"],
            Some(yaml),
        );
        assert!(
            !out.status.success(),
            "expected kubectl apply to be rejected:\n{yaml}"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub async fn client(&self) -> Client {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("client config");
        Client::try_from(config).expect("client")
    }

    /// Lines of the API server audit log written by the operator.
    pub fn operator_writes(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"] == OPERATOR_USER)
            .filter(|e| {
                matches!(
                    e["verb"].as_str(),
                    Some("create" | "update" | "patch" | "delete" | "deletecollection")
                )
            })
            .filter(|e| e["objectRef"]["resource"] != "leases")
            .collect()
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits until the operator has run `n` more Service reconciles (resyncs
    /// come every 2 s in tests): a readiness signal, not a sleep.
    pub async fn service_reconciles(&self, n: f64) {
        let series = r#"mahler_reconciles_total{kind="Service",result="ok"}"#;
        let target = self.metric(series) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.metric(series) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "the operator stopped reconciling"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args([
                "-sf",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A copy of `kubeconfig` whose current user is ServiceAccount `name` of
/// `namespace`, with a 12 h token.
pub fn service_account_kubeconfig(
    kubectl: &Path,
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    out: &Path,
) {
    let token = kubectl_at(
        kubectl,
        kubeconfig,
        &["create", "token", name, "-n", namespace, "--duration=12h"],
        None,
    );
    std::fs::copy(kubeconfig, out).expect("copy kubeconfig");
    let credentials = format!("--token={}", token.trim());
    let user = format!("--user={name}");
    kubectl_at(
        kubectl,
        out,
        &["config", "set-credentials", name, &credentials],
        None,
    );
    kubectl_at(
        kubectl,
        out,
        &["config", "set-context", "--current", &user],
        None,
    );
}

/// Multi-document YAML as JSON values, empty documents dropped.
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).expect("valid YAML");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

pub fn kubectl_output(
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl output")
}

fn kubectl_at(kubectl: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut out = kubectl_output(kubectl, kubeconfig, args, stdin);
    // Two tests applying the same shared object (the example Project) at
    // once: client-side apply GETs, finds nothing, and one of the two
    // creates loses with AlreadyExists. Applying again then patches it.
    if args.first() == Some(&"apply")
        && !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("(AlreadyExists)")
    {
        out = kubectl_output(kubectl, kubeconfig, args, stdin);
    }
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the suite's helm (built by hack/tools.sh) against the test cluster.
pub fn helm(tools: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let out = helm_output(tools, kubeconfig, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn helm_output(tools: &Path, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(tools.join("helm"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        // Keep helm's caches and config out of the user's home.
        .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm/cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm/config"))
        .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm/data"))
        .output()
        .expect("run helm")
}

/// A binary of a workspace package, built (`cargo build -p PACKAGE --bins`)
/// and located through cargo's JSON messages.
pub fn built_binary(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // The variables cargo sets for a test (CARGO_PKG_NAME, OUT_DIR...)
    // would make build scripts (ring's) rerun and rebuild the client
    // stack that hack/test.sh has just built.
    for (k, _) in std::env::vars() {
        let keep = matches!(k.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR")
            || k.starts_with("CARGO_BUILD_");
        if (k.starts_with("CARGO_") && !keep) || k == "OUT_DIR" {
            build.env_remove(&k);
        }
    }
    let out = build
        .args([
            "build",
            "-q",
            "-p",
            package,
            "--bins",
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cargo build -p {package}: {e}"));
    assert!(out.status.success(), "building {package} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .find(|p| p.file_name().is_some_and(|n| n == bin))
        .unwrap_or_else(|| panic!("no executable {bin} in {package}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (event-driven, no polling sleeps) until `cond` holds for the object.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Condition<K>) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), name, cond),
    )
    .await
    {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name}: deleted while waiting for {what}"),
        Ok(Err(e)) => panic!("{name}: watch failed while waiting for {what}: {e}"),
        Err(_) => {
            let current = api.get_opt(name).await.ok().flatten();
            panic!("{name}: timed out waiting for {what}; current object: {current:#?}")
        }
    }
}

/// Waits until the object is gone.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let gone_any = await_condition(api.clone(), name, |obj: Option<&K>| obj.is_none());
    if tokio::time::timeout(Duration::from_secs(90), gone_any)
        .await
        .is_err()
    {
        let current = api.get_opt(name).await.ok().flatten();
        panic!("{name}: not deleted within 90s; current object: {current:#?}");
    }
}

/// The kstatus Ready condition is True for the current generation.
pub fn is_ready<K: Resource>(
    status_of: impl Fn(&K) -> Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> impl Condition<K> {
    move |obj: Option<&K>| {
        obj.is_some_and(|o| {
            status_of(o).is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "Ready"
                        && c.status == "True"
                        && c.observed_generation == o.meta().generation
                })
            })
        })
    }
}

/// The Ready condition is False with this reason.
pub fn has_reason<K: Resource>(
    reason: &'static str,
    status_of: impl Fn(&K) -> Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> impl Condition<K> {
    move |obj: Option<&K>| {
        obj.is_some_and(|o| {
            status_of(o).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == reason)
            })
        })
    }
}

/// The condition `type_` has `status` (any generation).
pub fn condition_is<K: Resource>(
    type_: &'static str,
    status: &'static str,
    status_of: impl Fn(&K) -> Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> impl Condition<K> {
    move |obj: Option<&K>| {
        obj.is_some_and(|o| {
            status_of(o).is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == status))
        })
    }
}
