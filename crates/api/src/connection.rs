//! `Connection` (namespaced): "service `from` may talk to service `to` on
//! `port`". One edge gives a NetworkPolicy and `<TO>_HOST/_PORT/_URL`
//! variables in the `from` service's pods.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "mahler.dev",
    version = "v1alpha1",
    kind = "Connection",
    namespaced,
    shortname = "mconn",
    category = "mahler",
    status = "ConnectionStatus",
    printcolumn = r#"{"name":"From","type":"string","jsonPath":".spec.from"}"#,
    printcolumn = r#"{"name":"To","type":"string","jsonPath":".spec.to"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 200").message("metadata.name: at most 200 characters"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.from != self.to").message("spec.to: a service cannot connect to itself"))]
pub struct ConnectionSpec {
    /// The client Service (same namespace).
    #[schemars(length(min = 1, max = 63))]
    pub from: String,
    /// The server Service (same namespace).
    #[schemars(length(min = 1, max = 63))]
    pub to: String,
    /// The port of `to` that `from` may reach; must be one of `to`'s ports.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Prefix of the injected variables (default: `to` upper-cased, `-` → `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z_][A-Z0-9_]*$"), length(max = 100))]
    pub env_prefix: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The variables injected into `from`'s pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<String>,
    /// The NetworkPolicy that admits the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
}
