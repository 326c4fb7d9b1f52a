//! The Helm chart and the kustomize bundle, checked with the real helm and
//! the real API server: lint, schema, server-side dry run, Pod Security,
//! bundle == chart defaults, and an upgrade from the previous chart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use mahler_api::Service;
use serde_json::Value;

use crate::harness::{
    documents, env, exclusive, helm, helm_output, is_ready, kubectl_output, shared, wait_for,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> String {
    root().join("charts/mahler").to_string_lossy().into_owned()
}

fn run_helm(args: &[&str]) -> String {
    let e = env();
    helm(&e.tools, &e.kubeconfig, args)
}

/// `helm template` of the chart with `--set` values (release "mahler" in
/// mahler-system, as the docs install it).
fn render(sets: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        "mahler",
        chart.as_str(),
        "--namespace",
        "mahler-system",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    run_helm(&args)
}

fn key(v: &Value) -> String {
    format!(
        "{}/{} {}/{}",
        v["apiVersion"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

/// Drops the labels only Helm sets (the bundle is not managed by Helm).
fn without_helm_labels(mut v: Value) -> Value {
    if let Some(labels) = v
        .get_mut("metadata")
        .and_then(|m| m.get_mut("labels"))
        .and_then(Value::as_object_mut)
    {
        labels.remove("helm.sh/chart");
        labels.remove("app.kubernetes.io/managed-by");
    }
    v
}

/// Whole numbers as integers: kustomize writes the CRDs' `65535.0` as
/// `65535`, the same value.
fn whole_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(whole_numbers).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, whole_numbers(v))).collect())
        }
        other => other,
    }
}

#[tokio::test]
async fn helm_lint_passes_with_default_and_every_optional_part() {
    let _g = shared().await;
    let chart = chart();
    run_helm(&["lint", "--strict", &chart]);
    run_helm(&[
        "lint",
        "--strict",
        &chart,
        "--set",
        "replicas=1,leaderElection.enabled=false,metrics.serviceMonitor.enabled=true,terraform.enabled=false,admissionPolicies.enabled=false",
    ]);
    run_helm(&[
        "lint",
        "--strict",
        &chart,
        "--set",
        "telemetry.logs.enabled=true,telemetry.logs.namespace=mahler-logs,operator.otlpEndpoint=http://otel.observability:4317,dashboard.namespace=grafana,leaderElection.enabled=false,replicas=1",
    ]);
    // helm was built with its version and the cluster's Kubernetes version:
    // it renders for that cluster, not for Kubernetes 1.20 (which the
    // chart's kubeVersion would refuse, as it refuses 1.29 here).
    let version = run_helm(&["version", "--short"]);
    assert!(version.starts_with("v3.22.0"), "helm version: {version}");
    let out = helm_output(
        &env().tools,
        &env().kubeconfig,
        &["template", "x", &chart, "--kube-version", "1.29.0"],
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(">=1.30.0-0"),
        "the chart must refuse Kubernetes older than 1.30 (ValidatingAdmissionPolicy GA)"
    );
    render(&[]); // and the default render (for the cluster's version) works
}

#[tokio::test]
async fn invalid_values_are_refused_naming_the_field() {
    let _g = shared().await;
    let chart = chart();
    for (set, field) in [
        ("replicas=-1", "/replicas"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("operator.concurrency=0", "/operator/concurrency"),
        (
            "terraform.driftCheckInterval=soon",
            "/terraform/driftCheckInterval",
        ),
        (
            r#"rbac.extraRules=[{"apiGroups":["*"],"resources":["pods"],"verbs":["get"]}]"#,
            "/rbac/extraRules/0/apiGroups/0",
        ),
        (
            r#"rbac.extraRules=[{"apiGroups":[""],"resources":["pods"],"verbs":["*"]}]"#,
            "/rbac/extraRules/0/verbs/0",
        ),
        ("podLabels.app\\.kubernetes\\.io/name=x", "/podLabels"),
        (
            "telemetry.logs.namespace=Logs_NS",
            "/telemetry/logs/namespace",
        ),
        (
            "operator.otlpEndpoint=collector:4317",
            "/operator/otlpEndpoint",
        ),
        ("replicass=2", "replicass"),
    ] {
        let flag = if set.starts_with("rbac") {
            "--set-json"
        } else {
            "--set"
        };
        let out = helm_output(
            &env().tools,
            &env().kubeconfig,
            &["template", "mahler", &chart, flag, set],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains(field),
            "--set {set}: the error should name {field}: {stderr}"
        );
    }
    let out = helm_output(
        &env().tools,
        &env().kubeconfig,
        &[
            "template",
            "mahler",
            &chart,
            "--set",
            "replicas=3,leaderElection.enabled=false",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("replicas > 1 needs leaderElection.enabled"),
        "several replicas without leader election must be refused"
    );
}

#[tokio::test]
async fn rendered_chart_passes_a_server_side_dry_run_under_restricted_pod_security() {
    let _g = shared().await;
    let e = env();
    let ns = "chart-dry-run";
    e.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/warn: restricted\n"
    ));
    let chart = chart();
    // Another release name, so the dry run collides with nothing installed
    // (and without the cluster-wide access roles, which the suite's release
    // holds: a second release sets rbac.accessRoles=false).
    let yaml = run_helm(&[
        "template",
        "dry",
        &chart,
        "--namespace",
        ns,
        "--set",
        "replicas=3,rbac.accessRoles=false",
    ]);
    let out = kubectl_output(
        &e.kubectl,
        &e.kubeconfig,
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&yaml),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "server-side dry run failed: {stderr}");
    assert!(
        !stderr.contains("PodSecurity"),
        "the Deployment violates the restricted Pod Security level: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "deployment.apps/dry-operator",
        "clusterrole.rbac.authorization.k8s.io/dry-operator",
        "validatingadmissionpolicy.admissionregistration.k8s.io/dry-plan-approval",
        "validatingadmissionpolicy.admissionregistration.k8s.io/dry-operator-scope",
        "poddisruptionbudget.policy/dry-operator",
    ] {
        assert!(stdout.contains(kind), "{kind} missing from: {stdout}");
    }
    e.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

