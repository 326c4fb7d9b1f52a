//! What the Consul catalog, intentions and gateway should hold for the
//! Services and Connections of Consul-enabled environments, and the
//! smallest set of writes that gets it there from what Consul holds now
//! (docs/consul.md). Pure: the controller observes Kubernetes and Consul and
//! sends the writes through `mahler-consul`.
//!
//! - Every ready or unready endpoint of a Service is one catalog instance on
//!   the operator's node, with one check whose status is the endpoint's
//!   readiness as the EndpointSlice reports it (passing / critical).
//! - Mahler's entries carry the meta `mahler-managed`: anything on the node
//!   with it that should not exist is removed, and instance IDs are derived
//!   from the pod, so a restarted operator adopts what it wrote before.
//! - Each Service of an enabled environment gets a `service-intentions`
//!   entry: allow from each Connection's source, deny from everyone else.
//! - `spec.expose` becomes an `http-route` on the operator's API gateway.

use std::collections::{BTreeMap, BTreeSet};

use kube::{Resource, ResourceExt};
use mahler_api::names::CONSUL_MANAGED_META;
use mahler_api::{Connection, Environment, Service};

/// The most operations Consul 1.16 takes in one `/v1/txn`.
pub const TXN_MAX_OPS: usize = 128;

/// One endpoint of a Service, as its EndpointSlices report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod behind it (the instance ID is derived from it), or its IP.
    pub pod: String,
    pub address: String,
    pub port: u16,
    pub ready: bool,
}

/// A Service of a Consul-enabled environment, with its endpoints.
pub struct ServiceInput<'a> {
    pub service: &'a Service,
    pub environment: &'a Environment,
    pub endpoints: Vec<Endpoint>,
}

/// One catalog instance, as Mahler registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub check: Check,
}

/// The readiness check of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub id: String,
    pub name: String,
    /// `passing` or `critical`.
    pub status: String,
    pub output: String,
}

/// The operator's catalog node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub address: String,
    pub meta: BTreeMap<String, String>,
}

/// What Consul holds on the operator's node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedCatalog {
    /// The node's address and meta, when it exists.
    pub node: Option<(String, BTreeMap<String, String>)>,
    /// Instances by ID (all of the node's, Mahler's or not).
    pub services: BTreeMap<String, ObservedService>,
    /// Checks by ID, with the service ID each belongs to.
    pub checks: BTreeMap<String, ObservedCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedService {
    pub service: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedCheck {
    pub name: String,
    pub status: String,
    pub output: String,
    pub service_id: String,
}

/// One catalog write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogOp {
    SetNode(Node),
    SetService(Instance),
    SetCheck {
        service_id: String,
        check: Check,
    },
    /// An instance and its checks (Consul wants the service name too).
    DeleteService {
        id: String,
        service: String,
    },
    DeleteCheck(String),
}

/// Why a Service cannot be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error(
        "the Consul service name {0:?} is not a DNS label of at most 63 characters (lowercase letters, digits, '-'); shorten the Service name or set the environment's spec.consul.prefix"
    )]
    Invalid(String),
}

/// The Consul service name of `svc` in an environment with `prefix`.
pub fn consul_name(prefix: &str, svc: &str) -> Result<String, NameProblem> {
    let name = format!("{prefix}{svc}");
    let label = name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if label {
        Ok(name)
    } else {
        Err(NameProblem::Invalid(name))
    }
}

/// The Consul DNS name of a Consul service: `<name>.service[.<dc>].<domain>`.
pub fn dns_name(name: &str, datacenter: Option<&str>, domain: &str) -> String {
    match datacenter {
        Some(dc) => format!("{name}.service.{dc}.{domain}"),
        None => format!("{name}.service.{domain}"),
    }
}

/// The meta every entry Mahler writes carries.
fn managed_meta(env: &Environment, svc: Option<&Service>) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::from([
        (CONSUL_MANAGED_META.to_string(), "true".to_string()),
        ("mahler-project".into(), env.spec.project.clone()),
        ("mahler-environment".into(), env.name_any()),
    ]);
    if let Some(svc) = svc {
        meta.insert("mahler-service".into(), svc.name_any());
        if let Ok(image) = crate::workload::image(svc) {
            meta.insert("mahler-version".into(), crate::truncate(image, 500));
        }
    }
    meta
}

