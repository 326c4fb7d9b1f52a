//! The kinds Mahler reconciles, registered once each: a kind's watch, cache,
//! routing, controller, periodic resync and CRD check all come from its
//! [`Kind`] impl and its line in [`register`].
//!
//! Adding a kind: write its pass (its own module) and its routing
//! ([`crate::routes`]), then one `kind!` line and one [`register`] line here.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, Shared};
use kube::api::ApiResource;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use mahler_api::{Connection, Environment, Project, ResourceTemplate, Service};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::cache::{self, CachesBuilder};
use super::routes::{self, View, Wake};
use super::{Context, Error, Guarded, ScopedApi, Trigger};

/// A Mahler kind the operator reconciles.
pub trait Kind:
    Resource<DynamicType = (), Scope: ScopedApi>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Which objects a change to one of these wakes ([`crate::routes`]).
    fn wakes(obj: &Guarded<Self>, view: &dyn View, wake: &mut dyn FnMut(Wake));
    /// One reconcile pass of a decoded object.
    fn pass<'a>(
        &'a self,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<Action, Error>> + Send + 'a;
}

/// Every kind, in start-up order.
fn register(r: &mut Registry) {
    r.add::<Project>();
    r.add::<Environment>();
    r.add::<Service>();
    r.add::<Connection>();
    r.add::<ResourceTemplate>();
}

/// `impl Kind` from the kind's routing function and its reconciler module.
macro_rules! kind {
    ($kind:ty, $module:ident, $wakes:path) => {
        impl Kind for $kind {
            fn wakes(obj: &Guarded<Self>, view: &dyn View, wake: &mut dyn FnMut(Wake)) {
                $wakes(obj, view, wake)
            }
            fn pass<'a>(
                &'a self,
                ctx: &'a Context,
            ) -> impl Future<Output = Result<Action, Error>> + Send + 'a {
                super::$module::pass(self, ctx)
            }
        }
    };
}

kind!(Project, project, routes::project_changed);
kind!(Environment, environment, routes::environment_changed);
kind!(Service, service, routes::service_changed);
kind!(Connection, connection, routes::connection_changed);
kind!(ResourceTemplate, template, routes::template_changed);

/// The API resources of every kind: what the operator waits for at start-up.
pub fn resources() -> Vec<ApiResource> {
    Registry::new().resources
}

type Shutdown = Shared<BoxFuture<'static, ()>>;
type Start = Box<dyn FnOnce(Running) -> BoxFuture<'static, ()> + Send>;
type Run =
    Box<dyn FnOnce(Arc<Context>, ControllerConfig, Shutdown) -> BoxFuture<'static, ()> + Send>;
/// Sends a reconcile request for (namespace, name) to one kind's controller.
type Sender = Box<dyn Fn(Option<&str>, &str) + Send + Sync>;

/// What a kind's tasks get once the caches exist.
#[derive(Clone)]
struct Running {
    client: Client,
    caches: cache::Caches,
    triggers: Triggers,
}

/// Every kind's store, channel and tasks, built by [`register`].
pub struct Registry {
    caches: CachesBuilder,
    resources: Vec<ApiResource>,
    senders: HashMap<&'static str, Sender>,
    typed: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    /// Feeds a kind's watch into its store (started at once).
    feeds: Vec<Start>,
    /// Runs a kind's controller, its resync beside it (started once the caches are ready).
    controllers: Vec<Run>,
}

/// Sends reconcile requests to any registered kind's controller.
#[derive(Clone)]
pub struct Triggers {
    by_kind: Arc<HashMap<&'static str, Sender>>,
    typed: Arc<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
}

impl Triggers {
    /// Routes one wake to its kind's controller.
    pub fn wake(&self, w: Wake) {
        if let Some(send) = self.by_kind.get(w.kind) {
            send(w.namespace.as_deref(), &w.name);
        }
    }

    /// The trigger of kind `K` (the engine re-triggers Services with it).
    pub fn of<K: Kind>(&self) -> Trigger<Guarded<K>> {
        self.typed
            .get(&TypeId::of::<K>())
            .and_then(|t| t.downcast_ref::<Trigger<Guarded<K>>>())
            .cloned()
            .unwrap_or_else(|| panic!("{} is not a registered kind", K::kind(&())))
    }
}

impl Registry {
    pub fn new() -> Self {
        let mut r = Registry {
            caches: CachesBuilder::default(),
            resources: Vec::new(),
            senders: HashMap::new(),
            typed: HashMap::new(),
            feeds: Vec::new(),
            controllers: Vec::new(),
        };
        register(&mut r);
        r
    }

