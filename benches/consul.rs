//! `make bench` (BENCH=consul): Consul registration figures for
//! docs/benchmarks.md, against a real Consul agent (v1.16.1, dev mode, ACLs
//! on) that this bench starts with hack/consul.sh.
//!
//! 1. 1,000 Services (one endpoint each) registered the way the operator
//!    does it, from its decision (the plan) to the last `/v1/txn`: time and
//!    HTTP calls; side by side, in the same run, the same 1,000
//!    registrations one `/v1/agent/service/register` call each.
//! 2. A no-op resync: the operator's reads and writes (goal 0 writes, raft
//!    index unchanged), against the one-call-per-Service integration's
//!    re-registration of everything.
//! 3. Memory: what the operator keeps per registered Service (its cached
//!    EndpointSlice and its report), and what one sync of 1,000 allocates
//!    at its peak, counted by a global allocator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use mahler_api::{EnvironmentConsul, EnvironmentSpec, Service, ServiceSpec, Source};
use mahler_controller::consul::{ServiceReport, Verdict, observe, wire};
use mahler_core::consul as plan;
use serde_json::json;

#[global_allocator]
static ALLOC: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

const N: usize = 1000;

fn services() -> (mahler_api::Environment, Vec<Service>) {
    let env = mahler_api::Environment::new(
        "bench-consul",
        EnvironmentSpec {
            project: "bench".into(),
            consul: Some(EnvironmentConsul {
                enabled: true,
                prefix: None,
            }),
            ..Default::default()
        },
    );
    let services = (0..N)
        .map(|i| {
            let mut s = Service::new(
                &format!("svc-{i:04}"),
                ServiceSpec {
                    source: Source {
                        image: Some(format!("registry.example/svc-{i}:1")),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
            s.metadata.namespace = Some("bench-consul".into());
            s
        })
        .collect();
    (env, services)
}

fn endpoint(i: usize) -> plan::Endpoint {
    plan::Endpoint {
        pod: format!("svc-{i:04}-5d9f7c6b8-x2x{i:04}"),
        address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
        port: 8080,
        ready: true,
    }
}

/// An EndpointSlice as the operator's watch caches it.
fn slice(i: usize) -> EndpointSlice {
    let e = endpoint(i);
    EndpointSlice {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("svc-{i:04}-abcde")),
            namespace: Some("bench-consul".into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".into(), format!("svc-{i:04}")),
                ("app.kubernetes.io/managed-by".into(), "mahler".into()),
                (
                    "endpointslice.kubernetes.io/managed-by".into(),
                    "endpointslice-controller.k8s.io".into(),
                ),
            ])),
            resource_version: Some("123456".into()),
            uid: Some("7a0c5a52-4f5b-4d8e-9c55-1f0c6f2b9f3e".into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![e.address],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some("kwok-node-0".into()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(e.pod),
                namespace: Some("bench-consul".into()),
                uid: Some("0b9f4f0e-3d55-4a8e-b1f4-0a2d1c9e7f11".into()),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The instances of the Services, one endpoint each: the operator's decision.
fn instances_of(env: &mahler_api::Environment, services: &[Service]) -> Vec<plan::Instance> {
    services
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            plan::instances(&plan::ServiceInput {
                service: s,
                environment: env,
                endpoints: vec![endpoint(i)],
            })
            .unwrap()
        })
        .collect()
}

fn node() -> plan::Node {
    plan::Node {
        name: "mahler-bench".into(),
        address: "127.0.0.1".into(),
        meta: BTreeMap::from([("external-source".into(), "mahler".into())]),
    }
}

fn start_consul(dir: &std::path::Path) -> (String, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/consul.sh");
    let ok = std::process::Command::new(&script)
        .args(["up", dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success(), "hack/consul.sh up");
    let env = std::fs::read_to_string(dir.join("consul.env")).unwrap();
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    (get("CONSUL_HTTP_ADDR"), get("CONSUL_HTTP_TOKEN"))
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (address, token) = start_consul(dir.path());
    let consul = mahler_consul::Client::new(mahler_consul::Config {
        address,
        ..Default::default()
    })
    .unwrap();
    consul.set_token(Some(token));
    let result = std::panic::AssertUnwindSafe(run(&consul));
    let outcome = futures::FutureExt::catch_unwind(result).await;
    let _ = std::process::Command::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/consul.sh"),
    )
    .args(["down", dir.path().to_str().unwrap()])
    .status();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn run(consul: &mahler_consul::Client) {
    let (env, services) = services();
    let node = node();

    // 1. Mahler: one read of the node, the plan, then txn batches.
    let calls = consul.calls();
    let started = Instant::now();
    let held = observe(consul, &node.name).await.unwrap();
    let desired = instances_of(&env, &services);
    let batches = plan::plan_catalog(&node, &desired, &held);
    let decided = Instant::now();
    let ops: usize = batches.iter().map(Vec::len).sum();
    for batch in &batches {
        let wire: Vec<_> = batch.iter().map(|op| wire(&node, op)).collect();
        consul.txn(&wire).await.unwrap();
    }
    let mahler_time = decided.elapsed();
    let mahler_total = started.elapsed();
    let mahler_calls = consul.calls() - calls;
    let registered = consul
        .health_service("bench-consul-svc-0999", true)
        .await
        .unwrap();
    assert_eq!(registered.len(), 1, "registered and passing");

    // 2. A no-op resync: reads only.
    let index = consul.raft_last_index().await.unwrap();
    let (calls, writes) = (consul.calls(), consul.writes());
    let noop_started = Instant::now();
    let held = observe(consul, &node.name).await.unwrap();
    let again = plan::plan_catalog(&node, &desired, &held);
    let noop_time = noop_started.elapsed();
    assert!(
        again.is_empty(),
        "a no-op sync plans nothing: {:?}",
        again.first()
    );
    let noop_calls = consul.calls() - calls;
    let noop_writes = consul.writes() - writes;
    assert_eq!(consul.raft_last_index().await.unwrap(), index);

    // The plain alternative: one agent call per registration (with the same
    // readiness check, as a TTL check set to passing).
    let register = |i: usize| {
        let e = endpoint(i);
        json!({
            "ID": format!("plain/svc-{i:04}/{}", e.pod),
            "Name": format!("plain-svc-{i:04}"),
            "Tags": ["mahler"],
            "Address": e.address,
            "Port": e.port,
            "Meta": {"mahler-project": "bench", "mahler-environment": "bench-consul", "mahler-service": format!("svc-{i:04}")},
            "Check": {"CheckID": format!("plain/svc-{i:04}/ready"), "Name": "Kubernetes readiness", "TTL": "24h", "Status": "passing"},
        })
    };
    let calls = consul.calls();
    let plain_started = Instant::now();
    for i in 0..N {
        consul.agent_register(&register(i)).await.unwrap();
    }
    let plain_time = plain_started.elapsed();
    let plain_calls = consul.calls() - calls;
    let index = consul.raft_last_index().await.unwrap();
    let plain_resync_started = Instant::now();
    for i in 0..N {
        consul.agent_register(&register(i)).await.unwrap();
    }
    let plain_resync = plain_resync_started.elapsed();
    let plain_resync_raft = consul.raft_last_index().await.unwrap() - index;

    // 3. Memory kept per Service: its cached EndpointSlice and its report.
    let before = ALLOC.current_usage();
    let kept: Vec<(EndpointSlice, String, ServiceReport)> = (0..N)
        .map(|i| {
            (
                slice(i),
                format!("bench-consul/svc-{i:04}"),
                ServiceReport {
                    registered: Some(Verdict {
                        ok: true,
                        reason: "Registered".into(),
                        message: format!(
                            "registered in Consul as bench-consul-svc-{i:04}: 1 instance(s), 1 passing"
                        ),
                    }),
                    exposed: None,
                    external_url: None,
                },
            )
        })
        .collect();
    let kept_bytes = (ALLOC.current_usage() - before) as f64 / N as f64;
    drop(kept);
    // Peak of one sync of 1,000 (observed catalog, desired, plan, wire ops).
    let base = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    {
        let held = observe(consul, &node.name).await.unwrap();
        let desired = instances_of(&env, &services);
        let _ = plan::plan_catalog(&node, &desired, &held);
    }
    let sync_peak = (ALLOC.peak_usage() - base) as f64 / N as f64;

    println!("Consul registration of {N} Services (one endpoint each), Consul 1.16.1 dev agent:");
    println!(
        "  Mahler: {ops} operations in {} txn batches; decision → last txn {:.0} ms (with the read and the plan {:.0} ms); {mahler_calls} HTTP calls",
        batches.len(),
        mahler_time.as_secs_f64() * 1000.0,
        mahler_total.as_secs_f64() * 1000.0
    );
    println!(
        "  one /v1/agent/service/register per Service: {:.0} ms; {plain_calls} HTTP calls  → Mahler {:.1}x faster, {:.0}x fewer calls",
        plain_time.as_secs_f64() * 1000.0,
        plain_time.as_secs_f64() / mahler_time.as_secs_f64(),
        plain_calls as f64 / mahler_calls as f64
    );
    println!(
        "  no-op resync: Mahler {noop_calls} reads, {noop_writes} writes, raft index unchanged, {:.0} ms; re-registering everything: {N} writes, raft index +{plain_resync_raft}, {:.0} ms",
        noop_time.as_secs_f64() * 1000.0,
        plain_resync.as_secs_f64() * 1000.0
    );
    println!(
        "  memory: {kept_bytes:.0} bytes kept per registered Service (cached EndpointSlice + report); one sync of {N} peaks at {sync_peak:.0} bytes per Service"
    );
}
