//! The shared caches every reconciler reads, and the watches that feed them.
//!
//! Each Mahler kind gets its store from its registration ([`crate::kinds`]);
//! the children (Namespaces, Deployments, Services, NetworkPolicies) are
//! watched here, by the `app.kubernetes.io/managed-by=mahler` label only,
//! and cached as [`Child`](super::Child) views (Mahler's fields and status)
//! to keep memory per managed Service small. Every change, deletions
//! included, is routed to the objects it affects: [`crate::routes`] says
//! which, as a pure function of the change and a [`View`] of the caches.
//!
//! Mahler kinds are watched through `DeserializeGuard`, so an object that
//! cannot be decoded is cached as an error (and reported on by its
//! reconciler) instead of breaking the watch.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{Future, StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service as KubeService, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use mahler_api::names::MANAGED_BY;
use mahler_api::{Connection, Environment, Project, ResourceTemplate, Service};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::child::{ChildObject, ChildStoreWriter};
use super::routes::{self, View, Wake};
use super::{ChildKind, ChildStore, Guarded, valid_ref};

/// Waits until one store has its initial list.
type Wait = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Read access to every cached kind.
#[derive(Clone)]
pub struct Caches {
    /// `Store<Guarded<K>>` of every registered Mahler kind, by `TypeId` of K.
    kinds: Arc<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    waits: Arc<Vec<Wait>>,
    pub namespaces: Store<Namespace>,
    pub deployments: ChildStore<Deployment>,
    pub kube_services: ChildStore<KubeService>,
    pub network_policies: ChildStore<NetworkPolicy>,
    /// Access from members and owners (`mahler_core::access`); cluster-scoped
    /// ones under the namespace "".
    pub role_bindings: ChildStore<RoleBinding>,
    pub cluster_roles: ChildStore<ClusterRole>,
    pub cluster_role_bindings: ChildStore<ClusterRoleBinding>,
    /// Environments' collectors (`mahler_core::telemetry`): their config
    /// and ServiceAccount.
    pub config_maps: ChildStore<ConfigMap>,
    pub service_accounts: ChildStore<ServiceAccount>,
}

/// The writers of [`Caches`], consumed by [`Caches::feed_children`].
pub struct ChildWriters {
    namespaces: Writer<Namespace>,
    deployments: ChildStoreWriter<Deployment>,
    kube_services: ChildStoreWriter<KubeService>,
    network_policies: ChildStoreWriter<NetworkPolicy>,
    role_bindings: ChildStoreWriter<RoleBinding>,
    cluster_roles: ChildStoreWriter<ClusterRole>,
    cluster_role_bindings: ChildStoreWriter<ClusterRoleBinding>,
    config_maps: ChildStoreWriter<ConfigMap>,
    service_accounts: ChildStoreWriter<ServiceAccount>,
}

/// Builds [`Caches`]: one store per registered kind, plus the children's.
#[derive(Default)]
pub struct CachesBuilder {
    kinds: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    waits: Vec<Wait>,
}

impl CachesBuilder {
    /// Adds the store of kind `K`.
    pub fn add<K>(&mut self, store: Store<Guarded<K>>)
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let waiting = store.clone();
        self.waits.push(Box::new(move || {
            let store = waiting.clone();
            Box::pin(async move {
                // A dropped writer means the feeds stopped (shutdown).
                let _ = store.wait_until_ready().await;
            })
        }));
        self.kinds.insert(TypeId::of::<K>(), Box::new(store));
    }

    pub fn build(self) -> (Caches, ChildWriters) {
        let (namespaces, namespaces_w) = reflector::store::<Namespace>();
        let (deployments, deployments_w) = ChildStore::<Deployment>::new();
        let (kube_services, kube_services_w) = ChildStore::<KubeService>::new();
        let (network_policies, network_policies_w) = ChildStore::<NetworkPolicy>::new();
        let (role_bindings, role_bindings_w) = ChildStore::<RoleBinding>::new();
        let (cluster_roles, cluster_roles_w) = ChildStore::<ClusterRole>::new();
        let (cluster_role_bindings, cluster_role_bindings_w) =
            ChildStore::<ClusterRoleBinding>::new();
        let (config_maps, config_maps_w) = ChildStore::<ConfigMap>::new();
        let (service_accounts, service_accounts_w) = ChildStore::<ServiceAccount>::new();
        let caches = Caches {
            kinds: Arc::new(self.kinds),
            waits: Arc::new(self.waits),
            namespaces,
            deployments,
            kube_services,
            network_policies,
            role_bindings,
            cluster_roles,
            cluster_role_bindings,
            config_maps,
            service_accounts,
        };
        let writers = ChildWriters {
            namespaces: namespaces_w,
            deployments: deployments_w,
            kube_services: kube_services_w,
            network_policies: network_policies_w,
            role_bindings: role_bindings_w,
            cluster_roles: cluster_roles_w,
            cluster_role_bindings: cluster_role_bindings_w,
            config_maps: config_maps_w,
            service_accounts: service_accounts_w,
        };
        (caches, writers)
    }
}

