//! The Terraform engine against real OpenTofu, real providers (random, null,
//! kubernetes, from the filesystem mirror) and the real cluster: state in
//! the Kubernetes backend, outputs into apps, approval, drift, deletion
//! policies, bad input, and an operator killed mid-apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use mahler_api::{ResourceTemplate, Service};

use crate::harness::{
    condition_is, env, exclusive, has_reason, is_ready, shared, wait_deleted, wait_for,
};
use crate::{project_with_env, svc_conditions};

fn tpl_conditions(
    t: &ResourceTemplate,
) -> Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>> {
    t.status.as_ref().map(|s| &s.conditions)
}

fn template_service(ns: &str, name: &str, template: &str, extra: &str, inputs: &str) -> String {
    format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  source:\n    template:\n      name: {template}\n{extra}      inputs: {inputs}\n"
    )
}

fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Waits for an Event with `reason` on the object (Events are published when
/// the operator records a run, just after the run's effects are visible).
async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let events = events_for(client, ns, name).await;
        if let Some((_, message)) = events.iter().find(|(r, _)| r == reason) {
            return message.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {reason} Event on {ns}/{name}: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn tofu_processes() -> f64 {
    env().metric("mahler_tofu_processes_total")
}

#[tokio::test]
async fn template_outputs_flow_into_an_app_and_input_changes_reroll_it() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfout").await;
    env.apply(&template_service(
        &ns,
        "db",
        "postgres-credentials",
        "",
        "{database: shop, host: pg.example}",
    ));
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: app, namespace: {ns}}}\nspec:\n  source: {{image: app:1}}\n  ports: [{{name: http, port: 8080}}]\n  env:\n  - name: DATABASE_URL\n    valueFrom: {{serviceOutput: {{service: db, key: url}}}}\n"
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let db = wait_for(&services, "db", "db Ready", is_ready(svc_conditions)).await;
    let status = db.status.unwrap();
    let tf = status.terraform.clone().unwrap();
    assert_eq!(
        tf.state_secret.as_deref(),
        Some("tfstate-default-mahler-db")
    );
    let plan = tf.plan.unwrap();
    assert_eq!((plan.add, plan.change, plan.destroy), (2, 0, 0));
    assert_eq!(plan.phase, "Applied");
    // Non-sensitive outputs in status, sensitive ones only in the Secret.
    assert_eq!(status.outputs["database"], "shop");
    assert_eq!(status.outputs["port"], "5432");
    assert!(!status.outputs.contains_key("url") && !status.outputs.contains_key("password"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let outputs = secret_data(&secrets.get("db-outputs").await.unwrap());
    let password = outputs["password"].clone();
    assert_eq!(password.len(), 32);
    assert_eq!(
        outputs["url"],
        format!("postgres://app:{password}@pg.example:5432/shop")
    );
    // The module's own Secret, made by the kubernetes provider, and the state.
    let creds = secret_data(&secrets.get("db-credentials").await.unwrap());
    assert_eq!(creds["password"], password);
    let state = secrets.get("tfstate-default-mahler-db").await.unwrap();
    assert!(
        state
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"mahler.dev/terraform-state".to_string()),
        "the state is protected from deletion before destroy"
    );

    // The app reads the output from the Secret; its pods carry the outputs hash.
    let app = wait_for(&services, "app", "app Ready", is_ready(svc_conditions)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments.get("app").await.unwrap();
    let template = d.spec.unwrap().template;
    let var = template.spec.unwrap().containers[0].env.clone().unwrap();
    let from = var[0].value_from.clone().unwrap().secret_key_ref.unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("db-outputs", "url")
    );
    let hash_before =
        template.metadata.unwrap().annotations.unwrap()["mahler.dev/outputs-hash"].clone();
    assert!(hash_before.starts_with("db="));
    drop(app);

    // Nothing changed: resyncs start no tofu run for it (every run is
    // recorded in lastRun; the operator-wide process count is checked by
    // the no-op test, which runs alone).
    let last_run = tf.last_run.clone().unwrap();
    env.service_reconciles(10.0).await;
    let now = services
        .get("db")
        .await
        .unwrap()
        .status
        .unwrap()
        .terraform
        .unwrap();
    assert_eq!(now.last_run.unwrap(), last_run, "a no-op resync ran tofu");
    let before = tofu_processes();

    // Change an input: plan + apply, new outputs, the app re-rolls.
    env.apply(&template_service(
        &ns,
        "db",
        "postgres-credentials",
        "",
        "{database: shop, host: pg2.example}",
    ));
    let gen2 = services.get("db").await.unwrap().metadata.generation;
    let db = wait_for(
        &services,
        "db",
        "db re-applied",
        move |s: Option<&Service>| {
            s.is_some_and(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.observed_generation == gen2
                        && st.outputs.get("host").map(String::as_str) == Some("pg2.example")
                })
            })
        },
    )
    .await;
    assert!(tofu_processes() > before, "the input change ran tofu");
    let outputs = secret_data(&secrets.get("db-outputs").await.unwrap());
    assert_eq!(
        outputs["password"], password,
        "the password is kept across the change"
    );
    assert!(outputs["url"].contains("@pg2.example:5432/"));
    let new_hash = db.status.unwrap().outputs_hash.unwrap();
    wait_for(
        &deployments,
        "app",
        "app re-rolled with the new outputs",
        move |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref())
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .is_some_and(|a| {
                    a.get("mahler.dev/outputs-hash") == Some(&format!("db={new_hash}"))
                })
        },
    )
    .await;

    // Deleting the template Service destroys what it made (the credentials
    // Secret, deleted by OpenTofu as the environment's identity).
    assert!(secrets.get_opt("db-credentials").await.unwrap().is_some());
    env.kubectl(&[
        "delete",
        "service.mahler.dev",
        "db",
        "-n",
        &ns,
        "--wait=false",
    ]);
    wait_deleted(&secrets, "db-credentials").await;
}

