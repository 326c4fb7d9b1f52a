//! The Services and Connections of an environment as a graph: a node per
//! Service, an edge per Connection, and the ends that do not exist marked.
//! Pure; the CLI prints it as a table, DOT or Mermaid.

use std::collections::BTreeSet;

use kube::ResourceExt;
use mahler_api::{Connection, Service};

use crate::summary::{State, Summary};

/// One Connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub name: String,
    pub from: String,
    pub to: String,
    pub port: i32,
    /// Neither end is missing and the Connection is Ready.
    pub healthy: bool,
    /// The reason it is not (its Ready condition's), when it is not.
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    /// Services, by name.
    pub nodes: Vec<Summary>,
    pub edges: Vec<Edge>,
    /// Names a Connection uses that no Service has.
    pub missing: BTreeSet<String>,
}

impl Graph {
    pub fn of(services: &[Service], connections: &[Connection]) -> Self {
        let mut nodes: Vec<Summary> = services.iter().map(Summary::of_service).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let exists = |name: &str| nodes.iter().any(|n| n.name == name);
        let mut missing = BTreeSet::new();
        let mut edges = Vec::new();
        for c in connections {
            for end in [&c.spec.from, &c.spec.to] {
                if !exists(end) {
                    missing.insert(end.clone());
                }
            }
            let summary = Summary::of(
                c,
                c.status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default(),
            );
            let ends = exists(&c.spec.from) && exists(&c.spec.to);
            let healthy = ends && summary.state == State::Ready;
            edges.push(Edge {
                name: c.name_any(),
                from: c.spec.from.clone(),
                to: c.spec.to.clone(),
                port: c.spec.port,
                healthy,
                reason: (!healthy).then(|| {
                    if summary.reason.is_empty() {
                        "Unknown".to_string()
                    } else {
                        summary.reason.clone()
                    }
                }),
            });
        }
        edges.sort_by(|a, b| (&a.from, &a.to, &a.name).cmp(&(&b.from, &b.to, &b.name)));
        Graph {
            nodes,
            edges,
            missing,
        }
    }

    /// Graphviz DOT: broken edges dashed and red, missing ends dotted.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph mahler {\n  rankdir=LR;\n");
        for n in &self.nodes {
            out.push_str(&format!("  \"{}\";\n", n.name));
        }
        for m in &self.missing {
            out.push_str(&format!(
                "  \"{m}\" [style=dotted, label=\"{m} (missing)\"];\n"
            ));
        }
        for e in &self.edges {
            let style = if e.healthy {
                String::new()
            } else {
                format!(
                    ", style=dashed, color=red, tooltip=\"{}\"",
                    e.reason.as_deref().unwrap_or_default()
                )
            };
            out.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"{style}];\n",
                e.from, e.to, e.port
            ));
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid `flowchart LR`: broken edges dotted with their reason,
    /// missing ends drawn as dashed placeholders.
    pub fn to_mermaid(&self) -> String {
        let id = |name: &str| name.replace('-', "_");
        let mut out = String::from("flowchart LR\n");
        for n in &self.nodes {
            out.push_str(&format!("  {}[\"{}\"]\n", id(&n.name), n.name));
        }
        for m in &self.missing {
            out.push_str(&format!("  {}[\"{m} (missing)\"]:::missing\n", id(m)));
        }
        for e in &self.edges {
            if e.healthy {
                out.push_str(&format!(
                    "  {} -->|{}| {}\n",
                    id(&e.from),
                    e.port,
                    id(&e.to)
                ));
            } else {
                out.push_str(&format!(
                    "  {} -.->|\"{} {}\"| {}\n",
                    id(&e.from),
                    e.port,
                    e.reason.as_deref().unwrap_or_default(),
                    id(&e.to)
                ));
            }
        }
        if !self.missing.is_empty() {
            out.push_str("  classDef missing stroke-dasharray: 5 5\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{ConditionSet, ConnectionSpec, ConnectionStatus, Health, ServiceSpec};

    fn connection(name: &str, from: &str, to: &str, health: Health) -> Connection {
        let mut c = Connection::new(
            name,
            ConnectionSpec {
                from: from.into(),
                to: to.into(),
                port: 5432,
                env_prefix: None,
            },
        );
        let mut set = ConditionSet::default();
        set.apply(&health, None);
        c.status = Some(ConnectionStatus {
            conditions: set.into_vec(),
            ..Default::default()
        });
        c
    }

    #[test]
    fn missing_ends_and_broken_edges_are_marked() {
        let services = vec![
            Service::new("db", ServiceSpec::default()),
            Service::new("api", ServiceSpec::default()),
        ];
        let connections = vec![
            connection("api-db", "api", "db", Health::ready("ok")),
            connection(
                "api-cache",
                "api",
                "cache",
                Health::stalled("TargetNotFound", "no cache"),
            ),
        ];
        let g = Graph::of(&services, &connections);
        assert_eq!(
            g.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            vec!["api", "db"]
        );
        assert_eq!(g.missing.iter().collect::<Vec<_>>(), vec!["cache"]);
        assert!(g.edges.iter().any(|e| e.name == "api-db" && e.healthy));
        let broken = g.edges.iter().find(|e| e.name == "api-cache").unwrap();
        assert_eq!(broken.reason.as_deref(), Some("TargetNotFound"));
        let dot = g.to_dot();
        assert!(dot.contains("\"api\" -> \"db\" [label=\"5432\"];"), "{dot}");
        assert!(dot.contains("\"cache\" [style=dotted"), "{dot}");
        let mermaid = g.to_mermaid();
        assert!(mermaid.contains("  api -->|5432| db\n"), "{mermaid}");
        assert!(
            mermaid.contains("api -.->|\"5432 TargetNotFound\"| cache"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("cache[\"cache (missing)\"]:::missing"),
            "{mermaid}"
        );
    }
}
