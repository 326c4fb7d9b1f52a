//! The node agent that collects environments' pod logs (docs/telemetry.md,
//! "Logs"), as pure functions:
//!
//! - [`sources`]: which environments' logs it reads (those with telemetry
//!   whose collector has a logs pipeline, i.e. an OTLP or debug exporter);
//! - [`render_config`]: one `file_log` receiver per environment, reading the
//!   kubelet's CRI log files of that environment's namespace only, with the
//!   same `mahler.*` attributes as the environment's collector, exported over
//!   OTLP to that collector (which adds k8s attributes and forwards them
//!   wherever the environment's telemetry goes);
//! - [`desired_agent`]: the ConfigMap, DaemonSet and ServiceAccount in the
//!   agent's namespace, the config's digest on the pod template.
//!
//! One agent per cluster, not one per environment: a hundred environments
//! cost one pod per node, not a hundred.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, HostPathVolumeSource, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecurityContext, ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use serde_json::{Map, Value, json};

use mahler_api::names::{COLLECTOR_NAME, CONFIG_HASH_ANNOTATION, MANAGED_BY};
use mahler_api::{Environment, TelemetrySpec};

use crate::telemetry::{ENVIRONMENT_ATTRIBUTE, HEALTH_PORT, OTLP_GRPC_PORT, PROJECT_ATTRIBUTE};

/// The name of the agent's DaemonSet, ConfigMap and ServiceAccount.
pub const AGENT_NAME: &str = "mahler-log-agent";
/// Where the kubelet writes pod logs: `<ns>_<pod>_<uid>/<container>/<n>.log`.
pub const POD_LOG_ROOT: &str = "/var/log/pods";
const CONFIG_DIR: &str = "/etc/otelcol";

/// One environment whose pod logs the agent reads.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogSource {
    pub namespace: String,
    pub project: String,
    pub environment: String,
    /// The environment collector's OTLP/gRPC address (`host:port`).
    pub endpoint: String,
}

/// Whether the collector rendered for `t` has a logs pipeline (an exporter
/// that takes logs: OTLP or debug; Prometheus takes metrics only).
pub fn exports_logs(t: &TelemetrySpec) -> bool {
    t.exporter
        .as_ref()
        .is_some_and(|e| e.otlp.is_some() || e.debug.is_some())
}

/// The source for `env`, if its pod logs are collected: telemetry that
/// exports logs. Whether its settings are valid does not matter: an invalid
/// change keeps the running collector, and the agent keeps sending to it.
pub fn source(env: &Environment, cluster_domain: &str) -> Option<LogSource> {
    let t = env.spec.telemetry.as_ref()?;
    if !exports_logs(t) {
        return None;
    }
    let ns = env.namespace_name();
    Some(LogSource {
        endpoint: format!("{COLLECTOR_NAME}.{ns}.svc.{cluster_domain}:{OTLP_GRPC_PORT}"),
        namespace: ns,
        project: env.spec.project.clone(),
        environment: env.name_any(),
    })
}

/// The sources of `envs`, sorted (the config does not depend on the order
/// the cache lists them in).
pub fn sources<'a>(
    envs: impl IntoIterator<Item = &'a Environment>,
    cluster_domain: &str,
) -> Vec<LogSource> {
    let mut out: Vec<LogSource> = envs
        .into_iter()
        .filter_map(|e| source(e, cluster_domain))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The agent's collector config for `sources`, reading log files under
/// `root` (the kubelet's [`POD_LOG_ROOT`] on a node).
pub fn render_config(sources: &[LogSource], root: &str) -> Value {
    let mut receivers = Map::new();
    let mut processors = Map::new();
    let mut exporters = Map::new();
    let mut pipelines = Map::new();
    processors.insert(
        "memory_limiter".into(),
        json!({"check_interval": "1s", "limit_percentage": 80, "spike_limit_percentage": 20}),
    );
    processors.insert(
        "batch".into(),
        json!({"send_batch_size": 2048, "timeout": "1s"}),
    );
    for s in sources {
        let ns = &s.namespace;
        receivers.insert(
            format!("file_log/{ns}"),
            json!({
                "include": [format!("{root}/{ns}_*/*/*.log")],
                // The environment's own collector: its logs would loop back
                // to it (with the debug exporter, once per record it logs).
                "exclude": [format!("{root}/{ns}_{COLLECTOR_NAME}-*/*/*.log")],
                "start_at": "end",
                "include_file_path": true,
                "include_file_name": false,
                // CRI-O, containerd and Docker line formats; the namespace,
                // pod, uid, container and restart count from the path.
                "operators": [{"type": "container", "id": "container"}],
            }),
        );
        processors.insert(
            format!("resource/{ns}"),
            json!({"attributes": [
                {"key": PROJECT_ATTRIBUTE, "value": s.project, "action": "upsert"},
                {"key": ENVIRONMENT_ATTRIBUTE, "value": s.environment, "action": "upsert"},
            ]}),
        );
        exporters.insert(
            format!("otlp_grpc/{ns}"),
            json!({
                "endpoint": s.endpoint,
                // Inside the cluster, to the environment's collector, as the
                // environment's Services send (OTEL_EXPORTER_OTLP_ENDPOINT).
                "tls": {"insecure": true},
                "sending_queue": {"enabled": true, "queue_size": 1000},
                "retry_on_failure": {"enabled": true, "max_elapsed_time": "300s"},
            }),
        );
        pipelines.insert(
            format!("logs/{ns}"),
            json!({
                "receivers": [format!("file_log/{ns}")],
                "processors": ["memory_limiter", format!("resource/{ns}"), "batch"],
                "exporters": [format!("otlp_grpc/{ns}")],
            }),
        );
    }
    json!({
        "extensions": {"health_check": {"endpoint": format!("0.0.0.0:{HEALTH_PORT}")}},
        "receivers": receivers,
        "processors": processors,
        "exporters": exporters,
        "service": {"extensions": ["health_check"], "pipelines": pipelines},
    })
}

/// Everything that runs the agent.
#[derive(Clone, Debug)]
pub struct Agent {
    pub config_map: ConfigMap,
    pub daemon_set: DaemonSet,
    pub service_account: ServiceAccount,
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        ("app.kubernetes.io/name".to_string(), AGENT_NAME.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "telemetry".to_string(),
        ),
    ])
}

