//! Service reconciler: an image Service becomes a Deployment (with the
//! variables its Connections inject) and a ClusterIP Service; status follows
//! the rollout.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::GetParams;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{
    Child, ChildKind, ChildStore, Context, Error, ScopedApi, apply, consul, status,
    template_service,
};
use mahler_api::{Connection, Health, Service, ServiceStatus};
use mahler_core::workload::{self, Rollout};

#[tracing::instrument(name = "reconcile", skip_all, fields(service = %svc.name_any(), namespace = svc.namespace().unwrap_or_default()))]
pub(crate) async fn pass(svc: &Service, ctx: &Context) -> Result<Action, Error> {
    if let Some(src) = &svc.spec.source.template {
        return template_service::pass(svc, ctx, src).await;
    }
    // Deleted, or its namespace is: the garbage collector / namespace
    // controller removes the children; writing now would be refused.
    if svc.meta().deletion_timestamp.is_some()
        || ctx
            .caches
            .namespace_terminating(&svc.namespace().unwrap_or_default())
    {
        // Children carry owner references; the garbage collector removes them.
        return Ok(Action::await_change());
    }
    let ns = svc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = svc.name_any();
    // Only the Connections leaving this Service: the ones `resolve_edges`
    // and `connected_to` look at.
    let connections = ctx.caches.connections_from(&ns, &name);
    let conn_refs: Vec<&Connection> = connections.iter().collect();
    let targets: Vec<Service> = connections
        .iter()
        .filter_map(|c| ctx.caches.service(&ns, &c.spec.to))
        .collect();
    let mut edges = workload::resolve_edges(
        svc,
        &conn_refs,
        |n| targets.iter().find(|t| t.name_any() == n),
        &ctx.settings.cluster_domain,
    );
    let env = ctx.caches.environment(&ns);
    if let (Some(mesh), Some(env)) = (&ctx.mesh, &env) {
        workload::add_consul_hosts(&mut edges, svc, &conn_refs, |to| mesh.dns_host(env, to));
    }
    if let Some(env) = &env {
        // OTEL_* of an environment with telemetry; a variable the Service
        // sets itself wins.
        let own = |n: &str| svc.spec.env.iter().any(|v| v.name == n);
        edges.env.extend(
            mahler_core::telemetry::service_env(env, svc, &ctx.settings.cluster_domain)
                .into_iter()
                .filter(|v| !own(&v.name)),
        );
    }
    let connected_to = edges.connected_to(&conn_refs);

    let mut status = ServiceStatus {
        observed_generation: svc.meta().generation,
        url: workload::service_url(svc, &ctx.settings.cluster_domain),
        image: workload::image(svc).ok().map(str::to_string),
        replicas: Some(svc.spec.replicas.unwrap_or(1)),
        connected_to,
        ..Default::default()
    };

    match resolve_outputs(ctx, svc) {
        Ok((outputs, hash)) => {
            edges.outputs = outputs;
            edges.outputs_hash = hash;
        }
        Err(health) => return finish(ctx, svc, status, health).await,
    }
    let deployment = match workload::desired_deployment(svc, &edges) {
        Ok(d) => d,
        Err(problem) => {
            // Leave whatever runs now untouched: no half-applied change.
            let (reason, message) = problem.reason_and_message();
            return finish(ctx, svc, status, Health::stalled(reason, message)).await;
        }
    };
    let observed_deploy = owned_child::<Deployment>(ctx, &ctx.caches.deployments, svc).await?;
    let observed_svc = owned_child::<KubeService>(ctx, &ctx.caches.kube_services, svc).await?;
    if let Some(conflict) = [observed_deploy.as_ref().err(), observed_svc.as_ref().err()]
        .into_iter()
        .flatten()
        .next()
    {
        return finish(
            ctx,
            svc,
            status,
            Health::stalled("NameConflict", conflict.clone()),
        )
        .await;
    }
    let (observed_deploy, observed_svc) =
        (observed_deploy.ok().flatten(), observed_svc.ok().flatten());

    let mut wrote = apply::apply(ctx, deployment, observed_deploy.clone().into()).await?;
    match (workload::desired_kube_service(svc), &observed_svc) {
        (Some(desired), observed) => {
            wrote |= apply::apply(ctx, desired, observed.clone().into()).await?
        }
        (None, Some(stale)) => {
            apply::delete_child::<KubeService, _>(ctx, &ns, &name, stale).await?
        }
        (None, None) => {}
    }

    let desired = svc.spec.replicas.unwrap_or(1);
    let rollout = observed_deploy
        .as_ref()
        .map(|d| workload::rollout(desired, d.generation, &d.status));
    // One message per available-replica count, not per rollout step: a
    // new one-replica Service then writes its status twice (rolling out,
    // Ready) instead of at every Deployment status change. The step is in
    // the Deployment's own status (`kubectl rollout status`).
    let rolling_out = |available: i32| {
        Health::progressing(
            "RollingOut",
            format!("rolling out: {available} of {desired} replica(s) available"),
        )
    };
    // Set even before the Deployment reports, so the status does not change
    // again (and cost a write) when it first reports 0 available.
    let available = match &rollout {
        Some(Rollout::InProgress { available, .. } | Rollout::Complete { available }) => *available,
        Some(Rollout::Failed { .. }) | None => svc
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    };
    status.available_replicas = Some(available);
    let health = match rollout {
        Some(Rollout::Complete { .. }) if !wrote => {
            let at = status
                .url
                .as_deref()
                .map(|u| format!(" at {u}"))
                .unwrap_or_default();
            Health::ready(format!("{available} replica(s) available{at}"))
        }
        Some(Rollout::Failed { message }) if !wrote => Health::stalled("RolloutFailed", message),
        Some(Rollout::InProgress { message, .. }) => {
            tracing::debug!(step = %message, "rolling out");
            rolling_out(available)
        }
        // Just applied a new revision (pods still run the old one), or the
        // Deployment is not there yet.
        _ => rolling_out(available),
    };
    finish(ctx, svc, status, health).await
}

