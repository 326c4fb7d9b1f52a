//! End-to-end tests against a real cluster and the real operator binary.
//! Run with `make test`. Each test is a user story: apply manifests, expect
//! objects and status.

mod access;
mod chart;
mod churn;
mod cli;
mod consul;
mod gitops;
mod harness;
mod image;
mod rbac;
mod reporting;
mod rest;
mod startup;
mod telemetry;
mod terraform;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{condition_is, env, exclusive, has_reason, is_ready, shared, wait_deleted, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::runtime::wait::Condition as _;
use kube::{Api, Client, ResourceExt};
use mahler_api::{Connection, Environment, Project, Service};

fn svc_conditions(s: &Service) -> Option<&Vec<Condition>> {
    s.status.as_ref().map(|st| &st.conditions)
}
fn conn_conditions(c: &Connection) -> Option<&Vec<Condition>> {
    c.status.as_ref().map(|st| &st.conditions)
}
fn env_conditions(e: &Environment) -> Option<&Vec<Condition>> {
    e.status.as_ref().map(|st| &st.conditions)
}
fn project_conditions(p: &Project) -> Option<&Vec<Condition>> {
    p.status.as_ref().map(|st| &st.conditions)
}

/// Applies a Project `p` with Environment `p-test` and waits for both to be Ready.
async fn project_with_env(client: &Client, p: &str) -> String {
    let ns = format!("{p}-test");
    env().apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: {p}}}\nspec: {{displayName: {p}}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ns}}}\nspec: {{project: {p}}}\n"
    ));
    wait_for(
        &Api::<Environment>::all(client.clone()),
        &ns,
        "Environment Ready",
        is_ready(env_conditions),
    )
    .await;
    ns
}

fn service_yaml(ns: &str, name: &str, image: &str, ports: &str) -> String {
    format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  source: {{image: \"{image}\"}}\n  ports: {ports}\n"
    )
}

fn connection_yaml(ns: &str, name: &str, from: &str, to: &str, port: i32) -> String {
    format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{from: {from}, to: {to}, port: {port}}}\n"
    )
}

