//! `make bench` (BENCH=telemetry): environments' collectors, for
//! docs/benchmarks.md, against the bench's real cluster and the real
//! collector binary (tools/otelcol).
//!
//! 1. A telemetry change to the new collector pod template, measured from
//!    the Environment update (goal < 2 s), side by side with the floor: the
//!    same ConfigMap and pod-template change written directly.
//! 2. 100 environments with telemetry, resynced with nothing to do: the
//!    operator's writes and `otelcol validate` runs (goal 0 and 0).
//! 3. Render and `otelcol validate` of one config.

#[path = "common/mod.rs"]
mod common;
use common::{metrics, percentile, sum};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use mahler_api::names::{COLLECTOR_NAME, CONFIG_HASH_ANNOTATION, TELEMETRY_READY};
use mahler_api::{Environment, EnvironmentSpec, Project, ProjectSpec, TelemetrySpec};
use mahler_core::log_agent::{self, AGENT_NAME};
use mahler_core::telemetry;
use serde_json::json;

const ENVIRONMENTS: usize = 100;

fn spec(project: &str) -> EnvironmentSpec {
    EnvironmentSpec {
        project: project.into(),
        telemetry: Some(
            serde_json::from_value(
                json!({"exporter": {"otlp": {"endpoint": "otel.example:4317"}, "debug": {}}}),
            )
            .unwrap(),
        ),
        ..Default::default()
    }
}

fn telemetry_ready(e: &Environment) -> bool {
    e.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == TELEMETRY_READY
                && c.status == "True"
                && c.observed_generation == e.metadata.generation
        })
    })
}

/// Waits for the collector Deployment of `ns` to carry a config hash other
/// than `old`; the time since `started`.
async fn new_template(client: &Client, ns: &str, old: &str, started: Instant) -> Duration {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={COLLECTOR_NAME}"));
    let mut stream = watcher(api, config).applied_objects().boxed();
    while let Some(d) = stream.try_next().await.expect("watch") {
        if hash_of(&d).is_some_and(|h| h != old) {
            return started.elapsed();
        }
    }
    unreachable!("watch ended")
}

fn hash_of(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
}

