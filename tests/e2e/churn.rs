//! Churn (issue 21): Services and Connections created, changed and deleted in
//! quick succession, as a team does all day.
//!
//! A deleted Connection once wedged the Connection controller: its cache
//! froze behind a lost wake-up, the deleted Connection stayed in it and was
//! "reconciled" thousands of times a minute (every status write answered
//! `404`), and new Connections were never reconciled. These stories check
//! that every live object converges, that deleted objects get (almost) no
//! writes after their deletion, and, for the soak, that failing writes stay
//! bounded and the operator's memory and descriptors stay flat.
//!
//! - `deleted_objects_get_no_status_writes_and_the_live_ones_converge`: a
//!   few dozen quick create/delete pairs, Connections deleted right after
//!   their first status write among them.
//! - `churn_smoke`: two minutes of random churn (part of `make test`).
//! - `soak`: `make soak` (hack/soak.sh), 15 minutes by default, alone on
//!   its cluster with the operator's default resync; its figures go to
//!   docs/benchmarks.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::Condition as _;
use kube::{Api, Client, ResourceExt};
use mahler_api::{Connection, Service};
use serde_json::json;

use super::harness::{TestEnv, env, is_ready, shared};
use super::{conn_conditions, project_with_env, svc_conditions};

/// Every status write the operator sent for an object after it was gone
/// (answered `404`): a handful at most, from passes already running when
/// the deletion landed.
const MAX_WRITES_AFTER_DELETION: usize = 3;

#[tokio::test]
async fn deleted_objects_get_no_status_writes_and_the_live_ones_converge() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "churn-del").await;
    let world = World::new(&client, &ns);
    for i in 0..4 {
        world.create_service(&format!("db{i}"), "db:1").await;
    }
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (svc, conn) = (format!("s{i}"), format!("c{i}"));
        world
            .create_connected(&svc, &conn, &format!("db{}", i % 4))
            .await;
        let world = world.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                // Deleted right after its first status write, its Service too.
                0 => {
                    assert!(world.first_status(&conn).await, "{conn}: no status");
                    world.delete_connection(&conn).await;
                    world.delete_service(&svc).await;
                }
                // Deleted right after its first status write; the Service stays.
                1 => {
                    assert!(world.first_status(&conn).await, "{conn}: no status");
                    world.delete_connection(&conn).await;
                }
                // Deleted at once, before the operator saw much of either.
                _ => {
                    world.delete_connection(&conn).await;
                    world.delete_service(&svc).await;
                }
            }
        }));
    }
    // Objects that stay, created while the deletions run.
    for i in 0..8 {
        let (svc, conn) = (format!("k{i}"), format!("kc{i}"));
        world
            .create_connected(&svc, &conn, &format!("db{}", i % 4))
            .await;
    }
    for task in tasks {
        task.await.expect("churn task");
    }
    let converged = world.converged(Duration::from_secs(60)).await;
    assert!(converged.is_ok(), "{}", converged.unwrap_err());
    // A few more resync rounds (2 s in tests) for anything still looping
    // on a deleted object to show in the audit log.
    env.service_reconciles(40.0).await;
    let audit = Audit::read(env, &ns);
    let deleted: Vec<String> = (0..24)
        .map(|i| format!("c{i}"))
        .chain((0..24).filter(|i| i % 3 != 1).map(|i| format!("s{i}")))
        .collect();
    for name in &deleted {
        let n = audit.status_writes_answered_404(name);
        assert!(
            n <= MAX_WRITES_AFTER_DELETION,
            "{name}: {n} status writes after its deletion"
        );
    }
    let live = world.live().await;
    assert_eq!(live.connections.len(), 8, "{live:?}");
    assert_eq!(live.services.len(), 4 + 8 + 8, "{live:?}");
}

#[tokio::test]
async fn churn_smoke() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "churn-smoke").await;
    let report = churn(
        env,
        &client,
        &ns,
        Plan {
            services: 30,
            duration: Duration::from_secs(120),
            ops_per_second: 4.0,
            seed: 21,
        },
    )
    .await;
    println!("{report}");
    // Other tests run beside this one on the same operator: its memory and
    // descriptors are theirs too, so they are reported, not bounded, here
    // (the soak bounds them, alone on its cluster).
    report.check(None);
}