/// Whether an entry's meta marks it as Mahler's.
pub fn is_managed(meta: &BTreeMap<String, String>) -> bool {
    meta.get(CONSUL_MANAGED_META).is_some_and(|v| v == "true")
}

/// The instances of one Service: one per endpoint, or why there are none.
pub fn instances(input: &ServiceInput) -> Result<Vec<Instance>, NameProblem> {
    let env = input.environment;
    let svc = input.service;
    let name = consul_name(&env.consul_prefix(), &svc.name_any())?;
    let namespace = svc.namespace().unwrap_or_default();
    let mut meta = managed_meta(env, Some(svc));
    meta.insert("k8s-namespace".into(), namespace.clone());
    let mut out: Vec<Instance> = input
        .endpoints
        .iter()
        .map(|e| {
            let id = format!("{namespace}/{}/{}", svc.name_any(), e.pod);
            let mut meta = meta.clone();
            meta.insert("k8s-pod".into(), e.pod.clone());
            Instance {
                check: Check {
                    id: format!("{id}/ready"),
                    name: "Kubernetes readiness".into(),
                    status: if e.ready { "passing" } else { "critical" }.into(),
                    output: if e.ready {
                        format!("pod {} is ready (EndpointSlice)", e.pod)
                    } else {
                        format!("pod {} is not ready (EndpointSlice)", e.pod)
                    },
                },
                id,
                service: name.clone(),
                address: e.address.clone(),
                port: e.port,
                tags: vec!["mahler".into()],
                meta,
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    Ok(out)
}

/// The writes that turn `observed` into `desired` (plus `node`), in
/// batches of at most [`TXN_MAX_OPS`]; the node first. Nothing when the
/// catalog already holds it. Only Mahler's entries (by meta) are removed.
pub fn plan_catalog(
    node: &Node,
    desired: &[Instance],
    observed: &ObservedCatalog,
) -> Vec<Vec<CatalogOp>> {
    let mut ops = Vec::new();
    let node_ok = observed
        .node
        .as_ref()
        .is_some_and(|(address, meta)| *address == node.address && *meta == node.meta);
    // Instances written to a missing node would be refused.
    let fresh_node = observed.node.is_none();
    if !node_ok {
        ops.push(CatalogOp::SetNode(node.clone()));
    }
    let wanted: BTreeSet<&str> = desired.iter().map(|i| i.id.as_str()).collect();
    let wanted_checks: BTreeSet<&str> = desired.iter().map(|i| i.check.id.as_str()).collect();
    for instance in desired {
        let same_service = !fresh_node
            && observed.services.get(&instance.id).is_some_and(|o| {
                o.service == instance.service
                    && o.address == instance.address
                    && o.port == instance.port
                    && o.tags == instance.tags
                    && o.meta == instance.meta
            });
        if !same_service {
            ops.push(CatalogOp::SetService(instance.clone()));
        }
        let same_check = same_service
            && observed.checks.get(&instance.check.id).is_some_and(|o| {
                o.status == instance.check.status
                    && o.output == instance.check.output
                    && o.name == instance.check.name
                    && o.service_id == instance.id
            });
        if !same_check {
            ops.push(CatalogOp::SetCheck {
                service_id: instance.id.clone(),
                check: instance.check.clone(),
            });
        }
    }
    let mut deleted = BTreeSet::new();
    for (id, o) in &observed.services {
        if is_managed(&o.meta) && !wanted.contains(id.as_str()) {
            ops.push(CatalogOp::DeleteService {
                id: id.clone(),
                service: o.service.clone(),
            });
            deleted.insert(id.as_str());
        }
    }
    // Checks of Mahler's instances that are no longer wanted (deleting the
    // service removes its checks with it).
    for (id, c) in &observed.checks {
        let ours = observed
            .services
            .get(&c.service_id)
            .is_some_and(|s| is_managed(&s.meta));
        if ours && !wanted_checks.contains(id.as_str()) && !deleted.contains(c.service_id.as_str())
        {
            ops.push(CatalogOp::DeleteCheck(id.clone()));
        }
    }
    batches(ops)
}

/// `ops` in transactions of at most [`TXN_MAX_OPS`].
pub fn batches<T>(ops: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut it = ops.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(TXN_MAX_OPS).collect());
    }
    out
}

/// One source of a service-intentions entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IntentionSource {
    /// A Consul service name, or `*`.
    pub name: String,
    pub allow: bool,
}

