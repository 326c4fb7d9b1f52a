//! Connections as edges: which variables a Service's pods get from the
//! Connections that start at it, and why an edge cannot be honoured.
//!
//! Both the Service reconciler (to build the pod env) and the Connection
//! reconciler (to report the edge's status) call [`resolve_edges`], so the two
//! always agree.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::EnvVar as KubeEnvVar;
use kube::ResourceExt;

use mahler_api::{Connection, Protocol, Service};

/// What became of one Connection leaving a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeOutcome {
    /// Variables injected into `from`'s pods.
    Injected(Vec<String>),
    /// The `to` Service does not exist (yet).
    TargetMissing,
    /// `to` does not listen on the requested port.
    PortNotExposed { available: Vec<i32> },
    /// A variable this edge would inject is already set, by the Service's own
    /// `env` or by an earlier Connection (by name order).
    VariableConflict { variable: String, owner: String },
}

impl EdgeOutcome {
    /// kstatus reason and message for the Connection's Ready condition.
    pub fn reason_and_message(&self, conn: &Connection) -> (&'static str, String) {
        let spec = &conn.spec;
        match self {
            EdgeOutcome::Injected(vars) => (
                "Ready",
                format!(
                    "{} may reach {} on port {}; injected {}",
                    spec.from,
                    spec.to,
                    spec.port,
                    vars.join(", ")
                ),
            ),
            EdgeOutcome::TargetMissing => (
                "TargetNotFound",
                format!(
                    "spec.to: Service {} does not exist in namespace {}",
                    spec.to,
                    conn.namespace().unwrap_or_default()
                ),
            ),
            EdgeOutcome::PortNotExposed { available } => {
                let list = available
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let list = if list.is_empty() {
                    "none".to_string()
                } else {
                    list
                };
                (
                    "PortNotExposed",
                    format!(
                        "spec.port: Service {} does not expose port {} (its ports: {list})",
                        spec.to, spec.port
                    ),
                )
            }
            EdgeOutcome::VariableConflict { variable, owner } => (
                "VariableConflict",
                format!(
                    "variable {variable} is already set by {owner}; set spec.envPrefix to choose another prefix"
                ),
            ),
        }
    }
}

/// The resolved edges of one `from` Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Edges {
    /// Variables to add to the pods, sorted by Connection name then variable.
    pub env: Vec<KubeEnvVar>,
    /// Outcome per Connection name.
    pub outcomes: BTreeMap<String, EdgeOutcome>,
    /// `valueFrom.serviceOutput` variables, resolved to the producing
    /// Service's outputs Secret: variable → (Secret name, key).
    pub outputs: BTreeMap<String, (String, String)>,
    /// Hash of the outputs those variables read; on the pod template, so
    /// the pods re-roll when an output changes.
    pub outputs_hash: Option<String>,
}

impl Edges {
    /// Names of the Services whose variables were injected.
    pub fn connected_to(&self, connections: &[&Connection]) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for c in connections {
            if matches!(
                self.outcomes.get(&c.name_any()),
                Some(EdgeOutcome::Injected(_))
            ) {
                out.insert(c.spec.to.clone());
            }
        }
        out.into_iter().collect()
    }
}

/// Variable prefix of a Connection: `spec.envPrefix` or `to` upper-cased.
pub fn env_prefix(conn: &Connection) -> String {
    conn.spec
        .env_prefix
        .clone()
        .unwrap_or_else(|| conn.spec.to.to_uppercase().replace(['-', '.'], "_"))
}

/// Scheme of URLs pointing at `port` of `svc`: its appProtocol, else its
/// name when that is a well-known scheme, else tcp/udp.
pub fn url_scheme(svc: &Service, port: i32) -> String {
    const KNOWN: &[&str] = &[
        "http",
        "https",
        "grpc",
        "grpcs",
        "h2c",
        "ws",
        "wss",
        "postgres",
        "postgresql",
        "mysql",
        "redis",
        "amqp",
        "amqps",
        "mongodb",
        "nats",
        "kafka",
    ];
    let Some(p) = svc.spec.ports.iter().find(|p| p.port == port) else {
        return "tcp".into();
    };
    if let Some(app) = &p.app_protocol {
        return app.to_lowercase();
    }
    if KNOWN.contains(&p.name.as_str()) {
        return p.name.clone();
    }
    match p.protocol {
        Some(Protocol::Udp) => "udp".into(),
        _ => "tcp".into(),
    }
}

/// In-cluster host name of a Service.
pub fn service_host(name: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}")
}

