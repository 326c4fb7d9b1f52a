//! One watch per kind, shared by every controller: each feeds a cache (a
//! reflector store) and routes changes, deletions included, to the
//! reconcilers of the objects they affect.
//!
//! Mahler kinds are watched through `DeserializeGuard`, so an object that
//! cannot be decoded is cached as an error (and reported on by its
//! reconciler) instead of breaking the watch. Children are watched by the
//! `app.kubernetes.io/managed-by=mahler` label only, and cached as
//! [`Child`] views (Mahler's fields and status), to keep memory per managed
//! Service small.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Future, StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use super::child::{ChildObject, ChildStoreWriter};
use super::{ChildKind, ChildStore, Trigger};
use crate::MANAGED_BY;
use crate::crd::{Connection, Environment, GROUP, Project, ResourceTemplate, Service};
use crate::environment::ENVIRONMENT_LABEL;

/// A Mahler object as cached: decoded, or the reason it could not be.
pub type Guarded<K> = DeserializeGuard<K>;

/// Read access to every cached kind.
#[derive(Clone)]
pub struct Caches {
    pub projects: Store<Guarded<Project>>,
    pub environments: Store<Guarded<Environment>>,
    pub services: Store<Guarded<Service>>,
    pub connections: Store<Guarded<Connection>>,
    pub templates: Store<Guarded<ResourceTemplate>>,
    pub namespaces: Store<Namespace>,
    pub deployments: ChildStore<Deployment>,
    pub kube_services: ChildStore<KubeService>,
    pub network_policies: ChildStore<NetworkPolicy>,
}

impl Caches {
    pub async fn wait_until_ready(&self) {
        // A dropped writer means the feeds stopped; the operator is shutting down.
        let _ = futures::join!(
            self.projects.wait_until_ready(),
            self.environments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.connections.wait_until_ready(),
            self.templates.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.kube_services.wait_until_ready(),
            self.network_policies.wait_until_ready(),
        );
    }

    /// Decoded Environments of a Project.
    pub fn environments_of(&self, project: &str) -> Vec<Environment> {
        valid(
            self.environments
                .state_filter(|e| valid_ref(e).is_some_and(|e| e.spec.project == project)),
        )
    }

    /// Decoded Connections in a namespace that start at Service `from`.
    ///
    /// Filters inside the cache and clones only the matches: a namespace can
    /// hold thousands of Connections, and this runs on every reconcile.
    pub fn connections_from(&self, namespace: &str, from: &str) -> Vec<Connection> {
        valid(self.connections.state_filter(|g| {
            g.meta().namespace.as_deref() == Some(namespace)
                && valid_ref(g).is_some_and(|c| c.spec.from == from)
        }))
    }

    /// Calls `f` with every decoded Connection in a namespace, without
    /// cloning any (the cache is locked meanwhile: `f` must not block).
    fn for_each_connection_in(&self, namespace: &str, f: impl Fn(&Connection)) {
        // `state_filter` runs the predicate under the read lock and clones
        // nothing for the entries it rejects.
        let _ = self.connections.state_filter(|g| {
            if g.meta().namespace.as_deref() == Some(namespace)
                && let Some(c) = valid_ref(g)
            {
                f(c);
            }
            false
        });
    }

    /// Calls `f` with every decoded Service (in `namespace`, if given),
    /// without cloning any (the cache is locked meanwhile: `f` must not block).
    fn for_each_service(&self, namespace: Option<&str>, f: impl Fn(&Service)) {
        let _ = self.services.state_filter(|g| {
            if namespace.is_none_or(|ns| g.meta().namespace.as_deref() == Some(ns))
                && let Some(s) = valid_ref(g)
            {
                f(s);
            }
            false
        });
    }

    /// A decoded Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.services
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
        self.templates
            .get(&ObjectRef::new(name))
            .and_then(|g| g.0.clone().ok())
    }

    pub fn project(&self, name: &str) -> Option<Arc<Guarded<Project>>> {
        self.projects.get(&ObjectRef::new(name))
    }
}

/// Whether `consumer` reads an output of Service `producer` (`valueFrom.serviceOutput`).
pub fn reads_outputs_of(consumer: &Service, producer: &str) -> bool {
    consumer.spec.env.iter().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.service_output.as_ref())
            .is_some_and(|o| o.service == producer)
    })
}

/// The decoded object inside a guard, if it decoded.
pub fn valid_ref<K>(guard: &Guarded<K>) -> Option<&K> {
    guard.0.as_ref().ok()
}

fn valid<K: Clone>(guards: Vec<Arc<Guarded<K>>>) -> Vec<K> {
    guards
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect()
}

/// Primary-kind streams for `Controller::for_shared_stream`.
pub struct Subscriptions {
    pub projects: ReflectHandle<Guarded<Project>>,
    pub environments: ReflectHandle<Guarded<Environment>>,
    pub services: ReflectHandle<Guarded<Service>>,
    pub connections: ReflectHandle<Guarded<Connection>>,
    pub templates: ReflectHandle<Guarded<ResourceTemplate>>,
}