/// A service-intentions entry as Mahler writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intentions {
    /// The destination's Consul service name (the entry's name).
    pub destination: String,
    /// Allows in name order, then the deny from `*`.
    pub sources: Vec<IntentionSource>,
    pub meta: BTreeMap<String, String>,
}

/// The service-intentions entries of one enabled environment: one per
/// Service whose name Consul accepts, allowing each Connection's source.
/// Connections whose ends are missing or unnamed allow nothing.
pub fn intentions(
    environment: &Environment,
    services: &[&Service],
    connections: &[&Connection],
) -> Vec<Intentions> {
    let prefix = environment.consul_prefix();
    let named: BTreeMap<String, String> = services
        .iter()
        .filter_map(|s| {
            consul_name(&prefix, &s.name_any())
                .ok()
                .map(|n| (s.name_any(), n))
        })
        .collect();
    let mut out = Vec::new();
    for (svc, destination) in &named {
        let mut sources: Vec<IntentionSource> = connections
            .iter()
            .filter(|c| c.spec.to == *svc)
            .filter_map(|c| named.get(&c.spec.from))
            .map(|from| IntentionSource {
                name: from.clone(),
                allow: true,
            })
            .collect();
        sources.sort();
        sources.dedup();
        sources.push(IntentionSource {
            name: "*".into(),
            allow: false,
        });
        let mut meta = managed_meta(environment, None);
        meta.insert("mahler-service".into(), svc.clone());
        out.push(Intentions {
            destination: destination.clone(),
            sources,
            meta,
        });
    }
    out
}

/// A gateway route for one exposed Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The route's name: the Service's Consul name.
    pub name: String,
    pub host: String,
    pub path: String,
    /// The Consul service it routes to.
    pub service: String,
    pub meta: BTreeMap<String, String>,
}

/// What `spec.expose` of a Service comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exposure {
    Routed(Route),
    /// An earlier Service (`namespace/name`) claims the same host and path.
    Conflict {
        host: String,
        path: String,
        holder: String,
    },
    Invalid(NameProblem),
    /// `spec.expose.host` or `.path` that a gateway cannot route: the reason
    /// and the message.
    InvalidExpose(&'static str, String),
}

/// Why `expose` cannot be routed (the schema accepts a little more than a
/// gateway does, and cannot be tightened within v1alpha1).
fn expose_problem(host: &str, path: &str) -> Option<(&'static str, String)> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Some((
            "InvalidHost",
            format!(
                "spec.expose.host: {host:?} is not a DNS name (dot-separated labels of lowercase letters, digits and '-', each at most 63 characters)"
            ),
        ));
    }
    let path_ok = path.len() <= 1024
        && path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b));
    if !path_ok {
        return Some((
            "InvalidPath",
            format!(
                "spec.expose.path: {path:?} is not a path prefix a gateway routes ('/' then letters, digits and -._~/%, at most 1024 characters)"
            ),
        ));
    }
    None
}

/// The routes of exposed Services, first claimant first: Services ordered
/// by creation, then namespace and name; a later one claiming a taken host
/// and path gets [`Exposure::Conflict`]. Keyed by `namespace/name`.
pub fn routes(exposed: &[(&Service, &Environment)]) -> BTreeMap<String, Exposure> {
    let mut ordered: Vec<&(&Service, &Environment)> = exposed
        .iter()
        .filter(|(s, _)| s.spec.expose.is_some())
        .collect();
    ordered.sort_by_key(|(s, _)| {
        (
            s.meta().creation_timestamp.clone().map(|t| t.0),
            s.namespace(),
            s.name_any(),
        )
    });
    let mut taken: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (svc, env) in ordered {
        let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
        let expose = svc.spec.expose.as_deref().expect("filtered");
        let path = expose.path.clone().unwrap_or_else(|| "/".into());
        let claim = (expose.host.clone(), path.clone());
        if let Some((reason, message)) = expose_problem(&expose.host, &path) {
            out.insert(key, Exposure::InvalidExpose(reason, message));
            continue;
        }
        let exposure = match (
            taken.get(&claim),
            consul_name(&env.consul_prefix(), &svc.name_any()),
        ) {
            (Some(holder), _) => Exposure::Conflict {
                host: claim.0.clone(),
                path: claim.1.clone(),
                holder: holder.clone(),
            },
            (None, Err(problem)) => Exposure::Invalid(problem),
            (None, Ok(name)) => {
                taken.insert(claim, key.clone());
                Exposure::Routed(Route {
                    name: name.clone(),
                    host: expose.host.clone(),
                    path,
                    service: name,
                    meta: managed_meta(env, Some(svc)),
                })
            }
        };
        out.insert(key, exposure);
    }
    out
}