    fn add<K: Kind>(&mut self) {
        let (store, writer) = reflector::store::<Guarded<K>>();
        let (tx, rx) = mpsc::unbounded_channel::<ObjectRef<Guarded<K>>>();
        self.caches.add::<K>(store.clone());
        self.resources.push(ApiResource::erase::<K>(&()));
        let sender = tx.clone();
        self.senders.insert(
            routes::kind_name::<K>(),
            Box::new(move |namespace, name| {
                let r = ObjectRef::<Guarded<K>>::new(name);
                // A closed channel means the controller stopped (shutdown).
                let _ = sender.send(match namespace {
                    Some(ns) => r.within(ns),
                    None => r,
                });
            }),
        );
        self.typed.insert(TypeId::of::<K>(), Box::new(tx.clone()));
        let own = tx.clone();
        self.feeds.push(Box::new(move |running: Running| {
            let Running {
                client,
                caches,
                triggers,
            } = running;
            let watch = watcher(Api::<Guarded<K>>::all(client), watcher::Config::default())
                .default_backoff();
            Box::pin(feed_kind(watch, writer, own, move |obj: &Guarded<K>| {
                K::wakes(obj, &caches, &mut |w| triggers.wake(w))
            }))
        }));
        self.controllers
            .push(Box::new(move |ctx: Arc<Context>, config, shutdown| {
                let period = ctx.settings.resync;
                let resync = tokio::spawn(resync(store.clone(), tx, period));
                Box::pin(async move {
                    control(
                        store,
                        rx,
                        config,
                        shutdown,
                        super::reconcile::<K>,
                        super::error_policy::<K>,
                        ctx,
                    )
                    .await;
                    resync.abort();
                })
            }));
    }

    /// The caches, the triggers, and one future driving every watch (spawn it).
    pub fn start(
        &mut self,
        client: Client,
    ) -> (
        cache::Caches,
        Triggers,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (caches, children) = std::mem::take(&mut self.caches).build();
        let triggers = Triggers {
            by_kind: Arc::new(std::mem::take(&mut self.senders)),
            typed: Arc::new(std::mem::take(&mut self.typed)),
        };
        let running = Running {
            client: client.clone(),
            caches: caches.clone(),
            triggers: triggers.clone(),
        };
        let mut feeds: Vec<BoxFuture<'static, ()>> = std::mem::take(&mut self.feeds)
            .into_iter()
            .map(|start| start(running.clone()))
            .collect();
        let t = triggers.clone();
        feeds.push(Box::pin(
            caches.feed_children(client, children, move |w| t.wake(w)),
        ));
        let all = async move {
            futures::future::join_all(feeds).await;
        };
        (caches, triggers, all)
    }

