//! The CRDs in crds/ and in the Helm chart are exactly what the types
//! generate; regenerate both with `make crds` after changing a type.

#[test]
fn committed_crds_are_up_to_date() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [root.join("crds"), root.join("charts/mahler/crds")] {
        for crd in mahler_api::all() {
            let file = dir.join(mahler_api::file_name(&crd));
            let committed = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                committed == mahler_api::to_yaml(&crd),
                "{} is stale: run `make crds` and commit the result",
                file.display()
            );
        }
        let generated = mahler_api::all().len();
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.ends_with(".yaml") && name != "kustomization.yaml"
            })
            .count();
        assert_eq!(
            files,
            generated,
            "{} holds CRD files for kinds that no longer exist: run `make crds` and remove them",
            dir.display()
        );
    }
}

#[test]
fn every_kind_has_the_mahler_category_short_name_and_status() {
    for crd in mahler_api::all() {
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["mahler".to_string()][..]),
            "{}",
            names.kind
        );
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{}",
            names.kind
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{}",
            names.kind
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready"),
            "{} has no Ready column",
            names.kind
        );
    }
}

/// Within v1alpha1, today's CRDs accept everything the CRDs of the previous
/// release (tests/fixtures/crds-0.1.0) accepted: no property removed or
/// retyped, no new required property, no enum value dropped, no bound
/// tightened.
#[test]
fn crds_stay_backward_compatible_within_v1alpha1() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for crd in mahler_api::all() {
        let file = root
            .join("tests/fixtures/crds-0.1.0")
            .join(mahler_api::file_name(&crd));
        let old: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let new = serde_json::to_value(&crd).unwrap();
        for (i, old_version) in old["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let name = old_version["name"].as_str().unwrap();
            let new_version = new["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{}: version {name} was removed", file.display()));
            assert_eq!(new_version["served"], true, "{name} is no longer served");
            let mut problems = Vec::new();
            compatible(
                &old_version["schema"]["openAPIV3Schema"],
                &new_version["schema"]["openAPIV3Schema"],
                &format!("{}[{i}]", crd.spec.names.kind),
                &mut problems,
            );
            assert!(
                problems.is_empty(),
                "{} is not backward compatible with {}:\n{}",
                crd.spec.names.kind,
                file.display(),
                problems.join("\n")
            );
        }
    }
}

fn compatible(
    old: &serde_json::Value,
    new: &serde_json::Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    use serde_json::Value;
    if old["type"] != new["type"] {
        problems.push(format!(
            "{path}: type {} became {}",
            old["type"], new["type"]
        ));
        return;
    }
    let set = |v: &Value| -> std::collections::BTreeSet<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|x| x.to_string())
            .collect()
    };
    let new_required: Vec<_> = set(&new["required"])
        .difference(&set(&old["required"]))
        .cloned()
        .collect();
    if !new_required.is_empty() {
        problems.push(format!("{path}: newly required {new_required:?}"));
    }
    if old.get("enum").is_some() {
        let dropped: Vec<_> = set(&old["enum"])
            .difference(&set(&new["enum"]))
            .cloned()
            .collect();
        if new.get("enum").is_some() && !dropped.is_empty() {
            problems.push(format!("{path}: enum values dropped {dropped:?}"));
        }
    } else if new.get("enum").is_some() {
        problems.push(format!("{path}: an enum where any value was accepted"));
    }
    for (bound, looser) in [
        ("maxLength", f64::ge as fn(&f64, &f64) -> bool),
        ("maximum", f64::ge),
        ("maxItems", f64::ge),
        ("minLength", f64::le),
        ("minimum", f64::le),
        ("minItems", f64::le),
    ] {
        match (old[bound].as_f64(), new[bound].as_f64()) {
            (Some(o), Some(n)) if !looser(&n, &o) => {
                problems.push(format!("{path}: {bound} tightened from {o} to {n}"))
            }
            (None, Some(n)) => problems.push(format!("{path}: new bound {bound} {n}")),
            _ => {}
        }
    }
    if old["pattern"] != new["pattern"] && new.get("pattern").is_some() {
        problems.push(format!(
            "{path}: pattern {} became {} (check that it accepts every old value)",
            old["pattern"], new["pattern"]
        ));
    }
    if let Some(props) = old["properties"].as_object() {
        for (name, old_prop) in props {
            match new["properties"].get(name) {
                Some(new_prop) => {
                    compatible(old_prop, new_prop, &format!("{path}.{name}"), problems)
                }
                None if new["x-kubernetes-preserve-unknown-fields"] == true => {}
                None => problems.push(format!(
                    "{path}.{name}: removed (stored objects would lose it)"
                )),
            }
        }
    }
    if old.get("items").is_some() {
        compatible(&old["items"], &new["items"], &format!("{path}[]"), problems);
    }
    if old
        .get("additionalProperties")
        .is_some_and(Value::is_object)
    {
        compatible(
            &old["additionalProperties"],
            &new["additionalProperties"],
            &format!("{path}{{}}"),
            problems,
        );
    }
}

/// Objects stored by the previous release (tests/fixtures/stored-0.1.0:
/// the shipped examples and templates, and live objects with the status the
/// operator wrote then) still decode with today's types.
#[test]
fn objects_stored_by_the_previous_release_still_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stored-0.1.0");
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            let items = if value["kind"] == "List" {
                value["items"].as_array().unwrap().clone()
            } else if value.is_null() {
                continue;
            } else {
                vec![value]
            };
            for item in items {
                let kind = item["kind"].as_str().unwrap().to_string();
                let decoded = match kind.as_str() {
                    "Project" => {
                        serde_json::from_value::<mahler_api::Project>(item.clone()).map(|_| ())
                    }
                    "Environment" => {
                        serde_json::from_value::<mahler_api::Environment>(item.clone()).map(|_| ())
                    }
                    "Service" => {
                        serde_json::from_value::<mahler_api::Service>(item.clone()).map(|_| ())
                    }
                    "Connection" => {
                        serde_json::from_value::<mahler_api::Connection>(item.clone()).map(|_| ())
                    }
                    "ResourceTemplate" => {
                        serde_json::from_value::<mahler_api::ResourceTemplate>(item.clone())
                            .map(|_| ())
                    }
                    other => panic!("{}: unexpected kind {other}", path.display()),
                };
                if let Err(e) = decoded {
                    panic!(
                        "{} {} from {} no longer decodes: {e}",
                        kind,
                        item["metadata"]["name"],
                        path.display()
                    );
                }
                *kinds.entry(kind).or_default() += 1;
            }
        }
    }
    for kind in [
        "Project",
        "Environment",
        "Service",
        "Connection",
        "ResourceTemplate",
    ] {
        assert!(
            kinds.contains_key(kind),
            "no stored {kind} in {}",
            dir.display()
        );
    }
}