#[tokio::main]
async fn main() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG: run `make bench`");
    let metrics_url = std::env::var("MAHLER_BENCH_METRICS").expect("run `make bench`");
    let otelcol = std::env::var("MAHLER_OTELCOL").expect("run `make bench`");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let project = "teleb";
    Api::<Project>::all(client.clone())
        .create(
            &PostParams::default(),
            &Project::new(project, ProjectSpec::default()),
        )
        .await
        .expect("project");
    let envs: Api<Environment> = Api::all(client.clone());
    let names: Vec<String> = (0..ENVIRONMENTS)
        .map(|i| format!("{project}-e{i:03}"))
        .collect();
    let started = Instant::now();
    for name in &names {
        envs.create(
            &PostParams::default(),
            &Environment::new(name, spec(project)),
        )
        .await
        .expect("environment");
    }
    // All collectors ready.
    let mut ready = std::collections::HashSet::new();
    let mut stream = watcher(envs.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    while ready.len() < ENVIRONMENTS {
        let e = stream
            .try_next()
            .await
            .expect("watch")
            .expect("watch ended");
        if e.name_any().starts_with(project) && telemetry_ready(&e) {
            ready.insert(e.name_any());
        }
    }
    drop(stream);
    println!(
        "{ENVIRONMENTS} environments with telemetry: every collector ready after {:?}",
        started.elapsed()
    );
    // The pod-log agent reads them all (hack/bench.sh turns it on).
    let agent_ns = std::env::var("MAHLER_LOG_AGENT_NAMESPACE").unwrap_or_else(|_| "default".into());
    let agent_configs: Api<ConfigMap> = Api::namespaced(client.clone(), &agent_ns);
    let agent_started = Instant::now();
    let agent_yaml = loop {
        let yaml = agent_configs
            .get_opt(AGENT_NAME)
            .await
            .expect("agent config")
            .and_then(|c| c.data?.remove("config.yaml"))
            .unwrap_or_default();
        if names
            .iter()
            .all(|n| yaml.contains(&format!("file_log/{n}:")))
        {
            println!(
                "the log agent reads all {ENVIRONMENTS} environments, {:?} later",
                agent_started.elapsed()
            );
            break yaml;
        }
        assert!(
            agent_started.elapsed() < Duration::from_secs(120),
            "the log agent does not read every environment"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // 2. Resync with nothing to do.
    let body = metrics(&metrics_url).await;
    let (writes0, validations0, reconciles0) = (
        sum(&body, "mahler_kube_writes_total"),
        sum(&body, "mahler_telemetry_validations_total"),
        sum(&body, "mahler_reconciles_total{kind=\"Environment\""),
    );
    let resync_started = Instant::now();
    loop {
        let body = metrics(&metrics_url).await;
        // Two full resyncs of every environment.
        if sum(&body, "mahler_reconciles_total{kind=\"Environment\"")
            >= reconciles0 + 2 * ENVIRONMENTS as u64
        {
            println!(
                "resync of {ENVIRONMENTS} environments with nothing to do ({} passes in {:?}): {} writes, {} otelcol validate runs",
                sum(&body, "mahler_reconciles_total{kind=\"Environment\"") - reconciles0,
                resync_started.elapsed(),
                sum(&body, "mahler_kube_writes_total") - writes0,
                sum(&body, "mahler_telemetry_validations_total") - validations0
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 1. Change → new pod template, against the same change written directly.
    let ns = &names[0];
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let raw_ns = &names[1];
    let raw_deployments: Api<Deployment> = Api::namespaced(client.clone(), raw_ns);
    let raw_config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), raw_ns);
    // The floor's objects: copies of a collector, not managed by Mahler.
    let mut raw_deploy = deployments.get(COLLECTOR_NAME).await.expect("collector");
    let mut raw_cm = config_maps.get(COLLECTOR_NAME).await.expect("config");
    for meta in [&mut raw_deploy.metadata, &mut raw_cm.metadata] {
        meta.name = Some("raw-collector".into());
        meta.namespace = Some(raw_ns.clone());
        meta.owner_references = None;
        meta.resource_version = None;
        meta.uid = None;
        meta.managed_fields = None;
        meta.labels = Some(BTreeMap::from([("bench".to_string(), "raw".to_string())]));
    }
    raw_deploy.status = None;
    raw_config_maps
        .create(&PostParams::default(), &raw_cm)
        .await
        .expect("raw config");
    raw_deployments
        .create(&PostParams::default(), &raw_deploy)
        .await
        .expect("raw deployment");
    let (mut mahler, mut raw) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let old = hash_of(&deployments.get(COLLECTOR_NAME).await.unwrap()).unwrap();
        let watch = {
            let client = client.clone();
            let ns = ns.clone();
            let started = Instant::now();
            tokio::spawn(async move { new_template(&client, &ns, &old, started).await })
        };
        let mut t: TelemetrySpec = spec(project).telemetry.unwrap();
        t.resource_attributes.insert("run".into(), i.to_string());
        envs.patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"telemetry": t}})),
        )
        .await
        .expect("patch");
        mahler.push(watch.await.unwrap());

        // The floor: the ConfigMap and the pod template's annotation, written
        // directly by a client that already knows the new config.
        let started = Instant::now();
        raw_config_maps
            .patch(
                "raw-collector",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"config.yaml": format!("# run {i}\n")}})),
            )
            .await
            .expect("raw cm");
        raw_deployments
            .patch(
                "raw-collector",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: format!("raw{i}")}}}}})),
            )
            .await
            .expect("raw deploy");
        raw.push(started.elapsed());
    }
    mahler.sort();
    raw.sort();
    println!(
        "telemetry change → new collector pod template, {runs} runs: Mahler p50 {:?} p99 {:?} (render, otelcol validate, ConfigMap, Deployment); the same two writes made directly p50 {:?} p99 {:?}",
        percentile(&mahler, 0.5),
        percentile(&mahler, 0.99),
        percentile(&raw, 0.5),
        percentile(&raw, 0.99)
    );

    // 3. Render and validate one config.
    let env = Environment::new(ns, spec(project));
    let t = env.spec.telemetry.clone().unwrap();
    let started = Instant::now();
    let mut yaml = String::new();
    for _ in 0..1000 {
        yaml = telemetry::config_yaml(&telemetry::render_config(&env, &t));
    }
    let render = started.elapsed() / 1000;
    let dir = tempfile::tempdir().unwrap();
    let validator =
        mahler_engine::otelcol::Validator::new(otelcol.clone().into(), dir.path().to_path_buf());
    let mut took = Vec::new();
    for _ in 0..runs {
        took.push(validator.validate(&yaml).await.expect("valid"));
    }
    took.sort();
    // Side by side: the same validate run from a shell-like plain spawn.
    let file = dir.path().join("plain.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let mut plain = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let status = std::process::Command::new(&otelcol)
            .arg("validate")
            .arg(format!("--config=file:{}", file.display()))
            .status()
            .unwrap();
        assert!(status.success());
        plain.push(started.elapsed());
    }
    plain.sort();
    println!(
        "render one config: {render:?}; otelcol validate through the operator's Validator p50 {:?} p99 {:?}, plain spawn p50 {:?}",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        percentile(&plain, 0.5)
    );

    // 4. The log agent's config for the 100 environments: render, validate.
    let all: Vec<Environment> = names
        .iter()
        .map(|n| Environment::new(n, spec(project)))
        .collect();
    let started = Instant::now();
    let mut rendered = String::new();
    for _ in 0..100 {
        let sources = log_agent::sources(&all, "cluster.local");
        rendered =
            telemetry::config_yaml(&log_agent::render_config(&sources, log_agent::POD_LOG_ROOT));
    }
    let render = started.elapsed() / 100;
    assert!(rendered.len() > 1000);
    let mut took = Vec::new();
    for _ in 0..runs.min(10) {
        // What the operator applied (it reads these 100 and any other).
        took.push(validator.validate(&agent_yaml).await.expect("valid"));
    }
    took.sort();
    println!(
        "log agent config for {ENVIRONMENTS} environments ({} bytes): render {render:?}, otelcol validate p50 {:?}",
        agent_yaml.len(),
        percentile(&took, 0.5)
    );
}