/// `make soak`: N objects, T minutes of random churn, alone on a cluster
/// whose operator runs with its default resync (hack/soak.sh). Settings:
/// SOAK_SERVICES (200), SOAK_MINUTES (15), SOAK_OPS_PER_SECOND (5),
/// SOAK_SEED.
#[tokio::test]
#[ignore = "long: run with `make soak`"]
async fn soak() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let ns = project_with_env(&client, "soak").await;
    let number = |key: &str, default: f64| -> f64 {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let plan = Plan {
        services: number("SOAK_SERVICES", 200.0) as usize,
        duration: Duration::from_secs_f64(number("SOAK_MINUTES", 15.0) * 60.0),
        ops_per_second: number("SOAK_OPS_PER_SECOND", 5.0),
        seed: number("SOAK_SEED", 7.0) as u64,
    };
    let report = churn(env, &client, &ns, plan).await;
    println!("{report}");
    std::fs::write(env.dir.join("soak-report.txt"), report.to_string()).expect("report");
    report.check(Some(Bounds {
        rss_growth: 1.25,
        fd_growth: 16,
    }));
}

/// What a churn run does.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Services kept live (about; each new Service also gets a Connection).
    services: usize,
    duration: Duration,
    ops_per_second: f64,
    seed: u64,
}

/// How much the operator may grow between the end of warm-up (the first
/// quarter) and the end of the churn.
struct Bounds {
    /// Peak RSS of the last quarter over the peak of the second: at most this ratio.
    rss_growth: f64,
    /// Open descriptors: at most this many more.
    fd_growth: i64,
}

/// Drives the churn, then measures convergence, the audit log and the
/// operator process.
async fn churn(env: &TestEnv, client: &Client, ns: &str, plan: Plan) -> Report {
    let world = World::new(client, ns);
    let mut rng = Rng(plan.seed.max(1));
    let mut services: Vec<String> = Vec::new();
    // name -> (from, to)
    let mut connections: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut next = 0usize;
    let mut name = |prefix: &str| {
        next += 1;
        format!("{prefix}{next}")
    };
    // The starting population: a chain of Services, each connected to the last.
    for _ in 0..plan.services {
        let svc = name("s");
        world.create_service(&svc, "app:1").await;
        if let Some(to) = services.last().cloned() {
            let conn = name("c");
            world.create_connection(&conn, &svc, &to).await;
            connections.insert(conn, (svc.clone(), to));
        }
        services.push(svc);
    }
    let converged = world.converged(Duration::from_secs(300)).await;
    assert!(
        converged.is_ok(),
        "before the churn: {}",
        converged.unwrap_err()
    );

    let pid = env.operator_pid();
    let mut samples = vec![Sample::of(pid, Duration::ZERO)];
    let mut counts = Counts::default();
    let mut quick = Vec::new();
    let started = Instant::now();
    let step = Duration::from_secs_f64(1.0 / plan.ops_per_second);
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sample = Instant::now();
    while started.elapsed() < plan.duration {
        tick.tick().await;
        if last_sample.elapsed() >= Duration::from_secs(5) {
            samples.push(Sample::of(pid, started.elapsed()));
            last_sample = Instant::now();
        }
        // Keep the population near its size: creates and deletes balance.
        let low = services.len() < plan.services * 4 / 5;
        let high = services.len() > plan.services * 6 / 5;
        let roll = rng.below(100);
        if (roll < 30 && !high) || low {
            // A new Service together with a Connection from it.
            let svc = name("s");
            let to = services[rng.below(services.len())].clone();
            let conn = name("c");
            world.create_connected(&svc, &conn, &to).await;
            connections.insert(conn, (svc.clone(), to));
            services.push(svc);
            counts.created += 2;
        } else if roll < 50 && services.len() > 2 {
            // A Service goes, with every Connection naming it (no waiting).
            let svc = services.swap_remove(rng.below(services.len()));
            let gone: Vec<String> = connections
                .iter()
                .filter(|(_, (f, t))| *f == svc || *t == svc)
                .map(|(c, _)| c.clone())
                .collect();
            for conn in gone {
                connections.remove(&conn);
                world.delete_connection(&conn).await;
                counts.deleted += 1;
            }
            world.delete_service(&svc).await;
            counts.deleted += 1;
        } else if roll < 60 && services.len() > 1 {
            // A Connection deleted right after its first status write.
            let from = rng.below(services.len());
            let to = (from + 1 + rng.below(services.len() - 1)) % services.len();
            let (from, to) = (services[from].clone(), services[to].clone());
            let conn = name("q");
            world.create_connection(&conn, &from, &to).await;
            counts.created += 1;
            counts.deleted += 1;
            let world = world.clone();
            quick.push(tokio::spawn(async move {
                let reconciled = world.first_status(&conn).await;
                world.delete_connection(&conn).await;
                reconciled
            }));
        } else {
            // A new image for a Service: a rollout.
            let svc = &services[rng.below(services.len())];
            world
                .set_image(svc, &format!("app:{}", rng.below(1000)))
                .await;
            counts.updated += 1;
        }
    }
    for task in quick {
        if !task.await.expect("quick delete") {
            counts.never_reconciled += 1;
        }
    }
    let churn_ended = Instant::now();
    samples.push(Sample::of(pid, started.elapsed()));
    let converged = world.converged(Duration::from_secs(60)).await;
    let converge = churn_ended.elapsed();
    let audit = Audit::read(env, ns);
    Report {
        plan,
        counts,
        converged,
        converge,
        samples,
        live: world.live().await,
        audit,
        started: std::time::SystemTime::now() - started.elapsed(),
    }
}

