//! A template Service's OpenTofu workspace, as data: the module's files, the
//! inputs as `terraform.tfvars.json`, the Kubernetes backend as
//! `mahler_backend.tf.json` (all JSON, never pasted HCL), and one hash over
//! everything that can change a plan. Pure: writing it to disk is the runner's.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use mahler_api::ResourceTemplateSpec;

/// Files Mahler adds to a module; a module must not ship its own.
pub const TFVARS: &str = "terraform.tfvars.json";
pub const BACKEND: &str = "mahler_backend.tf.json";

/// Why a workspace cannot be rendered; each names the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    InvalidInputs(String),
    #[error("{0}")]
    InvalidSchema(String),
    #[error("{0}")]
    Module(String),
    /// A git module whose commit is not checked out yet: wait, not an error.
    #[error("{0}")]
    NotFetched(String),
}

impl RenderError {
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::InvalidInputs(_) => "InvalidInputs",
            RenderError::InvalidSchema(_) => "TemplateInvalid",
            RenderError::Module(_) => "TemplateInvalid",
            RenderError::NotFetched(_) => "WaitingForTemplate",
        }
    }
}

/// Where a workspace keeps its state: a Secret `tfstate-default-<suffix>`
/// and a Lease `lock-tfstate-default-<suffix>` in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    pub secret_suffix: String,
}

impl Backend {
    pub fn for_service(namespace: &str, service: &str) -> Self {
        Backend {
            namespace: namespace.to_string(),
            secret_suffix: format!("mahler-{service}"),
        }
    }
    pub fn state_secret(&self) -> String {
        format!("tfstate-default-{}", self.secret_suffix)
    }
    pub fn lock_lease(&self) -> String {
        format!("lock-tfstate-default-{}", self.secret_suffix)
    }
}

/// A rendered workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// Relative path → content.
    pub files: BTreeMap<String, String>,
    /// Variables passed as `TF_VAR_*` (context a module may declare).
    pub vars: BTreeMap<String, String>,
    pub backend: Backend,
    /// sha256 over files, vars and the engine's fingerprint (OpenTofu and
    /// provider versions).
    pub hash: String,
    /// Mixed into plan ids, not into `hash`: the time of the last apply, so
    /// an approval is used up once applied (the same change recurring later
    /// is a new plan that needs a new approval).
    pub plan_salt: String,
}

/// The module's files: inline, read from `path` on the operator's disk, or
/// from the checkout of the template's fetched git commit under `git_trees`
/// (see [`super::git`]).
pub fn module_files(
    spec: &ResourceTemplateSpec,
    git: Option<(&Path, &str)>,
) -> Result<BTreeMap<String, String>, RenderError> {
    if let Some(files) = &spec.module.files {
        return Ok(files.clone());
    }
    let (root, field) = match (&spec.module.path, &spec.module.git) {
        (Some(path), _) => (std::path::PathBuf::from(path), "spec.module.path"),
        (None, Some(g)) => {
            let Some((trees, commit)) = git else {
                return Err(RenderError::NotFetched(format!(
                    "spec.module.git: {} has not been fetched yet",
                    g.url
                )));
            };
            let tree = trees.join(commit);
            if !tree.is_dir() {
                return Err(RenderError::NotFetched(format!(
                    "spec.module.git: commit {commit} of {} is not fetched on this operator yet",
                    g.url
                )));
            }
            (
                tree.join(g.path.as_deref().unwrap_or("")),
                "spec.module.git.path",
            )
        }
        (None, None) => {
            return Err(RenderError::Module(
                "spec.module: set files, path or git".to_string(),
            ));
        }
    };
    let shown = root.display().to_string();
    let mut files = BTreeMap::new();
    read_dir(&root, &root, &mut files)
        .map_err(|e| RenderError::Module(format!("{field}: cannot read {shown}: {e}")))?;
    if !files
        .keys()
        .any(|f| f.ends_with(".tf") || f.ends_with(".tf.json"))
    {
        return Err(RenderError::Module(format!(
            "{field}: {shown} holds no .tf files"
        )));
    }
    Ok(files)
}

