//! JSON views the API computes (the connection graph, status events);
//! everything else it returns is the Kubernetes object as stored.

use schemars::JsonSchema;
use serde::Serialize;

use mahler_client::graph::Graph;
use mahler_client::summary::Summary;

#[derive(Serialize, JsonSchema, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GraphView {
    pub environment: String,
    /// One node per Service, in name order.
    pub nodes: Vec<NodeView>,
    /// One edge per Connection.
    pub edges: Vec<EdgeView>,
    /// Names Connections use that no Service has.
    pub missing: Vec<String>,
}

#[derive(Serialize, JsonSchema, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// `Ready`, `Progressing`, `Stalled` or `Unknown`.
    pub state: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanView>,
}

#[derive(Serialize, JsonSchema, Debug, PartialEq)]
pub struct PlanView {
    pub id: String,
    pub phase: String,
}

#[derive(Serialize, JsonSchema, Debug, PartialEq)]
pub struct EdgeView {
    /// The Connection's name.
    pub name: String,
    pub from: String,
    pub to: String,
    pub port: i32,
    /// Both ends exist and the Connection is Ready.
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn node(s: &Summary) -> NodeView {
    NodeView {
        name: s.name.clone(),
        state: s.state.as_str().to_string(),
        ready: s.state == mahler_client::summary::State::Ready,
        reason: s.reason.clone(),
        message: s.message.clone(),
        url: s.url.clone(),
        image: s.image.clone(),
        available_replicas: s.replicas.map(|r| r.0),
        replicas: s.replicas.map(|r| r.1),
        plan: s.plan.as_ref().map(|(id, phase)| PlanView {
            id: id.clone(),
            phase: phase.clone(),
        }),
    }
}

pub fn graph(env: &str, g: &Graph) -> GraphView {
    GraphView {
        environment: env.to_string(),
        nodes: g.nodes.iter().map(node).collect(),
        edges: g
            .edges
            .iter()
            .map(|e| EdgeView {
                name: e.name.clone(),
                from: e.from.clone(),
                to: e.to.clone(),
                port: e.port,
                healthy: e.healthy,
                reason: e.reason.clone(),
            })
            .collect(),
        missing: g.missing.iter().cloned().collect(),
    }
}

/// The data of a `status` server-sent event.
#[derive(Serialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    /// `Service` or `Connection`.
    pub kind: String,
    pub name: String,
    /// The Ready condition is True for the current generation.
    pub ready: bool,
    /// `Ready`, `Progressing`, `Stalled` or `Unknown`.
    pub state: String,
    pub reason: String,
    pub message: String,
    /// The object was deleted.
    pub deleted: bool,
}

impl StatusEvent {
    pub fn of(kind: &str, s: &Summary, deleted: bool) -> Self {
        StatusEvent {
            kind: kind.to_string(),
            name: s.name.clone(),
            ready: s.state == mahler_client::summary::State::Ready,
            state: s.state.as_str().to_string(),
            reason: s.reason.clone(),
            message: s.message.clone(),
            deleted,
        }
    }
}
