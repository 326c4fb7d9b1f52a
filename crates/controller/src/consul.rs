//! Consul: registration with real health, intentions from Connections and
//! gateway routes for `expose` (docs/consul.md).
//!
//! One sync task owns every Consul call. It is poked by the passes of
//! Services, Connections and Environments, by the EndpointSlices of
//! Mahler's Services, and by a blocking query on the operator's catalog
//! node (so a Consul that restarted and lost its state is noticed at once).
//! Each sync reads what Consul holds (the node's services and checks, and
//! Mahler's config entries), asks `mahler_core::consul` for the
//! differences, and writes only those: catalog changes as `/v1/txn` batches
//! of at most 128 operations, config entries one by one. A sync with
//! nothing to do writes nothing.
//!
//! What came of each Service and Connection is kept here as a report; when
//! a report changes, the object is reconciled and its pass writes the
//! `ConsulRegistered`, `Exposed` and `IntentionsSynced` conditions (the one
//! status write path stays `status.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use mahler_api::names::{
    CONSUL_MANAGED_META, CONSUL_REGISTERED, EXPOSED, INTENTIONS_SYNCED, MANAGED_BY,
};
use mahler_api::{ConditionSet, Connection, Environment, Service};
use mahler_consul::{
    AgentService, CatalogNode, Client as ConsulClient, TxnCheck, TxnCheckBody, TxnNode, TxnOp,
    TxnService,
};
use mahler_core::consul::{
    self as plan, CatalogOp, Endpoint, Exposure, Instance, ObservedCatalog, ObservedCheck,
    ObservedService, ServiceInput,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::cache::Caches;
use super::metrics::Metrics;
use super::{Context, Guarded, Trigger, status, valid_ref};

/// The operator's Consul settings (flags `--consul-*`).
#[derive(Clone, Debug)]
pub struct ConsulSettings {
    pub client: mahler_consul::Config,
    /// A file holding the ACL token (a mounted Secret); read at every sync,
    /// so a rotated token is picked up.
    pub token_file: Option<PathBuf>,
    /// The catalog node Mahler's instances are registered on.
    pub node: String,
    pub node_address: String,
    /// The API gateway `expose` routes attach to, and its listener port
    /// (None: no gateway, `expose` is refused).
    pub gateway: Option<(String, u16)>,
    /// Consul's DNS domain, for `<PREFIX>_CONSUL_HOST`.
    pub dns_domain: String,
    /// How often a settled sync runs again anyway.
    pub resync: Duration,
}

/// The outcome of one Consul concern for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    fn ok(reason: &str, message: impl Into<String>) -> Self {
        Verdict {
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }
    fn failed(reason: &str, message: impl Into<String>) -> Self {
        Verdict {
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What came of one Service in Consul.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceReport {
    pub registered: Option<Verdict>,
    pub exposed: Option<Verdict>,
    pub external_url: Option<String>,
}

/// The Consul side of the operator: settings, client, the sync task's
/// reports.
pub struct Mesh {
    pub settings: ConsulSettings,
    pub client: ConsulClient,
    poke: Notify,
    services: Mutex<HashMap<String, ServiceReport>>,
    connections: Mutex<HashMap<String, Verdict>>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Mesh {
    pub fn new(settings: ConsulSettings) -> Result<Self, mahler_consul::Error> {
        let client = ConsulClient::new(settings.client.clone())?;
        Ok(Mesh {
            settings,
            client,
            poke: Notify::new(),
            services: Mutex::default(),
            connections: Mutex::default(),
        })
    }

    /// Asks for a sync soon (bursts coalesce into one).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    pub fn service_report(&self, namespace: &str, name: &str) -> Option<ServiceReport> {
        self.services.lock().get(&key(namespace, name)).cloned()
    }

    pub fn connection_report(&self, namespace: &str, name: &str) -> Option<Verdict> {
        self.connections.lock().get(&key(namespace, name)).cloned()
    }

    /// The Consul DNS name of Service `svc` of a Consul-enabled environment.
    pub fn dns_host(&self, env: &Environment, svc: &str) -> Option<String> {
        if !env.consul_enabled() {
            return None;
        }
        let name = plan::consul_name(&env.consul_prefix(), svc).ok()?;
        Some(plan::dns_name(
            &name,
            self.settings.client.datacenter.as_deref(),
            &self.settings.dns_domain,
        ))
    }

    fn node(&self) -> plan::Node {
        plan::Node {
            name: self.settings.node.clone(),
            address: self.settings.node_address.clone(),
            meta: BTreeMap::from([
                ("external-source".to_string(), "mahler".to_string()),
                (CONSUL_MANAGED_META.to_string(), "true".to_string()),
            ]),
        }
    }
}

/// The Consul conditions of a Service, set on its status by its pass; the
/// external URL too. Consul off for its environment: none (and no nagging),
/// unless the Service asks for something only Consul gives.
pub async fn service_conditions(
    ctx: &Context,
    svc: &Service,
    existing: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) -> Option<String> {
    let ns = svc.namespace().unwrap_or_default();
    let env = ctx.caches.environment(&ns);
    let enabled = env.as_ref().is_some_and(Environment::consul_enabled);
    let mut report = ServiceReport::default();
    if enabled {
        match &ctx.mesh {
            Some(mesh) => {
                mesh.poke();
                report = mesh
                    .service_report(&ns, &svc.name_any())
                    .unwrap_or_else(|| ServiceReport {
                        registered: Some(Verdict::failed(
                            "Registering",
                            "waiting for the operator's Consul sync",
                        )),
                        exposed: svc.spec.expose.as_ref().map(|_| {
                            Verdict::failed("Registering", "waiting for the operator's Consul sync")
                        }),
                        external_url: None,
                    });
            }
            None => {
                let v = Verdict::failed(
                    "ConsulNotConfigured",
                    "the environment enables Consul (spec.consul.enabled) but the operator has no Consul address (flag --consul-address, chart consul.address)",
                );
                report.exposed = svc.spec.expose.as_ref().map(|_| v.clone());
                report.registered = Some(v);
            }
        }
    } else if svc.spec.expose.is_some() {
        report.exposed = Some(Verdict::failed(
            "ConsulDisabled",
            "spec.expose is served by the Consul API gateway: enable Consul on the environment (spec.consul.enabled)",
        ));
    }
    let generation = svc.meta().generation;
    let mut set = ConditionSet(std::mem::take(conditions));
    for (type_, verdict) in [
        (CONSUL_REGISTERED, &report.registered),
        (EXPOSED, &report.exposed),
    ] {
        set_verdict(
            ctx,
            svc,
            existing,
            &mut set,
            type_,
            verdict.as_ref(),
            generation,
        )
        .await;
    }
    *conditions = set.into_vec();
    report.external_url
}

/// The `IntentionsSynced` condition of a Connection.
pub async fn connection_conditions(
    ctx: &Context,
    conn: &Connection,
    existing: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) {
    let ns = conn.namespace().unwrap_or_default();
    let enabled = ctx
        .caches
        .environment(&ns)
        .is_some_and(|e| e.consul_enabled());
    let verdict = match (&ctx.mesh, enabled) {
        (_, false) => None,
        (None, true) => Some(Verdict::failed(
            "ConsulNotConfigured",
            "the environment enables Consul (spec.consul.enabled) but the operator has no Consul address (flag --consul-address, chart consul.address)",
        )),
        (Some(mesh), true) => {
            mesh.poke();
            Some(
                mesh.connection_report(&ns, &conn.name_any())
                    .unwrap_or_else(|| {
                        Verdict::failed("Syncing", "waiting for the operator's Consul sync")
                    }),
            )
        }
    };
    let mut set = ConditionSet(std::mem::take(conditions));
    let generation = conn.meta().generation;
    set_verdict(
        ctx,
        conn,
        existing,
        &mut set,
        INTENTIONS_SYNCED,
        verdict.as_ref(),
        generation,
    )
    .await;
    *conditions = set.into_vec();
}

/// Sets (or removes) one condition; an Event when its reason changes.
async fn set_verdict<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    existing: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    set: &mut ConditionSet,
    type_: &str,
    verdict: Option<&Verdict>,
    generation: Option<i64>,
) {
    let Some(v) = verdict else {
        set.0.retain(|c| c.type_ != type_);
        return;
    };
    let before = existing
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str() == "True", c.reason.as_str()));
    set.set(type_, v.ok, &v.reason, &v.message, generation);
    // Waiting for the first sync is not news.
    let transient = matches!(v.reason.as_str(), "Registering" | "Syncing");
    if before != Some((v.ok, v.reason.as_str())) && !transient {
        status::event(ctx, obj, !v.ok, "Consul", &v.reason, &v.message).await;
    }
}

