//! Consul (docs/consul.md) against the run's real agent (hack/consul.sh:
//! dev mode, ACLs on) and the real cluster: registration with the pods'
//! readiness, intentions from Connections, discovery variables, gateway
//! routes for `expose`, recovery from a Consul restart and an operator
//! kill, zero writes when nothing changed, and bad input.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use mahler_api::names::{CONSUL_REGISTERED, EXPOSED, INTENTIONS_SYNCED};
use mahler_api::{Connection, Environment, Service};

use super::harness::{condition_is, env, exclusive, is_ready, shared, wait_deleted, wait_for};
use super::{
    conn_conditions, connection_yaml, env_conditions, pod_env, service_yaml, svc_conditions,
};

/// A Project and its Consul-enabled environment `<p>-test`.
async fn consul_env(client: &Client, p: &str, prefix: Option<&str>) -> String {
    let ns = format!("{p}-test");
    let prefix = prefix
        .map(|p| format!(", prefix: \"{p}\""))
        .unwrap_or_default();
    env().apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: {p}}}\nspec: {{displayName: {p}}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: {ns}}}\nspec: {{project: {p}, consul: {{enabled: true{prefix}}}}}\n"
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

/// Polls Consul until `check` holds (Consul has no watch the test can wait
/// on for every question; the operator's own sync is event-driven).
async fn until_consul<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("Consul: timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The message of a Service's condition `type_`.
fn message_of(s: &Service, type_: &str) -> String {
    svc_conditions(s)
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_else(|| panic!("{} has no {type_} condition: {:?}", s.name_any(), s.status))
}

/// The condition `type_` of a Service is `status` with `reason`.
fn consul_condition(
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
) -> impl Fn(Option<&Service>) -> bool {
    move |s: Option<&Service>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
        })
    }
}

