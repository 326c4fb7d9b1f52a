//! `Service` (namespaced, in an environment's namespace): one application
//! component, built from exactly one source (an image, a git repository, or a
//! ResourceTemplate).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMapKeySelector, ResourceRequirements, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::terraform::{FailureReason, LockState, Operation, PlanPhase, PlanTrigger, RunResult};

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "mahler.dev",
    version = "v1alpha1",
    kind = "Service",
    namespaced,
    shortname = "msvc",
    category = "mahler",
    status = "ServiceStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.source.image"}"#,
    printcolumn = r#"{"name":"Template","type":"string","jsonPath":".spec.source.template.name","priority":1}"#,
    printcolumn = r#"{"name":"Plan","type":"string","jsonPath":".status.terraform.plan.id","priority":1}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.availableReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 50").message("metadata.name: a service name is at most 50 characters (it names a Deployment and its pods)"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: must be a DNS label starting with a letter (it is also a Kubernetes Service name)"),
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Where the service comes from: exactly one of image, git or template.
    pub source: Source,
    /// Desired pod count (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Ports the service listens on. Names are unique and become the
    /// Kubernetes Service's port names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.port == p.port))").message("spec.ports: two ports use the same port number"))]
    pub ports: Vec<ServicePort>,
    /// Environment variables. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    /// Overrides the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// CPU and memory requests and limits (default requests: 50m CPU, 64Mi memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,
    /// Health probe; by default a TCP check on the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<HealthCheck>>,
    /// External access through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Box<ExposeSpec>>,
    /// Telemetry wiring of this Service in an environment with telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<ServiceTelemetry>,
}

/// A Service's telemetry wiring.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTelemetry {
    /// `false`: do not inject the `OTEL_*` variables into this Service's
    /// pods (default true when the environment has telemetry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<bool>,
}

/// Exactly one of `image`, `git` or `template`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.image), has(self.git), has(self.template)].filter(x, x).size() == 1").message("spec.source: set exactly one of image, git or template"))]
#[x_kube(validation = Rule::new("has(self.template) == has(oldSelf.template) && (!has(self.template) || self.template.name == oldSelf.template.name)").message("spec.source.template: a Service cannot switch to or from a template, or to another template; delete it (its infrastructure is destroyed or retained per deletionPolicy) and create a new one"))]
pub struct Source {
    /// A container image reference, e.g. `registry.example/shop/api:1.4.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.contains(' ')").message("spec.source.image: an image reference has no spaces"))]
    pub image: Option<String>,
    /// A git repository built into an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<Box<GitSource>>,
    /// A ResourceTemplate instantiated with inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<TemplateSource>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSource {
    /// Name of a cluster-scoped ResourceTemplate.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Inputs, validated against the template's input schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub inputs: Option<serde_json::Map<String, serde_json::Value>>,
    /// `Auto` (default) applies every plan; `Manual` shows the plan in
    /// status and applies it once an environment owner approves that plan id
    /// (annotation `mahler.dev/approve-plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// How often the real infrastructure is compared with the state (a
    /// `tofu plan`), as a duration such as `30m` or `1h` (default `1h`;
    /// `0s` turns drift checks off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub drift_check_interval: Option<String>,
    /// What to do when drift is found: `Correct` (default: apply, subject to
    /// `approval`) or `Hold` (report it and change nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_policy: Option<DriftPolicy>,
    /// `Delete` destroys the infrastructure with the Service; `Retain` keeps
    /// it (and its state). Defaults to the Environment's `deletionPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<crate::DeletionPolicy>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Approval {
    #[default]
    Auto,
    Manual,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DriftPolicy {
    #[default]
    Correct,
    Hold,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// IANA service name style: lowercase, at most 15 characters.
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// TCP (default) or UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Application protocol (http, grpc, postgres, ...); sets the scheme of injected URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub app_protocol: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// An environment variable: exactly one of `value` or `valueFrom`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("an env entry sets exactly one of value or valueFrom"))]
pub struct EnvVar {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Exactly one source of a variable's value.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.serviceOutput), has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1").message("valueFrom sets exactly one of serviceOutput, secretKeyRef or configMapKeyRef"))]
pub struct EnvVarSource {
    /// An output of another Service in the same environment (e.g. a template's `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_output: Option<ServiceOutputRef>,
    /// A key of a Secret in the environment's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
    /// A key of a ConfigMap in the environment's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeySelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOutputRef {
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP path to GET; without it the check is a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Name of the port to check (default: the first port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeSpec {
    /// The DNS name the Consul API gateway serves this Service under (a
    /// name that is not a DNS name gets `Exposed=False`, `InvalidHost`).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub host: String,
    /// The path prefix routed to this Service (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// In-cluster URL of the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The URL `spec.expose` is served at through the Consul API gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_url: Option<String>,
    /// The image the current rollout runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// Services this one is connected to (variables injected).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected_to: Vec<String>,
    /// Template Services: the non-sensitive outputs of the last apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// Template Services: the Secret holding every published output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_secret: Option<String>,
    /// Template Services: hash of all output values; consumers' pods carry it
    /// and re-roll when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_hash: Option<String>,
    /// Template Services: the Terraform engine's view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform: Option<Box<TerraformStatus>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TerraformStatus {
    /// Hash of the workspace (module, inputs, backend, providers) last
    /// applied successfully; equal to the desired one means nothing to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_time: Option<String>,
    /// When the infrastructure was last compared with the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drift_check_time: Option<String>,
    /// The most recent plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
    /// The most recent OpenTofu run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunStatus>,
    /// The state lock (a Lease next to the state Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockStatus>,
    /// The Secret holding the Terraform state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// Identifies this exact plan; approve it with
    /// `kubectl annotate msvc NAME mahler.dev/approve-plan=ID`.
    pub id: String,
    /// Hash of the workspace the plan was made from.
    pub workspace_hash: String,
    pub add: i32,
    pub change: i32,
    pub destroy: i32,
    /// Why the plan was made.
    pub trigger: PlanTrigger,
    /// Where the plan stands.
    pub phase: PlanPhase,
    /// Resource changes, `<action> <address>` (at most 50 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<PlannedResource>,
    /// Who approved it (for manual approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedResource {
    pub address: String,
    pub action: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    pub operation: Operation,
    pub result: RunResult,
    pub started_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_millis: Option<i64>,
    /// The error, when it failed (diagnostics, at most 2 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The workspace the run was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_hash: Option<String>,
    /// Consecutive failed runs of this workspace (retries back off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i32>,
    /// Which step failed, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockStatus {
    pub state: LockState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
