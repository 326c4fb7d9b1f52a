//! Least privilege, proven: the chart's ClusterRole grants exactly the
//! verbs the operator used during the whole end-to-end run, as the API
//! server's audit log recorded them (hack/cluster.sh logs every request of
//! the operator's ServiceAccount). `hack/test.sh` runs this after the suite:
//!
//!     cargo test --test e2e -- --ignored rbac::
//!
//! A verb nobody used fails it (the role grew), and so does a request the
//! API server denied (the role is too small).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::harness::{OPERATOR_USER, is_terraform_user};

/// Rules the API server checks without the operator ever calling them.
/// Only these may go unseen in the audit log.
const AUTHORIZATION_ONLY: &[(&str, &str, &str, &str)] = &[
    // RBAC's escalation check: binding the Terraform role in a RoleBinding
    // needs `bind` on it (the operator does not hold all of its rules).
    (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "bind",
        "RoleBinding escalation check",
    ),
    // RBAC's escalation check: creating the per-project ClusterRoles of
    // members and owners needs their rules held (docs/access.md).
    ("mahler.dev", "projects", "get", "held to grant it"),
    ("mahler.dev", "projects", "update", "held to grant it"),
    ("mahler.dev", "projects", "delete", "held to grant it"),
    ("mahler.dev", "environments", "get", "held to grant it"),
    ("mahler.dev", "environments", "create", "held to grant it"),
    ("mahler.dev", "environments", "update", "held to grant it"),
    // OwnerReferencesPermissionEnforcement (OpenShift, hardened clusters):
    // setting blockOwnerDeletion on an owned object needs `update` on the
    // owner's finalizers subresource.
    (
        "mahler.dev",
        "projects/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "mahler.dev",
        "environments/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "mahler.dev",
        "services/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
    (
        "mahler.dev",
        "connections/finalizers",
        "update",
        "blockOwnerDeletion",
    ),
];

type Grant = (String, String, String); // (apiGroup, resource[/subresource], verb)

fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            for v in rule[field].as_array().unwrap() {
                assert_ne!(v, "*", "a wildcard in {}: {rule}", role["metadata"]["name"]);
            }
        }
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "non-resource URLs in the role: {rule}"
        );
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        g.as_str().unwrap().to_string(),
                        r.as_str().unwrap().to_string(),
                        v.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
