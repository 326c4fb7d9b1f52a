//! `Environment` (cluster-scoped): one deployment target of a Project. It owns
//! the namespace named after it (`<project>-<env>`), where its Services and
//! Connections live.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "mahler.dev",
    version = "v1alpha1",
    kind = "Environment",
    shortname = "menv",
    category = "mahler",
    status = "EnvironmentStatus",
    printcolumn = r#"{"name":"Project","type":"string","jsonPath":".spec.project"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".status.namespace"}"#,
    printcolumn = r#"{"name":"Protected","type":"boolean","jsonPath":".spec.protected","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: an environment name is its namespace name, at most 63 characters"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: must be a DNS label (lowercase letters, digits, '-')"),
    validation = Rule::new("self.metadata.name.startsWith(self.spec.project + '-') && self.metadata.name.size() > self.spec.project.size() + 1").message("metadata.name: must be '<spec.project>-<environment>', e.g. shop-staging for project shop"),
    validation = Rule::new("!has(self.spec.cloneFrom) || self.spec.cloneFrom != self.metadata.name").message("spec.cloneFrom: an environment cannot clone itself"),
    validation = Rule::new("!has(self.spec.protected) || !self.spec.protected || (has(self.spec.owners) && size(self.spec.owners) > 0)").message("spec.owners: a protected environment needs at least one owner (only its owners may change it)"),
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// The Project this environment belongs to. Immutable.
    #[schemars(length(min = 1, max = 30))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.project is immutable"))]
    pub project: String,
    /// Users or groups who may deploy, approve plans and delete in this
    /// environment: bound to the ClusterRole `mahler-owner` in its namespace,
    /// and to rights on this Environment object (docs/access.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub owners: Vec<Owner>,
    /// When true, only owners may create, change or delete this
    /// environment's Services and Connections, or the Environment itself
    /// (turning protection off included): enforced by the API server
    /// (docs/access.md). Needs at least one owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// Another Environment of the same Project whose Services and Connections
    /// this one copies (preview environments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_from: Option<String>,
    /// What happens to template Services' infrastructure when they are
    /// deleted: `Delete` (default: `tofu destroy`) or `Retain` (keep the
    /// resources and their state). A Service's own policy overrides this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Consul registration, intentions and gateway routes for this
    /// environment's Services (docs/consul.md). Needs the operator's Consul
    /// settings (`--consul-address`, chart `consul.address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul: Option<EnvironmentConsul>,
    /// Where this environment's telemetry goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySpec>,
}

/// What deleting a template Service does to the infrastructure it made.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// `tofu destroy`, then drop the state.
    Delete,
    /// Keep the resources and their state Secret.
    Retain,
}

/// An environment owner: exactly one of `user` or `group`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.user) != has(self.group)").message("an owner names exactly one of user or group"))]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
}

/// An environment's Consul settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentConsul {
    /// Register this environment's Services in Consul, write intentions from
    /// its Connections and gateway routes from `expose`.
    pub enabled: bool,
    /// Prefix of the Consul service names, so that environments sharing a
    /// Consul datacenter do not collide: `<prefix><service>`. Default: the
    /// environment's name and `-` (`shop-staging-api`); `""` registers the
    /// plain Service names. (Consul Enterprise namespaces are not supported.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40), regex(pattern = r"^([a-z0-9][-a-z0-9]*)?$"))]
    pub prefix: Option<String>,
}

impl Environment {
    /// Whether this environment's Services are registered in Consul.
    pub fn consul_enabled(&self) -> bool {
        self.spec.consul.as_ref().is_some_and(|c| c.enabled)
    }

    /// The prefix of this environment's Consul service names.
    pub fn consul_prefix(&self) -> String {
        self.spec
            .consul
            .as_ref()
            .and_then(|c| c.prefix.clone())
            .unwrap_or_else(|| format!("{}-", kube::ResourceExt::name_any(self)))
    }
}

/// The environment's OpenTelemetry collector (docs/telemetry.md): a
/// Deployment `mahler-collector` in its namespace, its config rendered from
/// these settings and checked by `otelcol validate` before it replaces the
/// running one. Every Service's pods get `OTEL_*` variables pointing at it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// Where the collector sends traces, metrics and logs: at least one of
    /// `otlp`, `prometheus`, `debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter: Option<TelemetryExporter>,
    /// Head sampling of traces (default: keep every trace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<TelemetrySampling>,
    /// Extra resource attributes set on every span, metric and log the
    /// collector forwards (besides `mahler.project` and `mahler.environment`,
    /// which cannot be overridden).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    /// The collector's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorSpec>,
}

/// The exporters of an environment's collector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryExporter {
    /// An OTLP endpoint (traces, metrics, logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpExporter>,
    /// A Prometheus scrape endpoint on the collector's Service (metrics,
    /// including the span metrics of every traced Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusExporter>,
    /// The collector's own log (for trying things out; not for production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<DebugExporter>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtlpExporter {
    /// For `grpc`: `host:port` (e.g. `otel.example:4317`). For `http`: the
    /// base URL (e.g. `https://otel.example:4318`); `/v1/traces` etc. are
    /// appended.
    #[schemars(length(min = 1, max = 512))]
    pub endpoint: String,
    /// `grpc` (default) or `http` (OTLP/HTTP, protobuf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Headers sent with every export (API keys), each read from a Secret
    /// in the environment's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<OtlpHeader>,
    /// TLS to the endpoint (default: TLS with the system CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OtlpTls>,
}

/// The OTLP transport.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    Grpc,
    Http,
}

/// A header whose value is a Secret key.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtlpHeader {
    /// The header name, e.g. `x-api-key` or `authorization`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    )]
    pub name: String,
    /// The Secret (in the environment's namespace) and key holding the value.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the environment's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// TLS settings of the OTLP exporter.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtlpTls {
    /// Plaintext, no TLS (an in-cluster collector or a sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    /// TLS without verifying the server's certificate (not for production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// A PEM CA bundle to verify the server with, from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeyRef>,
}

/// A Prometheus scrape endpoint on the collector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusExporter {
    /// The port of `/metrics` on the collector's Service (default 8889).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: Option<i32>,
}

/// The debug exporter.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DebugExporter {
    /// `basic` (default: one line per batch), `normal` or `detailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<DebugVerbosity>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DebugVerbosity {
    Basic,
    Normal,
    Detailed,
}

/// Trace sampling.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySampling {
    /// The share of traces kept, in percent (0 to 100; default 100),
    /// decided per trace ID so a trace is kept or dropped whole.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: f64,
}

/// The collector's pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// Pod count (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub replicas: Option<i32>,
    /// CPU and memory (default: requests 100m CPU and 128Mi, limit 512Mi).
    /// The memory limiter is set from the memory limit: the collector
    /// refuses data at 80% of it instead of being OOM-killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<k8s_openapi::api::core::v1::ResourceRequirements>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The namespace holding this environment's Services and Connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Environment {
    /// The namespace this environment owns: its own name (`<project>-<env>`).
    pub fn namespace_name(&self) -> String {
        kube::ResourceExt::name_any(self)
    }
}
