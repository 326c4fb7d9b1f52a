//! Where the cluster is touched: the shared caches, one reconciler per kind
//! (observe → decide → apply → status), and the single apply, status and
//! Event paths.
//!
//! - [`kinds`]: every Mahler kind, registered once: its watch, cache,
//!   routing ([`routes`], pure), controller, resync and CRD check.
//! - [`cache`], [`child`]: what reconcilers read (no GETs on the hot path).
//! - `project`, `environment`, `service`, `connection`, `template`,
//!   [`template_service`]: one pass per kind; the pure builders and
//!   decisions they call live in `mahler-core`.
//! - [`apply`], [`status`], [`finalizer`]: the only ways to write children,
//!   status and Events, and finalizers; a pass with nothing to do sends no
//!   request to the API server.
//!
//! Must not: build CRD types' schemas (`mahler-api`), decide what objects
//! should look like (`mahler-core`), or run processes (`mahler-engine`).

mod access;
pub mod apply;
pub mod cache;
mod child;
mod connection;
pub mod consul;
mod environment;
pub mod finalizer;
pub mod kinds;
pub mod log_agent;
pub mod metrics;
mod project;
pub mod retry;
pub mod routes;
mod service;
pub mod status;
pub mod telemetry;
mod template;
pub mod template_service;
pub mod terraform_identity;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{Api, ApiResource};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use cache::Caches;
pub use child::{Child, ChildKind, ChildStore};
pub use kinds::Kind;
pub use template_service::StateAccess;

use mahler_api::{ConditionSet, Health, Service};
use mahler_engine::Engine;
use metrics::Metrics;

/// A Mahler object as cached: decoded, or the reason it could not be
/// (watched through `DeserializeGuard`, so a bad object cannot break a watch).
pub type Guarded<K> = kube::core::DeserializeGuard<K>;

/// The decoded object inside a guard, if it decoded.
pub fn valid_ref<K>(guard: &Guarded<K>) -> Option<&K> {
    guard.0.as_ref().ok()
}

/// Everything a reconcile pass can see: the client, the caches, settings.
pub struct Context {
    pub client: Client,
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub caches: Caches,
    pub settings: Settings,
    /// Runs OpenTofu for template Services, or why it cannot.
    pub engine: Result<Arc<Engine>, String>,
    /// State Secret and lock Lease access of template Services.
    state: StateAccess,
    /// Re-triggers a Service's reconcile.
    pub service_trigger: Trigger<Guarded<Service>>,
    /// Per object: the backoff of its failing passes, held against every
    /// re-trigger, and the last error reported on it.
    retries: retry::Retries,
    /// Objects found deleted by their own writes' 404 before the cache
    /// dropped them.
    gone: retry::Gone,
    reported_invalid: Mutex<HashSet<String>>,
    /// Status writes the cache does not show yet.
    pub written: status::Written,
    /// Consul registration, intentions and routes (None: Consul is off).
    pub mesh: Option<Arc<consul::Mesh>>,
    /// Environments' collectors: validation and its last refusals.
    pub telemetry: Arc<telemetry::Telemetry>,
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
    /// The identity template Services' OpenTofu runs with (None: the
    /// operator's own).
    pub terraform_identity: Option<terraform_identity::TerraformIdentity>,
    /// Where Consul is (None: nothing Consul-related runs).
    pub consul: Option<consul::ConsulSettings>,
    /// Environments' collectors (docs/telemetry.md).
    pub telemetry: telemetry::TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_domain: "cluster.local".into(),
            resync: Duration::from_secs(600),
            concurrency: 16,
            drift_check_interval: None,
            terraform_identity: None,
            consul: None,
            telemetry: Default::default(),
        }
    }
}

