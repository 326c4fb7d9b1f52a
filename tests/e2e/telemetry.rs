//! Telemetry (docs/telemetry.md) against the real cluster and the real
//! collector (tools/otelcol): a collector per environment, rolled out once
//! per real change and never for an invalid one; `OTEL_*` on Services'
//! pods; every documented setting accepted by `otelcol validate`; and a
//! collector started from a rendered config forwarding traces, metrics and
//! logs with Mahler's resource attributes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Event, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::runtime::wait::Condition as _;
use kube::{Api, ResourceExt};
use mahler_api::names::{COLLECTOR_NAME, CONFIG_HASH_ANNOTATION, TELEMETRY_READY};
use mahler_api::{Environment, EnvironmentSpec, TelemetrySpec};
use mahler_core::log_agent::{self, AGENT_NAME};
use mahler_core::telemetry;
use mahler_engine::otelcol::{ValidateError, Validator};

use super::harness::{env, free_port, is_ready, shared, wait_deleted, wait_for};
use super::{env_conditions, first_container, pod_env, service_yaml};

fn environment_yaml(ns: &str, project: &str, telemetry: &str) -> String {
    format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ns}}}\nspec:\n  project: {project}\n{telemetry}"
    )
}

/// `TelemetryReady` is `status` with `reason` for the current generation,
/// and its message contains `text`.
fn telemetry_is(
    status: &'static str,
    reason: &'static str,
    text: String,
) -> impl Fn(Option<&Environment>) -> bool {
    move |e: Option<&Environment>| {
        e.is_some_and(|e| {
            env_conditions(e).is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == TELEMETRY_READY
                        && c.status == status
                        && c.reason == reason
                        && c.observed_generation == e.metadata.generation
                        && c.message.contains(&text)
                })
            })
        })
    }
}

fn config_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

fn generation(d: &Deployment) -> i64 {
    d.metadata.generation.unwrap()
}