fn read_dir(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue; // .terraform, .git, editor files
        }
        if entry.file_type()?.is_dir() {
            read_dir(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .map_err(std::io::Error::other)?
                .to_string_lossy()
                .to_string();
            out.insert(rel, std::fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

/// Checks `inputs` against the template's JSON Schema. Each error names the
/// field: `spec.source.template.inputs.sizeGb: 0 is less than the minimum of 1`.
pub fn validate_inputs(
    spec: &ResourceTemplateSpec,
    inputs: &serde_json::Map<String, Value>,
) -> Result<(), RenderError> {
    let Some(schema) = &spec.inputs else {
        return Ok(());
    };
    let schema = Value::Object(schema.clone());
    let validator = jsonschema::validator_for(&schema).map_err(|e| {
        RenderError::InvalidSchema(format!(
            "the template's spec.inputs is not a valid JSON Schema: {e}"
        ))
    })?;
    let instance = Value::Object(inputs.clone());
    let mut errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let field = pointer.split('/').filter(|p| !p.is_empty()).fold(
                "spec.source.template.inputs".to_string(),
                |acc, p| {
                    if p.chars().all(|c| c.is_ascii_digit()) {
                        format!("{acc}[{p}]")
                    } else {
                        format!("{acc}.{p}")
                    }
                },
            );
            format!("{field}: {e}")
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort();
    errors.dedup();
    Err(RenderError::InvalidInputs(errors.join("; ")))
}

/// Context every workspace gets as `TF_VAR_*`: a module may declare
/// `variable "mahler_namespace" {}` (and `_service`, `_environment`,
/// `_project`) to use them; undeclared ones are ignored by OpenTofu.
pub fn context_vars(
    namespace: &str,
    service: &str,
    environment: &str,
    project: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("mahler_namespace".to_string(), namespace.to_string()),
        ("mahler_service".to_string(), service.to_string()),
        ("mahler_environment".to_string(), environment.to_string()),
        ("mahler_project".to_string(), project.to_string()),
    ])
}

/// Renders a workspace from validated inputs.
pub fn render(
    module: BTreeMap<String, String>,
    inputs: &serde_json::Map<String, Value>,
    vars: BTreeMap<String, String>,
    backend: Backend,
    fingerprint: &str,
) -> Result<Workspace, RenderError> {
    for reserved in [TFVARS, BACKEND] {
        if module.contains_key(reserved) {
            return Err(RenderError::Module(format!(
                "spec.module: the module must not contain {reserved}; Mahler writes it"
            )));
        }
    }
    let mut files = module;
    files.insert(
        TFVARS.to_string(),
        serde_json::to_string_pretty(&Value::Object(inputs.clone()))
            .expect("JSON values serialise"),
    );
    let backend_config = json!({
        "terraform": {
            "backend": {
                "kubernetes": {
                    "namespace": backend.namespace,
                    "secret_suffix": backend.secret_suffix,
                }
            }
        }
    });
    files.insert(
        BACKEND.to_string(),
        serde_json::to_string_pretty(&backend_config).expect("JSON values serialise"),
    );
    let mut h = Sha256::new();
    h.update(fingerprint.as_bytes());
    for (name, content) in &files {
        h.update([0]);
        h.update(name.as_bytes());
        h.update([0]);
        h.update(content.as_bytes());
    }
    for (k, v) in &vars {
        h.update([1]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    let hash = hex(&h.finalize())[..16].to_string();
    Ok(Workspace {
        files,
        vars,
        backend,
        hash,
        plan_salt: String::new(),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::ModuleSource;

    fn spec(schema: Value) -> ResourceTemplateSpec {
        ResourceTemplateSpec {
            module: ModuleSource {
                files: Some(BTreeMap::from([("main.tf".into(), "".into())])),
                ..Default::default()
            },
            inputs: schema.as_object().cloned(),
            ..Default::default()
        }
    }

    fn inputs(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn input_errors_name_the_field() {
        let s = spec(json!({
            "type": "object",
            "properties": {
                "sizeGb": {"type": "integer", "minimum": 1},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["sizeGb"],
            "additionalProperties": false
        }));
        let err = validate_inputs(&s, &inputs(json!({"sizeGb": 0, "tags": ["a", 3]})))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.source.template.inputs.sizeGb: 0 is less than the minimum of 1"),
            "{err}"
        );
        assert!(
            err.contains("spec.source.template.inputs.tags[1]: 3 is not of type"),
            "{err}"
        );
        let err = validate_inputs(&s, &inputs(json!({"extra": 1})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"sizeGb\" is a required property"), "{err}");
        assert!(validate_inputs(&s, &inputs(json!({"sizeGb": 3}))).is_ok());
    }

    #[test]
    fn a_broken_schema_is_the_template_s_fault() {
        let s = spec(json!({"type": "no-such-type"}));
        let err = validate_inputs(&s, &inputs(json!({}))).unwrap_err();
        assert_eq!(err.reason(), "TemplateInvalid");
    }

    #[test]
    fn hash_covers_inputs_module_and_fingerprint_but_is_stable() {
        let module = BTreeMap::from([("main.tf".to_string(), "output \"x\" {}".to_string())]);
        let backend = Backend::for_service("shop-dev", "db");
        let vars = context_vars("shop-dev", "db", "shop-dev", "shop");
        let a = render(
            module.clone(),
            &inputs(json!({"a": 1})),
            vars.clone(),
            backend.clone(),
            "fp",
        )
        .unwrap();
        let again = render(
            module.clone(),
            &inputs(json!({"a": 1})),
            vars.clone(),
            backend.clone(),
            "fp",
        )
        .unwrap();
        assert_eq!(a.hash, again.hash);
        let other_input = render(
            module.clone(),
            &inputs(json!({"a": 2})),
            vars.clone(),
            backend.clone(),
            "fp",
        )
        .unwrap();
        let other_fp = render(
            module.clone(),
            &inputs(json!({"a": 1})),
            vars.clone(),
            backend.clone(),
            "fp2",
        )
        .unwrap();
        assert_ne!(a.hash, other_input.hash);
        assert_ne!(a.hash, other_fp.hash);
        assert_eq!(
            serde_json::from_str::<Value>(&a.files[BACKEND]).unwrap(),
            json!({"terraform": {"backend": {"kubernetes": {"namespace": "shop-dev", "secret_suffix": "mahler-db"}}}})
        );
        assert_eq!(a.backend.state_secret(), "tfstate-default-mahler-db");
        let mut bad = module;
        bad.insert(TFVARS.into(), "{}".into());
        assert!(render(bad, &inputs(json!({})), vars, backend, "fp").is_err());
    }
}