/// Errors a reconcile pass returns. Problems in what the user wrote are not
/// errors: they become conditions and Events and the pass succeeds. An
/// error is retried with backoff, counted by [`Error::category`] in
/// `/metrics`, and reported on the object as a Warning Event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API")]
    Kube(#[source] kube::Error),
    #[error("serialising an object")]
    Serialize(#[source] serde_json::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// Low-cardinality category: the `reason` label of the errors metric,
    /// and (CamelCase) the reason of the Warning Event.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(e)) if e.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(e)) if e.code == 422 => "invalid",
            Error::Kube(kube::Error::Api(e)) if e.code == 404 => "not_found",
            Error::Kube(_) => "kube_api",
            Error::Serialize(_) => "serialize",
            Error::MissingField(_) => "missing_field",
        }
    }

    /// The Event reason for [`Error::category`].
    pub fn event_reason(&self) -> &'static str {
        match self.category() {
            "conflict" => "ReconcileConflict",
            "forbidden" => "ReconcileForbidden",
            "invalid" => "ReconcileInvalid",
            "not_found" => "ReconcileNotFound",
            "kube_api" => "ReconcileApiError",
            "serialize" => "ReconcileSerializeError",
            _ => "ReconcileError",
        }
    }

    /// The message with its whole source chain, `: `-joined, on one line
    /// (see [`one_line`]).
    pub fn chain(&self) -> String {
        one_line(self)
    }

    /// Whether this is the API server saying that `name` of `resource`
    /// itself does not exist (a `404` naming it), as opposed to a `404` for
    /// something else the pass touched (a namespace, a child).
    pub fn is_not_found(&self, resource: &ApiResource, name: &str) -> bool {
        let Error::Kube(kube::Error::Api(status)) = self else {
            return false;
        };
        if status.code != 404 {
            return false;
        }
        match &status.details {
            Some(d) if !d.name.is_empty() => {
                d.name == name && d.kind == resource.plural && d.group == resource.group
            }
            // No details: the message the API server writes for it.
            _ => status.message == not_found_message(resource, name),
        }
    }
}

/// `connections.mahler.dev "t4070" not found`, as the API server says it.
fn not_found_message(resource: &ApiResource, name: &str) -> String {
    if resource.group.is_empty() {
        format!("{} \"{name}\" not found", resource.plural)
    } else {
        format!(
            "{}.{} \"{name}\" not found",
            resource.plural, resource.group
        )
    }
}

/// An error and its sources, `: `-joined on one line, with the API server's
/// answer as its message (`connections.mahler.dev "t4070" not found`), not
/// kube's `Display` of it (which appends the whole `Status { .. }` dump).
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(kube) = e.downcast_ref::<kube::Error>() {
            parts.push(kube_message(kube));
            break;
        }
        if let Some(watch) = e.downcast_ref::<watcher::Error>() {
            use watcher::Error as W;
            let (what, inner) = match watch {
                W::InitialListFailed(inner) => ("initial list", inner),
                W::WatchStartFailed(inner) => ("starting the watch", inner),
                W::WatchFailed(inner) => ("watch", inner),
                W::WatchError(status) => {
                    parts.push(format!("watch: {}", status_message(status)));
                    break;
                }
                W::NoResourceVersion => {
                    parts.push(watch.to_string());
                    break;
                }
            };
            parts.push(format!("{what}: {}", kube_message(inner)));
            break;
        }
        parts.push(e.to_string());
        next = e.source();
    }
    parts.join(": ")
}

