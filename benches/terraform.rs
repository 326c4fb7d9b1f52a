//! `make bench` (second part): the Terraform engine's figures for
//! docs/benchmarks.md, against the real cluster, real OpenTofu and the
//! release operator that hack/bench.sh starts.
//!
//! 1. Mahler-driven apply vs raw `tofu init && tofu apply` of the same module
//!    (same OpenTofu, providers, plugin cache and Kubernetes backend), runs
//!    interleaved: median of each and the ratio. Mahler's time is kubectl
//!    apply → Service Ready (its init, plan, apply of the saved plan,
//!    outputs, Secret and status included).
//! 2. N template Services applied, then no-op resyncs: tofu processes
//!    started (goal 0) and the time a template reconcile takes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::PostParams;
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use mahler_api::{
    Environment, EnvironmentSpec, Project, ProjectSpec, ResourceTemplate, Service, ServiceSpec,
    Source, TemplateSource,
};

const MODULE: &str = r#"
terraform {
  required_providers {
    random     = { source = "hashicorp/random" }
    kubernetes = { source = "hashicorp/kubernetes" }
  }
}
variable "mahler_namespace" { type = string }
variable "mahler_service" { type = string }
variable "name" { type = string }
resource "random_password" "p" {
  length  = 24
  special = false
}
resource "kubernetes_secret_v1" "s" {
  metadata {
    name      = "${var.mahler_service}-bench"
    namespace = var.mahler_namespace
  }
  data = { password = random_password.p.result, name = var.name }
}
output "secret" { value = kubernetes_secret_v1.s.metadata[0].name }
"#;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make bench`"))
}

fn ready(s: &Service) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.status == "True"
                && c.observed_generation == s.metadata.generation
        })
    })
}

async fn environment(client: &Client, project: &str) -> String {
    let ns = format!("{project}-bench");
    let _ = Api::<Project>::all(client.clone())
        .create(
            &PostParams::default(),
            &Project::new(project, ProjectSpec::default()),
        )
        .await;
    let _ = Api::<Environment>::all(client.clone())
        .create(
            &PostParams::default(),
            &Environment::new(
                &ns,
                EnvironmentSpec {
                    project: project.into(),
                    ..Default::default()
                },
            ),
        )
        .await;
    await_condition(
        Api::<Environment>::all(client.clone()),
        &ns,
        |e: Option<&Environment>| {
            e.is_some_and(|e| e.status.as_ref().is_some_and(|s| s.namespace.is_some()))
        },
    )
    .await
    .expect("environment");
    ns
}