/// The first container of a Deployment's pod template.
fn first_container(d: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn pod_env(d: &Deployment) -> BTreeMap<String, String> {
    first_container(d)
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn examples_become_ready_with_exactly_the_specified_objects() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let root = env!("CARGO_MANIFEST_DIR");
    env.kubectl(&[
        "apply",
        "-f",
        &format!("{root}/manifests/examples/00-shop-project.yaml"),
    ]);
    wait_for(
        &Api::<Environment>::all(client.clone()),
        "shop-staging",
        "Environment Ready",
        is_ready(env_conditions),
    )
    .await;
    env.kubectl(&[
        "apply",
        "-f",
        &format!("{root}/manifests/examples/10-shop-services.yaml"),
    ]);

    let ns = "shop-staging";
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for name in ["api", "db", "worker"] {
        wait_for(&services, name, "Service Ready", is_ready(svc_conditions)).await;
    }
    let connections: Api<Connection> = Api::namespaced(client.clone(), ns);
    for name in ["api-db", "worker-db", "worker-api"] {
        wait_for(
            &connections,
            name,
            "Connection Ready",
            is_ready(conn_conditions),
        )
        .await;
    }
    wait_for(
        &Api::<Project>::all(client.clone()),
        "shop",
        "Project Ready",
        is_ready(project_conditions),
    )
    .await;

    // The namespace, labelled, with the default-deny policy.
    let namespace = Api::<Namespace>::all(client.clone()).get(ns).await.unwrap();
    assert_eq!(namespace.labels()["mahler.dev/project"], "shop");
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let deny = policies
        .get("mahler-default-deny")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(deny.policy_types, Some(vec!["Ingress".to_string()]));
    assert!(deny.ingress.is_none());

    // The api Deployment: image, replicas, ports, env (own + injected), probes.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let api = deployments.get("api").await.unwrap();
    assert_eq!(api.spec.as_ref().unwrap().replicas, Some(2));
    let c = first_container(&api);
    assert_eq!(c.image.as_deref(), Some("registry.example/shop/api:1.4.2"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        pod_env(&api),
        BTreeMap::from([
            ("LOG_LEVEL".into(), "info".into()),
            ("DB_HOST".into(), "db.shop-staging.svc.cluster.local".into()),
            ("DB_PORT".into(), "5432".into()),
            (
                "DB_URL".into(),
                "postgres://db.shop-staging.svc.cluster.local:5432".into()
            ),
        ])
    );
    let worker = deployments.get("worker").await.unwrap();
    let worker_env = pod_env(&worker);
    assert_eq!(
        worker_env["API_URL"],
        "http://api.shop-staging.svc.cluster.local:8080"
    );
    assert_eq!(worker_env["DB_PORT"], "5432");

    // Kubernetes Services for the services with ports, none for the worker.
    let kube_services: Api<KubeService> = Api::namespaced(client.clone(), ns);
    let db_svc = kube_services.get("db").await.unwrap().spec.unwrap();
    assert_eq!(db_svc.ports.unwrap()[0].port, 5432);
    assert!(kube_services.get_opt("worker").await.unwrap().is_none());

    // One policy per connection, admitting from → to on the port.
    let api_db = policies
        .get("mahler-connection-api-db")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        api_db.pod_selector.unwrap().match_labels.unwrap()["mahler.dev/service"],
        "db"
    );
    let rule = &api_db.ingress.unwrap()[0];
    assert_eq!(
        rule.from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["mahler.dev/service"],
        "api"
    );
    assert_eq!(
        rule.ports.as_ref().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5432))
    );
    // The example's four (access.rs adds its own matrix-* objects here).
    let example_policies = policies
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| !p.name_any().contains("matrix-"))
        .count();
    assert_eq!(example_policies, 4);

    // Status: URL, replicas, connections.
    let api_status = services.get("api").await.unwrap().status.unwrap();
    assert_eq!(
        api_status.url.as_deref(),
        Some("http://api.shop-staging.svc.cluster.local:8080")
    );
    assert_eq!(api_status.available_replicas, Some(2));
    assert_eq!(api_status.connected_to, vec!["db".to_string()]);
}

#[tokio::test]
async fn image_and_port_changes_roll_out_and_status_follows() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "rollout").await;
    env.apply(&service_yaml(
        &ns,
        "web",
        "web:1",
        "[{name: http, port: 80}]",
    ));
    env.apply(&service_yaml(
        &ns,
        "cache",
        "redis:7",
        "[{name: redis, port: 6379}, {name: admin, port: 6380}]",
    ));
    env.apply(&connection_yaml(&ns, "web-cache", "web", "cache", 6379));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let connections: Api<Connection> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &connections,
        "web-cache",
        "Connection Ready",
        is_ready(conn_conditions),
    )
    .await;
    wait_for(&services, "web", "Ready", is_ready(svc_conditions)).await;

    // New image → new generation, rollout, Ready again with the new image.
    env.apply(&service_yaml(
        &ns,
        "web",
        "web:2",
        "[{name: http, port: 80}]",
    ));
    let web = wait_for(
        &services,
        "web",
        "Ready with web:2",
        |s: Option<&Service>| {
            s.is_some_and(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.image.as_deref() == Some("web:2"))
                    && is_ready(svc_conditions).matches_object(Some(s))
            })
        },
    )
    .await;
    assert_eq!(
        web.status.unwrap().observed_generation,
        web.metadata.generation
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments.get("web").await.unwrap();
    assert_eq!(
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .as_deref(),
        Some("web:2")
    );
    assert_eq!(d.status.as_ref().unwrap().updated_replicas, Some(1));

    // New connection port → injected variables and policy follow, pods roll.
    let before = d.metadata.generation;
    env.apply(&connection_yaml(&ns, "web-cache", "web", "cache", 6380));
    let d = wait_for(
        &deployments,
        "web",
        "CACHE_PORT=6380",
        |d: Option<&Deployment>| {
            d.is_some_and(|d| pod_env(d).get("CACHE_PORT").map(String::as_str) == Some("6380"))
        },
    )
    .await;
    assert!(
        d.metadata.generation > before,
        "pod template changed, so the pods roll"
    );
    wait_for(
        &services,
        "web",
        "Ready after env change",
        is_ready(svc_conditions),
    )
    .await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let np = wait_for(
        &policies,
        "mahler-connection-web-cache",
        "policy on 6380",
        |p: Option<&NetworkPolicy>| {
            p.is_some_and(|p| {
                p.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
                    .ports
                    .as_ref()
                    .unwrap()[0]
                    .port
                    == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6380))
            })
        },
    )
    .await;
    assert!(np.owner_references()[0].kind == "Connection");
}