/// One line for a Kubernetes client error: the API server's message for an
/// API error, not kube's `Status { .. }` dump; otherwise the error with its
/// causes (kube's errors often repeat their source in their own text).
pub fn kube_message(error: &kube::Error) -> String {
    if let kube::Error::Api(status) = error {
        return status_message(status);
    }
    let mut line = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

fn status_message(status: &kube::core::Status) -> String {
    match (status.message.is_empty(), status.reason.is_empty()) {
        (false, _) => status.message.clone(),
        (true, false) => format!("{} ({})", status.reason, status.code),
        (true, true) => format!("HTTP {}", status.code),
    }
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        caches: Caches,
        settings: Settings,
        instance: String,
        engine: Result<Arc<Engine>, String>,
        service_trigger: Trigger<Guarded<Service>>,
    ) -> Self {
        let reporter = Reporter {
            controller: "mahler-operator".into(),
            instance: Some(instance),
        };
        Context {
            reporter,
            state: StateAccess::new(client.clone()),
            telemetry: telemetry::Telemetry::new(settings.telemetry.clone()),
            client,
            metrics,
            caches,
            settings,
            engine,
            service_trigger,
            retries: retry::Retries::default(),
            gone: retry::Gone::default(),
            reported_invalid: Mutex::default(),
            written: status::Written::default(),
            mesh: None,
        }
    }

    /// What a pass that finished its work returns: nothing until something
    /// changes. The periodic resync comes from one task per kind
    /// ([`kinds`]), not from a timer per object.
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
/// The engine's window on Kubernetes (state Secrets and lock Leases), for
/// [`Engine::new`].
pub fn engine_cluster(client: Client) -> Arc<dyn mahler_engine::Cluster> {
    Arc::new(StateAccess::new(client))
}

/// One reconcile of any kind: decode, run its pass, count it.
///
/// Before the pass: an object known to be deleted ends at once, and a
/// failing object inside its backoff is held for the rest of it (see
/// [`retry`]). After it: a pass whose own write met a `404` for the object
/// itself ends quietly as done (the cache still showed an object that was
/// deleted: no retry, no Warning, nothing more to write).
async fn reconcile<K: Kind>(guard: Arc<Guarded<K>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let kind = K::kind(&());
    let meta = guard.meta();
    let uid = meta.uid.as_deref().unwrap_or_default();
    let now = Instant::now();
    if ctx.gone.contains(uid, now) {
        return Ok(Action::await_change());
    }
    let key = key_of(&kind, guard.as_ref());
    if let Some(wait) = ctx.retries.hold(&key, retry::Revision::of(meta), now) {
        ctx.metrics.deferred(&kind);
        return Ok(Action::requeue(wait));
    }
    let obj = match decoded(&ctx, &guard).await {
        Ok(obj) => obj,
        Err(action) => return Ok(action),
    };
    let started = Instant::now();
    let in_flight = ctx.metrics.in_flight(&kind);
    let result = obj.pass(&ctx).await;
    drop(in_flight);
    let (outcome, result) = match result {
        Ok(action) => (metrics::Outcome::Ok, Ok(action)),
        Err(error) if error.is_not_found(&ApiResource::erase::<K>(&()), &obj.name_any()) => {
            debug!(%kind, name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default(), "deleted while reconciling; done");
            ctx.gone.insert(uid, Instant::now());
            ctx.written.forget(uid);
            (metrics::Outcome::Gone, Ok(Action::await_change()))
        }
        Err(error) => (metrics::Outcome::Error, Err(error)),
    };
    ctx.metrics.reconciled(&kind, started.elapsed(), outcome);
    if result.is_ok() {
        ctx.retries.succeeded(&key);
    }
    result
}

/// The decoded object behind a cache entry, or the pass that reports why it
/// could not be decoded: a Stalled condition and a Warning Event, once per
/// resourceVersion, then nothing until the object changes (no hot loop).
async fn decoded<'a, K>(ctx: &Context, guard: &'a Guarded<K>) -> Result<&'a K, Action>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let invalid = match &guard.0 {
        Ok(obj) => return Ok(obj),
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
    let status = serde_json::json!({"conditions": conditions.into_vec()});
    match status::apply_status(ctx, &resource, meta.namespace.as_deref(), &name, &status).await {
        Ok(()) => {}
        // Deleted meanwhile: nothing to report on.
        Err(error) if error.is_not_found(&resource, &name) => return Err(Action::await_change()),
        Err(error) => {
            warn!(error = %error.chain(), %name, "could not report an undecodable object")
        }
    }
    let reference = reference_of::<K>(meta);
    status::event_on(
        ctx,
        &reference,
        true,
        "Decode",
        "InvalidObject",
        health.message(),
    )
    .await;
    Err(Action::await_change())
}

fn reference_of<K: Resource<DynamicType = ()>>(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        ..Default::default()
    }
}

/// The retry key of an object: kind, namespace, name and uid (an object
/// recreated under the same name starts afresh).
fn key_of<K: Resource<DynamicType = ()>>(kind: &str, obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{kind}/{}/{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default()
    )
}

/// A failed pass: counted by category, retried with backoff (held against
/// every re-trigger until it elapses, conflicts excepted: [`retry`]), logged
/// on one line, and reported on the object as a Warning Event (once per
/// distinct error until a pass succeeds). Conflicts are routine under
/// optimistic concurrency: counted and logged, not reported.
fn error_policy<K: Kind>(guard: Arc<Guarded<K>>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = K::kind(&());
    let meta = guard.meta();
    let message = error.chain();
    ctx.metrics.failed(&kind, error.category());
    // A conflict means the cache was behind: the watch event that brings
    // the newer object runs the pass again at once, not after a hold.
    let conflict = error.category() == "conflict";
    let (delay, news) = ctx.retries.failed(
        &key_of(&kind, guard.as_ref()),
        retry::Revision::of(meta),
        &message,
        !conflict,
        Instant::now(),
    );
    warn!(%kind, name = meta.name.as_deref().unwrap_or_default(), namespace = meta.namespace.as_deref().unwrap_or_default(), error = %message, category = error.category(), retry_in = ?delay, "reconcile failed");
    if news && !conflict {
        let reference = reference_of::<K>(meta);
        let reason = error.event_reason();
        let note = format!("{message} (retrying in {}s)", delay.as_secs().max(1));
        let ctx = ctx.clone();
        tokio::spawn(async move {
            status::event_on(&ctx, &reference, true, "Reconcile", reason, &note).await;
        });
    }
    Action::requeue(delay)
}

