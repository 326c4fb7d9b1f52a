//! Where the cluster is touched: one reconciler per kind (read → build → apply
//! → status), the shared object caches that feed them, and the single apply,
//! status and event helpers.
//!
//! Reconcilers read only from the caches (no GETs on the hot path) and write
//! only through [`apply`] and [`status`], so a pass with nothing to do sends
//! no request to the API server.

pub mod apply;
mod cache;
mod child;
mod connection;
mod environment;
mod finalizer;
mod project;
mod service;
pub mod status;
mod template;
pub mod template_service;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use futures::StreamExt;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{info, warn};

pub use cache::{Caches, Guarded};
pub use child::{Child, ChildKind, ChildStore};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};

use crate::crd::{ConditionSet, Health};

use crate::metrics::Metrics;

/// Everything a reconcile pass can see: the client, the caches, settings.
pub struct Context {
    pub client: Client,
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub caches: Caches,
    pub settings: Settings,
    /// Runs OpenTofu for template Services; `None` when it cannot (see `engine_error`).
    pub engine: Option<Arc<crate::terraform::Engine>>,
    pub engine_error: Option<String>,
    /// Re-triggers a Service's reconcile.
    pub service_trigger: Trigger<Guarded<crate::crd::Service>>,
    backoffs: Mutex<HashMap<String, ExponentialBackoff>>,
    reported_invalid: Mutex<HashSet<String>>,
    /// Status writes the cache does not show yet.
    pub written: status::Written,
}

/// Operator settings the reconcilers use.
#[derive(Clone, Debug)]
pub struct Settings {
    /// DNS suffix of in-cluster Service names.
    pub cluster_domain: String,
    /// How often a settled object is reconciled again to catch drift.
    pub resync: Duration,
    /// Reconciles run in parallel per kind.
    pub concurrency: u16,
    /// Default drift-check interval of template Services (None: 1h).
    pub drift_check_interval: Option<Duration>,
    /// How to run OpenTofu; `None` disables template Services.
    pub engine: Option<crate::terraform::EngineConfig>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_domain: "cluster.local".into(),
            resync: Duration::from_secs(600),
            concurrency: 16,
            drift_check_interval: None,
            engine: None,
        }
    }
}

/// Errors a reconcile pass returns. Problems in what the user wrote are not
/// errors: they become conditions and Events and the pass succeeds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("serialising an object: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// Low-cardinality label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(e)) if e.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(e)) if e.code == 422 => "invalid",
            Error::Kube(_) => "kube_api",
            Error::Serialize(_) => "serialize",
            Error::Finalizer(_) => "finalizer",
            Error::MissingField(_) => "missing_field",
        }
    }
}

impl Context {
    /// Publishes an Event. A fresh `Recorder` per Event, as kube documents
    /// it: a long-lived one keeps every Event it published for 6 minutes
    /// (to turn repeats into series), which during a 1,000-Service rollout
    /// cost more memory than the object caches. Mahler publishes on
    /// condition changes, so repeats are rare and a new Event is right.
    pub async fn publish_event(
        &self,
        event: &kube::runtime::events::Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(event, reference)
            .await
    }

    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        caches: Caches,
        settings: Settings,
        instance: String,
        engine: Result<Arc<crate::terraform::Engine>, String>,
        service_trigger: Trigger<Guarded<crate::crd::Service>>,
    ) -> Self {
        let reporter = Reporter {
            controller: "mahler-operator".into(),
            instance: Some(instance),
        };
        Context {
            reporter,
            client,
            metrics,
            caches,
            settings,
            engine_error: engine.as_ref().err().cloned(),
            engine: engine.ok(),
            service_trigger,
            backoffs: Mutex::default(),
            reported_invalid: Mutex::default(),
            written: status::Written::default(),
        }
    }

    /// Requeue delay after a failed pass: exponential per object, 1 s to 5 min.
    fn backoff_for(&self, key: String) -> Duration {
        let mut backoffs = self.backoffs.lock();
        let b = backoffs.entry(key).or_insert_with(|| {
            ExponentialBackoffBuilder::new()
                .with_initial_interval(Duration::from_secs(1))
                .with_max_interval(Duration::from_secs(300))
                .with_max_elapsed_time(None)
                .build()
        });
        b.next_backoff().unwrap_or(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        let mut backoffs = self.backoffs.lock();
        if !backoffs.is_empty() {
            backoffs.remove(key);
        }
    }

    /// What a pass that finished its work returns: nothing until something
    /// changes. The periodic resync ([`resync`]) comes from one task per
    /// kind, not from a timer per object.
    pub fn resync(&self) -> Action {
        Action::await_change()
    }
}

/// Builds the right `Api` for an object of either scope.
pub trait ScopedApi {
    fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType = ()>;
}

