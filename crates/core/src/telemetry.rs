//! An environment's OpenTelemetry collector, as pure functions of its
//! `spec.telemetry` (docs/telemetry.md):
//!
//! - [`check`]: what is wrong with the settings, naming the field, before
//!   anything is rendered (a malformed endpoint, conflicting TLS, no
//!   exporter);
//! - [`render_config`]: the collector config (YAML), with the components
//!   `tools/otelcol/builder.yaml` builds and their 0.165 names;
//! - [`desired_collector`]: the ConfigMap, Deployment, Service,
//!   ServiceAccount, Role and RoleBinding that run it, the config's digest on
//!   the pod template (a real change rolls the pods, nothing else does);
//! - [`service_env`]: the `OTEL_*` variables of a Service's pods.
//!
//! The controller checks that referenced Secrets exist and runs
//! `otelcol validate` on the rendered config before it applies any of it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretKeySelector, SecretVolumeSource, Service as KubeService, ServiceAccount, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use mahler_api::names::{
    COLLECTOR_NAME, CONFIG_HASH_ANNOTATION, ENVIRONMENT_LABEL, MANAGED_BY, PROJECT_LABEL,
};
use mahler_api::{
    DebugVerbosity, Environment, OtlpExporter, OtlpProtocol, SecretKeyRef, Service, TelemetrySpec,
};

/// OTLP/gRPC port of the collector's Service (the one Services export to).
pub const OTLP_GRPC_PORT: i32 = 4317;
/// OTLP/HTTP port of the collector's Service.
pub const OTLP_HTTP_PORT: i32 = 4318;
/// Default Prometheus scrape port.
pub const PROMETHEUS_PORT: i32 = 8889;
/// The health_check extension's port (readiness and liveness).
pub const HEALTH_PORT: i32 = 13133;
/// Where the config is mounted in the collector's pods.
const CONFIG_DIR: &str = "/etc/otelcol";
/// Where a CA bundle from a Secret is mounted.
const CA_DIR: &str = "/etc/otelcol/tls";
/// Resource attributes Mahler sets on everything the collector forwards.
pub const PROJECT_ATTRIBUTE: &str = "mahler.project";
pub const ENVIRONMENT_ATTRIBUTE: &str = "mahler.environment";
pub const SERVICE_ATTRIBUTE: &str = "mahler.service";

/// What is wrong with an environment's telemetry settings.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("spec.telemetry.exporter: choose at least one of otlp, prometheus or debug")]
    NoExporter,
    #[error("{field}: {value:?} is not a valid endpoint: {why}")]
    InvalidEndpoint {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("{field}: {why}")]
    Conflict { field: &'static str, why: String },
    #[error("{field}: {why}")]
    InvalidAttribute { field: String, why: String },
    #[error("{field}: Secret {secret} does not exist in namespace {namespace}")]
    SecretNotFound {
        field: String,
        secret: String,
        namespace: String,
    },
    #[error("{field}: Secret {secret} has no key {key}")]
    SecretKeyNotFound {
        field: String,
        secret: String,
        key: String,
    },
    #[error("the collector rejected the rendered config: {0}")]
    ConfigRejected(String),
}

impl Problem {
    /// The condition reason (and Event reason).
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::NoExporter => "NoExporter",
            Problem::InvalidEndpoint { .. } => "InvalidEndpoint",
            Problem::Conflict { .. } => "InvalidTLS",
            Problem::InvalidAttribute { .. } => "InvalidAttribute",
            Problem::SecretNotFound { .. } => "SecretNotFound",
            Problem::SecretKeyNotFound { .. } => "SecretKeyNotFound",
            Problem::ConfigRejected(_) => "ConfigRejected",
        }
    }
}