fn template_service(ns: &str, name: &str, template: &str) -> Service {
    let mut s = Service::new(
        name,
        ServiceSpec {
            source: Source {
                template: Some(Box::new(TemplateSource {
                    name: template.into(),
                    inputs: Some(
                        serde_json::json!({"name": name})
                            .as_object()
                            .unwrap()
                            .clone(),
                    ),
                    ..Default::default()
                })),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    s.metadata.namespace = Some(ns.into());
    s
}

/// Raw OpenTofu: a fresh directory with the same module, inputs and backend.
async fn raw_apply(tofu: &Path, cli_config: &Path, work: &Path, ns: &str, name: &str) -> Duration {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.tf"), MODULE).unwrap();
    std::fs::write(
        dir.join("terraform.tfvars.json"),
        serde_json::json!({"name": name}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("backend.tf.json"),
        serde_json::json!({"terraform": {"backend": {"kubernetes": {"namespace": ns, "secret_suffix": name}}}})
            .to_string(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new(tofu)
            .args(args)
            .current_dir(&dir)
            .env("TF_CLI_CONFIG_FILE", cli_config)
            .env("TF_IN_AUTOMATION", "1")
            .env("KUBE_CONFIG_PATH", env("KUBECONFIG"))
            .env("TF_VAR_mahler_namespace", ns)
            .env("TF_VAR_mahler_service", name)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "tofu {args:?} failed in {}",
            dir.display()
        );
    };
    let started = Instant::now();
    run(&["init", "-input=false"]);
    run(&["apply", "-auto-approve", "-input=false"]);
    started.elapsed()
}

async fn mahler_apply(client: &Client, ns: &str, name: &str) -> Duration {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    api.create(
        &PostParams::default(),
        &template_service(ns, name, "bench-secret"),
    )
    .await
    .unwrap();
    await_condition(api, name, |s: Option<&Service>| s.is_some_and(ready))
        .await
        .unwrap();
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn metric(url: &str, series: &str) -> f64 {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", url])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG: run `make bench`");
    let tofu = PathBuf::from(env("MAHLER_TOFU"));
    let workdir = PathBuf::from(env("MAHLER_TOFU_WORKDIR"));
    let metrics = env("MAHLER_BENCH_METRICS");
    let runs: usize = std::env::var("BENCH_TF_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let n: usize = std::env::var("BENCH_TF_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);

    let mut template = ResourceTemplate::new("bench-secret", Default::default());
    template.spec.module.files = Some([("main.tf".to_string(), MODULE.to_string())].into());
    template.spec.outputs = vec![mahler_api::TemplateOutput {
        name: "secret".into(),
        ..Default::default()
    }];
    Api::<ResourceTemplate>::all(client.clone())
        .create(&PostParams::default(), &template)
        .await
        .unwrap();

    // 1. Ratio, interleaved so both see the same machine. The operator's CLI
    // config (mirror + plugin cache) is reused by the raw runs.
    let ns = environment(&client, "tfratio").await;
    let raw_dir = tempfile::tempdir().unwrap();
    let cli_config = workdir.join("tofu.tfrc");
    // One warm-up of each (plugin cache, API server caches).
    mahler_apply(&client, &ns, "warm").await;
    raw_apply(&tofu, &cli_config, raw_dir.path(), &ns, "rawwarm").await;
    let (mut raw, mut mahler) = (Vec::new(), Vec::new());
    for i in 0..runs {
        raw.push(raw_apply(&tofu, &cli_config, raw_dir.path(), &ns, &format!("raw{i}")).await);
        mahler.push(mahler_apply(&client, &ns, &format!("m{i}")).await);
    }
    let (r, m) = (median(raw.clone()), median(mahler.clone()));
    println!(
        "tofu apply, {runs} runs each: raw `tofu init && tofu apply` median {:.0} ms; Mahler apply → Ready median {:.0} ms; ratio {:.2}×",
        r.as_secs_f64() * 1000.0,
        m.as_secs_f64() * 1000.0,
        m.as_secs_f64() / r.as_secs_f64()
    );
    println!(
        "  raw ms: {:?}",
        raw.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    println!(
        "  mahler ms: {:?}",
        mahler.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );

    // 2. N template Services, then no-op resyncs.
    let ns = environment(&client, "tfnoop").await;
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            let ns = ns.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &template_service(&ns, &format!("t{i}"), "bench-secret"),
                )
                .await
                .unwrap();
            }
        })
        .await;
    for i in 0..n {
        await_condition(api.clone(), &format!("t{i}"), |s: Option<&Service>| {
            s.is_some_and(ready)
        })
        .await
        .unwrap();
    }
    println!(
        "{n} template Services applied (each a real tofu init + apply) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let resync = Duration::from_secs(
        std::env::var("MAHLER_RESYNC_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let ok = r#"mahler_reconciles_total{kind="Service",result="ok"}"#;
    let processes = "mahler_tofu_processes_total";
    let sum = r#"mahler_reconcile_duration_seconds_sum{kind="Service"}"#;
    let count = r#"mahler_reconcile_duration_seconds_count{kind="Service"}"#;
    // Let the last status writes land, then watch two full resync rounds.
    tokio::time::sleep(resync).await;
    let (p0, r0, s0, c0) = (
        metric(&metrics, processes).await,
        metric(&metrics, ok).await,
        metric(&metrics, sum).await,
        metric(&metrics, count).await,
    );
    let window = Instant::now();
    while metric(&metrics, ok).await < r0 + 2.0 * n as f64 {
        assert!(
            window.elapsed() < Duration::from_secs(600),
            "resyncs stalled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (p1, r1, s1, c1) = (
        metric(&metrics, processes).await,
        metric(&metrics, ok).await,
        metric(&metrics, sum).await,
        metric(&metrics, count).await,
    );
    println!(
        "no-op resync of {n} template Services: {} reconciles in {:.1} s, tofu processes started: {}, mean reconcile {:.3} ms",
        r1 - r0,
        window.elapsed().as_secs_f64(),
        p1 - p0,
        (s1 - s0) / (c1 - c0).max(1.0) * 1000.0
    );
}
