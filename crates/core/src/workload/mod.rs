//! What a Service and a Connection should produce, as pure functions: the
//! Deployment, the Kubernetes Service, the Connection's NetworkPolicy, and how
//! far a rollout has got.
//!
//! No client calls here; `controller::service` and `controller::connection`
//! apply what this builds.

mod edges;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar as KubeEnvVar, EnvVarSource as KubeEnvVarSource,
    HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Service as KubeService,
    ServicePort as KubeServicePort, ServiceSpec as KubeServiceSpec, TCPSocketAction,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

pub use edges::{
    EdgeOutcome, Edges, add_consul_hosts, env_prefix, resolve_edges, service_host, url_scheme,
};

use mahler_api::names::{CONNECTION_LABEL, MANAGED_BY, OUTPUTS_HASH_ANNOTATION, SERVICE_LABEL};
use mahler_api::{Connection, Protocol, Service};

/// Why a Service's spec cannot be turned into a workload (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecProblem {
    /// `source.git`: handled by an engine not enabled here.
    UnsupportedSource(&'static str),
    /// `healthCheck.port` names no port.
    UnknownHealthCheckPort(String),
    /// `env[].valueFrom.serviceOutput` points at outputs that do not exist.
    OutputUnavailable {
        variable: String,
        service: String,
        key: String,
    },
}

impl SpecProblem {
    pub fn reason_and_message(&self) -> (&'static str, String) {
        match self {
            SpecProblem::UnsupportedSource(kind) => (
                "UnsupportedSource",
                format!(
                    "spec.source.{kind}: this operator builds image sources only; {kind} sources are not enabled yet"
                ),
            ),
            SpecProblem::UnknownHealthCheckPort(p) => (
                "InvalidSpec",
                format!("spec.healthCheck.port: no port named {p} in spec.ports"),
            ),
            SpecProblem::OutputUnavailable {
                variable,
                service,
                key,
            } => (
                "OutputUnavailable",
                format!("spec.env {variable}: output {key} of Service {service} is not available"),
            ),
        }
    }
}

/// Labels on everything built for a Service, and on its pods.
pub fn labels(svc: &Service) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        ("app.kubernetes.io/name".to_string(), svc.name_any()),
        (SERVICE_LABEL.to_string(), svc.name_any()),
    ])
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(SERVICE_LABEL.to_string(), name.to_string())])
}

fn child_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// The image a Service runs, or why it has none.
pub fn image(svc: &Service) -> Result<&str, SpecProblem> {
    let source = &svc.spec.source;
    match (&source.image, &source.git, &source.template) {
        (Some(image), _, _) => Ok(image),
        (None, Some(_), _) => Err(SpecProblem::UnsupportedSource("git")),
        _ => Err(SpecProblem::UnsupportedSource("template")),
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".into())),
            ("memory".to_string(), Quantity("64Mi".into())),
        ])),
        ..Default::default()
    }
}

fn probe(svc: &Service) -> Result<Option<Probe>, SpecProblem> {
    let Some(first) = svc.spec.ports.first() else {
        return Ok(None);
    };
    let check = svc.spec.health_check.clone().unwrap_or_default();
    let port_name = match &check.port {
        Some(p) if !svc.spec.ports.iter().any(|sp| &sp.name == p) => {
            return Err(SpecProblem::UnknownHealthCheckPort(p.clone()));
        }
        Some(p) => p.clone(),
        None => first.name.clone(),
    };
    let port = IntOrString::String(port_name);
    Ok(Some(match check.path {
        Some(path) => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path),
                port,
                ..Default::default()
            }),
            period_seconds: Some(10),
            ..Default::default()
        },
        None => Probe {
            tcp_socket: Some(TCPSocketAction {
                port,
                ..Default::default()
            }),
            period_seconds: Some(10),
            ..Default::default()
        },
    }))
}