/// Resolves the Connections leaving `from`. `connections` may contain any
/// Connections of the namespace; `lookup` finds a Service by name.
pub fn resolve_edges<'a>(
    from: &Service,
    connections: &[&Connection],
    lookup: impl Fn(&str) -> Option<&'a Service>,
    cluster_domain: &str,
) -> Edges {
    let namespace = from.namespace().unwrap_or_default();
    let from_name = from.name_any();
    let mut mine: Vec<&Connection> = connections
        .iter()
        .copied()
        .filter(|c| c.spec.from == from_name)
        .collect();
    mine.sort_by_key(|c| c.name_any());

    // Who set each variable: the Service's own env first, then edges in name order.
    let mut owners: BTreeMap<String, String> = from
        .spec
        .env
        .iter()
        .map(|e| (e.name.clone(), format!("Service {from_name} spec.env")))
        .collect();
    let mut edges = Edges::default();
    for conn in mine {
        let name = conn.name_any();
        let outcome = match lookup(&conn.spec.to) {
            None => EdgeOutcome::TargetMissing,
            Some(to) if !to.spec.ports.iter().any(|p| p.port == conn.spec.port) => {
                EdgeOutcome::PortNotExposed {
                    available: to.spec.ports.iter().map(|p| p.port).collect(),
                }
            }
            Some(to) => {
                let prefix = env_prefix(conn);
                let host = service_host(&conn.spec.to, &namespace, cluster_domain);
                let port = conn.spec.port.to_string();
                let url = format!("{}://{host}:{port}", url_scheme(to, conn.spec.port));
                let vars = [
                    (format!("{prefix}_HOST"), host),
                    (format!("{prefix}_PORT"), port),
                    (format!("{prefix}_URL"), url),
                ];
                match vars
                    .iter()
                    .find_map(|(n, _)| owners.get(n).map(|o| (n.clone(), o.clone())))
                {
                    Some((variable, owner)) => EdgeOutcome::VariableConflict { variable, owner },
                    None => {
                        for (n, v) in &vars {
                            owners.insert(n.clone(), format!("Connection {name}"));
                            edges.env.push(KubeEnvVar {
                                name: n.clone(),
                                value: Some(v.clone()),
                                value_from: None,
                            });
                        }
                        EdgeOutcome::Injected(vars.into_iter().map(|(n, _)| n).collect())
                    }
                }
            }
        };
        edges.outcomes.insert(name, outcome);
    }
    edges
}