/// The Secret keys the settings read, with the field that names each.
pub fn secret_refs(t: &TelemetrySpec) -> Vec<(String, &SecretKeyRef)> {
    let mut refs = Vec::new();
    if let Some(otlp) = otlp(t) {
        for (i, h) in otlp.headers.iter().enumerate() {
            refs.push((
                format!("spec.telemetry.exporter.otlp.headers[{i}].secretKeyRef"),
                &h.secret_key_ref,
            ));
        }
        if let Some(ca) = otlp.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            refs.push(("spec.telemetry.exporter.otlp.tls.ca".to_string(), ca));
        }
    }
    refs
}

fn otlp(t: &TelemetrySpec) -> Option<&OtlpExporter> {
    t.exporter.as_ref().and_then(|e| e.otlp.as_ref())
}

/// Checks the settings the schema cannot (it is v1alpha1's, and may not be
/// tightened): every problem names its field.
pub fn check(t: &TelemetrySpec) -> Result<(), Problem> {
    let e = t.exporter.clone().unwrap_or_default();
    if e.otlp.is_none() && e.prometheus.is_none() && e.debug.is_none() {
        return Err(Problem::NoExporter);
    }
    if let Some(o) = &e.otlp {
        check_endpoint(o)?;
        if let Some(tls) = &o.tls
            && tls.insecure == Some(true)
            && (tls.ca.is_some() || tls.insecure_skip_verify == Some(true))
        {
            return Err(Problem::Conflict {
                field: "spec.telemetry.exporter.otlp.tls",
                why: "insecure (no TLS) cannot be combined with ca or insecureSkipVerify".into(),
            });
        }
    }
    for key in t.resource_attributes.keys() {
        let field = format!("spec.telemetry.resourceAttributes.{key}");
        if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Problem::InvalidAttribute {
                field,
                why: "a key is 1 to 255 printable ASCII characters".into(),
            });
        }
        if key.starts_with("mahler.") {
            return Err(Problem::InvalidAttribute {
                field,
                why: "mahler.* attributes are set by Mahler".into(),
            });
        }
    }
    Ok(())
}