fn container_env(svc: &Service, edges: &Edges) -> Result<Vec<KubeEnvVar>, SpecProblem> {
    let mut env = Vec::with_capacity(svc.spec.env.len() + edges.env.len());
    for var in &svc.spec.env {
        let value_from = match &var.value_from {
            None => None,
            Some(from) => {
                if let Some(out) = &from.service_output {
                    // Resolved by the controller (it knows the producer's state).
                    let Some((secret, key)) = edges.outputs.get(&var.name) else {
                        return Err(SpecProblem::OutputUnavailable {
                            variable: var.name.clone(),
                            service: out.service.clone(),
                            key: out.key.clone(),
                        });
                    };
                    env.push(KubeEnvVar {
                        name: var.name.clone(),
                        value: None,
                        value_from: Some(KubeEnvVarSource {
                            secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                                name: secret.clone(),
                                key: key.clone(),
                                optional: None,
                            }),
                            ..Default::default()
                        }),
                    });
                    continue;
                }
                Some(KubeEnvVarSource {
                    secret_key_ref: from.secret_key_ref.clone(),
                    config_map_key_ref: from.config_map_key_ref.clone(),
                    ..Default::default()
                })
            }
        };
        env.push(KubeEnvVar {
            name: var.name.clone(),
            // The API server drops an empty value; sending one would look
            // like drift on every pass.
            value: var.value.clone().filter(|v| !v.is_empty()),
            value_from,
        });
    }
    env.extend(edges.env.iter().cloned());
    Ok(env)
}