impl Caches {
    /// The store of a registered kind.
    pub fn store<K: Resource<DynamicType = ()> + 'static>(&self) -> &Store<Guarded<K>> {
        self.kinds
            .get(&TypeId::of::<K>())
            .and_then(|s| s.downcast_ref())
            .unwrap_or_else(|| panic!("{} is not a registered kind", K::kind(&())))
    }

    pub async fn wait_until_ready(&self) {
        let kinds = futures::future::join_all(self.waits.iter().map(|wait| wait()));
        // A dropped writer means the feeds stopped; the operator is shutting down.
        let _ = futures::join!(
            kinds,
            self.namespaces.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.kube_services.wait_until_ready(),
            self.network_policies.wait_until_ready(),
            self.role_bindings.wait_until_ready(),
            self.cluster_roles.wait_until_ready(),
            self.cluster_role_bindings.wait_until_ready(),
            self.config_maps.wait_until_ready(),
            self.service_accounts.wait_until_ready(),
        );
    }

    /// Decoded Environments of a Project.
    pub fn environments_of(&self, project: &str) -> Vec<Environment> {
        valid(
            self.store::<Environment>()
                .state_filter(|e| valid_ref(e).is_some_and(|e| e.spec.project == project)),
        )
    }

    /// Decoded Connections in a namespace that start at Service `from`.
    ///
    /// Filters inside the cache and clones only the matches: a namespace can
    /// hold thousands of Connections, and this runs on every reconcile.
    pub fn connections_from(&self, namespace: &str, from: &str) -> Vec<Connection> {
        valid(self.store::<Connection>().state_filter(|g| {
            g.meta().namespace.as_deref() == Some(namespace)
                && valid_ref(g).is_some_and(|c| c.spec.from == from)
        }))
    }

    /// A decoded Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.store::<Service>()
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|g| g.0.clone().ok())
    }

    /// Whether a Mahler namespace is being deleted (writes into it would be refused).
    pub fn namespace_terminating(&self, namespace: &str) -> bool {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
    }

    /// A decoded ResourceTemplate by name.
    pub fn template(&self, name: &str) -> Option<ResourceTemplate> {
        self.store::<ResourceTemplate>()
            .get(&ObjectRef::new(name))
            .and_then(|g| g.0.clone().ok())
    }

    /// The decoded Environment that owns a namespace (they share the name).
    pub fn environment(&self, namespace: &str) -> Option<Environment> {
        self.store::<Environment>()
            .get(&ObjectRef::new(namespace))
            .and_then(|g| g.0.clone().ok())
    }

    pub fn project(&self, name: &str) -> Option<Arc<Guarded<Project>>> {
        self.store::<Project>().get(&ObjectRef::new(name))
    }

    /// Drives the children's watches into their stores, routing each change
    /// to its owner through `wake`.
    pub fn feed_children(
        &self,
        client: Client,
        writers: ChildWriters,
        wake: impl Fn(Wake) + Clone + Send + Sync + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let managed =
            watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let w = wake.clone();
        let namespaces = feed(
            watcher(Api::all(client.clone()), managed.clone()).default_backoff(),
            writers.namespaces,
            move |ns: &Namespace, _| routes::namespace_changed(ns, &w),
            || {},
        );
        let deployments =
            child_feed::<Deployment, _>(&client, &managed, writers.deployments, &wake);
        let kube_services =
            child_feed::<KubeService, _>(&client, &managed, writers.kube_services, &wake);
        let network_policies =
            child_feed::<NetworkPolicy, _>(&client, &managed, writers.network_policies, &wake);
        let role_bindings =
            child_feed::<RoleBinding, _>(&client, &managed, writers.role_bindings, &wake);
        let cluster_roles =
            child_feed::<ClusterRole, _>(&client, &managed, writers.cluster_roles, &wake);
        let cluster_role_bindings = child_feed::<ClusterRoleBinding, _>(
            &client,
            &managed,
            writers.cluster_role_bindings,
            &wake,
        );
        let config_maps = child_feed::<ConfigMap, _>(&client, &managed, writers.config_maps, &wake);
        let service_accounts =
            child_feed::<ServiceAccount, _>(&client, &managed, writers.service_accounts, &wake);
        async move {
            futures::join!(
                namespaces,
                deployments,
                kube_services,
                network_policies,
                role_bindings,
                cluster_roles,
                cluster_role_bindings,
                config_maps,
                service_accounts
            );
        }
    }
}

/// What routing reads: every cached object is visited under the store's
/// read lock, without cloning (`f` must not block).
impl View for Caches {
    fn environments_of(&self, project: &str, f: &mut dyn FnMut(&Environment)) {
        // `state_filter` takes an `Fn`; the visit is sequential.
        let f = std::cell::RefCell::new(f);
        let _ = self.store::<Environment>().state_filter(|g| {
            if let Some(env) = valid_ref(g).filter(|e| e.spec.project == project) {
                (f.borrow_mut())(env);
            }
            false
        });
    }

