//! GitOps tools understand Mahler's health without configuration: kstatus
//! (what Flux uses) and the shipped Argo CD health script (run in
//! gopher-lua, the interpreter Argo CD embeds), on live objects in the
//! Ready, progressing, stalled and deleting states and on samples.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kube::Api;
use mahler_api::{Connection, Service};
use serde_json::{Value, json};

use crate::harness::{condition_is, env, is_ready, shared, wait_for};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/gitops/argocd-health.lua")
}

/// `gitops-check` over objects: name → (status, message).
fn check(args: &[&str], objects: &Value) -> BTreeMap<String, (String, String)> {
    let mut child = Command::new(env().tools.join("gitops-check"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gitops-check (hack/tools.sh build gitops-check)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(objects.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "gitops-check {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                (
                    v["status"].as_str().unwrap().to_string(),
                    v["message"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

fn kstatus(objects: &Value) -> BTreeMap<String, (String, String)> {
    check(&["kstatus"], objects)
}

fn argocd(objects: &Value) -> BTreeMap<String, (String, String)> {
    check(&["argocd", script().to_str().unwrap()], objects)
}

fn status_of(results: &BTreeMap<String, (String, String)>, name: &str) -> String {
    results
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {results:?}"))
        .0
        .clone()
}

#[tokio::test]
async fn kstatus_and_argocd_read_live_mahler_objects() {
    let _g = shared().await;
    let e = env();
    let client = e.client().await;
    let ns = crate::project_with_env(&client, "gitops").await;
    e.apply(&format!(
        "{}---\n{}---\n{}---\n{}",
        crate::service_yaml(&ns, "web", "nginx:1.27", "[{name: http, port: 80}]"),
        // Progressing: waits for the outputs of a Service that does not exist.
        format_args!(
            "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: waits, namespace: {ns}}}\nspec:\n  source: {{image: \"app:1\"}}\n  env:\n  - name: DB_URL\n    valueFrom: {{serviceOutput: {{service: db, key: url}}}}\n"
        ),
        // Stalled: a Connection to a Service that does not exist.
        crate::connection_yaml(&ns, "broken", "web", "missing", 80),
        // Deleting: held by a finalizer of the test's own.
        format_args!(
            "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: leaving, namespace: {ns}, finalizers: [test.mahler.dev/hold]}}\nspec:\n  source: {{image: \"app:1\"}}\n"
        ),
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let connections: Api<Connection> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &services,
        "web",
        "web Ready",
        is_ready(crate::svc_conditions),
    )
    .await;
    wait_for(
        &services,
        "leaving",
        "leaving Ready",
        is_ready(crate::svc_conditions),
    )
    .await;
    wait_for(
        &services,
        "waits",
        "waits reconciled",
        condition_is("Reconciling", "True", crate::svc_conditions),
    )
    .await;
    wait_for(
        &connections,
        "broken",
        "broken Stalled",
        condition_is("Stalled", "True", crate::conn_conditions),
    )
    .await;
    e.kubectl(&[
        "delete",
        "service.mahler.dev",
        "leaving",
        "-n",
        &ns,
        "--wait=false",
    ]);
    wait_for(
        &services,
        "leaving",
        "leaving deleting",
        |s: Option<&Service>| s.is_some_and(|s| s.metadata.deletion_timestamp.is_some()),
    )
    .await;
    // The operator's finalizer goes; ours holds the object in deletion.
    wait_for(
        &services,
        "leaving",
        "operator finalizer removed",
        |s: Option<&Service>| {
            s.and_then(|s| s.metadata.finalizers.as_ref())
                .is_some_and(|f| f == &vec!["test.mahler.dev/hold".to_string()])
        },
    )
    .await;

    let live: Value = serde_json::from_str(&e.kubectl(&[
        "get",
        "-n",
        &ns,
        "services.mahler.dev,connections.mahler.dev",
        "-o",
        "json",
    ]))
    .unwrap();
    let scoped: Value = serde_json::from_str(&e.kubectl(&[
        "get",
        "projects.mahler.dev/gitops",
        &format!("environments.mahler.dev/{ns}"),
        "-o",
        "json",
    ]))
    .unwrap();

    // kstatus calls an object without status Current too: a Current that
    // counts is one whose status describes the current generation.
    for list in [&live, &scoped] {
        for item in list["items"].as_array().unwrap() {
            let name = item["metadata"]["name"].as_str().unwrap();
            if name != "leaving" {
                assert_eq!(
                    item["status"]["observedGeneration"], item["metadata"]["generation"],
                    "{name}: status is for an older generation"
                );
            }
        }
    }
    let ks = kstatus(&live);
    assert_eq!(status_of(&ks, "web"), "Current", "{ks:?}");
    assert_eq!(status_of(&ks, "waits"), "InProgress", "{ks:?}");
    assert_eq!(status_of(&ks, "broken"), "Failed", "{ks:?}");
    assert_eq!(status_of(&ks, "leaving"), "Terminating", "{ks:?}");
    let ks = kstatus(&scoped);
    assert_eq!(status_of(&ks, "gitops"), "Current", "{ks:?}");
    assert_eq!(status_of(&ks, &ns), "Current", "{ks:?}");

    let argo = argocd(&live);
    assert_eq!(status_of(&argo, "web"), "Healthy", "{argo:?}");
    assert_eq!(status_of(&argo, "waits"), "Progressing", "{argo:?}");
    assert!(argo["waits"].1.contains("WaitingForOutputs"), "{argo:?}");
    assert_eq!(status_of(&argo, "broken"), "Degraded", "{argo:?}");
    assert!(argo["broken"].1.contains("missing"), "{argo:?}");
    assert_eq!(status_of(&argo, "leaving"), "Progressing", "{argo:?}");
    let argo = argocd(&scoped);
    assert_eq!(status_of(&argo, "gitops"), "Healthy", "{argo:?}");
    assert_eq!(status_of(&argo, &ns), "Healthy", "{argo:?}");

    e.kubectl(&[
        "patch",
        "service.mahler.dev",
        "leaving",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    e.kubectl(&["delete", "project", "gitops", "--wait=false"]);
}

fn sample(name: &str, generation: i64, status: Value) -> Value {
    let mut obj = json!({
        "apiVersion": "mahler.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop-staging", "generation": generation},
        "spec": {"source": {"image": "app:1"}},
    });
    if !status.is_null() {
        obj["status"] = status;
    }
    obj
}

fn conditions(observed: i64, ready: (&str, &str), reconciling: bool, stalled: bool) -> Value {
    let c = |t: &str, s: bool, reason: &str| {
        json!({"type": t, "status": if s { "True" } else { "False" }, "reason": reason,
               "message": format!("{reason} message"), "observedGeneration": observed,
               "lastTransitionTime": "2026-12-01T00:00:00Z"})
    };
    let mut list = vec![
        json!({"type": "Ready", "status": ready.0, "reason": ready.1,
        "message": format!("{} message", ready.1), "observedGeneration": observed,
        "lastTransitionTime": "2026-12-01T00:00:00Z"}),
    ];
    if reconciling {
        list.push(c("Reconciling", true, ready.1));
    }
    if stalled {
        list.push(c("Stalled", true, ready.1));
    }
    json!({"observedGeneration": observed, "conditions": list})
}

#[tokio::test]
async fn argocd_script_and_kstatus_agree_on_samples() {
    let _g = shared().await;
    let samples = json!({"apiVersion": "v1", "kind": "List", "items": [
        sample("ready", 2, conditions(2, ("True", "Available"), false, false)),
        sample("old-generation", 3, conditions(2, ("True", "Available"), false, false)),
        sample("rolling", 2, conditions(2, ("False", "RollingOut"), true, false)),
        sample("approval", 2, conditions(2, ("False", "AwaitingApproval"), true, false)),
        sample("stalled", 2, conditions(2, ("False", "TargetMissing"), false, true)),
        // Not yet seen by the operator. kstatus calls an object with no
        // status at all Current; Argo CD's script waits for the operator.
        sample("new", 1, Value::Null),
    ]});
    let ks = kstatus(&samples);
    let argo = argocd(&samples);
    for (name, want_ks, want_argo) in [
        ("ready", "Current", "Healthy"),
        ("old-generation", "InProgress", "Progressing"),
        ("rolling", "InProgress", "Progressing"),
        ("approval", "InProgress", "Suspended"),
        ("stalled", "Failed", "Degraded"),
        ("new", "Current", "Progressing"),
    ] {
        assert_eq!(status_of(&ks, name), want_ks, "kstatus of {name}: {ks:?}");
        assert_eq!(
            status_of(&argo, name),
            want_argo,
            "Argo CD of {name}: {argo:?}"
        );
    }
    assert_eq!(argo["stalled"].1, "TargetMissing: TargetMissing message");

    // A second opinion: the reference Lua interpreter (Debian's lua5.4).
    for item in samples["items"].as_array().unwrap() {
        let name = item["metadata"]["name"].as_str().unwrap();
        let out = Command::new("lua5.4")
            .arg("-e")
            .arg(format!("obj = {}", lua_literal(item)))
            .arg("-e")
            .arg(format!(
                "local r = dofile({:?}) print(r.status) print(r.message or '')",
                script().to_str().unwrap()
            ))
            .output()
            .expect("lua5.4 is not installed: `apt-get install lua5.4`");
        assert!(
            out.status.success(),
            "lua5.4 on {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(
            (lines.next().unwrap_or(""), lines.next().unwrap_or("")),
            (argo[name].0.as_str(), argo[name].1.as_str()),
            "lua5.4 and gopher-lua disagree on {name}"
        );
    }
}

/// A JSON value as a Lua table constructor.
fn lua_literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // Rust's escapes (\n, \", \\, \u{..}) are Lua 5.4's too.
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "{{{}}}",
            a.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[tokio::test]
async fn argocd_configmap_carries_the_script_for_every_kind() {
    let _g = shared().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cm: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("manifests/gitops/argocd-cm.yaml")).unwrap(),
    )
    .unwrap();
    let lua = std::fs::read_to_string(script()).unwrap();
    for crd in mahler_api::all() {
        let key = format!(
            "resource.customizations.health.{}_{}",
            crd.spec.group, crd.spec.names.kind
        );
        assert_eq!(
            cm["data"][&key].as_str(),
            Some(lua.as_str()),
            "{key} in manifests/gitops/argocd-cm.yaml is missing or stale: run `make manifests`"
        );
    }
}