#[tokio::test]
async fn hand_edits_to_mahler_fields_are_reverted_and_additions_by_others_kept() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "handedit").await;
    env.apply(&service_yaml(
        &ns,
        "web",
        "web:1",
        "[{name: http, port: 80}]",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(&services, "web", "Ready", is_ready(svc_conditions)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let image = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
    };

    // A field Mahler set, changed by hand: the field moves to kubectl's
    // manager, drops out of Mahler's cached view, and is applied back.
    env.kubectl(&["-n", &ns, "set", "image", "deploy/web", "web=hacked:1"]);
    wait_for(
        &deployments,
        "web",
        "image restored",
        |d: Option<&Deployment>| d.is_some_and(|d| image(d).as_deref() == Some("web:1")),
    )
    .await;

    // A field Mahler never set, added by someone else: not Mahler's, so it
    // stays, and Mahler does not write the Deployment over and over.
    let deployment_writes = || {
        env.operator_writes()
            .iter()
            .filter(|w| {
                w["objectRef"]["resource"] == "deployments" && w["objectRef"]["namespace"] == ns
            })
            .count()
    };
    // The restore's own write must be in the audit log before counting
    // (the image shows in a GET before its audit event is written).
    settle(env).await;
    let before = deployment_writes();
    env.kubectl(&["-n", &ns, "set", "env", "deploy/web", "EXTRA=1"]);
    env.service_reconciles(5.0).await;
    // Observe across more than two resyncs (2 s each in tests).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(deployment_writes(), before, "Mahler rewrote the Deployment");
    let d = deployments.get("web").await.unwrap();
    assert_eq!(pod_env(&d).get("EXTRA").map(String::as_str), Some("1"));
    assert_eq!(image(&d).as_deref(), Some("web:1"));
}

#[tokio::test]
async fn deleting_each_kind_removes_what_it_created() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "teardown").await;
    env.apply(&service_yaml(
        &ns,
        "front",
        "front:1",
        "[{name: http, port: 80}]",
    ));
    env.apply(&service_yaml(
        &ns,
        "back",
        "back:1",
        "[{name: http, port: 8080}]",
    ));
    env.apply(&connection_yaml(&ns, "front-back", "front", "back", 8080));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let connections: Api<Connection> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &connections,
        "front-back",
        "Ready",
        is_ready(conn_conditions),
    )
    .await;
    wait_for(
        &deployments,
        "front",
        "BACK_HOST injected",
        |d: Option<&Deployment>| d.is_some_and(|d| pod_env(d).contains_key("BACK_HOST")),
    )
    .await;

    // Connection: its policy goes, and the variables leave front's pods.
    env.kubectl(&[
        "delete",
        "connection",
        "front-back",
        "-n",
        &ns,
        "--wait=true",
    ]);
    wait_deleted(&policies, "mahler-connection-front-back").await;
    wait_for(
        &deployments,
        "front",
        "BACK_* removed",
        |d: Option<&Deployment>| d.is_some_and(|d| !pod_env(d).contains_key("BACK_HOST")),
    )
    .await;

    // Service: Deployment and Kubernetes Service go (owner references).
    env.kubectl(&[
        "delete",
        "service.mahler.dev",
        "back",
        "-n",
        &ns,
        "--wait=true",
    ]);
    wait_deleted(&deployments, "back").await;
    wait_deleted(&Api::<KubeService>::namespaced(client.clone(), &ns), "back").await;
    assert!(services.get_opt("front").await.unwrap().is_some());

    // Environment: its namespace and everything in it.
    env.kubectl(&["delete", "environment", &ns, "--wait=false"]);
    wait_deleted(&Api::<Environment>::all(client.clone()), &ns).await;
    wait_deleted(&Api::<Namespace>::all(client.clone()), &ns).await;

    // Project: its Environments first, then itself.
    let ns2 = project_with_env(&client, "teardown2").await;
    env.apply(&service_yaml(&ns2, "app", "app:1", "[]"));
    wait_for(
        &Api::<Service>::namespaced(client.clone(), &ns2),
        "app",
        "Ready",
        is_ready(svc_conditions),
    )
    .await;
    env.kubectl(&["delete", "project", "teardown2", "--wait=false"]);
    wait_deleted(&Api::<Project>::all(client.clone()), "teardown2").await;
    assert!(
        Api::<Environment>::all(client.clone())
            .get_opt(&ns2)
            .await
            .unwrap()
            .is_none(),
        "environment deleted before its project"
    );
    wait_deleted(&Api::<Namespace>::all(client.clone()), &ns2).await;
}