fn check_endpoint(o: &OtlpExporter) -> Result<(), Problem> {
    const FIELD: &str = "spec.telemetry.exporter.otlp.endpoint";
    let bad = |why: &str| Problem::InvalidEndpoint {
        field: FIELD,
        value: o.endpoint.clone(),
        why: why.to_string(),
    };
    let ep = o.endpoint.as_str();
    let rest = match (
        o.protocol.unwrap_or(OtlpProtocol::Grpc),
        ep.split_once("://"),
    ) {
        (_, Some(("http" | "https", rest))) => rest,
        (_, Some((scheme, _))) => {
            return Err(bad(&format!("the scheme {scheme:?} is not http or https")));
        }
        (OtlpProtocol::Grpc, None) => ep,
        (OtlpProtocol::Http, None) => {
            return Err(bad(
                "OTLP/HTTP needs a URL: http://host:port or https://host:port",
            ));
        }
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if o.protocol.unwrap_or(OtlpProtocol::Grpc) == OtlpProtocol::Grpc && !path.is_empty() {
        return Err(bad("an OTLP/gRPC endpoint has no path"));
    }
    if path.chars().any(|c| c.is_whitespace()) {
        return Err(bad("the path contains whitespace"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid_host = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    if !valid_host {
        return Err(bad("the host is not a DNS name or an IP address"));
    }
    match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(bad("the port is not a number from 1 to 65535")),
        },
        None if o.protocol.unwrap_or(OtlpProtocol::Grpc) == OtlpProtocol::Grpc => Err(bad(
            "an OTLP/gRPC endpoint is host:port (e.g. otel.example:4317)",
        )),
        None => Ok(()),
    }
}

/// A user's string as a literal in the collector's config (no `${...}`
/// expansion).
fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

/// The environment variable carrying OTLP header `i` into the collector.
fn header_var(i: usize) -> String {
    format!("MAHLER_OTLP_HEADER_{i}")
}

/// The collector config for `env`'s settings (after [`check`]).
pub fn render_config(env: &Environment, t: &TelemetrySpec) -> Value {
    let ns = env.namespace_name();
    let e = t.exporter.clone().unwrap_or_default();

    let mut exporters = Map::new();
    // Exporters per signal.
    let (mut traces, mut metrics, mut logs) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(o) = &e.otlp {
        let (name, mut cfg) = match o.protocol.unwrap_or(OtlpProtocol::Grpc) {
            OtlpProtocol::Grpc => ("otlp_grpc", json!({"endpoint": o.endpoint})),
            OtlpProtocol::Http => ("otlp_http", json!({"endpoint": o.endpoint})),
        };
        if !o.headers.is_empty() {
            let headers: Map<String, Value> = o
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| (h.name.clone(), json!(format!("${{env:{}}}", header_var(i)))))
                .collect();
            cfg["headers"] = Value::Object(headers);
        }
        if let Some(tls) = &o.tls {
            let mut t = Map::new();
            if tls.insecure == Some(true) {
                t.insert("insecure".into(), json!(true));
            }
            if tls.insecure_skip_verify == Some(true) {
                t.insert("insecure_skip_verify".into(), json!(true));
            }
            if tls.ca.is_some() {
                t.insert("ca_file".into(), json!(format!("{CA_DIR}/ca.pem")));
            }
            if !t.is_empty() {
                cfg["tls"] = Value::Object(t);
            }
        }
        // Retries and a bounded queue: a slow or unreachable backend costs
        // memory up to the queue, then drops, and never blocks the apps.
        cfg["sending_queue"] = json!({"enabled": true, "queue_size": 1000});
        cfg["retry_on_failure"] = json!({"enabled": true, "max_elapsed_time": "300s"});
        let id = format!("{name}/upstream");
        exporters.insert(id.clone(), cfg);
        traces.push(id.clone());
        metrics.push(id.clone());
        logs.push(id);
    }
    if let Some(p) = &e.prometheus {
        exporters.insert(
            "prometheus".into(),
            json!({
                "endpoint": format!("0.0.0.0:{}", p.port.unwrap_or(PROMETHEUS_PORT)),
                "resource_to_telemetry_conversion": {"enabled": true},
            }),
        );
        metrics.push("prometheus".into());
    }
    if let Some(d) = &e.debug {
        let verbosity = match d.verbosity.unwrap_or(DebugVerbosity::Basic) {
            DebugVerbosity::Basic => "basic",
            DebugVerbosity::Normal => "normal",
            DebugVerbosity::Detailed => "detailed",
        };
        exporters.insert("debug".into(), json!({"verbosity": verbosity}));
        traces.push("debug".into());
        metrics.push("debug".into());
        logs.push("debug".into());
    }

    let mut attributes = vec![
        json!({"key": PROJECT_ATTRIBUTE, "value": env.spec.project, "action": "upsert"}),
        json!({"key": ENVIRONMENT_ATTRIBUTE, "value": env.name_any(), "action": "upsert"}),
    ];
    for (k, v) in &t.resource_attributes {
        // `$$` is a literal `$` to the collector: a value is never expanded
        // (`${env:MAHLER_OTLP_HEADER_0}` would leak a header's Secret).
        attributes.push(json!({"key": literal(k), "value": literal(v), "action": "upsert"}));
    }
    let mut processors = Map::new();
    processors.insert(
        "memory_limiter".into(),
        json!({"check_interval": "1s", "limit_percentage": 80, "spike_limit_percentage": 20}),
    );
    processors.insert(
        "k8s_attributes".into(),
        json!({
            "auth_type": "serviceAccount",
            "filter": {"namespace": ns},
            "extract": {
                "metadata": ["k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid",
                             "k8s.deployment.name", "k8s.node.name"],
                "labels": [{"tag_name": SERVICE_ATTRIBUTE, "key": mahler_api::names::SERVICE_LABEL, "from": "pod"}],
            },
            "pod_association": [
                {"sources": [{"from": "resource_attribute", "name": "k8s.pod.ip"}]},
                {"sources": [{"from": "resource_attribute", "name": "k8s.pod.uid"}]},
                {"sources": [{"from": "connection"}]},
            ],
        }),
    );
    processors.insert("resource".into(), json!({"attributes": attributes}));
    processors.insert(
        "batch".into(),
        json!({"send_batch_size": 8192, "timeout": "1s"}),
    );
    let sampled = t
        .sampling
        .as_ref()
        .map(|s| s.percentage)
        .filter(|p| *p < 100.0);
    if let Some(p) = sampled {
        processors.insert(
            "probabilistic_sampler".into(),
            json!({"sampling_percentage": p, "mode": "proportional"}),
        );
    }
    let common = ["memory_limiter", "k8s_attributes", "resource", "batch"];

    let mut pipelines = Map::new();
    // Span metrics (request rate, errors, latency per service) are computed
    // from every span, before sampling, in a pipeline of their own.
    pipelines.insert(
        "traces/span_metrics".into(),
        json!({"receivers": ["otlp"], "processors": common, "exporters": ["span_metrics"]}),
    );
    if !traces.is_empty() {
        let mut procs = vec!["memory_limiter", "k8s_attributes", "resource"];
        if sampled.is_some() {
            procs.push("probabilistic_sampler");
        }
        procs.push("batch");
        pipelines.insert(
            "traces".into(),
            json!({"receivers": ["otlp"], "processors": procs, "exporters": traces}),
        );
    }
    pipelines.insert(
        "metrics".into(),
        json!({"receivers": ["otlp", "span_metrics"], "processors": common, "exporters": metrics}),
    );
    if !logs.is_empty() {
        pipelines.insert(
            "logs".into(),
            json!({"receivers": ["otlp"], "processors": common, "exporters": logs}),
        );
    }

    json!({
        "extensions": {"health_check": {"endpoint": format!("0.0.0.0:{HEALTH_PORT}")}},
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": format!("0.0.0.0:{OTLP_GRPC_PORT}")},
            "http": {"endpoint": format!("0.0.0.0:{OTLP_HTTP_PORT}")},
        }}},
        "processors": processors,
        "connectors": {"span_metrics": {
            "metrics_flush_interval": "15s",
            "histogram": {"explicit": {"buckets": ["5ms", "10ms", "25ms", "50ms", "100ms", "250ms", "500ms", "1s", "2.5s", "5s", "10s"]}},
            "dimensions": [{"name": "http.response.status_code"}, {"name": "http.request.method"}],
        }},
        "exporters": exporters,
        "service": {
            "extensions": ["health_check"],
            "pipelines": pipelines,
        },
    })
}

