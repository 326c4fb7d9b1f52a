//! The shipped ResourceTemplates parse as ResourceTemplates, satisfy the
//! operator's own checks (schema compiles, module renders) and pass real
//! `tofu init -backend=false && tofu validate` against the offline provider
//! mirror. `make test` runs the local templates; the cloud-shaped ones need
//! the AWS provider in a mirror and run with `make validate-templates`.

use std::path::{Path, PathBuf};
use std::process::Command;

use mahler_api::ResourceTemplate;
use mahler_core::terraform::workspace;

fn templates(dir: &str) -> Vec<(PathBuf, ResourceTemplate)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let t: ResourceTemplate = serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, t)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no templates in {}", dir.display());
    out
}

fn tofu_validate(mirror_var: &str, dir: &str) {
    let tofu = std::env::var("MAHLER_TOFU").expect("MAHLER_TOFU is not set: run `make test`");
    let mirror = std::env::var(mirror_var).unwrap_or_else(|_| {
        panic!("{mirror_var} is not set: run `make test` / `make validate-templates`")
    });
    let scratch = tempfile::tempdir().unwrap();
    let cli = scratch.path().join("tofu.tfrc");
    std::fs::write(
        &cli,
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path = {:?}\n    include = [\"registry.opentofu.org/*/*\"]\n  }}\n}}\n",
            mirror
        ),
    )
    .unwrap();
    for (path, t) in templates(dir) {
        // The operator's own checks first.
        workspace::validate_inputs(&t.spec, &Default::default())
            .or_else(|e| match e {
                workspace::RenderError::InvalidInputs(_) => Ok(()),
                other => Err(other),
            })
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let files = workspace::module_files(&t.spec, None).unwrap();
        let ws = scratch.path().join(kube::ResourceExt::name_any(&t));
        for (name, content) in &files {
            std::fs::create_dir_all(ws.join(name).parent().unwrap()).unwrap();
            std::fs::write(ws.join(name), content).unwrap();
        }
        for args in [
            &["init", "-backend=false", "-input=false", "-no-color"][..],
            &["validate", "-no-color"][..],
        ] {
            let out = Command::new(&tofu)
                .args(args)
                .current_dir(&ws)
                .env("TF_CLI_CONFIG_FILE", &cli)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: tofu {args:?} failed:\n{}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Every declared output exists in the module.
        let all: String = files.values().cloned().collect();
        for o in &t.spec.outputs {
            assert!(
                all.contains(&format!("output \"{}\"", o.name)),
                "{}: declares output {} that the module does not define",
                path.display(),
                o.name
            );
        }
    }
}

#[test]
fn local_templates_validate() {
    tofu_validate("MAHLER_PROVIDER_MIRROR", "manifests/templates");
}

#[test]
#[ignore = "needs the AWS provider in a mirror: `make validate-templates`"]
fn cloud_templates_validate() {
    tofu_validate("MAHLER_CLOUD_PROVIDER_MIRROR", "manifests/templates/cloud");
}
