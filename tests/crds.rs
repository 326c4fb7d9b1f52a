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