/// The rendered config as the YAML file the collector reads.
pub fn config_yaml(config: &Value) -> String {
    // A JSON value always serialises.
    serde_yaml::to_string(config).unwrap_or_default()
}

/// The digest of a config (and the Secret-backed inputs of the pods),
/// the collector's pod-template annotation.
pub fn config_hash(yaml: &str) -> String {
    format!("{:x}", Sha256::digest(yaml.as_bytes()))[..16].to_string()
}

/// Everything that runs an environment's collector.
#[derive(Clone, Debug)]
pub struct Collector {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: KubeService,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

fn labels(env: &Environment) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (
            "app.kubernetes.io/name".to_string(),
            COLLECTOR_NAME.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "telemetry".to_string(),
        ),
        (ENVIRONMENT_LABEL.to_string(), env.name_any()),
        (PROJECT_LABEL.to_string(), env.spec.project.clone()),
    ])
}

fn selector() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        COLLECTOR_NAME.to_string(),
    )])
}

fn meta(env: &Environment) -> ObjectMeta {
    ObjectMeta {
        name: Some(COLLECTOR_NAME.to_string()),
        namespace: Some(env.namespace_name()),
        labels: Some(labels(env)),
        owner_references: env.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".into()),
        )])),
        ..Default::default()
    }
}

/// Readiness and liveness of a collector container: its health_check
/// extension (liveness tolerates a minute of failures).
pub(crate) fn health_probes() -> (Probe, Probe) {
    let probe = Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".into()),
            port: IntOrString::Int(HEALTH_PORT),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let liveness = Probe {
        failure_threshold: Some(6),
        ..probe.clone()
    };
    (probe, liveness)
}