#[tokio::test]
async fn bad_input_is_rejected_by_the_api_server_naming_the_field() {
    let _guard = shared().await;
    let env = env();
    let two_sources = "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {name: x, namespace: default}\nspec: {source: {image: a, git: {url: b}}}\n";
    assert!(
        env.apply_rejected(two_sources)
            .contains("spec.source: set exactly one of image, git or template")
    );
    let bad_port = "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {name: x, namespace: default}\nspec: {source: {image: a}, ports: [{name: http, port: 70000}]}\n";
    assert!(env.apply_rejected(bad_port).contains("spec.ports[0].port"));
    let dup_port_name = "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {name: x, namespace: default}\nspec: {source: {image: a}, ports: [{name: http, port: 80}, {name: http, port: 81}]}\n";
    assert!(env.apply_rejected(dup_port_name).contains("spec.ports[1]"));
    let bad_env_name = "apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {name: staging}\nspec: {project: shop}\n";
    assert!(
        env.apply_rejected(bad_env_name)
            .contains("must be '<spec.project>-<environment>'")
    );
    let self_conn = "apiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {name: x, namespace: default}\nspec: {from: a, to: a, port: 1}\n";
    assert!(
        env.apply_rejected(self_conn)
            .contains("a service cannot connect to itself")
    );
    let member = "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {name: badmember}\nspec: {members: [{user: a, group: b, role: admin}]}\n";
    assert!(env.apply_rejected(member).contains("spec.members[0]"));
}

