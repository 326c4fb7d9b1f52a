//! `ResourceTemplate` (cluster-scoped): a Terraform module, the JSON Schema of
//! its inputs and the outputs it publishes. Template Services
//! (`spec.source.template`) instantiate it in their environment.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "mahler.dev",
    version = "v1alpha1",
    kind = "ResourceTemplate",
    shortname = "mtpl",
    category = "mahler",
    status = "ResourceTemplateStatus",
    printcolumn = r#"{"name":"Outputs","type":"string","jsonPath":".status.outputNames"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: a template name is at most 63 characters")
)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTemplateSpec {
    /// What the template makes, for people choosing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The Terraform module: exactly one of `files` or `path`.
    pub module: ModuleSource,
    /// JSON Schema (draft 2020-12) of the inputs a Service passes in
    /// `spec.source.template.inputs`; they become the module's variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub inputs: Option<serde_json::Map<String, serde_json::Value>>,
    /// The module outputs the template publishes to Services (in a Secret
    /// `<service>-outputs`, and in status when not sensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub outputs: Vec<TemplateOutput>,
}

/// Where the module's files come from: exactly one of `files`, `path` or `git`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.files), has(self.path), has(self.git)].filter(x, x).size() == 1").message("spec.module: set exactly one of files, path or git"))]
pub struct ModuleSource {
    /// Inline module files, by file name (`main.tf`, `outputs.tf`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 64").message("spec.module.files: between 1 and 64 files"))]
    #[x_kube(validation = Rule::new("self.all(f, f.matches('^[A-Za-z0-9_][-A-Za-z0-9_.]*$'))").message("spec.module.files: file names are plain names (letters, digits, '-', '_', '.'), no directories"))]
    #[x_kube(validation = Rule::new("self.exists(f, f.endsWith('.tf') || f.endsWith('.tf.json'))").message("spec.module.files: needs at least one .tf or .tf.json file"))]
    pub files: Option<BTreeMap<String, String>>,
    /// A directory on the operator's filesystem holding the module (templates
    /// shipped in the operator image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// A git repository; the operator fetches `ref` and records the commit
    /// in status (a moved branch is a new module version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitModule>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitModule {
    /// `https://...`, `ssh://...` or `file:///...` (credentials are not
    /// supported yet: public or reachable repositories only).
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(https|http|ssh|file)://")
    )]
    pub url: String,
    /// Branch, tag or commit (default `HEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[A-Za-z0-9][-A-Za-z0-9_./]*$")
    )]
    pub r#ref: Option<String>,
    /// The module's directory inside the repository (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z0-9_][-A-Za-z0-9_./]*$")
    )]
    #[x_kube(validation = Rule::new("!self.contains('..')").message("spec.module.git.path: must stay inside the repository"))]
    pub path: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateOutput {
    /// The module output's name; also the key in the outputs Secret.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$")
    )]
    pub name: String,
    /// Sensitive outputs go to the Secret only, never to status, logs or Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTemplateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Comma-separated output names (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_names: Option<String>,
    /// For `spec.module.git`: the commit fetched for `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Hash of the module `tofu validate` last checked (the verdict is the
    /// Ready condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated_hash: Option<String>,
}

impl ResourceTemplateSpec {
    /// Whether the template declares `name` as a sensitive output.
    pub fn output(&self, name: &str) -> Option<&TemplateOutput> {
        self.outputs.iter().find(|o| o.name == name)
    }
}