/// Reconcile requests routed from related objects, per controller.
pub struct Router {
    pub subscriptions: Subscriptions,
    pub projects: mpsc::UnboundedReceiver<ObjectRef<Guarded<Project>>>,
    pub environments: mpsc::UnboundedReceiver<ObjectRef<Guarded<Environment>>>,
    pub services: mpsc::UnboundedReceiver<ObjectRef<Guarded<Service>>>,
    pub connections: mpsc::UnboundedReceiver<ObjectRef<Guarded<Connection>>>,
    pub templates: mpsc::UnboundedReceiver<ObjectRef<Guarded<ResourceTemplate>>>,
    /// Re-triggers a Service's reconcile (the Terraform engine uses it when
    /// a run ends).
    pub service_trigger: Trigger<Guarded<Service>>,
    /// Every controller's trigger, for the periodic resync.
    pub triggers: Senders,
}

/// Senders into each controller's `reconcile_on` stream.
#[derive(Clone)]
pub struct Senders {
    pub projects: Trigger<Guarded<Project>>,
    pub environments: Trigger<Guarded<Environment>>,
    pub services: Trigger<Guarded<Service>>,
    pub connections: Trigger<Guarded<Connection>>,
    pub templates: Trigger<Guarded<ResourceTemplate>>,
}

fn send<K: Resource<DynamicType = ()>>(
    tx: &Trigger<Guarded<K>>,
    name: &str,
    namespace: Option<&str>,
) {
    let r = ObjectRef::<Guarded<K>>::new(name);
    // A closed channel means the controller stopped (shutdown); nothing to do.
    let _ = tx.send(match namespace {
        Some(ns) => r.within(ns),
        None => r,
    });
}

