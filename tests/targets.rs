//! Every test target of the workspace runs in `make test`: hack/test.sh
//! runs `cargo test --workspace` (every target cargo tests by default, in
//! every crate, so a new crate's tests run without anyone listing them),
//! and names each target that opts out (`test = false`) in its own phase.
//! Found missing before: crates/server/tests/api.rs (the guard of
//! docs/openapi.json) and crates/cli/tests/render.rs (the CLI's snapshots).

use std::process::Command;

#[test]
fn every_test_target_runs_in_make_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(root.join("hack/test.sh")).expect("hack/test.sh");
    let commands: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains("cargo test"))
        .collect();
    assert!(
        commands
            .iter()
            .any(|l| l.ends_with("cargo test --workspace")),
        "hack/test.sh must run `cargo test --workspace` with no target filter; it runs: {commands:#?}"
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut opted_out = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        for target in package["targets"].as_array().expect("targets") {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            // Benches run with `make bench`; examples are not tests.
            let testable = kinds
                .iter()
                .any(|k| matches!(*k, "test" | "lib" | "rlib" | "bin" | "proc-macro"));
            if testable && target["test"] == false {
                opted_out.push(target["name"].as_str().unwrap_or("?").to_string());
            }
        }
    }
    for name in &opted_out {
        let runs = commands
            .iter()
            .any(|l| l.contains(&format!("cargo test --test {name} ")));
        assert!(
            runs,
            "test target {name} has `test = false`, so `cargo test --workspace` skips it, and hack/test.sh does not run it with `cargo test --test {name}`"
        );
    }
    assert!(
        opted_out.iter().any(|n| n == "e2e"),
        "the e2e target is expected to opt out (it needs the run's cluster): {opted_out:?}"
    );
}