#[tokio::test]
async fn deployment_is_hardened_and_the_pdb_follows_replicas() {
    let _g = shared().await;
    let docs = documents(&render(&[]));
    let d = find(&docs, "Deployment").expect("a Deployment");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["volumes"][0]["name"], "work");
    assert!(pod["volumes"][0]["emptyDir"].is_object());
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 45);
    assert!(pod["topologySpreadConstraints"].is_array());
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-elect=true"), "{args:?}");
    assert!(args.contains(&"--log-format=json"), "{args:?}");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(c[probe]["httpGet"].is_object(), "{probe}");
    }
    // Every flag the chart passes is one the operator accepts.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_mahler-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in &args {
        let flag = arg.split('=').next().unwrap();
        assert!(help.contains(flag), "the operator has no flag {flag}");
    }
    assert!(
        find(&docs, "PodDisruptionBudget").is_some(),
        "2 replicas: a PDB"
    );
    let single = documents(&render(&["replicas=1"]));
    assert!(
        find(&single, "PodDisruptionBudget").is_none(),
        "1 replica: no PDB (it would block node drains)"
    );
    // Templates that create other kinds: rbac.extraRules joins the role.
    let extra = documents(&run_helm(&[
        "template",
        "mahler",
        &chart(),
        "--set-json",
        r#"rbac.extraRules=[{"apiGroups":[""],"resources":["persistentvolumeclaims"],"verbs":["get","create"]}]"#,
    ]));
    let extra_rules = extra
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "mahler-terraform")
        .expect("the Terraform role")["rules"]
        .as_array()
        .unwrap();
    assert!(
        extra_rules
            .iter()
            .any(|r| r["resources"][0] == "persistentvolumeclaims" && r["verbs"][1] == "create"),
        "{extra_rules:?}"
    );
    let rules: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .flat_map(|d| d["rules"].as_array().unwrap())
        .collect();
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            for v in rule[field].as_array().unwrap() {
                assert_ne!(v, "*", "wildcard in the ClusterRole: {rule}");
            }
        }
    }
}