/// The objects running `yaml` (a checked, validated config) with `image`.
pub fn desired_collector(
    env: &Environment,
    t: &TelemetrySpec,
    image: &str,
    yaml: &str,
) -> Collector {
    let hash = config_hash(yaml);
    let otlp = otlp(t);
    let env_vars: Vec<EnvVar> = otlp
        .map(|o| {
            o.headers
                .iter()
                .enumerate()
                .map(|(i, h)| EnvVar {
                    name: header_var(i),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: h.secret_key_ref.name.clone(),
                            key: h.secret_key_ref.key.clone(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: COLLECTOR_NAME.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    if let Some(ca) = otlp
        .and_then(|o| o.tls.as_ref())
        .and_then(|t| t.ca.as_ref())
    {
        volumes.push(Volume {
            name: "ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.pem".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "ca".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let prometheus = t
        .exporter
        .as_ref()
        .and_then(|e| e.prometheus.as_ref())
        .map(|p| p.port.unwrap_or(PROMETHEUS_PORT));
    let mut ports = vec![("otlp-grpc", OTLP_GRPC_PORT), ("otlp-http", OTLP_HTTP_PORT)];
    if let Some(p) = prometheus {
        ports.push(("prometheus", p));
    }
    let (readiness, liveness) = health_probes();
    let spec = t.collector.clone().unwrap_or_default();
    let container = Container {
        name: "otelcol".into(),
        image: Some(image.to_string()),
        args: Some(vec![format!("--config=file:{CONFIG_DIR}/config.yaml")]),
        env: (!env_vars.is_empty()).then_some(env_vars),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: Some(n.to_string()),
                    container_port: *p,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        resources: Some(
            spec.resources
                .as_deref()
                .cloned()
                .unwrap_or_else(default_resources),
        ),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let mut pod_labels = labels(env);
    pod_labels.extend(selector());
    let deployment = Deployment {
        metadata: meta(env),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), hash)])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(COLLECTOR_NAME.to_string()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    let service = KubeService {
        metadata: meta(env),
        spec: Some(ServiceSpec {
            selector: Some(selector()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some(n.to_string()),
                        port: *p,
                        target_port: Some(IntOrString::String(n.to_string())),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    };
    let config_map = ConfigMap {
        metadata: meta(env),
        data: Some(BTreeMap::from([(
            "config.yaml".to_string(),
            yaml.to_string(),
        )])),
        ..Default::default()
    };
    // k8s_attributes reads the pods (and their ReplicaSets, for the
    // Deployment name) of this namespace only.
    let role = Role {
        metadata: meta(env),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["apps".into()]),
                resources: Some(vec!["replicasets".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
        ]),
    };
    let role_binding = RoleBinding {
        metadata: meta(env),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: COLLECTOR_NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: COLLECTOR_NAME.into(),
            namespace: Some(env.namespace_name()),
            ..Default::default()
        }]),
    };
    let service_account = ServiceAccount {
        metadata: meta(env),
        ..Default::default()
    };
    Collector {
        config_map,
        deployment,
        service,
        service_account,
        role,
        role_binding,
    }
}

/// The hole in the environment's default-deny policy for its collector:
/// OTLP from the namespace's own pods (the Services it serves), OTLP/gRPC
/// from the pod-log agent's pods in `log_agent_namespace`, and the
/// Prometheus port (when on) from anywhere, for the scraper.
pub fn collector_policy(
    env: &Environment,
    t: &TelemetrySpec,
    log_agent_namespace: Option<&str>,
) -> NetworkPolicy {
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        }]),
        ports: Some(vec![port(OTLP_GRPC_PORT), port(OTLP_HTTP_PORT)]),
    }];
    if let Some(ns) = log_agent_namespace {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        ns.to_string(),
                    )])),
                    ..Default::default()
                }),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_string(),
                        crate::log_agent::AGENT_NAME.to_string(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![port(OTLP_GRPC_PORT)]),
        });
    }
    if let Some(p) = t.exporter.as_ref().and_then(|e| e.prometheus.as_ref()) {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![port(p.port.unwrap_or(PROMETHEUS_PORT))]),
        });
    }
    NetworkPolicy {
        metadata: meta(env),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// The `OTEL_*` variables of `svc`'s pods in `env` (empty without
/// telemetry, or when the Service opts out). They depend on the collector's
/// address and the Service's identity only, so a change of the collector's
/// config does not re-roll the Services.
pub fn service_env(env: &Environment, svc: &Service, cluster_domain: &str) -> Vec<EnvVar> {
    if env.spec.telemetry.is_none()
        || svc.spec.telemetry.as_ref().and_then(|t| t.inject) == Some(false)
    {
        return Vec::new();
    }
    let ns = env.namespace_name();
    let name = svc.name_any();
    let mut attributes = vec![
        format!("{PROJECT_ATTRIBUTE}={}", env.spec.project),
        format!("{ENVIRONMENT_ATTRIBUTE}={}", env.name_any()),
        format!("{SERVICE_ATTRIBUTE}={name}"),
        format!("service.namespace={ns}"),
    ];
    if let Some(version) = svc.spec.source.image.as_deref().and_then(image_version) {
        attributes.push(format!("service.version={version}"));
    }
    let var = |n: &str, v: String| EnvVar {
        name: n.to_string(),
        value: Some(v),
        value_from: None,
    };
    vec![
        var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{COLLECTOR_NAME}.{ns}.svc.{cluster_domain}:{OTLP_GRPC_PORT}"),
        ),
        var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        var("OTEL_SERVICE_NAME", name),
        var("OTEL_RESOURCE_ATTRIBUTES", attributes.join(",")),
    ]
}