impl ScopedApi for NamespaceResourceScope {
    fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType = ()>,
    {
        Api::namespaced(client, namespace.unwrap_or_default())
    }
}

impl ScopedApi for ClusterResourceScope {
    fn api<K>(client: Client, _: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self, DynamicType = ()>,
    {
        Api::all(client)
    }
}

/// The `Api` that reads and writes `obj`.
pub fn api_for<K>(client: &Client, obj: &K) -> Api<K>
where
    K: Resource<DynamicType = ()>,
    K::Scope: ScopedApi,
{
    K::Scope::api(client.clone(), obj.meta().namespace.as_deref())
}

/// Sends reconcile requests for objects related to a change (see `cache.rs`).
pub type Trigger<K> = mpsc::UnboundedSender<ObjectRef<K>>;

/// Records metrics and the per-object backoff around a reconcile function.
async fn observe<K, F>(ctx: &Context, kind: &str, obj: &K, pass: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let result = pass.await;
    ctx.metrics
        .reconciled(kind, started.elapsed(), result.is_ok());
    if result.is_ok() {
        ctx.succeeded(&key_of(kind, obj));
    }
    result
}

/// The decoded object behind a cache entry, or the pass that reports why it
/// could not be decoded: a Stalled condition and a Warning Event, once per
/// resourceVersion, then nothing until the object changes (no hot loop).
async fn decoded<K>(ctx: &Context, guard: &Guarded<K>) -> Result<Arc<K>, Action>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let invalid = match &guard.0 {
        Ok(obj) => return Ok(Arc::new(obj.clone())),
        Err(invalid) => invalid,
    };
    let meta = &invalid.metadata;
    let key = format!(
        "{}/{}",
        meta.uid.as_deref().unwrap_or_default(),
        meta.resource_version.as_deref().unwrap_or_default()
    );
    if !ctx.reported_invalid.lock().insert(key) {
        return Err(Action::await_change());
    }
    let name = meta.name.clone().unwrap_or_default();
    warn!(kind = %K::kind(&()), %name, error = %invalid.error, "object cannot be decoded");
    // This status replaces whatever a reconcile wrote before.
    if let Some(uid) = &meta.uid {
        ctx.written.forget(uid);
    }
    let health = Health::stalled(
        "InvalidObject",
        format!("the operator cannot read this object: {}", invalid.error),
    );
    let mut conditions = ConditionSet::default();
    conditions.apply(&health, meta.generation);
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match &meta.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    };
    let body = serde_json::json!({"apiVersion": resource.api_version, "kind": resource.kind, "status": {"conditions": conditions.into_vec()}});
    match api
        .patch_status(
            &name,
            &PatchParams::apply(crate::FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => ctx.metrics.wrote(&resource.kind, "apply_status"),
        Err(error) => warn!(%error, %name, "could not report an undecodable object"),
    }
    let reference = ObjectReference {
        api_version: Some(resource.api_version.clone()),
        kind: Some(resource.kind.clone()),
        name: Some(name),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(health.message().chars().take(1000).collect()),
        action: "Decode".into(),
        secondary: None,
    };
    if ctx.publish_event(&event, &reference).await.is_ok() {
        ctx.metrics.wrote("Event", "event");
    }
    Err(Action::await_change())
}