#[tokio::test]
async fn manual_approval_applies_only_the_approved_plan() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfappr").await;
    env.apply(&template_service(
        &ns,
        "cfg",
        "config-bundle",
        "      approval: Manual\n",
        "{settings: {LOG_LEVEL: info}}",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = wait_for(
        &services,
        "cfg",
        "AwaitingApproval",
        has_reason("AwaitingApproval", svc_conditions),
    )
    .await;
    let plan = svc.status.unwrap().terraform.unwrap().plan.unwrap();
    assert_eq!((plan.add, plan.phase.as_str()), (3, "Pending"));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(
        configmaps.get_opt("cfg-settings").await.unwrap().is_none(),
        "nothing applied before approval"
    );

    // Only an owner approves, and the approval names its approver (the
    // shipped admission policy, enforced by the API server).
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ns}}}\nspec: {{project: tfappr, owners: [{{user: alice}}]}}\n"
    ));
    env.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: e2e-service-editor}\nrules:\n- {apiGroups: [mahler.dev], resources: [services], verbs: [get, list, patch, update]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: e2e-service-editor}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-service-editor}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}\n",
    );
    let approve = |who: &str, id: &str, by: &str| {
        env.kubectl_as(
            who,
            &[
                "annotate",
                "--overwrite",
                "msvc",
                "cfg",
                "-n",
                &ns,
                &format!("mahler.dev/approve-plan={id}"),
                &format!("mahler.dev/approved-by={by}"),
            ],
        )
    };
    let (ok, err) = approve("bob", &plan.id, "bob");
    assert!(
        !ok && err.contains("bob is not an owner of Environment tfappr-test"),
        "{err}"
    );
    let (ok, err) = approve("alice", &plan.id, "bob");
    assert!(!ok && err.contains("mahler.dev/approved-by"), "{err}");
    // Nor can a non-owner switch manual approval off.
    let (ok, err) = env.kubectl_as(
        "bob",
        &[
            "patch",
            "msvc",
            "cfg",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"source":{"template":{"approval":"Auto"}}}}"#,
        ],
    );
    assert!(
        !ok && err.contains("cannot turn off manual approval"),
        "{err}"
    );

    // A wrong plan id approves nothing.
    let (ok, err) = approve("alice", "000000000000", "alice");
    assert!(ok, "{err}");
    env.service_reconciles(6.0).await;
    assert!(configmaps.get_opt("cfg-settings").await.unwrap().is_none());

    let (ok, err) = approve("alice", &plan.id, "alice");
    assert!(ok, "{err}");
    let svc = wait_for(
        &services,
        "cfg",
        "Ready after approval",
        is_ready(svc_conditions),
    )
    .await;
    let applied = svc.status.unwrap().terraform.unwrap().plan.unwrap();
    assert_eq!(applied.id, plan.id);
    assert_eq!(applied.approved_by.as_deref(), Some("alice"));
    let cm = configmaps.get("cfg-settings").await.unwrap();
    assert_eq!(cm.data.unwrap()["LOG_LEVEL"], "info");

    // A changed spec makes a new plan, which needs its own approval.
    env.apply(&template_service(
        &ns,
        "cfg",
        "config-bundle",
        "      approval: Manual\n",
        "{settings: {LOG_LEVEL: debug}}",
    ));
    let old = plan.id.clone();
    let svc = wait_for(
        &services,
        "cfg",
        "a new plan awaiting approval",
        move |s: Option<&Service>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|st| st.terraform.as_ref())
                .and_then(|t| t.plan.as_ref())
                .is_some_and(|p| p.phase == "Pending" && p.id != old)
        },
    )
    .await;
    let new_plan = svc.status.unwrap().terraform.unwrap().plan.unwrap();
    assert!(
        new_plan
            .resources
            .iter()
            .any(|r| r.address == "kubernetes_config_map_v1.settings" && r.action == "update"),
        "{new_plan:?}"
    );
    assert_eq!(
        configmaps.get("cfg-settings").await.unwrap().data.unwrap()["LOG_LEVEL"],
        "info",
        "the old approval does not carry over"
    );
}