#[ignore = "needs the audit log of a whole run: hack/test.sh runs it after the suite"]
fn cluster_role_matches_the_api_calls_of_a_whole_run() {
    let dir = PathBuf::from(std::env::var("MAHLER_TEST_DIR").expect("run by hack/test.sh"));
    let tools = PathBuf::from(std::env::var("MAHLER_TOOLS_DIR").expect("run by hack/test.sh"));
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/mahler");
    let rendered = crate::harness::helm(
        &tools,
        &dir.join("kubeconfig"),
        &[
            "template",
            "mahler",
            chart.to_str().unwrap(),
            "--namespace",
            "mahler-system",
            // As the suite installs it: Consul and the log agent on (harness.rs).
            "--set",
            "consul.address=http://127.0.0.1:8500",
            "--set",
            "telemetry.logs.enabled=true",
        ],
    );
    let docs = crate::harness::documents(&rendered);
    let role_of = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
    };
    let cluster = grants(role_of("ClusterRole", "mahler-operator"));
    let leader = grants(role_of("Role", "mahler-operator-leader-election"));
    let log_agent = grants(role_of("Role", "mahler-operator-log-agent"));
    let terraform = grants(role_of("ClusterRole", "mahler-terraform"));

    let audit_log = std::fs::read_dir(dir.join("clusters"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("logs/audit.log");
    let text = std::fs::read_to_string(&audit_log).expect("audit log");
    // (start, end) of each time the previous chart was installed.
    let marks = std::fs::read_to_string(dir.join("previous-chart-window")).unwrap_or_default();
    let mut previous_chart: Vec<(String, String)> = Vec::new();
    let mut start = None;
    for line in marks.lines() {
        match line.split_once(' ') {
            Some(("start", t)) => start = Some(t.trim().to_string()),
            Some(("end", t)) => {
                if let Some(s) = start.take() {
                    previous_chart.push((s, t.trim().to_string()));
                }
            }
            _ => {}
        }
    }
    // (grant, namespace) → how often, and every denied request.
    let mut seen_cluster: BTreeMap<Grant, usize> = BTreeMap::new();
    let mut seen_leader: BTreeMap<Grant, usize> = BTreeMap::new();
    let mut seen_log_agent: BTreeMap<Grant, usize> = BTreeMap::new();
    let mut seen_terraform: BTreeMap<Grant, usize> = BTreeMap::new();
    let mut denied = BTreeSet::new();
    let mut calls = 0;
    let mut refused_elsewhere = 0;
    for event in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        // One line per request: its ResponseComplete, except for watches,
        // which complete only when they end (the operator still runs).
        let watch = event["verb"] == "watch";
        let stage = if watch {
            "ResponseStarted"
        } else {
            "ResponseComplete"
        };
        let user = event["user"]["username"].as_str().unwrap_or("");
        let is_tofu = is_terraform_user(user);
        if (user != OPERATOR_USER && !is_tofu) || event["stage"] != stage {
            continue;
        }
        let obj = &event["objectRef"];
        let Some(resource) = obj["resource"].as_str() else {
            continue; // non-resource URLs (/version, /api discovery) need no grant
        };
        calls += 1;
        let resource = match obj["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let grant = (
            obj["apiGroup"].as_str().unwrap_or("").to_string(),
            resource,
            event["verb"].as_str().unwrap().to_string(),
        );
        // Denied by authorization (a quota or an admission policy also
        // answers 403, after RBAC allowed the request).
        if event["annotations"]["authorization.k8s.io/decision"] == "forbid" {
            // OpenTofu refused outside its own environment's namespace is
            // the design working (terraform::a_template_runs_as_its_environment...).
            let own = user.split(':').nth(2).unwrap_or("");
            if is_tofu && obj["namespace"].as_str() != Some(own) {
                refused_elsewhere += 1;
                continue;
            }
            // The suite's release ran the previous chart for a while
            // (chart::helm_upgrade_...): refusals of what only this chart
            // grants are expected then.
            let at = event["requestReceivedTimestamp"].as_str().unwrap_or("");
            if previous_chart
                .iter()
                .any(|(from, to)| at >= from.as_str() && at <= to.as_str())
            {
                continue;
            }
            denied.insert(format!(
                "{user}: {} {} in {:?}: {}",
                grant.2,
                grant.1,
                obj["namespace"].as_str().unwrap_or("(cluster)"),
                event["responseStatus"]["message"].as_str().unwrap_or("")
            ));
            continue;
        }
        let in_lease_namespace =
            obj["namespace"] == "mahler-system" && grant.1 == "leases" && leader.contains(&grant);
        // The pod-log agent's Role, in its namespace (the release's here).
        let in_agent_namespace = obj["namespace"] == "mahler-system" && log_agent.contains(&grant);
        let seen = if is_tofu {
            &mut seen_terraform
        } else if in_lease_namespace {
            &mut seen_leader
        } else if in_agent_namespace {
            &mut seen_log_agent
        } else {
            &mut seen_cluster
        };
        // A server-side apply that creates the object (201) is a patch in
        // the audit log, and the API server also authorizes it as `create`.
        if grant.2 == "patch" && event["responseStatus"]["code"] == 201 {
            let created = (grant.0.clone(), grant.1.clone(), "create".to_string());
            *seen.entry(created).or_default() += 1;
        }
        *seen.entry(grant).or_default() += 1;
    }
    // The REST API's own ServiceAccount (rest.rs runs it, with the chart's
    // apiServer ClusterRole): it reviews
    // tokens and impersonates, nothing else. An impersonated request's
    // audit event names the server as `user` and the caller as
    // `impersonatedUser`, and RBAC decided it as the caller.
    let api_user = crate::rest::API_USER;
    let (mut reviews, mut impersonated, mut other) = (0, 0, Vec::new());
    for event in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == api_user && e["stage"] == "ResponseComplete")
    {
        if event["impersonatedUser"]["username"].is_string() {
            impersonated += 1;
        } else if event["objectRef"].is_null() {
            // A non-resource URL: /readyz asks kube-apiserver for /version,
            // which every authenticated user may read (no grant).
            assert_eq!(event["requestURI"], "/version", "{event}");
        } else if event["objectRef"]["resource"] == "tokenreviews"
            && event["verb"] == "create"
            && event["annotations"]["authorization.k8s.io/decision"] != "forbid"
        {
            reviews += 1;
        } else {
            other.push(format!(
                "{} {} {}",
                event["verb"], event["objectRef"]["resource"], event["requestURI"]
            ));
        }
    }
    eprintln!(
        "REST API ServiceAccount: {reviews} TokenReviews, {impersonated} impersonated requests"
    );
    assert!(
        reviews > 0 && impersonated > 0,
        "no REST API traffic in the audit log ({reviews} reviews, {impersonated} impersonated)"
    );
    assert!(
        other.is_empty(),
        "the REST API made calls as itself beyond TokenReviews:\n{}",
        other.join("\n")
    );
    assert!(
        calls > 1000,
        "only {calls} operator calls in {}: is the audit policy logging reads?",
        audit_log.display()
    );

    let exempt: BTreeSet<Grant> = AUTHORIZATION_ONLY
        .iter()
        .map(|(g, r, v, _)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let unused: Vec<_> = cluster
        .iter()
        .filter(|g| !seen_cluster.contains_key(*g) && !exempt.contains(*g))
        .collect();
    let unused_leader: Vec<_> = leader
        .iter()
        .filter(|g| !seen_leader.contains_key(*g))
        .collect();
    let unused_log_agent: Vec<_> = log_agent
        .iter()
        .filter(|g| !seen_log_agent.contains_key(*g))
        .collect();
    let unused_terraform: Vec<_> = terraform
        .iter()
        .filter(|g| !seen_terraform.contains_key(*g))
        .collect();
    let beyond: Vec<_> = seen_cluster
        .keys()
        .filter(|g| !cluster.contains(*g))
        .collect();
    eprintln!("operator calls by grant (ClusterRole): {seen_cluster:#?}");
    eprintln!("operator calls by grant (leader-election Role): {seen_leader:#?}");
    eprintln!("operator calls by grant (log-agent Role): {seen_log_agent:#?}");
    eprintln!("OpenTofu calls by grant (Terraform role): {seen_terraform:#?}");
    assert!(
        denied.is_empty(),
        "the API server denied the operator (the chart's ClusterRole is too small):\n{}",
        denied.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(
        refused_elsewhere > 0,
        "no OpenTofu request outside its environment was refused: is it still the operator?"
    );
    assert!(
        !seen_terraform.is_empty(),
        "no request by an environment's OpenTofu identity: does OpenTofu still run as the operator?"
    );
    assert!(
        unused.is_empty()
            && unused_leader.is_empty()
            && unused_log_agent.is_empty()
            && unused_terraform.is_empty(),
        "the chart grants verbs nobody used in a whole run; remove them, or exercise them in a test:\nClusterRole: {unused:#?}\nRole: {unused_leader:#?}\nlog-agent Role: {unused_log_agent:#?}\nTerraform role: {unused_terraform:#?}"
    );
    let beyond_terraform: Vec<_> = seen_terraform
        .keys()
        .filter(|g| !terraform.contains(*g))
        .collect();
    assert!(
        beyond_terraform.is_empty(),
        "OpenTofu calls outside the Terraform role that were not denied: {beyond_terraform:#?}"
    );
    assert!(
        beyond.is_empty(),
        "calls outside the ClusterRole that were not denied: {beyond:#?}"
    );
}