    fn connections_in(&self, namespace: &str, f: &mut dyn FnMut(&Connection)) {
        // `state_filter` takes an `Fn`; the visit is sequential.
        let f = std::cell::RefCell::new(f);
        // `state_filter` runs the predicate under the read lock and clones
        // nothing for the entries it rejects.
        let _ = self.store::<Connection>().state_filter(|g| {
            if g.meta().namespace.as_deref() == Some(namespace)
                && let Some(c) = valid_ref(g)
            {
                (f.borrow_mut())(c);
            }
            false
        });
    }

    fn services_in(&self, namespace: Option<&str>, f: &mut dyn FnMut(&Service)) {
        // `state_filter` takes an `Fn`; the visit is sequential.
        let f = std::cell::RefCell::new(f);
        let _ = self.store::<Service>().state_filter(|g| {
            if namespace.is_none_or(|ns| g.meta().namespace.as_deref() == Some(ns))
                && let Some(s) = valid_ref(g)
            {
                (f.borrow_mut())(s);
            }
            false
        });
    }
}

fn valid<K: Clone>(guards: Vec<Arc<Guarded<K>>>) -> Vec<K> {
    guards
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect()
}

/// How a watch event touched an object, for [`feed`]'s `route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touched {
    /// Created or changed; the cache shows it.
    Applied,
    /// Deleted; gone from the cache.
    Deleted,
    /// Part of a (re)list; the cache shows the new list only at its end.
    Listed,
}

/// Drives one watch into its cache, calling `route` for every object touched
/// once the cache shows the change (a listed object as it arrives, before
/// the cache shows the new list), and `listed` once a (re)list has been
/// swapped into the cache. Never waits on its consumers: they only send on
/// unbounded channels, so a slow controller cannot stall the watch (and
/// freeze the cache) behind it.
pub fn feed<K, S>(
    watch: S,
    mut writer: Writer<K>,
    route: impl Fn(&K, Touched) + Send + 'static,
    listed: impl Fn() + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    watch
        .modify(|obj| {
            // Caches hold what reconcilers read, not the write history.
            obj.meta_mut().managed_fields = None;
            if let Some(a) = obj.meta_mut().annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .for_each(move |event| {
            match event {
                Ok(event) => {
                    writer.apply_watcher_event(&event);
                    match &event {
                        watcher::Event::Apply(o) => route(o, Touched::Applied),
                        watcher::Event::Delete(o) => route(o, Touched::Deleted),
                        watcher::Event::InitApply(o) => route(o, Touched::Listed),
                        watcher::Event::InitDone => listed(),
                        watcher::Event::Init => {}
                    }
                }
                Err(error) => warn!(%kind, error = %super::one_line(&error), "watch error; retrying with backoff"),
            }
            future::ready(())
        })
}

/// The watch of one child kind (by the managed-by label), each change routed
/// to its owner.
fn child_feed<K, W>(
    client: &Client,
    managed: &watcher::Config,
    writer: ChildStoreWriter<K>,
    wake: &W,
) -> impl Future<Output = ()> + Send + 'static + use<K, W>
where
    K: ChildKind + Clone + Debug,
    W: Fn(Wake) + Clone + Send + Sync + 'static,
{
    let wake = wake.clone();
    feed_children(
        Api::all(client.clone()),
        managed.clone(),
        writer,
        move |o: &ChildObject<K>| routes::child_changed(o, &wake),
    )
}

/// Drives the watch of a child kind into its [`ChildStore`], calling `route`
/// for every object touched (applied or deleted) once the store shows the
/// change: at once for a watch event, after the swap for a (re)list.
/// (Children deleted while the watch was down leave the store at the swap
/// without a route; the periodic resync reaches their owners.)
fn feed_children<K>(
    api: Api<ChildObject<K>>,
    config: watcher::Config,
    writer: ChildStoreWriter<K>,
    route: impl Fn(&ChildObject<K>) + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    K: ChildKind + Clone + Debug,
{
    let kind = K::kind(&()).into_owned();
    let mut listed = Vec::new();
    watcher(api, config).default_backoff().for_each(move |res| {
        match res {
            Ok(event) => {
                writer.apply(&event);
                match event {
                    watcher::Event::Apply(o) | watcher::Event::Delete(o) => route(&o),
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(o) => listed.push(o),
                    watcher::Event::InitDone => {
                        // Taken, not drained: the list's memory goes too.
                        for o in std::mem::take(&mut listed) {
                            route(&o);
                        }
                    }
                }
            }
            Err(error) => {
                warn!(%kind, error = %super::one_line(&error), "watch error; retrying with backoff")
            }
        }
        future::ready(())
    })
}