/// Resolves `valueFrom.serviceOutput` variables to the producers' outputs
/// Secrets, or the Health saying what the Service waits for (Progressing)
/// or what is wrong (Stalled).
#[allow(clippy::type_complexity)]
fn resolve_outputs(
    ctx: &Context,
    svc: &Service,
) -> Result<(BTreeMap<String, (String, String)>, Option<String>), Health> {
    let ns = svc.namespace().unwrap_or_default();
    let mut resolved = BTreeMap::new();
    let mut hashes = Vec::new();
    for var in &svc.spec.env {
        let Some(out) = var
            .value_from
            .as_ref()
            .and_then(|v| v.service_output.as_ref())
        else {
            continue;
        };
        let field = format!("spec.env {}", var.name);
        let Some(producer) = ctx.caches.service(&ns, &out.service) else {
            return Err(Health::progressing(
                "WaitingForOutputs",
                format!(
                    "{field}: waiting for Service {} (it does not exist yet)",
                    out.service
                ),
            ));
        };
        let Some(src) = &producer.spec.source.template else {
            return Err(Health::stalled(
                "OutputUnavailable",
                format!(
                    "{field}: Service {} is not a template Service and publishes no outputs",
                    out.service
                ),
            ));
        };
        let Some(template) = ctx.caches.template(&src.name) else {
            return Err(Health::progressing(
                "WaitingForOutputs",
                format!(
                    "{field}: waiting for ResourceTemplate {} of Service {}",
                    src.name, out.service
                ),
            ));
        };
        if template.spec.output(&out.key).is_none() {
            let names: Vec<&str> = template
                .spec
                .outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect();
            return Err(Health::stalled(
                "OutputUnavailable",
                format!(
                    "{field}: ResourceTemplate {} (Service {}) publishes no output {}; it publishes: {}",
                    src.name,
                    out.service,
                    out.key,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
        let status = producer.status.as_ref();
        let (Some(secret), Some(hash)) = (
            status.and_then(|s| s.outputs_secret.clone()),
            status.and_then(|s| s.outputs_hash.clone()),
        ) else {
            return Err(Health::progressing(
                "WaitingForOutputs",
                format!(
                    "{field}: waiting for output {} of Service {} (not applied yet)",
                    out.key, out.service
                ),
            ));
        };
        hashes.push(format!("{}={hash}", out.service));
        resolved.insert(var.name.clone(), (secret, out.key.clone()));
    }
    if resolved.is_empty() {
        return Ok((resolved, None));
    }
    hashes.sort();
    hashes.dedup();
    Ok((resolved, Some(hashes.join(","))))
}

async fn finish(
    ctx: &Context,
    svc: &Service,
    mut status: ServiceStatus,
    health: Health,
) -> Result<Action, Error> {
    let current = ctx.written.current(svc, svc.status.as_ref());
    let current = current.as_deref();
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    if status.available_replicas.is_none() {
        status.available_replicas = current.and_then(|s| s.available_replicas);
    }
    status.conditions = status::conditions(ctx, svc, existing, &health).await;
    status.external_url =
        consul::service_conditions(ctx, svc, existing, &mut status.conditions).await;
    status::patch_status(ctx, svc, current, &status).await?;
    Ok(ctx.resync())
}

/// The child named after `svc` if it is ours (`Ok(Some)`), absent
/// (`Ok(None)`), or `Err(message)` when an object of that name belongs to
/// someone else. The cache only holds Mahler-labelled objects, so a miss is
/// checked with one metadata GET from the API server's watch cache
/// (`resourceVersion=0`: no etcd read for each new Service). An object of
/// ours that the cache has not seen yet counts as absent: applying it again
/// is idempotent, and its watch event follows.
async fn owned_child<K>(
    ctx: &Context,
    cache: &ChildStore<K>,
    svc: &Service,
) -> Result<Result<Option<Child<K::Status>>, String>, Error>
where
    K: ChildKind + Clone + std::fmt::Debug,
    K::Scope: ScopedApi,
{
    let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
    let uid = svc.uid().unwrap_or_default();
    let ours = |refs: &[OwnerReference]| {
        refs.iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };
    if let Some(obj) = cache.get(&ns, &name) {
        if obj.owned_by(&uid) {
            return Ok(Ok(Some(obj)));
        }
    } else {
        let found = K::Scope::api::<K>(ctx.client.clone(), Some(&ns))
            .get_metadata_opt_with(&name, &GetParams::any())
            .await
            .map_err(Error::Kube)?;
        if found.is_none_or(|meta| ours(meta.owner_references())) {
            return Ok(Ok(None));
        }
    }
    Ok(Err(format!(
        "a {} named {name} already exists in {ns} and is not managed by this Service",
        K::kind(&())
    )))
}