#[tokio::test]
async fn drift_is_detected_and_corrected_or_held() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfdrift").await;
    env.apply(&template_service(
        &ns,
        "fix",
        "config-bundle",
        "      driftCheckInterval: 2s\n",
        "{settings: {A: a}}",
    ));
    env.apply(&template_service(
        &ns,
        "hold",
        "config-bundle",
        "      driftCheckInterval: 2s\n      driftPolicy: Hold\n",
        "{settings: {B: b}}",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(&services, "fix", "Ready", is_ready(svc_conditions)).await;
    wait_for(&services, "hold", "Ready", is_ready(svc_conditions)).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let dp = Default::default();
    let old_uid = configmaps.get("fix-settings").await.unwrap().metadata.uid;
    configmaps.delete("fix-settings", &dp).await.unwrap();
    configmaps.delete("hold-settings", &dp).await.unwrap();

    // Correct: OpenTofu puts it back (a new object, not the deleted one).
    wait_for(
        &configmaps,
        "fix-settings",
        "recreated",
        move |c: Option<&ConfigMap>| c.is_some_and(|c| c.metadata.uid != old_uid),
    )
    .await;
    let message = wait_event(&client, &ns, "fix", "DriftDetected").await;
    assert!(
        message.contains("kubernetes_config_map_v1.settings"),
        "{message}"
    );
    // Hold: reported as a condition, nothing changed.
    let held = wait_for(
        &services,
        "hold",
        "Drifted",
        condition_is("Drifted", "True", svc_conditions),
    )
    .await;
    let st = held.status.unwrap();
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert!(configmaps.get_opt("hold-settings").await.unwrap().is_none());
    let drifted = st.conditions.iter().find(|c| c.type_ == "Drifted").unwrap();
    assert!(
        drifted.message.contains("driftPolicy Hold"),
        "{}",
        drifted.message
    );

    // Switching the policy to Correct fixes it, and Drifted turns False.
    env.apply(&template_service(
        &ns,
        "hold",
        "config-bundle",
        "      driftCheckInterval: 2s\n      driftPolicy: Correct\n",
        "{settings: {B: b}}",
    ));
    wait_for(
        &services,
        "hold",
        "drift resolved",
        condition_is("Drifted", "False", svc_conditions),
    )
    .await;
    assert!(configmaps.get_opt("hold-settings").await.unwrap().is_some());
    wait_event(&client, &ns, "hold", "DriftResolved").await;

    // Stop the 2 s drift checks before other tests count writes.
    services.delete("fix", &dp).await.unwrap();
    services.delete("hold", &dp).await.unwrap();
    wait_deleted(&services, "fix").await;
    wait_deleted(&services, "hold").await;
}

#[tokio::test]
async fn delete_destroys_and_retain_keeps() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfdel").await;
    env.apply(&template_service(
        &ns,
        "gone",
        "config-bundle",
        "",
        "{settings: {A: a}}",
    ));
    env.apply(&template_service(
        &ns,
        "kept",
        "config-bundle",
        "      deletionPolicy: Retain\n",
        "{settings: {B: b}}",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(&services, "gone", "Ready", is_ready(svc_conditions)).await;
    wait_for(&services, "kept", "Ready", is_ready(svc_conditions)).await;
    let dp = Default::default();
    services.delete("gone", &dp).await.unwrap();
    services.delete("kept", &dp).await.unwrap();
    wait_deleted(&services, "gone").await;
    wait_deleted(&services, "kept").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    // Delete: destroyed, state and lock dropped.
    assert!(configmaps.get_opt("gone-settings").await.unwrap().is_none());
    assert!(
        secrets
            .get_opt("tfstate-default-mahler-gone")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        leases
            .get_opt("lock-tfstate-default-mahler-gone")
            .await
            .unwrap()
            .is_none()
    );
    // Retain: resources and state kept, unprotected.
    assert!(configmaps.get_opt("kept-settings").await.unwrap().is_some());
    let state = secrets.get("tfstate-default-mahler-kept").await.unwrap();
    assert!(state.metadata.finalizers.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn bad_template_input_and_modules_are_reported_precisely() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfbad").await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);

    env.apply(&template_service(
        &ns,
        "badin",
        "postgres-credentials",
        "",
        "{database: Bad-Name, port: 0}",
    ));
    let s = wait_for(
        &services,
        "badin",
        "InvalidInputs",
        has_reason("InvalidInputs", svc_conditions),
    )
    .await;
    let msg = &s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.contains("spec.source.template.inputs.database"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.source.template.inputs.port: 0 is less than the minimum of 1"),
        "{msg}"
    );

    env.apply(&template_service(&ns, "nope", "no-such-template", "", "{}"));
    wait_for(
        &services,
        "nope",
        "TemplateNotFound",
        has_reason("TemplateNotFound", svc_conditions),
    )
    .await;

    // HCL that does not validate: the template says where.
    env.apply(
        "apiVersion: mahler.dev/v1alpha1\nkind: ResourceTemplate\nmetadata: {name: e2e-broken}\nspec:\n  module:\n    files:\n      main.tf: |\n        resource \"random_password\" \"p\" {\n          lenght = 3\n        }\n",
    );
    let templates: Api<ResourceTemplate> = Api::all(client.clone());
    let t = wait_for(
        &templates,
        "e2e-broken",
        "InvalidModule",
        has_reason("InvalidModule", tpl_conditions),
    )
    .await;
    let msg = &t
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains("main.tf:2") && msg.contains("lenght"), "{msg}");

    // An output the template does not publish.
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: reader, namespace: {ns}}}\nspec:\n  source: {{image: app:1}}\n  env:\n  - name: X\n    valueFrom: {{serviceOutput: {{service: badin, key: nosuch}}}}\n"
    ));
    let s = wait_for(
        &services,
        "reader",
        "OutputUnavailable",
        has_reason("OutputUnavailable", svc_conditions),
    )
    .await;
    let msg = &s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.contains("publishes no output nosuch") && msg.contains("url"),
        "{msg}"
    );
    // Switching a template Service to another template is refused by the API server.
    let err = env.apply_rejected(&template_service(
        &ns,
        "badin",
        "config-bundle",
        "",
        "{settings: {A: a}}",
    ));
    assert!(err.contains("spec.source.template"), "{err}");
    templates
        .delete("e2e-broken", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn operator_killed_mid_apply_converges_and_an_orphaned_lock_is_recovered() {
    let _guard = exclusive().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfkill").await;
    // A module whose apply takes a few seconds.
    env.apply(
        "apiVersion: mahler.dev/v1alpha1\nkind: ResourceTemplate\nmetadata: {name: e2e-slow}\nspec:\n  inputs: {type: object, properties: {rev: {type: string}}}\n  outputs: [{name: id}]\n  module:\n    files:\n      main.tf: |\n        variable \"mahler_namespace\" { type = string }\n        variable \"mahler_service\" { type = string }\n        variable \"rev\" { type = string }\n        resource \"null_resource\" \"wait\" {\n          triggers = { rev = var.rev }\n          provisioner \"local-exec\" { command = \"sleep 4\" }\n        }\n        resource \"kubernetes_config_map_v1\" \"c\" {\n          metadata {\n            name      = \"${var.mahler_service}-slow\"\n            namespace = var.mahler_namespace\n          }\n          data = { rev = var.rev }\n          depends_on = [null_resource.wait]\n        }\n        output \"id\" { value = null_resource.wait.id }\n",
    );
    let templates: Api<ResourceTemplate> = Api::all(client.clone());
    wait_for(&templates, "e2e-slow", "Ready", is_ready(tpl_conditions)).await;
    env.apply(&template_service(&ns, "slow", "e2e-slow", "", "{rev: one}"));

    // Kill the operator while OpenTofu holds the state lock (mid-apply).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lock = "lock-tfstate-default-mahler-slow";
    wait_for(&leases, lock, "the state lock held", |l: Option<&Lease>| {
        l.and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_ref())
            .is_some_and(|h| !h.is_empty())
    })
    .await;
    env.kill_operator();
    env.start_operator();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &services,
        "slow",
        "Ready after the restart",
        is_ready(svc_conditions),
    )
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let slow: Vec<_> = configmaps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-slow"))
        })
        .collect();
    assert_eq!(slow.len(), 1, "one ConfigMap, no duplicate");

    // An orphaned lock: held by a tofu process on this host that is gone.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let info = serde_json::json!({
        "ID": "dead-beef", "Operation": "OperationTypeApply", "Info": "", "Who": format!("root@{host}"),
        "Version": "1.12.6", "Created": k8s_openapi::jiff::Timestamp::now().to_string(), "Path": ""
    });
    leases
        .patch(
            lock,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"app.terraform.io/lock-info": info.to_string()}},
                "spec": {"holderIdentity": "dead-beef"}
            })),
        )
        .await
        .unwrap();
    env.apply(&template_service(&ns, "slow", "e2e-slow", "", "{rev: two}"));
    let gen2 = services.get("slow").await.unwrap().metadata.generation;
    let svc = wait_for(
        &services,
        "slow",
        "applied despite the orphaned lock",
        move |s: Option<&Service>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
                st.observed_generation == gen2
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        },
    )
    .await;
    let lock_status = svc.status.unwrap().terraform.unwrap().lock.unwrap();
    assert!(
        matches!(lock_status.state.as_str(), "Recovered" | "Free"),
        "{lock_status:?}"
    );
    let message = wait_event(&client, &ns, "slow", "LockRecovered").await;
    assert!(message.contains(&host), "{message}");
    assert_eq!(
        configmaps.get("slow-slow").await.unwrap().data.unwrap()["rev"],
        "two"
    );
    services.delete("slow", &Default::default()).await.unwrap();
    wait_deleted(&services, "slow").await;
    templates
        .delete("e2e-slow", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_template_from_git_follows_its_branch() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfgit").await;
    // A real repository, served by git over file://.
    let repo = env.dir.join("template-repo");
    std::fs::create_dir_all(repo.join("modules/id")).unwrap();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@example.org")
            .env("GIT_COMMITTER_NAME", "e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@example.org")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    let module = |label: &str| {
        format!(
            "resource \"random_id\" \"i\" {{\n  byte_length = 4\n}}\noutput \"label\" {{ value = \"{label}\" }}\noutput \"id\" {{ value = random_id.i.hex }}\n"
        )
    };
    std::fs::write(repo.join("modules/id/main.tf"), module("one")).unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: ResourceTemplate\nmetadata: {{name: e2e-git}}\nspec:\n  outputs: [{{name: label}}, {{name: id}}]\n  module:\n    git: {{url: \"file://{}\", ref: main, path: modules/id}}\n",
        repo.display()
    ));
    let templates: Api<ResourceTemplate> = Api::all(client.clone());
    let t = wait_for(&templates, "e2e-git", "Ready", is_ready(tpl_conditions)).await;
    let first = t.status.unwrap().git_commit.unwrap();
    env.apply(&template_service(&ns, "ids", "e2e-git", "", "{}"));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let s = wait_for(&services, "ids", "Ready", is_ready(svc_conditions)).await;
    assert_eq!(s.status.unwrap().outputs["label"], "one");

    // The branch moves: the template follows, the Service re-applies.
    std::fs::write(repo.join("modules/id/main.tf"), module("two")).unwrap();
    git(&["commit", "-qam", "two"]);
    wait_for(
        &templates,
        "e2e-git",
        "the new commit",
        move |t: Option<&ResourceTemplate>| {
            t.and_then(|t| t.status.as_ref())
                .and_then(|s| s.git_commit.as_ref())
                .is_some_and(|c| c != &first)
        },
    )
    .await;
    wait_for(
        &services,
        "ids",
        "re-applied from the new commit",
        |s: Option<&Service>| {
            s.and_then(|s| s.status.as_ref())
                .is_some_and(|st| st.outputs.get("label").map(String::as_str) == Some("two"))
        },
    )
    .await;
    services.delete("ids", &Default::default()).await.unwrap();
    wait_deleted(&services, "ids").await;
    templates
        .delete("e2e-git", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_provider_error_stalls_without_a_retry_storm_and_a_failed_destroy_says_how_out() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tffail").await;
    // Apply fails inside the provider: the namespace does not exist.
    // Destroy fails by design: prevent_destroy.
    env.apply(
        "apiVersion: mahler.dev/v1alpha1\nkind: ResourceTemplate\nmetadata: {name: e2e-fragile}\nspec:\n  inputs: {type: object, properties: {namespace: {type: string}}}\n  module:\n    files:\n      main.tf: |\n        variable \"mahler_service\" { type = string }\n        variable \"namespace\" { type = string }\n        resource \"kubernetes_config_map_v1\" \"c\" {\n          metadata {\n            name      = \"${var.mahler_service}-fragile\"\n            namespace = var.namespace\n          }\n          data = { a = \"b\" }\n          lifecycle { prevent_destroy = true }\n        }\n",
    );
    let templates: Api<ResourceTemplate> = Api::all(client.clone());
    wait_for(&templates, "e2e-fragile", "Ready", is_ready(tpl_conditions)).await;
    env.apply(&template_service(
        &ns,
        "broken",
        "e2e-fragile",
        "",
        "{namespace: no-such-namespace}",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let s = wait_for(
        &services,
        "broken",
        "ApplyFailed",
        has_reason("ApplyFailed", svc_conditions),
    )
    .await;
    let st = s.status.unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready.message.contains("kubernetes_config_map_v1.c")
            && ready.message.contains("retrying at"),
        "{}",
        ready.message
    );
    let run = st.terraform.unwrap().last_run.unwrap();
    assert_eq!((run.result.as_str(), run.failures), ("Failed", Some(1)));
    wait_event(&client, &ns, "broken", "ApplyFailed").await;
    // No retry storm: the second attempt comes after the 30 s backoff, not
    // at the next resync (every 2 s here).
    let second = wait_for(
        &services,
        "broken",
        "the second attempt",
        |s: Option<&Service>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|st| st.terraform.as_ref())
                .and_then(|t| t.last_run.as_ref())
                .is_some_and(|r| r.failures == Some(2))
        },
    )
    .await
    .status
    .unwrap()
    .terraform
    .unwrap()
    .last_run
    .unwrap();
    let at = |t: &str| t.parse::<k8s_openapi::jiff::Timestamp>().unwrap();
    let gap = at(&second.started_time).duration_since(at(&run.started_time));
    assert!(
        gap.as_secs_f64() >= 29.0,
        "retried after {gap:?}, before the 30 s backoff"
    );

    // Fix the input: retried at once, applied.
    env.apply(&template_service(
        &ns,
        "broken",
        "e2e-fragile",
        "",
        &format!("{{namespace: {ns}}}"),
    ));
    wait_for(
        &services,
        "broken",
        "Ready after the fix",
        is_ready(svc_conditions),
    )
    .await;

    // Destroy fails (prevent_destroy): the finalizer stays, the condition says
    // why and how to get out; the way out works.
    services
        .delete("broken", &Default::default())
        .await
        .unwrap();
    let s = wait_for(
        &services,
        "broken",
        "DestroyFailed",
        has_reason("DestroyFailed", svc_conditions),
    )
    .await;
    let msg = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        msg.contains("prevent_destroy") || msg.contains("cannot be destroyed"),
        "{msg}"
    );
    assert!(msg.contains("mahler.dev/force-delete=true"), "{msg}");
    env.kubectl(&[
        "annotate",
        "msvc",
        "broken",
        "-n",
        &ns,
        "mahler.dev/force-delete=true",
    ]);
    wait_deleted(&services, "broken").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(
        configmaps
            .get_opt("broken-fragile")
            .await
            .unwrap()
            .is_some(),
        "kept, as forced"
    );
    templates
        .delete("e2e-fragile", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_template_runs_as_its_environment_and_cannot_read_other_namespaces() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "tfsnoop").await;
    // A Secret elsewhere that the operator itself could read.
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: tfsnoop-victim}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: victim, namespace: tfsnoop-victim}\nstringData: {password: hunter2}\n",
    );
    env.apply(
        "apiVersion: mahler.dev/v1alpha1\nkind: ResourceTemplate\nmetadata: {name: e2e-snoop}\nspec:\n  inputs: {type: object, properties: {namespace: {type: string}}}\n  module:\n    files:\n      main.tf: |\n        variable \"namespace\" { type = string }\n        data \"kubernetes_secret_v1\" \"x\" {\n          metadata {\n            name      = \"victim\"\n            namespace = var.namespace\n          }\n        }\n        output \"keys\" {\n          value     = length(data.kubernetes_secret_v1.x.data)\n          sensitive = true\n        }\n",
    );
    let templates: Api<ResourceTemplate> = Api::all(client.clone());
    wait_for(&templates, "e2e-snoop", "Ready", is_ready(tpl_conditions)).await;
    env.apply(&template_service(
        &ns,
        "snoop",
        "e2e-snoop",
        "",
        "{namespace: tfsnoop-victim}",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let s = wait_for(&services, "snoop", "a failed run", |s: Option<&Service>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
            st.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "False"
                    && (c.reason == "PlanFailed" || c.reason == "ApplyFailed")
            })
        })
    })
    .await;
    let ready = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.contains("forbidden")
            && ready
                .message
                .contains("system:serviceaccount:tfsnoop-test:mahler-terraform"),
        "OpenTofu should have been refused as the environment's identity: {}",
        ready.message
    );
    // Inside its own namespace the same template works.
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "victim",
        "-n",
        &ns,
        "--from-literal=a=b",
    ]);
    env.apply(&template_service(
        &ns,
        "snoop",
        "e2e-snoop",
        "",
        &format!("{{namespace: {ns}}}"),
    ));
    wait_for(&services, "snoop", "Ready", is_ready(svc_conditions)).await;
    env.kubectl(&["delete", "project", "tfsnoop", "--wait=false"]);
    env.kubectl(&["delete", "namespace", "tfsnoop-victim", "--wait=false"]);
    env.kubectl(&["delete", "resourcetemplate", "e2e-snoop", "--wait=false"]);
}