fn key_of<K: Resource<DynamicType = ()>>(kind: &str, obj: &K) -> String {
    format!(
        "{kind}/{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

fn error_policy<K: Resource<DynamicType = ()>>(
    kind: &'static str,
    obj: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    ctx.metrics.failed(kind, error.metric_label());
    let delay = ctx.backoff_for(key_of(kind, obj));
    warn!(kind, name = obj.meta().name.as_deref().unwrap_or_default(), namespace = obj.meta().namespace.as_deref().unwrap_or_default(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Sends every cached object of a kind to its controller once per `period`,
/// evenly spread over it: the safety net for anything a watch missed.
///
/// One task per kind instead of a requeue timer per object: a timer holds
/// a copy of the object's reference (name, namespace, resourceVersion, uid)
/// twice in the controller's scheduler for as long as the object exists,
/// about 1.4 KB per Service with its Connection. Spreading the round also
/// avoids a burst of every object at once.
async fn resync<K>(store: Store<K>, trigger: Trigger<K>, period: Duration)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    // Every object is reconciled at start anyway.
    tokio::time::sleep(period).await;
    loop {
        // References, not the objects: holding them for a whole round would
        // keep every version replaced meanwhile alive.
        let refs: Vec<ObjectRef<K>> = store
            .state()
            .iter()
            .map(|o| {
                let meta = o.meta();
                let r = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
                match &meta.namespace {
                    Some(ns) => r.within(ns),
                    None => r,
                }
            })
            .collect();
        if refs.is_empty() {
            tokio::time::sleep(period).await;
            continue;
        }
        let step = period.div_f64(refs.len() as f64);
        let mut tick = tokio::time::interval(step.max(Duration::from_micros(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for r in refs {
            tick.tick().await;
            if trigger.send(r).is_err() {
                // The controller stopped.
                return;
            }
        }
    }
}

/// Runs every controller until `shutdown` resolves, then drains in-flight
/// reconciles and returns.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    settings: Settings,
    instance: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (caches, feeds, router) = cache::start(client.clone());
    let engine = match settings.engine.clone() {
        Some(cfg) => crate::terraform::Engine::new(cfg, client.clone(), metrics.clone())
            .await
            .map(Arc::new),
        None => Err("the operator was started without the Terraform engine (set MAHLER_TOFU and MAHLER_PROVIDER_MIRROR)".to_string()),
    };
    if let Err(error) = &engine {
        warn!(%error, "template Services are disabled");
    }
    let ctx = Arc::new(Context::new(
        client,
        metrics,
        caches,
        settings.clone(),
        instance,
        engine,
        router.service_trigger.clone(),
    ));

    // Reconciling before every cache is filled would act on a partial view
    // (e.g. strip injected variables because Connections are not listed yet).
    let feeds_task = tokio::spawn(feeds);
    ctx.caches.wait_until_ready().await;
    info!("caches ready; starting controllers");

    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let config = ControllerConfig::default().concurrency(settings.concurrency);

    let projects =
        Controller::for_shared_stream(router.subscriptions.projects, ctx.caches.projects.clone())
            .with_config(config.clone())
            .reconcile_on(UnboundedReceiverStream::new(router.projects))
            .graceful_shutdown_on(shutdown.clone())
            .run(
                project::reconcile,
                |o, e, c| error_policy("Project", o.as_ref(), e, &c),
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));
    let environments = Controller::for_shared_stream(
        router.subscriptions.environments,
        ctx.caches.environments.clone(),
    )
    .with_config(config.clone())
    .reconcile_on(UnboundedReceiverStream::new(router.environments))
    .graceful_shutdown_on(shutdown.clone())
    .run(
        environment::reconcile,
        |o, e, c| error_policy("Environment", o.as_ref(), e, &c),
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));
    let services =
        Controller::for_shared_stream(router.subscriptions.services, ctx.caches.services.clone())
            .with_config(config.clone())
            .reconcile_on(UnboundedReceiverStream::new(router.services))
            .graceful_shutdown_on(shutdown.clone())
            .run(
                service::reconcile,
                |o, e, c| error_policy("Service", o.as_ref(), e, &c),
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));
    let connections = Controller::for_shared_stream(
        router.subscriptions.connections,
        ctx.caches.connections.clone(),
    )
    .with_config(config.clone())
    .reconcile_on(UnboundedReceiverStream::new(router.connections))
    .graceful_shutdown_on(shutdown.clone())
    .run(
        connection::reconcile,
        |o, e, c| error_policy("Connection", o.as_ref(), e, &c),
        ctx.clone(),
    )
    .for_each(|_| futures::future::ready(()));

    let templates =
        Controller::for_shared_stream(router.subscriptions.templates, ctx.caches.templates.clone())
            .with_config(config)
            .reconcile_on(UnboundedReceiverStream::new(router.templates))
            .graceful_shutdown_on(shutdown.clone())
            .run(
                template::reconcile,
                |o, e, c| error_policy("ResourceTemplate", o.as_ref(), e, &c),
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));

    // On shutdown, interrupt OpenTofu first (it then writes its state and
    // releases its lock) so the controllers drain quickly.
    let engine = ctx.engine.clone();
    let interrupt = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if let Some(engine) = engine {
                engine.shutdown();
                if tokio::time::timeout(Duration::from_secs(40), engine.drained())
                    .await
                    .is_err()
                {
                    warn!("tofu runs did not stop within 40s");
                }
            }
        }
    };
    let period = settings.resync;
    let t = &router.triggers;
    let resyncs = [
        tokio::spawn(resync(
            ctx.caches.projects.clone(),
            t.projects.clone(),
            period,
        )),
        tokio::spawn(resync(
            ctx.caches.environments.clone(),
            t.environments.clone(),
            period,
        )),
        tokio::spawn(resync(
            ctx.caches.services.clone(),
            t.services.clone(),
            period,
        )),
        tokio::spawn(resync(
            ctx.caches.connections.clone(),
            t.connections.clone(),
            period,
        )),
        tokio::spawn(resync(
            ctx.caches.templates.clone(),
            t.templates.clone(),
            period,
        )),
    ];
    futures::join!(
        projects,
        environments,
        services,
        connections,
        templates,
        interrupt
    );
    for task in resyncs {
        task.abort();
    }
    feeds_task.abort();
    info!("controllers stopped");
}
