//! `make bench`: figures for docs/benchmarks.md, against the real local
//! cluster and the release operator that hack/bench.sh starts.
//!
//! 1. create → Ready latency of one image Service, 50 runs (p50/p99), next to
//!    the same Deployment created directly (the cluster's own rollout delay);
//! 2. N Services chained by N-1 Connections: time until all are Ready, the
//!    operator's peak memory per Service (peak RSS of this stage over the RSS
//!    just before it), and the writes of a no-op resync.

#[path = "common/mod.rs"]
mod common;
use common::{metrics, percentile, sum};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::wait::Condition;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use mahler_api::{
    Connection, ConnectionSpec, Environment, EnvironmentSpec, Project, ProjectSpec, Service,
    ServicePort, ServiceSpec, Source,
};

fn ready(s: &Service) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.status == "True"
                && c.observed_generation == s.metadata.generation
        })
    })
}

fn service(ns: &str, name: &str) -> Service {
    let mut s = Service::new(
        name,
        ServiceSpec {
            source: Source {
                image: Some(format!("bench/{name}:1")),
                ..Default::default()
            },
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    s.metadata.namespace = Some(ns.into());
    s
}

/// Connection `c<i>`: Service `s<i>` → `s<i-1>` on 8080.
fn connection(ns: &str, i: usize) -> Connection {
    let mut c = Connection::new(
        &format!("c{i}"),
        ConnectionSpec {
            from: format!("s{i}"),
            to: format!("s{}", i - 1),
            port: 8080,
            env_prefix: None,
        },
    );
    c.metadata.namespace = Some(ns.into());
    c
}

async fn environment(client: &Client, project: &str) -> String {
    let ns = format!("{project}-bench");
    Api::<Project>::all(client.clone())
        .create(
            &PostParams::default(),
            &Project::new(project, ProjectSpec::default()),
        )
        .await
        .expect("project");
    Api::<Environment>::all(client.clone())
        .create(
            &PostParams::default(),
            &Environment::new(
                &ns,
                EnvironmentSpec {
                    project: project.into(),
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("environment");
    let envs = Api::<Environment>::all(client.clone());
    await_condition(envs, &ns, |e: Option<&Environment>| {
        e.is_some_and(|e| e.status.as_ref().is_some_and(|s| s.namespace.is_some()))
    })
    .await
    .expect("environment ready");
    ns
}

async fn latency(client: &Client, runs: usize) {
    let ns = environment(client, "latency").await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let (mut mahler, mut raw) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("lat{i}");
        let started = Instant::now();
        services
            .create(&PostParams::default(), &service(&ns, &name))
            .await
            .expect("create service");
        await_condition(services.clone(), &name, |s: Option<&Service>| {
            s.is_some_and(ready)
        })
        .await
        .expect("ready");
        mahler.push(started.elapsed());

        // The same Deployment, created directly: the cluster's own delay.
        let mut d = mahler_core::workload::desired_deployment(
            &service(&ns, &format!("raw{i}")),
            &Default::default(),
        )
        .expect("deployment");
        d.metadata.owner_references = None;
        let started = Instant::now();
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("create deployment");
        await_condition(
            deployments.clone(),
            &format!("raw{i}"),
            conditions::is_deployment_completed(),
        )
        .await
        .expect("rollout");
        raw.push(started.elapsed());
    }
    mahler.sort();
    raw.sort();
    println!(
        "create → Ready, {runs} runs: Mahler Service p50 {:?} p99 {:?}; raw Deployment p50 {:?} p99 {:?}; Mahler overhead at p50 {:?}",
        percentile(&mahler, 0.5),
        percentile(&mahler, 0.99),
        percentile(&raw, 0.5),
        percentile(&raw, 0.99),
        percentile(&mahler, 0.5).saturating_sub(percentile(&raw, 0.5))
    );
}

/// Watches `api` until `n` objects satisfy `done` at once; the time since
/// `started` when they do.
fn until_all<K>(
    api: Api<K>,
    n: usize,
    started: Instant,
    done: impl Fn(&K) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<Duration>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut names = HashSet::new();
        let mut stream = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(obj) = stream.try_next().await.expect("watch") {
            if done(&obj) {
                names.insert(obj.name_any());
            } else {
                names.remove(&obj.name_any());
            }
            if names.len() == n {
                return started.elapsed();
            }
        }
        unreachable!("watch ended")
    })
}

/// The floor: the objects Mahler would create for `n` Services (Deployment,
/// Service, NetworkPolicy) created directly, 32 at a time, until every
/// Deployment has rolled out. Not labelled as Mahler's, so the operator
/// ignores them.
async fn raw_scale(client: &Client, n: usize) -> Duration {
    let ns = environment(client, &format!("raw{n}")).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let kube_services: Api<KubeService> = Api::namespaced(client.clone(), &ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let unmanaged = |meta: &mut ObjectMeta| {
        meta.owner_references = None;
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(mahler_api::names::MANAGED_BY.0);
        }
    };
    let started = Instant::now();
    let watch = until_all(deployments.clone(), n, started, |d: &Deployment| {
        conditions::is_deployment_completed().matches_object(Some(d))
    });
    stream::iter(0..n)
        .map(|i| {
            let (deployments, kube_services, policies) =
                (deployments.clone(), kube_services.clone(), policies.clone());
            let svc = service(&ns, &format!("s{i}"));
            async move {
                let mut d = mahler_core::workload::desired_deployment(&svc, &Default::default())
                    .expect("deployment");
                unmanaged(&mut d.metadata);
                deployments
                    .create(&PostParams::default(), &d)
                    .await
                    .expect("create deployment");
                let mut k = mahler_core::workload::desired_kube_service(&svc).expect("service");
                unmanaged(&mut k.metadata);
                kube_services
                    .create(&PostParams::default(), &k)
                    .await
                    .expect("create service");
                if i > 0 {
                    let ns = svc.namespace().unwrap_or_default();
                    let to = service(&ns, &format!("s{}", i - 1));
                    let mut p =
                        mahler_core::workload::desired_connection_policy(&connection(&ns, i), &to);
                    unmanaged(&mut p.metadata);
                    policies
                        .create(&PostParams::default(), &p)
                        .await
                        .expect("create policy");
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let rolled_out = watch.await.expect("watch task");
    println!(
        "raw: {n} Deployments + Services + {} NetworkPolicies created directly, all rolled out after {rolled_out:?}",
        n - 1
    );
    rolled_out
}

/// User + system CPU the operator has used, in seconds.
fn operator_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn operator_rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn writes(metrics_url: &str) -> (u64, u64) {
    let body = metrics(metrics_url).await;
    (
        sum(&body, "mahler_kube_writes_total"),
        sum(&body, "mahler_reconciles_total"),
    )
}

async fn scale(
    client: &Client,
    n: usize,
    pid: u32,
    metrics_url: &str,
    resync: Duration,
) -> Duration {
    let ns = environment(client, &format!("scale{n}")).await;
    // VmHWM is the process's lifetime peak, which would include the latency
    // stage. Writing "5" to clear_refs resets it to the current RSS (Linux),
    // so the peak read after convergence belongs to this stage alone.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset operator VmHWM");
    let rss_before = operator_rss_kib(pid, "VmRSS:");
    let cpu_before = operator_cpu_seconds(pid);
    let hwm_before = operator_rss_kib(pid, "VmHWM:");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let connections: Api<Connection> = Api::namespaced(client.clone(), &ns);

    let started = Instant::now();
    let watch = until_all(services.clone(), n, started, ready);
    stream::iter(0..n)
        .map(|i| {
            let (services, connections, ns) = (services.clone(), connections.clone(), ns.clone());
            async move {
                services
                    .create(&PostParams::default(), &service(&ns, &format!("s{i}")))
                    .await
                    .expect("create service");
                if i > 0 {
                    connections
                        .create(&PostParams::default(), &connection(&ns, i))
                        .await
                        .expect("create connection");
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    let converged = watch.await.expect("watch task");
    let peak = operator_rss_kib(pid, "VmHWM:");
    let cpu = operator_cpu_seconds(pid) - cpu_before;
    println!(
        "{n} Services + {} Connections: created in {created:?}, all Ready after {converged:?}; operator CPU {cpu:.1} s",
        n - 1
    );
    // Baseline = RSS at the reset (VmHWM then equals it, give or take pages
    // touched between the two reads; take the larger, so as not to overstate).
    let baseline = rss_before.max(hwm_before);
    println!(
        "operator memory: baseline {baseline} KiB (VmRSS {rss_before}, VmHWM {hwm_before} after reset), peak {peak} KiB → {:.0} bytes ({:.2} KiB) per Service",
        (peak.saturating_sub(baseline) * 1024) as f64 / n as f64,
        peak.saturating_sub(baseline) as f64 / n as f64
    );

    // A no-op resync: wait for the tail of the rollout to land, then count.
    let mut last = writes(metrics_url).await.0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = writes(metrics_url).await.0;
        if now == last {
            break;
        }
        last = now;
    }
    let (w0, r0) = writes(metrics_url).await;
    tokio::time::sleep(resync * 2 + Duration::from_secs(2)).await;
    let (w1, r1) = writes(metrics_url).await;
    println!(
        "no-op resync over {:?}: {} reconciles, {} API writes",
        resync * 2 + Duration::from_secs(2),
        r1 - r0,
        w1 - w0
    );
    let settled = operator_rss_kib(pid, "VmRSS:");
    println!(
        "operator memory after settling: {settled} KiB → {:.1} KiB per Service",
        (settled.saturating_sub(rss_before)) as f64 / n as f64
    );
    converged
}

#[tokio::main]
async fn main() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG: run `make bench`");
    let pid: u32 = std::env::var("MAHLER_BENCH_OPERATOR_PID")
        .expect("run `make bench`")
        .parse()
        .unwrap();
    let metrics_url = std::env::var("MAHLER_BENCH_METRICS").expect("run `make bench`");
    let resync = Duration::from_secs(
        std::env::var("MAHLER_RESYNC_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let n = std::env::var("BENCH_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    latency(&client, runs).await;
    let floor = raw_scale(&client, n).await;
    let converged = scale(&client, n, pid, &metrics_url, resync).await;
    println!(
        "{n} Services: Mahler all Ready after {converged:?}, the cluster alone {floor:?}: Mahler's own share {:?}",
        converged.saturating_sub(floor)
    );
}