/// The controller owner (kind, name) of a child, if it is a Mahler object.
fn mahler_owner<K: Resource>(child: &K) -> Option<(String, String)> {
    child
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.api_version.starts_with(GROUP))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// Starts nothing yet: returns the caches, one future driving every watch
/// (spawn it), and the routed triggers for the controllers.
pub fn start(client: Client) -> (Caches, impl Future<Output = ()> + Send + 'static, Router) {
    const BUFFER: usize = 1024;
    let (projects, projects_w) = reflector::store_shared::<Guarded<Project>>(BUFFER);
    let (environments, environments_w) = reflector::store_shared::<Guarded<Environment>>(BUFFER);
    let (services, services_w) = reflector::store_shared::<Guarded<Service>>(BUFFER);
    let (connections, connections_w) = reflector::store_shared::<Guarded<Connection>>(BUFFER);
    let (templates, templates_w) = reflector::store_shared::<Guarded<ResourceTemplate>>(BUFFER);
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let (deployments, deployments_w) = ChildStore::<Deployment>::new();
    let (kube_services, kube_services_w) = ChildStore::<KubeService>::new();
    let (network_policies, network_policies_w) = ChildStore::<NetworkPolicy>::new();

    let subscriptions = Subscriptions {
        projects: projects_w.subscribe().expect("shared store"),
        environments: environments_w.subscribe().expect("shared store"),
        services: services_w.subscribe().expect("shared store"),
        connections: connections_w.subscribe().expect("shared store"),
        templates: templates_w.subscribe().expect("shared store"),
    };
    let (p_tx, p_rx) = mpsc::unbounded_channel();
    let (e_tx, e_rx) = mpsc::unbounded_channel();
    let (s_tx, s_rx) = mpsc::unbounded_channel();
    let (c_tx, c_rx) = mpsc::unbounded_channel();
    let (t_tx, t_rx) = mpsc::unbounded_channel();
    let tx = Senders {
        projects: p_tx,
        environments: e_tx,
        services: s_tx,
        connections: c_tx,
        templates: t_tx,
    };
    let triggers = tx.clone();
    let service_trigger = tx.services.clone();
    let caches = Caches {
        projects,
        environments,
        services,
        connections,
        templates,
        namespaces,
        deployments,
        kube_services,
        network_policies,
    };

    let all = watcher::Config::default();
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));

    let feeds = {
        let (c, t) = (caches.clone(), tx.clone());
        let projects = feed(
            Api::all(client.clone()),
            all.clone(),
            projects_w,
            move |p: &Guarded<Project>| {
                for env in c.environments_of(&p.name_any()) {
                    send::<Environment>(&t.environments, &env.name_any(), None);
                }
            },
        );
        let t = tx.clone();
        let environments = feed(
            Api::all(client.clone()),
            all.clone(),
            environments_w,
            move |e: &Guarded<Environment>| {
                if let Some(env) = valid_ref(e) {
                    send::<Project>(&t.projects, &env.spec.project, None);
                }
            },
        );
        let (c, t) = (caches.clone(), tx.clone());
        let services = feed(
            Api::all(client.clone()),
            all.clone(),
            services_w,
            move |s: &Guarded<Service>| {
                let (name, ns) = (s.name_any(), s.namespace().unwrap_or_default());
                c.for_each_connection_in(&ns, |conn| {
                    if conn.spec.to == name || conn.spec.from == name {
                        send::<Connection>(&t.connections, &conn.name_any(), Some(&ns));
                    }
                    if conn.spec.to == name {
                        send::<Service>(&t.services, &conn.spec.from, Some(&ns));
                    }
                });
                // Consumers of this Service's outputs.
                c.for_each_service(Some(&ns), |consumer| {
                    if reads_outputs_of(consumer, &name) {
                        send::<Service>(&t.services, &consumer.name_any(), Some(&ns));
                    }
                });
            },
        );
        let (c, t) = (caches.clone(), tx.clone());
        let templates = feed(
            Api::all(client.clone()),
            all.clone(),
            templates_w,
            move |tpl: &Guarded<ResourceTemplate>| {
                let name = tpl.name_any();
                c.for_each_service(None, |svc| {
                    let uses = svc
                        .spec
                        .source
                        .template
                        .as_ref()
                        .is_some_and(|t| t.name == name);
                    if uses
                        || svc.spec.env.iter().any(|e| {
                            e.value_from
                                .as_ref()
                                .and_then(|v| v.service_output.as_ref())
                                .is_some()
                        })
                    {
                        send::<Service>(&t.services, &svc.name_any(), svc.namespace().as_deref());
                    }
                });
            },
        );
        let (c, t) = (caches.clone(), tx.clone());
        let connections = feed(
            Api::all(client.clone()),
            all.clone(),
            connections_w,
            move |g: &Guarded<Connection>| {
                let Some(conn) = valid_ref(g) else { return };
                let ns = g.namespace().unwrap_or_default();
                send::<Service>(&t.services, &conn.spec.from, Some(&ns));
                // Siblings share the variable namespace of `from`: a change here can
                // resolve or cause their conflicts.
                c.for_each_connection_in(&ns, |sibling| {
                    if sibling.spec.from == conn.spec.from {
                        send::<Connection>(&t.connections, &sibling.name_any(), Some(&ns));
                    }
                });
            },
        );
        let t = tx.clone();
        let namespaces = feed(
            Api::all(client.clone()),
            managed.clone(),
            namespaces_w,
            move |ns: &Namespace| {
                if let Some(env) = ns.labels().get(ENVIRONMENT_LABEL) {
                    send::<Environment>(&t.environments, env, None);
                }
            },
        );
        let t = tx.clone();
        let deployments = feed_children(
            Api::all(client.clone()),
            managed.clone(),
            deployments_w,
            move |d: &ChildObject<Deployment>| {
                if let Some((_, name)) = mahler_owner(d).filter(|(k, _)| k == "Service") {
                    send::<Service>(&t.services, &name, d.namespace().as_deref());
                }
            },
        );
        let t = tx.clone();
        let kube_services = feed_children(
            Api::all(client.clone()),
            managed.clone(),
            kube_services_w,
            move |s: &ChildObject<KubeService>| {
                if let Some((_, name)) = mahler_owner(s).filter(|(k, _)| k == "Service") {
                    send::<Service>(&t.services, &name, s.namespace().as_deref());
                }
            },
        );
        let t = tx;
        let network_policies = feed_children(
            Api::all(client),
            managed,
            network_policies_w,
            move |np: &ChildObject<NetworkPolicy>| match mahler_owner(np) {
                Some((kind, name)) if kind == "Environment" => {
                    send::<Environment>(&t.environments, &name, None)
                }
                Some((kind, name)) if kind == "Connection" => {
                    send::<Connection>(&t.connections, &name, np.namespace().as_deref())
                }
                _ => {}
            },
        );
        async move {
            futures::join!(
                projects,
                environments,
                services,
                connections,
                templates,
                namespaces,
                deployments,
                kube_services,
                network_policies
            );
        }
    };

    let router = Router {
        templates: t_rx,
        triggers,
        service_trigger,
        subscriptions,
        projects: p_rx,
        environments: e_rx,
        services: s_rx,
        connections: c_rx,
    };
    (caches, feeds, router)
}

/// Drives one watch into its cache, calling `route` for every object touched
/// (applied or deleted) after the cache has been updated.
fn feed<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    route: impl Fn(&K) + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    watcher(api, config)
        .default_backoff()
        .modify(|obj| {
            // Caches hold what reconcilers read, not the write history.
            obj.meta_mut().managed_fields = None;
            if let Some(a) = obj.meta_mut().annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .reflect_shared(writer)
        .touched_objects()
        .for_each(move |res| {
            match res {
                Ok(obj) => route(&obj),
                Err(error) => warn!(%kind, %error, "watch error; retrying with backoff"),
            }
            future::ready(())
        })
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
            Err(error) => warn!(%kind, %error, "watch error; retrying with backoff"),
        }
        future::ready(())
    })
}
