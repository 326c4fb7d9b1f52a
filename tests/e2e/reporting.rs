//! What users are told when Mahler cannot do what they asked: fields this
//! version does not implement yet, and errors from the API server.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use mahler_api::{Environment, Project, Service};

use crate::harness::{env, is_ready, shared, wait_for};
use crate::{env_conditions, project_conditions, project_with_env, service_yaml, svc_conditions};

/// The NotImplemented condition's message, while True.
fn not_implemented(conditions: Option<&Vec<Condition>>) -> Option<String> {
    conditions?
        .iter()
        .find(|c| c.type_ == "NotImplemented" && c.status == "True")
        .map(|c| c.message.clone())
}

/// `type/reason: note` of every Event on one object.
fn events_of(namespace: &str, name: &str) -> String {
    env().kubectl(&[
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "jsonpath={range .items[*]}{.type}/{.reason}: {.note}{.message}{\"\\n\"}{end}",
    ])
}

#[tokio::test]
async fn fields_not_implemented_yet_are_named_in_a_condition_and_a_warning_event() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    env.apply(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {name: later}\nspec: {members: [{user: alice, role: admin}]}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {name: later-preview}\n\
         spec: {project: later, cloneFrom: later-prod}\n",
    );
    let envs: Api<Environment> = Api::all(client.clone());
    let e = wait_for(
        &envs,
        "later-preview",
        "NotImplemented",
        |e: Option<&Environment>| e.and_then(|e| not_implemented(env_conditions(e))).is_some(),
    )
    .await;
    assert_eq!(
        not_implemented(env_conditions(&e)).unwrap(),
        "spec.cloneFrom is accepted but not implemented yet in this version of Mahler and has no effect; see docs/crds.md"
    );
    // What is implemented still works: the namespace exists and the
    // Environment is Ready (kstatus ignores NotImplemented).
    let e = wait_for(&envs, "later-preview", "Ready", is_ready(env_conditions)).await;
    assert_eq!(
        e.status.unwrap().namespace.as_deref(),
        Some("later-preview")
    );
    let events = events_of("default", "later-preview");
    assert!(
        events.contains("Warning/FieldsNotImplemented: spec.cloneFrom is accepted"),
        "events: {events}"
    );
    let projects: Api<Project> = Api::all(client.clone());
    // Members are implemented (docs/access.md): no condition for them.
    let p = wait_for(&projects, "later", "Ready", is_ready(project_conditions)).await;
    assert!(not_implemented(project_conditions(&p)).is_none());

    // A Service exposing itself in an environment without Consul: the
    // workload still runs, and `expose` is not silently ignored (it is
    // implemented now: docs/consul.md).
    let ns = "later-preview";
    env.apply(&format!(
        "{}  expose: {{host: api.later.example}}\n",
        service_yaml(
            ns,
            "api",
            "registry.example/api:1",
            "[{name: http, port: 8080}]"
        )
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    wait_for(&services, "api", "Ready", is_ready(svc_conditions)).await;
    let s = wait_for(&services, "api", "Exposed", |s: Option<&Service>| {
        s.and_then(svc_conditions).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Exposed" && c.status == "False" && c.reason == "ConsulDisabled"
            })
        })
    })
    .await;
    assert!(not_implemented(svc_conditions(&s)).is_none());
    let events = events_of(ns, "api");
    assert!(
        events.contains("Warning/ConsulDisabled: spec.expose is served by the Consul API gateway"),
        "events: {events}"
    );

    // Dropping the fields drops the condition.
    env.apply(
        "apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {name: later-preview}\nspec: {project: later}\n",
    );
    wait_for(
        &envs,
        "later-preview",
        "NotImplemented gone",
        |e: Option<&Environment>| {
            e.is_some_and(|e| {
                env_conditions(e).is_some_and(|cs| cs.iter().all(|c| c.type_ != "NotImplemented"))
            })
        },
    )
    .await;
    env.kubectl(&["delete", "project", "later", "--wait=false"]);
}

#[tokio::test]
async fn an_error_from_the_api_server_is_reported_on_the_object() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "quota").await;
    // The namespace admits no Deployment: creating one is Forbidden.
    env.apply(&format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: no-deployments, namespace: {ns}}}\nspec: {{hard: {{count/deployments.apps: \"0\"}}}}\n"
    ));
    let before = env.metric(r#"mahler_reconcile_errors_total{kind="Service",reason="forbidden"}"#);
    env.apply(&service_yaml(
        &ns,
        "web",
        "registry.example/web:1",
        "[{name: http, port: 80}]",
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let events = loop {
        let events = events_of(&ns, "web");
        if events.contains("ReconcileForbidden") {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Warning Event: {events}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(
        events.contains("Warning/ReconcileForbidden: Kubernetes API: ")
            && events.contains("exceeded quota"),
        "events: {events}"
    );
    assert!(
        env.metric(r#"mahler_reconcile_errors_total{kind="Service",reason="forbidden"}"#) > before
    );
    // Once the quota is gone, the retry succeeds.
    env.kubectl(&["delete", "resourcequota", "no-deployments", "-n", &ns]);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &services,
        "web",
        "Ready after the quota is gone",
        is_ready(svc_conditions),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("web").await.unwrap().is_some());
    env.kubectl(&["delete", "project", "quota", "--wait=false"]);
}