#[derive(Default, Debug)]
struct Counts {
    created: usize,
    updated: usize,
    deleted: usize,
    /// Connections that got no status within 60 s of their creation.
    never_reconciled: usize,
}

/// The operator process at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: i64,
    fds: i64,
}

impl Sample {
    fn of(pid: u32, at: Duration) -> Sample {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as i64)
            .unwrap_or(0);
        Sample { at, rss_kib, fds }
    }
}

/// What a churn run measured.
struct Report {
    plan: Plan,
    counts: Counts,
    /// Every live object Ready within 60 s of the churn's end, or which were not.
    converged: Result<(), String>,
    converge: Duration,
    samples: Vec<Sample>,
    live: Live,
    audit: Audit,
    started: std::time::SystemTime,
}

impl Report {
    /// Samples in the window [from, to) of the run, as fractions of it.
    fn window(&self, from: f64, to: f64) -> impl Iterator<Item = &Sample> {
        let total = self.plan.duration.as_secs_f64();
        self.samples.iter().filter(move |s| {
            let f = s.at.as_secs_f64() / total;
            f >= from && f < to + f64::EPSILON
        })
    }

    fn peak(&self, from: f64, to: f64) -> (i64, i64) {
        self.window(from, to)
            .fold((0, 0), |(r, f), s| (r.max(s.rss_kib), f.max(s.fds)))
    }

    fn check(&self, bounds: Option<Bounds>) {
        assert!(
            self.converged.is_ok(),
            "not converged 60 s after the churn: {}",
            self.converged.as_ref().unwrap_err()
        );
        assert_eq!(
            self.counts.never_reconciled, 0,
            "Connections never reconciled\n{self}"
        );
        for (name, n) in self.audit.worst_404s(5) {
            assert!(
                n <= MAX_WRITES_AFTER_DELETION,
                "{name}: {n} status writes after its deletion\n{self}"
            );
        }
        // Failing writes per minute: bounded by what the churn deleted (a
        // pass already running when its object went), never a loop.
        let minutes = self.plan.duration.as_secs_f64() / 60.0;
        let deletions_per_minute = self.counts.deleted as f64 / minutes;
        let bound = (2.0 * deletions_per_minute + 20.0) as usize;
        let worst = self
            .audit
            .failing_per_minute()
            .values()
            .copied()
            .max()
            .unwrap_or(0);
        assert!(
            worst <= bound,
            "{worst} failing writes in one minute (bound {bound})\n{self}"
        );
        let Some(bounds) = bounds else { return };
        let (warm_rss, warm_fds) = self.peak(0.25, 0.5);
        let (end_rss, end_fds) = self.peak(0.75, 1.0);
        assert!(
            warm_rss > 0 && end_rss > 0,
            "the operator's /proc entries could not be read\n{self}"
        );
        assert!(
            (end_rss as f64) <= warm_rss as f64 * bounds.rss_growth,
            "RSS grew from {warm_rss} KiB to {end_rss} KiB\n{self}"
        );
        assert!(
            end_fds <= warm_fds + bounds.fd_growth,
            "descriptors grew from {warm_fds} to {end_fds}\n{self}"
        );
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.plan;
        writeln!(
            f,
            "churn: {} Services (+Connections), {:.1} min at {} ops/s (seed {}): {} created, {} updated, {} deleted",
            p.services,
            p.duration.as_secs_f64() / 60.0,
            p.ops_per_second,
            p.seed,
            self.counts.created,
            self.counts.updated,
            self.counts.deleted
        )?;
        if self.counts.never_reconciled > 0 {
            writeln!(
                f,
                "  {} Connections got no status within 60 s of their creation",
                self.counts.never_reconciled
            )?;
        }
        writeln!(
            f,
            "  after the churn: {} Services and {} Connections live; {} in {:.1} s",
            self.live.services.len(),
            self.live.connections.len(),
            match &self.converged {
                Ok(()) => "all Ready".to_string(),
                Err(e) => format!("NOT all Ready ({e})"),
            },
            self.converge.as_secs_f64()
        )?;
        let per_minute = self.audit.failing_per_minute();
        let started = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 60)
            .unwrap_or(0);
        let line: Vec<String> = per_minute
            .iter()
            .map(|(m, n)| format!("{}:{n}", m.saturating_sub(started)))
            .collect();
        writeln!(
            f,
            "  operator writes in the namespace: {} ({} failing; by minute of the run: {})",
            self.audit.writes,
            self.audit.failing,
            if line.is_empty() {
                "none".into()
            } else {
                line.join(" ")
            }
        )?;
        writeln!(
            f,
            "  status writes answered 404 (deleted objects): {} in all; most for one object: {}",
            self.audit.status_404.values().sum::<usize>(),
            self.audit
                .worst_404s(1)
                .first()
                .map(|(n, c)| format!("{c} ({n})"))
                .unwrap_or_else(|| "0".into())
        )?;
        let (warm_rss, warm_fds) = self.peak(0.25, 0.5);
        let (end_rss, end_fds) = self.peak(0.75, 1.0);
        let first = self.samples.first().copied();
        writeln!(
            f,
            "  operator: RSS {} KiB at start, peak {warm_rss} KiB after warm-up (2nd quarter), peak {end_rss} KiB in the last quarter; descriptors {} -> {warm_fds} -> {end_fds}",
            first.map(|s| s.rss_kib).unwrap_or(0),
            first.map(|s| s.fds).unwrap_or(0)
        )
    }
}