/// The version of an image reference: its tag, else its digest (short).
fn image_version(image: &str) -> Option<String> {
    if let Some((_, digest)) = image.split_once('@') {
        return Some(
            digest
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect(),
        );
    }
    let last = image.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{
        DebugExporter, EnvironmentSpec, OtlpHeader, OtlpTls, PrometheusExporter, ServiceTelemetry,
        TelemetryExporter, TelemetrySampling,
    };

    #[test]
    fn the_collector_policy_admits_the_namespace_the_agent_and_the_scraper() {
        let t = TelemetrySpec {
            exporter: Some(TelemetryExporter {
                prometheus: Some(PrometheusExporter { port: Some(9464) }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = collector_policy(&env(t.clone()), &t, Some("mahler-system"));
        let spec = p.spec.unwrap();
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 3);
        let ports = |i: usize| -> Vec<IntOrString> {
            rules[i]
                .ports
                .clone()
                .unwrap()
                .into_iter()
                .filter_map(|p| p.port)
                .collect()
        };
        assert_eq!(ports(0), [IntOrString::Int(4317), IntOrString::Int(4318)]);
        let agent = &rules[1].from.as_ref().unwrap()[0];
        assert_eq!(
            agent
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "mahler-system"
        );
        assert_eq!(ports(2), [IntOrString::Int(9464)]);
        assert!(
            rules[2].from.is_none(),
            "the scraper may come from anywhere"
        );
        let none = collector_policy(
            &env(otlp("otel:4317", None)),
            &otlp("otel:4317", None),
            None,
        );
        assert_eq!(none.spec.unwrap().ingress.unwrap().len(), 1);
    }

    fn env(t: TelemetrySpec) -> Environment {
        let mut e = Environment::new(
            "shop-staging",
            EnvironmentSpec {
                project: "shop".into(),
                telemetry: Some(t),
                ..Default::default()
            },
        );
        e.metadata.uid = Some("u1".into());
        e
    }

    fn otlp(endpoint: &str, protocol: Option<OtlpProtocol>) -> TelemetrySpec {
        TelemetrySpec {
            exporter: Some(TelemetryExporter {
                otlp: Some(OtlpExporter {
                    endpoint: endpoint.into(),
                    protocol,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_are_checked_per_protocol() {
        for ok in [
            "otel.example:4317",
            "10.0.0.1:4317",
            "https://otel.example:4317",
            "[::1]:4317",
        ] {
            assert_eq!(check(&otlp(ok, None)), Ok(()), "{ok}");
        }
        for bad in [
            "otel.example",
            "otel example:4317",
            "otel.example:0",
            "otel.example:99999",
            "ftp://otel:21",
            "otel.example:4317/v1",
            "-bad.example:4317",
            ":4317",
        ] {
            let err = check(&otlp(bad, None)).unwrap_err();
            assert_eq!(err.reason(), "InvalidEndpoint", "{bad}");
            assert!(
                err.to_string()
                    .starts_with("spec.telemetry.exporter.otlp.endpoint: "),
                "{err}"
            );
        }
        let http = Some(OtlpProtocol::Http);
        assert_eq!(check(&otlp("https://otel.example/otlp", http)), Ok(()));
        assert_eq!(
            check(&otlp("otel.example:4318", http))
                .unwrap_err()
                .reason(),
            "InvalidEndpoint"
        );
    }

    #[test]
    fn no_exporter_and_conflicting_tls_and_reserved_attributes_are_refused() {
        assert_eq!(check(&TelemetrySpec::default()), Err(Problem::NoExporter));
        let mut t = otlp("otel:4317", None);
        t.exporter.as_mut().unwrap().otlp.as_mut().unwrap().tls = Some(OtlpTls {
            insecure: Some(true),
            insecure_skip_verify: Some(true),
            ca: None,
        });
        assert_eq!(check(&t).unwrap_err().reason(), "InvalidTLS");
        let mut t = otlp("otel:4317", None);
        t.resource_attributes
            .insert("mahler.project".into(), "x".into());
        assert_eq!(
            check(&t).unwrap_err().to_string(),
            "spec.telemetry.resourceAttributes.mahler.project: mahler.* attributes are set by Mahler"
        );
    }

    #[test]
    fn config_has_pipelines_for_the_chosen_exporters() {
        let mut t = otlp("otel.example:4317", None);
        {
            let o = t.exporter.as_mut().unwrap().otlp.as_mut().unwrap();
            o.headers.push(OtlpHeader {
                name: "x-api-key".into(),
                secret_key_ref: SecretKeyRef {
                    name: "otel".into(),
                    key: "key".into(),
                },
            });
            o.tls = Some(OtlpTls {
                ca: Some(SecretKeyRef {
                    name: "ca".into(),
                    key: "ca.crt".into(),
                }),
                ..Default::default()
            });
        }
        t.sampling = Some(TelemetrySampling { percentage: 25.0 });
        let e = env(t.clone());
        let c = render_config(&e, &t);
        assert_eq!(
            c["exporters"]["otlp_grpc/upstream"]["headers"]["x-api-key"],
            "${env:MAHLER_OTLP_HEADER_0}"
        );
        assert_eq!(
            c["exporters"]["otlp_grpc/upstream"]["tls"]["ca_file"],
            "/etc/otelcol/tls/ca.pem"
        );
        let traces = &c["service"]["pipelines"]["traces"];
        assert_eq!(
            traces["processors"],
            json!([
                "memory_limiter",
                "k8s_attributes",
                "resource",
                "probabilistic_sampler",
                "batch"
            ])
        );
        assert_eq!(
            c["service"]["pipelines"]["traces/span_metrics"]["exporters"],
            json!(["span_metrics"])
        );
        assert_eq!(
            c["processors"]["k8s_attributes"]["filter"]["namespace"],
            "shop-staging"
        );
        assert_eq!(
            c["processors"]["resource"]["attributes"][0]["value"],
            "shop"
        );
        assert!(c["service"]["pipelines"]["logs"].is_object());

        // Prometheus only: no traces or logs pipeline (it takes metrics only).
        let t = TelemetrySpec {
            exporter: Some(TelemetryExporter {
                prometheus: Some(PrometheusExporter { port: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = render_config(&env(t.clone()), &t);
        assert!(c["service"]["pipelines"]["traces"].is_null());
        assert!(c["service"]["pipelines"]["logs"].is_null());
        assert_eq!(
            c["service"]["pipelines"]["metrics"]["exporters"],
            json!(["prometheus"])
        );
    }

    #[test]
    fn collector_objects_carry_the_hash_secrets_and_ports() {
        let mut t = otlp("otel.example:4317", None);
        t.exporter
            .as_mut()
            .unwrap()
            .otlp
            .as_mut()
            .unwrap()
            .headers
            .push(OtlpHeader {
                name: "x-api-key".into(),
                secret_key_ref: SecretKeyRef {
                    name: "otel".into(),
                    key: "key".into(),
                },
            });
        t.exporter.as_mut().unwrap().debug = Some(DebugExporter { verbosity: None });
        let e = env(t.clone());
        let yaml = config_yaml(&render_config(&e, &t));
        let c = desired_collector(&e, &t, "otelcol:1", &yaml);
        let tpl = c.deployment.spec.as_ref().unwrap().template.clone();
        assert_eq!(
            tpl.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION],
            config_hash(&yaml)
        );
        let pod = tpl.spec.unwrap();
        let env_var = &pod.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(
            env_var
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "otel"
        );
        assert_eq!(c.config_map.data.unwrap()["config.yaml"], yaml);
        assert_eq!(c.service.spec.unwrap().ports.unwrap().len(), 2);
        assert_eq!(
            c.deployment.metadata.namespace.as_deref(),
            Some("shop-staging")
        );
        // Same settings, same hash; another setting, another.
        assert_eq!(yaml, config_yaml(&render_config(&e, &t)));
        let mut t3 = t.clone();
        t3.resource_attributes
            .insert("leak".into(), "${env:MAHLER_OTLP_HEADER_0}".into());
        let c3 = render_config(&e, &t3);
        assert_eq!(
            c3["processors"]["resource"]["attributes"][2]["value"],
            "$${env:MAHLER_OTLP_HEADER_0}"
        );
        let mut t2 = t.clone();
        t2.resource_attributes.insert("team".into(), "a".into());
        assert_ne!(
            config_hash(&yaml),
            config_hash(&config_yaml(&render_config(&e, &t2)))
        );
    }

    #[test]
    fn services_get_otel_variables_unless_they_opt_out() {
        let t = otlp("otel.example:4317", None);
        let e = env(t);
        let mut svc = Service::new(
            "api",
            mahler_api::ServiceSpec {
                source: mahler_api::Source {
                    image: Some("registry.example/shop/api:1.4.2".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        svc.metadata.namespace = Some("shop-staging".into());
        let vars = service_env(&e, &svc, "cluster.local");
        let get = |n: &str| {
            vars.iter()
                .find(|v| v.name == n)
                .and_then(|v| v.value.clone())
                .unwrap()
        };
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "http://mahler-collector.shop-staging.svc.cluster.local:4317"
        );
        assert_eq!(get("OTEL_SERVICE_NAME"), "api");
        assert_eq!(
            get("OTEL_RESOURCE_ATTRIBUTES"),
            "mahler.project=shop,mahler.environment=shop-staging,mahler.service=api,service.namespace=shop-staging,service.version=1.4.2"
        );
        svc.spec.telemetry = Some(ServiceTelemetry {
            inject: Some(false),
        });
        assert!(service_env(&e, &svc, "cluster.local").is_empty());
        let mut plain = e.clone();
        plain.spec.telemetry = None;
        svc.spec.telemetry = None;
        assert!(service_env(&plain, &svc, "cluster.local").is_empty());
        assert_eq!(
            image_version("reg:5000/a/b@sha256:0123456789abcdef"),
            Some("0123456789ab".into())
        );
        assert_eq!(image_version("reg:5000/a/b"), None);
    }
}