/// Runs the sync until the operator stops (start it once the shared caches
/// are ready): watches EndpointSlices of
/// Mahler's Services, follows the catalog node with a blocking query, and
/// syncs on every poke, after failures with backoff (1 s to 30 s), and
/// every `resync` anyway.
pub async fn run(
    mesh: Arc<Mesh>,
    metrics: Arc<Metrics>,
    client: kube::Client,
    caches: Caches,
    services: Trigger<Guarded<Service>>,
    connections: Trigger<Guarded<Connection>>,
) {
    let (slices, writer) = reflector::store::<EndpointSlice>();
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let feed = {
        let mesh = mesh.clone();
        reflector::reflector(writer, watcher(Api::<EndpointSlice>::all(client), managed))
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(_) => mesh.poke(),
                    Err(error) => warn!(error = %super::one_line(&error), "EndpointSlice watch"),
                }
                futures::future::ready(())
            })
    };
    tokio::spawn(feed);
    tokio::spawn(follow_catalog(mesh.clone()));
    // The only waiter on this store (see `crate::run` on why that matters);
    // the caller starts this once the shared caches are ready.
    let _ = slices.wait_until_ready().await;
    info!(consul = %mesh.client.address(), node = %mesh.settings.node, "Consul sync started");

    let mut backoff = Duration::from_secs(1);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = mesh.poke.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // Let a burst of changes (a whole environment applied) land first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let writes_before = mesh.client.writes();
        let outcome = sync(&mesh, &caches, &slices).await;
        let writes = mesh.client.writes() - writes_before;
        metrics.consul_synced(
            outcome.as_ref().map(|_| "ok").unwrap_or_else(|f| f.reason),
            started.elapsed(),
            writes,
        );
        let (service_reports, connection_reports, next) = match outcome {
            Ok(done) => {
                backoff = Duration::from_secs(1);
                metrics.consul_instances.set(done.instances as i64);
                debug!(took = ?started.elapsed(), writes, "Consul sync");
                let next = if done.pending {
                    Duration::from_secs(1)
                } else {
                    mesh.settings.resync
                };
                (done.services, done.connections, next)
            }
            Err(failure) => {
                warn!(error = %failure.message, retry_in = ?backoff, "Consul sync failed");
                let next = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                let (s, c) = everything_failed(&mesh, &caches, &failure);
                (s, c, next)
            }
        };
        wait = next;
        publish(
            &mesh,
            service_reports,
            connection_reports,
            &services,
            &connections,
        );
    }
}

