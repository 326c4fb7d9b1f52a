//! Why a Service is not Ready, as a chain: this Service waits for outputs of
//! db-credentials, which awaits approval of plan X by an owner of
//! shop-staging. Each step says what to do next. Pure: it reads one
//! environment (and the Warning Events of the Service's pods, when given).

use std::collections::BTreeSet;

use kube::ResourceExt;
use mahler_api::terraform::PlanPhase;
use mahler_api::{Approval, Owner, Service};

use crate::Environment;
use crate::summary::{State, Summary};

/// One link of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// How deep in the chain (0: the Service asked about).
    pub depth: usize,
    /// "Service api", "Connection api-db", "Environment shop-staging".
    pub object: String,
    pub state: State,
    pub reason: String,
    /// The condition's message, and any facts found on the way.
    pub details: Vec<String>,
    /// What to do, when this step is where the chain ends.
    pub next: Option<String>,
}

/// A Warning Event about one of the Service's pods or its Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub object: String,
    pub reason: String,
    pub message: String,
}

/// The chain for Service `name` (None when the environment has no such Service).
pub fn explain(env: &Environment, name: &str, warnings: &[Warning]) -> Option<Vec<Step>> {
    let svc = env.services.iter().find(|s| s.name_any() == name)?;
    let mut steps = Vec::new();
    let ns = env.environment.namespace_name();
    let env_summary = Summary::of(
        &env.environment,
        env.environment
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default(),
    );
    if env_summary.state != State::Ready {
        steps.push(Step {
            depth: 0,
            object: format!("Environment {ns}"),
            state: env_summary.state,
            reason: env_summary.reason.clone(),
            details: non_empty(env_summary.message),
            next: None,
        });
    }
    let mut seen = BTreeSet::new();
    walk(env, svc, 0, warnings, &mut seen, &mut steps);
    Some(steps)
}

fn non_empty(s: String) -> Vec<String> {
    if s.is_empty() { vec![] } else { vec![s] }
}

fn owners(owners: &[Owner]) -> String {
    let names: Vec<String> = owners
        .iter()
        .filter_map(|o| {
            o.user
                .as_ref()
                .map(|u| format!("user:{u}"))
                .or(o.group.as_ref().map(|g| format!("group:{g}")))
        })
        .collect();
    names.join(", ")
}