#[tokio::test]
async fn collector_rolls_out_each_real_change_once_and_never_an_invalid_one() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let (p, ns) = ("tel", "tel-test");
    let envs = Api::<Environment>::all(client.clone());
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let otlp = "  telemetry:\n    exporter:\n      otlp: {endpoint: \"otel.example:4317\"}\n      debug: {}\n";
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: {p}}}\nspec: {{displayName: {p}}}\n---\n{}",
        environment_yaml(ns, p, otlp)
    ));
    let e = wait_for(
        &envs,
        ns,
        "collector ready",
        telemetry_is("True", "CollectorReady", String::new()),
    )
    .await;
    assert!(
        is_ready(env_conditions).matches_object(Some(&e)),
        "the environment itself is Ready"
    );
    let d = deployments.get(COLLECTOR_NAME).await.unwrap();
    let (hash1, gen1) = (config_hash(&d), generation(&d));
    let cm = config_maps.get(COLLECTOR_NAME).await.unwrap();
    let yaml = &cm.data.as_ref().unwrap()["config.yaml"];
    assert_eq!(
        telemetry::config_hash(yaml),
        hash1,
        "the pods carry the digest of the ConfigMap's config"
    );
    assert!(
        yaml.contains("otlp_grpc/upstream") && yaml.contains("mahler.environment"),
        "{yaml}"
    );
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get(COLLECTOR_NAME)
        .await
        .unwrap();
    // Its hole in the default-deny policy: OTLP from the namespace and from
    // the log agent's pods.
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    let policy = policies.get(COLLECTOR_NAME).await.unwrap();
    let rules = policy.spec.unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");

    // Its pod logs: the node agent (a DaemonSet in the agent's namespace,
    // mahler-system here) reads this namespace's log files and sends them to
    // this collector. This test's environment is the suite's only one with
    // telemetry in the cluster, so its removal below removes the agent.
    assert!(
        env_conditions(&e)
            .unwrap()
            .iter()
            .any(|c| c.type_ == TELEMETRY_READY
                && c.message.contains(
                    "pod logs are read by the node agent mahler-system/mahler-log-agent"
                )),
        "{:?}",
        env_conditions(&e)
    );
    let agents = Api::<DaemonSet>::namespaced(client.clone(), "mahler-system");
    let agent_configs = Api::<ConfigMap>::namespaced(client.clone(), "mahler-system");
    let agent = wait_for(
        &agents,
        AGENT_NAME,
        "the log agent",
        |d: Option<&DaemonSet>| d.is_some(),
    )
    .await;
    let agent_yaml =
        agent_configs.get(AGENT_NAME).await.unwrap().data.unwrap()["config.yaml"].clone();
    assert!(
        agent_yaml.contains(&format!("file_log/{ns}"))
            && agent_yaml.contains(&format!("/var/log/pods/{ns}_*/*/*.log"))
            && agent_yaml.contains(&format!("{COLLECTOR_NAME}.{ns}.svc.cluster.local:4317")),
        "{agent_yaml}"
    );
    let template = agent
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap();
    assert_eq!(
        template.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION],
        telemetry::config_hash(&agent_yaml),
        "the agent's pods carry the digest of its config"
    );
    let agent_gen = agent.metadata.generation;

    // Services get OTEL_*; one opting out does not.
    env.apply(&service_yaml(
        ns,
        "api",
        "registry.example/tel/api:1.2.3",
        "[{name: http, port: 8080}]",
    ));
    env.apply(&format!(
        "{}  telemetry: {{inject: false}}\n",
        service_yaml(ns, "quiet", "registry.example/tel/quiet:1", "[]")
    ));
    let api = wait_for(
        &deployments,
        "api",
        "OTEL variables",
        |d: Option<&Deployment>| d.is_some_and(|d| pod_env(d).contains_key("OTEL_SERVICE_NAME")),
    )
    .await;
    let vars = pod_env(&api);
    assert_eq!(
        vars["OTEL_EXPORTER_OTLP_ENDPOINT"],
        format!("http://mahler-collector.{ns}.svc.cluster.local:4317")
    );
    assert_eq!(vars["OTEL_SERVICE_NAME"], "api");
    assert_eq!(
        vars["OTEL_RESOURCE_ATTRIBUTES"],
        format!(
            "mahler.project={p},mahler.environment={ns},mahler.service=api,service.namespace={ns},service.version=1.2.3"
        )
    );
    let quiet = wait_for(
        &deployments,
        "quiet",
        "deployment",
        |d: Option<&Deployment>| d.is_some(),
    )
    .await;
    assert!(
        !pod_env(&quiet).keys().any(|k| k.starts_with("OTEL_")),
        "{:?}",
        pod_env(&quiet)
    );
    let api_gen = generation(&api);

    // A change to the Environment that is not telemetry: no rollout, no
    // write to the collector's config.
    let cm_version = cm.resource_version();
    env.apply(&environment_yaml(
        ns,
        p,
        &format!("  deletionPolicy: Retain\n{otlp}"),
    ));
    wait_for(
        &envs,
        ns,
        "the pass of the new generation",
        telemetry_is("True", "CollectorReady", hash1.clone()),
    )
    .await;
    let d = deployments.get(COLLECTOR_NAME).await.unwrap();
    assert_eq!(generation(&d), gen1, "no change, no rollout");
    assert_eq!(
        agents.get(AGENT_NAME).await.unwrap().metadata.generation,
        agent_gen,
        "no change, no log agent rollout"
    );
    assert_eq!(
        config_maps
            .get(COLLECTOR_NAME)
            .await
            .unwrap()
            .resource_version(),
        cm_version
    );

    // A real change: exactly one rollout, to the new config.
    let changed =
        format!("  deletionPolicy: Retain\n{otlp}    resourceAttributes: {{team: payments}}\n");
    env.apply(&environment_yaml(ns, p, &changed));
    let e = wait_for(&envs, ns, "the new config", |e: Option<&Environment>| {
        telemetry_is("True", "CollectorReady", String::new())(e)
            && e.is_some_and(|e| {
                !env_conditions(e)
                    .unwrap()
                    .iter()
                    .any(|c| c.message.contains(&hash1))
            })
    })
    .await;
    let d = deployments.get(COLLECTOR_NAME).await.unwrap();
    let hash2 = config_hash(&d);
    assert_ne!(hash2, hash1);
    assert_eq!(generation(&d), gen1 + 1, "one change, one rollout");
    assert!(format!("{:?}", e.status).contains(&hash2));
    assert!(
        config_maps.get(COLLECTOR_NAME).await.unwrap().data.unwrap()["config.yaml"]
            .contains("payments")
    );
    // The Services' variables depend on the collector's address only.
    assert_eq!(generation(&deployments.get("api").await.unwrap()), api_gen);

    // Invalid changes: a condition naming the field, a Warning Event, and
    // the running collector untouched.
    let with_header = |endpoint: &str| {
        format!(
            "  deletionPolicy: Retain\n  telemetry:\n    resourceAttributes: {{team: payments}}\n    exporter:\n      debug: {{}}\n      otlp:\n        endpoint: \"{endpoint}\"\n        headers: [{{name: x-api-key, secretKeyRef: {{name: otel-key, key: key}}}}]\n"
        )
    };
    env.apply(&environment_yaml(ns, p, &with_header("otel.example:4317")));
    wait_for(
        &envs,
        ns,
        "SecretNotFound",
        telemetry_is(
            "False",
            "SecretNotFound",
            "spec.telemetry.exporter.otlp.headers[0].secretKeyRef: Secret otel-key does not exist"
                .into(),
        ),
    )
    .await;
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: otel-key, namespace: {ns}}}\nstringData: {{other: x}}\n"
    ));
    // The Secret is not watched: the next change (or resync) checks again.
    env.apply(&environment_yaml(ns, p, &with_header("otel example:4317")));
    wait_for(
        &envs,
        ns,
        "InvalidEndpoint",
        telemetry_is(
            "False",
            "InvalidEndpoint",
            "spec.telemetry.exporter.otlp.endpoint: \"otel example:4317\" is not a valid endpoint"
                .into(),
        ),
    )
    .await;
    env.apply(&environment_yaml(ns, p, &with_header("otel.example:4317")));
    wait_for(
        &envs,
        ns,
        "SecretKeyNotFound",
        telemetry_is(
            "False",
            "SecretKeyNotFound",
            "Secret otel-key has no key key".into(),
        ),
    )
    .await;
    let d = deployments.get(COLLECTOR_NAME).await.unwrap();
    assert_eq!(
        (config_hash(&d), generation(&d)),
        (hash2.clone(), gen1 + 1),
        "invalid changes roll nothing out"
    );
    let events = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={ns}")))
        .await
        .unwrap();
    for reason in ["SecretNotFound", "InvalidEndpoint", "SecretKeyNotFound"] {
        assert!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")),
            "a Warning Event {reason}: {:?}",
            events.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
        );
    }
    // Fixed: one more rollout, the header from the Secret. The final
    // settings go in while the key is still missing, so the Secret's fix
    // (picked up at the next resync: Secrets are not watched) is the one
    // change that rolls out.
    let fixed = format!(
        "{}    sampling: {{percentage: 20}}\n",
        with_header("otel.example:4317")
    );
    env.apply(&environment_yaml(ns, p, &fixed));
    wait_for(
        &envs,
        ns,
        "SecretKeyNotFound (final settings)",
        telemetry_is(
            "False",
            "SecretKeyNotFound",
            "Secret otel-key has no key key".into(),
        ),
    )
    .await;
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: otel-key, namespace: {ns}}}\nstringData: {{key: s3cret}}\n"
    ));
    wait_for(
        &envs,
        ns,
        "the fixed config",
        telemetry_is("True", "CollectorReady", String::new()),
    )
    .await;
    let d = deployments.get(COLLECTOR_NAME).await.unwrap();
    assert_eq!(generation(&d), gen1 + 2);
    let container = first_container(&d);
    let header = &container.env.as_ref().unwrap()[0];
    assert_eq!(header.name, "MAHLER_OTLP_HEADER_0");
    assert_eq!(
        header
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "otel-key"
    );

    // Telemetry off: the collector goes, and so do the variables.
    env.apply(&environment_yaml(ns, p, "  deletionPolicy: Retain\n"));
    wait_deleted(&deployments, COLLECTOR_NAME).await;
    wait_deleted(&config_maps, COLLECTOR_NAME).await;
    wait_deleted(&policies, COLLECTOR_NAME).await;
    // No environment left whose logs are collected: the agent goes.
    wait_deleted(&agents, AGENT_NAME).await;
    wait_deleted(&agent_configs, AGENT_NAME).await;
    wait_deleted(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        COLLECTOR_NAME,
    )
    .await;
    wait_for(
        &deployments,
        "api",
        "no OTEL variables",
        |d: Option<&Deployment>| d.is_some_and(|d| !pod_env(d).contains_key("OTEL_SERVICE_NAME")),
    )
    .await;
    wait_for(
        &envs,
        ns,
        "no TelemetryReady condition",
        |e: Option<&Environment>| {
            e.and_then(env_conditions)
                .is_some_and(|cs| !cs.iter().any(|c| c.type_ == TELEMETRY_READY))
        },
    )
    .await;
}