/// The namespace's live objects.
#[derive(Debug)]
struct Live {
    services: Vec<Service>,
    connections: Vec<Connection>,
}

/// The churn's namespace, through the API (as kubectl would).
#[derive(Clone)]
struct World {
    services: Api<Service>,
    connections: Api<Connection>,
}

impl World {
    fn new(client: &Client, ns: &str) -> World {
        World {
            services: Api::namespaced(client.clone(), ns),
            connections: Api::namespaced(client.clone(), ns),
        }
    }

    async fn create_service(&self, name: &str, image: &str) {
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "mahler.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"source": {"image": image}, "ports": [{"name": "http", "port": 80}]}
        }))
        .expect("a Service");
        self.services
            .create(&PostParams::default(), &svc)
            .await
            .unwrap_or_else(|e| panic!("create Service {name}: {e}"));
    }

    async fn create_connection(&self, name: &str, from: &str, to: &str) {
        let conn: Connection = serde_json::from_value(json!({
            "apiVersion": "mahler.dev/v1alpha1", "kind": "Connection",
            "metadata": {"name": name},
            "spec": {"from": from, "to": to, "port": 80}
        }))
        .expect("a Connection");
        self.connections
            .create(&PostParams::default(), &conn)
            .await
            .unwrap_or_else(|e| panic!("create Connection {name}: {e}"));
    }

    /// A new Service `svc` with a Connection `conn` from it to `to`.
    async fn create_connected(&self, svc: &str, conn: &str, to: &str) {
        self.create_service(svc, "app:1").await;
        self.create_connection(conn, svc, to).await;
    }

    async fn set_image(&self, name: &str, image: &str) {
        let patch = json!({"spec": {"source": {"image": image}}});
        self.services
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("patch Service {name}: {e}"));
    }

    /// `kubectl delete --wait=false`.
    async fn delete_service(&self, name: &str) {
        delete(&self.services, name).await
    }

    async fn delete_connection(&self, name: &str) {
        delete(&self.connections, name).await
    }

    /// Waits (up to 60 s) for the operator's first status write on a
    /// Connection; false if it never came.
    async fn first_status(&self, name: &str) -> bool {
        let written = kube::runtime::wait::await_condition(
            self.connections.clone(),
            name,
            |c: Option<&Connection>| c.is_some_and(|c| c.status.is_some()),
        );
        matches!(
            tokio::time::timeout(Duration::from_secs(60), written).await,
            Ok(Ok(Some(_)))
        )
    }

    async fn live(&self) -> Live {
        let lp = Default::default();
        Live {
            services: self.services.list(&lp).await.expect("list").items,
            connections: self.connections.list(&lp).await.expect("list").items,
        }
    }

    /// Waits until every live Service and Connection is Ready for its
    /// current generation (objects being deleted excepted), or says which
    /// are not once `within` has passed.
    async fn converged(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let service_ready = is_ready(svc_conditions);
        let connection_ready = is_ready(conn_conditions);
        loop {
            let live = self.live().await;
            let waiting: BTreeSet<String> = live
                .services
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none())
                .filter(|s| !service_ready.matches_object(Some(s)))
                .map(|s| format!("Service {}", s.name_any()))
                .chain(
                    live.connections
                        .iter()
                        .filter(|c| c.metadata.deletion_timestamp.is_none())
                        .filter(|c| !connection_ready.matches_object(Some(c)))
                        .map(|c| format!("Connection {}", c.name_any())),
                )
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let shown: Vec<_> = waiting.iter().take(10).cloned().collect();
                return Err(format!(
                    "{} not Ready, e.g. {}",
                    waiting.len(),
                    shown.join(", ")
                ));
            }
            // A whole-namespace condition: re-listed once a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn delete<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("delete {name}: {e}"),
    }
}

