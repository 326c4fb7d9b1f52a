//! The re-trigger graph: which objects a change wakes. Pure functions of
//! the changed object and a [`View`] of the caches, unit-tested below with
//! a plain in-memory view; the watches call them after each cache update.
//!
//! - a Project wakes its Environments; an Environment its Project and its
//!   Services (telemetry variables);
//! - a Service wakes the Connections that name it, the Services connected
//!   to it, and the Services that read its outputs;
//! - a Connection wakes its `from` Service and its sibling Connections
//!   (they share `from`'s variable namespace: one can cause or resolve
//!   another's conflict);
//! - a ResourceTemplate wakes the Services instantiating it, and every
//!   Service reading outputs (they may come from it);
//! - a child (namespace, Deployment, Service, NetworkPolicy) wakes its owner.

use kube::{Resource, ResourceExt};
use mahler_api::names::ENVIRONMENT_LABEL;
use mahler_api::{Connection, Environment, GROUP, Project, ResourceTemplate, Service};

use super::{Guarded, valid_ref};

/// A reconcile request: one object of one Mahler kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wake {
    /// The kind (`Service`, `Connection`, ...).
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl Wake {
    /// Wakes the `K` named `name` (in `namespace`, for a namespaced kind).
    pub fn of<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> Self {
        Wake {
            kind: kind_name::<K>(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

/// The kind's name as a `'static` string (every Mahler kind's is static).
pub fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(kind) => Box::leak(kind.into_boxed_str()),
    }
}

/// What routing reads of the caches: each visit runs `f` on matching
/// decoded objects without cloning them.
pub trait View {
    fn environments_of(&self, project: &str, f: &mut dyn FnMut(&Environment));
    fn connections_in(&self, namespace: &str, f: &mut dyn FnMut(&Connection));
    /// In `namespace`, or everywhere.
    fn services_in(&self, namespace: Option<&str>, f: &mut dyn FnMut(&Service));
}

pub fn project_changed(p: &Guarded<Project>, view: &dyn View, wake: &mut dyn FnMut(Wake)) {
    view.environments_of(&p.name_any(), &mut |env| {
        wake(Wake::of::<Environment>(None, &env.name_any()))
    });
}

pub fn environment_changed(e: &Guarded<Environment>, view: &dyn View, wake: &mut dyn FnMut(Wake)) {
    if let Some(env) = valid_ref(e) {
        wake(Wake::of::<Project>(None, &env.spec.project));
        // Its Services: their pods carry the telemetry settings' variables.
        let ns = env.namespace_name();
        view.services_in(Some(&ns), &mut |svc| {
            wake(Wake::of::<Service>(Some(&ns), &svc.name_any()))
        });
    }
}

pub fn service_changed(s: &Guarded<Service>, view: &dyn View, wake: &mut dyn FnMut(Wake)) {
    let (name, ns) = (s.name_any(), s.namespace().unwrap_or_default());
    let at = Some(ns.as_str());
    view.connections_in(&ns, &mut |conn| {
        if conn.spec.to == name || conn.spec.from == name {
            wake(Wake::of::<Connection>(at, &conn.name_any()));
        }
        if conn.spec.to == name {
            wake(Wake::of::<Service>(at, &conn.spec.from));
        }
    });
    // Consumers of this Service's outputs.
    view.services_in(at, &mut |consumer| {
        if reads_outputs(consumer, Some(&name)) {
            wake(Wake::of::<Service>(at, &consumer.name_any()));
        }
    });
}

pub fn connection_changed(g: &Guarded<Connection>, view: &dyn View, wake: &mut dyn FnMut(Wake)) {
    let Some(conn) = valid_ref(g) else { return };
    let ns = g.namespace().unwrap_or_default();
    let at = Some(ns.as_str());
    wake(Wake::of::<Service>(at, &conn.spec.from));
    view.connections_in(&ns, &mut |sibling| {
        if sibling.spec.from == conn.spec.from {
            wake(Wake::of::<Connection>(at, &sibling.name_any()));
        }
    });
}

pub fn template_changed(
    t: &Guarded<ResourceTemplate>,
    view: &dyn View,
    wake: &mut dyn FnMut(Wake),
) {
    let name = t.name_any();
    view.services_in(None, &mut |svc| {
        let uses = svc
            .spec
            .source
            .template
            .as_ref()
            .is_some_and(|t| t.name == name);
        if uses || reads_outputs(svc, None) {
            wake(Wake::of::<Service>(
                svc.namespace().as_deref(),
                &svc.name_any(),
            ));
        }
    });
}

/// A namespace Mahler manages wakes the Environment named by its label.
pub fn namespace_changed<K: Resource>(ns: &K, wake: &dyn Fn(Wake)) {
    if let Some(env) = ns.labels().get(ENVIRONMENT_LABEL) {
        wake(Wake::of::<Environment>(None, env));
    }
}

/// A child wakes its controller owner, when that is a Mahler object.
pub fn child_changed<K: Resource>(child: &K, wake: &dyn Fn(Wake)) {
    let Some(owner) = child
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.api_version.starts_with(GROUP))
    else {
        return;
    };
    let ns = child.namespace();
    let target = match owner.kind.as_str() {
        "Service" => Wake::of::<Service>(ns.as_deref(), &owner.name),
        "Connection" => Wake::of::<Connection>(ns.as_deref(), &owner.name),
        "Environment" => Wake::of::<Environment>(None, &owner.name),
        "Project" => Wake::of::<Project>(None, &owner.name),
        _ => return,
    };
    wake(target);
}

/// Whether `consumer` reads an output (`valueFrom.serviceOutput`) of Service
/// `producer`, or of any Service.
pub fn reads_outputs(consumer: &Service, producer: Option<&str>) -> bool {
    consumer.spec.env.iter().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.service_output.as_ref())
            .is_some_and(|o| producer.is_none_or(|p| o.service == p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Namespace;
    use mahler_api::{
        ConnectionSpec, EnvVar, EnvVarSource, EnvironmentSpec, ProjectSpec, ResourceTemplateSpec,
        ServiceOutputRef, ServiceSpec, Source, TemplateSource,
    };

    /// The caches as plain lists.
    #[derive(Default)]
    struct Lists {
        environments: Vec<Environment>,
        connections: Vec<Connection>,
        services: Vec<Service>,
    }

    impl View for Lists {
        fn environments_of(&self, project: &str, f: &mut dyn FnMut(&Environment)) {
            self.environments
                .iter()
                .filter(|e| e.spec.project == project)
                .for_each(f);
        }
        fn connections_in(&self, namespace: &str, f: &mut dyn FnMut(&Connection)) {
            self.connections
                .iter()
                .filter(|c| c.namespace().as_deref() == Some(namespace))
                .for_each(f);
        }
        fn services_in(&self, namespace: Option<&str>, f: &mut dyn FnMut(&Service)) {
            self.services
                .iter()
                .filter(|s| namespace.is_none_or(|ns| s.namespace().as_deref() == Some(ns)))
                .for_each(f);
        }
    }

    fn guard<K>(obj: K) -> Guarded<K> {
        kube::core::DeserializeGuard(Ok(obj))
    }

    fn service(ns: &str, name: &str, reads: Option<&str>, template: Option<&str>) -> Service {
        let mut spec = ServiceSpec::default();
        if let Some(producer) = reads {
            spec.env.push(EnvVar {
                name: "URL".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    service_output: Some(ServiceOutputRef {
                        service: producer.into(),
                        key: "url".into(),
                    }),
                    ..Default::default()
                }),
            });
        }
        if let Some(t) = template {
            spec.source = Source {
                template: Some(Box::new(TemplateSource {
                    name: t.into(),
                    ..Default::default()
                })),
                ..Default::default()
            };
        }
        let mut s = Service::new(name, spec);
        s.metadata.namespace = Some(ns.into());
        s
    }

    fn connection(ns: &str, name: &str, from: &str, to: &str) -> Connection {
        let mut c = Connection::new(
            name,
            ConnectionSpec {
                from: from.into(),
                to: to.into(),
                port: 80,
                env_prefix: None,
            },
        );
        c.metadata.namespace = Some(ns.into());
        c
    }

    fn environment(name: &str, project: &str) -> Environment {
        Environment::new(
            name,
            EnvironmentSpec {
                project: project.into(),
                ..Default::default()
            },
        )
    }

    fn wakes(f: impl FnOnce(&mut dyn FnMut(Wake))) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        f(&mut |w: Wake| {
            out.push((
                w.kind,
                format!("{}/{}", w.namespace.unwrap_or_default(), w.name),
            ))
        });
        out.sort();
        out.dedup();
        out
    }

    fn w(kind: &'static str, at: &str) -> (&'static str, String) {
        (kind, at.to_string())
    }

    fn view() -> Lists {
        Lists {
            environments: vec![
                environment("shop-staging", "shop"),
                environment("shop-prod", "shop"),
                environment("blog-prod", "blog"),
            ],
            connections: vec![
                connection("ns", "api-db", "api", "db"),
                connection("ns", "api-cache", "api", "cache"),
                connection("ns", "web-api", "web", "api"),
                connection("other", "api-db", "api", "db"),
            ],
            services: vec![
                service("ns", "api", None, None),
                service("ns", "db", None, Some("postgres")),
                service("ns", "worker", Some("db"), None),
                service("ns", "report", Some("cache"), None),
                service("other", "reader", Some("db"), None),
                service("other", "db", None, Some("postgres")),
            ],
        }
    }

    #[test]
    fn a_project_wakes_its_environments_and_an_environment_its_project() {
        let v = view();
        let p = guard(Project::new("shop", ProjectSpec::default()));
        assert_eq!(
            wakes(|f| project_changed(&p, &v, f)),
            vec![
                w("Environment", "/shop-prod"),
                w("Environment", "/shop-staging")
            ]
        );
        let e = guard(environment("blog-prod", "blog"));
        assert_eq!(
            wakes(|f| environment_changed(&e, &v, f)),
            vec![w("Project", "/blog")]
        );
    }

    #[test]
    fn a_service_wakes_connections_naming_it_services_connected_to_it_and_its_output_readers() {
        let v = view();
        let db = guard(service("ns", "db", None, None));
        assert_eq!(
            wakes(|f| service_changed(&db, &v, f)),
            vec![
                w("Connection", "ns/api-db"),
                w("Service", "ns/api"),
                w("Service", "ns/worker"),
            ],
            "not the same names in another namespace"
        );
        let api = guard(service("ns", "api", None, None));
        assert_eq!(
            wakes(|f| service_changed(&api, &v, f)),
            vec![
                w("Connection", "ns/api-cache"),
                w("Connection", "ns/api-db"),
                w("Connection", "ns/web-api"),
                w("Service", "ns/web"),
            ]
        );
    }

    #[test]
    fn a_connection_wakes_its_source_and_its_siblings() {
        let v = view();
        let c = guard(connection("ns", "api-db", "api", "db"));
        assert_eq!(
            wakes(|f| connection_changed(&c, &v, f)),
            vec![
                w("Connection", "ns/api-cache"),
                w("Connection", "ns/api-db"),
                w("Service", "ns/api"),
            ]
        );
        let undecodable: Guarded<Connection> =
            kube::core::DeserializeGuard(Err(kube::core::error_boundary::InvalidObject {
                metadata: Default::default(),
                error: "bad".into(),
            }));
        assert!(wakes(|f| connection_changed(&undecodable, &v, f)).is_empty());
    }

    #[test]
    fn a_template_wakes_its_users_and_every_output_reader() {
        let v = view();
        let t = guard(ResourceTemplate::new(
            "postgres",
            ResourceTemplateSpec::default(),
        ));
        assert_eq!(
            wakes(|f| template_changed(&t, &v, f)),
            vec![
                w("Service", "ns/db"),
                w("Service", "ns/report"),
                w("Service", "ns/worker"),
                w("Service", "other/db"),
                w("Service", "other/reader"),
            ]
        );
    }

    #[test]
    fn children_wake_their_mahler_owner() {
        let mut d = Deployment::default();
        d.metadata.namespace = Some("ns".into());
        let owner = |kind: &str, api: &str| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: api.into(),
                kind: kind.into(),
                name: "api".into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            }
        };
        let seen = std::cell::RefCell::new(Vec::new());
        let wake = |w: Wake| seen.borrow_mut().push((w.kind, w.namespace, w.name));
        d.metadata.owner_references = Some(vec![owner("Service", "mahler.dev/v1alpha1")]);
        child_changed(&d, &wake);
        // A core Service owning it is not Mahler's.
        d.metadata.owner_references = Some(vec![owner("Service", "v1")]);
        child_changed(&d, &wake);
        let mut ns = Namespace::default();
        ns.metadata.labels =
            Some([(ENVIRONMENT_LABEL.to_string(), "shop-staging".to_string())].into());
        namespace_changed(&ns, &wake);
        assert_eq!(
            seen.into_inner(),
            vec![
                ("Service", Some("ns".to_string()), "api".to_string()),
                ("Environment", None, "shop-staging".to_string()),
            ]
        );
    }
}