#[tokio::test]
async fn unknown_exporters_are_refused_by_the_api_server() {
    let _guard = shared().await;
    let out = env().apply_rejected(&environment_yaml(
        "telx-test",
        "telx",
        "  telemetry:\n    exporter:\n      zipkin: {endpoint: \"http://zipkin:9411\"}\n",
    ));
    assert!(
        out.contains("spec.telemetry.exporter.zipkin") || out.contains("unknown field"),
        "{out}"
    );
}

/// Every documented setting, as one Environment each.
fn documented_settings() -> Vec<TelemetrySpec> {
    let yaml = [
        "exporter: {otlp: {endpoint: \"otel.example:4317\"}}",
        "exporter: {otlp: {endpoint: \"https://otel.example:4317\", protocol: grpc}}",
        "exporter: {otlp: {endpoint: \"https://otel.example/otlp\", protocol: http}}",
        "exporter: {otlp: {endpoint: \"otel.example:4317\", headers: [{name: x-api-key, secretKeyRef: {name: s, key: k}}, {name: authorization, secretKeyRef: {name: s, key: a}}]}}",
        "exporter: {otlp: {endpoint: \"otel.example:4317\", tls: {insecure: true}}}",
        "exporter: {otlp: {endpoint: \"otel.example:4317\", tls: {insecureSkipVerify: true}}}",
        "exporter: {otlp: {endpoint: \"otel.example:4317\", tls: {ca: {name: ca, key: ca.crt}}}}",
        "exporter: {prometheus: {}}",
        "exporter: {prometheus: {port: 9464}}",
        "exporter: {debug: {}}",
        "exporter: {debug: {verbosity: detailed}}",
        "exporter: {debug: {verbosity: normal}, prometheus: {}}",
        "{exporter: {otlp: {endpoint: \"otel.example:4317\"}}, sampling: {percentage: 12.5}}",
        "{exporter: {otlp: {endpoint: \"otel.example:4317\"}}, sampling: {percentage: 0}}",
        "{exporter: {otlp: {endpoint: \"otel.example:4317\"}}, resourceAttributes: {team: payments, deployment.region: eu-1, odd: \"${env:HOME}\"}}",
        "{exporter: {debug: {}}, collector: {replicas: 2, resources: {limits: {memory: 1Gi}}}}",
    ];
    yaml.iter()
        .map(|y| serde_yaml::from_str(y).unwrap_or_else(|e| panic!("{y}: {e}")))
        .collect()
}

