//! What the read commands print, as pure functions of the objects (snapshot
//! tested on a fixed environment): the list tables of each kind, `status`,
//! `graph` and `explain`.

use kube::ResourceExt;
use mahler_api::{Connection, Environment, Project, Service};
use mahler_client::explain::Step;
use mahler_client::summary::{State, Summary};
use mahler_client::{Environment as EnvView, Graph};

use crate::output::{Printer, age};

fn ready_column(p: &Printer, s: &Summary) -> String {
    p.state(s.state)
}

fn reason(s: &Summary) -> String {
    if s.state == State::Ready {
        String::new()
    } else {
        s.reason.clone()
    }
}

fn conditions_of(
    c: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
    c.map(Vec::as_slice).unwrap_or_default()
}

pub fn projects(p: &Printer, items: &[Project], wide: bool) -> String {
    let rows = items
        .iter()
        .map(|o| {
            let s = Summary::of(o, conditions_of(o.status.as_ref().map(|s| &s.conditions)));
            let envs = o
                .status
                .as_ref()
                .map(|s| s.environments.join(","))
                .unwrap_or_default();
            let mut row = vec![
                o.name_any(),
                o.spec.display_name.clone().unwrap_or_default(),
                envs,
                ready_column(p, &s),
                age(o.metadata.creation_timestamp.as_ref()),
            ];
            if wide {
                row.push(o.spec.members.len().to_string());
                row.push(reason(&s));
            }
            row
        })
        .collect();
    let mut headers = vec!["name", "display name", "environments", "ready", "age"];
    if wide {
        headers.extend(["members", "reason"]);
    }
    p.table(&headers, rows)
}