/// The URL a route is reached at through a gateway listening on `port`.
pub fn external_url(route: &Route, port: u16) -> String {
    match port {
        80 => format!("http://{}{}", route.host, route.path),
        _ => format!("http://{}:{port}{}", route.host, route.path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use mahler_api::{
        ConnectionSpec, EnvironmentConsul, EnvironmentSpec, ExposeSpec, ServiceSpec, Source,
    };

    fn env(prefix: Option<&str>) -> Environment {
        Environment::new(
            "shop-staging",
            EnvironmentSpec {
                project: "shop".into(),
                consul: Some(EnvironmentConsul {
                    enabled: true,
                    prefix: prefix.map(str::to_string),
                }),
                ..Default::default()
            },
        )
    }

    fn svc(name: &str) -> Service {
        let mut s = Service::new(
            name,
            ServiceSpec {
                source: Source {
                    image: Some("registry.example/api:1".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("shop-staging".into());
        s
    }

    fn conn(from: &str, to: &str) -> Connection {
        let mut c = Connection::new(
            &format!("{from}-{to}"),
            ConnectionSpec {
                from: from.into(),
                to: to.into(),
                port: 5432,
                env_prefix: None,
            },
        );
        c.metadata.namespace = Some("shop-staging".into());
        c
    }

    fn endpoint(pod: &str, ready: bool) -> Endpoint {
        Endpoint {
            pod: pod.into(),
            address: format!("10.0.0.{}", pod.len()),
            port: 8080,
            ready,
        }
    }

    fn node() -> Node {
        Node {
            name: "mahler".into(),
            address: "127.0.0.1".into(),
            meta: BTreeMap::from([("external-source".into(), "mahler".into())]),
        }
    }

    /// What Consul would hold after applying `ops`.
    fn applied(ops: &[Vec<CatalogOp>], mut catalog: ObservedCatalog) -> ObservedCatalog {
        for op in ops.iter().flatten() {
            match op {
                CatalogOp::SetNode(n) => catalog.node = Some((n.address.clone(), n.meta.clone())),
                CatalogOp::SetService(i) => {
                    catalog.services.insert(
                        i.id.clone(),
                        ObservedService {
                            service: i.service.clone(),
                            address: i.address.clone(),
                            port: i.port,
                            tags: i.tags.clone(),
                            meta: i.meta.clone(),
                        },
                    );
                }
                CatalogOp::SetCheck { service_id, check } => {
                    catalog.checks.insert(
                        check.id.clone(),
                        ObservedCheck {
                            name: check.name.clone(),
                            status: check.status.clone(),
                            output: check.output.clone(),
                            service_id: service_id.clone(),
                        },
                    );
                }
                CatalogOp::DeleteService { id, .. } => {
                    catalog.services.remove(id);
                    catalog.checks.retain(|_, c| c.service_id != *id);
                }
                CatalogOp::DeleteCheck(id) => {
                    catalog.checks.remove(id);
                }
            }
        }
        catalog
    }

    #[test]
    fn names_are_prefixed_and_checked() {
        assert_eq!(
            consul_name("shop-staging-", "api").unwrap(),
            "shop-staging-api"
        );
        assert_eq!(consul_name("", "api").unwrap(), "api");
        assert!(consul_name("", &"a".repeat(64)).is_err());
        let long = consul_name(&"p".repeat(40), &"s".repeat(30)).unwrap_err();
        assert!(long.to_string().contains("spec.consul.prefix"), "{long}");
        assert_eq!(env(None).consul_prefix(), "shop-staging-");
        assert_eq!(env(Some("")).consul_prefix(), "");
        assert_eq!(
            dns_name("shop-staging-db", None, "consul"),
            "shop-staging-db.service.consul"
        );
        assert_eq!(
            dns_name("db", Some("dc2"), "consul"),
            "db.service.dc2.consul"
        );
    }

    #[test]
    fn one_instance_per_endpoint_with_readiness_and_meta() {
        let (e, s) = (env(None), svc("api"));
        let got = instances(&ServiceInput {
            service: &s,
            environment: &e,
            endpoints: vec![endpoint("api-1", true), endpoint("api-22", false)],
        })
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "shop-staging/api/api-1");
        assert_eq!(got[0].service, "shop-staging-api");
        assert_eq!(got[0].check.status, "passing");
        assert_eq!(got[1].check.status, "critical");
        assert_eq!(got[0].meta["mahler-project"], "shop");
        assert_eq!(got[0].meta["mahler-service"], "api");
        assert_eq!(got[0].meta["mahler-version"], "registry.example/api:1");
        assert_eq!(got[0].meta[CONSUL_MANAGED_META], "true");
        assert_eq!(got[1].meta["k8s-pod"], "api-22");
    }

    #[test]
    fn the_plan_writes_only_differences_and_converges() {
        let (e, s) = (env(None), svc("api"));
        let mut endpoints = vec![endpoint("api-1", true), endpoint("api-22", true)];
        let desired = |endpoints: &[Endpoint]| {
            instances(&ServiceInput {
                service: &s,
                environment: &e,
                endpoints: endpoints.to_vec(),
            })
            .unwrap()
        };
        // Empty catalog: node, then a service and a check per instance.
        let ops = plan_catalog(&node(), &desired(&endpoints), &ObservedCatalog::default());
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].len(), 5);
        assert!(matches!(ops[0][0], CatalogOp::SetNode(_)));
        let catalog = applied(&ops, ObservedCatalog::default());
        // Nothing changed: nothing to write.
        assert!(plan_catalog(&node(), &desired(&endpoints), &catalog).is_empty());
        // A pod turns unready: one check write.
        endpoints[1].ready = false;
        let ops = plan_catalog(&node(), &desired(&endpoints), &catalog);
        assert_eq!(ops.len(), 1);
        assert!(
            matches!(&ops[0][..], [CatalogOp::SetCheck { check, .. }] if check.status == "critical")
        );
        let catalog = applied(&ops, catalog);
        // An endpoint goes away: its instance is deregistered (checks with it).
        endpoints.pop();
        let ops = plan_catalog(&node(), &desired(&endpoints), &catalog);
        assert_eq!(
            ops,
            vec![vec![CatalogOp::DeleteService {
                id: "shop-staging/api/api-22".into(),
                service: "shop-staging-api".into()
            }]]
        );
        let catalog = applied(&ops, catalog);
        assert_eq!(catalog.services.len(), 1);
        assert_eq!(catalog.checks.len(), 1);
        assert!(plan_catalog(&node(), &desired(&endpoints), &catalog).is_empty());
    }

    #[test]
    fn entries_of_others_are_kept_and_a_lost_node_rewrites_everything() {
        let (e, s) = (env(None), svc("api"));
        let desired = instances(&ServiceInput {
            service: &s,
            environment: &e,
            endpoints: vec![endpoint("api-1", true)],
        })
        .unwrap();
        let mut catalog = applied(
            &plan_catalog(&node(), &desired, &ObservedCatalog::default()),
            ObservedCatalog::default(),
        );
        catalog.services.insert(
            "theirs".into(),
            ObservedService {
                service: "legacy".into(),
                ..Default::default()
            },
        );
        // Left by an earlier operator, for a Service that is gone.
        let mut stale = catalog.services["shop-staging/api/api-1"].clone();
        stale.service = "shop-staging-old".into();
        catalog
            .services
            .insert("shop-staging/old/old-1".into(), stale);
        let ops = plan_catalog(&node(), &desired, &catalog);
        assert_eq!(
            ops,
            vec![vec![CatalogOp::DeleteService {
                id: "shop-staging/old/old-1".into(),
                service: "shop-staging-old".into()
            }]]
        );
        // Consul restarted in dev mode: the node is gone; everything again.
        let ops = plan_catalog(&node(), &desired, &ObservedCatalog::default());
        assert_eq!(ops[0].len(), 3);
    }

    #[test]
    fn batches_hold_at_most_128_operations() {
        let e = env(None);
        let services: Vec<Service> = (0..100).map(|i| svc(&format!("s{i}"))).collect();
        let desired: Vec<Instance> = services
            .iter()
            .flat_map(|s| {
                instances(&ServiceInput {
                    service: s,
                    environment: &e,
                    endpoints: vec![endpoint("p", true)],
                })
                .unwrap()
            })
            .collect();
        let ops = plan_catalog(&node(), &desired, &ObservedCatalog::default());
        assert_eq!(ops.iter().map(Vec::len).sum::<usize>(), 201);
        assert_eq!(ops.iter().map(Vec::len).collect::<Vec<_>>(), vec![128, 73]);
    }

    #[test]
    fn intentions_allow_connections_and_deny_the_rest() {
        let e = env(None);
        let (api, db, cache) = (svc("api"), svc("db"), svc("cache"));
        let (a, b) = (conn("api", "db"), conn("cache", "db"));
        let dangling = conn("ghost", "db");
        let got = intentions(&e, &[&api, &db, &cache], &[&a, &b, &dangling]);
        assert_eq!(got.len(), 3);
        let db_entry = got
            .iter()
            .find(|i| i.destination == "shop-staging-db")
            .unwrap();
        assert_eq!(
            db_entry.sources,
            vec![
                IntentionSource {
                    name: "shop-staging-api".into(),
                    allow: true
                },
                IntentionSource {
                    name: "shop-staging-cache".into(),
                    allow: true
                },
                IntentionSource {
                    name: "*".into(),
                    allow: false
                },
            ]
        );
        let api_entry = got
            .iter()
            .find(|i| i.destination == "shop-staging-api")
            .unwrap();
        assert_eq!(
            api_entry.sources,
            vec![IntentionSource {
                name: "*".into(),
                allow: false
            }]
        );
    }

    #[test]
    fn the_first_claimant_of_a_host_and_path_gets_the_route() {
        let e = env(None);
        let expose = |s: &mut Service, host: &str, path: Option<&str>, at: i64| {
            s.spec.expose = Some(Box::new(ExposeSpec {
                host: host.into(),
                path: path.map(str::to_string),
            }));
            s.metadata.creation_timestamp =
                Some(Time(k8s_openapi::jiff::Timestamp::from_second(at).unwrap()));
        };
        let (mut first, mut later, mut other) = (svc("web"), svc("web2"), svc("docs"));
        expose(&mut later, "shop.example", None, 20);
        expose(&mut first, "shop.example", Some("/"), 10);
        expose(&mut other, "shop.example", Some("/docs"), 30);
        let got = routes(&[(&later, &e), (&first, &e), (&other, &e)]);
        let Exposure::Routed(route) = &got["shop-staging/web"] else {
            panic!("{got:?}")
        };
        assert_eq!(route.service, "shop-staging-web");
        assert_eq!(external_url(route, 8080), "http://shop.example:8080/");
        assert_eq!(
            got["shop-staging/web2"],
            Exposure::Conflict {
                host: "shop.example".into(),
                path: "/".into(),
                holder: "shop-staging/web".into()
            }
        );
        assert!(matches!(&got["shop-staging/docs"], Exposure::Routed(r) if r.path == "/docs"));

        // What the schema lets through but a gateway cannot route.
        let mut bad = svc("bad");
        expose(&mut bad, "shop..example", None, 40);
        let mut odd = svc("odd");
        expose(&mut odd, "odd.example", Some("/a b"), 50);
        let got = routes(&[(&bad, &e), (&odd, &e)]);
        assert!(
            matches!(&got["shop-staging/bad"], Exposure::InvalidExpose("InvalidHost", m) if m.contains("spec.expose.host"))
        );
        assert!(
            matches!(&got["shop-staging/odd"], Exposure::InvalidExpose("InvalidPath", m) if m.contains("spec.expose.path"))
        );
    }
}