fn environment(t: &TelemetrySpec) -> Environment {
    let mut e = Environment::new(
        "tel-test",
        EnvironmentSpec {
            project: "tel".into(),
            telemetry: Some(t.clone()),
            ..Default::default()
        },
    );
    e.metadata.uid = Some("uid".into());
    e
}

#[tokio::test]
async fn every_documented_setting_renders_a_config_otelcol_validate_accepts() {
    let tools = env().tools.clone();
    let dir = tempfile::tempdir().unwrap();
    let validator = Validator::new(tools.join("otelcol"), dir.path().to_path_buf());
    for t in documented_settings() {
        telemetry::check(&t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        let yaml = telemetry::config_yaml(&telemetry::render_config(&environment(&t), &t));
        if let Err(e) = validator.validate(&yaml).await {
            panic!("otelcol rejected the config of {t:?}: {e}\n{yaml}");
        }
    }
    // And it does reject: an unknown key, with the collector's own message.
    let yaml = telemetry::config_yaml(&telemetry::render_config(
        &environment(&documented_settings()[0]),
        &documented_settings()[0],
    ))
    .replace(
        "endpoint: otel.example:4317",
        "endpointz: otel.example:4317",
    );
    match validator.validate(&yaml).await {
        Err(ValidateError::Rejected(why)) => {
            assert!(why.contains("invalid keys: endpointz"), "{why}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A collector process, killed when dropped.
struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_collector(tools: &Path, config: &Path, log: &Path, kubeconfig: &Path) -> Collector {
    let log = std::fs::File::create(log).unwrap();
    Collector(
        Command::new(tools.join("otelcol"))
            .arg(format!("--config=file:{}", config.display()))
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start otelcol"),
    )
}

/// Writes `yaml` to `<dir>/<name>.yaml`, starts a collector on it (logging
/// to `<dir>/<name>.log`) and waits for its health_check on `health`.
async fn run_collector(dir: &Path, name: &str, yaml: &str, health: u16) -> Collector {
    let (config, log) = (
        dir.join(format!("{name}.yaml")),
        dir.join(format!("{name}.log")),
    );
    std::fs::write(&config, yaml).unwrap();
    let test_env = env();
    let c = start_collector(&test_env.tools, &config, &log, &test_env.kubeconfig);
    until_healthy(&format!("http://127.0.0.1:{health}/"), &log).await;
    c
}

/// Waits until `url` answers 200 (the health_check extension).
async fn until_healthy(url: &str, log: &Path) {
    for _ in 0..300 {
        let ok = Command::new("curl")
            .args(["-sf", url])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "collector at {url} not healthy: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn post(url: &str, body: &serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(body.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "POST {url} failed");
}

/// The sink: a plain collector writing what it receives over OTLP/gRPC on
/// `port` to the file `out`, one JSON line per batch.
fn sink_config(port: u16, health: u16, out: &Path) -> String {
    format!(
        "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: \"127.0.0.1:{port}\"}}}}}}}}\n\
         exporters: {{file: {{path: \"{}\", flush_interval: 100ms}}}}\n\
         extensions: {{health_check: {{endpoint: \"127.0.0.1:{health}\"}}}}\n\
         service:\n  extensions: [health_check]\n  telemetry: {{metrics: {{level: none}}}}\n  pipelines:\n\
         \x20   traces: {{receivers: [otlp], exporters: [file]}}\n    metrics: {{receivers: [otlp], exporters: [file]}}\n    logs: {{receivers: [otlp], exporters: [file]}}\n",
        out.display()
    )
}

/// The string value of resource attribute `key` in an OTLP/JSON resource.
fn attribute<'a>(resource: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    resource["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
}

#[tokio::test]
async fn the_log_agent_reads_its_environments_pod_log_files_and_forwards_them_tagged() {
    let test_env = env();
    let tools = test_env.tools.clone();
    let dir = tempfile::tempdir().unwrap();
    let (sink_port, sink_health, health) = (free_port(), free_port(), free_port());
    let out = dir.path().join("received.jsonl");
    let _sink = run_collector(
        dir.path(),
        "sink",
        &sink_config(sink_port, sink_health, &out),
        sink_health,
    )
    .await;

    // The kubelet's layout, <ns>_<pod>_<uid>/<container>/<restart>.log, in
    // CRI format: this environment's app, another namespace's app, and the
    // environment's own collector (never read: its logs would loop).
    let root = dir.path().join("pods");
    let files = [
        ("shop-staging_api-7d9f8_0b6e6f3a-1", "api"),
        ("other_web-5c4d2_9f1e2d3c-2", "web"),
        (
            &*format!("shop-staging_{COLLECTOR_NAME}-6b7c9_4a5b6c7d-3"),
            "otelcol",
        ),
    ]
    .map(|(pod, container)| {
        let d = root.join(pod).join(container);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("0.log");
        std::fs::write(&f, "").unwrap();
        f
    });
    let source = log_agent::LogSource {
        namespace: "shop-staging".into(),
        project: "shop".into(),
        environment: "shop-staging".into(),
        endpoint: format!("127.0.0.1:{sink_port}"),
    };
    let mut config = log_agent::render_config(&[source], root.to_str().unwrap());
    config["extensions"]["health_check"]["endpoint"] = format!("127.0.0.1:{health}").into();
    config["service"]["telemetry"] = serde_json::json!({"metrics": {"level": "none"}});
    // The config as the operator renders it passes validate.
    Validator::new(tools.join("otelcol"), dir.path().join("validate"))
        .validate(&telemetry::config_yaml(&config))
        .await
        .expect("the agent config validates");
    let _agent = run_collector(
        dir.path(),
        "agent",
        &telemetry::config_yaml(&config),
        health,
    )
    .await;

    // The agent reads from the end of files it finds at start (as on a
    // node): append lines until the app's line arrives.
    let mut received = Vec::new();
    for i in 0..150 {
        for f in &files {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(f).unwrap();
            writeln!(
                file,
                "2026-12-02T02:00:00.{i:09}Z stdout F order placed {i}"
            )
            .unwrap();
        }
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        received = text
            .lines()
            // A line the exporter is still writing does not parse yet.
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| v["resourceLogs"].as_array().cloned().unwrap_or_default())
            .collect();
        if !received.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !received.is_empty(),
        "no logs reached the sink: {}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    for r in &received {
        let res = &r["resource"];
        assert_eq!(
            attribute(res, "k8s.namespace.name"),
            Some("shop-staging"),
            "{r}"
        );
        assert_eq!(attribute(res, "k8s.pod.name"), Some("api-7d9f8"), "{r}");
        assert_eq!(attribute(res, "k8s.pod.uid"), Some("0b6e6f3a-1"), "{r}");
        assert_eq!(attribute(res, "k8s.container.name"), Some("api"), "{r}");
        assert_eq!(attribute(res, "mahler.project"), Some("shop"), "{r}");
        assert_eq!(
            attribute(res, "mahler.environment"),
            Some("shop-staging"),
            "{r}"
        );
        let record = &r["scopeLogs"][0]["logRecords"][0];
        assert!(
            record["body"]["stringValue"]
                .as_str()
                .is_some_and(|b| b.starts_with("order placed")),
            "the CRI prefix is parsed off: {record}"
        );
    }
}

#[tokio::test]
async fn a_rendered_collector_forwards_traces_metrics_and_logs_with_mahler_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let (sink_port, grpc, http, health, sink_health) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let out: PathBuf = dir.path().join("received.jsonl");

    let _sink = run_collector(
        dir.path(),
        "sink",
        &sink_config(sink_port, sink_health, &out),
        sink_health,
    )
    .await;

    // The environment's collector, as Mahler renders it, exporting to the
    // sink. Only what binds differs: free local ports, and the kubeconfig
    // instead of the in-cluster ServiceAccount (k8s_attributes then reads
    // the run's real API server).
    let t: TelemetrySpec = serde_yaml::from_str(&format!(
        "{{exporter: {{otlp: {{endpoint: \"127.0.0.1:{sink_port}\", tls: {{insecure: true}}}}}}, resourceAttributes: {{team: payments}}}}"
    ))
    .unwrap();
    let mut config = telemetry::render_config(&environment(&t), &t);
    config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] =
        format!("127.0.0.1:{grpc}").into();
    config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] =
        format!("127.0.0.1:{http}").into();
    config["extensions"]["health_check"]["endpoint"] = format!("127.0.0.1:{health}").into();
    config["processors"]["k8s_attributes"]["auth_type"] = "kubeConfig".into();
    config["service"]["telemetry"] = serde_json::json!({"metrics": {"level": "none"}});
    // Span metrics are flushed every 15 s; the test need not wait that long.
    config["connectors"]["span_metrics"]["metrics_flush_interval"] = "200ms".into();
    let _collector =
        run_collector(dir.path(), "env", &telemetry::config_yaml(&config), health).await;

    // OTLP/HTTP (JSON encoding), as an SDK configured by the injected
    // variables would send it.
    let resource = serde_json::json!({"attributes": [
        {"key": "service.name", "value": {"stringValue": "api"}},
    ]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    post(
        &format!("http://127.0.0.1:{http}/v1/traces"),
        &serde_json::json!({"resourceSpans": [{
        "resource": resource, "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "GET /orders", "kind": 2, "startTimeUnixNano": now, "endTimeUnixNano": now,
        }]}]}]}),
    );
    post(
        &format!("http://127.0.0.1:{http}/v1/metrics"),
        &serde_json::json!({"resourceMetrics": [{
        "resource": resource, "scopeMetrics": [{"metrics": [{
            "name": "orders_total", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
              "dataPoints": [{"asInt": "3", "timeUnixNano": now}]},
        }]}]}]}),
    );
    post(
        &format!("http://127.0.0.1:{http}/v1/logs"),
        &serde_json::json!({"resourceLogs": [{
        "resource": resource, "scopeLogs": [{"logRecords": [{
            "timeUnixNano": now, "severityText": "INFO", "body": {"stringValue": "order placed"},
        }]}]}]}),
    );

    // And a real OTLP client: the Rust SDK (opentelemetry-otlp, the one the
    // operator exports its own traces with), over gRPC.
    {
        use opentelemetry::trace::{Tracer as _, TracerProvider as _};
        use opentelemetry_otlp::WithExportConfig;
        use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://127.0.0.1:{grpc}"))
            .build()
            .unwrap();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build(),
            )
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("api")
                    .build(),
            )
            .build();
        provider.tracer("e2e").in_span("GET /sdk", |_| {});
        // Flushing blocks until the batch task, on this runtime, has sent.
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .expect("the SDK exported its span");
    }

    // The sink's file: each signal, with Mahler's attributes added.
    let mut seen = [false; 5];
    for _ in 0..300 {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        for line in text.lines() {
            // A line the exporter is still writing does not parse yet.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (kind, key) = if v.get("resourceSpans").is_some() {
                (0, "resourceSpans")
            } else if v.get("resourceMetrics").is_some() {
                (1, "resourceMetrics")
            } else {
                (2, "resourceLogs")
            };
            for r in v[key].as_array().unwrap() {
                let attrs: std::collections::BTreeMap<String, String> = r["resource"]["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        (
                            a["key"].as_str().unwrap().to_string(),
                            a["value"]["stringValue"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        )
                    })
                    .collect();
                let tagged = attrs.get("mahler.project").map(String::as_str) == Some("tel")
                    && attrs.get("mahler.environment").map(String::as_str) == Some("tel-test")
                    && attrs.get("team").map(String::as_str) == Some("payments")
                    && attrs.get("service.name").map(String::as_str) == Some("api");
                let is_span_metrics =
                    line.contains("traces.span.metrics") || line.contains("\"calls\"");
                let r = r.to_string();
                match kind {
                    0 => {
                        seen[0] |= tagged && r.contains("GET /orders");
                        seen[4] |= tagged && r.contains("GET /sdk");
                    }
                    1 if is_span_metrics => seen[3] |= tagged,
                    1 => seen[1] |= tagged && r.contains("orders_total"),
                    _ => seen[2] |= tagged && r.contains("order placed"),
                }
            }
        }
        if seen.iter().all(|s| *s) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the sink did not get every signal tagged (traces, metrics, logs, span metrics, the SDK's trace: {seen:?}):\n{}\ncollector log:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("env.log")).unwrap_or_default()
    );
}

