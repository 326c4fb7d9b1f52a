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

/// Telemetry export settings for the environment's collector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter: Option<TelemetryExporter>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryExporter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpExporter>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtlpExporter {
    /// `host:port` of an OTLP/gRPC endpoint.
    #[schemars(length(min = 1, max = 512))]
    pub endpoint: String,
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