fn meta(namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(AGENT_NAME.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// The agent in `namespace` running `yaml` (a validated config) with
/// `image`.
pub fn desired_agent(namespace: &str, image: &str, yaml: &str) -> Agent {
    let hash = crate::telemetry::config_hash(yaml);
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_string(), AGENT_NAME.to_string())]);
    let (readiness, liveness) = crate::telemetry::health_probes();
    let container = Container {
        name: "otelcol".into(),
        image: Some(image.to_string()),
        args: Some(vec![format!("--config=file:{CONFIG_DIR}/config.yaml")]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".into()),
            )])),
            ..Default::default()
        }),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        // The kubelet's log files are root's, mode 0640 (containerd,
        // CRI-O); the image's own user (10001) cannot read them. Root, but
        // nothing else: no capabilities, no escalation, a read-only root.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "pod-logs".into(),
                mount_path: POD_LOG_ROOT.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let mut pod_labels = labels();
    pod_labels.extend(selector.clone());
    let daemon_set = DaemonSet {
        metadata: meta(namespace),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), hash)])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(AGENT_NAME.to_string()),
                    // It reads files and sends OTLP: no API access.
                    automount_service_account_token: Some(false),
                    containers: vec![container],
                    // Every node's pods, tainted nodes included.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: AGENT_NAME.to_string(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "pod-logs".into(),
                            host_path: Some(HostPathVolumeSource {
                                path: POD_LOG_ROOT.into(),
                                type_: Some("Directory".into()),
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    Agent {
        config_map: ConfigMap {
            metadata: meta(namespace),
            data: Some(BTreeMap::from([(
                "config.yaml".to_string(),
                yaml.to_string(),
            )])),
            ..Default::default()
        },
        daemon_set,
        service_account: ServiceAccount {
            metadata: meta(namespace),
            automount_service_account_token: Some(false),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{EnvironmentSpec, PrometheusExporter, TelemetryExporter};

    fn env(name: &str, t: Option<TelemetrySpec>) -> Environment {
        Environment::new(
            name,
            EnvironmentSpec {
                project: "shop".into(),
                telemetry: t,
                ..Default::default()
            },
        )
    }

    fn otlp() -> TelemetrySpec {
        serde_yaml::from_str("{exporter: {otlp: {endpoint: \"otel.example.com:4317\"}}}").unwrap()
    }

    #[test]
    fn only_environments_whose_collector_takes_logs_are_sources() {
        let prometheus = TelemetrySpec {
            exporter: Some(TelemetryExporter {
                prometheus: Some(PrometheusExporter::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bad: TelemetrySpec =
            serde_yaml::from_str("{exporter: {otlp: {endpoint: \"not a url\"}}}").unwrap();
        let envs = [
            env("shop-b", Some(otlp())),
            env("shop-a", Some(otlp())),
            env("shop-c", None),
            env("shop-d", Some(prometheus)),
            env("shop-e", Some(bad)),
        ];
        let s = sources(&envs, "cluster.local");
        let names: Vec<&str> = s.iter().map(|s| s.environment.as_str()).collect();
        assert_eq!(names, ["shop-a", "shop-b", "shop-e"]);
        assert_eq!(
            s[0].endpoint,
            format!("{COLLECTOR_NAME}.shop-a.svc.cluster.local:4317")
        );
    }

    #[test]
    fn each_environment_reads_its_namespace_only_and_exports_to_its_collector() {
        let s = sources(&[env("shop-a", Some(otlp()))], "cluster.local");
        let c = render_config(&s, POD_LOG_ROOT);
        let r = &c["receivers"]["file_log/shop-a"];
        assert_eq!(r["include"][0], "/var/log/pods/shop-a_*/*/*.log");
        assert_eq!(
            r["exclude"][0],
            format!("/var/log/pods/shop-a_{COLLECTOR_NAME}-*/*/*.log")
        );
        assert_eq!(r["operators"][0]["type"], "container");
        let p = &c["service"]["pipelines"]["logs/shop-a"];
        assert_eq!(p["exporters"][0], "otlp_grpc/shop-a");
        let attrs = c["processors"]["resource/shop-a"]["attributes"].to_string();
        assert!(attrs.contains("mahler.project") && attrs.contains("\"shop\""));
        assert!(attrs.contains("mahler.environment") && attrs.contains("shop-a"));
    }

    #[test]
    fn the_pod_template_carries_the_config_digest() {
        let yaml = crate::telemetry::config_yaml(&render_config(&[], POD_LOG_ROOT));
        let a = desired_agent("mahler-system", "img:1", &yaml);
        let b = desired_agent("mahler-system", "img:1", &format!("{yaml}# x\n"));
        let hash = |d: &DaemonSet| {
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
        };
        assert_ne!(hash(&a.daemon_set), hash(&b.daemon_set));
        let pod = a.daemon_set.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let vols = pod.volumes.unwrap();
        assert_eq!(vols[1].host_path.as_ref().unwrap().path, POD_LOG_ROOT);
    }
}