/// Every span the run's sink collector received from the operator
/// (hack/test.sh: MAHLER_TRACES_FILE), with its resource.
fn operator_spans() -> Vec<(serde_json::Value, serde_json::Value)> {
    let file = std::env::var("MAHLER_TRACES_FILE").expect("MAHLER_TRACES_FILE: run `make test`");
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        // A line the exporter is still writing does not parse yet.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((rs["resource"].clone(), span.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_operator_traces_each_reconcile_with_its_tofu_runs_as_child_spans() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = crate::project_with_env(&client, "otrace").await;
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: t, namespace: {ns}}}\nspec:\n  source:\n    template: {{name: config-bundle, inputs: {{settings: {{A: a}}}}}}\n"
    ));
    wait_for(
        &Api::<mahler_api::Service>::namespaced(client.clone(), &ns),
        "t",
        "Ready",
        is_ready(crate::svc_conditions),
    )
    .await;
    // Spans are exported in batches (every 5 s): wait for this Service's
    // run, its reconcile parent and its tofu commands.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let run_of = format!("{ns}/t/");
    loop {
        let spans = operator_spans();
        let runs: Vec<_> = spans
            .iter()
            .filter(|(_, s)| {
                s["name"] == "tofu_run"
                    && attribute(s, "service").is_some_and(|k| k.starts_with(&run_of))
            })
            .collect();
        let parented = runs.iter().find_map(|(resource, run)| {
            let parent = spans.iter().find(|(_, p)| {
                p["spanId"] == run["parentSpanId"] && p["traceId"] == run["traceId"]
            })?;
            let commands: Vec<&str> = spans
                .iter()
                .filter(|(_, c)| c["name"] == "tofu" && c["parentSpanId"] == run["spanId"])
                .filter_map(|(_, c)| attribute(c, "command"))
                .collect();
            Some((resource, parent.1.clone(), commands))
        });
        if let Some((resource, parent, commands)) = parented
            && !commands.is_empty()
        {
            assert_eq!(attribute(resource, "service.name"), Some("mahler-operator"));
            assert_eq!(parent["name"], "reconcile", "{parent}");
            assert_eq!(attribute(&parent, "service"), Some("t"), "{parent}");
            assert_eq!(
                attribute(&parent, "namespace"),
                Some(ns.as_str()),
                "{parent}"
            );
            assert!(commands.contains(&"apply"), "{commands:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no tofu_run span of {run_of} under a reconcile span, with tofu commands under it ({} spans, {} runs of it)",
            spans.len(),
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