/// Follows the catalog node's index with blocking queries: any change not
/// made by the sync itself (Consul restarted empty, someone deregistered an
/// instance) pokes it.
async fn follow_catalog(mesh: Arc<Mesh>) {
    let mut index = 0u64;
    let mut backoff = Duration::from_secs(1);
    loop {
        match mesh
            .client
            .node_services(&mesh.settings.node, Some((index, Duration::from_secs(300))))
            .await
        {
            Ok((_, new)) => {
                backoff = Duration::from_secs(1);
                // An index that goes backwards: Consul restarted (docs say reset).
                if new != index {
                    if index != 0 {
                        mesh.poke();
                    }
                    index = if new < index { 0 } else { new };
                }
            }
            Err(_) => {
                // The sync reports the failure; come back with the same backoff.
                if index != 0 {
                    mesh.poke();
                }
                index = 0;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Stores the new reports and reconciles each object whose report changed.
fn publish(
    mesh: &Mesh,
    services: HashMap<String, ServiceReport>,
    connections: HashMap<String, Verdict>,
    service_trigger: &Trigger<Guarded<Service>>,
    connection_trigger: &Trigger<Guarded<Connection>>,
) {
    let mut old = mesh.services.lock();
    for k in keys_changed(&old, &services) {
        if let Some((ns, name)) = k.split_once('/') {
            let _ = service_trigger.send(ObjectRef::new(name).within(ns));
        }
    }
    *old = services;
    drop(old);
    let mut old = mesh.connections.lock();
    for k in keys_changed(&old, &connections) {
        if let Some((ns, name)) = k.split_once('/') {
            let _ = connection_trigger.send(ObjectRef::new(name).within(ns));
        }
    }
    *old = connections;
}

fn keys_changed<V: PartialEq>(old: &HashMap<String, V>, new: &HashMap<String, V>) -> Vec<String> {
    let mut out: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    out
}

/// A sync that could not talk to Consul (or had no token).
struct Failure {
    reason: &'static str,
    message: String,
}

impl From<mahler_consul::Error> for Failure {
    fn from(e: mahler_consul::Error) -> Self {
        Failure {
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

/// Every Service and Connection of an enabled environment, failed the same way.
fn everything_failed(
    mesh: &Mesh,
    caches: &Caches,
    failure: &Failure,
) -> (HashMap<String, ServiceReport>, HashMap<String, Verdict>) {
    let verdict = Verdict::failed(failure.reason, failure.message.clone());
    let mut services = HashMap::new();
    let mut connections = HashMap::new();
    for env in enabled_environments(caches) {
        let ns = env.namespace_name();
        for svc in services_in(caches, &ns) {
            // Keep what is known to be served; say that Consul is not reachable.
            let before = mesh.service_report(&ns, &svc.name_any());
            services.insert(
                key(&ns, &svc.name_any()),
                ServiceReport {
                    registered: Some(verdict.clone()),
                    exposed: svc.spec.expose.as_ref().map(|_| verdict.clone()),
                    external_url: before.and_then(|b| b.external_url),
                },
            );
        }
        for conn in connections_in(caches, &ns) {
            connections.insert(key(&ns, &conn.name_any()), verdict.clone());
        }
    }
    (services, connections)
}

fn enabled_environments(caches: &Caches) -> Vec<Environment> {
    caches
        .store::<Environment>()
        .state()
        .iter()
        .filter_map(|g| valid_ref(g).cloned())
        .filter(|e| e.consul_enabled() && e.meta().deletion_timestamp.is_none())
        .collect()
}

/// The workload Services of a namespace (template Services run no pods).
fn services_in(caches: &Caches, ns: &str) -> Vec<Service> {
    caches
        .store::<Service>()
        .state_filter(|g| g.meta().namespace.as_deref() == Some(ns))
        .iter()
        .filter_map(|g| valid_ref(g).cloned())
        .filter(|s| s.spec.source.template.is_none() && s.meta().deletion_timestamp.is_none())
        .collect()
}

fn connections_in(caches: &Caches, ns: &str) -> Vec<Connection> {
    caches
        .store::<Connection>()
        .state_filter(|g| g.meta().namespace.as_deref() == Some(ns))
        .iter()
        .filter_map(|g| valid_ref(g).cloned())
        .filter(|c| c.meta().deletion_timestamp.is_none())
        .collect()
}

/// The endpoints of a Service, from its EndpointSlices.
fn endpoints(slices: &Store<EndpointSlice>, ns: &str, svc: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices.state() {
        if slice.metadata.namespace.as_deref() != Some(ns)
            || slice
                .labels()
                .get("kubernetes.io/service-name")
                .map(String::as_str)
                != Some(svc)
            || slice.address_type != "IPv4" && slice.address_type != "IPv6"
        {
            continue;
        }
        let Some(port) = slice
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            let Some(address) = e.addresses.first() else {
                continue;
            };
            let pod = e
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| address.clone());
            // Unset means ready (the EndpointSlice API's own reading).
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            out.push(Endpoint {
                pod,
                address: address.clone(),
                port,
                ready,
            });
        }
    }
    out
}

/// What one successful sync found and did.
struct Synced {
    services: HashMap<String, ServiceReport>,
    connections: HashMap<String, Verdict>,
    /// Consul has not bound a route yet: look again soon.
    pending: bool,
    instances: usize,
}

async fn sync(
    mesh: &Mesh,
    caches: &Caches,
    slices: &Store<EndpointSlice>,
) -> Result<Synced, Failure> {
    if let Some(path) = &mesh.settings.token_file {
        match std::fs::read_to_string(path) {
            Ok(token) if !token.trim().is_empty() => {
                mesh.client.set_token(Some(token.trim().to_string()))
            }
            Ok(_) | Err(_) => {
                return Err(Failure {
                    reason: "ConsulTokenMissing",
                    message: format!(
                        "the Consul ACL token file {} is missing or empty (chart: consul.aclToken.secretName and key; the Secret must exist in the operator's namespace)",
                        path.display()
                    ),
                });
            }
        }
    }
    let node = mesh.node();
    let environments = enabled_environments(caches);

    // What should exist.
    let mut desired: Vec<Instance> = Vec::new();
    let mut reports: HashMap<String, ServiceReport> = HashMap::new();
    let mut connection_reports: HashMap<String, Verdict> = HashMap::new();
    let mut intentions = Vec::new();
    let mut all_services: Vec<(Service, Environment)> = Vec::new();
    let mut owner_of: HashMap<String, String> = HashMap::new();
    for env in &environments {
        let ns = env.namespace_name();
        let services = services_in(caches, &ns);
        let connections = connections_in(caches, &ns);
        for svc in &services {
            let k = key(&ns, &svc.name_any());
            let input = ServiceInput {
                service: svc,
                environment: env,
                endpoints: endpoints(slices, &ns, &svc.name_any()),
            };
            let registered = match plan::instances(&input) {
                Ok(instances) => {
                    let name = plan::consul_name(&env.consul_prefix(), &svc.name_any())
                        .unwrap_or_default();
                    let passing = instances
                        .iter()
                        .filter(|i| i.check.status == "passing")
                        .count();
                    for i in &instances {
                        owner_of.insert(i.id.clone(), k.clone());
                    }
                    let n = instances.len();
                    desired.extend(instances);
                    if svc.spec.ports.is_empty() {
                        Verdict::ok(
                            "NoPorts",
                            format!(
                                "{name} has no ports, so no instance is registered in Consul (its Connections still get intentions)"
                            ),
                        )
                    } else {
                        Verdict::ok(
                            "Registered",
                            format!(
                                "registered in Consul as {name}: {n} instance(s), {passing} passing"
                            ),
                        )
                    }
                }
                Err(problem) => Verdict::failed("InvalidName", problem.to_string()),
            };
            reports.insert(
                k,
                ServiceReport {
                    registered: Some(registered),
                    ..Default::default()
                },
            );
        }
        let service_refs: Vec<&Service> = services.iter().collect();
        let connection_refs: Vec<&Connection> = connections.iter().collect();
        let entries = plan::intentions(env, &service_refs, &connection_refs);
        for conn in &connections {
            let named = |s: &str| {
                services.iter().any(|x| x.name_any() == s)
                    && plan::consul_name(&env.consul_prefix(), s).is_ok()
            };
            let verdict = if named(&conn.spec.from) && named(&conn.spec.to) {
                Verdict::ok(
                    "Synced",
                    format!(
                        "Consul allows {} to {} (service-intentions {})",
                        plan::consul_name(&env.consul_prefix(), &conn.spec.from)
                            .unwrap_or_default(),
                        plan::consul_name(&env.consul_prefix(), &conn.spec.to).unwrap_or_default(),
                        plan::consul_name(&env.consul_prefix(), &conn.spec.to).unwrap_or_default(),
                    ),
                )
            } else {
                Verdict::failed(
                    "ServiceNotRegistered",
                    format!(
                        "no intention is written until both {} and {} are Services Consul can name in this environment",
                        conn.spec.from, conn.spec.to
                    ),
                )
            };
            connection_reports.insert(key(&ns, &conn.name_any()), verdict);
        }
        intentions.extend(entries);
        all_services.extend(services.into_iter().map(|s| (s, env.clone())));
    }

    // The catalog.
    let observed = observe(&mesh.client, &node.name).await?;
    for batch in plan::plan_catalog(&node, &desired, &observed) {
        let wire: Vec<TxnOp> = batch.iter().map(|op| wire(&node, op)).collect();
        match mesh.client.txn(&wire).await {
            Ok(()) => {}
            Err(mahler_consul::Error::Rejected { .. }) => {
                // Find the Services whose operations Consul refuses, one
                // transaction per Service; the rest still lands.
                isolate(mesh, &node, &batch, &owner_of, &mut reports).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }

    // Intentions.
    let intention_failures = sync_intentions(mesh, &intentions).await?;
    for (ns_name, verdict) in connection_reports.iter_mut() {
        let ns = ns_name.split('/').next().unwrap_or_default();
        if let Some(message) = intention_failures.iter().find_map(|(dest, m)| {
            all_services
                .iter()
                .any(|(s, e)| {
                    s.namespace().as_deref() == Some(ns)
                        && plan::consul_name(&e.consul_prefix(), &s.name_any()).as_deref()
                            == Ok(dest.as_str())
                })
                .then_some(m)
        }) {
            *verdict = Verdict::failed("ConsulRejected", message.clone());
        }
    }

    // Gateway routes.
    let exposed: Vec<(&Service, &Environment)> = all_services
        .iter()
        .filter(|(s, _)| s.spec.expose.is_some())
        .map(|(s, e)| (s, e))
        .collect();
    let pending = sync_routes(mesh, &exposed, !environments.is_empty(), &mut reports).await?;

    Ok(Synced {
        services: reports,
        connections: connection_reports,
        pending,
        instances: desired.len(),
    })
}

/// What Consul holds on the catalog node `node` (two reads: its services,
/// then its checks when it exists). Also used by the Consul benchmark.
pub async fn observe(
    client: &ConsulClient,
    node: &str,
) -> Result<ObservedCatalog, mahler_consul::Error> {
    let (held, _) = client.node_services(node, None).await?;
    let checks = if held.node.is_some() {
        client.node_checks(node).await?
    } else {
        Vec::new()
    };
    Ok(ObservedCatalog {
        node: held.node.map(|n| (n.address, n.meta)),
        services: held
            .services
            .into_iter()
            .map(|s| {
                (
                    s.id,
                    ObservedService {
                        service: s.service,
                        address: s.address,
                        port: s.port,
                        tags: s.tags,
                        meta: s.meta,
                    },
                )
            })
            .collect(),
        checks: checks
            .into_iter()
            .map(|c| {
                (
                    c.check_id,
                    ObservedCheck {
                        name: c.name,
                        status: c.status,
                        output: c.output,
                        service_id: c.service_id,
                    },
                )
            })
            .collect(),
    })
}

/// One core operation on the wire (also used by the Consul benchmark).
pub fn wire(node: &plan::Node, op: &CatalogOp) -> TxnOp {
    match op {
        CatalogOp::SetNode(n) => TxnOp::Node(TxnNode {
            verb: "set",
            node: CatalogNode {
                node: n.name.clone(),
                address: n.address.clone(),
                datacenter: None,
                meta: n.meta.clone(),
            },
        }),
        CatalogOp::SetService(i) => TxnOp::Service(TxnService {
            verb: "set",
            node: node.name.clone(),
            service: AgentService {
                id: i.id.clone(),
                service: i.service.clone(),
                tags: i.tags.clone(),
                address: i.address.clone(),
                port: i.port,
                meta: i.meta.clone(),
            },
        }),
        CatalogOp::SetCheck { service_id, check } => TxnOp::Check(TxnCheck {
            verb: "set",
            check: TxnCheckBody {
                node: node.name.clone(),
                check_id: check.id.clone(),
                name: check.name.clone(),
                status: check.status.clone(),
                output: check.output.clone(),
                service_id: service_id.clone(),
            },
        }),
        CatalogOp::DeleteService { id, service } => TxnOp::Service(TxnService {
            verb: "delete",
            node: node.name.clone(),
            service: AgentService {
                id: id.clone(),
                service: service.clone(),
                ..Default::default()
            },
        }),
        CatalogOp::DeleteCheck(id) => TxnOp::Check(TxnCheck {
            verb: "delete",
            check: TxnCheckBody {
                node: node.name.clone(),
                check_id: id.clone(),
                ..Default::default()
            },
        }),
    }
}

/// Replays a refused batch one Service at a time, marking the ones Consul
/// refuses.
async fn isolate(
    mesh: &Mesh,
    node: &plan::Node,
    batch: &[CatalogOp],
    owner_of: &HashMap<String, String>,
    reports: &mut HashMap<String, ServiceReport>,
) -> Result<(), Failure> {
    let mut groups: BTreeMap<String, Vec<TxnOp>> = BTreeMap::new();
    for op in batch {
        let id = match op {
            CatalogOp::SetNode(_) => String::new(),
            CatalogOp::SetService(i) => i.id.clone(),
            CatalogOp::SetCheck { service_id, .. } => service_id.clone(),
            CatalogOp::DeleteService { id, .. } => id.clone(),
            CatalogOp::DeleteCheck(id) => id.trim_end_matches("/ready").to_string(),
        };
        let owner = owner_of.get(&id).cloned().unwrap_or_default();
        groups.entry(owner).or_default().push(wire(node, op));
    }
    for (owner, ops) in groups {
        match mesh.client.txn(&ops).await {
            Ok(()) => {}
            Err(mahler_consul::Error::Rejected { message, .. }) => {
                warn!(service = %owner, %message, "Consul refused a registration");
                if let Some(r) = reports.get_mut(&owner) {
                    r.registered = Some(Verdict::failed("ConsulRejected", message));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Marks a config entry as this operator's.
fn owned_meta(mesh: &Mesh, meta: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut meta = meta.clone();
    meta.insert("mahler-node".into(), mesh.settings.node.clone());
    meta
}

fn is_ours(mesh: &Mesh, entry: &Value) -> bool {
    let meta = &entry["Meta"];
    meta[CONSUL_MANAGED_META] == "true" && meta["mahler-node"] == mesh.settings.node.as_str()
}

/// The fields of a config entry Mahler sets, for comparing what Consul
/// holds (it adds Precedence, indexes, status...) with what it would write.
fn comparable(entry: &Value) -> Value {
    let kind = entry["Kind"].as_str().unwrap_or_default();
    let meta = entry["Meta"].clone();
    match kind {
        "service-intentions" => json!({
            "Meta": meta,
            "Sources": entry["Sources"].as_array().map(|s| s.iter().map(|s| json!([s["Name"], s["Action"]])).collect::<Vec<_>>()),
        }),
        "http-route" => json!({
            "Meta": meta,
            "Hostnames": entry["Hostnames"],
            "Parents": entry["Parents"].as_array().map(|p| p.iter().map(|p| json!([p["Kind"], p["Name"], p["SectionName"]])).collect::<Vec<_>>()),
            "Rules": entry["Rules"].as_array().map(|r| r.iter().map(|r| json!([
                r["Matches"].as_array().map(|m| m.iter().map(|m| json!([m["Path"]["Match"], m["Path"]["Value"]])).collect::<Vec<_>>()),
                r["Services"].as_array().map(|s| s.iter().map(|s| s["Name"].clone()).collect::<Vec<_>>()),
            ])).collect::<Vec<_>>()),
        }),
        "service-defaults" => json!({"Meta": meta, "Protocol": entry["Protocol"]}),
        "api-gateway" => json!({
            "Meta": meta,
            "Listeners": entry["Listeners"].as_array().map(|l| l.iter().map(|l| json!([l["Name"], l["Port"], l["Protocol"]])).collect::<Vec<_>>()),
        }),
        _ => entry.clone(),
    }
}

/// Writes `desired` entries of `kind` that differ from Consul's (one list
/// read). Returns the entries Consul refused (name → message) and the
/// entries Consul held before, for [`delete_stale`].
async fn sync_entries(
    mesh: &Mesh,
    kind: &str,
    desired: &[Value],
) -> Result<(BTreeMap<String, String>, BTreeMap<String, Value>), Failure> {
    let held: BTreeMap<String, Value> = mesh
        .client
        .config_entries(kind)
        .await?
        .into_iter()
        .filter_map(|e| e["Name"].as_str().map(|n| (n.to_string(), e.clone())))
        .collect();
    let mut refused = BTreeMap::new();
    for entry in desired {
        let name = entry["Name"].as_str().unwrap_or_default();
        let same = held
            .get(name)
            .is_some_and(|h| comparable(h) == comparable(entry));
        if same {
            continue;
        }
        if held.get(name).is_some_and(|h| !is_ours(mesh, h)) {
            refused.insert(
                name.to_string(),
                format!("Consul already holds a {kind} entry {name} that Mahler did not write; it is left alone"),
            );
            continue;
        }
        match mesh.client.put_config_entry(entry).await {
            Ok(()) => {}
            Err(mahler_consul::Error::Rejected { message, .. }) => {
                refused.insert(name.to_string(), message);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((refused, held))
}

/// Deletes this operator's entries of `kind` in `held` that are not desired.
async fn delete_stale(
    mesh: &Mesh,
    kind: &str,
    desired: &[Value],
    held: &BTreeMap<String, Value>,
) -> Result<(), Failure> {
    for (name, entry) in held {
        let wanted = desired.iter().any(|d| d["Name"] == name.as_str());
        if !wanted && is_ours(mesh, entry) {
            match mesh.client.delete_config_entry(kind, name).await {
                Ok(()) | Err(mahler_consul::Error::Rejected { status: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

async fn sync_intentions(
    mesh: &Mesh,
    intentions: &[plan::Intentions],
) -> Result<BTreeMap<String, String>, Failure> {
    let desired: Vec<Value> = intentions
        .iter()
        .map(|i| {
            json!({
                "Kind": "service-intentions",
                "Name": i.destination,
                "Sources": i.sources.iter().map(|s| json!({
                    "Name": s.name,
                    "Action": if s.allow { "allow" } else { "deny" },
                })).collect::<Vec<_>>(),
                "Meta": owned_meta(mesh, &i.meta),
            })
        })
        .collect();
    let (refused, held) = sync_entries(mesh, "service-intentions", &desired).await?;
    delete_stale(mesh, "service-intentions", &desired, &held).await?;
    Ok(refused)
}

/// The gateway, the exposed Services' protocol and their routes. Returns
/// whether a route is still waiting for Consul to bind it.
async fn sync_routes(
    mesh: &Mesh,
    exposed: &[(&Service, &Environment)],
    any_enabled: bool,
    reports: &mut HashMap<String, ServiceReport>,
) -> Result<bool, Failure> {
    let exposures = plan::routes(exposed);
    let Some((gateway, port)) = mesh.settings.gateway.clone() else {
        for k in exposures.keys() {
            if let Some(r) = reports.get_mut(k) {
                r.exposed = Some(Verdict::failed(
                    "GatewayDisabled",
                    "the operator runs without a Consul API gateway (flag --consul-gateway, chart consul.gateway.name)",
                ));
            }
        }
        return Ok(false);
    };
    let base = BTreeMap::from([(CONSUL_MANAGED_META.to_string(), "true".to_string())]);
    let gateways = if any_enabled {
        vec![json!({
            "Kind": "api-gateway",
            "Name": gateway,
            "Listeners": [{"Name": "http", "Port": port, "Protocol": "http"}],
            "Meta": owned_meta(mesh, &base),
        })]
    } else {
        Vec::new()
    };
    let routes: Vec<&plan::Route> = exposures
        .values()
        .filter_map(|e| match e {
            Exposure::Routed(r) => Some(r),
            _ => None,
        })
        .collect();
    let defaults: Vec<Value> = routes
        .iter()
        .map(|r| {
            json!({
                "Kind": "service-defaults",
                "Name": r.service,
                "Protocol": "http",
                "Meta": owned_meta(mesh, &r.meta),
            })
        })
        .collect();
    let http_routes: Vec<Value> = routes
        .iter()
        .map(|r| {
            json!({
                "Kind": "http-route",
                "Name": r.name,
                "Hostnames": [r.host],
                "Parents": [{"Kind": "api-gateway", "Name": gateway, "SectionName": "http"}],
                "Rules": [{
                    "Matches": [{"Path": {"Match": "prefix", "Value": r.path}}],
                    "Services": [{"Name": r.service}],
                }],
                "Meta": owned_meta(mesh, &r.meta),
            })
        })
        .collect();
    // Creation order: gateway, protocol, route; deletion the other way.
    let (gw_refused, gw_held) = sync_entries(mesh, "api-gateway", &gateways).await?;
    let (defaults_refused, defaults_held) =
        sync_entries(mesh, "service-defaults", &defaults).await?;
    let (route_refused, routes_held) = sync_entries(mesh, "http-route", &http_routes).await?;
    delete_stale(mesh, "http-route", &http_routes, &routes_held).await?;
    delete_stale(mesh, "service-defaults", &defaults, &defaults_held).await?;
    if !any_enabled {
        delete_stale(mesh, "api-gateway", &gateways, &gw_held).await?;
    }
    // Consul binds routes to the gateway itself; read what it says.
    let bound: BTreeMap<String, Value> = if routes.is_empty() {
        BTreeMap::new()
    } else {
        mesh.client
            .config_entries("http-route")
            .await?
            .into_iter()
            .filter_map(|e| e["Name"].as_str().map(|n| (n.to_string(), e.clone())))
            .collect()
    };
    let mut pending = false;
    for (k, exposure) in &exposures {
        let Some(report) = reports.get_mut(k) else {
            continue;
        };
        report.exposed = Some(match exposure {
            Exposure::Invalid(problem) => Verdict::failed("InvalidName", problem.to_string()),
            Exposure::InvalidExpose(reason, message) => Verdict::failed(reason, message.clone()),
            Exposure::Conflict { host, path, holder } => Verdict::failed(
                "HostConflict",
                format!(
                    "spec.expose: host {host} path {path} is already exposed by Service {holder}"
                ),
            ),
            Exposure::Routed(route) => {
                let refused = gw_refused
                    .get(&gateway)
                    .or_else(|| defaults_refused.get(&route.service))
                    .or_else(|| route_refused.get(&route.name));
                let url = plan::external_url(route, port);
                match refused {
                    Some(message) => Verdict::failed("ConsulRejected", message.clone()),
                    None => match route_condition(bound.get(&route.name), "Bound") {
                        Some((true, _)) => {
                            report.external_url = Some(url.clone());
                            Verdict::ok(
                                "Exposed",
                                format!("served at {url} through the Consul API gateway {gateway}"),
                            )
                        }
                        Some((false, message)) => {
                            match route_condition(bound.get(&route.name), "Accepted") {
                                Some((false, accepted)) => {
                                    Verdict::failed("RouteNotAccepted", accepted)
                                }
                                _ => {
                                    pending = true;
                                    Verdict::failed("RouteNotBound", message)
                                }
                            }
                        }
                        None => {
                            pending = true;
                            Verdict::failed(
                                "Binding",
                                format!(
                                    "waiting for Consul to bind the route to the API gateway {gateway}"
                                ),
                            )
                        }
                    },
                }
            }
        });
    }
    Ok(pending)
}

/// A condition of Consul's own status on a config entry.
fn route_condition(entry: Option<&Value>, type_: &str) -> Option<(bool, String)> {
    entry?["Status"]["Conditions"]
        .as_array()?
        .iter()
        .find(|c| c["Type"] == type_)
        .map(|c| {
            (
                c["Status"] == "True",
                c["Message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consuls_additions_do_not_make_an_entry_differ() {
        let written = json!({
            "Kind": "service-intentions", "Name": "db",
            "Sources": [{"Name": "api", "Action": "allow"}, {"Name": "*", "Action": "deny"}],
            "Meta": {"mahler-managed": "true"},
        });
        let held = json!({
            "Kind": "service-intentions", "Name": "db",
            "Sources": [{"Name": "api", "Action": "allow", "Precedence": 9, "Type": "consul"},
                        {"Name": "*", "Action": "deny", "Precedence": 8, "Type": "consul"}],
            "Meta": {"mahler-managed": "true"}, "CreateIndex": 26, "ModifyIndex": 26,
        });
        assert_eq!(comparable(&written), comparable(&held));
        let mut changed = held.clone();
        changed["Sources"][0]["Action"] = json!("deny");
        assert_ne!(comparable(&written), comparable(&changed));
    }

    #[test]
    fn only_changed_reports_reconcile() {
        let v = |ok| Verdict {
            ok,
            reason: "R".into(),
            message: "m".into(),
        };
        let old = HashMap::from([("a/x".to_string(), v(true)), ("a/y".to_string(), v(true))]);
        let new = HashMap::from([("a/x".to_string(), v(true)), ("a/z".to_string(), v(false))]);
        let mut changed = keys_changed(&old, &new);
        changed.sort();
        assert_eq!(changed, vec!["a/y".to_string(), "a/z".to_string()]);
    }
}