#[tokio::test]
async fn kustomize_bundle_matches_the_chart_defaults() {
    let _g = shared().await;
    let e = env();
    let chart = chart();
    let from_chart: BTreeMap<String, Value> = documents(&run_helm(&[
        "template",
        "mahler",
        &chart,
        "--namespace",
        "mahler-system",
        "--include-crds",
    ]))
    .into_iter()
    .map(without_helm_labels)
    .map(whole_numbers)
    .map(|v| (key(&v), v))
    .collect();
    let mut from_bundle: BTreeMap<String, Value> =
        documents(&e.kubectl(&["kustomize", root().join("manifests").to_str().unwrap()]))
            .into_iter()
            .map(whole_numbers)
            .map(|v| (key(&v), v))
            .collect();
    // The bundle also creates the namespace (Helm: --create-namespace).
    let ns = from_bundle
        .remove("v1/Namespace /mahler-system")
        .expect("the bundle creates mahler-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let chart_keys: Vec<_> = from_chart.keys().collect();
    let bundle_keys: Vec<_> = from_bundle.keys().collect();
    assert_eq!(
        chart_keys, bundle_keys,
        "the kustomize bundle and the chart create different objects: run `make manifests`"
    );
    for (k, v) in &from_chart {
        assert_eq!(
            v, &from_bundle[k],
            "{k} differs between the chart and manifests/: run `make manifests`"
        );
    }
}

#[tokio::test]
async fn helm_upgrade_from_the_previous_chart_keeps_objects_ready() {
    // Upgrades the suite's own release (the operator under test runs with its
    // ServiceAccount), so nothing else may run meanwhile.
    let _g = exclusive().await;
    let e = env();
    let client = e.client().await;
    let ns = crate::project_with_env(&client, "upgrade").await;
    e.apply(&crate::service_yaml(
        &ns,
        "web",
        "nginx:1.27",
        "[{name: http, port: 80}]",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &services,
        "web",
        "web Ready",
        is_ready(crate::svc_conditions),
    )
    .await;

    let fixture = root().join("tests/fixtures/chart-0.1.0");
    let release = |chart: &str, sets: &str| {
        run_helm(&[
            "upgrade",
            "mahler",
            chart,
            "--namespace",
            "mahler-system",
            "--reset-values",
            "--set",
            sets,
            "--wait",
            "--timeout=120s",
        ])
    };
    // The suite's release at the previous chart, then upgraded to this one
    // with changed values.
    // While the previous chart is installed, the operator under test is
    // refused what only this chart grants (the access objects): the RBAC
    // audit check leaves that window out (rbac.rs).
    let mark = |what: &str| {
        let now = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
            .output()
            .unwrap();
        let line = format!("{what} {}", String::from_utf8_lossy(&now.stdout));
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(e.dir.join("previous-chart-window"))
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    };
    mark("start");
    release(fixture.to_str().unwrap(), "replicas=2");
    // Consul and the log agent stay on, as the suite's release has them
    // (harness.rs).
    release(
        &chart(),
        &format!(
            "replicas=3,operator.concurrency=8,operator.logLevel=debug,podDisruptionBudget.maxUnavailable=2,telemetry.logs.enabled=true,consul.address={}",
            e.consul.address
        ),
    );
    mark("end");
    let history = run_helm(&["history", "mahler", "-n", "mahler-system", "-o", "json"]);
    let history: Value = serde_json::from_str(&history).unwrap();
    let revisions = history.as_array().unwrap();
    let last = revisions.last().unwrap();
    let previous = &revisions[revisions.len() - 2];
    assert_eq!(last["status"], "deployed", "{last}");
    assert_eq!(previous["chart"], "mahler-0.1.0", "{previous}");
    assert_ne!(
        last["chart"], previous["chart"],
        "an upgrade to a newer chart"
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "mahler-system");
    let d = deployments.get("mahler-operator").await.unwrap();
    let status = d.status.unwrap();
    assert_eq!(status.available_replicas, Some(3), "rolled out: {status:?}");
    let args = d.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--concurrency=8".to_string()), "{args:?}");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "mahler-system");
    let pdb = pdbs.get("mahler-operator").await.unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
    );

    // The operator kept its ServiceAccount and permissions through both
    // upgrades: objects stay Ready and a change made now is reconciled.
    wait_for(
        &services,
        "web",
        "web Ready",
        is_ready(crate::svc_conditions),
    )
    .await;
    e.apply(&crate::service_yaml(
        &ns,
        "web",
        "nginx:1.28",
        "[{name: http, port: 80}]",
    ));
    wait_for(
        &services,
        "web",
        "web Ready at the new image",
        is_ready(crate::svc_conditions),
    )
    .await;

    // Back to the values the rest of the suite expects (defaults, Consul
    // and the log agent on).
    run_helm(&[
        "upgrade",
        "mahler",
        &chart(),
        "--namespace",
        "mahler-system",
        "--reset-values",
        "--set",
        &format!("consul.address={}", e.consul.address),
        "--set",
        "telemetry.logs.enabled=true",
        "--wait",
        "--timeout=120s",
    ]);
    e.kubectl(&["delete", "project", "upgrade", "--wait=false"]);
}

#[tokio::test]
async fn operator_writes_stay_inside_environment_namespaces() {
    let _g = shared().await;
    let e = env();
    let client = e.client().await;
    let ns = crate::project_with_env(&client, "scope").await;
    let user = crate::harness::OPERATOR_USER;
    let says = "writes only in Environment namespaces";
    // Allowed by the ClusterRole, refused by the chart's admission policy.
    for args in [
        vec!["create", "secret", "generic", "scope-test", "-n", "default"],
        vec![
            "create",
            "secret",
            "generic",
            "scope-test",
            "-n",
            "kube-system",
        ],
        vec![
            "label",
            "namespace",
            "default",
            "mahler.dev/environment=fake",
        ],
    ] {
        let (ok, stderr) = e.kubectl_as(user, &args);
        assert!(!ok, "the operator's identity may not {args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Inside an Environment's namespace it may.
    let (ok, stderr) = e.kubectl_as(
        user,
        &["create", "secret", "generic", "scope-test", "-n", &ns],
    );
    assert!(ok, "{stderr}");
    let (ok, stderr) = e.kubectl_as(user, &["delete", "secret", "scope-test", "-n", &ns]);
    assert!(ok, "{stderr}");
    e.kubectl(&["delete", "project", "scope", "--wait=false"]);
}