#[tokio::test]
async fn services_are_registered_with_the_pods_readiness_and_deregistered() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let consul = env.consul.client();
    let ns = consul_env(&client, "creg", None).await;
    env.apply(&format!(
        "{}  replicas: 2\n",
        service_yaml(
            &ns,
            "api",
            "registry.example/api:1",
            "[{name: http, port: 8080}]"
        )
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(&services, "api", "Ready", is_ready(svc_conditions)).await;
    // Both pods' endpoints, as the condition reports them (the EndpointSlice
    // may trail the Deployment's status by a moment).
    wait_for(
        &services,
        "api",
        "ConsulRegistered with 2 passing instances",
        |s: Option<&Service>| {
            s.and_then(svc_conditions).is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == CONSUL_REGISTERED
                        && c.status == "True"
                        && c.message
                            == "registered in Consul as creg-test-api: 2 instance(s), 2 passing"
                })
            })
        },
    )
    .await;

    // Each pod is one instance at its own address, passing, with Mahler's meta.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("mahler.dev/service=api"))
        .await
        .unwrap();
    let ips: BTreeSet<String> = pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let entries = consul.health_service("creg-test-api", false).await.unwrap();
    assert_eq!(entries.len(), 2, "{entries:#?}");
    let addresses: BTreeSet<String> = entries.iter().map(|e| e.service.address.clone()).collect();
    assert_eq!(addresses, ips);
    for e in &entries {
        assert_eq!(e.service.port, 8080);
        assert_eq!(e.service.meta["mahler-project"], "creg");
        assert_eq!(e.service.meta["mahler-environment"], "creg-test");
        assert_eq!(e.service.meta["mahler-service"], "api");
        assert_eq!(e.service.meta["mahler-version"], "registry.example/api:1");
        assert_eq!(e.node.node, "mahler-e2e");
        let check = e
            .checks
            .iter()
            .find(|c| c.check_id.ends_with("/ready"))
            .unwrap();
        assert_eq!(check.status, "passing");
    }

    // One pod turns unready (as the kubelet would report it; kwok leaves a
    // running pod's conditions alone): its check goes critical.
    let pod = pods.items[0].name_any();
    env.kubectl(&[
        "-n",
        &ns,
        "patch",
        "pod",
        &pod,
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"TestUnready"}]}}"#,
    ]);
    until_consul("the unready pod's check to go critical", async || {
        let entries = consul.health_service("creg-test-api", false).await.ok()?;
        let e = entries.iter().find(|e| e.service.meta["k8s-pod"] == pod)?;
        e.checks
            .iter()
            .any(|c| c.check_id.ends_with("/ready") && c.status == "critical")
            .then_some(())
    })
    .await;
    let passing = consul.health_service("creg-test-api", true).await.unwrap();
    assert_eq!(passing.len(), 1, "only the ready pod passes: {passing:#?}");

    // Scaled down: the endpoint that goes away is deregistered.
    env.apply(&format!(
        "{}  replicas: 1\n",
        service_yaml(
            &ns,
            "api",
            "registry.example/api:1",
            "[{name: http, port: 8080}]"
        )
    ));
    until_consul("one instance left", async || {
        let n = consul
            .health_service("creg-test-api", false)
            .await
            .ok()?
            .len();
        (n == 1).then_some(())
    })
    .await;

    // Deleted: nothing of it is left in the catalog.
    env.kubectl(&[
        "-n",
        &ns,
        "delete",
        "service.mahler.dev",
        "api",
        "--wait=true",
    ]);
    until_consul("the instances to be deregistered", async || {
        consul
            .health_service("creg-test-api", false)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    let node = consul.node_checks("mahler-e2e").await.unwrap();
    assert!(
        !node.iter().any(|c| c.service_name == "creg-test-api"),
        "{node:#?}"
    );
    env.kubectl(&["delete", "project", "creg", "--wait=false"]);
}

#[tokio::test]
async fn connections_become_intentions_and_consul_discovery_variables() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let consul = env.consul.client();
    let ns = consul_env(&client, "cint", None).await;
    for name in ["api", "web"] {
        env.apply(&service_yaml(
            &ns,
            name,
            "app:1",
            "[{name: http, port: 8080}]",
        ));
    }
    env.apply(&service_yaml(
        &ns,
        "db",
        "postgres:16",
        "[{name: postgres, port: 5432}]",
    ));
    env.apply(&connection_yaml(&ns, "api-db", "api", "db", 5432));
    let connections: Api<Connection> = Api::namespaced(client.clone(), &ns);
    let conn = wait_for(
        &connections,
        "api-db",
        "IntentionsSynced",
        condition_is(INTENTIONS_SYNCED, "True", conn_conditions),
    )
    .await;
    assert!(
        conn.status
            .as_ref()
            .unwrap()
            .variables
            .contains(&"DB_CONSUL_HOST".to_string()),
        "{:?}",
        conn.status
    );
    // Consul's own answer: api may reach db; web (no Connection) may not.
    assert!(
        consul
            .intention_allowed("cint-test-api", "cint-test-db")
            .await
            .unwrap()
    );
    assert!(
        !consul
            .intention_allowed("cint-test-web", "cint-test-db")
            .await
            .unwrap()
    );
    assert!(
        !consul
            .intention_allowed("cint-test-db", "cint-test-api")
            .await
            .unwrap()
    );

    // The discovery name joins the injected variables.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = wait_for(
        &deployments,
        "api",
        "DB_CONSUL_HOST",
        |d: Option<&Deployment>| d.is_some_and(|d| pod_env(d).contains_key("DB_CONSUL_HOST")),
    )
    .await;
    assert_eq!(pod_env(&d)["DB_CONSUL_HOST"], "cint-test-db.service.consul");

    // Changed: web gets a Connection, api loses its own.
    env.apply(&connection_yaml(&ns, "web-db", "web", "db", 5432));
    env.kubectl(&["-n", &ns, "delete", "connection", "api-db", "--wait=true"]);
    until_consul("web allowed and api denied", async || {
        let web = consul
            .intention_allowed("cint-test-web", "cint-test-db")
            .await
            .ok()?;
        let api = consul
            .intention_allowed("cint-test-api", "cint-test-db")
            .await
            .ok()?;
        (web && !api).then_some(())
    })
    .await;
    wait_for(
        &deployments,
        "api",
        "DB_CONSUL_HOST removed",
        |d: Option<&Deployment>| d.is_some_and(|d| !pod_env(d).contains_key("DB_CONSUL_HOST")),
    )
    .await;

    // The environment's entries go with it.
    env.kubectl(&["delete", "project", "cint", "--wait=false"]);
    wait_deleted(&Api::<Environment>::all(client.clone()), &ns).await;
    until_consul("the environment's intentions to be removed", async || {
        let entries = consul.config_entries("service-intentions").await.ok()?;
        (!entries
            .iter()
            .any(|e| e["Meta"]["mahler-environment"] == ns.as_str()))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn expose_becomes_a_gateway_route_and_a_second_claim_is_a_conflict() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let consul = env.consul.client();
    let ns = consul_env(&client, "cgw", None).await;
    let exposed = |name: &str, path: &str| {
        format!(
            "{}  expose: {{host: shop.cgw.example, path: \"{path}\"}}\n",
            service_yaml(&ns, name, "web:1", "[{name: http, port: 8080}]")
        )
    };
    env.apply(&exposed("web", "/"));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let web = wait_for(
        &services,
        "web",
        "Exposed",
        consul_condition(EXPOSED, "True", "Exposed"),
    )
    .await;
    assert_eq!(
        web.status.as_ref().unwrap().external_url.as_deref(),
        Some("http://shop.cgw.example:8080/")
    );
    // Consul bound the route to the gateway itself.
    let route = consul
        .config_entry("http-route", "cgw-test-web")
        .await
        .unwrap()
        .expect("the route");
    assert_eq!(route["Hostnames"][0], "shop.cgw.example");
    assert_eq!(route["Rules"][0]["Services"][0]["Name"], "cgw-test-web");
    let bound = route["Status"]["Conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["Type"] == "Bound" && c["Status"] == "True");
    assert!(bound, "{route:#}");

    // A later Service claiming the same host and path: a conflict, on it only.
    env.apply(&exposed("web2", "/"));
    let web2 = wait_for(
        &services,
        "web2",
        "HostConflict",
        consul_condition(EXPOSED, "False", "HostConflict"),
    )
    .await;
    let message = &message_of(&web2, EXPOSED);
    assert!(message.contains(&format!("{ns}/web")), "{message}");
    assert!(
        consul
            .config_entry("http-route", "cgw-test-web2")
            .await
            .unwrap()
            .is_none()
    );
    // Another path on the same host is fine.
    env.apply(&exposed("web2", "/docs"));
    wait_for(
        &services,
        "web2",
        "Exposed",
        consul_condition(EXPOSED, "True", "Exposed"),
    )
    .await;

    // A host that is not a DNS name: said on the Service, nothing routed.
    env.apply(&format!(
        "{}  expose: {{host: \"shop..example\"}}\n",
        service_yaml(&ns, "bad", "web:1", "[{name: http, port: 8080}]")
    ));
    let bad = wait_for(
        &services,
        "bad",
        "InvalidHost",
        consul_condition(EXPOSED, "False", "InvalidHost"),
    )
    .await;
    assert!(
        svc_conditions(&bad)
            .unwrap()
            .iter()
            .any(|c| c.type_ == EXPOSED && c.message.contains("spec.expose.host")),
        "{:?}",
        bad.status
    );
    assert!(
        consul
            .config_entry("http-route", "cgw-test-bad")
            .await
            .unwrap()
            .is_none()
    );

    // expose removed: the route goes.
    env.apply(&service_yaml(
        &ns,
        "web2",
        "web:1",
        "[{name: http, port: 8080}]",
    ));
    until_consul("web2's route to be removed", async || {
        consul
            .config_entry("http-route", "cgw-test-web2")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    env.kubectl(&["delete", "project", "cgw", "--wait=false"]);
}

#[tokio::test]
async fn names_consul_rejects_and_expose_without_consul_get_a_condition_and_an_event() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    // A 40-character prefix and a 30-character Service: 70 > 63.
    let prefix = "p".repeat(40);
    let ns = consul_env(&client, "cbad", Some(&prefix)).await;
    let long = "s".repeat(30);
    env.apply(&service_yaml(
        &ns,
        &long,
        "app:1",
        "[{name: http, port: 8080}]",
    ));
    env.apply(&service_yaml(
        &ns,
        "ok",
        "app:1",
        "[{name: http, port: 8080}]",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = wait_for(
        &services,
        &long,
        "InvalidName",
        consul_condition(CONSUL_REGISTERED, "False", "InvalidName"),
    )
    .await;
    // The workload itself is fine; the Consul condition says what to change.
    wait_for(&services, &long, "Ready", is_ready(svc_conditions)).await;
    let message = &message_of(&svc, CONSUL_REGISTERED);
    assert!(message.contains("spec.consul.prefix"), "{message}");
    let events = env.kubectl(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={long},reason=InvalidName"),
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "a Warning Event for the name");
    // The other Service of the environment is registered all the same.
    wait_for(
        &services,
        "ok",
        "Registered",
        consul_condition(CONSUL_REGISTERED, "True", "Registered"),
    )
    .await;

    // expose in an environment without Consul: said, not ignored.
    let plain = super::project_with_env(&client, "cbadp").await;
    env.apply(&format!(
        "{}  expose: {{host: plain.example}}\n",
        service_yaml(&plain, "web", "web:1", "[{name: http, port: 8080}]")
    ));
    wait_for(
        &Api::<Service>::namespaced(client.clone(), &plain),
        "web",
        "ConsulDisabled",
        consul_condition(EXPOSED, "False", "ConsulDisabled"),
    )
    .await;
    env.kubectl(&["delete", "project", "cbad", "cbadp", "--wait=false"]);
}

/// The instance IDs Consul holds for a Consul service.
async fn instance_ids(consul: &mahler_consul::Client, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = consul
        .health_service(service, false)
        .await
        .map(|e| e.into_iter().map(|e| e.service.id).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn consul_down_restarted_empty_and_operator_killed_converge_without_duplicates() {
    let _guard = exclusive().await;
    let env = env();
    let client = env.client().await;
    let consul = env.consul.client();
    let ns = consul_env(&client, "crec", None).await;
    env.apply(&format!(
        "{}  replicas: 2\n",
        service_yaml(&ns, "api", "app:1", "[{name: http, port: 8080}]")
    ));
    env.apply(&service_yaml(
        &ns,
        "db",
        "postgres:16",
        "[{name: postgres, port: 5432}]",
    ));
    env.apply(&connection_yaml(&ns, "api-db", "api", "db", 5432));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for s in ["api", "db"] {
        wait_for(
            &services,
            s,
            "Registered",
            consul_condition(CONSUL_REGISTERED, "True", "Registered"),
        )
        .await;
    }
    until_consul("api's two instances", async || {
        (instance_ids(&consul, "crec-test-api").await.len() == 2).then_some(())
    })
    .await;

    // Consul down: the conditions say so.
    let stop =
        std::process::Command::new(env!("CARGO_MANIFEST_DIR").to_string() + "/hack/consul.sh")
            .args(["down", env.consul.dir.to_str().unwrap()])
            .status()
            .unwrap();
    assert!(stop.success());
    wait_for(
        &services,
        "api",
        "ConsulUnavailable",
        consul_condition(CONSUL_REGISTERED, "False", "ConsulUnavailable"),
    )
    .await;

    // Back, empty (dev mode): everything is registered again, once.
    env.consul.restart();
    wait_for(
        &services,
        "api",
        "Registered again",
        consul_condition(CONSUL_REGISTERED, "True", "Registered"),
    )
    .await;
    until_consul("api's two instances and the intention back", async || {
        let ids = instance_ids(&consul, "crec-test-api").await;
        let allowed = consul
            .intention_allowed("crec-test-api", "crec-test-db")
            .await
            .ok()?;
        (ids.len() == 2 && allowed).then_some(())
    })
    .await;

    // The operator killed; the Service scaled while it is down; started again.
    env.kill_operator();
    env.apply(&format!(
        "{}  replicas: 3\n",
        service_yaml(&ns, "api", "app:1", "[{name: http, port: 8080}]")
    ));
    env.start_operator();
    until_consul("three instances of api", async || {
        (instance_ids(&consul, "crec-test-api").await.len() == 3).then_some(())
    })
    .await;
    wait_for(&services, "api", "Ready", is_ready(svc_conditions)).await;
    // No duplicates: one instance per pod, and nothing else of Mahler's on the node.
    let ids = instance_ids(&consul, "crec-test-api").await;
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("mahler.dev/service=api"))
        .await
        .unwrap();
    let running = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    assert_eq!(ids.len(), running, "{ids:?}");
    env.kubectl(&["delete", "project", "crec", "--wait=false"]);
}

#[tokio::test]
async fn a_sync_with_nothing_to_do_leaves_consuls_raft_index_unchanged() {
    let _guard = exclusive().await;
    let env = env();
    let client = env.client().await;
    let consul = env.consul.client();
    let ns = consul_env(&client, "cnoop", None).await;
    env.apply(&format!(
        "{}  replicas: 2\n  expose: {{host: noop.example}}\n",
        service_yaml(&ns, "web", "web:1", "[{name: http, port: 8080}]")
    ));
    env.apply(&service_yaml(
        &ns,
        "db",
        "postgres:16",
        "[{name: postgres, port: 5432}]",
    ));
    env.apply(&connection_yaml(&ns, "web-db", "web", "db", 5432));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &services,
        "web",
        "Exposed",
        consul_condition(EXPOSED, "True", "Exposed"),
    )
    .await;
    wait_for(
        &services,
        "db",
        "Registered",
        consul_condition(CONSUL_REGISTERED, "True", "Registered"),
    )
    .await;
    wait_for(
        &Api::<Connection>::namespaced(client.clone(), &ns),
        "web-db",
        "IntentionsSynced",
        condition_is(INTENTIONS_SYNCED, "True", conn_conditions),
    )
    .await;
    super::settle(env).await;

    // Several full syncs later (the test operator resyncs Consul every 5 s,
    // and every reconcile pokes it): not one write reached Consul.
    let syncs = || env.metric("mahler_consul_syncs_total{result=\"ok\"}");
    let (index, writes, before) = (
        consul.raft_last_index().await.unwrap(),
        env.metric("mahler_consul_writes_total"),
        syncs(),
    );
    until_consul("three more syncs", async || {
        (syncs() >= before + 3.0).then_some(())
    })
    .await;
    assert_eq!(env.metric("mahler_consul_writes_total"), writes);
    assert_eq!(consul.raft_last_index().await.unwrap(), index);
    env.kubectl(&["delete", "project", "cnoop", "--wait=false"]);
}

#[tokio::test]
async fn a_missing_or_rejected_acl_token_is_reported_and_recovered_from() {
    let _guard = exclusive().await;
    let env = env();
    let client = env.client().await;
    let ns = consul_env(&client, "ctok", None).await;
    env.apply(&service_yaml(
        &ns,
        "api",
        "app:1",
        "[{name: http, port: 8080}]",
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for(
        &services,
        "api",
        "Registered",
        consul_condition(CONSUL_REGISTERED, "True", "Registered"),
    )
    .await;
    let token_file = &env.consul.token_file;
    let good = std::fs::read_to_string(token_file).unwrap();
    let restore = |_: ()| std::fs::write(token_file, &good).unwrap();
    // The operator's token is put back even when an assertion fails.
    struct PutBack<'a>(&'a std::path::Path, String);
    impl Drop for PutBack<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, &self.1);
        }
    }
    let _put_back = PutBack(token_file, good.clone());

    std::fs::write(token_file, "00000000-0000-0000-0000-000000000000").unwrap();
    let rejected = wait_for(
        &services,
        "api",
        "ConsulTokenRejected",
        consul_condition(CONSUL_REGISTERED, "False", "ConsulTokenRejected"),
    )
    .await;
    restore(());
    let message = &message_of(&rejected, CONSUL_REGISTERED);
    assert!(message.contains("ACL"), "{message}");
    wait_for(
        &services,
        "api",
        "Registered",
        consul_condition(CONSUL_REGISTERED, "True", "Registered"),
    )
    .await;

    std::fs::remove_file(token_file).unwrap();
    let missing = wait_for(
        &services,
        "api",
        "ConsulTokenMissing",
        consul_condition(CONSUL_REGISTERED, "False", "ConsulTokenMissing"),
    )
    .await;
    restore(());
    let message = &message_of(&missing, CONSUL_REGISTERED);
    assert!(message.contains("consul.aclToken.secretName"), "{message}");
    wait_for(
        &services,
        "api",
        "Registered",
        consul_condition(CONSUL_REGISTERED, "True", "Registered"),
    )
    .await;

    // The least-privilege policy docs/consul.md gives is enough for all of
    // it: registration, intentions and a gateway route.
    let rules = "node \"mahler-e2e\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"write\" intentions = \"write\" }\nmesh = \"write\"\n";
    let acl = |path: &str, body: serde_json::Value| -> serde_json::Value {
        let out = std::process::Command::new("curl")
            .args(["-fsS", "-X", "PUT", "-H"])
            .arg(format!("X-Consul-Token: {}", env.consul.token))
            .args(["--data-binary", &body.to_string()])
            .arg(format!("{}{path}", env.consul.address))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    acl(
        "/v1/acl/policy",
        serde_json::json!({"Name": "mahler-operator", "Rules": rules}),
    );
    let limited = acl(
        "/v1/acl/token",
        serde_json::json!({"Description": "Mahler e2e", "Policies": [{"Name": "mahler-operator"}]}),
    );
    std::fs::write(token_file, limited["SecretID"].as_str().unwrap()).unwrap();
    env.apply(&format!(
        "{}  expose: {{host: tok.example}}\n",
        service_yaml(&ns, "web", "web:1", "[{name: http, port: 8080}]")
    ));
    env.apply(&connection_yaml(&ns, "web-api", "web", "api", 8080));
    let web = wait_for(
        &services,
        "web",
        "Exposed",
        consul_condition(EXPOSED, "True", "Exposed"),
    )
    .await;
    wait_for(
        &Api::<Connection>::namespaced(client.clone(), &ns),
        "web-api",
        "IntentionsSynced",
        condition_is(INTENTIONS_SYNCED, "True", conn_conditions),
    )
    .await;
    restore(());
    assert!(
        consul_condition(CONSUL_REGISTERED, "True", "Registered")(Some(&web)),
        "{:?}",
        web.status
    );
    env.kubectl(&["delete", "project", "ctok", "--wait=false"]);
}