/// The Deployment running an image Service, with the variables its
/// Connections inject. Changing those variables rolls the pods.
pub fn desired_deployment(svc: &Service, edges: &Edges) -> Result<Deployment, SpecProblem> {
    let name = svc.name_any();
    let image = image(svc)?.to_string();
    let probe = probe(svc)?;
    let env = container_env(svc, edges)?;
    let ports: Vec<ContainerPort> = svc
        .spec
        .ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(p.name.clone()),
            container_port: p.port,
            protocol: Some(protocol(p.protocol).to_string()),
            ..Default::default()
        })
        .collect();
    let container = Container {
        name: name.clone(),
        image: Some(image),
        command: non_empty(svc.spec.command.clone()),
        args: non_empty(svc.spec.args.clone()),
        env: non_empty(env),
        ports: non_empty(ports),
        resources: Some(
            svc.spec
                .resources
                .as_deref()
                .cloned()
                .unwrap_or_else(default_resources),
        ),
        readiness_probe: probe.clone(),
        liveness_probe: probe.map(|p| Probe {
            failure_threshold: Some(6),
            ..p
        }),
        ..Default::default()
    };
    Ok(Deployment {
        metadata: child_meta(svc, name.clone(), labels(svc)),
        spec: Some(DeploymentSpec {
            replicas: Some(svc.spec.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(svc)),
                    annotations: edges.outputs_hash.as_ref().map(|h| {
                        BTreeMap::from([(OUTPUTS_HASH_ANNOTATION.to_string(), h.clone())])
                    }),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The ClusterIP Service in front of the pods; `None` when no ports are declared.
pub fn desired_kube_service(svc: &Service) -> Option<KubeService> {
    if svc.spec.ports.is_empty() {
        return None;
    }
    let ports = svc
        .spec
        .ports
        .iter()
        .map(|p| KubeServicePort {
            name: Some(p.name.clone()),
            port: p.port,
            target_port: Some(IntOrString::String(p.name.clone())),
            protocol: Some(protocol(p.protocol).to_string()),
            app_protocol: p.app_protocol.clone(),
            ..Default::default()
        })
        .collect();
    Some(KubeService {
        metadata: child_meta(svc, svc.name_any(), labels(svc)),
        spec: Some(KubeServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(&svc.name_any())),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    })
}

/// In-cluster URL of a Service's first port.
pub fn service_url(svc: &Service, cluster_domain: &str) -> Option<String> {
    let port = svc.spec.ports.first()?;
    let host = service_host(
        &svc.name_any(),
        &svc.namespace().unwrap_or_default(),
        cluster_domain,
    );
    Some(format!(
        "{}://{host}:{}",
        url_scheme(svc, port.port),
        port.port
    ))
}

/// Name of the NetworkPolicy a Connection owns.
pub fn connection_policy_name(conn: &Connection) -> String {
    format!("mahler-connection-{}", conn.name_any())
}

/// Admits traffic from `from`'s pods to `to`'s pods on the Connection's port.
pub fn desired_connection_policy(conn: &Connection, to: &Service) -> NetworkPolicy {
    let port = to.spec.ports.iter().find(|p| p.port == conn.spec.port);
    let mut labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (CONNECTION_LABEL.to_string(), conn.name_any()),
    ]);
    labels.insert("app.kubernetes.io/name".into(), conn.spec.to.clone());
    NetworkPolicy {
        metadata: child_meta(conn, connection_policy_name(conn), labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(&conn.spec.to)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(selector(&conn.spec.from)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(conn.spec.port)),
                    protocol: Some(protocol(port.and_then(|p| p.protocol)).to_string()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

/// How far a Deployment's rollout has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    Complete { available: i32 },
    InProgress { message: String, available: i32 },
    Failed { message: String },
}

/// What of a Deployment's status a rollout judgement reads (all a cached
/// Deployment keeps of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutStatus {
    /// False until the Deployment controller has written a status.
    pub reported: bool,
    pub observed_generation: i64,
    pub replicas: i32,
    pub updated: i32,
    pub available: i32,
    /// The Progressing condition's message, once the progress deadline passed.
    pub deadline_exceeded: Option<String>,
}

impl RolloutStatus {
    pub fn of(status: &DeploymentStatus) -> Self {
        let deadline_exceeded = status
            .conditions
            .iter()
            .flatten()
            .find(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
            .map(|c| {
                c.message
                    .clone()
                    .unwrap_or_else(|| "rollout exceeded its progress deadline".into())
            });
        RolloutStatus {
            reported: true,
            observed_generation: status.observed_generation.unwrap_or(0),
            replicas: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            deadline_exceeded,
        }
    }
}

/// Reads the rollout of a Deployment of `desired` replicas at `generation`
/// the way `kubectl rollout status` does.
pub fn rollout(desired: i32, generation: i64, status: &RolloutStatus) -> Rollout {
    if !status.reported {
        return Rollout::InProgress {
            message: "waiting for the Deployment controller".into(),
            available: 0,
        };
    }
    let available = status.available;
    if status.observed_generation < generation {
        return Rollout::InProgress {
            message: "waiting for the Deployment controller to observe the new spec".into(),
            available,
        };
    }
    if let Some(message) = &status.deadline_exceeded {
        return Rollout::Failed {
            message: message.clone(),
        };
    }
    let (updated, total) = (status.updated, status.replicas);
    if updated < desired {
        return Rollout::InProgress {
            message: format!("{updated} of {desired} replicas updated"),
            available,
        };
    }
    if total > updated {
        return Rollout::InProgress {
            message: format!("{} old replicas pending termination", total - updated),
            available,
        };
    }
    if available < updated {
        return Rollout::InProgress {
            message: format!("{available} of {updated} updated replicas available"),
            available,
        };
    }
    Rollout::Complete { available }
}

fn protocol(p: Option<Protocol>) -> &'static str {
    match p {
        Some(Protocol::Udp) => "UDP",
        _ => "TCP",
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() { None } else { Some(v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use mahler_api::{ConnectionSpec, EnvVar, HealthCheck, ServicePort, ServiceSpec, Source};

    fn api() -> Service {
        let mut s = Service::new(
            "api",
            ServiceSpec {
                source: Source {
                    image: Some("registry.example/shop/api:1.4.2".into()),
                    ..Default::default()
                },
                replicas: Some(2),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 8080,
                    ..Default::default()
                }],
                env: vec![EnvVar {
                    name: "LOG_LEVEL".into(),
                    value: Some("info".into()),
                    value_from: None,
                }],
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("shop-staging".into());
        s.metadata.uid = Some("u1".into());
        s
    }

    #[test]
    fn deployment_runs_the_image_with_ports_env_probes_and_resources() {
        let d = desired_deployment(&api(), &Edges::default()).unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("api"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Service"
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/shop/api:1.4.2"));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
        assert_eq!(c.env.as_ref().unwrap()[0].name, "LOG_LEVEL");
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            IntOrString::String("http".into())
        );
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"],
            Quantity("50m".into())
        );
    }

    #[test]
    fn http_health_check_uses_its_path() {
        let mut s = api();
        s.spec.health_check = Some(Box::new(HealthCheck {
            path: Some("/healthz".into()),
            port: None,
        }));
        let d = desired_deployment(&s, &Edges::default()).unwrap();
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
    }

    #[test]
    fn unknown_health_check_port_is_a_spec_problem() {
        let mut s = api();
        s.spec.health_check = Some(Box::new(HealthCheck {
            path: None,
            port: Some("admin".into()),
        }));
        let err = desired_deployment(&s, &Edges::default()).unwrap_err();
        assert_eq!(err.reason_and_message().0, "InvalidSpec");
        assert!(err.reason_and_message().1.contains("spec.healthCheck.port"));
    }

    #[test]
    fn template_sources_are_not_built_here() {
        let mut s = api();
        s.spec.source = Source {
            template: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            desired_deployment(&s, &Edges::default()).unwrap_err(),
            SpecProblem::UnsupportedSource("template")
        );
    }

    #[test]
    fn kube_service_targets_named_ports_and_is_absent_without_ports() {
        let svc = desired_kube_service(&api()).unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.selector.unwrap()[SERVICE_LABEL], "api");
        assert_eq!(
            spec.ports.unwrap()[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        let mut worker = api();
        worker.spec.ports.clear();
        assert!(desired_kube_service(&worker).is_none());
        assert_eq!(
            service_url(&api(), "cluster.local").as_deref(),
            Some("http://api.shop-staging.svc.cluster.local:8080")
        );
    }

    #[test]
    fn connection_policy_admits_from_to_on_port() {
        let mut db = api();
        db.metadata.name = Some("db".into());
        db.spec.ports = vec![ServicePort {
            name: "pg".into(),
            port: 5432,
            ..Default::default()
        }];
        let mut c = Connection::new(
            "api-db",
            ConnectionSpec {
                from: "api".into(),
                to: "db".into(),
                port: 5432,
                env_prefix: None,
            },
        );
        c.metadata.namespace = Some("shop-staging".into());
        c.metadata.uid = Some("c1".into());
        let np = desired_connection_policy(&c, &db);
        assert_eq!(
            np.metadata.name.as_deref(),
            Some("mahler-connection-api-db")
        );
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()[SERVICE_LABEL],
            "db"
        );
        let rule = &spec.ingress.unwrap()[0];
        assert_eq!(
            rule.from.as_ref().unwrap()[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[SERVICE_LABEL],
            "api"
        );
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(5432))
        );
    }

    /// The rollout of the `api` Service's Deployment (2 replicas).
    fn rollout_at(generation: i64, status: DeploymentStatus) -> Rollout {
        let d = desired_deployment(&api(), &Edges::default()).unwrap();
        let desired = d.spec.unwrap().replicas.unwrap();
        rollout(desired, generation, &RolloutStatus::of(&status))
    }

    #[test]
    fn rollout_follows_kubectl_rollout_status() {
        let done = DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        };
        assert_eq!(
            rollout_at(2, done.clone()),
            Rollout::Complete { available: 2 }
        );
        assert!(
            matches!(rollout_at(3, done.clone()), Rollout::InProgress { .. }),
            "new generation not observed"
        );
        let surge = DeploymentStatus {
            replicas: Some(3),
            ..done.clone()
        };
        assert!(
            matches!(rollout_at(2, surge), Rollout::InProgress { .. }),
            "old replicas still running"
        );
        let unavailable = DeploymentStatus {
            available_replicas: Some(1),
            ..done
        };
        assert_eq!(
            rollout_at(2, unavailable),
            Rollout::InProgress {
                message: "1 of 2 updated replicas available".into(),
                available: 1
            }
        );
    }
}