/// Runs every controller until `shutdown` resolves, then drains in-flight
/// reconciles and returns.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    settings: Settings,
    instance: String,
    engine: Result<Arc<Engine>, String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut registry = kinds::Registry::new();
    let (caches, triggers, feeds) = registry.start(client.clone());
    let mut ctx = Context::new(
        client.clone(),
        metrics,
        caches.clone(),
        settings.clone(),
        instance,
        engine,
        triggers.of::<Service>(),
    );
    if let Some(consul) = settings.consul.clone() {
        match consul::Mesh::new(consul) {
            Ok(mesh) => ctx.mesh = Some(Arc::new(mesh)),
            Err(error) => warn!(%error, "Consul is off: its client could not be built"),
        }
    }
    let ctx = Arc::new(ctx);

    // Reconciling before every cache is filled would act on a partial view
    // (e.g. strip injected variables because Connections are not listed yet).
    let feeds_task = tokio::spawn(feeds);
    ctx.caches.wait_until_ready().await;
    info!("caches ready; starting controllers");
    // Started only now, not waiting on the caches itself: a kube Store's
    // readiness wakes one waiter only (its oneshot keeps the last waker), so
    // two tasks waiting at once can leave one waiting forever.
    if let Some(mesh) = ctx.mesh.clone() {
        tokio::spawn(consul::run(
            mesh,
            ctx.metrics.clone(),
            client,
            caches,
            triggers.of::<Service>(),
            triggers.of::<mahler_api::Connection>(),
        ));
    }

    // Stopped with the controllers: a replica that lost its lease must not
    // keep applying the agent from a frozen cache.
    let log_agent = settings
        .telemetry
        .log_agent_namespace
        .clone()
        .map(|namespace| tokio::spawn(log_agent::run(ctx.clone(), namespace)));

    let shutdown: futures::future::BoxFuture<'static, ()> = Box::pin(shutdown);
    let shutdown = futures::future::FutureExt::shared(shutdown);
    let config = ControllerConfig::default().concurrency(settings.concurrency);

    // On shutdown, interrupt OpenTofu first (it then writes its state and
    // releases its lock) so the controllers drain quickly.
    let engine = ctx.engine.clone().ok();
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
    futures::join!(registry.run(ctx.clone(), config, shutdown), interrupt);
    if let Some(task) = log_agent {
        task.abort();
    }
    feeds_task.abort();
    info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::Connection;

    /// A Status as the API server sends it, decoded the way kube does.
    fn api_error(status: serde_json::Value) -> Error {
        Error::Kube(kube::Error::Api(Box::new(
            serde_json::from_value(status).expect("a Status"),
        )))
    }

    fn connection_not_found(name: &str) -> serde_json::Value {
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("connections.mahler.dev \"{name}\" not found"),
            "reason": "NotFound",
            "details": {"name": name, "group": "mahler.dev", "kind": "connections"},
            "code": 404
        })
    }

    #[test]
    fn an_api_error_is_one_line_with_the_api_servers_message() {
        let error = api_error(connection_not_found("t4070"));
        assert_eq!(
            error.chain(),
            r#"Kubernetes API: connections.mahler.dev "t4070" not found"#
        );
        let watch = watcher::Error::WatchFailed(kube::Error::Api(Box::new(
            serde_json::from_value(connection_not_found("t4070")).unwrap(),
        )));
        assert_eq!(
            one_line(&watch),
            r#"watch: connections.mahler.dev "t4070" not found"#
        );
        for text in [error.chain(), one_line(&watch)] {
            assert!(!text.contains("Status {") && !text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn only_a_404_naming_the_object_itself_means_it_is_gone() {
        let connections = ApiResource::erase::<Connection>(&());
        assert!(api_error(connection_not_found("t4070")).is_not_found(&connections, "t4070"));
        // Another object's 404, the namespace's, or another code: not gone.
        assert!(!api_error(connection_not_found("t4071")).is_not_found(&connections, "t4070"));
        let namespace = serde_json::json!({
            "status": "Failure", "message": "namespaces \"shop\" not found", "reason": "NotFound",
            "details": {"name": "shop", "kind": "namespaces"}, "code": 404
        });
        assert!(!api_error(namespace).is_not_found(&connections, "shop"));
        let mut conflict = connection_not_found("t4070");
        conflict["code"] = 409.into();
        assert!(!api_error(conflict).is_not_found(&connections, "t4070"));
        // Without details, the API server's wording of it.
        let mut bare = connection_not_found("t4070");
        bare.as_object_mut().unwrap().remove("details");
        assert!(api_error(bare).is_not_found(&connections, "t4070"));
        assert!(!Error::MissingField("metadata.name").is_not_found(&connections, "t4070"));
    }
}