/// The operator's writes into one namespace, from the API server's audit
/// log (rotated files included).
#[derive(Default)]
struct Audit {
    writes: usize,
    failing: usize,
    /// Failing writes by minute (Unix minutes).
    by_minute: BTreeMap<u64, usize>,
    /// Status writes answered 404, by object name.
    status_404: BTreeMap<String, usize>,
}

impl Audit {
    fn read(env: &TestEnv, ns: &str) -> Audit {
        let mut audit = Audit::default();
        for event in audit_events(&env.audit_log) {
            if event["user"]["username"] != super::harness::OPERATOR_USER
                || event["objectRef"]["namespace"] != ns
                || !matches!(
                    event["verb"].as_str(),
                    Some("create" | "update" | "patch" | "delete")
                )
            {
                continue;
            }
            audit.writes += 1;
            let code = event["responseStatus"]["code"].as_u64().unwrap_or(0);
            if code < 400 {
                continue;
            }
            audit.failing += 1;
            let minute = event["requestReceivedTimestamp"]
                .as_str()
                .and_then(unix_minute)
                .unwrap_or(0);
            *audit.by_minute.entry(minute).or_default() += 1;
            if code == 404 && event["objectRef"]["subresource"] == "status" {
                let name = event["objectRef"]["name"].as_str().unwrap_or("?");
                *audit.status_404.entry(name.to_string()).or_default() += 1;
            }
        }
        audit
    }

    fn status_writes_answered_404(&self, name: &str) -> usize {
        self.status_404.get(name).copied().unwrap_or(0)
    }

    fn failing_per_minute(&self) -> &BTreeMap<u64, usize> {
        &self.by_minute
    }

    /// The `n` objects with the most status writes answered 404.
    fn worst_404s(&self, n: usize) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .status_404
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        all.truncate(n);
        all
    }
}

/// Every event of the audit log and its rotated files (`audit-<time>.log`
/// beside it), oldest file first.
fn audit_events(log: &Path) -> impl Iterator<Item = serde_json::Value> {
    let dir = log.parent().expect("audit log dir");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
                })
                .collect()
        })
        .unwrap_or_default();
    // Rotated files carry their time in the name; the live one sorts last.
    files.sort_by_key(|p| (p == log, p.clone()));
    files.into_iter().flat_map(|p| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect::<Vec<_>>()
    })
}

/// `2026-12-07T19:53:29.123456Z` as minutes since the Unix epoch.
fn unix_minute(timestamp: &str) -> Option<u64> {
    let (date, time) = timestamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min) = (t.next()??, t.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from((days * 24 + h) * 60 + min).ok()
}

/// A small deterministic generator (xorshift64*): the same seed, the same churn.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

#[test]
fn audit_timestamps_are_read_as_unix_minutes() {
    assert_eq!(unix_minute("1970-01-01T00:01:59.9Z"), Some(1));
    // 2026-12-07T19:53Z = 1796673180 s.
    assert_eq!(
        unix_minute("2026-12-07T19:53:29.123456Z"),
        Some(1_796_673_180 / 60)
    );
}