#[tokio::test]
async fn missing_references_and_conflicts_stall_with_a_reason_and_a_warning_event() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;

    // An Environment whose Project does not exist: no namespace, ProjectNotFound.
    env.apply("apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {name: ghost-dev}\nspec: {project: ghost}\n");
    let envs: Api<Environment> = Api::all(client.clone());
    let e = wait_for(
        &envs,
        "ghost-dev",
        "ProjectNotFound",
        has_reason("ProjectNotFound", env_conditions),
    )
    .await;
    let ready = e
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.message.as_str()),
        ("True", "spec.project: Project ghost does not exist")
    );
    assert!(
        Api::<Namespace>::all(client.clone())
            .get_opt("ghost-dev")
            .await
            .unwrap()
            .is_none()
    );
    let events = env.kubectl(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "involvedObject.name=ghost-dev",
        "-o",
        "jsonpath={.items[*].type}/{.items[*].reason}",
    ]);
    assert!(
        events.contains("Warning") && events.contains("ProjectNotFound"),
        "events: {events}"
    );
    // Creating the Project unblocks it.
    env.apply(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {name: ghost}\nspec: {}\n",
    );
    wait_for(
        &envs,
        "ghost-dev",
        "Ready once the project exists",
        is_ready(env_conditions),
    )
    .await;

    // Connection ends that do not exist, and a port the target does not expose.
    let ns = "ghost-dev";
    env.apply(&connection_yaml(ns, "to-nowhere", "a", "b", 80));
    let connections: Api<Connection> = Api::namespaced(client.clone(), ns);
    let c = wait_for(
        &connections,
        "to-nowhere",
        "SourceNotFound",
        has_reason("SourceNotFound", conn_conditions),
    )
    .await;
    assert!(
        c.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.message.contains("spec.from: Service a does not exist"))
    );
    env.apply(&service_yaml(ns, "a", "a:1", "[]"));
    wait_for(
        &connections,
        "to-nowhere",
        "TargetNotFound",
        has_reason("TargetNotFound", conn_conditions),
    )
    .await;
    env.apply(&service_yaml(ns, "b", "b:1", "[{name: http, port: 8080}]"));
    let c = wait_for(
        &connections,
        "to-nowhere",
        "PortNotExposed",
        has_reason("PortNotExposed", conn_conditions),
    )
    .await;
    assert!(c.status.unwrap().conditions.iter().any(|c| {
        c.message
            .contains("does not expose port 80 (its ports: 8080)")
    }));

    // A Deployment of the same name that Mahler does not own: NameConflict, untouched.
    env.kubectl(&[
        "create",
        "deployment",
        "taken",
        "--image=someone/else:1",
        "-n",
        ns,
    ]);
    env.apply(&service_yaml(ns, "taken", "mine:1", "[]"));
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    wait_for(
        &services,
        "taken",
        "NameConflict",
        has_reason("NameConflict", svc_conditions),
    )
    .await;
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("taken")
        .await
        .unwrap();
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("someone/else:1")
    );
    // Everything else in the namespace is still served.
    wait_for(&services, "b", "Ready", is_ready(svc_conditions)).await;
}

#[tokio::test]
async fn operator_restarted_mid_way_converges_without_duplicates() {
    let _guard = exclusive().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "restart").await;
    let mut manifests = String::new();
    for i in 0..20 {
        manifests.push_str(&service_yaml(
            &ns,
            &format!("s{i}"),
            "app:1",
            "[{name: http, port: 80}]",
        ));
        manifests.push_str("---\n");
        if i > 0 {
            manifests.push_str(&connection_yaml(
                &ns,
                &format!("c{i}"),
                &format!("s{i}"),
                &format!("s{}", i - 1),
                80,
            ));
            manifests.push_str("---\n");
        }
    }
    env.apply(&manifests);
    // Kill while it is working (SIGKILL: no graceful shutdown, Lease not released).
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(&services, "s0", "s0 Ready", is_ready(svc_conditions)).await;
    env.kill_operator();
    env.start_operator();
    for i in 0..20 {
        wait_for(
            &services,
            &format!("s{i}"),
            "Ready after restart",
            is_ready(svc_conditions),
        )
        .await;
    }
    let connections: Api<Connection> = Api::namespaced(client.clone(), &ns);
    for i in 1..20 {
        wait_for(
            &connections,
            &format!("c{i}"),
            "Ready after restart",
            is_ready(conn_conditions),
        )
        .await;
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        deployments.items.len(),
        20,
        "one Deployment per Service, no duplicates"
    );
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        policies.items.len(),
        20,
        "default-deny + one per Connection"
    );
    let s5 = deployments
        .items
        .iter()
        .find(|d| d.name_any() == "s5")
        .unwrap();
    assert_eq!(pod_env(s5)["S4_PORT"], "80");
}