pub fn environments(p: &Printer, items: &[Environment], wide: bool) -> String {
    let rows = items
        .iter()
        .map(|o| {
            let s = Summary::of(o, conditions_of(o.status.as_ref().map(|s| &s.conditions)));
            let mut row = vec![
                o.name_any(),
                o.spec.project.clone(),
                ready_column(p, &s),
                reason(&s),
                age(o.metadata.creation_timestamp.as_ref()),
            ];
            if wide {
                row.push(o.spec.protected.unwrap_or(false).to_string());
                row.push(
                    o.spec
                        .owners
                        .iter()
                        .filter_map(|w| w.user.clone().or(w.group.clone()))
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            row
        })
        .collect();
    let mut headers = vec!["name", "project", "ready", "reason", "age"];
    if wide {
        headers.extend(["protected", "owners"]);
    }
    p.table(&headers, rows)
}

fn source(svc: &Service) -> String {
    let src = &svc.spec.source;
    if let Some(i) = &src.image {
        i.clone()
    } else if let Some(t) = &src.template {
        format!("template:{}", t.name)
    } else if let Some(g) = &src.git {
        format!("git:{}", g.url)
    } else {
        String::new()
    }
}

fn replicas(s: &Summary) -> String {
    s.replicas
        .map(|(a, d)| format!("{a}/{d}"))
        .unwrap_or_default()
}

pub fn services(p: &Printer, items: &[Service], wide: bool) -> String {
    let rows = items
        .iter()
        .map(|svc| {
            let s = Summary::of_service(svc);
            let mut row = vec![
                svc.name_any(),
                ready_column(p, &s),
                reason(&s),
                source(svc),
                replicas(&s),
                age(svc.metadata.creation_timestamp.as_ref()),
            ];
            if wide {
                row.push(s.url.clone().unwrap_or_default());
                row.push(
                    s.plan
                        .as_ref()
                        .map(|(id, phase)| format!("{id} {phase}"))
                        .unwrap_or_default(),
                );
            }
            row
        })
        .collect();
    let mut headers = vec!["name", "ready", "reason", "source", "replicas", "age"];
    if wide {
        headers.extend(["url", "plan"]);
    }
    p.table(&headers, rows)
}

pub fn connections(p: &Printer, items: &[Connection], wide: bool) -> String {
    let rows = items
        .iter()
        .map(|c| {
            let s = Summary::of(c, conditions_of(c.status.as_ref().map(|s| &s.conditions)));
            let mut row = vec![
                c.name_any(),
                c.spec.from.clone(),
                c.spec.to.clone(),
                c.spec.port.to_string(),
                ready_column(p, &s),
                reason(&s),
            ];
            if wide {
                row.push(
                    c.status
                        .as_ref()
                        .map(|s| s.variables.join(","))
                        .unwrap_or_default(),
                );
            }
            row
        })
        .collect();
    let mut headers = vec!["name", "from", "to", "port", "ready", "reason"];
    if wide {
        headers.push("variables");
    }
    p.table(&headers, rows)
}

/// `mahler status`: the environment's conditions, then one row per Service.
pub fn status(p: &Printer, env: &EnvView) -> String {
    let e = &env.environment;
    let es = Summary::of(e, conditions_of(e.status.as_ref().map(|s| &s.conditions)));
    let mut out = format!(
        "{} {} (project {}){}\n",
        p.bold("Environment"),
        p.bold(&e.name_any()),
        e.spec.project,
        if e.spec.protected == Some(true) {
            ", protected"
        } else {
            ""
        }
    );
    for c in conditions_of(e.status.as_ref().map(|s| &s.conditions)) {
        out.push_str(&format!(
            "  {:<12} {:<6} {}{}\n",
            c.type_,
            c.status,
            c.reason,
            if c.message.is_empty() {
                String::new()
            } else {
                format!(": {}", c.message)
            }
        ));
    }
    if es.state == State::Unknown {
        out.push_str(&format!(
            "  {}\n",
            p.yellow("not observed by the operator yet: is it running? (kubectl -n mahler-system get deployment mahler)")
        ));
    }
    out.push('\n');
    if env.services.is_empty() {
        out.push_str("No services. Create one: mahler service create NAME --image REF --env ");
        out.push_str(&e.name_any());
        out.push('\n');
        return out;
    }
    let outgoing = |name: &str| -> String {
        let mut edges: Vec<String> = env
            .connections
            .iter()
            .filter(|c| c.spec.from == name)
            .map(|c| {
                let cs = Summary::of(c, conditions_of(c.status.as_ref().map(|s| &s.conditions)));
                if cs.state == State::Ready {
                    format!("{}:{}", c.spec.to, c.spec.port)
                } else {
                    format!("{}:{} ({})", c.spec.to, c.spec.port, p.red(&cs.reason))
                }
            })
            .collect();
        edges.sort();
        edges.join(", ")
    };
    let rows = env
        .services
        .iter()
        .map(|svc| {
            let s = Summary::of_service(svc);
            let image = s.image.clone().unwrap_or_else(|| source(svc));
            vec![
                svc.name_any(),
                ready_column(p, &s),
                reason(&s),
                s.url.clone().unwrap_or_default(),
                image,
                replicas(&s),
                s.plan
                    .as_ref()
                    .map(|(id, phase)| format!("{id} {phase}"))
                    .unwrap_or_default(),
                outgoing(&svc.name_any()),
            ]
        })
        .collect();
    out.push_str(&p.table(
        &[
            "service",
            "ready",
            "reason",
            "url",
            "image",
            "replicas",
            "plan",
            "connects to",
        ],
        rows,
    ));
    let ready = env
        .services
        .iter()
        .filter(|s| Summary::of_service(s).state == State::Ready)
        .count();
    out.push_str(&format!(
        "\n{ready}/{} services Ready, {} connections\n",
        env.services.len(),
        env.connections.len()
    ));
    out
}

/// `mahler graph` as a table: one row per edge, broken ones marked.
pub fn graph_table(p: &Printer, g: &Graph) -> String {
    let mut rows: Vec<Vec<String>> = g
        .edges
        .iter()
        .map(|e| {
            let mark = |end: &str| {
                if g.missing.contains(end) {
                    format!("{end} {}", p.red("(missing)"))
                } else {
                    end.to_string()
                }
            };
            vec![
                mark(&e.from),
                mark(&e.to),
                e.port.to_string(),
                e.name.clone(),
                if e.healthy {
                    p.green("ok")
                } else {
                    p.red(&format!(
                        "broken: {}",
                        e.reason.as_deref().unwrap_or_default()
                    ))
                },
            ]
        })
        .collect();
    for n in &g.nodes {
        let connected = g.edges.iter().any(|e| e.from == n.name || e.to == n.name);
        if !connected {
            rows.push(vec![
                n.name.clone(),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    if rows.is_empty() {
        return "No services or connections.\n".into();
    }
    p.table(&["from", "to", "port", "connection", "edge"], rows)
}

/// `mahler explain`: the chain, indented by depth, with what to do next.
pub fn explain(p: &Printer, service: &str, steps: &[Step]) -> String {
    let mut out = String::new();
    if steps.len() == 1 && steps[0].state == State::Ready {
        let detail = steps[0].details.first().cloned().unwrap_or_default();
        return format!(
            "Service {service} is {}{}\n",
            p.green("Ready"),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
    }
    for step in steps {
        let indent = "   ".repeat(step.depth);
        let lead = if step.depth == 0 { "" } else { "└─ " };
        out.push_str(&format!(
            "{indent}{lead}{} is {}{}\n",
            p.bold(&step.object),
            p.state(step.state),
            if step.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", step.reason)
            }
        ));
        let pad = format!("{indent}{}", if step.depth == 0 { "  " } else { "     " });
        for d in &step.details {
            out.push_str(&format!("{pad}{d}\n"));
        }
        if let Some(next) = &step.next {
            out.push_str(&format!("{pad}{} {next}\n", p.bold("next:")));
        }
    }
    out
}
