//! status, graph, explain: an environment read in one GET and one LIST per
//! kind (no per-object requests), printed by `render`.

use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use mahler_client::explain::Warning;
use mahler_client::summary::Summary;
use mahler_client::{Environment as EnvView, Graph};
use serde_json::json;

use super::Ctx;
use crate::args::Output;
use crate::error::{CliError, Result};
use crate::output::structured;
use crate::render;

async fn read(ctx: &Ctx, explicit: Option<&str>) -> Result<EnvView> {
    let name = ctx.cluster.environment_name(explicit)?;
    // The Environment first, for "did you mean"; then one LIST per kind.
    let environment = ctx.cluster.environment(&name).await?;
    let ns = environment.namespace_name();
    EnvView::read_in(&ctx.client(), environment)
        .await
        .map_err(ctx.cluster.err(&format!("the objects of {ns}")))
}

fn summary_json(s: &Summary) -> serde_json::Value {
    json!({
        "name": s.name,
        "state": s.state.as_str(),
        "reason": s.reason,
        "message": s.message,
        "url": s.url,
        "image": s.image,
        "replicas": s.replicas.map(|(a, d)| json!({"available": a, "desired": d})),
        "plan": s.plan.as_ref().map(|(id, phase)| json!({"id": id, "phase": phase})),
    })
}

pub async fn status(ctx: &Ctx, explicit: Option<&str>) -> Result<()> {
    let view = read(ctx, explicit).await?;
    let p = &ctx.printer;
    match p.format {
        Output::Table | Output::Wide => ctx.print(&render::status(p, &view)),
        Output::Name => {
            for s in &view.services {
                println!("{}", super::objects::qualified(s));
            }
        }
        f => {
            let e = &view.environment;
            let services: Vec<serde_json::Value> = view
                .services
                .iter()
                .map(|svc| {
                    let mut v = summary_json(&Summary::of_service(svc));
                    v["connectsTo"] = view
                        .connections
                        .iter()
                        .filter(|c| c.spec.from == svc.name_any())
                        .map(|c| json!({"service": c.spec.to, "port": c.spec.port, "connection": c.name_any()}))
                        .collect();
                    v
                })
                .collect();
            let value = json!({
                "environment": e.name_any(),
                "project": e.spec.project,
                "conditions": e.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
                "services": services,
            });
            ctx.print(&structured(f, &value)?);
        }
    }
    Ok(())
}

pub async fn graph(ctx: &Ctx, explicit: Option<&str>) -> Result<()> {
    let view = read(ctx, explicit).await?;
    let g: Graph = view.graph();
    let p = &ctx.printer;
    let text = match p.format {
        Output::Table | Output::Wide => render::graph_table(p, &g),
        Output::Dot => g.to_dot(),
        Output::Mermaid => g.to_mermaid(),
        Output::Name => {
            return Err(CliError::usage(
                "-o name: `graph` prints table, dot, mermaid, json or yaml",
            ));
        }
        f => {
            let value = json!({
                "nodes": g.nodes.iter().map(summary_json).collect::<Vec<_>>(),
                "edges": g.edges.iter().map(|e| json!({
                    "name": e.name, "from": e.from, "to": e.to, "port": e.port,
                    "healthy": e.healthy, "reason": e.reason,
                })).collect::<Vec<_>>(),
                "missing": g.missing,
            });
            structured(f, &value)?
        }
    };
    ctx.print(&text);
    Ok(())
}

pub async fn explain(ctx: &Ctx, name: &str) -> Result<()> {
    let view = read(ctx, None).await?;
    let ns = view.environment.namespace_name();
    if !view.services.iter().any(|s| s.name_any() == name) {
        return Err(ctx.cluster.missing_service(&ns, name).await);
    }
    // The Warning Events of the Service's Deployment, ReplicaSets and pods.
    let events = Api::<Event>::namespaced(ctx.client(), &ns)
        .list(&ListParams::default().fields("type=Warning"))
        .await
        .map_err(ctx.cluster.err(&format!("the events of {ns}")))?;
    let prefix = format!("{name}-");
    let mut warnings: Vec<Warning> = events
        .items
        .iter()
        .filter(|e| {
            e.involved_object
                .name
                .as_deref()
                .is_some_and(|n| n == name || n.starts_with(&prefix))
                && e.involved_object.kind.as_deref() != Some("Service")
        })
        .map(|e| Warning {
            object: format!(
                "{} {}",
                e.involved_object.kind.clone().unwrap_or_default(),
                e.involved_object.name.clone().unwrap_or_default()
            ),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default().trim().to_string(),
        })
        .collect();
    warnings.dedup();
    let steps = mahler_client::explain::explain(&view, name, &warnings)
        .expect("the service exists (checked above)");
    let p = &ctx.printer;
    match p.format {
        Output::Table | Output::Wide | Output::Name => ctx.print(&render::explain(p, name, &steps)),
        f => {
            let value: Vec<serde_json::Value> = steps
                .iter()
                .map(|s| {
                    json!({
                        "depth": s.depth, "object": s.object, "state": s.state.as_str(),
                        "reason": s.reason, "details": s.details, "next": s.next,
                    })
                })
                .collect();
            ctx.print(&structured(f, &value)?);
        }
    }
    Ok(())
}