#[tokio::test]
async fn a_pass_with_nothing_to_do_writes_nothing() {
    let _guard = exclusive().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "noop").await;
    env.apply(&service_yaml(&ns, "a", "a:1", "[{name: http, port: 80}]"));
    env.apply(&service_yaml(&ns, "b", "b:1", "[{name: http, port: 80}]"));
    env.apply(&connection_yaml(&ns, "a-b", "a", "b", 80));
    // A template Service too: its no-op resync must start no tofu process.
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: t, namespace: {ns}}}\nspec:\n  source:\n    template: {{name: config-bundle, inputs: {{settings: {{A: a}}}}}}\n"
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(&services, "t", "Ready", is_ready(svc_conditions)).await;
    wait_for(
        &Api::<Connection>::namespaced(client.clone(), &ns),
        "a-b",
        "Ready",
        is_ready(conn_conditions),
    )
    .await;
    wait_for(&services, "a", "Ready", is_ready(svc_conditions)).await;
    wait_for(&services, "b", "Ready", is_ready(svc_conditions)).await;

    // Let in-flight status updates land, then count writes across several
    // resyncs (the test operator resyncs every 2 s).
    let reconciles = |m: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with("mahler_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    settle(env).await;
    let writes_before = env.operator_writes().len();
    let reconciles_before = reconciles(&env.metrics());
    let tofu_before = env.metric("mahler_tofu_processes_total");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let new_writes: Vec<_> = env
        .operator_writes()
        .into_iter()
        .skip(writes_before)
        .collect();
    let reconciled = reconciles(&env.metrics()) - reconciles_before;
    assert_eq!(
        env.metric("mahler_tofu_processes_total"),
        tofu_before,
        "a no-op resync started tofu"
    );
    assert!(
        reconciled >= 10,
        "the window must span resyncs (saw {reconciled} reconciles)"
    );
    assert!(
        new_writes.is_empty(),
        "no-op resyncs wrote to the API server: {:#?}",
        new_writes
            .iter()
            .map(|w| format!(
                "{} {} {}",
                w["verb"], w["objectRef"]["resource"], w["objectRef"]["name"]
            ))
            .collect::<Vec<_>>()
    );
}

/// Waits until the operator has written nothing for 3 s (its earlier work landed).
async fn settle(env: &harness::TestEnv) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let before = env.operator_writes().len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        if env.operator_writes().len() == before || tokio::time::Instant::now() > deadline {
            return;
        }
    }
}

#[tokio::test]
async fn the_install_bundle_is_accepted_by_the_api_server() {
    let _guard = shared().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = env().kubectl(&[
        "apply",
        "--dry-run=server",
        "-k",
        &format!("{root}/manifests"),
    ]);
    for kind in [
        "deployment.apps/mahler-operator",
        "validatingadmissionpolicy.admissionregistration.k8s.io/mahler-plan-approval",
        "customresourcedefinition.apiextensions.k8s.io/resourcetemplates.mahler.dev",
    ] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
}

#[tokio::test]
async fn dropping_ports_or_a_connection_target_removes_what_they_made() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "shrink").await;
    env.apply(&service_yaml(
        &ns,
        "web",
        "web:1",
        "[{name: http, port: 80}]",
    ));
    env.apply(&service_yaml(
        &ns,
        "db",
        "pg:16",
        "[{name: pg, port: 5432}]",
    ));
    env.apply(&connection_yaml(&ns, "web-db", "web", "db", 5432));
    let connections: Api<Connection> = Api::namespaced(client.clone(), &ns);
    let policy = wait_for(
        &connections,
        "web-db",
        "Connection Ready",
        is_ready(conn_conditions),
    )
    .await
    .status
    .unwrap()
    .network_policy
    .expect("a NetworkPolicy");
    let kube_services: Api<KubeService> = Api::namespaced(client.clone(), &ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    assert!(kube_services.get_opt("web").await.unwrap().is_some());
    assert!(policies.get_opt(&policy).await.unwrap().is_some());

    // A Service without ports has no Kubernetes Service.
    env.apply(&service_yaml(&ns, "web", "web:1", "[]"));
    wait_deleted(&kube_services, "web").await;

    // A Connection whose target is gone admits nothing: its policy goes,
    // and it says why.
    env.kubectl(&["delete", "service.mahler.dev", "db", "-n", &ns]);
    wait_deleted(&policies, &policy).await;
    wait_for(
        &connections,
        "web-db",
        "Stalled: target missing",
        condition_is("Stalled", "True", conn_conditions),
    )
    .await;
    env.kubectl(&["delete", "project", "shrink", "--wait=false"]);
}