/// Adds `<PREFIX>_CONSUL_HOST` (the target's Consul DNS name, from
/// `consul_host`) to every injected edge, for environments registered in
/// Consul (docs/consul.md). A name the Service's own `env` already sets is
/// left to it.
pub fn add_consul_hosts(
    edges: &mut Edges,
    from: &Service,
    connections: &[&Connection],
    consul_host: impl Fn(&str) -> Option<String>,
) {
    let own: BTreeSet<&str> = from.spec.env.iter().map(|e| e.name.as_str()).collect();
    for conn in connections {
        let Some(EdgeOutcome::Injected(vars)) = edges.outcomes.get_mut(&conn.name_any()) else {
            continue;
        };
        let Some(host) = consul_host(&conn.spec.to) else {
            continue;
        };
        let name = format!("{}_CONSUL_HOST", env_prefix(conn));
        if own.contains(name.as_str()) || vars.contains(&name) {
            continue;
        }
        vars.push(name.clone());
        edges.env.push(KubeEnvVar {
            name,
            value: Some(host),
            value_from: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{ConnectionSpec, EnvVar, ServicePort, ServiceSpec, Source};

    fn svc(name: &str, ports: &[(&str, i32)]) -> Service {
        let mut s = Service::new(
            name,
            ServiceSpec {
                source: Source {
                    image: Some("img".into()),
                    ..Default::default()
                },
                ports: ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: n.to_string(),
                        port: *p,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("shop-staging".into());
        s
    }

    fn conn(name: &str, from: &str, to: &str, port: i32) -> Connection {
        let mut c = Connection::new(
            name,
            ConnectionSpec {
                from: from.into(),
                to: to.into(),
                port,
                env_prefix: None,
            },
        );
        c.metadata.namespace = Some("shop-staging".into());
        c
    }

    #[test]
    fn consul_hosts_join_injected_edges_only() {
        let api = svc("api", &[("http", 8080)]);
        let db = svc("db", &[("postgres", 5432)]);
        let conns = [
            conn("api-db", "api", "db", 5432),
            conn("api-ghost", "api", "ghost", 1),
        ];
        let mut edges = resolve(&api, &conns, &[db]);
        let refs: Vec<&Connection> = conns.iter().collect();
        add_consul_hosts(&mut edges, &api, &refs, |to| {
            Some(format!("shop-staging-{to}.service.consul"))
        });
        let var = edges
            .env
            .iter()
            .find(|e| e.name == "DB_CONSUL_HOST")
            .unwrap();
        assert_eq!(var.value.as_deref(), Some("shop-staging-db.service.consul"));
        assert!(
            matches!(&edges.outcomes["api-db"], EdgeOutcome::Injected(v) if v.contains(&"DB_CONSUL_HOST".to_string()))
        );
        assert!(!edges.env.iter().any(|e| e.name == "GHOST_CONSUL_HOST"));
        // Idempotent.
        let before = edges.clone();
        add_consul_hosts(&mut edges, &api, &refs, |to| {
            Some(format!("shop-staging-{to}.service.consul"))
        });
        assert_eq!(edges, before);
    }

    fn resolve(from: &Service, conns: &[Connection], services: &[Service]) -> Edges {
        let refs: Vec<&Connection> = conns.iter().collect();
        resolve_edges(
            from,
            &refs,
            |n| services.iter().find(|s| s.name_any() == n),
            "cluster.local",
        )
    }

    #[test]
    fn injects_host_port_and_url() {
        let api = svc("api", &[("http", 8080)]);
        let db = svc("db", &[("postgres", 5432)]);
        let edges = resolve(&api, &[conn("api-db", "api", "db", 5432)], &[db]);
        let got: Vec<(String, String)> = edges
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("DB_HOST".into(), "db.shop-staging.svc.cluster.local".into()),
                ("DB_PORT".into(), "5432".into()),
                (
                    "DB_URL".into(),
                    "postgres://db.shop-staging.svc.cluster.local:5432".into()
                ),
            ]
        );
        assert_eq!(
            edges.outcomes["api-db"],
            EdgeOutcome::Injected(vec!["DB_HOST".into(), "DB_PORT".into(), "DB_URL".into()])
        );
    }

    #[test]
    fn hyphens_become_underscores_and_unknown_port_names_are_tcp() {
        let api = svc("api", &[]);
        let cache = svc("session-cache", &[("main", 6379)]);
        let edges = resolve(&api, &[conn("c", "api", "session-cache", 6379)], &[cache]);
        assert_eq!(edges.env[0].name, "SESSION_CACHE_HOST");
        assert_eq!(
            edges.env[2].value.as_deref(),
            Some("tcp://session-cache.shop-staging.svc.cluster.local:6379")
        );
    }

    #[test]
    fn missing_target_and_wrong_port_are_reported_not_injected() {
        let api = svc("api", &[]);
        let db = svc("db", &[("postgres", 5432)]);
        let edges = resolve(
            &api,
            &[conn("a", "api", "nope", 1), conn("b", "api", "db", 5433)],
            &[db],
        );
        assert!(edges.env.is_empty());
        assert_eq!(edges.outcomes["a"], EdgeOutcome::TargetMissing);
        assert_eq!(
            edges.outcomes["b"],
            EdgeOutcome::PortNotExposed {
                available: vec![5432]
            }
        );
    }

    #[test]
    fn explicit_env_wins_and_second_edge_to_same_prefix_conflicts() {
        let mut api = svc("api", &[]);
        api.spec.env.push(EnvVar {
            name: "CACHE_HOST".into(),
            value: Some("x".into()),
            value_from: None,
        });
        let db = svc("db", &[("a", 1), ("b", 2)]);
        let cache = svc("cache", &[("r", 6379)]);
        let edges = resolve(
            &api,
            &[
                conn("z-db2", "api", "db", 2),
                conn("a-db1", "api", "db", 1),
                conn("cache", "api", "cache", 6379),
            ],
            &[db, cache],
        );
        assert!(
            matches!(edges.outcomes["a-db1"], EdgeOutcome::Injected(_)),
            "first by name wins"
        );
        assert_eq!(
            edges.outcomes["z-db2"],
            EdgeOutcome::VariableConflict {
                variable: "DB_HOST".into(),
                owner: "Connection a-db1".into()
            }
        );
        assert_eq!(
            edges.outcomes["cache"],
            EdgeOutcome::VariableConflict {
                variable: "CACHE_HOST".into(),
                owner: "Service api spec.env".into()
            }
        );
        assert_eq!(edges.env.len(), 3);
    }

    #[test]
    fn connections_from_other_services_are_ignored() {
        let api = svc("api", &[]);
        let db = svc("db", &[("p", 1)]);
        let edges = resolve(&api, &[conn("w", "worker", "db", 1)], &[db]);
        assert!(edges.outcomes.is_empty() && edges.env.is_empty());
    }
}