fn walk(
    env: &Environment,
    svc: &Service,
    depth: usize,
    warnings: &[Warning],
    seen: &mut BTreeSet<String>,
    steps: &mut Vec<Step>,
) {
    let name = svc.name_any();
    if !seen.insert(name.clone()) {
        return;
    }
    let ns = env.environment.namespace_name();
    let s = Summary::of_service(svc);
    let mut step = Step {
        depth,
        object: format!("Service {name}"),
        state: s.state,
        reason: s.reason.clone(),
        details: non_empty(s.message.clone()),
        next: None,
    };
    if s.state == State::Ready {
        steps.push(step);
        return;
    }
    if s.state == State::Unknown {
        let observed = svc.status.as_ref().and_then(|st| {
            st.conditions
                .iter()
                .filter_map(|c| c.observed_generation)
                .max()
        });
        step.reason = "NotObserved".into();
        step.details = vec![match observed {
            None => "the operator has not reported on this Service at all".into(),
            Some(g) => format!(
                "the operator last reported on generation {g}; the spec is at generation {}",
                svc.metadata.generation.unwrap_or_default()
            ),
        }];
        step.next = Some(
            "is the operator running? `kubectl -n mahler-system get deployment mahler` (its log names reconcile errors)".into(),
        );
        steps.push(step);
        return;
    }
    let producers: Vec<(String, String, String)> = svc
        .spec
        .env
        .iter()
        .filter_map(|v| {
            v.value_from
                .as_ref()
                .and_then(|f| f.service_output.as_ref())
                .map(|o| (v.name.clone(), o.service.clone(), o.key.clone()))
        })
        .collect();
    match s.reason.as_str() {
        "WaitingForOutputs" | "OutputUnavailable" => {
            let mut pending = Vec::new();
            for (variable, producer, key) in &producers {
                match env.services.iter().find(|p| &p.name_any() == producer) {
                    None => {
                        step.next = Some(format!(
                            "create Service {producer}, or change spec.env {variable} (`kubectl -n {ns} edit msvc {name}`)"
                        ));
                    }
                    Some(p) => {
                        let has_output = p
                            .status
                            .as_ref()
                            .is_some_and(|st| st.outputs_secret.is_some());
                        if !has_output || Summary::of_service(p).state != State::Ready {
                            pending.push((p, variable, key));
                        }
                    }
                }
            }
            if s.reason == "OutputUnavailable" && step.next.is_none() {
                step.next = Some(format!(
                    "change spec.env to an output the template publishes (`kubectl -n {ns} edit msvc {name}`)"
                ));
            }
            steps.push(step);
            for (p, _, _) in pending {
                walk(env, p, depth + 1, warnings, seen, steps);
            }
        }
        "AwaitingApproval" => {
            let plan = svc
                .status
                .as_ref()
                .and_then(|st| st.terraform.as_ref())
                .and_then(|tf| tf.plan.as_ref());
            let who = owners(&env.environment.spec.owners);
            if let Some(plan) = plan.filter(|p| p.phase == PlanPhase::Pending) {
                step.details = vec![format!(
                    "plan {} ({} to add, {} to change, {} to destroy) awaits approval by an owner of {ns}",
                    plan.id, plan.add, plan.change, plan.destroy
                )];
                step.details.extend(
                    plan.resources
                        .iter()
                        .map(|r| format!("{} {}", r.action, r.address)),
                );
                step.next = Some(if who.is_empty() {
                    format!(
                        "Environment {ns} has no owners, so nobody can approve: add spec.owners, then `mahler approve {name} --plan {}`",
                        plan.id
                    )
                } else {
                    format!(
                        "an owner ({who}) runs `mahler approve {name} --plan {} --env {ns}`",
                        plan.id
                    )
                });
            }
            steps.push(step);
        }
        "RollingOut" => {
            let related: Vec<&Warning> = warnings.iter().collect();
            step.details.extend(
                related
                    .iter()
                    .map(|w| format!("{}: {}: {}", w.object, w.reason, w.message)),
            );
            step.next = Some(if related.is_empty() {
                format!(
                    "pods are starting; `mahler deploy {name} --image ... --wait` or `mahler status {ns}` follows it"
                )
            } else {
                format!(
                    "the pods cannot start: see the events above and `kubectl -n {ns} describe pods -l mahler.dev/service={name}`"
                )
            });
            steps.push(step);
        }
        "RolloutFailed" => {
            step.details.extend(
                warnings
                    .iter()
                    .map(|w| format!("{}: {}: {}", w.object, w.reason, w.message)),
            );
            step.next = Some(format!(
                "the rollout missed its progress deadline: fix the image or resources (`mahler deploy {name} --image REF`), then check `mahler logs {name}`"
            ));
            steps.push(step);
        }
        "LockHeld" => {
            step.next = Some(
                "another OpenTofu run holds this Service's state lock; it is released when that run ends".into(),
            );
            steps.push(step);
        }
        _ => {
            let manual = svc
                .spec
                .source
                .template
                .as_ref()
                .is_some_and(|t| t.approval == Some(Approval::Manual));
            step.next = Some(match s.state {
                State::Stalled => format!(
                    "fix what the message names (`kubectl -n {ns} edit msvc {name}`); the operator retries on every change"
                ),
                _ if manual => format!("wait, or `mahler explain {name}` again"),
                _ => format!("the operator is working on it; `mahler status {ns}` shows progress"),
            });
            steps.push(step);
        }
    }
    // Broken outgoing connections do not stop the Service, but explain why
    // a variable is missing.
    for c in env
        .connections
        .iter()
        .filter(|c| c.spec.from == name && depth == 0)
    {
        let cs = Summary::of(
            c,
            c.status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
        );
        if cs.state != State::Ready {
            steps.push(Step {
                depth: depth + 1,
                object: format!("Connection {}", c.name_any()),
                state: cs.state,
                reason: cs.reason.clone(),
                details: non_empty(cs.message.clone()),
                next: Some(format!(
                    "create Service {} or fix the Connection (`kubectl -n {ns} edit mconn {}`)",
                    c.spec.to,
                    c.name_any()
                )),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{
        ConditionSet, EnvVar, EnvVarSource, EnvironmentSpec, Health, PlanStatus, ServiceOutputRef,
        ServiceSpec, TemplateSource, TerraformStatus,
    };

    fn with(svc: &mut Service, health: Health) {
        let mut set = ConditionSet::default();
        set.apply(&health, Some(1));
        svc.metadata.generation = Some(1);
        svc.status.get_or_insert_with(Default::default).conditions = set.into_vec();
    }

    #[test]
    fn a_service_waiting_for_outputs_leads_to_the_plan_and_its_approvers() {
        let mut api = Service::new("api", ServiceSpec::default());
        api.spec.env = vec![EnvVar {
            name: "DB_PASSWORD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                service_output: Some(ServiceOutputRef {
                    service: "db-credentials".into(),
                    key: "password".into(),
                }),
                ..Default::default()
            }),
        }];
        with(
            &mut api,
            Health::progressing("WaitingForOutputs", "spec.env DB_PASSWORD: waiting"),
        );
        let mut db = Service::new("db-credentials", ServiceSpec::default());
        db.spec.source.template = Some(Box::new(TemplateSource {
            name: "postgres-credentials".into(),
            approval: Some(Approval::Manual),
            ..Default::default()
        }));
        with(
            &mut db,
            Health::progressing("AwaitingApproval", "plan p1 awaits"),
        );
        db.status.as_mut().unwrap().terraform = Some(Box::new(TerraformStatus {
            plan: Some(PlanStatus {
                id: "p1".into(),
                add: 1,
                ..Default::default()
            }),
            ..Default::default()
        }));
        let mut environment = mahler_api::Environment::new(
            "shop-staging",
            EnvironmentSpec {
                project: "shop".into(),
                owners: vec![Owner {
                    user: Some("alice".into()),
                    group: None,
                }],
                ..Default::default()
            },
        );
        let mut set = ConditionSet::default();
        set.apply(&Health::ready("ok"), None);
        environment.status = Some(mahler_api::EnvironmentStatus {
            conditions: set.into_vec(),
            ..Default::default()
        });
        let env = Environment {
            environment,
            services: vec![api, db],
            connections: vec![],
        };
        let steps = explain(&env, "api", &[]).unwrap();
        assert_eq!(steps.len(), 2, "{steps:#?}");
        assert_eq!(
            (steps[0].object.as_str(), steps[0].reason.as_str()),
            ("Service api", "WaitingForOutputs")
        );
        assert_eq!(steps[1].depth, 1);
        assert_eq!(steps[1].reason, "AwaitingApproval");
        assert!(
            steps[1].next.as_deref().unwrap().contains("user:alice")
                && steps[1]
                    .next
                    .as_deref()
                    .unwrap()
                    .contains("mahler approve db-credentials --plan p1"),
            "{:?}",
            steps[1].next
        );
        assert!(explain(&env, "nope", &[]).is_none());
    }

    #[test]
    fn an_unobserved_service_points_at_the_operator() {
        let env = Environment {
            environment: mahler_api::Environment::new("shop-dev", EnvironmentSpec::default()),
            services: vec![Service::new("api", ServiceSpec::default())],
            connections: vec![],
        };
        let steps = explain(&env, "api", &[]).unwrap();
        let last = steps.last().unwrap();
        assert_eq!(last.reason, "NotObserved");
        assert!(last.next.as_deref().unwrap().contains("operator running"));
    }
}