    /// Runs every kind's controller until `shutdown`, then drains.
    pub async fn run(&mut self, ctx: Arc<Context>, config: ControllerConfig, shutdown: Shutdown) {
        let controllers = std::mem::take(&mut self.controllers)
            .into_iter()
            .map(|run| run(ctx.clone(), config.clone(), shutdown.clone()));
        futures::future::join_all(controllers).await;
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// Feeds a kind's watch into its store. Every change the store now shows
/// asks for the object's own reconcile (a deletion does not: the object is
/// gone from the store, and its children carry owner references for the
/// garbage collector), and so does every object of a (re)list once the
/// whole list is in the store (not as it arrives: the store still holds the
/// version from before the relist then); `route` wakes the objects related
/// to each change.
fn feed_kind<K, S>(
    watch: S,
    writer: reflector::store::Writer<K>,
    own: Trigger<K>,
    route: impl Fn(&K) + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let store = writer.as_reader();
    let listed_own = own.clone();
    // A closed channel means the controller stopped (shutdown).
    cache::feed(
        watch,
        writer,
        move |obj: &K, touched| {
            if touched == cache::Touched::Applied {
                let _ = own.send(ObjectRef::from_obj(obj));
            }
            route(obj)
        },
        move || {
            for obj in store.state() {
                let _ = listed_own.send(ObjectRef::from_obj(obj.as_ref()));
            }
        },
    )
}

/// Runs a kind's controller until `shutdown`, then drains. `requests` is
/// its only input: the object's own changes ([`feed_kind`]), the re-trigger
/// graph's wakes and the resync all arrive there.
///
/// Not a shared store's subscription: kube's `ReflectHandle` answers
/// `Pending` without arranging a wake-up when the object it was told about
/// has already left the store (applied, then deleted before the controller
/// read the notice). The controller's stream set never polled it again, its
/// bounded buffer filled, and the watch blocked behind it: that kind's cache
/// froze, deleted objects stayed in it and new ones never arrived (issue
/// 21). An unbounded channel the feed never waits on cannot do that.
async fn control<K, Ctx, Fut>(
    store: Store<K>,
    requests: mpsc::UnboundedReceiver<ObjectRef<K>>,
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> Fut,
    error_policy: impl Fn(Arc<K>, &Fut::Error, Arc<Ctx>) -> Action,
    ctx: Arc<Ctx>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    Fut: futures::TryFuture<Ok = Action> + Send + 'static,
    Fut::Error: std::error::Error + Send + 'static,
{
    Controller::for_stream(futures::stream::pending(), store)
        .with_config(config)
        .reconcile_on(UnboundedReceiverStream::new(requests))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
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
        // Object i goes at start + i·step, and the next round starts one
        // period after this one: a round never takes less than the period,
        // however few objects there are (with one, an interval's immediate
        // first tick would resend it in a tight loop).
        let step = period.div_f64(refs.len() as f64);
        let start = tokio::time::Instant::now();
        for (i, r) in refs.into_iter().enumerate() {
            tokio::time::sleep_until(start + step.mul_f64(i as f64)).await;
            if trigger.send(r).is_err() {
                // The controller stopped.
                return;
            }
        }
        tokio::time::sleep_until(start + period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    fn store_of(names: &[&str]) -> Store<ConfigMap> {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        writer.apply_watcher_event(&Event::Init);
        for n in names {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(n.to_string());
            cm.metadata.namespace = Some("ns".into());
            writer.apply_watcher_event(&Event::InitApply(cm));
        }
        writer.apply_watcher_event(&Event::InitDone);
        store
    }

    /// How many resync requests `names` get in `elapsed` of a 10 s period.
    async fn sends(names: &[&str], elapsed: Duration) -> usize {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(resync(store_of(names), tx, Duration::from_secs(10)));
        tokio::time::sleep(elapsed).await;
        task.abort();
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    fn config_map(name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    /// Issue 21: an object applied and deleted before its controller read
    /// the change used to wedge the kind: the controller stopped hearing of
    /// changes, the watch blocked behind it after 1,024 more, and the cache
    /// froze (deleted objects stayed, new ones never came). Through the
    /// feed and controller the registry runs, every later object is still
    /// reconciled and the cache follows every event.
    #[tokio::test]
    async fn an_object_deleted_before_its_controller_saw_it_wedges_nothing() {
        const LATER: usize = 3_000;
        let (store, writer) = reflector::store::<ConfigMap>();
        let (events, watch) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let routed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = routed.clone();
        tokio::spawn(feed_kind(
            UnboundedReceiverStream::new(watch),
            writer,
            tx,
            move |_: &ConfigMap| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        ));
        let reconciled = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let seen = reconciled.clone();
        tokio::spawn(control(
            store.clone(),
            rx,
            ControllerConfig::default(),
            futures::future::pending(),
            move |cm: Arc<ConfigMap>, _: Arc<()>| {
                seen.lock()
                    .push(cm.metadata.name.clone().unwrap_or_default());
                futures::future::ready(Ok::<_, Never>(Action::await_change()))
            },
            |_, _, _| Action::await_change(),
            Arc::new(()),
        ));
        let send = |e: Event<ConfigMap>| events.send(Ok(e)).expect("feed running");
        // The initial list: each listed object is reconciled once it is in the store.
        send(Event::Init);
        send(Event::InitApply(config_map("listed-a")));
        send(Event::InitApply(config_map("listed-b")));
        send(Event::InitDone);
        // Applied and deleted in one burst: gone before the controller read
        // the change (what used to wedge kube's shared-store subscription).
        send(Event::Apply(config_map("gone")));
        send(Event::Delete(config_map("gone")));
        for i in 0..LATER {
            send(Event::Apply(config_map(&format!("later-{i}"))));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let done = reconciled
                .lock()
                .iter()
                .filter(|n| n.starts_with("later-"))
                .count();
            if done == LATER {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {done} of {LATER} later objects were reconciled; cache holds {}",
                store.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.len(), LATER + 2, "the cache follows every event");
        assert_eq!(routed.load(std::sync::atomic::Ordering::Relaxed), LATER + 4);
        for listed in ["listed-a", "listed-b"] {
            assert!(reconciled.lock().iter().any(|n| n == listed), "{listed}");
        }
        // A deletion now leaves the cache at once, and a new object still
        // reaches the controller.
        send(Event::Delete(config_map("later-0")));
        send(Event::Apply(config_map("last")));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !reconciled.lock().iter().any(|n| n == "last") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "last was not reconciled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store.get(&ObjectRef::new("later-0").within("ns")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn resync_sends_each_object_once_per_period_however_few_there_are() {
        // After the first period (start-up reconciles everything), rounds
        // start at 10 s, 20 s and 30 s, spread over their period (three
        // objects: at +0, +3.3 and +6.7 s): 3 per object by 39 s, and
        // never a tight loop, with one object as with many.
        assert_eq!(sends(&["only"], Duration::from_secs(39)).await, 3);
        assert_eq!(sends(&["a", "b", "c"], Duration::from_secs(39)).await, 9);
        assert_eq!(sends(&["a", "b", "c"], Duration::from_secs(35)).await, 8);
    }
}
